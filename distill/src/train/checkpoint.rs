//! Training checkpoints: `DIR/ckpt-000500/` with the model, the optimiser state and the loop
//! state, written into a temporary folder and renamed into place, so a kill never leaves a
//! half-written checkpoint that a resume would pick up.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Burn could not save or load a record.
    #[error("{}: {message}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// Burn's message.
        message: String,
    },
    /// `state.json` is unreadable.
    #[error("{}: {source}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The loop's own state, saved beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// The next optimiser step to run (steps `0..step` are done).
    pub step: usize,
    /// The run's seed, to refuse resuming with a different one.
    pub seed: u64,
    /// Anything else the task wants back (e.g. a self-training switch, a queue).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// The checkpoints of one training run, in `dir`.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

const MODEL: &str = "model.bpk";
const OPTIM: &str = "optim.bpk";
const STATE: &str = "state.json";

impl Checkpoints {
    /// Checkpoints in `dir`, keeping the newest `keep` (at least one).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    /// The folder of the checkpoint taken after `step` steps.
    pub fn path_for(&self, step: usize) -> PathBuf {
        self.dir.join(format!("ckpt-{step:06}"))
    }

    /// Every complete checkpoint, oldest first, as (steps done, folder).
    pub fn list(&self) -> Vec<(usize, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix("ckpt-")?.parse().ok()?;
                let path = e.path();
                path.join(STATE).is_file().then_some((step, path))
            })
            .collect();
        out.sort();
        out
    }

    /// The newest complete checkpoint.
    pub fn latest(&self) -> Option<(usize, PathBuf)> {
        self.list().pop()
    }

    /// Saves `model`, `optim` and `state` as `ckpt-{state.step}` and prunes old ones.
    pub fn save<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        state: &LoopState,
    ) -> Result<PathBuf, CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        let final_dir = self.path_for(state.step);
        let tmp = self.dir.join(format!(".ckpt-{:06}.tmp", state.step));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let model_path = tmp.join(MODEL);
        // A running statistic (batch norm's mean and variance) keeps its newest update aside
        // until it is synchronised, and the record takes the older value; `valid()` syncs the
        // state that the model's clones share, so the checkpoint holds the current statistics
        // and a resumed run continues from exactly where this one is.
        let _ = model.valid();
        model
            .clone()
            .save_file(&model_path)
            .map_err(|e| CheckpointError::Record {
                path: model_path.clone(),
                message: e.to_string(),
            })?;
        let optim_path = tmp.join(OPTIM);
        optim
            .save(&optim_path)
            .map_err(|e| CheckpointError::Record {
                path: optim_path.clone(),
                message: e.to_string(),
            })?;
        let state_path = tmp.join(STATE);
        let json = serde_json::to_vec_pretty(state).expect("LoopState serialises");
        std::fs::write(&state_path, json).map_err(io(&state_path))?;
        for f in [&model_path, &optim_path, &state_path] {
            std::fs::File::open(f)
                .and_then(|f| f.sync_all())
                .map_err(io(f))?;
        }
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        let all = self.list();
        if all.len() > self.keep {
            for (_, old) in &all[..all.len() - self.keep] {
                std::fs::remove_dir_all(old).map_err(io(old))?;
            }
        }
        Ok(final_dir)
    }

    /// Loads a checkpoint folder into a freshly built `model` and `optim` (parameter ids are
    /// restored from the record, so the optimiser state finds its parameters).
    pub fn load<M: Module>(
        &self,
        path: &Path,
        model: M,
        optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer, LoopState), CheckpointError> {
        let model = Self::load_model(path, model)?;
        let optim_path = path.join(OPTIM);
        let optim = optim
            .load(&optim_path)
            .map_err(|e| CheckpointError::Record {
                path: optim_path.clone(),
                message: e.to_string(),
            })?;
        let state_path = path.join(STATE);
        let text = std::fs::read(&state_path).map_err(|source| CheckpointError::Io {
            path: state_path.clone(),
            source,
        })?;
        let state = serde_json::from_slice(&text).map_err(|source| CheckpointError::State {
            path: state_path.clone(),
            source,
        })?;
        Ok((model, optim, state))
    }

    /// Loads only the model weights of a checkpoint folder (for evaluation and export).
    pub fn load_model<M: Module>(path: &Path, model: M) -> Result<M, CheckpointError> {
        let model_path = path.join(MODEL);
        let flags = require_grad_flags(&model);
        let model = model
            .try_load_file(&model_path)
            .map_err(|e| CheckpointError::Record {
                path: model_path.clone(),
                message: e.to_string(),
            })?;
        Ok(set_require_grad_flags(model, flags))
    }
}

/// Each float parameter's require-grad flag, in visiting order.
///
/// Loading a record makes every float parameter of an autodiff module trainable again, so a
/// frozen one (e.g. `FrozenBatchNorm2d`'s statistics) would start receiving gradients and
/// optimiser updates after `--resume`; the flags of the freshly built module are put back.
fn require_grad_flags<M: Module>(model: &M) -> Vec<bool> {
    struct Flags(Vec<bool>);
    impl ModuleVisitor for Flags {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().is_require_grad());
        }
    }
    let mut f = Flags(Vec::new());
    model.visit(&mut f);
    f.0
}

/// Sets the flags of [`require_grad_flags`] on `model`, in the same order.
fn set_require_grad_flags<M: Module>(model: M, flags: Vec<bool>) -> M {
    struct Set(std::vec::IntoIter<bool>);
    impl ModuleMapper for Set {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.next() {
                Some(flag) if flag != p.val().is_require_grad() => p.set_require_grad(flag),
                _ => p,
            }
        }
    }
    model.map(&mut Set(flags.into_iter()))
}
