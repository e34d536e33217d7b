//! The compiler driver: load a model, run the compile pipelines of [`crate::PIPELINES`], and
//! write a plan folder (DESIGN §4): `rank{i}.onnx` for every rank, one shared weights file, and
//! `plan.json` ([`crate::plan::Plan`]). [`compile`] is the one entry point.
//!
//! The stages, each in its own module: `graphs` runs `compile` on the whole graph (after
//! `split-batch` when `--split-batch` halves a batch fixed to the CFG pair), then
//! `compile-band` once per distinct band height; `plan` builds the plan from the compiled
//! graphs, a pure function; `weights` writes the rank files and the shared weights file;
//! `write` writes the whole folder atomically.
//!
//! Weights are written once: every initializer larger than [`EXTERNAL_THRESHOLD`] bytes goes
//! into `weights.bin` (offsets aligned to [`ALIGN`]) and every rank graph references it through
//! ONNX external data; tensors that were already external in the source keep their file, shared
//! into the plan folder by hard link. Rank graphs differ only in their per-band constants.
//!
//! **Invariant:** a plan folder is written atomically: everything is built in a temporary folder
//! next to the target and renamed into place; on any error nothing is left. An existing folder
//! is replaced only when it is empty or holds a dfc plan.

mod graphs;
mod plan;
mod weights;
mod write;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use crate::plan::{GnMode, Mode, Plan};
use crate::specialize::SpecializeOptions;
use crate::{BandRequest, PassTiming};

pub use plan::bytes_received;
pub use weights::{ALIGN, EXTERNAL_THRESHOLD, WEIGHTS_FILE};

/// What to compile.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub model: PathBuf,
    pub output: PathBuf,
    /// World size (GPUs).
    pub gpus: usize,
    /// How each group's image is cut (`None`: `gpus` bands, or `gpus / 2` with
    /// `split_batch`, as even as the model allows). Its band count must be the group size.
    pub bands: Option<BandRequest>,
    /// Sizes; `batch` is the full batch (both CFG halves).
    pub sizes: SpecializeOptions,
    pub mode: Mode,
    pub warmup: u32,
    /// GroupNorm statistics in displaced mode's stale steps.
    pub gn: GnMode,
    pub split_batch: bool,
    /// Stop after this pass (of `compile` or `compile-band`, for the first band) and return
    /// its dump; nothing is written.
    pub dump_after: Option<String>,
}

/// What a compilation did.
#[derive(Debug, Default)]
pub struct CompileReport {
    /// Every pass run, once; a pass run for several bands has their summed time.
    pub timings: Vec<PassTiming>,
    /// `(pass, dump)` when `dump_after` was given.
    pub dump: Option<(String, String)>,
    /// The plan written (absent when stopped early).
    pub plan: Option<Plan>,
    pub emit_seconds: f64,
    pub warnings: Vec<String>,
}

/// Compiles `opts.model` and writes the plan folder `opts.output` (see the module docs); with
/// `dump_after`, returns the dump and writes nothing.
pub fn compile(opts: &CompileOptions) -> Result<CompileReport> {
    let parent = write::parent_of(&opts.output);
    if opts.dump_after.is_none() {
        write::check_target(&opts.output, &parent)?;
    }
    let (mut report, compiled) = graphs::compile_graphs(opts)?;
    let Some(c) = compiled else {
        return Ok(report);
    };
    let start = Instant::now();
    let plan = write::write_plan(opts, &c, &parent);
    // Freeing the graphs of a large model takes a noticeable share of the compile: do it on
    // another thread (a process that exits first leaves it to the OS).
    // (When no thread can be started, the refused closure, graphs included, is dropped here.)
    let _ = std::thread::Builder::new().spawn(move || drop(c));
    let plan = plan?;
    report.emit_seconds = start.elapsed().as_secs_f64();
    report.plan = Some(plan);
    Ok(report)
}
