//! Plots as PNG (plotters, drawn into memory and written atomically): precision-recall curves
//! per split, and per-class bar charts of box AP or segmentation IoU.
//!
//! The font is embedded (DejaVu Sans): CI machines have no system fonts.

use crate::det_report::DetReport;
use crate::error::{EvalError, Result};
use crate::io::write_atomic;
use crate::miou::SegReport;
use crate::numeric::mean_valid;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

const BASE_COLOR: RGBColor = RGBColor(31, 119, 180);
const NOVEL_COLOR: RGBColor = RGBColor(255, 127, 14);
const OTHER_COLOR: RGBColor = RGBColor(127, 127, 127);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font committed with the repository.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Draws with `draw` on a `w` x `h` white canvas and writes it as PNG to `path`.
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font();
    let err = |message: String| EvalError::Plot {
        path: path.display().to_string(),
        message,
    };
    let mut buf = vec![0u8; (w as usize) * (h as usize) * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(&root).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| err("canvas has the wrong size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| err(e.to_string()))?;
    write_atomic(path, &png)
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A precision-recall curve: precision at each of the recall thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    /// Legend label, e.g. `IoU=0.50`.
    pub label: String,
    /// `(recall, precision)` points; thresholds where no category has ground truth are left
    /// out.
    pub points: Vec<(f64, f64)>,
}

/// The curves of one split (its categories' indices on the table's `K` axis): precision
/// averaged over the categories with ground truth, at IoU .50, at .75, and averaged over
/// .50:.95, area "all", the largest max-detections setting.
pub fn pr_curves(report: &DetReport, cats: &[usize]) -> Vec<PrCurve> {
    let table = &report.table;
    let p = &table.params;
    let m = p.max_dets.len() - 1;
    let curve = |label: String, ts: Vec<usize>| PrCurve {
        label,
        points: p
            .rec_thrs
            .iter()
            .enumerate()
            .filter_map(|(r, &rec)| {
                let v = mean_valid(
                    ts.iter()
                        .flat_map(|&t| cats.iter().map(move |&k| (t, k)))
                        .map(|(t, k)| table.precision_at(t, r, k, 0, m)),
                );
                (v > -1.0).then_some((rec, v))
            })
            .collect(),
    };
    let mut out = Vec::new();
    for thr in [0.5, 0.75] {
        if let Some(t) = p.iou_index(thr) {
            out.push(curve(format!("IoU={thr:.2}"), vec![t]));
        }
    }
    out.push(curve(
        "IoU=.50:.95".to_string(),
        (0..p.iou_thrs.len()).collect(),
    ));
    out
}

/// Writes `pr_<split>.png` into `dir` for each split (`all` only, without a vocabulary) and
/// returns the paths.
pub fn plot_pr_curves(report: &DetReport, dir: &Path) -> Result<Vec<PathBuf>> {
    let cat_ids = &report.table.cat_ids;
    let mut splits: Vec<(&str, Vec<usize>)> = Vec::new();
    match &report.splits {
        Some(sp) => {
            for (name, x) in [("base", &sp.base), ("novel", &sp.novel), ("all", &sp.all)] {
                let ks = (0..cat_ids.len())
                    .filter(|&k| x.category_ids.contains(&cat_ids[k]))
                    .collect();
                splits.push((name, ks));
            }
        }
        None => splits.push(("all", (0..cat_ids.len()).collect())),
    }
    let mut paths = Vec::new();
    for (name, ks) in splits {
        let path = dir.join(format!("pr_{name}.png"));
        let curves = pr_curves(report, &ks);
        let ap = report
            .splits
            .as_ref()
            .map(|sp| match name {
                "base" => sp.base.ap,
                "novel" => sp.novel.ap,
                _ => sp.all.ap,
            })
            .unwrap_or_else(|| report.stat("AP").unwrap_or(-1.0));
        let title = format!(
            "Precision-recall, {name} ({} categories, AP {})",
            ks.len(),
            if ap > -1.0 {
                format!("{ap:.3}")
            } else {
                "n/a".into()
            }
        );
        render(&path, (800, 600), |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(title, (FAMILY, 22))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(55)
                .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
                .map_err(s)?;
            chart
                .configure_mesh()
                .x_desc("recall")
                .y_desc("precision")
                .label_style((FAMILY, 15))
                .draw()
                .map_err(s)?;
            let colors = [BASE_COLOR, NOVEL_COLOR, RGBColor(44, 160, 44)];
            for (c, color) in curves.iter().zip(colors) {
                chart
                    .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(2)))
                    .map_err(s)?
                    .label(c.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FAMILY, 15))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(s)?;
            Ok(())
        })?;
        paths.push(path);
    }
    Ok(paths)
}

/// One bar of a per-class chart.
struct Bar {
    label: String,
    value: f64,
    color: RGBColor,
}

/// Horizontal bars, highest first; with many classes the names are dropped and the bars
/// thinned to a profile.
fn plot_bars(path: &Path, title: &str, x_desc: &str, mut bars: Vec<Bar>) -> Result<()> {
    bars.sort_by(|a, b| {
        b.value
            .partial_cmp(&a.value)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let n = bars.len().max(1);
    let labelled = n <= 120;
    let h = if labelled {
        (110 + 18 * n as u32).max(300)
    } else {
        700
    };
    let label_w = if labelled {
        let longest = bars
            .iter()
            .map(|b| b.label.chars().count())
            .max()
            .unwrap_or(4);
        (longest as u32 * 8 + 20).clamp(60, 320)
    } else {
        50
    };
    let title = title.to_string();
    let x_desc = x_desc.to_string();
    // Scale to the best bar (in steps of 0.1) so that low scores stay readable.
    let top = bars
        .iter()
        .map(|b| b.value)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let x_max = ((top * 1.1 * 10.0).ceil() / 10.0).clamp(0.1, 1.0);
    render(path, (900, h), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..x_max, (0..n).into_segmented())
            .map_err(s)?;
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        let fmt = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if labelled => {
                // Row 0 is drawn at the bottom; put the best class on top.
                n.checked_sub(1 + *i)
                    .and_then(|j| labels.get(j))
                    .cloned()
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(if labelled { n } else { 1 })
            .y_label_formatter(&fmt)
            .x_desc(x_desc)
            .y_desc(if labelled {
                String::new()
            } else {
                format!("{n} classes, best first")
            })
            .label_style((FAMILY, 13))
            .draw()
            .map_err(s)?;
        let margin = if labelled { 2 } else { 0 };
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let row = n - 1 - i;
                let v = if b.value.is_nan() || b.value < 0.0 {
                    0.0
                } else {
                    b.value
                };
                let mut r = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (v, SegmentValue::Exact(row + 1)),
                    ],
                    b.color.filled(),
                );
                r.set_margin(margin, margin, 0, 0);
                r
            }))
            .map_err(s)?;
        Ok(())
    })
}

/// Writes `ap_per_class.png`: AP per category (those with ground truth), coloured by split
/// (blue base, orange novel, grey otherwise).
pub fn plot_ap_bars(report: &DetReport, dir: &Path) -> Result<PathBuf> {
    let path = dir.join("ap_per_class.png");
    let bars = report
        .per_category
        .iter()
        .filter(|c| c.ap > -1.0)
        .map(|c| Bar {
            label: if c.name.is_empty() {
                c.id.to_string()
            } else {
                c.name.clone()
            },
            value: c.ap,
            color: match report.split_of(c.id) {
                Some("base") => BASE_COLOR,
                Some("novel") => NOVEL_COLOR,
                _ => OTHER_COLOR,
            },
        })
        .collect();
    let title = if report.splits.is_some() {
        "AP per category (IoU .50:.95; blue base, orange novel)"
    } else {
        "AP per category (IoU .50:.95)"
    };
    plot_bars(&path, title, "AP", bars)?;
    Ok(path)
}

/// Writes the detection plots (PR curves per split, AP per class) into `dir`.
pub fn plot_det(report: &DetReport, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = plot_pr_curves(report, dir)?;
    paths.push(plot_ap_bars(report, dir)?);
    Ok(paths)
}

/// Writes `iou_per_class.png` into `dir`: IoU per class present in ground truth or prediction,
/// coloured by split when a vocabulary was applied.
pub fn plot_seg(
    report: &SegReport,
    vocab: Option<&crate::vocab::Vocabulary>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let path = dir.join("iou_per_class.png");
    let bars = (0..report.num_classes)
        .filter(|&c| !report.iou[c].is_nan())
        .map(|c| {
            let name = report.class_names.get(c).filter(|n| !n.is_empty());
            Bar {
                label: name.map_or_else(|| c.to_string(), |n| format!("{n} ({c})")),
                value: report.iou[c],
                color: match vocab.and_then(|v| v.class(c as i64)).and_then(|v| v.split) {
                    Some(crate::vocab::Split::Base) => BASE_COLOR,
                    Some(crate::vocab::Split::Novel) => NOVEL_COLOR,
                    None => OTHER_COLOR,
                },
            }
        })
        .collect();
    let legend = if vocab.is_some() {
        "; blue seen, orange unseen"
    } else {
        ""
    };
    plot_bars(
        &path,
        &format!("IoU per class (mIoU {:.3}{legend})", report.m_iou),
        "IoU",
        bars,
    )?;
    Ok(vec![path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_charts_scale_with_the_number_of_classes() {
        let dir = tempfile::tempdir().unwrap();
        for (n, name) in [(5usize, "few.png"), (300, "many.png")] {
            let bars = (0..n)
                .map(|i| Bar {
                    label: format!("class {i}"),
                    value: (i % 17) as f64 / 20.0,
                    color: if i % 3 == 0 { NOVEL_COLOR } else { BASE_COLOR },
                })
                .collect();
            let path = dir.path().join(name);
            plot_bars(&path, "t", "AP", bars).unwrap();
            let img = image::open(&path).unwrap();
            assert_eq!(img.width(), 900);
            assert_eq!(img.height(), if n == 5 { 300 } else { 700 });
            // Something other than the white background was drawn.
            let rgb = img.to_rgb8();
            assert!(rgb.pixels().any(|p| p.0 == [31, 119, 180]));
        }
    }
}

/// One named series of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points `(x, y)` in drawing order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Writes a line chart of `series` to `path` (training curves in run reports), with a log
/// y axis when `log_y` and every value is positive.
pub fn plot_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (x0, x1) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(x, _)| {
            (a.min(x), b.max(x))
        });
    let (y0, y1) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| {
            (a.min(y), b.max(y))
        });
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        (x0, x1)
    } else {
        (0.0, 1.0)
    };
    let (y0, y1) = if y0.is_finite() && y1 > y0 {
        (y0, y1)
    } else {
        (0.0, 1.0)
    };
    let log_y = log_y && y0 > 0.0;
    let palette = [
        BASE_COLOR,
        NOVEL_COLOR,
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        OTHER_COLOR,
    ];
    let title = title.to_string();
    render(path, (800, 450), |root| {
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(title, (FAMILY, 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(65);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .label_style((FAMILY, 13))
                    .draw()
                    .map_err(s)?;
                for (i, ser) in series.iter().enumerate() {
                    let color = palette[i % palette.len()];
                    let pts: Vec<(f64, f64)> = ser
                        .points
                        .iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                        .map_err(s)?
                        .label(ser.label.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font((FAMILY, 13))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(s)?;
            }};
        }
        if log_y {
            draw!(
                builder
                    .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                    .map_err(s)?
            );
        } else {
            let pad = (y1 - y0) * 0.05;
            draw!(
                builder
                    .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
                    .map_err(s)?
            );
        }
        Ok(())
    })
}
