//! Balanced sampling of positive and negative training examples, as torchvision's
//! `BalancedPositiveNegativeSampler`, with a caller-seeded RNG.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::matcher::Match;

/// The training role of an anchor or proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Foreground.
    Positive,
    /// Background.
    Negative,
    /// Neither (between the matcher's thresholds).
    Ignore,
}

impl From<&Match> for Role {
    /// A matched box is foreground, one below the low threshold background, one between the
    /// thresholds neither.
    fn from(m: &Match) -> Self {
        match m {
            Match::Gt(_) => Role::Positive,
            Match::Background => Role::Negative,
            Match::Ignore => Role::Ignore,
        }
    }
}

/// Draws at most `batch_size_per_image` examples per image, at most `positive_fraction` of
/// them positive; negatives fill the rest.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct BalancedSampler {
    /// Examples per image (RPN 256, RoI head 512).
    pub batch_size_per_image: usize,
    /// Largest share of positives (RPN 0.5, RoI head 0.25).
    pub positive_fraction: f32,
}

/// Indices chosen by the sampler, each list ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    /// Chosen positives.
    pub positive: Vec<usize>,
    /// Chosen negatives.
    pub negative: Vec<usize>,
}

/// The positives and the negatives among a list of roles, each ascending: what
/// [`BalancedSampler::draw`] draws from. Deterministic, so callers can find them in parallel
/// and keep only the draws, which share one RNG, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    /// Indices of the positives.
    pub positive: Vec<usize>,
    /// Indices of the negatives.
    pub negative: Vec<usize>,
}

impl Candidates {
    /// The candidates among `roles` (the `i`-th role is example `i`'s).
    pub fn of(roles: impl IntoIterator<Item = Role>) -> Self {
        let mut c = Self::default();
        for (i, r) in roles.into_iter().enumerate() {
            match r {
                Role::Positive => c.positive.push(i),
                Role::Negative => c.negative.push(i),
                Role::Ignore => {}
            }
        }
        c
    }
}

impl BalancedSampler {
    /// Samples uniformly without replacement among positives and among negatives.
    pub fn sample<R: Rng + ?Sized>(&self, roles: &[Role], rng: &mut R) -> Sampled {
        self.draw(&Candidates::of(roles.iter().copied()), rng)
    }

    /// [`Self::sample`] from candidates found beforehand (the same draws for the same RNG).
    pub fn draw<R: Rng + ?Sized>(&self, candidates: &Candidates, rng: &mut R) -> Sampled {
        let Candidates { positive, negative } = candidates;
        let num_pos = ((self.batch_size_per_image as f32 * self.positive_fraction) as usize)
            .min(positive.len());
        let num_neg = (self.batch_size_per_image - num_pos).min(negative.len());
        Sampled {
            positive: choose(positive, num_pos, rng),
            negative: choose(negative, num_neg, rng),
        }
    }
}

fn choose<R: Rng + ?Sized>(from: &[usize], k: usize, rng: &mut R) -> Vec<usize> {
    let mut picked: Vec<usize> = rand::seq::index::sample(rng, from.len(), k)
        .into_iter()
        .map(|i| from[i])
        .collect();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn respects_fraction_and_fills_with_negatives() {
        let mut roles = vec![Role::Negative; 100];
        for r in roles.iter_mut().take(30) {
            *r = Role::Positive;
        }
        roles[99] = Role::Ignore;
        let s = BalancedSampler {
            batch_size_per_image: 40,
            positive_fraction: 0.25,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let got = s.sample(&roles, &mut rng);
        assert_eq!(got.positive.len(), 10);
        assert_eq!(got.negative.len(), 30);
        assert!(got.positive.iter().all(|&i| roles[i] == Role::Positive));
        assert!(got.negative.iter().all(|&i| roles[i] == Role::Negative));
        // Few positives: negatives fill the batch.
        let few = s.sample(&roles[25..], &mut rng);
        assert_eq!((few.positive.len(), few.negative.len()), (5, 35));
        // Same seed, same draw; from candidates found beforehand too.
        let a = s.sample(&roles, &mut ChaCha8Rng::seed_from_u64(1));
        let b = s.sample(&roles, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, b);
        let c = Candidates::of(roles.iter().copied());
        assert_eq!((c.positive.len(), c.negative.len()), (30, 69));
        assert_eq!(s.draw(&c, &mut ChaCha8Rng::seed_from_u64(1)), a);
    }
}
