//! `plan.json`: the contract between the compiler (which writes it next to the per-rank graphs)
//! and every runtime (which reads it and never looks at the passes).
//!
//! A plan folder holds `rank{i}.onnx` for every rank, one shared weights file referenced by all
//! of them through ONNX external data, and this description. Ranks are grouped: without
//! `--split-batch` there is one group of all ranks; with it, two groups (unconditional and
//! conditional halves of the batch), each splitting the image into the same bands.
//!
//! **Invariant:** within a group, the rank at position `band` owns latent rows
//! `[band·H/n, (band+1)·H/n)` at every UNet level (scaled by the level's downsampling), and all
//! exchanges of a group run in the same order on every rank (the order of [`Plan::exchanges`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Version of the plan format written by this build.
pub const PLAN_FORMAT: u32 = 1;

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

/// How GroupNorm statistics are exchanged in the stale steps of displaced mode (warmup steps
/// and sync mode always all-reduce fresh statistics). The names are the paper's ablation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GnMode {
    /// Paper Eq. 2: the previous step's group mean plus this band's change since then,
    /// `mean_j(s_j(t−1)) + s_i(t) − s_i(t−1)`; where the estimated variance is negative, the
    /// band's own statistics.
    #[default]
    Corrected,
    /// The previous step's statistics of the other bands with this band's fresh ones,
    /// `(Σ_{j≠i} s_j(t−1) + s_i(t)) / N`.
    Stale,
    /// A blocking all-reduce of this step's statistics (exact GroupNorm) at every step.
    Sync,
    /// Every band normalizes with its own statistics (no exchange).
    Separate,
}

impl GnMode {
    /// The name used on the command line and in `plan.json`.
    pub const fn name(self) -> &'static str {
        match self {
            GnMode::Corrected => "corrected",
            GnMode::Stale => "stale",
            GnMode::Sync => "sync",
            GnMode::Separate => "separate",
        }
    }
}

/// Which exchange operator a slot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExchangeKind {
    /// `DfcHaloExchange`: rows from the neighbouring bands.
    Halo,
    /// `DfcStatsAllReduce`: mean of per-band partial statistics over the group.
    Stats,
    /// `DfcPatchAllGather`: concatenation of every band's tensor along an axis.
    Gather,
}

impl ExchangeKind {
    /// Every kind.
    pub const ALL: [ExchangeKind; 3] = [
        ExchangeKind::Halo,
        ExchangeKind::Stats,
        ExchangeKind::Gather,
    ];

    /// The ONNX operator name (domain `dfc`).
    pub const fn op_type(self) -> &'static str {
        match self {
            ExchangeKind::Halo => "DfcHaloExchange",
            ExchangeKind::Stats => "DfcStatsAllReduce",
            ExchangeKind::Gather => "DfcPatchAllGather",
        }
    }

    /// The kind whose operator is `op_type`.
    pub fn from_op_type(op_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.op_type() == op_type)
    }
}

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
    /// Shape on one rank.
    pub local_shape: Vec<i64>,
    pub layout: Layout,
}

/// One rank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Shape of the exchange's input on one rank.
    pub input_shape: Vec<i64>,
    /// Shape of its output on one rank.
    pub output_shape: Vec<i64>,
    /// `axis` attribute (halo and gather).
    pub axis: Option<usize>,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Shared weights file, relative to the plan folder (`None` when every tensor is inline).
    pub weights: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Every exchange, in the order every rank executes them.
    pub exchanges: Vec<ExchangeSpec>,
    /// Total bytes each rank receives per step (sum over slots), indexed by rank.
    pub bytes_per_step: Vec<u64>,
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
        if self.bytes_per_step.len() != self.world_size {
            return Err("bytes_per_step must have one entry per rank".into());
        }
        Ok(())
    }

    /// Size of each group (all groups are the same size).
    pub fn group_size(&self) -> usize {
        self.groups.first().map(Vec::len).unwrap_or(1)
    }
}
