//! Vocabularies: class ids, names, synonyms and the base/novel (seen/unseen) split.
//!
//! The file format (TOML, in `configs/vocab/`), parsed independently by ovkd-eval, so these are
//! exactly the keys:
//!
//! ```toml
//! name = "ov-coco"
//! [[class]]
//! id = 5
//! name = "airplane"
//! synonyms = ["aeroplane"]
//! split = "novel"
//! ```
//!
//! `split` is `base` / `novel` (detection) or `seen` / `unseen` (segmentation); base is seen and
//! novel is unseen for [`Split::is_novel`] and friends. LVIS's rule (rare = novel) is
//! [`Vocabulary::from_lvis_categories`].

use crate::coco::{CocoCategory, Frequency};
use crate::error::{Error, Problem, Record, Result};
use crate::io;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Which side of the open-vocabulary split a class is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Annotated in training (detection wording).
    Base,
    /// Never annotated in training (detection wording).
    Novel,
    /// Annotated in training (segmentation wording); the same as `Base`.
    Seen,
    /// Never annotated in training (segmentation wording); the same as `Novel`.
    Unseen,
}

impl Split {
    /// Novel or unseen.
    pub fn is_novel(self) -> bool {
        matches!(self, Split::Novel | Split::Unseen)
    }

    /// Base or seen.
    pub fn is_base(self) -> bool {
        !self.is_novel()
    }

    /// The word used in files: `base`, `novel`, `seen`, `unseen`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Base => "base",
            Split::Novel => "novel",
            Split::Seen => "seen",
            Split::Unseen => "unseen",
        }
    }
}

/// One class of a vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabClass {
    /// The class id as the annotations use it (COCO category id, label value, ...).
    pub id: u64,
    /// The name prompts are made from.
    pub name: String,
    /// Other names for the same class (prompt ensembles, caption matching).
    #[serde(default)]
    pub synonyms: Vec<String>,
    /// Base/seen or novel/unseen.
    pub split: Split,
}

impl VocabClass {
    /// Novel or unseen.
    pub fn is_novel(&self) -> bool {
        self.split.is_novel()
    }

    /// Base or seen.
    pub fn is_base(&self) -> bool {
        self.split.is_base()
    }

    /// The name followed by the synonyms.
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.synonyms.iter().map(String::as_str))
    }
}

/// A named list of classes with their split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// The vocabulary's name, e.g. `ov-coco`.
    pub name: String,
    /// The classes, in file order (`[[class]]` tables).
    #[serde(rename = "class", default)]
    pub classes: Vec<VocabClass>,
}

impl Vocabulary {
    /// Reads and checks a vocabulary TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = io::read_bytes(path)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::invalid(Problem::new(
                path,
                Record::File,
                None,
                "not UTF-8 text".to_string(),
            ))
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and checks vocabulary TOML; `path` names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let vocab: Vocabulary = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            Error::invalid(Problem::new(
                path,
                Record::Position { line, column },
                None,
                format!("invalid vocabulary: {}", e.message()),
            ))
        })?;
        let mut problems = vocab.check(path);
        match problems.len() {
            0 => Ok(vocab),
            1 => Err(Error::invalid(problems.remove(0))),
            _ => Err(Error::Problems(problems)),
        }
    }

    /// The TOML text of this vocabulary.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a vocabulary always serialises")
    }

    /// Writes the vocabulary as TOML, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        io::write_atomic(path, self.to_toml_string().as_bytes())
    }

    /// Every problem: empty names, duplicate ids, a name (or synonym) given to two classes.
    pub fn check(&self, path: &Path) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut ids: HashMap<u64, usize> = HashMap::new();
        let mut names: HashMap<String, u64> = HashMap::new();
        for (i, c) in self.classes.iter().enumerate() {
            let rec = Record::Item {
                kind: "class",
                index: i,
                id: Some(c.id),
            };
            if let Some(first) = ids.insert(c.id, i) {
                out.push(Problem::new(
                    path,
                    rec.clone(),
                    Some("id"),
                    format!("duplicate class id {} (also class #{first})", c.id),
                ));
            }
            if c.name.trim().is_empty() {
                out.push(Problem::new(path, rec.clone(), Some("name"), "empty"));
            }
            for (k, n) in c.all_names().enumerate() {
                let key = normalise_name(n);
                if key.is_empty() {
                    continue;
                }
                match names.get(&key) {
                    Some(&other) if other != c.id => out.push(Problem::new(
                        path,
                        rec.clone(),
                        Some(if k == 0 { "name" } else { "synonyms" }),
                        format!("{n:?} also names class id {other}"),
                    )),
                    _ => {
                        names.insert(key, c.id);
                    }
                }
            }
        }
        out
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when there are no classes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Class names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// Class ids, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.classes.iter().map(|c| c.id).collect()
    }

    /// The base/seen classes, in order.
    pub fn base(&self) -> impl Iterator<Item = &VocabClass> {
        self.classes.iter().filter(|c| c.is_base())
    }

    /// The novel/unseen classes, in order.
    pub fn novel(&self) -> impl Iterator<Item = &VocabClass> {
        self.classes.iter().filter(|c| c.is_novel())
    }

    /// The class with this id.
    pub fn class(&self, id: u64) -> Option<&VocabClass> {
        self.classes.iter().find(|c| c.id == id)
    }

    /// Position of the class with this id (its contiguous label index).
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.classes.iter().position(|c| c.id == id)
    }

    /// The class a name or synonym refers to (case, spaces, `_` and `-` ignored).
    pub fn find(&self, name: &str) -> Option<&VocabClass> {
        let key = normalise_name(name);
        self.classes
            .iter()
            .find(|c| c.all_names().any(|n| normalise_name(n) == key))
    }

    /// True when the class with this id is novel/unseen (unknown ids are not).
    pub fn is_novel(&self, id: u64) -> bool {
        self.class(id).is_some_and(VocabClass::is_novel)
    }

    /// The LVIS rule: rare categories (`frequency = "r"`) are novel, common and frequent are base;
    /// LVIS's synonyms are kept (the name itself, with `_` read as a space, comes first).
    /// A category without `frequency` is an error naming it.
    pub fn from_lvis_categories(
        name: &str,
        categories: &[CocoCategory],
        path: &Path,
    ) -> Result<Self> {
        let mut classes = Vec::with_capacity(categories.len());
        for (i, c) in categories.iter().enumerate() {
            let Some(freq) = c.frequency else {
                return Err(Error::invalid(Problem::new(
                    path,
                    Record::Item {
                        kind: "category",
                        index: i,
                        id: Some(c.id),
                    },
                    Some("frequency"),
                    "missing (the LVIS rule needs r/c/f)",
                )));
            };
            let display = c.name.replace('_', " ");
            let mut synonyms: Vec<String> = Vec::new();
            for s in c.synonyms.iter().flatten() {
                let s = s.replace('_', " ");
                if s != display && !synonyms.contains(&s) {
                    synonyms.push(s);
                }
            }
            classes.push(VocabClass {
                id: c.id,
                name: display,
                synonyms,
                split: if freq == Frequency::Rare {
                    Split::Novel
                } else {
                    Split::Base
                },
            });
        }
        Ok(Vocabulary {
            name: name.to_string(),
            classes,
        })
    }
}

fn normalise_name(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/vocab")
    }

    #[test]
    fn ov_coco_is_48_base_17_novel() {
        let v = Vocabulary::load(configs().join("ov-coco.toml")).unwrap();
        assert_eq!(v.name, "ov-coco");
        assert_eq!(v.len(), 65);
        assert_eq!(v.base().count(), 48);
        let mut novel: Vec<&str> = v.novel().map(|c| c.name.as_str()).collect();
        novel.sort();
        let mut want = vec![
            "airplane",
            "bus",
            "cat",
            "dog",
            "cow",
            "elephant",
            "umbrella",
            "tie",
            "snowboard",
            "skateboard",
            "cup",
            "knife",
            "cake",
            "couch",
            "keyboard",
            "sink",
            "scissors",
        ];
        want.sort();
        assert_eq!(novel, want);
        // COCO category ids, not positions.
        assert_eq!(v.find("aeroplane").unwrap().id, 5);
        assert_eq!(v.find("toothbrush").unwrap().id, 90);
        assert_eq!(v.find("person").unwrap().id, 1);
        assert!(v.is_novel(87));
        assert!(!v.is_novel(1));
    }

    #[test]
    fn voc_zero_shot_split() {
        let v = Vocabulary::load(configs().join("voc-zs.toml")).unwrap();
        assert_eq!(v.len(), 20);
        assert_eq!(v.ids(), (1..=20).collect::<Vec<u64>>());
        let unseen: Vec<&str> = v.novel().map(|c| c.name.as_str()).collect();
        assert_eq!(
            unseen,
            vec!["potted plant", "sheep", "sofa", "train", "tv monitor"]
        );
        assert!(
            v.classes
                .iter()
                .all(|c| matches!(c.split, Split::Seen | Split::Unseen))
        );
        assert_eq!(v.find("tvmonitor").unwrap().id, 20);
    }

    #[test]
    fn lvis_rule_rare_is_novel() {
        let cats: Vec<CocoCategory> = serde_json::from_str(
            r#"[{"id": 1, "name": "aerosol_can", "frequency": "c", "synonyms": ["aerosol_can", "spray_can"]},
                {"id": 2, "name": "air_conditioner", "frequency": "f", "synonyms": ["air_conditioner"]},
                {"id": 3, "name": "anklet", "frequency": "r", "synonyms": ["anklet", "ankle_bracelet"]}]"#,
        )
        .unwrap();
        let v = Vocabulary::from_lvis_categories("lvis", &cats, Path::new("lvis.json")).unwrap();
        let splits: Vec<Split> = v.classes.iter().map(|c| c.split).collect();
        assert_eq!(splits, vec![Split::Base, Split::Base, Split::Novel]);
        assert_eq!(v.classes[0].name, "aerosol can");
        assert_eq!(v.classes[0].synonyms, vec!["spray can"]);
        assert_eq!(v.classes[2].synonyms, vec!["ankle bracelet"]);
        let mut bad = cats.clone();
        bad[1].frequency = None;
        let err = Vocabulary::from_lvis_categories("lvis", &bad, Path::new("lvis.json"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "lvis.json: category id 2 (#1), field `frequency`: missing (the LVIS rule needs r/c/f)"
        );
    }

    #[test]
    fn toml_round_trip_and_errors() {
        let v = Vocabulary::load(configs().join("ov-coco.toml")).unwrap();
        let text = v.to_toml_string();
        assert!(text.starts_with("name = \"ov-coco\""), "{text}");
        assert!(
            text.contains("[[class]]\nid = 1\nname = \"person\""),
            "{text}"
        );
        let again = Vocabulary::from_toml_str(&text, Path::new("x.toml")).unwrap();
        assert_eq!(again, v);

        let bad = "name = \"x\"\n[[class]]\nid = 1\nname = \"a\"\nsplit = \"rare\"\n";
        let err = Vocabulary::from_toml_str(bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml:5:9: invalid vocabulary: unknown variant `rare`"),
            "{err}"
        );
        let dup = "name = \"x\"\n[[class]]\nid = 1\nname = \"a\"\nsplit = \"base\"\n\
                   [[class]]\nid = 1\nname = \"b\"\nsynonyms = [\"A\"]\nsplit = \"novel\"\n";
        let err = Vocabulary::from_toml_str(dup, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "x.toml: class id 1 (#1), field `id`: duplicate class id 1 (also class #0)"
        );
        // Several problems are reported together.
        let two = "name = \"x\"\n\
                   [[class]]\nid = 1\nname = \"a\"\nsplit = \"base\"\n\
                   [[class]]\nid = 1\nname = \"b\"\nsplit = \"novel\"\n\
                   [[class]]\nid = 2\nname = \"c\"\nsynonyms = [\"A\"]\nsplit = \"base\"\n";
        let err = Vocabulary::from_toml_str(two, Path::new("x.toml")).unwrap_err();
        let Error::Problems(ps) = err else {
            panic!("{err}")
        };
        let msgs: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "x.toml: class id 1 (#1), field `id`: duplicate class id 1 (also class #0)",
                "x.toml: class id 2 (#2), field `synonyms`: \"A\" also names class id 1",
            ]
        );
    }
}
