//! Euler discrete, as diffusers' `EulerDiscreteScheduler` (deterministic).

use super::schedule::NoiseSchedule;
use super::{
    Prediction, Sampler, SamplerConfig, SamplerError, SamplerKind, TimestepSpacing, check_len,
    check_step,
};

/// Euler discrete (deterministic): `x' = x + (x - x0) / sigma * (sigma_next - sigma)`.
pub(super) struct Euler {
    prediction: Prediction,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl Euler {
    pub(super) fn new(c: &SamplerConfig, schedule: &NoiseSchedule, timesteps: Vec<f64>) -> Self {
        let sigmas = schedule.sigmas_at(&timesteps);
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
