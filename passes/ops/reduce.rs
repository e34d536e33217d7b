//! Reductions: ReduceMean/Sum/Max/Min/Prod/L1/L2/SumSquare/LogSumExp/LogSum and
//! ArgMax/ArgMin, with `axes` as an attribute (before opset 18; ReduceSum before 13) or as an
//! input, `keepdims`, and `noop_with_empty_axes`.
//!
//! Integer ReduceSum/Prod/Max/Min fold (exact); float reductions never do (their summation
//! order is the runtime's business).
//!
//! Partition rules: a reduction over non-split axes is local; ReduceMean over the split axis
//! is a band mean followed by a `DfcStatsAllReduce` (bands are equal, so the mean of band
//! means is the mean); every other reduction over the split axis is refused.

use anyhow::Result;

use super::def::{Cost, OpDef, default_cost, numel};
use super::layout::{Layout, Need, PartCx, Verdict};
use super::{OpCx, norm_axes, norm_axis, tt};
use crate::ir::{DataType, Dim, TensorType};
use crate::tensor::{BinOp, Tensor};

/// The reduced axes: `Ok(None)` when they are not known (a non-constant axes input);
/// `Some(None)` means "no reduction" (empty axes with `noop_with_empty_axes`).
pub(crate) fn reduce_axes(cx: &OpCx<'_>, rank: usize) -> Result<Option<Option<Vec<usize>>>> {
    let input_form = if cx.node.op_type == "ReduceSum" {
        cx.opset >= 13
    } else {
        cx.opset >= 18
    };
    let axes = if input_form {
        if cx.has_input(1) {
            match cx.ints(1)? {
                Some(a) => a,
                None => return Ok(None),
            }
        } else {
            Vec::new()
        }
    } else {
        cx.attr_ints("axes").unwrap_or_default()
    };
    if axes.is_empty() {
        if input_form && cx.attr_i("noop_with_empty_axes", 0) != 0 {
            return Ok(Some(None));
        }
        return Ok(Some(Some((0..rank).collect())));
    }
    Ok(Some(Some(norm_axes(&axes, rank)?)))
}

fn reduced(d: &[Dim], axes: &[usize], keep: bool) -> Vec<Dim> {
    d.iter()
        .enumerate()
        .filter_map(|(i, x)| {
            if !axes.contains(&i) {
                Some(x.clone())
            } else if keep {
                Some(Dim::Fixed(1))
            } else {
                None
            }
        })
        .collect()
}

fn reduce(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let keep = cx.attr_i("keepdims", 1) != 0;
    let Some(d) = &x.shape else {
        return Ok(vec![tt(x.elem, None)]);
    };
    let shape = match reduce_axes(cx, d.len())? {
        Some(Some(axes)) => Some(reduced(d, &axes, keep)),
        Some(None) => Some(d.clone()),
        None if keep => Some(vec![Dim::Unknown; d.len()]),
        None => None,
    };
    Ok(vec![tt(x.elem, shape)])
}

fn eval_reduce(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let x = cx.val(0)?;
    if x.dtype().is_float() || x.dtype() == DataType::BOOL {
        return Ok(None);
    }
    let op = match cx.node.op_type.as_str() {
        "ReduceSum" => BinOp::Add,
        "ReduceProd" => BinOp::Mul,
        "ReduceMax" => BinOp::Max,
        "ReduceMin" => BinOp::Min,
        _ => return Ok(None),
    };
    let Some(axes) = reduce_axes(cx, x.shape().len())? else {
        return Ok(None);
    };
    let Some(axes) = axes else {
        return Ok(Some(vec![x.clone()]));
    };
    Ok(Some(vec![x.reduce(
        op,
        &axes,
        cx.attr_i("keepdims", 1) != 0,
    )?]))
}

fn arg(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let Some(d) = &x.shape else {
        return Ok(vec![tt(DataType::INT64, None)]);
    };
    let axis = norm_axis(cx.attr_i("axis", 0), d.len())?;
    Ok(vec![tt(
        DataType::INT64,
        Some(reduced(d, &[axis], cx.attr_i("keepdims", 1) != 0)),
    )])
}

/// The reduction family.
pub const OPS: &[OpDef] = &[
    OpDef::fold("ReduceSum", reduce, eval_reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::fold("ReduceProd", reduce, eval_reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::fold("ReduceMax", reduce, eval_reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::fold("ReduceMin", reduce, eval_reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ReduceMean", reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ReduceL1", reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ReduceL2", reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ReduceSumSquare", reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ReduceLogSum", reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ReduceLogSumExp", reduce)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ArgMax", arg)
        .split(part_reduce)
        .cost(cost_reduce),
    OpDef::infer("ArgMin", arg)
        .split(part_reduce)
        .cost(cost_reduce),
];

/// Reductions: one operation per input element.
fn cost_reduce(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    c.flops = numel(cx.input(0)?)?;
    Ok(c)
}

fn part_reduce(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let keep = cx.op.attr_i("keepdims", 1) != 0;
    let op = cx.op.node.op_type.as_str();
    let axes = if op.starts_with("Arg") {
        Some(Some(vec![norm_axis(cx.op.attr_i("axis", 0), r)?]))
    } else {
        reduce_axes(cx.op, r)?
    };
    let axes = match axes {
        None => return Ok(Verdict::Refuse("the reduced axes are not constant".into())),
        Some(None) => return Ok(Verdict::split_all(cx, a, Vec::new())),
        Some(Some(axes)) => axes,
    };
    if !axes.contains(&a) {
        let out = if keep {
            a
        } else {
            a - axes.iter().filter(|&&x| x < a).count()
        };
        return Ok(Verdict::split_all(cx, out, Vec::new()));
    }
    if op == "ReduceMean" {
        return Ok(Verdict::Local {
            outputs: vec![Layout::Replicated],
            needs: vec![Need::MeanStats],
        });
    }
    Ok(Verdict::Refuse(format!(
        "{op} over the split axis {a} has no rule (only ReduceMean is exchanged)"
    )))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::tensor::Tensor;

    #[test]
    fn axes_forms_and_keepdims() {
        let x = || vec![f32t(&[2, 3, 4])];
        assert_eq!(
            infer_text("ReduceMean", vec![aints("axes", &[-1])], 17, x(), vec![]),
            "f32[2,3,1]"
        );
        assert_eq!(
            infer_text(
                "ReduceMean",
                vec![aints("axes", &[1]), ai("keepdims", 0)],
                17,
                x(),
                vec![]
            ),
            "f32[2,4]"
        );
        assert_eq!(
            infer_text(
                "ReduceMean",
                vec![],
                18,
                x(),
                vec![None, Some(Tensor::from_i64s(&[0, 2]))]
            ),
            "f32[1,3,1]"
        );
        assert_eq!(
            infer_text("ReduceSum", vec![ai("keepdims", 0)], 13, x(), vec![]),
            "f32[]"
        );
        assert_eq!(
            infer_text(
                "ReduceSum",
                vec![ai("noop_with_empty_axes", 1)],
                13,
                x(),
                vec![]
            ),
            "f32[2,3,4]"
        );
        assert_eq!(
            infer_text("ReduceSum", vec![aints("axes", &[0])], 11, x(), vec![]),
            "f32[1,3,4]"
        );
        assert_eq!(
            infer_text(
                "ArgMax",
                vec![ai("axis", 1), ai("keepdims", 0)],
                13,
                x(),
                vec![]
            ),
            "i64[2,4]"
        );
        assert!(
            infer_text("ReduceMax", vec![aints("axes", &[3])], 13, x(), vec![])
                .starts_with("error")
        );
    }

    #[test]
    fn integer_reductions_fold() -> anyhow::Result<()> {
        let x = Tensor::from_vec(&[2, 3], vec![1i64, 2, 3, 4, 5, 6])?;
        let r = eval(
            "ReduceProd",
            vec![aints("axes", &[1]), ai("keepdims", 0)],
            17,
            vec![Some(x.clone())],
        )?;
        assert_eq!(r[0].to_i64s()?, vec![6, 120]);
        let r = eval("ReduceSum", vec![], 13, vec![Some(x)])?;
        assert_eq!(r[0].to_i64s()?, vec![21]);
        assert_eq!(r[0].shape(), &[1, 1]);
        Ok(())
    }
}

#[cfg(test)]
mod cost_tests {
    use super::super::def::cost_testing::{cost, f32t};
    use super::super::testing::aints;

    #[test]
    fn reductions_cost_one_operation_per_input_element() {
        let c = cost(
            "ReduceMean",
            vec![aints("axes", &[2])],
            17,
            vec![f32t(&[2, 3, 4])],
            vec![],
        )
        .unwrap();
        assert_eq!((c.flops, c.bytes_read, c.bytes_written), (24.0, 96.0, 24.0));
    }
}
