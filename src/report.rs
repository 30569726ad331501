//! `ovkd report RUN`: one HTML page (and the same in Markdown) from the files a run wrote —
//! the resolved config, stage timings, loss and learning-rate curves, the evaluation tables,
//! precision-recall curves, per-class bars and predictions drawn over val images.
//!
//! The report only reads what the stages wrote; it never recomputes a number, so what it shows
//! is what `eval/det.json` and `eval/seg.json` hold.

use crate::pipeline::seg_vis::{LEGEND_FILE, LegendEntry};
use anyhow::{Context as _, Result};
use ovkd_eval::plots::{Series, plot_lines};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What [`write_report`] produced.
#[derive(Debug)]
pub struct ReportFiles {
    /// `index.html`.
    pub html: PathBuf,
    /// `index.md`.
    pub markdown: PathBuf,
    /// Images copied or drawn into the report folder.
    pub images: usize,
}

/// One block of the report, rendered both ways.
enum Block {
    Heading(String),
    Text(String),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Images(Vec<(String, String)>),
    /// Colour swatches: (name, note, rgb).
    Legend(Vec<(String, String, [u8; 3])>),
    Code(String),
}

/// The metrics table of one training run, as `metrics.csv` holds it.
struct Metrics {
    columns: Vec<String>,
    rows: Vec<Vec<f64>>,
}

fn read_metrics(path: &Path) -> Result<Option<Metrics>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(None);
    };
    let columns: Vec<String> = header.split(',').map(str::to_string).collect();
    let rows = lines
        .filter_map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .map(|f| f.parse().unwrap_or(f64::NAN))
                .collect();
            (v.len() == columns.len()).then_some(v)
        })
        .collect();
    Ok(Some(Metrics { columns, rows }))
}

/// Exponential moving average, as TensorBoard smooths curves.
fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut last = f64::NAN;
    points
        .iter()
        .map(|&(x, y)| {
            if y.is_finite() {
                last = if last.is_finite() {
                    weight * last + (1.0 - weight) * y
                } else {
                    y
                };
            }
            (x, last)
        })
        .collect()
}

const NOT_LOSSES: [&str; 6] = ["step", "lr", "grad_norm", "img_per_s", "seconds", "loss"];

fn curves(student: &str, m: &Metrics, out: &Path) -> Result<Vec<Block>> {
    let col = |name: &str| m.columns.iter().position(|c| c == name);
    let Some(step) = col("step") else {
        return Ok(Vec::new());
    };
    let series_of =
        |i: usize| -> Vec<(f64, f64)> { m.rows.iter().map(|r| (r[step], r[i])).collect() };
    let mut loss_series = Vec::new();
    if let Some(i) = col("loss") {
        loss_series.push(Series {
            label: "loss (total)".into(),
            points: smooth(&series_of(i), 0.9),
        });
    }
    for (i, c) in m.columns.iter().enumerate() {
        if !NOT_LOSSES.contains(&c.as_str()) {
            loss_series.push(Series {
                label: c.clone(),
                points: smooth(&series_of(i), 0.9),
            });
        }
    }
    let mut images = Vec::new();
    let loss_png = format!("{student}_loss.png");
    plot_lines(
        &out.join(&loss_png),
        &format!("{student}: training losses (smoothed)"),
        "step",
        "loss",
        &loss_series,
        true,
    )?;
    images.push((loss_png, format!("{student} losses")));
    if let Some(i) = col("lr") {
        let lr_png = format!("{student}_lr.png");
        plot_lines(
            &out.join(&lr_png),
            &format!("{student}: learning rate"),
            "step",
            "lr",
            &[Series {
                label: "lr".into(),
                points: series_of(i),
            }],
            false,
        )?;
        images.push((lr_png, format!("{student} learning rate")));
    }
    let mut text = format!("{} steps logged.", m.rows.len());
    if let Some(i) = col("img_per_s") {
        let mut v: Vec<f64> = m
            .rows
            .iter()
            .map(|r| r[i])
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        if !v.is_empty() {
            write!(text, " Median throughput {:.1} images/s.", v[v.len() / 2]).ok();
        }
    }
    if let (Some(i), Some(last)) = (col("loss"), m.rows.last()) {
        write!(text, " Final loss {:.4}.", last[i]).ok();
    }
    Ok(vec![
        Block::Heading(format!("Training: {student}")),
        Block::Text(text),
        Block::Images(images),
    ])
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 0.0 && x.is_finite() => format!("{:.1}", 100.0 * x),
        _ => "–".into(),
    }
}

fn det_blocks(det: &Value) -> Vec<Block> {
    let stat = |k: &str| det["stats"][k].as_f64();
    let mut blocks = vec![Block::Heading("Detection (box AP, COCO rules)".into())];
    let mut rows = Vec::new();
    if let Some(splits) = det["splits"].as_object() {
        for name in ["base", "novel", "all"] {
            if let Some(s) = splits.get(name) {
                rows.push(vec![
                    name.to_string(),
                    pct(s["AP"].as_f64()),
                    pct(s["AP50"].as_f64()),
                ]);
            }
        }
    }
    if !rows.is_empty() {
        blocks.push(Block::Table {
            head: vec!["split".into(), "AP".into(), "AP50".into()],
            rows,
        });
    }
    let names = [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
    ];
    let present: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| stat(n).is_some())
        .collect();
    if !present.is_empty() {
        blocks.push(Block::Table {
            head: present.iter().map(|s| s.to_string()).collect(),
            rows: vec![present.iter().map(|n| pct(stat(n))).collect()],
        });
    }
    blocks.push(Block::Text(
        "Values in percent; – means no ground truth for that entry.".into(),
    ));
    blocks
}

fn seg_blocks(seg: &Value) -> Vec<Block> {
    let g = |k: &str| seg[k].as_f64();
    let mut head = vec!["mIoU".to_string(), "mAcc".into(), "aAcc".into()];
    let mut row = vec![pct(g("mIoU")), pct(g("mAcc")), pct(g("aAcc"))];
    for k in ["seen_mIoU", "unseen_mIoU", "hIoU"] {
        if seg.get(k).is_some() {
            head.push(k.to_string());
            row.push(pct(g(k)));
        }
    }
    vec![
        Block::Heading("Segmentation (mIoU)".into()),
        Block::Table {
            head,
            rows: vec![row],
        },
    ]
}

/// The colours of the classes painted in the segmentation drawings (`legend.json`).
fn seg_legend(path: &Path) -> Result<Option<Block>> {
    let Some(v) = read_json(path)? else {
        return Ok(None);
    };
    let entries: Vec<LegendEntry> = serde_json::from_value(v)
        .with_context(|| format!("{}: not a legend (id, name, split, rgb)", path.display()))?;
    Ok((!entries.is_empty()).then(|| {
        Block::Legend(
            entries
                .into_iter()
                .map(|e| (e.name, e.split, e.rgb))
                .collect(),
        )
    }))
}

/// Copies the PNGs of `src` (if it exists) into `out` under `prefix`, sorted by name.
fn copy_pngs(src: &Path, out: &Path, prefix: &str, limit: usize) -> Result<Vec<(String, String)>> {
    let Ok(entries) = std::fs::read_dir(src) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    let mut out_names = Vec::new();
    for f in files.into_iter().take(limit) {
        let name = format!(
            "{prefix}{}",
            f.file_name().unwrap_or_default().to_string_lossy()
        );
        let bytes = std::fs::read(&f).with_context(|| f.display().to_string())?;
        ovkd_data::io::write_atomic(&out.join(&name), &bytes)?;
        let caption = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .replace('_', " ");
        out_names.push((name, caption));
    }
    Ok(out_names)
}

/// Writes `out/index.html` and `out/index.md` for the run in `run`.
pub fn write_report(run: &Path, out: &Path) -> Result<ReportFiles> {
    if !run.is_dir() {
        anyhow::bail!("{}: not a run directory", run.display());
    }
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let mut blocks = vec![Block::Heading(format!(
        "ovkd run report: {}",
        run.display()
    ))];
    let mut images = 0;

    let stages_dir = run.join(".stages");
    if let Ok(entries) = std::fs::read_dir(&stages_dir) {
        // In the order the stages finished: a record is written when its stage ends.
        let mut recs: Vec<(std::time::SystemTime, Vec<String>)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let when = e.metadata().and_then(|m| m.modified()).ok()?;
                let v = serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok()?;
                Some((
                    when,
                    vec![
                        v["stage"].as_str().unwrap_or("?").to_string(),
                        format!("{:.1}", v["seconds"].as_f64().unwrap_or(f64::NAN)),
                    ],
                ))
            })
            .collect();
        recs.sort();
        let rows: Vec<Vec<String>> = recs.into_iter().map(|(_, r)| r).collect();
        if !rows.is_empty() {
            blocks.push(Block::Heading("Stages".into()));
            blocks.push(Block::Table {
                head: vec!["stage".into(), "seconds".into()],
                rows,
            });
        }
    }

    if let Some(det) = read_json(&run.join("eval/det.json"))? {
        blocks.extend(det_blocks(&det));
        let pics = copy_pngs(&run.join("eval/det_plots"), out, "det_", 16)?;
        images += pics.len();
        blocks.push(Block::Images(pics));
        let vis = copy_pngs(&run.join("eval/det_vis"), out, "detvis_", 12)?;
        if !vis.is_empty() {
            images += vis.len();
            blocks.push(Block::Heading("Detections on val images".into()));
            blocks.push(Block::Images(vis));
        }
    }
    if let Some(seg) = read_json(&run.join("eval/seg.json"))? {
        blocks.extend(seg_blocks(&seg));
        let pics = copy_pngs(&run.join("eval/seg_plots"), out, "seg_", 8)?;
        images += pics.len();
        blocks.push(Block::Images(pics));
        let vis = copy_pngs(&run.join("eval/seg_vis"), out, "segvis_", 12)?;
        if !vis.is_empty() {
            images += vis.len();
            blocks.push(Block::Heading("Segmentations of val images".into()));
            blocks.push(Block::Text(
                "Each pair: the ground truth (left) and the student's prediction (right) \
                 painted over the image; unpainted pixels are background or ignored."
                    .into(),
            ));
            blocks.extend(seg_legend(&run.join("eval/seg_vis").join(LEGEND_FILE))?);
            blocks.push(Block::Images(vis));
        }
    }
    for student in ["detector", "segmenter"] {
        if let Some(m) = read_metrics(&run.join(student).join("metrics.csv"))? {
            let b = curves(student, &m, out)?;
            images += b
                .iter()
                .map(|b| if let Block::Images(v) = b { v.len() } else { 0 })
                .sum::<usize>();
            blocks.extend(b);
        }
    }
    blocks.extend(export_blocks(run)?);
    if let Ok(cfg) = std::fs::read_to_string(run.join("config.toml")) {
        blocks.push(Block::Heading("Resolved config".into()));
        blocks.push(Block::Code(cfg));
    }
    if blocks.len() == 1 {
        blocks.push(Block::Text(
            "This run has no stage records, metrics or evaluations yet.".into(),
        ));
    }
    let html = out.join("index.html");
    let markdown = out.join("index.md");
    ovkd_data::io::write_atomic(&html, render_html(&blocks).as_bytes())?;
    ovkd_data::io::write_atomic(&markdown, render_markdown(&blocks).as_bytes())?;
    Ok(ReportFiles {
        html,
        markdown,
        images,
    })
}

/// The bundles of `RUN/export/` (from their `bundle.json`) and the command that predicts
/// with them.
fn export_blocks(run: &Path) -> Result<Vec<Block>> {
    let mut rows = Vec::new();
    let mut commands = Vec::new();
    for student in ["detector", "segmenter"] {
        let dir = run.join("export").join(student);
        let Some(m) = read_json(&dir.join("bundle.json"))? else {
            continue;
        };
        let files = m["files"].as_object().map(|f| f.len()).unwrap_or(0);
        let bytes: u64 = m["files"]
            .as_object()
            .map(|f| f.values().filter_map(|e| e["bytes"].as_u64()).sum())
            .unwrap_or(0);
        let task = m["task"].as_str().unwrap_or("?");
        rows.push(vec![
            student.to_string(),
            format!("../export/{student}"),
            (files + 1).to_string(),
            format!("{:.1}", bytes as f64 / 1e6),
        ]);
        commands.push(format!(
            "ovkd predict --task {task} --bundle {} --classes \"name,another name\" --out OUT IMAGES...",
            dir.display()
        ));
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![
        Block::Heading("Export bundles".into()),
        Block::Table {
            head: vec![
                "student".into(),
                "bundle".into(),
                "files".into(),
                "MB".into(),
            ],
            rows,
        },
        Block::Code(commands.join("\n")),
    ])
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{}: not valid JSON", path.display())
            })?))
        }
        Err(_) => Ok(None),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn render_html(blocks: &[Block]) -> String {
    let mut h = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>ovkd report</title>\n<style>\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.6em;border-bottom:2px solid #1f77b4;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em;color:#1f4e79}\
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}\
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}\
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;flex:1 1 320px;max-width:520px}\
.grid img{width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555;text-align:center}\
.legend{display:flex;flex-wrap:wrap;gap:.3em 1.2em;margin:.6em 0 1em}.legend span{white-space:nowrap}\
.legend i{display:inline-block;width:1em;height:1em;margin-right:.35em;vertical-align:-.15em;border:1px solid #888}\
.legend small{color:#777}\
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em;border:1px solid #e1e4e8}\
</style></head><body>\n",
    );
    let mut first = true;
    for b in blocks {
        match b {
            Block::Heading(t) if first => {
                writeln!(h, "<h1>{}</h1>", esc(t)).ok();
                first = false;
            }
            Block::Heading(t) => {
                writeln!(h, "<h2>{}</h2>", esc(t)).ok();
            }
            Block::Text(t) => {
                writeln!(h, "<p>{}</p>", esc(t)).ok();
            }
            Block::Table { head, rows } => {
                h.push_str("<table><tr>");
                for c in head {
                    write!(h, "<th>{}</th>", esc(c)).ok();
                }
                h.push_str("</tr>\n");
                for r in rows {
                    h.push_str("<tr>");
                    for c in r {
                        write!(h, "<td>{}</td>", esc(c)).ok();
                    }
                    h.push_str("</tr>\n");
                }
                h.push_str("</table>\n");
            }
            Block::Images(imgs) if !imgs.is_empty() => {
                h.push_str("<div class=\"grid\">\n");
                for (src, cap) in imgs {
                    writeln!(
                        h,
                        "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                        esc(src),
                        esc(cap),
                        esc(cap)
                    )
                    .ok();
                }
                h.push_str("</div>\n");
            }
            Block::Images(_) => {}
            Block::Legend(items) => {
                h.push_str("<div class=\"legend\">");
                for (name, note, [r, g, b]) in items {
                    write!(
                        h,
                        "<span><i style=\"background:rgb({r},{g},{b})\"></i>{} <small>{}</small></span>",
                        esc(name),
                        esc(note)
                    )
                    .ok();
                }
                h.push_str("</div>\n");
            }
            Block::Code(t) => {
                writeln!(h, "<pre>{}</pre>", esc(t)).ok();
            }
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn render_markdown(blocks: &[Block]) -> String {
    let mut m = String::new();
    let mut first = true;
    for b in blocks {
        match b {
            Block::Heading(t) => {
                writeln!(m, "{} {t}\n", if first { "#" } else { "##" }).ok();
                first = false;
            }
            Block::Text(t) => {
                writeln!(m, "{t}\n").ok();
            }
            Block::Table { head, rows } => {
                writeln!(m, "| {} |", head.join(" | ")).ok();
                writeln!(m, "|{}", " --- |".repeat(head.len())).ok();
                for r in rows {
                    writeln!(m, "| {} |", r.join(" | ")).ok();
                }
                m.push('\n');
            }
            Block::Images(imgs) => {
                for (src, cap) in imgs {
                    writeln!(m, "![{cap}]({src})").ok();
                }
                if !imgs.is_empty() {
                    m.push('\n');
                }
            }
            Block::Legend(items) => {
                let cells: Vec<String> = items
                    .iter()
                    .map(|(name, note, [r, g, b])| {
                        format!("{name} ({note}): #{r:02x}{g:02x}{b:02x}")
                    })
                    .collect();
                writeln!(m, "Colours: {}.\n", cells.join("; ")).ok();
            }
            Block::Code(t) => {
                writeln!(m, "```toml\n{t}\n```\n").ok();
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_the_numbers_the_run_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::create_dir_all(run.join("eval")).unwrap();
        std::fs::create_dir_all(run.join("detector")).unwrap();
        std::fs::write(
            run.join("eval/det.json"),
            r#"{"stats":{"AP":0.4321,"AP50":0.61},"splits":{"base":{"AP":0.5,"AP50":0.75},"novel":{"AP":0.2,"AP50":0.444},"all":{"AP":0.4321,"AP50":0.61}}}"#,
        )
        .unwrap();
        std::fs::write(
            run.join("eval/seg.json"),
            r#"{"mIoU":0.5,"mAcc":0.6,"aAcc":0.9,"seen_mIoU":0.7,"unseen_mIoU":0.4,"hIoU":0.509}"#,
        )
        .unwrap();
        let mut csv = String::from("step,lr,loss,loss_rpn,grad_norm,img_per_s,seconds\n");
        for s in 0..20 {
            csv.push_str(&format!(
                "{s},0.01,{},{},1.0,12.5,0.1\n",
                2.0 / (s + 1) as f64,
                1.0 / (s + 1) as f64
            ));
        }
        std::fs::write(run.join("detector/metrics.csv"), csv).unwrap();
        std::fs::write(run.join("config.toml"), "[train]\nlr = 0.01\n").unwrap();
        let out = run.join("report");
        let files = write_report(run, &out).unwrap();
        let html = std::fs::read_to_string(&files.html).unwrap();
        assert!(
            html.contains("<td>novel</td><td>20.0</td><td>44.4</td>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<td>50.0</td><td>60.0</td><td>90.0</td><td>70.0</td><td>40.0</td><td>50.9</td>"
            ),
            "{html}"
        );
        assert!(html.contains("Median throughput 12.5 images/s"));
        assert!(html.contains("lr = 0.01"));
        assert!(out.join("detector_loss.png").is_file() && out.join("detector_lr.png").is_file());
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("| novel | 20.0 | 44.4 |"), "{md}");
    }

    #[test]
    fn segmentation_drawings_form_a_grid_with_their_colour_legend() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let vis = run.join("eval/seg_vis");
        std::fs::create_dir_all(&vis).unwrap();
        std::fs::write(run.join("eval/seg.json"), r#"{"mIoU":0.5}"#).unwrap();
        for stem in ["2007_000033", "2007_000042"] {
            image::RgbImage::new(8, 4)
                .save(vis.join(format!("{stem}.png")))
                .unwrap();
        }
        let legend = vec![LegendEntry {
            id: 17,
            name: "sheep".into(),
            split: "unseen".into(),
            rgb: [10, 200, 30],
        }];
        std::fs::write(vis.join(LEGEND_FILE), serde_json::to_vec(&legend).unwrap()).unwrap();
        let files = write_report(run, &run.join("report")).unwrap();
        assert_eq!(files.images, 2);
        let html = std::fs::read_to_string(&files.html).unwrap();
        let grid = html
            .split("Segmentations of val images")
            .nth(1)
            .expect("a segmentation section");
        assert!(
            grid.contains("background:rgb(10,200,30)\"></i>sheep <small>unseen</small>"),
            "{grid}"
        );
        assert!(
            grid.contains("<div class=\"grid\">")
                && grid.contains("<img src=\"segvis_2007_000033.png\"")
                && grid.contains("<img src=\"segvis_2007_000042.png\""),
            "{grid}"
        );
        assert!(run.join("report/segvis_2007_000042.png").is_file());
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("sheep (unseen): #0ac81e"), "{md}");
        assert!(
            md.contains("![2007 000033](segvis_2007_000033.png)"),
            "{md}"
        );
    }

    #[test]
    fn an_empty_run_says_so_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_report(dir.path(), &dir.path().join("r")).unwrap();
        assert!(
            std::fs::read_to_string(files.html)
                .unwrap()
                .contains("no stage records")
        );
        assert!(write_report(&dir.path().join("nope"), &dir.path().join("r2")).is_err());
    }
}
