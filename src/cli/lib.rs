//! dfc: a compiler and runtime for displaced patch parallelism on diffusion UNets.
//!
//! The workspace's crates, re-exported here under the module names the command line and the
//! tests use, follow one direction: [`contract`] (plan format, exchange-operator schema, band
//! geometry, seeded RNG) and the graph layer ([`onnx`], [`ir`], [`tensor`], [`error`]) at the
//! bottom; the compiler ([`passes`], its driver [`passes::driver`]) on the graph; the exchange operators
//! ([`plugins`]) on the contract; the runtime ([`runtime`], with [`trt`] for TensorRT) on
//! plugins and TensorRT, never on the passes. The command-line front end ([`commands`], one
//! module per command) sits on top; the `dfc` executable is `main.rs` beside this file.

pub mod commands;
pub mod estimate;

pub use dfc_contract as contract;
pub use dfc_contract::plan;
pub use dfc_graph::{error, internal, ir, onnx, tensor};
pub use dfc_passes as passes;
pub use dfc_plugins as plugins;
pub use dfc_runtime as runtime;
pub use dfc_trt as trt;
