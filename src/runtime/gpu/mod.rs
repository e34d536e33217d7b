//! The GPU executor (feature `gpu`): one rank per process, its band's TensorRT engine with the
//! dfc plugins, NCCL between the ranks. [`GpuExecutor`] implements
//! [`UnetExecutor`](super::executor::UnetExecutor), so `dfc run --backend tensorrt` samples
//! through the same loop as the CPU executor.
//!
//! Per rank: the CUDA device `DFC_LOCAL_RANK` (from `dfc launch`; 0 for a one-rank plan run
//! directly), one stream, one device buffer per engine input and output allocated once and
//! bound once (`set_address`); the world's NCCL communicator from the launcher's unique id, the
//! group's split from it when the plan has several groups (split batch); the plugin library's
//! context (`dfc_context_create` with the plan's band boundaries, GroupNorm mode, always-fresh
//! slots and the group's communicator; a one-rank plan uses the library's local transport and no
//! NCCL). Every step: inputs host → device, `dfc_context_set_step(step, stale)`, enqueue (or
//! replay a CUDA graph), outputs device → host.
//!
//! **CUDA graphs** (`cuda_graphs`): the plugins decide fresh/stale and the step parity on the
//! host at enqueue time, so one graph serves each of three phases: fresh (warmup and sync
//! steps), stale at even steps, stale at odd steps. The first step of a phase runs uncaptured
//! (the plugins allocate their buffers at first use, and TensorRT needs one uncaptured
//! enqueue), the second is captured and replayed, later ones replay. Copies stay outside the
//! graphs (the buffers never move).
//!
//! **Failure**: any error aborts the plugin context and the communicators (`ncclCommAbort`)
//! before it is returned; the launcher's `abort` does the same from the watcher thread.
//!
//! Engine files: the plan's `engines` (`plan.json`, written by `dfc build`).

pub mod libs;
pub mod nccl;
pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut, sys as cu};
use half::f16;
use ndarray::{ArrayD, IxDyn};
use thiserror::Error;

pub use nccl::NcclIds;

use self::nccl::Comm;
use self::plugin::{PluginContext, PluginLib, Transport};
use super::bands::{BandError, split_for_plan};
use super::executor::{SampleError, UnetExecutor};
use super::host::{HostTensor, NamedTensors};
use super::launch::{LaunchError, RankEnv, watch_for_abort};
use crate::plan::{Plan, PlanError};
use crate::trt::{Engine, IoSpec, TensorRt, TrtError};

/// Errors of the GPU executor.
#[derive(Debug, Error)]
pub enum GpuError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("TensorRT: {0}")]
    TensorRt(#[from] TrtError),
    /// No CUDA driver on this machine.
    #[error("no CUDA driver: {0}")]
    NoCuda(String),
    /// NCCL is missing.
    #[error("NCCL: {0}")]
    NoNccl(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    /// The plugin library cannot be used.
    #[error("the dfc plugin library: {0}")]
    Plugins(String),
    /// A plugin C ABI call failed.
    #[error("{call} failed ({code}): {message}")]
    Plugin {
        call: &'static str,
        code: i32,
        message: String,
    },
    /// The plan, engine or inputs do not fit together.
    #[error("{0}")]
    Mismatch(String),
    /// An earlier step failed; the executor is unusable.
    #[error("an earlier step failed ({0})")]
    Failed(String),
}

impl From<GpuError> for SampleError {
    fn from(e: GpuError) -> Self {
        SampleError::Backend(Box::new(e))
    }
}

fn cuda(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Cuda(format!("{e:?}"))
}

/// Options of the GPU executor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// TensorRT's library or folder (default: [`TensorRt::find`]'s search).
    pub tensorrt: Option<PathBuf>,
    /// Capture and replay CUDA graphs (see the module documentation).
    pub cuda_graphs: bool,
}

/// One engine tensor and its device buffer.
struct Binding {
    io: IoSpec,
    elems: usize,
    buf: CudaSlice<u8>,
}

fn elem_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "f32" | "i32" => 4,
        "f16" | "bf16" => 2,
        "i64" => 8,
        "i8" | "u8" | "bool" => 1,
        _ => return None,
    })
}

/// `t` as the bytes of an engine tensor of type `dtype` (converting f32/f16 and i64/i32).
fn to_bytes(t: &HostTensor, dtype: &str) -> Result<Vec<u8>, String> {
    Ok(match (t, dtype) {
        (HostTensor::F32(a), "f32") => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        (HostTensor::F32(a), "f16") => a
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        (HostTensor::F16(a), "f16") => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        (HostTensor::F16(a), "f32") => a.iter().flat_map(|v| v.to_f32().to_le_bytes()).collect(),
        (HostTensor::I64(a), "i64") => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        (HostTensor::I64(a), "i32") => a
            .iter()
            .map(|&v| i32::try_from(v).map_err(|_| format!("{v} does not fit i32")))
            .collect::<Result<Vec<i32>, _>>()?
            .into_iter()
            .flat_map(i32::to_le_bytes)
            .collect(),
        (t, d) => {
            return Err(format!(
                "a {} tensor for an engine tensor of {d}",
                t.dtype()
            ));
        }
    })
}

/// An engine output's bytes as a host tensor.
fn from_bytes(bytes: &[u8], dtype: &str, dims: &[usize]) -> Result<HostTensor, String> {
    let shape = |e: ndarray::ShapeError| e.to_string();
    Ok(match dtype {
        "f32" => HostTensor::F32(
            ArrayD::from_shape_vec(
                IxDyn(dims),
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
            .map_err(shape)?,
        ),
        "f16" => HostTensor::F16(
            ArrayD::from_shape_vec(
                IxDyn(dims),
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            )
            .map_err(shape)?,
        ),
        other => return Err(format!("outputs of type {other} are not read back")),
    })
}

/// Which CUDA graph a step replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    Fresh,
    StaleEven,
    StaleOdd,
}

#[derive(Default)]
struct PhaseGraph {
    runs: u32,
    graph: Option<cudarc::driver::CudaGraph>,
}

/// One rank of a plan on its GPU (see the module documentation).
pub struct GpuExecutor {
    plan: Plan,
    rank: usize,
    cuda_graphs: bool,
    // Field order is drop order: engine and plugin context before the communicators they
    // use, buffers before the stream and context.
    engine: Engine,
    plugin_ctx: PluginContext,
    group: Option<Comm>,
    world: Option<Comm>,
    inputs: Vec<Binding>,
    outputs: Vec<Binding>,
    graphs: [PhaseGraph; 3],
    stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
    _trt: TensorRt,
    next_step: u64,
    failed: Option<String>,
}

impl GpuExecutor {
    /// Loads this process's rank of the plan at `dir`: the rank comes from `dfc launch`'s
    /// environment ([`RankEnv`]); without it the plan must have one rank. Fails with the reason
    /// (no panic) on a machine without the CUDA driver, NCCL or TensorRT.
    pub fn load(dir: &Path, options: &GpuOptions) -> Result<Self, GpuError> {
        let plan = Plan::load(dir)?;
        let env = RankEnv::from_env()?;
        let (rank, device) = match &env {
            Some(e) => {
                if e.world_size != plan.world_size {
                    return Err(GpuError::Mismatch(format!(
                        "the plan has {} ranks, `dfc launch` started {} (--gpus × --nnodes)",
                        plan.world_size, e.world_size
                    )));
                }
                (e.rank, e.local_rank)
            }
            None if plan.world_size == 1 => (0, 0),
            None => {
                return Err(GpuError::Mismatch(format!(
                    "a plan of {} ranks runs one process per GPU: `dfc launch --gpus {} -- run …`",
                    plan.world_size, plan.world_size
                )));
            }
        };
        let spec = plan
            .ranks
            .get(rank)
            .ok_or_else(|| GpuError::Mismatch(format!("the plan has no rank {rank}")))?
            .clone();
        let engine = plan
            .engines
            .iter()
            .find(|e| e.rank == rank)
            .ok_or_else(|| {
                GpuError::Mismatch(format!(
                    "plan.json records no engine for rank {rank} (build them with `dfc build {}`)",
                    dir.display()
                ))
            })?;
        let engine_path = dir.join(&engine.file);
        if !engine_path.is_file() {
            return Err(GpuError::Mismatch(format!(
                "engine {} is missing (build the plan's engines again with `dfc build`)",
                engine_path.display()
            )));
        }
        // SAFETY: only tries to open the driver library.
        if !unsafe { cu::is_culib_present() } {
            return Err(GpuError::NoCuda(
                "libcuda.so (the NVIDIA driver) cannot be loaded on this machine".into(),
            ));
        }
        let found = TensorRt::find(options.tensorrt.as_deref())?;
        let plugins_path = found.plugins.clone().ok_or_else(|| {
            GpuError::Plugins(
                "libdfc_trt_plugins.so not found (set DFC_TRT_PLUGINS or build it with \
                 tools/build_plugins.sh)"
                    .into(),
            )
        })?;
        let ctx = CudaContext::new(device).map_err(cuda)?;
        let stream = ctx.new_stream().map_err(cuda)?;

        // Communicators first: every rank reaches ncclCommInitRank before anything slow.
        let (world, group) = match &env {
            Some(e) if plan.world_size > 1 => {
                let world = Comm::init(&e.unique_id, e.rank, e.world_size)?;
                let group = if plan.groups.len() > 1 {
                    Some(world.split(spec.group, spec.band)?)
                } else {
                    None
                };
                (Some(world), group)
            }
            _ => (None, None),
        };
        let group_comm = group.as_ref().or(world.as_ref());
        if let Some(c) = group_comm {
            let members = plan.groups.get(spec.group).map_or(0, Vec::len);
            if c.size() != members || c.rank() != spec.band {
                return Err(GpuError::Mismatch(format!(
                    "the group communicator has rank {} of {}, the plan rank {} of {members}",
                    c.rank(),
                    c.size(),
                    spec.band
                )));
            }
        }

        let trt = TensorRt::open(&found)?;
        trt.load_plugins(&plugins_path)?;
        let lib = PluginLib::open(&plugins_path)?;
        let always_fresh: Vec<u32> = plan
            .exchanges
            .iter()
            .filter(|e| e.always_fresh)
            .map(|e| e.slot)
            .collect();
        let transport = match group_comm {
            Some(c) => Transport::Nccl(c.raw()),
            None => Transport::Alone,
        };
        let plugin_ctx = PluginContext::create(
            &lib,
            spec.band,
            plan.bands.bounds(),
            plan.gn.code(),
            &always_fresh,
            transport,
        )?;
        if env.is_some() {
            let ctx_abort = plugin_ctx.abort_handle();
            let comms: Vec<_> = world
                .iter()
                .chain(group.iter())
                .map(Comm::abort_handle)
                .collect();
            watch_for_abort(move |reason| {
                ctx_abort.abort(reason);
                for c in comms {
                    c.abort();
                }
            })
            .map_err(|e| GpuError::Mismatch(format!("cannot watch for aborts: {e}")))?;
        }

        let mut engine = trt.load_engine(&engine_path, device as i32)?;
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for io in engine.io()? {
            let dims: Vec<usize> = io
                .dims
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    GpuError::Mismatch(format!(
                        "engine tensor `{}` has dynamic dims {:?}",
                        io.name, io.dims
                    ))
                })?;
            let elems: usize = dims.iter().product();
            let size = elem_size(&io.dtype).ok_or_else(|| {
                GpuError::Mismatch(format!("engine tensor `{}` has type {}", io.name, io.dtype))
            })?;
            let mut buf = stream
                .alloc_zeros::<u8>((elems * size).max(1))
                .map_err(cuda)?;
            {
                let (ptr, _sync) = buf.device_ptr_mut(&stream);
                // SAFETY: the buffer has the tensor's size and lives as long as the engine
                // (both are fields of the executor; the engine drops first).
                unsafe { engine.set_address(&io.name, ptr) }?;
            }
            let b = Binding { io, elems, buf };
            if b.io.is_input {
                inputs.push(b);
            } else {
                outputs.push(b);
            }
        }
        for s in &plan.inputs {
            if !inputs.iter().any(|b| b.io.name == s.name) {
                return Err(GpuError::Mismatch(format!(
                    "engine {} has no input `{}`",
                    engine_path.display(),
                    s.name
                )));
            }
        }
        Ok(Self {
            plan,
            rank,
            cuda_graphs: options.cuda_graphs,
            engine,
            plugin_ctx,
            group,
            world,
            inputs,
            outputs,
            graphs: Default::default(),
            stream,
            _ctx: ctx,
            _trt: trt,
            next_step: 0,
            failed: None,
        })
    }

    /// Whether this process writes the run's outputs (rank 0).
    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }

    /// Waits for the plugin context's communication stream and this rank's stream.
    pub fn finish(&mut self) -> Result<(), GpuError> {
        self.plugin_ctx.synchronize()?;
        self.stream.synchronize().map_err(cuda)
    }

    /// Records `err`, aborts the plugin context and the communicators, returns `err`.
    fn fail(&mut self, err: GpuError) -> GpuError {
        let reason = err.to_string();
        self.plugin_ctx.abort_handle().abort(&reason);
        if let Some(g) = self.group.as_mut() {
            g.abort();
        }
        if let Some(w) = self.world.as_mut() {
            w.abort();
        }
        self.failed = Some(reason);
        err
    }

    fn step(&mut self, feed: NamedTensors, stale: bool) -> Result<NamedTensors, GpuError> {
        for b in &mut self.inputs {
            let (_, t) = feed.iter().find(|(n, _)| *n == b.io.name).ok_or_else(|| {
                GpuError::Mismatch(format!("no feed for engine input `{}`", b.io.name))
            })?;
            let elems: usize = t.shape().iter().product();
            if elems != b.elems {
                return Err(GpuError::Mismatch(format!(
                    "input `{}`: {} elements for an engine tensor of {:?}",
                    b.io.name, elems, b.io.dims
                )));
            }
            let bytes = to_bytes(t, &b.io.dtype)
                .map_err(|e| GpuError::Mismatch(format!("input `{}`: {e}", b.io.name)))?;
            self.stream.memcpy_htod(&bytes, &mut b.buf).map_err(cuda)?;
        }
        let step = self.next_step;
        self.next_step += 1;
        let stale = stale && step > 0;
        self.plugin_ctx.set_step(step, stale)?;
        self.enqueue(match (stale, step % 2) {
            (false, _) => Phase::Fresh,
            (true, 0) => Phase::StaleEven,
            (true, _) => Phase::StaleOdd,
        })?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for b in &self.outputs {
            let bytes = self.stream.clone_dtoh(&b.buf).map_err(cuda)?;
            self.stream.synchronize().map_err(cuda)?;
            let dims: Vec<usize> = b.io.dims.iter().map(|&d| d.max(0) as usize).collect();
            let t = from_bytes(&bytes, &b.io.dtype, &dims)
                .map_err(|e| GpuError::Mismatch(format!("output `{}`: {e}", b.io.name)))?;
            out.push((b.io.name.clone(), t));
        }
        Ok(out)
    }

    fn enqueue(&mut self, phase: Phase) -> Result<(), GpuError> {
        let raw = self.stream.cu_stream() as *mut std::ffi::c_void;
        if !self.cuda_graphs {
            // SAFETY: the stream is this engine's device's; every tensor is bound to a live
            // buffer of its size.
            return Ok(unsafe { self.engine.enqueue(raw) }?);
        }
        let g = &mut self.graphs[phase as usize];
        g.runs += 1;
        if let Some(graph) = &g.graph {
            return graph.launch().map_err(cuda);
        }
        if g.runs == 1 {
            // SAFETY: as above.
            return Ok(unsafe { self.engine.enqueue(raw) }?);
        }
        self.stream
            .begin_capture(cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda)?;
        // SAFETY: as above.
        let queued = unsafe { self.engine.enqueue(raw) };
        let captured = self
            .stream
            .end_capture(cu::CUgraphInstantiate_flags(0))
            .map_err(cuda);
        queued?;
        let graph = captured?.ok_or_else(|| GpuError::Cuda("the capture made no graph".into()))?;
        graph.launch().map_err(cuda)?;
        g.graph = Some(graph);
        Ok(())
    }
}

impl UnetExecutor for GpuExecutor {
    type Error = GpuError;

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn local_ranks(&self) -> Vec<usize> {
        vec![self.rank]
    }

    fn split_inputs_except(
        &self,
        inputs: &[(String, HostTensor)],
        skip: &[&str],
    ) -> Result<Vec<NamedTensors>, GpuError> {
        let mut all = split_for_plan(&self.plan, inputs, skip)
            .map_err(|e: BandError| GpuError::Mismatch(e.to_string()))?;
        if self.rank >= all.len() {
            return Err(GpuError::Mismatch(format!(
                "no inputs for rank {}",
                self.rank
            )));
        }
        Ok(vec![all.swap_remove(self.rank)])
    }

    fn run_ranks(
        &mut self,
        feeds: Vec<NamedTensors>,
        stale: bool,
    ) -> Result<Vec<NamedTensors>, GpuError> {
        if let Some(reason) = &self.failed {
            return Err(GpuError::Failed(reason.clone()));
        }
        let Ok([feed]) = <[NamedTensors; 1]>::try_from(feeds) else {
            return Err(GpuError::Mismatch("one feed per process expected".into()));
        };
        match self.step(feed, stale) {
            Ok(out) => Ok(vec![out]),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn partner_bands(
        &mut self,
        bands: &[Vec<f32>],
        partners: &[usize],
    ) -> Result<Vec<Vec<f32>>, SampleError> {
        let (Some(world), [mine], [peer]) = (self.world.as_ref(), bands, partners) else {
            return Err(SampleError::Plan(
                "a split-batch exchange needs a launched multi-rank run".into(),
            ));
        };
        match world.swap(&self.stream, mine, *peer) {
            Ok(theirs) => Ok(vec![theirs]),
            Err(e) => Err(self.fail(e).into()),
        }
    }

    fn all_bands(&mut self, bands: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, SampleError> {
        let Some(world) = self.world.as_ref() else {
            return Ok(bands);
        };
        let [mine] = bands.as_slice() else {
            return Err(SampleError::Plan("one band per process expected".into()));
        };
        match world.all_gather_var(&self.stream, mine) {
            Ok(all) => Ok(all),
            Err(e) => Err(self.fail(e).into()),
        }
    }
}
