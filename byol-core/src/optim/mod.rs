//! The optimiser (LARS) and the learning-rate schedule.

pub mod lars;
pub mod schedule;

pub use lars::{Lars, LarsConfig};
pub use schedule::{LrSchedule, Preset};
