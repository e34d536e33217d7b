//! `dfc run`: a whole sampling loop through a plan (see [`crate::runtime::sampling`]).
//!
//! `--inputs` holds every model input except the latent (`sample`) and the timestep
//! (`timestep`), at the model's full batch (with `--guidance`, the unconditional half first).
//! The final latent `[n, C, H, W]` is written to `--output` as the array `latent`; `--png`
//! writes its images side by side: decoded by `--vae` (a VAE decoder ONNX model, fed the latent
//! divided by `--vae-scale`), else the latent's first three channels read as RGB in [-1, 1]
//! (the image itself for pixel-space models, a preview for SD latents), magnified `--zoom`
//! times. The original model runs through the same command from a one-rank plan
//! (`dfc compile MODEL --gpus 1`).
//!
//! What can fail after sampling is checked before the first step: the output paths (an
//! `.npz` latent, a `.png` image, folders that exist and take files) and a `--vae` whose input
//! sizes are static against the plan's latent. The latent is written before it is decoded, so
//! a decoder that still fails never costs the samples.
//!
//! `--backend cpu` (default) runs every rank as a thread of this process; `--backend tensorrt`
//! runs this process's rank on its GPU (a one-rank plan directly, more ranks under
//! `dfc launch`, which starts one such process per GPU; rank 0 writes the outputs). A build
//! without the `gpu` feature refuses `tensorrt` with the reason.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use ndarray::ArrayD;

use crate::plan::{Mode, Plan};
use crate::runtime::image::{Image, VaeDecoder, latent_images, side_by_side, zoom_for};
use crate::runtime::launch::RankEnv;
use crate::runtime::sampler::{Prediction, SamplerConfig, SamplerKind};
use crate::runtime::sampling::{SampleOptions, Sampled, latent_spec, sample};
use crate::runtime::{ExecOptions, HostTensor, PlanExecutor, UnetExecutor, read_npz, write_npz};

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

/// A command-line count: a whole number of at least `MIN` (for `value_parser`, with
/// `allow_negative_numbers` so that `-1` reaches it and gets this message instead of clap's
/// advice to write `-- -1`).
pub fn at_least<T: TryFrom<u64>, const MIN: u64>(text: &str) -> Result<T, String> {
    let wanted = || format!("the value must be a whole number ≥ {MIN}, not `{text}`");
    let value: i128 = text.trim().parse().map_err(|_| wanted())?;
    if value < i128::from(MIN) {
        return Err(wanted());
    }
    u64::try_from(value)
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| format!("{text} is too large"))
}

/// How to sample: shared by `dfc run` and `dfc compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Number of inference steps.
    #[arg(long, default_value_t = 25, allow_negative_numbers = true,
          value_parser = at_least::<usize, 1>)]
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
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true,
          value_parser = at_least::<u64, 0>)]
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
    #[arg(long, default_value_t = 0.18215, allow_negative_numbers = true)]
    pub vae_scale: f32,
    /// Cores shared by all ranks (0: the available cores).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true,
          value_parser = at_least::<usize, 0>)]
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
    /// Checks, before sampling, that the final latent of the plan at `plan_dir` can be turned
    /// into images: a `--vae` decoder with static input sizes must take the latent's.
    pub fn check_plan(&self, plan_dir: &Path) -> Result<()> {
        let Some(vae) = &self.0 else {
            return Ok(());
        };
        let plan =
            Plan::load(plan_dir).with_context(|| format!("loading plan {}", plan_dir.display()))?;
        let spec = latent_spec(&plan)?;
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        vae.check_latent(&shape).with_context(|| {
            format!(
                "--vae cannot decode the final latent `{}` of plan {}",
                spec.name,
                plan_dir.display()
            )
        })
    }

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
    sample_with(
        &mut exec, plan_dir, args, options, cond, label, loaded, true,
    )
}

/// Samples with a loaded executor (`loaded`: seconds its loading took); `report`: print the
/// progress bar and the summary line.
#[allow(clippy::too_many_arguments)]
pub fn sample_with<E: UnetExecutor>(
    exec: &mut E,
    plan_dir: &Path,
    args: &SamplingArgs,
    options: &SampleOptions,
    cond: &[(String, HostTensor)],
    label: &str,
    loaded: f64,
    report: bool,
) -> Result<Sampled> {
    let steps = options.sampler.steps;
    let target = if report {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
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
    let sampled = sample(exec, cond, options, |done| bar.set_position(done as u64));
    bar.finish_and_clear();
    let sampled = sampled.map_err(anyhow::Error::from).with_context(|| {
        format!(
            "sampling with plan {} and inputs {}",
            plan_dir.display(),
            args.inputs.display()
        )
    })?;
    if !report {
        return Ok(sampled);
    }
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

/// Where the UNet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// ONNX Runtime on the CPU, every rank a thread of this process.
    Cpu,
    /// TensorRT engines with the dfc plugins, one rank per process and GPU (`dfc launch`; a
    /// one-rank plan also runs directly). Needs a build with the `gpu` feature.
    Tensorrt,
}

/// Options of the TensorRT backend.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuArgs {
    /// Capture one CUDA graph per phase (warmup, first stale step, steady stale steps) and
    /// replay them instead of enqueueing the engine.
    #[arg(long)]
    pub cuda_graphs: bool,
    /// TensorRT's folder (or its core library); default: `DFC_TENSORRT`, then the library path.
    #[arg(long, value_name = "PATH")]
    pub tensorrt: Option<PathBuf>,
}

/// Checks, before any work, that a file can be written at `path` (named `flag` in the
/// message): its folder exists and takes a new file, and `path` is no folder.
pub fn check_writable(flag: &str, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist (create it first)",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("{flag} {} is a folder; give a file name", path.display());
    }
    tempfile::Builder::new()
        .prefix(".dfc-check-")
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "{flag} {}: cannot write in the folder {}",
                path.display(),
                dir.display()
            )
        })?;
    Ok(())
}

/// Checks that `path` (named `flag`) ends in `.extension` (any case).
pub fn check_extension(flag: &str, path: &Path, extension: &str, hint: &str) -> Result<()> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(extension))
    {
        return Ok(());
    }
    bail!(
        "{flag} {} must be a `.{extension}` file; {hint}",
        path.display()
    )
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
    /// Magnify the `--png` image this many times (nearest neighbour; 0: to at least 128 pixels
    /// high).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true,
          value_parser = at_least::<usize, 0>)]
    pub zoom: usize,
    /// Where the UNet runs.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

impl Args {
    /// Checks the output paths: an `.npz` latent, a `.png` image, both in writable folders.
    fn check_outputs(&self) -> Result<()> {
        let npz = self.output.with_extension("npz");
        let png = self.output.with_extension("png");
        check_extension(
            "--output",
            &self.output,
            "npz",
            &format!(
                "it receives the final latent (array `latent`); for an image add `--png`, e.g. \
                 `-o {} --png {}`",
                npz.display(),
                png.display()
            ),
        )?;
        check_writable("--output", &self.output)?;
        if let Some(png) = &self.png {
            check_extension("--png", png, "png", "the image is written as a PNG")?;
            check_writable("--png", png)?;
        }
        Ok(())
    }
}

/// Whether this process writes the outputs: always on the CPU backend; on the TensorRT
/// backend, unless `dfc launch` started it as a rank other than 0.
fn writes_outputs(backend: Backend) -> bool {
    match backend {
        Backend::Cpu => true,
        Backend::Tensorrt => !matches!(RankEnv::from_env(), Ok(Some(r)) if r.rank != 0),
    }
}

/// Runs the command. Everything that can be checked is checked before the first step; the
/// latent is written before it is decoded, so a failing decoder never costs the samples.
pub fn run(args: &Args) -> Result<()> {
    if writes_outputs(args.backend) {
        args.check_outputs()?;
    }
    let options = args.sampling.options()?;
    let cond = args.sampling.conditioning()?;
    let mut imager = args.sampling.imager()?;
    if args.png.is_some() {
        imager.check_plan(&args.plan)?;
    }
    let (sampled, writes) = match args.backend {
        Backend::Cpu => (
            sample_plan(&args.plan, &args.sampling, &options, &cond, "")?,
            true,
        ),
        Backend::Tensorrt => sample_gpu(args, &options, &cond)?,
    };
    if !writes {
        return Ok(());
    }
    let latent = sampled.latent;
    write_npz(
        &args.output,
        &[("latent".to_string(), HostTensor::F32(latent.clone()))],
    )?;
    eprintln!(
        "wrote latent {:?} to {}",
        latent.shape(),
        args.output.display()
    );
    let Some(png) = &args.png else {
        return Ok(());
    };
    let saved = || {
        format!(
            "the latent was written to {}, but not the image {}",
            args.output.display(),
            png.display()
        )
    };
    let images = imager.images(&latent).with_context(saved)?;
    let zoom = zoom_for(args.zoom, images.first().map_or(1, |i| i.height));
    let image = side_by_side(&images, zoom).with_context(saved)?;
    image.save_png(png).with_context(saved)?;
    eprintln!(
        "wrote image {}x{} to {}",
        image.width,
        image.height,
        png.display()
    );
    Ok(())
}

/// Samples on the TensorRT backend; returns the result and whether this process writes the
/// outputs (rank 0 only).
#[cfg(feature = "gpu")]
fn sample_gpu(
    args: &Args,
    options: &SampleOptions,
    cond: &[(String, HostTensor)],
) -> Result<(Sampled, bool)> {
    use crate::runtime::gpu::{GpuExecutor, GpuOptions};
    let start = Instant::now();
    let mut exec = GpuExecutor::load(
        &args.plan,
        &GpuOptions {
            tensorrt: args.gpu.tensorrt.clone(),
            cuda_graphs: args.gpu.cuda_graphs,
        },
    )
    .with_context(|| format!("loading plan {} on the GPU", args.plan.display()))?;
    let loaded = start.elapsed().as_secs_f64();
    let lead = exec.is_lead();
    let sampled = sample_with(
        &mut exec,
        &args.plan,
        &args.sampling,
        options,
        cond,
        "",
        loaded,
        lead,
    )?;
    exec.finish().context("finishing the GPU run")?;
    Ok((sampled, lead))
}

/// Without the `gpu` feature there is no TensorRT backend.
#[cfg(not(feature = "gpu"))]
fn sample_gpu(
    args: &Args,
    _options: &SampleOptions,
    _cond: &[(String, HostTensor)],
) -> Result<(Sampled, bool)> {
    let _ = &args.gpu;
    bail!(
        "--backend tensorrt: this dfc was built without the `gpu` feature; build it with \
         `cargo build --release --features gpu` on a machine with CUDA 13, NCCL and TensorRT"
    )
}
