//! The BYOL method: online and target networks, the regression loss and the EMA target update.

pub mod ema;
pub mod loss;
pub mod model;

pub use ema::{ema_update, tau_at, tau_schedule};
pub use loss::{regression_loss, symmetric_loss};
pub use model::{Byol, ByolConfig, StepOutput, TargetInit};
