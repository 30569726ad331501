//! Datasets, batching into Burn tensors, and a prefetching loader.
//!
//! [`DataLoader::epoch`] returns an iterator whose batches are decoded, augmented and collated
//! on a background thread (images of a batch in parallel with rayon) and handed over through a
//! bounded channel, so a trainer never waits on decoding while `prefetch` batches are ready.
//! Shuffling and augmentation draw from ChaCha8 streams seeded by (seed, epoch, index), so an
//! epoch is the same whatever the thread timing.

use crate::boxes::Boxes;
use crate::coco::CocoDataset;
use crate::dataset_dir::DatasetDir;
use crate::error::{Error, Problem, Record, Result};
use crate::mask::BitMask;
use crate::semantic::{IGNORE_INDEX, SemanticMask, check_same_size};
use crate::transforms::{AugmentConfig, Sample, normalise};
use burn::tensor::{Device, Int, Tensor, TensorData};
use crossbeam_channel::{Receiver, bounded};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Something that yields [`Sample`]s by index.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Decodes sample `index` (untransformed).
    fn get(&self, index: usize) -> Result<Sample>;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes an image file to RGB8, naming it in errors.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    let bytes = crate::io::read_bytes(path)?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Image {
        action: "decode",
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(img.to_rgb8())
}

/// Images, boxes and (optionally) instance masks from a COCO instances file, and semantic
/// masks from a directory of label PNGs named like the images.
#[derive(Debug, Clone)]
pub struct DetectionDataset {
    coco: CocoDataset,
    json_path: PathBuf,
    images_dir: PathBuf,
    by_image: Vec<Vec<usize>>,
    class_ids: Vec<u64>,
    label_of: HashMap<u64, usize>,
    load_masks: bool,
    skip_crowd: bool,
    semantic_dir: Option<PathBuf>,
    reduce_zero_label: bool,
}

impl DetectionDataset {
    /// Reads `json` (COCO instances); image files are `images_dir/file_name`. Labels are the
    /// categories in file order; masks are not loaded; crowd regions are skipped.
    pub fn open(json: impl AsRef<Path>, images_dir: impl AsRef<Path>) -> Result<Self> {
        let json = json.as_ref();
        let coco = CocoDataset::read(json)?;
        Ok(Self::from_coco(coco, json, images_dir))
    }

    /// From an already-read file (`json_path` names it in errors).
    pub fn from_coco(
        coco: CocoDataset,
        json_path: impl AsRef<Path>,
        images_dir: impl AsRef<Path>,
    ) -> Self {
        let index = coco.image_index();
        let mut by_image = vec![Vec::new(); coco.images.len()];
        for (i, a) in coco.annotations.iter().enumerate() {
            if let Some(&k) = index.get(&a.image_id) {
                by_image[k].push(i);
            }
        }
        let class_ids: Vec<u64> = coco.categories.iter().map(|c| c.id).collect();
        let mut ds = Self {
            coco,
            json_path: json_path.as_ref().to_path_buf(),
            images_dir: images_dir.as_ref().to_path_buf(),
            by_image,
            class_ids: Vec::new(),
            label_of: HashMap::new(),
            load_masks: false,
            skip_crowd: true,
            semantic_dir: None,
            reduce_zero_label: false,
        };
        ds.set_classes(class_ids);
        ds
    }

    /// The train or val split of a data-set folder, with instance masks, and semantic masks
    /// where the folder has them.
    pub fn of_dir(dir: &DatasetDir, split: &str) -> Result<Self> {
        let ds = Self::open(dir.instances_path(split), dir.images_dir(split))?.with_masks(true);
        Ok(match dir.require_semantic(split) {
            Ok(sem) => ds.with_semantic_dir(sem, false),
            Err(_) => ds,
        })
    }

    fn set_classes(&mut self, ids: Vec<u64>) {
        self.label_of = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        self.class_ids = ids;
    }

    /// Uses this class order (e.g. a vocabulary's ids) for the labels; annotations of other
    /// categories are left out.
    pub fn with_classes(mut self, ids: Vec<u64>) -> Self {
        self.set_classes(ids);
        self
    }

    /// Decodes instance masks (RLE or polygons) too.
    pub fn with_masks(mut self, yes: bool) -> Self {
        self.load_masks = yes;
        self
    }

    /// Keeps crowd regions (skipped by default).
    pub fn with_crowd(mut self, yes: bool) -> Self {
        self.skip_crowd = !yes;
        self
    }

    /// Loads `dir/<image file stem>.png` as each image's semantic mask, optionally with
    /// ADE20K's `reduce_zero_label`.
    pub fn with_semantic_dir(mut self, dir: impl AsRef<Path>, reduce_zero_label: bool) -> Self {
        self.semantic_dir = Some(dir.as_ref().to_path_buf());
        self.reduce_zero_label = reduce_zero_label;
        self
    }

    /// Category id of each label index.
    pub fn class_ids(&self) -> &[u64] {
        &self.class_ids
    }

    /// The instances file.
    pub fn coco(&self) -> &CocoDataset {
        &self.coco
    }

    /// Path of image `index`.
    pub fn image_path(&self, index: usize) -> PathBuf {
        let im = &self.coco.images[index];
        self.images_dir.join(im.file_name().unwrap_or_default())
    }
}

impl Dataset for DetectionDataset {
    fn len(&self) -> usize {
        self.coco.images.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let im = &self.coco.images[index];
        let path = self.image_path(index);
        let image = load_rgb(&path)?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        if (w, h) != (im.width as usize, im.height as usize) {
            return Err(Error::invalid(Problem::new(
                &self.json_path,
                Record::Item {
                    kind: "image",
                    index,
                    id: Some(im.id),
                },
                Some("width"),
                format!(
                    "the record says {}x{} but {} is {w}x{h}",
                    im.width,
                    im.height,
                    path.display()
                ),
            )));
        }
        let mut s = Sample::from_image(im.id, image);
        let mut boxes = Vec::new();
        let mut masks = Vec::new();
        for &ai in &self.by_image[index] {
            let a = &self.coco.annotations[ai];
            if self.skip_crowd && a.is_crowd() {
                continue;
            }
            let Some(&label) = self.label_of.get(&a.category_id) else {
                continue;
            };
            boxes.push(a.bbox_xyxy());
            s.labels.push(label);
            s.category_ids.push(a.category_id);
            if self.load_masks {
                let m = match &a.segmentation {
                    Some(seg) => seg
                        .to_rle(im.height, im.width)
                        .and_then(|r| Ok(r.decode()?))
                        .map_err(|e| {
                            Error::invalid(Problem::new(
                                &self.json_path,
                                Record::Item {
                                    kind: "annotation",
                                    index: ai,
                                    id: Some(a.id),
                                },
                                Some("segmentation"),
                                e.to_string(),
                            ))
                        })?,
                    // No mask: the box is the best mask there is.
                    None => {
                        let b = a.bbox_xyxy();
                        BitMask::from_fn(w, h, |x, y| {
                            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                            px >= b[0] && px < b[2] && py >= b[1] && py < b[3]
                        })
                    }
                };
                masks.push(m);
            }
        }
        s.boxes = Boxes::new(boxes);
        if self.load_masks {
            s.masks = Some(masks);
        }
        if let Some(dir) = &self.semantic_dir {
            let stem = Path::new(im.file_name().unwrap_or_default())
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let lp = dir.join(format!("{stem}.png"));
            let mut sem = SemanticMask::read_for_image(&lp, &path, (w, h))?;
            if self.reduce_zero_label {
                sem.reduce_zero_label();
            }
            s.semantic = Some(sem);
        }
        Ok(s)
    }
}

/// Images and label PNGs paired by file stem (ADE20K / VOC / mmsegmentation layout).
#[derive(Debug, Clone)]
pub struct SegmentationDataset {
    pairs: Vec<(PathBuf, PathBuf)>,
    reduce_zero_label: bool,
}

impl SegmentationDataset {
    /// Pairs every `labels_dir/NAME.png` with `images_dir/NAME.{png,jpg,jpeg}` (sorted by name);
    /// a label without an image is an error naming it.
    pub fn from_dirs(
        images_dir: impl AsRef<Path>,
        labels_dir: impl AsRef<Path>,
        reduce_zero_label: bool,
    ) -> Result<Self> {
        let (images_dir, labels_dir) = (images_dir.as_ref(), labels_dir.as_ref());
        let mut labels: Vec<PathBuf> = std::fs::read_dir(labels_dir)
            .map_err(|e| Error::io("read directory", labels_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
            .collect();
        labels.sort();
        let mut pairs = Vec::with_capacity(labels.len());
        for lp in labels {
            let stem = lp
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let image = ["png", "jpg", "jpeg", "JPG", "JPEG", "PNG"]
                .iter()
                .map(|ext| images_dir.join(format!("{stem}.{ext}")))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    Error::invalid(Problem::new(
                        &lp,
                        Record::File,
                        None,
                        format!("no image named {stem}.png/.jpg in {}", images_dir.display()),
                    ))
                })?;
            pairs.push((image, lp));
        }
        Ok(Self {
            pairs,
            reduce_zero_label,
        })
    }

    /// `(image, label)` paths.
    pub fn pairs(&self) -> &[(PathBuf, PathBuf)] {
        &self.pairs
    }
}

impl Dataset for SegmentationDataset {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (ip, lp) = &self.pairs[index];
        let image = load_rgb(ip)?;
        let mut sem = SemanticMask::read(lp)?;
        check_same_size(
            lp,
            (sem.width(), sem.height()),
            ip,
            (image.width() as usize, image.height() as usize),
        )?;
        if self.reduce_zero_label {
            sem.reduce_zero_label();
        }
        let mut s = Sample::from_image(index as u64, image);
        s.semantic = Some(sem);
        Ok(s)
    }
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle each epoch.
    pub shuffle: bool,
    /// Drop the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the shuffling and augmentation streams.
    pub seed: u64,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// Pad H and W of a batch up to a multiple of this (e.g. 32 for an FPN); 1 for none.
    pub size_divisor: usize,
    /// Augmentation and normalisation.
    pub augment: AugmentConfig,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            shuffle: false,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            size_divisor: 1,
            augment: AugmentConfig::default(),
        }
    }
}

/// A collated batch still on the host (what the background thread makes).
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Normalised images `[B, 3, H, W]`, zero-padded at the right and bottom.
    pub images: Vec<f32>,
    /// `[B, 3, H, W]`.
    pub shape: [usize; 4],
    /// Semantic labels `[B, H, W]`, padded with 255, if the samples had them.
    pub semantic: Option<Vec<i64>>,
    /// Per-image metadata and targets.
    pub meta: BatchMeta,
}

/// Per-image metadata and targets of a batch (host side).
#[derive(Debug, Clone, Default)]
pub struct BatchMeta {
    /// Dataset index of each image.
    pub indices: Vec<usize>,
    /// Image ids.
    pub image_ids: Vec<u64>,
    /// `[h, w]` of each image after transforms (the valid region of the padded tensor).
    pub image_sizes: Vec<[usize; 2]>,
    /// `[h, w]` of each image as decoded.
    pub orig_sizes: Vec<[usize; 2]>,
    /// Current over original size `[sy, sx]` per image.
    pub scales: Vec<[f32; 2]>,
    /// Whether each image was flipped.
    pub flipped: Vec<bool>,
    /// Boxes per image, `[N_i, 4]`, in the transformed image's pixels.
    pub boxes: Vec<Boxes>,
    /// Contiguous labels per image, `[N_i]`.
    pub labels: Vec<Vec<usize>>,
    /// Category ids per image, `[N_i]`.
    pub category_ids: Vec<Vec<u64>>,
    /// Instance masks per image (each the transformed image's size, unpadded), if loaded.
    pub masks: Option<Vec<Vec<BitMask>>>,
}

/// A batch on a Burn device.
#[derive(Debug)]
pub struct Batch {
    /// Normalised images `[B, 3, H, W]`, zero (the mean colour) in the padding.
    pub images: Tensor<4>,
    /// Semantic labels `[B, H, W]`, 255 (ignore) in the padding, if loaded.
    pub semantic: Option<Tensor<3, Int>>,
    /// Per-image metadata and targets.
    pub meta: BatchMeta,
}

impl HostBatch {
    /// Moves the tensors to `device`.
    pub fn to_device(self, device: &Device) -> Batch {
        let [b, _, h, w] = self.shape;
        let images = Tensor::<4>::from_data(TensorData::new(self.images, self.shape), device);
        let semantic = self
            .semantic
            .map(|s| Tensor::<3, Int>::from_data(TensorData::new(s, [b, h, w]), device));
        Batch {
            images,
            semantic,
            meta: self.meta,
        }
    }
}

impl Batch {
    /// Instance masks of image `i` as a float tensor `[N_i, H, W]` padded to the batch size
    /// (1 inside, 0 outside), if masks were loaded.
    pub fn masks_tensor(&self, i: usize, device: &Device) -> Option<Tensor<3>> {
        let masks = self.meta.masks.as_ref()?.get(i)?;
        let [_, _, h, w] = self.images.dims();
        let mut data = vec![0f32; masks.len() * h * w];
        for (k, m) in masks.iter().enumerate() {
            for y in 0..m.height().min(h) {
                for x in 0..m.width().min(w) {
                    if m.get(x, y) {
                        data[k * h * w + y * w + x] = 1.0;
                    }
                }
            }
        }
        Some(Tensor::<3>::from_data(
            TensorData::new(data, [masks.len(), h, w]),
            device,
        ))
    }
}

/// Collates transformed samples: pads to the largest H and W (rounded up to `size_divisor`),
/// normalises with `mean`/`std`.
pub fn collate(samples: Vec<Sample>, indices: &[usize], cfg: &LoaderConfig) -> HostBatch {
    let div = cfg.size_divisor.max(1);
    let b = samples.len();
    let max_h = samples.iter().map(|s| s.size()[0]).max().unwrap_or(0);
    let max_w = samples.iter().map(|s| s.size()[1]).max().unwrap_or(0);
    let (h, w) = (max_h.div_ceil(div) * div, max_w.div_ceil(div) * div);
    let mut images = vec![0f32; b * 3 * h * w];
    let has_sem = !samples.is_empty() && samples.iter().all(|s| s.semantic.is_some());
    let mut semantic = has_sem.then(|| vec![IGNORE_INDEX as i64; b * h * w]);
    let has_masks = !samples.is_empty() && samples.iter().all(|s| s.masks.is_some());
    let mut meta = BatchMeta {
        indices: indices.to_vec(),
        masks: has_masks.then(Vec::new),
        ..Default::default()
    };
    for (i, s) in samples.into_iter().enumerate() {
        let [sh, sw] = s.size();
        let norm = normalise(&s.image, cfg.augment.mean, cfg.augment.std);
        for c in 0..3 {
            for y in 0..sh {
                let src = &norm[c * sh * sw + y * sw..c * sh * sw + (y + 1) * sw];
                let dst0 = ((i * 3 + c) * h + y) * w;
                images[dst0..dst0 + sw].copy_from_slice(src);
            }
        }
        if let (Some(out), Some(sem)) = (&mut semantic, &s.semantic) {
            for y in 0..sh {
                for x in 0..sw {
                    out[(i * h + y) * w + x] = sem.get(x, y) as i64;
                }
            }
        }
        meta.image_ids.push(s.image_id);
        meta.image_sizes.push([sh, sw]);
        meta.orig_sizes.push(s.orig_size);
        meta.scales.push(s.scale);
        meta.flipped.push(s.flipped);
        meta.boxes.push(s.boxes);
        meta.labels.push(s.labels);
        meta.category_ids.push(s.category_ids);
        if let (Some(all), Some(m)) = (&mut meta.masks, s.masks) {
            all.push(m);
        }
    }
    HostBatch {
        images,
        shape: [b, 3, h, w],
        semantic,
        meta,
    }
}

fn stream(seed: u64, tag: &str, a: u64, b: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"ovkd-loader");
    h.update(seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(a.to_le_bytes());
    h.update(b.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// Batches a [`Dataset`] with augmentation, decoding ahead on a background thread.
#[derive(Clone)]
pub struct DataLoader {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
}

impl DataLoader {
    /// A loader over `dataset`.
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Self {
        Self { dataset, config }
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size.max(1));
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The dataset indices of each batch of an epoch.
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            use rand::Rng;
            let mut rng = stream(self.config.seed, "shuffle", epoch, 0);
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
        }
        let b = self.config.batch_size.max(1);
        order
            .chunks(b)
            .filter(|c| !self.config.drop_last || c.len() == b)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Decodes, augments and collates one batch now (images in parallel).
    pub fn load_batch(&self, indices: &[usize], epoch: u64) -> Result<HostBatch> {
        let samples: Vec<Sample> = indices
            .par_iter()
            .map(|&i| {
                let mut s = self.dataset.get(i)?;
                let mut rng = stream(self.config.seed, "augment", epoch, i as u64);
                self.config.augment.apply(&mut s, &mut rng);
                Ok(s)
            })
            .collect::<Result<_>>()?;
        Ok(collate(samples, indices, &self.config))
    }

    /// The batches of one epoch, prepared `prefetch` ahead on a background thread.
    pub fn epoch(&self, epoch: u64, device: &Device) -> BatchIter {
        let batches = self.batch_indices(epoch);
        let this = self.clone();
        let inner = Prefetch::spawn(
            batches
                .into_iter()
                .map(move |idx| this.load_batch(&idx, epoch)),
            self.config.prefetch.max(1),
        );
        BatchIter {
            inner,
            device: device.clone(),
        }
    }
}

/// Iterator over an epoch's [`Batch`]es.
pub struct BatchIter {
    inner: Prefetch<Result<HostBatch>>,
    device: Device,
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|r| r.map(|hb| hb.to_device(&self.device)))
    }
}

/// Runs an iterator on a background thread, at most `depth` items ahead of the consumer.
/// Dropping it stops the producer after its current item.
pub struct Prefetch<T: Send + 'static> {
    rx: Option<Receiver<T>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts producing.
    pub fn spawn<I>(iter: I, depth: usize) -> Self
    where
        I: Iterator<Item = T> + Send + 'static,
    {
        let (tx, rx) = bounded(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ovkd-prefetch".into())
            .spawn(move || {
                for item in iter {
                    if flag.load(Ordering::Relaxed) || tx.send(item).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn prefetch thread");
        Self {
            rx: Some(rx),
            stop,
            handle: Some(handle),
        }
    }
}

impl<T: Send + 'static> Iterator for Prefetch<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T: Send + 'static> Drop for Prefetch<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes a blocked `send` fail, so the thread ends.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ov_shapes::{Preset, SynthConfig, generate};

    fn shapes_dir(dir: &Path) -> DatasetDir {
        let mut cfg = SynthConfig::preset(Preset::Quick);
        cfg.train_images = 7;
        cfg.val_images = 2;
        cfg.pretrain_images = 0;
        cfg.image_size = 64;
        cfg.seed = 5;
        generate(dir.join("d"), &cfg).unwrap();
        DatasetDir::open(dir.join("d")).unwrap()
    }

    #[test]
    fn batches_are_padded_normalised_and_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let d = shapes_dir(tmp.path());
        let ds: Arc<dyn Dataset> = Arc::new(DetectionDataset::of_dir(&d, "train").unwrap());
        let cfg = LoaderConfig {
            batch_size: 3,
            shuffle: true,
            seed: 9,
            size_divisor: 8,
            augment: AugmentConfig {
                scale_jitter: Some([0.5, 1.0]),
                hflip_prob: 0.5,
                ..Default::default()
            },
            ..Default::default()
        };
        let loader = DataLoader::new(ds.clone(), cfg.clone());
        assert_eq!(loader.num_batches(), 3);
        let device = Device::default();
        let batches: Vec<Batch> = loader.epoch(0, &device).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 3);
        let mut seen: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.meta.indices.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        for b in &batches {
            let [n, c, h, w] = b.images.dims();
            assert_eq!(c, 3);
            assert_eq!(n, b.meta.image_ids.len());
            assert_eq!(h % 8, 0);
            assert_eq!(w % 8, 0);
            let max_h = b.meta.image_sizes.iter().map(|s| s[0]).max().unwrap();
            assert!(h >= max_h && h < max_h + 8);
            let sem = b.semantic.as_ref().unwrap();
            assert_eq!(sem.dims(), [n, h, w]);
            let sem_v: Vec<i64> = sem
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec()
                .unwrap();
            let img_v: Vec<f32> = b.images.clone().into_data().try_to_vec().unwrap();
            for (i, &[ih, iw]) in b.meta.image_sizes.iter().enumerate() {
                // Padding: ignore labels, zero pixels.
                if iw < w {
                    assert_eq!(sem_v[(i * h) * w + iw], 255);
                    assert_eq!(img_v[((i * 3) * h) * w + iw], 0.0);
                }
                if ih < h {
                    assert_eq!(sem_v[(i * h + ih) * w], 255);
                }
                let m = b.masks_tensor(i, &device).unwrap();
                assert_eq!(m.dims()[0], b.meta.boxes[i].len());
                // Through the whole pipeline (jitter, flip, batching) each instance mask's
                // tight box is its transformed box, to within the one pixel that resampling a
                // mask can move an edge.
                let masks = &b.meta.masks.as_ref().expect("masks are loaded")[i];
                assert_eq!(masks.len(), b.meta.boxes[i].len());
                for (j, mask) in masks.iter().enumerate() {
                    assert_eq!([mask.height(), mask.width()], [ih, iw]);
                    let mb = mask.bbox().expect("objects stay visible");
                    let bb = b.meta.boxes[i].get(j).unwrap();
                    for k in 0..4 {
                        assert!((mb[k] - bb[k]).abs() <= 1.0, "{mb:?} vs {bb:?}");
                    }
                }
            }
        }
        let flips = batches
            .iter()
            .flat_map(|b| b.meta.flipped.iter())
            .filter(|&&f| f)
            .count();
        assert!((1..7).contains(&flips), "{flips} of 7 flipped");
        // The same epoch again gives the same batches; another epoch another order.
        let again: Vec<Batch> = loader.epoch(0, &device).map(|b| b.unwrap()).collect();
        for (a, b) in batches.iter().zip(&again) {
            assert_eq!(a.meta.indices, b.meta.indices);
            assert_eq!(a.meta.boxes, b.meta.boxes);
            let va: Vec<f32> = a.images.clone().into_data().try_to_vec().unwrap();
            let vb: Vec<f32> = b.images.clone().into_data().try_to_vec().unwrap();
            assert_eq!(va, vb);
        }
        assert_ne!(loader.batch_indices(0), loader.batch_indices(1));
        // Stopping early does not hang.
        let mut it = loader.epoch(2, &device);
        assert!(it.next().is_some());
        drop(it);
    }

    #[test]
    fn unaugmented_batch_matches_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = shapes_dir(tmp.path());
        let ds = DetectionDataset::of_dir(&d, "val").unwrap();
        let s = ds.get(0).unwrap();
        let coco = CocoDataset::read(d.instances_path("val")).unwrap();
        let anns: Vec<_> = coco
            .annotations
            .iter()
            .filter(|a| a.image_id == 1)
            .collect();
        assert_eq!(s.boxes.len(), anns.len());
        for (i, a) in anns.iter().enumerate() {
            assert_eq!(s.boxes.get(i).unwrap(), a.bbox_xyxy());
            assert_eq!(s.masks.as_ref().unwrap()[i].area() as f64, a.area);
            assert_eq!(ds.class_ids()[s.labels[i]], a.category_id);
        }
        let loader = DataLoader::new(
            Arc::new(ds),
            LoaderConfig {
                batch_size: 2,
                augment: AugmentConfig {
                    mean: [0.0; 3],
                    std: [1.0; 3],
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let hb = loader.load_batch(&[0], 0).unwrap();
        let png = image::open(d.images_dir("val").join("000001.png"))
            .unwrap()
            .to_rgb8();
        let px = png.get_pixel(10, 20);
        let [_, _, h, w] = hb.shape;
        assert_eq!(hb.images[20 * w + 10], px[0] as f32 / 255.0);
        assert_eq!(hb.images[h * w + 20 * w + 10], px[1] as f32 / 255.0);
    }

    #[test]
    fn segmentation_pairs_and_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let (im, lab) = (tmp.path().join("img"), tmp.path().join("ann"));
        std::fs::create_dir_all(&im).unwrap();
        std::fs::create_dir_all(&lab).unwrap();
        image::RgbImage::new(4, 3).save(im.join("a.jpg")).unwrap();
        image::RgbImage::new(4, 3).save(im.join("b.png")).unwrap();
        SemanticMask::from_vec(4, 3, vec![0, 1, 2, 3, 0, 0, 0, 0, 255, 255, 1, 1])
            .write(lab.join("a.png"))
            .unwrap();
        SemanticMask::filled(5, 3, 1)
            .write(lab.join("b.png"))
            .unwrap();
        let ds = SegmentationDataset::from_dirs(&im, &lab, true).unwrap();
        assert_eq!(ds.len(), 2);
        let s = ds.get(0).unwrap();
        assert_eq!(
            s.semantic.unwrap().as_slice(),
            &[255, 0, 1, 2, 255, 255, 255, 255, 255, 255, 0, 0]
        );
        let err = ds.get(1).unwrap_err().to_string();
        assert!(
            err.contains("label mask is 5x3 but its image") && err.contains("is 4x3"),
            "{err}"
        );
    }
}
