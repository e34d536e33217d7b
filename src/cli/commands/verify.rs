//! `dfc verify`: compile a model into a temporary plan folder and check, through ONNX Runtime,
//! that one synchronous step of the plan computes what the original model computes.
//!
//! The original runs in one ONNX Runtime session; the plan runs on the CPU runtime (ranks as
//! threads, exchanges through the in-process communicator), fed the same seeded full-size
//! inputs (standard normal floats; integers in `[0, 1000)`). The command prints, per output,
//! the largest absolute error and the largest error relative to the original's magnitude, and
//! fails (exit 1) when an output is beyond tolerance: 1e-4 relative for fp32, 1e-2 for fp16.
//! A `naive` plan is expected to fail: its bands never exchange anything.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ndarray::ArrayD;

use super::specialize::SizeArgs;
use crate::passes::driver::{CompileOptions, compile};
use crate::plan::{Mode, TensorSpec};
use crate::runtime::plan_exec::{ExecOptions, PlanExecutor};
use crate::runtime::{self, HostTensor, Rng, SessionOptions, difference};

/// Arguments of `dfc verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ONNX model to check.
    pub model: PathBuf,
    /// Number of GPUs (ranks) to compile for.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    #[command(flatten)]
    pub bands: super::compile::BandArgs,
    #[command(flatten)]
    pub sizes: SizeArgs,
    /// Plan mode (one `dfc unet` step is synchronous in every mode but `naive`).
    #[arg(long, value_enum, default_value = "sync")]
    pub mode: Mode,
    /// Put the two classifier-free-guidance halves of the batch on two groups of GPUs.
    #[arg(long)]
    pub split_batch: bool,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cores for each side of the comparison (0: all available).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Largest accepted error of one output of element type `dtype`: (absolute, relative).
fn tolerance(dtype: &str) -> f64 {
    match dtype {
        "f16" => 1e-2,
        _ => 1e-4,
    }
}

/// Seeded full-size inputs for every model input of the plan.
fn seeded_inputs(specs: &[TensorSpec], seed: u64) -> Result<Vec<(String, HostTensor)>> {
    let mut rng = Rng::new(seed);
    let mut inputs = Vec::new();
    for spec in specs {
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let tensor = match spec.dtype.as_str() {
            "f32" => HostTensor::F32(ArrayD::from_shape_vec(
                shape,
                (0..n).map(|_| rng.normal()).collect(),
            )?),
            "f16" => HostTensor::F16(ArrayD::from_shape_vec(
                shape,
                (0..n).map(|_| half::f16::from_f32(rng.normal())).collect(),
            )?),
            "i64" => HostTensor::I64(ArrayD::from_shape_vec(
                shape,
                (0..n).map(|_| (rng.next_u64() % 1000) as i64).collect(),
            )?),
            other => bail!(
                "input `{}` has element type {other}; dfc verify feeds f32, f16 and i64",
                spec.name
            ),
        };
        inputs.push((spec.name.clone(), tensor));
    }
    Ok(inputs)
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let plan_dir = dir.path().join("plan");
    let opts = CompileOptions {
        model: args.model.clone(),
        output: plan_dir.clone(),
        gpus: args.gpus,
        bands: args.bands.request(),
        sizes: args.sizes.options()?,
        mode: args.mode,
        warmup: 4,
        gn: Default::default(),
        split_batch: args.split_batch,
        dump_after: None,
    };
    let report = compile(&opts)?;
    let plan = report.plan.context("the compiler wrote no plan")?;
    println!(
        "compiled {} for {} GPU(s) ({:?}{}): {} exchanges, at most {} bytes received per rank per step",
        args.model.display(),
        plan.world_size,
        plan.mode,
        if plan.split_batch {
            ", split batch"
        } else {
            ""
        },
        plan.exchanges.len(),
        plan.bytes_per_step.iter().max().copied().unwrap_or(0)
    );
    let inputs = seeded_inputs(&plan.inputs, args.seed)?;
    for (name, t) in &inputs {
        println!("input  {name}: {}{:?}", t.dtype(), t.shape());
    }
    let session = SessionOptions {
        threads: args.threads,
        ..SessionOptions::default()
    };
    let expected =
        runtime::run_model(&args.model, &inputs, session).context("running the original model")?;
    let mut exec = PlanExecutor::load(
        &plan_dir,
        ExecOptions {
            threads: args.threads,
            ..ExecOptions::default()
        },
    )?;
    let actual = exec.run_unet(&inputs).context("running the plan")?;
    let mut failed = Vec::new();
    for (name, want) in &expected {
        let Some((_, got)) = actual.iter().find(|(n, _)| n == name) else {
            bail!("the plan lost output `{name}`");
        };
        let d = difference(got, want).map_err(|e| anyhow::anyhow!("output `{name}`: {e}"))?;
        let ok = !d.non_finite && d.max_rel <= tolerance(want.dtype());
        println!(
            "output {name}: {}{:?} max abs error {:.3e}, max rel error {:.3e} {}",
            want.dtype(),
            want.shape(),
            d.max_abs,
            d.max_rel,
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!("outputs beyond tolerance: {}", failed.join(", "));
    }
    println!(
        "verified: the {}-rank plan matches the original",
        plan.world_size
    );
    Ok(())
}
