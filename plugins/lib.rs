//! The exchange operators of DESIGN §3 (`DfcHaloExchange`, `DfcStatsAllReduce`,
//! `DfcPatchAllGather`, domain `dfc`) and the communicators they run on.
//!
//! | module | what | depends on |
//! |---|---|---|
//! | [`comm`] | in-process communicator: per-slot rendezvous, step-parity double buffers, poisoning | — |
//! | [`exchange`] | the operators' semantics on slices, bound to a [`RankContext`] | `comm` |
//! | [`ort_ops`] | the operators as ONNX Runtime custom operators | `exchange`, `ort` |
//!
//! `comm` and `exchange` know nothing of any executor; a TensorRT/NCCL backend implements the
//! same contract next to `ort_ops`.

// The contract, under the names the operators use.
pub use dfc_contract as contract;
pub use dfc_contract::plan;

pub mod comm;
pub mod exchange;
pub mod ort_ops;

pub use comm::{Call, CommError, Communicator, Jitter, Payload};
pub use exchange::{ExchangeError, RankContext};
pub use ort_ops::{DOMAIN, operator_domain};
