//! dfc: a compiler and runtime for displaced patch parallelism on diffusion UNets.
//!
//! Data flows one way: [`onnx`] (protobuf I/O) ← [`ir`] (the graph) ← [`passes`] (analyses and
//! rewrites) ← emit. The command-line front end lives in [`cli`].
//! The exchange operators and communicators live in [`plugins`]; [`runtime`] executes plans.
//! [`trt`] loads TensorRT through its shim to build and run engines.
//! [`contract`] holds what they all share: the plan format, the exchange operators' schema and
//! band geometry.

pub mod cli;
pub mod contract;
pub mod emit;
pub mod error;
pub mod ir;
pub mod onnx;
#[path = "../passes/mod.rs"]
pub mod passes;
pub use contract::plan;
#[path = "../plugins/mod.rs"]
pub mod plugins;
pub mod runtime;
pub mod tensor;
pub mod trt;
