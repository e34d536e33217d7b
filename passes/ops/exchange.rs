//! The exchange operators of domain `dfc` (DESIGN §3): their shape rules, which depend on the
//! number of bands of a group ([`OpCx::group_size`]).
//!
//! - `DfcHaloExchange(x) -> y` {axis, top, bottom, slot}: y has `top + bottom` more rows on
//!   `axis`.
//! - `DfcStatsAllReduce(s) -> g` {slot}: g has the shape of s (the mean over the bands).
//! - `DfcPatchAllGather(x) -> y` {axis, slot}: y is `n` times larger on `axis`.
//!
//! They appear only in partitioned graphs (after `localize`), so their partition rule refuses:
//! partitioning a graph twice is a mistake.

use anyhow::{Result, anyhow, bail};

use super::layout::{PartCx, PartRule, Verdict};
use super::{OpCx, OpDef, norm_axis, tt};
use crate::ir::{Dim, TensorType};
use crate::plan::ExchangeKind;

/// Domain of the exchange operators.
pub const DOMAIN: &str = "dfc";
/// Opset version of [`DOMAIN`] the rank graphs import.
pub const VERSION: i64 = 1;

fn grow(cx: &OpCx<'_>, by: impl Fn(i64) -> Result<i64>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let Some(d) = &x.shape else {
        return Ok(vec![tt(x.elem, None)]);
    };
    let axis = norm_axis(cx.attr_i("axis", -1), d.len())?;
    let mut out = d.clone();
    out[axis] = match &d[axis] {
        Dim::Fixed(v) => Dim::Fixed(by(*v)?),
        _ => Dim::Unknown,
    };
    Ok(vec![tt(x.elem, Some(out))])
}

fn halo(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let (top, bottom) = (cx.attr_i("top", 0), cx.attr_i("bottom", 0));
    if top < 0 || bottom < 0 {
        bail!("halo rows must not be negative (top {top}, bottom {bottom})");
    }
    grow(cx, |v| {
        v.checked_add(top)
            .and_then(|x| x.checked_add(bottom))
            .ok_or_else(|| anyhow!("halo size overflows"))
    })
}

fn stats(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![cx.input(0)?.clone()])
}

fn gather(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let n = i64::try_from(cx.group_size).map_err(|_| anyhow!("group size overflows"))?;
    grow(cx, |v| {
        v.checked_mul(n)
            .ok_or_else(|| anyhow!("gathered size overflows"))
    })
}

/// The exchange operators.
pub const OPS: &[OpDef] = &[
    OpDef::infer(ExchangeKind::Halo.op_type(), halo),
    OpDef::infer(ExchangeKind::Stats.op_type(), stats),
    OpDef::infer(ExchangeKind::Gather.op_type(), gather),
];

fn already_partitioned(_cx: &PartCx<'_>) -> Result<Verdict> {
    Ok(Verdict::Refuse(
        "the graph is already partitioned (it contains exchange operators)".into(),
    ))
}

/// Partition rules: refuse (see the module documentation).
pub const PARTITION: &[PartRule] = &[
    PartRule::new(ExchangeKind::Halo.op_type(), already_partitioned),
    PartRule::new(ExchangeKind::Stats.op_type(), already_partitioned),
    PartRule::new(ExchangeKind::Gather.op_type(), already_partitioned),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DataType, Node};
    use crate::passes::ops::testing::{ai, f32t};

    fn run(op: &str, attrs: Vec<crate::onnx::proto::AttributeProto>, n: usize) -> String {
        let mut node = Node::new("x", op, DOMAIN);
        node.attrs = attrs;
        let cx = OpCx::detached(&node, 17, vec![f32t(&[2, 4, 8, 8])], vec![]).with_group_size(n);
        let def = super::super::lookup(DOMAIN, op).expect("known");
        (def.infer)(&cx)
            .map(|t| t[0].to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn shapes_follow_the_contract() {
        let halo = run(
            "DfcHaloExchange",
            vec![ai("axis", 2), ai("top", 1), ai("bottom", 0)],
            4,
        );
        assert_eq!(halo, "f32[2,4,9,8]");
        assert_eq!(
            run("DfcPatchAllGather", vec![ai("axis", 3)], 4),
            "f32[2,4,8,32]"
        );
        assert_eq!(run("DfcStatsAllReduce", vec![], 4), "f32[2,4,8,8]");
        let _ = DataType::FLOAT;
    }
}
