//! `lower-group-norm`: every canonical GroupNorm (`dfc.internal:GroupNorm`) becomes ordinary
//! operators: with its input split (and exchanges on), fp32 statistics of the band →
//! `DfcStatsAllReduce` → normalization; otherwise torch's Reshape → InstanceNormalization →
//! Reshape form, which ONNX Runtime runs with its fused kernel. Then `· γ + β`.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};

use super::{Builder, context, dims, exchanging, i64_const, layout_of, static_type};
use crate::contract::exchange::{ATTR_SLOT, DOMAIN};
use crate::ir::{DataType, Graph, Layout, NodeId, TensorType, ValueId};
use crate::onnx::proto::AttributeProto;
use crate::passes::ops::default_opset;
use crate::passes::ops::norm::INTERNAL_DOMAIN;
use crate::passes::propagate::FALLBACK_OPSET;
use crate::passes::{Pass, PassContext};
use crate::plan::ExchangeKind;
use crate::tensor::Tensor;

/// See the module documentation.
pub struct LowerGroupNorm;

impl Pass for LowerGroupNorm {
    fn name(&self) -> &'static str {
        "lower-group-norm"
    }
    fn description(&self) -> &'static str {
        "lower canonical GroupNorms: band statistics all-reduced when split, torch's form otherwise"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let (p, mode, _) = context(cx)?;
        let exchange = exchanging(&p, mode);
        let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
        let local = cx
            .local
            .as_mut()
            .ok_or_else(|| anyhow!("lower-group-norm runs after local-types"))?;
        let mut changed = false;
        for id in g.topo_order()? {
            let node = g.node(id);
            if !(node.domain == INTERNAL_DOMAIN && node.op_type == "GroupNorm") {
                continue;
            }
            let name = node.name.clone();
            let split = node
                .input(0)
                .map(|x| layout_of(g, x) != Layout::Replicated)
                .unwrap_or(false);
            lower_group_norm(g, id, exchange && split, opset, &mut local.for_node)
                .map_err(|e| e.context(format!("lowering GroupNorm `{name}`")))?;
            changed = true;
        }
        Ok(changed)
    }
}

/// Normalizes `x` [B, C, …] per (batch, group) with statistics computed in fp32 from the
/// band and averaged over the group's bands by `DfcStatsAllReduce`: E[x] and E[x²] are
/// exchanged, var = max(E[x²] − E[x]², 0). Returns the normalized tensor in `x`'s type.
#[allow(clippy::too_many_arguments)]
fn normalize_across_bands(
    g: &mut Graph,
    b: &Builder,
    name: &str,
    x: ValueId,
    xt: &TensorType,
    groups: i64,
    eps: f32,
    opset: i64,
    for_node: &mut HashMap<String, String>,
) -> Result<ValueId> {
    let xd = xt.static_dims().unwrap_or_default();
    let bsz = xd[0];
    let per_group: i64 = xd[1..].iter().product::<i64>() / groups;
    let f32t = |d: &[i64]| TensorType::fixed(DataType::FLOAT, d);
    let elem = xt.elem;
    let xf = if elem != DataType::FLOAT {
        b.op(
            g,
            &format!("{name}.cast"),
            "Cast",
            "",
            &[x],
            vec![AttributeProto::int("to", DataType::FLOAT.0 as i64)],
            f32t(&xd),
        )?
    } else {
        x
    };
    let flat_shape = i64_const(g, &format!("{name}.flat_shape"), &[bsz, groups, per_group]);
    let flat = [bsz, groups, per_group];
    let xr = b.op(
        g,
        &format!("{name}.flat"),
        "Reshape",
        "",
        &[xf, flat_shape],
        vec![],
        f32t(&flat),
    )?;
    let stat = [bsz, groups, 1];
    let mean_of = |g: &mut Graph, what: &str, v: ValueId| -> Result<ValueId> {
        let (inputs, attrs) = if opset >= 18 {
            let axes = i64_const(g, &format!("{name}.{what}_axes"), &[2]);
            (vec![v, axes], vec![AttributeProto::int("keepdims", 1)])
        } else {
            (
                vec![v],
                vec![
                    AttributeProto::ints("axes", &[2]),
                    AttributeProto::int("keepdims", 1),
                ],
            )
        };
        b.op(
            g,
            &format!("{name}.{what}"),
            "ReduceMean",
            "",
            &inputs,
            attrs,
            f32t(&stat),
        )
    };
    let mean = mean_of(g, "mean", xr)?;
    let sq = b.op(
        g,
        &format!("{name}.sq"),
        "Mul",
        "",
        &[xr, xr],
        vec![],
        f32t(&flat),
    )?;
    let mean_sq = mean_of(g, "mean_sq", sq)?;
    let (mean, mean_sq) = {
        let both = [bsz, groups, 2];
        let s = b.op(
            g,
            &format!("{name}.local_stats"),
            "Concat",
            "",
            &[mean, mean_sq],
            vec![AttributeProto::int("axis", 2)],
            f32t(&both),
        )?;
        let sname = format!("{name}.stats");
        let gs = b.op(
            g,
            &sname,
            ExchangeKind::Stats.op_type(),
            DOMAIN,
            &[s],
            vec![AttributeProto::int(ATTR_SLOT, 0)],
            f32t(&both),
        )?;
        for_node.insert(g.value(gs).name.clone(), name.to_string());
        let pick = |g: &mut Graph, what: &str, k: i64| -> Result<ValueId> {
            let st = i64_const(g, &format!("{name}.{what}_start"), &[k]);
            let en = i64_const(g, &format!("{name}.{what}_end"), &[k + 1]);
            let ax = i64_const(g, &format!("{name}.{what}_axes"), &[2]);
            b.op(
                g,
                &format!("{name}.{what}"),
                "Slice",
                "",
                &[gs, st, en, ax],
                vec![],
                f32t(&stat),
            )
        };
        (pick(g, "global_mean", 0)?, pick(g, "global_mean_sq", 1)?)
    };
    let m2 = b.op(
        g,
        &format!("{name}.mean2"),
        "Mul",
        "",
        &[mean, mean],
        vec![],
        f32t(&stat),
    )?;
    let var_raw = b.op(
        g,
        &format!("{name}.var_raw"),
        "Sub",
        "",
        &[mean_sq, m2],
        vec![],
        f32t(&stat),
    )?;
    let zero = g.add_constant(&format!("{name}.zero"), Tensor::scalar(0f32).to_proto(""));
    let var = b.op(
        g,
        &format!("{name}.var"),
        "Max",
        "",
        &[var_raw, zero],
        vec![],
        f32t(&stat),
    )?;
    let epsv = g.add_constant(&format!("{name}.epsilon"), Tensor::scalar(eps).to_proto(""));
    let ve = b.op(
        g,
        &format!("{name}.var_eps"),
        "Add",
        "",
        &[var, epsv],
        vec![],
        f32t(&stat),
    )?;
    let std = b.op(
        g,
        &format!("{name}.std"),
        "Sqrt",
        "",
        &[ve],
        vec![],
        f32t(&stat),
    )?;
    let cen = b.op(
        g,
        &format!("{name}.centered"),
        "Sub",
        "",
        &[xr, mean],
        vec![],
        f32t(&flat),
    )?;
    let nrm = b.op(
        g,
        &format!("{name}.normalized"),
        "Div",
        "",
        &[cen, std],
        vec![],
        f32t(&flat),
    )?;
    let back_shape = i64_const(g, &format!("{name}.unflat_shape"), &xd);
    let mut last = b.op(
        g,
        &format!("{name}.unflat"),
        "Reshape",
        "",
        &[nrm, back_shape],
        vec![],
        f32t(&xd),
    )?;
    if elem != DataType::FLOAT {
        last = b.op(
            g,
            &format!("{name}.cast_back"),
            "Cast",
            "",
            &[last],
            vec![AttributeProto::int("to", elem.0 as i64)],
            TensorType::fixed(elem, &xd),
        )?;
    }
    Ok(last)
}

/// Normalizes `x` [B, C, …] per (batch, group) with the statistics of this band alone, in
/// torch's export form (Reshape → InstanceNormalization → Reshape), which ONNX Runtime runs
/// with its fused kernel: what a one-band plan and the `naive` mode compute.
fn normalize_locally(
    g: &mut Graph,
    b: &Builder,
    name: &str,
    x: ValueId,
    xt: &TensorType,
    groups: i64,
    eps: f32,
) -> Result<ValueId> {
    let xd = xt.static_dims().unwrap_or_default();
    let per_group: i64 = xd[1..].iter().product::<i64>() / groups;
    let flat = [xd[0], groups, per_group];
    let flat_shape = i64_const(g, &format!("{name}.flat_shape"), &flat);
    let xr = b.op(
        g,
        &format!("{name}.flat"),
        "Reshape",
        "",
        &[x, flat_shape],
        vec![],
        TensorType::fixed(xt.elem, &flat),
    )?;
    let ones =
        Tensor::F32(ndarray::ArrayD::from_elem(vec![groups as usize], 1f32)).cast(xt.elem)?;
    let zeros =
        Tensor::F32(ndarray::ArrayD::from_elem(vec![groups as usize], 0f32)).cast(xt.elem)?;
    let scale = g.add_constant(&format!("{name}.ones"), ones.to_proto(""));
    let bias = g.add_constant(&format!("{name}.zeros"), zeros.to_proto(""));
    let nrm = b.op(
        g,
        &format!("{name}.instance_norm"),
        "InstanceNormalization",
        "",
        &[xr, scale, bias],
        vec![AttributeProto::float("epsilon", eps)],
        TensorType::fixed(xt.elem, &flat),
    )?;
    let back_shape = i64_const(g, &format!("{name}.unflat_shape"), &xd);
    b.op(
        g,
        &format!("{name}.unflat"),
        "Reshape",
        "",
        &[nrm, back_shape],
        vec![],
        TensorType::fixed(xt.elem, &xd),
    )
}

fn lower_group_norm(
    g: &mut Graph,
    id: NodeId,
    exchange: bool,
    opset: i64,
    for_node: &mut HashMap<String, String>,
) -> Result<()> {
    let node = g.node(id).clone();
    let name = node.name.clone();
    let b = Builder { anchor: id };
    let x = node.input(0).ok_or_else(|| anyhow!("no input"))?;
    let y = node.output(0).ok_or_else(|| anyhow!("no output"))?;
    let groups = node.attr_i("num_groups", 1);
    let eps = node.attr_f("epsilon", 1e-5);
    let xt = static_type(g, x)?;
    let xd = xt.static_dims().unwrap_or_default();
    let c = xd[1];
    if groups <= 0 || c % groups != 0 {
        bail!("{c} channels do not divide into {groups} groups");
    }
    let elem = xt.elem;
    let mut last = if exchange {
        normalize_across_bands(g, &b, &name, x, &xt, groups, eps, opset, for_node)?
    } else {
        normalize_locally(g, &b, &name, x, &xt, groups, eps)?
    };
    // γ and β broadcast over [B, C, spatial…] as [C, 1, …].
    let mut affine = Vec::new();
    for (port, op, what) in [(1, "Mul", "scale"), (2, "Add", "shift")] {
        let Some(p) = node.input(port) else { continue };
        let pd = dims(g, p)?;
        let want: Vec<i64> = std::iter::once(c)
            .chain(std::iter::repeat_n(1, xd.len() - 2))
            .collect();
        let pv = if pd == want || pd.len() == xd.len() {
            p
        } else if crate::passes::ops::is_constant(g, p) {
            let mut t = g.value(p).init.clone().unwrap_or_default();
            t.dims = want.clone();
            g.add_constant(&format!("{}.per_channel", g.value(p).name), t)
        } else {
            let sh = i64_const(g, &format!("{name}.{what}_shape"), &want);
            let pt = static_type(g, p)?.elem;
            b.op(
                g,
                &format!("{name}.{what}_per_channel"),
                "Reshape",
                "",
                &[p, sh],
                vec![],
                TensorType::fixed(pt, &want),
            )?
        };
        affine.push((op, what, pv));
    }
    // The last node produces the GroupNorm's own output value.
    let anchor_after = g.value(last).producer().map(|(n, _)| n).unwrap_or(id);
    g.remove_node(id);
    let b2 = Builder {
        anchor: anchor_after,
    };
    let k = affine.len();
    for (i, (op, what, pv)) in affine.into_iter().enumerate() {
        let nm = format!("{name}.{what}");
        if i + 1 == k {
            b2.op_into(g, &nm, op, "", &[last, pv], vec![], y)?;
            return Ok(());
        }
        last = b2.op(
            g,
            &nm,
            op,
            "",
            &[last, pv],
            vec![],
            TensorType::fixed(elem, &xd),
        )?;
    }
    b2.op_into(
        g,
        &format!("{name}.output"),
        "Identity",
        "",
        &[last],
        vec![],
        y,
    )?;
    Ok(())
}
