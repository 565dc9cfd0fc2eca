//! The BYOL model: online encoder + projector + predictor, target encoder + projector.

use std::collections::HashMap;

use candle_core::{Device, ModuleT, Tensor, D};
use serde::{Deserialize, Serialize};

use super::ema::ema_update;
use super::loss::symmetric_loss;
use crate::distributed::gradients::all_reduce_gradients;
use crate::distributed::sync_bn::with_sync_batch_norm;
use crate::distributed::DataParallel;
use crate::nn::{Mlp, MlpConfig, ResNet, ResNetConfig, VarStore};
use crate::optim::Lars;
use crate::{Error, Result};

/// How the target network starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetInit {
    /// A copy of the online network (the paper's text).
    CopyOnline,
    /// Its own random initialisation from this seed (the official code).
    Seed(u64),
}

/// Everything that fixes the shapes and the variant of a BYOL model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByolConfig {
    pub encoder: ResNetConfig,
    #[serde(default)]
    pub projector: MlpConfig,
    #[serde(default)]
    pub predictor: MlpConfig,
    /// Ablation: without a predictor, the online projection regresses the target directly.
    #[serde(default = "yes")]
    pub use_predictor: bool,
    /// Ablation: without a target network, the target is the online network under stop-gradient.
    #[serde(default = "yes")]
    pub use_target: bool,
    #[serde(default = "copy_online")]
    pub target_init: TargetInit,
}

fn yes() -> bool {
    true
}

fn copy_online() -> TargetInit {
    TargetInit::CopyOnline
}

impl ByolConfig {
    /// The paper's heads (4096 → 256) on the given encoder.
    pub fn new(encoder: ResNetConfig) -> Self {
        Self {
            encoder,
            projector: MlpConfig::default(),
            predictor: MlpConfig::default(),
            use_predictor: true,
            use_target: true,
            target_init: TargetInit::CopyOnline,
        }
    }
}

/// Encoder followed by projector: the part that online and target share in shape.
#[derive(Debug, Clone)]
struct Network {
    encoder: ResNet,
    projector: Mlp,
}

impl Network {
    fn new(store: &mut VarStore, config: &ByolConfig) -> Result<Self> {
        let mut root = store.root();
        let encoder = ResNet::new(&mut root.pp("encoder"), &config.encoder)?;
        let projector = Mlp::new(
            &mut root.pp("projector"),
            config.encoder.feature_dim()?,
            &config.projector,
        )?;
        Ok(Self { encoder, projector })
    }

    fn project(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.projector
            .forward_t(&self.encoder.forward_t(xs, train)?, train)
    }
}

/// What one training step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    pub loss: f64,
    /// Mean over dimensions of the batch std of the L2-normalised online projections, × √d:
    /// about 1 for spread-out projections, 0 when they collapse to a point.
    pub projection_std: f64,
}

/// A BYOL model. Tensor names: `encoder.*` (torchvision ResNet names), `projector.*`, and in the
/// online network `predictor.*`.
pub struct Byol {
    config: ByolConfig,
    online_store: VarStore,
    online: Network,
    predictor: Option<Mlp>,
    target_store: Option<VarStore>,
    target: Option<Network>,
    /// The ranks this model trains with (one process unless set).
    parallel: DataParallel,
}

impl Byol {
    /// Builds online and target networks; online weights are drawn from `seed`.
    pub fn new(config: &ByolConfig, device: &Device, seed: u64) -> Result<Self> {
        let mut online_store = VarStore::new(device, seed);
        let online = Network::new(&mut online_store, config)?;
        let predictor = if config.use_predictor {
            Some(Mlp::new(
                &mut online_store.root().pp("predictor"),
                config.projector.output_dim,
                &config.predictor,
            )?)
        } else {
            None
        };
        let (target_store, target) = if config.use_target {
            let target_seed = match config.target_init {
                TargetInit::CopyOnline => seed,
                TargetInit::Seed(s) => s,
            };
            let mut store = VarStore::new(device, target_seed);
            let network = Network::new(&mut store, config)?;
            if config.target_init == TargetInit::CopyOnline {
                for entry in store.entries() {
                    let src = online_store.get(&entry.name).ok_or_else(|| {
                        Error::tensor(&entry.name, "target tensor without an online twin")
                    })?;
                    entry.var.set(&src.var.as_tensor().copy()?)?;
                }
            }
            (Some(store), Some(network))
        } else {
            (None, None)
        };
        Ok(Self {
            config: config.clone(),
            online_store,
            online,
            predictor,
            target_store,
            target,
            parallel: DataParallel::single(),
        })
    }

    /// Trains as one rank of `parallel`: each [`Byol::train_step`] then sees this rank's slice
    /// of the global batch, sums the gradients over the ranks and (when synchronised) reduces
    /// every BatchNorm's statistics across them.
    pub fn set_data_parallel(&mut self, parallel: DataParallel) {
        self.parallel = parallel;
    }

    /// Starts the encoder from pretrained weights in torchvision naming (`fc.*` ignored): the
    /// online encoder, and the target's too when it starts as the online copy (the paper's init),
    /// so both networks begin from the same point. Every name and shape is checked; the error names
    /// the first tensor at fault.
    pub fn init_encoder(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let encoder: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("fc."))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        self.online_store.load_under("encoder.", &encoder, false)?;
        if let Some(target) = &self.target_store {
            if self.config.target_init == TargetInit::CopyOnline {
                target.load_under("encoder.", &encoder, false)?;
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &ByolConfig {
        &self.config
    }

    /// The online network's tensors (encoder, projector, predictor).
    pub fn online_store(&self) -> &VarStore {
        &self.online_store
    }

    /// The target network's tensors, absent in the no-target ablation.
    pub fn target_store(&self) -> Option<&VarStore> {
        self.target_store.as_ref()
    }

    /// The online encoder, the part kept for downstream use.
    pub fn encoder(&self) -> &ResNet {
        &self.online.encoder
    }

    /// The target encoder (the EMA of the online one), absent in the no-target ablation.
    pub fn target_encoder(&self) -> Option<&ResNet> {
        self.target.as_ref().map(|t| &t.encoder)
    }

    /// The symmetric loss of two views (training mode), and the online projection of view 1.
    /// Every network sees each view in its own forward pass, so BatchNorm statistics are per view
    /// as in the official code.
    pub fn loss(&self, view1: &Tensor, view2: &Tensor) -> Result<(Tensor, Tensor)> {
        if view1.dims() != view2.dims() {
            return Err(Error::Input(format!(
                "the two views differ in shape: {:?} and {:?}",
                view1.dims(),
                view2.dims()
            )));
        }
        let z1_online = self.online.project(view1, true)?;
        let z2_online = self.online.project(view2, true)?;
        let (p1, p2) = match &self.predictor {
            Some(q) => (
                q.forward_t(&z1_online, true)?,
                q.forward_t(&z2_online, true)?,
            ),
            None => (z1_online.clone(), z2_online.clone()),
        };
        let (z1, z2) = match &self.target {
            Some(target) => (
                target.project(view1, true)?.detach(),
                target.project(view2, true)?.detach(),
            ),
            None => (z1_online.detach(), z2_online.detach()),
        };
        let loss = symmetric_loss(&p1, &p2, &z1, &z2)?;
        Ok((loss, z1_online.detach()))
    }

    /// One optimisation step: loss, backward, LARS at `lr` (times `lr_scale(name)`), then the EMA
    /// of the target at `tau`. A non-finite loss stops before any tensor changes. In a
    /// data-parallel run the views are this rank's slice of the global batch; the loss and the
    /// collapse statistic reported are those of the global batch, on every rank.
    pub fn train_step(
        &mut self,
        view1: &Tensor,
        view2: &Tensor,
        optimizer: &mut Lars,
        lr: f64,
        tau: f64,
        lr_scale: &dyn Fn(&str) -> f64,
    ) -> Result<StepOutput> {
        let parallel = self.parallel.clone();
        with_sync_batch_norm(&parallel, || {
            let (loss_t, projection) = self.loss(view1, view2)?;
            let loss = loss_t
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            let spread = projection_std(&projection)?;
            let (loss, spread, share) = if parallel.world_size() == 1 {
                (loss, spread, 1.0)
            } else {
                // Batch-weighted means over the ranks; a NaN anywhere reaches every rank, so
                // all of them stop together.
                let n = view1.dim(0)? as f64;
                let mut head = [n, loss * n, spread * n];
                parallel.collective.all_reduce_f64(&mut head)?;
                (head[1] / head[0], head[2] / head[0], n / head[0])
            };
            if !loss.is_finite() {
                return Err(Error::Diverged(format!("the BYOL loss is {loss}")));
            }
            // Each rank back-propagates its share of the global batch mean, so every gradient
            // (those that synchronised BatchNorm sums across ranks included) is already
            // weighted, and the parameter gradients add up to the single-process ones.
            let mut grads = if parallel.world_size() == 1 {
                loss_t.backward()?
            } else {
                loss_t.affine(share, 0.0)?.backward()?
            };
            all_reduce_gradients(&self.online_store, &mut grads, parallel.collective.as_ref())?;
            optimizer.step(&self.online_store, &grads, lr, lr_scale)?;
            if let Some(target) = &self.target_store {
                ema_update(target, &self.online_store, tau)?;
            }
            Ok(StepOutput {
                loss,
                projection_std: spread,
            })
        })
    }
}

/// The collapse statistic of [`StepOutput::projection_std`].
pub fn projection_std(z: &Tensor) -> Result<f64> {
    let z = z.to_dtype(candle_core::DType::F32)?;
    let d = z.dim(D::Minus1)?;
    let normed = z.broadcast_div(&z.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?)?;
    let centred = normed.broadcast_sub(&normed.mean_keepdim(0)?)?;
    let std = centred
        .sqr()?
        .mean(0)?
        .sqrt()?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok(std * (d as f64).sqrt())
}
