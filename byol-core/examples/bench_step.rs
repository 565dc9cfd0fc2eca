//! Times full BYOL training steps (both views through online and target, symmetric loss,
//! backward, LARS, EMA) and prints images per second.
//!
//! `bench_step --model r18-small|r50-imagenet|fmnist --size PX --batch N --steps K --warmup W
//!  --backend default|onednn|onednn-direct|fast|stock --device cpu|cuda[:N]`
//! Output: one line `img/s <value>` (plus per-step times on stderr). The backend chooses the CPU
//! kernels; on a GPU the ops are candle's (cuDNN convolutions in a `cudnn` build) but for the
//! convolution's backward, ours (`byol_kernels::device_conv2d`; `--backend stock`: candle's own),
//! and each timed step ends with a device synchronisation, so it counts all the step's GPU work.

use std::time::Instant;

use byol_core::byol::{Byol, ByolConfig};
use byol_core::config::TrainConfig;
use byol_core::nn::ResNetConfig;
use byol_core::optim::{Lars, LarsConfig};
use byol_kernels::{default_backend, set_backend, Backend};
use candle_core::{Device, Tensor};

/// Reuses freed activation/gradient buffers instead of page-faulting fresh ones every step
/// (byol-core/src/allocator.rs); `main` switches off its purging first.
#[global_allocator]
static GLOBAL: byol_core::allocator::Allocator = byol_core::allocator::Allocator;

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
    let steps: usize = arg(&args, "--steps", 3);
    let warmup: usize = arg(&args, "--warmup", 1);
    let backend: String = arg(&args, "--backend", "default".to_string());
    let device: String = arg(&args, "--device", "cpu".to_string());
    let backend = match backend.as_str() {
        "default" => default_backend(),
        other => other
            .parse::<Backend>()
            .map_err(|e| byol_core::Error::config("backend", e.to_string()))?,
    };
    set_backend(backend);
    eprintln!("backend {backend:?}");
    // `fmnist`: the quick start's network and heads (`--preset fashion-mnist`, 1 channel).
    let config = match model.as_str() {
        "fmnist" => {
            let mut m = TrainConfig::fashion_mnist().model;
            m.encoder.depth = arg(&args, "--depth", m.encoder.depth);
            m.encoder.base_channels = arg(&args, "--base-channels", m.encoder.base_channels);
            m
        }
        other => ByolConfig::new(ResNetConfig::benchmark(other)?),
    };
    let channels = config.encoder.in_channels;
    let dev = byol_core::device::parse_device(&device)?;
    eprintln!("device {dev:?}");
    let mut byol = Byol::new(&config, &dev, 0)?;
    let mut opt = Lars::new(LarsConfig::default());
    // Drawn on the host and copied once, as the pretraining loop copies its batches.
    let v1 =
        Tensor::randn(0f32, 1.0, (batch, channels, size, size), &Device::Cpu)?.to_device(&dev)?;
    let v2 =
        Tensor::randn(0f32, 1.0, (batch, channels, size, size), &Device::Cpu)?.to_device(&dev)?;
    dev.synchronize()?;
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let out = byol.train_step(&v1, &v2, &mut opt, 0.1, 0.99, &|_| 1.0)?;
        dev.synchronize()?;
        let dt = t.elapsed().as_secs_f64();
        eprintln!("step {i}: {dt:.3} s, loss {:.4}", out.loss);
        if i >= warmup {
            times.push(dt);
        }
    }
    let total: f64 = times.iter().sum();
    println!("img/s {:.3}", (batch * times.len()) as f64 / total);
    Ok(())
}
