//! Samplers for the sampling loop: the timestep schedules and update rules diffusers uses for
//! SD1.5/SDXL (DDIM, Euler discrete, DPM-Solver++ 2M), on flat `f32` slices.
//!
//! Every update is pointwise on the latent: element `i` of the new latent depends only on
//! element `i` of the latent, of the model output and (DPM-Solver++) of the previous step's
//! prediction. So a rank builds its own sampler from the shared [`SamplerConfig`] and steps only
//! its band; the bands of a banded run equal the same elements of a single-device run bit for
//! bit. **Invariant:** no update reads another element, and none depends on the slice length.
//!
//! The numbers follow diffusers 0.42.1 (see `tools/sampler_reference.py`, which records the
//! reference `tests/samplers.rs` checks against):
//! - the noise schedule is rebuilt the way torch computes it in `float32` (linspace, square,
//!   `1 - beta`, cumulative product accumulated in `f64` and rounded to `f32`), so
//!   `alphas_cumprod` equals diffusers' bit for bit; the sigma tables are built the same way
//!   (`f32` table, numpy's `f64` interpolation, rounded to `f32`);
//! - per-step coefficients and pointwise updates are `f32`, operation for operation in
//!   diffusers' order. Its schedulers run in `float32`, and DPM-Solver++'s log-SNR step sizes
//!   are sensitive to that: an `f64` evaluation drifts about 1e-5 (relative) away from
//!   diffusers over 20 steps, while this one reproduces its trajectories bit for bit in all
//!   but one reference case (off by < 1e-6). No fused multiply-adds: each operation rounds
//!   once, as torch's element-wise kernels do.
//!
//! Choices mirrored from diffusers' defaults (each scheduler built by
//! `Scheduler.from_config(base_model_config)`, as a pipeline does when the scheduler is
//! swapped):
//! - DDIM (`DDIMScheduler`): eta 0, `clip_sample` false, `set_alpha_to_one` false (the last
//!   step lands on `alphas_cumprod[0]`, not 1), no thresholding; the previous timestep is
//!   always `t - train_timesteps / steps`, whatever the spacing (as diffusers does).
//! - Euler (`EulerDiscreteScheduler`): `s_churn` 0 (deterministic), interpolation "linear"
//!   (sigmas interpolated at fractional timesteps with numpy's `interp`), no Karras sigmas,
//!   final sigma 0. Timesteps are `float32` and fractional under "linspace" spacing.
//!   `init_noise_sigma` is `sqrt(sigma_max^2 + 1)` under "leading" spacing, `sigma_max`
//!   otherwise; the model input is `x / sqrt(sigma^2 + 1)`.
//! - DPM-Solver++ 2M (`DPMSolverMultistepScheduler`): algorithm "dpmsolver++", solver order 2,
//!   solver type "midpoint", `lower_order_final` true, `euler_at_final` false, final sigma 0,
//!   `lambda_min_clipped` -inf, no Karras sigmas. The first step is first order (no history);
//!   the last step is first order for every step count because `final_sigmas_type` is "zero"
//!   (it lands exactly on the predicted `x0`); every other step is second order.
//!   `lower_order_final` (`< 15` steps) would only lower a third-order solver's second-to-last
//!   step, so it changes nothing at order 2.
//! - Spacing: [`SamplerConfig::sd15`] keeps each scheduler's own default (DDIM "leading",
//!   Euler and DPM-Solver++ "linspace"), because SD1.5's shipped config names none;
//!   [`SamplerConfig::sdxl`] uses "leading" with `steps_offset` 1 for all three, as SDXL's
//!   config says. "trailing" is available as an option.

use std::ops::Range;

use thiserror::Error;

use super::rng::Rng;

/// `beta_start` of the SD1.5/SDXL noise schedule.
pub const SD_BETA_START: f64 = 0.00085;
/// `beta_end` of the SD1.5/SDXL noise schedule.
pub const SD_BETA_END: f64 = 0.012;
/// Training timesteps of the SD1.5/SDXL noise schedule.
pub const SD_TRAIN_TIMESTEPS: usize = 1000;

/// Errors of sampler construction and stepping (all caused by the caller's input).
#[derive(Debug, Error, PartialEq)]
pub enum SamplerError {
    /// The requested number of inference steps is unusable.
    #[error(
        "{steps} inference steps requested; must be between 1 and {train} (the training timesteps)"
    )]
    Steps { steps: usize, train: usize },
    /// The noise schedule parameters give betas outside `[0, 1)`.
    #[error("beta schedule {start}..{end} over {train} timesteps gives betas outside [0, 1)")]
    Betas { start: f64, end: f64, train: usize },
    /// A step index past the schedule.
    #[error("step {step} is past the schedule of {steps} steps")]
    StepOutOfRange { step: usize, steps: usize },
    /// A multistep sampler was stepped out of order.
    #[error("step {got} out of order: this sampler's next step is {expected}")]
    OutOfOrder { expected: usize, got: usize },
    /// Two slices that must cover the same elements differ in length.
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The spacing yields an unusable timestep schedule for this step count.
    #[error("{0}")]
    Schedule(String),
    /// A band or row range that does not fit the latent.
    #[error("bad band: {0}")]
    Band(String),
}

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// `DDIMScheduler` with eta 0.
    Ddim,
    /// `EulerDiscreteScheduler` (deterministic).
    Euler,
    /// `DPMSolverMultistepScheduler`, DPM-Solver++ of order 2 (multistep).
    DpmPp2m,
}

impl SamplerKind {
    /// Every kind, in a stable order.
    pub const ALL: [SamplerKind; 3] = [Self::Ddim, Self::Euler, Self::DpmPp2m];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::DpmPp2m => "dpmpp2m",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown sampler {s:?}; valid: ddim, euler, dpmpp2m"))
    }
}

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise (SD1.5, SDXL base).
    Epsilon,
    /// The velocity `alpha * eps - sigma * x0` (SD2.x 768).
    VPrediction,
}

/// The beta schedule family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `betas = linspace(start, end, T)`.
    Linear,
    /// `betas = linspace(sqrt(start), sqrt(end), T)^2` (latent diffusion).
    ScaledLinear,
}

/// How the inference timesteps are spread over the training timesteps (the "linspace",
/// "leading" and "trailing" of Table 2 of arXiv:2305.08891, as diffusers implements them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly from `T - 1` down to 0.
    Linspace,
    /// Multiples of `T / steps` (integer division) plus `steps_offset`.
    Leading,
    /// Down from `T - 1` in strides of `T / steps`.
    Trailing,
}

/// Everything that determines a sampler. Every rank builds its sampler from the same config.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Number of inference steps.
    pub steps: usize,
    pub prediction: Prediction,
    pub spacing: TimestepSpacing,
    /// Added to "leading" timesteps (ignored by the other spacings, as in diffusers).
    pub steps_offset: usize,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    pub train_timesteps: usize,
}

impl SamplerConfig {
    /// The scheduler diffusers builds for `kind` from SD1.5's shipped scheduler config
    /// (scaled_linear 0.00085..0.012, `steps_offset` 1, no spacing named, so each scheduler
    /// keeps its default: DDIM "leading", Euler and DPM-Solver++ "linspace").
    pub fn sd15(kind: SamplerKind, steps: usize, prediction: Prediction) -> Self {
        let spacing = match kind {
            SamplerKind::Ddim => TimestepSpacing::Leading,
            SamplerKind::Euler | SamplerKind::DpmPp2m => TimestepSpacing::Linspace,
        };
        Self {
            kind,
            steps,
            prediction,
            spacing,
            steps_offset: 1,
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: SD_BETA_START,
            beta_end: SD_BETA_END,
            train_timesteps: SD_TRAIN_TIMESTEPS,
        }
    }

    /// The scheduler diffusers builds for `kind` from SDXL base's shipped scheduler config
    /// (same betas, "leading" spacing with `steps_offset` 1 for every scheduler).
    pub fn sdxl(kind: SamplerKind, steps: usize, prediction: Prediction) -> Self {
        Self {
            spacing: TimestepSpacing::Leading,
            ..Self::sd15(kind, steps, prediction)
        }
    }

    /// Shorthand for [`SamplerConfig::sd15`].
    pub fn new(kind: SamplerKind, steps: usize, prediction: Prediction) -> Self {
        Self::sd15(kind, steps, prediction)
    }

    /// A fresh sampler (no history) for this config.
    pub fn build(&self) -> Result<Box<dyn Sampler>, SamplerError> {
        if self.steps == 0 || self.steps > self.train_timesteps {
            return Err(SamplerError::Steps {
                steps: self.steps,
                train: self.train_timesteps,
            });
        }
        let schedule = NoiseSchedule::new(
            self.beta_schedule,
            self.beta_start,
            self.beta_end,
            self.train_timesteps,
        )?;
        let timesteps = self.timesteps()?;
        let sampler: Box<dyn Sampler> = match self.kind {
            SamplerKind::Ddim => Box::new(Ddim::new(self, &schedule, timesteps)),
            SamplerKind::Euler => Box::new(Euler::new(self, &schedule, timesteps)),
            SamplerKind::DpmPp2m => Box::new(DpmPp2m::new(self, &schedule, timesteps)),
        };
        Ok(sampler)
    }

    /// The timesteps of this config, checked: strictly decreasing, and (for the samplers that
    /// index the schedule by timestep) inside it.
    fn timesteps(&self) -> Result<Vec<f64>, SamplerError> {
        let ts = match self.kind {
            SamplerKind::Ddim => timesteps_common(self, false),
            SamplerKind::Euler => timesteps_common(self, true),
            SamplerKind::DpmPp2m => timesteps_dpm(self),
        };
        let bad = |why: &str| {
            SamplerError::Schedule(format!(
                "{} with {:?} spacing over {} steps: {why}",
                self.kind.name(),
                self.spacing,
                self.steps
            ))
        };
        if ts.len() != self.steps {
            return Err(bad("wrong number of timesteps"));
        }
        if ts.windows(2).any(|w| w[1] >= w[0]) {
            return Err(bad("timesteps repeat (too many steps for this spacing)"));
        }
        let top = (self.train_timesteps - 1) as f64;
        // Euler interpolates its sigma table and clamps outside it, as numpy's interp does
        // (a clamped step is a no-op). DDIM indexes `alphas_cumprod`, and a clamped sigma
        // repeats one of DPM-Solver++ (its second-order step divides by the log-SNR gap, so
        // diffusers returns NaN there).
        if self.kind != SamplerKind::Euler && ts.iter().any(|&t| !(0.0..=top).contains(&t)) {
            return Err(bad("a timestep falls outside the training schedule"));
        }
        Ok(ts)
    }
}

/// A sampler over one band (or the whole) of the latent. Slices are flat, any length, the same
/// length for every call on one sampler's band.
///
/// The loop, per step `i` (as in a diffusers pipeline):
/// `x = noise * init_noise_sigma`; then `scale_model_input(i, x, in)`, run the model on `in`
/// at `timesteps()[i]`, `step(i, model_output, x)`.
pub trait Sampler: Send {
    /// The kind of update rule.
    fn kind(&self) -> SamplerKind;

    /// The model timestep of each step. Integers for DDIM and DPM-Solver++; `float32` values
    /// (fractional under "linspace" spacing) for Euler. Cast to the UNet's timestep type.
    fn timesteps(&self) -> &[f64];

    /// Number of inference steps.
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// The `float32` sigma of each step plus a final 0 (Euler and DPM-Solver++), if any.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    /// The standard deviation of the initial latent: the pipeline starts from
    /// `noise * init_noise_sigma` (see [`Sampler::init_latents`]). 1 unless the sampler
    /// works in sigma space.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Scales unit-variance `noise` in place into the initial latent.
    fn init_latents(&self, noise: &mut [f32]) {
        let s = self.init_noise_sigma();
        noise.iter_mut().for_each(|v| *v *= s);
    }

    /// Writes the model input of step `step` for latent `x` into `out`: `x` itself unless the
    /// sampler works in sigma space.
    fn scale_model_input(
        &self,
        step: usize,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), SamplerError> {
        check_step(step, self.num_steps())?;
        check_len("model input", x.len(), out.len())?;
        out.copy_from_slice(x);
        Ok(())
    }

    /// Advances `x` in place from step `step`'s timestep to the next, given the model output
    /// (guided, if classifier-free guidance is used) at that step.
    fn step(
        &mut self,
        step: usize,
        model_output: &[f32],
        x: &mut [f32],
    ) -> Result<(), SamplerError>;
}

/// The diffusion noise schedule: `alphas_cumprod` as diffusers holds it (`float32`).
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// The schedule of `train` timesteps with betas from `start` to `end`.
    pub fn new(
        schedule: BetaSchedule,
        start: f64,
        end: f64,
        train: usize,
    ) -> Result<Self, SamplerError> {
        let betas: Vec<f32> = match schedule {
            BetaSchedule::Linear => torch_linspace_f32(start, end, train),
            BetaSchedule::ScaledLinear => torch_linspace_f32(start.sqrt(), end.sqrt(), train)
                .into_iter()
                .map(|b| b * b)
                .collect(),
        };
        if train == 0 || betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(SamplerError::Betas { start, end, train });
        }
        // torch's CPU cumprod accumulates float32 in double and rounds each partial product.
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= f64::from(1.0f32 - b);
                acc as f32
            })
            .collect();
        Ok(Self { alphas_cumprod })
    }

    /// The SD1.5/SDXL schedule (scaled_linear, 0.00085..0.012, 1000 timesteps).
    pub fn stable_diffusion() -> Self {
        Self::new(
            BetaSchedule::ScaledLinear,
            SD_BETA_START,
            SD_BETA_END,
            SD_TRAIN_TIMESTEPS,
        )
        .expect("the SD schedule is valid")
    }

    /// `prod(1 - beta)` up to each training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Whether the schedule is empty (never, for a constructed schedule).
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// `sqrt((1 - a) / a)` per training timestep, in `float32` as torch computes it.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on CPU, bit for bit: the step is computed in
/// `f32`, and element `i` is `fma(step, i, start)` in the first half and
/// `fma(-step, n - 1 - i, end)` in the second.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `numpy.arange(start, 0, -stride)` as numpy fills it (length from `ceil`, values
/// `start + i * delta` with `delta` re-derived from the first two elements).
fn numpy_arange_down(start: f64, stride: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -stride).ceil().max(0.0) as usize;
    let delta = (start - stride) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `numpy.linspace(0, stop, n)` (float64).
fn numpy_linspace(stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = stop / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// `numpy.interp(x, arange(len(fp)), fp)` for `x` in `[0, len - 1]`.
fn numpy_interp_index(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor().max(0.0) as usize;
    if j as f64 == x {
        return f64::from(fp[j]);
    }
    let slope = f64::from(fp[j + 1]) - f64::from(fp[j]);
    slope * (x - j as f64) + f64::from(fp[j])
}

/// Integer timesteps for DDIM and Euler (`set_timesteps` of DDIMScheduler and
/// EulerDiscreteScheduler share the formulas; Euler keeps the linspace values fractional).
fn timesteps_common(c: &SamplerConfig, fractional: bool) -> Vec<f64> {
    let (t, n) = (c.train_timesteps, c.steps);
    match c.spacing {
        TimestepSpacing::Linspace => numpy_linspace((t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| {
                if fractional {
                    f64::from(v as f32)
                } else {
                    v.round_ties_even()
                }
            })
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + c.steps_offset) as f64)
                .collect()
        }
        // For some step counts (61, 103, ...) numpy's arange yields one element too many and
        // diffusers ends the schedule on timestep -1; the schedule stops at `steps` here.
        TimestepSpacing::Trailing => numpy_arange_down(t as f64, t as f64 / n as f64)
            .into_iter()
            .take(n)
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
    }
}

/// Timesteps of `DPMSolverMultistepScheduler.set_timesteps` (it spaces `steps + 1` points
/// and drops the last, unlike the other two).
fn timesteps_dpm(c: &SamplerConfig) -> Vec<f64> {
    let (t, n) = (c.train_timesteps, c.steps);
    match c.spacing {
        TimestepSpacing::Linspace => numpy_linspace((t - 1) as f64, n + 1)
            .into_iter()
            .map(f64::round_ties_even)
            .rev()
            .take(n)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / (n + 1);
            (1..=n)
                .rev()
                .map(|i| (i * ratio + c.steps_offset) as f64)
                .collect()
        }
        // For some step counts (61, 103, ...) numpy's arange yields one element too many and
        // diffusers ends the schedule on timestep -1; the schedule stops at `steps` here.
        TimestepSpacing::Trailing => numpy_arange_down(t as f64, t as f64 / n as f64)
            .into_iter()
            .take(n)
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), SamplerError> {
    if expected == got {
        Ok(())
    } else {
        Err(SamplerError::Length {
            what,
            expected,
            got,
        })
    }
}

fn check_step(step: usize, steps: usize) -> Result<(), SamplerError> {
    if step < steps {
        Ok(())
    } else {
        Err(SamplerError::StepOutOfRange { step, steps })
    }
}

/// DDIM (eta 0): `x' = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps`.
struct Ddim {
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// `(a_t, a_prev)` per step, from the `f32` schedule.
    alphas: Vec<(f32, f32)>,
}

impl Ddim {
    fn new(c: &SamplerConfig, schedule: &NoiseSchedule, timesteps: Vec<f64>) -> Self {
        let ac = schedule.alphas_cumprod();
        let stride = (c.train_timesteps / c.steps) as i64;
        let alphas = timesteps
            .iter()
            .map(|&t| {
                let t = t as i64;
                let prev = t - stride;
                // `set_alpha_to_one` false: the step past 0 lands on `alphas_cumprod[0]`.
                let a_prev = if prev >= 0 { ac[prev as usize] } else { ac[0] };
                (ac[t as usize], a_prev)
            })
            .collect();
        Self {
            prediction: c.prediction,
            timesteps,
            alphas,
        }
    }
}

impl Sampler for Ddim {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Ddim
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        step: usize,
        model_output: &[f32],
        x: &mut [f32],
    ) -> Result<(), SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("model output", x.len(), model_output.len())?;
        let (a_t, a_prev) = self.alphas[step];
        // eta 0: the noise term's `std_dev_t` is 0, so the direction is `sqrt(1 - a_prev)`.
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (sa_prev, sb_prev) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        for (xi, &m) in x.iter_mut().zip(model_output) {
            let s = *xi;
            let (x0, eps) = match self.prediction {
                Prediction::Epsilon => ((s - sb * m) / sa, m),
                Prediction::VPrediction => (sa * s - sb * m, sa * m + sb * s),
            };
            *xi = sa_prev * x0 + sb_prev * eps;
        }
        Ok(())
    }
}

/// Euler discrete (deterministic): `x' = x + (x - x0) / sigma * (sigma_next - sigma)`.
struct Euler {
    prediction: Prediction,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl Euler {
    fn new(c: &SamplerConfig, schedule: &NoiseSchedule, timesteps: Vec<f64>) -> Self {
        let table = schedule.sigmas();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| numpy_interp_index(t, &table) as f32)
            .collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match c.spacing {
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        };
        Self {
            prediction: c.prediction,
            timesteps,
            sigmas,
            init_noise_sigma,
        }
    }
}

impl Sampler for Euler {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Euler
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(
        &self,
        step: usize,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("model input", x.len(), out.len())?;
        let sigma = self.sigmas[step];
        let d = (sigma * sigma + 1.0).sqrt();
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v / d;
        }
        Ok(())
    }

    fn step(
        &mut self,
        step: usize,
        model_output: &[f32],
        x: &mut [f32],
    ) -> Result<(), SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("model output", x.len(), model_output.len())?;
        // `s_churn` 0: `sigma_hat` is `sigma`.
        let sigma = self.sigmas[step];
        let dt = self.sigmas[step + 1] - sigma;
        let s2 = sigma * sigma + 1.0;
        let v_out = -sigma / s2.sqrt();
        for (xi, &m) in x.iter_mut().zip(model_output) {
            let s = *xi;
            let x0 = match self.prediction {
                Prediction::Epsilon => s - sigma * m,
                Prediction::VPrediction => m * v_out + s / s2,
            };
            let derivative = (s - x0) / sigma;
            *xi = s + derivative * dt;
        }
        Ok(())
    }
}

/// `(alpha_t, sigma_t, lambda_t)` of a sigma (variance-preserving form), in `f32` as
/// diffusers computes them. A sigma of 0 gives `(1, 0, +inf)`.
fn vp(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let s = sigma * alpha;
    (alpha, s, alpha.ln() - s.ln())
}

/// DPM-Solver++ 2M (midpoint), with the previous step's `x0` prediction as history.
struct DpmPp2m {
    prediction: Prediction,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// The `x0` prediction of the previous step, element for element (empty before step 0).
    prev_x0: Vec<f32>,
    next_step: usize,
}

impl DpmPp2m {
    fn new(c: &SamplerConfig, schedule: &NoiseSchedule, timesteps: Vec<f64>) -> Self {
        let table = schedule.sigmas();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| numpy_interp_index(t, &table) as f32)
            .collect();
        sigmas.push(0.0);
        Self {
            prediction: c.prediction,
            timesteps,
            sigmas,
            prev_x0: Vec::new(),
            next_step: 0,
        }
    }
}

impl Sampler for DpmPp2m {
    fn kind(&self) -> SamplerKind {
        SamplerKind::DpmPp2m
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn step(
        &mut self,
        step: usize,
        model_output: &[f32],
        x: &mut [f32],
    ) -> Result<(), SamplerError> {
        let n = self.timesteps.len();
        check_step(step, n)?;
        if step != self.next_step {
            return Err(SamplerError::OutOfOrder {
                expected: self.next_step,
                got: step,
            });
        }
        check_len("model output", x.len(), model_output.len())?;
        if step > 0 {
            check_len(
                "latent (against the previous step)",
                self.prev_x0.len(),
                x.len(),
            )?;
        }
        let (alpha_s0, sigma_s0, lambda_s0) = vp(self.sigmas[step]);
        // At a final sigma of 0, h = +inf and the step lands exactly on x0.
        let (alpha_t, sigma_t, lambda_t) = vp(self.sigmas[step + 1]);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let b = alpha_t * ((-h).exp() - 1.0);
        // First order at the first step (no history) and at the last (final sigma 0).
        let second_order = step > 0 && step + 1 < n;
        let inv_r0 = if second_order {
            let (_, _, lambda_s1) = vp(self.sigmas[step - 1]);
            1.0 / ((lambda_s0 - lambda_s1) / h)
        } else {
            0.0
        };
        let half_b = 0.5 * b;
        if self.prev_x0.len() != x.len() {
            self.prev_x0 = vec![0.0; x.len()];
        }
        for ((xi, &m), prev) in x.iter_mut().zip(model_output).zip(self.prev_x0.iter_mut()) {
            let s = *xi;
            let x0 = match self.prediction {
                Prediction::Epsilon => (s - sigma_s0 * m) / alpha_s0,
                Prediction::VPrediction => alpha_s0 * s - sigma_s0 * m,
            };
            *xi = if second_order {
                let d1 = inv_r0 * (x0 - *prev);
                ratio * s - b * x0 - half_b * d1
            } else {
                ratio * s - b * x0
            };
            *prev = x0;
        }
        self.next_step += 1;
        Ok(())
    }
}

/// Classifier-free guidance: `uncond + scale * (cond - uncond)`, in `f32` operation by
/// operation as diffusers' pipelines compute it.
pub fn guide(uncond: &[f32], cond: &[f32], scale: f32) -> Result<Vec<f32>, SamplerError> {
    check_len("conditional model output", uncond.len(), cond.len())?;
    Ok(uncond
        .iter()
        .zip(cond)
        .map(|(&u, &c)| u + scale * (c - u))
        .collect())
}

/// The full NCHW latent noise for `seed`: standard normals from [`Rng`] in row-major order.
/// Every rank generates the same full latent and keeps its band (see [`band_noise`]), so a
/// banded run starts from exactly the single-device run's noise.
pub fn latent_noise(seed: u64, shape: [usize; 4]) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..shape.iter().product::<usize>())
        .map(|_| rng.normal())
        .collect()
}

/// Rows `rows` (axis 2) of the row-major NCHW tensor `full` of `shape`, flattened in NCHW order.
pub fn take_rows(
    full: &[f32],
    shape: [usize; 4],
    rows: Range<usize>,
) -> Result<Vec<f32>, SamplerError> {
    let [n, c, h, w] = shape;
    check_len("full latent", n * c * h * w, full.len())?;
    if rows.start > rows.end || rows.end > h {
        return Err(SamplerError::Band(format!(
            "rows {rows:?} outside a latent of {h} rows"
        )));
    }
    let mut out = Vec::with_capacity(n * c * rows.len() * w);
    for plane in full.chunks_exact(h * w) {
        out.extend_from_slice(&plane[rows.start * w..rows.end * w]);
    }
    Ok(out)
}

/// Writes `band` (rows `rows` of an NCHW tensor of `shape`, as [`take_rows`] returns them)
/// back into the full tensor `full`.
pub fn put_rows(
    band: &[f32],
    shape: [usize; 4],
    rows: Range<usize>,
    full: &mut [f32],
) -> Result<(), SamplerError> {
    let [n, c, h, w] = shape;
    check_len("full latent", n * c * h * w, full.len())?;
    if rows.start > rows.end || rows.end > h {
        return Err(SamplerError::Band(format!(
            "rows {rows:?} outside a latent of {h} rows"
        )));
    }
    check_len("band", n * c * rows.len() * w, band.len())?;
    let run = rows.len() * w;
    if run == 0 {
        return Ok(());
    }
    for (plane, part) in full.chunks_exact_mut(h * w).zip(band.chunks_exact(run)) {
        plane[rows.start * w..rows.end * w].copy_from_slice(part);
    }
    Ok(())
}

/// Rows `rows` of [`latent_noise`]`(seed, shape)`: a band's starting noise.
pub fn band_noise(
    seed: u64,
    shape: [usize; 4],
    rows: Range<usize>,
) -> Result<Vec<f32>, SamplerError> {
    take_rows(&latent_noise(seed, shape), shape, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_its_name() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>(), Ok(k));
        }
        assert!("pndm".parse::<SamplerKind>().is_err());
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut c = SamplerConfig::sd15(SamplerKind::Euler, 0, Prediction::Epsilon);
        assert!(matches!(c.build(), Err(SamplerError::Steps { .. })));
        c.steps = 1001;
        assert!(matches!(c.build(), Err(SamplerError::Steps { .. })));
        c.steps = 10;
        c.beta_end = 2.0;
        assert!(matches!(c.build(), Err(SamplerError::Betas { .. })));
    }

    #[test]
    fn every_kind_takes_one_to_train_steps() -> Result<(), SamplerError> {
        for kind in SamplerKind::ALL {
            for steps in [1, 2, 3, 7, 999, 1000] {
                for c in [
                    SamplerConfig::sd15(kind, steps, Prediction::Epsilon),
                    SamplerConfig::sdxl(kind, steps, Prediction::Epsilon),
                ] {
                    let mut s = match c.build() {
                        Ok(s) => s,
                        // Near 1000 "leading" steps with offset 1 the schedule reaches timestep
                        // 1000 (DDIM, DPM-Solver++), or DPM-Solver++'s stride 1000 / 1001 is 0;
                        // diffusers fails there too (an index error, or NaN).
                        Err(SamplerError::Schedule(_)) if steps >= 999 => continue,
                        Err(e) => return Err(e),
                    };
                    assert_eq!(s.num_steps(), steps, "{c:?}");
                    let mut x = vec![0.5f32; 3];
                    for i in 0..s.num_steps() {
                        s.step(i, &[0.1, -0.2, 0.3], &mut x)?;
                    }
                    assert!(x.iter().all(|v| v.is_finite()), "{c:?}: {x:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn misuse_is_an_error() -> Result<(), SamplerError> {
        let mut s = SamplerConfig::sd15(SamplerKind::DpmPp2m, 10, Prediction::Epsilon).build()?;
        let mut x = vec![0.0f32; 4];
        assert!(matches!(
            s.step(1, &[0.0; 4], &mut x),
            Err(SamplerError::OutOfOrder { .. })
        ));
        assert!(matches!(
            s.step(0, &[0.0; 3], &mut x),
            Err(SamplerError::Length { .. })
        ));
        assert!(matches!(
            s.step(10, &[0.0; 4], &mut x),
            Err(SamplerError::StepOutOfRange { .. })
        ));
        let mut out = vec![0.0f32; 3];
        assert!(s.scale_model_input(0, &x, &mut out).is_err());
        Ok(())
    }

    #[test]
    fn rows_round_trip() -> Result<(), SamplerError> {
        let shape = [1, 2, 4, 3];
        let full = latent_noise(7, shape);
        let mut back = vec![0.0f32; full.len()];
        for rows in [0..1, 1..3, 3..4] {
            let part = take_rows(&full, shape, rows.clone())?;
            assert_eq!(part, band_noise(7, shape, rows.clone())?);
            put_rows(&part, shape, rows, &mut back)?;
        }
        assert_eq!(back, full);
        assert!(take_rows(&full, shape, 2..5).is_err());
        Ok(())
    }
}
