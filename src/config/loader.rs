//! Layered TOML configs: `extends` inheritance, `--set` overrides, and errors that name the key,
//! the file and the line the offending value came from.
//!
//! A config file is read twice: once into a [`toml::Table`] for its values and once as a spanned
//! document for the line of every key. Layers merge table by table (a child's value replaces its
//! parent's; arrays are replaced, not appended), and every leaf remembers where it was set, so an
//! error found after merging still points at the right file and line.

use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

/// Where a config value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a config file.
    File {
        /// The file, as the user named it or as `extends` resolved it.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// The i-th `--set` on the command line (1-based).
    Override(usize),
    /// A value the program set (a preset or a default applied by a command).
    Program(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Override(i) => write!(f, "--set #{i}"),
            Origin::Program(what) => write!(f, "{what}"),
        }
    }
}

/// A config error: what went wrong, at which key, set where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// `extends` names files in a loop.
    #[error("{}: `extends` loops back to {}", path.display(), back_to.display())]
    ExtendsCycle {
        /// The file whose `extends` closes the loop.
        path: PathBuf,
        /// The file named twice.
        back_to: PathBuf,
    },
    /// A `--set` argument is not `key=value`.
    #[error("--set #{index} `{arg}`: {message}")]
    BadOverride {
        /// 1-based position among the `--set` arguments.
        index: usize,
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key is unknown, has the wrong type, or a value is out of range.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        /// Dotted key path, e.g. `train.lr`.
        key: String,
        /// Where the value (or, for a missing key, its table) was set.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
}

/// One value-out-of-range problem found by [`Validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Dotted key path relative to the config root.
    pub key: String,
    /// What is wrong, e.g. "must be > 0, got -1".
    pub message: String,
}

impl Invalid {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Range checks that serde cannot express. Implementors push every problem, not only the first.
pub trait Validate {
    /// Appends the problems of `self`, whose keys start with `prefix` (e.g. `"train."`).
    fn validate(&self, prefix: &str, problems: &mut Vec<Invalid>);
}

/// Checks `value > 0` (and finite), recording a problem otherwise.
pub fn check_positive(problems: &mut Vec<Invalid>, key: String, value: f64) {
    if !(value.is_finite() && value > 0.0) {
        problems.push(Invalid::new(
            key,
            format!("must be a finite number > 0, got {value}"),
        ));
    }
}

/// Checks `lo <= value <= hi`, recording a problem otherwise.
pub fn check_range(problems: &mut Vec<Invalid>, key: String, value: f64, lo: f64, hi: f64) {
    if !(value.is_finite() && value >= lo && value <= hi) {
        problems.push(Invalid::new(
            key,
            format!("must be in [{lo}, {hi}], got {value}"),
        ));
    }
}

/// A config merged from its layers, with the origin of every leaf and table.
#[derive(Debug, Clone, Default)]
pub struct Layered {
    /// The merged values.
    pub table: Table,
    origins: BTreeMap<String, Origin>,
    /// Every file read, in the order read (parents first).
    pub files: Vec<PathBuf>,
    /// Prepended to keys in errors: a view made by [`Layered::sub`] reports `detector.train.lr`,
    /// not `train.lr`.
    key_prefix: String,
}

impl Layered {
    /// Reads `path` and, recursively, the files its `extends` names (relative to the file's own
    /// folder), parents first.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut out = Layered::default();
        let mut stack = Vec::new();
        out.load_into(path, &mut stack)?;
        Ok(out)
    }

    /// Parses a TOML string as if it were the file `name` (for tests and built-in presets).
    pub fn from_str(name: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut out = Layered::default();
        out.merge_text(name, text, &mut Vec::new())?;
        Ok(out)
    }

    fn load_into(&mut self, path: &Path, stack: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.merge_text(path, &text, stack)
    }

    fn merge_text(
        &mut self,
        path: &Path,
        text: &str,
        stack: &mut Vec<PathBuf>,
    ) -> Result<(), ConfigError> {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(first) = stack.iter().find(|p| **p == canonical) {
            return Err(ConfigError::ExtendsCycle {
                path: path.to_path_buf(),
                back_to: first.clone(),
            });
        }
        let syntax = |message: String, offset: Option<usize>| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: offset.map(|o| line_of(text, o)).unwrap_or(1),
            message,
        };
        let spanned = DeTable::parse(text)
            .map_err(|e| syntax(e.message().to_string(), e.span().map(|s| s.start)))?;
        let mut table: Table = toml::from_str(text)
            .map_err(|e| syntax(e.message().to_string(), e.span().map(|s| s.start)))?;
        let mut origins = BTreeMap::new();
        collect_origins(spanned.get_ref(), "", path, text, &mut origins);

        if let Some(extends) = table.remove("extends") {
            let parents: Vec<String> = match extends {
                Value::String(s) => vec![s],
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        other => Err(other),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|other| ConfigError::Invalid {
                        key: "extends".into(),
                        origin: origins.get("extends").cloned().unwrap_or(Origin::File {
                            path: path.to_path_buf(),
                            line: 1,
                        }),
                        message: format!("expected a file name, got {}", other.type_str()),
                    })?,
                other => {
                    return Err(ConfigError::Invalid {
                        key: "extends".into(),
                        origin: origins["extends"].clone(),
                        message: format!(
                            "expected a file name or a list of them, got {}",
                            other.type_str()
                        ),
                    });
                }
            };
            stack.push(canonical);
            let dir = path.parent().unwrap_or(Path::new("."));
            for parent in parents {
                self.load_into(&dir.join(parent), stack)?;
            }
            stack.pop();
        }
        origins.remove("extends");
        self.files.push(path.to_path_buf());
        merge_table(&mut self.table, table, "", &mut self.origins, &origins);
        Ok(())
    }

    /// Applies `key.path=value` overrides in order. The value is read as a TOML value
    /// (`0.02`, `true`, `[1, 2]`, `"text"`) and, failing that, as a bare string, so that
    /// `--set distill.method=baron` works without quotes.
    pub fn apply_overrides(&mut self, sets: &[String]) -> Result<(), ConfigError> {
        for (i, arg) in sets.iter().enumerate() {
            let index = i + 1;
            let bad = |message: &str| ConfigError::BadOverride {
                index,
                arg: arg.clone(),
                message: message.into(),
            };
            let (key, raw) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let key = key.trim();
            if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
                return Err(bad("the key must be a dotted path such as train.lr"));
            }
            let value = parse_override_value(raw.trim());
            self.set(key, value, Origin::Override(index))
                .map_err(|message| bad(&message))?;
        }
        Ok(())
    }

    /// Sets one dotted key, creating tables on the way.
    pub fn set(&mut self, key: &str, value: Value, origin: Origin) -> Result<(), String> {
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        let mut table = &mut self.table;
        for (depth, part) in parts[..parts.len() - 1].iter().enumerate() {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            table = match entry {
                Value::Table(t) => t,
                other => {
                    return Err(format!(
                        "`{}` is a {}, not a table",
                        parts[..=depth].join("."),
                        other.type_str()
                    ));
                }
            };
        }
        let leaf = parts[parts.len() - 1];
        // Forget the origins of whatever the new value replaces.
        let prefix = format!("{key}.");
        self.origins.retain(|k, _| !k.starts_with(&prefix));
        if let Value::Table(t) = &value {
            record_table_origins(t, key, &origin, &mut self.origins);
        }
        table.insert(leaf.to_string(), value);
        self.origins.insert(key.to_string(), origin);
        Ok(())
    }

    /// The table at `key` as a config of its own (values, origins and files kept), or an
    /// empty one when `key` is absent. Errors from the view name the full key.
    pub fn sub(&self, key: &str) -> Result<Layered, ConfigError> {
        let table = match self.table.get(key) {
            None => Table::new(),
            Some(Value::Table(t)) => t.clone(),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: format!("{}{key}", self.key_prefix),
                    origin: self.origin(key),
                    message: format!("expected a table, got {}", other.type_str()),
                });
            }
        };
        let prefix = format!("{key}.");
        let origins = self
            .origins
            .iter()
            .filter_map(|(k, o)| {
                k.strip_prefix(&prefix)
                    .map(|rest| (rest.to_string(), o.clone()))
            })
            .collect();
        Ok(Layered {
            table,
            origins,
            files: self.files.clone(),
            key_prefix: format!("{}{prefix}", self.key_prefix),
        })
    }

    /// Where `key` was set; for a key that was never set, its nearest table's origin.
    pub fn origin(&self, key: &str) -> Origin {
        let mut k = key;
        loop {
            if let Some(o) = self.origins.get(k) {
                return o.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => break,
            }
        }
        match self.files.last() {
            Some(path) => Origin::File {
                path: path.clone(),
                line: 1,
            },
            None => Origin::Program("built-in defaults"),
        }
    }

    /// Deserialises the merged table into `T`, turning serde's first error into a
    /// [`ConfigError::Invalid`] that names the key and where it was set, then runs
    /// [`Validate`] and reports every range problem it finds (joined in one error).
    pub fn deserialize<T: DeserializeOwned + Validate>(&self) -> Result<T, ConfigError> {
        let value = Value::Table(self.table.clone());
        let parsed: T = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = path_to_key(err.path());
            let inner = err.into_inner();
            // toml appends "in `table`" on a line of its own; the key says that already.
            let message = inner.to_string();
            let message = message
                .split("\nin `")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            // serde names an unknown field in its message; the path may or may not hold it.
            let key = match unknown_field_name(&message) {
                Some(field) if path.is_empty() => field.to_string(),
                Some(field) if path == field || path.ends_with(&format!(".{field}")) => path,
                Some(field) => format!("{path}.{field}"),
                None => path,
            };
            ConfigError::Invalid {
                origin: self.origin(&key),
                key: format!("{}{key}", self.key_prefix),
                message,
            }
        })?;
        let mut problems = Vec::new();
        parsed.validate("", &mut problems);
        if let Some(first) = problems.first() {
            let mut message = first.message.clone();
            for more in &problems[1..] {
                message.push_str(&format!(
                    "\n  {}: `{}{}`: {}",
                    self.origin(&more.key),
                    self.key_prefix,
                    more.key,
                    more.message
                ));
            }
            return Err(ConfigError::Invalid {
                key: format!("{}{}", self.key_prefix, first.key),
                origin: self.origin(&first.key),
                message,
            });
        }
        Ok(parsed)
    }
}

fn parse_override_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

fn path_to_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn collect_origins(
    table: &DeTable<'_>,
    prefix: &str,
    path: &Path,
    text: &str,
    out: &mut BTreeMap<String, Origin>,
) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(
            dotted.clone(),
            Origin::File {
                path: path.to_path_buf(),
                line: line_of(text, key.span().start),
            },
        );
        if let DeValue::Table(inner) = value.get_ref() {
            collect_origins(inner, &dotted, path, text, out);
        }
    }
}

fn record_table_origins(
    t: &Table,
    prefix: &str,
    origin: &Origin,
    out: &mut BTreeMap<String, Origin>,
) {
    for (k, v) in t {
        let dotted = format!("{prefix}.{k}");
        if let Value::Table(inner) = v {
            record_table_origins(inner, &dotted, origin, out);
        }
        out.insert(dotted, origin.clone());
    }
}

fn merge_table(
    base: &mut Table,
    top: Table,
    prefix: &str,
    origins: &mut BTreeMap<String, Origin>,
    top_origins: &BTreeMap<String, Origin>,
) {
    for (k, v) in top {
        let dotted = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let both_tables = v.is_table() && matches!(base.get(&k), Some(Value::Table(_)));
        if both_tables {
            if let (Some(Value::Table(b)), Value::Table(t)) = (base.get_mut(&k), v) {
                merge_table(b, t, &dotted, origins, top_origins);
            }
            if let Some(o) = top_origins.get(&dotted) {
                origins.entry(dotted).or_insert_with(|| o.clone());
            }
        } else {
            // The new value replaces the old one whole, and so do their origins.
            let sub = format!("{dotted}.");
            origins.retain(|key, _| key != &dotted && !key.starts_with(&sub));
            for (key, o) in top_origins {
                if key == &dotted || key.starts_with(&sub) {
                    origins.insert(key.clone(), o.clone());
                }
            }
            base.insert(k, v);
        }
    }
}

/// The value at a dotted `key` (`detector.train.lr`) of `table`, if every part is there.
pub fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut t = Some(table);
    let mut v = None;
    for part in key.split('.') {
        v = t.and_then(|t| t.get(part));
        t = v.and_then(|x| x.as_table());
    }
    v
}

/// The dotted paths of every leaf in `table` (preset overlays, student configs).
pub fn leaf_keys(table: &Table) -> BTreeSet<String> {
    fn walk(t: &Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (k, v) in t {
            let dotted = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(inner) => walk(inner, &dotted, out),
                _ => {
                    out.insert(dotted);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(table, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Train {
        lr: f64,
        #[serde(default = "default_steps")]
        steps: u32,
    }
    fn default_steps() -> u32 {
        10
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Distill {
        method: String,
        #[serde(default)]
        vild_image_weight: f64,
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Exp {
        name: String,
        train: Train,
        distill: Distill,
    }
    impl Validate for Exp {
        fn validate(&self, prefix: &str, problems: &mut Vec<Invalid>) {
            check_positive(problems, format!("{prefix}train.lr"), self.train.lr);
            check_range(
                problems,
                format!("{prefix}distill.vild_image_weight"),
                self.distill.vild_image_weight,
                0.0,
                10.0,
            );
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn base_and_child() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base/ov-shapes.toml",
            "name = \"base\"\n[train]\nlr = 0.1\nsteps = 100\n[distill]\nmethod = \"vild\"\nvild_image_weight = 0.5\n",
        );
        let child = write(
            dir.path(),
            "exp.toml",
            "extends = \"base/ov-shapes.toml\"\nname = \"exp\"\n\n[train]\nlr = 0.02\n",
        );
        (dir, child)
    }

    #[test]
    fn child_overrides_parent_and_keeps_the_rest() {
        let (_dir, child) = base_and_child();
        let cfg: Exp = Layered::load(&child).unwrap().deserialize().unwrap();
        assert_eq!(cfg.name, "exp");
        assert_eq!(cfg.train.lr, 0.02);
        assert_eq!(cfg.train.steps, 100);
        assert_eq!(cfg.distill.method, "vild");
    }

    #[test]
    fn overrides_parse_typed_values_and_bare_strings() {
        let (_dir, child) = base_and_child();
        let mut l = Layered::load(&child).unwrap();
        l.apply_overrides(&[
            "train.lr=0.5".into(),
            "distill.method=baron".into(),
            "distill.vild_image_weight = 1.0".into(),
        ])
        .unwrap();
        let cfg: Exp = l.deserialize().unwrap();
        assert_eq!(cfg.train.lr, 0.5);
        assert_eq!(cfg.distill.method, "baron");
        assert_eq!(cfg.distill.vild_image_weight, 1.0);
        assert_eq!(l.origin("distill.method"), Origin::Override(2));
    }

    #[test]
    fn a_section_view_reports_full_keys_and_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "pipe.toml",
            "[student]\nname = \"s\"\n[student.train]\nlr = 0.1\nbogus = 3\n[student.distill]\nmethod = \"vild\"\n",
        );
        let l = Layered::load(&path).unwrap();
        let err = l.sub("student").unwrap().deserialize::<Exp>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pipe.toml:5"), "{msg}");
        assert!(msg.contains("`student.train.bogus`"), "{msg}");
        let mut fixed = Layered::load(&path).unwrap();
        fixed.table["student"]["train"]
            .as_table_mut()
            .unwrap()
            .remove("bogus");
        let cfg: Exp = fixed.sub("student").unwrap().deserialize().unwrap();
        assert_eq!(cfg.train.lr, 0.1);
        // A section that is not a table is named as such.
        let mut bad = Layered::load(&path).unwrap();
        bad.apply_overrides(&["student=3".into()]).unwrap();
        let msg = bad.sub("student").unwrap_err().to_string();
        assert!(
            msg.contains("`student`") && msg.contains("--set #1"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "bad.toml",
            "name = \"x\"\n[train]\nlr = 0.1\nlearning_rate = 3\n[distill]\nmethod = \"vild\"\n",
        );
        let err = Layered::load(&p)
            .unwrap()
            .deserialize::<Exp>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml:4"), "{err}");
        assert!(err.contains("`train.learning_rate`"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_type_in_parent_points_at_the_parent_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            "name = \"b\"\n[train]\nlr = \"fast\"\n[distill]\nmethod = \"vild\"\n",
        );
        let child = write(
            dir.path(),
            "c.toml",
            "extends = \"base.toml\"\nname = \"c\"\n",
        );
        let err = Layered::load(&child)
            .unwrap()
            .deserialize::<Exp>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("base.toml:3"), "{err}");
        assert!(err.contains("`train.lr`"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_all_reported_with_origins() {
        let (_dir, child) = base_and_child();
        let mut l = Layered::load(&child).unwrap();
        l.apply_overrides(&["train.lr=-1".into(), "distill.vild_image_weight=99".into()])
            .unwrap();
        let err = l.deserialize::<Exp>().unwrap_err().to_string();
        assert!(
            err.starts_with("--set #1: `train.lr`: must be a finite number > 0, got -1"),
            "{err}"
        );
        assert!(
            err.contains("--set #2: `distill.vild_image_weight`: must be in [0, 10], got 99"),
            "{err}"
        );
    }

    #[test]
    fn override_into_a_non_table_and_malformed_overrides_are_errors() {
        let (_dir, child) = base_and_child();
        let mut l = Layered::load(&child).unwrap();
        let err = l
            .apply_overrides(&["name.x=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`name` is a string, not a table"), "{err}");
        let err = l
            .apply_overrides(&["train.lr".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected KEY=VALUE"), "{err}");
        let err = l
            .apply_overrides(&["train..lr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("dotted path"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "broken.toml", "name = \"x\"\n[train\nlr = 1\n");
        let err = Layered::load(&p).unwrap_err().to_string();
        assert!(err.contains("broken.toml:2"), "{err}");
    }

    #[test]
    fn extends_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
        let b = write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
        let err = Layered::load(&b).unwrap_err().to_string();
        assert!(err.contains("loops back"), "{err}");
    }

    #[test]
    fn missing_parent_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.toml", "extends = \"nope.toml\"\n");
        let err = Layered::load(&p).unwrap_err().to_string();
        assert!(err.contains("nope.toml"), "{err}");
    }
}
