//! Sums over long f32 slices that vectorise: the compiler keeps floating-point additions in
//! order, so a plain `iter().sum()` (f32 or f64) runs one element at a time. Here each of 16
//! lanes keeps its own f32 partial sum over a block of at most [`BLOCK`] elements, and the
//! blocks add up in f64, so the result stays as accurate as an f64 sum for the sizes BatchNorm
//! meets (a lane adds at most 64 values in f32).

/// Values summed side by side.
const LANES: usize = 16;
/// Elements per block whose lane sums are f32 before they join the f64 total.
const BLOCK: usize = 1024;

/// The blocking shared by the sums below: `chunk(i, lanes)` adds elements `i..i + LANES` into
/// the lanes, `tail(i)` returns element `i`'s terms (the last `< LANES` of a block).
#[inline(always)]
fn blocked<const O: usize>(
    len: usize,
    mut chunk: impl FnMut(usize, &mut [[f32; LANES]; O]),
    mut tail: impl FnMut(usize) -> [f32; O],
) -> [f64; O] {
    let mut total = [0f64; O];
    let mut start = 0;
    while start < len {
        let end = (start + BLOCK).min(len);
        let mut lanes = [[0f32; LANES]; O];
        let whole = start + (end - start) / LANES * LANES;
        for i in (start..whole).step_by(LANES) {
            chunk(i, &mut lanes);
        }
        for i in whole..end {
            for (t, v) in total.iter_mut().zip(tail(i)) {
                *t += v as f64;
            }
        }
        for (t, lane) in total.iter_mut().zip(&lanes) {
            *t += lane.iter().map(|&v| v as f64).sum::<f64>();
        }
        start = end;
    }
    total
}

/// `LANES` values of `p` from `i`.
#[inline(always)]
fn at(p: &[f32], i: usize) -> &[f32; LANES] {
    p[i..i + LANES].try_into().expect("LANES values")
}

/// `Σ f(p[i])`.
#[inline(always)]
pub(crate) fn sum_of(p: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let [sum] = blocked(
        p.len(),
        |i, [lanes]| {
            let c = at(p, i);
            for k in 0..LANES {
                lanes[k] += f(c[k]);
            }
        },
        |i| [f(p[i])],
    );
    sum
}

/// `(Σ f(a[i], b[i]).0, Σ f(…).1)` over two slices of one length.
#[inline(always)]
pub(crate) fn sums_of2((a, b): (&[f32], &[f32]), f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    assert!(a.len() == b.len(), "slices of one length");
    let [first, second] = blocked(
        a.len(),
        |i, [l0, l1]| {
            let (ca, cb) = (at(a, i), at(b, i));
            for k in 0..LANES {
                let (u, v) = f(ca[k], cb[k]);
                l0[k] += u;
                l1[k] += v;
            }
        },
        |i| {
            let (u, v) = f(a[i], b[i]);
            [u, v]
        },
    );
    (first, second)
}

/// `(Σ f(a[i], b[i], c[i]).0, Σ f(…).1)` over three slices of one length.
#[inline(always)]
pub(crate) fn sums_of3(
    (a, b, c): (&[f32], &[f32], &[f32]),
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f64, f64) {
    assert!(
        a.len() == b.len() && b.len() == c.len(),
        "slices of one length"
    );
    let [first, second] = blocked(
        a.len(),
        |i, [l0, l1]| {
            let (ca, cb, cc) = (at(a, i), at(b, i), at(c, i));
            for k in 0..LANES {
                let (u, v) = f(ca[k], cb[k], cc[k]);
                l0[k] += u;
                l1[k] += v;
            }
        },
        |i| {
            let (u, v) = f(a[i], b[i], c[i]);
            [u, v]
        },
    );
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_equal_f64_sums_of_every_length() {
        for len in [0, 1, 15, 16, 17, 1023, 1024, 1025, 5000] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
                .collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
            let s = sum_of(&a, |x| x);
            let (t, p) = sums_of3((&a, &b, &a), |x, y, _| (x, x * y));
            assert_eq!(sums_of2((&a, &b), |x, y| (x, x * y)), (t, p));
            let want_s: f64 = a.iter().map(|&x| x as f64).sum();
            let want_p: f64 = a.iter().zip(&b).map(|(&x, &y)| (x * y) as f64).sum();
            assert!((s - want_s).abs() < 1e-4, "{len}: {s} vs {want_s}");
            assert_eq!(s, t);
            assert!((p - want_p).abs() < 1e-3, "{len}: {p} vs {want_p}");
        }
    }
}
