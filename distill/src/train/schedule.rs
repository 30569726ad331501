//! Learning-rate schedules: linear warm-up, then cosine, step or constant.

use serde::{Deserialize, Serialize};

/// What the learning rate does after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decay {
    /// Half a cosine from the base rate down to `base * min_factor` at the last step.
    Cosine {
        /// Final rate as a fraction of the base rate.
        #[serde(default)]
        min_factor: f64,
    },
    /// Multiply by `gamma` at each milestone step (detectron2's WarmupMultiStepLR).
    Step {
        /// Steps at which the rate drops.
        milestones: Vec<usize>,
        /// Factor applied at each milestone.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Keep the base rate.
    Constant,
}

fn default_gamma() -> f64 {
    0.1
}

/// A warm-up-then-decay schedule over `total_steps` optimiser steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Steps of linear warm-up from `base * warmup_factor` to `base`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Starting fraction of the base rate during warm-up (detectron2 uses 0.001).
    #[serde(default = "default_warmup_factor")]
    pub warmup_factor: f64,
    /// What follows the warm-up.
    #[serde(default = "default_decay")]
    pub decay: Decay,
}

fn default_warmup_factor() -> f64 {
    0.001
}

fn default_decay() -> Decay {
    Decay::Cosine { min_factor: 0.0 }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            warmup_factor: default_warmup_factor(),
            decay: default_decay(),
        }
    }
}

impl ScheduleConfig {
    /// The learning rate for 0-based optimiser step `step` of `total_steps`.
    pub fn lr_at(&self, base_lr: f64, step: usize, total_steps: usize) -> f64 {
        let warm = if step < self.warmup_steps {
            let alpha = step as f64 / self.warmup_steps as f64;
            self.warmup_factor * (1.0 - alpha) + alpha
        } else {
            1.0
        };
        let decay = match &self.decay {
            Decay::Constant => 1.0,
            Decay::Step { milestones, gamma } => {
                gamma.powi(milestones.iter().filter(|&&m| step >= m).count() as i32)
            }
            Decay::Cosine { min_factor } => {
                // Cosine runs over the steps after warm-up, as in timm and mmengine.
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        base_lr * warm * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_from_the_factor() {
        let s = ScheduleConfig {
            warmup_steps: 10,
            warmup_factor: 0.1,
            decay: Decay::Constant,
        };
        assert!((s.lr_at(1.0, 0, 100) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1.0, 5, 100) - 0.55).abs() < 1e-12);
        assert!((s.lr_at(1.0, 10, 100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_reaches_the_floor_at_the_end() {
        let s = ScheduleConfig {
            warmup_steps: 0,
            warmup_factor: 1.0,
            decay: Decay::Cosine { min_factor: 0.1 },
        };
        assert!((s.lr_at(2.0, 0, 100) - 2.0).abs() < 1e-12);
        assert!((s.lr_at(2.0, 50, 100) - 2.0 * 0.55).abs() < 1e-12);
        assert!((s.lr_at(2.0, 100, 100) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn steps_drop_at_milestones() {
        let s = ScheduleConfig {
            warmup_steps: 0,
            warmup_factor: 1.0,
            decay: Decay::Step {
                milestones: vec![10, 20],
                gamma: 0.1,
            },
        };
        assert_eq!(s.lr_at(1.0, 9, 30), 1.0);
        assert!((s.lr_at(1.0, 10, 30) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1.0, 25, 30) - 0.01).abs() < 1e-12);
    }
}
