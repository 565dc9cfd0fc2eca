//! Fast CPU kernels for the hot paths of a BYOL step: convolution (forward, input-grad,
//! weight-grad) and train-mode BatchNorm, as candle custom ops.
//!
//! Stock candle spends most of a CPU training step in a single-threaded transposed convolution
//! (input grad), a huge-im2col weight grad and ~35 tensor passes per BatchNorm (see
//! `scripts/PERF.md`). These ops are f32, contiguous NCHW, multithreaded with rayon and use the
//! `gemm` crate directly. Layers pick them through [`use_fast`]: only on CPU, only for f32, and
//! only while the [`Backend`] is [`Backend::Fast`]; everything else (CUDA included) takes the
//! stock candle ops, so the recipe code is the same on every device.

mod bn;
mod conv;
mod scratch;

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

pub use bn::{batch_norm_add_relu_train, batch_norm_relu_train, batch_norm_train, BnStats};
pub use conv::{conv2d, Conv2dGeometry};

/// Which implementation the layers use on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// candle's own ops (the reference).
    Stock,
    /// The custom ops of this module (the default).
    Fast,
}

static GLOBAL: AtomicU8 = AtomicU8::new(1);

thread_local! {
    // A per-thread override lets tests compare both backends while other tests run in parallel.
    static OVERRIDE: Cell<Option<Backend>> = const { Cell::new(None) };
}

fn encode(b: Backend) -> u8 {
    match b {
        Backend::Stock => 0,
        Backend::Fast => 1,
    }
}

/// Sets the process-wide backend (default [`Backend::Fast`]).
pub fn set_backend(backend: Backend) {
    GLOBAL.store(encode(backend), Ordering::Relaxed);
}

/// The backend in effect on this thread: the [`with_backend`] override, else the global one.
pub fn backend() -> Backend {
    OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        if GLOBAL.load(Ordering::Relaxed) == 0 {
            Backend::Stock
        } else {
            Backend::Fast
        }
    })
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
    backend() == Backend::Fast && xs.device().is_cpu() && xs.dtype() == DType::F32
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
