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
