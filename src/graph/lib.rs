//! dfc's graph layer: lossless ONNX protobuf I/O ([`onnx`]), the graph IR over petgraph
//! ([`ir`]), constant tensors for folding and per-band constants ([`tensor`]), and errors decided
//! by type ([`error`]).
//!
//! **Architecture invariant:** this crate knows nothing of bands, plans, passes or executors.

pub mod error;
pub mod ir;
pub mod onnx;
pub mod tensor;
