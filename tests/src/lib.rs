//! Helpers shared by the workspace-level integration tests in `tests/`.

pub mod eval_common;
pub mod fixtures;
pub mod hub_server;
pub mod thread_group;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use byol_core::byol::{Byol, ByolConfig};
use byol_core::nn::{MlpConfig, ResNetConfig, Stem};
use candle_core::{Device, Tensor};

/// A committed fixture file under `tests/fixtures/`, or under `$BYOL_TEST_FIXTURES` when set (a
/// test executable built here and run on another machine, `scripts/gpu-check`, where this
/// checkout's absolute path does not exist).
pub fn fixture(relative: &str) -> PathBuf {
    fixtures_dir().join(relative)
}

/// `$BYOL_TEST_FIXTURES`, else `tests/fixtures/` of the checkout the tests were built in.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("BYOL_TEST_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
}

/// The device of the device-parametrised tests: `$BYOL_TEST_DEVICE` (`cpu` when unset or empty;
/// `cuda`, `cuda:0`, … in a build with the `cuda` feature), parsed as the binaries' `--device`
/// flag. One device for the whole test process, so tensors of different tests' helpers mix
/// (candle tells two `Device::new_cuda(0)` apart).
///
/// On CUDA, the tests keep their CPU tolerances only with TF32 off (cuDNN convolutions and cuBLAS
/// would otherwise round operands to 10-bit mantissas): run them with `NVIDIA_TF32_OVERRIDE=0`,
/// as `scripts/gpu-check` does; [`device_tolerance`] loosens the bound otherwise.
pub fn test_device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let spec = std::env::var("BYOL_TEST_DEVICE").unwrap_or_default();
        let spec = if spec.trim().is_empty() {
            "cpu"
        } else {
            spec.trim()
        };
        let device = byol_core::device::parse_device(spec)
            .unwrap_or_else(|e| panic!("BYOL_TEST_DEVICE={spec}: {e}"));
        if !device.is_cpu() && !tf32_off() {
            eprintln!(
                "BYOL_TEST_DEVICE={spec} without NVIDIA_TF32_OVERRIDE=0: TF32 may round \
                 convolutions and matrix products, the parity tolerances are loosened"
            );
        }
        device
    })
}

/// Whether `NVIDIA_TF32_OVERRIDE=0` turns TF32 off in cuDNN and cuBLAS for this process.
fn tf32_off() -> bool {
    std::env::var("NVIDIA_TF32_OVERRIDE").is_ok_and(|v| v.trim() == "0")
}

/// The relative tolerance of a parity check on [`test_device`]: `cpu` itself on the CPU and on a
/// GPU with TF32 off (float32 everywhere, only the summation order differs); on a GPU that may
/// use TF32, at least 1e-2 (TF32 keeps 10 mantissa bits: 2⁻¹¹ ≈ 4.9e-4 per rounding, compounded
/// through a network's layers).
pub fn device_tolerance(cpu: f64) -> f64 {
    if test_device().is_cpu() || tf32_off() {
        cpu
    } else {
        cpu.max(1e-2)
    }
}

/// The tensors of `map` whose names start with `prefix`, prefix stripped.
pub fn strip_prefix(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Whether oneDNN loads here. Where it does not, tests of the oneDNN paths narrow or skip — except
/// under `BYOL_REQUIRE_ONEDNN=1` (CI), where a missing oneDNN fails instead.
pub fn onednn_loads() -> bool {
    if byol_kernels::onednn::available() {
        return true;
    }
    let required = std::env::var("BYOL_REQUIRE_ONEDNN").is_ok_and(|v| v == "1");
    assert!(!required, "BYOL_REQUIRE_ONEDNN=1 but oneDNN did not load");
    eprintln!("oneDNN not available: its paths are not tested");
    false
}

/// The backends whose convolutions are ours to test: the Rust kernels, and oneDNN's direct and
/// Winograd paths where oneDNN loads. CI sets `BYOL_REQUIRE_ONEDNN=1` so a missing oneDNN fails
/// there instead of narrowing the test.
pub fn conv_backends() -> Vec<byol_kernels::Backend> {
    use byol_kernels::Backend;
    if onednn_loads() {
        vec![Backend::Fast, Backend::OneDnnDirect, Backend::OneDnn]
    } else {
        vec![Backend::Fast]
    }
}

/// Deterministic values in [-1, 1) on the host (xorshift from `seed`).
pub fn uniform_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Σ|t| in f64, whatever `t`'s float dtype and device.
pub fn abs_sum(t: &Tensor) -> f64 {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |a − b| / max |b|: the error relative to the scale of the reference.
pub fn relative_error(actual: &Tensor, expected: &Tensor) -> f64 {
    let a: Vec<f32> = actual.flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), e.len(), "compared tensors differ in size");
    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let diff = a
        .iter()
        .zip(&e)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

/// Largest per-tensor relative error of `a` against `b`, skipping the tensors whose gradient
/// is zero in exact arithmetic (the biases of the Linear layers before a BatchNorm: the batch
/// mean removes them, so both sides hold only rounding noise, ~1e-7 of the other gradients).
pub fn worst_gradient_error(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let global = b.iter().map(|(_, t)| max_abs(t)).fold(0f32, f32::max);
    let mut worst = (0f64, String::new());
    for ((name, x), (name_b, y)) in a.iter().zip(b) {
        assert_eq!(name, name_b);
        if max_abs(y) < 1e-5 * global {
            continue;
        }
        let e = relative_error(x, y);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    worst
}

/// The gradient of the BYOL loss on views `(v1, v2)` for every online tensor of `model` that
/// has one, by name.
pub fn online_gradients(model: &Byol, v1: &Tensor, v2: &Tensor) -> Vec<(String, Tensor)> {
    let (loss, _) = model.loss(v1, v2).expect("the loss");
    let grads = loss.backward().expect("the backward pass");
    model
        .online_store()
        .entries()
        .iter()
        .filter_map(|e| {
            grads
                .get(e.var.as_tensor())
                .map(|g| (e.name.clone(), g.clone()))
        })
        .collect()
}

/// A BYOL model small enough for tests: ResNet-18 small stem with 4 base channels.
pub fn tiny_byol_config() -> ByolConfig {
    let mut config = ByolConfig::new(ResNetConfig {
        depth: 18,
        width: 1,
        stem: Stem::Small,
        in_channels: 3,
        base_channels: 4,
        zero_init_residual: false,
        padding: Default::default(),
    });
    config.projector = MlpConfig {
        hidden_dim: 32,
        output_dim: 16,
    };
    config.predictor = config.projector;
    config
}

pub fn tiny_byol(seed: u64) -> Byol {
    Byol::new(&tiny_byol_config(), &Device::Cpu, seed).expect("the tiny model builds")
}

/// Deterministic pseudo-random views `[n, 3, size, size]`.
pub fn views(n: usize, size: usize, seed: u64) -> (Tensor, Tensor) {
    let make = |s: u64| {
        let mut state = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n * 3 * size * size)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, (n, 3, size, size), &Device::Cpu).unwrap()
    };
    (make(seed * 2 + 1), make(seed * 2 + 2))
}

/// Writes an MNIST-layout IDX dataset (uncompressed, `{train,t10k}-{images-idx3,labels-idx1}-ubyte`)
/// of 28×28 grey images into `dir`: class `c` of `classes` is a bright 8×8 square at its own
/// place on a noisy background, so raw pixels separate the classes linearly.
pub fn write_mnist_like(dir: &Path, train: usize, test: usize, classes: u8, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    std::fs::create_dir_all(dir).expect("fixture directory");
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = idx_header(0x0803, &[n as u32, 28, 28]);
        let mut labels = idx_header(0x0801, &[n as u32]);
        for i in 0..n {
            let class = (i % classes as usize) as u8;
            let (top, left) = (2 + 6 * (class as usize / 3), 2 + 8 * (class as usize % 3));
            for y in 0..28 {
                for x in 0..28 {
                    let inside = (top..top + 8).contains(&y) && (left..left + 8).contains(&x);
                    let base: u8 = if inside { 200 } else { 20 };
                    images.push(base.saturating_add(rng.random_range(0..40)));
                }
            }
            labels.push(class);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).expect("write");
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).expect("write");
    }
}

fn idx_header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

/// Saves the online encoder of [`tiny_byol`]`(seed)` (3 input channels) to `path`.
pub fn save_tiny_encoder(path: &Path, seed: u64) {
    byol_core::weights::save_encoder(path, &tiny_byol(seed), Default::default())
        .expect("the tiny encoder saves");
}

/// Writes the online encoder of [`tiny_byol`]`(seed)` as an encoder file (torchvision names,
/// config in the metadata) and returns its path.
pub fn write_tiny_encoder(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("tiny-encoder-{seed}.safetensors"));
    save_tiny_encoder(&path, seed);
    path
}

/// Runs a workspace binary (`env!("CARGO_BIN_EXE_<name>")` of the calling test) with `args`,
/// logs at warn level, and returns its output.
pub fn run_binary(binary: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

/// stdout then stderr of a finished command, as text (for assertions and failure messages).
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts two safetensors files hold the same tensors, bit for bit, and the same metadata.
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let a = byol_core::io::SafetensorsFile::read(a, &Device::Cpu).unwrap();
    let b = byol_core::io::SafetensorsFile::read(b, &Device::Cpu).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (k, t) in &a.tensors {
        let u = &b.tensors[k];
        assert_eq!(t.dims(), u.dims(), "{k}");
        let d: f64 = t
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .sub(&u.to_dtype(candle_core::DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
    assert_eq!(a.metadata, b.metadata);
}

/// The largest relative difference ([`relative_error`]) over every float tensor of the online
/// and target networks of the newest training states in two run directories (same step).
pub fn state_difference(a: &Path, b: &Path) -> f64 {
    let load = |dir: &Path| {
        let path = byol_core::train::latest_state(dir)
            .expect("the run directory lists")
            .expect("a training state");
        byol_core::checkpoint::load_training_state(&path, &Device::Cpu).expect("a readable state")
    };
    let (a, b) = (load(a), load(b));
    assert_eq!(a.step, b.step, "the states are of different steps");
    let tensors = |s: &byol_core::checkpoint::TrainingState| {
        let mut all = s.model.online_store().tensors_under("");
        if let Some(target) = s.model.target_store() {
            all.extend(target.tensors_under(""));
        }
        all
    };
    tensors(&a)
        .iter()
        .zip(tensors(&b))
        .filter(|(x, _)| x.1.dtype().is_float())
        .map(|(x, y)| {
            assert_eq!(x.0, y.0);
            relative_error(&x.1, &y.1)
        })
        .fold(0.0, f64::max)
}
