//! Config sweeps: many pipeline runs of one experiment with some keys varied, one run
//! directory each, their metrics collected into one table.
//!
//! Each run is a child process (`ovkd pipeline --config C --run DIR --set ...`), so a crash or
//! a kill takes down one run, not the sweep, and runs can go N at a time. A run is finished when
//! `DIR/sweep_run.json` says `ok`; restarting the sweep skips finished runs and retries failed
//! ones.

use anyhow::{Context as _, Result, bail};
use polars::prelude::{Column, CsvWriter, DataFrame, ParquetWriter, PolarsResult, SerWriter};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// A sweep file.
///
/// ```toml
/// config = "ov-shapes.toml"            # relative to the sweep file
/// preset = "quick"                     # optional
/// metric = "det.splits.novel.AP50"     # the column the summary is sorted by (descending)
/// [set]                                # optional: overrides every run gets, before its own
/// "detector.train.steps" = 300
/// [grid]                               # every combination ...
/// "detector.distill.vild_image_weight" = [0.0, 0.5, 1.0]
/// [[run]]                              # ... and/or an explicit list
/// name = "high-lr"
/// set = { "detector.train.lr" = 0.002 }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// The experiment config, relative to the sweep file.
    pub config: PathBuf,
    /// A built-in preset applied to every run.
    #[serde(default)]
    pub preset: Option<String>,
    /// The metric column the summary is sorted by, highest first.
    pub metric: String,
    /// Overrides every run gets (before its own, so a run's `set` wins).
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// Keys and the values each takes; the runs are their Cartesian product.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Explicit runs.
    #[serde(default)]
    pub run: Vec<ExplicitRun>,
}

/// One explicitly listed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitRun {
    /// Its name (also its directory).
    pub name: String,
    /// Its overrides.
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
}

/// A run of the sweep: its name and its overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Name and directory.
    pub name: String,
    /// `key=value` overrides, in key order.
    pub sets: Vec<(String, toml::Value)>,
}

/// What `DIR/sweep_run.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStatus {
    /// `ok` or `failed`.
    pub status: String,
    /// Wall time, seconds.
    pub seconds: f64,
    /// The error (last lines of the run's log) of a failed run.
    pub error: Option<String>,
    /// The overrides it ran with, as `key=value`.
    pub sets: Vec<String>,
}

impl SweepFile {
    /// Reads and checks a sweep file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let mut f: SweepFile = toml::from_str(&text)
            .with_context(|| format!("{}: not a sweep file", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        f.config = dir.join(&f.config);
        if f.grid.is_empty() && f.run.is_empty() {
            bail!(
                "{}: a sweep needs a [grid] or [[run]] entries",
                path.display()
            );
        }
        for (k, vs) in &f.grid {
            if vs.is_empty() {
                bail!("{}: grid key `{k}` has no values", path.display());
            }
        }
        Ok(f)
    }

    /// The file's `[set]` followed by `extra` (the command line's `--set KEY=VALUE`): the
    /// overrides every run gets before its own.
    pub fn common_sets(&self, extra: &[String]) -> Vec<String> {
        self.set
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(extra.iter().cloned())
            .collect()
    }

    /// The runs: the grid's combinations (named by their values), then the explicit runs.
    pub fn plan(&self) -> Result<Vec<PlannedRun>> {
        let mut runs = Vec::new();
        if !self.grid.is_empty() {
            let keys: Vec<&String> = self.grid.keys().collect();
            let mut idx = vec![0usize; keys.len()];
            loop {
                let sets: Vec<(String, toml::Value)> = keys
                    .iter()
                    .zip(&idx)
                    .map(|(k, &i)| ((*k).clone(), self.grid[*k][i].clone()))
                    .collect();
                let name = sets
                    .iter()
                    .map(|(k, v)| {
                        format!("{}={}", k.rsplit('.').next().unwrap_or(k), value_text(v))
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                runs.push(PlannedRun {
                    name: sanitize(&name),
                    sets,
                });
                // Odometer over the grid, last key fastest.
                let mut d = keys.len();
                loop {
                    if d == 0 {
                        return self.with_explicit(runs);
                    }
                    d -= 1;
                    idx[d] += 1;
                    if idx[d] < self.grid[keys[d]].len() {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        self.with_explicit(runs)
    }

    fn with_explicit(&self, mut runs: Vec<PlannedRun>) -> Result<Vec<PlannedRun>> {
        for r in &self.run {
            runs.push(PlannedRun {
                name: sanitize(&r.name),
                sets: r.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            });
        }
        let mut seen = BTreeSet::new();
        for r in &runs {
            if !seen.insert(r.name.clone()) {
                bail!("two runs of the sweep are both named `{}`", r.name);
            }
        }
        Ok(runs)
    }
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=,.-_+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How to launch one run: gets the run's arguments after `ovkd`, returns its status.
pub type Launcher<'a> = dyn Fn(&PlannedRun, &Path) -> RunStatus + Sync + 'a;

/// Runs the sweep's unfinished runs, `jobs` at a time, then collects the table. `on_done` is
/// told of each run as it ends.
pub fn run_sweep(
    plan: &[PlannedRun],
    out: &Path,
    jobs: usize,
    launch: &Launcher<'_>,
    on_done: &(dyn Fn(&PlannedRun, &RunStatus, bool) + Sync),
) -> Result<()> {
    std::fs::create_dir_all(out.join("runs")).with_context(|| out.display().to_string())?;
    let todo: Vec<&PlannedRun> = plan
        .iter()
        .filter(|r| {
            let done = read_status(&run_dir(out, r)).is_some_and(|s| s.status == "ok");
            if done {
                on_done(r, &read_status(&run_dir(out, r)).expect("read above"), true);
            }
            !done
        })
        .collect();
    let next = Mutex::new(todo.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let Some(r) = next.lock().expect("no panics while held").next() else {
                        break;
                    };
                    let dir = run_dir(out, r);
                    let status = launch(r, &dir);
                    if let Err(e) = write_status(&dir, &status) {
                        tracing::error!("{}: {}", dir.display(), crate::cli::error_message(&e));
                    }
                    on_done(r, &status, false);
                }
            });
        }
    });
    Ok(())
}

/// The directory of a run.
pub fn run_dir(out: &Path, r: &PlannedRun) -> PathBuf {
    out.join("runs").join(&r.name)
}

fn read_status(dir: &Path) -> Option<RunStatus> {
    serde_json::from_slice(&std::fs::read(dir.join("sweep_run.json")).ok()?).ok()
}

fn write_status(dir: &Path, s: &RunStatus) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    ovkd_data::io::write_atomic(dir.join("sweep_run.json"), &serde_json::to_vec_pretty(s)?)?;
    Ok(())
}

/// Launches `exe pipeline --config C --run DIR [--preset P] --set k=v ...` as a child process,
/// its output going to `DIR/log.txt`. `common` are the sweep's overrides for every run; the
/// run's own come after them, so they win.
pub fn launch_child(
    exe: &Path,
    global: &[String],
    config: &Path,
    preset: Option<&str>,
    common: &[String],
    r: &PlannedRun,
    dir: &Path,
) -> RunStatus {
    let t0 = Instant::now();
    let sets: Vec<String> = common
        .iter()
        .cloned()
        .chain(r.sets.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let log_path = dir.join("log.txt");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(global)
            .arg("pipeline")
            .arg("--config")
            .arg(config)
            .arg("--run")
            .arg(dir);
        if let Some(p) = preset {
            cmd.arg("--preset").arg(p);
        }
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let status = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            // The error line says what went wrong; else the end of the log.
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error")).collect();
            let tail: Vec<&str> = if errors.is_empty() {
                let mut t: Vec<&str> = text.lines().rev().take(5).collect();
                t.reverse();
                t
            } else {
                errors
            };
            bail!("{status}: {}", tail.join(" | "));
        }
        Ok(())
    })();
    RunStatus {
        status: if result.is_ok() { "ok" } else { "failed" }.into(),
        seconds: t0.elapsed().as_secs_f64(),
        error: result.err().map(|e| crate::cli::error_message(&e)),
        sets,
    }
}

/// Every number a run wrote, flattened: `det.*` from `eval/det.json`, `seg.*` from
/// `eval/seg.json`, `teacher.*` from `teacher/zero_shot.json` (per-category entries left out).
pub fn run_metrics(dir: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (prefix, file) in [
        ("det", "eval/det.json"),
        ("seg", "eval/seg.json"),
        ("teacher", "teacher/zero_shot.json"),
    ] {
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        flatten(prefix, &v, &mut out);
    }
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "per_category" || k == "per_class" {
                    continue;
                }
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => {}
    }
}

/// The sweep's table: one row per run (name, status, seconds, error, its settings, every
/// metric), sorted by `metric` (highest first, runs without it last). Written as
/// `results.parquet`, `results.csv` and `results.md` in `out`.
pub fn collect(plan: &[PlannedRun], out: &Path, metric: &str) -> Result<DataFrame> {
    struct Row {
        name: String,
        status: String,
        seconds: Option<f64>,
        error: String,
        settings: BTreeMap<String, String>,
        metrics: BTreeMap<String, f64>,
    }
    let mut rows = Vec::new();
    for r in plan {
        let dir = run_dir(out, r);
        let status = read_status(&dir);
        rows.push(Row {
            name: r.name.clone(),
            status: status
                .as_ref()
                .map(|s| s.status.clone())
                .unwrap_or_else(|| "not run".into()),
            seconds: status.as_ref().map(|s| s.seconds),
            error: status.and_then(|s| s.error).unwrap_or_default(),
            settings: r
                .sets
                .iter()
                .map(|(k, v)| (k.clone(), value_text(v)))
                .collect(),
            metrics: run_metrics(&dir),
        });
    }
    rows.sort_by(|a, b| {
        let ka = a.metrics.get(metric).copied().filter(|x| x.is_finite());
        let kb = b.metrics.get(metric).copied().filter(|x| x.is_finite());
        match (ka, kb) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.name.cmp(&b.name),
        }
    });
    let setting_keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.settings.keys()).collect();
    let metric_keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();

    let mut cols = vec![
        Column::new(
            "run".into(),
            rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "status".into(),
            rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "seconds".into(),
            rows.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        ),
        Column::new(
            "error".into(),
            rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
        ),
    ];
    for k in &setting_keys {
        cols.push(Column::new(
            format!("set.{k}").into(),
            rows.iter()
                .map(|r| r.settings.get(*k).cloned())
                .collect::<Vec<_>>(),
        ));
    }
    for k in &metric_keys {
        cols.push(Column::new(
            k.as_str().into(),
            rows.iter()
                .map(|r| r.metrics.get(*k).copied())
                .collect::<Vec<_>>(),
        ));
    }
    let df = DataFrame::new_infer_height(cols).context("building the sweep table")?;

    let write = |name: &str, f: &mut dyn FnMut(std::fs::File) -> PolarsResult<()>| -> Result<()> {
        let tmp = out.join(format!(".{name}.tmp"));
        let file = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
        f(file).with_context(|| format!("writing {name}"))?;
        std::fs::rename(&tmp, out.join(name))?;
        Ok(())
    };
    write("results.parquet", &mut |f| {
        ParquetWriter::new(f).finish(&mut df.clone()).map(|_| ())
    })?;
    write("results.csv", &mut |f| {
        CsvWriter::new(f).finish(&mut df.clone())
    })?;

    // The summary shows the settings, status, time, the sorting metric and the headline ones.
    let headline: Vec<&String> = metric_keys
        .iter()
        .copied()
        .filter(|k| {
            k.as_str() == metric
                || k.ends_with(".AP50")
                || k.ends_with("IoU")
                || k.ends_with(".all")
        })
        .collect();
    let mut md = format!("# Sweep results, sorted by `{metric}`\n\n");
    let mut head = vec!["run".to_string(), "status".into(), "seconds".into()];
    head.extend(setting_keys.iter().map(|k| k.to_string()));
    head.extend(headline.iter().map(|k| k.to_string()));
    md.push_str(&format!("| {} |\n", head.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for r in &rows {
        let mut cells = vec![
            r.name.clone(),
            r.status.clone(),
            r.seconds.map(|s| format!("{s:.0}")).unwrap_or_default(),
        ];
        cells.extend(
            setting_keys
                .iter()
                .map(|k| r.settings.get(*k).cloned().unwrap_or_default()),
        );
        cells.extend(headline.iter().map(|k| {
            r.metrics
                .get(*k)
                .map(|x| format!("{x:.4}"))
                .unwrap_or_default()
        }));
        md.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.status == "failed").collect();
    if !failed.is_empty() {
        md.push_str("\n## Failed runs\n\n");
        for r in failed {
            md.push_str(&format!("- `{}`: {}\n", r.name, r.error.replace('\n', " ")));
        }
    }
    ovkd_data::io::write_atomic(out.join("results.md"), md.as_bytes())?;
    Ok(df)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> (tempfile::TempDir, SweepFile) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, text).unwrap();
        let f = SweepFile::load(&p).unwrap();
        (dir, f)
    }

    #[test]
    fn the_shipped_sweeps_plan_and_their_experiments_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sweeps");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let f = SweepFile::load(&path).unwrap();
            assert!(!f.plan().unwrap().is_empty());
            let sets: Vec<String> = f
                .common_sets(&[])
                .into_iter()
                .chain(
                    f.plan().unwrap()[0]
                        .sets
                        .iter()
                        .map(|(k, v)| format!("{k}={v}")),
                )
                .collect();
            crate::config::experiment::load(&f.config, f.preset.as_deref(), &sets)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    #[test]
    fn a_grid_is_its_cartesian_product_plus_explicit_runs() {
        let (_d, f) = sweep(
            "config = \"e.toml\"\nmetric = \"det.AP\"\n[grid]\n\"train.lr\" = [0.1, 0.2]\n\"distill.w\" = [0, 1, 2]\n[[run]]\nname = \"x\"\nset = { \"train.lr\" = 5 }\n",
        );
        let plan = f.plan().unwrap();
        assert_eq!(plan.len(), 7);
        assert_eq!(plan[0].name, "w=0,lr=0.1");
        assert_eq!(plan[1].name, "w=0,lr=0.2");
        assert_eq!(plan[5].name, "w=2,lr=0.2");
        assert_eq!(plan[6].name, "x");
        let names: BTreeSet<_> = plan.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn common_sets_come_from_the_file_then_the_command_line_and_do_not_name_runs() {
        let (_d, f) = sweep(
            "config = \"e.toml\"\nmetric = \"det.AP\"\n[set]\n\"train.steps\" = 10\n\"data.preset\" = \"quick\"\n[[run]]\nname = \"x\"\nset = { \"train.lr\" = 5 }\n",
        );
        assert_eq!(
            f.common_sets(&["train.steps=20".into()]),
            ["data.preset=\"quick\"", "train.steps=10", "train.steps=20"],
            "file keys in order, the command line last so it wins"
        );
        let plan = f.plan().unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan[0].sets.len(),
            1,
            "common sets are not a run's settings"
        );
    }

    #[test]
    fn a_failed_run_is_recorded_the_rest_go_on_and_a_restart_skips_finished_runs() {
        let (d, f) = sweep(
            "config = \"e.toml\"\nmetric = \"det.stats.AP\"\n[grid]\n\"train.lr\" = [1, 2, 3]\n",
        );
        let plan = f.plan().unwrap();
        let out = d.path().join("out");
        let launched = Mutex::new(Vec::new());
        let fake = |r: &PlannedRun, dir: &Path| {
            launched.lock().unwrap().push(r.name.clone());
            let lr = r.sets[0].1.as_integer().unwrap();
            if lr == 2 {
                return RunStatus {
                    status: "failed".into(),
                    seconds: 0.1,
                    error: Some("loss is NaN at step 3".into()),
                    sets: vec![],
                };
            }
            std::fs::create_dir_all(dir.join("eval")).unwrap();
            let ap = 0.1 * lr as f64;
            std::fs::write(
                dir.join("eval/det.json"),
                format!(
                    "{{\"stats\": {{\"AP\": {ap}}}, \"per_category\": {{\"1\": {{\"ap\": 0.5}}}}}}"
                ),
            )
            .unwrap();
            RunStatus {
                status: "ok".into(),
                seconds: 1.0,
                error: None,
                sets: vec![],
            }
        };
        run_sweep(&plan, &out, 2, &fake, &|_, _, _| {}).unwrap();
        assert_eq!(launched.lock().unwrap().len(), 3);
        let df = collect(&plan, &out, "det.stats.AP").unwrap();
        assert_eq!(df.height(), 3);
        let col = df.column("run").unwrap().str().unwrap();
        let runs: Vec<String> = (0..df.height())
            .map(|i| col.get(i).unwrap().to_string())
            .collect();
        assert_eq!(
            runs,
            ["lr=3", "lr=1", "lr=2"],
            "sorted by AP, the failed run last"
        );
        assert!(
            df.column("det.per_category.1.ap").is_err(),
            "per-category numbers left out"
        );
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        assert!(md.contains("loss is NaN at step 3"), "{md}");
        assert!(out.join("results.parquet").is_file() && out.join("results.csv").is_file());

        launched.lock().unwrap().clear();
        run_sweep(&plan, &out, 1, &fake, &|_, _, _| {}).unwrap();
        assert_eq!(
            *launched.lock().unwrap(),
            ["lr=2"],
            "only the failed run is retried"
        );
    }
}
