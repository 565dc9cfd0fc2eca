//! Parallel batch loader: worker threads decode and transform samples into reusable NCHW
//! buffers, behind a bounded prefetch queue.
//!
//! Each batch is built whole by one worker (batch `b` by worker `b % workers`, and handed out
//! in order) from the indices the (seed, epoch) shuffle puts there, and the transform gets its
//! randomness from (seed, epoch, sample index), so a batch's content depends neither on the
//! number of workers nor on timing.
//!
//! ```ignore
//! let loader = Loader::new(Arc::new(dataset), Arc::new(two_view_transform), config)?;
//! for batch in loader.epoch(epoch)? {
//!     let batch = batch?; // views `batch.view(0)`, `batch.view(1)`: len() x C x H x W floats
//! } // dropping a batch returns its buffers to the loader
//! ```

use crate::data::dataset::{CorruptLog, CorruptPolicy};
use crate::data::{Dataset, Sample};
use crate::distributed::shard::rank_range;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Where a sample sits, handed to the transform so its randomness can be reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleCtx {
    pub seed: u64,
    pub epoch: usize,
    /// Index of the sample in the dataset.
    pub index: usize,
}

impl SampleCtx {
    /// A 64-bit seed unique to (seed, epoch, index), to seed the transform's RNG.
    pub fn rng_seed(&self) -> u64 {
        mix(mix(self.seed, self.epoch as u64), self.index as u64)
    }
}

/// Turns a sample into `views.len()` float tensors (each `view_len` floats, CHW), writing
/// every float of every view.
pub trait Transform: Send + Sync {
    fn apply(&self, sample: &Sample, ctx: &SampleCtx, views: &mut [&mut [f32]]) -> Result<()>;
}

impl<F> Transform for F
where
    F: Fn(&Sample, &SampleCtx, &mut [&mut [f32]]) -> Result<()> + Send + Sync,
{
    fn apply(&self, sample: &Sample, ctx: &SampleCtx, views: &mut [&mut [f32]]) -> Result<()> {
        self(sample, ctx, views)
    }
}

/// Loader settings; [`LoaderConfig::new`] gives the usual defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Views per sample (2 for BYOL's two augmentations, 1 for evaluation).
    pub views: usize,
    /// Floats per sample per view (C * H * W).
    pub view_len: usize,
    pub workers: usize,
    /// Finished batches allowed to wait for the consumer (rounded up to one per worker).
    pub prefetch: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Leave out the last, partial batch.
    pub drop_last: bool,
    /// This process's rank (0..world_size) in a data-parallel job: `batch_size` is the global
    /// batch, of which each rank takes its contiguous slice
    /// ([`crate::distributed::shard::rank_range`]), so the ranks' batches together are the
    /// single-process batch, with the same images and augmentations.
    pub rank: usize,
    pub world_size: usize,
    pub on_corrupt: CorruptPolicy,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, views: usize, view_len: usize) -> Self {
        Self {
            batch_size,
            views,
            view_len,
            workers: 4,
            prefetch: 4,
            shuffle: true,
            seed: 0,
            drop_last: true,
            rank: 0,
            world_size: 1,
            on_corrupt: CorruptPolicy::Skip,
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("batch_size", self.batch_size),
            ("views", self.views),
            ("view_len", self.view_len),
            ("workers", self.workers),
            ("world_size", self.world_size),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.rank >= self.world_size {
            return Err(Error::config(
                "rank",
                format!("{} is not below world_size {}", self.rank, self.world_size),
            ));
        }
        Ok(())
    }
}

/// One batch: `len()` samples, each with `views` tensors of `view_len` floats. Dropping it
/// hands its buffers back to the loader for reuse.
#[derive(Debug)]
pub struct Batch {
    epoch: usize,
    index: usize,
    view_len: usize,
    buffers: Buffers,
    pool: Arc<Pool>,
}

#[derive(Debug, Default)]
struct Buffers {
    views: Vec<Vec<f32>>,
    labels: Vec<usize>,
    indices: Vec<usize>,
}

impl Batch {
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Position of this batch in its epoch.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Samples in the batch (less than `batch_size` for a last batch or after skipped files).
    pub fn len(&self) -> usize {
        self.buffers.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_views(&self) -> usize {
        self.buffers.views.len()
    }

    /// View `k` of every sample, `len() * view_len` floats (NCHW).
    pub fn view(&self, k: usize) -> &[f32] {
        &self.buffers.views[k][..self.len() * self.view_len]
    }

    pub fn labels(&self) -> &[usize] {
        &self.buffers.labels
    }

    /// Dataset index of each sample.
    pub fn indices(&self) -> &[usize] {
        &self.buffers.indices
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buffers));
    }
}

/// Spare buffers; bounded so a consumer that keeps batches does not make it hoard memory.
#[derive(Debug)]
struct Pool {
    spare: Mutex<Vec<Buffers>>,
    max: usize,
}

impl Pool {
    fn take(&self) -> Buffers {
        let spare = self.spare.lock().ok().and_then(|mut s| s.pop());
        spare.unwrap_or_default()
    }

    fn put(&self, buffers: Buffers) {
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < self.max {
                spare.push(buffers);
            }
        }
    }

    fn len(&self) -> usize {
        self.spare.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Loads a dataset as batches, one epoch at a time.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    config: LoaderConfig,
    pool: Arc<Pool>,
    corrupt: Arc<CorruptLog>,
}

impl Loader {
    pub fn new(
        dataset: Arc<dyn Dataset>,
        transform: Arc<dyn Transform>,
        config: LoaderConfig,
    ) -> Result<Self> {
        config.validate()?;
        let pool = Arc::new(Pool {
            spare: Mutex::new(Vec::new()),
            max: config.workers + config.prefetch + 2,
        });
        Ok(Self {
            dataset,
            transform,
            config,
            pool,
            corrupt: Arc::new(CorruptLog::default()),
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The dataset indices of `epoch`, in order: the (seed, epoch) permutation (the same on
    /// every rank; each takes its slice of every batch).
    pub fn epoch_indices(&self, epoch: usize) -> Vec<usize> {
        let c = &self.config;
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if c.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(c.seed, epoch as u64)));
        }
        order
    }

    /// Batches per epoch (global batches: every rank sees as many).
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// Corrupt files skipped so far.
    pub fn skipped(&self) -> usize {
        self.corrupt.skipped()
    }

    /// Buffers waiting for reuse (to check that batches come back).
    pub fn spare_buffers(&self) -> usize {
        self.pool.len()
    }

    /// Starts the workers for `epoch`; the iterator yields its batches in order, or the first
    /// error, after which it ends.
    pub fn epoch(&self, epoch: usize) -> Result<EpochIter> {
        self.epoch_from(epoch, 0)
    }

    /// Like [`Loader::epoch`] but starting at batch `first_batch`: the batches are the same as
    /// those of the whole epoch from there on (training resumes mid-epoch with this).
    pub fn epoch_from(&self, epoch: usize, first_batch: usize) -> Result<EpochIter> {
        let c = &self.config;
        let order = Arc::new(self.epoch_indices(epoch));
        let batches = self.num_batches();
        let cancel = Arc::new(AtomicBool::new(false));
        let capacity = c.prefetch.div_ceil(c.workers).max(1);
        let mut receivers = Vec::with_capacity(c.workers);
        let mut handles = Vec::with_capacity(c.workers);
        // Never more workers than batches; at least one so an empty epoch still ends cleanly.
        let first_batch = first_batch.min(batches);
        let stride = c.workers.min(batches - first_batch).max(1);
        for w in 0..stride {
            let (tx, rx) = sync_channel(capacity);
            let job = Job {
                dataset: Arc::clone(&self.dataset),
                transform: Arc::clone(&self.transform),
                config: c.clone(),
                pool: Arc::clone(&self.pool),
                corrupt: Arc::clone(&self.corrupt),
                cancel: Arc::clone(&cancel),
                order: Arc::clone(&order),
                epoch,
            };
            receivers.push(rx);
            let spawned = std::thread::Builder::new()
                .name(format!("byol-loader-{w}"))
                .spawn(move || job.run(first_batch + w, stride, batches, tx));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Dropping the partial iterator stops the workers already started.
                    drop(EpochIter::new(
                        receivers,
                        handles,
                        cancel,
                        first_batch,
                        batches,
                        Arc::clone(&self.corrupt),
                    ));
                    return Err(Error::Input(format!("cannot start a loader thread: {e}")));
                }
            }
        }
        Ok(EpochIter::new(
            receivers,
            handles,
            cancel,
            first_batch,
            batches,
            Arc::clone(&self.corrupt),
        ))
    }
}

/// What one worker needs; it builds batches `first, first + stride, ...`.
struct Job {
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    config: LoaderConfig,
    pool: Arc<Pool>,
    corrupt: Arc<CorruptLog>,
    cancel: Arc<AtomicBool>,
    order: Arc<Vec<usize>>,
    epoch: usize,
}

impl Job {
    fn run(self, first: usize, stride: usize, batches: usize, tx: SyncSender<Result<Batch>>) {
        for b in (first..batches).step_by(stride) {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let result = self.build(b);
            let failed = result.is_err();
            // A send error means the consumer is gone: stop quietly.
            if tx.send(result).is_err() || failed {
                return;
            }
        }
    }

    fn build(&self, b: usize) -> Result<Batch> {
        let c = &self.config;
        let start = b * c.batch_size;
        let end = (start + c.batch_size).min(self.order.len());
        // This rank's slice of the global batch (all of it in a single process).
        let mine = rank_range(end - start, c.rank, c.world_size);
        let (start, end) = (start + mine.start, start + mine.end);
        let capacity = rank_range(c.batch_size, 0, c.world_size).len();
        let mut buffers = self.pool.take();
        buffers.views.resize_with(c.views, Vec::new);
        for v in &mut buffers.views {
            v.resize(capacity * c.view_len, 0.0);
        }
        buffers.labels.clear();
        buffers.indices.clear();
        let mut batch = Batch {
            epoch: self.epoch,
            index: b,
            view_len: c.view_len,
            buffers,
            pool: Arc::clone(&self.pool),
        };
        for &index in &self.order[start..end] {
            let policy = c.on_corrupt;
            let Some(sample) = self.corrupt.get(&*self.dataset, index, policy)? else {
                continue;
            };
            // Skipped samples leave no gap: the slot is the count written so far.
            let slot = batch.len();
            let range = slot * c.view_len..(slot + 1) * c.view_len;
            let mut views: Vec<&mut [f32]> = batch
                .buffers
                .views
                .iter_mut()
                .map(|v| &mut v[range.clone()])
                .collect();
            let ctx = SampleCtx {
                seed: c.seed,
                epoch: self.epoch,
                index,
            };
            self.transform.apply(&sample, &ctx, &mut views)?;
            batch.buffers.labels.push(sample.label);
            batch.buffers.indices.push(index);
        }
        Ok(batch)
    }
}

/// The batches of one epoch, in order. Dropping it stops and joins the workers.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    first: usize,
    next: usize,
    batches: usize,
    done: bool,
    /// Batches returned (an epoch of only empty batches is an error).
    yielded: usize,
    corrupt: Arc<CorruptLog>,
    skipped_before: usize,
}

impl EpochIter {
    fn new(
        receivers: Vec<Receiver<Result<Batch>>>,
        handles: Vec<JoinHandle<()>>,
        cancel: Arc<AtomicBool>,
        first: usize,
        batches: usize,
        corrupt: Arc<CorruptLog>,
    ) -> Self {
        let skipped_before = corrupt.skipped();
        Self {
            receivers,
            handles,
            cancel,
            first,
            next: first,
            batches,
            done: false,
            yielded: 0,
            corrupt,
            skipped_before,
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        while !self.done && self.next < self.batches {
            let b = self.next;
            self.next += 1;
            let worker = (b - self.first) % self.receivers.len();
            let item = self.receivers[worker].recv().unwrap_or_else(|_| {
                // The sender went away without a result: the worker panicked.
                Err(Error::Input(format!(
                    "loader worker {worker} stopped (panicked) before batch {b}"
                )))
            });
            match item {
                // All samples of this batch were corrupt and skipped.
                Ok(batch) if batch.is_empty() => continue,
                Ok(batch) => {
                    self.yielded += 1;
                    return Some(Ok(batch));
                }
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
            }
        }
        if !self.done {
            self.done = true;
            let skipped = self.corrupt.skipped() - self.skipped_before;
            if skipped > 0 {
                tracing::warn!(
                    "{skipped} corrupt samples skipped in this epoch ({} distinct files so far, \
                     each named once above)",
                    self.corrupt.distinct()
                );
            }
            if self.yielded == 0 && self.batches > self.first && skipped > 0 {
                return Some(Err(Error::Dataset(format!(
                    "no batch could be filled: all {skipped} samples of the epoch were corrupt"
                ))));
            }
        }
        None
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting to send.
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            // A panicked worker was already reported as an error by `next`.
            let _ = handle.join();
        }
    }
}

/// SplitMix64 finaliser of `a` combined with `b`: decorrelates nearby (seed, epoch) pairs.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
