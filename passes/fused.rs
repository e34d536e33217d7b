//! `reject-fused`: refuses graphs that ONNX Runtime's transformer optimizer rewrote into its own
//! fused operators (domain `com.microsoft`: `BiasSplitGelu`, `BiasAdd`, `NhwcConv`, `Attention`,
//! …) dfc has no row for. dfc has no partition rule for them, and most have kernels only in
//! ONNX Runtime's GPU builds, so a rank graph holding them could not run on the CPU runtime;
//! dfc asks for the model as exported, before fusion, or with those fusions turned off.
//!
//! Five of them are accepted, each with a row in the operator registry
//! ([`crate::ops::registry`]): `Gelu` (elementwise) and `SkipLayerNormalization` (a residual
//! sum, then a LayerNorm over the last axis, the channels), which the optimizer leaves in a
//! UNet even with the fusions ONNX Runtime's CPU provider lacks turned off, and
//! `MultiHeadAttention` (partitioned like the ONNX `Attention` operator), all three with
//! kernels in ONNX Runtime's CPU provider, so the rank graphs keep the model's `com.microsoft`
//! opset import; and `GroupNorm` and `SkipGroupNorm`, which that provider cannot run and
//! `canonicalize` rewrites into dfc's own group norm.
//!
//! **Invariant:** after this pass every node of domain `com.microsoft` has a row in the
//! operator registry (the graph is not changed; the pass fails instead). Rejects every other
//! such node in one error, one line per operator: how many nodes use it, the first two of them
//! by name, and the standard ONNX form to export instead.

use anyhow::Result;

use super::{Pass, PassContext};
use crate::ir::Graph;
use crate::ops::registry;

pub use crate::ops::ORT_DOMAIN;

/// One fused node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusedNode {
    pub node: String,
    pub op: String,
    /// What to export instead.
    pub instead: &'static str,
}

/// A graph holding ONNX Runtime fused operators.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} node(s) are ONNX Runtime fused operators (domain com.microsoft), which dfc does not partition; \
     export the UNet without ONNX Runtime's transformer optimizer (onnxruntime.transformers.optimizer / \
     fusion options off), or export instead:\n{}",
    .0.len(),
    list(.0)
)]
pub struct FusedOpsError(pub Vec<FusedNode>);

/// How many node names each operator's line shows.
const EXAMPLES: usize = 2;

/// One line per operator, in the order of their first node: `` `a` (op): instead `` for a
/// single node, `` `a`, `b` and 3 more (op, 5 nodes): instead `` for several.
fn list(nodes: &[FusedNode]) -> String {
    let mut ops: Vec<(&FusedNode, Vec<&str>)> = Vec::new();
    for n in nodes {
        match ops.iter_mut().find(|(first, _)| first.op == n.op) {
            Some((_, names)) => names.push(&n.node),
            None => ops.push((n, vec![&n.node])),
        }
    }
    ops.iter()
        .map(|(first, names)| {
            let shown: Vec<String> = names
                .iter()
                .take(EXAMPLES)
                .map(|n| format!("`{n}`"))
                .collect();
            let more = match names.len().saturating_sub(EXAMPLES) {
                0 => String::new(),
                k => format!(" and {k} more"),
            };
            let count = match names.len() {
                1 => String::new(),
                k => format!(", {k} nodes"),
            };
            format!(
                "  {}{more} ({ORT_DOMAIN}:{}{count}): {}",
                shown.join(", "),
                first.op,
                first.instead
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The standard ONNX form of ONNX Runtime's fused operator `op`.
pub fn unfused_form(op: &str) -> &'static str {
    match op {
        "GroupNorm" => {
            "GroupNormalization (opset 21) or torch's Reshape → InstanceNormalization → Reshape → Mul → Add, on NCHW"
        }
        "SkipGroupNorm" => "Add of the skip, then GroupNormalization (opset 21), on NCHW",
        "MultiHeadAttention" | "Attention" | "PackedAttention" | "PackedMultiHeadAttention" => {
            "MatMul → Softmax → MatMul attention, Einsum attention, or the ONNX Attention operator (opset 23)"
        }
        "GroupQueryAttention" => "the ONNX Attention operator (opset 23) without a KV cache",
        "BiasSplitGelu" => "Add of the bias, Split in two halves, Gelu (or its Erf form) and Mul",
        "BiasAdd" => "Add (bias, then skip)",
        "BiasGelu" | "FastGelu" | "QuickGelu" => "Add of the bias, then Gelu or its Erf form",
        "NhwcConv" => "Conv on NCHW tensors",
        "SkipSimplifiedLayerNormalization" => "Add of the skip, then RMSNormalization",
        "LayerNormalization" | "SimplifiedLayerNormalization" => {
            "LayerNormalization or RMSNormalization of the default domain"
        }
        "FusedConv" => "Conv followed by its activation",
        "FusedMatMul" => "MatMul (with Transpose and Mul where it was fused)",
        _ => "the unfused standard ONNX operators",
    }
}

/// Every node of domain [`ORT_DOMAIN`] without a row in the operator registry, in topological
/// order.
pub fn fused_nodes(g: &Graph) -> Vec<FusedNode> {
    let mut ids: Vec<_> = g.node_ids().collect();
    ids.sort_by_key(|&id| g.node(id).order);
    ids.into_iter()
        .map(|id| g.node(id))
        .filter(|n| n.domain == ORT_DOMAIN && registry::lookup(ORT_DOMAIN, &n.op_type).is_none())
        .map(|n| FusedNode {
            node: n.name.clone(),
            op: n.op_type.clone(),
            instead: unfused_form(&n.op_type),
        })
        .collect()
}

/// See the module documentation.
pub struct RejectFused;

impl Pass for RejectFused {
    fn name(&self) -> &'static str {
        "reject-fused"
    }
    fn description(&self) -> &'static str {
        "refuse ONNX Runtime fused operators (com.microsoft) but Gelu, SkipLayerNormalization, MultiHeadAttention, GroupNorm and SkipGroupNorm, listed by operator with their unfused forms"
    }
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<bool> {
        let fused = fused_nodes(g);
        if fused.is_empty() {
            Ok(false)
        } else {
            Err(FusedOpsError(fused).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::onnx::ExternalStore;
    use crate::passes::test_graphs::{model, node, vi};

    #[test]
    fn every_fused_node_is_listed_with_its_unfused_form() {
        let f = DataType::FLOAT;
        let mut conv = node("NhwcConv", "conv0", &["x", "w"], &["c"]);
        conv.domain = Some(ORT_DOMAIN.into());
        let mut gn = node("GroupNorm", "gn0", &["c", "g", "b"], &["a"]);
        gn.domain = Some(ORT_DOMAIN.into());
        let mut bias_add = node("BiasAdd", "bias0", &["a", "b", "a"], &["m"]);
        bias_add.domain = Some(ORT_DOMAIN.into());
        let mut bsg = node("BiasSplitGelu", "ff0", &["m", "bias"], &["y"]);
        bsg.domain = Some(ORT_DOMAIN.into());
        let mut g = model(
            vec![conv, gn, bias_add, bsg],
            vec![vi("x", f, &["1", "4", "4", "8"])],
            vec![vi("y", f, &["?", "?", "?", "?"])],
            vec![],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        let e = RejectFused.run(&mut g, &mut cx).expect_err("refused");
        let text = e.to_string();
        assert!(text.starts_with("3 node(s)"), "{text}");
        for want in [
            "`conv0` (com.microsoft:NhwcConv): Conv on NCHW",
            "`bias0` (com.microsoft:BiasAdd): Add",
            "`ff0` (com.microsoft:BiasSplitGelu): Add",
        ] {
            assert!(text.contains(want), "{want} missing: {text}");
        }
        // ONNX Runtime's GroupNorm has a row (canonicalize rewrites it): not listed.
        assert!(!text.contains("gn0"), "{text}");
        assert!(e.downcast_ref::<FusedOpsError>().is_some());
    }

    #[test]
    fn fused_nodes_are_listed_once_per_operator() {
        let f = DataType::FLOAT;
        let ms = |mut n: crate::onnx::proto::NodeProto| {
            n.domain = Some(ORT_DOMAIN.into());
            n
        };
        let mut nodes = vec![ms(node("NhwcConv", "conv0", &["x", "w"], &["t0"]))];
        for i in 0..5 {
            let (a, b) = (format!("t{i}"), format!("t{}", i + 1));
            nodes.push(ms(node(
                "BiasSplitGelu",
                &format!("ff{i}"),
                &[&a, "bias"],
                &[&b],
            )));
        }
        nodes.push(ms(node("BiasAdd", "bias0", &["t5", "bias", "t5"], &["y0"])));
        nodes.push(ms(node("BiasAdd", "bias1", &["y0", "bias", "y0"], &["y"])));
        let mut g = model(
            nodes,
            vec![vi("x", f, &["1", "4", "4", "8"])],
            vec![vi("y", f, &["?", "?", "?", "?"])],
            vec![],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        let e = RejectFused.run(&mut g, &mut cx).expect_err("refused");
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "  `conv0` (com.microsoft:NhwcConv): Conv on NCHW tensors",
                "  `ff0`, `ff1` and 3 more (com.microsoft:BiasSplitGelu, 5 nodes): Add of the bias, Split in two halves, Gelu (or its Erf form) and Mul",
                "  `bias0`, `bias1` (com.microsoft:BiasAdd, 2 nodes): Add (bias, then skip)",
            ],
            "{text}"
        );
        assert!(text.starts_with("8 node(s)"), "{text}");
    }

    #[test]
    fn group_norms_and_multi_head_attention_are_accepted() -> Result<()> {
        let f = DataType::FLOAT;
        let ms = |mut n: crate::onnx::proto::NodeProto| {
            n.domain = Some(ORT_DOMAIN.into());
            n
        };
        let mut g = model(
            vec![
                ms(node("GroupNorm", "gn0", &["x", "g", "b"], &["a"])),
                ms(node("SkipGroupNorm", "sgn0", &["a", "g", "b", "x"], &["s"])),
                ms(node(
                    "MultiHeadAttention",
                    "attn0",
                    &["t", "t", "t"],
                    &["y"],
                )),
            ],
            vec![
                vi("x", f, &["1", "4", "4", "8"]),
                vi("t", f, &["1", "16", "8"]),
            ],
            vec![
                vi("s", f, &["1", "4", "4", "8"]),
                vi("y", f, &["1", "16", "8"]),
            ],
            vec![],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        assert!(!RejectFused.run(&mut g, &mut cx)?);
        Ok(())
    }

    #[test]
    fn gelu_and_skip_layer_normalization_are_accepted() -> Result<()> {
        let f = DataType::FLOAT;
        let mut sln = node(
            "SkipLayerNormalization",
            "sln0",
            &["x", "s", "gamma", "beta"],
            &["n", "", "", "sum"],
        );
        sln.domain = Some(ORT_DOMAIN.into());
        let mut gelu = node("Gelu", "gelu0", &["n"], &["y"]);
        gelu.domain = Some(ORT_DOMAIN.into());
        let mut bias_gelu = node("BiasGelu", "bg0", &["sum", "b"], &["z"]);
        bias_gelu.domain = Some(ORT_DOMAIN.into());
        let mut g = model(
            vec![sln, gelu],
            vec![vi("x", f, &["2", "16", "8"]), vi("s", f, &["2", "16", "8"])],
            vec![vi("y", f, &["2", "16", "8"])],
            vec![],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        assert!(!RejectFused.run(&mut g, &mut cx)?);
        // An operator dfc has no row for is still refused, alone.
        let mut g = model(
            vec![bias_gelu],
            vec![vi("sum", f, &["2", "16", "8"]), vi("b", f, &["8"])],
            vec![vi("z", f, &["2", "16", "8"])],
            vec![],
            17,
        );
        let e = RejectFused.run(&mut g, &mut cx).expect_err("refused");
        assert!(
            e.to_string().starts_with("1 node(s)") && e.to_string().contains("`bg0`"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn standard_graphs_pass() -> Result<()> {
        let f = DataType::FLOAT;
        let mut g = model(
            vec![node("Relu", "r", &["x"], &["y"])],
            vec![vi("x", f, &["1", "4", "4", "8"])],
            vec![vi("y", f, &["1", "4", "4", "8"])],
            vec![],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        assert!(!RejectFused.run(&mut g, &mut cx)?);
        Ok(())
    }
}
