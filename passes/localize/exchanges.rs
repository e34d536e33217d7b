//! `insert-exchanges`: the exchange operators of DESIGN §3 where the partition asked for
//! them — halos before convolutions and pools that read neighbouring rows (their padding on
//! the split axis becomes 0; `naive`: zero rows instead), gathers of self-attention's keys and
//! values (`naive`: skipped, attention stays band-local), statistics all-reduces after means
//! over the split axis — then slots numbered in topological order. Establishes the local
//! phase; its types are settled by re-inference (values downstream of a skipped gather take
//! the inferred type).

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};

use super::{Builder, Exchange, context, dims, exchanging, full_dims, is_model_input, static_type};
use crate::contract::exchange::{
    ATTR_AXIS, ATTR_BOTTOM, ATTR_PARTS, ATTR_SLOT, ATTR_TOP, DOMAIN, VERSION,
};
use crate::ir::{Graph, NodeId, Phase, TensorType, ValueId, ValueType};
use crate::onnx::proto::{AttributeProto, OperatorSetIdProto};
use crate::passes::ops::layout::Need;
use crate::passes::ops::norm::INTERNAL_DOMAIN;
use crate::passes::{Pass, PassContext};
use crate::plan::{ExchangeKind, Mode};

/// See the module documentation.
pub struct InsertExchanges;

impl Pass for InsertExchanges {
    fn establishes(&self) -> Option<Phase> {
        Some(Phase::Local)
    }
    fn name(&self) -> &'static str {
        "insert-exchanges"
    }
    fn description(&self) -> &'static str {
        "insert halo / gather / statistics exchanges and number their slots: the band-local graph"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let (p, mode, band) = context(cx)?;
        let exchange = exchanging(&p, mode);
        let n = p.n();
        let bands = p.bands.clone();
        let mut out = cx
            .local
            .take()
            .ok_or_else(|| anyhow!("insert-exchanges runs after local-types"))?;
        let mut for_node = std::mem::take(&mut out.for_node);
        let mut gathered: HashMap<(ValueId, usize), ValueId> = HashMap::new();
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
                        let full = full_dims(g, v, &bands, band)?;
                        let elem = static_type(g, v)?.elem;
                        let extent = full[axis];
                        let t = TensorType::fixed(elem, &full);
                        let parts = bands.parts(extent).ok_or_else(|| {
                            crate::internal!(
                                "bands {bands} do not cut the gathered axis ({extent})"
                            )
                        })?;
                        // One gather keeps the plain name; several (an `Attention` node's K
                        // and V) are named by port, since ONNX node names must be unique.
                        let gname = if p.gathers.iter().filter(|x| x.0 == id).count() > 1 {
                            format!("{name}.gather{port}")
                        } else {
                            format!("{name}.gather")
                        };
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
                        let x = g
                            .node(id)
                            .input(0)
                            .ok_or_else(|| anyhow!("node `{name}`: no data input"))?;
                        let full_in = full_dims(g, x, &bands, band)?;
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
                    Need::SliceOperand { .. } => {}
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
        out.for_node = for_node;
        cx.local = Some(out);
        crate::passes::verify::reinfer_local_types(g, cx)?;
        Ok(true)
    }
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
        let geom = crate::passes::ops::conv::ConvGeom {
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
