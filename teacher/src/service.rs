//! `TeacherService`: the teacher on a worker thread, serving region and dense embeddings to any
//! number of callers. Callers validate and crop their own requests (so a bad request fails in
//! its caller, and the CPU work of cropping runs in parallel); the worker gathers crops from
//! many requests into batches up to a maximum size or wait time and runs the model.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::embed::Teacher;
use crate::error::{TeacherError, to_vec};

/// Batching settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// Most crops per forward pass.
    pub max_batch: usize,
    /// Longest a crop waits for others to fill its batch.
    pub max_wait_ms: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_wait_ms: 5,
        }
    }
}

/// Region embeddings of one request: [N, D] row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionEmbeds {
    /// D.
    pub dim: usize,
    /// N * D values, one L2-normalised row per box.
    pub data: Vec<f32>,
}

impl RegionEmbeds {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// N.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Dense embeddings of one image: [D, h, w].
#[derive(Debug, Clone, PartialEq)]
pub struct DenseEmbeds {
    /// [D, h, w].
    pub shape: [usize; 3],
    /// Values, channel-major.
    pub data: Vec<f32>,
}

/// Throughput so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceStats {
    /// Requests answered (successfully or not).
    pub requests: u64,
    /// Crops embedded.
    pub crops: u64,
    /// Forward passes run.
    pub batches: u64,
    /// Seconds the worker spent in forward passes.
    pub busy_secs: f64,
    /// Requests that failed inside the worker.
    pub failed: u64,
}

impl ServiceStats {
    /// Crops per second of model time.
    pub fn crops_per_sec(&self) -> f64 {
        if self.busy_secs > 0.0 {
            self.crops as f64 / self.busy_secs
        } else {
            0.0
        }
    }

    /// Mean crops per forward pass.
    pub fn mean_batch(&self) -> f64 {
        if self.batches > 0 {
            self.crops as f64 / self.batches as f64
        } else {
            0.0
        }
    }
}

enum Job {
    Crops {
        crops: Vec<f32>,
        n: usize,
        reply: Sender<Result<RegionEmbeds, TeacherError>>,
    },
    Dense {
        image: Arc<RgbImage>,
        size: (u32, u32),
        reply: Sender<Result<DenseEmbeds, TeacherError>>,
    },
}

/// A pending answer.
pub struct Ticket<T> {
    rx: Receiver<Result<T, TeacherError>>,
}

impl<T> Ticket<T> {
    /// Waits for the answer.
    pub fn wait(self) -> Result<T, TeacherError> {
        self.rx.recv().unwrap_or(Err(TeacherError::ServiceStopped))
    }
}

/// The teacher on its own thread. Cloning the handle is cheap; the worker stops when the last
/// handle is dropped.
pub struct TeacherService {
    tx: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<Mutex<ServiceStats>>,
    preprocess: crate::preprocess::PreprocessConfig,
    size: usize,
    dim: usize,
}

impl TeacherService {
    /// Starts the worker, which owns `teacher` (and its device) from now on.
    pub fn start(teacher: Teacher, config: ServiceConfig) -> Self {
        let (tx, rx) = unbounded::<Job>();
        let stats = Arc::new(Mutex::new(ServiceStats::default()));
        let preprocess = teacher.preprocess.clone();
        let size = preprocess.size;
        let dim = teacher.dim();
        let st = stats.clone();
        let worker = std::thread::Builder::new()
            .name("ovkd-teacher".into())
            .spawn(move || worker_loop(teacher, config, rx, st))
            .expect("spawn teacher worker");
        Self {
            tx: Some(tx),
            worker: Some(worker),
            stats,
            preprocess,
            size,
            dim,
        }
    }

    /// Embedding size D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Submits the boxes of one image for ViLD region embeddings. A bad request (empty image,
    /// zero-area box, box outside the image) fails here, in the caller, with its own error.
    pub fn submit_regions(
        &self,
        image: &RgbImage,
        boxes: &[[f32; 4]],
    ) -> Result<Ticket<RegionEmbeds>, TeacherError> {
        let mut crops = Vec::with_capacity(boxes.len() * 2 * 3 * self.size * self.size);
        for (i, b) in boxes.iter().enumerate() {
            crate::preprocess::check_box(image, *b)
                .map_err(|e| TeacherError::InvalidRequest(format!("box {i}: {e}")))?;
            crops.extend(self.preprocess.crop(image, *b)?);
            let wide = crate::preprocess::scale_box(
                *b,
                crate::embed::VILD_CONTEXT,
                image.width(),
                image.height(),
            );
            crops.extend(self.preprocess.crop(image, wide)?);
        }
        let (reply, rx) = bounded(1);
        let job = Job::Crops {
            crops,
            n: 2 * boxes.len(),
            reply,
        };
        self.send(job)?;
        Ok(Ticket { rx })
    }

    /// Region embeddings of one image's boxes: [N, D]; blocks until answered.
    pub fn regions(
        &self,
        image: &RgbImage,
        boxes: &[[f32; 4]],
    ) -> Result<RegionEmbeds, TeacherError> {
        self.submit_regions(image, boxes)?.wait()
    }

    /// Dense MaskCLIP embeddings of a whole image resized to `size` (width, height).
    pub fn dense(
        &self,
        image: Arc<RgbImage>,
        size: (u32, u32),
    ) -> Result<DenseEmbeds, TeacherError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(TeacherError::InvalidRequest("empty image".into()));
        }
        let (reply, rx) = bounded(1);
        self.send(Job::Dense { image, size, reply })?;
        Ticket { rx }.wait()
    }

    fn send(&self, job: Job) -> Result<(), TeacherError> {
        self.tx
            .as_ref()
            .ok_or(TeacherError::ServiceStopped)?
            .send(job)
            .map_err(|_| TeacherError::ServiceStopped)
    }

    /// Throughput so far.
    pub fn stats(&self) -> ServiceStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for TeacherService {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker_loop(
    teacher: Teacher,
    config: ServiceConfig,
    rx: Receiver<Job>,
    stats: Arc<Mutex<ServiceStats>>,
) {
    let max_batch = config.max_batch.max(1);
    let wait = Duration::from_millis(config.max_wait_ms);
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match first {
            Job::Dense { image, size, reply } => {
                let t0 = Instant::now();
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    dense_job(&teacher, &image, size)
                }))
                .unwrap_or_else(|_| {
                    Err(TeacherError::InvalidRequest(
                        "the model failed on this image".into(),
                    ))
                });
                let mut s = stats.lock().expect("stats");
                s.requests += 1;
                s.batches += 1;
                s.busy_secs += t0.elapsed().as_secs_f64();
                s.failed += u64::from(r.is_err());
                drop(s);
                let _ = reply.send(r);
            }
            Job::Crops { crops, n, reply } => {
                let mut batch = vec![(crops, n, reply)];
                let mut total = n;
                let deadline = Instant::now() + wait;
                while total < max_batch {
                    match rx.recv_deadline(deadline) {
                        Ok(Job::Crops { crops, n, reply }) => {
                            total += n;
                            batch.push((crops, n, reply));
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                            break;
                        }
                    }
                }
                run_crop_batch(&teacher, batch, total, &stats);
            }
        }
    }
}

type CropReply = (Vec<f32>, usize, Sender<Result<RegionEmbeds, TeacherError>>);

fn run_crop_batch(
    teacher: &Teacher,
    batch: Vec<CropReply>,
    total: usize,
    stats: &Arc<Mutex<ServiceStats>>,
) {
    let t0 = Instant::now();
    let dim = teacher.dim();
    let mut all = Vec::with_capacity(batch.iter().map(|b| b.0.len()).sum());
    for (c, _, _) in &batch {
        all.extend_from_slice(c);
    }
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Vec<f32>, TeacherError> {
            if total == 0 {
                return Ok(Vec::new());
            }
            // `total` counts crops, two per box.
            let e = teacher.embed_region_crops(&all, total / 2);
            to_vec(e)
        }));
    let mut s = stats.lock().expect("stats");
    s.requests += batch.len() as u64;
    s.crops += total as u64;
    s.batches += 1;
    s.busy_secs += t0.elapsed().as_secs_f64();
    match result {
        Ok(Ok(v)) => {
            drop(s);
            let mut at = 0;
            for (_, n, reply) in batch {
                let rows = n / 2;
                let data = v[at * dim..(at + rows) * dim].to_vec();
                at += rows;
                let _ = reply.send(Ok(RegionEmbeds { dim, data }));
            }
        }
        Ok(Err(e)) => {
            s.failed += batch.len() as u64;
            drop(s);
            let msg = e.to_string();
            for (_, _, reply) in batch {
                let _ = reply.send(Err(TeacherError::InvalidRequest(msg.clone())));
            }
        }
        Err(_) => {
            s.failed += batch.len() as u64;
            drop(s);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(TeacherError::InvalidRequest(
                    "the model failed on this batch".into(),
                )));
            }
        }
    }
}

fn dense_job(
    teacher: &Teacher,
    image: &RgbImage,
    size: (u32, u32),
) -> Result<DenseEmbeds, TeacherError> {
    let f = teacher.dense(image, size)?;
    let dims = f.embeds.dims();
    let data = to_vec::<3>(f.embeds)?;
    Ok(DenseEmbeds { shape: dims, data })
}
