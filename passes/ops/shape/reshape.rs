//! Reshape, Flatten, Squeeze, Unsqueeze and Transpose: shape rules, evaluation, partition
//! rules (the split axis followed through the reshape or permutation).

use super::*;

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

pub(super) fn reshape(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn flatten(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn axes_of(cx: &OpCx<'_>, input_from: i64) -> Result<Option<Option<Vec<i64>>>> {
    // Outer None: axes exist but are not known; inner None: axes absent.
    if cx.opset < input_from {
        return Ok(Some(cx.attr_ints("axes")));
    }
    if !cx.has_input(1) {
        return Ok(Some(None));
    }
    Ok(cx.ints(1)?.map(Some))
}

pub(super) fn squeeze(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn unsqueeze(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_reshape_like(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
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

pub(super) fn perm_of(cx: &OpCx<'_>, rank: usize) -> Result<Vec<usize>> {
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

pub(super) fn transpose(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_transpose(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let x = cx.val(0)?;
    let perm = perm_of(cx, x.shape().len())?;
    Ok(Some(vec![x.transpose(&perm)?]))
}

/// Reshape-like ops (Reshape, Flatten, Squeeze, Unsqueeze): output axis `b` is split iff the
/// product of the output dims before `b` equals the product of the input dims before the split
/// axis (each prefix index then owns one contiguous block of both tensors) and `n` divides
/// `dim_b`. Merges of the split axis with an outer axis interleave the bands and are refused.
pub(super) fn part_reshape_like(cx: &PartCx<'_>) -> Result<Verdict> {
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

pub(super) fn part_transpose(cx: &PartCx<'_>) -> Result<Verdict> {
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
