//! `canonicalize`: turns every group-norm construct into one internal node,
//! `dfc.internal:GroupNorm(x, scale?, bias?) {num_groups, epsilon}` with scale and bias per
//! channel, so later passes see one construct, and onnxsim's row-matrix form of a Linear layer
//! back into a MatMul on the tokens.
//!
//! One file per rewrite: `group_norm` (torch's export pattern, `GroupNormalization` and 4-D
//! `InstanceNormalization`), `ort_group_norm` (ONNX Runtime's `GroupNorm` and
//! `SkipGroupNorm`) and `gemm_linear` (onnxsim's Linear); this module holds the pass, which
//! applies them in one walk over the graph, and the graph queries they share.
//!
//! **Invariant:** after this pass no `GroupNormalization`, no 4-D `InstanceNormalization` and
//! no ONNX Runtime `GroupNorm` or `SkipGroupNorm` remains, and the values the rewritten chains
//! produced keep their names and types. Rejects a `GroupNormalization` of opset 18–20 whose
//! scale or bias is not constant, and an ONNX Runtime group norm whose input is not a static
//! 4-D tensor or whose attributes are out of range. A pattern that
//! does not match exactly (other constants, extra readers of an intermediate value) is left
//! alone; `partition` then explains why it cannot be split.

use anyhow::Result;

use super::ops::{ORT_DOMAIN, default_opset};
use super::propagate::FALLBACK_OPSET;
use super::{Pass, PassContext};
use crate::ir::{Graph, NodeId, ValueId};

mod gemm_linear;
mod group_norm;
mod ort_group_norm;

use gemm_linear::rewrite_gemm_linear;
use group_norm::{match_torch_pattern, per_group_to_per_channel, retarget, rewrite_pattern};
use ort_group_norm::rewrite_ort_group_norm;

pub use gemm_linear::{GemmLinear, match_gemm_linear};
pub use group_norm::{AffineLink, TorchGroupNorm, match_torch_group_norm};

/// See the module documentation.
pub struct Canonicalize;

impl Pass for Canonicalize {
    fn establishes(&self) -> Option<crate::ir::Phase> {
        Some(crate::ir::Phase::Canonical)
    }
    fn name(&self) -> &'static str {
        "canonicalize"
    }
    fn description(&self) -> &'static str {
        "rewrite GroupNorm constructs (torch pattern, GroupNormalization, 4-D InstanceNormalization, ONNX Runtime's GroupNorm and SkipGroupNorm) into one internal GroupNorm, and onnxsim's Reshape → Gemm → Reshape Linear into MatMul + Add"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
        let mut changed = false;
        for id in g.topo_order()? {
            if !g.contains_node(id) {
                continue;
            }
            let n = g.node(id);
            if n.domain == ORT_DOMAIN {
                if matches!(n.op_type.as_str(), "GroupNorm" | "SkipGroupNorm") {
                    rewrite_ort_group_norm(g, id)?;
                    changed = true;
                }
                continue;
            }
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                continue;
            }
            match n.op_type.as_str() {
                "InstanceNormalization" => {
                    if let Some(m) = match_torch_pattern(g, &cx.store, id)? {
                        rewrite_pattern(g, m)?;
                        changed = true;
                    } else if rank_of(g, g.node(id).input(0)) == Some(4) {
                        let c = dims_of(g, g.node(id).input(0)).map(|d| d[1]).unwrap_or(0);
                        retarget(g, id, c);
                        changed = true;
                    }
                }
                "GroupNormalization" => {
                    let groups = g.node(id).attr_i("num_groups", 0);
                    if opset < 21 {
                        per_group_to_per_channel(g, &cx.store, id, groups)?;
                    }
                    retarget(g, id, groups);
                    changed = true;
                }
                "Gemm" => {
                    if let Some(m) = match_gemm_linear(g, id) {
                        rewrite_gemm_linear(g, m)?;
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        if changed {
            g.remove_dead_nodes();
            g.remove_unused_values();
        }
        Ok(changed)
    }
}

fn dims_of(g: &Graph, v: Option<ValueId>) -> Option<Vec<i64>> {
    g.value(v?).tensor_type()?.static_dims()
}

fn rank_of(g: &Graph, v: Option<ValueId>) -> Option<usize> {
    g.value(v?).tensor_type()?.rank()
}

/// The single reader of `v` (and the port it reads), when there is exactly one and `v` is not
/// a graph output.
fn only_reader(g: &Graph, v: ValueId) -> Option<(NodeId, usize)> {
    match g.value(v).uses() {
        [one] if !g.outputs.contains(&v) => Some(*one),
        _ => None,
    }
}

/// Helpers the rewrites' tests share.
#[cfg(test)]
mod testing {
    use anyhow::Result;

    use super::Canonicalize;
    use crate::ir::Graph;
    use crate::onnx::ExternalStore;
    use crate::passes::{Pass, PassContext};
    use crate::tensor::Tensor;

    /// A float tensor of `dims` filled with `v`.
    pub fn f32s(dims: &[usize], v: f32) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(dims, vec![v; n]).expect("tensor")
    }

    /// Infers shapes, runs the pass and verifies the graph.
    pub fn run(g: &mut Graph) -> Result<()> {
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        crate::passes::infer_shapes::InferShapes.run(g, &mut cx)?;
        Canonicalize.run(g, &mut cx)?;
        g.verify()?;
        Ok(())
    }
}
