//! Experiment configs: TOML files in `configs/` that inherit (`extends`), take `--set`
//! overrides, and report bad keys with the file and line they came from.

pub mod experiment;
pub mod loader;

pub use loader::{Invalid, Layered, Origin, Validate};

use std::path::Path;

use serde::de::DeserializeOwned;

/// Reads the own config of `ovkd COMMAND` (`proposals`, `train detector`, `train segmenter`):
/// `path` with its parents and the `--set` overrides, as `T`. `kind` names the config
/// (`detector`, `segmenter`). An experiment, which only `ovkd pipeline` takes, is the likeliest
/// wrong file, and as a student config it fails on a key deep in its parents; that case is
/// told as it is, with the file to pass instead.
pub fn load_command_config<T: DeserializeOwned + Validate>(
    path: &Path,
    sets: &[String],
    command: &str,
    kind: &str,
) -> anyhow::Result<T> {
    let mut layered = Layered::load(path)?;
    let parsed = layered
        .apply_overrides(sets)
        .and_then(|()| layered.deserialize::<T>());
    match parsed {
        Ok(config) => Ok(config),
        Err(err) if experiment::load(path, None, &[]).is_ok() => anyhow::bail!(
            "{path} is an experiment config, which `ovkd pipeline --config` takes; `ovkd \
             {command}` takes a {kind} config (`configs/{kind}/ov_shapes.toml`, or the \
             `{kind}.toml` that `ovkd pipeline` writes into its run directory). This \
             experiment's stage alone: `ovkd pipeline --config {path} --only {stage}` (as a \
             {kind} config it fails with: {err})",
            path = path.display(),
            stage = command.replace(' ', "-"),
        ),
        Err(err) => Err(err.into()),
    }
}
