//! dfc: a compiler and runtime for displaced patch parallelism on diffusion UNets.
//!
//! Data flows one way: [`onnx`] (protobuf I/O) ← [`ir`] (the graph) ← [`passes`] (analyses and
//! rewrites) ← emit. The command-line front end lives in [`cli`].

pub mod cli;
pub mod ir;
pub mod onnx;
#[path = "../passes/mod.rs"]
pub mod passes;
pub mod plan;
pub mod runtime;
pub mod tensor;
