//! The binaries' SIGINT / SIGTERM handling, shared by pretraining and fine-tuning: the first
//! signal sets a stop flag the training loop polls between steps (it checkpoints and returns),
//! a second one exits at once (status 130) without a checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// Installs the process's SIGINT/SIGTERM handler (once per process) and returns its stop flag.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
    })
    .map_err(|e| {
        Error::config(
            "signals",
            format!("cannot install the SIGINT/SIGTERM handler: {e}"),
        )
    })?;
    Ok(stop)
}
