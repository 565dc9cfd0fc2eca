//! The process-wide switch between the custom kernels and candle's stock ops, with a per-thread
//! override for tests.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

use crate::onednn;

/// Which implementation the layers use on CPU (and, for [`Backend::Stock`] against the others,
/// whether a GPU convolution takes candle's own backward, see [`use_device_conv`]).
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
    /// [`Backend::OneDnnDirect`] computing in bfloat16 (mixed precision): each convolution
    /// pass rounds its two inputs to bf16 and accumulates and returns f32, so weights, gradients,
    /// BatchNorm, the loss and the optimiser stay f32 (as PyTorch's CPU autocast); on oneDNN
    /// 2.x the weight-gradient pass stays f32, where its bf16 kernel is the slower
    /// (`onednn::bf16_weight_grads_pay`).
    OneDnnBf16,
}

impl Backend {
    /// Whether the convolutions go to oneDNN.
    pub fn is_onednn(self) -> bool {
        matches!(self, Self::OneDnn | Self::OneDnnDirect | Self::OneDnnBf16)
    }
}

/// A backend name that is none of `stock`, `fast`, `onednn`, `onednn-direct`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: use stock, fast, onednn, onednn-direct or onednn-bf16")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "stock" => Ok(Self::Stock),
            "fast" => Ok(Self::Fast),
            "onednn" => Ok(Self::OneDnn),
            "onednn-direct" => Ok(Self::OneDnnDirect),
            "onednn-bf16" => Ok(Self::OneDnnBf16),
            _ => Err(UnknownBackend(s.to_string())),
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

const BACKENDS: [Backend; 5] = [
    Backend::Stock,
    Backend::Fast,
    Backend::OneDnn,
    Backend::OneDnnDirect,
    Backend::OneDnnBf16,
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
/// A oneDNN backend asked of a build without oneDNN runs as [`Backend::Fast`] (callers that
/// promise bf16 check [`Backend::is_onednn`] first).
pub fn backend() -> Backend {
    let chosen = OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        BACKENDS
            .get(usize::from(GLOBAL.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or_else(default_backend)
    });
    match chosen {
        Backend::OneDnn | Backend::OneDnnDirect | Backend::OneDnnBf16 if !onednn::available() => {
            Backend::Fast
        }
        b => b,
    }
}

/// Runs `f` with `backend` in effect on the calling thread only (layers decide on the thread that
/// calls `forward`, so this covers a whole step), restoring the previous setting afterwards.
pub fn with_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> R {
    with_override(&OVERRIDE, backend, f)
}

/// Runs `f` with `value` in the thread-local override `slot`, restoring the previous value
/// afterwards, also when `f` panics.
pub(crate) fn with_override<T: Copy + 'static, R>(
    slot: &'static std::thread::LocalKey<Cell<Option<T>>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<Option<T>>>, Option<T>);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|o| o.set(self.1));
        }
    }
    let _restore = Restore(slot, slot.with(|o| o.replace(Some(value))));
    f()
}

/// Whether a layer should route `xs` through the custom ops.
pub fn use_fast(xs: &Tensor) -> bool {
    backend() != Backend::Stock && xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Whether a convolution of `xs` should be [`crate::device_conv2d`]: off the CPU, unless the
/// backend is [`Backend::Stock`] (candle's own backward, kept to compare against).
pub fn use_device_conv(xs: &Tensor) -> bool {
    backend() != Backend::Stock && !xs.device().is_cpu()
}
