//! Which part of a global batch each rank takes.

use std::ops::Range;

/// The contiguous part of `0..len` that `rank` of `world` takes: balanced, the first
/// `len % world` ranks one item more, concatenated in rank order they give `0..len`.
pub fn rank_range(len: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start.min(len)..(start + size).min(len)
}

#[cfg(test)]
mod tests {
    use super::rank_range;

    #[test]
    fn ranges_tile_the_batch_in_rank_order() {
        for len in 0..20 {
            for world in 1..6 {
                let mut next = 0;
                for rank in 0..world {
                    let r = rank_range(len, rank, world);
                    assert_eq!(r.start, next, "len {len} world {world} rank {rank}");
                    assert!(r.len() <= len.div_ceil(world));
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
