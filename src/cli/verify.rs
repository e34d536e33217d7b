//! `dfc verify`: rewrite a model into a temporary folder and check, through ONNX Runtime, that
//! the rewritten model computes what the original computes.
//!
//! Both models run on the same seeded random inputs at the specialized sizes (standard normal
//! floats; integers in `[0, 1000)`). The command prints, per output, the largest absolute error
//! and the largest error relative to the original's magnitude, and fails (exit 1) when an
//! output is beyond tolerance: 1e-5 absolute for fp32, 1e-2 relative for fp16.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ndarray::ArrayD;

use super::specialize::{SizeArgs, specialize_file};
use crate::ir::{DataType, Graph};
use crate::onnx;
use crate::runtime::{self, HostTensor, Rng, SessionOptions, difference};

/// Arguments of `dfc verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ONNX model to check.
    pub model: PathBuf,
    #[command(flatten)]
    pub sizes: SizeArgs,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Intra-op threads of each ONNX Runtime session (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Largest accepted error of one output of element type `dtype`: (absolute, relative).
fn tolerance(dtype: &str) -> (f64, f64) {
    match dtype {
        "f16" => (f64::INFINITY, 1e-2),
        _ => (1e-5, f64::INFINITY),
    }
}

/// Seeded inputs for every graph input of a static-shaped `graph`.
fn seeded_inputs(graph: &Graph, seed: u64) -> Result<Vec<(String, HostTensor)>> {
    let mut rng = Rng::new(seed);
    let mut inputs = Vec::new();
    for &v in &graph.inputs {
        let value = graph.value(v);
        if value.init.is_some() {
            continue;
        }
        let ty = value
            .tensor_type()
            .with_context(|| format!("input `{}` is not a tensor", value.name))?;
        let dims = ty
            .static_dims()
            .with_context(|| format!("input `{}` has no static shape ({ty})", value.name))?;
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let tensor = match ty.elem {
            DataType::FLOAT => HostTensor::F32(ArrayD::from_shape_vec(
                shape,
                (0..n).map(|_| rng.normal()).collect(),
            )?),
            DataType::FLOAT16 => HostTensor::F16(ArrayD::from_shape_vec(
                shape,
                (0..n).map(|_| half::f16::from_f32(rng.normal())).collect(),
            )?),
            DataType::INT64 => HostTensor::I64(ArrayD::from_shape_vec(
                shape,
                (0..n).map(|_| (rng.next_u64() % 1000) as i64).collect(),
            )?),
            other => bail!(
                "input `{}` has element type {other}; dfc verify feeds f32, f16 and i64",
                value.name
            ),
        };
        inputs.push((value.name.clone(), tensor));
    }
    Ok(inputs)
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let options = args.sizes.options()?;
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let rewritten = dir.path().join("specialized.onnx");
    let summary = specialize_file(&args.model, &rewritten, &options)?;
    println!(
        "specialized {}: {} nodes -> {} ({} folded)",
        args.model.display(),
        summary.nodes_before,
        summary.nodes_after,
        summary.report.folded
    );
    let graph = Graph::from_model(onnx::load(&rewritten)?.proto)?;
    let inputs = seeded_inputs(&graph, args.seed)?;
    for (name, t) in &inputs {
        println!("input  {name}: {}{:?}", t.dtype(), t.shape());
    }
    let session = SessionOptions {
        threads: args.threads,
        ..SessionOptions::default()
    };
    let expected =
        runtime::run_model(&args.model, &inputs, session).context("running the original model")?;
    let actual = runtime::run_model(&rewritten, &inputs, session)
        .context("running the specialized model")?;
    let mut failed = Vec::new();
    for (name, want) in &expected {
        let Some((_, got)) = actual.iter().find(|(n, _)| n == name) else {
            bail!("the specialized model lost output `{name}`");
        };
        let d = difference(got, want).map_err(|e| anyhow::anyhow!("output `{name}`: {e}"))?;
        let (abs_tol, rel_tol) = tolerance(want.dtype());
        let ok = !d.non_finite && d.max_abs <= abs_tol && d.max_rel <= rel_tol;
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
    println!("verified: the specialized model matches the original");
    Ok(())
}
