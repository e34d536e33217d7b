//! The contract between the compiler and every runtime and backend, kept in one place:
//! [`plan`] (`plan.json`'s types), [`exchange`] (the exchange operators' names, attributes and
//! output-shape rules, and the C header the TensorRT plugins include), [`bands`] (which rows
//! each band owns at every level), [`rng`] (the seeded random source).
//!
//! **Invariant:** nothing here depends on the compiler's passes, the graph IR or an executor;
//! the compiler, the CPU operators, the runtime and the plugins all read their geometry and
//! operator schema from this module.

pub mod bands;
pub mod exchange;
pub mod plan;
pub mod rng;

pub use bands::{BandError, Bands};
pub use exchange::{ExchangeAttrs, ExchangeKind};
