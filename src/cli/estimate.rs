//! A latency model of a plan on GPUs that are not here: per rank, the FLOPs and bytes of every
//! node of its graph (the op rows' cost rules, [`crate::passes::cost`]) on a roofline of the
//! GPU, the bytes it receives per step over the link, and the step schedule of the plan's mode.
//!
//! - **Compute.** Each node takes `max(FLOPs / (peak · fill), bytes / bandwidth) / efficiency
//!   + launch`: the roofline with fp16 tensor-core peak and memory bandwidth from the GPU's
//!   spec sheet ([`Gpu`]); the *wave fill* of a matrix-unit kernel (its output tiles spread
//!   over the GPU's multiprocessors in waves, the last one partly empty: a band's thin GEMMs
//!   leave most of an A100 idle, [`Gpu::wave_fill`]); a fixed time per launched kernel
//!   ([`KERNEL_LAUNCH_S`], not fitted); and one efficiency factor for everything else a
//!   roofline leaves out (tails, imperfect fusion), calibrated once on one published number
//!   ([`CALIBRATED_EFFICIENCY`]).
//! - **Exchanges.** Each slot costs `latency + bytes received / link bandwidth` ([`Link`]).
//! - **Schedule.** Synchronous steps (every step in `sync` mode; step 0 and the warmup steps
//!   in `displaced` mode) wait for every exchange: `compute + exchanges`. Stale steps overlap
//!   the stale exchanges with compute: `max(compute, stale exchanges) + fresh exchanges`
//!   (the latent's halo is fresh at every step). `naive` mode exchanges nothing. With the CFG
//!   batch split over two groups, every step also swaps the band's half of the output with the
//!   peer rank of the other group (blocking).
//! - The slowest rank sets the step time (bands may be unequal).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::ir::Graph;
use crate::passes::cost::graph_cost;
use crate::passes::ops::def::Cost;
use crate::plan::{Mode, Plan};

/// One GPU type: fp16 dense tensor-core peak, multiprocessors, memory bandwidth and size, link
/// bandwidths.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Gpu {
    pub name: &'static str,
    /// Streaming multiprocessors (each runs one output tile of a matrix kernel at a time).
    pub sms: u32,
    /// Dense fp16 tensor-core FLOP/s (no sparsity).
    pub fp16_flops: f64,
    /// Memory bandwidth, bytes/s.
    pub memory_bandwidth: f64,
    /// Device memory, bytes.
    pub memory_bytes: f64,
    /// NVLink bandwidth per direction per GPU, bytes/s (`None`: no NVLink).
    pub nvlink: Option<f64>,
    /// PCIe bandwidth per direction, bytes/s.
    pub pcie: f64,
}

const G: f64 = 1e9;
const T: f64 = 1e12;

// Spec sheets (dense fp16 tensor core, memory bandwidth, interconnect per direction):
// - A100 SXM4 80 GB (NVIDIA A100 datasheet, 2021): 312 TFLOPS fp16 tensor, 2,039 GB/s HBM2e,
//   NVLink 3 600 GB/s total (300 GB/s each way), PCIe Gen4 x16 64 GB/s total (32 each way);
//   108 SMs (NVIDIA Ampere architecture whitepaper).
// - H100 SXM5 80 GB (NVIDIA H100 datasheet): 989.4 TFLOPS fp16 tensor dense (1,979 with
//   sparsity), 3.35 TB/s HBM3, NVLink 4 900 GB/s total (450 each way), PCIe Gen5 128 GB/s
//   total (64 each way); 132 SMs (Hopper architecture whitepaper).
// - H200 SXM 141 GB (NVIDIA H200 datasheet): 989 TFLOPS fp16 dense, 4.8 TB/s HBM3e, NVLink
//   900 GB/s, PCIe Gen5; the H100's 132 SMs.
// - L40S 48 GB (NVIDIA L40S datasheet): 362.05 TFLOPS fp16 tensor dense (733 with sparsity),
//   864 GB/s GDDR6, no NVLink, PCIe Gen4 x16 64 GB/s total (32 each way); 142 SMs.
/// The GPU types `dfc estimate` knows.
pub const GPUS: &[Gpu] = &[
    Gpu {
        name: "a100",
        sms: 108,
        fp16_flops: 312.0 * T,
        memory_bandwidth: 2039.0 * G,
        memory_bytes: 80.0 * G,
        nvlink: Some(300.0 * G),
        pcie: 32.0 * G,
    },
    Gpu {
        name: "h100",
        sms: 132,
        fp16_flops: 989.4 * T,
        memory_bandwidth: 3350.0 * G,
        memory_bytes: 80.0 * G,
        nvlink: Some(450.0 * G),
        pcie: 64.0 * G,
    },
    Gpu {
        name: "h200",
        sms: 132,
        fp16_flops: 989.4 * T,
        memory_bandwidth: 4800.0 * G,
        memory_bytes: 141.0 * G,
        nvlink: Some(450.0 * G),
        pcie: 64.0 * G,
    },
    Gpu {
        name: "l40s",
        sms: 142,
        fp16_flops: 362.05 * T,
        memory_bandwidth: 864.0 * G,
        memory_bytes: 48.0 * G,
        nvlink: None,
        pcie: 32.0 * G,
    },
];

/// Latency of one exchange over NVLink (an NCCL collective's start-up within one node,
/// order of magnitude from nccl-tests' small-message times).
pub const NVLINK_LATENCY_S: f64 = 10e-6;
/// Latency of one exchange over PCIe (through the host bridge or a switch).
pub const PCIE_LATENCY_S: f64 = 25e-6;

/// Fixed time of one kernel beyond its roofline time: the launch-to-launch gap of kernels
/// replayed from a CUDA graph plus a kernel's ramp-up and drain, a few microseconds on current
/// GPUs. Taken as 2 µs a priori, not fitted; `dfc estimate --kernel-us` changes it. Nodes
/// that move no data (views, shape queries) launch nothing.
pub const KERNEL_LAUNCH_S: f64 = 2e-6;

/// The roofline's efficiency for every GPU: the one number fitted to a measurement. With
/// [`KERNEL_LAUNCH_S`] and the wave fill, it makes the synthetic SDXL graph
/// (`tools/make_sdxl_shapes.py`, batch 2, 1024², one rank) take 5.02 s for 50 DDIM steps on an
/// A100 (DistriFusion, Table 1, PyTorch with CUDA graphs). See [`calibrate`].
pub const CALIBRATED_EFFICIENCY: f64 = 0.759;

/// The interconnect between the GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Nvlink,
    Pcie,
}

/// Bandwidth and latency of the link one rank receives through.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Link {
    pub kind: LinkKind,
    /// Bytes/s each GPU receives.
    pub bandwidth: f64,
    /// Seconds per exchange.
    pub latency: f64,
}

/// Errors of the estimate's inputs.
#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error("unknown GPU `{0}` (known: a100, h100, h200, l40s)")]
    UnknownGpu(String),
    #[error("{0} has no NVLink; use --link pcie")]
    NoNvlink(&'static str),
}

impl Gpu {
    /// The GPU named `name` (case-insensitive).
    pub fn by_name(name: &str) -> Result<Gpu, EstimateError> {
        GPUS.iter()
            .find(|g| g.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| EstimateError::UnknownGpu(name.to_string()))
    }

    /// The link of `kind` between GPUs of this type.
    pub fn link(&self, kind: LinkKind) -> Result<Link, EstimateError> {
        Ok(match kind {
            LinkKind::Nvlink => Link {
                kind,
                bandwidth: self.nvlink.ok_or(EstimateError::NoNvlink(self.name))?,
                latency: NVLINK_LATENCY_S,
            },
            LinkKind::Pcie => Link {
                kind,
                bandwidth: self.pcie,
                latency: PCIE_LATENCY_S,
            },
        })
    }

    /// The fraction of the multiprocessor-waves a kernel of `tiles` output tiles keeps busy:
    /// `tiles / (⌈tiles / SMs⌉ · SMs)` (1 for kernels that are not tiled matrix products).
    pub fn wave_fill(&self, tiles: f64) -> f64 {
        if tiles <= 0.0 {
            return 1.0;
        }
        let sms = f64::from(self.sms.max(1));
        tiles / ((tiles / sms).ceil() * sms)
    }

    /// Roofline time of a node of cost `c` at full efficiency, its arithmetic slowed by the
    /// wave fill of its tiles.
    pub fn roofline(&self, c: &Cost) -> f64 {
        (c.flops / (self.fp16_flops * self.wave_fill(c.tiles)))
            .max(c.bytes() / self.memory_bandwidth)
    }
}

/// One rank's graph, costed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankCost {
    pub rank: usize,
    pub flops: f64,
    pub bytes: f64,
    /// Σ over nodes of the roofline time at full efficiency, for the GPU it was costed for
    /// (filled by [`estimate`]).
    pub nodes: usize,
    /// Nodes no cost rule covered.
    pub unknown_nodes: usize,
    /// Nodes that launch a kernel (they move data or compute).
    pub kernels: usize,
    #[serde(skip)]
    per_node: Vec<Cost>,
}

impl RankCost {
    /// Costs every node of `g` as rank `rank`.
    pub fn of_graph(rank: usize, g: &Graph) -> Result<Self> {
        let c = graph_cost(g)?;
        let total = c.total();
        Ok(Self {
            rank,
            flops: total.flops,
            bytes: total.bytes(),
            nodes: c.nodes.len(),
            unknown_nodes: c.unknown(),
            kernels: c
                .nodes
                .iter()
                .filter(|n| n.cost.bytes() > 0.0 || n.cost.flops > 0.0)
                .count(),
            per_node: c.nodes.iter().map(|n| n.cost).collect(),
        })
    }

    /// Σ over nodes of the roofline time on `gpu` at full efficiency.
    pub fn roofline(&self, gpu: &Gpu) -> f64 {
        self.per_node.iter().map(|c| gpu.roofline(c)).sum()
    }

    /// Time of one evaluation of the graph: the roofline over `efficiency`, plus `kernel_s`
    /// per launched kernel.
    pub fn compute_s(&self, gpu: &Gpu, efficiency: f64, kernel_s: f64) -> f64 {
        self.roofline(gpu) / efficiency + self.kernels as f64 * kernel_s
    }
}

/// Reads and costs every rank graph of the plan folder `dir` (types only; weights unread).
pub fn cost_plan(dir: &Path, plan: &Plan) -> Result<Vec<RankCost>> {
    let mut out: Vec<RankCost> = Vec::with_capacity(plan.world_size);
    for r in &plan.ranks {
        // Ranks of one band in different groups run the same graph.
        if let Some(same) = out
            .iter()
            .find(|c| plan.ranks[c.rank].band == r.band && plan.ranks[c.rank].rows == r.rows)
        {
            let mut c = same.clone();
            c.rank = r.rank;
            out.push(c);
            continue;
        }
        let path = dir.join(&r.file);
        let model =
            crate::onnx::load(&path).with_context(|| format!("reading {}", path.display()))?;
        let g = Graph::from_model(model.proto)
            .with_context(|| format!("lifting {}", path.display()))?;
        out.push(RankCost::of_graph(r.rank, &g)?);
    }
    Ok(out)
}

/// The options of one estimate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Setup {
    pub gpu: Gpu,
    pub link: Link,
    /// Sampling steps (UNet evaluations; the CFG pair is one batch-2 evaluation).
    pub steps: u32,
    pub efficiency: f64,
    /// Fixed seconds per launched kernel ([`KERNEL_LAUNCH_S`]).
    pub kernel_s: f64,
}

/// One rank's predicted times, seconds per step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankEstimate {
    pub rank: usize,
    pub flops: f64,
    pub bytes: f64,
    pub compute_s: f64,
    /// Exchanges that may be stale (overlapped in stale steps).
    pub stale_exchange_s: f64,
    /// Exchanges fresh at every step (the latent's halo) and the CFG swap.
    pub fresh_exchange_s: f64,
    pub sync_step_s: f64,
    pub stale_step_s: f64,
    /// Weights, peak activations and stale buffers (from `plan.json`), bytes.
    pub memory_bytes: Option<u64>,
}

/// The predicted latency of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub gpu: &'static str,
    pub link: LinkKind,
    pub world_size: usize,
    pub latent: [i64; 2],
    pub split_batch: bool,
    pub mode: String,
    pub steps: u32,
    pub sync_steps: u32,
    pub efficiency: f64,
    pub kernel_s: f64,
    pub ranks: Vec<RankEstimate>,
    /// The slowest rank's step, synchronous and stale.
    pub sync_step_s: f64,
    pub stale_step_s: f64,
    pub latency_s: f64,
    /// Whether every rank's memory fits the GPU (`None` when the plan records no memory).
    pub fits: Option<bool>,
}

/// Bytes of one element of the dtype named `name` (`f16` → 2).
fn dtype_bytes(name: &str) -> f64 {
    match name {
        "f64" | "i64" | "u64" => 8.0,
        "f32" | "i32" | "u32" => 4.0,
        "f16" | "bf16" | "i16" | "u16" => 2.0,
        _ => 1.0,
    }
}

/// Predicts the latency of `plan` whose ranks cost `costs` ([`cost_plan`]).
pub fn estimate(plan: &Plan, costs: &[RankCost], setup: &Setup) -> Estimate {
    let link = setup.link;
    let xfer = |bytes: u64| link.latency + bytes as f64 / link.bandwidth;
    let sync_steps = match plan.mode {
        Mode::Sync => setup.steps,
        Mode::Displaced => setup.steps.min(plan.warmup + 1),
        Mode::Naive => 0,
    };
    let ranks: Vec<RankEstimate> = costs
        .iter()
        .map(|c| {
            let r = c.rank;
            let compute = c.compute_s(&setup.gpu, setup.efficiency, setup.kernel_s);
            let received = |fresh: bool| -> f64 {
                plan.exchanges
                    .iter()
                    .filter(|e| e.always_fresh == fresh)
                    .map(|e| xfer(e.bytes_received.get(r).copied().unwrap_or(0)))
                    .sum()
            };
            let mut fresh = received(true);
            if plan.split_batch {
                // The peer of the other group sends this band's other CFG half of the output.
                let band = plan.ranks.get(r).map_or(0, |s| s.band);
                let out: f64 = plan
                    .outputs
                    .iter()
                    .map(|o| {
                        o.local_shape(band).iter().product::<i64>() as f64 * dtype_bytes(&o.dtype)
                    })
                    .sum();
                fresh += link.latency + out / link.bandwidth;
            }
            let stale = received(false);
            let (sync_step, stale_step) = match plan.mode {
                Mode::Naive => (compute + fresh, compute + fresh),
                _ => (compute + stale + fresh, compute.max(stale) + fresh),
            };
            RankEstimate {
                rank: r,
                flops: c.flops,
                bytes: c.bytes,
                compute_s: compute,
                stale_exchange_s: stale,
                fresh_exchange_s: fresh,
                sync_step_s: sync_step,
                stale_step_s: stale_step,
                memory_bytes: plan.memory.get(r).map(|m| m.total()),
            }
        })
        .collect();
    let sync_step = ranks.iter().map(|r| r.sync_step_s).fold(0.0, f64::max);
    let stale_step = ranks.iter().map(|r| r.stale_step_s).fold(0.0, f64::max);
    let latency =
        f64::from(sync_steps) * sync_step + f64::from(setup.steps - sync_steps) * stale_step;
    let fits = if plan.memory.is_empty() {
        None
    } else {
        Some(
            plan.memory
                .iter()
                .all(|m| (m.total() as f64) <= setup.gpu.memory_bytes),
        )
    };
    Estimate {
        gpu: setup.gpu.name,
        link: link.kind,
        world_size: plan.world_size,
        latent: plan.latent,
        split_batch: plan.split_batch,
        mode: plan.mode.name().to_string(),
        steps: setup.steps,
        sync_steps,
        efficiency: setup.efficiency,
        kernel_s: setup.kernel_s,
        ranks,
        sync_step_s: sync_step,
        stale_step_s: stale_step,
        latency_s: latency,
        fits,
    }
}

/// The efficiency that makes a one-rank plan costing `cost` take `seconds` for `steps` steps
/// on `gpu` with `kernel_s` per kernel: the roofline time over the measured time less the
/// launches. `None` when the launches alone take longer than `seconds`.
pub fn calibrate(
    cost: &RankCost,
    gpu: &Gpu,
    steps: u32,
    seconds: f64,
    kernel_s: f64,
) -> Option<f64> {
    let steps = f64::from(steps);
    let roofline_s = seconds - steps * cost.kernels as f64 * kernel_s;
    (roofline_s > 0.0).then(|| steps * cost.roofline(gpu) / roofline_s)
}
