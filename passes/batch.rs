//! `halve-batch`: halving a static batch for `--split-batch`. A model exported with its batch
//! fixed to the full classifier-free-guidance pair (batch 2: unconditional and conditional) is
//! rewritten into the graph one CFG group runs, on half the batch. The pass halves the batch
//! its spatial input is fixed to ([`fixed_batch`]) and leaves a graph whose batch is symbolic
//! unchanged (`bind-inputs` binds that one to the half directly).
//!
//! The batch is followed through the graph the way `partition` follows the image rows: every
//! graph input whose dim 0 is the full batch is split in two on axis 0, and each node's
//! partition rule ([`super::ops::layout`]) says where the halves go (through reshapes that
//! merge the batch with the heads, transposes, attention…). An `Expand` of a replicated value
//! to the full batch (a static export's `timesteps.expand(B)`) is uniform over the batch and
//! becomes half as large. Then every value split on the batch gets half its extent, and the
//! constants that carry the batch (Reshape and Expand shapes, Resize sizes) get the half
//! sizes, as `localize` does for band heights. A constant with the full batch extent is halved
//! when its two halves are equal. The graph's inputs and outputs that carry the batch get the
//! symbolic batch [`BATCH_SYMBOL`] on axis 0, so specializing to half the batch binds them; the
//! graph is back in [`Phase::Source`].
//!
//! **Invariant:** after [`halve_batch`], every value that depended on the batch has half its
//! extent on the batch axis, the graph computes, for each half of the full batch, what the
//! original computed for that half, and every graph output carries the batch on axis 0.
//! Rejects, all listed in one error (node, op, reason), the constructs that mix the two halves:
//! a reduction or a gather over the batch, a slice or concat along it, a batch-sized constant
//! whose halves differ, a batch-sized value computed from replicated inputs, an output without
//! the batch.

use std::collections::HashMap;

use anyhow::Result;

use super::ops::layout::{Layout, Need, Part, PartCx, Verdict};
use super::ops::registry::partition_of;
use super::ops::{OpCx, default_opset, is_constant, load_constant};
use super::propagate::FALLBACK_OPSET;
use super::{NodeIssue, Pass, PassContext};
use crate::contract::Bands;
use crate::ir::{Dim, Graph, NodeId, Phase, TensorType, ValueId, ValueType};
use crate::onnx::ExternalStore;
use crate::tensor::Tensor;

/// The batch axis of NCHW and token tensors.
pub const BATCH_AXIS: usize = 0;
/// The symbol [`halve_batch`] gives the batch of the graph's inputs and outputs.
pub const BATCH_SYMBOL: &str = "batch";

/// Constructs that mix the two halves of the batch.
#[derive(Debug, thiserror::Error)]
#[error(
    "--split-batch: {} construct(s) mix the two halves of the static batch of {full}, so the CFG halves cannot run on separate groups:\n{}\nexport the UNet with a dynamic batch axis, or compile without --split-batch",
    .issues.len(),
    .issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n")
)]
pub struct BatchError {
    pub full: i64,
    pub issues: Vec<NodeIssue>,
}

fn issue(node: &str, op: &str, message: String) -> NodeIssue {
    NodeIssue {
        node: node.to_string(),
        op: op.to_string(),
        message,
    }
}

/// The spatial input and the batch its dim 0 is fixed to, when it is fixed.
pub fn fixed_batch(g: &Graph) -> Option<(ValueId, i64)> {
    let v = g.spatial_input()?;
    let b = g.value(v).tensor_type()?.shape.as_ref()?.first()?.fixed()?;
    Some((v, b))
}

/// See the module documentation.
pub struct HalveBatch;

impl Pass for HalveBatch {
    fn name(&self) -> &'static str {
        "halve-batch"
    }
    fn description(&self) -> &'static str {
        "halve a batch fixed to the CFG pair into one CFG group's graph (--split-batch), listing the constructs that mix the halves"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let Some((_, full)) = fixed_batch(g) else {
            return Ok(false);
        };
        halve_batch(g, &cx.store, full)?;
        Ok(true)
    }
}

fn dims(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    g.value(v).tensor_type()?.static_dims()
}

/// Rewrites `g` (typed, with static shapes, canonicalized) from the full batch `full` to
/// `full / 2`. See the module documentation.
pub fn halve_batch(g: &mut Graph, store: &ExternalStore, full: i64) -> Result<()> {
    let mut issues = Vec::new();
    if full < 2 || full % 2 != 0 {
        issues.push(issue("", "input", format!("the batch {full} is not even")));
        return Err(BatchError { full, issues }.into());
    }
    let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
    let halves = Bands::from_heights(&[1, 1]).map_err(|e| crate::internal!("{e}"))?;
    let split = Layout::Split { axis: BATCH_AXIS };
    let mut layouts: HashMap<ValueId, Layout> = HashMap::new();
    for &v in &g.inputs {
        if g.value(v).init.is_none() && dims(g, v).and_then(|d| d.first().copied()) == Some(full) {
            layouts.insert(v, split);
        }
    }
    let layout = |l: &HashMap<ValueId, Layout>, v: Option<ValueId>| {
        v.and_then(|v| l.get(&v).copied())
            .unwrap_or(Layout::Replicated)
    };
    // Constants to halve: (node, port, value).
    let mut halve_constants: Vec<(NodeId, usize, ValueId)> = Vec::new();
    let mut uniform_expands: Vec<NodeId> = Vec::new();
    for id in g.topo_order()? {
        let node = g.node(id);
        let mut ins: Vec<Layout> = node.inputs().iter().map(|&v| layout(&layouts, v)).collect();
        if ins.iter().all(|l| *l == Layout::Replicated) {
            // A replicated value expanded to the full batch is the same in every row.
            let expanded = node.domain.is_empty()
                && node.op_type == "Expand"
                && node.output(0).and_then(|o| dims(g, o)).is_some_and(|o| {
                    let x = node.input(0).and_then(|x| dims(g, x)).unwrap_or_default();
                    o.len() >= x.len()
                        && o.first() == Some(&full)
                        && (x.len() < o.len() || x.first() == Some(&1))
                });
            if expanded {
                uniform_expands.push(id);
                if let Some(o) = node.output(0) {
                    layouts.insert(o, split);
                }
            }
            continue;
        }
        let rule = match partition_of(&node.domain, &node.op_type) {
            Some(Part::Rule(rule)) => rule,
            Some(Part::Refuse(reason)) => {
                issues.push(issue(&node.name, &node.op_type, reason.to_string()));
                continue;
            }
            _ => {
                issues.push(issue(
                    &node.name,
                    &node.op_type,
                    format!("no partition rule for {} on the batch", node.op_type),
                ));
                continue;
            }
        };
        let op = OpCx::new(g, store, node, opset, crate::ops::MAX_FOLD_ELEMENTS);
        let outputs: Vec<Option<TensorType>> = node
            .outputs()
            .iter()
            .map(|v| v.and_then(|v| g.value(v).tensor_type().cloned()))
            .collect();
        let constant: Vec<bool> = node
            .inputs()
            .iter()
            .map(|v| v.is_some_and(|v| is_constant(g, v)))
            .collect();
        let cx = PartCx {
            op: &op,
            layouts: std::mem::take(&mut ins),
            constant,
            bands: &halves,
            n_outputs: outputs.len(),
            outputs,
        };
        let mixes = |m: String| issue(&node.name, &node.op_type, m);
        match rule(&cx) {
            Ok(Verdict::Local { outputs, needs }) => {
                for need in needs {
                    match need {
                        Need::SliceOperand { port, axis: BATCH_AXIS } => {
                            match node.input(port).filter(|&v| is_constant(g, v)) {
                                Some(v) => halve_constants.push((id, port, v)),
                                None => issues.push(mixes(format!(
                                    "input {port} has the full batch but is computed from inputs without it"
                                ))),
                            }
                        }
                        other => issues.push(mixes(format!(
                            "it needs {other:?} across the batch halves"
                        ))),
                    }
                }
                for (v, l) in node.outputs().iter().zip(outputs) {
                    if let Some(v) = v {
                        if l != Layout::Replicated && l != split {
                            issues.push(mixes(format!("its output would be split on {l}")));
                        }
                        layouts.insert(*v, l);
                    }
                }
            }
            Ok(Verdict::Gather { port }) => issues.push(mixes(format!(
                "it reads input {port} of both halves of the batch"
            ))),
            Ok(Verdict::Refuse(m)) | Ok(Verdict::Indivisible(m)) => issues.push(mixes(m)),
            Err(e) => issues.push(mixes(format!("{e:#}"))),
        }
    }
    for &v in &g.outputs {
        if layout(&layouts, Some(v)) != split {
            issues.push(issue(
                &g.value(v).name,
                "output",
                "the graph output does not carry the batch on axis 0".into(),
            ));
        }
    }
    // Batch-sized constants must hold the same values in both halves.
    let mut halved_values: Vec<(NodeId, usize, Tensor)> = Vec::new();
    for &(id, port, v) in &halve_constants {
        let node = g.node(id);
        match load_constant(g, store, v, crate::ops::MAX_FOLD_ELEMENTS)? {
            Some(t) if t.shape().first() == Some(&(full as usize)) => {
                let h = full as usize / 2;
                let first = t.select(&[(0..h).collect()])?;
                let second = t.select(&[(h..full as usize).collect()])?;
                if first.to_f64s() == second.to_f64s() {
                    halved_values.push((id, port, first));
                } else {
                    issues.push(issue(
                        &node.name,
                        &node.op_type,
                        format!("constant input {port} differs between the halves of the batch"),
                    ));
                }
            }
            _ => issues.push(issue(
                &node.name,
                &node.op_type,
                format!("constant input {port} has the full batch and cannot be read"),
            )),
        }
    }
    if !issues.is_empty() {
        return Err(BatchError { full, issues }.into());
    }
    // Rewrite: half types, half constants, half shapes.
    for (&v, _) in layouts.iter().filter(|(_, l)| **l == split) {
        if let Some(t) = g.value(v).tensor_type().cloned()
            && let Some(mut d) = t.static_dims()
            && !d.is_empty()
        {
            d[0] /= 2;
            g.value_mut(v).ty = Some(ValueType::Tensor(TensorType::fixed(t.elem, &d)));
        }
    }
    // The graph's inputs and outputs carry a symbolic batch, bound to the half by `bind-inputs`.
    for v in g.inputs.clone().into_iter().chain(g.outputs.clone()) {
        if layout(&layouts, Some(v)) == split
            && let Some(mut t) = g.value(v).tensor_type().cloned()
            && let Some(d) = t.shape.as_mut().and_then(|s| s.first_mut())
        {
            *d = Dim::Symbol(BATCH_SYMBOL.into());
            g.value_mut(v).ty = Some(ValueType::Tensor(t));
        }
    }
    for (id, port, t) in halved_values {
        let name = format!("{}.half{port}", g.node(id).name);
        let c = g.add_constant(&name, t.to_proto(""));
        g.set_input(id, port, Some(c));
    }
    let mut shaped: Vec<NodeId> = uniform_expands;
    for id in g.node_ids() {
        let n = g.node(id);
        if n.domain.is_empty()
            && matches!(n.op_type.as_str(), "Reshape" | "Expand" | "Resize")
            && n.output(0)
                .is_some_and(|o| layout(&layouts, Some(o)) == split)
            && !shaped.contains(&id)
        {
            shaped.push(id);
        }
    }
    for id in shaped {
        let n = g.node(id);
        let port = match n.op_type.as_str() {
            "Reshape" | "Expand" => 1,
            _ if opset >= 11 && n.input(3).is_some() => 3,
            _ => continue,
        };
        let Some(o) = n.output(0).and_then(|o| dims(g, o)) else {
            continue;
        };
        if n.op_type == "Resize" && n.attr_ints("axes").is_some_and(|a| !a.is_empty()) {
            // Sizes of some axes only: the batch is in them only when axis 0 is listed.
            if !n.attr_ints("axes").is_some_and(|a| a.contains(&0)) {
                continue;
            }
            return Err(BatchError {
                full,
                issues: vec![issue(
                    &n.name,
                    &n.op_type,
                    "Resize with `axes` that include the batch".into(),
                )],
            }
            .into());
        }
        let name = format!("{}.{}", n.name, if port == 3 { "sizes" } else { "shape" });
        let c = g.add_constant(&name, Tensor::from_i64s(&o).to_proto(""));
        g.set_input(id, port, Some(c));
    }
    g.remove_unused_values();
    // Symbolic inputs again: the graph is back in the source phase until specialized.
    g.phase = Phase::Source;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::passes::test_graphs::{i64_init, model, node, vi};
    use crate::passes::{PassContext, PassManager};

    fn typed(mut g: Graph) -> Result<Graph> {
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        PassManager::from_names(&["fold-constants", "canonicalize"])?.run(&mut g, &mut cx)?;
        Ok(g)
    }

    #[test]
    fn merged_batch_and_heads_and_expanded_embeddings_are_halved() -> Result<()> {
        let f = DataType::FLOAT;
        let mut sm = node("Softmax", "sm", &["bh"], &["p"]);
        sm.attribute
            .push(crate::onnx::proto::AttributeProto::int("axis", -1));
        let g = typed(model(
            vec![
                node("Reshape", "to_bh", &["x", "bh_shape"], &["bh"]),
                sm,
                node("Reshape", "back", &["p", "x_shape"], &["y0"]),
                node("Expand", "emb", &["t", "emb_shape"], &["e"]),
                node("Add", "add", &["y0", "e"], &["y"]),
            ],
            vec![vi("x", f, &["2", "8", "4"]), vi("t", f, &["1", "1", "4"])],
            vec![vi("y", f, &["2", "8", "4"])],
            vec![
                i64_init("bh_shape", &[8, 2, 4]),
                i64_init("x_shape", &[2, 8, 4]),
                i64_init("emb_shape", &[2, 1, 4]),
            ],
            17,
        ))?;
        let mut g = g;
        halve_batch(&mut g, &ExternalStore::new(std::env::temp_dir()), 2)?;
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        cx.specialize.batch = Some(1);
        PassManager::from_names(&["bind-inputs", "fold-constants"])?.run(&mut g, &mut cx)?;
        let dump = g.dump();
        assert!(
            dump.contains("f32[1,8,4]") && !dump.contains("f32[2,8,4]"),
            "{dump}"
        );
        assert!(dump.contains("f32[4,2,4]"), "{dump}");
        Ok(())
    }

    #[test]
    fn the_pass_halves_a_fixed_batch_and_leaves_a_symbolic_one() -> Result<()> {
        let f = DataType::FLOAT;
        let relu = |batch: &str| {
            model(
                vec![node("Relu", "relu", &["x"], &["y"])],
                vec![vi("x", f, &[batch, "4", "8", "8"])],
                vec![vi("y", f, &[batch, "4", "8", "8"])],
                vec![],
                17,
            )
        };
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        let mut g = typed(relu("2"))?;
        assert!(HalveBatch.run(&mut g, &mut cx)?);
        let dump = g.dump();
        assert!(dump.contains("x: f32[batch,4,8,8]"), "{dump}");
        let mut g = relu("b");
        assert!(!HalveBatch.run(&mut g, &mut cx)?);
        Ok(())
    }

    #[test]
    fn mixing_the_halves_is_refused_naming_the_node() -> Result<()> {
        let f = DataType::FLOAT;
        let mut rm = node("ReduceMean", "batch_mean", &["x", "axes"], &["m"]);
        rm.attribute
            .push(crate::onnx::proto::AttributeProto::int("keepdims", 1));
        let g = typed(model(
            vec![rm, node("Sub", "center", &["x", "m"], &["y"])],
            vec![vi("x", f, &["2", "4", "8", "8"])],
            vec![vi("y", f, &["2", "4", "8", "8"])],
            vec![i64_init("axes", &[0])],
            18,
        ))?;
        let mut g = g;
        let e = halve_batch(&mut g, &ExternalStore::new(std::env::temp_dir()), 2)
            .expect_err("a mean over the batch mixes the halves");
        let text = e.to_string();
        assert!(text.contains("`batch_mean` (ReduceMean)"), "{text}");
        assert!(e.downcast_ref::<BatchError>().is_some());
        Ok(())
    }
}
