//! The compilation phase a graph is in, and where each value lives once it is partitioned.
//!
//! Passes move a graph forward through [`Phase`]s; the pass manager records the phase a pass
//! establishes and checks that phase's invariants after every later pass (see the compiler's
//! phase verifier in `passes::verify`).

use std::fmt;

/// How far a graph has come through the compiler. Phases only move forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// As loaded: shapes may be symbolic.
    #[default]
    Source,
    /// Every value has a static shape (`require-static`).
    Specialized,
    /// Every group norm is one internal node (`canonicalize`).
    Canonical,
    /// Every value has exactly one [`Layout`] (`partition`).
    Partitioned,
    /// Being rewritten into one band's graph: band types given (`local-types`), group norms
    /// lowered, exchanges not yet inserted. Only the earlier phases' invariants hold.
    Localizing,
    /// The band-local graph of one rank: local types, exchanges inserted (`insert-exchanges`).
    Local,
}

impl Phase {
    /// The phase's name in dumps and errors.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Source => "source",
            Phase::Specialized => "specialized",
            Phase::Canonical => "canonical",
            Phase::Partitioned => "partitioned",
            Phase::Localizing => "localizing",
            Phase::Local => "local",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a value lives when the image is cut into bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Every rank holds the whole value.
    Replicated,
    /// Rank `r` holds band `r` of the group's bands along `axis`.
    Split { axis: usize },
}

impl Layout {
    /// The split axis, if any.
    pub fn axis(self) -> Option<usize> {
        match self {
            Layout::Split { axis } => Some(axis),
            Layout::Replicated => None,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Replicated => f.write_str("replicated"),
            Layout::Split { axis } => write!(f, "split(axis {axis})"),
        }
    }
}
