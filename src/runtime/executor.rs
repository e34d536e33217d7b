//! What the sampling loop needs from a backend: [`UnetExecutor`], one lockstep UNet step of
//! the ranks it runs, plus the two host-side exchanges of the loop (the CFG pair's band outputs
//! under split batch, and every rank's final band).
//!
//! An executor runs some of the plan's ranks, its *local* ranks: the CPU executor
//! ([`super::PlanExecutor`]) runs all of them as threads of one process; the GPU executor runs
//! the one rank of its process (`dfc launch` starts one process per GPU). Every per-rank vector
//! of this trait (feeds, outputs, bands) follows [`UnetExecutor::local_ranks`]'s order.
//!
//! [`SampleError`] is what the loop reports: a backend's own error (the CPU executor's
//! [`ExecError`], any other backend's boxed), the samplers', and the loop's own. It lives here,
//! with the trait whose methods return it, so that backends depend on this module and never on
//! the loop ([`super::sampling`] re-exports it).

use thiserror::Error;

use super::host::{HostTensor, NamedTensors};
use super::plan_exec::{ExecError, PlanExecutor};
use super::sampler::SamplerError;
use crate::plan::Plan;

/// Errors of the sampling loop.
#[derive(Debug, Error)]
pub enum SampleError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The plan does not fit the sampling loop's conventions.
    #[error("this plan cannot be sampled: {0}")]
    Plan(String),
    /// The options do not fit the plan.
    #[error("{0}")]
    Options(String),
    /// The caller stopped the loop (see [`super::sampling::sample_until`]).
    #[error("cancelled after {done} of {steps} steps")]
    Cancelled { done: usize, steps: usize },
    /// A backend other than the CPU executor failed (e.g. the GPU executor).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// A backend of the sampling loop (see the module documentation).
pub trait UnetExecutor {
    /// The error of this backend; the loop reports it as a [`SampleError`].
    type Error: Into<SampleError>;

    /// The plan being run.
    fn plan(&self) -> &Plan;

    /// The ranks this executor runs, ascending (default: every rank of the plan).
    fn local_ranks(&self) -> Vec<usize> {
        (0..self.plan().world_size).collect()
    }

    /// Each local rank's share of the full-size `inputs`, for every plan input except those
    /// named in `skip` (entries of `inputs` named in `skip` are ignored).
    fn split_inputs_except(
        &self,
        inputs: &[(String, HostTensor)],
        skip: &[&str],
    ) -> Result<Vec<NamedTensors>, Self::Error>;

    /// One lockstep step of every local rank on its `feeds`; returns each local rank's
    /// outputs. With `stale`, exchanges read the previous call's peers (displaced mode after
    /// warmup); every call is one step more than the one before.
    fn run_ranks(
        &mut self,
        feeds: Vec<NamedTensors>,
        stale: bool,
    ) -> Result<Vec<NamedTensors>, Self::Error>;

    /// For each local rank `i`, the band `partners[i]` holds (`bands` holds the local ranks'
    /// bands; every rank of the plan calls this together, with matching partners). The default
    /// serves executors that run every rank.
    fn partner_bands(
        &mut self,
        bands: &[Vec<f32>],
        partners: &[usize],
    ) -> Result<Vec<Vec<f32>>, SampleError> {
        let local = self.local_ranks();
        partners
            .iter()
            .map(|p| {
                local
                    .iter()
                    .position(|r| r == p)
                    .and_then(|i| bands.get(i).cloned())
                    .ok_or_else(|| {
                        SampleError::Plan(format!("rank {p} is not run by this executor"))
                    })
            })
            .collect()
    }

    /// Every rank's band, indexed by rank, from the local ranks' `bands` (all ranks call this
    /// together, once, at the end). The default serves executors that run every rank.
    fn all_bands(&mut self, bands: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, SampleError> {
        let world = self.plan().world_size;
        if self.local_ranks() != (0..world).collect::<Vec<_>>() || bands.len() != world {
            return Err(SampleError::Plan(format!(
                "{} local bands for a plan of {world} ranks",
                bands.len()
            )));
        }
        Ok(bands)
    }
}

impl UnetExecutor for PlanExecutor {
    type Error = ExecError;

    fn plan(&self) -> &Plan {
        PlanExecutor::plan(self)
    }

    fn split_inputs_except(
        &self,
        inputs: &[(String, HostTensor)],
        skip: &[&str],
    ) -> Result<Vec<NamedTensors>, ExecError> {
        PlanExecutor::split_inputs_except(self, inputs, skip)
    }

    fn run_ranks(
        &mut self,
        feeds: Vec<NamedTensors>,
        stale: bool,
    ) -> Result<Vec<NamedTensors>, ExecError> {
        PlanExecutor::run_ranks(self, feeds, stale)
    }
}
