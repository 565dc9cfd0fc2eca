//! The optimisers (LARS for pretraining, SGD for evaluation) and the learning-rate schedule.

pub mod lars;
pub mod schedule;
pub mod sgd;

pub use lars::{Lars, LarsConfig};
pub use schedule::{LrSchedule, Preset};
pub use sgd::{Sgd, SgdConfig};
