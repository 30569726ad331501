//! One module per command group; each has a clap `*Command` and a `run`.

pub mod data;
pub mod eval;
pub mod export;
pub mod export_onnx;
pub mod info;
pub mod pipeline;
pub mod predict;
pub mod predict_seg;
pub mod proposals;
pub mod pseudo_boxes;
pub mod report;
pub mod sweep;
pub mod teacher;
pub mod train_detector;
pub mod train_segmenter;

use crate::device::DeviceSpec;
use std::path::PathBuf;

/// The flags every command that trains in a run directory takes (`ovkd proposals`,
/// `ovkd train detector`, `ovkd train segmenter`); the pipeline passes them the same way.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The command's config (TOML; `extends` allowed): a detector config for `proposals` and
    /// `train detector`, a segmenter config for `train segmenter` (`configs/detector/`,
    /// `configs/segmenter/`, or the `detector.toml` / `segmenter.toml` a pipeline writes into
    /// its run); an experiment config goes to `ovkd pipeline`.
    #[arg(long)]
    pub config: PathBuf,
    /// The run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Continue from the newest checkpoint of this command in RUN (a fresh start if none).
    #[arg(long)]
    pub resume: bool,
    /// Override a config value, e.g. `--set train.steps=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// What every command gets from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The device named by `--device`, resolved lazily by commands that use tensors.
    pub device: DeviceSpec,
}

/// `err` and its causes on one line, `context: cause: cause`, as `{:#}` prints them, less any
/// cause that the text before it already ends with: the libraries' errors name their source in
/// their own message (`path: No such file or directory`) and keep it as their `source` too,
/// which `{:#}` would print a second time.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn error_message_names_each_cause_once() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(ReadError {
            path: "a.toml".into(),
            source: missing(),
        })
        .context("reading the experiment a.toml");
        assert_eq!(
            error_message(&err),
            "reading the experiment a.toml: a.toml: no such file"
        );
        assert_eq!(
            format!("{err:#}"),
            "reading the experiment a.toml: a.toml: no such file: no such file"
        );
        // Causes that do not repeat stay.
        let err = anyhow::Error::new(missing())
            .context("opening b")
            .context("loading c");
        assert_eq!(error_message(&err), "loading c: opening b: no such file");
    }
}
