//! The per-step metrics table: appended to CSV as training goes (so a kill loses at most the
//! row being written) and written as Parquet at every checkpoint and at the end.

use polars::prelude::*;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Errors of the metrics table.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The existing CSV does not have the columns this run logs.
    #[error("{}: has columns {found:?}, this run logs {expected:?}", path.display())]
    Columns {
        /// The file.
        path: PathBuf,
        /// Its header.
        found: Vec<String>,
        /// What this run writes.
        expected: Vec<String>,
    },
    /// Polars could not build or write the table.
    #[error("{}: {source}", path.display())]
    Polars {
        /// The file.
        path: PathBuf,
        /// Polars' error.
        source: PolarsError,
    },
}

/// One row: the optimiser step, then named values (learning rate, loss terms, speed).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    /// 0-based optimiser step.
    pub step: usize,
    /// Values in the order of the table's columns.
    pub values: Vec<(String, f64)>,
}

/// An append-only metrics table at `DIR/metrics.csv`, mirrored to `DIR/metrics.parquet`.
pub struct MetricsLog {
    dir: PathBuf,
    columns: Vec<String>,
    rows: Vec<MetricsRow>,
    csv: Option<File>,
}

impl MetricsLog {
    /// Opens the table in `dir` for a run that starts at `start_step`: rows from a previous
    /// run at or after `start_step` (written after the checkpoint being resumed) are dropped, so
    /// a resumed run's table equals an uninterrupted run's.
    pub fn open(dir: &Path, columns: &[&str], start_step: usize) -> Result<Self, MetricsError> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let path = dir.join("metrics.csv");
        let io = |source| MetricsError::Io {
            path: path.clone(),
            source,
        };
        let mut rows = Vec::new();
        if path.exists() && start_step > 0 {
            let reader = BufReader::new(File::open(&path).map_err(io)?);
            let mut lines = reader.lines();
            if let Some(header) = lines.next() {
                let header: Vec<String> =
                    header.map_err(io)?.split(',').map(str::to_string).collect();
                if header[1..] != columns[..] {
                    return Err(MetricsError::Columns {
                        path,
                        found: header[1..].to_vec(),
                        expected: columns,
                    });
                }
            }
            for line in lines {
                let line = line.map_err(io)?;
                let mut fields = line.split(',');
                // A torn last line (killed mid-write) fails to parse and is dropped.
                let Some(Ok(step)) = fields.next().map(str::parse::<usize>) else {
                    continue;
                };
                let values: Vec<f64> = fields.filter_map(|f| f.parse().ok()).collect();
                if step >= start_step || values.len() != columns.len() {
                    continue;
                }
                rows.push(MetricsRow {
                    step,
                    values: columns.iter().cloned().zip(values).collect(),
                });
            }
        }
        let mut log = Self {
            dir: dir.to_path_buf(),
            columns,
            rows,
            csv: None,
        };
        log.rewrite_csv()?;
        Ok(log)
    }

    fn rewrite_csv(&mut self) -> Result<(), MetricsError> {
        let path = self.dir.join("metrics.csv");
        let tmp = self.dir.join(".metrics.csv.tmp");
        let io = |source| MetricsError::Io {
            path: path.clone(),
            source,
        };
        let mut text = format!("step,{}\n", self.columns.join(","));
        for row in &self.rows {
            text.push_str(&format_row(row));
        }
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.csv = Some(OpenOptions::new().append(true).open(&path).map_err(io)?);
        Ok(())
    }

    /// Appends a row; values are matched to columns by name (missing ones are NaN).
    pub fn push(&mut self, step: usize, values: &[(&str, f64)]) -> Result<(), MetricsError> {
        let row = MetricsRow {
            step,
            values: self
                .columns
                .iter()
                .map(|c| {
                    let v = values
                        .iter()
                        .find(|(k, _)| k == c)
                        .map(|(_, v)| *v)
                        .unwrap_or(f64::NAN);
                    (c.clone(), v)
                })
                .collect(),
        };
        let path = self.dir.join("metrics.csv");
        if let Some(csv) = &mut self.csv {
            csv.write_all(format_row(&row).as_bytes())
                .and_then(|_| csv.flush())
                .map_err(|source| MetricsError::Io { path, source })?;
        }
        self.rows.push(row);
        Ok(())
    }

    /// The rows so far.
    pub fn rows(&self) -> &[MetricsRow] {
        &self.rows
    }

    /// Writes `metrics.parquet` atomically from the rows so far.
    pub fn write_parquet(&self) -> Result<(), MetricsError> {
        let path = self.dir.join("metrics.parquet");
        let polars_err = |source| MetricsError::Polars {
            path: path.clone(),
            source,
        };
        let mut cols: Vec<Column> = Vec::with_capacity(self.columns.len() + 1);
        cols.push(Column::new(
            "step".into(),
            self.rows.iter().map(|r| r.step as u64).collect::<Vec<_>>(),
        ));
        for (i, name) in self.columns.iter().enumerate() {
            cols.push(Column::new(
                name.as_str().into(),
                self.rows.iter().map(|r| r.values[i].1).collect::<Vec<_>>(),
            ));
        }
        let mut df = DataFrame::new_infer_height(cols).map_err(polars_err)?;
        let tmp = self.dir.join(".metrics.parquet.tmp");
        let file = File::create(&tmp).map_err(|source| MetricsError::Io {
            path: tmp.clone(),
            source,
        })?;
        ParquetWriter::new(file)
            .finish(&mut df)
            .map_err(polars_err)?;
        std::fs::rename(&tmp, &path).map_err(|source| MetricsError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(())
    }
}

fn format_row(row: &MetricsRow) -> String {
    let mut s = row.step.to_string();
    for (_, v) in &row.values {
        s.push(',');
        s.push_str(&format!("{v}"));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_rows_from_the_abandoned_tail_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), &["lr", "loss"], 0).unwrap();
        for step in 0..6 {
            log.push(step, &[("loss", step as f64), ("lr", 0.1)])
                .unwrap();
        }
        drop(log);
        // A kill in the middle of a write leaves a partial line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("metrics.csv"))
            .unwrap();
        f.write_all(b"6,0.1,").unwrap();
        drop(f);
        let log = MetricsLog::open(dir.path(), &["lr", "loss"], 4).unwrap();
        assert_eq!(
            log.rows().iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            log.rows()[3].values,
            vec![("lr".into(), 0.1), ("loss".into(), 3.0)]
        );
        let text = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert_eq!(text.lines().count(), 5);
        log.write_parquet().unwrap();
        let df = ParquetReader::new(File::open(dir.path().join("metrics.parquet")).unwrap())
            .finish()
            .unwrap();
        assert_eq!(df.height(), 4);
        assert_eq!(df.get_column_names(), vec!["step", "lr", "loss"]);
    }

    #[test]
    fn a_different_column_set_is_an_error_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), &["lr", "loss"], 0).unwrap();
        log.push(0, &[("lr", 1.0), ("loss", 2.0)]).unwrap();
        drop(log);
        let err = MetricsLog::open(dir.path(), &["lr", "loss_rpn"], 1)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has columns"), "{err}");
    }
}
