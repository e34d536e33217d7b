//! Shape and data-movement operators: Reshape, Flatten, Squeeze/Unsqueeze, Transpose, Concat,
//! Split, Slice, Gather(Elements), Shape, Size, ConstantOfShape, Range, Expand, Tile, Pad,
//! Resize/Upsample, Constant, Identity, Dropout, Cast/CastLike, Where, Trilu, CumSum, and the
//! depth/space rearrangements.
//!
//! These are the operators whose output *shape* depends on constant input *values*; their
//! rules read those values through [`OpCx::value`] and fall back to unknown dimensions when the
//! values are not constant. The integer shape-computation subset is also evaluated for
//! constant folding, with the exact integer semantics of the ONNX specification.
//!
//! Partition rules: Reshape/Flatten/Squeeze/Unsqueeze follow the split axis when the bands stay
//! contiguous ([`part_reshape_like`]) and refuse merges that interleave them; Transpose
//! permutes the axis; Concat/Split/Slice/Pad/Gather/Tile off the split axis are local and on it
//! are refused (a Slice covering the whole axis is a no-op); Resize is local on the split axis
//! only where every output row provably reads rows of its own band (checked row by row);
//! Cast/Identity/Dropout/Where follow their data.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use super::def::{Cost, OpDef, default_cost, numel, view_cost};
use super::layout::{Layout, Need, Part, PartCx, Verdict, broadcast as part_broadcast};
use super::{
    OpCx, broadcast, broadcast_all, dims_product, fixed, join_dims, norm_axes, norm_axis, same_as,
    size_dim, tt, usize_dims,
};
use crate::ir::{DataType, Dim, Node, TensorType};
use crate::onnx::ExternalStore;
use crate::onnx::proto::{AttributeProto, TensorProto};
use crate::tensor::{Tensor, range_len};

// ---- Reshape family ----

/// Output dims of `Reshape(input, spec)`.
pub fn reshape_dims(input: Option<&[Dim]>, spec: &[i64], allowzero: bool) -> Result<Vec<Dim>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 => {
                if infer_at.replace(i).is_some() {
                    bail!("shape {spec:?} has more than one -1");
                }
                out.push(Dim::Unknown);
            }
            0 if !allowzero => match input {
                Some(d) => out.push(d.get(i).cloned().ok_or_else(|| {
                    anyhow!(
                        "shape {spec:?} copies dimension {i} (0) of a rank-{} input",
                        d.len()
                    )
                })?),
                None => out.push(Dim::Unknown),
            },
            s if s < 0 => bail!("shape {spec:?} has a negative entry {s}"),
            s => out.push(Dim::Fixed(s)),
        }
    }
    if allowzero && spec.contains(&0) && infer_at.is_some() {
        bail!("shape {spec:?} has both 0 and -1 with allowzero=1");
    }
    let Some(input) = input else {
        return Ok(out);
    };
    // Cancel dims that appear on both sides (symbols included), then divide what is left.
    let mut rest_in: Vec<Dim> = input.to_vec();
    let mut rest_out: Vec<Dim> = Vec::new();
    for (i, d) in out.iter().enumerate() {
        if Some(i) == infer_at {
            continue;
        }
        if let Some(p) = rest_in
            .iter()
            .position(|x| x == d && !matches!(x, Dim::Unknown))
        {
            rest_in.remove(p);
        } else {
            rest_out.push(d.clone());
        }
    }
    let Dim::Fixed(known) = dims_product(&rest_out)? else {
        return Ok(out);
    };
    let fixed_in = dims_product(
        &rest_in
            .iter()
            .filter(|d| d.fixed().is_some())
            .cloned()
            .collect::<Vec<_>>(),
    )?;
    let Dim::Fixed(total) = fixed_in else {
        return Ok(out);
    };
    let symbolic: Vec<&Dim> = rest_in.iter().filter(|d| d.fixed().is_none()).collect();
    if !symbolic.is_empty() {
        // One symbol left over with the fixed parts cancelling: -1 is that symbol.
        if let (Some(i), [Dim::Symbol(s)]) = (infer_at, symbolic.as_slice())
            && total == known
        {
            out[i] = Dim::Symbol(s.clone());
        }
        return Ok(out);
    }
    match infer_at {
        Some(i) => {
            if known == 0 {
                if total != 0 {
                    bail!("cannot reshape [{}] to {spec:?}", join_dims(input));
                }
                bail!("cannot infer -1 in {spec:?} for an empty tensor");
            }
            if total % known != 0 {
                bail!(
                    "cannot reshape [{}] to {spec:?}: {total} elements do not divide by {known}",
                    join_dims(input)
                );
            }
            out[i] = Dim::Fixed(total / known);
        }
        None => {
            if total != known {
                bail!(
                    "cannot reshape [{}] to {spec:?}: element counts differ",
                    join_dims(input)
                );
            }
        }
    }
    Ok(out)
}

fn reshape(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = cx.elem(0)?;
    let spec = if cx.opset < 5 {
        cx.attr_ints("shape")
    } else {
        cx.ints(1)?
    };
    let Some(spec) = spec else {
        let rank = cx.static_dims(1).and_then(|d| d.first().copied());
        let shape = rank
            .filter(|&r| (0..=64).contains(&r))
            .map(|r| vec![Dim::Unknown; r as usize]);
        return Ok(vec![tt(elem, shape)]);
    };
    let allowzero = cx.opset >= 14 && cx.attr_i("allowzero", 0) != 0;
    Ok(vec![tt(
        elem,
        Some(reshape_dims(cx.dims(0)?, &spec, allowzero)?),
    )])
}

fn flatten(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, Some(vec![Dim::Unknown, Dim::Unknown]))]);
    };
    let r = d.len() as i64;
    let axis = cx.attr_i("axis", 1);
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a > r {
        bail!("axis {axis} is out of range for rank {r}");
    }
    let a = a as usize;
    Ok(vec![tt(
        t.elem,
        Some(vec![dims_product(&d[..a])?, dims_product(&d[a..])?]),
    )])
}

fn axes_of(cx: &OpCx<'_>, input_from: i64) -> Result<Option<Option<Vec<i64>>>> {
    // Outer None: axes exist but are not known; inner None: axes absent.
    if cx.opset < input_from {
        return Ok(Some(cx.attr_ints("axes")));
    }
    if !cx.has_input(1) {
        return Ok(Some(None));
    }
    Ok(cx.ints(1)?.map(Some))
}

fn squeeze(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(axes) = axes_of(cx, 13)? else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let axes = match axes {
        Some(a) if !a.is_empty() => norm_axes(&a, d.len())?,
        _ => {
            if d.iter().any(|x| x.fixed().is_none()) {
                return Ok(vec![tt(t.elem, None)]);
            }
            (0..d.len()).filter(|&i| d[i] == Dim::Fixed(1)).collect()
        }
    };
    for &a in &axes {
        if let Dim::Fixed(v) = d[a]
            && v != 1
        {
            bail!("cannot squeeze axis {a} of size {v}");
        }
    }
    let out = d
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, x)| x.clone())
        .collect();
    Ok(vec![tt(t.elem, Some(out))])
}

fn unsqueeze(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let axes = match axes_of(cx, 13)? {
        Some(Some(a)) => a,
        Some(None) => bail!("Unsqueeze needs axes"),
        None => return Ok(vec![tt(t.elem, None)]),
    };
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let r = d.len() + axes.len();
    let axes = norm_axes(&axes, r)?;
    let mut src = d.iter();
    let out = (0..r)
        .map(|i| {
            if axes.contains(&i) {
                Some(Dim::Fixed(1))
            } else {
                src.next().cloned()
            }
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("bad Unsqueeze axes"))?;
    Ok(vec![tt(t.elem, Some(out))])
}

fn eval_reshape_like(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let infer = match cx.node.op_type.as_str() {
        "Reshape" => reshape,
        "Flatten" => flatten,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        other => return Err(anyhow!("{other} is not reshape-like")),
    };
    let out = infer(cx)?;
    let Some(dims) = out.first().and_then(TensorType::static_dims) else {
        return Ok(None);
    };
    Ok(Some(vec![cx.val(0)?.reshape(&usize_dims(&dims)?)?]))
}

fn perm_of(cx: &OpCx<'_>, rank: usize) -> Result<Vec<usize>> {
    match cx.attr_ints("perm") {
        Some(p) if !p.is_empty() || rank == 0 => {
            if p.len() != rank {
                bail!("perm {p:?} does not have {rank} entries");
            }
            let mut seen = vec![false; rank];
            let mut out = Vec::with_capacity(rank);
            for &x in &p {
                let a = norm_axis(x, rank)?;
                if std::mem::replace(&mut seen[a], true) {
                    bail!("perm {p:?} is not a permutation");
                }
                out.push(a);
            }
            Ok(out)
        }
        _ => Ok((0..rank).rev().collect()),
    }
}

fn transpose(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let perm = perm_of(cx, d.len())?;
    Ok(vec![tt(
        t.elem,
        Some(perm.iter().map(|&p| d[p].clone()).collect()),
    )])
}

fn eval_transpose(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let x = cx.val(0)?;
    let perm = perm_of(cx, x.shape().len())?;
    Ok(Some(vec![x.transpose(&perm)?]))
}

// ---- Concat / Split / Slice / Gather ----

fn concat(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = cx.elem(0)?;
    let mut shapes = Vec::new();
    for i in 0..cx.n_inputs() {
        match &cx.input(i)?.shape {
            Some(s) => shapes.push(s.clone()),
            None => return Ok(vec![tt(elem, None)]),
        }
    }
    let r = shapes[0].len();
    let axis = norm_axis(cx.attr_i("axis", 0), r)?;
    let mut out = shapes[0].clone();
    let mut total = Some(0i64);
    for s in &shapes {
        if s.len() != r {
            bail!("Concat inputs have different ranks");
        }
        for (i, d) in s.iter().enumerate() {
            if i == axis {
                total = match (total, d) {
                    (Some(t), Dim::Fixed(v)) => t.checked_add(*v),
                    _ => None,
                };
            } else {
                match (&out[i], d) {
                    (Dim::Fixed(a), Dim::Fixed(b)) if a != b => {
                        bail!("Concat inputs differ on axis {i} ({a} vs {b})")
                    }
                    (Dim::Fixed(_), _) | (_, Dim::Unknown) => {}
                    (_, Dim::Fixed(_)) | (Dim::Unknown, _) => out[i] = d.clone(),
                    (a, b) if a != b => out[i] = Dim::Unknown,
                    _ => {}
                }
            }
        }
    }
    out[axis] = total.map(Dim::Fixed).unwrap_or(Dim::Unknown);
    Ok(vec![tt(elem, Some(out))])
}

fn eval_concat(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let parts: Vec<Tensor> = (0..cx.n_inputs())
        .map(|i| cx.val(i).cloned())
        .collect::<Result<_>>()?;
    let r = parts.first().map(|p| p.shape().len()).unwrap_or(0);
    let axis = norm_axis(cx.attr_i("axis", 0), r)?;
    Ok(Some(vec![Tensor::concat(&parts, axis)?]))
}

/// Sizes of the parts of `Split` on an axis of size `dim` (`None` when not determinable).
fn split_sizes(cx: &OpCx<'_>, dim: &Dim) -> Result<Option<Vec<i64>>> {
    let n = cx.node.outputs().len();
    let given = if cx.opset < 13 {
        cx.attr_ints("split").filter(|s| !s.is_empty())
    } else if cx.has_input(1) {
        match cx.ints(1)? {
            Some(s) => Some(s),
            None => return Ok(None),
        }
    } else {
        None
    };
    if let Some(s) = given {
        if s.len() != n {
            bail!("split {s:?} has {} entries for {n} outputs", s.len());
        }
        if s.iter().any(|&x| x < 0) {
            bail!("split {s:?} has a negative size");
        }
        if let Dim::Fixed(d) = dim {
            let sum = s.iter().try_fold(0i64, |a, &b| a.checked_add(b));
            if sum != Some(*d) {
                bail!("split {s:?} does not add up to the axis size {d}");
            }
        }
        return Ok(Some(s));
    }
    let Dim::Fixed(d) = *dim else { return Ok(None) };
    if n == 0 {
        bail!("Split has no outputs");
    }
    let n = n as i64;
    if cx.opset >= 18 && cx.node.attr("num_outputs").is_some() {
        let k = cx.attr_i("num_outputs", n);
        if k != n {
            bail!("num_outputs {k} differs from the {n} outputs");
        }
        let chunk = d / n + i64::from(d % n != 0);
        let mut sizes = vec![chunk; n as usize];
        let last = (d as i128 - chunk as i128 * (n as i128 - 1)) as i64;
        if last < 0 {
            bail!("cannot split {d} into {n} parts");
        }
        sizes[n as usize - 1] = last;
        return Ok(Some(sizes));
    }
    if d % n != 0 {
        bail!("axis size {d} does not split evenly into {n} outputs");
    }
    Ok(Some(vec![d / n; n as usize]))
}

fn split(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let n = cx.node.outputs().len();
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None); n]);
    };
    let axis = norm_axis(cx.attr_i("axis", 0), d.len())?;
    let sizes = split_sizes(cx, &d[axis])?;
    Ok((0..n)
        .map(|i| {
            let mut s = d.clone();
            s[axis] = sizes
                .as_ref()
                .map(|z| Dim::Fixed(z[i]))
                .unwrap_or(Dim::Unknown);
            tt(t.elem, Some(s))
        })
        .collect())
}

fn eval_split(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let x = cx.val(0)?;
    let dims = x.shape().to_vec();
    let axis = norm_axis(cx.attr_i("axis", 0), dims.len())?;
    let Some(sizes) = split_sizes(cx, &Dim::Fixed(dims[axis] as i64))? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(sizes.len());
    let mut start = 0usize;
    for s in sizes {
        let s = s as usize;
        let picks: Vec<Vec<usize>> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if i == axis {
                    (start..start + s).collect()
                } else {
                    (0..d).collect()
                }
            })
            .collect();
        out.push(x.select(&picks)?);
        start += s;
    }
    Ok(Some(out))
}

/// One sliced axis: `(axis, start, end, step)` as given (not yet clamped).
type SliceSpec = (usize, i64, i64, i64);

/// The slice parameters, `None` when some are not constant; `Err` when malformed.
fn slice_params(cx: &OpCx<'_>, rank: usize) -> Result<Option<Vec<SliceSpec>>> {
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        let (Some(s), Some(e)) = (cx.attr_ints("starts"), cx.attr_ints("ends")) else {
            bail!("Slice needs starts and ends");
        };
        (s, e, cx.attr_ints("axes"), None)
    } else {
        let (Some(s), Some(e)) = (cx.ints(1)?, cx.ints(2)?) else {
            return Ok(None);
        };
        let axes = if cx.has_input(3) {
            match cx.ints(3)? {
                Some(a) => Some(a),
                None => return Ok(None),
            }
        } else {
            None
        };
        let steps = if cx.has_input(4) {
            match cx.ints(4)? {
                Some(a) => Some(a),
                None => return Ok(None),
            }
        } else {
            None
        };
        (s, e, axes, steps)
    };
    let n = starts.len();
    if ends.len() != n {
        bail!("Slice starts and ends have different lengths");
    }
    let axes = match axes {
        Some(a) => {
            if a.len() != n {
                bail!("Slice axes and starts have different lengths");
            }
            norm_axes(&a, rank)?
        }
        None => {
            if n > rank {
                bail!("Slice has {n} starts for rank {rank}");
            }
            (0..n).collect()
        }
    };
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if steps.len() != n {
        bail!("Slice steps and starts have different lengths");
    }
    if steps.contains(&0) {
        bail!("Slice step is zero");
    }
    Ok(Some(
        (0..n)
            .map(|i| (axes[i], starts[i], ends[i], steps[i]))
            .collect(),
    ))
}

/// The clamped first index and element count of slicing `dim` with `start:end:step`.
pub fn slice_range(dim: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    // i128 throughout: starts, ends and steps may be anything an exporter wrote (±2^63).
    let (dim, step) = (dim.max(0) as i128, step as i128);
    let norm = |v: i64| {
        let v = v as i128;
        if v < 0 { v + dim } else { v }
    };
    let (s, e) = (norm(start), norm(end));
    let (s, n) = if step > 0 {
        let s = s.clamp(0, dim);
        let e = e.clamp(0, dim);
        (s, if e > s { (e - s + step - 1) / step } else { 0 })
    } else {
        let s = s.clamp(0, (dim - 1).max(0));
        let e = e.clamp(-1, dim - 1);
        (
            s,
            if s > e && dim > 0 {
                (s - e - step - 1) / (-step)
            } else {
                0
            },
        )
    };
    // Both are within 0..=dim, so they fit in i64.
    (s as i64, n as i64)
}

fn slice(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let Some(params) = slice_params(cx, d.len())? else {
        return Ok(vec![tt(t.elem, Some(vec![Dim::Unknown; d.len()]))]);
    };
    let mut out = d.clone();
    for (axis, start, end, step) in params {
        out[axis] = match d[axis] {
            Dim::Fixed(v) => Dim::Fixed(slice_range(v, start, end, step).1),
            _ if start == 0 && step == 1 && end >= i32::MAX as i64 => d[axis].clone(),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![tt(t.elem, Some(out))])
}

fn eval_slice(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let x = cx.val(0)?;
    let dims = x.shape().to_vec();
    let Some(params) = slice_params(cx, dims.len())? else {
        return Ok(None);
    };
    let mut picks: Vec<Vec<usize>> = dims.iter().map(|&d| (0..d).collect()).collect();
    for (axis, start, end, step) in params {
        let (s, n) = slice_range(dims[axis] as i64, start, end, step);
        picks[axis] = (0..n).map(|k| (s + k * step) as usize).collect();
    }
    Ok(Some(vec![x.select(&picks)?]))
}

fn gather(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let data = cx.input(0)?;
    let idx = cx.input(1)?;
    let (Some(d), Some(i)) = (&data.shape, &idx.shape) else {
        return Ok(vec![tt(data.elem, None)]);
    };
    let axis = norm_axis(cx.attr_i("axis", 0), d.len())?;
    let mut out = d[..axis].to_vec();
    out.extend(i.iter().cloned());
    out.extend(d[axis + 1..].iter().cloned());
    Ok(vec![tt(data.elem, Some(out))])
}

fn eval_gather(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let x = cx.val(0)?;
    let idx = cx.val(1)?;
    let axis = norm_axis(cx.attr_i("axis", 0), x.shape().len())?;
    let dim = x.shape()[axis] as i64;
    let flat = idx
        .to_i64s()?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + dim } else { i };
            if j < 0 || j >= dim {
                bail!("Gather index {i} is out of range for dimension {dim}");
            }
            Ok(j as usize)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(vec![x.gather(axis, &flat, idx.shape())?]))
}

fn gather_elements(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![tt(cx.elem(0)?, cx.input(1)?.shape.clone())])
}

// ---- Shape, Size, ConstantOfShape, Range ----

fn shape_bounds(cx: &OpCx<'_>, rank: usize) -> (usize, usize) {
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

fn shape_op(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

fn eval_shape(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let Some(d) = cx.dims(0)? else {
        return Ok(None);
    };
    let (s, e) = shape_bounds(cx, d.len());
    let vals: Option<Vec<i64>> = d[s..e].iter().map(Dim::fixed).collect();
    Ok(vals.map(|v| vec![Tensor::from_i64s(&v)]))
}

fn size_op(_cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![TensorType::fixed(DataType::INT64, &[])])
}

fn eval_size(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let Some(d) = cx.static_dims(0) else {
        return Ok(None);
    };
    let n = d
        .iter()
        .try_fold(1i64, |a, &b| a.checked_mul(b))
        .ok_or_else(|| anyhow!("element count overflows"))?;
    Ok(Some(vec![Tensor::scalar(n)]))
}

fn no_store() -> ExternalStore {
    ExternalStore::new(PathBuf::new())
}

fn attr_tensor(node: &Node, name: &str) -> Option<TensorProto> {
    node.attr(name).and_then(|a| a.t.clone())
}

fn constant_of_shape(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

fn eval_constant_of_shape(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let shape = usize_dims(&cx.val(0)?.to_i64s()?)?;
    let value = match attr_tensor(cx.node, "value") {
        Some(t) => Tensor::from_proto(&t, &no_store())?,
        None => Tensor::scalar(0f32),
    };
    Ok(Some(vec![Tensor::full_like_scalar(&value, &shape)?]))
}

fn range(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = cx.elem(0)?;
    let len = match (cx.value(0)?, cx.value(1)?, cx.value(2)?) {
        (Some(s), Some(l), Some(d)) => Dim::Fixed(range_len(s, l, d)? as i64),
        _ => Dim::Unknown,
    };
    Ok(vec![tt(elem, Some(vec![len]))])
}

fn eval_range(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![Tensor::range(
        cx.val(0)?,
        cx.val(1)?,
        cx.val(2)?,
    )?]))
}

// ---- Expand, Tile, Pad, Resize ----

fn expand(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let shape = match (cx.ints(1)?, &t.shape) {
        (Some(v), Some(d)) => {
            if v.iter().any(|&x| x < 0) {
                bail!("Expand shape {v:?} has a negative entry");
            }
            Some(broadcast(d, &fixed(&v))?)
        }
        (None, Some(d)) => cx
            .static_dims(1)
            .and_then(|s| s.first().copied())
            .filter(|&r| (0..=64).contains(&r))
            .map(|r| vec![Dim::Unknown; (r as usize).max(d.len())]),
        _ => None,
    };
    Ok(vec![tt(t.elem, shape)])
}

fn eval_expand(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let shape = usize_dims(&cx.val(1)?.to_i64s()?)?;
    Ok(Some(vec![cx.val(0)?.expand(&shape)?]))
}

fn tile(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let Some(reps) = cx.ints(1)? else {
        return Ok(vec![tt(t.elem, Some(vec![Dim::Unknown; d.len()]))]);
    };
    if reps.len() != d.len() {
        bail!("Tile repeats {reps:?} do not match rank {}", d.len());
    }
    let out = d
        .iter()
        .zip(&reps)
        .map(|(x, &r)| {
            if r < 0 {
                bail!("Tile repeat {r} is negative");
            }
            Ok(match x {
                Dim::Fixed(v) => Dim::Fixed(
                    v.checked_mul(r)
                        .ok_or_else(|| anyhow!("Tile size overflows"))?,
                ),
                _ if r == 1 => x.clone(),
                _ => Dim::Unknown,
            })
        })
        .collect::<Result<_>>()?;
    Ok(vec![tt(t.elem, Some(out))])
}

fn eval_tile(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let reps = usize_dims(&cx.val(1)?.to_i64s()?)?;
    Ok(Some(vec![cx.val(0)?.tile(&reps)?]))
}

fn pad(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let r = d.len();
    let (pads, axes) = if cx.opset < 11 {
        let p = cx.attr_ints("pads").or_else(|| cx.attr_ints("paddings"));
        (p, None)
    } else {
        let axes = if cx.opset >= 18 && cx.has_input(3) {
            match cx.ints(3)? {
                Some(a) => Some(norm_axes(&a, r)?),
                None => return Ok(vec![tt(t.elem, Some(vec![Dim::Unknown; r]))]),
            }
        } else {
            None
        };
        (cx.ints(1)?, axes)
    };
    let Some(pads) = pads else {
        return Ok(vec![tt(t.elem, Some(vec![Dim::Unknown; r]))]);
    };
    let axes = axes.unwrap_or_else(|| (0..r).collect());
    let k = axes.len();
    if pads.len() != 2 * k {
        bail!("pads {pads:?} must have {} entries", 2 * k);
    }
    let mut out = d.clone();
    for (i, &a) in axes.iter().enumerate() {
        out[a] = match &d[a] {
            Dim::Fixed(v) => {
                let n = v
                    .checked_add(pads[i])
                    .and_then(|x| x.checked_add(pads[i + k]))
                    .ok_or_else(|| anyhow!("padded size overflows"))?;
                size_dim(n, "padded dimension")?
            }
            x if pads[i] == 0 && pads[i + k] == 0 => x.clone(),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![tt(t.elem, Some(out))])
}

fn resize(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?;
    let Some(d) = &t.shape else {
        return Ok(vec![tt(t.elem, None)]);
    };
    let r = d.len();
    let unknown = || Ok(vec![tt(t.elem, Some(vec![Dim::Unknown; r]))]);
    let op = cx.node.op_type.as_str();
    // Where scales and sizes live depends on the op and the opset.
    let (scales_port, sizes_port) = match (op, cx.opset) {
        ("Upsample", v) if v < 9 => (None, None),
        ("Upsample", _) | ("Resize", 10) => (Some(1), None),
        _ => (Some(2), Some(3)),
    };
    let nonempty = |port: Option<usize>| -> Result<Option<Option<&Tensor>>> {
        // Outer None: the input is connected but not constant.
        let Some(p) = port else { return Ok(Some(None)) };
        if !cx.has_input(p) {
            return Ok(Some(None));
        }
        match cx.value(p)? {
            Some(v) if v.is_empty() => Ok(Some(None)),
            Some(v) => Ok(Some(Some(v))),
            None => Ok(None),
        }
    };
    let axes = match cx.attr_ints("axes") {
        Some(a) if cx.opset >= 18 => norm_axes(&a, r)?,
        _ => (0..r).collect(),
    };
    let Some(sizes) = nonempty(sizes_port)? else {
        return unknown();
    };
    if let Some(sizes) = sizes {
        let sizes = sizes.to_i64s()?;
        if sizes.len() != axes.len() {
            bail!("Resize sizes {sizes:?} do not match {} axes", axes.len());
        }
        let policy = cx
            .node
            .attr_s("keep_aspect_ratio_policy")
            .unwrap_or_else(|| "stretch".into());
        let mut out = d.clone();
        if policy == "stretch" {
            for (i, &a) in axes.iter().enumerate() {
                out[a] = size_dim(sizes[i], "Resize size")?;
            }
        } else {
            let ins: Option<Vec<i64>> = axes.iter().map(|&a| d[a].fixed()).collect();
            let Some(ins) = ins else { return unknown() };
            let ratios = sizes
                .iter()
                .zip(&ins)
                .map(|(&s, &i)| s as f32 / i.max(1) as f32);
            let scale = if policy == "not_larger" {
                ratios.fold(f32::INFINITY, f32::min)
            } else {
                ratios.fold(f32::NEG_INFINITY, f32::max)
            };
            for (i, &a) in axes.iter().enumerate() {
                out[a] = size_dim((scale * ins[i] as f32).round() as i64, "Resize size")?;
            }
        }
        return Ok(vec![tt(t.elem, Some(out))]);
    }
    let scales: Vec<f64> = if scales_port.is_none() {
        match cx.node.attr("scales") {
            Some(a) => a.floats.iter().map(|&f| f as f64).collect(),
            None => bail!("{op} needs scales"),
        }
    } else {
        match nonempty(scales_port)? {
            Some(Some(s)) => s.to_f64s(),
            Some(None) => bail!("{op} needs scales or sizes"),
            None => return unknown(),
        }
    };
    let scale_axes: Vec<usize> = if scales.len() == axes.len() {
        axes
    } else {
        (0..r).collect()
    };
    if scales.len() != scale_axes.len() {
        bail!("{op} scales {scales:?} do not match rank {r}");
    }
    let mut out = d.clone();
    for (i, &a) in scale_axes.iter().enumerate() {
        let s = scales[i] as f32;
        if !(s.is_finite() && s > 0.0) {
            bail!("{op} scale {s} is not a positive number");
        }
        out[a] = match &d[a] {
            // ONNX Runtime: static_cast<int64_t>(scale * input_dim), in float.
            Dim::Fixed(v) => {
                let p = s * *v as f32;
                if !(p.is_finite() && p < 9.0e15) {
                    bail!("{op} output size overflows");
                }
                Dim::Fixed(p as i64)
            }
            x if s == 1.0 => x.clone(),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![tt(t.elem, Some(out))])
}

// ---- Constant, Identity, Cast, Where, … ----

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

fn constant(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = constant_proto(cx.node)?;
    if t.dims.iter().any(|&d| d < 0) {
        bail!("Constant has negative dims {:?}", t.dims);
    }
    Ok(vec![TensorType::of_initializer(&t)])
}

fn eval_constant(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let t = constant_proto(cx.node)?;
    if !Tensor::supports(DataType(t.data_type())) {
        return Ok(None);
    }
    Ok(Some(vec![
        Tensor::from_proto(&t, &no_store()).context("Constant value")?,
    ]))
}

fn eval_identity(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![cx.val(0)?.clone()]))
}

fn dropout(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let t = cx.input(0)?.clone();
    let mask = tt(DataType::BOOL, t.shape.clone());
    Ok(vec![t, mask])
}

fn cast(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let to = cx
        .node
        .attr("to")
        .and_then(|a| a.i)
        .ok_or_else(|| anyhow!("Cast needs `to`"))?;
    let to = i32::try_from(to).map_err(|_| anyhow!("Cast `to` {to} is not a type"))?;
    Ok(vec![tt(DataType(to), cx.input(0)?.shape.clone())])
}

fn eval_cast(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let out = cast(cx)?;
    if !Tensor::supports(out[0].elem) {
        return Ok(None);
    }
    Ok(Some(vec![cx.val(0)?.cast(out[0].elem)?]))
}

fn cast_like(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![tt(cx.elem(1)?, cx.input(0)?.shape.clone())])
}

fn eval_cast_like(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let to = cx.elem(1)?;
    Ok(Some(vec![cx.val(0)?.cast(to)?]))
}

fn where_op(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let elem = cx.elem(1)?;
    let shapes = [
        cx.input(0)?.shape.as_deref(),
        cx.input(1)?.shape.as_deref(),
        cx.input(2)?.shape.as_deref(),
    ];
    Ok(vec![tt(elem, broadcast_all(&shapes)?)])
}

fn eval_where(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![Tensor::where_(
        cx.val(0)?,
        cx.val(1)?,
        cx.val(2)?,
    )?]))
}

fn space_depth(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

fn identity(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    same_as(cx, 0)
}

/// The shape family.
pub const OPS: &[OpDef] = &[
    OpDef::fold("Reshape", reshape, eval_reshape_like)
        .split(part_reshape_like)
        .cost(view_cost),
    OpDef::fold("Flatten", flatten, eval_reshape_like)
        .split(part_reshape_like)
        .cost(view_cost),
    OpDef::fold("Squeeze", squeeze, eval_reshape_like)
        .split(part_reshape_like)
        .cost(view_cost),
    OpDef::fold("Unsqueeze", unsqueeze, eval_reshape_like)
        .split(part_reshape_like)
        .cost(view_cost),
    OpDef::fold("Transpose", transpose, eval_transpose)
        .split(part_transpose),
    OpDef::fold("Concat", concat, eval_concat)
        .split(part_concat),
    OpDef::fold("Split", split, eval_split)
        .split(part_split),
    OpDef::fold("Slice", slice, eval_slice)
        .split(part_slice),
    OpDef::fold("Gather", gather, eval_gather)
        .split(part_gather),
    OpDef::infer("GatherElements", gather_elements)
        .refuse("GatherElements indexes along any axis of a split tensor: no rule"),
    OpDef {
        op_type: "Shape",
        infer: shape_op,
        eval: Some(eval_shape),
        eval_needs_values: false,
        partition: Part::Refuse("Shape of a split tensor: shape arithmetic must be constant after specialization"),
        cost: Some(view_cost),
    },
    OpDef {
        op_type: "Size",
        infer: size_op,
        eval: Some(eval_size),
        eval_needs_values: false,
        partition: Part::Refuse("Size of a split tensor: shape arithmetic must be constant after specialization"),
        cost: Some(view_cost),
    },
    OpDef::fold("ConstantOfShape", constant_of_shape, eval_constant_of_shape)
        .refuse("ConstantOfShape of a split shape tensor: shape arithmetic must be constant after specialization"),
    OpDef::fold("Range", range, eval_range)
        .refuse("Range over split values: shape arithmetic must be constant after specialization"),
    OpDef::fold("Expand", expand, eval_expand)
        .split(part_expand),
    OpDef::fold("Tile", tile, eval_tile)
        .split(part_tile),
    OpDef::infer("Pad", pad)
        .split(part_pad),
    OpDef::infer("Resize", resize)
        .split(part_resize)
        .cost(cost_resize),
    OpDef::infer("Upsample", resize)
        .split(part_resize)
        .cost(cost_resize),
    OpDef::fold("Constant", constant, eval_constant)
        .refuse("Constant has no inputs: it is never split"),
    OpDef::fold("Identity", identity, eval_identity)
        .split(part_follow_data)
        .cost(view_cost),
    OpDef::infer("Dropout", dropout)
        .split(part_follow_data),
    OpDef::fold("Cast", cast, eval_cast)
        .split(part_follow_data),
    OpDef::fold("CastLike", cast_like, eval_cast_like)
        .split(part_cast_like),
    OpDef::fold("Where", where_op, eval_where)
        .split(part_broadcast),
    OpDef::infer("Trilu", identity)
        .refuse("Trilu on a split tensor: its triangle depends on global row indices"),
    OpDef::infer("CumSum", identity)
        .refuse("CumSum on a split tensor: a running sum crosses band boundaries"),
    OpDef::infer("ScatterND", identity)
        .refuse("ScatterND on a split tensor: indices address the whole tensor"),
    OpDef::infer("ScatterElements", identity)
        .refuse("ScatterElements on a split tensor: indices address the whole tensor"),
    OpDef::infer("SpaceToDepth", space_depth)
        .refuse("SpaceToDepth on a split tensor: it moves rows into channels"),
    OpDef::infer("DepthToSpace", space_depth)
        .refuse("DepthToSpace on a split tensor: it moves channels into rows"),
];

// ---- Partition rules ----

/// Reshape-like ops (Reshape, Flatten, Squeeze, Unsqueeze): output axis `b` is split iff the
/// product of the output dims before `b` equals the product of the input dims before the split
/// axis (each prefix index then owns one contiguous block of both tensors) and `n` divides
/// `dim_b`. Merges of the split axis with an outer axis interleave the bands and are refused.
fn part_reshape_like(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let (Some(x), Some(y)) = (cx.dims(0), cx.out_dims(0)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let prefix: i64 = x[..a].iter().product();
    let mut p = 1i64;
    let mut candidates = Vec::new();
    for (b, &d) in y.iter().enumerate() {
        if p == prefix {
            candidates.push(b);
        }
        p = p.saturating_mul(d);
    }
    let pick = candidates
        .iter()
        .copied()
        .find(|&b| y[b] > 1)
        .or(candidates.first().copied());
    let Some(b) = pick else {
        return Ok(Verdict::Refuse(format!(
            "reshaping {x:?} to {y:?} merges the split axis {a} with an outer axis: the bands would interleave"
        )));
    };
    if !cx.bands.divides(y[b]) {
        return Ok(Verdict::Indivisible(format!(
            "bands {} do not cut axis {b} ({}) of the reshaped tensor into whole parts",
            cx.bands, y[b]
        )));
    }
    Ok(Verdict::split_all(cx, b, Vec::new()))
}

fn part_transpose(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let perm = perm_of(cx.op, r)?;
    let Some(out) = perm.iter().position(|&p| p == a) else {
        return Ok(Verdict::Refuse("bad permutation".into()));
    };
    Ok(Verdict::split_all(cx, out, Vec::new()))
}

fn part_concat(cx: &PartCx<'_>) -> Result<Verdict> {
    let Some(o) = cx.out_dims(0) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let axis = norm_axis(cx.op.attr_i("axis", 0), o.len())?;
    let split = cx.split_inputs();
    let a = split[0].1;
    if let Some(&(port, _)) = split.iter().find(|s| s.1 != a) {
        return Ok(Verdict::Gather { port });
    }
    if a == axis {
        return Ok(Verdict::Refuse(format!(
            "Concat along the split axis {a}: the result's bands would mix bands of the inputs"
        )));
    }
    let needs = (0..cx.layouts.len())
        .filter(|&p| cx.layouts[p] == Layout::Replicated)
        .map(|port| Need::SliceOperand { port, axis: a })
        .collect();
    Ok(Verdict::split_all(cx, a, needs))
}

fn part_split(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    if norm_axis(cx.op.attr_i("axis", 0), r)? == a {
        return Ok(Verdict::Refuse(format!("Split along the split axis {a}")));
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}

fn part_slice(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let Some(x) = cx.dims(0) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let Some(specs) = slice_params(cx.op, x.len())? else {
        return Ok(Verdict::Refuse("Slice parameters are not constant".into()));
    };
    for (axis, start, end, step) in specs {
        if axis != a {
            continue;
        }
        let (first, count) = slice_range(x[a], start, end, step);
        if !(first == 0 && count == x[a] && step == 1) {
            return Ok(Verdict::Refuse(format!(
                "Slice along the split axis {a} (rows {first}.. of {}, {count} taken)",
                x[a]
            )));
        }
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}

fn part_gather(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let (Some(x), Some(i)) = (cx.dims(0), cx.dims(1)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let axis = norm_axis(cx.op.attr_i("axis", 0), x.len())?;
    if axis == a {
        return Ok(Verdict::Refuse(format!("Gather along the split axis {a}")));
    }
    let out = if a < axis { a } else { a - 1 + i.len() };
    Ok(Verdict::split_all(cx, out, Vec::new()))
}

fn part_pad(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let (pads, axes) = if cx.op.opset < 11 {
        let p = cx
            .op
            .attr_ints("pads")
            .or_else(|| cx.op.attr_ints("paddings"));
        (p, None)
    } else {
        let axes = if cx.op.opset >= 18 && cx.op.has_input(3) {
            match cx.op.ints(3)? {
                Some(v) => Some(norm_axes(&v, r)?),
                None => return Ok(Verdict::Refuse("Pad axes are not constant".into())),
            }
        } else {
            None
        };
        (cx.op.ints(1)?, axes)
    };
    let Some(pads) = pads else {
        return Ok(Verdict::Refuse("Pad pads are not constant".into()));
    };
    let axes = axes.unwrap_or_else(|| (0..r).collect());
    let k = axes.len();
    if let Some(i) = axes.iter().position(|&x| x == a)
        && (pads.get(i) != Some(&0) || pads.get(i + k) != Some(&0))
    {
        return Ok(Verdict::Refuse(format!("Pad along the split axis {a}")));
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}

/// The source row a nearest-neighbour resize reads for output row `o` (ONNX Resize semantics).
fn nearest_source(mode: &str, nearest: &str, o: i64, input: i64, output: i64, scale: f64) -> i64 {
    let o = o as f64;
    let x = match mode {
        "half_pixel" => (o + 0.5) / scale - 0.5,
        "pytorch_half_pixel" if output > 1 => (o + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => 0.0,
        "align_corners" if output > 1 => o * (input - 1) as f64 / (output - 1) as f64,
        "align_corners" => 0.0,
        "tf_half_pixel_for_nn" => (o + 0.5) / scale,
        _ => o / scale,
    };
    let r = match nearest {
        "floor" => x.floor(),
        "ceil" => x.ceil(),
        "round_prefer_ceil" => (x + 0.5).floor(),
        _ => {
            // round_prefer_floor: halves go down.
            if x - x.floor() == 0.5 {
                x.floor()
            } else {
                x.round()
            }
        }
    };
    (r as i64).clamp(0, input - 1)
}

/// Resize reads its input and writes its output once; every output element interpolates
/// `2^k` inputs along its `k` resized axes in `linear` mode (a multiply-add each), `4^k` in
/// `cubic` mode, and copies one in `nearest` mode.
fn cost_resize(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let (Some(x), Some(y)) = (cx.static_dims(0), outputs.first()) else {
        return Ok(c);
    };
    let resized = y
        .static_dims()
        .map(|yd| x.iter().zip(&yd).filter(|(a, b)| a != b).count())
        .unwrap_or(0) as i32;
    let taps = match cx.node.attr_s("mode").as_deref() {
        Some("linear") => 2f64.powi(resized),
        Some("cubic") => 4f64.powi(resized),
        _ => 0.0,
    };
    c.flops = 2.0 * taps * numel(y)?;
    Ok(c)
}

fn part_resize(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let (Some(x), Some(y)) = (cx.dims(0), cx.out_dims(0)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let op = cx.op.node.op_type.as_str();
    let mode = cx
        .op
        .node
        .attr_s("mode")
        .unwrap_or_else(|| "nearest".into());
    let coord = if op == "Upsample" || cx.op.opset < 11 {
        "asymmetric".to_string()
    } else {
        cx.op
            .node
            .attr_s("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into())
    };
    let nearest = if op == "Upsample" || cx.op.opset < 11 {
        "floor".to_string()
    } else {
        cx.op
            .node
            .attr_s("nearest_mode")
            .unwrap_or_else(|| "round_prefer_floor".into())
    };
    if coord == "tf_crop_and_resize" {
        return Ok(Verdict::Refuse(
            "Resize with tf_crop_and_resize on a split tensor".into(),
        ));
    }
    let (input, output) = (x[a], y[a]);
    if output == input {
        return Ok(Verdict::split_all(cx, a, Vec::new()));
    }
    if mode != "nearest" {
        return Ok(Verdict::Refuse(format!(
            "{mode} Resize along the split axis {a} reads rows of neighbouring bands"
        )));
    }
    if output % input != 0 {
        return Ok(Verdict::Refuse(format!(
            "Resize along the split axis {a} by a non-integer factor ({input} → {output})"
        )));
    }
    let (Some(_), Some(_)) = (cx.bands.parts(input), cx.bands.parts(output)) else {
        return Ok(Verdict::Indivisible(format!(
            "bands {} do not cut the {input} rows resized into whole rows",
            cx.bands
        )));
    };
    let scale = output as f64 / input as f64;
    for r in 0..cx.n() {
        let (Some(rows_in), Some(rows_out)) = (cx.bands.part(r, input), cx.bands.part(r, output))
        else {
            continue;
        };
        for o in rows_out {
            let src = nearest_source(&coord, &nearest, o, input, output, scale);
            if !rows_in.contains(&src) {
                return Ok(Verdict::Refuse(format!(
                    "nearest Resize ({coord}, {nearest}) along the split axis {a}: output row {o} reads row {src} of another band"
                )));
            }
        }
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}

fn part_expand(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let (Some(x), Some(y)) = (cx.dims(0), cx.out_dims(0)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let out = a + y.len() - x.len();
    if x[a] != y[out] {
        return Ok(Verdict::Refuse(format!(
            "Expand broadcasts the split axis {a} ({} → {})",
            x[a], y[out]
        )));
    }
    Ok(Verdict::split_all(cx, out, Vec::new()))
}

fn part_tile(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    match cx.op.ints(1)? {
        Some(reps) if reps.get(a) == Some(&1) => Ok(Verdict::split_all(cx, a, Vec::new())),
        Some(_) => Ok(Verdict::Refuse(format!(
            "Tile repeats the split axis {a}: the bands would interleave"
        ))),
        None => Ok(Verdict::Refuse("Tile repeats are not constant".into())),
    }
}

fn part_cast_like(cx: &PartCx<'_>) -> Result<Verdict> {
    Ok(Verdict::local(vec![cx.layouts[0]]))
}

fn part_follow_data(cx: &PartCx<'_>) -> Result<Verdict> {
    super::layout::follow(cx)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::slice_range;
    use crate::ir::DataType;
    use crate::tensor::Tensor;

    fn i64s(v: &[i64]) -> Option<Tensor> {
        Some(Tensor::from_i64s(v))
    }

    #[test]
    fn reshape_zero_minus_one_allowzero() {
        let f = DataType::FLOAT;
        assert_eq!(
            infer_text(
                "Reshape",
                vec![],
                17,
                vec![f32t(&[2, 3, 4])],
                vec![None, i64s(&[0, -1])]
            ),
            "f32[2,12]"
        );
        assert_eq!(
            infer_text(
                "Reshape",
                vec![],
                17,
                vec![sym(f, &["b", "4", "h", "w"])],
                vec![None, i64s(&[0, 0, -1])]
            ),
            "f32[b,4,?]"
        );
        assert_eq!(
            infer_text(
                "Reshape",
                vec![],
                17,
                vec![sym(f, &["b", "320", "h"])],
                vec![None, i64s(&[0, 32, 10, -1])]
            ),
            "f32[b,32,10,h]"
        );
        assert_eq!(
            infer_text(
                "Reshape",
                vec![ai("allowzero", 1)],
                14,
                vec![f32t(&[0, 3])],
                vec![None, i64s(&[3, 0])]
            ),
            "f32[3,0]"
        );
        assert!(
            infer_text(
                "Reshape",
                vec![],
                17,
                vec![f32t(&[2, 3])],
                vec![None, i64s(&[4, -1])]
            )
            .starts_with("error")
        );
        assert!(
            infer_text(
                "Reshape",
                vec![],
                17,
                vec![f32t(&[2, 3])],
                vec![None, i64s(&[-1, -1])]
            )
            .starts_with("error")
        );
    }

    #[test]
    fn squeeze_unsqueeze_attr_and_input_forms() {
        assert_eq!(
            infer_text(
                "Unsqueeze",
                vec![aints("axes", &[0, -1])],
                11,
                vec![f32t(&[3])],
                vec![]
            ),
            "f32[1,3,1]"
        );
        assert_eq!(
            infer_text(
                "Unsqueeze",
                vec![],
                13,
                vec![f32t(&[3, 4])],
                vec![None, i64s(&[1])]
            ),
            "f32[3,1,4]"
        );
        assert_eq!(
            infer_text(
                "Squeeze",
                vec![aints("axes", &[0])],
                11,
                vec![f32t(&[1, 3, 1])],
                vec![]
            ),
            "f32[3,1]"
        );
        assert_eq!(
            infer_text("Squeeze", vec![], 13, vec![f32t(&[1, 3, 1])], vec![]),
            "f32[3]"
        );
        assert!(
            infer_text(
                "Squeeze",
                vec![],
                13,
                vec![f32t(&[2, 3])],
                vec![None, i64s(&[0])]
            )
            .starts_with("error")
        );
    }

    #[test]
    fn slice_clamps_and_steps() {
        assert_eq!(slice_range(10, 0, i64::MAX, 1), (0, 10));
        assert_eq!(slice_range(10, -3, i64::MAX, 1), (7, 3));
        assert_eq!(slice_range(10, i64::MAX, i64::MIN, -1), (9, 10));
        assert_eq!(slice_range(10, 1, 8, 3), (1, 3));
        assert_eq!(slice_range(10, 5, 2, 1), (5, 0));
        assert_eq!(slice_range(10, -1, -11, -2), (9, 5));
        assert_eq!(
            infer_text(
                "Slice",
                vec![],
                17,
                vec![f32t(&[4, 10])],
                vec![None, i64s(&[1]), i64s(&[-1]), i64s(&[1]), i64s(&[2])]
            ),
            "f32[4,4]"
        );
        assert_eq!(
            infer_text(
                "Slice",
                vec![aints("starts", &[1]), aints("ends", &[3])],
                9,
                vec![f32t(&[4, 10])],
                vec![]
            ),
            "f32[2,10]"
        );
    }

    #[test]
    fn slice_and_gather_evaluate() -> anyhow::Result<()> {
        let x = Tensor::from_vec(&[2, 5], (0..10i64).collect())?;
        let r = eval(
            "Slice",
            vec![],
            17,
            vec![
                Some(x.clone()),
                i64s(&[4]),
                i64s(&[0]),
                i64s(&[1]),
                i64s(&[-2]),
            ],
        )?;
        assert_eq!(r[0].to_i64s()?, vec![4, 2, 9, 7]);
        let r = eval(
            "Gather",
            vec![ai("axis", 1)],
            17,
            vec![Some(x), Some(Tensor::scalar(-1i64))],
        )?;
        assert_eq!(r[0].shape(), &[2]);
        assert_eq!(r[0].to_i64s()?, vec![4, 9]);
        Ok(())
    }

    #[test]
    fn split_forms() -> anyhow::Result<()> {
        let t = || vec![f32t(&[2, 10])];
        let axis = || ai("axis", 1);
        assert_eq!(
            infer_text_n(
                "Split",
                vec![axis(), aints("split", &[3, 7])],
                11,
                t(),
                vec![],
                2
            ),
            "f32[2,3] f32[2,7]"
        );
        assert!(
            infer_text_n(
                "Split",
                vec![axis(), aints("split", &[3, 8])],
                11,
                t(),
                vec![],
                2
            )
            .starts_with("error")
        );
        assert_eq!(
            infer_text_n("Split", vec![axis()], 13, t(), vec![None, i64s(&[4, 6])], 2),
            "f32[2,4] f32[2,6]"
        );
        assert_eq!(
            infer_text_n(
                "Split",
                vec![axis(), ai("num_outputs", 3)],
                18,
                t(),
                vec![],
                3
            ),
            "f32[2,4] f32[2,4] f32[2,2]"
        );
        assert_eq!(
            infer_text_n("Split", vec![axis()], 13, t(), vec![], 2),
            "f32[2,5] f32[2,5]"
        );
        assert!(infer_text_n("Split", vec![axis()], 13, t(), vec![], 3).starts_with("error"));
        Ok(())
    }

    #[test]
    fn shape_concat_range_expand() -> anyhow::Result<()> {
        let f = DataType::FLOAT;
        assert_eq!(
            infer_text(
                "Shape",
                vec![ai("start", 1), ai("end", -1)],
                15,
                vec![f32t(&[2, 3, 4, 5])],
                vec![]
            ),
            "i64[2]"
        );
        let r = eval(
            "Shape",
            vec![ai("start", -2)],
            15,
            vec![Some(Tensor::zeros(f, &[2, 3, 4])?)],
        )?;
        assert_eq!(r[0].to_i64s()?, vec![3, 4]);
        assert_eq!(
            infer_text(
                "Concat",
                vec![ai("axis", -1)],
                13,
                vec![sym(f, &["b", "3"]), sym(f, &["?", "5"])],
                vec![]
            ),
            "f32[b,8]"
        );
        assert_eq!(
            infer_text(
                "Range",
                vec![],
                13,
                vec![],
                vec![
                    Some(Tensor::scalar(0i64)),
                    Some(Tensor::scalar(10i64)),
                    Some(Tensor::scalar(3i64))
                ]
            ),
            "i64[4]"
        );
        assert_eq!(
            infer_text(
                "Expand",
                vec![],
                13,
                vec![f32t(&[3, 1])],
                vec![None, i64s(&[2, 1, 4])]
            ),
            "f32[2,3,4]"
        );
        assert_eq!(
            infer_text(
                "Tile",
                vec![],
                13,
                vec![f32t(&[3, 1])],
                vec![None, i64s(&[2, 4])]
            ),
            "f32[6,4]"
        );
        let r = eval("ConstantOfShape", vec![], 13, vec![i64s(&[2, 3])])?;
        assert_eq!(r[0].shape(), &[2, 3]);
        Ok(())
    }

    #[test]
    fn pad_and_resize() {
        assert_eq!(
            infer_text(
                "Pad",
                vec![],
                13,
                vec![f32t(&[1, 3, 4, 4])],
                vec![None, i64s(&[0, 0, 1, 2, 0, 0, 1, 2])]
            ),
            "f32[1,3,6,8]"
        );
        assert_eq!(
            infer_text(
                "Pad",
                vec![aints("pads", &[0, 1, 0, 1])],
                2,
                vec![f32t(&[4, 4])],
                vec![]
            ),
            "f32[4,6]"
        );
        assert_eq!(
            infer_text(
                "Pad",
                vec![],
                18,
                vec![f32t(&[1, 3, 4, 4])],
                vec![None, i64s(&[1, 1]), None, i64s(&[-1])]
            ),
            "f32[1,3,4,6]"
        );
        let scales = Tensor::from_vec(&[4], vec![1f32, 1.0, 2.0, 2.0]).ok();
        assert_eq!(
            infer_text(
                "Resize",
                vec![],
                13,
                vec![f32t(&[1, 3, 5, 4]), None],
                vec![None, None, scales]
            ),
            "f32[1,3,10,8]"
        );
        assert_eq!(
            infer_text(
                "Resize",
                vec![],
                13,
                vec![f32t(&[1, 3, 5, 4]), None, None],
                vec![None, None, None, i64s(&[1, 3, 7, 9])]
            ),
            "f32[1,3,7,9]"
        );
        assert_eq!(
            infer_text(
                "Upsample",
                vec![crate::passes::ops::testing::af("unused", 0.0)],
                9,
                vec![f32t(&[1, 1, 2, 2])],
                vec![None, Tensor::from_vec(&[4], vec![1f32, 1.0, 3.0, 3.0]).ok()]
            ),
            "f32[1,1,6,6]"
        );
    }

    #[test]
    fn partition_rules_of_shape_ops() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Verdict};
        let s = |axis| Layout::Split { axis };
        let r = Layout::Replicated;
        let spec = |v: &[i64]| Some(Tensor::from_i64s(v));
        // Tokens: [2,H,W,C] → [2,H·W,C] keeps the split on axis 1.
        let v = verdict(
            &node("Reshape", vec![]),
            17,
            vec![f32t(&[2, 8, 8, 4]), None],
            vec![None, spec(&[2, 64, 4])],
            vec![s(1), r],
            vec![f32t(&[2, 64, 4])],
            4,
        );
        assert_eq!(v, Verdict::local(vec![s(1)]));
        // torch's GroupNorm reshape [B,C,H,W] → [B,G,-1] merges channels with rows: refused.
        let v = verdict(
            &node("Reshape", vec![]),
            17,
            vec![f32t(&[2, 32, 8, 8]), None],
            vec![None, spec(&[2, 8, 256])],
            vec![s(2), r],
            vec![f32t(&[2, 8, 256])],
            2,
        );
        assert!(matches!(v, Verdict::Refuse(_)), "{v:?}");
        // Concat along H is refused, along C is local.
        let cat = |axis| node("Concat", vec![ai("axis", axis)]);
        let v = verdict(
            &cat(2),
            17,
            vec![f32t(&[1, 4, 8, 8]), f32t(&[1, 4, 8, 8])],
            vec![],
            vec![s(2), s(2)],
            vec![f32t(&[1, 4, 16, 8])],
            2,
        );
        assert!(matches!(v, Verdict::Refuse(_)), "{v:?}");
        let v = verdict(
            &cat(1),
            17,
            vec![f32t(&[1, 4, 8, 8]), f32t(&[1, 4, 8, 8])],
            vec![],
            vec![s(2), s(2)],
            vec![f32t(&[1, 8, 8, 8])],
            2,
        );
        assert_eq!(v, Verdict::local(vec![s(2)]));
        // Nearest ×2 (asymmetric, floor) is local; bilinear is refused.
        let nearest = node(
            "Resize",
            vec![
                astr("mode", "nearest"),
                astr("coordinate_transformation_mode", "asymmetric"),
                astr("nearest_mode", "floor"),
            ],
        );
        let scales = Some(Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 2.0]).unwrap());
        let v = verdict(
            &nearest,
            17,
            vec![f32t(&[1, 4, 8, 8]), None, None],
            vec![None, None, scales.clone()],
            vec![s(2), r, r],
            vec![f32t(&[1, 4, 16, 16])],
            4,
        );
        assert_eq!(v, Verdict::local(vec![s(2)]));
        let linear = node("Resize", vec![astr("mode", "linear")]);
        let v = verdict(
            &linear,
            17,
            vec![f32t(&[1, 4, 8, 8]), None, None],
            vec![None, None, scales],
            vec![s(2), r, r],
            vec![f32t(&[1, 4, 16, 16])],
            4,
        );
        assert!(matches!(v, Verdict::Refuse(_)), "{v:?}");
        // Half-pixel nearest ×2 with round_prefer_floor reads only its own band, too.
        assert_eq!(
            super::nearest_source("half_pixel", "round_prefer_floor", 1, 8, 16, 2.0),
            0
        );
        assert_eq!(
            super::nearest_source("half_pixel", "round_prefer_floor", 2, 8, 16, 2.0),
            1
        );
    }
}

#[cfg(test)]
mod cost_tests {
    use super::super::def::cost_testing::{cost, f32t};
    use super::super::testing::astr;
    use crate::tensor::Tensor;

    #[test]
    fn views_cost_nothing_and_resize_interpolates() {
        let shape = Tensor::from_vec(&[2], vec![4i64, 4]).ok();
        let c = cost(
            "Reshape",
            vec![],
            17,
            vec![f32t(&[2, 8]), None],
            vec![None, shape],
        )
        .unwrap();
        assert_eq!(c, super::Cost::default());
        // Data movement without a rule: bytes only.
        let c = cost("Transpose", vec![], 17, vec![f32t(&[2, 8])], vec![]).unwrap();
        assert_eq!((c.flops, c.bytes_read, c.bytes_written), (0.0, 64.0, 64.0));
        // Bilinear ×2 of [1,1,2,2]: 16 outputs, 4 taps each (a multiply-add per tap).
        let scales = Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 2.0]).ok();
        let c = cost(
            "Resize",
            vec![astr("mode", "linear")],
            17,
            vec![f32t(&[1, 1, 2, 2]), None, None],
            vec![None, None, scales.clone()],
        )
        .unwrap();
        assert_eq!(c.flops, 128.0);
        assert_eq!(c.bytes_written, 64.0);
        // Nearest copies.
        let c = cost(
            "Resize",
            vec![astr("mode", "nearest")],
            17,
            vec![f32t(&[1, 1, 2, 2]), None, None],
            vec![None, None, scales],
        )
        .unwrap();
        assert_eq!(c.flops, 0.0);
    }
}
