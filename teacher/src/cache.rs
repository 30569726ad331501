//! The region-embedding cache: half-precision vectors appended to a few large shard files,
//! and a Parquet index (image id, box, shard, row offset, checksum).
//!
//! Crash safety: a writer appends a flush's vectors to its shard file and syncs it *before* it
//! writes the index part that points at them (a new part per flush, written to a temporary
//! name and renamed). On reopening, the index parts say which images are done and where the
//! valid data ends; anything past that in the shard file (a flush killed between the two
//! steps) is cut off. So a killed run resumes without redoing finished images and without
//! a corrupt shard. `--shard i/n` processes write separate shard files and index folders;
//! [`merge`] checks every checksum and joins the index parts into `index.parquet`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TeacherError;
use crate::io::write_atomic;
use crate::precision::Precision;

/// Bytes per stored value (f16).
pub const BYTES_PER_VALUE: usize = 2;

/// Which slice of the images a process handles: images whose position in the sorted id list
/// is `index` mod `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// i, 0-based.
    pub index: usize,
    /// n ≥ 1.
    pub count: usize,
}

impl ShardSpec {
    /// The whole data set in one shard.
    pub const ALL: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// Parses `i/n`.
    pub fn parse(s: &str) -> Result<Self, TeacherError> {
        let bad =
            || TeacherError::InvalidRequest(format!("--shard {s}: expected i/n with 0 <= i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// Whether the image at position `pos` of the sorted id list belongs to this shard.
    pub fn owns(&self, pos: usize) -> bool {
        pos % self.count == self.index
    }

    fn name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

/// `cache.json`: what every shard of a cache shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    /// Embedding size D.
    pub dim: usize,
    /// Always `f16`.
    pub dtype: String,
    /// SHA-256 of the teacher weights that made the vectors.
    pub checkpoint_hash: String,
    /// What the image tower computed in (caches written before it was recorded: float32).
    #[serde(default)]
    pub precision: Precision,
    /// Layout version.
    pub format: u32,
}

/// One stored region.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    /// Image id.
    pub image_id: i64,
    /// [x1, y1, x2, y2] in image pixels.
    pub bbox: [f32; 4],
    /// Shard file name.
    pub shard: String,
    /// Row in the shard file (byte offset = row * D * 2).
    pub offset: i64,
    /// First 8 bytes of the SHA-256 of the row's f16 bytes.
    pub checksum: i64,
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("cache.json")
}

fn read_meta(dir: &Path) -> Result<Option<CacheMeta>, TeacherError> {
    let p = meta_path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| TeacherError::io(&p, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TeacherError::format(&p, e.to_string()))
}

fn row_checksum(bytes: &[u8]) -> i64 {
    let h = Sha256::digest(bytes);
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

fn polars_err(path: &Path) -> impl Fn(PolarsError) -> TeacherError + '_ {
    move |e| TeacherError::format(path, e.to_string())
}

fn write_index(path: &Path, rows: &[IndexRow]) -> Result<(), TeacherError> {
    let col = |f: fn(&IndexRow) -> f32| rows.iter().map(f).collect::<Vec<f32>>();
    let mut df = df!(
        "image_id" => rows.iter().map(|r| r.image_id).collect::<Vec<i64>>(),
        "x1" => col(|r| r.bbox[0]),
        "y1" => col(|r| r.bbox[1]),
        "x2" => col(|r| r.bbox[2]),
        "y2" => col(|r| r.bbox[3]),
        "shard" => rows.iter().map(|r| r.shard.clone()).collect::<Vec<String>>(),
        "offset" => rows.iter().map(|r| r.offset).collect::<Vec<i64>>(),
        "checksum" => rows.iter().map(|r| r.checksum).collect::<Vec<i64>>(),
    )
    .map_err(polars_err(path))?;
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf)
        .finish(&mut df)
        .map_err(polars_err(path))?;
    write_atomic(path, &buf)
}

fn read_index(path: &Path) -> Result<Vec<IndexRow>, TeacherError> {
    let f = File::open(path).map_err(|e| TeacherError::io(path, e))?;
    let df = ParquetReader::new(f).finish().map_err(polars_err(path))?;
    let e = polars_err(path);
    let ids = df
        .column("image_id")
        .map_err(&e)?
        .i64()
        .map_err(&e)?
        .clone();
    let f32col = |n: &str| -> Result<Float32Chunked, TeacherError> {
        Ok(df.column(n).map_err(&e)?.f32().map_err(&e)?.clone())
    };
    let (x1, y1, x2, y2) = (f32col("x1")?, f32col("y1")?, f32col("x2")?, f32col("y2")?);
    let shard = df.column("shard").map_err(&e)?.str().map_err(&e)?.clone();
    let offset = df.column("offset").map_err(&e)?.i64().map_err(&e)?.clone();
    let checksum = df
        .column("checksum")
        .map_err(&e)?
        .i64()
        .map_err(&e)?
        .clone();
    let null = |field: &str, i: usize| {
        TeacherError::format(path, format!("row {i}: field `{field}` is null"))
    };
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        out.push(IndexRow {
            image_id: ids.get(i).ok_or_else(|| null("image_id", i))?,
            bbox: [
                x1.get(i).ok_or_else(|| null("x1", i))?,
                y1.get(i).ok_or_else(|| null("y1", i))?,
                x2.get(i).ok_or_else(|| null("x2", i))?,
                y2.get(i).ok_or_else(|| null("y2", i))?,
            ],
            shard: shard.get(i).ok_or_else(|| null("shard", i))?.to_string(),
            offset: offset.get(i).ok_or_else(|| null("offset", i))?,
            checksum: checksum.get(i).ok_or_else(|| null("checksum", i))?,
        });
    }
    Ok(out)
}

fn list_parts(dir: &Path) -> Result<Vec<PathBuf>, TeacherError> {
    let mut parts = Vec::new();
    if !dir.exists() {
        return Ok(parts);
    }
    for e in std::fs::read_dir(dir).map_err(|e| TeacherError::io(dir, e))? {
        let p = e.map_err(|e| TeacherError::io(dir, e))?.path();
        if p.extension().is_some_and(|x| x == "parquet") {
            parts.push(p);
        }
    }
    parts.sort();
    Ok(parts)
}

/// Appends regions of one shard; resumable.
pub struct CacheWriter {
    dir: PathBuf,
    dim: usize,
    shard_name: String,
    data_path: PathBuf,
    parts_dir: PathBuf,
    data: File,
    rows_written: i64,
    next_part: usize,
    done: HashSet<i64>,
    pending: Vec<(i64, Vec<[f32; 4]>, Vec<u8>)>,
}

impl CacheWriter {
    /// Opens (or creates) shard `shard` of the cache in `dir`, for D = `dim` vectors made by
    /// the checkpoint `checkpoint_hash` computing in `precision`. Reopening a cache made by
    /// another checkpoint, size or precision is an error. Cuts any unindexed tail off the shard
    /// file.
    pub fn open(
        dir: &Path,
        dim: usize,
        checkpoint_hash: &str,
        precision: Precision,
        shard: ShardSpec,
    ) -> Result<Self, TeacherError> {
        std::fs::create_dir_all(dir).map_err(|e| TeacherError::io(dir, e))?;
        let meta = CacheMeta {
            dim,
            dtype: "f16".into(),
            checkpoint_hash: checkpoint_hash.into(),
            precision,
            format: 1,
        };
        match read_meta(dir)? {
            Some(m) if m != meta => {
                return Err(TeacherError::format(
                    &meta_path(dir),
                    format!(
                        "the cache holds dim {} from checkpoint {} in {}, not dim {dim} from \
                         {checkpoint_hash} in {precision}",
                        m.dim, m.checkpoint_hash, m.precision
                    ),
                ));
            }
            Some(_) => {}
            None => write_atomic(
                &meta_path(dir),
                serde_json::to_string_pretty(&meta)
                    .expect("json")
                    .as_bytes(),
            )?,
        }
        let shard_name = format!("shard-{}.f16", shard.name());
        let data_path = dir.join(&shard_name);
        let parts_dir = dir.join(format!("index-{}", shard.name()));
        std::fs::create_dir_all(&parts_dir).map_err(|e| TeacherError::io(&parts_dir, e))?;
        let parts = list_parts(&parts_dir)?;
        let mut done = HashSet::new();
        let mut rows_written = 0i64;
        for p in &parts {
            for r in read_index(p)? {
                done.insert(r.image_id);
                rows_written = rows_written.max(r.offset + 1);
            }
        }
        let mut data = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(|e| TeacherError::io(&data_path, e))?;
        let valid = rows_written as u64 * (dim * BYTES_PER_VALUE) as u64;
        let len = data
            .metadata()
            .map_err(|e| TeacherError::io(&data_path, e))?
            .len();
        if len < valid {
            return Err(TeacherError::format(
                &data_path,
                format!("shard holds {len} bytes but its index points at {valid}"),
            ));
        }
        if len > valid {
            data.set_len(valid)
                .map_err(|e| TeacherError::io(&data_path, e))?;
        }
        data.seek(SeekFrom::Start(valid))
            .map_err(|e| TeacherError::io(&data_path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            dim,
            shard_name,
            data_path,
            parts_dir,
            data,
            rows_written,
            next_part: parts.len(),
            done,
            pending: Vec::new(),
        })
    }

    /// Whether an image's regions are already stored (in a flushed part).
    pub fn is_done(&self, image_id: i64) -> bool {
        self.done.contains(&image_id)
    }

    /// Images stored so far.
    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Regions stored so far in this shard.
    pub fn rows(&self) -> i64 {
        self.rows_written
    }

    /// Queues one image's regions: `embeds` is [N, D] (f32, converted to f16 here).
    pub fn add(
        &mut self,
        image_id: i64,
        boxes: &[[f32; 4]],
        embeds: &[f32],
    ) -> Result<(), TeacherError> {
        if embeds.len() != boxes.len() * self.dim {
            return Err(TeacherError::InvalidRequest(format!(
                "image {image_id}: {} boxes but {} values (D = {})",
                boxes.len(),
                embeds.len(),
                self.dim
            )));
        }
        let mut bytes = Vec::with_capacity(embeds.len() * BYTES_PER_VALUE);
        for v in embeds {
            bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
        }
        self.pending.push((image_id, boxes.to_vec(), bytes));
        Ok(())
    }

    /// Writes the queued images: vectors appended and synced first, then one index part.
    pub fn flush(&mut self) -> Result<(), TeacherError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let row_bytes = self.dim * BYTES_PER_VALUE;
        let mut rows = Vec::new();
        let mut buf = Vec::new();
        let mut next = self.rows_written;
        for (id, boxes, bytes) in &self.pending {
            for (k, b) in boxes.iter().enumerate() {
                let r = &bytes[k * row_bytes..(k + 1) * row_bytes];
                rows.push(IndexRow {
                    image_id: *id,
                    bbox: *b,
                    shard: self.shard_name.clone(),
                    offset: next,
                    checksum: row_checksum(r),
                });
                next += 1;
            }
            buf.extend_from_slice(bytes);
        }
        self.data
            .write_all(&buf)
            .map_err(|e| TeacherError::io(&self.data_path, e))?;
        self.data
            .sync_data()
            .map_err(|e| TeacherError::io(&self.data_path, e))?;
        let part = self
            .parts_dir
            .join(format!("part-{:06}.parquet", self.next_part));
        if !rows.is_empty() {
            write_index(&part, &rows)?;
            self.next_part += 1;
        }
        self.rows_written = next;
        for (id, _, _) in self.pending.drain(..) {
            // Images without regions leave no row; they cost nothing to redo.
            if rows.iter().any(|r| r.image_id == id) {
                self.done.insert(id);
            }
        }
        let _ = &self.dir;
        Ok(())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// What [`merge`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeReport {
    /// Images in the merged index.
    pub images: usize,
    /// Regions.
    pub regions: usize,
    /// Shard files.
    pub shards: usize,
    /// Bytes of vectors.
    pub vector_bytes: u64,
    /// Bytes of the merged index.
    pub index_bytes: u64,
    /// (vector + index bytes) / regions.
    pub bytes_per_region: f64,
}

/// Joins every shard's index parts into `DIR/index.parquet` (sorted by image id), after
/// checking that each row's vector is in its shard file and matches its checksum, and that
/// no image is stored twice.
pub fn merge(dir: &Path) -> Result<MergeReport, TeacherError> {
    let meta = read_meta(dir)?
        .ok_or_else(|| TeacherError::format(&meta_path(dir), "missing: not a cache"))?;
    let row_bytes = meta.dim * BYTES_PER_VALUE;
    let mut rows = Vec::new();
    let mut shards = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TeacherError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("index-"))
        })
        .collect();
    entries.sort();
    for parts_dir in entries {
        shards += 1;
        for p in list_parts(&parts_dir)? {
            rows.extend(read_index(&p)?);
        }
    }
    let mut files: HashMap<String, File> = HashMap::new();
    let mut vector_bytes = 0u64;
    let mut owner: HashMap<i64, String> = HashMap::new();
    let mut buf = vec![0u8; row_bytes];
    for (i, r) in rows.iter().enumerate() {
        if let Some(prev) = owner.insert(r.image_id, r.shard.clone())
            && prev != r.shard
        {
            return Err(TeacherError::format(
                dir,
                format!(
                    "image {} is stored in both {prev} and {}",
                    r.image_id, r.shard
                ),
            ));
        }
        let path = dir.join(&r.shard);
        if !files.contains_key(&r.shard) {
            let f = File::open(&path).map_err(|e| TeacherError::io(&path, e))?;
            vector_bytes += f.metadata().map_err(|e| TeacherError::io(&path, e))?.len();
            files.insert(r.shard.clone(), f);
        }
        let f = &files[&r.shard];
        f.read_exact_at(&mut buf, r.offset as u64 * row_bytes as u64)
            .map_err(|e| {
                TeacherError::format(&path, format!("index row {i} (image {}): {e}", r.image_id))
            })?;
        if row_checksum(&buf) != r.checksum {
            return Err(TeacherError::format(
                &path,
                format!(
                    "index row {i} (image {}, offset {}): checksum mismatch",
                    r.image_id, r.offset
                ),
            ));
        }
    }
    rows.sort_by(|a, b| (a.image_id, &a.shard, a.offset).cmp(&(b.image_id, &b.shard, b.offset)));
    let out = dir.join("index.parquet");
    write_index(&out, &rows)?;
    let index_bytes = std::fs::metadata(&out)
        .map_err(|e| TeacherError::io(&out, e))?
        .len();
    let regions = rows.len();
    Ok(MergeReport {
        images: owner.len(),
        regions,
        shards,
        vector_bytes,
        index_bytes,
        bytes_per_region: if regions > 0 {
            (vector_bytes + index_bytes) as f64 / regions as f64
        } else {
            0.0
        },
    })
}

/// Where one image's regions are.
#[derive(Debug, Clone)]
struct Span {
    file: usize,
    start: u64,
    count: usize,
    boxes: Vec<[f32; 4]>,
}

/// Reads regions back for a training loop: one positioned read per image.
pub struct CacheReader {
    dim: usize,
    files: Vec<File>,
    spans: HashMap<i64, Span>,
}

/// The regions of a batch of images.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionBatch {
    /// D.
    pub dim: usize,
    /// For each requested image, its boxes ([x1, y1, x2, y2]).
    pub boxes: Vec<Vec<[f32; 4]>>,
    /// All vectors, images in request order: [sum N, D] f32.
    pub embeds: Vec<f32>,
}

impl CacheReader {
    /// Opens a merged cache (`index.parquet`) or, if not merged yet, all index parts.
    pub fn open(dir: &Path) -> Result<Self, TeacherError> {
        let meta = read_meta(dir)?
            .ok_or_else(|| TeacherError::format(&meta_path(dir), "missing: not a cache"))?;
        let merged = dir.join("index.parquet");
        let rows = if merged.exists() {
            read_index(&merged)?
        } else {
            let mut rows = Vec::new();
            for e in std::fs::read_dir(dir).map_err(|e| TeacherError::io(dir, e))? {
                let p = e.map_err(|e| TeacherError::io(dir, e))?.path();
                if p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("index-"))
                {
                    for part in list_parts(&p)? {
                        rows.extend(read_index(&part)?);
                    }
                }
            }
            rows
        };
        let mut file_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut spans: HashMap<i64, Span> = HashMap::new();
        let mut sorted = rows;
        sorted.sort_by(|a, b| (a.image_id, a.offset).cmp(&(b.image_id, b.offset)));
        for r in sorted {
            let fid = match file_ids.get(&r.shard) {
                Some(&i) => i,
                None => {
                    let path = dir.join(&r.shard);
                    files.push(File::open(&path).map_err(|e| TeacherError::io(&path, e))?);
                    file_ids.insert(r.shard.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            let s = spans.entry(r.image_id).or_insert(Span {
                file: fid,
                start: r.offset as u64,
                count: 0,
                boxes: Vec::new(),
            });
            if s.file != fid || s.start + s.count as u64 != r.offset as u64 {
                return Err(TeacherError::format(
                    dir,
                    format!(
                        "image {}: its regions are not contiguous in one shard",
                        r.image_id
                    ),
                ));
            }
            s.count += 1;
            s.boxes.push(r.bbox);
        }
        Ok(Self {
            dim: meta.dim,
            files,
            spans,
        })
    }

    /// D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Image ids, sorted.
    pub fn image_ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.spans.keys().copied().collect();
        v.sort();
        v
    }

    /// The regions of `image_ids` (an id not in the cache gives no regions).
    pub fn read(&self, image_ids: &[i64]) -> Result<RegionBatch, TeacherError> {
        let row_bytes = self.dim * BYTES_PER_VALUE;
        let mut boxes = Vec::with_capacity(image_ids.len());
        let total: usize = image_ids
            .iter()
            .filter_map(|i| self.spans.get(i))
            .map(|s| s.count)
            .sum();
        let mut embeds = Vec::with_capacity(total * self.dim);
        let mut buf = Vec::new();
        for id in image_ids {
            match self.spans.get(id) {
                Some(s) => {
                    buf.resize(s.count * row_bytes, 0);
                    self.files[s.file]
                        .read_exact_at(&mut buf, s.start * row_bytes as u64)
                        .map_err(|e| TeacherError::InvalidRequest(format!("image {id}: {e}")))?;
                    embeds.extend(
                        buf.chunks_exact(2)
                            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                    );
                    boxes.push(s.boxes.clone());
                }
                None => boxes.push(Vec::new()),
            }
        }
        Ok(RegionBatch {
            dim: self.dim,
            boxes,
            embeds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vecs(id: i64, n: usize, d: usize) -> Vec<f32> {
        (0..n * d)
            .map(|k| ((id * 31 + k as i64) % 97) as f32 / 97.0 - 0.5)
            .collect()
    }

    fn boxes(id: i64, n: usize) -> Vec<[f32; 4]> {
        (0..n)
            .map(|k| [id as f32, k as f32, id as f32 + 10.0, k as f32 + 5.0])
            .collect()
    }

    #[test]
    fn shard_spec_parses() {
        assert_eq!(
            ShardSpec::parse("1/3").unwrap(),
            ShardSpec { index: 1, count: 3 }
        );
        assert!(ShardSpec::parse("3/3").is_err());
        assert!(ShardSpec::parse("x").is_err());
        assert!(ShardSpec::parse("0/0").is_err());
    }

    #[test]
    fn resume_after_a_torn_flush_and_merge_two_shards() {
        let dir = tempfile::tempdir().unwrap();
        let d = 8;
        let open = |index| {
            CacheWriter::open(
                dir.path(),
                d,
                "abc",
                Precision::F32,
                ShardSpec { index, count: 2 },
            )
            .unwrap()
        };
        let ids: Vec<i64> = (10..20).collect();
        let n_of = |id: i64| (id % 3 + 1) as usize;
        // Shard 0/2, first process: images at even positions, killed after 2 flushed images
        // with a half-written flush (bytes in the shard file, no index part).
        {
            let mut w = open(0);
            for (pos, &id) in ids.iter().enumerate().filter(|(p, _)| p % 2 == 0).take(2) {
                let _ = pos;
                w.add(id, &boxes(id, n_of(id)), &vecs(id, n_of(id), d))
                    .unwrap();
            }
            w.flush().unwrap();
            std::mem::forget(w); // a kill: no drop-time flush
            let shard = dir.path().join("shard-0-of-2.f16");
            let mut f = OpenOptions::new().append(true).open(&shard).unwrap();
            f.write_all(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
        }
        // Resume: the finished images are skipped, the torn tail is cut.
        {
            let mut w = open(0);
            assert_eq!(w.done_count(), 2);
            let mut redone = 0;
            for (pos, &id) in ids.iter().enumerate() {
                if !(ShardSpec { index: 0, count: 2 }).owns(pos) || w.is_done(id) {
                    continue;
                }
                redone += 1;
                w.add(id, &boxes(id, n_of(id)), &vecs(id, n_of(id), d))
                    .unwrap();
                w.flush().unwrap();
            }
            assert_eq!(redone, 3);
        }
        // Another process, shard 1/2.
        {
            let mut w = open(1);
            for (pos, &id) in ids.iter().enumerate() {
                if (ShardSpec { index: 1, count: 2 }).owns(pos) {
                    w.add(id, &boxes(id, n_of(id)), &vecs(id, n_of(id), d))
                        .unwrap();
                }
            }
        }
        // A different checkpoint, or the same in another precision, may not write into it.
        assert!(CacheWriter::open(dir.path(), d, "other", Precision::F32, ShardSpec::ALL).is_err());
        let err = CacheWriter::open(dir.path(), d, "abc", Precision::Bf16, ShardSpec::ALL)
            .err()
            .expect("bf16 into a float32 cache")
            .to_string();
        assert!(err.contains("in f32") && err.contains("in bf16"), "{err}");
        let report = merge(dir.path()).unwrap();
        let total: usize = ids.iter().map(|&i| n_of(i)).sum();
        assert_eq!(report.images, 10);
        assert_eq!(report.regions, total);
        assert_eq!(report.shards, 2);
        assert_eq!(report.vector_bytes, (total * d * 2) as u64);
        let r = CacheReader::open(dir.path()).unwrap();
        assert_eq!(r.image_ids(), ids);
        let batch = r.read(&[17, 12, 999]).unwrap();
        assert_eq!(batch.boxes[0], boxes(17, n_of(17)));
        assert_eq!(batch.boxes[1], boxes(12, n_of(12)));
        assert!(batch.boxes[2].is_empty());
        let want: Vec<f32> = [vecs(17, n_of(17), d), vecs(12, n_of(12), d)].concat();
        assert_eq!(batch.embeds.len(), want.len());
        for (a, b) in batch.embeds.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn merge_detects_a_corrupt_vector() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w =
                CacheWriter::open(dir.path(), 4, "abc", Precision::F32, ShardSpec::ALL).unwrap();
            w.add(1, &boxes(1, 2), &vecs(1, 2, 4)).unwrap();
        }
        let shard = dir.path().join("shard-0-of-1.f16");
        let f = OpenOptions::new().write(true).open(&shard).unwrap();
        f.write_all_at(&[0xff, 0x7f], 2).unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
