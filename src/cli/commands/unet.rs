//! `dfc unet`: one UNet evaluation through a plan on full-size inputs.
//!
//! The inputs are named as in the original model (entries that are not plan inputs are ignored,
//! so a fixture's `.io.npz` works as is); each is split per the plan, every rank runs one
//! synchronous step in lockstep, and the gathered outputs are written under the original names.
//! With `--reference`, outputs are compared with the same-named arrays of that file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::runtime::{ExecOptions, PlanExecutor, read_npz};

/// Arguments of `dfc unet`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The plan folder written by `dfc compile`.
    pub plan: PathBuf,
    /// Full-size inputs, by the original model's input names (`np.savez` format).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the gathered outputs (`.npz`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Compare the outputs with the same-named arrays of this `.npz`.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Cores shared by all ranks (0: the available cores); each rank gets
    /// max(1, threads / ranks) intra-op threads.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Evaluate this many times (one step each) and report the mean time of all but the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let inputs = read_npz(&args.inputs)?;
    let options = ExecOptions {
        threads: args.threads,
        ..ExecOptions::default()
    };
    let start = Instant::now();
    let mut exec = PlanExecutor::load(&args.plan, options)
        .with_context(|| format!("loading plan {}", args.plan.display()))?;
    let loaded = start.elapsed();
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..args.repeat {
        let start = Instant::now();
        outputs = exec
            .run_unet(&inputs)
            .with_context(|| format!("running plan {}", args.plan.display()))?;
        times.push(start.elapsed().as_secs_f64());
    }
    let plan = exec.plan();
    let steady = if times.len() > 1 {
        let rest = &times[1..];
        format!(
            ", then {:.4} s per evaluation (mean of {})",
            rest.iter().sum::<f64>() / rest.len() as f64,
            rest.len()
        )
    } else {
        String::new()
    };
    eprintln!(
        "{} ranks in {} group(s), {} intra-op thread(s) each; load {:.2} s, first evaluation {:.4} s{steady}",
        plan.world_size,
        plan.groups.len(),
        exec.threads_per_rank(),
        loaded.as_secs_f64(),
        times[0],
    );
    super::eval::report_outputs(&outputs, args.reference.as_deref(), args.output.as_deref())
}
