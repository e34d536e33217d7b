//! Analyses and rewrites over the [`crate::ir::Graph`].
