//! Normalization operators: InstanceNormalization, LayerNormalization (with its optional
//! `Mean` and `InvStdDev` outputs), RMSNormalization (opset 23), GroupNormalization (opset 18
//! per-group and opset 21 per-channel scale and bias, `stash_type`), BatchNormalization (inference and
//! training outputs), LpNormalization, MeanVarianceNormalization; and the internal canonical
//! `GroupNorm` of domain [`INTERNAL_DOMAIN`] that `canonicalize` makes of every group-norm
//! construct: `GroupNorm(x, scale?, bias?) {num_groups, epsilon}`, scale and bias per channel
//! (`[C]` or `[C,1,…]`), statistics over each group's channels and every spatial position.
//!
//! ONNX Runtime's `com.microsoft:SkipLayerNormalization` (in [`ORT_OPS`]) is
//! `LayerNormalization(input + skip (+ bias), axis = -1) · gamma (+ beta)`: inputs `input`
//! (`[B, S, C]` or `[S, C]`), `skip` (`input`'s shape, `[1, S, C]` or `[S, C]`), `gamma`,
//! optional `beta` and `bias` (each `[C]`); outputs `output` and the optional `mean` and
//! `inv_std_var` (f32, `[…, 1]`) and `input_skip_bias_sum` (`input`'s type); attribute
//! `epsilon`.
//!
//! ONNX Runtime's `com.microsoft:GroupNorm(X, gamma, beta) {groups, epsilon, activation,
//! channels_last}` is a group norm of a 4-D `X`, channels last (`[N, H, W, C]`, the default) or
//! first (`channels_last = 0`), with per-channel `gamma` and `beta` (`[C]`), followed by a SiLU
//! (`x·sigmoid(x)`) when `activation` is 1; `SkipGroupNorm(X, gamma, beta, skip, bias?)` first
//! sums `s = X + skip (+ bias)` (`skip` of `X`'s shape, one pixel `[N, 1, 1, C]`, or `[N, C]`;
//! `bias` `[C]`) and normalizes `s`, returning it as its optional second output. ONNX
//! Runtime's CPU provider has no kernel for either: `canonicalize` rewrites both into the
//! internal GroupNorm, so their rows only check shapes and refuse a partition.
//!
//! Partition rules: statistics over a non-split axis are local (LayerNormalization,
//! RMSNormalization and SkipLayerNormalization over the channels of `[B, tokens, C]`);
//! LayerNormalization, RMSNormalization, SkipLayerNormalization, LpNormalization,
//! MeanVarianceNormalization and InstanceNormalization over the split axis are refused; the
//! canonical GroupNorm on an image split on a spatial axis computes per-band statistics that
//! are exchanged ([`Need::GroupNormStats`]).

use anyhow::{Result, bail};

use super::def::{Cost, OpDef, per_output_element};
use super::layout::{Layout, Need, PartCx, Verdict, broadcast, follow};
use super::{OpCx, norm_axes, norm_axis, same_as, tt};
use crate::ir::{DataType, Dim, TensorType};

fn check_channels(cx: &OpCx<'_>, port: usize, what: &str) -> Result<()> {
    let (Some(x), Some(p)) = (cx.static_dims(0), cx.static_dims(port)) else {
        return Ok(());
    };
    if x.len() >= 2 && p.len() == 1 && p[0] != x[1] {
        bail!("{what} has {} entries for {} channels", p[0], x[1]);
    }
    Ok(())
}

fn instance_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    check_channels(cx, 1, "scale")?;
    check_channels(cx, 2, "bias")?;
    same_as(cx, 0)
}

fn layer_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let stash = DataType(i32::try_from(cx.attr_i("stash_type", 1)).unwrap_or(1));
    let Some(d) = &x.shape else {
        return Ok(vec![x.clone(), tt(stash, None), tt(stash, None)]);
    };
    let axis = norm_axis(cx.attr_i("axis", -1), d.len())?;
    let stats: Vec<Dim> = d
        .iter()
        .enumerate()
        .map(|(i, v)| if i < axis { v.clone() } else { Dim::Fixed(1) })
        .collect();
    Ok(vec![
        x.clone(),
        tt(stash, Some(stats.clone())),
        tt(stash, Some(stats)),
    ])
}

/// `RMSNormalization` (opset 23): `Y` has `X`'s type; `scale` broadcasts over the normalized
/// axes `[axis, rank)`.
fn rms_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    if let Some(d) = cx.static_dims(0) {
        let axis = norm_axis(cx.attr_i("axis", -1), d.len())?;
        if let Some(s) = cx.static_dims(1)
            && (s.len() > d.len() - axis
                || s.iter()
                    .rev()
                    .zip(d.iter().rev())
                    .any(|(&a, &b)| a != 1 && a != b))
        {
            bail!(
                "scale {s:?} does not broadcast over the normalized axes {:?}",
                &d[axis..]
            );
        }
    }
    same_as(cx, 0)
}

fn group_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let groups = cx.attr_i("num_groups", 0);
    if groups <= 0 {
        bail!("num_groups must be positive");
    }
    if let Some(x) = cx.static_dims(0)
        && x.len() >= 2
        && x[1] % groups != 0
    {
        bail!("{} channels do not divide into {groups} groups", x[1]);
    }
    same_as(cx, 0)
}

fn batch_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    check_channels(cx, 1, "scale")?;
    let x = cx.input(0)?;
    let c = x
        .shape
        .as_ref()
        .and_then(|d| d.get(1).cloned())
        .unwrap_or(Dim::Unknown);
    let stat = tt(
        cx.types
            .get(3)
            .and_then(|t| t.as_ref())
            .map(|t| t.elem)
            .unwrap_or(x.elem),
        Some(vec![c]),
    );
    Ok(vec![
        x.clone(),
        stat.clone(),
        stat.clone(),
        stat.clone(),
        stat,
    ])
}

fn same(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    same_as(cx, 0)
}

/// The normalization family.
pub const OPS: &[OpDef] = &[
    OpDef::infer("InstanceNormalization", instance_norm)
        .split(part_instance_norm)
        .cost(cost_mean_var_norm),
    OpDef::infer("LayerNormalization", layer_norm)
        .split(part_layer_norm)
        .cost(cost_mean_var_norm),
    OpDef::infer("RMSNormalization", rms_norm)
        .split(part_rms_norm)
        .cost(cost_rms_norm),
    OpDef::infer("GroupNormalization", group_norm)
        .split(part_group_norm_op)
        .cost(cost_mean_var_norm),
    OpDef::infer("BatchNormalization", batch_norm)
        .split(follow)
        .cost(cost_batch_norm),
    OpDef::infer("LpNormalization", same)
        .split(part_lp_norm)
        .cost(cost_rms_norm),
    OpDef::infer("MeanVarianceNormalization", same)
        .split(part_mvn)
        .cost(cost_mean_var_norm),
];

/// `com.microsoft:SkipLayerNormalization` (see the module documentation).
fn skip_layer_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    if !matches!(
        x.elem,
        DataType::FLOAT | DataType::FLOAT16 | DataType::BFLOAT16
    ) {
        bail!("input must be float, float16 or bfloat16, not {}", x.elem);
    }
    for port in 1..cx.n_inputs() {
        if cx.has_input(port) && cx.elem(port)? != x.elem {
            bail!(
                "input {port} is {} but input 0 is {}",
                cx.elem(port)?,
                x.elem
            );
        }
    }
    let Some(d) = &x.shape else {
        let stats = tt(DataType::FLOAT, None);
        return Ok(vec![x.clone(), stats.clone(), stats, x.clone()]);
    };
    if !(2..=3).contains(&d.len()) {
        bail!(
            "input must be [batch, sequence, hidden] or [sequence, hidden], not rank {}",
            d.len()
        );
    }
    if let Some(xs) = cx.static_dims(0) {
        let hidden = xs[xs.len() - 1];
        if let Some(s) = cx.static_dims(1) {
            let one_batch = xs.len() == 3 && (s == [1, xs[1], xs[2]] || s == xs[1..]);
            if s != xs && !one_batch {
                bail!("skip {s:?} is neither the input's shape {xs:?} nor one batch of it");
            }
        }
        for (port, what) in [(2, "gamma"), (3, "beta"), (4, "bias")] {
            if let Some(p) = cx.static_dims(port)
                && p != [hidden]
            {
                bail!("{what} {p:?} is not one value per hidden channel ({hidden})");
            }
        }
    }
    let mut stats = d.clone();
    if let Some(last) = stats.last_mut() {
        *last = Dim::Fixed(1);
    }
    let stats = tt(DataType::FLOAT, Some(stats));
    Ok(vec![x.clone(), stats.clone(), stats, x.clone()])
}

/// Checks a `com.microsoft:GroupNorm` or, with `skip`, `SkipGroupNorm` (see the module
/// documentation); `Y` and SkipGroupNorm's optional sum `S` have `X`'s type.
fn check_ort_group_norm(cx: &OpCx<'_>, skip: bool) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    if !matches!(x.elem, DataType::FLOAT | DataType::FLOAT16) {
        bail!("input must be float or float16, not {}", x.elem);
    }
    let groups = cx.attr_i("groups", 0);
    if groups <= 0 {
        bail!("`groups` must be positive");
    }
    if cx.node.attr("activation").is_none() {
        bail!("`activation` is required (0: none, 1: SiLU)");
    }
    if !matches!(cx.attr_i("activation", 0), 0 | 1) {
        bail!("`activation` must be 0 (none) or 1 (SiLU)");
    }
    let channels_last = match cx.attr_i("channels_last", 1) {
        0 => false,
        1 => true,
        v => bail!("`channels_last` must be 0 or 1, not {v}"),
    };
    if let Some(d) = &x.shape
        && d.len() != 4
    {
        bail!(
            "input must be 4-D ({}), not rank {}",
            if channels_last {
                "N, H, W, C"
            } else {
                "N, C, H, W"
            },
            d.len()
        );
    }
    let optional = if skip { [3, 4].as_slice() } else { &[] };
    for &port in optional {
        if cx.has_input(port) && cx.elem(port)? != x.elem {
            bail!(
                "input {port} is {} but input 0 is {}",
                cx.elem(port)?,
                x.elem
            );
        }
    }
    if skip && !cx.has_input(3) && cx.types.get(3).is_none_or(Option::is_none) {
        bail!("SkipGroupNorm needs its `skip` input");
    }
    if let Some(xs) = cx.static_dims(0) {
        let (n, c) = (xs[0], if channels_last { xs[3] } else { xs[1] });
        if c % groups != 0 {
            bail!("{c} channels do not divide into {groups} groups");
        }
        for (port, what) in [(1, "gamma"), (2, "beta")] {
            if let Some(p) = cx.static_dims(port)
                && p != [c]
            {
                bail!("{what} {p:?} is not one value per channel ({c})");
            }
        }
        if skip {
            let pixel = if channels_last {
                [n, 1, 1, c]
            } else {
                [n, c, 1, 1]
            };
            if let Some(s) = cx.static_dims(3)
                && s != xs
                && s != pixel
                && s != [n, c]
            {
                bail!("skip {s:?} is neither the input's shape {xs:?}, {pixel:?} nor [{n}, {c}]");
            }
            if let Some(b) = cx.static_dims(4)
                && b != [c]
            {
                bail!("bias {b:?} is not one value per channel ({c})");
            }
        }
    }
    Ok(vec![x.clone(), x.clone()])
}

/// `com.microsoft:GroupNorm`.
fn ort_group_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    check_ort_group_norm(cx, false)
}

/// `com.microsoft:SkipGroupNorm`.
fn ort_skip_group_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    check_ort_group_norm(cx, true)
}

/// Why ONNX Runtime's group norms have no partition rule of their own.
const ORT_GROUP_NORM_REWRITTEN: &str = "canonicalize rewrites it into dfc's GroupNorm (between Transposes when channels-last) before partitioning";

/// The normalizations of ONNX Runtime's domain ([`super::ORT_DOMAIN`]).
pub const ORT_OPS: &[OpDef] = &[
    OpDef::infer("SkipLayerNormalization", skip_layer_norm)
        .split(part_skip_layer_norm)
        .cost(cost_skip_layer_norm),
    OpDef::infer("GroupNorm", ort_group_norm)
        .refuse(ORT_GROUP_NORM_REWRITTEN)
        .cost(cost_ort_group_norm),
    OpDef::infer("SkipGroupNorm", ort_skip_group_norm)
        .refuse(ORT_GROUP_NORM_REWRITTEN)
        .cost(cost_ort_group_norm),
];

/// ONNX Runtime's GroupNorm and SkipGroupNorm: a group norm's operations, the SiLU (a sigmoid
/// and a product) when `activation` is 1, and SkipGroupNorm's additions of the skip and bias.
fn cost_ort_group_norm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let silu = if cx.attr_i("activation", 0) == 1 {
        9.0
    } else {
        0.0
    };
    let adds = if cx.node.op_type == "SkipGroupNorm" {
        1.0 + f64::from(u8::from(cx.has_input(4)))
    } else {
        0.0
    };
    per_output_element(cx, outputs, 7.0 + silu + adds)
}

/// SkipLayerNormalization: a LayerNorm's operations, plus the addition of the skip and of the
/// bias when there is one.
fn cost_skip_layer_norm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let adds = if cx.has_input(4) { 2.0 } else { 1.0 };
    per_output_element(cx, outputs, 7.0 + adds)
}

/// Normalizations by mean and variance: 3 operations per element for the statistics (sum,
/// square, sum of squares), 4 to apply them (subtract, scale by 1/σ, scale, shift).
fn cost_mean_var_norm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    per_output_element(cx, outputs, 7.0)
}

/// Normalizations by a norm alone (RMS, Lp): 2 operations per element for the statistic, 3 to
/// apply it.
fn cost_rms_norm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    per_output_element(cx, outputs, 5.0)
}

/// Inference BatchNorm: a per-channel scale and shift.
fn cost_batch_norm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    per_output_element(cx, outputs, 2.0)
}

/// Domain of dfc's internal operators (never written to a rank graph).
pub const INTERNAL_DOMAIN: &str = "dfc.internal";

fn canonical_group_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let groups = cx.attr_i("num_groups", 0);
    if groups <= 0 {
        bail!("num_groups must be positive");
    }
    if let Some(x) = cx.static_dims(0) {
        if x.len() < 3 {
            bail!(
                "GroupNorm needs a [B,C,spatial…] input, not rank {}",
                x.len()
            );
        }
        if x[1] % groups != 0 {
            bail!("{} channels do not divide into {groups} groups", x[1]);
        }
        for port in [1, 2] {
            if let Some(p) = cx.static_dims(port)
                && (p.iter().product::<i64>() != x[1] || p.first() != Some(&x[1]))
            {
                bail!("input {port} {p:?} is not one value per channel ({})", x[1]);
            }
        }
    }
    same_as(cx, 0)
}

/// The internal operators.
pub const INTERNAL_OPS: &[OpDef] = &[OpDef::infer("GroupNorm", canonical_group_norm)
    .split(part_canonical_group_norm)
    .cost(cost_mean_var_norm)];

fn refuse_over(cx: &PartCx<'_>, axes: &[usize], what: &str) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    if axes.contains(&a) {
        return Ok(Verdict::Refuse(format!(
            "{what} over the split axis {a} needs statistics of the whole image"
        )));
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}

fn part_instance_norm(cx: &PartCx<'_>) -> Result<Verdict> {
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    refuse_over(cx, &(2..r).collect::<Vec<_>>(), "InstanceNormalization")
}

fn part_layer_norm(cx: &PartCx<'_>) -> Result<Verdict> {
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let axis = norm_axis(cx.op.attr_i("axis", -1), r)?;
    refuse_over(cx, &(axis..r).collect::<Vec<_>>(), "LayerNormalization")
}

fn part_rms_norm(cx: &PartCx<'_>) -> Result<Verdict> {
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let axis = norm_axis(cx.op.attr_i("axis", -1), r)?;
    refuse_over(cx, &(axis..r).collect::<Vec<_>>(), "RMSNormalization")
}

fn part_lp_norm(cx: &PartCx<'_>) -> Result<Verdict> {
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let axis = norm_axis(cx.op.attr_i("axis", -1), r)?;
    refuse_over(cx, &[axis], "LpNormalization")
}

fn part_mvn(cx: &PartCx<'_>) -> Result<Verdict> {
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let axes = norm_axes(&cx.op.attr_ints("axes").unwrap_or(vec![0, 2, 3]), r)?;
    refuse_over(cx, &axes, "MeanVarianceNormalization")
}

/// `input` and `skip` broadcast like an elementwise sum (either may be split; a replicated
/// skip of the full extent is sliced per band); the statistics are over the last axis, so a
/// split last axis is refused.
fn part_skip_layer_norm(cx: &PartCx<'_>) -> Result<Verdict> {
    let v = broadcast(cx)?;
    let last = cx.dims(0).and_then(|d| d.len().checked_sub(1));
    if let (Verdict::Local { outputs, .. }, Some(last)) = (&v, last)
        && outputs.iter().any(|l| l.axis() == Some(last))
    {
        return Ok(Verdict::Refuse(format!(
            "SkipLayerNormalization over the split axis {last} (its last axis) needs statistics of the whole row"
        )));
    }
    Ok(v)
}

fn part_group_norm_op(_cx: &PartCx<'_>) -> Result<Verdict> {
    Ok(Verdict::Refuse(
        "GroupNormalization should have been canonicalized (internal error)".into(),
    ))
}

fn part_canonical_group_norm(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    match a {
        0 => Ok(Verdict::split_all(cx, 0, Vec::new())),
        1 => Ok(Verdict::Refuse(
            "GroupNorm on a tensor split on channels".into(),
        )),
        _ => Ok(Verdict::Local {
            outputs: vec![Layout::Split { axis: a }],
            needs: vec![Need::GroupNormStats],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn layer_norm_outputs() {
        assert_eq!(
            infer_text(
                "LayerNormalization",
                vec![ai("axis", -1)],
                17,
                vec![f32t(&[2, 64, 32]), f32t(&[32])],
                vec![]
            ),
            "f32[2,64,32] f32[2,64,1] f32[2,64,1]"
        );
        assert_eq!(
            infer_text(
                "LayerNormalization",
                vec![ai("axis", 1)],
                17,
                vec![f32t(&[2, 64, 32]), f32t(&[64, 32])],
                vec![]
            ),
            "f32[2,64,32] f32[2,1,1] f32[2,1,1]"
        );
    }

    #[test]
    fn group_and_instance_norm() {
        assert_eq!(
            infer_text(
                "GroupNormalization",
                vec![ai("num_groups", 8)],
                21,
                vec![f32t(&[2, 32, 4, 4]), f32t(&[32]), f32t(&[32])],
                vec![]
            ),
            "f32[2,32,4,4]"
        );
        assert!(
            infer_text(
                "GroupNormalization",
                vec![ai("num_groups", 5)],
                21,
                vec![f32t(&[2, 32, 4, 4])],
                vec![]
            )
            .starts_with("error")
        );
        assert!(
            infer_text(
                "InstanceNormalization",
                vec![],
                17,
                vec![f32t(&[2, 32, 4]), f32t(&[16])],
                vec![]
            )
            .starts_with("error")
        );
        assert_eq!(
            infer_text(
                "BatchNormalization",
                vec![],
                15,
                vec![
                    f32t(&[2, 3, 4, 4]),
                    f32t(&[3]),
                    f32t(&[3]),
                    f32t(&[3]),
                    f32t(&[3])
                ],
                vec![]
            ),
            "f32[2,3,4,4] f32[3] f32[3] f32[3] f32[3]"
        );
    }

    #[test]
    fn rms_norm_shapes() {
        assert_eq!(
            infer_text(
                "RMSNormalization",
                vec![ai("axis", -1)],
                23,
                vec![f32t(&[2, 64, 32]), f32t(&[32])],
                vec![]
            ),
            "f32[2,64,32]"
        );
        assert!(
            infer_text(
                "RMSNormalization",
                vec![],
                23,
                vec![f32t(&[2, 64, 32]), f32t(&[16])],
                vec![]
            )
            .starts_with("error")
        );
    }

    #[test]
    fn norms_over_channels_are_local_over_tokens_refused() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Verdict};
        let s1 = Layout::Split { axis: 1 };
        let r = Layout::Replicated;
        for op in ["LayerNormalization", "RMSNormalization"] {
            // [B, tokens, C] split on tokens, normalized over channels: local.
            let v = verdict(
                &node(op, vec![ai("axis", -1)]),
                23,
                vec![f32t(&[2, 64, 32]), f32t(&[32])],
                vec![],
                vec![s1, r],
                vec![f32t(&[2, 64, 32])],
                2,
            );
            assert_eq!(v, Verdict::local(vec![s1]), "{op}");
            // Normalized over tokens and channels: refused.
            let v = verdict(
                &node(op, vec![ai("axis", 1)]),
                23,
                vec![f32t(&[2, 64, 32]), f32t(&[64, 32])],
                vec![],
                vec![s1, r],
                vec![f32t(&[2, 64, 32])],
                2,
            );
            assert!(
                matches!(&v, Verdict::Refuse(m) if m.contains("split axis")),
                "{op}: {v:?}"
            );
        }
    }

    #[test]
    fn skip_layer_normalization_outputs() {
        use crate::ir::DataType;
        let ort = crate::passes::ops::ORT_DOMAIN;
        let h = |dims: &[i64]| Some(crate::ir::TensorType::fixed(DataType::FLOAT16, dims));
        // All four outputs: output and the sum have the input's type, the statistics are f32
        // per token.
        assert_eq!(
            infer_text_in(
                ort,
                "SkipLayerNormalization",
                vec![af("epsilon", 1e-5)],
                vec![
                    h(&[2, 64, 32]),
                    h(&[2, 64, 32]),
                    h(&[32]),
                    h(&[32]),
                    h(&[32])
                ],
                4
            ),
            "f16[2,64,32] f32[2,64,1] f32[2,64,1] f16[2,64,32]"
        );
        // A skip of one batch ([1, S, C] or [S, C]) broadcasts; a 2-D input works too.
        for skip in [&[1, 64, 32][..], &[64, 32]] {
            assert_eq!(
                infer_text_in(
                    ort,
                    "SkipLayerNormalization",
                    vec![],
                    vec![f32t(&[2, 64, 32]), f32t(skip), f32t(&[32])],
                    1
                ),
                "f32[2,64,32]"
            );
        }
        assert_eq!(
            infer_text_in(
                ort,
                "SkipLayerNormalization",
                vec![],
                vec![f32t(&[64, 32]), f32t(&[64, 32]), f32t(&[32])],
                2
            ),
            "f32[64,32] f32[64,1]"
        );
        // Mismatched skip, gamma or types, and a 4-D input, are errors.
        for types in [
            vec![f32t(&[2, 64, 32]), f32t(&[2, 1, 32]), f32t(&[32])],
            vec![f32t(&[2, 64, 32]), f32t(&[2, 64, 32]), f32t(&[64])],
            vec![f32t(&[2, 64, 32]), h(&[2, 64, 32]), f32t(&[32])],
            vec![f32t(&[2, 4, 8, 32]), f32t(&[2, 4, 8, 32]), f32t(&[32])],
        ] {
            let t = infer_text_in(ort, "SkipLayerNormalization", vec![], types.clone(), 1);
            assert!(t.starts_with("error"), "{types:?}: {t}");
        }
        // ONNX Runtime's Gelu is elementwise.
        assert_eq!(
            infer_text_in(ort, "Gelu", vec![], vec![h(&[2, 64, 128])], 1),
            "f16[2,64,128]"
        );
    }

    #[test]
    fn skip_layer_normalization_is_local_over_tokens_refused_over_channels() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Need, Verdict};
        let mut sln = node("SkipLayerNormalization", vec![]);
        sln.domain = crate::passes::ops::ORT_DOMAIN.into();
        let (s0, s1, s2) = (
            Layout::Split { axis: 0 },
            Layout::Split { axis: 1 },
            Layout::Split { axis: 2 },
        );
        let r = Layout::Replicated;
        let x = || f32t(&[2, 64, 32]);
        let outs = || vec![x(), f32t(&[2, 64, 1]), f32t(&[2, 64, 1]), x()];
        let params = || vec![f32t(&[32]), f32t(&[32]), f32t(&[32])];
        let types = |skip| [vec![x(), skip], params()].concat();
        // Input and skip split on tokens: every output (statistics included) on tokens.
        let v = verdict(
            &sln,
            17,
            types(x()),
            vec![],
            vec![s1, s1, r, r, r],
            outs(),
            2,
        );
        assert_eq!(v, Verdict::local(vec![s1; 4]));
        // A replicated skip of the full token extent is sliced per band; [1, S, C] too, and a
        // batch split broadcasts it.
        for skip in [x(), f32t(&[1, 64, 32])] {
            let v = verdict(
                &sln,
                17,
                types(skip),
                vec![],
                vec![s1, r, r, r, r],
                outs(),
                2,
            );
            assert_eq!(
                v,
                Verdict::Local {
                    outputs: vec![s1; 4],
                    needs: vec![Need::SliceOperand { port: 1, axis: 1 }]
                }
            );
        }
        let v = verdict(
            &sln,
            17,
            types(f32t(&[1, 64, 32])),
            vec![],
            vec![s0, r, r, r, r],
            outs(),
            2,
        );
        assert_eq!(v, Verdict::local(vec![s0; 4]));
        // Split on the normalized (last) axis: refused with the reason.
        let v = verdict(
            &sln,
            17,
            types(x()),
            vec![],
            vec![s2, s2, r, r, r],
            outs(),
            2,
        );
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.contains("split axis 2 (its last axis)")),
            "{v:?}"
        );
    }

    #[test]
    fn ort_group_norm_shapes() {
        let ort = crate::passes::ops::ORT_DOMAIN;
        let attrs = |extra: Vec<crate::onnx::proto::AttributeProto>| {
            [vec![ai("groups", 4), ai("activation", 1)], extra].concat()
        };
        let nhwc = || f32t(&[2, 8, 8, 32]);
        let c = || f32t(&[32]);
        assert_eq!(
            infer_text_in(ort, "GroupNorm", attrs(vec![]), vec![nhwc(), c(), c()], 1),
            "f32[2,8,8,32]"
        );
        // Channels first.
        assert_eq!(
            infer_text_in(
                ort,
                "GroupNorm",
                attrs(vec![ai("channels_last", 0)]),
                vec![f32t(&[2, 32, 8, 8]), c(), c()],
                1
            ),
            "f32[2,32,8,8]"
        );
        // SkipGroupNorm: a full, one-pixel or [N, C] skip, a bias; the sum has X's type.
        for skip in [&[2, 8, 8, 32][..], &[2, 1, 1, 32], &[2, 32]] {
            assert_eq!(
                infer_text_in(
                    ort,
                    "SkipGroupNorm",
                    attrs(vec![]),
                    vec![nhwc(), c(), c(), f32t(skip), c()],
                    2
                ),
                "f32[2,8,8,32] f32[2,8,8,32]",
                "{skip:?}"
            );
        }
        // Groups that do not divide the channels, a gamma per group, a 3-D input, a missing
        // activation, a skip of another shape: errors.
        for (op, attrs, types) in [
            (
                "GroupNorm",
                vec![ai("groups", 5), ai("activation", 0)],
                vec![nhwc(), c(), c()],
            ),
            ("GroupNorm", attrs(vec![]), vec![nhwc(), f32t(&[4]), c()]),
            (
                "GroupNorm",
                attrs(vec![]),
                vec![f32t(&[2, 64, 32]), c(), c()],
            ),
            ("GroupNorm", vec![ai("groups", 4)], vec![nhwc(), c(), c()]),
            (
                "SkipGroupNorm",
                attrs(vec![]),
                vec![nhwc(), c(), c(), f32t(&[2, 8, 1, 32])],
            ),
        ] {
            let t = infer_text_in(ort, op, attrs.clone(), types.clone(), 1);
            assert!(t.starts_with("error"), "{op} {attrs:?} {types:?}: {t}");
        }
    }

    #[test]
    fn ort_group_norms_leave_partitioning_to_canonicalize() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Verdict};
        for op in ["GroupNorm", "SkipGroupNorm"] {
            let mut n = node(op, vec![ai("groups", 4), ai("activation", 0)]);
            n.domain = crate::passes::ops::ORT_DOMAIN.into();
            let v = verdict(
                &n,
                17,
                vec![f32t(&[2, 8, 8, 32]), f32t(&[32]), f32t(&[32])],
                vec![],
                vec![
                    Layout::Split { axis: 1 },
                    Layout::Replicated,
                    Layout::Replicated,
                ],
                vec![f32t(&[2, 8, 8, 32])],
                2,
            );
            assert!(
                matches!(&v, Verdict::Refuse(m) if m.contains("canonicalize")),
                "{op}: {v:?}"
            );
        }
    }

    #[test]
    fn group_normalization_21_with_stash_type() {
        assert_eq!(
            infer_text(
                "GroupNormalization",
                vec![ai("num_groups", 4), ai("stash_type", 1)],
                21,
                vec![f32t(&[2, 32, 8, 8]), f32t(&[32]), f32t(&[32])],
                vec![]
            ),
            "f32[2,32,8,8]"
        );
    }
}

#[cfg(test)]
mod cost_tests {
    use super::super::def::cost_testing::{cost, f32t};
    use super::super::testing::ai;

    #[test]
    fn skip_layer_normalization_adds_the_skip_and_bias() {
        // [2,4,8]: 64 elements, a LayerNorm's 7 operations, the skip and the bias.
        let x = || f32t(&[2, 4, 8]);
        let c = cost(
            "SkipLayerNormalization",
            vec![],
            1,
            vec![x(), x(), f32t(&[8]), f32t(&[8]), f32t(&[8])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 64.0 * 9.0);
        assert_eq!(c.bytes_read, (128.0 + 24.0) * 4.0);
        let c = cost(
            "SkipLayerNormalization",
            vec![],
            1,
            vec![x(), x(), f32t(&[8])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 64.0 * 8.0);
    }

    #[test]
    fn ort_group_norms_count_the_silu_and_the_sums() {
        use super::super::testing::ai;
        // [1,4,4,8]: 128 elements; a group norm's 7 operations, the SiLU's 9.
        let x = || f32t(&[1, 4, 4, 8]);
        let cost = |op, attrs, types| {
            super::super::def::cost_testing::cost_in(
                crate::passes::ops::ORT_DOMAIN,
                op,
                attrs,
                17,
                types,
                vec![],
            )
        };
        let c = cost(
            "GroupNorm",
            vec![ai("groups", 2), ai("activation", 1)],
            vec![x(), f32t(&[8]), f32t(&[8])],
        )
        .unwrap();
        assert_eq!(c.flops, 128.0 * 16.0);
        // SkipGroupNorm without activation: the skip and the bias added first.
        let c = cost(
            "SkipGroupNorm",
            vec![ai("groups", 2), ai("activation", 0)],
            vec![x(), f32t(&[8]), f32t(&[8]), x(), f32t(&[8])],
        )
        .unwrap();
        assert_eq!(c.flops, 128.0 * 9.0);
    }

    #[test]
    fn normalizations_count_statistics_and_application() {
        // LayerNorm of [2,4,8]: 64 elements, 7 operations each.
        let c = cost(
            "LayerNormalization",
            vec![ai("axis", -1)],
            17,
            vec![f32t(&[2, 4, 8]), f32t(&[8]), f32t(&[8])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 448.0);
        assert_eq!(c.bytes_read, (64.0 + 16.0) * 4.0);
        // GroupNormalization of [1,8,4,4]: 128 elements.
        let c = cost(
            "GroupNormalization",
            vec![ai("num_groups", 2)],
            21,
            vec![f32t(&[1, 8, 4, 4]), f32t(&[8]), f32t(&[8])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 896.0);
        // RMSNormalization of [2,8]: 5 operations per element.
        let c = cost(
            "RMSNormalization",
            vec![ai("axis", -1)],
            23,
            vec![f32t(&[2, 8]), f32t(&[8])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 80.0);
    }
}
