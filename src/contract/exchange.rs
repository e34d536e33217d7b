//! The exchange operators' schema (DESIGN §3), once for every implementation: the compiler
//! that inserts them, the CPU operators in ONNX Runtime, and the TensorRT plugins (which
//! include the C header rendered by [`c_header`]; a test keeps the committed header equal to
//! it).
//!
//! - `DfcHaloExchange(x) -> y` {`slot`, `axis`, `top`, `bottom`}: y has `top + bottom` more
//!   rows on `axis`: `[last top rows of band r−1 ‖ x ‖ first bottom rows of band r+1]`.
//! - `DfcStatsAllReduce(s) -> g` {`slot`}: g has the shape of s; it is the mean of every
//!   band's partial statistics weighted by the band's share of the image rows.
//! - `DfcPatchAllGather(x) -> y` {`slot`, `axis`, `parts`}: `parts` lists every band's extent
//!   on `axis` in band order (bands may be unequal); x has its own band's part, y their sum.

use serde::{Deserialize, Serialize};

/// ONNX domain of the exchange operators (the TensorRT plugin namespace).
pub const DOMAIN: &str = "dfc";
/// Opset version of [`DOMAIN`] that rank graphs import (the plugins' version).
pub const VERSION: i64 = 1;

/// Attribute `slot` (int, unique per graph): identifies the stale buffer.
pub const ATTR_SLOT: &str = "slot";
/// Attribute `axis` (int) of halo and gather: the split axis.
pub const ATTR_AXIS: &str = "axis";
/// Attribute `top` (int) of halo: rows from the band above.
pub const ATTR_TOP: &str = "top";
/// Attribute `bottom` (int) of halo: rows from the band below.
pub const ATTR_BOTTOM: &str = "bottom";
/// Attribute `parts` (ints) of gather: every band's extent on `axis`, band order.
pub const ATTR_PARTS: &str = "parts";

/// Entries of the last axis of a statistics tensor that GroupNorm's corrected mode treats as
/// one (E\[x\], E\[x²\]) pair.
pub const STATS_PAIR: usize = 2;

/// Which exchange operator a slot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExchangeKind {
    /// `DfcHaloExchange`: rows from the neighbouring bands.
    Halo,
    /// `DfcStatsAllReduce`: the share-weighted mean of per-band partial statistics.
    Stats,
    /// `DfcPatchAllGather`: concatenation of every band's tensor along an axis.
    Gather,
}

impl ExchangeKind {
    /// Every kind.
    pub const ALL: [ExchangeKind; 3] = [
        ExchangeKind::Halo,
        ExchangeKind::Stats,
        ExchangeKind::Gather,
    ];

    /// The ONNX operator name (domain [`DOMAIN`]), also the TensorRT plugin name.
    pub const fn op_type(self) -> &'static str {
        match self {
            ExchangeKind::Halo => "DfcHaloExchange",
            ExchangeKind::Stats => "DfcStatsAllReduce",
            ExchangeKind::Gather => "DfcPatchAllGather",
        }
    }

    /// The kind whose operator is `op_type`.
    pub fn from_op_type(op_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.op_type() == op_type)
    }

    /// Attribute names the operator carries, `slot` first.
    pub const fn attributes(self) -> &'static [&'static str] {
        match self {
            ExchangeKind::Halo => &[ATTR_SLOT, ATTR_AXIS, ATTR_TOP, ATTR_BOTTOM],
            ExchangeKind::Stats => &[ATTR_SLOT],
            ExchangeKind::Gather => &[ATTR_SLOT, ATTR_AXIS, ATTR_PARTS],
        }
    }
}

/// The attributes of one exchange node, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeAttrs {
    Halo { axis: usize, top: i64, bottom: i64 },
    Stats,
    Gather { axis: usize, parts: Vec<i64> },
}

impl ExchangeAttrs {
    /// The operator these attributes belong to.
    pub fn kind(&self) -> ExchangeKind {
        match self {
            ExchangeAttrs::Halo { .. } => ExchangeKind::Halo,
            ExchangeAttrs::Stats => ExchangeKind::Stats,
            ExchangeAttrs::Gather { .. } => ExchangeKind::Gather,
        }
    }
}

/// Why an exchange's input does not fit its attributes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("axis {axis} is outside the input's shape {shape:?}")]
    Axis { axis: usize, shape: Vec<i64> },
    #[error("halo rows must not be negative (top {top}, bottom {bottom})")]
    NegativeHalo { top: i64, bottom: i64 },
    #[error("`parts` must list at least one positive extent, got {0:?}")]
    Parts(Vec<i64>),
    #[error("the input's extent {extent} on axis {axis} is none of the parts {parts:?}")]
    NotAPart {
        extent: i64,
        axis: usize,
        parts: Vec<i64>,
    },
    #[error("the output size overflows")]
    Overflow,
}

/// The output shape of an exchange operator with `attrs` on an input of `shape`. The input's
/// extent on a gather's axis must be one of its `parts` (its own band's, which the operator
/// checks against its rank at run time).
pub fn output_shape(attrs: &ExchangeAttrs, shape: &[i64]) -> Result<Vec<i64>, ShapeError> {
    let axis_ok = |axis: usize| {
        if axis < shape.len() {
            Ok(())
        } else {
            Err(ShapeError::Axis {
                axis,
                shape: shape.to_vec(),
            })
        }
    };
    let mut out = shape.to_vec();
    match attrs {
        ExchangeAttrs::Stats => {}
        &ExchangeAttrs::Halo { axis, top, bottom } => {
            axis_ok(axis)?;
            if top < 0 || bottom < 0 {
                return Err(ShapeError::NegativeHalo { top, bottom });
            }
            out[axis] = shape[axis]
                .checked_add(top)
                .and_then(|v| v.checked_add(bottom))
                .ok_or(ShapeError::Overflow)?;
        }
        ExchangeAttrs::Gather { axis, parts } => {
            axis_ok(*axis)?;
            if parts.is_empty() || parts.iter().any(|&p| p <= 0) {
                return Err(ShapeError::Parts(parts.clone()));
            }
            if !parts.contains(&shape[*axis]) {
                return Err(ShapeError::NotAPart {
                    extent: shape[*axis],
                    axis: *axis,
                    parts: parts.clone(),
                });
            }
            out[*axis] = parts
                .iter()
                .try_fold(0i64, |a, &p| a.checked_add(p))
                .ok_or(ShapeError::Overflow)?;
        }
    }
    Ok(out)
}

/// How GroupNorm statistics are exchanged in the stale steps of displaced mode (warmup steps
/// and sync mode always all-reduce fresh statistics). The names are the paper's ablation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GnMode {
    /// Paper Eq. 2: the previous step's group mean plus this band's change since then,
    /// `mean_j(s_j(t−1)) + s_i(t) − s_i(t−1)`; where the estimated variance is negative, the
    /// band's own statistics.
    #[default]
    Corrected,
    /// The previous step's statistics of the other bands with this band's fresh ones,
    /// `(Σ_{j≠i} s_j(t−1) + s_i(t)) / N`.
    Stale,
    /// A blocking all-reduce of this step's statistics (exact GroupNorm) at every step.
    Sync,
    /// Every band normalizes with its own statistics (no exchange).
    Separate,
}

impl GnMode {
    /// The name used on the command line and in `plan.json`.
    pub const fn name(self) -> &'static str {
        match self {
            GnMode::Corrected => "corrected",
            GnMode::Stale => "stale",
            GnMode::Sync => "sync",
            GnMode::Separate => "separate",
        }
    }
}

impl GnMode {
    /// Every mode, in the order of their C codes.
    pub const ALL: [GnMode; 4] = [
        GnMode::Corrected,
        GnMode::Stale,
        GnMode::Sync,
        GnMode::Separate,
    ];

    /// The mode's code in the C ABI (`DFC_GN_*`).
    pub const fn code(self) -> i32 {
        match self {
            GnMode::Corrected => 0,
            GnMode::Stale => 1,
            GnMode::Sync => 2,
            GnMode::Separate => 3,
        }
    }
}

/// Path of the rendered header, relative to the repository root.
pub const C_HEADER_PATH: &str = "plugins/tensorrt/include/dfc_contract.h";

/// The C header of this contract for the TensorRT plugins (committed at [`C_HEADER_PATH`]).
pub fn c_header() -> String {
    let mut s = String::new();
    s += "/* The exchange operators' contract (DESIGN §3), generated from the Rust contract module\n";
    s += " * `dfc::contract`. Do not edit: `INSTA_UPDATE=always cargo test --test contract_header`\n";
    s += " * rewrites it, and that test fails whenever this file and the Rust side disagree. */\n";
    s += "#ifndef DFC_CONTRACT_H\n#define DFC_CONTRACT_H\n\n";
    s += "/* ONNX domain of the exchange operators (TensorRT plugin namespace) and their version. */\n";
    s += &format!("#define DFC_DOMAIN \"{DOMAIN}\"\n");
    s += &format!("#define DFC_OP_VERSION \"{VERSION}\"\n\n");
    s += "/* Operator names (TensorRT plugin names). */\n";
    for (k, name) in [
        (ExchangeKind::Halo, "HALO"),
        (ExchangeKind::Stats, "STATS"),
        (ExchangeKind::Gather, "GATHER"),
    ] {
        s += &format!("#define DFC_OP_{name} \"{}\"\n", k.op_type());
    }
    s += "\n/* Attribute names. Every operator carries `slot` (int); halo: `axis`, `top`, `bottom` (ints);\n";
    s += " * gather: `axis` (int) and `parts` (ints: every band's extent on `axis`, band order). */\n";
    for (name, value) in [
        ("SLOT", ATTR_SLOT),
        ("AXIS", ATTR_AXIS),
        ("TOP", ATTR_TOP),
        ("BOTTOM", ATTR_BOTTOM),
        ("PARTS", ATTR_PARTS),
    ] {
        s += &format!("#define DFC_ATTR_{name} \"{value}\"\n");
    }
    s += "\n/* GroupNorm statistics in the stale steps of displaced mode (plan.json `gn`). */\n";
    for m in GnMode::ALL {
        s += &format!("#define DFC_GN_{} {}\n", m.name().to_uppercase(), m.code());
    }
    s += "\n/* Entries of the last axis of a statistics tensor that the corrected mode treats as one\n";
    s += " * (E[x], E[x^2]) pair. */\n";
    s += &format!("#define DFC_STATS_PAIR {STATS_PAIR}\n\n");
    s += "#endif /* DFC_CONTRACT_H */\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_shapes_follow_the_attributes() -> Result<(), ShapeError> {
        let halo = ExchangeAttrs::Halo {
            axis: 2,
            top: 1,
            bottom: 1,
        };
        assert_eq!(output_shape(&halo, &[2, 4, 11, 8])?, vec![2, 4, 13, 8]);
        let gather = ExchangeAttrs::Gather {
            axis: 1,
            parts: vec![352, 352, 320],
        };
        assert_eq!(output_shape(&gather, &[2, 320, 64])?, vec![2, 1024, 64]);
        assert!(matches!(
            output_shape(&gather, &[2, 300, 64]),
            Err(ShapeError::NotAPart { .. })
        ));
        assert_eq!(
            output_shape(&ExchangeAttrs::Stats, &[2, 8, 2])?,
            vec![2, 8, 2]
        );
        assert!(output_shape(&halo, &[2, 4]).is_err());
        Ok(())
    }

    #[test]
    fn names_and_codes_are_distinct() {
        let ops: std::collections::HashSet<_> =
            ExchangeKind::ALL.iter().map(|k| k.op_type()).collect();
        assert_eq!(ops.len(), 3);
        for k in ExchangeKind::ALL {
            assert_eq!(ExchangeKind::from_op_type(k.op_type()), Some(k));
            assert_eq!(k.attributes()[0], ATTR_SLOT);
        }
        let codes: std::collections::HashSet<_> = GnMode::ALL.iter().map(|m| m.code()).collect();
        assert_eq!(codes.len(), GnMode::ALL.len());
    }
}
