//! Executing a plan folder on the CPU: one ONNX Runtime session per rank, each registering its
//! own `dfc` operator domain bound to its [`RankContext`], all ranks run in lockstep on threads
//! of this process and exchange through the in-process [`Communicator`] of their group.
//!
//! [`PlanExecutor::run_unet`] is one UNet evaluation on full-size tensors: each input is split
//! per its layout (the rank's band along `band_axis`, the group's half along `group_axis`, else
//! whole), every rank runs one step, and the outputs are gathered back (bands concatenated
//! within a group, halves across groups) under the original names; [`super::bands`] splits and
//! gathers.
//!
//! **Invariant:** every session executes its nodes sequentially, so each rank reaches its
//! exchanges in one fixed order; the communicator checks that the order agrees across ranks.
//! A failing rank poisons every communicator, so the others return instead of waiting.
//!
//! Thread budget: `threads` (default: the available cores) is shared by the ranks; each session
//! gets `max(1, threads / world_size)` intra-op threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::bands::{BandError, gather_for_plan, split_for_plan};
use super::host::{HostTensor, NamedTensors};
use super::ort_env::OrtEnvError;
use super::session::{ModelSession, RunError, SessionOptions};
use crate::plan::{Plan, PlanError};
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
    /// Full-size inputs or per-rank outputs that do not fit the plan.
    #[error(transparent)]
    Bands(#[from] BandError),
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
        Ok(split_for_plan(&self.plan, inputs, skip)?)
    }

    /// The full-size outputs assembled from every rank's outputs.
    pub fn gather_outputs(&self, per_rank: &[NamedTensors]) -> Result<NamedTensors, ExecError> {
        Ok(gather_for_plan(&self.plan, per_rank)?)
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
            return Err(ExecError::Bands(BandError::Input {
                name: String::new(),
                reason: format!(
                    "{} rank input sets for {} ranks",
                    inputs.len(),
                    self.ranks.len()
                ),
            }));
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

#[cfg(test)]
mod tests {
    use super::*;

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
