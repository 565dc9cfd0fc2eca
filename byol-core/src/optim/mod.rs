//! The optimisers (LARS for pretraining, SGD for evaluation) and the learning-rate schedule.

pub mod lars;
pub mod schedule;
pub mod sgd;

pub use lars::{Lars, LarsConfig};
pub use schedule::{LrSchedule, Preset};
pub use sgd::{Sgd, SgdConfig};

use std::collections::HashMap;

use candle_core::Tensor;

use crate::nn::VarStore;
use crate::{Error, Result};

/// Momentum buffers read back from a checkpoint must each belong to a tensor that `store`
/// trains, with its shape (LARS and SGD restore theirs through this).
pub(crate) fn check_momentum_buffers(
    store: &VarStore,
    buffers: &HashMap<String, Tensor>,
) -> Result<()> {
    for (name, buf) in buffers {
        let entry = store
            .get(name)
            .filter(|e| e.role.is_trainable())
            .ok_or_else(|| {
                Error::tensor(
                    name,
                    "momentum buffer for a tensor the model does not train",
                )
            })?;
        if buf.dims() != entry.var.dims() {
            return Err(Error::tensor(
                name,
                format!(
                    "momentum buffer of shape {:?}, the tensor has {:?}",
                    buf.dims(),
                    entry.var.dims()
                ),
            ));
        }
    }
    Ok(())
}
