//! Counts per class and split, for `ovkd data stats`.

use crate::coco::{CocoDataset, Frequency};
use crate::error::Result;
use crate::ov_shapes::{CaptionRecord, OvShapesDir};
use crate::vocab::Vocabulary;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::Path;

/// Counts of one class in one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    /// Instances (annotations, or objects named in captions).
    pub instances: usize,
    /// Images with at least one.
    pub images: usize,
}

/// One column of the table: a file or a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    /// E.g. `train`, `train (all objects)`, `val`, `pretrain (captions)`, or a file name.
    pub name: String,
    /// Images.
    pub images: usize,
    /// Instances over all classes.
    pub instances: usize,
    /// Images with no instance at all.
    pub empty_images: usize,
    /// Per class id.
    pub per_class: BTreeMap<u64, ClassCount>,
}

/// A class row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `base`/`novel` (vocabulary) or the LVIS frequency letter, if known.
    pub tag: Option<String>,
}

/// Everything `ovkd data stats` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// What was counted.
    pub title: String,
    /// The classes, in id order.
    pub classes: Vec<ClassInfo>,
    /// One entry per split or file.
    pub sources: Vec<SourceStats>,
}

/// Counts annotations of a COCO file per category.
pub fn count_coco(name: &str, coco: &CocoDataset) -> SourceStats {
    let mut per_class: BTreeMap<u64, ClassCount> = BTreeMap::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut with_any: HashSet<u64> = HashSet::new();
    for a in &coco.annotations {
        let e = per_class.entry(a.category_id).or_default();
        e.instances += 1;
        if seen.insert((a.category_id, a.image_id)) {
            e.images += 1;
        }
        with_any.insert(a.image_id);
    }
    for c in &coco.categories {
        per_class.entry(c.id).or_default();
    }
    SourceStats {
        name: name.to_string(),
        images: coco.images.len(),
        instances: coco.annotations.len(),
        empty_images: coco
            .images
            .iter()
            .filter(|i| !with_any.contains(&i.id))
            .count(),
        per_class,
    }
}

/// Counts the objects listed in caption records per class.
pub fn count_captions(name: &str, records: &[CaptionRecord], vocab: &Vocabulary) -> SourceStats {
    let mut per_class: BTreeMap<u64, ClassCount> = BTreeMap::new();
    let mut instances = 0;
    for c in &vocab.classes {
        per_class.entry(c.id).or_default();
    }
    for r in records {
        let mut here = HashSet::new();
        for o in &r.objects {
            if let Some(c) = vocab.find(&o.class) {
                let e = per_class.entry(c.id).or_default();
                e.instances += 1;
                if here.insert(c.id) {
                    e.images += 1;
                }
                instances += 1;
            }
        }
    }
    SourceStats {
        name: name.to_string(),
        images: records.len(),
        instances,
        empty_images: records.iter().filter(|r| r.objects.is_empty()).count(),
        per_class,
    }
}

/// Stats of an OV-Shapes directory (every split) or of one COCO/LVIS JSON file.
pub fn stats_for_path(input: &Path) -> Result<Stats> {
    if input.is_dir() {
        let d = OvShapesDir::open(input)?;
        let vocab = d.vocabulary()?;
        let m = &d.meta;
        let title = format!(
            "OV-Shapes {} (preset {}, seed {}, {} px, {} base + {} novel classes)",
            input.display(),
            m.preset,
            m.seed,
            m.config.image_size,
            vocab.base().count(),
            vocab.novel().count()
        );
        let mut sources = vec![
            count_coco("train", &CocoDataset::read(d.instances_path("train"))?),
            count_coco(
                "train (all objects)",
                &CocoDataset::read(d.instances_full_path())?,
            ),
            count_coco("val", &CocoDataset::read(d.instances_path("val"))?),
        ];
        sources.push(count_captions(
            "pretrain (captions)",
            &d.captions("pretrain")?,
            &vocab,
        ));
        let classes = vocab
            .classes
            .iter()
            .map(|c| ClassInfo {
                id: c.id,
                name: c.name.clone(),
                tag: Some(c.split.as_str().to_string()),
            })
            .collect();
        return Ok(Stats {
            title,
            classes,
            sources,
        });
    }
    let coco = CocoDataset::read(input)?;
    let classes = coco
        .categories
        .iter()
        .map(|c| ClassInfo {
            id: c.id,
            name: c.name.clone(),
            tag: c.frequency.map(|f| {
                match f {
                    Frequency::Rare => "r (novel)",
                    Frequency::Common => "c",
                    Frequency::Frequent => "f",
                }
                .to_string()
            }),
        })
        .collect();
    let name = input
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Stats {
        title: format!("{}", input.display()),
        classes,
        sources: vec![count_coco(&name, &coco)],
    })
}

impl Stats {
    /// A plain-text table: totals per source, then instances (images) per class and source.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.title);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<22} {:>8} {:>10} {:>14}",
            "split", "images", "instances", "without any"
        );
        for src in &self.sources {
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>10} {:>14}",
                src.name, src.images, src.instances, src.empty_images
            );
        }
        let _ = writeln!(s);
        let name_w = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let col_w = self
            .sources
            .iter()
            .map(|x| x.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(14);
        let _ = write!(s, "{:>5}  {:<name_w$}  {:<9}", "id", "class", "split");
        for src in &self.sources {
            let _ = write!(s, "  {:>col_w$}", src.name);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{:>5}  {:<name_w$}  {:<9}  {}", "", "", "", {
            let mut h = String::new();
            for _ in &self.sources {
                let _ = write!(h, "{:>col_w$}  ", "instances (images)");
            }
            h.trim_end().to_string()
        });
        for c in &self.classes {
            let _ = write!(
                s,
                "{:>5}  {:<name_w$}  {:<9}",
                c.id,
                c.name,
                c.tag.as_deref().unwrap_or("")
            );
            for src in &self.sources {
                let cc = src.per_class.get(&c.id).cloned().unwrap_or_default();
                let _ = write!(
                    s,
                    "  {:>col_w$}",
                    format!("{} ({})", cc.instances, cc.images)
                );
            }
            let _ = writeln!(s);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ov_shapes::{Preset, SynthConfig, generate};

    #[test]
    fn counts_match_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = SynthConfig::preset(Preset::Quick);
        cfg.train_images = 10;
        cfg.val_images = 5;
        cfg.pretrain_images = 6;
        cfg.image_size = 64;
        generate(tmp.path().join("d"), &cfg).unwrap();
        let st = stats_for_path(&tmp.path().join("d")).unwrap();
        assert_eq!(st.classes.len(), 12);
        let train = &st.sources[0];
        let full = &st.sources[1];
        assert_eq!(train.images, 10);
        let novel: Vec<u64> = st
            .classes
            .iter()
            .filter(|c| c.tag.as_deref() == Some("novel"))
            .map(|c| c.id)
            .collect();
        for id in &novel {
            assert_eq!(train.per_class[id].instances, 0);
        }
        let novel_full: usize = novel.iter().map(|id| full.per_class[id].instances).sum();
        assert_eq!(full.instances, train.instances + novel_full);
        let caps = OvShapesDir::open(tmp.path().join("d"))
            .unwrap()
            .captions("pretrain")
            .unwrap();
        let objs: usize = caps.iter().map(|r| r.objects.len()).sum();
        assert_eq!(st.sources[3].instances, objs);
        let table = st.to_table();
        assert!(table.contains("train (all objects)"), "{table}");
        assert!(table.contains("circle"), "{table}");
    }
}
