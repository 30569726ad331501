//! The `data` stage for data sets laid out as their official downloads (COCO 2017, LVIS v1,
//! PASCAL VOC 2012): lays each out in the run directory the way every later stage reads data,
//!
//! ```text
//! data/vocab.toml                the vocabulary with its base/novel (seen/unseen) split
//! data/dataset.json              where it came from, and counts
//! data/{train,val}/instances.json  COCO JSON; train keeps base classes only, val every class
//! data/{train,val}/images/       one link per image into the download (nothing is copied)
//! data/{train,val}/semantic/     VOC only: label PNGs; train marks unseen pixels 255
//! ```
//!
//! This is the open-vocabulary protocol's preparation step (ViLD's and OVR-CNN's split
//! scripts): novel classes lose their annotations in train, and nothing else changes.

use crate::config::experiment::DataSource;
use anyhow::{Context as _, Result, bail};
use ovkd_data::coco::{CocoDataset, CocoImage};
use ovkd_data::dataset_dir::{PREPARED_FILE, PreparedInfo, SplitCount};
use ovkd_data::semantic::SemanticMask;
use ovkd_data::vocab::Vocabulary;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lays out a downloaded data set in `out` (replacing an earlier layout there).
pub fn prepare(source: &DataSource, out: &Path) -> Result<()> {
    check_layout(source)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let summary = match source {
        DataSource::OvShapes { .. } => bail!("OV-Shapes is generated, not prepared"),
        DataSource::Coco { root, vocab } => {
            let vocab = Vocabulary::load(vocab)?;
            let mut counts = Vec::new();
            for (split, file, images) in [
                ("train", "annotations/instances_train2017.json", "train2017"),
                ("val", "annotations/instances_val2017.json", "val2017"),
            ] {
                let gt = CocoDataset::read(root.join(file))?;
                let n = write_split(
                    &gt,
                    &vocab,
                    split == "train",
                    &[root.join(images)],
                    out,
                    split,
                )?;
                counts.push((split, n));
            }
            vocab.save(out.join("vocab.toml"))?;
            info("coco", root, &counts)
        }
        DataSource::Lvis { root, images } => {
            let train = CocoDataset::read(root.join("lvis_v1_train.json"))?;
            let vocab = Vocabulary::from_lvis_categories(
                "lvis-v1",
                &train.categories,
                &root.join("lvis_v1_train.json"),
            )?;
            // LVIS val images come from both COCO folders; the file name says which is which.
            let images = images.as_ref().unwrap_or(root);
            let dirs = [images.join("train2017"), images.join("val2017")];
            let n_train = write_split(&train, &vocab, true, &dirs, out, "train")?;
            let val = CocoDataset::read(root.join("lvis_v1_val.json"))?;
            let n_val = write_split(&val, &vocab, false, &dirs, out, "val")?;
            vocab.save(out.join("vocab.toml"))?;
            info("lvis", root, &[("train", n_train), ("val", n_val)])
        }
        DataSource::Voc { root, vocab } => {
            let vocab = Vocabulary::load(vocab)?;
            let voc = root.join("VOC2012");
            let mut counts = Vec::new();
            for split in ["train", "val"] {
                let n = write_voc_split(&voc, &vocab, split, out)?;
                counts.push((split, n));
            }
            vocab.save(out.join("vocab.toml"))?;
            info("voc", root, &counts)
        }
    };
    // Written last: a folder with dataset.json is complete (DatasetDir::open looks for it).
    ovkd_data::io::write_json_atomic(out.join(PREPARED_FILE), &summary, true)?;
    Ok(())
}

/// Names the first file or folder of the official layout that is not there, before anything
/// is read or cleared.
fn check_layout(source: &DataSource) -> Result<()> {
    let (what, needed): (&str, Vec<(PathBuf, &str)>) = match source {
        DataSource::OvShapes { .. } => return Ok(()),
        DataSource::Coco { root, .. } => (
            "COCO 2017",
            [
                "annotations/instances_train2017.json",
                "annotations/instances_val2017.json",
                "train2017",
                "val2017",
            ]
            .map(|p| (root.join(p), "paths.coco"))
            .into(),
        ),
        DataSource::Lvis { root, images } => {
            let (images, key) = match images {
                Some(i) => (i, "paths.coco"),
                None => (root, "paths.lvis"),
            };
            (
                "LVIS v1 (with COCO 2017's images)",
                vec![
                    (root.join("lvis_v1_train.json"), "paths.lvis"),
                    (root.join("lvis_v1_val.json"), "paths.lvis"),
                    (images.join("train2017"), key),
                    (images.join("val2017"), key),
                ],
            )
        }
        DataSource::Voc { root, .. } => (
            "PASCAL VOC 2012",
            [
                "VOC2012/JPEGImages",
                "VOC2012/SegmentationClass",
                "VOC2012/ImageSets/Segmentation/train.txt",
                "VOC2012/ImageSets/Segmentation/val.txt",
            ]
            .map(|p| (root.join(p), "paths.voc"))
            .into(),
        ),
    };
    if let Some((p, key)) = needed.iter().find(|(p, _)| !p.exists()) {
        bail!(
            "{}: missing: {what} is read as its official download lays it out (set {key} in \
             configs/base/paths.toml, or --set {key}=DIR)",
            p.display()
        );
    }
    Ok(())
}

fn info(source: &str, root: &Path, counts: &[(&str, (usize, usize))]) -> PreparedInfo {
    PreparedInfo {
        source: source.into(),
        root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
        splits: counts
            .iter()
            .map(|&(s, (images, annotations))| {
                (
                    s.to_string(),
                    SplitCount {
                        images,
                        annotations,
                    },
                )
            })
            .collect(),
    }
}

/// Writes one detection split: the vocabulary's categories, their annotations (base only for
/// train), every image linked. Returns (images, annotations).
fn write_split(
    gt: &CocoDataset,
    vocab: &Vocabulary,
    base_only: bool,
    image_dirs: &[PathBuf],
    out: &Path,
    split: &str,
) -> Result<(usize, usize)> {
    let keep: BTreeSet<u64> = vocab
        .base()
        .chain(
            if base_only { None } else { Some(vocab.novel()) }
                .into_iter()
                .flatten(),
        )
        .map(|c| c.id)
        .collect();
    let in_vocab: BTreeSet<u64> = vocab.ids().into_iter().collect();
    let mut ds = gt.clone();
    ds.categories.retain(|c| in_vocab.contains(&c.id));
    // Every class the students are asked about must be a category of the ground truth, or its
    // detections cannot be scored (a download lists all its classes; a subset may not).
    for c in &vocab.classes {
        if !ds.categories.iter().any(|k| k.id == c.id) {
            ds.categories.push(ovkd_data::coco::CocoCategory {
                id: c.id,
                name: c.name.clone(),
                ..Default::default()
            });
        }
    }
    ds.categories.sort_by_key(|c| c.id);
    ds.annotations.retain(|a| keep.contains(&a.category_id));
    let images_dir = out.join(split).join("images");
    std::fs::create_dir_all(&images_dir)?;
    for img in &mut ds.images {
        let name = image_name(img)?;
        let src = image_dirs
            .iter()
            .map(|d| d.join(&name))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "image {} ({name}) of {split}: not found in {}",
                    img.id,
                    image_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            })?;
        link(&src, &images_dir.join(&name))?;
        img.file_name = name;
    }
    ds.write(out.join(split).join("instances.json"))?;
    Ok((ds.images.len(), ds.annotations.len()))
}

fn image_name(img: &CocoImage) -> Result<String> {
    img.file_name()
        .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
        .with_context(|| format!("image {}: no file_name (nor LVIS coco_url)", img.id))
}

fn link(src: &Path, dst: &Path) -> Result<()> {
    let src = std::path::absolute(src)?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(&src, dst)
        .with_context(|| format!("linking {} -> {}", dst.display(), src.display()))?;
    #[cfg(not(unix))]
    std::fs::copy(&src, dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// Writes one VOC segmentation split from `ImageSets/Segmentation/SPLIT.txt`.
fn write_voc_split(
    voc: &Path,
    vocab: &Vocabulary,
    split: &str,
    out: &Path,
) -> Result<(usize, usize)> {
    let list = voc
        .join("ImageSets/Segmentation")
        .join(format!("{split}.txt"));
    let text = std::fs::read_to_string(&list).with_context(|| list.display().to_string())?;
    let unseen: BTreeSet<u16> = vocab.novel().map(|c| c.id as u16).collect();
    let images_dir = out.join(split).join("images");
    let sem_dir = out.join(split).join("semantic");
    std::fs::create_dir_all(&images_dir)?;
    std::fs::create_dir_all(&sem_dir)?;
    let mut ds = CocoDataset {
        categories: vocab
            .classes
            .iter()
            .map(|c| ovkd_data::coco::CocoCategory {
                id: c.id,
                name: c.name.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for (i, id) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let jpg = voc.join("JPEGImages").join(format!("{id}.jpg"));
        let label = voc.join("SegmentationClass").join(format!("{id}.png"));
        let mut mask = SemanticMask::read(&label)
            .with_context(|| format!("{}: line {} ({id})", list.display(), i + 1))?;
        if !jpg.is_file() {
            bail!(
                "{}: line {} ({id}): {} is missing",
                list.display(),
                i + 1,
                jpg.display()
            );
        }
        if split == "train" {
            // Zero-shot protocol: unseen classes are never supervised.
            for v in mask.as_mut_slice() {
                if unseen.contains(v) {
                    *v = 255;
                }
            }
        }
        mask.write(sem_dir.join(format!("{id}.png")))?;
        link(&jpg, &images_dir.join(format!("{id}.jpg")))?;
        ds.images.push(CocoImage {
            id: i as u64 + 1,
            width: mask.width() as _,
            height: mask.height() as _,
            file_name: format!("{id}.jpg"),
            ..Default::default()
        });
    }
    ds.write(out.join(split).join("instances.json"))?;
    Ok((ds.images.len(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovkd_data::coco::{CocoAnnotation, CocoCategory};

    fn jpg(path: &Path, w: u32, h: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 200]))
            .save(path)
            .unwrap();
    }

    fn coco(images: &[(u64, &str)], anns: &[(u64, u64, u64)], cats: &[(u64, &str)]) -> CocoDataset {
        CocoDataset {
            images: images
                .iter()
                .map(|&(id, f)| CocoImage {
                    id,
                    width: 64,
                    height: 48,
                    file_name: f.into(),
                    ..Default::default()
                })
                .collect(),
            annotations: anns
                .iter()
                .map(|&(id, image_id, category_id)| CocoAnnotation {
                    id,
                    image_id,
                    category_id,
                    bbox: [4.0, 4.0, 20.0, 10.0],
                    area: 200.0,
                    ..Default::default()
                })
                .collect(),
            categories: cats
                .iter()
                .map(|&(id, name)| CocoCategory {
                    id,
                    name: name.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn coco_in_its_official_layout_becomes_base_only_train_and_full_val() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("coco");
        // person (1) is base, airplane (5) is novel, hair drier (89) is outside OV-COCO's 65.
        let cats = [(1, "person"), (5, "airplane"), (89, "hair drier")];
        jpg(&root.join("train2017/000000000009.jpg"), 64, 48);
        jpg(&root.join("val2017/000000000139.jpg"), 64, 48);
        std::fs::create_dir_all(root.join("annotations")).unwrap();
        coco(
            &[(9, "000000000009.jpg")],
            &[(1, 9, 1), (2, 9, 5), (3, 9, 89)],
            &cats,
        )
        .write(root.join("annotations/instances_train2017.json"))
        .unwrap();
        coco(
            &[(139, "000000000139.jpg")],
            &[(4, 139, 1), (5, 139, 5), (6, 139, 89)],
            &cats,
        )
        .write(root.join("annotations/instances_val2017.json"))
        .unwrap();
        let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vocab/ov-coco.toml");
        let out = dir.path().join("run/data");
        prepare(
            &DataSource::Coco {
                root: root.clone(),
                vocab,
            },
            &out,
        )
        .unwrap();

        let train = CocoDataset::read(out.join("train/instances.json")).unwrap();
        assert_eq!(
            train
                .annotations
                .iter()
                .map(|a| a.category_id)
                .collect::<Vec<_>>(),
            [1]
        );
        let val = CocoDataset::read(out.join("val/instances.json")).unwrap();
        assert_eq!(
            val.annotations
                .iter()
                .map(|a| a.category_id)
                .collect::<Vec<_>>(),
            [1, 5]
        );
        assert_eq!(
            val.categories.len(),
            65,
            "every OV-COCO class, and hair drier, which is none of them, dropped"
        );
        assert!(!val.categories.iter().any(|c| c.id == 89));
        assert!(out.join("train/images/000000000009.jpg").is_file());
        assert_eq!(Vocabulary::load(out.join("vocab.toml")).unwrap().len(), 65);
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
        assert_eq!(summary["splits"]["val"]["annotations"], 2);

        // A missing image is named with its record.
        std::fs::remove_file(root.join("val2017/000000000139.jpg")).unwrap();
        let err = format!(
            "{:#}",
            prepare(
                &DataSource::Coco {
                    root,
                    vocab: Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vocab/ov-coco.toml")
                },
                &out
            )
            .unwrap_err()
        );
        assert!(
            err.contains("image 139") && err.contains("000000000139.jpg"),
            "{err}"
        );
    }

    #[test]
    fn lvis_rare_classes_lose_their_train_boxes_and_images_are_found_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lvis");
        jpg(&root.join("train2017/000000000009.jpg"), 64, 48);
        jpg(&root.join("val2017/000000000139.jpg"), 64, 48);
        let mut cats = coco(&[], &[], &[(1, "aerosol_can"), (2, "alarm_clock")]).categories;
        cats[0].frequency = Some(ovkd_data::coco::Frequency::Rare);
        cats[1].frequency = Some(ovkd_data::coco::Frequency::Frequent);
        let mut train = coco(&[(9, "")], &[(1, 9, 1), (2, 9, 2)], &[]);
        train.categories = cats.clone();
        train.images[0].extra.insert(
            "coco_url".into(),
            "http://images.cocodataset.org/train2017/000000000009.jpg".into(),
        );
        let mut val = coco(&[(139, "")], &[(3, 139, 1)], &[]);
        val.categories = cats;
        val.images[0].extra.insert(
            "coco_url".into(),
            "http://images.cocodataset.org/val2017/000000000139.jpg".into(),
        );
        train.write(root.join("lvis_v1_train.json")).unwrap();
        val.write(root.join("lvis_v1_val.json")).unwrap();
        let out = dir.path().join("data");
        prepare(&DataSource::Lvis { root, images: None }, &out).unwrap();
        let t = CocoDataset::read(out.join("train/instances.json")).unwrap();
        assert_eq!(
            t.annotations
                .iter()
                .map(|a| a.category_id)
                .collect::<Vec<_>>(),
            [2]
        );
        let v = CocoDataset::read(out.join("val/instances.json")).unwrap();
        assert_eq!(v.annotations.len(), 1);
        assert!(out.join("val/images/000000000139.jpg").is_file());
        let vocab = Vocabulary::load(out.join("vocab.toml")).unwrap();
        assert!(vocab.is_novel(1) && !vocab.is_novel(2));
    }

    #[test]
    fn voc_train_masks_hide_unseen_classes_and_val_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let voc = dir.path().join("VOCdevkit/VOC2012");
        std::fs::create_dir_all(voc.join("ImageSets/Segmentation")).unwrap();
        std::fs::create_dir_all(voc.join("SegmentationClass")).unwrap();
        std::fs::write(
            voc.join("ImageSets/Segmentation/train.txt"),
            "2007_000032\n",
        )
        .unwrap();
        std::fs::write(voc.join("ImageSets/Segmentation/val.txt"), "2007_000033\n").unwrap();
        // 17 = sheep (unseen), 1 = aeroplane (seen), 255 = boundary.
        for id in ["2007_000032", "2007_000033"] {
            jpg(&voc.join(format!("JPEGImages/{id}.jpg")), 4, 2);
            SemanticMask::from_vec(4, 2, vec![0, 1, 17, 255, 17, 1, 0, 0])
                .write(voc.join(format!("SegmentationClass/{id}.png")))
                .unwrap();
        }
        let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vocab/voc-zs.toml");
        let out = dir.path().join("data");
        prepare(
            &DataSource::Voc {
                root: dir.path().join("VOCdevkit"),
                vocab,
            },
            &out,
        )
        .unwrap();
        let t = SemanticMask::read(out.join("train/semantic/2007_000032.png")).unwrap();
        assert_eq!(t.as_slice(), [0, 1, 255, 255, 255, 1, 0, 0]);
        let v = SemanticMask::read(out.join("val/semantic/2007_000033.png")).unwrap();
        assert_eq!(v.as_slice(), [0, 1, 17, 255, 17, 1, 0, 0]);
        let ds = CocoDataset::read(out.join("val/instances.json")).unwrap();
        assert_eq!((ds.images[0].width, ds.images[0].height), (4, 2));
        assert!(out.join("train/images/2007_000032.jpg").is_file());
    }
}
