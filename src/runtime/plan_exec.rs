//! Executing a plan folder on the CPU: one ONNX Runtime session per rank, each registering its
//! own `dfc` operator domain bound to its [`RankContext`], all ranks run in lockstep on threads
//! of this process and exchange through the in-process [`Communicator`] of their group.
//!
//! [`PlanExecutor::run_unet`] is one UNet evaluation on full-size tensors: each input is split
//! per its [`Layout`] (the rank's band along `band_axis`, the group's half along `group_axis`,
//! else whole), every rank runs one step, and the outputs are gathered back (bands concatenated
//! within a group, halves across groups) under the original names.
//!
//! **Invariant:** every session executes its nodes sequentially, so each rank reaches its
//! exchanges in one fixed order; the communicator checks that the order agrees across ranks.
//! A failing rank poisons every communicator, so the others return instead of waiting.
//!
//! Thread budget: `threads` (default: the available cores) is shared by the ranks; each session
//! gets `max(1, threads / world_size)` intra-op threads.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ndarray::{ArrayD, Axis, Slice};

use super::host::{HostTensor, NamedTensors};
use super::ort_env::OrtEnvError;
use super::session::{ModelSession, RunError, SessionOptions};
use crate::contract::Bands;
use crate::plan::{Layout, Plan, PlanError, TensorSpec};
use crate::plugins::{Communicator, Jitter, RankContext, operator_domain};

/// Errors of loading or running a plan.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Env(#[from] OrtEnvError),
    #[error("rank {rank}: cannot create the dfc exchange operators: {message}")]
    Operators { rank: usize, message: String },
    #[error("rank {rank} failed")]
    Rank {
        rank: usize,
        #[source]
        source: RunError,
    },
    #[error("rank {rank} crashed: {message}")]
    Panic { rank: usize, message: String },
    #[error("the inputs have no `{name}` (the plan's inputs: {known})")]
    MissingInput { name: String, known: String },
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("output `{name}`: {reason}")]
    Output { name: String, reason: String },
    #[error("an earlier run of this plan failed ({0}); load the plan again")]
    Failed(String),
}

/// Options of a [`PlanExecutor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Cores shared by all ranks (0: the available cores).
    pub threads: usize,
    /// Whether ONNX Runtime may rewrite the rank graphs.
    pub optimize: bool,
    /// Fail (instead of waiting on) an exchange that waits longer than this (`None`: no limit).
    pub timeout: Option<Duration>,
    /// Inject pseudo-random delays around every exchange (a check that results do not depend
    /// on the ranks' timing).
    pub jitter: Option<Jitter>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            optimize: true,
            timeout: None,
            jitter: None,
        }
    }
}

impl ExecOptions {
    /// The cores shared by all ranks.
    pub fn cores(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Intra-op threads of each of `ranks` sessions.
    pub fn threads_per_rank(&self, ranks: usize) -> usize {
        (self.cores() / ranks.max(1)).max(1)
    }
}

struct Rank {
    session: ModelSession,
    ctx: Arc<RankContext>,
}

/// A loaded plan: the sessions of every rank and the communicators of every group.
pub struct PlanExecutor {
    dir: PathBuf,
    plan: Plan,
    ranks: Vec<Rank>,
    comms: Vec<Arc<Communicator>>,
    threads_per_rank: usize,
    next_step: u64,
    failed: Option<String>,
}

/// The first failure of a lockstep run; recording it poisons every group.
struct Abort<'a> {
    comms: &'a [Arc<Communicator>],
    first: Mutex<Option<ExecError>>,
}

impl Abort<'_> {
    fn fail(&self, err: ExecError) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        let reason = err.to_string();
        let reason = match std::error::Error::source(&err) {
            Some(s) => format!("{reason}: {s}"),
            None => reason,
        };
        if first.is_none() {
            *first = Some(err);
        }
        drop(first);
        for c in self.comms {
            c.poison(reason.clone());
        }
    }

    fn take(self) -> Option<ExecError> {
        self.first.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

impl PlanExecutor {
    /// Loads the plan folder `dir`: reads `plan.json` and creates every rank's session (in
    /// parallel, one thread per rank).
    pub fn load(dir: &Path, options: ExecOptions) -> Result<Self, ExecError> {
        let plan = Plan::load(dir)?;
        // Load the library before any thread touches the ONNX Runtime API.
        super::ort_env::environment()?;
        let comms: Vec<Arc<Communicator>> = plan
            .groups
            .iter()
            .map(|g| {
                Arc::new(
                    Communicator::new(g.len())
                        .with_timeout(options.timeout)
                        .with_jitter(options.jitter),
                )
            })
            .collect();
        let threads_per_rank = options.threads_per_rank(plan.world_size);
        let session_options = SessionOptions {
            threads: threads_per_rank,
            optimize: options.optimize,
            // Spinning pays only while every rank's threads have a core of their own.
            spin: plan.world_size * threads_per_rank <= options.cores(),
        };
        let always_fresh: Vec<u32> = plan
            .exchanges
            .iter()
            .filter(|e| e.always_fresh)
            .map(|e| e.slot)
            .collect();
        let gn = plan.gn;
        let bands = &plan.bands;
        let loaded: Vec<Result<Rank, ExecError>> = std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .ranks
                .iter()
                .map(|spec| {
                    let comm = comms[spec.group].clone();
                    let path = dir.join(&spec.file);
                    let always_fresh = always_fresh.clone();
                    s.spawn(move || -> Result<Rank, ExecError> {
                        let ctx = Arc::new(
                            RankContext::new(comm, spec.band)
                                .with_always_fresh(always_fresh)
                                .with_gn(gn)
                                .with_bands(bands),
                        );
                        let domain =
                            operator_domain(ctx.clone()).map_err(|e| ExecError::Operators {
                                rank: spec.rank,
                                message: e.to_string(),
                            })?;
                        let session =
                            ModelSession::with_operators(&path, session_options, vec![domain])
                                .map_err(|source| ExecError::Rank {
                                    rank: spec.rank,
                                    source,
                                })?;
                        Ok(Rank { session, ctx })
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(rank, h)| {
                    h.join().unwrap_or_else(|p| {
                        Err(ExecError::Panic {
                            rank,
                            message: panic_message(&*p),
                        })
                    })
                })
                .collect()
        });
        let ranks = loaded.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            plan,
            ranks,
            comms,
            threads_per_rank,
            next_step: 0,
            failed: None,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The plan folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Intra-op threads of each rank's session.
    pub fn threads_per_rank(&self) -> usize {
        self.threads_per_rank
    }

    /// Number of lockstep steps run so far by this executor (every [`run_ranks`](Self::run_ranks)
    /// is one step; the step numbers keep increasing across calls, so the first stale step of
    /// a sampling loop reads the context of the loop's previous step).
    pub fn steps_run(&self) -> u64 {
        self.next_step
    }

    /// One synchronous UNet evaluation on full-size `inputs` (named as in the original model;
    /// entries that are not plan inputs are ignored). Returns the gathered outputs, in the
    /// plan's order.
    pub fn run_unet(&mut self, inputs: &[(String, HostTensor)]) -> Result<NamedTensors, ExecError> {
        let per_rank = self.split_inputs(inputs)?;
        let outputs = self.run_ranks(per_rank, false)?;
        self.gather_outputs(&outputs)
    }

    /// Each rank's inputs, cut from full-size `inputs` per the plan's layouts.
    pub fn split_inputs(
        &self,
        inputs: &[(String, HostTensor)],
    ) -> Result<Vec<NamedTensors>, ExecError> {
        self.split_inputs_except(inputs, &[])
    }

    /// Like [`split_inputs`](Self::split_inputs), for every plan input except those named in
    /// `skip` (which the caller feeds per rank itself, e.g. the latent band and the timestep
    /// of a sampling loop); entries of `inputs` named in `skip` are ignored.
    pub fn split_inputs_except(
        &self,
        inputs: &[(String, HostTensor)],
        skip: &[&str],
    ) -> Result<Vec<NamedTensors>, ExecError> {
        split_for_plan(&self.plan, inputs, skip)
    }

    /// The full-size outputs assembled from every rank's outputs.
    pub fn gather_outputs(&self, per_rank: &[NamedTensors]) -> Result<NamedTensors, ExecError> {
        let mut out = Vec::new();
        for spec in &self.plan.outputs {
            let bad = |reason: String| ExecError::Output {
                name: spec.name.clone(),
                reason,
            };
            let of_rank = |rank: usize| -> Result<&HostTensor, ExecError> {
                let t = per_rank
                    .get(rank)
                    .and_then(|o| o.iter().find(|(n, _)| *n == spec.name))
                    .map(|(_, t)| t)
                    .ok_or_else(|| bad(format!("rank {rank} did not produce it")))?;
                let band = self.plan.ranks.get(rank).map_or(0, |r| r.band);
                check_tensor(spec, t, spec.local_shape(band), "the plan's per-rank")
                    .map_err(|e| bad(format!("rank {rank}: {e}")))?;
                Ok(t)
            };
            let mut groups = Vec::with_capacity(self.plan.groups.len());
            for members in &self.plan.groups {
                let bands: Vec<&HostTensor> = members
                    .iter()
                    .map(|&r| of_rank(r))
                    .collect::<Result<_, _>>()?;
                groups.push(match spec.layout.band_axis {
                    Some(axis) => concat(&bands, axis).map_err(bad)?,
                    None => bands[0].clone(),
                });
            }
            let refs: Vec<&HostTensor> = groups.iter().collect();
            let full = match spec.layout.group_axis {
                Some(axis) => concat(&refs, axis).map_err(bad)?,
                None => groups.swap_remove(0),
            };
            check_tensor(spec, &full, &spec.shape, "the plan's full").map_err(bad)?;
            out.push((spec.name.clone(), full));
        }
        Ok(out)
    }

    /// Runs every rank once, in lockstep, on its own inputs; returns every rank's outputs,
    /// indexed by rank, without gathering them. With `stale`, exchanges read the context of
    /// the previous call (displaced mode after warmup): each call is step
    /// [`steps_run`](Self::steps_run) of the ranks' contexts, one more than the call before.
    pub fn run_ranks(
        &mut self,
        inputs: Vec<NamedTensors>,
        stale: bool,
    ) -> Result<Vec<NamedTensors>, ExecError> {
        if let Some(reason) = &self.failed {
            return Err(ExecError::Failed(reason.clone()));
        }
        if inputs.len() != self.ranks.len() {
            return Err(ExecError::Input {
                name: String::new(),
                reason: format!(
                    "{} rank input sets for {} ranks",
                    inputs.len(),
                    self.ranks.len()
                ),
            });
        }
        let step = self.next_step;
        self.next_step += 1;
        let abort = Abort {
            comms: &self.comms,
            first: Mutex::new(None),
        };
        let results: Vec<Option<NamedTensors>> = std::thread::scope(|s| {
            let abort = &abort;
            let handles: Vec<_> = self
                .ranks
                .iter_mut()
                .zip(inputs)
                .enumerate()
                .map(|(rank, (r, feed))| {
                    s.spawn(move || {
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            r.ctx.begin_step(step, stale);
                            let out = r.session.run(&feed, false);
                            if out.is_ok() {
                                r.ctx.end_step();
                            }
                            out
                        }));
                        match run {
                            Ok(Ok(out)) => Some(out),
                            Ok(Err(source)) => {
                                abort.fail(ExecError::Rank { rank, source });
                                None
                            }
                            Err(p) => {
                                abort.fail(ExecError::Panic {
                                    rank,
                                    message: panic_message(&*p),
                                });
                                None
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        });
        if let Some(err) = abort.take() {
            self.failed = Some(err.to_string());
            return Err(err);
        }
        results
            .into_iter()
            .enumerate()
            .map(|(rank, r)| {
                r.ok_or_else(|| ExecError::Panic {
                    rank,
                    message: "the rank thread ended without a result".into(),
                })
            })
            .collect()
    }
}

/// Each rank's inputs (indexed by rank), cut from full-size `inputs` per `plan`'s layouts, for
/// every plan input except those named in `skip` (see [`PlanExecutor::split_inputs_except`]).
pub fn split_for_plan(
    plan: &Plan,
    inputs: &[(String, HostTensor)],
    skip: &[&str],
) -> Result<Vec<NamedTensors>, ExecError> {
    let mut per_rank: Vec<NamedTensors> = vec![Vec::new(); plan.world_size];
    for spec in &plan.inputs {
        if skip.contains(&spec.name.as_str()) {
            continue;
        }
        let Some((_, full)) = inputs.iter().find(|(n, _)| *n == spec.name) else {
            return Err(ExecError::MissingInput {
                name: spec.name.clone(),
                known: plan
                    .inputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .filter(|n| !skip.contains(n))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let bad = |reason: String| ExecError::Input {
            name: spec.name.clone(),
            reason,
        };
        check_tensor(spec, full, &spec.shape, "the plan's full").map_err(bad)?;
        for r in &plan.ranks {
            let part = split(
                full,
                &spec.layout,
                (r.group, plan.groups.len()),
                (r.band, &plan.bands),
            )
            .map_err(bad)?;
            check_tensor(spec, &part, spec.local_shape(r.band), "the plan's per-rank")
                .map_err(|e| bad(format!("rank {}: {e}", r.rank)))?;
            per_rank[r.rank].push((spec.name.clone(), part));
        }
    }
    Ok(per_rank)
}

/// Checks dtype and shape of `t` against `spec` and `shape`.
fn check_tensor(
    spec: &TensorSpec,
    t: &HostTensor,
    shape: &[i64],
    which: &str,
) -> Result<(), String> {
    if t.dtype() != spec.dtype {
        return Err(format!(
            "element type {} where the plan has {}",
            t.dtype(),
            spec.dtype
        ));
    }
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    if dims != shape {
        return Err(format!("shape {dims:?} where {which} shape is {shape:?}"));
    }
    Ok(())
}

/// Elements `cut` of `t` along `axis`.
fn part_of(t: &HostTensor, axis: usize, cut: Range<usize>) -> Result<HostTensor, String> {
    let shape = t.shape();
    let Some(&len) = shape.get(axis) else {
        return Err(format!("axis {axis} is outside the shape {shape:?}"));
    };
    if cut.end > len {
        return Err(format!("part {cut:?} of axis {axis} beyond its size {len}"));
    }
    let cut = Slice::from(cut);
    fn slice<T: Clone>(a: &ArrayD<T>, axis: usize, cut: Slice) -> ArrayD<T> {
        a.slice_axis(Axis(axis), cut).to_owned()
    }
    Ok(match t {
        HostTensor::F32(a) => HostTensor::F32(slice(a, axis, cut)),
        HostTensor::F16(a) => HostTensor::F16(slice(a, axis, cut)),
        HostTensor::I64(a) => HostTensor::I64(slice(a, axis, cut)),
    })
}

/// The part of the full tensor `t` that the rank at `band` of `bands`, in group `group.0` of
/// `group.1`, holds: its group's equal share along `group_axis`, then its band along
/// `band_axis`.
fn split(
    t: &HostTensor,
    layout: &Layout,
    (group, groups): (usize, usize),
    (band, bands): (usize, &Bands),
) -> Result<HostTensor, String> {
    let mut t = t.clone();
    if let Some(axis) = layout.group_axis {
        let len = t.shape().get(axis).copied().unwrap_or(0);
        if groups == 0 || len % groups != 0 {
            return Err(format!(
                "size {len} on axis {axis} does not split into {groups} equal parts"
            ));
        }
        let step = len / groups;
        t = part_of(&t, axis, group * step..(group + 1) * step)?;
    }
    if let Some(axis) = layout.band_axis {
        let len = t.shape().get(axis).copied().unwrap_or(0);
        let part = bands.part(band, len as i64).ok_or_else(|| {
            format!("size {len} on axis {axis} does not cut into the bands {bands}")
        })?;
        t = part_of(&t, axis, part.start as usize..part.end as usize)?;
    }
    Ok(t)
}

/// Concatenation of `parts` (same element type) along `axis`.
fn concat(parts: &[&HostTensor], axis: usize) -> Result<HostTensor, String> {
    fn cat<T: Clone>(arrays: Vec<&ArrayD<T>>, axis: usize) -> Result<ArrayD<T>, String> {
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(axis), &views).map_err(|e| format!("cannot concatenate: {e}"))
    }
    macro_rules! all {
        ($variant:ident) => {
            parts
                .iter()
                .map(|p| match p {
                    HostTensor::$variant(a) => Ok(a),
                    other => Err(format!(
                        "ranks returned mixed element types ({})",
                        other.dtype()
                    )),
                })
                .collect::<Result<Vec<_>, String>>()
        };
    }
    match parts.first() {
        None => Err("no parts to concatenate".into()),
        Some(HostTensor::F32(_)) => Ok(HostTensor::F32(cat(all!(F32)?, axis)?)),
        Some(HostTensor::F16(_)) => Ok(HostTensor::F16(cat(all!(F16)?, axis)?)),
        Some(HostTensor::I64(_)) => Ok(HostTensor::I64(cat(all!(I64)?, axis)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn iota(shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor::F32(
            ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|v| v as f32).collect())
                .expect("shape"),
        )
    }

    #[test]
    fn split_then_concat_is_the_identity() {
        let t = iota(&[2, 3, 8, 5]);
        let layout = Layout {
            band_axis: Some(2),
            group_axis: Some(0),
        };
        let mut groups = Vec::new();
        let four = Bands::from_heights(&[2, 2, 2, 2]).expect("bands");
        let uneven = Bands::from_heights(&[3, 3, 2]).expect("bands");
        for g in 0..2 {
            let bands: Vec<HostTensor> = (0..4)
                .map(|b| split(&t, &layout, (g, 2), (b, &four)).expect("split"))
                .collect();
            assert_eq!(bands[0].shape(), &[1, 3, 2, 5]);
            let refs: Vec<&HostTensor> = bands.iter().collect();
            groups.push(concat(&refs, 2).expect("concat"));
        }
        let refs: Vec<&HostTensor> = groups.iter().collect();
        assert_eq!(concat(&refs, 0).expect("concat"), t);
        let mut groups = Vec::new();
        for g in 0..2 {
            let bands: Vec<HostTensor> = (0..3)
                .map(|b| split(&t, &layout, (g, 2), (b, &uneven)).expect("split"))
                .collect();
            assert_eq!(bands[2].shape(), &[1, 3, 2, 5]);
            let refs: Vec<&HostTensor> = bands.iter().collect();
            groups.push(concat(&refs, 2).expect("concat"));
        }
        let refs: Vec<&HostTensor> = groups.iter().collect();
        assert_eq!(concat(&refs, 0).expect("concat"), t);
    }

    #[test]
    fn a_cut_off_the_rows_is_an_error() {
        let t = iota(&[1, 6]);
        let layout = Layout {
            band_axis: Some(1),
            group_axis: None,
        };
        let bands = Bands::from_heights(&[3, 5]).expect("bands");
        let err = split(&t, &layout, (0, 1), (0, &bands)).expect_err("6 into 3/8 and 5/8");
        assert!(err.contains("does not cut"), "{err}");
        let err = part_of(&t, 1, 4..8).expect_err("beyond the end");
        assert!(err.contains("beyond"), "{err}");
    }

    #[test]
    fn thread_budget_is_shared() {
        let o = ExecOptions {
            threads: 8,
            ..ExecOptions::default()
        };
        assert_eq!(o.threads_per_rank(2), 4);
        assert_eq!(o.threads_per_rank(16), 1);
    }
}
