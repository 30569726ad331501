//! The result of a box evaluation: summary statistics, per-category AP, optional split
//! summaries, and the precision table behind them; written as the JSON that `ovkd eval det
//! --out` produces and as Markdown.
//!
//! JSON (other tools read these names):
//! `{"stats": {"AP", "AP50", ...}, "per_category": {"<id>": {"ap", "ap50", "recall"}},
//!   "splits": {"base": {"AP", "AP50"}, "novel": {...}, "all": {...}}}` (splits only with a
//! vocabulary). Values are fractions in [0, 1]; -1 where there is no ground truth.

use crate::accumulate::PrecisionTable;
use crate::error::Result;
use crate::ground_truth::Frequency;
use crate::io::write_atomic;
use crate::json_out::Json;
use crate::ov_summary::{DetSplits, det_splits, det_splits_markdown, fmt};
use crate::vocab::Vocabulary;
use std::path::Path;

/// Which rules produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// pycocotools' COCOeval.
    Coco,
    /// The `lvis` package's federated LVISEval.
    Lvis,
}

/// AP, AP50 and recall of one category (area "all", the largest max-detections setting).
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryAp {
    /// Category id.
    pub id: i64,
    /// Its name in the ground truth.
    pub name: String,
    /// LVIS frequency bin, when the ground truth has one.
    pub frequency: Option<Frequency>,
    /// Mean precision over IoU .50:.95 and the recall thresholds; -1 without ground truth.
    pub ap: f64,
    /// Mean precision at IoU .50.
    pub ap50: f64,
    /// Mean over IoU thresholds of the recall reached (AR at maxDets 100, or 300 for LVIS).
    pub recall: f64,
}

/// A box evaluation's results.
#[derive(Debug, Clone, PartialEq)]
pub struct DetReport {
    /// The rules used.
    pub rules: Rules,
    /// Summary statistics in the reference tool's order and names (COCO: AP, AP50, AP75, APs,
    /// APm, APl, AR1, AR10, AR100, ARs, ARm, ARl; LVIS: AP, AP50, AP75, APs, APm, APl, APr,
    /// APc, APf, AR@300, ARs@300, ARm@300, ARl@300).
    pub stats: Vec<(String, f64)>,
    /// Per category, by increasing id.
    pub per_category: Vec<CategoryAp>,
    /// The accumulated precision and recall tables (for curves).
    pub table: PrecisionTable,
    /// Base / novel / all summaries, once a vocabulary is applied.
    pub splits: Option<DetSplits>,
}

impl DetReport {
    /// A statistic by name (`"AP"`, `"AP50"`, `"APr"`, `"AR@300"`, ...).
    pub fn stat(&self, name: &str) -> Option<f64> {
        self.stats.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// Adds the base / novel / all summaries of `vocab`.
    pub fn apply_vocabulary(&mut self, vocab: &Vocabulary) {
        self.splits = Some(det_splits(&self.table, vocab));
    }

    pub(crate) fn to_json_value(&self) -> Json {
        let mut top = vec![(
            "stats".to_string(),
            Json::Obj(
                self.stats
                    .iter()
                    .map(|(n, v)| (n.clone(), Json::Num(*v)))
                    .collect(),
            ),
        )];
        top.push((
            "per_category".to_string(),
            Json::Obj(
                self.per_category
                    .iter()
                    .map(|c| {
                        (
                            c.id.to_string(),
                            Json::Obj(vec![
                                ("ap".into(), Json::Num(c.ap)),
                                ("ap50".into(), Json::Num(c.ap50)),
                                ("recall".into(), Json::Num(c.recall)),
                            ]),
                        )
                    })
                    .collect(),
            ),
        ));
        if let Some(s) = &self.splits {
            let one = |x: &crate::ov_summary::SplitAp| {
                Json::Obj(vec![
                    ("AP".into(), Json::Num(x.ap)),
                    ("AP50".into(), Json::Num(x.ap50)),
                ])
            };
            top.push((
                "splits".to_string(),
                Json::Obj(vec![
                    ("base".into(), one(&s.base)),
                    ("novel".into(), one(&s.novel)),
                    ("all".into(), one(&s.all)),
                ]),
            ));
        }
        Json::Obj(top)
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        self.to_json_value().to_pretty()
    }

    /// Writes the JSON atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Markdown: the statistics, the splits (when a vocabulary was applied) and, with
    /// `per_category`, one row per category.
    pub fn to_markdown(&self, per_category: bool) -> String {
        let rules = match self.rules {
            Rules::Coco => "COCO",
            Rules::Lvis => "LVIS",
        };
        let mut out = format!("Box AP ({rules} rules)\n\n|");
        for (n, _) in &self.stats {
            out.push_str(&format!(" {n} |"));
        }
        out.push_str("\n|");
        for _ in &self.stats {
            out.push_str("---:|");
        }
        out.push_str("\n|");
        for (_, v) in &self.stats {
            out.push_str(&format!(" {} |", fmt(*v)));
        }
        out.push('\n');
        if let Some(s) = &self.splits {
            out.push_str("\nOpen-vocabulary splits\n\n");
            out.push_str(&det_splits_markdown(s));
        }
        if per_category {
            out.push_str(
                "\n| id | name | split | AP | AP50 | recall |\n|---:|---|---|---:|---:|---:|\n",
            );
            for c in &self.per_category {
                let split = self.split_of(c.id).unwrap_or("");
                let split = match c.frequency {
                    Some(f) if split.is_empty() => f.code(),
                    _ => split,
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    c.id,
                    c.name,
                    split,
                    fmt(c.ap),
                    fmt(c.ap50),
                    fmt(c.recall)
                ));
            }
        }
        out
    }

    /// `base` or `novel` for a category id, once a vocabulary is applied.
    pub fn split_of(&self, id: i64) -> Option<&'static str> {
        let s = self.splits.as_ref()?;
        if s.base.category_ids.contains(&id) {
            Some("base")
        } else if s.novel.category_ids.contains(&id) {
            Some("novel")
        } else {
            None
        }
    }
}
