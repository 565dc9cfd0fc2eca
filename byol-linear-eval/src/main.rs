//! `byol-linear-eval`: frozen-encoder evaluation. Only the command line exists so far; the
//! protocols live in `byol_core::eval` (logistic L2 path, kNN, metrics) and are wired up next.

use anyhow::{bail, Result};
use clap::Parser;

/// Evaluates a pretrained encoder with the paper's protocols (not wired up yet: see the README).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Encoder weights (safetensors in torchvision naming), or `none` for raw pixels.
    #[arg(long)]
    weights: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    bail!(
        "byol-linear-eval is not implemented yet (weights: {:?}); `byol-pretrain --probe` runs the logistic probe meanwhile",
        args.weights
    )
}
