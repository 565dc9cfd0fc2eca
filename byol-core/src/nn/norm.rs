//! Batch normalisation for `[N, C]` and `[N, C, H, W]` inputs, with PyTorch's semantics.
//!
//! Training mode normalises with the biased batch variance and folds the *unbiased* variance into
//! the running estimate (`running ← (1 − m)·running + m·batch`, m = 0.1, i.e. Haiku's decay 0.9);
//! inference mode uses the running estimates. Gradients flow through the batch statistics.

use candle_core::{DType, ModuleT, Tensor, Var};

use super::var_store::{Role, VarPath};
use crate::distributed::sync_bn::{cross_replica_count, cross_replica_sum};
use crate::Result;

/// PyTorch's default BatchNorm momentum (Haiku decay 0.9).
pub const BN_MOMENTUM: f64 = 0.1;
/// The recipe's BatchNorm epsilon.
pub const BN_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    momentum: f64,
    eps: f64,
}

impl BatchNorm {
    /// γ = 1 (or 0 with `zero_scale`, the optional zero-init of a residual branch), β = 0.
    pub fn new(vs: &mut VarPath, channels: usize, zero_scale: bool) -> Result<Self> {
        let gamma = if zero_scale { 0.0 } else { 1.0 };
        Ok(Self {
            weight: vs.constant("weight", &[channels], gamma, Role::NormScale)?,
            bias: vs.constant("bias", &[channels], 0.0, Role::NormShift)?,
            running_mean: vs.constant("running_mean", &[channels], 0.0, Role::RunningMean)?,
            running_var: vs.constant("running_var", &[channels], 1.0, Role::RunningVar)?,
            num_batches_tracked: vs.counter("num_batches_tracked")?,
            momentum: BN_MOMENTUM,
            eps: BN_EPS,
        })
    }

    /// Shape `[1, C]` or `[1, C, 1, 1]` to broadcast a per-channel vector against `xs`.
    fn per_channel(v: &Tensor, rank: usize) -> candle_core::Result<Tensor> {
        let c = v.dim(0)?;
        match rank {
            2 => v.reshape((1, c)),
            _ => v.reshape((1, c, 1, 1)),
        }
    }

    fn update_running_stats(&self, mean: &Tensor, biased_var: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = biased_var.affine(n as f64 / (n.max(2) - 1) as f64, 0.0)?;
        let new_mean =
            (self.running_mean.as_tensor().affine(1.0 - m, 0.0)? + mean.affine(m, 0.0)?)?;
        let new_var =
            (self.running_var.as_tensor().affine(1.0 - m, 0.0)? + unbiased.affine(m, 0.0)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        // + 1 on the device (i64 affine is exact below 2⁵³): a host read here was a device
        // synchronisation per BatchNorm and forward pass on a GPU.
        let count = self.num_batches_tracked.as_tensor().to_dtype(DType::I64)?;
        self.num_batches_tracked.set(&count.affine(1.0, 1.0)?)?;
        Ok(())
    }

    /// The fused train-mode op when the kernels apply, with the running statistics updated.
    fn fused_train(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let (ys, stats) = match (residual, relu) {
            (Some(r), _) => {
                byol_kernels::batch_norm_add_relu_train(xs, &self.weight, &self.bias, r, self.eps)?
            }
            (None, true) => {
                byol_kernels::batch_norm_relu_train(xs, &self.weight, &self.bias, self.eps)?
            }
            (None, false) => {
                byol_kernels::batch_norm_train(xs, &self.weight, &self.bias, self.eps)?
            }
        };
        self.update_running_stats(&stats.mean, &stats.var, stats.count)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(ys)
    }

    /// This BatchNorm in inference mode folded into the convolution before it: `conv_weight`
    /// (`[out, …]`) scaled per output channel by γ/√(var + ε), and the bias β − mean·γ/√(var + ε)
    /// (computed in f64), so `bn(conv(x, w)) = conv(x, w') + b'`.
    pub(crate) fn fold_into(&self, conv_weight: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let gamma = self.weight.as_tensor().to_vec1::<f32>()?;
        let beta = self.bias.as_tensor().to_vec1::<f32>()?;
        let mean = self.running_mean.as_tensor().to_vec1::<f32>()?;
        let var = self.running_var.as_tensor().to_vec1::<f32>()?;
        let mut weight = conv_weight.flatten_all()?.to_vec1::<f32>()?;
        let channels = gamma.len();
        if conv_weight.dim(0)? != channels || weight.len() % channels != 0 {
            return Err(crate::Error::Input(format!(
                "a BatchNorm of {channels} channels folded into a convolution of shape {:?}",
                conv_weight.dims()
            )));
        }
        let per_channel = weight.len() / channels;
        let mut bias = Vec::with_capacity(channels);
        for (c, row) in weight.chunks_exact_mut(per_channel).enumerate() {
            let scale = f64::from(gamma[c]) / (f64::from(var[c]) + self.eps).sqrt();
            for v in row {
                *v = (f64::from(*v) * scale) as f32;
            }
            bias.push((f64::from(beta[c]) - f64::from(mean[c]) * scale) as f32);
        }
        Ok((weight, bias))
    }

    /// Whether the fused kernels run this call: training mode on a CPU f32 input of rank 2 or
    /// 4, or 5 (oneDNN's channel-blocked layout, which only they read).
    fn fast(xs: &Tensor, train: bool) -> bool {
        train && matches!(xs.rank(), 2 | 4 | 5) && byol_kernels::use_fast(xs)
    }

    /// `relu(bn(xs))`: one fused op on the fast backend (a NaN stays NaN there; stock candle's
    /// ReLU maps it to 0).
    pub fn forward_relu(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if Self::fast(xs, train) {
            return self.fused_train(xs, None, true);
        }
        self.forward_t(xs, train)?.relu()
    }

    /// `relu(bn(xs) + residual)`, the end of a residual block: one fused op on the fast backend.
    pub fn forward_add_relu(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        if Self::fast(xs, train) && byol_kernels::use_fast(residual) {
            return self.fused_train(xs, Some(residual), true);
        }
        (self.forward_t(xs, train)? + residual)?.relu()
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let rank = xs.rank();
        if Self::fast(xs, train) {
            // One fused op (2 passes forward, 2 backward) instead of ~35 tensor passes.
            return self.fused_train(xs, None, false);
        }
        if rank != 2 && rank != 4 {
            candle_core::bail!("BatchNorm expects a [N, C] or [N, C, H, W] input, got {xs:?}")
        }
        let (centred, var) = if train {
            let reduce: &[usize] = if rank == 2 { &[0] } else { &[0, 2, 3] };
            let n = xs.elem_count() / xs.dim(1)?;
            if n < 2 && byol_kernels::channel_sum().is_none() {
                candle_core::bail!(
                    "BatchNorm in training mode needs more than one value per channel, got {xs:?}"
                )
            }
            let (mean, centred, var, n) = match byol_kernels::channel_sum() {
                // Synchronised BatchNorm: sums over every rank, differentiably.
                Some(sum) => {
                    let total = cross_replica_count(n, &sum)? as f64;
                    let mean = (cross_replica_sum(&xs.sum_keepdim(reduce)?, &sum)? / total)?;
                    let centred = xs.broadcast_sub(&mean)?;
                    let squares = cross_replica_sum(&centred.sqr()?.sum_keepdim(reduce)?, &sum)?;
                    (mean, centred, (squares / total)?, total as usize)
                }
                None => {
                    let mean = xs.mean_keepdim(reduce)?;
                    let centred = xs.broadcast_sub(&mean)?;
                    let var = centred.sqr()?.mean_keepdim(reduce)?;
                    (mean, centred, var, n)
                }
            };
            self.update_running_stats(
                &mean.flatten_all()?.detach(),
                &var.flatten_all()?.detach(),
                n,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (centred, var)
        } else {
            let mean = Self::per_channel(&self.running_mean, rank)?;
            (
                xs.broadcast_sub(&mean)?,
                Self::per_channel(&self.running_var, rank)?,
            )
        };
        let scale =
            Self::per_channel(&self.weight, rank)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        centred
            .broadcast_mul(&scale)?
            .broadcast_add(&Self::per_channel(&self.bias, rank)?)
    }
}
