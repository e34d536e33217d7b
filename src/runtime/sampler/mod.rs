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

use thiserror::Error;

mod ddim;
mod dpm;
mod euler;
mod latent;
mod schedule;

use ddim::Ddim;
use dpm::DpmPp2m;
use euler::Euler;
pub use latent::{band_noise, guide, latent_noise, put_rows, take_rows};
pub use schedule::NoiseSchedule;
use schedule::{timesteps_common, timesteps_dpm};

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
