//! Times the logistic linear-probe protocol on features written by `scripts/bench-linear`.
//!
//! Reads `DIR/{train_x.f32, train_y.u8, test_x.f32, test_y.u8, meta.txt}` (raw little-endian;
//! meta = "n_train n_test dim classes"), writes the validation indices to `DIR/val_idx.u32` so
//! scikit-learn can use the same split, runs the protocol `--repeats` times and prints one
//! `run` line per repeat.
//!
//! ```text
//! cargo run --release -p byol-core --example bench_linear -- --dir DIR \
//!     [--lambdas 1e-6,1e-5,..] [--max-iter 100] [--tol 1e-4] [--val-fraction 0.1] [--seed 0] \
//!     [--standardize] [--repeats 3]
//! ```

use byol_core::eval::lbfgs::LbfgsOptions;
use byol_core::eval::linear_protocol::{linear_protocol, LinearProtocolOptions};
use byol_core::eval::logistic::{default_lambda_grid, LogisticOptions};
use byol_core::eval::matrix::Features;
use byol_core::eval::split::train_val_split;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(path: &Path) -> Vec<f32> {
    read(path)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// User+system CPU seconds of this process (Linux `/proc/self/stat`; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks are 100 Hz on every mainstream Linux configuration.
    f.iter().sum::<f64>() / 100.0
}

fn main() {
    let mut dir = PathBuf::from("/tmp/bench-linear-data");
    let mut opts = LinearProtocolOptions {
        logistic: LogisticOptions {
            lbfgs: LbfgsOptions::default(),
            standardize: false,
            path_patience: None,
        },
        ..Default::default()
    };
    let mut repeats = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--dir" => dir = PathBuf::from(val()),
            "--lambdas" => {
                opts.grid = val()
                    .split(',')
                    .map(|s| s.parse().expect("lambda"))
                    .collect()
            }
            "--full-grid" => opts.grid = default_lambda_grid(),
            "--max-iter" => opts.logistic.lbfgs.max_iter = val().parse().expect("max-iter"),
            "--tol" => opts.logistic.lbfgs.gtol = val().parse().expect("tol"),
            "--val-fraction" => opts.val_fraction = val().parse().expect("val-fraction"),
            "--seed" => opts.seed = val().parse().expect("seed"),
            "--repeats" => repeats = val().parse().expect("repeats"),
            "--standardize" => opts.logistic.standardize = true,
            _ => panic!("unknown argument {a}"),
        }
    }
    let meta: Vec<usize> = std::fs::read_to_string(dir.join("meta.txt"))
        .expect("meta.txt")
        .split_whitespace()
        .map(|s| s.parse().expect("meta"))
        .collect();
    let (n_train, n_test, dim, classes) = (meta[0], meta[1], meta[2], meta[3]);
    let x = f32s(&dir.join("train_x.f32"));
    let xt = f32s(&dir.join("test_x.f32"));
    let y: Vec<usize> = read(&dir.join("train_y.u8"))
        .iter()
        .map(|&v| v as usize)
        .collect();
    let yt: Vec<usize> = read(&dir.join("test_y.u8"))
        .iter()
        .map(|&v| v as usize)
        .collect();
    assert_eq!((x.len(), y.len()), (n_train * dim, n_train));
    assert_eq!((xt.len(), yt.len()), (n_test * dim, n_test));
    let (_, val) = train_val_split(n_train, opts.val_fraction, opts.seed).expect("split");
    let bytes: Vec<u8> = val.iter().flat_map(|&i| (i as u32).to_le_bytes()).collect();
    std::fs::write(dir.join("val_idx.u32"), bytes).expect("write val_idx.u32");
    println!(
        "ours: n_train={n_train} n_test={n_test} d={dim} grid={} max_iter={} tol={} threads={}",
        opts.grid.len(),
        opts.logistic.lbfgs.max_iter,
        opts.logistic.lbfgs.gtol,
        rayon::current_num_threads()
    );
    for rep in 0..repeats {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let r = linear_protocol(
            Features::new(&x, dim).unwrap(),
            &y,
            Features::new(&xt, dim).unwrap(),
            &yt,
            classes,
            &opts,
        )
        .expect("protocol");
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        if rep == 0 {
            for p in &r.path {
                println!(
                    "ours path lambda={:.3e} val_acc={:.4} iters={} evals={}",
                    p.lambda, p.val_score, p.iterations, p.evaluations
                );
            }
        }
        println!(
            "run {rep} best_lambda={:.3e} refit_iters={} refit_evals={} test_top1={:.4} cpu_s={cpu:.3} time_s={secs:.3}",
            r.best_lambda, r.model.report.iterations, r.model.report.evaluations, r.test_top1
        );
    }
}
