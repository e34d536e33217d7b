//! dfc: a compiler and runtime for displaced patch parallelism on diffusion UNets.
//!
//! Data flows one way: [`onnx`] (protobuf I/O) ← [`ir`] (the graph) ← [`passes`] (analyses and
//! rewrites) ← emit. The command-line front end lives in [`cli`].
//! The exchange operators and communicators live in [`plugins`]; [`runtime`] executes plans.

pub mod cli;
pub mod emit;
pub mod ir;
pub mod onnx;
#[path = "../passes/mod.rs"]
pub mod passes;
pub mod plan;
#[path = "../plugins/mod.rs"]
pub mod plugins;
pub mod runtime;
pub mod tensor;
