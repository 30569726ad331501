//! Random crops of a collated training batch: with scale jitter above 1, the loader's images
//! grow past the training size, and a crop back to it keeps the step's cost while each image
//! shows a different part of a rescaled scene (a random-resized crop, as mmsegmentation's
//! `RandomCrop` after `Resize` with a ratio range).
//!
//! Each image's window is drawn from a ChaCha8 stream seeded by (seed, epoch, dataset index),
//! like the loader's augmentation, so a resumed run crops exactly as an uninterrupted one.

use ovkd_data::loader::HostBatch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The crop stream of one image of one epoch.
fn stream(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"ovkd-seg-crop");
    h.update(seed.to_le_bytes());
    h.update(epoch.to_le_bytes());
    h.update((index as u64).to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// Crops every image of `hb` (images `[B, 3, H, W]`, labels `[B, H, W]`) to a random
/// `size x size` window of its own pixels (its whole extent along a side where it is smaller),
/// into a batch of side `min(H, size)` x `min(W, size)`. Padding stays padding: zero pixels and
/// ignore labels. Image sizes in the metadata become the windows' sizes.
pub fn random_crop(hb: HostBatch, size: usize, seed: u64, epoch: u64) -> HostBatch {
    let [b, c, h, w] = hb.shape;
    let (ch, cw) = (h.min(size), w.min(size));
    if [ch, cw] == [h, w] {
        return hb;
    }
    let mut images = vec![0f32; b * c * ch * cw];
    let mut semantic = hb
        .semantic
        .as_ref()
        .map(|_| vec![crate::seg::IGNORE; b * ch * cw]);
    let mut meta = hb.meta;
    for i in 0..b {
        let [hi, wi] = meta.image_sizes[i];
        let (hi, wi) = (hi.min(h), wi.min(w));
        let mut rng = stream(seed, epoch, meta.indices[i]);
        let oy = rng.random_range(0..=hi.saturating_sub(ch));
        let ox = rng.random_range(0..=wi.saturating_sub(cw));
        let (nh, nw) = ((hi - oy).min(ch), (wi - ox).min(cw));
        for y in 0..nh {
            for k in 0..c {
                let src = ((i * c + k) * h + oy + y) * w + ox;
                let dst = ((i * c + k) * ch + y) * cw;
                images[dst..dst + nw].copy_from_slice(&hb.images[src..src + nw]);
            }
            if let (Some(out), Some(sem)) = (&mut semantic, &hb.semantic) {
                let src = (i * h + oy + y) * w + ox;
                let dst = (i * ch + y) * cw;
                out[dst..dst + nw].copy_from_slice(&sem[src..src + nw]);
            }
        }
        meta.image_sizes[i] = [nh, nw];
    }
    HostBatch {
        images,
        shape: [b, c, ch, cw],
        semantic,
        meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovkd_data::loader::BatchMeta;

    /// Two images in a [2, 2, 6, 5] batch whose pixel values encode (image, channel, y, x);
    /// the second is 4 x 3 inside the padding.
    fn batch() -> HostBatch {
        let (b, c, h, w) = (2, 2, 6, 5);
        let sizes = [[6, 5], [4, 3]];
        let mut images = vec![0f32; b * c * h * w];
        let mut semantic = vec![crate::seg::IGNORE; b * h * w];
        for (i, [hi, wi]) in sizes.into_iter().enumerate() {
            for y in 0..hi {
                for x in 0..wi {
                    for k in 0..c {
                        images[((i * c + k) * h + y) * w + x] =
                            (1000 * i + 100 * k + 10 * y + x) as f32 + 1.0;
                    }
                    semantic[(i * h + y) * w + x] = (10 * y + x) as i64;
                }
            }
        }
        HostBatch {
            images,
            shape: [b, c, h, w],
            semantic: Some(semantic),
            meta: BatchMeta {
                indices: vec![7, 3],
                image_sizes: sizes.to_vec(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn crops_move_pixels_and_labels_together_and_keep_padding() {
        let mut origins = std::collections::BTreeSet::new();
        for epoch in 0..20 {
            let out = random_crop(batch(), 3, 5, epoch);
            assert_eq!(out.shape, [2, 2, 3, 3]);
            let sem = out.semantic.as_ref().unwrap();
            for i in 0..2 {
                let [nh, nw] = out.meta.image_sizes[i];
                // The first image is larger than the window on both sides, the second fits
                // across (3 wide) and is cropped along its 4 rows.
                assert_eq!([nh, nw], [3, 3]);
                let v0 = out.images[(i * 2) * 9] - 1.0 - 1000.0 * i as f32;
                let (oy, ox) = ((v0 as usize) / 10, (v0 as usize) % 10);
                if i == 0 {
                    origins.insert((oy, ox));
                    assert!(oy <= 3 && ox <= 2, "window inside the image: {oy} {ox}");
                } else {
                    assert!(oy <= 1 && ox == 0, "window inside the image: {oy} {ox}");
                }
                for y in 0..3 {
                    for x in 0..3 {
                        for k in 0..2 {
                            let want = (1000 * i + 100 * k + 10 * (oy + y) + ox + x) as f32 + 1.0;
                            assert_eq!(out.images[((i * 2 + k) * 3 + y) * 3 + x], want);
                        }
                        assert_eq!(sem[(i * 3 + y) * 3 + x], (10 * (oy + y) + ox + x) as i64);
                    }
                }
            }
            // The same (seed, epoch) crops the same windows: resume-exact.
            let again = random_crop(batch(), 3, 5, epoch);
            assert_eq!(again.images, out.images);
        }
        assert!(
            origins.len() > 4,
            "windows vary with the epoch: {origins:?}"
        );
    }

    #[test]
    fn an_image_smaller_than_the_window_keeps_its_padding() {
        // Window 5: the batch's 5 columns stay, its 6 rows become 5; the second image (4 x 3)
        // is whole, with zero pixels and ignore labels around it.
        let out = random_crop(batch(), 5, 0, 0);
        assert_eq!(out.shape, [2, 2, 5, 5]);
        assert_eq!(out.meta.image_sizes[1], [4, 3]);
        let sem = out.semantic.as_ref().unwrap();
        for y in 0..5 {
            for x in 0..5 {
                let inside = y < 4 && x < 3;
                let p = (25 + y * 5 + x) as usize;
                assert_eq!(sem[p] != crate::seg::IGNORE, inside, "label at {y},{x}");
                assert_eq!(
                    out.images[(2 * 25) + y * 5 + x] != 0.0,
                    inside,
                    "pixel at {y},{x}"
                );
            }
        }
        // A window as large as the batch changes nothing.
        let same = random_crop(batch(), 6, 0, 0);
        assert_eq!(same.images, batch().images);
    }
}
