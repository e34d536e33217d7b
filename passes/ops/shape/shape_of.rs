//! Shape, Size, ConstantOfShape and Range: the shape arithmetic specialization folds away.

use super::*;

pub(super) fn shape_bounds(cx: &OpCx<'_>, rank: usize) -> (usize, usize) {
    let r = rank as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = if cx.opset >= 15 {
        clamp(cx.attr_i("start", 0))
    } else {
        0
    };
    let end = if cx.opset >= 15 {
        clamp(cx.attr_i("end", r))
    } else {
        rank
    };
    (start, end.max(start))
}

pub(super) fn shape_op(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let shape = t.shape.as_ref().map(|d| {
        let (s, e) = shape_bounds(cx, d.len());
        vec![Dim::Fixed((e - s) as i64)]
    });
    Ok(vec![tt(
        DataType::INT64,
        Some(shape.unwrap_or(vec![Dim::Unknown])),
    )])
}

pub(super) fn eval_shape(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let Some(d) = cx.dims(0)? else {
        return Ok(None);
    };
    let (s, e) = shape_bounds(cx, d.len());
    let vals: Option<Vec<i64>> = d[s..e].iter().map(Dim::fixed).collect();
    Ok(vals.map(|v| vec![Tensor::from_i64s(&v)]))
}

pub(super) fn size_op(_cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![TensorType::fixed(DataType::INT64, &[])])
}

pub(super) fn eval_size(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let Some(d) = cx.static_dims(0) else {
        return Ok(None);
    };
    let n = d
        .iter()
        .try_fold(1i64, |a, &b| a.checked_mul(b))
        .ok_or_else(|| anyhow!("element count overflows"))?;
    Ok(Some(vec![Tensor::scalar(n)]))
}

pub(super) fn no_store() -> ExternalStore {
    ExternalStore::new(PathBuf::new())
}

pub(super) fn attr_tensor(node: &Node, name: &str) -> Option<TensorProto> {
    node.attr(name).and_then(|a| a.t.clone())
}

pub(super) fn constant_of_shape(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = attr_tensor(cx.node, "value")
        .map(|t| DataType(t.data_type()))
        .unwrap_or(DataType::FLOAT);
    let shape = match cx.ints(0)? {
        Some(v) => Some(
            v.iter()
                .map(|&x| size_dim(x, "ConstantOfShape dimension"))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => cx
            .static_dims(0)
            .and_then(|d| d.first().copied())
            .filter(|&r| (0..=64).contains(&r))
            .map(|r| vec![Dim::Unknown; r as usize]),
    };
    Ok(vec![tt(elem, shape)])
}

pub(super) fn eval_constant_of_shape(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let shape = usize_dims(&cx.val(0)?.to_i64s()?)?;
    let value = match attr_tensor(cx.node, "value") {
        Some(t) => Tensor::from_proto(&t, &no_store())?,
        None => Tensor::scalar(0f32),
    };
    Ok(Some(vec![Tensor::full_like_scalar(&value, &shape)?]))
}

pub(super) fn range(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = cx.elem(0)?;
    let len = match (cx.value(0)?, cx.value(1)?, cx.value(2)?) {
        (Some(s), Some(l), Some(d)) => Dim::Fixed(range_len(s, l, d)? as i64),
        _ => Dim::Unknown,
    };
    Ok(vec![tt(elem, Some(vec![len]))])
}

pub(super) fn eval_range(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![Tensor::range(
        cx.val(0)?,
        cx.val(1)?,
        cx.val(2)?,
    )?]))
}
