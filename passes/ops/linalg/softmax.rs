//! Softmax, LogSoftmax and Hardmax: shape rule, cost, partition rule. Softmax over a
//! non-split axis is local; one over the split axis (before opset 13, whose softmax runs over
//! every axis from `axis` on: one over any axis up to the split one) is refused.

use anyhow::Result;

use crate::ir::TensorType;
use crate::ops::def::{Cost, default_cost, numel};
use crate::ops::layout::{PartCx, Verdict};
use crate::ops::{OpCx, norm_axis, same_as};

pub(super) fn softmax(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    if let Some(d) = cx.dims(0)? {
        let default = if cx.opset >= 13 { -1 } else { 1 };
        norm_axis(cx.attr_i("axis", default), d.len().max(1))?;
    }
    same_as(cx, 0)
}

/// Softmax and its kin: 5 operations per element (max, subtract, exp, sum, divide).
pub(super) fn cost_softmax(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    c.flops = 5.0 * numel(cx.input(0)?)?;
    Ok(c)
}

pub(super) fn part_softmax(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let default = if cx.op.opset >= 13 { -1 } else { 1 };
    let axis = norm_axis(cx.op.attr_i("axis", default), r.max(1))?;
    let over = if cx.op.opset >= 13 {
        a == axis
    } else {
        a >= axis
    };
    if over {
        return Ok(Verdict::Refuse(format!(
            "{} over the split axis {a}",
            cx.op.node.op_type
        )));
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}
