//! Concat, Split, Slice, Gather and GatherElements: shape rules, evaluation, partition rules
//! (refused where they cut or join along the split axis).

use super::*;

pub(super) fn concat(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_concat(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let parts: Vec<Tensor> = (0..cx.n_inputs())
        .map(|i| cx.val(i).cloned())
        .collect::<Result<_>>()?;
    let r = parts.first().map(|p| p.shape().len()).unwrap_or(0);
    let axis = norm_axis(cx.attr_i("axis", 0), r)?;
    Ok(Some(vec![Tensor::concat(&parts, axis)?]))
}

/// Sizes of the parts of `Split` on an axis of size `dim` (`None` when not determinable).
pub(super) fn split_sizes(cx: &OpCx<'_>, dim: &Dim) -> Result<Option<Vec<i64>>> {
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

pub(super) fn split(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_split(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
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
pub(super) fn slice_params(cx: &OpCx<'_>, rank: usize) -> Result<Option<Vec<SliceSpec>>> {
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

pub(super) fn slice(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_slice(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
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

pub(super) fn gather(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_gather(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
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

pub(super) fn gather_elements(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(vec![tt(cx.elem(0)?, cx.input(1)?.shape.clone())])
}

pub(super) fn part_concat(cx: &PartCx<'_>) -> Result<Verdict> {
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

pub(super) fn part_split(cx: &PartCx<'_>) -> Result<Verdict> {
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

pub(super) fn part_slice(cx: &PartCx<'_>) -> Result<Verdict> {
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

pub(super) fn part_gather(cx: &PartCx<'_>) -> Result<Verdict> {
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
