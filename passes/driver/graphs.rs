//! From the model to its band-local graphs, driven by [`crate::PIPELINES`]: `compile` on the
//! whole graph (after `split-batch`, for `--split-batch` with a batch fixed to the CFG pair),
//! then `compile-band` once per distinct band height on a copy of the partitioned graph.
//!
//! **Invariant:** the driver names pipelines, never passes: which passes run, and in which
//! order, is the table's; `--dump-after` may name any pass of `compile` or `compile-band`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{CompileOptions, CompileReport};
use crate::error::Internal;
use crate::ir::{Graph, TensorType, ValueId};
use crate::localize::LocalGraph;
use crate::onnx::{self, ExternalStore};
use crate::partition::PartitionError;
use crate::specialize::{SpecializeError, SpecializeOptions};
use crate::{
    BandRequest, PartitionOptions, PassContext, PassError, PassManager, PassTiming, RunReport,
    batch, pass_by_name, pipeline,
};

/// The pipeline run on the whole graph, up to `partition`.
const WHOLE: &str = "compile";
/// The pipeline run once per distinct band height on the partitioned graph.
const BAND: &str = "compile-band";
/// The pipeline that halves a batch fixed to the CFG pair, before [`WHOLE`].
const SPLIT_BATCH: &str = "split-batch";

/// One band's local graph.
pub(super) struct LocalPart {
    pub graph: Graph,
    pub local: LocalGraph,
}

/// The compiled local graphs, ready to emit.
pub(super) struct Compiled {
    /// One local graph per distinct band height (bands of equal height share a graph; they
    /// differ only in per-band constants).
    pub parts: Vec<LocalPart>,
    /// Index into `parts` of each band's graph.
    pub part_of_band: Vec<usize>,
    /// Band boundaries' row step and the split feature maps' heights (see `partition`).
    pub row_step: i64,
    pub levels: Vec<i64>,
    /// Full static shape of every graph input and output after specialization, by name.
    pub full_io: HashMap<String, Vec<i64>>,
    pub store: ExternalStore,
    pub src_dir: PathBuf,
    /// Input types of the source model before specialization, by name.
    pub original_inputs: HashMap<String, TensorType>,
    pub original_outputs: HashMap<String, TensorType>,
}

/// Where `--dump-after` stops: after a pass of [`WHOLE`] or of [`BAND`] (for the first band).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DumpAt {
    Whole(&'static str),
    Band(&'static str),
}

impl DumpAt {
    /// The stage of pass `name`; an unknown pass, or one of neither pipeline, is an error that
    /// lists the valid ones.
    fn of(name: &str) -> Result<Self, PassError> {
        let (whole, band) = (pipeline(WHOLE)?, pipeline(BAND)?);
        if let Some(p) = whole.iter().find(|p| **p == name) {
            return Ok(Self::Whole(p));
        }
        if let Some(p) = band.iter().find(|p| **p == name) {
            return Ok(Self::Band(p));
        }
        pass_by_name(name)?;
        Err(PassError::NotInPipeline {
            name: name.to_string(),
            valid: [whole, band].concat().join(", "),
        })
    }
}

/// A pass failure as the error the user sees: dfc's own faults (as decided by
/// [`PassError::is_internal`]) as [`Internal`], the model's problems as they are, a typed
/// specialize or partition error without the pass around it.
fn user_error(e: PassError) -> anyhow::Error {
    if e.is_internal() {
        let message = match &e {
            PassError::Failed { pass, error } => match error.downcast_ref::<PartitionError>() {
                Some(PartitionError::Bug(m)) => format!("pass `{pass}`: {m}"),
                _ => format!("pass `{pass}`: {error:#}"),
            },
            _ => e.to_string(),
        };
        return Internal(message).into();
    }
    match e {
        PassError::Failed { error, .. }
            if error.is::<SpecializeError>() || error.is::<PartitionError>() =>
        {
            error
        }
        other => other.into(),
    }
}

/// Runs pipeline `name` on `g`, stopping and dumping after `dump` when given.
fn run_pipeline(
    name: &str,
    dump: Option<&'static str>,
    g: &mut Graph,
    cx: &mut PassContext,
) -> Result<RunReport> {
    let mut pm = PassManager::pipeline(name)?;
    if let Some(p) = dump {
        pm = pm.dump_after(p)?.stop_after(p)?;
    }
    pm.run(g, cx).map_err(user_error)
}

/// Adds `timings` to `into`, summing the times of a pass already there.
fn add_timings(into: &mut Vec<PassTiming>, timings: Vec<PassTiming>) {
    for t in timings {
        match into.iter_mut().find(|x| x.pass == t.pass) {
            Some(x) => x.duration += t.duration,
            None => into.push(t),
        }
    }
}

/// The types of the values `vs` of `g`, by name.
fn io_types(g: &Graph, vs: &[ValueId]) -> HashMap<String, TensorType> {
    vs.iter()
        .filter_map(|&v| {
            g.value(v)
                .tensor_type()
                .map(|t| (g.value(v).name.clone(), t.clone()))
        })
        .collect()
}

/// Compiles `opts.model` into its local graphs. Returns the report and, unless stopped early by
/// `dump_after`, the local graphs.
pub(super) fn compile_graphs(opts: &CompileOptions) -> Result<(CompileReport, Option<Compiled>)> {
    if opts.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    let model = onnx::load(&opts.model)?;
    let src_dir = model.dir.clone();
    let store = model.external_store();
    let mut graph = Graph::from_model(model.proto)
        .with_context(|| format!("{} is not a well-formed graph", opts.model.display()))?;
    let (sizes, n) = if opts.split_batch {
        split_batch(opts, &mut graph, &store)?
    } else {
        (opts.sizes.clone(), opts.gpus)
    };
    let original_inputs = io_types(&graph, &graph.inputs);
    let original_outputs = io_types(&graph, &graph.outputs);
    let mut cx = PassContext::new(store.clone());
    cx.specialize = sizes;
    cx.partition_options = PartitionOptions {
        bands: band_request(opts, n)?,
        mode: opts.mode,
    };
    let dump = opts.dump_after.as_deref().map(DumpAt::of).transpose()?;
    let whole_dump = match dump {
        Some(DumpAt::Whole(p)) => Some(p),
        _ => None,
    };
    let run = run_pipeline(WHOLE, whole_dump, &mut graph, &mut cx)?;
    let mut report = CompileReport {
        timings: run.timings,
        warnings: cx.diagnostics.warnings.clone(),
        ..Default::default()
    };
    match dump {
        Some(DumpAt::Whole(pass)) => {
            let mut text = run
                .dumps
                .into_iter()
                .next()
                .map(|d| d.1)
                .unwrap_or_default();
            if pass == "partition"
                && let Some(p) = &cx.partition
            {
                text += "--- layouts ---\n";
                text += &p.dump(&graph);
            }
            report.dump = Some((pass.to_string(), text));
            return Ok((report, None));
        }
        Some(DumpAt::Band(pass)) => {
            let run = run_pipeline(BAND, Some(pass), &mut graph, &mut cx)?;
            add_timings(&mut report.timings, run.timings);
            report.warnings = cx.diagnostics.warnings.clone();
            let text = run
                .dumps
                .into_iter()
                .next()
                .map(|d| d.1)
                .unwrap_or_default();
            report.dump = Some((pass.to_string(), text));
            return Ok((report, None));
        }
        None => {}
    }
    let partition = cx
        .partition
        .clone()
        .ok_or_else(|| Internal("the compile pipeline produced no partition".into()))?;
    let full_io = static_io(&graph);
    let (part_of_band, first_band) = distinct_heights(&partition.bands.heights());
    let parts = compile_bands(graph, &first_band, &mut cx, &mut report.timings)?;
    Ok((
        report,
        Some(Compiled {
            parts,
            part_of_band,
            row_step: partition.row_step,
            levels: partition.levels,
            full_io,
            store,
            src_dir,
            original_inputs,
            original_outputs,
        }),
    ))
}

/// The full static shape of every graph input and output of `g`, by name.
fn static_io(g: &Graph) -> HashMap<String, Vec<i64>> {
    g.inputs
        .iter()
        .chain(&g.outputs)
        .filter_map(|&v| {
            let d = g.value(v).tensor_type()?.static_dims()?;
            Some((g.value(v).name.clone(), d))
        })
        .collect()
}

/// For bands of `heights`: the index of each band's local graph, and the first band of each
/// distinct height (the band each local graph is built for).
fn distinct_heights(heights: &[i64]) -> (Vec<usize>, Vec<usize>) {
    let mut part_of_band = Vec::with_capacity(heights.len());
    let mut first_band: Vec<usize> = Vec::new();
    for (band, h) in heights.iter().enumerate() {
        match first_band.iter().position(|&b| heights[b] == *h) {
            Some(k) => part_of_band.push(k),
            None => {
                part_of_band.push(first_band.len());
                first_band.push(band);
            }
        }
    }
    (part_of_band, first_band)
}

/// Runs [`BAND`] on the partitioned `graph` for each band of `bands`, adding its timings.
fn compile_bands(
    graph: Graph,
    bands: &[usize],
    cx: &mut PassContext,
    timings: &mut Vec<PassTiming>,
) -> Result<Vec<LocalPart>> {
    let mut parts = Vec::with_capacity(bands.len());
    let mut source = Some(graph);
    for (i, &band) in bands.iter().enumerate() {
        // The last local graph takes the partitioned graph itself.
        let g = if i + 1 < bands.len() {
            source.clone()
        } else {
            source.take()
        };
        let mut g = g.ok_or_else(|| Internal("no partitioned graph left".into()))?;
        cx.band = band;
        cx.local = None;
        let run = run_pipeline(BAND, None, &mut g, cx)?;
        add_timings(timings, run.timings);
        let local = cx
            .local
            .take()
            .ok_or_else(|| Internal("the compile pipeline produced no local graph".into()))?;
        parts.push(LocalPart { graph: g, local });
    }
    Ok(parts)
}

/// The band request for groups of `n` GPUs.
fn band_request(opts: &CompileOptions, n: usize) -> Result<BandRequest> {
    Ok(match &opts.bands {
        Some(r) if r.n() != n => bail!(
            "{} bands given for groups of {n} GPUs (--gpus {}{})",
            r.n(),
            opts.gpus,
            if opts.split_batch {
                ", halved by --split-batch"
            } else {
                ""
            }
        ),
        Some(r) => r.clone(),
        None => BandRequest::Count(n),
    })
}

/// Prepares `graph` for `--split-batch`: each group runs a graph of half the batch. A dynamic
/// batch axis is bound to it; a batch fixed to the full pair is halved by [`SPLIT_BATCH`],
/// after which the graph's inputs and outputs carry a symbolic batch that `bind-inputs` binds
/// to the half. Returns the sizes to specialize to and the group size.
fn split_batch(
    opts: &CompileOptions,
    graph: &mut Graph,
    store: &ExternalStore,
) -> Result<(SpecializeOptions, usize)> {
    if !opts.gpus.is_multiple_of(2) {
        bail!(
            "--split-batch puts the two CFG halves on two groups of GPUs: --gpus must be even, not {}",
            opts.gpus
        );
    }
    let fixed = batch::fixed_batch(graph).map(|(v, b)| (graph.value(v).name.clone(), b));
    let mut sizes = opts.sizes.clone();
    batch_from_dims(graph, &mut sizes)?;
    let b = match (fixed, sizes.batch) {
        (Some((name, b)), Some(given)) if given != b => bail!(
            "--batch {given} contradicts input `{name}`, whose batch is fixed to {b} (with --split-batch, --batch is the full batch)"
        ),
        (Some((name, b)), _) => {
            if b % 2 != 0 {
                bail!(
                    "--split-batch needs an even batch: input `{name}` has its batch fixed to {b}"
                );
            }
            let mut pre = PassContext::new(store.clone());
            pre.specialize = SpecializeOptions {
                batch: None,
                ..sizes.clone()
            };
            run_pipeline(SPLIT_BATCH, None, graph, &mut pre)?;
            b
        }
        (None, Some(b)) => b,
        (None, None) => {
            bail!("--split-batch needs --batch (the full batch, both CFG halves)")
        }
    };
    if b % 2 != 0 {
        bail!("--split-batch needs an even batch, not {b}");
    }
    sizes.batch = Some(b / 2);
    Ok((sizes, opts.gpus / 2))
}

/// `--dim NAME=B` naming the spatial input's symbolic batch is `--batch B`: moves every such
/// entry of `sizes.dims` to `sizes.batch`, since each group binds the symbol to half of it.
fn batch_from_dims(graph: &Graph, sizes: &mut SpecializeOptions) -> Result<()> {
    let symbol = graph.spatial_batch_symbol();
    let mut by_dim: Vec<i64> = Vec::new();
    sizes.dims.retain(|(name, v)| {
        let batch = Some(name) == symbol.as_ref();
        if batch {
            by_dim.push(*v);
        }
        !batch
    });
    for &v in &by_dim {
        match sizes.batch {
            Some(b) if b != v => bail!(
                "--dim {}={v} contradicts the batch {b} given for it",
                symbol.as_deref().unwrap_or_default()
            ),
            _ => sizes.batch = Some(v),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_of_equal_height_share_a_local_graph() {
        assert_eq!(
            distinct_heights(&[16, 16, 8, 16, 8]),
            (vec![0, 0, 1, 0, 1], vec![0, 2])
        );
        assert_eq!(distinct_heights(&[4]), (vec![0], vec![0]));
    }

    #[test]
    fn dump_after_names_a_pass_of_either_compile_pipeline() {
        assert_eq!(
            DumpAt::of("partition").ok(),
            Some(DumpAt::Whole("partition"))
        );
        assert_eq!(
            DumpAt::of("insert-exchanges").ok(),
            Some(DumpAt::Band("insert-exchanges"))
        );
        let unknown = DumpAt::of("nope").err().map(|e| e.to_string());
        assert!(
            unknown
                .as_deref()
                .is_some_and(|e| e.contains("valid passes")),
            "{unknown:?}"
        );
        let elsewhere = DumpAt::of("infer-shapes").err().map(|e| e.to_string());
        assert_eq!(
            elsewhere.as_deref(),
            Some(
                "pass `infer-shapes` is not in this pipeline; its passes: reject-fused, bind-inputs, fold-constants, dce, require-static, canonicalize, partition, local-types, lower-group-norm, insert-exchanges"
            )
        );
    }
}
