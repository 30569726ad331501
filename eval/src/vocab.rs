//! The vocabulary file (TOML), reduced to what evaluation needs: each class's id, name and
//! base/novel split. The data crate has the full reader; this one keeps `ovkd-eval` free of
//! other ovkd crates.
//!
//! ```toml
//! name = "ov-coco"
//! [[class]]
//! id = 5            # COCO category id for detection; the label value in PNGs for segmentation
//! name = "airplane"
//! split = "novel"   # base | novel | seen | unseen
//! ```

use crate::error::{EvalError, Result};
use serde::Deserialize;
use std::path::Path;

/// Which side of the zero-shot split a class is on. `seen` reads as base and `unseen` as novel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Annotated for training (`base` or `seen`).
    Base,
    /// Never annotated for training (`novel` or `unseen`).
    Novel,
}

impl Split {
    /// Parses `base`, `seen`, `novel` or `unseen`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "base" | "seen" => Some(Split::Base),
            "novel" | "unseen" => Some(Split::Novel),
            _ => None,
        }
    }

    /// `base` or `novel`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Base => "base",
            Split::Novel => "novel",
        }
    }
}

/// One class of the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabClass {
    /// COCO category id (detection) or label value (segmentation).
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Its split; `None` when the file gives none (the class then counts only in "all").
    pub split: Option<Split>,
}

/// A vocabulary: the classes and their split.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vocabulary {
    /// The vocabulary's name.
    pub name: String,
    /// Its classes, in file order.
    pub classes: Vec<VocabClass>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "class")]
    classes: Vec<RawClass>,
}

#[derive(Deserialize)]
struct RawClass {
    id: i64,
    name: String,
    split: Option<String>,
}

impl Vocabulary {
    /// Reads a vocabulary file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses vocabulary TOML; `source` names it in errors.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self> {
        let err = |message: String| EvalError::Vocabulary {
            path: source.to_string(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut classes = Vec::with_capacity(raw.classes.len());
        for (i, c) in raw.classes.into_iter().enumerate() {
            let split = match c.split.as_deref() {
                None => None,
                Some(s) => Some(Split::parse(s).ok_or_else(|| {
                    err(format!(
                        "class[{i}] (id {}): field `split`: expected base, novel, seen or unseen, found `{s}`",
                        c.id
                    ))
                })?),
            };
            if classes.iter().any(|x: &VocabClass| x.id == c.id) {
                return Err(err(format!(
                    "class[{i}] (id {}): field `id`: duplicate id",
                    c.id
                )));
            }
            classes.push(VocabClass {
                id: c.id,
                name: c.name,
                split,
            });
        }
        Ok(Vocabulary {
            name: raw.name,
            classes,
        })
    }

    /// The class with this id.
    pub fn class(&self, id: i64) -> Option<&VocabClass> {
        self.classes.iter().find(|c| c.id == id)
    }

    /// Ids of the classes in `split` (`None`: every class).
    pub fn ids(&self, split: Option<Split>) -> Vec<i64> {
        self.classes
            .iter()
            .filter(|c| split.is_none() || c.split == split)
            .map(|c| c.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_splits_with_aliases() {
        let v = Vocabulary::from_toml_str(
            r#"name = "v"
            [[class]]
            id = 5
            name = "airplane"
            synonyms = ["aeroplane"]
            split = "novel"
            [[class]]
            id = 1
            name = "person"
            split = "seen"
            [[class]]
            id = 2
            name = "bicycle"
            split = "unseen"
            "#,
            "v.toml",
        )
        .unwrap();
        assert_eq!(v.ids(Some(Split::Novel)), vec![5, 2]);
        assert_eq!(v.ids(Some(Split::Base)), vec![1]);
        assert_eq!(v.ids(None), vec![5, 1, 2]);
        assert_eq!(v.class(1).unwrap().name, "person");
    }

    #[test]
    fn bad_split_names_the_class() {
        let e = Vocabulary::from_toml_str(
            "[[class]]\nid = 3\nname = \"x\"\nsplit = \"other\"\n",
            "v.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("vocabulary v.toml: class[0] (id 3): field `split`"),
            "{e}"
        );
    }
}
