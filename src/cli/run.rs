//! `dfc run`: a whole sampling loop through a plan (see [`crate::runtime::sampling`]).
//!
//! `--inputs` holds every model input except the latent (`sample`) and the timestep
//! (`timestep`), at the model's full batch (with `--guidance`, the unconditional half first).
//! The final latent `[n, C, H, W]` is written to `--output` as the array `latent`; `--png`
//! writes its images side by side: decoded by `--vae` (a VAE decoder ONNX model, fed the latent
//! divided by `--vae-scale`), else the latent's first three channels read as RGB in [-1, 1]
//! (the image itself for pixel-space models, a preview for SD latents). The original model
//! runs through the same command from a one-rank plan (`dfc compile MODEL --gpus 1`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use ndarray::ArrayD;

use crate::plan::Mode;
use crate::runtime::image::{Image, VaeDecoder, latent_images, side_by_side};
use crate::runtime::sampler::{Prediction, SamplerConfig, SamplerKind};
use crate::runtime::sampling::{SampleOptions, Sampled, sample};
use crate::runtime::{ExecOptions, HostTensor, PlanExecutor, read_npz, write_npz};

/// The sampler, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    /// DDIM (eta 0).
    Ddim,
    /// Euler discrete (deterministic).
    Euler,
    /// DPM-Solver++ 2M.
    Dpmpp2m,
}

impl From<Scheduler> for SamplerKind {
    fn from(s: Scheduler) -> Self {
        match s {
            Scheduler::Ddim => SamplerKind::Ddim,
            Scheduler::Euler => SamplerKind::Euler,
            Scheduler::Dpmpp2m => SamplerKind::DpmPp2m,
        }
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictionArg {
    /// The added noise (SD1.5, SDXL).
    Epsilon,
    /// The velocity (SD2.x 768).
    V,
}

/// How to sample: shared by `dfc run` and `dfc compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Number of inference steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// The sampler.
    #[arg(long, value_enum, default_value_t = Scheduler::Ddim)]
    pub scheduler: Scheduler,
    /// Use SDXL's scheduler config ("leading" spacing for every sampler) instead of SD1.5's.
    #[arg(long)]
    pub sdxl_schedule: bool,
    /// What the model predicts.
    #[arg(long, value_enum, default_value_t = PredictionArg::Epsilon)]
    pub prediction: PredictionArg,
    /// Classifier-free guidance scale (the model's batch holds the unconditional half first);
    /// without it, or with 1, the batch is sampled as is.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Every model input but `sample` and `timestep`, at full batch (`np.savez` format).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Decode the final latent with this VAE decoder (ONNX, one input: the latent) for the
    /// image; without it the latent's first three channels are the image (RGB in [-1, 1]).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// The VAE's scaling factor: the latent is divided by it before decoding (SD1.5 0.18215,
    /// SDXL 0.13025).
    #[arg(long, default_value_t = 0.18215)]
    pub vae_scale: f32,
    /// Cores shared by all ranks (0: the available cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl SamplingArgs {
    /// The sampling options, checked.
    pub fn options(&self) -> Result<SampleOptions> {
        if let Some(g) = self.guidance
            && !g.is_finite()
        {
            bail!("--guidance must be a finite number, not {g}");
        }
        let prediction = match self.prediction {
            PredictionArg::Epsilon => Prediction::Epsilon,
            PredictionArg::V => Prediction::VPrediction,
        };
        let kind = SamplerKind::from(self.scheduler);
        let sampler = if self.sdxl_schedule {
            SamplerConfig::sdxl(kind, self.steps, prediction)
        } else {
            SamplerConfig::sd15(kind, self.steps, prediction)
        };
        sampler.build().context("bad sampler settings")?;
        Ok(SampleOptions {
            sampler,
            guidance: self.guidance,
            seed: self.seed,
        })
    }

    /// The conditioning inputs.
    pub fn conditioning(&self) -> Result<Vec<(String, HostTensor)>> {
        read_npz(&self.inputs).with_context(|| format!("reading {}", self.inputs.display()))
    }

    /// Turns final latents into images: a loaded `--vae` decoder, else the latent's channels.
    /// Fails (before any sampling) on a decoder that cannot be loaded.
    pub fn imager(&self) -> Result<Imager> {
        Ok(Imager(match &self.vae {
            Some(vae) => Some(
                VaeDecoder::open(vae, self.vae_scale, self.threads)
                    .with_context(|| format!("loading the VAE decoder {}", vae.display()))?,
            ),
            None => None,
        }))
    }
}

/// Final latents to images (see [`SamplingArgs::imager`]).
pub struct Imager(Option<VaeDecoder>);

impl Imager {
    /// The images of a final latent `[n, C, H, W]`.
    pub fn images(&mut self, latent: &ArrayD<f32>) -> Result<Vec<Image>> {
        Ok(match &mut self.0 {
            Some(vae) => vae.decode(latent).context("decoding the final latent")?,
            None => latent_images(latent)?,
        })
    }
}

/// Samples through the plan at `plan_dir` with a progress bar labelled `label`; prints a
/// summary line and returns the result.
pub fn sample_plan(
    plan_dir: &Path,
    args: &SamplingArgs,
    options: &SampleOptions,
    cond: &[(String, HostTensor)],
    label: &str,
) -> Result<Sampled> {
    let start = Instant::now();
    let mut exec = PlanExecutor::load(
        plan_dir,
        ExecOptions {
            threads: args.threads,
            ..ExecOptions::default()
        },
    )
    .with_context(|| format!("loading plan {}", plan_dir.display()))?;
    let loaded = start.elapsed().as_secs_f64();
    let steps = options.sampler.steps;
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, {its} (eta {eta})",
        )
        .context("progress bar template")?
        .with_key("its", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2} it/s", s.per_sec());
        }),
    );
    bar.set_prefix(label.to_string());
    let sampled = sample(&mut exec, cond, options, |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let sampled = sampled.with_context(|| {
        format!(
            "sampling with plan {} and inputs {}",
            plan_dir.display(),
            args.inputs.display()
        )
    })?;
    let total: f64 = sampled.step_seconds.iter().sum();
    let plan = exec.plan();
    eprintln!(
        "{label}{}{steps} steps of {} on {} rank(s) in {} group(s) ({}): load {loaded:.2} s, sampling {total:.2} s ({:.2} it/s)",
        if label.is_empty() { "" } else { ": " },
        options.sampler.kind.name(),
        plan.world_size,
        plan.groups.len(),
        match plan.mode {
            Mode::Displaced => format!(
                "displaced, warmup {}, GroupNorm {}",
                plan.warmup,
                plan.gn.name()
            ),
            m => m.name().to_string(),
        },
        if total > 0.0 {
            steps as f64 / total
        } else {
            0.0
        },
    );
    Ok(sampled)
}

/// Arguments of `dfc run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The plan folder written by `dfc compile`.
    pub plan: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Where to write the final latent (`.npz`, array `latent`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Also write the image(s) (decoded with `--vae`, else the latent's first three channels),
    /// side by side.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let options = args.sampling.options()?;
    let cond = args.sampling.conditioning()?;
    let mut imager = args.sampling.imager()?;
    let sampled = sample_plan(&args.plan, &args.sampling, &options, &cond, "")?;
    // Decode before writing anything, so a failing decoder leaves no files behind.
    let image = match &args.png {
        Some(_) => Some(side_by_side(&imager.images(&sampled.latent)?)?),
        None => None,
    };
    let latent = HostTensor::F32(sampled.latent);
    write_npz(&args.output, &[("latent".to_string(), latent.clone())])?;
    eprintln!(
        "wrote latent {:?} to {}",
        latent.shape(),
        args.output.display()
    );
    if let (Some(png), Some(image)) = (&args.png, image) {
        image.save_png(png)?;
        eprintln!(
            "wrote image {}x{} to {}",
            image.width,
            image.height,
            png.display()
        );
    }
    Ok(())
}
