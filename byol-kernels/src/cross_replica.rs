//! The cross-replica hook of synchronised BatchNorm: how a fused BatchNorm sums its per-channel
//! statistics over the processes of a data-parallel job.
//!
//! The kernels know no collective engine (MPI, NCCL, threads in a test): whoever runs a
//! data-parallel step installs a [`ChannelSum`] for the calling thread with
//! [`with_channel_sum`]. A BatchNorm forward captures the installed one, so its backward (run
//! later by `backward()`) reduces over the same group.

use std::cell::RefCell;
use std::sync::Arc;

/// Sums values element-wise over every process of a group, in place; every process calls it
/// with as many values, in the same order of calls.
pub trait ChannelSum: Send + Sync {
    fn sum(&self, values: &mut [f64]) -> candle_core::Result<()>;
}

thread_local! {
    static INSTALLED: RefCell<Option<Arc<dyn ChannelSum>>> = const { RefCell::new(None) };
}

/// Runs `f` with `sum` as this thread's cross-replica reduction of train-mode BatchNorm
/// statistics (`None`: each process normalises with its own batch), then restores the previous.
pub fn with_channel_sum<R>(sum: Option<Arc<dyn ChannelSum>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<dyn ChannelSum>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            INSTALLED.with(|cell| *cell.borrow_mut() = previous);
        }
    }
    let previous = INSTALLED.with(|cell| cell.replace(sum));
    let _restore = Restore(previous);
    f()
}

/// The reduction installed on this thread, if any.
pub fn channel_sum() -> Option<Arc<dyn ChannelSum>> {
    INSTALLED.with(|cell| cell.borrow().clone())
}
