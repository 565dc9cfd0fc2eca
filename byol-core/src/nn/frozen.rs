//! A frozen encoder for feature extraction: the ResNet in inference mode, run as one oneDNN
//! network (`byol_kernels::FrozenNet`: BatchNorm folded into the convolutions, ReLU and the
//! residual add fused, activations kept in oneDNN's blocked layouts) on CPUs where oneDNN
//! loads, else as the candle module (any device, any backend).

use candle_core::{Device, ModuleT, Tensor};

use super::{Precision, ResNet};
use crate::{Error, Result};

/// How a [`FrozenEncoder`] runs.
enum Engine<'a> {
    OneDnn(byol_kernels::FrozenNet),
    Candle(&'a ResNet),
}

/// An encoder prepared for inference over many batches.
pub struct FrozenEncoder<'a> {
    engine: Engine<'a>,
    device: Device,
    features: usize,
}

impl<'a> FrozenEncoder<'a> {
    /// Prepares `encoder` for inference on `device` in `precision`. oneDNN runs it when the
    /// device is the CPU and the kernels' backend is oneDNN's; otherwise the candle module does
    /// (f32 only: bf16 without oneDNN is refused, candle's bf16 convolutions on CPU being
    /// slower than f32).
    pub fn new(encoder: &'a ResNet, precision: Precision, device: &Device) -> Result<Self> {
        let features = encoder.config().feature_dim()?;
        let onednn = device.is_cpu() && byol_kernels::backend().is_onednn();
        let engine = if onednn {
            if precision == Precision::Bf16 {
                super::precision::refuse_bf16_without_avx512()?;
            }
            let net =
                byol_kernels::FrozenNet::new(&encoder.frozen_ops()?, precision == Precision::Bf16)
                    .map_err(|e| Error::Input(format!("building the frozen encoder: {e}")))?;
            Engine::OneDnn(net)
        } else if precision == Precision::Bf16 {
            return Err(Error::Config {
                field: "precision".into(),
                message: format!(
                    "bf16 inference runs on oneDNN on the CPU, which this run does not use \
                     (no {}, BYOL_ONEDNN=0, another backend or a GPU device)",
                    super::precision::onednn_library()
                ),
            });
        } else {
            Engine::Candle(encoder)
        };
        Ok(Self {
            engine,
            device: device.clone(),
            features,
        })
    }

    /// Width of the feature rows.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Whether the oneDNN network runs (else the candle module).
    pub fn on_onednn(&self) -> bool {
        matches!(self.engine, Engine::OneDnn(_))
    }

    /// Pooled features of `pixels` (`[n, c, h, w]` f32, row-major): `[n, features]` row-major,
    /// on the host.
    pub fn forward(&self, pixels: &[f32], shape: (usize, usize, usize, usize)) -> Result<Vec<f32>> {
        match &self.engine {
            Engine::OneDnn(net) => net
                .forward(pixels, shape)
                .map_err(|e| Error::Input(format!("frozen encoder forward: {e}"))),
            Engine::Candle(_) => Ok(self
                .forward_tensor(pixels, shape)?
                .flatten_all()?
                .to_vec1::<f32>()?),
        }
    }

    /// The same features as a `[n, features]` tensor on this encoder's device (no trip through
    /// the host when the candle module runs on a GPU).
    pub fn forward_tensor(
        &self,
        pixels: &[f32],
        shape: (usize, usize, usize, usize),
    ) -> Result<Tensor> {
        match &self.engine {
            Engine::OneDnn(_) => Ok(Tensor::from_vec(
                self.forward(pixels, shape)?,
                (shape.0, self.features),
                &self.device,
            )?),
            Engine::Candle(encoder) => {
                let x = Tensor::from_slice(pixels, shape, &self.device)?;
                Ok(encoder.forward_t(&x, false)?.detach())
            }
        }
    }
}
