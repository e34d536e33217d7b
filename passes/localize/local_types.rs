//! `local-types`: the band's types. Every split value's type becomes the full type with its
//! band's part on the split axis; replicated operands that a node reads band by band
//! (`Need::SliceOperand`) are replaced by their band; shape-carrying constants get local
//! sizes. Starts the [`LocalGraph`] the next two passes add to.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};

use super::{
    BandConstant, Builder, LocalGraph, band_of, context, dims, i64_const, layout_of, local_dims,
    static_type,
};
use crate::ir::{Graph, Layout, NodeId, TensorType, ValueId, ValueType};
use crate::passes::ops::layout::Need;
use crate::passes::ops::norm::INTERNAL_DOMAIN;
use crate::passes::ops::{default_opset, load_constant};
use crate::passes::propagate::FALLBACK_OPSET;
use crate::passes::{Pass, PassContext};
use crate::tensor::Tensor;

/// See the module documentation.
pub struct LocalTypes;

impl Pass for LocalTypes {
    fn establishes(&self) -> Option<crate::ir::Phase> {
        Some(crate::ir::Phase::Localizing)
    }
    fn name(&self) -> &'static str {
        "local-types"
    }
    fn description(&self) -> &'static str {
        "give every split value its band's type, slice full-height operands, localize shape constants"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let (p, _, band) = context(cx)?;
        let bands = &p.bands;
        let n = bands.n();
        if band >= n {
            return Err(crate::internal!("band {band} of {n}"));
        }
        let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
        let mut out = LocalGraph {
            bands: bands.clone(),
            band,
            exchanges: Vec::new(),
            band_constants: Vec::new(),
            skipped_gathers: Vec::new(),
            io_layouts: HashMap::new(),
            for_node: HashMap::new(),
        };
        for &v in g.inputs.iter().chain(&g.outputs) {
            out.io_layouts
                .insert(g.value(v).name.clone(), layout_of(g, v));
        }
        let split: Vec<(ValueId, usize)> = g
            .value_ids()
            .filter_map(|v| layout_of(g, v).axis().map(|a| (v, a)))
            .collect();
        for (v, axis) in split {
            if let Some(t) = g.value(v).tensor_type().cloned() {
                let d = t
                    .static_dims()
                    .ok_or_else(|| anyhow!("value `{}` has no static shape", g.value(v).name))?;
                g.value_mut(v).ty = Some(ValueType::Tensor(TensorType::fixed(
                    t.elem,
                    &local_dims(&d, Layout::Split { axis }, bands, band)?,
                )));
            }
        }
        let mut band_sliced: HashMap<(ValueId, usize), ValueId> = HashMap::new();
        for id in g.topo_order()? {
            let name = g.node(id).name.clone();
            let b = Builder { anchor: id };
            for need in p.needs.get(&id).cloned().unwrap_or_default() {
                let Need::SliceOperand { port, axis } = need else {
                    continue;
                };
                if n == 1 {
                    continue;
                }
                let Some(v) = g.node(id).input(port) else {
                    continue;
                };
                let y = match band_sliced.get(&(v, axis)) {
                    Some(&y) => y,
                    None => {
                        let y =
                            band_slice(g, &b, &name, port, v, axis, opset, &cx.store, &mut out)?;
                        band_sliced.insert((v, axis), y);
                        y
                    }
                };
                g.set_input(id, port, Some(y));
            }
            let node = g.node(id);
            if node.domain == INTERNAL_DOMAIN && node.op_type == "GroupNorm" {
                continue;
            }
            localize_shape_inputs(g, id, opset)?;
        }
        cx.local = Some(out);
        Ok(true)
    }
}

#[allow(clippy::too_many_arguments)]
fn band_slice(
    g: &mut Graph,
    b: &Builder,
    name: &str,
    port: usize,
    v: ValueId,
    axis: usize,
    opset: i64,
    store: &crate::onnx::ExternalStore,
    out: &mut LocalGraph,
) -> Result<ValueId> {
    let full = dims(g, v)?;
    let elem = static_type(g, v)?.elem;
    let (bands, band) = (out.bands.clone(), out.band);
    let extent = full[axis];
    let local = local_dims(&full, Layout::Split { axis }, &bands, band)?;
    if crate::passes::ops::is_constant(g, v) {
        let source = g
            .value(v)
            .init
            .clone()
            .ok_or_else(|| anyhow!("constant without a tensor"))?;
        let t = load_constant(g, store, v, usize::MAX)?
            .ok_or_else(|| anyhow!("cannot read constant `{}`", g.value(v).name))?;
        let own = band_of(&t, axis, &bands, band)?;
        let hint = format!("{}.band", g.value(v).name);
        let y = g.add_constant(&hint, own.to_proto(""));
        let mut source = source;
        // The source keeps its bytes; the emitter slices it per rank.
        source.name = Some(g.value(v).name.clone());
        out.band_constants.push(BandConstant::Slice {
            value: y,
            source: Box::new(source),
            axis,
        });
        return Ok(y);
    }
    if opset < 10 {
        bail!("node `{name}`: a per-band Slice needs opset 10 or later (the model has {opset})");
    }
    let sname = format!("{name}.band{port}");
    let part = bands
        .part(band, extent)
        .ok_or_else(|| crate::internal!("bands {bands} do not cut {extent}"))?;
    let start = i64_const(g, &format!("{sname}.start"), &[part.start]);
    let end = i64_const(g, &format!("{sname}.end"), &[part.end]);
    let axes = i64_const(g, &format!("{sname}.axes"), &[axis as i64]);
    out.band_constants.push(BandConstant::Bound {
        value: start,
        extent,
        end: false,
    });
    out.band_constants.push(BandConstant::Bound {
        value: end,
        extent,
        end: true,
    });
    b.op(
        g,
        &sname,
        "Slice",
        "",
        &[v, start, end, axes],
        vec![],
        TensorType::fixed(elem, &local),
    )
}

/// Rewrites the constants that carry sizes (Reshape/Expand shape, Resize sizes) to the node's
/// local output size.
fn localize_shape_inputs(g: &mut Graph, id: NodeId, opset: i64) -> Result<()> {
    let node = g.node(id);
    let name = node.name.clone();
    let op = node.op_type.clone();
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Ok(());
    }
    let Some(o) = node.output(0) else {
        return Ok(());
    };
    let port = match op.as_str() {
        "Reshape" | "Expand" => 1,
        "Resize" if opset >= 11 && node.input(3).is_some() => 3,
        _ => return Ok(()),
    };
    let Some(v) = node.input(port) else {
        return Ok(());
    };
    let od = dims(g, o)?;
    let want: Vec<i64> = if op == "Resize" {
        let axes: Vec<usize> = match node.attr_ints("axes") {
            Some(a) if opset >= 18 && !a.is_empty() => a
                .iter()
                .map(|&x| crate::passes::ops::norm_axis(x, od.len()))
                .collect::<Result<_>>()?,
            _ => (0..od.len()).collect(),
        };
        axes.iter().map(|&a| od[a]).collect()
    } else {
        od
    };
    let current = g
        .value(v)
        .init
        .as_ref()
        .and_then(|p| Tensor::from_proto(p, &crate::onnx::ExternalStore::new(".".into())).ok())
        .and_then(|t| t.to_i64s().ok());
    let unchanged = match &current {
        Some(c) if op == "Reshape" => {
            // Keep the model's own spec when it already gives the local shape.
            let input = g.node(id).input(0).map(|x| dims(g, x)).transpose()?;
            let allowzero = g.node(id).attr_i("allowzero", 0) != 0;
            input
                .and_then(|d| {
                    crate::passes::ops::shape::reshape_dims(
                        Some(&crate::passes::ops::fixed(&d)),
                        c,
                        allowzero,
                    )
                    .ok()
                })
                .and_then(|r| r.iter().map(|x| x.fixed()).collect::<Option<Vec<i64>>>())
                .is_some_and(|r| r == want)
        }
        Some(c) => *c == want,
        None => false,
    };
    if unchanged {
        return Ok(());
    }
    let what = if op == "Resize" { "sizes" } else { "shape" };
    let c = i64_const(g, &format!("{name}.{what}"), &want);
    g.set_input(id, port, Some(c));
    Ok(())
}
