//! Constant, Identity, Dropout, Cast, CastLike, Where, SpaceToDepth/DepthToSpace and the
//! identity-shaped ops: shape rules, evaluation, partition rules.

use super::*;

/// The tensor a `Constant` node produces, as an initializer (any element type, strings too).
pub fn constant_proto(node: &Node) -> Result<TensorProto> {
    let attr: &AttributeProto = node
        .attrs
        .first()
        .ok_or_else(|| anyhow!("Constant has no value attribute"))?;
    let base = |dt: DataType, dims: Vec<i64>| TensorProto {
        dims,
        data_type: Some(dt.0),
        ..Default::default()
    };
    Ok(match attr.name() {
        "value" => attr
            .t
            .clone()
            .ok_or_else(|| anyhow!("Constant `value` holds no tensor"))?,
        "value_float" => TensorProto {
            float_data: vec![attr.f()],
            ..base(DataType::FLOAT, vec![])
        },
        "value_floats" => TensorProto {
            float_data: attr.floats.clone(),
            ..base(DataType::FLOAT, vec![attr.floats.len() as i64])
        },
        "value_int" => TensorProto {
            int64_data: vec![attr.i()],
            ..base(DataType::INT64, vec![])
        },
        "value_ints" => TensorProto {
            int64_data: attr.ints.clone(),
            ..base(DataType::INT64, vec![attr.ints.len() as i64])
        },
        "value_string" => TensorProto {
            string_data: vec![attr.s.clone().unwrap_or_default()],
            ..base(DataType::STRING, vec![])
        },
        "value_strings" => TensorProto {
            string_data: attr.strings.clone(),
            ..base(DataType::STRING, vec![attr.strings.len() as i64])
        },
        other => bail!("Constant attribute `{other}` is not supported (sparse constants are not)"),
    })
}

pub(super) fn constant(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = constant_proto(cx.node)?;
    if t.dims.iter().any(|&d| d < 0) {
        bail!("Constant has negative dims {:?}", t.dims);
    }
    Ok(vec![TensorType::of_initializer(&t)])
}

pub(super) fn eval_constant(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let t = constant_proto(cx.node)?;
    if !Tensor::supports(DataType(t.data_type())) {
        return Ok(None);
    }
    Ok(Some(vec![
        Tensor::from_proto(&t, &no_store()).context("Constant value")?,
    ]))
}

pub(super) fn eval_identity(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![cx.val(0)?.clone()]))
}

pub(super) fn dropout(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?.clone();
    let mask = tt(DataType::BOOL, t.shape.clone());
    Ok(vec![t, mask])
}

pub(super) fn cast(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let to = cx
        .node
        .attr("to")
        .and_then(|a| a.i)
        .ok_or_else(|| anyhow!("Cast needs `to`"))?;
    let to = i32::try_from(to).map_err(|_| anyhow!("Cast `to` {to} is not a type"))?;
    Ok(vec![tt(DataType(to), cx.input(0)?.shape.clone())])
}

pub(super) fn eval_cast(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let out = cast(cx)?;
    if !Tensor::supports(out[0].elem) {
        return Ok(None);
    }
    Ok(Some(vec![cx.val(0)?.cast(out[0].elem)?]))
}

pub(super) fn cast_like(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![tt(cx.elem(1)?, cx.input(0)?.shape.clone())])
}

pub(super) fn eval_cast_like(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let to = cx.elem(1)?;
    Ok(Some(vec![cx.val(0)?.cast(to)?]))
}

pub(super) fn where_op(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = cx.elem(1)?;
    let shapes = [
        cx.input(0)?.shape.as_deref(),
        cx.input(1)?.shape.as_deref(),
        cx.input(2)?.shape.as_deref(),
    ];
    Ok(vec![tt(elem, broadcast_all(&shapes)?)])
}

pub(super) fn eval_where(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![Tensor::where_(
        cx.val(0)?,
        cx.val(1)?,
        cx.val(2)?,
    )?]))
}

pub(super) fn space_depth(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    if d.len() != 4 {
        bail!("{} needs a rank-4 input", cx.node.op_type);
    }
    let b = cx.attr_i("blocksize", 0);
    if b <= 0 {
        bail!("blocksize must be positive");
    }
    let bb = b
        .checked_mul(b)
        .ok_or_else(|| anyhow!("blocksize {b} is too large"))?;
    let f = |x: &Dim, g: &dyn Fn(i64) -> Option<i64>| match x {
        Dim::Fixed(v) => g(*v)
            .map(Dim::Fixed)
            .ok_or_else(|| anyhow!("{} does not divide {v}", b)),
        _ => Ok(Dim::Unknown),
    };
    let out = if cx.node.op_type == "SpaceToDepth" {
        vec![
            d[0].clone(),
            f(&d[1], &|v| v.checked_mul(bb))?,
            f(&d[2], &|v| (v % b == 0).then_some(v / b))?,
            f(&d[3], &|v| (v % b == 0).then_some(v / b))?,
        ]
    } else {
        vec![
            d[0].clone(),
            f(&d[1], &|v| (v % bb == 0).then_some(v / bb))?,
            f(&d[2], &|v| v.checked_mul(b))?,
            f(&d[3], &|v| v.checked_mul(b))?,
        ]
    };
    Ok(vec![tt(t.elem, Some(out))])
}

pub(super) fn identity(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    same_as(cx, 0)
}

pub(super) fn part_cast_like(cx: &PartCx<'_>) -> Result<Verdict> {
    Ok(Verdict::local(vec![cx.layouts[0]]))
}

pub(super) fn part_follow_data(cx: &PartCx<'_>) -> Result<Verdict> {
    crate::passes::ops::layout::follow(cx)
}
