//! Gathering every rank's rows on rank 0 in pieces a collective engine accepts (MPI counts are
//! 32-bit: ImageNet's 1.28 M × 2048 features would not fit one call).

use super::collective::Collective;
use crate::Result;

/// Floats each rank sends per gather call.
const PIECE_FLOATS: usize = 1 << 26;

/// Rank 0 receives every rank's `values` (lengths may differ), in rank order; the others
/// `None`. Lengths are shared first, then as many calls as the longest needs.
pub fn gather_all(collective: &dyn Collective, values: &[f32]) -> Result<Option<Vec<Vec<f32>>>> {
    let world = collective.world_size();
    let mut lengths = vec![0f64; world];
    lengths[collective.rank()] = values.len() as f64;
    collective.all_reduce_f64(&mut lengths)?;
    let longest = lengths.iter().fold(0f64, |a, &b| a.max(b)) as usize;
    let mut parts: Vec<Vec<f32>> = vec![Vec::new(); world];
    let pieces = longest.div_ceil(PIECE_FLOATS).max(1);
    for piece in 0..pieces {
        let start = (piece * PIECE_FLOATS).min(values.len());
        let end = ((piece + 1) * PIECE_FLOATS).min(values.len());
        if let Some(received) = collective.gather_f32(&values[start..end])? {
            for (part, got) in parts.iter_mut().zip(received) {
                part.extend(got);
            }
        }
    }
    Ok((collective.rank() == 0).then_some(parts))
}
