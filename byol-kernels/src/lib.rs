//! # byol-kernels
//!
//! Fast CPU kernels for the hot paths of a BYOL step: convolution (forward, input-grad,
//! weight-grad), train-mode BatchNorm and the stem's max-pool, as candle custom ops.
//!
//! Stock candle spends most of a CPU training step in a single-threaded transposed convolution
//! (input grad), a huge-im2col weight grad and ~35 tensor passes per BatchNorm (see
//! `scripts/PERF.md`). These ops are f32, contiguous NCHW, multithreaded with rayon and use the
//! `gemm` crate directly, or oneDNN for the convolutions when the build found it (`onednn.rs`).
//! Layers pick them through [`use_fast`]: only on CPU, only for f32, and
//! only while the [`Backend`] is not [`Backend::Stock`]; everything else (CUDA included) takes the
//! stock candle ops, so the recipe code is the same on every device — except the convolution's
//! backward off the CPU ([`device_conv2d`], through [`use_device_conv`]): candle's own runs naive
//! CUDA kernels there. Inference of a frozen encoder can run as one oneDNN network instead
//! ([`FrozenNet`]: BatchNorm folded, activations kept in oneDNN's layouts, f32 or bf16).

mod backend;
mod blocked;
mod bn;
mod conv;
mod cross_replica;
mod device_conv;
mod frozen;
mod geometry;
mod lanes;
pub mod onednn;
mod pool;
mod scratch;
pub mod simd;
mod storage;
mod update;

pub use backend::{
    backend, default_backend, set_backend, use_device_conv, use_fast, with_backend, Backend,
    UnknownBackend,
};
pub use blocked::{
    from_blocked, spatial_mean, to_blocked, training_block, with_blocked_activations,
};
pub use bn::{batch_norm_add_relu_train, batch_norm_relu_train, batch_norm_train, BnStats};
pub use conv::conv2d;
pub use cross_replica::{channel_sum, with_channel_sum, ChannelSum};
pub use device_conv::device_conv2d;
pub use frozen::{FrozenConv, FrozenNet, FrozenOp};
pub use geometry::Conv2dGeometry;
pub use pool::max_pool_3x3_s2;
pub use update::{ema, lars_update, LarsStep};
