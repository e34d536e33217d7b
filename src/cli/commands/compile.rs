//! `dfc compile`: partition a UNet into per-GPU band graphs and write a plan folder.
//!
//! `dfc compile MODEL --gpus N [--bands H1,H2,… | --weights W1,W2,…] [--batch B --height H
//! --width W --dim NAME=V …] [--mode sync|displaced|naive] [--warmup K]
//! [--gn corrected|stale|sync|separate] [--split-batch] [--dump-after PASS] [--timings] -o PLAN`.
//! Any GPU count works up to the latent rows over the model's row step (`2^(levels−1)`): the
//! rows are spread as evenly as the step allows, or set by hand (`--bands`, latent rows per
//! band), or sized by relative GPU speed (`--weights`).
//! Sizes are those of the whole batch and image (latent elements); with `--split-batch` each
//! CFG group runs half the batch on N/2 GPUs. `--dump-after PASS` prints the IR after that pass
//! of the `compile` or `compile-band` pipeline (the latter for the first band; after
//! `partition`, with every node's layouts) and writes nothing.

use std::path::PathBuf;

use anyhow::Result;

use super::specialize::SizeArgs;
use crate::passes::BandRequest;
use crate::passes::driver::{CompileOptions, compile};
use crate::plan::{GnMode, Mode};

/// How each group's image is cut into bands (default: as evenly as the model allows).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BandArgs {
    /// Latent rows of each band, top to bottom (e.g. 44,44,40); one per GPU of a group.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ROWS,…",
        conflicts_with = "weights"
    )]
    pub bands: Option<Vec<i64>>,
    /// Relative speed of each GPU of a group (e.g. 1,1,0.8): bands sized in proportion.
    #[arg(long, value_delimiter = ',', value_name = "W,…")]
    pub weights: Option<Vec<f64>>,
}

impl BandArgs {
    /// The band request, when one was given.
    pub fn request(&self) -> Option<BandRequest> {
        match (&self.bands, &self.weights) {
            (Some(h), _) => Some(BandRequest::Heights(h.clone())),
            (None, Some(w)) => Some(BandRequest::Weights(w.clone())),
            (None, None) => None,
        }
    }
}

/// Arguments of `dfc compile`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ONNX UNet to partition.
    pub model: PathBuf,
    /// Number of GPUs (ranks).
    #[arg(long)]
    pub gpus: usize,
    #[command(flatten)]
    pub bands: BandArgs,
    #[command(flatten)]
    pub sizes: SizeArgs,
    /// How stale exchanged context may be.
    #[arg(long, value_enum, default_value = "displaced")]
    pub mode: Mode,
    /// Synchronous steps after step 0 in displaced mode.
    #[arg(long, default_value_t = 4)]
    pub warmup: u32,
    /// GroupNorm statistics in displaced mode's stale steps (the paper's ablation).
    #[arg(long, value_enum, default_value = "corrected")]
    pub gn: GnMode,
    /// Put the two classifier-free-guidance halves of the batch on two groups of GPUs.
    #[arg(long)]
    pub split_batch: bool,
    /// Print the IR after this pass and stop (nothing is written).
    #[arg(long, value_name = "PASS")]
    pub dump_after: Option<String>,
    /// Print how long each pass took.
    #[arg(long)]
    pub timings: bool,
    /// The plan folder to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let opts = CompileOptions {
        model: args.model.clone(),
        output: args.output.clone(),
        gpus: args.gpus,
        bands: args.bands.request(),
        sizes: args.sizes.options()?,
        mode: args.mode,
        warmup: args.warmup,
        gn: args.gn,
        split_batch: args.split_batch,
        dump_after: args.dump_after.clone(),
    };
    let report = compile(&opts)?;
    let mut warnings = report.warnings.clone();
    warnings.dedup();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if let Some((pass, dump)) = &report.dump {
        println!("--- graph after `{pass}` ---");
        print!("{dump}");
    }
    if args.timings {
        for t in &report.timings {
            println!(
                "{:>16} {:>9.3} ms{}",
                t.pass,
                t.duration.as_secs_f64() * 1e3,
                if t.changed { "" } else { "  (no change)" }
            );
        }
        if report.plan.is_some() {
            println!("{:>16} {:>9.3} ms", "emit", report.emit_seconds * 1e3);
        }
    }
    if let Some(plan) = &report.plan {
        let max = plan.bytes_per_step.iter().max().copied().unwrap_or(0);
        let count = |k| plan.exchanges.iter().filter(|e| e.kind == k).count();
        use crate::plan::ExchangeKind::*;
        println!(
            "compiled {} for {} GPU(s) ({:?}{}, bands of {} latent rows) -> {}: {} exchanges ({} halo, {} stats, {} gather), at most {} bytes received per rank per step",
            args.model.display(),
            plan.world_size,
            plan.mode,
            if plan.split_batch {
                ", split batch"
            } else {
                ""
            },
            plan.bands,
            args.output.display(),
            plan.exchanges.len(),
            count(Halo),
            count(Stats),
            count(Gather),
            max
        );
    }
    Ok(())
}
