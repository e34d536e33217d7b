//! `dfc run`: a whole sampling loop through a plan (see [`crate::runtime::sampling`]).
//!
//! `--inputs` holds every model input except the latent (`sample`) and the timestep
//! (`timestep`), at the model's full batch (with `--guidance`, the unconditional half first).
//! The final latent `[n, C, H, W]` is written to `--output` as the array `latent`; `--png`
//! writes a preview of it (first three channels as RGB, images side by side; there is no VAE
//! decoder yet). The original model runs through the same command from a one-rank plan
//! (`dfc compile MODEL --gpus 1`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::runtime::sampler::{Prediction, SamplerConfig, SamplerKind};
use crate::runtime::sampling::{SampleOptions, latent_preview, sample};
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

/// Arguments of `dfc run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The plan folder written by `dfc compile`.
    pub plan: PathBuf,
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
    /// Where to write the final latent (`.npz`, array `latent`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Also write a preview of the latent (first 3 channels as RGB, images side by side).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Cores shared by all ranks (0: the available cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    if let Some(g) = args.guidance
        && !g.is_finite()
    {
        bail!("--guidance must be a finite number, not {g}");
    }
    let cond = read_npz(&args.inputs)?;
    let prediction = match args.prediction {
        PredictionArg::Epsilon => Prediction::Epsilon,
        PredictionArg::V => Prediction::VPrediction,
    };
    let kind = SamplerKind::from(args.scheduler);
    let sampler = if args.sdxl_schedule {
        SamplerConfig::sdxl(kind, args.steps, prediction)
    } else {
        SamplerConfig::sd15(kind, args.steps, prediction)
    };
    // Fail on bad sampler settings before loading the plan.
    sampler.build().context("bad sampler settings")?;
    let options = SampleOptions {
        sampler,
        guidance: args.guidance,
        seed: args.seed,
    };
    let start = Instant::now();
    let mut exec = PlanExecutor::load(
        &args.plan,
        ExecOptions {
            threads: args.threads,
            ..ExecOptions::default()
        },
    )
    .with_context(|| format!("loading plan {}", args.plan.display()))?;
    let loaded = start.elapsed().as_secs_f64();

    let bar = ProgressBar::with_draw_target(Some(args.steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, {its} (eta {eta})",
        )
        .context("progress bar template")?
        .with_key("its", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2} it/s", s.per_sec());
        }),
    );
    let sampled = sample(&mut exec, &cond, &options, |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let sampled = sampled.with_context(|| {
        format!(
            "sampling with plan {} and inputs {}",
            args.plan.display(),
            args.inputs.display()
        )
    })?;

    let total: f64 = sampled.step_seconds.iter().sum();
    let plan = exec.plan();
    eprintln!(
        "{} steps of {} on {} rank(s) in {} group(s) ({:?}): load {loaded:.2} s, sampling {total:.2} s ({:.2} it/s)",
        args.steps,
        kind.name(),
        plan.world_size,
        plan.groups.len(),
        plan.mode,
        if total > 0.0 {
            args.steps as f64 / total
        } else {
            0.0
        },
    );
    let latent = HostTensor::F32(sampled.latent);
    write_npz(&args.output, &[("latent".to_string(), latent.clone())])?;
    eprintln!(
        "wrote latent {:?} to {}",
        latent.shape(),
        args.output.display()
    );
    if let Some(png) = &args.png {
        let HostTensor::F32(l) = &latent else {
            unreachable!("the latent is f32");
        };
        let (w, h, rgb) = latent_preview(l).map_err(anyhow::Error::msg)?;
        image::save_buffer_with_format(
            png,
            &rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .with_context(|| format!("writing {}", png.display()))?;
        eprintln!("wrote preview {w}x{h} to {}", png.display());
    }
    Ok(())
}
