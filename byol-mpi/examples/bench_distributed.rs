//! Times data-parallel BYOL training steps under `mpirun -np N` (or alone): each rank takes its
//! slice of a fixed global batch; the collectives (gradient all-reduce, synchronised BatchNorm,
//! the loss) are timed apart. Rank 0 prints `step_s <median>` and `collective_share <fraction>`.
//!
//! `bench_distributed --model r18-small|r50-imagenet --size PX --batch GLOBAL --steps K
//!  --warmup W [--no-sync-bn]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use byol_core::byol::{Byol, ByolConfig};
use byol_core::distributed::shard::rank_range;
use byol_core::distributed::{Collective, DataParallel};
use byol_core::nn::ResNetConfig;
use byol_core::optim::{Lars, LarsConfig};
use byol_mpi::Group;
use candle_core::{Device, Tensor};

#[global_allocator]
static GLOBAL: byol_core::allocator::Allocator = byol_core::allocator::Allocator;

/// A collective that counts the nanoseconds spent inside it.
struct Timed {
    inner: Arc<dyn Collective>,
    nanos: AtomicU64,
}

impl Timed {
    fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

impl Collective for Timed {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> byol_core::Result<()> {
        self.time(|| self.inner.all_reduce_f64(values))
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> byol_core::Result<()> {
        self.time(|| self.inner.all_reduce_f32(values))
    }
    fn gather_f32(&self, values: &[f32]) -> byol_core::Result<Option<Vec<Vec<f32>>>> {
        self.time(|| self.inner.gather_f32(values))
    }
    fn engine(&self) -> &str {
        self.inner.engine()
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> byol_core::Result<()> {
    byol_core::allocator::keep_freed_memory();
    byol_core::threads::park_idle_threads();
    let args: Vec<String> = std::env::args().collect();
    let model: String = arg(&args, "--model", "r18-small".to_string());
    let size: usize = arg(&args, "--size", 32);
    let batch: usize = arg(&args, "--batch", 64);
    let steps: usize = arg(&args, "--steps", 5);
    let warmup: usize = arg(&args, "--warmup", 2);
    let sync = !args.iter().any(|a| a == "--no-sync-bn");
    let group = Group::join(sync)?;
    let timed = Arc::new(Timed {
        inner: Arc::clone(&group.parallel.collective),
        nanos: AtomicU64::new(0),
    });
    let parallel = DataParallel {
        collective: timed.clone(),
        sync_batch_norm: sync,
    };
    let encoder = ResNetConfig::benchmark(&model)?;
    let dev = Device::Cpu;
    let mut byol = Byol::new(&ByolConfig::new(encoder), &dev, 0)?;
    byol.set_data_parallel(parallel.clone());
    let mut opt = Lars::new(LarsConfig::default());
    // The same global batch on every rank (seeded on the host), each rank its slice.
    let global = |seed: u64| -> byol_core::Result<Tensor> {
        let n = batch * 3 * size * size;
        let mut state = seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Ok(Tensor::from_vec(values, (batch, 3, size, size), &dev)?)
    };
    let mine = rank_range(batch, parallel.rank(), parallel.world_size());
    let v1 = global(1)?.narrow(0, mine.start, mine.len())?;
    let v2 = global(2)?.narrow(0, mine.start, mine.len())?;
    let (mut times, mut shares) = (Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        timed.nanos.store(0, Ordering::Relaxed);
        let t = Instant::now();
        byol.train_step(&v1, &v2, &mut opt, 0.1, 0.99, &|_| 1.0)?;
        let dt = t.elapsed().as_secs_f64();
        let inside = timed.nanos.load(Ordering::Relaxed) as f64 * 1e-9;
        if i >= warmup {
            times.push(dt);
            shares.push(inside / dt);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if parallel.is_writer() {
        println!("ranks {}", parallel.world_size());
        println!("step_s {:.4}", median(&mut times));
        println!("img_per_s {:.2}", batch as f64 / median(&mut times));
        println!("collective_share {:.4}", median(&mut shares));
    }
    Ok(())
}
