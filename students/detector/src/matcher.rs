//! Assigns each prediction (anchor or proposal) to a ground-truth box by IoU, as
//! torchvision's `Matcher`.

use serde::{Deserialize, Serialize};

/// What a prediction was matched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The ground-truth box at this index (foreground).
    Gt(usize),
    /// Best IoU below the low threshold (torchvision's `BELOW_LOW_THRESHOLD`, -1).
    Background,
    /// Best IoU in `[low, high)` (torchvision's `BETWEEN_THRESHOLDS`, -2): neither.
    Ignore,
}

impl Match {
    /// torchvision's integer code: the index, -1 or -2.
    pub fn code(self) -> i64 {
        match self {
            Self::Gt(i) => i as i64,
            Self::Background => -1,
            Self::Ignore => -2,
        }
    }
}

/// IoU matcher with high/low thresholds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    /// IoU at or above which a prediction is foreground.
    pub high_threshold: f32,
    /// IoU below which a prediction is background; in between it is ignored.
    pub low_threshold: f32,
    /// Also make foreground every prediction that is the best (ties included) for some ground
    /// truth, even below `high_threshold` (the RPN's setting).
    pub allow_low_quality_matches: bool,
}

impl Matcher {
    /// A matcher; `low_threshold <= high_threshold`.
    pub fn new(high_threshold: f32, low_threshold: f32, allow_low_quality_matches: bool) -> Self {
        assert!(
            low_threshold <= high_threshold,
            "matcher: low threshold above high"
        );
        Self {
            high_threshold,
            low_threshold,
            allow_low_quality_matches,
        }
    }

    /// Matches predictions given the IoU matrix `quality[gt][pred]` (`M` rows, `N` columns).
    /// With no ground truth every prediction is background.
    ///
    /// As torchvision: each prediction takes its best ground truth (the first on ties); the
    /// low-quality rule restores that best match for every prediction that attains some ground
    /// truth's maximum IoU, including a maximum of 0.
    pub fn assign(&self, quality: &[Vec<f32>], n_pred: usize) -> Vec<Match> {
        if quality.is_empty() {
            return vec![Match::Background; n_pred];
        }
        let mut best = vec![(f32::NEG_INFINITY, 0usize); n_pred];
        for (g, row) in quality.iter().enumerate() {
            assert_eq!(row.len(), n_pred, "matcher: ragged quality matrix");
            for (p, &q) in row.iter().enumerate() {
                if q > best[p].0 {
                    best[p] = (q, g);
                }
            }
        }
        let mut matches: Vec<Match> = best
            .iter()
            .map(|&(q, g)| {
                if q < self.low_threshold {
                    Match::Background
                } else if q < self.high_threshold {
                    Match::Ignore
                } else {
                    Match::Gt(g)
                }
            })
            .collect();
        if self.allow_low_quality_matches {
            for row in quality {
                let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (p, &q) in row.iter().enumerate() {
                    if q == top {
                        matches[p] = Match::Gt(best[p].1);
                    }
                }
            }
        }
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_low_quality() {
        let q = vec![vec![0.8, 0.5, 0.2, 0.1], vec![0.1, 0.6, 0.25, 0.0]];
        let m = Matcher::new(0.7, 0.3, false).assign(&q, 4);
        assert_eq!(
            m,
            vec![
                Match::Gt(0),
                Match::Ignore,
                Match::Background,
                Match::Background
            ]
        );
        let m = Matcher::new(0.7, 0.3, true).assign(&q, 4);
        // gt 1's best is pred 1 (0.6): restored to its own best match, gt 1.
        assert_eq!(
            m,
            vec![
                Match::Gt(0),
                Match::Gt(1),
                Match::Background,
                Match::Background
            ]
        );
        assert_eq!(
            Matcher::new(0.5, 0.5, false).assign(&[], 2),
            vec![Match::Background; 2]
        );
    }
}
