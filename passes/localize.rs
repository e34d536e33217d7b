//! `localize`: rewrites the partitioned graph into the band-local graph every rank runs, and
//! inserts the exchange operators of DESIGN §3.
//!
//! - Every split value's type becomes the full type with its band's part on the split axis
//!   (the pass builds the local graph of one band, [`PassContext::band`]; bands may differ
//!   in height, so unequal bands get graphs of their own).
//! - A conv or pool that reads rows of neighbouring bands reads
//!   `DfcHaloExchange(x) {axis, top, bottom}` instead of `x`, and its padding on that axis
//!   becomes 0 (`naive`: no exchange, the padding becomes `top`/`bottom` zero rows).
//! - An operand to gather (the keys and values of self-attention) is read through
//!   `DfcPatchAllGather(x) {axis, parts}` (`naive`: not gathered; attention stays band-local).
//! - Every canonical GroupNorm is lowered to ordinary operators: statistics in fp32
//!   (`Reshape [B,G,(C/G)·Hl·W]`, `ReduceMean` of x and x·x), stacked into `s[B,G,2]`,
//!   `DfcStatsAllReduce(s)` when split (not in `naive`), `var = max(E[x²] − mean², 0)`,
//!   `(x − mean) / sqrt(var + eps)`, reshaped and cast back, then `· γ + β`.
//! - A ReduceMean over the split axis is followed by `DfcStatsAllReduce`.
//! - A replicated operand with the full extent on the split axis is replaced by its band:
//!   constants by a per-band constant ([`BandConstant`], filled per rank at emission), other
//!   values by a `Slice` whose bounds are per-band constants.
//! - Shape-carrying constants (Reshape and Expand shapes, Resize sizes) get local sizes.
//!
//! Inserted nodes are named `{original}.halo`, `{original}.gather`, `{original}.stats`, …;
//! exchange slots are numbered in topological order. With one band nothing is exchanged and the
//! graph computes exactly what the original does.
//!
//! **Invariant:** after this pass the graph is the local graph of the band asked for (per-band
//! constants hold that band's values), no internal operator remains, every exchange node has a unique
//! `slot`, and the model imports domain `dfc` version 1. Rejects nothing the partition
//! accepted, except a per-band `Slice` in a model older than opset 10.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};

use super::ops::exchange::{DOMAIN, VERSION};
use super::ops::layout::{Layout, Need};
use super::ops::norm::INTERNAL_DOMAIN;
use super::ops::{default_opset, load_constant};
use super::partition::Partition;
use super::propagate::FALLBACK_OPSET;
use super::{Pass, PassContext};
use crate::contract::Bands;
use crate::contract::exchange::{ATTR_AXIS, ATTR_BOTTOM, ATTR_PARTS, ATTR_SLOT, ATTR_TOP};
use crate::ir::{DataType, Graph, Node, NodeId, TensorType, ValueId, ValueType};
use crate::onnx::proto::{AttributeProto, OperatorSetIdProto, TensorProto};
use crate::plan::{ExchangeKind, Mode};
use crate::tensor::Tensor;

/// A constant whose value differs per band.
#[derive(Clone, Debug)]
pub enum BandConstant {
    /// Band `r`'s part of `source` along `axis`.
    Slice {
        value: ValueId,
        source: Box<TensorProto>,
        axis: usize,
    },
    /// The first index of band `r`'s part of an axis of `extent` (`end`: one past its last),
    /// int64 of shape [1].
    Bound {
        value: ValueId,
        extent: i64,
        end: bool,
    },
}

impl BandConstant {
    /// This constant's value for band `band` of `bands`.
    pub fn value_for(
        &self,
        bands: &Bands,
        band: usize,
        store: &crate::onnx::ExternalStore,
    ) -> Result<Tensor> {
        match self {
            BandConstant::Slice { source, axis, .. } => {
                let full = Tensor::from_proto(source, store)?;
                band_of(&full, *axis, bands, band)
            }
            BandConstant::Bound { extent, end, .. } => {
                let part = bands
                    .part(band, *extent)
                    .ok_or_else(|| crate::internal!("bands {bands} do not cut {extent}"))?;
                Ok(Tensor::from_i64s(&[if *end {
                    part.end
                } else {
                    part.start
                }]))
            }
        }
    }

    /// The constant's value in the graph.
    pub fn value(&self) -> ValueId {
        match self {
            BandConstant::Slice { value, .. } | BandConstant::Bound { value, .. } => *value,
        }
    }
}

/// One inserted exchange node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub slot: u32,
    pub kind: ExchangeKind,
    pub node: String,
    /// The source node that needed it.
    pub for_node: String,
    pub dtype: DataType,
    pub input_shape: Vec<i64>,
    pub output_shape: Vec<i64>,
    pub axis: Option<usize>,
    pub top: Option<i64>,
    pub bottom: Option<i64>,
    /// A gather's `parts`.
    pub parts: Option<Vec<i64>>,
    /// The exchanged tensor is a model input (possibly through Cast/Identity): its content is
    /// known fresh on every rank at every step, so the runtime never serves it stale.
    pub reads_model_input: bool,
}

/// Whether `v` is a graph input, directly or through a chain of Cast/Identity nodes.
fn is_model_input(g: &Graph, mut v: ValueId) -> bool {
    loop {
        if g.inputs.contains(&v) {
            return true;
        }
        let Some((p, _)) = g.value(v).producer() else {
            return false;
        };
        let node = g.node(p);
        match (node.op_type.as_str(), node.input(0)) {
            ("Cast" | "Identity", Some(x)) if node.domain.is_empty() => v = x,
            _ => return false,
        }
    }
}

/// What `localize` produced besides the graph.
#[derive(Clone, Debug)]
pub struct LocalGraph {
    /// The bands of the group and the band this graph is for.
    pub bands: Bands,
    pub band: usize,
    /// Exchanges in slot order.
    pub exchanges: Vec<Exchange>,
    pub band_constants: Vec<BandConstant>,
    /// Nodes whose gather was skipped (`naive`): types downstream may differ from the full
    /// graph's band types.
    pub skipped_gathers: Vec<NodeId>,
    /// Layout of each graph input and output, by name.
    pub io_layouts: HashMap<String, Layout>,
}

/// See the module documentation.
pub struct Localize;

impl Pass for Localize {
    fn establishes(&self) -> Option<crate::ir::Phase> {
        Some(crate::ir::Phase::Local)
    }
    fn name(&self) -> &'static str {
        "localize"
    }
    fn description(&self) -> &'static str {
        "rewrite into the band-local graph: local shapes, halo/stats/gather exchanges, lowered GroupNorm"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let p = cx
            .partition
            .clone()
            .ok_or_else(|| anyhow!("localize needs the layouts of `partition`"))?;
        let mode = cx.partition_options.mode;
        let local = localize(g, &p, mode, &cx.store, cx.band)?;
        cx.local = Some(local);
        super::verify::reinfer_local_types(g, cx)?;
        Ok(true)
    }
}

/// The layout `partition` gave `v` (values it did not see, inserted since, are replicated).
fn layout_of(g: &Graph, v: ValueId) -> Layout {
    g.value(v).layout.unwrap_or(Layout::Replicated)
}

fn static_type(g: &Graph, v: ValueId) -> Result<TensorType> {
    g.value(v)
        .tensor_type()
        .filter(|t| t.static_dims().is_some())
        .cloned()
        .ok_or_else(|| anyhow!("value `{}` has no static type", g.value(v).name))
}

fn dims(g: &Graph, v: ValueId) -> Result<Vec<i64>> {
    Ok(static_type(g, v)?.static_dims().unwrap_or_default())
}

/// Inserts nodes next to an anchor.
struct Builder {
    anchor: NodeId,
}

impl Builder {
    /// Adds `op(inputs) {attrs}` named `name`, producing a fresh value of type `ty`.
    #[allow(clippy::too_many_arguments)]
    fn op(
        &self,
        g: &mut Graph,
        name: &str,
        op: &str,
        domain: &str,
        inputs: &[ValueId],
        attrs: Vec<AttributeProto>,
        ty: TensorType,
    ) -> Result<ValueId> {
        let out = g.add_value(name, Some(ValueType::Tensor(ty)));
        self.op_into(g, name, op, domain, inputs, attrs, out)?;
        Ok(out)
    }

    /// Adds `op(inputs) {attrs}` named `name`, producing the existing value `out`.
    #[allow(clippy::too_many_arguments)]
    fn op_into(
        &self,
        g: &mut Graph,
        name: &str,
        op: &str,
        domain: &str,
        inputs: &[ValueId],
        attrs: Vec<AttributeProto>,
        out: ValueId,
    ) -> Result<NodeId> {
        let mut node = Node::new(name, op, domain);
        node.attrs = attrs;
        Ok(g.add_node(
            node,
            inputs.iter().map(|&v| Some(v)).collect(),
            vec![Some(out)],
            Some(self.anchor),
        )?)
    }
}

fn i64_const(g: &mut Graph, name: &str, v: &[i64]) -> ValueId {
    g.add_constant(name, Tensor::from_i64s(v).to_proto(""))
}

fn local_dims(full: &[i64], layout: Layout, bands: &Bands, band: usize) -> Result<Vec<i64>> {
    let mut d = full.to_vec();
    if let Layout::Split { axis } = layout
        && let Some(x) = d.get_mut(axis)
    {
        let part = bands
            .part(band, *x)
            .ok_or_else(|| crate::internal!("bands {bands} do not cut an axis of {x}"))?;
        *x = part.end - part.start;
    }
    Ok(d)
}

/// Rewrites `g` into its band-local form (see the module documentation).
pub fn localize(
    g: &mut Graph,
    p: &Partition,
    mode: Mode,
    store: &crate::onnx::ExternalStore,
    band: usize,
) -> Result<LocalGraph> {
    let bands = &p.bands;
    let n = bands.n();
    if band >= n {
        return Err(crate::internal!("band {band} of {n}"));
    }
    let exchange = n > 1 && mode != Mode::Naive;
    let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
    let mut out = LocalGraph {
        bands: bands.clone(),
        band,
        exchanges: Vec::new(),
        band_constants: Vec::new(),
        skipped_gathers: Vec::new(),
        io_layouts: HashMap::new(),
    };
    for &v in g.inputs.iter().chain(&g.outputs) {
        out.io_layouts
            .insert(g.value(v).name.clone(), layout_of(g, v));
    }
    // Full types, before anything is rewritten.
    let full: HashMap<ValueId, TensorType> = g
        .value_ids()
        .filter_map(|v| g.value(v).tensor_type().cloned().map(|t| (v, t)))
        .collect();
    // 1. Local types.
    let split: Vec<(ValueId, usize)> = g
        .value_ids()
        .filter_map(|v| layout_of(g, v).axis().map(|a| (v, a)))
        .collect();
    for (v, axis) in split {
        if let Some(t) = full.get(&v) {
            let d = t
                .static_dims()
                .ok_or_else(|| anyhow!("value `{}` has no static shape", g.value(v).name))?;
            g.value_mut(v).ty = Some(ValueType::Tensor(TensorType::fixed(
                t.elem,
                &local_dims(&d, Layout::Split { axis }, bands, band)?,
            )));
        }
    }
    let mut gathered: HashMap<(ValueId, usize), ValueId> = HashMap::new();
    let mut band_sliced: HashMap<(ValueId, usize), ValueId> = HashMap::new();
    let mut for_node: HashMap<String, String> = HashMap::new();
    let order = g.topo_order()?;
    for id in order {
        let name = g.node(id).name.clone();
        let b = Builder { anchor: id };
        // Gathers of operands.
        for &(node, port, axis) in p.gathers.iter().filter(|x| x.0 == id) {
            let Some(v) = g.node(node).input(port) else {
                continue;
            };
            if !exchange {
                if n > 1 {
                    out.skipped_gathers.push(node);
                }
                continue;
            }
            let y = match gathered.get(&(v, axis)) {
                Some(&y) => y,
                None => {
                    let t = full
                        .get(&v)
                        .cloned()
                        .ok_or_else(|| anyhow!("gathered value has no type"))?;
                    let extent = t
                        .static_dims()
                        .and_then(|d| d.get(axis).copied())
                        .ok_or_else(|| anyhow!("gathered value has no static shape"))?;
                    let parts = bands.parts(extent).ok_or_else(|| {
                        crate::internal!("bands {bands} do not cut the gathered axis ({extent})")
                    })?;
                    let gname = format!("{name}.gather");
                    let y = b.op(
                        g,
                        &gname,
                        ExchangeKind::Gather.op_type(),
                        DOMAIN,
                        &[v],
                        vec![
                            AttributeProto::int(ATTR_AXIS, axis as i64),
                            AttributeProto::ints(ATTR_PARTS, &parts),
                            AttributeProto::int(ATTR_SLOT, 0),
                        ],
                        t,
                    )?;
                    for_node.insert(g.value(y).name.clone(), name.clone());
                    gathered.insert((v, axis), y);
                    y
                }
            };
            g.set_input(node, port, Some(y));
        }
        let needs = p.needs.get(&id).cloned().unwrap_or_default();
        for need in &needs {
            match *need {
                Need::Halo { axis, top, bottom } => {
                    let full_in = g
                        .node(id)
                        .input(0)
                        .and_then(|x| full.get(&x))
                        .and_then(|t| t.static_dims())
                        .ok_or_else(|| anyhow!("node `{name}`: no static data input"))?;
                    halo(
                        g,
                        &b,
                        id,
                        (axis, top, bottom),
                        &full_in,
                        n,
                        mode,
                        exchange,
                        &mut for_node,
                    )
                    .with_context(|| format!("node `{name}`"))?;
                }
                Need::SliceOperand { port, axis } => {
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
                                band_slice(g, &b, &name, port, v, axis, opset, store, &mut out)?;
                            band_sliced.insert((v, axis), y);
                            y
                        }
                    };
                    g.set_input(id, port, Some(y));
                }
                Need::MeanStats => {
                    if !exchange {
                        continue;
                    }
                    let Some(o) = g.node(id).output(0) else {
                        continue;
                    };
                    let t = static_type(g, o)?;
                    let sname = format!("{name}.stats");
                    let y = g.add_value(&sname, Some(ValueType::Tensor(t)));
                    g.replace_all_uses(o, y);
                    b.op_into(
                        g,
                        &sname,
                        ExchangeKind::Stats.op_type(),
                        DOMAIN,
                        &[o],
                        vec![AttributeProto::int(ATTR_SLOT, 0)],
                        y,
                    )?;
                    for_node.insert(sname, name.clone());
                }
                Need::GroupNormStats => {}
            }
        }
        let node = g.node(id);
        if node.domain == INTERNAL_DOMAIN && node.op_type == "GroupNorm" {
            let split = node
                .input(0)
                .map(|x| layout_of(g, x) != Layout::Replicated)
                .unwrap_or(false);
            lower_group_norm(g, id, exchange && split, opset, &mut for_node)
                .with_context(|| format!("lowering GroupNorm `{name}`"))?;
            continue;
        }
        localize_shape_inputs(g, id, opset)?;
    }
    g.remove_dead_nodes();
    g.remove_unused_values();
    // Slots in topological order.
    let mut slot = 0u32;
    for id in g.topo_order()? {
        let node = g.node(id);
        if node.domain != DOMAIN {
            continue;
        }
        let Some(kind) = ExchangeKind::from_op_type(&node.op_type) else {
            return Err(crate::internal!(
                "unknown exchange operator {}",
                node.op_type
            ));
        };
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else {
            return Err(crate::internal!(
                "exchange `{}` is not connected",
                node.name
            ));
        };
        let (tx, ty) = (static_type(g, x)?, static_type(g, y)?);
        let axis = (kind != ExchangeKind::Stats).then(|| node.attr_i(ATTR_AXIS, 0) as usize);
        let (top, bottom) = if kind == ExchangeKind::Halo {
            (
                Some(node.attr_i(ATTR_TOP, 0)),
                Some(node.attr_i(ATTR_BOTTOM, 0)),
            )
        } else {
            (None, None)
        };
        let parts = (kind == ExchangeKind::Gather)
            .then(|| node.attr_ints(ATTR_PARTS).map(<[i64]>::to_vec))
            .flatten();
        out.exchanges.push(Exchange {
            slot,
            kind,
            node: node.name.clone(),
            for_node: for_node
                .get(&g.value(y).name)
                .cloned()
                .unwrap_or_else(|| node.name.clone()),
            dtype: tx.elem,
            input_shape: tx.static_dims().unwrap_or_default(),
            output_shape: ty.static_dims().unwrap_or_default(),
            axis,
            top,
            bottom,
            parts,
            reads_model_input: is_model_input(g, x),
        });
        g.node_mut(id)
            .set_attr(AttributeProto::int(ATTR_SLOT, slot as i64));
        slot += 1;
    }
    let imports = &mut g.shell.opset_import;
    imports.retain(|o| o.domain() != INTERNAL_DOMAIN);
    if !imports.iter().any(|o| o.domain() == DOMAIN) {
        imports.push(OperatorSetIdProto {
            domain: Some(DOMAIN.into()),
            version: Some(VERSION),
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn halo(
    g: &mut Graph,
    b: &Builder,
    id: NodeId,
    (axis, top, bottom): (usize, i64, i64),
    full_in: &[i64],
    n: usize,
    mode: Mode,
    exchange: bool,
    for_node: &mut HashMap<String, String>,
) -> Result<()> {
    if n == 1 {
        return Ok(());
    }
    let name = g.node(id).name.clone();
    let x = g
        .node(id)
        .input(0)
        .ok_or_else(|| anyhow!("no data input"))?;
    let xd = dims(g, x)?;
    let spatial = xd.len() - 2;
    let i = axis - 2;
    // Explicit pads (auto_pad resolved against the full input size).
    let node = g.node(id);
    let auto = node.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let mut pads = node
        .attr_ints("pads")
        .map(<[i64]>::to_vec)
        .unwrap_or_default();
    if pads.len() != 2 * spatial {
        pads = vec![0; 2 * spatial];
    }
    if auto != "NOTSET" {
        let kernel = match node.attr_ints("kernel_shape") {
            Some(k) if !k.is_empty() => k.to_vec(),
            _ => node
                .input(1)
                .map(|w| dims(g, w))
                .transpose()?
                .map(|w| w[2..].to_vec())
                .ok_or_else(|| anyhow!("kernel shape unknown"))?,
        };
        let list = |name: &str| {
            node.attr_ints(name)
                .filter(|v| !v.is_empty())
                .map(<[i64]>::to_vec)
                .unwrap_or(vec![1; spatial])
        };
        let geom = super::ops::conv::ConvGeom {
            kernel,
            strides: list("strides"),
            dilations: list("dilations"),
            pads: pads.clone(),
            auto_pad: auto.clone(),
            ceil_mode: false,
        };
        for k in 0..spatial {
            let (pb, pe) = geom.pads_for(k, full_in[k + 2]);
            pads[k] = pb;
            pads[k + spatial] = pe;
        }
    }
    if exchange && top + bottom > 0 {
        let mut t = static_type(g, x)?;
        if let Some(d) = t.shape.as_mut() {
            d[axis] = crate::ir::Dim::Fixed(xd[axis] + top + bottom);
        }
        let hname = format!("{name}.halo");
        let y = b.op(
            g,
            &hname,
            ExchangeKind::Halo.op_type(),
            DOMAIN,
            &[x],
            vec![
                AttributeProto::int(ATTR_AXIS, axis as i64),
                AttributeProto::int(ATTR_TOP, top),
                AttributeProto::int(ATTR_BOTTOM, bottom),
                AttributeProto::int(ATTR_SLOT, 0),
            ],
            t,
        )?;
        for_node.insert(g.value(y).name.clone(), name);
        g.set_input(id, 0, Some(y));
        pads[i] = 0;
        pads[i + spatial] = 0;
    } else if mode == Mode::Naive {
        // Zero rows instead of the neighbours' rows.
        pads[i] = top;
        pads[i + spatial] = bottom;
    } else {
        pads[i] = 0;
        pads[i + spatial] = 0;
    }
    let node = g.node_mut(id);
    node.attrs.retain(|a| a.name() != "auto_pad");
    node.set_attr(AttributeProto::ints("pads", &pads));
    Ok(())
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
    if super::ops::is_constant(g, v) {
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

/// Band `r`'s part of `t` along `axis`.
pub fn band_of(t: &Tensor, axis: usize, bands: &Bands, r: usize) -> Result<Tensor> {
    let shape = t.shape();
    let extent = *shape
        .get(axis)
        .ok_or_else(|| crate::internal!("axis {axis} of a tensor of shape {shape:?}"))?;
    let part = bands
        .part(r, extent as i64)
        .ok_or_else(|| crate::internal!("bands {bands} do not cut {extent}"))?;
    let picks: Vec<Vec<usize>> = shape
        .iter()
        .enumerate()
        .map(|(k, &d)| {
            if k == axis {
                (part.start as usize..part.end as usize).collect()
            } else {
                (0..d).collect()
            }
        })
        .collect();
    Ok(t.select(&picks)?)
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
                .map(|&x| super::ops::norm_axis(x, od.len()))
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
                    super::ops::shape::reshape_dims(
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
            vec![AttributeProto::int("slot", 0)],
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
        } else if super::ops::is_constant(g, p) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_graphs::{model, node, vi};

    #[test]
    fn band_of_takes_the_band_rows() -> Result<()> {
        let t = Tensor::from_vec(&[1, 4, 2], (0..8).map(|x| x as f32).collect())?;
        let b = band_of(&t, 1, &Bands::from_heights(&[1, 1])?, 1)?;
        assert_eq!(b.to_f64s(), vec![4.0, 5.0, 6.0, 7.0]);
        // Unequal bands: 3 rows of 4 and 1.
        let b = band_of(&t, 1, &Bands::from_heights(&[3, 1])?, 0)?;
        assert_eq!(b.to_f64s(), (0..6).map(f64::from).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn conv_gets_a_halo_and_no_padding() -> Result<()> {
        let f = DataType::FLOAT;
        let mut conv = node("Conv", "conv", &["x", "w"], &["y"]);
        conv.attribute
            .push(AttributeProto::ints("pads", &[1, 1, 1, 1]));
        let w = {
            let mut t = Tensor::zeros(f, &[4, 4, 3, 3])?.to_proto("w");
            t.name = Some("w".into());
            t
        };
        let mut g = model(
            vec![conv],
            vec![vi("x", f, &["1", "4", "8", "8"])],
            vec![vi("y", f, &["?", "?", "?", "?"])],
            vec![w],
            17,
        );
        let mut cx = PassContext::new(crate::onnx::ExternalStore::new(std::env::temp_dir()));
        cx.partition_options.bands = crate::passes::BandRequest::Count(2);
        cx.partition_options.mode = Mode::Sync;
        cx.options.verify = true;
        crate::passes::PassManager::from_names(&["fold-constants", "partition", "localize"])?
            .run(&mut g, &mut cx)?;
        assert_eq!(g.phase, crate::ir::Phase::Local);
        let dump = g.dump();
        assert!(
            dump.contains("conv.halo = dfc:DfcHaloExchange(%0) {axis=2, top=1, bottom=1, slot=0} -> %3: f32[1,4,6,8]"),
            "{dump}"
        );
        assert!(dump.contains("pads=[0,1,0,1]"), "{dump}");
        assert!(dump.contains("output %2 y: f32[1,4,4,8]"), "{dump}");
        let local = cx.local.expect("local graph");
        assert_eq!(local.exchanges.len(), 1);
        assert_eq!(local.exchanges[0].for_node, "conv");
        Ok(())
    }
}
