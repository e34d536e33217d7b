//! Command-line front end: one module per command, the error policy in one place.
//!
//! Exit codes: 0 success, 1 user or model error (bad arguments, unreadable or unsupported
//! model, missing ONNX Runtime), 2 internal error (a bug of dfc: errors marked [`Internal`], or
//! a panic). Errors print their whole cause chain on stderr.

pub mod build;
pub mod compare;
pub mod compile;
pub mod estimate;
pub mod eval;
pub mod inspect;
pub mod launch;
pub mod passes;
pub mod run;
pub mod specialize;
pub mod triton;
pub mod unet;
pub mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use crate::error::Internal;

/// dfc: displaced patch parallelism for diffusion UNets, compiled on the ONNX graph.
#[derive(Debug, Parser)]
#[command(name = "dfc", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a model's inputs, outputs, op histogram and what partitioning cares about.
    Inspect(inspect::Args),
    /// Fix a model's dynamic sizes and fold what becomes constant.
    Specialize(specialize::Args),
    /// Run one model in ONNX Runtime (CPU) on inputs from an `.npz` file.
    Eval(eval::Args),
    /// List the compiler's passes and pipelines.
    Passes(passes::Args),
    /// Rewrite a model and check, through ONNX Runtime, that it still computes the same outputs.
    Verify(verify::Args),
    /// Partition a UNet into per-GPU band graphs and write a plan folder.
    Compile(compile::Args),
    /// Run one UNet evaluation through a plan (split in, ranks in lockstep, gathered out).
    Unet(unet::Args),
    /// Sample a latent through a plan (bands in lockstep, pointwise samplers per band).
    Run(run::Args),
    /// Predict latency, speedup and memory of plans on a GPU type and link.
    Estimate(estimate::Args),
    /// Build one TensorRT engine per rank of a plan (rank{i}.engine, recorded in plan.json).
    Build(build::Args),
    /// Sample with the original model and with patch-parallel plans from one seed; report
    /// PSNR/SSIM against the original and write the images side by side.
    Compare(compare::Args),
    /// Write a Triton Inference Server model repository that serves a plan (backend `dfc`).
    Triton(triton::Args),
    /// Start one `dfc run --backend tensorrt` process per GPU (and meet the other nodes).
    Launch(launch::Args),
    /// A rank process that makes no communicator (tests of `dfc launch`).
    #[command(hide = true)]
    RankProbe(launch::ProbeArgs),
}

/// Runs the command line `args` (program name first) and returns the exit code.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = std::panic::catch_unwind(|| run(&cli));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let internal = crate::error::is_internal(&e);
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if internal {
                eprintln!("this is a bug in dfc; please report it with the command line used");
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
        Err(_) => {
            eprintln!(
                "error: internal error (dfc crashed); please report it with the command line used"
            );
            ExitCode::from(2)
        }
    }
}

/// Dispatches one parsed command.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Specialize(args) => specialize::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Compile(args) => compile::run(args),
        Command::Passes(args) => passes::run(args),
        Command::Unet(args) => unet::run(args),
        Command::Run(args) => run::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Build(args) => build::run(args),
        Command::Estimate(args) => estimate::run(args),
        Command::Triton(args) => triton::run(args),
        Command::Launch(args) => launch::run(args),
        Command::RankProbe(args) => launch::probe(args),
    }
}
