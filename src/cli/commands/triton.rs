//! `dfc triton`: write a Triton Inference Server model repository that serves a plan with the
//! `dfc` backend (`libtriton_dfc.so`). See `docs/serving.md` and
//! [`crate::runtime::serving::repo`] for the layout.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::run::{PredictionArg, Scheduler};
use crate::runtime::sampler::Prediction;
use crate::runtime::serving::{RepoOptions, Settings, write_repository};

/// Arguments of `dfc triton`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The plan folder written by `dfc compile`.
    pub plan: PathBuf,
    /// The model repository (created if missing); the model goes to `REPO/NAME`.
    #[arg(short, long, value_name = "REPO")]
    pub output: PathBuf,
    /// The model's name in the repository and in requests.
    #[arg(long)]
    pub name: String,
    /// Model instances (each loads every rank of the plan once and serves one request at a
    /// time).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// A VAE decoder (ONNX, one input: the latent): responses then carry `image` too.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// The VAE's scaling factor (SD1.5 0.18215, SDXL 0.13025).
    #[arg(long, default_value_t = 0.18215)]
    pub vae_scale: f32,
    /// The most steps a request may ask for.
    #[arg(long, default_value_t = 200)]
    pub max_steps: usize,
    /// The scheduler of requests that name none.
    #[arg(long, value_enum, default_value_t = Scheduler::Ddim)]
    pub scheduler: Scheduler,
    /// Use SDXL's scheduler config ("leading" spacing) instead of SD1.5's.
    #[arg(long)]
    pub sdxl_schedule: bool,
    /// What the model predicts.
    #[arg(long, value_enum, default_value_t = PredictionArg::Epsilon)]
    pub prediction: PredictionArg,
    /// Cores of one instance (0: the server machine's cores shared evenly by the instances).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let settings = Settings {
        max_steps: args.max_steps,
        scheduler: args.scheduler.into(),
        sdxl_schedule: args.sdxl_schedule,
        prediction: match args.prediction {
            PredictionArg::Epsilon => Prediction::Epsilon,
            PredictionArg::V => Prediction::VPrediction,
        },
        vae_scale: args.vae_scale,
        threads: args.threads,
    };
    // The same checks the backend applies when it loads the model.
    Settings::from_parameters(
        settings
            .to_parameters()
            .iter()
            .map(|(k, v)| (*k, v.as_str())),
    )
    .map_err(anyhow::Error::msg)?;
    let written = write_repository(&RepoOptions {
        plan: args.plan.clone(),
        repository: args.output.clone(),
        name: args.name.clone(),
        instances: args.instances,
        vae: args.vae.clone(),
        settings,
    })
    .with_context(|| format!("writing the model repository for {}", args.plan.display()))?;
    eprintln!(
        "wrote model `{}` to {} ({} files, {:.1} MB, linked where the file system allows); \
         serve it with: tritonserver --model-repository {} --backend-directory DIR \
         (DIR/dfc/libtriton_dfc.so)",
        args.name,
        written.model_dir.display(),
        written.files,
        written.bytes as f64 / 1e6,
        args.output.display()
    );
    Ok(())
}
