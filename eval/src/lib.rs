//! ovkd-eval: box AP exactly as pycocotools' COCOeval and the `lvis` package's LVISEval
//! compute it, mIoU as mmsegmentation does, open-vocabulary (base / novel, seen / unseen)
//! summaries, and plots.
//!
//! Depends on no other ovkd crate: it reads COCO/LVIS ground truth, COCO results and the
//! vocabulary file itself. In-process use:
//!
//! ```no_run
//! use ovkd_eval::{CocoEvaluator, GroundTruth, Vocabulary, load_results};
//! # fn main() -> Result<(), ovkd_eval::EvalError> {
//! let gt = GroundTruth::from_path("val.json".as_ref())?;
//! let dets = load_results("dets.json".as_ref())?;
//! let mut report = CocoEvaluator::new(&gt, &dets)?.evaluate();
//! report.apply_vocabulary(&Vocabulary::from_path("configs/vocab/ov-coco.toml".as_ref())?);
//! report.write_json("run/eval/det.json".as_ref())?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod accumulate;
pub mod coco_eval;
pub mod det_report;
pub mod error;
pub mod ground_truth;
mod grouping;
pub mod io;
mod json;
mod json_out;
pub mod lvis_eval;
pub mod matching;
pub mod miou;
pub mod numeric;
pub mod ov_summary;
pub mod plots;
pub mod results;
pub mod vocab;

pub use accumulate::{EvalParams, PrecisionTable};
pub use coco_eval::{COCO_STAT_NAMES, CocoEvaluator};
pub use det_report::{CategoryAp, DetReport, Rules};
pub use error::EvalError;
pub use ground_truth::{Frequency, GroundTruth, GtAnnotation, GtCategory, GtImage};
pub use lvis_eval::{LVIS_STAT_NAMES, LvisEvaluator};
pub use miou::{Label, SegEvaluator, SegReport, evaluate_dirs, read_label_png};
pub use ov_summary::{DetSplits, SegSplits, SplitAp};
pub use results::{Detection, load_results, parse_results, validate_detections};
pub use vocab::{Split, VocabClass, Vocabulary};

/// Evaluates under the rules `rules` names, or, when `None`, LVIS rules if the ground truth
/// carries LVIS's fields and COCO rules otherwise.
pub fn evaluate_detections(
    gt: &GroundTruth,
    dets: &[Detection],
    rules: Option<Rules>,
) -> Result<DetReport, EvalError> {
    let rules = rules.unwrap_or(if gt.has_lvis_fields() {
        Rules::Lvis
    } else {
        Rules::Coco
    });
    Ok(match rules {
        Rules::Coco => CocoEvaluator::new(gt, dets)?.evaluate(),
        Rules::Lvis => LvisEvaluator::new(gt, dets)?.evaluate(),
    })
}
