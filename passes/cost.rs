//! What a graph costs to run: FLOPs and bytes of every node from the op rows' cost rules
//! ([`crate::ops::def::OpDef::cost_of`]), and the memory it needs (its weights, and an upper
//! bound of its live activations over the topological order).
//!
//! Both read only types and attributes: no constant is decoded, no weight is read.

use std::collections::HashMap;

use anyhow::Result;

use crate::ir::{Graph, NodeId, ValueId};
use crate::onnx::ExternalStore;
use crate::ops::def::{Cost, default_cost, tensor_bytes};
use crate::ops::{OpCx, default_opset, registry};

/// The cost of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeCost {
    pub node: String,
    pub op_type: String,
    pub cost: Cost,
    /// Whether the cost came from a rule (`false`: the operator is unknown to dfc or a shape is
    /// not static, and the cost is what could be counted of its bytes, possibly nothing).
    pub known: bool,
}

/// The cost of every node of a graph, in topological order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphCost {
    pub nodes: Vec<NodeCost>,
}

impl GraphCost {
    /// The sum over every node.
    pub fn total(&self) -> Cost {
        self.nodes
            .iter()
            .fold(Cost::default(), |acc, n| acc + n.cost)
    }

    /// Nodes whose cost no rule could compute.
    pub fn unknown(&self) -> usize {
        self.nodes.iter().filter(|n| !n.known).count()
    }
}

/// Counts the FLOPs and bytes of every node of `g` (types as the graph holds them; constants
/// are never read).
pub fn graph_cost(g: &Graph) -> Result<GraphCost> {
    let store = ExternalStore::new(std::env::temp_dir());
    let opset = default_opset(g).unwrap_or(1);
    let order = g.topo_order()?;
    let mut nodes = Vec::with_capacity(order.len());
    for id in order {
        let node = g.node(id);
        let cx = OpCx::new(g, &store, node, opset, 0);
        let outputs: Option<Vec<_>> = node
            .outputs()
            .iter()
            .flatten()
            .map(|&v| g.value(v).tensor_type().cloned())
            .collect();
        let rule = registry::lookup(&node.domain, &node.op_type);
        let (cost, known) = match (outputs, rule) {
            (Some(outs), Some(def)) => match def.cost_of(&cx, &outs) {
                Ok(c) => (c, true),
                Err(_) => (default_cost(&cx, &outs).unwrap_or_default(), false),
            },
            (Some(outs), None) => (default_cost(&cx, &outs).unwrap_or_default(), false),
            (None, _) => (Cost::default(), false),
        };
        nodes.push(NodeCost {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            cost,
            known,
        });
    }
    Ok(GraphCost { nodes })
}

/// The memory one graph needs on its device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphMemory {
    /// Bytes of every initializer (weights and constants) the graph references.
    pub weights_bytes: u64,
    /// The largest sum of live activations at any point of the topological order: a value is
    /// live from its producer (graph inputs from the start) to its last consumer (graph
    /// outputs to the end). An upper bound for an executor that frees values as it goes,
    /// ignoring in-place reuse and workspace.
    pub activation_peak_bytes: u64,
    /// Bytes of every activation (no reuse at all): the bound when nothing is freed.
    pub activation_sum_bytes: u64,
}

/// The weights and activation memory of `g` (types only; nothing is read).
pub fn graph_memory(g: &Graph) -> Result<GraphMemory> {
    let bytes = |v: ValueId| -> u64 {
        g.value(v)
            .tensor_type()
            .and_then(tensor_bytes)
            .map_or(0, |b| b as u64)
    };
    let mut weights = 0u64;
    for v in g.value_ids() {
        if g.value(v).init.is_some() {
            weights += bytes(v);
        }
    }
    let order = g.topo_order()?;
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let end = order.len();
    // Births and deaths per step of the order: a value dies after its last use.
    let mut born = vec![0u64; end + 1];
    let mut dies = vec![0u64; end + 1];
    let mut sum = 0u64;
    let mut track = |v: ValueId, start: usize| {
        let b = bytes(v);
        if b == 0 {
            return;
        }
        let last = if g.outputs.contains(&v) {
            end
        } else {
            g.value(v)
                .uses()
                .iter()
                .filter_map(|(n, _)| position.get(n).copied())
                .max()
                .unwrap_or(start)
        };
        born[start] += b;
        dies[last.max(start)] += b;
        sum += b;
    };
    for &v in &g.inputs {
        if g.value(v).init.is_none() {
            track(v, 0);
        }
    }
    for (i, &n) in order.iter().enumerate() {
        for &v in g.node(n).outputs().iter().flatten() {
            track(v, i);
        }
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for i in 0..=end {
        live += born[i];
        peak = peak.max(live);
        live -= dies[i].min(live);
    }
    Ok(GraphMemory {
        weights_bytes: weights,
        activation_peak_bytes: peak,
        activation_sum_bytes: sum,
    })
}
