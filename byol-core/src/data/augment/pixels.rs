//! Pixel kernels of the augmentation pipeline: colour ops on f32 rows, the separable Gaussian
//! blur and the final solarize + normalise write.
//!
//! Every hot loop is written as plain slice arithmetic that LLVM vectorises, and each pass is
//! compiled twice: baseline x86-64 (SSE2) and AVX2+FMA, picked at run time, because the shipped
//! binaries carry no `target-cpu` flag. No `mul_add` here: without the FMA feature it would call
//! the slow libm routine in the baseline copy.

/// torchvision's `rgb_to_grayscale` weights (ITU-R 601-2 luma as rounded by torchvision).
pub const GREY_R: f32 = 0.2989;
pub const GREY_G: f32 = 0.587;
pub const GREY_B: f32 = 0.114;

/// Compiles `$body` twice (baseline and AVX2+FMA) and dispatches on the running CPU
/// (`byol_kernels::simd::with_avx2`).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            byol_kernels::simd::with_avx2(|| inner($($arg),*))
        }
    };
}

/// One colour operation with its sampled factor, in torchvision `ColorJitter` semantics on
/// [0, 1] floats (every op clamps to [0, 1], as torchvision's `_blend` does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ColorOp {
    /// `x * f`
    Brightness(f32),
    /// `f * x + (1 - f) * mean`, `mean` = mean of the greyscale image before this op.
    Contrast { factor: f32, mean: f32 },
    /// `f * x + (1 - f) * grey(x)`
    Saturation(f32),
    /// Hue rotation by `shift` turns (HSV space).
    Hue(f32),
    /// Collapse to one grey plane (weights [`GREY_R`], [`GREY_G`], [`GREY_B`]).
    Grey,
}

/// `max` without `f32::max`'s NaN handling (our values are never NaN), so it is one `vmaxps`.
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `min` without NaN handling, one `vminps`.
#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn clamp01(x: f32) -> f32 {
    fmin(fmax(x, 0.0), 1.0)
}

#[inline(always)]
fn blend_row(x: &mut [f32], f: f32, other: f32) {
    let c = (1.0 - f) * other;
    for v in x.iter_mut() {
        *v = clamp01(f * *v + c);
    }
}

#[inline(always)]
fn saturation_rows(r: &mut [f32], g: &mut [f32], b: &mut [f32], f: f32) {
    let n = r.len().min(g.len()).min(b.len());
    let (r, g, b) = (&mut r[..n], &mut g[..n], &mut b[..n]);
    let c = 1.0 - f;
    for i in 0..n {
        let grey = c * (GREY_R * r[i] + GREY_G * g[i] + GREY_B * b[i]);
        r[i] = clamp01(f * r[i] + grey);
        g[i] = clamp01(f * g[i] + grey);
        b[i] = clamp01(f * b[i] + grey);
    }
}

/// `(k mod 6)` for `k` in [0, 12), then the hexcone ramp `clamp(min(k, 4 - k), 0, 1)`.
#[inline(always)]
fn hue_ramp(k: f32) -> f32 {
    let k = if k >= 6.0 { k - 6.0 } else { k };
    clamp01(fmin(k, 4.0 - k))
}

/// torchvision's `adjust_hue`: RGB -> HSV, `h = (h + shift) mod 1`, HSV -> RGB. The HSV -> RGB
/// step uses the closed form `c = v - v*s*ramp((n + 6h) mod 6)` (n = 5, 3, 1 for R, G, B), which
/// equals torchvision's sector table but has no branches, so it vectorises. v and v*s are the max
/// and the max - min of the pixel, which a hue rotation keeps.
#[inline(always)]
fn hue_rows(r: &mut [f32], g: &mut [f32], b: &mut [f32], shift: f32) {
    let n = r.len().min(g.len()).min(b.len());
    let (r, g, b) = (&mut r[..n], &mut g[..n], &mut b[..n]);
    // Work in sixths of a turn; shift in (-0.5, 0.5) so h6 + 6*shift + 6 stays positive.
    let shift6 = 6.0 * shift + 6.0;
    for i in 0..n {
        let (rv, gv, bv) = (r[i], g[i], b[i]);
        let maxc = fmax(fmax(rv, gv), bv);
        let minc = fmin(fmin(rv, gv), bv);
        let cr = maxc - minc;
        let inv = 1.0 / if cr == 0.0 { 1.0 } else { cr };
        let is_r = maxc == rv;
        let is_g = maxc == gv && !is_r;
        let h6 = if is_r {
            (gv - bv) * inv
        } else if is_g {
            2.0 + (bv - rv) * inv
        } else {
            4.0 + (rv - gv) * inv
        };
        // h6 in [-1, 5]; bring (h6 + 6 shift) into [0, 6).
        let mut h = h6 + shift6; // in (-1 + 3, 5 + 9) = (2, 14)
        h = if h >= 12.0 { h - 12.0 } else { h };
        h = if h >= 6.0 { h - 6.0 } else { h };
        r[i] = maxc - cr * hue_ramp(h + 5.0);
        g[i] = maxc - cr * hue_ramp(h + 3.0);
        b[i] = maxc - cr * hue_ramp(h + 1.0);
    }
}

#[inline(always)]
fn grey_rows(r: &mut [f32], g: &[f32], b: &[f32]) {
    let n = r.len().min(g.len()).min(b.len());
    let (r, g, b) = (&mut r[..n], &g[..n], &b[..n]);
    for i in 0..n {
        r[i] = GREY_R * r[i] + GREY_G * g[i] + GREY_B * b[i];
    }
}

#[inline(always)]
fn grey_sum(r: &[f32], g: &[f32], b: &[f32]) -> f32 {
    let n = r.len().min(g.len()).min(b.len());
    let (r, g, b) = (&r[..n], &g[..n], &b[..n]);
    // Eight partial sums so the reduction vectorises without reassociation licence.
    let mut acc = [0.0f32; 8];
    let mut i = 0;
    while i + 8 <= n {
        for l in 0..8 {
            acc[l] += GREY_R * r[i + l] + GREY_G * g[i + l] + GREY_B * b[i + l];
        }
        i += 8;
    }
    let mut s: f32 = acc.iter().sum();
    while i < n {
        s += GREY_R * r[i] + GREY_G * g[i] + GREY_B * b[i];
        i += 1;
    }
    s
}

#[inline(always)]
fn plain_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Splits a planar buffer into its first three planes of `len` values each.
#[inline(always)]
fn three_planes(planes: &mut [f32], len: usize) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let (r, rest) = planes.split_at_mut(len);
    let (g, rest) = rest.split_at_mut(len);
    let b = &mut rest[..len];
    (r, g, b)
}

multiversion! {
    /// Deinterleaves the resized u8 HWC image (`channels` 1 or 3, `s` x `s`) into planes of
    /// [0, 1] floats, mirroring columns when `flip` is set.
    pub(crate) fn load_planes(src: &[u8], channels: usize, s: usize, flip: bool, planes: &mut [f32]) {
        const INV: f32 = 1.0 / 255.0;
        let len = s * s;
        if channels == 1 {
            for (y, dst) in planes[..len].chunks_exact_mut(s).enumerate() {
                let row = &src[y * s..(y + 1) * s];
                if flip {
                    for (d, &v) in dst.iter_mut().zip(row.iter().rev()) {
                        *d = v as f32 * INV;
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = v as f32 * INV;
                    }
                }
            }
            return;
        }
        let (r, g, b) = three_planes(planes, len);
        for y in 0..s {
            let row = &src[y * s * 3..(y + 1) * s * 3];
            let (rr, gr, br) = (
                &mut r[y * s..(y + 1) * s],
                &mut g[y * s..(y + 1) * s],
                &mut b[y * s..(y + 1) * s],
            );
            if flip {
                for (x, px) in row.chunks_exact(3).rev().enumerate() {
                    rr[x] = px[0] as f32 * INV;
                    gr[x] = px[1] as f32 * INV;
                    br[x] = px[2] as f32 * INV;
                }
            } else {
                for (x, px) in row.chunks_exact(3).enumerate() {
                    rr[x] = px[0] as f32 * INV;
                    gr[x] = px[1] as f32 * INV;
                    br[x] = px[2] as f32 * INV;
                }
            }
        }
    }
}

multiversion! {
    /// Applies `ops` in order to the planes (`nplanes` 1 or 3 of `len` values), row block by
    /// row block so the data stays in L1 between ops. Returns the sum of the greyscale image
    /// after the ops (the contrast op's mean needs it) when `want_sum` is set. A `Grey` op must
    /// be last: it leaves the grey image in plane 0.
    pub(crate) fn color_pass(planes: &mut [f32], nplanes: usize, len: usize, ops: &[ColorOp], want_sum: bool) -> f64 {
        const BLOCK: usize = 256;
        let mut total = 0.0f64;
        if nplanes == 1 {
            for x in planes[..len].chunks_mut(BLOCK) {
                for op in ops {
                    match *op {
                        ColorOp::Brightness(f) => blend_row(x, f, 0.0),
                        ColorOp::Contrast { factor, mean } => blend_row(x, factor, mean),
                        // Saturation, hue and greyscale are identities on a grey image, as in
                        // torchvision.
                        ColorOp::Saturation(_) | ColorOp::Hue(_) | ColorOp::Grey => {}
                    }
                }
                if want_sum {
                    total += plain_sum(x) as f64;
                }
            }
            return total;
        }
        let (r, g, b) = three_planes(planes, len);
        let mut start = 0;
        while start < len {
            let end = (start + BLOCK).min(len);
            let (r, g, b) = (&mut r[start..end], &mut g[start..end], &mut b[start..end]);
            let mut grey = false;
            for op in ops {
                match *op {
                    ColorOp::Brightness(f) => {
                        blend_row(r, f, 0.0);
                        blend_row(g, f, 0.0);
                        blend_row(b, f, 0.0);
                    }
                    ColorOp::Contrast { factor, mean } => {
                        blend_row(r, factor, mean);
                        blend_row(g, factor, mean);
                        blend_row(b, factor, mean);
                    }
                    ColorOp::Saturation(f) => saturation_rows(r, g, b, f),
                    ColorOp::Hue(h) => hue_rows(r, g, b, h),
                    ColorOp::Grey => {
                        grey_rows(r, g, b);
                        grey = true;
                    }
                }
            }
            if want_sum {
                total += if grey { plain_sum(r) } else { grey_sum(r, g, b) } as f64;
            }
            start = end;
        }
        total
    }
}

/// Index into `0..n` of position `i` of the signal extended by mirror reflection without
/// repeating the edge (`reflect` padding of torch / numpy), for any `i`.
#[inline(always)]
pub(crate) fn reflect(i: isize, n: usize) -> usize {
    let last = n as isize - 1;
    // The common case (less than one image side outside) without a division.
    if (0..=last).contains(&i) {
        return i as usize;
    }
    if i < 0 && -i <= last {
        return (-i) as usize;
    }
    if i > last && i <= 2 * last {
        return (2 * last - i) as usize;
    }
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m < n as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

/// The 1-D Gaussian of torchvision's `_get_gaussian_kernel1d` (taps at `-r..=r`, `r =
/// (kernel_size - 1) / 2`), without the taps below 1e-5 of the peak, renormalised. Those tails
/// change the result by < 1e-5 but cost most of the time, and for small sigma they are subnormal
/// floats, which are ~10x slower to multiply.
pub fn gaussian_taps(sigma: f32, kernel_size: usize) -> Vec<f32> {
    let half = (kernel_size.max(1) - 1) / 2;
    let sigma = sigma as f64;
    let w = |x: usize| (-0.5 * (x as f64 / sigma).powi(2)).exp();
    let mut r = 0;
    while r < half && w(r + 1) >= 1e-5 {
        r += 1;
    }
    let raw: Vec<f64> = (0..=2 * r)
        .map(|i| w((i as isize - r as isize).unsigned_abs()))
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| (v / sum) as f32).collect()
}

/// Final per-row write: optional solarize (`x >= thr -> 1 - x`), then `x * scale + bias`
/// (`scale = 1/std`, `bias = -mean/std`) into every destination row of `dsts`.
#[inline(always)]
fn finish_row(src: &[f32], solarize: Option<f32>, maps: &[(f32, f32)], dsts: &mut [&mut [f32]]) {
    for (dst, &(scale, bias)) in dsts.iter_mut().zip(maps) {
        let n = src.len().min(dst.len());
        let (src, dst) = (&src[..n], &mut dst[..n]);
        match solarize {
            Some(thr) => {
                for i in 0..n {
                    let v = src[i];
                    let v = if v >= thr { 1.0 - v } else { v };
                    dst[i] = v * scale + bias;
                }
            }
            None => {
                for i in 0..n {
                    dst[i] = src[i] * scale + bias;
                }
            }
        }
    }
}

/// Row `y` of each output plane listed in `targets` (at most 3), in `targets` order.
#[inline(always)]
fn out_rows<'a>(
    out: &'a mut [f32],
    s: usize,
    y: usize,
    targets: &[usize],
) -> ([&'a mut [f32]; 3], usize) {
    let len = s * s;
    let mut rows: [&'a mut [f32]; 3] = [&mut [], &mut [], &mut []];
    let mut n = 0;
    for (c, plane) in out.chunks_exact_mut(len).enumerate() {
        if n < 3 && targets.contains(&c) {
            rows[n] = &mut plane[y * s..(y + 1) * s];
            n += 1;
        }
    }
    (rows, n)
}

multiversion! {
    /// Writes one working plane (`s` x `s`, [0, 1]) to the output channels `targets` with
    /// solarize and normalisation, blurring it first with the separable kernel `taps` (reflect
    /// padding, as torchvision) when there are more than one. `tmp` and `row` are scratch.
    pub(crate) fn finish_plane(
        plane: &[f32],
        s: usize,
        taps: &[f32],
        solarize: Option<f32>,
        maps: &[(f32, f32)],
        targets: &[usize],
        out: &mut [f32],
        tmp: &mut Vec<f32>,
        row: &mut Vec<f32>,
    ) {
        let len = s * s;
        if taps.len() <= 1 {
            for y in 0..s {
                let (mut dsts, n) = out_rows(out, s, y, targets);
                finish_row(&plane[y * s..(y + 1) * s], solarize, maps, &mut dsts[..n]);
            }
            return;
        }
        let r = taps.len() / 2;
        tmp.resize(len, 0.0);
        row.resize(s + 2 * r, 0.0);
        // Horizontal pass: reflect-pad each row into `row`, then convolve.
        let hoffsets: Vec<usize> = (0..taps.len()).collect();
        for y in 0..s {
            let src = &plane[y * s..(y + 1) * s];
            let padded = &mut row[..s + 2 * r];
            padded[r..r + s].copy_from_slice(src);
            for i in (0..r).chain(r + s..s + 2 * r) {
                padded[i] = src[reflect(i as isize - r as isize, s)];
            }
            convolve(padded, &hoffsets, taps, &mut tmp[y * s..(y + 1) * s]);
        }
        // Vertical pass into `row`, then the finishing write of that row.
        let acc = &mut row[..s];
        let mut offsets = vec![0usize; taps.len()];
        for y in 0..s {
            for (j, o) in offsets.iter_mut().enumerate() {
                *o = reflect(y as isize + j as isize - r as isize, s) * s;
            }
            convolve(tmp, &offsets, taps, acc);
            let (mut dsts, n) = out_rows(out, s, y, targets);
            finish_row(acc, solarize, maps, &mut dsts[..n]);
        }
    }
}

/// `dst[x..x+B] = sum_k taps[k] * src[offsets[k] + x..][..B]`. B independent accumulators
/// (B/8 AVX registers) hide the add latency; 16 would leave the loop latency bound.
#[inline(always)]
fn conv_block<const B: usize>(
    src: &[f32],
    offsets: &[usize],
    taps: &[f32],
    x: usize,
    dst: &mut [f32],
) {
    let mut acc = [0.0f32; B];
    for (&o, &w) in offsets.iter().zip(taps) {
        let s = &src[o + x..o + x + B];
        for l in 0..B {
            acc[l] += w * s[l];
        }
    }
    dst[x..x + B].copy_from_slice(&acc);
}

/// `dst[x] = sum_k taps[k] * src[offsets[k] + x]` for every `x` of `dst`.
#[inline(always)]
fn convolve(src: &[f32], offsets: &[usize], taps: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = dst.len();
        let in_bounds = offsets.len() == taps.len()
            && offsets
                .iter()
                .all(|&o| o.checked_add(n).is_some_and(|e| e <= src.len()));
        if in_bounds
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, and every `offsets[k] + x` with `x < n` is inside
            // `src` (checked just above).
            unsafe { convolve_avx2(src, offsets, taps, dst) };
            return;
        }
    }
    let n = dst.len();
    let mut x = 0;
    while x + 64 <= n {
        conv_block::<64>(src, offsets, taps, x, dst);
        x += 64;
    }
    while x + 16 <= n {
        conv_block::<16>(src, offsets, taps, x, dst);
        x += 16;
    }
    while x < n {
        let mut a = 0.0;
        for (&o, &w) in offsets.iter().zip(taps) {
            a += w * src[o + x];
        }
        dst[x] = a;
        x += 1;
    }
}

/// [`convolve`] with explicit AVX2 FMAs: eight accumulators (64 outputs) in flight cover the
/// FMA latency on both ports, which the auto-vectorised loop did not manage.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `offsets.len() == taps.len()`, and
/// `offsets[k] + dst.len() <= src.len()` for every `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_avx2(src: &[f32], offsets: &[usize], taps: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let sp = src.as_ptr();
    let dp = dst.as_mut_ptr();
    let mut x = 0;
    // SAFETY (all loads and stores below): `x + 64 <= n` (or `x + 8 <= n`, `x < n`) and the
    // caller's bound `offsets[k] + n <= src.len()` keep every access inside `src` and `dst`.
    unsafe {
        while x + 64 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (&o, &w) in offsets.iter().zip(taps) {
                let wv = _mm256_set1_ps(w);
                let p = sp.add(o + x);
                for (l, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.add(8 * l)), *a);
                }
            }
            for (l, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(dp.add(x + 8 * l), *a);
            }
            x += 64;
        }
        while x + 8 <= n {
            let mut a = _mm256_setzero_ps();
            for (&o, &w) in offsets.iter().zip(taps) {
                a = _mm256_fmadd_ps(_mm256_set1_ps(w), _mm256_loadu_ps(sp.add(o + x)), a);
            }
            _mm256_storeu_ps(dp.add(x), a);
            x += 8;
        }
        while x < n {
            let mut a = 0.0;
            for (&o, &w) in offsets.iter().zip(taps) {
                a += w * *sp.add(o + x);
            }
            *dp.add(x) = a;
            x += 1;
        }
    }
}
