//! DDIM (eta 0), as diffusers' `DDIMScheduler`.

use super::schedule::NoiseSchedule;
use super::{Prediction, Sampler, SamplerConfig, SamplerError, SamplerKind, check_len, check_step};

/// DDIM (eta 0): `x' = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps`.
pub(super) struct Ddim {
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// `(a_t, a_prev)` per step, from the `f32` schedule.
    alphas: Vec<(f32, f32)>,
}

impl Ddim {
    pub(super) fn new(c: &SamplerConfig, schedule: &NoiseSchedule, timesteps: Vec<f64>) -> Self {
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
