//! MaskCLIP+'s self-training: after some steps on the teacher's pseudo-labels, the student
//! labels the unlabelled pixels itself (its own confident predictions on the batch it trains
//! on), which lets it sharpen the teacher's coarse, patch-sized labels.
//!
//! Which source a step uses is a function of the step alone, so an interrupted run resumed from
//! a checkpoint switches at exactly the same step as an uninterrupted one.

use serde::{Deserialize, Serialize};

/// Self-training settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelfTrainConfig {
    /// Switch to self-training at all (false keeps `after_step` in the config but never
    /// switches, for ablations).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The first step that uses the student's own predictions; absent for never.
    #[serde(default)]
    pub after_step: Option<usize>,
    /// Minimum probability (over the candidate classes) of a self-label.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

fn default_threshold() -> f64 {
    0.7
}
fn yes() -> bool {
    true
}

impl Default for SelfTrainConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            after_step: None,
            threshold: default_threshold(),
        }
    }
}

/// Where the labels of unlabelled pixels come from at a step.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PseudoSource {
    /// Unlabelled pixels stay unlabelled (LSeg alone).
    None,
    /// The teacher's MaskCLIP pseudo-labels.
    Teacher,
    /// The student's own confident predictions.
    Student,
}

impl SelfTrainConfig {
    /// The step self-training starts at, if it does.
    pub fn start(&self) -> Option<usize> {
        self.after_step.filter(|_| self.enabled)
    }

    /// The source at 0-based `step`, given whether teacher pseudo-labels are enabled.
    pub fn source_at(&self, step: usize, teacher_labels: bool) -> PseudoSource {
        match self.start() {
            Some(n) if step >= n => PseudoSource::Student,
            _ if teacher_labels => PseudoSource::Teacher,
            _ => PseudoSource::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_at_the_configured_step() {
        let c = SelfTrainConfig {
            after_step: Some(5),
            ..SelfTrainConfig::default()
        };
        assert_eq!(c.source_at(4, true), PseudoSource::Teacher);
        assert_eq!(c.source_at(5, true), PseudoSource::Student);
        assert_eq!(c.source_at(4, false), PseudoSource::None);
        assert_eq!(c.source_at(9, false), PseudoSource::Student);
        let never = SelfTrainConfig::default();
        assert_eq!(never.source_at(1_000_000, true), PseudoSource::Teacher);
        let off = SelfTrainConfig {
            enabled: false,
            ..c
        };
        assert_eq!(off.source_at(9, true), PseudoSource::Teacher);
    }
}
