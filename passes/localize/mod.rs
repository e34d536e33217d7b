//! From the partitioned graph to the band-local graph every rank runs, in three passes (one
//! file each), all building the local graph of one band ([`PassContext::band`]; bands may
//! differ in height, so unequal bands get graphs of their own):
//!
//! 1. [`local_types`] (`local-types`): every split value's type becomes the full type with its
//!    band's part on the split axis; a replicated operand with the full extent on the split
//!    axis is replaced by its band (constants by a per-band constant, [`BandConstant`], filled
//!    per rank at emission; other values by a `Slice` whose bounds are per-band constants);
//!    shape-carrying constants (Reshape and Expand shapes, Resize sizes) get local sizes.
//! 2. [`group_norm`] (`lower-group-norm`): every canonical GroupNorm is lowered to ordinary
//!    operators: statistics in fp32 (`Reshape [B,G,(C/G)·Hl·W]`, `ReduceMean` of x and x·x),
//!    stacked into `s[B,G,2]`, `DfcStatsAllReduce(s)` when split (not in `naive`),
//!    `var = max(E[x²] − mean², 0)`, `(x − mean) / sqrt(var + eps)`, reshaped and cast back,
//!    then `· γ + β`; unsplit, torch's Reshape → InstanceNormalization → Reshape form.
//! 3. [`exchanges`] (`insert-exchanges`): a conv or pool that reads rows of neighbouring bands
//!    reads `DfcHaloExchange(x) {axis, top, bottom}` instead of `x`, its padding on that axis
//!    0 (`naive`: no exchange, the padding becomes `top`/`bottom` zero rows); an operand to
//!    gather (self-attention's keys and values) is read through
//!    `DfcPatchAllGather(x) {axis, parts}` (`naive`: not gathered; attention stays band-local);
//!    a ReduceMean over the split axis is followed by `DfcStatsAllReduce`; exchange slots are
//!    numbered in topological order. It establishes the local phase, whose invariants the
//!    phase verifier checks.
//!
//! Inserted nodes are named `{original}.halo`, `{original}.gather`, `{original}.stats`, …. With
//! one band nothing is exchanged and the graph computes exactly what the original does. What
//! the passes find besides the graph accumulates in [`LocalGraph`] (`PassContext::local`).
//!
//! **Invariant:** after `insert-exchanges` the graph is the local graph of the band asked for
//! (per-band constants hold that band's values), no internal operator remains, every exchange
//! node has a unique `slot`, and the model imports domain `dfc` version 1. The passes reject
//! nothing the partition accepted, except a per-band `Slice` in a model older than opset 10.

pub mod exchanges;
pub mod group_norm;
pub mod local_types;

pub use exchanges::InsertExchanges;
pub use group_norm::LowerGroupNorm;
pub use local_types::LocalTypes;

use std::collections::HashMap;

use anyhow::{Result, anyhow};

use super::PassContext;
use super::ops::layout::Layout;
use super::partition::Partition;
use crate::contract::Bands;
use crate::ir::{DataType, Graph, Node, NodeId, TensorType, ValueId, ValueType};
use crate::onnx::proto::{AttributeProto, TensorProto};
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

/// What the localizing passes found besides the graph.
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
    /// The source node each inserted exchange's output serves, by value name.
    pub for_node: HashMap<String, String>,
}

/// The partition, mode and band the localizing passes work from.
fn context(cx: &PassContext) -> Result<(Partition, Mode, usize)> {
    let p = cx
        .partition
        .clone()
        .ok_or_else(|| anyhow!("localizing needs the layouts of `partition`"))?;
    Ok((p, cx.partition_options.mode, cx.band))
}

/// Whether exchanges are inserted at all: more than one band, and not `naive`.
fn exchanging(p: &Partition, mode: Mode) -> bool {
    p.n() > 1 && mode != Mode::Naive
}

/// The full-size dims of `v`, whose graph type is already its band's (a split value's part is
/// scaled back by the band's share of the rows, which is exact).
fn full_dims(g: &Graph, v: ValueId, bands: &Bands, band: usize) -> Result<Vec<i64>> {
    let mut d = dims(g, v)?;
    if let Some(axis) = layout_of(g, v).axis() {
        let rows = bands.heights()[band];
        d[axis] = d[axis] * bands.height() / rows;
    }
    Ok(d)
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
        crate::passes::PassManager::from_names(&[
            "fold-constants",
            "partition",
            "local-types",
            "lower-group-norm",
            "insert-exchanges",
        ])?
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
