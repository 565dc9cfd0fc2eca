//! Access to the f32 data of candle's CPU storage for the custom ops.

/// The contiguous f32 data of a CPU tensor's storage.
pub(crate) fn slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: the fast kernels need a contiguous input"),
    }
}

/// A vector of `len` values written chunk by chunk in parallel by `fill(chunk index, chunk)`
/// (chunks of `chunk` values, the last shorter), without filling it with zeros first: on a
/// full-size output that fill costs as much as the pass that overwrites it.
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub(crate) unsafe fn filled_par(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: `fill` wrote all `len` values (the caller's promise), within the capacity.
    unsafe { v.set_len(len) };
    v
}
