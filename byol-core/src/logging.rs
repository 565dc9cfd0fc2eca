//! The binaries' log set-up: `tracing` to stderr (stdout carries tables and reports), level from
//! `RUST_LOG`, `info` by default.

/// Installs the subscriber; a second call in one process is a no-op.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
