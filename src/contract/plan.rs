//! `plan.json`: the contract between the compiler (which writes it next to the per-rank graphs)
//! and every runtime (which reads it and never looks at the passes).
//!
//! A plan folder holds `rank{i}.onnx` for every rank, one shared weights file referenced by all
//! of them through ONNX external data, and this description. Ranks are grouped: without
//! `--split-batch` there is one group of all ranks; with it, two groups (unconditional and
//! conditional halves of the batch), each splitting the image into the same bands.
//!
//! **Invariant:** within a group, the rank at position `band` owns the latent rows
//! [`Plan::bands`]`.rows(band)` (bands may be unequal; every group is cut the same way), and at
//! every UNet level the same relative rows ([`RankSpec::levels`]); all exchanges of a group run
//! in the same order on every rank (the order of [`Plan::exchanges`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bands::Bands;

/// Version of the plan format written by this build.
pub const PLAN_FORMAT: u32 = 2;

/// File name of the plan description inside a plan folder.
pub const PLAN_FILE: &str = "plan.json";

/// How stale the exchanged context may be (see DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every exchange fresh and blocking: equals the original model.
    Sync,
    /// Synchronous during warmup, then stale context from the previous step.
    Displaced,
    /// No exchange at all: bands zero-padded, local statistics, band-local attention.
    Naive,
}

impl Mode {
    /// The name used on the command line and in `plan.json`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Displaced => "displaced",
            Mode::Naive => "naive",
        }
    }
}

pub use super::exchange::{ExchangeKind, GnMode};

/// How a full-size model input or output maps onto ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Axis cut into the bands of a group (`None`: every rank of a group holds all of it).
    pub band_axis: Option<usize>,
    /// Axis cut into the two CFG halves under `--split-batch` (`None`: both groups hold all).
    pub group_axis: Option<usize>,
}

/// A model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name in the original model (and in every rank graph).
    pub name: String,
    /// Element type (`f32`, `f16`, `i64`, …).
    pub dtype: String,
    /// Full-size shape, as the original model sees it.
    pub shape: Vec<i64>,
    /// Shape on each band of a group (band order; bands may differ in height).
    pub local_shapes: Vec<Vec<i64>>,
    pub layout: Layout,
}

/// One rank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankSpec {
    pub rank: usize,
    /// Index into [`Plan::groups`].
    pub group: usize,
    /// Position within the group (band order, top to bottom).
    pub band: usize,
    /// Graph file, relative to the plan folder.
    pub file: String,
    /// Latent rows owned, `[start, end)`.
    pub rows: [i64; 2],
    /// Rows owned at every level of [`Plan::levels`], `[start, end)`.
    pub levels: Vec<[i64; 2]>,
    /// Share of the image (and of the work) this rank's band holds.
    pub share: f64,
    /// Batch entries owned, `[start, end)`.
    pub batch: [i64; 2],
}

/// One exchange slot (one exchange node, present in every rank graph).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeSpec {
    /// Unique per graph; identifies the stale buffer.
    pub slot: u32,
    pub kind: ExchangeKind,
    /// Name of the exchange node in the rank graphs.
    pub node: String,
    /// The source node that needed the exchange.
    pub for_node: String,
    pub dtype: String,
    /// Shape of the exchange's input on each band of a group (band order).
    pub input_shapes: Vec<Vec<i64>>,
    /// Shape of its output on each band of a group.
    pub output_shapes: Vec<Vec<i64>>,
    /// `axis` attribute (halo and gather).
    pub axis: Option<usize>,
    /// `parts` attribute (gather): every band's extent on `axis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<i64>>,
    /// Halo rows from the band above / below.
    pub top: Option<i64>,
    pub bottom: Option<i64>,
    /// Never stale, in any mode but `naive`: the exchanged tensor is a model input (the first
    /// convolution's halo of the latent), so its fresh rows are exchanged at every step.
    #[serde(default)]
    pub always_fresh: bool,
    /// Bytes each rank receives per step through this slot, indexed by rank.
    pub bytes_received: Vec<u64>,
}

/// The content of `plan.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    /// Path of the source model as given to the compiler.
    pub source: String,
    /// SHA-256 of the source model file (hex).
    pub source_sha256: String,
    pub mode: Mode,
    /// Synchronous steps after step 0 in displaced mode.
    pub warmup: u32,
    /// GroupNorm statistics in the stale steps of displaced mode.
    #[serde(default)]
    pub gn: GnMode,
    pub world_size: usize,
    pub split_batch: bool,
    /// Ranks of each group, in band order.
    pub groups: Vec<Vec<usize>>,
    pub ranks: Vec<RankSpec>,
    /// Latent height and width (full size).
    pub latent: [i64; 2],
    /// The bands of every group: boundaries in latent rows.
    pub bands: Bands,
    /// Band boundaries are multiples of this many latent rows (so that they stay whole at every
    /// level).
    pub row_step: i64,
    /// Heights of the model's split feature maps, latent level first (the UNet's levels).
    pub levels: Vec<i64>,
    /// Shared weights file, relative to the plan folder (`None` when every tensor is inline).
    pub weights: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Every exchange, in the order every rank executes them.
    pub exchanges: Vec<ExchangeSpec>,
    /// Total bytes each rank receives per step (sum over slots), indexed by rank.
    pub bytes_per_step: Vec<u64>,
    /// Device memory each rank needs, indexed by rank (empty in plans written before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<RankMemory>,
    /// TensorRT engines built from the rank graphs (`dfc build`), at most one per rank.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<EngineSpec>,
}

/// The device memory one rank needs, in bytes, from its graph's types (nothing is measured).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankMemory {
    pub rank: usize,
    /// Initializers its graph references (the shared weights file's tensors it uses, and its
    /// own per-band constants).
    pub weights_bytes: u64,
    /// Largest sum of live activations over its graph's topological order (a value lives from
    /// its producer to its last consumer): an upper bound for an executor that frees values.
    pub activation_peak_bytes: u64,
    /// Every activation of its graph summed (no reuse at all).
    pub activation_sum_bytes: u64,
    /// Stale-context buffers: two step parities of every slot that may be stale (displaced
    /// mode), each the size this rank receives through the slot; 0 in `sync` and `naive` mode.
    pub stale_buffer_bytes: u64,
}

impl RankMemory {
    /// Weights, peak activations and stale buffers together.
    pub fn total(&self) -> u64 {
        self.weights_bytes + self.activation_peak_bytes + self.stale_buffer_bytes
    }
}

/// One rank's TensorRT engine, as `dfc build` wrote it. The engine embeds its rank's weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSpec {
    pub rank: usize,
    /// Engine file, relative to the plan folder (`rank{i}.engine`).
    pub file: String,
    /// Library that built it: `TensorRT` or `TensorRT-RTX`.
    pub builder: String,
    /// Its version, `major.minor.patch`.
    pub builder_version: String,
    /// Build flags (`fp16`, `bf16`); empty for the graph's own types.
    #[serde(default)]
    pub flags: Vec<String>,
    /// SHA-256 of the engine file (hex).
    pub sha256: String,
}

/// Errors of reading a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a dfc plan: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} has plan format {found}; this dfc reads format {PLAN_FORMAT} (recompile the plan)"
    )]
    Format { path: String, found: u32 },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl TensorSpec {
    /// Shape on the rank at position `band` of its group.
    pub fn local_shape(&self, band: usize) -> &[i64] {
        self.local_shapes
            .get(band)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

impl Plan {
    /// Reads `plan.json` of the plan folder `dir` and checks its internal consistency.
    pub fn load(dir: &Path) -> Result<Self, PlanError> {
        let path = dir.join(PLAN_FILE);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| PlanError::Read {
            path: shown.clone(),
            source,
        })?;
        let plan: Plan = serde_json::from_str(&text).map_err(|source| PlanError::Parse {
            path: shown.clone(),
            source,
        })?;
        if plan.format != PLAN_FORMAT {
            return Err(PlanError::Format {
                path: shown,
                found: plan.format,
            });
        }
        plan.check().map_err(|reason| PlanError::Invalid {
            path: shown,
            reason,
        })?;
        Ok(plan)
    }

    /// Structural checks a runtime relies on.
    pub fn check(&self) -> Result<(), String> {
        if self.ranks.len() != self.world_size || self.world_size == 0 {
            return Err(format!(
                "{} ranks listed for world size {}",
                self.ranks.len(),
                self.world_size
            ));
        }
        for (i, r) in self.ranks.iter().enumerate() {
            if r.rank != i {
                return Err(format!("rank entry {i} says rank {}", r.rank));
            }
            let in_group = self.groups.get(r.group).and_then(|g| g.get(r.band));
            if in_group != Some(&i) {
                return Err(format!(
                    "rank {i} is not member {} of group {}",
                    r.band, r.group
                ));
            }
            if r.file.contains('/') || r.file.contains('\\') || r.file.starts_with('.') {
                return Err(format!(
                    "rank {i}: graph file `{}` must be a plain file name",
                    r.file
                ));
            }
        }
        let members: usize = self.groups.iter().map(Vec::len).sum();
        if members != self.world_size {
            return Err(format!(
                "groups hold {members} ranks for world size {}",
                self.world_size
            ));
        }
        let n = self.group_size();
        if self.bands.n() != n || self.bands.height() != self.latent[0] {
            return Err(format!(
                "bands {} do not cut {} latent rows into {n} bands",
                self.bands, self.latent[0]
            ));
        }
        for r in &self.ranks {
            let rows = self.bands.rows(r.band);
            if r.rows != [rows.start, rows.end] {
                return Err(format!(
                    "rank {} owns rows {:?}, its band {} has {rows:?}",
                    r.rank, r.rows, r.band
                ));
            }
        }
        for t in self.inputs.iter().chain(&self.outputs) {
            if t.local_shapes.len() != n {
                return Err(format!(
                    "`{}` must list its shape on each of the {n} bands",
                    t.name
                ));
            }
        }
        for e in &self.exchanges {
            if e.input_shapes.len() != n || e.output_shapes.len() != n {
                return Err(format!(
                    "exchange slot {} must list its shapes for each of the {n} bands",
                    e.slot
                ));
            }
        }
        if self.bytes_per_step.len() != self.world_size {
            return Err("bytes_per_step must have one entry per rank".into());
        }
        if !self.memory.is_empty()
            && (self.memory.len() != self.world_size
                || self.memory.iter().enumerate().any(|(i, m)| m.rank != i))
        {
            return Err("memory must have one entry per rank, in rank order".into());
        }
        for (i, e) in self.engines.iter().enumerate() {
            if e.rank >= self.world_size || self.engines[..i].iter().any(|o| o.rank == e.rank) {
                return Err(format!(
                    "engine of rank {} is out of range or repeated",
                    e.rank
                ));
            }
            if e.file.is_empty() || e.file.contains('/') || e.file.starts_with('.') {
                return Err(format!(
                    "engine file `{}` must be a plain file name",
                    e.file
                ));
            }
        }
        Ok(())
    }

    /// Size of each group (all groups are the same size).
    pub fn group_size(&self) -> usize {
        self.groups.first().map(Vec::len).unwrap_or(1)
    }
}
