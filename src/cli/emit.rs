//! The compiler driver and plan emission: load a model, run the `compile` pipeline, and write a
//! plan folder (DESIGN §4): `rank{i}.onnx` for every rank, one shared weights file, and
//! `plan.json` ([`crate::plan::Plan`]).
//!
//! Weights are written once: every initializer larger than [`EXTERNAL_THRESHOLD`] bytes goes
//! into `weights.bin` (offsets aligned to [`ALIGN`]) and every rank graph references it through
//! ONNX external data; tensors that were already external in the source keep their file, shared
//! into the plan folder by hard link. Rank graphs differ only in their per-band constants.
//!
//! **Invariant:** a plan folder is written atomically: everything is built in a temporary folder
//! next to the target and renamed into place; on any error nothing is left. An existing folder
//! is replaced only when it is empty or holds a dfc plan.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::error::Internal;
use crate::ir::{Dim, Graph, TensorType};
use crate::onnx::proto::{StringStringEntryProto, TensorProto, tensor_proto::DataLocation};
use crate::onnx::{self, ExternalData, ExternalStore};
use crate::passes::localize::LocalGraph;
use crate::passes::partition::{BAND_AXIS, PartitionError};
use crate::passes::specialize::{SpecializeError, SpecializeOptions};
use crate::passes::{
    BandRequest, PartitionOptions, PassContext, PassError, PassManager, PassTiming,
};
use crate::plan::{
    ExchangeKind, ExchangeSpec, GnMode, Layout as IoLayout, Mode, PLAN_FILE, PLAN_FORMAT, Plan,
    RankMemory, RankSpec, TensorSpec,
};
use crate::tensor::Tensor;

/// Initializers larger than this many bytes go to the shared weights file.
pub const EXTERNAL_THRESHOLD: usize = 1024;
/// Alignment of every tensor in the shared weights file.
pub const ALIGN: u64 = 4096;
/// Name of the shared weights file.
pub const WEIGHTS_FILE: &str = "weights.bin";

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
    /// Stop after this pass and return its dump; nothing is written.
    pub dump_after: Option<String>,
}

/// What a compilation did.
#[derive(Debug, Default)]
pub struct CompileReport {
    pub timings: Vec<PassTiming>,
    /// `(pass, dump)` when `dump_after` was given.
    pub dump: Option<(String, String)>,
    /// The plan written (absent when stopped early).
    pub plan: Option<Plan>,
    pub emit_seconds: f64,
    pub warnings: Vec<String>,
}

/// One band's local graph.
pub struct LocalPart {
    pub graph: Graph,
    pub local: LocalGraph,
}

/// The compiled local graphs, ready to emit.
pub struct Compiled {
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

/// Runs the `compile` pipeline on `opts.model`. Returns the report and, unless stopped early by
/// `dump_after`, the local graph.
pub fn compile_graph(opts: &CompileOptions) -> Result<(CompileReport, Option<Compiled>)> {
    if opts.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    let model = onnx::load(&opts.model)?;
    let src_dir = model.dir.clone();
    let store = model.external_store();
    let mut graph = Graph::from_model(model.proto)
        .with_context(|| format!("{} is not a well-formed graph", opts.model.display()))?;
    let types = |g: &Graph, vs: &[crate::ir::ValueId]| -> HashMap<String, TensorType> {
        vs.iter()
            .filter_map(|&v| {
                g.value(v)
                    .tensor_type()
                    .map(|t| (g.value(v).name.clone(), t.clone()))
            })
            .collect()
    };
    let mut sizes = opts.sizes.clone();
    let n = if opts.split_batch {
        if !opts.gpus.is_multiple_of(2) {
            bail!(
                "--split-batch puts the two CFG halves on two groups of GPUs: --gpus must be even, not {}",
                opts.gpus
            );
        }
        // Each group runs a graph of half the batch: a dynamic batch axis is bound to it; a
        // batch fixed to the full pair is halved (`passes::batch`), after which the graph's
        // inputs and outputs carry a symbolic batch that `bind-inputs` binds to the half.
        let spatial = graph.spatial_input();
        let fixed = spatial.and_then(|v| {
            let t = graph.value(v).tensor_type()?;
            Some((
                graph.value(v).name.clone(),
                t.shape.as_ref()?.first()?.fixed()?,
            ))
        });
        // `--dim NAME=B` naming the spatial input's symbolic batch is `--batch B`; every such
        // entry goes, since each group binds the symbol to half of it.
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
                PassManager::from_names(&[
                    "reject-fused",
                    "bind-inputs",
                    "fold-constants",
                    "dce",
                    "require-static",
                    "canonicalize",
                ])?
                .run(&mut graph, &mut pre)
                .map_err(user_error)?;
                crate::passes::batch::halve_batch(&mut graph, &store, b)?;
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
        opts.gpus / 2
    } else {
        opts.gpus
    };
    let original_inputs = types(&graph, &graph.inputs);
    let original_outputs = types(&graph, &graph.outputs);
    let request = match &opts.bands {
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
    };
    let mut cx = PassContext::new(store.clone());
    cx.specialize = sizes;
    cx.partition_options = PartitionOptions {
        bands: request,
        mode: opts.mode,
    };
    let mut pm = PassManager::pipeline("compile")?;
    if let Some(p) = &opts.dump_after {
        pm = pm.dump_after(p)?.stop_after(p)?;
    } else {
        pm = pm.stop_after("partition")?;
    }
    let run = pm.run(&mut graph, &mut cx).map_err(user_error)?;
    let mut report = CompileReport {
        timings: run.timings,
        warnings: cx.diagnostics.warnings.clone(),
        ..Default::default()
    };
    if opts.dump_after.is_some() {
        let pass = run.stopped_after.unwrap_or("insert-exchanges");
        let mut dump = run
            .dumps
            .into_iter()
            .next()
            .map(|d| d.1)
            .unwrap_or_default();
        if pass == "partition"
            && let Some(p) = &cx.partition
        {
            dump += "--- layouts ---\n";
            dump += &p.dump(&graph);
        }
        report.dump = Some((pass.to_string(), dump));
        return Ok((report, None));
    }
    let partition = cx
        .partition
        .clone()
        .ok_or_else(|| Internal("the compile pipeline produced no partition".into()))?;
    let full_io: HashMap<String, Vec<i64>> = graph
        .inputs
        .iter()
        .chain(&graph.outputs)
        .filter_map(|&v| {
            let d = graph.value(v).tensor_type()?.static_dims()?;
            Some((graph.value(v).name.clone(), d))
        })
        .collect();
    // One local graph per distinct band height, built for its first band.
    let heights = partition.bands.heights();
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
    let local_passes = PassManager::pipeline("compile")?.pass_names();
    let after_partition: Vec<&str> = local_passes
        .iter()
        .copied()
        .skip_while(|&p| p != "partition")
        .skip(1)
        .collect();
    let mut parts = Vec::with_capacity(first_band.len());
    let mut source = Some(graph);
    for (i, &band) in first_band.iter().enumerate() {
        // The last local graph takes the partitioned graph itself.
        let g = if i + 1 < first_band.len() {
            source.clone()
        } else {
            source.take()
        };
        let mut g = g.ok_or_else(|| Internal("no partitioned graph left".into()))?;
        cx.band = band;
        cx.local = None;
        let run = PassManager::from_names(&after_partition)?
            .run(&mut g, &mut cx)
            .map_err(user_error)?;
        for t in run.timings {
            match report.timings.iter_mut().find(|x| x.pass == t.pass) {
                Some(x) => x.duration += t.duration,
                None => report.timings.push(t),
            }
        }
        let local = cx
            .local
            .take()
            .ok_or_else(|| Internal("the compile pipeline produced no local graph".into()))?;
        parts.push(LocalPart { graph: g, local });
    }
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

/// Compiles `opts.model` and writes the plan folder `opts.output` (see the module docs).
pub fn compile(opts: &CompileOptions) -> Result<CompileReport> {
    let out_parent = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if opts.dump_after.is_none() {
        check_target(&opts.output, &out_parent)?;
    }
    let (mut report, compiled) = compile_graph(opts)?;
    let Some(c) = compiled else {
        return Ok(report);
    };
    let start = Instant::now();
    let plan = emit(opts, &c, &out_parent);
    // Freeing the graphs of a large model takes a noticeable share of the compile: do it on
    // another thread (a process that exits first leaves it to the OS).
    // (When no thread can be started, the refused closure, graphs included, is dropped here.)
    let _ = std::thread::Builder::new().spawn(move || drop(c));
    let plan = plan?;
    report.emit_seconds = start.elapsed().as_secs_f64();
    report.plan = Some(plan);
    Ok(report)
}

fn check_target(target: &Path, parent: &Path) -> Result<()> {
    if !parent.is_dir() {
        bail!("output folder {} does not exist", parent.display());
    }
    if target.exists() {
        if !target.is_dir() {
            bail!(
                "output {} exists and is not a folder; refusing to overwrite it",
                target.display()
            );
        }
        let empty = fs::read_dir(target)
            .with_context(|| format!("reading {}", target.display()))?
            .next()
            .is_none();
        if !empty && !target.join(PLAN_FILE).is_file() {
            bail!(
                "output folder {} is not empty and holds no dfc plan; refusing to overwrite it",
                target.display()
            );
        }
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Appends tensors to the shared weights file at aligned offsets.
struct WeightsWriter {
    file: fs::File,
    len: u64,
    location: String,
    /// Shared initializers already written, by name: `(offset, length)`.
    written: HashMap<String, (u64, usize)>,
}

impl WeightsWriter {
    /// [`externalize`](Self::externalize) for an initializer every band's graph shares: its
    /// bytes are written once however many local graphs hold it.
    fn externalize_shared(&mut self, t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
        if let Some(&(offset, len)) = t.name.as_ref().and_then(|n| self.written.get(n)) {
            *t = self.reference(t, offset, len);
            return Ok(());
        }
        self.externalize(t, store)?;
        if let (Some(name), Ok(Some(e))) = (t.name.clone(), ExternalData::of(t))
            && e.location == self.location
        {
            self.written
                .insert(name, (e.offset, e.length.unwrap_or_default() as usize));
        }
        Ok(())
    }

    /// A tensor like `t` whose bytes are `len` bytes at `offset` of the weights file.
    fn reference(&self, t: &TensorProto, offset: u64, len: usize) -> TensorProto {
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        TensorProto {
            dims: t.dims.clone(),
            data_type: t.data_type,
            name: t.name.clone(),
            doc_string: t.doc_string.clone(),
            metadata_props: t.metadata_props.clone(),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", offset.to_string()),
                entry("length", len.to_string()),
            ],
            ..Default::default()
        }
    }

    /// Moves `t`'s bytes to the file when it is larger than the threshold and stored inline.
    fn externalize(&mut self, t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
        if ExternalData::of(t)?.is_some() {
            return Ok(());
        }
        let bytes: Vec<u8> = match &t.raw_data {
            Some(b) => b.to_vec(),
            None => {
                if !Tensor::supports(crate::ir::DataType(t.data_type())) {
                    return Ok(());
                }
                let decoded = Tensor::from_proto(t, store)?;
                decoded
                    .to_proto("")
                    .raw_data
                    .map(|b| b.to_vec())
                    .unwrap_or_default()
            }
        };
        if bytes.len() <= EXTERNAL_THRESHOLD {
            return Ok(());
        }
        let offset = self.len.div_ceil(ALIGN) * ALIGN;
        if offset > self.len {
            self.file
                .write_all(&vec![0u8; (offset - self.len) as usize])?;
        }
        self.file.write_all(&bytes)?;
        self.len = offset + bytes.len() as u64;
        *t = self.reference(t, offset, bytes.len());
        Ok(())
    }
}

fn elem_bytes(dtype: crate::ir::DataType) -> u64 {
    dtype.bits().map(|b| (b / 8).max(1) as u64).unwrap_or(4)
}

fn numel(d: &[i64]) -> u64 {
    d.iter().map(|&x| x.max(0) as u64).product()
}

/// Bytes band `band` of `n` receives per step through one exchange, whose input on each band
/// has the shapes `inputs` (band order).
pub fn bytes_received(
    e: &crate::passes::localize::Exchange,
    inputs: &[Vec<i64>],
    band: usize,
) -> u64 {
    let eb = elem_bytes(e.dtype);
    let n = inputs.len();
    let others = || {
        (0..n)
            .filter(|&q| q != band)
            .map(|q| numel(&inputs[q]) * eb)
            .sum::<u64>()
    };
    match e.kind {
        ExchangeKind::Halo => {
            let axis = e.axis.unwrap_or(BAND_AXIS);
            let row: u64 = inputs[band]
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != axis)
                .map(|(_, &d)| d.max(0) as u64)
                .product();
            let top = if band > 0 {
                e.top.unwrap_or(0) as u64
            } else {
                0
            };
            let bottom = if band + 1 < n {
                e.bottom.unwrap_or(0) as u64
            } else {
                0
            };
            (top + bottom) * row * eb
        }
        ExchangeKind::Stats | ExchangeKind::Gather => others(),
    }
}

fn static_dims(t: &TensorType) -> Vec<i64> {
    t.shape
        .as_ref()
        .map(|d| d.iter().map(|x| x.fixed().unwrap_or(-1)).collect())
        .unwrap_or_default()
}

/// Whether an I/O tensor's dim 0 is the batch the CFG halves split: the source declares it
/// symbolic (bound to the half batch) or fixed to the full batch.
fn batch_axis(original: Option<&TensorType>, local: &[i64], half: i64) -> Option<usize> {
    let d0 = original?.shape.as_ref()?.first()?;
    let is_batch = match d0 {
        Dim::Fixed(v) => *v == 2 * half,
        _ => local.first() == Some(&half),
    };
    is_batch.then_some(0)
}

fn emit(opts: &CompileOptions, c: &Compiled, parent: &Path) -> Result<Plan> {
    let first = c
        .parts
        .first()
        .ok_or_else(|| Internal("no local graph".into()))?;
    let bands = first.local.bands.clone();
    let n = bands.n();
    let world = opts.gpus;
    let groups = if opts.split_batch { 2 } else { 1 };
    let tmp = tempfile::Builder::new()
        .prefix(".dfc-plan-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let dir = tmp.path().to_path_buf();
    // The source's external files, by the path they will have in the plan folder: they must
    // not take the name of a file the plan writes.
    let taken: Vec<String> = first
        .graph
        .value_ids()
        .filter_map(|v| first.graph.value(v).init.as_ref())
        .filter_map(|t| ExternalData::of(t).ok().flatten())
        .map(|e| {
            Path::new(&e.location)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect::<PathBuf>()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if let Some(clash) = taken.iter().find(|l| is_plan_file_name(l)) {
        bail!(
            "{}'s external data file `{clash}` has the name of a file of the plan folder (plan.json, rankN.onnx, rankN.engine); rename it (and its `location` in the model)",
            opts.model.display()
        );
    }
    // The source's own external files, the source's digest and the graphs' memory are
    // independent of the rank files: work them out on a second thread meanwhile.
    let (side, weights) = std::thread::scope(|s| {
        let side = s.spawn(
            || -> Result<(String, Vec<crate::passes::cost::GraphMemory>)> {
                if !taken.is_empty() {
                    // Only the source's own external files are shared (ours are already here).
                    let source_refs = crate::onnx::proto::GraphProto {
                        initializer: first
                            .graph
                            .value_ids()
                            .filter_map(|v| first.graph.value(v).init.clone())
                            .filter(|t| matches!(ExternalData::of(t), Ok(Some(_))))
                            .collect(),
                        ..Default::default()
                    };
                    onnx::external::share_into(&source_refs, &c.src_dir, &dir)?;
                }
                let memory = c
                    .parts
                    .iter()
                    .map(|p| crate::passes::cost::graph_memory(&p.graph))
                    .collect::<Result<_>>()
                    .map_err(|e| Internal(format!("memory of a rank graph: {e}")))?;
                Ok((sha256_of(&opts.model)?, memory))
            },
        );
        let weights = write_ranks(c, &bands, world, &dir, &taken);
        (side.join(), weights)
    });
    let weights = weights?;
    let (source_sha256, part_memory) =
        side.map_err(|_| Internal("the plan writer's second thread panicked".into()))??;
    // plan.json
    let g = &first.graph;
    let spatial = crate::passes::partition::spatial_input(g)
        .ok_or_else(|| Internal("no spatial input".into()))?;
    let spatial_name = &g.value(spatial).name;
    let sd = c
        .full_io
        .get(spatial_name)
        .ok_or_else(|| Internal("spatial input not static".into()))?;
    let (h, w) = (sd[BAND_AXIS], sd[BAND_AXIS + 1]);
    if h != bands.height() {
        return Err(Internal(format!("bands {bands} do not cover the latent's {h} rows")).into());
    }
    let half = sd[0];
    let full_batch = half * groups as i64;
    // The type of the value named `name` in each band's graph.
    let band_dims = |name: &str| -> Vec<Vec<i64>> {
        (0..n)
            .map(|band| {
                let part = &c.parts[c.part_of_band[band]];
                part.graph
                    .value_ids()
                    .find(|&v| part.graph.value(v).name == name)
                    .and_then(|v| part.graph.value(v).tensor_type())
                    .map(static_dims)
                    .unwrap_or_default()
            })
            .collect()
    };
    let spec = |v: crate::ir::ValueId, original: &HashMap<String, TensorType>| -> TensorSpec {
        let name = g.value(v).name.clone();
        let t = g.value(v).tensor_type().cloned().unwrap_or(TensorType {
            elem: crate::ir::DataType::UNDEFINED,
            shape: None,
        });
        let local_shapes = band_dims(&name);
        let local = static_dims(&t);
        let band_axis = first.local.io_layouts.get(&name).and_then(|l| l.axis());
        let group_axis = if opts.split_batch {
            batch_axis(original.get(&name), &local, half)
        } else {
            None
        };
        let mut shape = c.full_io.get(&name).cloned().unwrap_or(local);
        if let Some(a) = group_axis {
            shape[a] *= 2;
        }
        TensorSpec {
            name,
            dtype: t.elem.name().to_string(),
            shape,
            local_shapes,
            layout: IoLayout {
                band_axis,
                group_axis,
            },
        }
    };
    let inputs: Vec<TensorSpec> = g
        .inputs
        .iter()
        .filter(|&&v| g.value(v).init.is_none())
        .map(|&v| spec(v, &c.original_inputs))
        .collect();
    let outputs: Vec<TensorSpec> = g
        .outputs
        .iter()
        .map(|&v| spec(v, &c.original_outputs))
        .collect();
    let mut exchanges = Vec::new();
    for (i, e) in first.local.exchanges.iter().enumerate() {
        let mut input_shapes = Vec::with_capacity(n);
        let mut output_shapes = Vec::with_capacity(n);
        for band in 0..n {
            let other = c.parts[c.part_of_band[band]]
                .local
                .exchanges
                .get(i)
                .filter(|x| x.node == e.node && x.slot == e.slot)
                .ok_or_else(|| {
                    Internal(format!(
                        "band {band}'s graph has no exchange slot {} (`{}`)",
                        e.slot, e.node
                    ))
                })?;
            input_shapes.push(other.input_shape.clone());
            output_shapes.push(other.output_shape.clone());
        }
        let per_band: Vec<u64> = (0..n)
            .map(|band| bytes_received(e, &input_shapes, band))
            .collect();
        exchanges.push(ExchangeSpec {
            slot: e.slot,
            kind: e.kind,
            node: e.node.clone(),
            for_node: e.for_node.clone(),
            dtype: e.dtype.name().to_string(),
            input_shapes,
            output_shapes,
            axis: e.axis,
            parts: e.parts.clone(),
            top: e.top,
            bottom: e.bottom,
            always_fresh: e.reads_model_input,
            bytes_received: (0..world).map(|r| per_band[r % n]).collect(),
        });
    }
    let bytes_per_step = (0..world)
        .map(|r| exchanges.iter().map(|e| e.bytes_received[r]).sum())
        .collect();
    let memory = (0..world)
        .map(|r| {
            let m = part_memory[c.part_of_band[r % n]];
            let stale: u64 = if opts.mode == Mode::Displaced {
                exchanges
                    .iter()
                    .filter(|e| !e.always_fresh)
                    .map(|e| 2 * e.bytes_received[r])
                    .sum()
            } else {
                0
            };
            RankMemory {
                rank: r,
                weights_bytes: m.weights_bytes,
                activation_peak_bytes: m.activation_peak_bytes,
                activation_sum_bytes: m.activation_sum_bytes,
                stale_buffer_bytes: stale,
            }
        })
        .collect();
    let level_rows = |band: usize| -> Vec<[i64; 2]> {
        c.levels
            .iter()
            .filter_map(|&e| bands.part(band, e))
            .map(|p| [p.start, p.end])
            .collect()
    };
    let plan = Plan {
        format: PLAN_FORMAT,
        source: opts.model.display().to_string(),
        source_sha256,
        mode: opts.mode,
        warmup: opts.warmup,
        gn: opts.gn,
        world_size: world,
        split_batch: opts.split_batch,
        groups: (0..groups)
            .map(|gi| (gi * n..(gi + 1) * n).collect())
            .collect(),
        ranks: (0..world)
            .map(|r| {
                let (group, band) = (r / n, r % n);
                let batch = if opts.split_batch {
                    [group as i64 * half, (group as i64 + 1) * half]
                } else {
                    [0, full_batch]
                };
                let rows = bands.rows(band);
                RankSpec {
                    rank: r,
                    group,
                    band,
                    file: format!("rank{r}.onnx"),
                    rows: [rows.start, rows.end],
                    levels: level_rows(band),
                    share: bands.share(band),
                    batch,
                }
            })
            .collect(),
        latent: [h, w],
        bands: bands.clone(),
        row_step: c.row_step,
        levels: c.levels.clone(),
        // Ours, else the source's own (shared into the folder).
        weights: weights.or_else(|| taken.first().cloned()),
        inputs,
        outputs,
        exchanges,
        bytes_per_step,
        memory,
        engines: Vec::new(),
    };
    plan.check()
        .map_err(|e| Internal(format!("the emitted plan is inconsistent: {e}")))?;
    let text = serde_json::to_string_pretty(&plan)?;
    onnx::write_atomic(&dir.join(PLAN_FILE), text.as_bytes())?;
    install(tmp, &opts.output)?;
    Ok(plan)
}

/// Whether `name` is a file the plan folder holds: `plan.json`, `rankN.onnx`, `rankN.engine`.
fn is_plan_file_name(name: &str) -> bool {
    name == PLAN_FILE
        || ["onnx", "engine"].iter().any(|ext| {
            name.strip_prefix("rank")
                .and_then(|r| r.strip_suffix(ext))
                .and_then(|r| r.strip_suffix('.'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Writes the shared weights file and every rank's model into `dir`; the weights file's name
/// when one was written.
fn write_ranks(
    c: &Compiled,
    bands: &crate::contract::bands::Bands,
    world: usize,
    dir: &Path,
    taken: &[String],
) -> Result<Option<String>> {
    let n = bands.n();
    let mut location = WEIGHTS_FILE.to_string();
    let mut k = 1;
    while taken.contains(&location) {
        location = format!("weights.{k}.bin");
        k += 1;
    }
    let mut weights = WeightsWriter {
        // A new file: never truncate one the source's external data was linked to.
        file: fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&location))
            .with_context(|| format!("creating {location} in the plan folder"))?,
        len: 0,
        location: location.clone(),
        written: HashMap::new(),
    };
    // One model per local graph, encoded once with its shared initializers externalized and
    // without its per-band constants, which each rank's file appends.
    let mut models = Vec::with_capacity(c.parts.len());
    for part in &c.parts {
        let mut proto = part
            .graph
            .to_model()
            .map_err(|e| Internal(format!("writing a rank graph: {e}")))?;
        let band_names: HashSet<&str> = part
            .local
            .band_constants
            .iter()
            .map(|b| part.graph.value(b.value()).name.as_str())
            .collect();
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| Internal("a rank model has no graph".into()))?;
        graph
            .initializer
            .retain(|t| !band_names.contains(t.name.as_deref().unwrap_or_default()));
        for t in &mut graph.initializer {
            weights.externalize_shared(t, &c.store)?;
        }
        models.push(onnx::EncodedModel::new(proto));
    }
    // Per-band constants, computed once per band.
    let mut band_inits: Vec<Vec<TensorProto>> = Vec::new();
    for band in 0..n {
        let part = &c.parts[c.part_of_band[band]];
        let mut inits = Vec::new();
        for b in &part.local.band_constants {
            let value = b.value();
            let mut t = b.value_for(bands, band, &c.store)?.to_proto("");
            t.name = Some(part.graph.value(value).name.clone());
            weights.externalize(&mut t, &c.store)?;
            inits.push(t);
        }
        band_inits.push(inits);
    }
    weights.file.sync_all()?;
    let wrote_weights = weights.len > 0;
    drop(weights);
    if !wrote_weights {
        fs::remove_file(dir.join(&location))?;
    }
    for rank in 0..world {
        let band = rank % n;
        models[c.part_of_band[band]]
            .save_with(&band_inits[band], &dir.join(format!("rank{rank}.onnx")))?;
    }
    Ok(wrote_weights.then_some(location))
}

/// Moves the finished temporary folder to `target`, replacing an existing plan.
fn install(tmp: tempfile::TempDir, target: &Path) -> Result<()> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_target(target, &parent)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
    }
    let staged = tmp.keep();
    let mut old = None;
    if target.exists() {
        let trash = tempfile::Builder::new()
            .prefix(".dfc-old-")
            .tempdir_in(&parent)?
            .keep();
        let slot = trash.join("plan");
        fs::rename(target, &slot).map_err(|e| {
            let _ = fs::remove_dir_all(&staged);
            anyhow!("cannot move the old plan {} aside: {e}", target.display())
        })?;
        old = Some(trash);
    }
    if let Err(e) = fs::rename(&staged, target) {
        let _ = fs::remove_dir_all(&staged);
        if let Some(t) = &old {
            let _ = fs::rename(t.join("plan"), target);
            let _ = fs::remove_dir_all(t);
        }
        bail!("cannot move the plan into {}: {e}", target.display());
    }
    if let Some(t) = old {
        let _ = fs::remove_dir_all(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::passes::localize::Exchange;

    #[test]
    fn plan_file_names_are_recognized() {
        for name in ["plan.json", "rank0.onnx", "rank12.onnx", "rank3.engine"] {
            assert!(is_plan_file_name(name), "{name}");
        }
        for name in [
            "weights.bin",
            "rank.onnx",
            "rankA.onnx",
            "rank0.onnx.data",
            "x/plan.json",
        ] {
            assert!(!is_plan_file_name(name), "{name}");
        }
    }

    #[test]
    fn halo_bytes_count_one_side_at_the_edges() {
        let e = Exchange {
            slot: 0,
            kind: ExchangeKind::Halo,
            node: "c.halo".into(),
            for_node: "c".into(),
            dtype: DataType::FLOAT,
            input_shape: vec![2, 4, 8, 16],
            output_shape: vec![2, 4, 10, 16],
            axis: Some(2),
            top: Some(1),
            bottom: Some(1),
            parts: None,
            reads_model_input: false,
        };
        let row = 2 * 4 * 16 * 4;
        let inputs = vec![vec![2, 4, 8, 16]; 4];
        let got: Vec<u64> = (0..4).map(|b| bytes_received(&e, &inputs, b)).collect();
        assert_eq!(got, vec![row, 2 * row, 2 * row, row]);
        let s = Exchange {
            kind: ExchangeKind::Stats,
            input_shape: vec![2, 8, 2],
            ..e.clone()
        };
        let stats = vec![vec![2, 8, 2]; 4];
        let got: Vec<u64> = (0..4).map(|b| bytes_received(&s, &stats, b)).collect();
        assert_eq!(got, vec![3 * 2 * 8 * 2 * 4; 4]);
    }

    #[test]
    fn gather_bytes_are_the_other_bands_parts() {
        let e = Exchange {
            slot: 0,
            kind: ExchangeKind::Gather,
            node: "k.gather".into(),
            for_node: "k".into(),
            dtype: DataType::FLOAT16,
            input_shape: vec![2, 11, 8],
            output_shape: vec![2, 32, 8],
            axis: Some(1),
            top: None,
            bottom: None,
            parts: Some(vec![11, 11, 10]),
            reads_model_input: false,
        };
        let inputs = vec![vec![2, 11, 8], vec![2, 11, 8], vec![2, 10, 8]];
        let got: Vec<u64> = (0..3).map(|b| bytes_received(&e, &inputs, b)).collect();
        assert_eq!(got, vec![2 * 21 * 8 * 2, 2 * 21 * 8 * 2, 2 * 22 * 8 * 2]);
    }
}
