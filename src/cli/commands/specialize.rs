//! `dfc specialize`: fix a model's dynamic sizes, fold what becomes constant, write it back.
//!
//! Sizes name the model's *spatial* input (the latent of a UNet): `--batch`, `--height`,
//! `--width` in latent elements, or `--image-height` / `--image-width` in pixels divided by the
//! VAE factor. `--dim NAME=VALUE` fixes any other symbolic dimension (e.g. `sequence=77`). The
//! output is written atomically; a model with external data keeps referencing the same weights
//! file, hard-linked next to the output when the output goes to another folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::Internal;
use crate::ir::Graph;
use crate::onnx;
use crate::passes::PassError;
use crate::passes::specialize::{SpecializeError, SpecializeOptions, SpecializeReport, specialize};

/// Arguments of `dfc specialize`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ONNX model to specialize.
    pub model: PathBuf,
    #[command(flatten)]
    pub sizes: SizeArgs,
    /// Where to write the specialized model.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// The sizes a model is specialized to; shared by every command that specializes.
#[derive(Debug, Clone, clap::Args)]
pub struct SizeArgs {
    /// Batch size of the spatial input.
    #[arg(long)]
    pub batch: Option<i64>,
    /// Height of the spatial input (latent rows for a UNet).
    #[arg(long, conflicts_with = "image_height")]
    pub height: Option<i64>,
    /// Width of the spatial input (latent columns for a UNet).
    #[arg(long, conflicts_with = "image_width")]
    pub width: Option<i64>,
    /// Image height in pixels; the latent height is this divided by `--vae-factor`.
    #[arg(long)]
    pub image_height: Option<i64>,
    /// Image width in pixels; the latent width is this divided by `--vae-factor`.
    #[arg(long)]
    pub image_width: Option<i64>,
    /// Pixels per latent element of the VAE.
    #[arg(long, default_value_t = 8)]
    pub vae_factor: i64,
    /// Value of any named symbolic dimension, as NAME=VALUE (repeatable).
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
    pub dims: Vec<(String, i64)>,
}

fn parse_dim(s: &str) -> Result<(String, i64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}` has an empty dimension name"));
    }
    let value: i64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not an integer"))?;
    if value <= 0 {
        return Err(format!("dimension `{name}` must be positive, not {value}"));
    }
    Ok((name.to_string(), value))
}

impl SizeArgs {
    /// The pass options these arguments ask for.
    pub fn options(&self) -> Result<SpecializeOptions> {
        if self.vae_factor <= 0 {
            bail!("--vae-factor must be positive, not {}", self.vae_factor);
        }
        let latent = |px: Option<i64>, what: &str| -> Result<Option<i64>> {
            let Some(px) = px else { return Ok(None) };
            if px <= 0 {
                bail!("--image-{what} must be positive, not {px}");
            }
            if px % self.vae_factor != 0 {
                bail!(
                    "--image-{what} {px} is not divisible by the VAE factor {} (try {} or {})",
                    self.vae_factor,
                    px / self.vae_factor * self.vae_factor,
                    (px / self.vae_factor + 1) * self.vae_factor
                );
            }
            Ok(Some(px / self.vae_factor))
        };
        for (flag, v) in [
            ("--batch", self.batch),
            ("--height", self.height),
            ("--width", self.width),
        ] {
            if let Some(v) = v
                && v <= 0
            {
                bail!("{flag} must be positive, not {v}");
            }
        }
        Ok(SpecializeOptions {
            batch: self.batch,
            height: self.height.or(latent(self.image_height, "height")?),
            width: self.width.or(latent(self.image_width, "width")?),
            dims: self.dims.clone(),
        })
    }
}

/// What one specialization did.
#[derive(Debug)]
pub struct Summary {
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub report: SpecializeReport,
    /// External-data files placed next to the output (hard links or copies).
    pub shared_files: Vec<PathBuf>,
    pub seconds: f64,
}

/// Loads `input`, specializes it with `options` and writes the result to `output` atomically.
/// Nothing is written when any step fails.
pub fn specialize_file(
    input: &Path,
    output: &Path,
    options: &SpecializeOptions,
) -> Result<Summary> {
    let start = Instant::now();
    let out_dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        bail!("output folder {} does not exist", out_dir.display());
    }
    if output.is_dir() {
        bail!(
            "output {} is a directory; give a file name",
            output.display()
        );
    }
    let model = onnx::load(input)?;
    let src_dir = model.dir.clone();
    let store = model.external_store();
    let mut graph = Graph::from_model(model.proto)
        .with_context(|| format!("{} is not a well-formed graph", input.display()))?;
    let nodes_before = graph.node_count();
    let report = match specialize(&mut graph, &store, options) {
        Ok(r) => r,
        // The IR broken by a pass is dfc's bug, not the model's.
        Err(e @ SpecializeError::Pass(PassError::Verify { .. })) => {
            return Err(Internal(format!("specializing {}: {e}", input.display())).into());
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot specialize {}", input.display()))
            );
        }
    };
    let nodes_after = graph.node_count();
    let proto = graph
        .to_model()
        .map_err(|e| Internal(format!("writing the specialized graph back: {e}")))?;
    let graph_proto = proto
        .graph
        .as_ref()
        .ok_or_else(|| Internal("the specialized model has no graph".to_string()))?;
    let shared_files = onnx::external::share_into(graph_proto, &src_dir, &out_dir)?;
    if let Err(e) = onnx::save(&proto, output) {
        for f in &shared_files {
            let _ = std::fs::remove_file(f);
        }
        return Err(e.into());
    }
    Ok(Summary {
        nodes_before,
        nodes_after,
        report,
        shared_files,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let options = args.sizes.options()?;
    let s = specialize_file(&args.model, &args.output, &options)?;
    for w in &s.report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "specialized {} -> {}: {} nodes -> {} ({} folded, {} removed){}, {:.2} s",
        args.model.display(),
        args.output.display(),
        s.nodes_before,
        s.nodes_after,
        s.report.folded,
        s.report.removed,
        if s.shared_files.is_empty() {
            String::new()
        } else {
            format!(", {} external-data file(s) shared", s.shared_files.len())
        },
        s.seconds
    );
    Ok(())
}
