//! `dfc inspect`: what a model is made of, and what the partitioning passes will care about;
//! given a plan folder instead, how the plan cuts the image (every rank's rows at every level,
//! its share of the work) and what each rank exchanges per step.
//!
//! The counts match what the `onnx` Python package reports for the same file (`len(graph.node)`,
//! `collections.Counter(n.op_type for n in graph.node)`, `len(graph.initializer)`, the sum of
//! the products of initializer dims). The structural counts recognize, on the IR:
//!
//! - convolutions whose kernel is taller than one row (they need halo rows when split on H);
//! - GroupNorms: the `GroupNormalization` op, torch's export pattern
//!   Reshape → InstanceNormalization → Reshape → Mul → Add, and ONNX Runtime's `GroupNorm` and
//!   `SkipGroupNorm`, each counted once;
//! - attentions, as the compiler sees them ([`crate::passes::analysis::attention_sites`]):
//!   self-attention when its keys come from the image (the spatial input, split into bands:
//!   `partition` gathers them), cross-attention when they come from another model input (the
//!   text), other attentions otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::ir::{Dim, Graph, NodeId, TensorType, ValueId};
use crate::onnx::{self, ExternalData, Model};
use crate::passes::analysis::{AttentionKind, attention_sites};
use crate::passes::canonicalize::match_torch_group_norm;
use crate::passes::ops::ORT_DOMAIN;
use crate::passes::specialize::infer_shapes;

/// Arguments of `dfc inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model, or plan folder, to inspect.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoInfo {
    pub name: String,
    /// Short element type name (`f32`, `f16`, `i64`, …); `null` for non-tensor values.
    pub dtype: Option<String>,
    /// The `TensorProto.DataType` code (1 = float, 10 = float16, 7 = int64, …).
    pub elem_type: Option<i32>,
    /// Sizes (integers), symbolic dims (strings) or unknown dims (`null`); `null` when even the
    /// rank is unknown.
    pub shape: Option<Vec<serde_json::Value>>,
}

/// One opset import.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Opset {
    /// `""` is the default ONNX domain.
    pub domain: String,
    pub version: i64,
}

/// One external-data file referenced by the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExternalFile {
    pub location: String,
    /// Tensors stored in it.
    pub tensors: usize,
    /// Bytes referenced by those tensors.
    pub bytes: u64,
}

/// Everything `dfc inspect` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub path: String,
    pub ir_version: i64,
    pub producer: String,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    /// Number of nodes of the main graph.
    pub nodes: usize,
    /// Op type → count (bare `op_type`, whatever the domain).
    pub ops: BTreeMap<String, usize>,
    pub initializers: usize,
    /// Sum over initializers of the product of their dims.
    pub parameters: u64,
    pub opsets: Vec<Opset>,
    pub external_data: Vec<ExternalFile>,
    /// Conv nodes whose kernel height is more than one.
    pub convs_kernel_gt1: usize,
    /// `GroupNormalization` nodes plus InstanceNormalization-based GroupNorm patterns.
    pub group_norms: usize,
    pub self_attentions: usize,
    pub cross_attentions: usize,
    /// Softmax-attention patterns that are neither recognizably self nor cross.
    pub other_attentions: usize,
    /// Operator types the compiler's passes do not know (op → node count); a model listed
    /// here cannot be specialized or partitioned until they get rules.
    pub unsupported_ops: BTreeMap<String, usize>,
}

/// Loads `path` and analyses it.
pub fn inspect_file(path: &Path) -> Result<Report> {
    let model = onnx::load(path)?;
    analyze(&model)
}

/// Analyses a loaded model.
pub fn analyze(model: &Model) -> Result<Report> {
    let proto = &model.proto;
    let gp = proto.graph.as_ref().context("the model has no graph")?;
    let initializers = gp.initializer.len();
    let parameters = gp
        .initializer
        .iter()
        .map(|t| {
            t.dims
                .iter()
                .map(|&d| u64::try_from(d).unwrap_or(0))
                .product::<u64>()
        })
        .sum();
    let mut ext: BTreeMap<String, ExternalFile> = BTreeMap::new();
    for t in onnx::external::tensors_of(gp) {
        let Some(e) = ExternalData::of(t)? else {
            continue;
        };
        let bytes = match e.length {
            Some(l) => l,
            None => std::fs::metadata(model.dir.join(&e.location))
                .map(|m| m.len().saturating_sub(e.offset))
                .unwrap_or(0),
        };
        let entry = ext.entry(e.location.clone()).or_insert(ExternalFile {
            location: e.location.clone(),
            tensors: 0,
            bytes: 0,
        });
        entry.tensors += 1;
        entry.bytes += bytes;
    }
    let opsets = proto
        .opset_import
        .iter()
        .map(|o| Opset {
            domain: o.domain().to_string(),
            version: o.version(),
        })
        .collect();

    let mut graph = Graph::from_model(proto.clone()).context("building the graph")?;
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for id in graph.node_ids() {
        *ops.entry(graph.node(id).op_type.clone()).or_default() += 1;
    }
    let io = |ids: &[ValueId]| -> Vec<IoInfo> {
        ids.iter()
            .map(|&v| {
                let value = graph.value(v);
                let tt = value.tensor_type();
                IoInfo {
                    name: value.name.clone(),
                    dtype: tt.map(|t| t.elem.name().to_string()),
                    elem_type: tt.map(|t| t.elem.0),
                    shape: tt.and_then(shape_json),
                }
            })
            .collect()
    };
    let inputs = io(&graph.inputs);
    let outputs = io(&graph.outputs);
    // Types every value (weights' shapes included) and finds operators without rules; a
    // failure here leaves the declared types, which is all the counts below need.
    let unsupported_ops = match infer_shapes(&mut graph, &model.external_store()) {
        Ok(r) => r.unsupported.into_iter().map(|u| (u.op, u.count)).collect(),
        Err(_) => BTreeMap::new(),
    };
    let structure = Structure::analyze(&graph);
    Ok(Report {
        path: model.path.display().to_string(),
        ir_version: proto.ir_version(),
        producer: format!("{} {}", proto.producer_name(), proto.producer_version())
            .trim()
            .to_string(),
        inputs,
        outputs,
        nodes: graph.node_count(),
        ops,
        initializers,
        parameters,
        opsets,
        external_data: ext.into_values().collect(),
        convs_kernel_gt1: structure.convs_kernel_gt1,
        group_norms: structure.group_norms,
        self_attentions: structure.self_attentions,
        cross_attentions: structure.cross_attentions,
        other_attentions: structure.other_attentions,
        unsupported_ops,
    })
}

fn shape_json(t: &TensorType) -> Option<Vec<serde_json::Value>> {
    t.shape.as_ref().map(|dims| {
        dims.iter()
            .map(|d| match d {
                Dim::Fixed(v) => serde_json::Value::from(*v),
                Dim::Symbol(s) => serde_json::Value::from(s.clone()),
                Dim::Unknown => serde_json::Value::Null,
            })
            .collect()
    })
}

/// The structural counts of a graph (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Structure {
    pub convs_kernel_gt1: usize,
    pub group_norms: usize,
    pub self_attentions: usize,
    pub cross_attentions: usize,
    pub other_attentions: usize,
}

impl Structure {
    /// Counts the constructs of `graph`.
    pub fn analyze(graph: &Graph) -> Self {
        let mut s = Structure::default();
        let mut ids: Vec<NodeId> = graph.node_ids().collect();
        ids.sort_by_key(|&id| graph.node(id).order);
        for id in ids {
            let node = graph.node(id);
            match node.op_type.as_str() {
                "Conv" if conv_kernel_height(graph, id) > 1 => s.convs_kernel_gt1 += 1,
                "GroupNormalization" => s.group_norms += 1,
                "GroupNorm" | "SkipGroupNorm" if node.domain == ORT_DOMAIN => s.group_norms += 1,
                // torch's export with its affine tail (Reshape → InstanceNormalization →
                // Reshape → Mul → Add), by structure: inspect needs no static shapes.
                "InstanceNormalization"
                    if match_torch_group_norm(graph, id).is_some_and(|m| m.add.is_some()) =>
                {
                    s.group_norms += 1
                }
                _ => {}
            }
        }
        for site in attention_sites(graph) {
            match site.kind {
                AttentionKind::SelfAttention => s.self_attentions += 1,
                AttentionKind::Cross => s.cross_attentions += 1,
                AttentionKind::Other => s.other_attentions += 1,
            }
        }
        s
    }
}

/// Kernel height of a Conv: `kernel_shape[0]`, else dim 2 of its weight's type.
fn conv_kernel_height(graph: &Graph, id: NodeId) -> i64 {
    let node = graph.node(id);
    if let Some(k) = node.attr_ints("kernel_shape").and_then(|k| k.first()) {
        return *k;
    }
    node.input(1)
        .and_then(|w| graph.value(w).tensor_type())
        .and_then(|t| t.shape.as_ref())
        .and_then(|s| s.get(2))
        .and_then(Dim::fixed)
        .unwrap_or(1)
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    if args.model.is_dir() {
        let plan = crate::plan::Plan::load(&args.model)?;
        let report = plan_report(&plan);
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).context("encoding the report")?
            );
        } else {
            print!("{}", render_plan(&args.model, &plan, &report));
        }
        return Ok(());
    }
    let report = inspect_file(&args.model)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

/// The human-readable form of a report.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let opsets: Vec<String> = r
        .opsets
        .iter()
        .map(|o| {
            let d = if o.domain.is_empty() {
                "ai.onnx"
            } else {
                &o.domain
            };
            format!("{d} {}", o.version)
        })
        .collect();
    let _ = writeln!(s, "model: {}", r.path);
    let _ = writeln!(
        s,
        "ir_version {}, opsets: {}{}",
        r.ir_version,
        opsets.join(", "),
        if r.producer.is_empty() {
            String::new()
        } else {
            format!(", producer: {}", r.producer)
        }
    );
    let width = r
        .inputs
        .iter()
        .chain(&r.outputs)
        .map(|i| i.name.len())
        .max()
        .unwrap_or(0);
    for (title, list) in [("inputs", &r.inputs), ("outputs", &r.outputs)] {
        let _ = writeln!(s, "{title}:");
        for io in list {
            let shape = match &io.shape {
                None => "[..]".to_string(),
                Some(dims) => {
                    let d: Vec<String> = dims
                        .iter()
                        .map(|d| match d {
                            serde_json::Value::Null => "?".to_string(),
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    format!("[{}]", d.join(", "))
                }
            };
            let _ = writeln!(
                s,
                "  {:width$}  {}{}",
                io.name,
                io.dtype.as_deref().unwrap_or("(not a tensor)"),
                shape
            );
        }
    }
    let _ = writeln!(
        s,
        "nodes: {}, initializers: {}, parameters: {}",
        r.nodes, r.initializers, r.parameters
    );
    for e in &r.external_data {
        let _ = writeln!(
            s,
            "external data: {} ({} tensors, {} bytes)",
            e.location, e.tensors, e.bytes
        );
    }
    let mut ops: Vec<(&String, &usize)> = r.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "ops: {}", ops.join(", "));
    let _ = writeln!(
        s,
        "for partitioning: {} convs with kernel height > 1, {} group norms, {} self-attentions, {} cross-attentions{}",
        r.convs_kernel_gt1,
        r.group_norms,
        r.self_attentions,
        r.cross_attentions,
        if r.other_attentions > 0 {
            format!(", {} other attentions", r.other_attentions)
        } else {
            String::new()
        }
    );
    if !r.unsupported_ops.is_empty() {
        let ops: Vec<String> = r
            .unsupported_ops
            .iter()
            .map(|(k, v)| format!("{k} ({v})"))
            .collect();
        let _ = writeln!(s, "unsupported by the compiler: {}", ops.join(", "));
    }
    s
}

/// What `dfc inspect PLAN_DIR` reports for one rank.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankReport {
    pub rank: usize,
    pub group: usize,
    pub band: usize,
    /// Latent rows `[start, end)`.
    pub rows: [i64; 2],
    /// Rows at every level of the plan (`levels` of the report).
    pub levels: Vec<[i64; 2]>,
    /// Share of the image (and of the UNet's work) this rank computes.
    pub share: f64,
    /// Bytes received per step, by exchange kind, and in total.
    pub halo_bytes: u64,
    pub stats_bytes: u64,
    pub gather_bytes: u64,
    pub bytes_per_step: u64,
    /// Device memory the rank needs (`plan.json`'s `memory`; absent in older plans).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::plan::RankMemory>,
}

/// What `dfc inspect PLAN_DIR` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    pub world_size: usize,
    pub mode: String,
    pub latent: [i64; 2],
    /// Heights of every band (latent rows).
    pub bands: Vec<i64>,
    /// Band boundaries are multiples of this many latent rows.
    pub row_step: i64,
    /// Heights of the model's split feature maps, latent level first.
    pub levels: Vec<i64>,
    /// The largest share of any rank over the even share: the step time's overhead from
    /// unequal bands when every GPU is equally fast (1 for equal bands).
    pub imbalance: f64,
    pub ranks: Vec<RankReport>,
}

/// The per-rank geometry and exchange volume of `plan`.
pub fn plan_report(plan: &crate::plan::Plan) -> PlanReport {
    use crate::plan::ExchangeKind;
    let by_kind = |rank: usize, kind: ExchangeKind| -> u64 {
        plan.exchanges
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.bytes_received.get(rank).copied().unwrap_or(0))
            .sum()
    };
    let ranks: Vec<RankReport> = plan
        .ranks
        .iter()
        .map(|r| RankReport {
            rank: r.rank,
            group: r.group,
            band: r.band,
            rows: r.rows,
            levels: r.levels.clone(),
            share: r.share,
            halo_bytes: by_kind(r.rank, ExchangeKind::Halo),
            stats_bytes: by_kind(r.rank, ExchangeKind::Stats),
            gather_bytes: by_kind(r.rank, ExchangeKind::Gather),
            bytes_per_step: plan.bytes_per_step.get(r.rank).copied().unwrap_or(0),
            memory: plan.memory.get(r.rank).cloned(),
        })
        .collect();
    let n = plan.bands.n() as f64;
    let largest = plan.bands.shares().into_iter().fold(0f64, f64::max);
    PlanReport {
        world_size: plan.world_size,
        mode: plan.mode.name().to_string(),
        latent: plan.latent,
        bands: plan.bands.heights(),
        row_step: plan.row_step,
        levels: plan.levels.clone(),
        imbalance: largest * n,
        ranks,
    }
}

/// The human-readable form of a plan report.
pub fn render_plan(dir: &Path, plan: &crate::plan::Plan, r: &PlanReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan: {} ({} GPU(s), {} mode, {} group(s))",
        dir.display(),
        r.world_size,
        r.mode,
        plan.groups.len()
    );
    let _ = writeln!(
        s,
        "latent: {}×{}; bands {} (boundaries on multiples of {} rows); levels {:?}",
        r.latent[0], r.latent[1], plan.bands, r.row_step, r.levels
    );
    let _ = writeln!(
        s,
        "slowest band: {:.3}× an even share (equal GPUs wait for it)",
        r.imbalance
    );
    let _ = writeln!(
        s,
        "{:>4} {:>5} {:>4} {:>11} {:>7} {:>12} {:>12} {:>12} {:>12}  rows per level",
        "rank", "group", "band", "rows", "share", "halo B", "stats B", "gather B", "total B"
    );
    for k in &r.ranks {
        let levels: Vec<String> = k
            .levels
            .iter()
            .map(|l| format!("{}..{}", l[0], l[1]))
            .collect();
        let _ = writeln!(
            s,
            "{:>4} {:>5} {:>4} {:>11} {:>6.1}% {:>12} {:>12} {:>12} {:>12}  {}",
            k.rank,
            k.group,
            k.band,
            format!("{}..{}", k.rows[0], k.rows[1]),
            100.0 * k.share,
            k.halo_bytes,
            k.stats_bytes,
            k.gather_bytes,
            k.bytes_per_step,
            levels.join(" ")
        );
    }
    if r.ranks.iter().any(|k| k.memory.is_some()) {
        let _ = writeln!(
            s,
            "{:>4} {:>14} {:>16} {:>14} {:>14}  (device memory, bytes)",
            "rank", "weights", "activations peak", "stale buffers", "total"
        );
        for k in &r.ranks {
            if let Some(m) = &k.memory {
                let _ = writeln!(
                    s,
                    "{:>4} {:>14} {:>16} {:>14} {:>14}",
                    k.rank,
                    m.weights_bytes,
                    m.activation_peak_bytes,
                    m.stale_buffer_bytes,
                    m.total()
                );
            }
        }
    }
    s
}
