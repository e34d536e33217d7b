//! `dfc eval`: run one model in ONNX Runtime (CPU) on inputs from an `.npz` file.
//!
//! Entries of the `.npz` that are not model inputs are ignored, so a fixture's `.io.npz`
//! (inputs and reference outputs together) can be passed as is. With `--reference`, outputs
//! are compared with the same-named arrays of that file and the largest errors printed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::runtime::{self, HostTensor, SessionOptions, difference, read_npz, write_npz};

/// Arguments of `dfc eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ONNX model to run.
    pub model: PathBuf,
    /// Inputs, by ONNX input name (`np.savez` format; f32, f16 or i64).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the outputs (`.npz`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Compare the outputs with the same-named arrays of this `.npz`.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let inputs = read_npz(&args.inputs)?;
    let options = SessionOptions {
        threads: args.threads,
        ..SessionOptions::default()
    };
    let outputs = runtime::run_model(&args.model, &inputs, options)?;
    report_outputs(&outputs, args.reference.as_deref(), args.output.as_deref())
}

/// Prints the outputs' types, compares them with the same-named arrays of `reference` (if
/// given) and writes them to `output` (if given). Shared by `dfc eval` and `dfc unet`.
pub(crate) fn report_outputs(
    outputs: &[(String, HostTensor)],
    reference: Option<&Path>,
    output: Option<&Path>,
) -> Result<()> {
    for (name, t) in outputs {
        println!("{name}: {}{:?}", t.dtype(), t.shape());
    }
    if let Some(path) = reference {
        let reference = read_npz(path)?;
        for (name, t) in outputs {
            let Some((_, r)) = reference.iter().find(|(n, _)| n == name) else {
                bail!("{} has no array `{name}` to compare with", path.display());
            };
            let d = difference(t, r).map_err(|e| {
                anyhow::anyhow!("output `{name}` does not match the reference: {e}")
            })?;
            println!(
                "{name}: max abs error {:e}, max error relative to the reference's range {:e}{}",
                d.max_abs,
                d.max_rel,
                if d.non_finite {
                    " (NaN/inf mismatch)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(path) = output {
        write_npz(path, outputs).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
