//! The exchange operators of domain `dfc`: their shape rules, which are the contract's
//! ([`crate::contract::exchange::output_shape`]): a halo grows the split axis by `top + bottom`
//! rows, a gather makes it the sum of its `parts`, the statistics keep their shape.
//!
//! They appear only in partitioned graphs (after `localize`), so their partition rule refuses:
//! partitioning a graph twice is a mistake.

use anyhow::Result;

use super::def::OpDef;
use super::layout::{PartCx, Verdict};
use super::{OpCx, norm_axis, tt};
use crate::contract::exchange::{
    ATTR_AXIS, ATTR_BOTTOM, ATTR_PARTS, ATTR_TOP, ExchangeAttrs, output_shape,
};
use crate::ir::Dim;
use crate::plan::ExchangeKind;

pub use crate::contract::exchange::{DOMAIN, VERSION};

/// The typed attributes of an exchange node of `kind`.
pub fn attrs_of(cx: &OpCx<'_>, kind: ExchangeKind, rank: usize) -> Result<ExchangeAttrs> {
    let axis = || norm_axis(cx.attr_i(ATTR_AXIS, -1), rank);
    Ok(match kind {
        ExchangeKind::Halo => ExchangeAttrs::Halo {
            axis: axis()?,
            top: cx.attr_i(ATTR_TOP, 0),
            bottom: cx.attr_i(ATTR_BOTTOM, 0),
        },
        ExchangeKind::Stats => ExchangeAttrs::Stats,
        ExchangeKind::Gather => ExchangeAttrs::Gather {
            axis: axis()?,
            parts: cx.attr_ints(ATTR_PARTS).unwrap_or_default(),
        },
    })
}

fn infer(cx: &OpCx<'_>, kind: ExchangeKind) -> Result<Vec<crate::ir::TensorType>> {
    let x = cx.input(0)?;
    let Some(d) = &x.shape else {
        return Ok(vec![tt(x.elem, None)]);
    };
    let attrs = attrs_of(cx, kind, d.len())?;
    let fixed: Option<Vec<i64>> = d.iter().map(Dim::fixed).collect();
    let Some(fixed) = fixed else {
        // Only the split axis changes; without static dims it becomes unknown.
        let mut out = d.clone();
        if let ExchangeAttrs::Halo { axis, .. } | ExchangeAttrs::Gather { axis, .. } = attrs {
            out[axis] = Dim::Unknown;
        }
        return Ok(vec![tt(x.elem, Some(out))]);
    };
    let out = output_shape(&attrs, &fixed)?;
    Ok(vec![tt(
        x.elem,
        Some(out.into_iter().map(Dim::Fixed).collect()),
    )])
}

fn halo(cx: &OpCx<'_>) -> Result<Vec<crate::ir::TensorType>> {
    infer(cx, ExchangeKind::Halo)
}

fn stats(cx: &OpCx<'_>) -> Result<Vec<crate::ir::TensorType>> {
    infer(cx, ExchangeKind::Stats)
}

fn gather(cx: &OpCx<'_>) -> Result<Vec<crate::ir::TensorType>> {
    infer(cx, ExchangeKind::Gather)
}

/// The exchange operators.
pub const OPS: &[OpDef] = &[
    OpDef::infer(ExchangeKind::Halo.op_type(), halo).split(already_partitioned),
    OpDef::infer(ExchangeKind::Stats.op_type(), stats).split(already_partitioned),
    OpDef::infer(ExchangeKind::Gather.op_type(), gather).split(already_partitioned),
];

fn already_partitioned(_cx: &PartCx<'_>) -> Result<Verdict> {
    Ok(Verdict::Refuse(
        "the graph is already partitioned (it contains exchange operators)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DataType, Node};
    use crate::passes::ops::testing::{ai, f32t};

    fn run(op: &str, attrs: Vec<crate::onnx::proto::AttributeProto>) -> String {
        let mut node = Node::new("x", op, DOMAIN);
        node.attrs = attrs;
        let cx = OpCx::detached(&node, 17, vec![f32t(&[2, 4, 8, 8])], vec![]);
        let def = super::super::registry::lookup(DOMAIN, op).expect("known");
        (def.infer)(&cx)
            .map(|t| t[0].to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn shapes_follow_the_contract() {
        let halo = run(
            "DfcHaloExchange",
            vec![ai("axis", 2), ai("top", 1), ai("bottom", 0)],
        );
        assert_eq!(halo, "f32[2,4,9,8]");
        let parts = |p: &[i64]| crate::onnx::proto::AttributeProto::ints("parts", p);
        assert_eq!(
            run(
                "DfcPatchAllGather",
                vec![ai("axis", 3), parts(&[8, 8, 8, 8])]
            ),
            "f32[2,4,8,32]"
        );
        assert_eq!(
            run(
                "DfcPatchAllGather",
                vec![ai("axis", 3), parts(&[12, 8, 12])]
            ),
            "f32[2,4,8,32]"
        );
        let wrong = run("DfcPatchAllGather", vec![ai("axis", 3), parts(&[12, 12])]);
        assert!(wrong.contains("none of the parts"), "{wrong}");
        assert_eq!(run("DfcStatsAllReduce", vec![]), "f32[2,4,8,8]");
        let _ = DataType::FLOAT;
    }
}
