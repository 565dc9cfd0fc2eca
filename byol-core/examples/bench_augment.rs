//! Throughput of the BYOL two-view pipeline on one thread, decode included, over a folder of
//! JPEGs (see `scripts/bench-augment`). Prints per-step timings (per CPU second of
//! this thread, robust to a busy machine) and, last, `ours <img/s>`.
//!
//! Usage: bench_augment DIR [--size 224] [--min-secs 3]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use byol_core::data::augment::{AugmentConfig, BlurParams, TwoViewAugmenter, ViewParams};
use byol_core::data::decode::decode_bytes;
use byol_core::data::ColorMode;
use byol_core::data::Image;

/// The project's own decoder, so the benchmark measures what training runs.
fn decode(bytes: &[u8]) -> anyhow::Result<Image> {
    Ok(decode_bytes(
        bytes,
        std::path::Path::new("<bench>"),
        ColorMode::Rgb,
    )?)
}

fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

/// Runs `f` over the inputs until `min` of CPU time has passed (at least one full round);
/// returns items per CPU second and items per wall second.
fn rates(
    n: usize,
    min: Duration,
    mut f: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let wall = Instant::now();
    let cpu0 = cpu_secs();
    let cpu = || match (cpu0, cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed().as_secs_f64(),
    };
    let mut done = 0usize;
    while done < n || cpu() < min.as_secs_f64() {
        f(done % n)?;
        done += 1;
    }
    Ok((
        done as f64 / cpu(),
        done as f64 / wall.elapsed().as_secs_f64(),
    ))
}

fn rate(
    n: usize,
    min: Duration,
    f: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    Ok(rates(n, min, f)?.0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut size = 224usize;
    let mut min_secs = 3.0f64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => {
                size = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--size needs a value"))?
                    .parse()?
            }
            "--min-secs" => {
                min_secs = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--min-secs needs a value"))?
                    .parse()?
            }
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir =
        dir.ok_or_else(|| anyhow::anyhow!("usage: bench_augment DIR [--size S] [--min-secs T]"))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "jpeg"))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "no .jpg files in {}", dir.display());
    let files: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let n = files.len();
    let min = Duration::from_secs_f64(min_secs);

    let cfg = AugmentConfig::byol_imagenet(size);
    let aug = TwoViewAugmenter::new(cfg.clone())?;
    let mut v1 = vec![0.0f32; aug.view_len()];
    let mut v2 = vec![0.0f32; aug.view_len()];
    let images: Vec<Image> = files
        .iter()
        .map(|b| decode(b))
        .collect::<anyhow::Result<_>>()?;

    // Per-step costs, for finding what limits the speed.
    let dec = rate(n, min / 3, |i| decode(&files[i]).map(|_| ()))?;
    println!("step decode            {:8.3} ms/img", 1e3 / dec);
    let mut step = |name: &str, tweak: &dyn Fn(&mut ViewParams)| -> anyhow::Result<()> {
        let r = rate(n, min / 3, |i| {
            let img = &images[i];
            let mut p = aug.sample_params(
                0,
                img.width,
                img.height,
                &mut byol_core::data::augment::view_rng(1, 0, i as u64, 0),
            )?;
            tweak(&mut p);
            aug.apply_params(img, &p, &mut v1)?;
            Ok(())
        })?;
        println!("step {name:<17} {:8.3} ms/view", 1e3 / r);
        Ok(())
    };
    let plain = |p: &mut ViewParams| {
        p.jitter = None;
        p.grayscale = false;
        p.blur = None;
        p.solarize = None;
    };
    step("crop+resize+norm", &plain)?;
    step("+jitter(forced)", &|p: &mut ViewParams| {
        let j = p.jitter;
        plain(p);
        p.jitter = j.or_else(|| {
            let mut rng = byol_core::data::augment::view_rng(9, 9, 9, 0);
            loop {
                if let Some(j) = aug
                    .sample_params(0, 500, 375, &mut rng)
                    .ok()
                    .and_then(|q| q.jitter)
                {
                    return Some(j);
                }
            }
        });
    })?;
    step("+blur(sigma 2)", &|p: &mut ViewParams| {
        plain(p);
        p.blur = Some(BlurParams {
            sigma: 2.0,
            kernel_size: 23,
        });
    })?;
    let views = rate(n, min / 2, |i| {
        aug.apply_pair(&images[i], 1, 0, i as u64, &mut v1, &mut v2)
            .map_err(Into::into)
    })?;
    println!("step two views         {:8.3} ms/img", 1e3 / views);

    let (total, wall) = rates(n, min, |i| {
        let img = decode(&files[i])?;
        aug.apply_pair(&img, 1, 0, i as u64, &mut v1, &mut v2)?;
        Ok(())
    })?;
    println!("ours-wall {wall:.1}");
    println!("ours {total:.1}");
    Ok(())
}
