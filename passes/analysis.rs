//! Questions about a model answered by the compiler's own rules, without changing the graph
//! and without static shapes (for `dfc inspect`): where its attentions are, and which of them
//! are self-attention and which cross-attention.
//!
//! An attention site is a `Softmax` between two products (MatMul, or an Einsum of two
//! operands): the scores `Q·Kᵀ` (possibly scaled, masked or cast on the way) and the
//! probabilities times `V`; the ONNX `Attention` operator (opset 23) and ONNX Runtime's
//! `MultiHeadAttention` are sites by themselves.
//!
//! Self or cross is decided the way `partition` decides it (the MatMul rule of
//! `ops/linalg/matmul.rs`): the spatial input is split into bands, and a value computed only
//! from replicated values (the other inputs, weights, shapes) is replicated. Keys that are split
//! come from the image and are gathered before the scores: self-attention. Keys that are
//! replicated and come from another model input (the text) are read as they are:
//! cross-attention. Keys from neither (constants, or a node that makes data from nothing) make
//! an attention of another kind.
//! Packed Q, K and V in one `MultiHeadAttention` input are self-attention.

use std::collections::HashMap;

use crate::ir::{Graph, NodeId, ValueId};
use crate::ops::ORT_DOMAIN;

/// How an attention reads its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// Keys from the image, split into bands: `partition` gathers them.
    SelfAttention,
    /// Keys from another model input (the text), replicated: nothing to exchange.
    Cross,
    /// Keys from neither.
    Other,
}

/// One attention of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionSite {
    /// The `Softmax`, `Attention` or `MultiHeadAttention` node.
    pub node: NodeId,
    pub kind: AttentionKind,
}

/// Where a value's contents come from.
#[derive(Clone, Copy, Debug, Default)]
struct Origin {
    /// The spatial input: the value is split into bands.
    image: bool,
    /// Another model input.
    input: bool,
    /// A node that makes data from no input (a random generator…).
    made: bool,
}

impl Origin {
    fn constant(self) -> bool {
        !(self.image || self.input || self.made)
    }

    fn union(self, o: Origin) -> Origin {
        Origin {
            image: self.image || o.image,
            input: self.input || o.input,
            made: self.made || o.made,
        }
    }
}

/// The origin of every value of `g`, in one sweep in topological order.
fn origins(g: &Graph) -> HashMap<ValueId, Origin> {
    let spatial = g.spatial_input();
    let mut out: HashMap<ValueId, Origin> = g
        .inputs
        .iter()
        .map(|&v| {
            let image = Some(v) == spatial;
            (
                v,
                Origin {
                    image,
                    input: !image,
                    made: false,
                },
            )
        })
        .collect();
    let Ok(order) = g.topo_order() else {
        return out;
    };
    for id in order {
        let node = g.node(id);
        let origin = match node.op_type.as_str() {
            // Shapes and constants, never tensor contents.
            "Constant" | "Shape" | "Size" => Origin::default(),
            _ if node.inputs().iter().all(Option::is_none) => Origin {
                made: true,
                ..Origin::default()
            },
            _ => node
                .inputs()
                .iter()
                .flatten()
                .filter_map(|v| out.get(v).copied())
                .fold(Origin::default(), Origin::union),
        };
        for &v in node.outputs().iter().flatten() {
            out.insert(v, origin);
        }
    }
    out
}

/// Every attention of `g`, in source order (see the module documentation).
pub fn attention_sites(g: &Graph) -> Vec<AttentionSite> {
    let origins = origins(g);
    let origin = |v: ValueId| origins.get(&v).copied().unwrap_or_default();
    let mut ids: Vec<NodeId> = g.node_ids().collect();
    ids.sort_by_key(|&id| g.node(id).order);
    ids.into_iter()
        .filter_map(|id| {
            let keys = match g.node(id).op_type.as_str() {
                "Softmax" => softmax_keys(g, id, &origin)?,
                "Attention" | "MultiHeadAttention" => operator_keys(g, id)?,
                _ => return None,
            };
            let kind = match keys.map(origin) {
                None => AttentionKind::SelfAttention,
                Some(o) if o.image => AttentionKind::SelfAttention,
                Some(o) if o.input => AttentionKind::Cross,
                Some(_) => AttentionKind::Other,
            };
            Some(AttentionSite { node: id, kind })
        })
        .collect()
}

/// A score product: MatMul, or an Einsum of two operands.
fn is_product(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    node.op_type == "MatMul" || (node.op_type == "Einsum" && node.inputs().len() == 2)
}

/// The keys of the attention around `softmax` (input 1 of the score product); `None` when it
/// is no attention.
fn softmax_keys(
    g: &Graph,
    softmax: NodeId,
    origin: &impl Fn(ValueId) -> Origin,
) -> Option<Option<ValueId>> {
    // Upstream: scale, mask and cast ops, then the score product.
    let producer = |v: ValueId| g.value(v).producer().map(|(n, _)| n);
    let mut cur = producer(g.node(softmax).input(0)?)?;
    let mut hops = 0;
    while !is_product(g, cur) {
        let node = g.node(cur);
        if !matches!(node.op_type.as_str(), "Mul" | "Div" | "Add" | "Cast") || hops > 4 {
            return None;
        }
        let data: Vec<ValueId> = node
            .inputs()
            .iter()
            .flatten()
            .copied()
            .filter(|&v| !origin(v).constant())
            .collect();
        cur = match data.as_slice() {
            [v] => producer(*v)?,
            // A mask added to the scores: follow the operand that comes from a product.
            _ => data
                .iter()
                .filter_map(|&v| producer(v))
                .find(|&p| is_product(g, p))?,
        };
        hops += 1;
    }
    // Downstream: the probabilities (possibly cast) multiply V.
    let mut down = softmax;
    loop {
        let users = g
            .node(down)
            .output(0)
            .map(|v| g.value(v).uses().to_vec())
            .unwrap_or_default();
        if users.iter().any(|&(n, port)| {
            let op = &g.node(n).op_type;
            (port == 0 && op == "MatMul") || (op == "Einsum" && g.node(n).inputs().len() == 2)
        }) {
            break;
        }
        match users.as_slice() {
            [(n, _)] if g.node(*n).op_type == "Cast" => down = *n,
            _ => return None,
        }
    }
    let scores = g.node(cur);
    scores.input(0)?;
    Some(Some(scores.input(1)?))
}

/// The keys of an `Attention` operator or of ONNX Runtime's `MultiHeadAttention` (input 1;
/// `Some(None)`: packed Q, K and V); `None` when the node is neither.
fn operator_keys(g: &Graph, id: NodeId) -> Option<Option<ValueId>> {
    let node = g.node(id);
    let default_domain = node.domain.is_empty() || node.domain == "ai.onnx";
    match (node.op_type.as_str(), default_domain) {
        ("Attention", true) => {}
        ("MultiHeadAttention", false) if node.domain == ORT_DOMAIN => {
            if node.input(1).is_none() {
                return Some(None);
            }
        }
        _ => return None,
    }
    node.input(0)?;
    Some(Some(node.input(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::passes::test_graphs::{model, node, vi};

    /// `x` (the image's tokens, through a 4-D spatial input) attends to itself, then to `text`.
    fn self_then_cross() -> Graph {
        let f = DataType::FLOAT;
        model(
            vec![
                node("Flatten", "tokens", &["x"], &["t"]),
                node("MatMul", "q", &["t", "w"], &["q"]),
                node("MatMul", "k", &["t", "w"], &["k"]),
                node("MatMul", "scores", &["q", "k"], &["s"]),
                node("Mul", "scale", &["s", "c"], &["s2"]),
                node("Softmax", "self_softmax", &["s2"], &["p"]),
                node("MatMul", "pv", &["p", "k"], &["o"]),
                node("MatMul", "q2", &["o", "w"], &["q2"]),
                node("MatMul", "k2", &["text", "w"], &["k2"]),
                node("MatMul", "scores2", &["q2", "k2"], &["s3"]),
                node("Softmax", "cross_softmax", &["s3"], &["p2"]),
                node("MatMul", "pv2", &["p2", "k2"], &["y"]),
                node("Softmax", "plain_softmax", &["x"], &["z"]),
            ],
            vec![
                vi("x", f, &["1", "4", "4", "8"]),
                vi("text", f, &["1", "8", "8"]),
            ],
            vec![vi("y", f, &["?", "?"]), vi("z", f, &["1", "4", "4", "8"])],
            vec![
                crate::tensor::Tensor::scalar(0.5f32).to_proto("c"),
                crate::tensor::Tensor::from_vec(&[8, 8], vec![0.0f32; 64])
                    .expect("8×8 weights")
                    .to_proto("w"),
            ],
            17,
        )
    }

    #[test]
    fn keys_from_the_image_are_self_attention_from_the_text_cross() {
        let g = self_then_cross();
        let sites: Vec<(String, AttentionKind)> = attention_sites(&g)
            .into_iter()
            .map(|s| (g.node(s.node).name.clone(), s.kind))
            .collect();
        assert_eq!(
            sites,
            [
                ("self_softmax".to_string(), AttentionKind::SelfAttention),
                ("cross_softmax".to_string(), AttentionKind::Cross),
            ]
        );
    }

    #[test]
    fn packed_multi_head_attention_is_self_attention() {
        let f = DataType::FLOAT;
        let mut mha = node("MultiHeadAttention", "mha", &["qkv"], &["y"]);
        mha.domain = Some(ORT_DOMAIN.into());
        let g = model(
            vec![mha],
            vec![vi("qkv", f, &["1", "16", "2", "3", "4"])],
            vec![vi("y", f, &["?", "?", "?"])],
            vec![],
            17,
        );
        let sites = attention_sites(&g);
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].kind, AttentionKind::SelfAttention);
    }
}
