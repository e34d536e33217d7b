//! The noise schedule and the timestep tables, computed the way torch and numpy compute them
//! (see the parent module for the precision rules).

use super::{
    BetaSchedule, SD_BETA_END, SD_BETA_START, SD_TRAIN_TIMESTEPS, SamplerConfig, SamplerError,
    TimestepSpacing,
};

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

    /// The sigmas at the (possibly fractional) `timesteps`, interpolated as numpy does, then a
    /// final 0: the sigma tables of the Euler and DPM-Solver++ samplers.
    pub fn sigmas_at(&self, timesteps: &[f64]) -> Vec<f32> {
        let table = self.sigmas();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| numpy_interp_index(t, &table) as f32)
            .collect();
        sigmas.push(0.0);
        sigmas
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
pub(super) fn timesteps_common(c: &SamplerConfig, fractional: bool) -> Vec<f64> {
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
pub(super) fn timesteps_dpm(c: &SamplerConfig) -> Vec<f64> {
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
