//! Expand, Tile, Pad, Resize (and Upsample): shape rules, evaluation, partition rules and the
//! resize cost rule.

use super::*;

pub(super) fn expand(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_expand(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let shape = usize_dims(&cx.val(1)?.to_i64s()?)?;
    Ok(Some(vec![cx.val(0)?.expand(&shape)?]))
}

pub(super) fn tile(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn eval_tile(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let reps = usize_dims(&cx.val(1)?.to_i64s()?)?;
    Ok(Some(vec![cx.val(0)?.tile(&reps)?]))
}

pub(super) fn pad(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn resize(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

pub(super) fn part_pad(cx: &PartCx<'_>) -> Result<Verdict> {
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
pub(super) fn nearest_source(
    mode: &str,
    nearest: &str,
    o: i64,
    input: i64,
    output: i64,
    scale: f64,
) -> i64 {
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
pub(super) fn cost_resize(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
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

pub(super) fn part_resize(cx: &PartCx<'_>) -> Result<Verdict> {
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

pub(super) fn part_expand(cx: &PartCx<'_>) -> Result<Verdict> {
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

pub(super) fn part_tile(cx: &PartCx<'_>) -> Result<Verdict> {
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
