//! Writes the inputs of `scripts/torchvision_interop.py`: a ResNet at random init (BatchNorm
//! parameters and statistics perturbed so they matter) saved with `weights::save_encoder_from_store`,
//! and a second file with a fixed input batch and our eval-mode pooled features for it.
//!
//! ```text
//! cargo run -p byol-core --example interop_fixture -- <out-dir> [depth] [image-size]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use byol_core::io::write_safetensors;
use byol_core::nn::{ResNet, ResNetConfig, VarStore};
use byol_core::weights::save_encoder_from_store;
use candle_core::{Device, ModuleT, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .context("usage: interop_fixture <out-dir> [depth] [size]")?,
    );
    let depth: usize = args.get(1).map_or(Ok(50), |s| s.parse()).context("depth")?;
    let size: usize = args
        .get(2)
        .map_or(Ok(224), |s| s.parse())
        .context("image size")?;
    let device = Device::Cpu;
    let config = ResNetConfig::new(depth);
    let mut store = VarStore::new(&device, 7);
    let encoder = ResNet::new(&mut store.root(), &config)?;

    // Non-trivial BatchNorm: scale in [0.5, 1.5), shift and mean in ±0.1, variance in [0.5, 1.5).
    let mut perturbed = HashMap::new();
    for (name, t) in store.tensors_under("") {
        let uniform = |lo: f32, hi: f32| Tensor::rand(lo, hi, t.shape(), &device);
        let is_bn = name.starts_with("bn") || name.contains(".bn") || name.contains("downsample.1");
        let new = if is_bn && name.ends_with(".weight") {
            uniform(0.5, 1.5)?
        } else if name.ends_with(".bias") || name.ends_with("running_mean") {
            uniform(-0.1, 0.1)?
        } else if name.ends_with("running_var") {
            uniform(0.5, 1.5)?
        } else {
            t.copy()?
        };
        perturbed.insert(name, new);
    }
    store.load_under("", &perturbed, false)?;

    let input = Tensor::randn(0f32, 1f32, (2, 3, size, size), &device)?;
    let features = encoder.forward_t(&input, false)?;
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let weights = out.join("encoder.safetensors");
    save_encoder_from_store(&weights, &store, "", &config, BTreeMap::new())?;
    write_safetensors(
        &out.join("features.safetensors"),
        vec![("input".into(), input), ("features".into(), features)],
        BTreeMap::new(),
    )?;
    println!("wrote {} and features.safetensors", weights.display());
    Ok(())
}
