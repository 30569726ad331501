//! Training samples for the segmenter: image, ground-truth label map, and the teacher's
//! pseudo-labels merged into the label map's unlabelled pixels, so that the loader's
//! augmentation (nearest-neighbour resize, flips) moves them together.
//!
//! Merged pseudo-labels are stored as `PSEUDO_OFFSET + class` in the 16-bit label map; the
//! training step tells them from ground truth by that offset.

use std::path::PathBuf;
use std::sync::Arc;

use ovkd_data::loader::{Dataset, load_rgb};
use ovkd_data::semantic::{IGNORE_INDEX, SemanticMask, check_same_size};
use ovkd_data::transforms::Sample;

/// Label-map values at or above this are teacher pseudo-labels (`value - PSEUDO_OFFSET` is the
/// class).
pub const PSEUDO_OFFSET: u16 = 1000;

/// "No pseudo-label" in a pseudo-label map.
pub const NO_LABEL: u8 = 255;

/// Images and label maps paired by index, with optional pseudo-label maps (one per image, its
/// size, row-major, [`NO_LABEL`] where the teacher gives none).
#[derive(Debug, Clone)]
pub struct SegTrainSet {
    pairs: Vec<(PathBuf, PathBuf)>,
    pseudo: Option<Arc<Vec<Vec<u8>>>>,
}

impl SegTrainSet {
    /// `(image, label)` paths.
    pub fn new(pairs: Vec<(PathBuf, PathBuf)>) -> Self {
        Self {
            pairs,
            pseudo: None,
        }
    }

    /// Adds pseudo-label maps (one per pair).
    pub fn with_pseudo(mut self, maps: Arc<Vec<Vec<u8>>>) -> Self {
        assert_eq!(
            maps.len(),
            self.pairs.len(),
            "one pseudo-label map per image"
        );
        self.pseudo = Some(maps);
        self
    }

    /// The pairs.
    pub fn pairs(&self) -> &[(PathBuf, PathBuf)] {
        &self.pairs
    }
}

impl Dataset for SegTrainSet {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, index: usize) -> ovkd_data::Result<Sample> {
        let (ip, lp) = &self.pairs[index];
        let image = load_rgb(ip)?;
        let mut sem = SemanticMask::read(lp)?;
        check_same_size(
            lp,
            (sem.width(), sem.height()),
            ip,
            (image.width() as usize, image.height() as usize),
        )?;
        if let Some(maps) = &self.pseudo {
            let map = &maps[index];
            if map.len() != sem.as_slice().len() {
                return Err(ovkd_data::Error::Config(format!(
                    "{}: pseudo-label map has {} pixels, the label map {}",
                    lp.display(),
                    map.len(),
                    sem.as_slice().len()
                )));
            }
            for (v, &p) in sem.as_mut_slice().iter_mut().zip(map) {
                if *v == IGNORE_INDEX && p != NO_LABEL {
                    *v = PSEUDO_OFFSET + p as u16;
                }
            }
        }
        let mut s = Sample::from_image(index as u64, image);
        s.semantic = Some(sem);
        Ok(s)
    }
}
