//! The graph IR: an ONNX graph held in a petgraph [`StableGraph`], with values as first-class
//! objects.
//!
//! Nodes are operators; every edge carries the [`ValueId`] it transports plus the producer's
//! output port and the consumer's input port, so multi-input and multi-output operators (and a
//! value used twice by one node, as in `Mul(x, x)`) are exact. Graph inputs and initializers are
//! values without a producer. Indices of nodes survive removals ([`StableGraph`]); raw petgraph
//! indices never leave this module.
//!
//! Everything of the source model that the IR does not model (opset imports, functions,
//! metadata, per-node doc strings, sparse initializers, …) is carried unchanged in
//! [`Graph::shell`] and [`Node::extra`], so [`Graph::from_model`] → [`Graph::to_model`] loses
//! no field.
//!
//! **Invariant:** every value has at most one producer; every node input port refers to a live
//! value; the edge set equals the (producer, consumer) pairs implied by node inputs; the graph
//! is acyclic. [`Graph::verify`] checks all of it.

mod dump;
mod phase;
mod types;
mod verify;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use petgraph::Direction;
use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

use crate::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};

pub use phase::{Layout, Phase};
pub use types::{DataType, Dim, TensorType, ValueType};

/// Identifies a node; `Display` prints `n{index}` as in the text dump.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(NodeIndex<u32>);

/// Identifies a value (a tensor name in ONNX); `Display` prints `%{index}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ValueId(u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0.index())
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

impl ValueId {
    /// Position of the value in creation order (see [`Graph::value_ids`]).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What flows along an edge: which value, from which output port to which input port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub value: ValueId,
    pub src_port: usize,
    pub dst_port: usize,
}

/// A tensor (or other ONNX value) of the graph.
#[derive(Clone, Debug)]
pub struct Value {
    /// The ONNX name; unique in the graph.
    pub name: String,
    /// Known type, if any.
    pub ty: Option<ValueType>,
    /// Constant content: an initializer of the source model or a folded constant.
    pub init: Option<TensorProto>,
    /// The original `ValueInfoProto` (doc string, metadata, denotations) when the model had one.
    pub info: Option<Box<ValueInfoProto>>,
    /// Where the value lives once the graph is [`Phase::Partitioned`] (`None` before).
    pub layout: Option<Layout>,
    producer: Option<(NodeId, usize)>,
    uses: Vec<(NodeId, usize)>,
    live: bool,
}

impl Value {
    /// The node and output port that produce this value (`None` for inputs and initializers).
    pub fn producer(&self) -> Option<(NodeId, usize)> {
        self.producer
    }
    /// Every (node, input port) reading this value, in no particular order.
    pub fn uses(&self) -> &[(NodeId, usize)] {
        &self.uses
    }
    /// The tensor type, when the value is a tensor of known element type.
    pub fn tensor_type(&self) -> Option<&TensorType> {
        match &self.ty {
            Some(ValueType::Tensor(t)) => Some(t),
            _ => None,
        }
    }
}

/// An operator node. Inputs and outputs are positional; `None` is an omitted optional slot.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// Operator domain; `""` is the default ONNX domain.
    pub domain: String,
    pub attrs: Vec<AttributeProto>,
    /// Fields of the source `NodeProto` the IR does not interpret (doc string, overload,
    /// metadata, device configurations); input, output and attribute lists are left empty.
    pub extra: Box<NodeProto>,
    /// Sort key for deterministic order: `(original index, 0)` for source nodes, `(anchor, k)`
    /// for the k-th node inserted next to the source node `anchor`.
    pub order: (u32, u32),
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
}

impl Node {
    /// A new node; connect it with [`Graph::add_node`].
    pub fn new(
        name: impl Into<String>,
        op_type: impl Into<String>,
        domain: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            op_type: op_type.into(),
            domain: domain.into(),
            attrs: Vec::new(),
            extra: Box::default(),
            order: (u32::MAX, 0),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }
    /// Input at `port`, if connected.
    pub fn input(&self, port: usize) -> Option<ValueId> {
        self.inputs.get(port).copied().flatten()
    }
    /// Output at `port`, if present.
    pub fn output(&self, port: usize) -> Option<ValueId> {
        self.outputs.get(port).copied().flatten()
    }
    /// Attribute by name.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.iter().find(|a| a.name() == name)
    }
    /// Integer attribute, or `default`.
    pub fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }
    /// Float attribute, or `default`.
    pub fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }
    /// Integer-list attribute (`None` when absent).
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }
    /// String attribute (lossy UTF-8), or `None`.
    pub fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, attr: AttributeProto) {
        match self.attrs.iter_mut().find(|a| a.name == attr.name) {
            Some(slot) => *slot = attr,
            None => self.attrs.push(attr),
        }
    }
}

/// Errors of building or checking the IR.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("value `{0}` is produced more than once")]
    DuplicateProducer(String),
    #[error(
        "node `{node}` ({op}) reads `{value}`, which is neither produced by a node nor a graph input or initializer"
    )]
    Undefined {
        node: String,
        op: String,
        value: String,
    },
    #[error("graph output `{0}` is never produced")]
    UndefinedOutput(String),
    #[error("the graph has a cycle through node `{0}`")]
    Cycle(String),
    #[error("inconsistent graph: {0}")]
    Inconsistent(String),
}

/// An ONNX model as a graph, plus everything needed to write it back.
#[derive(Clone, Debug)]
pub struct Graph {
    g: StableGraph<Node, Edge, petgraph::Directed, u32>,
    values: Vec<Value>,
    by_name: HashMap<String, ValueId>,
    /// Graph inputs, in order (initializers listed as inputs by old exporters included).
    pub inputs: Vec<ValueId>,
    /// Graph outputs, in order.
    pub outputs: Vec<ValueId>,
    /// The source model with node, initializer, input, output and value-info lists emptied:
    /// opsets, functions, metadata, sparse initializers and all other fields, unchanged.
    pub shell: ModelProto,
    /// The compilation phase the graph has reached.
    pub phase: Phase,
    next_order: BTreeMap<u32, u32>,
}

impl Graph {
    /// Builds the IR from a decoded model; the model's tensors are moved, not copied.
    pub fn from_model(mut model: ModelProto) -> Result<Self, IrError> {
        let mut gp = model.graph.take().ok_or(IrError::NoGraph)?;
        let nodes = std::mem::take(&mut gp.node);
        let initializers = std::mem::take(&mut gp.initializer);
        let inputs = std::mem::take(&mut gp.input);
        let outputs = std::mem::take(&mut gp.output);
        let value_info = std::mem::take(&mut gp.value_info);
        model.graph = Some(gp);
        // Every value is an input, an initializer or a node output (value infos only annotate
        // them): reserve once instead of growing through a large model.
        let n_values =
            inputs.len() + initializers.len() + nodes.iter().map(|n| n.output.len()).sum::<usize>();
        let n_edges = nodes.iter().map(|n| n.input.len()).sum::<usize>();
        let mut graph = Graph {
            g: StableGraph::with_capacity(nodes.len(), n_edges),
            values: Vec::with_capacity(n_values),
            by_name: HashMap::with_capacity(n_values),
            inputs: Vec::new(),
            outputs: Vec::new(),
            shell: model,
            phase: Phase::Source,
            next_order: BTreeMap::new(),
        };
        for info in inputs {
            let id = graph.intern(info.name());
            graph.inputs.push(id);
            graph.attach_info(id, info);
        }
        for init in initializers {
            let id = graph.intern(init.name());
            let v = &mut graph.values[id.index()];
            if v.ty.is_none() {
                v.ty = Some(ValueType::Tensor(TensorType::of_initializer(&init)));
            }
            v.init = Some(init);
        }
        let mut pending_outputs = Vec::new();
        for info in outputs {
            pending_outputs.push(info);
        }
        for (i, mut np) in nodes.into_iter().enumerate() {
            let mut node = Node::new(np.name(), np.op_type(), np.domain());
            node.attrs = std::mem::take(&mut np.attribute);
            let ins = std::mem::take(&mut np.input);
            let outs = std::mem::take(&mut np.output);
            node.extra = Box::new(np);
            node.order = (i as u32, 0);
            let inputs: Vec<Option<ValueId>> = ins
                .iter()
                .map(|n| (!n.is_empty()).then(|| graph.intern(n)))
                .collect();
            let outputs: Vec<Option<ValueId>> = outs
                .iter()
                .map(|n| (!n.is_empty()).then(|| graph.intern(n)))
                .collect();
            for out in outputs.iter().flatten() {
                if graph.values[out.index()].producer.is_some()
                    || graph.values[out.index()].init.is_some()
                {
                    return Err(IrError::DuplicateProducer(
                        graph.values[out.index()].name.clone(),
                    ));
                }
            }
            graph.insert_node(node, inputs, outputs);
        }
        for info in value_info {
            if let Some(&id) = graph.by_name.get(info.name()) {
                graph.attach_info(id, info);
            } else {
                // Value info for a name no node uses: keep it so nothing is lost.
                let id = graph.intern(info.name());
                graph.attach_info(id, info);
            }
        }
        for info in pending_outputs {
            let id = graph.intern(info.name());
            graph.outputs.push(id);
            graph.attach_info(id, info);
        }
        Ok(graph)
    }

    fn attach_info(&mut self, id: ValueId, info: ValueInfoProto) {
        let v = &mut self.values[id.index()];
        if let Some(ty) = info.r#type.as_ref().map(ValueType::from_proto) {
            v.ty = Some(ty);
        }
        if v.info.is_none() {
            v.info = Some(Box::new(info));
        }
    }

    fn intern(&mut self, name: &str) -> ValueId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        self.push_value(name.to_string(), None)
    }

    fn push_value(&mut self, name: String, ty: Option<ValueType>) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.by_name.insert(name.clone(), id);
        self.values.push(Value {
            name,
            ty,
            init: None,
            info: None,
            layout: None,
            producer: None,
            uses: Vec::new(),
            live: true,
        });
        id
    }

    fn insert_node(
        &mut self,
        node: Node,
        inputs: Vec<Option<ValueId>>,
        outputs: Vec<Option<ValueId>>,
    ) -> NodeId {
        let idx = self.g.add_node(node);
        let id = NodeId(idx);
        for (port, out) in outputs.iter().enumerate() {
            if let Some(v) = out {
                self.values[v.index()].producer = Some((id, port));
                // Consumers seen earlier (graphs out of topological order) get their edges now.
                let uses = self.values[v.index()].uses.clone();
                for (user, dst_port) in uses {
                    self.g.add_edge(
                        idx,
                        user.0,
                        Edge {
                            value: *v,
                            src_port: port,
                            dst_port,
                        },
                    );
                }
            }
        }
        for (port, inp) in inputs.iter().enumerate() {
            if let Some(v) = inp {
                self.values[v.index()].uses.push((id, port));
                if let Some((p, src_port)) = self.values[v.index()].producer {
                    self.g.add_edge(
                        p.0,
                        idx,
                        Edge {
                            value: *v,
                            src_port,
                            dst_port: port,
                        },
                    );
                }
            }
        }
        let n = &mut self.g[idx];
        n.inputs = inputs;
        n.outputs = outputs;
        id
    }

    /// Adds a fresh value with a name derived from `hint` (made unique).
    pub fn add_value(&mut self, hint: &str, ty: Option<ValueType>) -> ValueId {
        let mut name = hint.to_string();
        let mut k = 1;
        while self.by_name.contains_key(&name) {
            name = format!("{hint}.{k}");
            k += 1;
        }
        self.push_value(name, ty)
    }

    /// Adds a constant value (an initializer) holding `tensor`; its name is made unique.
    pub fn add_constant(&mut self, hint: &str, mut tensor: TensorProto) -> ValueId {
        let ty = ValueType::Tensor(TensorType::of_initializer(&tensor));
        let id = self.add_value(hint, Some(ty));
        tensor.name = Some(self.values[id.index()].name.clone());
        self.values[id.index()].init = Some(tensor);
        id
    }

    /// Adds `node` reading `inputs` and producing `outputs` (values not produced elsewhere).
    /// Inserted nodes are ordered after the source node `anchor` (or at the end).
    pub fn add_node(
        &mut self,
        mut node: Node,
        inputs: Vec<Option<ValueId>>,
        outputs: Vec<Option<ValueId>>,
        anchor: Option<NodeId>,
    ) -> Result<NodeId, IrError> {
        for out in outputs.iter().flatten() {
            let v = &self.values[out.index()];
            if v.producer.is_some() || v.init.is_some() {
                return Err(IrError::DuplicateProducer(v.name.clone()));
            }
        }
        let base = match anchor {
            Some(a) => self.g[a.0].order.0,
            None => u32::MAX,
        };
        let k = self.next_order.entry(base).or_insert(0);
        *k += 1;
        node.order = (base, *k);
        Ok(self.insert_node(node, inputs, outputs))
    }

    /// Removes a node; its outputs become unproduced (they must be unused or re-produced).
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.g.remove_node(id.0)?;
        for (port, v) in node.inputs.iter().enumerate() {
            if let Some(v) = v {
                self.values[v.index()]
                    .uses
                    .retain(|&(n, p)| !(n == id && p == port));
            }
        }
        for v in node.outputs.iter().flatten() {
            self.values[v.index()].producer = None;
        }
        Some(node)
    }

    /// Connects input `port` of `node` to `value` (or disconnects it with `None`).
    pub fn set_input(&mut self, node: NodeId, port: usize, value: Option<ValueId>) {
        if let Some(old) = self.g[node.0].inputs.get(port).copied().flatten() {
            self.values[old.index()]
                .uses
                .retain(|&(n, p)| !(n == node && p == port));
            let stale: Vec<EdgeIndex<u32>> = self
                .g
                .edges_directed(node.0, Direction::Incoming)
                .filter(|e| e.weight().dst_port == port)
                .map(|e| e.id())
                .collect();
            for e in stale {
                self.g.remove_edge(e);
            }
        }
        let n = &mut self.g[node.0];
        if n.inputs.len() <= port {
            n.inputs.resize(port + 1, None);
        }
        n.inputs[port] = value;
        if let Some(v) = value {
            self.values[v.index()].uses.push((node, port));
            if let Some((p, src_port)) = self.values[v.index()].producer {
                self.g.add_edge(
                    p.0,
                    node.0,
                    Edge {
                        value: v,
                        src_port,
                        dst_port: port,
                    },
                );
            }
        }
    }

    /// Redirects every use of `old` (node inputs and graph outputs) to `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        let uses = self.values[old.index()].uses.clone();
        for (node, port) in uses {
            self.set_input(node, port, Some(new));
        }
        for out in &mut self.outputs {
            if *out == old {
                *out = new;
            }
        }
    }

    /// Removes nodes whose outputs reach no graph output; returns how many were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut removed = 0;
        loop {
            let dead: Vec<NodeId> = self
                .node_ids()
                .filter(|&n| {
                    self.g[n.0].outputs.iter().flatten().all(|v| {
                        self.values[v.index()].uses.is_empty() && !self.outputs.contains(v)
                    })
                })
                .collect();
            if dead.is_empty() {
                return removed;
            }
            for n in dead {
                self.remove_node(n);
                removed += 1;
            }
        }
    }

    /// Drops initializers and dangling values that nothing reads any more.
    pub fn remove_unused_values(&mut self) {
        for i in 0..self.values.len() {
            let id = ValueId(i as u32);
            let v = &self.values[i];
            if v.live
                && v.uses.is_empty()
                && v.producer.is_none()
                && !self.inputs.contains(&id)
                && !self.outputs.contains(&id)
            {
                let v = &mut self.values[i];
                v.live = false;
                v.init = None;
                self.by_name.remove(&v.name);
            }
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.0]
    }
    pub fn contains_node(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }
    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.index()]
    }
    /// Looks a value up by its ONNX name.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }
    /// The input dfc cuts into bands (a UNet's latent `sample`): the first graph input that is
    /// not an initializer and is a rank-4 floating-point tensor. Every part of dfc that needs
    /// it (specialization, partition, CFG batch halving, inspection) asks here.
    pub fn spatial_input(&self) -> Option<ValueId> {
        self.inputs.iter().copied().find(|&v| {
            self.value(v).init.is_none()
                && self
                    .value(v)
                    .tensor_type()
                    .is_some_and(|t| t.elem.is_float() && t.rank() == Some(4))
        })
    }

    /// The name of the [spatial input](Self::spatial_input)'s batch dimension when it is
    /// symbolic (`batch` in a typical dynamic export).
    pub fn spatial_batch_symbol(&self) -> Option<String> {
        let t = self.value(self.spatial_input()?).tensor_type()?;
        match t.shape.as_ref()?.first()? {
            Dim::Symbol(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Live values in creation order (inputs, initializers, then node outputs in source order).
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.values.len() as u32)
            .map(ValueId)
            .filter(|v| self.values[v.index()].live)
    }
    /// Node ids in unspecified order; use [`Graph::topo_order`] for a deterministic one.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices().map(NodeId)
    }
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }
    /// Nodes whose outputs `node` reads (one entry per edge).
    pub fn predecessors(&self, node: NodeId) -> impl Iterator<Item = (NodeId, Edge)> + '_ {
        self.g
            .edges_directed(node.0, Direction::Incoming)
            .map(|e| (NodeId(e.source()), *e.weight()))
    }
    /// Nodes reading outputs of `node` (one entry per edge).
    pub fn successors(&self, node: NodeId) -> impl Iterator<Item = (NodeId, Edge)> + '_ {
        self.g
            .edges_directed(node.0, Direction::Outgoing)
            .map(|e| (NodeId(e.target()), *e.weight()))
    }

    /// Topological order that is deterministic: among ready nodes, the smallest
    /// [`Node::order`] goes first, so a source graph keeps its own order.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        // In-degrees by node index (a stable graph's indices stay below its bound).
        let mut indeg = vec![0usize; petgraph::visit::NodeIndexable::node_bound(&self.g)];
        let mut heap = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indeg[n.index()] = d;
            if d == 0 {
                heap.push(Reverse((self.g[n].order, n.index())));
            }
        }
        let mut out = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse((_, i))) = heap.pop() {
            let n = NodeIndex::new(i);
            out.push(NodeId(n));
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = &mut indeg[e.target().index()];
                *d -= 1;
                if *d == 0 {
                    heap.push(Reverse((self.g[e.target()].order, e.target().index())));
                }
            }
        }
        if out.len() != self.g.node_count() {
            let stuck = self
                .g
                .node_indices()
                .filter(|n| indeg[n.index()] > 0)
                .min_by_key(|n| self.g[*n].order)
                .map(|n| self.g[n].name.clone())
                .unwrap_or_default();
            return Err(IrError::Cycle(stuck));
        }
        Ok(out)
    }

    fn value_info(&self, id: ValueId) -> ValueInfoProto {
        let v = &self.values[id.index()];
        let mut info = v.info.as_deref().cloned().unwrap_or_default();
        info.name = Some(v.name.clone());
        if let Some(ty) = &v.ty {
            let denotation = info.r#type.as_ref().and_then(|t| t.denotation.clone());
            let mut tp = ty.to_proto(info.r#type.as_ref());
            tp.denotation = denotation;
            info.r#type = Some(tp);
        }
        info
    }

    /// Writes the graph back as a model: nodes in [`Graph::topo_order`], initializers and
    /// value infos in value order, everything in [`Graph::shell`] unchanged.
    pub fn to_model(&self) -> Result<ModelProto, IrError> {
        let mut model = self.shell.clone();
        let mut gp: GraphProto = model.graph.take().unwrap_or_default();
        for id in self.topo_order()? {
            let n = &self.g[id.0];
            let mut np = (*n.extra).clone();
            np.name = (!n.name.is_empty() || np.name.is_some()).then(|| n.name.clone());
            np.op_type = Some(n.op_type.clone());
            np.domain = (!n.domain.is_empty() || np.domain.is_some()).then(|| n.domain.clone());
            np.attribute = n.attrs.clone();
            np.input = n
                .inputs
                .iter()
                .map(|v| {
                    v.map(|v| self.values[v.index()].name.clone())
                        .unwrap_or_default()
                })
                .collect();
            np.output = n
                .outputs
                .iter()
                .map(|v| {
                    v.map(|v| self.values[v.index()].name.clone())
                        .unwrap_or_default()
                })
                .collect();
            gp.node.push(np);
        }
        gp.input = self.inputs.iter().map(|&v| self.value_info(v)).collect();
        gp.output = self.outputs.iter().map(|&v| self.value_info(v)).collect();
        for id in self.value_ids() {
            let v = &self.values[id.index()];
            if let Some(init) = &v.init {
                let mut t = init.clone();
                t.name = Some(v.name.clone());
                gp.initializer.push(t);
            } else if !self.inputs.contains(&id)
                && !self.outputs.contains(&id)
                && (v.info.is_some() || v.ty.is_some())
            {
                gp.value_info.push(self.value_info(id));
            }
        }
        model.graph = Some(gp);
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{
        FunctionProto, OperatorSetIdProto, SparseTensorProto, StringStringEntryProto,
        TensorAnnotation, TrainingInfoProto, TypeProto, tensor_shape_proto, type_proto,
    };

    fn entry(k: &str, v: &str) -> StringStringEntryProto {
        StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        }
    }

    fn info(name: &str, dims: &[i64], denotation: Option<&str>) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(crate::onnx::proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| tensor_shape_proto::Dimension {
                                value: Some(if d < 0 {
                                    tensor_shape_proto::dimension::Value::DimParam("batch".into())
                                } else {
                                    tensor_shape_proto::dimension::Value::DimValue(d)
                                }),
                                denotation: denotation.map(Into::into),
                            })
                            .collect(),
                    }),
                })),
                denotation: Some("TENSOR".into()),
            }),
            doc_string: Some(format!("doc of {name}")),
            metadata_props: vec![entry("k", name)],
        }
    }

    /// A node of the default domain, spelled out (`domain: ""`) so the round trip covers it.
    fn node(name: &str, op: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
        NodeProto::new(op, name, ins, outs).with_domain("")
    }

    /// A model exercising fields the IR does not interpret; all must survive a round trip.
    fn rich_model() -> ModelProto {
        let mut relu = node("relu", "Relu", &["x"], &["y"]);
        relu.doc_string = Some("a relu".into());
        relu.overload = Some("ov".into());
        relu.metadata_props = vec![entry("origin", "test")];
        let mut add = node("add", "Add", &["y", "w"], &["z"]);
        add.attribute
            .push(AttributeProto::ints("unused", &[1, 2, 3]));
        let opt = node("opt", "Clip", &["z", "", "w"], &["out", ""]);
        let w = TensorProto {
            dims: vec![1],
            data_type: Some(1),
            name: Some("w".into()),
            raw_data: Some(bytes::Bytes::from_static(&[0, 0, 128, 63])),
            doc_string: Some("weight".into()),
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(10),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(21),
            }],
            producer_name: Some("test".into()),
            producer_version: Some("1".into()),
            domain: Some("dfc.test".into()),
            model_version: Some(7),
            doc_string: Some("model doc".into()),
            metadata_props: vec![entry("a", "b")],
            training_info: vec![TrainingInfoProto {
                update_binding: vec![entry("w", "w2")],
                ..Default::default()
            }],
            functions: vec![FunctionProto {
                name: Some("F".into()),
                domain: Some("local".into()),
                input: vec!["a".into()],
                output: vec!["b".into()],
                node: vec![node("f0", "Identity", &["a"], &["b"])],
                ..Default::default()
            }],
            graph: Some(GraphProto {
                node: vec![relu, add, opt],
                name: Some("g".into()),
                initializer: vec![w],
                sparse_initializer: vec![SparseTensorProto {
                    dims: vec![4],
                    ..Default::default()
                }],
                doc_string: Some("graph doc".into()),
                input: vec![info("x", &[-1, 3], Some("DATA_BATCH"))],
                output: vec![info("out", &[-1, 3], None)],
                value_info: vec![info("y", &[-1, 3], None), info("z", &[-1, 3], None)],
                quantization_annotation: vec![TensorAnnotation {
                    tensor_name: Some("y".into()),
                    quant_parameter_tensor_names: vec![entry("SCALE_TENSOR", "w")],
                }],
                metadata_props: vec![entry("g", "h")],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let model = rich_model();
        let graph = Graph::from_model(model.clone()).unwrap();
        graph.verify().unwrap();
        assert_eq!(graph.to_model().unwrap(), model);
    }

    #[test]
    fn edges_follow_rewrites() {
        let mut graph = Graph::from_model(rich_model()).unwrap();
        let x = graph.value_by_name("x").unwrap();
        let y = graph.value_by_name("y").unwrap();
        let add = graph.value(y).uses()[0].0;
        // Bypass the Relu: Add now reads the graph input directly.
        graph.replace_all_uses(y, x);
        graph.verify().unwrap();
        assert_eq!(graph.node(add).input(0), Some(x));
        assert_eq!(graph.remove_dead_nodes(), 1);
        graph.verify().unwrap();
        assert_eq!(graph.node_count(), 2);
        // A node inserted next to `add` sorts right after it.
        let t = graph.add_value("t", None);
        let z = graph.value_by_name("z").unwrap();
        let neg = graph
            .add_node(
                Node::new("add.neg", "Neg", ""),
                vec![Some(z)],
                vec![Some(t)],
                Some(add),
            )
            .unwrap();
        graph.verify().unwrap();
        let order = graph.topo_order().unwrap();
        assert_eq!(order.iter().position(|&n| n == neg), Some(1));
        assert!(graph.dump().contains("add.neg = Neg("));
    }

    #[test]
    fn verifier_reports_undefined_inputs_and_cycles() {
        let mut m = rich_model();
        m.graph.as_mut().unwrap().node[0].input[0] = "nowhere".into();
        let g = Graph::from_model(m).unwrap();
        assert!(matches!(g.verify(), Err(IrError::Undefined { .. })));

        let mut m = rich_model();
        m.graph.as_mut().unwrap().node[0].input[0] = "z".into();
        let g = Graph::from_model(m).unwrap();
        assert!(matches!(g.verify(), Err(IrError::Cycle(_))));

        let mut m = rich_model();
        m.graph.as_mut().unwrap().node[1].output[0] = "y".into();
        assert!(matches!(
            Graph::from_model(m),
            Err(IrError::DuplicateProducer(_))
        ));
    }
}
