//! How the process's thread pools share the cores.
//!
//! Three pools take turns on the same cores during a step: rayon (our kernels, the loader),
//! oneDNN's OpenMP threads (convolutions) and candle's own pool for its elementwise binary ops
//! (`candle-bp-*`). An idle thread that spins instead of sleeping takes a core from whichever pool
//! has work next. libgomp's spinning is switched off when oneDNN loads (`byol_kernels::onednn`);
//! candle's pool spins 25 000 `pause`s (up to ~1 ms) after every op before it parks: on 2 cores
//! that was 14 % of all CPU samples of a ResNet-50 step (`perf record`, session 8), and a limit of
//! 100 gave +20–25 % images/s on that step and +8–10 % on ResNet-18's (`scripts/PERF.md`).

/// Candle's spin limit, read once when its pool starts (the first parallel binary op).
const CANDLE_SPIN_VARIABLE: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
/// Spins before a candle pool thread parks: enough to catch the next op of a tight sequence.
const CANDLE_SPIN_LIMIT: &str = "100";

/// Makes idle pool threads sleep soon instead of spinning, unless the user set the limit. Call
/// first thing in `main`, before any other thread exists (it sets an environment variable).
pub fn park_idle_threads() {
    if std::env::var_os(CANDLE_SPIN_VARIABLE).is_none() {
        std::env::set_var(CANDLE_SPIN_VARIABLE, CANDLE_SPIN_LIMIT);
    }
}
