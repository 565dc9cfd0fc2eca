//! The arithmetic precision of the convolutions: fp32, or bf16 on oneDNN.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The arithmetic of the convolutions: of a frozen encoder's forward pass (feature extraction),
/// or of pretraining's (mixed precision: [`use_for_training`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout (the default).
    #[default]
    F32,
    /// bfloat16 on oneDNN (CPUs with AVX-512): a frozen encoder keeps activations and weights in
    /// bf16 (accumulation, bias and pooled features f32); training rounds each convolution's
    /// inputs to bf16 and keeps everything else f32. ~3 significant digits per value.
    Bf16,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" | "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(Error::Config {
                field: "precision".into(),
                message: format!("'{other}' is not fp32 or bf16"),
            }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "fp32",
            Self::Bf16 => "bf16",
        })
    }
}

/// Makes pretraining's convolutions run in `precision` on `device`: bf16 switches the kernels'
/// backend to `OneDnnBf16` (mixed precision: each convolution's inputs rounded to bf16, its
/// output, the weights, gradients, BatchNorm, loss, LARS and EMA in f32), and needs oneDNN on
/// the CPU; fp32 leaves the backend as it is.
pub fn use_for_training(precision: Precision, device: &Device) -> Result<()> {
    if precision == Precision::F32 {
        return Ok(());
    }
    if !device.is_cpu() || !byol_kernels::onednn::available() {
        return Err(Error::Config {
            field: "precision".into(),
            message: format!(
                "bf16 training runs on oneDNN on the CPU (this run has no {}, BYOL_ONEDNN=0, \
                 or a GPU device)",
                onednn_library()
            ),
        });
    }
    refuse_bf16_without_avx512()?;
    if !native_bf16() {
        tracing::warn!(
            "this CPU has no AVX-512 BF16 instructions: oneDNN emulates bf16, likely slower than fp32"
        );
    }
    byol_kernels::set_backend(byol_kernels::Backend::OneDnnBf16);
    Ok(())
}

/// The faster training precision on `device`: bf16 where oneDNN runs on a CPU with native bf16
/// (on the quick start's recipe +29 % images/s at no measurable accuracy cost, 3 seeds,
/// `scripts/PERF.md`), else fp32. What `byol-pretrain --precision auto` picks.
pub fn fastest_for_training(device: &Device) -> Precision {
    if device.is_cpu() && byol_kernels::onednn::available() && native_bf16() {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// Whether oneDNN has bf16 convolutions for this CPU: AVX-512 (its `avx512_core`: F, BW, VL,
/// DQ), natively with AVX-512 BF16 or AMX, emulated without. On AVX2-only CPUs it has none.
pub fn bf16_convolutions() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// An error naming the precision when oneDNN has no bf16 convolutions for this CPU (instead
/// of each convolution falling back to slow f32 kernels).
pub fn refuse_bf16_without_avx512() -> Result<()> {
    if bf16_convolutions() {
        return Ok(());
    }
    Err(Error::Config {
        field: "precision".into(),
        message: "bf16 needs a CPU with AVX-512 (oneDNN has no bf16 convolutions for this one); \
                  use fp32 (or `auto` in byol-pretrain)"
            .into(),
    })
}

/// Whether the CPU computes bf16 dot products natively (AVX-512 BF16), where bf16 is faster.
pub fn native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// oneDNN's library as the messages name it: the file this build opens, or "oneDNN" in a
/// build without the shim.
pub(crate) fn onednn_library() -> String {
    byol_kernels::onednn::library().unwrap_or_else(|| "oneDNN".into())
}
