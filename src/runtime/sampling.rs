//! The sampling loop over a plan: every rank holds only its band of the latent and steps its
//! own sampler over it (the updates are pointwise, see [`super::sampler`]); the full latent is
//! assembled once, at the end.
//!
//! Conventions (diffusers'):
//! - the plan's model takes the latent as the band-split 4-D input (`sample`, NCHW, split along
//!   H; another name works when it is the only such input) and the timestep as `timestep` (or
//!   the only unsplit input of rank ≤ 1); every other input (the conditioning:
//!   `encoder_hidden_states`, SDXL's `text_embeds`/`time_ids`, …) is given at full batch and
//!   split by [`UnetExecutor::split_inputs_except`];
//! - with classifier-free guidance the model was compiled for batch `2·n` (unconditional half
//!   first) and samples `n` images. Without split batch, each rank feeds `x ‖ x` (its band,
//!   duplicated along the batch), and combines the two halves of its band output with
//!   [`guide`]. With `--split-batch` (two groups), group 0 runs the unconditional half and
//!   group 1 the conditional half, each on `x`; the guidance combination needs the other
//!   group's band output of the same step. On the CPU runtime the executor holds both groups'
//!   outputs after each lockstep step, so the pair is combined in host memory and both members
//!   step identical samplers on the guided band. A GPU backend (one process per GPU) does the
//!   same with a paired exchange ([`UnetExecutor::partner_bands`]): rank `b` of group 0 and
//!   rank `b` of group 1 swap their band outputs (send/recv of `n·C·h·W` elements), then both
//!   combine and step.
//! - without guidance (or guidance 1) the batch is sampled as is (`n` = the model batch; under
//!   split batch each group samples its half of the images);
//! - the initial noise is the full `[n, C, H, W]` [`latent_noise`] of the seed, of which each
//!   rank keeps its rows (and its images), so a banded run starts from exactly the
//!   single-device run's noise;
//! - step `i` is stale (displaced mode) when `i > warmup`: steps `0..=warmup` are synchronous.

use std::ops::Range;

use half::f16;
use ndarray::{ArrayD, IxDyn};

pub use super::executor::SampleError;
use super::executor::UnetExecutor;
use super::host::{HostTensor, NamedTensors};
use super::sampler::{Sampler, SamplerConfig, guide, latent_noise, put_rows, take_rows};
use crate::plan::{Mode, Plan, TensorSpec};

/// Name of the latent input (diffusers' UNets); without it, the one 4-D input split into bands.
pub const LATENT_INPUT: &str = "sample";
/// Name of the timestep input (diffusers' UNets); without it, the one input of rank ≤ 1 that is
/// not split into bands.
pub const TIMESTEP_INPUT: &str = "timestep";

/// What to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// The sampler (kind, steps, schedule); every rank builds its own from it.
    pub sampler: SamplerConfig,
    /// Classifier-free guidance scale (`None` or 1: no guidance, the batch is used as is).
    pub guidance: Option<f32>,
    /// Seed of the initial noise.
    pub seed: u64,
}

impl SampleOptions {
    /// The guidance scale when classifier-free guidance is on.
    pub fn cfg_scale(&self) -> Option<f32> {
        self.guidance.filter(|&g| g != 1.0)
    }
}

/// The result of a sampling loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The final latent, `[n, C, H, W]`.
    pub latent: ArrayD<f32>,
    /// Wall time of each step (seconds), UNet and sampler.
    pub step_seconds: Vec<f64>,
}

/// How the plan's inputs and outputs serve the loop.
struct Roles<'a> {
    latent: &'a TensorSpec,
    timestep: &'a TensorSpec,
    output: &'a TensorSpec,
}

fn roles(plan: &Plan) -> Result<Roles<'_>, SampleError> {
    let names = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // By diffusers' names, else by role: the one 4-D input split into bands, and the one input
    // of at most one element per batch entry that is not split into bands.
    let pick = |name: &str, what: &str, fits: &dyn Fn(&TensorSpec) -> bool| {
        if let Some(s) = plan.inputs.iter().find(|s| s.name == name) {
            return Ok(s);
        }
        let candidates: Vec<&TensorSpec> = plan.inputs.iter().filter(|s| fits(s)).collect();
        match candidates.as_slice() {
            [one] => Ok(*one),
            _ => Err(SampleError::Plan(format!(
                "it has no {what} input named `{name}`, and {} inputs could be it (its inputs: {})",
                candidates.len(),
                names(&plan.inputs)
            ))),
        }
    };
    let latent = pick(LATENT_INPUT, "latent", &|s| {
        s.shape.len() == 4 && s.layout.band_axis == Some(2)
    })?;
    let timestep = pick(TIMESTEP_INPUT, "timestep", &|s| {
        s.layout.band_axis.is_none()
            && s.shape.len() <= 1
            && matches!(s.dtype.as_str(), "f32" | "f16" | "i64")
    })?;
    if latent.shape.len() != 4 || latent.layout.band_axis != Some(2) {
        return Err(SampleError::Plan(format!(
            "the latent `{}` must be NCHW split along H; it is {:?} split along {:?}",
            latent.name, latent.shape, latent.layout.band_axis
        )));
    }
    if !matches!(latent.layout.group_axis, None | Some(0)) {
        return Err(SampleError::Plan(format!(
            "the latent `{}` is split between groups along axis {:?}, not the batch",
            latent.name, latent.layout.group_axis
        )));
    }
    if !matches!(latent.dtype.as_str(), "f32" | "f16") {
        return Err(SampleError::Plan(format!(
            "the latent `{}` has element type {}; f32 or f16 expected",
            latent.name, latent.dtype
        )));
    }
    if timestep.layout.band_axis.is_some() {
        return Err(SampleError::Plan(format!(
            "the timestep `{}` is split into bands",
            timestep.name
        )));
    }
    let output = plan
        .outputs
        .iter()
        .find(|o| o.shape == latent.shape && o.layout == latent.layout)
        .ok_or_else(|| {
            SampleError::Plan(format!(
                "no output has the latent's shape {:?} and split (its outputs: {})",
                latent.shape,
                names(&plan.outputs)
            ))
        })?;
    if !matches!(output.dtype.as_str(), "f32" | "f16") {
        return Err(SampleError::Plan(format!(
            "the model output `{}` has element type {}; f32 or f16 expected",
            output.name, output.dtype
        )));
    }
    Ok(Roles {
        latent,
        timestep,
        output,
    })
}

/// The plan's conditioning inputs: every input but the latent and the timestep, in the plan's
/// order (what `dfc run --inputs` and a served request provide).
pub fn conditioning_inputs(plan: &Plan) -> Result<Vec<&TensorSpec>, SampleError> {
    let Roles {
        latent, timestep, ..
    } = roles(plan)?;
    Ok(plan
        .inputs
        .iter()
        .filter(|s| s.name != latent.name && s.name != timestep.name)
        .collect())
}

/// The plan's latent input (NCHW, split into bands along H).
pub fn latent_spec(plan: &Plan) -> Result<&TensorSpec, SampleError> {
    Ok(roles(plan)?.latent)
}

/// The batch of the plan's latent input (both CFG halves).
pub fn latent_batch(plan: &Plan) -> Result<usize, SampleError> {
    Ok(latent_spec(plan)?
        .shape
        .first()
        .map_or(0, |&b| b.max(0) as usize))
}

/// One local rank's share of the loop.
struct RankState {
    /// The rank (index into the plan's ranks).
    rank: usize,
    /// Shape of the latent input of this rank's graph.
    dims: Vec<usize>,
    /// The band of the latent, `[images, C, rows, W]`, row-major.
    x: Vec<f32>,
    sampler: Box<dyn Sampler>,
}

fn tensor_of(dtype: &str, shape: &[usize], data: Vec<f32>) -> Result<HostTensor, SampleError> {
    let bad = |e: ndarray::ShapeError| SampleError::Plan(format!("shape {shape:?}: {e}"));
    Ok(match dtype {
        "f16" => HostTensor::F16(
            ArrayD::from_shape_vec(IxDyn(shape), data.into_iter().map(f16::from_f32).collect())
                .map_err(bad)?,
        ),
        _ => HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).map_err(bad)?),
    })
}

fn floats_of(t: &HostTensor, name: &str) -> Result<Vec<f32>, SampleError> {
    match t {
        HostTensor::F32(a) => Ok(a.iter().copied().collect()),
        HostTensor::F16(a) => Ok(a.iter().map(|v| v.to_f32()).collect()),
        HostTensor::I64(_) => Err(SampleError::Plan(format!(
            "the model output `{name}` is integer"
        ))),
    }
}

/// The timestep input of one rank: `spec`'s local shape filled with `t` in `spec`'s element
/// type (integer types truncate, as torch's `.long()` does).
fn timestep_tensor(spec: &TensorSpec, t: f64) -> Result<HostTensor, SampleError> {
    // Replicated across bands: every band's shape is the same.
    let shape: Vec<usize> = spec
        .local_shape(0)
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    Ok(match spec.dtype.as_str() {
        "f32" => HostTensor::F32(ArrayD::from_elem(IxDyn(&shape), t as f32)),
        "f16" => HostTensor::F16(ArrayD::from_elem(IxDyn(&shape), f16::from_f64(t))),
        "i64" => HostTensor::I64(ArrayD::from_elem(IxDyn(&shape), t as i64)),
        other => {
            return Err(SampleError::Plan(format!(
                "the timestep `{}` has element type {other}; f32, f16 or i64 expected",
                spec.name
            )));
        }
    })
}

/// Where one rank's band sits in the final latent.
struct Placement {
    /// The band's images (batch entries of the final latent).
    images: Range<usize>,
    /// The band's latent rows.
    rows: Range<usize>,
}

/// Samples with the plan loaded in `exec` (any [`UnetExecutor`]: the CPU executor runs every
/// rank, a GPU process its own): `cond` holds every model input but the latent and the
/// timestep, at full batch (entries named like those two, or unknown to the plan, are
/// ignored). `progress` is called after every step with the number of steps done. Every
/// process of a multi-process run gets the whole final latent.
pub fn sample<E: UnetExecutor>(
    exec: &mut E,
    cond: &[(String, HostTensor)],
    options: &SampleOptions,
    mut progress: impl FnMut(usize),
) -> Result<Sampled, SampleError> {
    sample_until(exec, cond, options, |done| {
        progress(done);
        true
    })
}

/// [`sample`], stopped early with [`SampleError::Cancelled`] when `go_on` (called after every
/// step with the number of steps done) returns false. Only for executors that run every rank
/// (a multi-process run must stop all its processes together).
pub fn sample_until<E: UnetExecutor>(
    exec: &mut E,
    cond: &[(String, HostTensor)],
    options: &SampleOptions,
    mut go_on: impl FnMut(usize) -> bool,
) -> Result<Sampled, SampleError> {
    let plan = exec.plan().clone();
    let local = exec.local_ranks();
    let Roles {
        latent,
        timestep,
        output,
    } = roles(&plan)?;
    let dims: Vec<usize> = latent.shape.iter().map(|&d| d.max(0) as usize).collect();
    let [batch, channels, height, width] = [dims[0], dims[1], dims[2], dims[3]];
    let groups = plan.groups.len();
    let split = latent.layout.group_axis.is_some() && groups > 1;
    let cfg = options.cfg_scale();
    if cfg.is_some() && split && groups != 2 {
        return Err(SampleError::Plan(format!(
            "guidance with a split batch needs 2 groups, the plan has {groups}"
        )));
    }
    if cfg.is_some() && !batch.is_multiple_of(2) {
        return Err(SampleError::Options(format!(
            "guidance needs the model compiled for an even batch (unconditional half first); \
             the plan's batch is {batch} (compile with --batch {}, or sample without --guidance)",
            2 * batch
        )));
    }
    let images = if cfg.is_some() { batch / 2 } else { batch };
    let full_shape = [images, channels, height, width];
    let noise = latent_noise(options.seed, full_shape);
    let plane = channels * height * width;

    // Where every rank's band sits (all ranks: the final latent is assembled from them).
    let placements: Vec<Placement> = plan
        .ranks
        .iter()
        .map(|r| {
            let rows = r.rows[0].max(0) as usize..r.rows[1].max(0) as usize;
            if rows.is_empty() || rows.end > height {
                return Err(SampleError::Plan(format!(
                    "rank {} owns rows {rows:?} of a latent of {height} rows",
                    r.rank
                )));
            }
            let images = match (cfg, split) {
                (None, true) => {
                    let per = batch / groups;
                    r.group * per..(r.group + 1) * per
                }
                _ => 0..images,
            };
            Ok(Placement { images, rows })
        })
        .collect::<Result<_, _>>()?;

    let cond_per_rank = exec
        .split_inputs_except(cond, &[latent.name.as_str(), timestep.name.as_str()])
        .map_err(Into::into)?;
    let mut states = Vec::with_capacity(local.len());
    for &rank in &local {
        let r = plan
            .ranks
            .get(rank)
            .ok_or_else(|| SampleError::Plan(format!("the plan has no rank {rank}")))?;
        let Placement { images: mine, rows } = &placements[rank];
        let local_dims: Vec<usize> = latent
            .local_shape(r.band)
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let mut x = take_rows(
            &noise[mine.start * plane..mine.end * plane],
            [mine.len(), channels, height, width],
            rows.clone(),
        )?;
        let sampler = options.sampler.build()?;
        sampler.init_latents(&mut x);
        let model_batch = if cfg.is_some() && !split {
            2 * mine.len()
        } else {
            mine.len()
        };
        let want = [model_batch, channels, rows.len(), width];
        if local_dims != want {
            return Err(SampleError::Plan(format!(
                "rank {}: the latent's per-rank shape is {local_dims:?}, the loop feeds {want:?}",
                r.rank
            )));
        }
        states.push(RankState {
            rank,
            dims: local_dims,
            x,
            sampler,
        });
    }
    let Some(first) = states.first() else {
        return Err(SampleError::Plan("the executor runs no rank".into()));
    };
    // The CFG pair of every local rank under split batch: band b of group 0 (unconditional)
    // and of group 1 (conditional).
    let pairs: Vec<(usize, usize)> = states
        .iter()
        .map(|s| {
            let band = plan.ranks[s.rank].band;
            let at = |g: usize| plan.groups.get(g).and_then(|m| m.get(band)).copied();
            (at(0).unwrap_or(s.rank), at(1).unwrap_or(s.rank))
        })
        .collect();

    let steps = options.sampler.steps;
    let timesteps: Vec<f64> = first.sampler.timesteps().to_vec();
    let mut step_seconds = Vec::with_capacity(steps);
    for (i, &t) in timesteps.iter().enumerate() {
        let start = std::time::Instant::now();
        let stale = plan.mode == Mode::Displaced && i as u64 > u64::from(plan.warmup);
        let ts = timestep_tensor(timestep, t)?;
        let mut feeds: Vec<NamedTensors> = Vec::with_capacity(states.len());
        for (s, cond) in states.iter().zip(&cond_per_rank) {
            let mut scaled = vec![0f32; s.x.len()];
            s.sampler.scale_model_input(i, &s.x, &mut scaled)?;
            if cfg.is_some() && !split {
                scaled.extend_from_within(..);
            }
            let mut feed = cond.clone();
            feed.push((
                latent.name.clone(),
                tensor_of(&latent.dtype, &s.dims, scaled)?,
            ));
            feed.push((timestep.name.clone(), ts.clone()));
            feeds.push(feed);
        }
        let outs = exec.run_ranks(feeds, stale).map_err(Into::into)?;
        if outs.len() != states.len() {
            return Err(SampleError::Plan(format!(
                "the executor returned {} output sets for {} ranks",
                outs.len(),
                states.len()
            )));
        }
        let mut bands: Vec<Vec<f32>> = outs
            .iter()
            .zip(&states)
            .map(|(o, s)| {
                let t = o
                    .iter()
                    .find(|(n, _)| *n == output.name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| {
                        SampleError::Plan(format!(
                            "rank {} did not produce `{}`",
                            s.rank, output.name
                        ))
                    })?;
                floats_of(t, &output.name)
            })
            .collect::<Result<_, _>>()?;
        let guided: Vec<Vec<f32>> = match cfg {
            None => std::mem::take(&mut bands),
            Some(scale) if !split => bands
                .iter()
                .map(|b| {
                    let (u, c) = b.split_at(b.len() / 2);
                    guide(u, c, scale)
                })
                .collect::<Result<_, _>>()?,
            Some(scale) => {
                let partners: Vec<usize> = states
                    .iter()
                    .zip(&pairs)
                    .map(|(s, &(u, c))| if s.rank == u { c } else { u })
                    .collect();
                let theirs = exec.partner_bands(&bands, &partners)?;
                states
                    .iter()
                    .zip(&pairs)
                    .zip(bands.iter().zip(&theirs))
                    .map(|((s, &(u, _)), (mine, other))| {
                        if s.rank == u {
                            guide(mine, other, scale)
                        } else {
                            guide(other, mine, scale)
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        for (s, g) in states.iter_mut().zip(&guided) {
            s.sampler.step(i, g, &mut s.x)?;
        }
        step_seconds.push(start.elapsed().as_secs_f64());
        if !go_on(i + 1) && i + 1 < steps {
            return Err(SampleError::Cancelled { done: i + 1, steps });
        }
    }
    let xs = exec.all_bands(states.into_iter().map(|s| s.x).collect())?;
    if xs.len() != placements.len() {
        return Err(SampleError::Plan(format!(
            "{} final bands for {} ranks",
            xs.len(),
            placements.len()
        )));
    }
    let mut full = vec![0f32; noise.len()];
    for (x, p) in xs.iter().zip(&placements) {
        let part = &mut full[p.images.start * plane..p.images.end * plane];
        put_rows(
            x,
            [p.images.len(), channels, height, width],
            p.rows.clone(),
            part,
        )?;
    }
    let latent = ArrayD::from_shape_vec(IxDyn(&full_shape), full)
        .map_err(|e| SampleError::Plan(format!("final latent: {e}")))?;
    Ok(Sampled {
        latent,
        step_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_fills_the_spec() {
        let spec = TensorSpec {
            name: "timestep".into(),
            dtype: "i64".into(),
            shape: vec![2],
            local_shapes: vec![vec![1]],
            layout: crate::plan::Layout {
                band_axis: None,
                group_axis: Some(0),
            },
        };
        let t = timestep_tensor(&spec, 981.7).expect("i64");
        assert_eq!(t, HostTensor::I64(ArrayD::from_elem(IxDyn(&[1]), 981)));
    }
}
