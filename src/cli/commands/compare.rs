//! `dfc compare`: how far patch-parallel sampling lands from the original model.
//!
//! Compiles the model into a one-rank plan (the original) and into `--gpus N` plans of each
//! `--modes` entry (displaced plans once per `--warmup` × `--gn` value), samples every plan with
//! the same seed, conditioning and sampler (one code path, `dfc run`'s), and reports per plan
//! the PSNR (dB) and SSIM of its final images against the original's (mean over the images;
//! data range 1), and the largest latent difference. `--png` writes a grid: one row per image,
//! columns original | each plan | the first plan's difference from the original × `--diff-gain`.
//! `--json` writes the numbers (per image too). The output folders and a `--vae` against the
//! plans' latent are checked before the first step.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::run::{SamplingArgs, at_least, check_extension, check_writable, sample_plan};
use super::specialize::SizeArgs;
use crate::passes::driver::{CompileOptions, compile};
use crate::plan::{GnMode, Mode};
use crate::runtime::image::{Image, grid, psnr, ssim, zoom_for};

/// Arguments of `dfc compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ONNX UNet.
    pub model: PathBuf,
    /// Number of GPUs (ranks) of the patch-parallel plans.
    #[arg(long, allow_negative_numbers = true, value_parser = at_least::<usize, 1>)]
    pub gpus: usize,
    #[command(flatten)]
    pub sizes: SizeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Plan modes to compare with the original (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["displaced", "naive"])]
    pub modes: Vec<Mode>,
    /// Warmup steps of the displaced plans (comma-separated: one plan each).
    #[arg(long, value_delimiter = ',', default_values = ["4"], allow_negative_numbers = true,
          value_parser = at_least::<u32, 0>)]
    pub warmup: Vec<u32>,
    /// GroupNorm handling of the displaced plans (comma-separated: one plan each).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["corrected"])]
    pub gn: Vec<GnMode>,
    /// Put the two classifier-free-guidance halves on two groups of GPUs (patch-parallel plans).
    #[arg(long)]
    pub split_batch: bool,
    /// Write the side-by-side grid here.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Gain of the difference panel.
    #[arg(long, default_value_t = 8.0, allow_negative_numbers = true)]
    pub diff_gain: f32,
    /// Magnify the panels of the grid this many times (nearest neighbour; 0: to at least 128
    /// pixels high).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true,
          value_parser = at_least::<usize, 0>)]
    pub zoom: usize,
    /// Write the numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the compiled plans in this folder (default: a temporary folder, removed).
    #[arg(long)]
    pub keep_plans: Option<PathBuf>,
}

/// One compared plan.
#[derive(Debug, Clone, Serialize)]
struct Variant {
    name: String,
    mode: Mode,
    gpus: usize,
    warmup: u32,
    gn: GnMode,
}

/// The numbers of one plan against the original.
#[derive(Debug, Clone, Serialize)]
struct Row {
    #[serde(flatten)]
    variant: Variant,
    /// Mean over the images (`None` for infinite: identical images).
    psnr_db: Option<f64>,
    ssim: f64,
    psnr_db_per_image: Vec<Option<f64>>,
    ssim_per_image: Vec<f64>,
    max_abs_latent_diff: f32,
    sampling_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    model: String,
    gpus: usize,
    steps: usize,
    scheduler: String,
    guidance: Option<f32>,
    seed: u64,
    original_sampling_seconds: f64,
    plans: &'a [Row],
}

fn variants(args: &Args) -> Result<Vec<Variant>> {
    let mut out = Vec::new();
    for &mode in &args.modes {
        let (warmups, gns) = match mode {
            Mode::Displaced => (args.warmup.clone(), args.gn.clone()),
            _ => (vec![0], vec![GnMode::default()]),
        };
        for &warmup in &warmups {
            for &gn in &gns {
                let name = match mode {
                    Mode::Displaced => format!("displaced-w{warmup}-{}", gn.name()),
                    m => m.name().to_string(),
                };
                if out.iter().any(|v: &Variant| v.name == name) {
                    bail!("plan `{name}` is asked for twice");
                }
                out.push(Variant {
                    name,
                    mode,
                    gpus: args.gpus,
                    warmup,
                    gn,
                });
            }
        }
    }
    if out.is_empty() {
        bail!("no plans to compare (--modes is empty)");
    }
    Ok(out)
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = v
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Runs the command. The output paths, the models and the decoder are checked before the
/// first step.
pub fn run(args: &Args) -> Result<()> {
    if let Some(png) = &args.png {
        check_extension("--png", png, "png", "the grid is written as a PNG")?;
        check_writable("--png", png)?;
    }
    if let Some(json) = &args.json {
        check_writable("--json", json)?;
    }
    if !(args.diff_gain.is_finite() && args.diff_gain >= 0.0) {
        bail!(
            "--diff-gain must be a non-negative number, not {}",
            args.diff_gain
        );
    }
    let options = args.sampling.options()?;
    let variants = variants(args)?;
    let sizes = args.sizes.options()?;
    let cond = args.sampling.conditioning()?;
    let mut imager = args.sampling.imager()?;
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let root = args
        .keep_plans
        .clone()
        .unwrap_or_else(|| scratch.path().into());
    let compile_one = |name: &str, gpus: usize, mode: Mode, warmup: u32, gn: GnMode| {
        let out = root.join(name);
        compile(&CompileOptions {
            model: args.model.clone(),
            output: out.clone(),
            gpus,
            bands: None,
            sizes: sizes.clone(),
            mode,
            warmup,
            gn,
            split_batch: args.split_batch && gpus > 1,
            dump_after: None,
        })
        .with_context(|| format!("compiling {} for plan `{name}`", args.model.display()))?;
        anyhow::Ok(out)
    };
    // Compile everything first: a model the compiler refuses fails before any sampling.
    let original_dir = compile_one("original", 1, Mode::Sync, 0, GnMode::default())?;
    let dirs: Vec<PathBuf> = variants
        .iter()
        .map(|v| compile_one(&v.name, v.gpus, v.mode, v.warmup, v.gn))
        .collect::<Result<_>>()?;
    imager.check_plan(&original_dir)?;

    let original = sample_plan(&original_dir, &args.sampling, &options, &cond, "original")?;
    let original_images = imager.images(&original.latent)?;
    let mut rows = Vec::new();
    let mut columns: Vec<Vec<Image>> = vec![original_images.clone()];
    for (v, dir) in variants.iter().zip(&dirs) {
        let got = sample_plan(dir, &args.sampling, &options, &cond, &v.name)?;
        let images = imager.images(&got.latent)?;
        let psnrs: Vec<f64> = original_images
            .iter()
            .zip(&images)
            .map(|(a, b)| psnr(a, b))
            .collect::<Result<_, _>>()?;
        let ssims: Vec<f64> = original_images
            .iter()
            .zip(&images)
            .map(|(a, b)| ssim(a, b))
            .collect::<Result<_, _>>()?;
        let max_abs_latent_diff = original
            .latent
            .iter()
            .zip(got.latent.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        rows.push(Row {
            variant: v.clone(),
            psnr_db: finite(mean(psnrs.iter().copied())),
            ssim: mean(ssims.iter().copied()),
            psnr_db_per_image: psnrs.iter().copied().map(finite).collect(),
            ssim_per_image: ssims,
            max_abs_latent_diff,
            sampling_seconds: got.step_seconds.iter().sum(),
        });
        columns.push(images);
    }

    println!(
        "{:<36} {:>10} {:>8} {:>15} {:>11}",
        "plan", "PSNR (dB)", "SSIM", "max |Δ latent|", "sampling s"
    );
    println!(
        "{:<36} {:>10} {:>8} {:>15} {:>11.2}",
        "original (1 rank)",
        "-",
        "-",
        "-",
        original.step_seconds.iter().sum::<f64>()
    );
    for r in &rows {
        println!(
            "{:<36} {:>10} {:>8.4} {:>15.3e} {:>11.2}",
            format!("{} ({} ranks)", r.variant.name, r.variant.gpus),
            r.psnr_db.map_or("inf".to_string(), |p| format!("{p:.2}")),
            r.ssim,
            r.max_abs_latent_diff,
            r.sampling_seconds
        );
    }

    if let Some(png) = &args.png {
        let diff: Vec<Image> = original_images
            .iter()
            .zip(&columns[1])
            .map(|(a, b)| a.abs_diff(b, args.diff_gain))
            .collect::<Result<_, _>>()?;
        columns.push(diff);
        let grid_rows: Vec<Vec<Image>> = (0..original_images.len())
            .map(|i| columns.iter().map(|c| c[i].clone()).collect())
            .collect();
        let zoom = zoom_for(args.zoom, original_images[0].height);
        let image = grid(&grid_rows, zoom, 2)?;
        image.save_png(png)?;
        let names: Vec<&str> = std::iter::once("original")
            .chain(variants.iter().map(|v| v.name.as_str()))
            .collect();
        eprintln!(
            "wrote {} ({}x{}): columns {} | |original − {}| × {}",
            png.display(),
            image.width,
            image.height,
            names.join(" | "),
            variants[0].name,
            args.diff_gain
        );
    }
    if let Some(json) = &args.json {
        let report = Report {
            model: args.model.display().to_string(),
            gpus: args.gpus,
            steps: options.sampler.steps,
            scheduler: options.sampler.kind.name().to_string(),
            guidance: options.guidance,
            seed: options.seed,
            original_sampling_seconds: original.step_seconds.iter().sum(),
            plans: &rows,
        };
        let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
        crate::onnx::write_atomic(json, format!("{text}\n").as_bytes())?;
    }
    Ok(())
}
