//! The global allocator for the binaries and benchmarks.
//!
//! A training step allocates and frees gigabytes of same-sized activation and gradient buffers.
//! glibc serves each large one with a fresh `mmap`, so every step page-faults and the kernel
//! zeroes all of it again (≈ 1.2 M page faults per ResNet-18 step, `scripts/PERF.md`). mimalloc
//! keeps freed memory for reuse, provided it is told not to purge (give back) idle pages: with
//! its default 10 ms purge delay, the pages freed between a layer's forward and its backward are
//! returned and faulted in again.
//!
//! Binaries declare `#[global_allocator] static GLOBAL: byol_core::allocator::Allocator =
//! byol_core::allocator::Allocator;` and call [`keep_freed_memory`] first thing in `main`.

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (the vendored C sources of
/// libmimalloc-sys 0.1.49); other major versions number their options differently.
const V3_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed pages to the OS (purge delay −1). A no-op unless the
/// linked mimalloc is v3, whose option numbering [`V3_PURGE_DELAY`] follows; returns whether it
/// applied. Harmless when mimalloc is not the global allocator (it only sets an option).
pub fn keep_freed_memory() -> bool {
    // SAFETY: both calls take plain integers and only read or write mimalloc's option table.
    let version = unsafe { libmimalloc_sys::mi_version() };
    // major·10000 + minor·100 + patch (30302 for 3.3.2).
    if !(30000..40000).contains(&version) {
        return false;
    }
    unsafe { libmimalloc_sys::mi_option_set(V3_PURGE_DELAY, -1) };
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_is_switched_off_on_mimalloc_v3() {
        assert!(super::keep_freed_memory());
        // SAFETY: reads mimalloc's option table.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(super::V3_PURGE_DELAY) },
            -1
        );
    }
}
