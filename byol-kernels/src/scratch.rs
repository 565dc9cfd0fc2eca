//! Per-thread scratch buffers: im2col matrices are large (MBs) and needed once per sample, so
//! reusing them avoids the page faults and zeroing that fresh buffers cost every call.

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with an uninitialised-content (stale) buffer of `len` floats owned by this thread.
/// Callers overwrite every element they read.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (work stealing inside `f`): fall back to a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}
