//! Execution of models and plans.
//!
//! [`ort_env`] finds and loads ONNX Runtime; [`session`] runs one model file on named
//! [`host::HostTensor`]s; [`host`] also reads and writes `.npz` files; [`bands`] cuts full-size
//! tensors into the ranks' parts and puts outputs back together, for every backend;
//! [`plan_exec`] runs a plan folder's rank graphs in lockstep; [`sampling`] runs a whole
//! sampling loop through a plan with [`sampler`]'s update rules on any
//! [`executor::UnetExecutor`]; [`image`] turns latents into images and compares them;
//! [`launch`] starts and supervises one process per rank (and their rendezvous across nodes);
//! `gpu` (feature `gpu`) is the TensorRT + NCCL executor.

// The layers below, under the names the runtime uses.
pub use dfc_contract as contract;
pub use dfc_contract::plan;
pub use dfc_graph::onnx;
pub use dfc_plugins as plugins;
pub use dfc_trt as trt;

pub mod bands;
pub mod executor;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod host;
pub mod image;
pub mod launch;
pub mod ort_env;
pub mod plan_exec;
pub mod rng;
pub mod sampler;
pub mod sampling;
pub mod serving;
pub mod session;

pub use executor::UnetExecutor;
pub use host::{HostTensor, NamedTensors, difference, read_npz, write_npz};
pub use ort_env::{INSTALL_HINT, environment, find_onnxruntime};
pub use plan_exec::{ExecError, ExecOptions, PlanExecutor};
pub use rng::Rng;
pub use session::{ModelSession, SessionOptions, run_model};
