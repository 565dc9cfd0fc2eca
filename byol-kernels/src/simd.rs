//! Run-time choice of the vector instructions for the elementwise kernels: the shipped binaries
//! carry no `target-cpu` flag (they must run on any x86-64), so a loop LLVM vectorises is
//! compiled for SSE2 unless it runs inside a function compiled for more.

/// Runs `f` inside a copy compiled for AVX2 + FMA where the running CPU has them, else as it is.
/// `f` and what it calls are inlined into that copy, so their loops vectorise 8 wide (results are
/// the same: Rust never fuses a multiply and an add on its own). Call it inside each parallel
/// task: a rayon worker runs its task outside the caller's copy. A closure that does more than
/// call one function (a `match` over kernels, several calls) may be compiled on its own, for
/// SSE2, and only called from here: mark it `#[inline(always)]` (the blocked BatchNorm kernels
/// ran without a `ymm` register until they were, `scripts/PERF.md` session 21).
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the running CPU has the features `avx2` is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}
