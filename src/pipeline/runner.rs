//! The stage runner: runs stages in order in one run directory, skipping a stage whose inputs
//! (its config sections and its upstream stages' hashes) are unchanged since it last finished.
//!
//! A stage is recorded as finished only after it returns, by an atomic write of
//! `RUN/.stages/NAME.json`; a kill at any moment therefore leaves the stage unfinished, and the
//! next run starts it again (stages resume their own work: training from checkpoints, the
//! embedding cache from its index).

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One stage of the pipeline.
pub trait Stage {
    /// The name users type after `--from` / `--only`, e.g. `train-detector`.
    fn name(&self) -> &'static str;
    /// Stages whose outputs this one reads.
    fn upstream(&self) -> &'static [&'static str];
    /// Top-level config keys (dotted) whose values decide whether this stage must rerun.
    fn config_keys(&self) -> &'static [&'static str];
    /// Does the work. `resume` is true when an attempt with the same inputs was started and
    /// killed: the stage continues what it left (training from its checkpoints). When false the
    /// stage must start from nothing, removing what an attempt with other inputs left.
    fn run(&self, run_dir: &Path, resume: bool) -> Result<()>;
}

/// What `RUN/.stages/NAME.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    /// The stage.
    pub stage: String,
    /// Hash of its inputs when it finished.
    pub hash: String,
    /// Wall time of the run that finished it, in seconds.
    pub seconds: f64,
}

/// `--from` / `--only` and friends.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rerun this stage and every later one, whatever their hashes.
    pub from: Option<String>,
    /// Run only this stage (its upstream stages must have finished).
    pub only: Option<String>,
}

/// What happened to each stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ran to the end, in this many seconds.
    Ran(f64),
    /// Inputs unchanged since it last finished.
    Skipped,
}

fn records_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(".stages")
}

/// The record of `stage` in `run_dir`, if it has finished.
pub fn read_record(run_dir: &Path, stage: &str) -> Option<StageRecord> {
    let text = std::fs::read(records_dir(run_dir).join(format!("{stage}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_record(run_dir: &Path, record: &StageRecord) -> Result<()> {
    let dir = records_dir(run_dir);
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let path = dir.join(format!("{}.json", record.stage));
    let json = serde_json::to_vec_pretty(record)?;
    ovkd_data::io::write_atomic(&path, &json).with_context(|| path.display().to_string())?;
    Ok(())
}

/// Hash of the values at `keys` in `config` (absent keys hash as absent).
pub fn config_hash(config: &toml::Table, keys: &[&str]) -> String {
    let mut h = Sha256::new();
    for key in keys {
        h.update(key.as_bytes());
        h.update([0]);
        let v = crate::config::loader::lookup(config, key);
        // toml::Table is ordered by key, so its JSON form is canonical.
        let json = serde_json::to_string(&v).expect("TOML values serialise to JSON");
        h.update(json.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

/// Runs `stages` (in the order given) in `run_dir`. Returns each stage's outcome.
pub fn run_stages(
    stages: &[&dyn Stage],
    config: &toml::Table,
    run_dir: &Path,
    opts: &RunOptions,
) -> Result<Vec<(String, Outcome)>> {
    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    for flag in [&opts.from, &opts.only].into_iter().flatten() {
        if !names.contains(&flag.as_str()) {
            bail!(
                "unknown stage `{flag}`; the stages are: {}",
                names.join(", ")
            );
        }
    }
    let mut hashes: BTreeMap<&str, String> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let mut forcing = false;
    for stage in stages {
        let name = stage.name();
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update(config_hash(config, stage.config_keys()).as_bytes());
        for up in stage.upstream() {
            let up_hash = match hashes.get(up) {
                Some(x) => x.clone(),
                // An upstream stage outside this pipeline (disabled) contributes its record.
                None => read_record(run_dir, up).map(|r| r.hash).unwrap_or_default(),
            };
            h.update(up.as_bytes());
            h.update(up_hash.as_bytes());
        }
        let hash = format!("{:x}", h.finalize());
        hashes.insert(name, hash.clone());

        if opts.from.as_deref() == Some(name) {
            forcing = true;
        }
        if let Some(only) = &opts.only {
            if only != name {
                continue;
            }
            for up in stage.upstream() {
                match read_record(run_dir, up) {
                    Some(r) if Some(&r.hash) == hashes.get(up) => {}
                    Some(_) => bail!(
                        "`{name}` needs `{up}`, whose inputs changed since it ran: run the pipeline without --only, or with --from {up}"
                    ),
                    None if names.contains(up) => bail!(
                        "`{name}` needs `{up}`, which has not finished: run the pipeline without --only first"
                    ),
                    None => {}
                }
            }
        }
        let unchanged = read_record(run_dir, name).is_some_and(|r| r.hash == hash);
        if unchanged && !forcing && opts.only.is_none() {
            tracing::info!("{name}: unchanged, skipped");
            outcomes.push((name.to_string(), Outcome::Skipped));
            continue;
        }
        let started = records_dir(run_dir).join(format!("{name}.started"));
        // Only an unfinished attempt with these very inputs is continued; --from and --only
        // ask for a fresh run.
        let resume = !forcing
            && opts.only.is_none()
            && std::fs::read_to_string(&started).is_ok_and(|h| h == hash);
        std::fs::create_dir_all(records_dir(run_dir))?;
        ovkd_data::io::write_atomic(&started, hash.as_bytes())
            .with_context(|| started.display().to_string())?;
        tracing::info!("{name}: {}", if resume { "resuming" } else { "running" });
        let t0 = Instant::now();
        stage
            .run(run_dir, resume)
            .with_context(|| format!("stage `{name}`"))?;
        let seconds = t0.elapsed().as_secs_f64();
        write_record(
            run_dir,
            &StageRecord {
                stage: name.to_string(),
                hash,
                seconds,
            },
        )?;
        tracing::info!("{name}: done in {seconds:.1} s");
        outcomes.push((name.to_string(), Outcome::Ran(seconds)));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Fake {
        name: &'static str,
        up: &'static [&'static str],
        keys: &'static [&'static str],
        log: &'static std::thread::LocalKey<RefCell<Vec<String>>>,
        fail: bool,
    }

    impl Stage for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn upstream(&self) -> &'static [&'static str] {
            self.up
        }
        fn config_keys(&self) -> &'static [&'static str] {
            self.keys
        }
        fn run(&self, run_dir: &Path, resume: bool) -> Result<()> {
            let tag = if resume { "+" } else { "" };
            self.log
                .with(|l| l.borrow_mut().push(format!("{}{tag}", self.name)));
            if self.fail {
                bail!("killed");
            }
            std::fs::write(run_dir.join(self.name), b"done")?;
            Ok(())
        }
    }

    thread_local!(static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) });

    fn stages(fail_b: bool) -> Vec<Fake> {
        vec![
            Fake {
                name: "a",
                up: &[],
                keys: &["data"],
                log: &LOG,
                fail: false,
            },
            Fake {
                name: "b",
                up: &["a"],
                keys: &["train"],
                log: &LOG,
                fail: fail_b,
            },
            Fake {
                name: "c",
                up: &["b"],
                keys: &[],
                log: &LOG,
                fail: false,
            },
        ]
    }

    fn run(cfg: &str, dir: &Path, opts: &RunOptions, fail_b: bool) -> Result<Vec<String>> {
        LOG.with(|l| l.borrow_mut().clear());
        let cfg: toml::Table = toml::from_str(cfg).unwrap();
        let owned = stages(fail_b);
        let refs: Vec<&dyn Stage> = owned.iter().map(|s| s as &dyn Stage).collect();
        run_stages(&refs, &cfg, dir, opts)?;
        Ok(LOG.with(|l| l.borrow().clone()))
    }

    #[test]
    fn unchanged_stages_skip_and_a_change_reruns_downstream_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = "[data]\nn = 1\n[train]\nlr = 0.1\n";
        assert_eq!(
            run(cfg, d, &RunOptions::default(), false).unwrap(),
            ["a", "b", "c"]
        );
        assert!(
            run(cfg, d, &RunOptions::default(), false)
                .unwrap()
                .is_empty()
        );
        let cfg2 = "[data]\nn = 1\n[train]\nlr = 0.2\n";
        assert_eq!(
            run(cfg2, d, &RunOptions::default(), false).unwrap(),
            ["b", "c"]
        );
        let cfg3 = "[data]\nn = 2\n[train]\nlr = 0.2\n";
        assert_eq!(
            run(cfg3, d, &RunOptions::default(), false).unwrap(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_killed_stage_reruns_and_from_and_only_work() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = "[data]\nn = 1\n";
        assert!(run(cfg, d, &RunOptions::default(), true).is_err());
        assert!(read_record(d, "a").is_some() && read_record(d, "b").is_none());
        assert_eq!(
            run(cfg, d, &RunOptions::default(), false).unwrap(),
            ["b+", "c"]
        );
        let from = RunOptions {
            from: Some("b".into()),
            only: None,
        };
        assert_eq!(run(cfg, d, &from, false).unwrap(), ["b", "c"]);
        let only = RunOptions {
            from: None,
            only: Some("c".into()),
        };
        assert_eq!(run(cfg, d, &only, false).unwrap(), ["c"]);
        let bad = RunOptions {
            from: Some("zzz".into()),
            only: None,
        };
        let err = run(cfg, d, &bad, false).unwrap_err().to_string();
        assert!(err.contains("unknown stage `zzz`"), "{err}");
    }

    #[test]
    fn only_refuses_when_upstream_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let only = RunOptions {
            from: None,
            only: Some("b".into()),
        };
        let err = run("", dir.path(), &only, false).unwrap_err().to_string();
        assert!(err.contains("needs `a`, which has not finished"), "{err}");
    }
}
