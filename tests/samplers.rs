//! The samplers against diffusers, and banded stepping against full-latent stepping.
//!
//! `tests/sampler_reference.json` is written by `tools/sampler_reference.py` (diffusers
//! 0.42.1): per scheduler config, the timesteps, sigmas, initial latent, scaled model inputs and
//! the latent after every step of a loop driven by fixed fake model outputs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use dfc::contract::Bands;
use dfc::runtime::sampler::{
    BetaSchedule, NoiseSchedule, Prediction, SamplerConfig, SamplerKind, TimestepSpacing,
    band_noise, guide, latent_noise, put_rows, take_rows,
};
use serde::Deserialize;

/// A trajectory value may differ from diffusers' by this much, relative to its magnitude
/// (absolute below 1).
const TOLERANCE: f64 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    versions: serde_json::Value,
    noise: Vec<f32>,
    eps: Vec<Vec<f32>>,
    alphas_cumprod_scaled_linear: Vec<f32>,
    alphas_cumprod_linear_every_10: Vec<f32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    steps: usize,
    config: CaseConfig,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f32>>,
    init_noise_sigma: f64,
    x_init: Vec<f32>,
    model_in: Vec<Vec<f32>>,
    x: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct CaseConfig {
    beta_schedule: String,
    beta_start: f64,
    beta_end: f64,
    num_train_timesteps: usize,
    prediction_type: String,
    timestep_spacing: String,
    steps_offset: usize,
}

fn reference() -> Result<Reference> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/sampler_reference.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

impl Case {
    fn sampler_config(&self) -> Result<SamplerConfig> {
        let c = &self.config;
        Ok(SamplerConfig {
            kind: self.kind.parse().map_err(anyhow::Error::msg)?,
            steps: self.steps,
            prediction: match c.prediction_type.as_str() {
                "epsilon" => Prediction::Epsilon,
                "v_prediction" => Prediction::VPrediction,
                other => bail!("prediction_type {other}"),
            },
            spacing: match c.timestep_spacing.as_str() {
                "linspace" => TimestepSpacing::Linspace,
                "leading" => TimestepSpacing::Leading,
                "trailing" => TimestepSpacing::Trailing,
                other => bail!("timestep_spacing {other}"),
            },
            steps_offset: c.steps_offset,
            beta_schedule: match c.beta_schedule.as_str() {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                other => bail!("beta_schedule {other}"),
            },
            beta_start: c.beta_start,
            beta_end: c.beta_end,
            train_timesteps: c.num_train_timesteps,
        })
    }
}

/// The largest `|a - b| / max(1, |b|)`.
fn max_err(actual: &[f32], expected: &[f32]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs() / f64::from(b).abs().max(1.0))
        .fold(0.0, f64::max)
}

#[test]
fn noise_schedules_equal_diffusers() -> Result<()> {
    let r = reference()?;
    let sd = NoiseSchedule::stable_diffusion();
    ensure!(sd.alphas_cumprod().len() == r.alphas_cumprod_scaled_linear.len());
    let linear = NoiseSchedule::new(BetaSchedule::Linear, 0.0001, 0.02, 1000)?;
    let linear: Vec<f32> = linear
        .alphas_cumprod()
        .iter()
        .step_by(10)
        .copied()
        .collect();
    for (name, ours, theirs) in [
        (
            "scaled_linear",
            sd.alphas_cumprod(),
            &r.alphas_cumprod_scaled_linear[..],
        ),
        (
            "linear (every 10th)",
            &linear[..],
            &r.alphas_cumprod_linear_every_10[..],
        ),
    ] {
        let worst = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        let differ = ours
            .iter()
            .zip(theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits());
        eprintln!(
            "{name}: max |diff| {worst:.3e}, {} of {} differ in bits",
            differ.count(),
            ours.len()
        );
        ensure!(worst <= 1e-6, "{name}: alphas_cumprod off by {worst:e}");
        ensure!(
            ours == theirs,
            "{name}: alphas_cumprod not bit-identical to diffusers"
        );
    }
    Ok(())
}

#[test]
fn trajectories_match_diffusers() -> Result<()> {
    let r = reference()?;
    eprintln!("reference: {}", r.versions);
    ensure!(r.cases.len() >= 15, "reference has {} cases", r.cases.len());
    for case in &r.cases {
        let what = |s: &str| format!("{}: {s}", case.name);
        let mut s = case.sampler_config()?.build().context(what("build"))?;
        ensure!(
            s.timesteps() == case.timesteps.as_slice(),
            "{}",
            what(&format!(
                "timesteps {:?}, diffusers {:?}",
                s.timesteps(),
                case.timesteps
            ))
        );
        let mut sigma_err = 0.0;
        if let Some(theirs) = &case.sigmas {
            let ours = s.sigmas().context(what("no sigmas"))?;
            ensure!(ours.len() == theirs.len(), "{}", what("sigma count"));
            sigma_err = max_err(ours, theirs);
            ensure!(
                sigma_err <= 1e-6,
                "{}",
                what(&format!("sigmas off by {sigma_err:e}"))
            );
        }
        let init = f64::from(s.init_noise_sigma());
        ensure!(
            (init - case.init_noise_sigma).abs() <= 1e-6 * case.init_noise_sigma,
            "{}",
            what(&format!(
                "init_noise_sigma {init}, diffusers {}",
                case.init_noise_sigma
            ))
        );

        let mut x = r.noise.clone();
        s.init_latents(&mut x);
        let mut worst = max_err(&x, &case.x_init);
        let mut worst_in = 0.0f64;
        let mut model_in = vec![0.0f32; x.len()];
        for i in 0..case.steps {
            s.scale_model_input(i, &x, &mut model_in)?;
            if let Some(theirs) = case.model_in.get(i) {
                worst_in = worst_in.max(max_err(&model_in, theirs));
            } else {
                ensure!(model_in == x, "{}", what("model input should equal x"));
            }
            s.step(i, &r.eps[i], &mut x)?;
            let e = max_err(&x, &case.x[i]);
            ensure!(
                e <= TOLERANCE,
                "{}",
                what(&format!(
                    "step {i} (t = {}): x off by {e:e}\n ours {:?}\n diffusers {:?}",
                    case.timesteps[i], x, case.x[i]
                ))
            );
            worst = worst.max(e);
        }
        ensure!(
            worst_in <= TOLERANCE,
            "{}",
            what(&format!("model input off by {worst_in:e}"))
        );
        eprintln!(
            "{:<26} steps {:>2}: timesteps equal, sigmas {sigma_err:.1e}, model input {worst_in:.1e}, x {worst:.1e}",
            case.name, case.steps
        );
    }
    Ok(())
}

/// Runs `config` over a `shape` latent split into row bands of the given heights, each band
/// with its own sampler, and returns the gathered final latent.
fn run_banded(config: &SamplerConfig, shape: [usize; 4], heights: &[i64]) -> Result<Vec<f32>> {
    let seed = 11;
    let mut full = vec![0.0f32; shape.iter().product()];
    let bands = Bands::from_heights(heights)?;
    ensure!(
        bands.height() == shape[2] as i64,
        "bands {bands} for {shape:?}"
    );
    for band in 0..bands.n() {
        let r = bands.rows(band);
        let rows = r.start as usize..r.end as usize;
        let mut s = config.build()?;
        let mut x = band_noise(seed, shape, rows.clone())?;
        s.init_latents(&mut x);
        let mut model_in = vec![0.0f32; x.len()];
        for i in 0..s.num_steps() {
            s.scale_model_input(i, &x, &mut model_in)?;
            // A stand-in model that depends on its (scaled) input, so a wrong scale shows.
            let noise = take_rows(&latent_noise(1000 + i as u64, shape), shape, rows.clone())?;
            let eps: Vec<f32> = model_in
                .iter()
                .zip(&noise)
                .map(|(a, n)| 0.3 * a + n)
                .collect();
            s.step(i, &eps, &mut x)?;
        }
        put_rows(&x, shape, rows, &mut full)?;
    }
    Ok(full)
}

#[test]
fn banded_stepping_equals_full_latent_bit_for_bit() -> Result<()> {
    let shape = [1, 4, 8, 6];
    for kind in SamplerKind::ALL {
        for prediction in [Prediction::Epsilon, Prediction::VPrediction] {
            for config in [
                SamplerConfig::sd15(kind, 12, prediction),
                SamplerConfig::sdxl(kind, 7, prediction),
            ] {
                let single = run_banded(&config, shape, &[8])?;
                ensure!(
                    single.iter().all(|v| v.is_finite()),
                    "{config:?}: not finite"
                );
                let cuts: [&[i64]; 5] = [&[4, 4], &[2; 4], &[1; 8], &[3, 3, 2], &[2, 1, 5]];
                for bands in cuts {
                    let banded = run_banded(&config, shape, bands)?;
                    let same = single
                        .iter()
                        .zip(&banded)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    ensure!(same, "{config:?}: bands {bands:?} differ from one");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn guidance_is_uncond_plus_scaled_difference() -> Result<()> {
    let uncond = [1.0f32, 2.0, -0.5, 0.0];
    let cond = [3.0f32, 0.0, -0.5, 1.25];
    ensure!(guide(&uncond, &cond, 7.5)? == [16.0, -13.0, -0.5, 9.375]);
    ensure!(guide(&uncond, &cond, 1.0)? == cond);
    ensure!(guide(&uncond, &cond, 0.0)? == uncond);
    // Operation by operation in f32, as torch: u + s * (c - u).
    let (u, c, s) = (0.1f32, 0.7f32, 5.0f32);
    ensure!(guide(&[u], &[c], s)?[0].to_bits() == (u + s * (c - u)).to_bits());
    ensure!(guide(&uncond, &cond[..3], 7.5).is_err());
    Ok(())
}
