//! DPM-Solver++ 2M, as diffusers' `DPMSolverMultistepScheduler` (midpoint, order 2).

use super::schedule::NoiseSchedule;
use super::{Prediction, Sampler, SamplerConfig, SamplerError, SamplerKind, check_len, check_step};

/// `(alpha_t, sigma_t, lambda_t)` of a sigma (variance-preserving form), in `f32` as
/// diffusers computes them. A sigma of 0 gives `(1, 0, +inf)`.
fn vp(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let s = sigma * alpha;
    (alpha, s, alpha.ln() - s.ln())
}

/// DPM-Solver++ 2M (midpoint), with the previous step's `x0` prediction as history.
pub(super) struct DpmPp2m {
    prediction: Prediction,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// The `x0` prediction of the previous step, element for element (empty before step 0).
    prev_x0: Vec<f32>,
    next_step: usize,
}

impl DpmPp2m {
    pub(super) fn new(c: &SamplerConfig, schedule: &NoiseSchedule, timesteps: Vec<f64>) -> Self {
        let sigmas = schedule.sigmas_at(&timesteps);
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
