//! `byol-transfer`: VOC and the paper's transfer suite. Only the command line exists so far; the
//! metrics (11-point and all-point AP, mIoU) and solvers live in `byol_core::eval`.

use anyhow::{bail, Result};
use clap::Parser;

/// Transfer evaluation of a pretrained encoder (not wired up yet: see the README).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// voc, voc-svm, voc-seg or classify.
    #[arg(long)]
    task: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    bail!(
        "byol-transfer is not implemented yet (task: {:?})",
        args.task
    )
}
