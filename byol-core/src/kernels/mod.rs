//! Fast CPU kernels for the hot paths of a BYOL step: convolution (forward, input-grad,
//! weight-grad) and train-mode BatchNorm, as candle custom ops.
//!
//! Stock candle spends most of a CPU training step in a single-threaded transposed convolution
//! (input grad), a huge-im2col weight grad and ~35 tensor passes per BatchNorm (see
//! `scripts/PERF.md`). These ops are f32, contiguous NCHW, multithreaded with rayon and use the
//! `gemm` crate directly, or oneDNN for the convolutions when the build found it (`onednn.rs`).
//! Layers pick them through [`use_fast`]: only on CPU, only for f32, and
//! only while the [`Backend`] is not [`Backend::Stock`]; everything else (CUDA included) takes the
//! stock candle ops, so the recipe code is the same on every device.

mod bn;
mod conv;
mod geometry;
pub mod onednn;
mod scratch;
mod update;

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

pub use bn::{batch_norm_add_relu_train, batch_norm_relu_train, batch_norm_train, BnStats};
pub use conv::conv2d;
pub use geometry::Conv2dGeometry;
pub use update::{ema, lars_update, LarsStep};

/// Which implementation the layers use on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// candle's own ops (the reference).
    Stock,
    /// The custom ops of this module, pure Rust (the default without oneDNN).
    Fast,
    /// [`Backend::Fast`] with convolutions on oneDNN, Winograd for the 3×3 stride-1 layers where
    /// it is faster (the default when the build found oneDNN; see [`onednn::available`]).
    OneDnn,
    /// [`Backend::OneDnn`] with oneDNN's direct kernels only (no Winograd).
    OneDnnDirect,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stock" => Ok(Self::Stock),
            "fast" => Ok(Self::Fast),
            "onednn" => Ok(Self::OneDnn),
            "onednn-direct" => Ok(Self::OneDnnDirect),
            _ => Err(format!("`{s}`: use stock, fast, onednn or onednn-direct")),
        }
    }
}

/// No setting yet: the default applies.
const UNSET: u8 = u8::MAX;
static GLOBAL: AtomicU8 = AtomicU8::new(UNSET);

thread_local! {
    // A per-thread override lets tests compare both backends while other tests run in parallel.
    static OVERRIDE: Cell<Option<Backend>> = const { Cell::new(None) };
}

const BACKENDS: [Backend; 4] = [
    Backend::Stock,
    Backend::Fast,
    Backend::OneDnn,
    Backend::OneDnnDirect,
];

/// [`Backend::OneDnn`] when this build has oneDNN, else [`Backend::Fast`].
pub fn default_backend() -> Backend {
    if onednn::available() {
        Backend::OneDnn
    } else {
        Backend::Fast
    }
}

/// Sets the process-wide backend (default: [`default_backend`]).
pub fn set_backend(backend: Backend) {
    let code = BACKENDS.iter().position(|b| *b == backend).unwrap_or(1);
    GLOBAL.store(code as u8, Ordering::Relaxed);
}

/// The backend in effect on this thread: the [`with_backend`] override, else the global one.
/// A oneDNN backend asked of a build without oneDNN runs as [`Backend::Fast`].
pub fn backend() -> Backend {
    let chosen = OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        BACKENDS
            .get(usize::from(GLOBAL.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or_else(default_backend)
    });
    match chosen {
        Backend::OneDnn | Backend::OneDnnDirect if !onednn::available() => Backend::Fast,
        b => b,
    }
}

/// Runs `f` with `backend` in effect on the calling thread only (layers decide on the thread that
/// calls `forward`, so this covers a whole step), restoring the previous setting afterwards.
pub fn with_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Backend>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(backend))));
    f()
}

/// Whether a layer should route `xs` through the custom ops.
pub fn use_fast(xs: &Tensor) -> bool {
    backend() != Backend::Stock && xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// The contiguous f32 data of a CPU tensor's storage.
fn slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: the fast kernels need a contiguous input"),
    }
}
