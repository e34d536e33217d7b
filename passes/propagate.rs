//! The propagation engine shared by `infer-shapes` and `fold-constants`: one sweep over the
//! graph in topological order that gives every node output a type from the [`ops`] rules and,
//! when folding, replaces nodes whose inputs are all constant by initializers.
//!
//! Folding keeps the output value (and so its name): the node is removed and the value becomes
//! an initializer. A node folds only when its rule can evaluate it, every input is a constant
//! (except `Shape`/`Size`, which need only a static input shape), no output is a graph output,
//! and the tensors involved stay under [`PassOptions`](super::PassOptions) caps; `Constant` nodes
//! always become initializers (their tensor is moved, never re-encoded).
//!
//! Without folding, the sweep still evaluates what it could fold, but keeps the values on the
//! side (the graph is not rewritten), so shapes computed by shape arithmetic are known.
//!
//! Inferred types are merged with the types the model declared: a known inferred dimension
//! wins, an unknown one keeps the declared dimension.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, anyhow};

use super::ops::{self, MissingInfo, OpCx, is_constant};
use super::{NodeIssue, PassContext, UnsupportedOp};
use crate::ir::{DataType, Dim, Graph, NodeId, TensorType, ValueId, ValueType};
use crate::tensor::Tensor;

/// Opset assumed when a model imports no default-domain opset.
pub const FALLBACK_OPSET: i64 = 21;

/// Result of one sweep.
#[derive(Clone, Debug, Default)]
pub struct Sweep {
    /// Nodes replaced by initializers.
    pub folded: usize,
    /// Whether any value's type changed.
    pub retyped: bool,
    pub unsupported: BTreeMap<String, UnsupportedOp>,
    pub issues: Vec<NodeIssue>,
    pub warnings: Vec<String>,
}

fn numel(t: &TensorType) -> Option<u128> {
    t.static_dims().map(|d| {
        d.iter()
            .fold(1u128, |acc, &x| acc.saturating_mul(x.max(0) as u128))
    })
}

/// Merges an inferred type into the declared one (see the module docs).
pub fn merge(declared: Option<&ValueType>, inferred: TensorType) -> (TensorType, Option<String>) {
    let Some(ValueType::Tensor(old)) = declared else {
        return (inferred, None);
    };
    let mut note = None;
    if old.elem != inferred.elem && old.elem != DataType::UNDEFINED {
        note = Some(format!("declared {} but inferred {}", old, inferred));
    }
    let shape = match (&old.shape, inferred.shape) {
        (Some(o), Some(n)) if o.len() == n.len() => Some(
            o.iter()
                .zip(n)
                .map(|(od, nd)| match (od, nd) {
                    (Dim::Fixed(a), Dim::Fixed(b)) => {
                        if *a != b && note.is_none() {
                            note =
                                Some(format!("declared {old} but inferred dimension {b} for {a}"));
                        }
                        Dim::Fixed(b)
                    }
                    (_, Dim::Fixed(b)) => Dim::Fixed(b),
                    (Dim::Fixed(a), _) => Dim::Fixed(*a),
                    (_, Dim::Symbol(s)) => Dim::Symbol(s),
                    (od, Dim::Unknown) => od.clone(),
                })
                .collect(),
        ),
        (Some(o), Some(n)) => {
            note = Some(format!(
                "declared rank {} but inferred rank {}",
                o.len(),
                n.len()
            ));
            Some(n)
        }
        (o, None) => o.clone(),
        (None, n) => n,
    };
    (
        TensorType {
            elem: inferred.elem,
            shape,
        },
        note,
    )
}

enum Outcome {
    Types(Vec<TensorType>),
    Fold(Vec<crate::onnx::proto::TensorProto>),
    /// Evaluated without folding: types, and values to remember.
    Known(Vec<TensorType>, Vec<Tensor>),
    Nothing,
}

/// One sweep in topological order; folds when `fold` is set.
pub fn sweep(g: &mut Graph, cx: &PassContext, fold: bool) -> Result<Sweep> {
    let opset = ops::default_opset(g).unwrap_or(FALLBACK_OPSET);
    let mut out = Sweep::default();
    let mut known: HashMap<ValueId, Tensor> = HashMap::new();
    for id in g.topo_order()? {
        if !g.contains_node(id) {
            continue;
        }
        let outcome = visit(g, cx, &known, id, opset, fold, &mut out)?;
        let types = match outcome {
            Outcome::Known(types, values) => {
                for (v, t) in g.node(id).outputs().iter().zip(values) {
                    if let Some(v) = v {
                        known.insert(*v, t);
                    }
                }
                Outcome::Types(types)
            }
            o => o,
        };
        match types {
            Outcome::Nothing | Outcome::Known(..) => {}
            Outcome::Types(types) => {
                let outs: Vec<Option<ValueId>> = g.node(id).outputs().to_vec();
                for (v, t) in outs.into_iter().zip(types) {
                    let Some(v) = v else { continue };
                    let (t, note) = merge(g.value(v).ty.as_ref(), t);
                    if let Some(n) = note {
                        out.warnings
                            .push(format!("value `{}`: {n}", g.value(v).name));
                    }
                    let new = Some(ValueType::Tensor(t));
                    if g.value(v).ty != new {
                        g.value_mut(v).ty = new;
                        out.retyped = true;
                    }
                }
            }
            Outcome::Fold(protos) => {
                let outs: Vec<Option<ValueId>> = g.node(id).outputs().to_vec();
                g.remove_node(id);
                for (v, mut p) in outs.into_iter().zip(protos) {
                    let Some(v) = v else { continue };
                    p.name = Some(g.value(v).name.clone());
                    let val = g.value_mut(v);
                    val.ty = Some(ValueType::Tensor(TensorType::of_initializer(&p)));
                    val.init = Some(p);
                }
                out.folded += 1;
                out.retyped = true;
            }
        }
    }
    Ok(out)
}

fn visit(
    g: &Graph,
    cx: &PassContext,
    known: &HashMap<ValueId, Tensor>,
    id: NodeId,
    opset: i64,
    fold: bool,
    out: &mut Sweep,
) -> Result<Outcome> {
    let node = g.node(id);
    let issue = |message: String| NodeIssue {
        node: node.name.clone(),
        op: node.op_type.clone(),
        message,
    };
    let Some(def) = ops::registry::lookup(&node.domain, &node.op_type) else {
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}:{}", node.domain, node.op_type)
        };
        out.unsupported
            .entry(key.clone())
            .or_insert_with(|| UnsupportedOp {
                op: key,
                count: 0,
                first_node: node.name.clone(),
            })
            .count += 1;
        return Ok(Outcome::Nothing);
    };
    let is_output = node
        .outputs()
        .iter()
        .flatten()
        .any(|v| g.outputs.contains(v));
    // Without folding, small constants are remembered so shape arithmetic can be evaluated.
    if !fold
        && node.op_type == "Constant"
        && let Ok(p) = ops::shape::constant_proto(node)
        && Tensor::supports(DataType(p.data_type()))
        && p.dims.iter().all(|&d| d >= 0)
        && numel(&TensorType::of_initializer(&p))
            .is_some_and(|n| n <= cx.options.max_fold_elements as u128)
        && let Ok(t) = Tensor::from_proto(&p, &cx.store)
    {
        let ty = TensorType::fixed(t.dtype(), &t.dims());
        return Ok(Outcome::Known(vec![ty], vec![t]));
    }
    if fold && node.op_type == "Constant" && !is_output {
        return match ops::shape::constant_proto(node) {
            Ok(p) if p.dims.iter().all(|&d| d >= 0) => Ok(Outcome::Fold(vec![p])),
            Ok(_) => {
                out.issues.push(issue("Constant has negative dims".into()));
                Ok(Outcome::Nothing)
            }
            Err(e) => {
                out.issues.push(issue(format!("{e:#}")));
                Ok(Outcome::Nothing)
            }
        };
    }
    let ocx = OpCx::new(g, &cx.store, node, opset, cx.options.max_fold_elements).with_known(known);
    let types = match (def.infer)(&ocx) {
        Ok(t) => t,
        Err(e) if e.is::<MissingInfo>() => return Ok(Outcome::Nothing),
        Err(e) => {
            out.issues.push(issue(format!("{e:#}")));
            return Ok(Outcome::Nothing);
        }
    };
    if (!fold || !is_output)
        && let Some(eval) = def.eval
        && foldable(g, cx, known, node, def.eval_needs_values, &types)
    {
        match eval(&ocx) {
            Ok(Some(tensors)) => {
                let n_out = node.outputs().len();
                if tensors.len() < n_out {
                    return Err(anyhow!(
                        "internal: evaluating `{}` ({}) gave {} results for {n_out} outputs",
                        node.name,
                        node.op_type,
                        tensors.len()
                    ));
                }
                for (t, ty) in tensors.iter().zip(&types) {
                    if t.dtype() != ty.elem || Some(t.dims()) != ty.static_dims() {
                        return Err(anyhow!(
                            "internal: evaluating `{}` ({}) gave {}{:?}, its rule says {ty}",
                            node.name,
                            node.op_type,
                            t.dtype(),
                            t.shape()
                        ));
                    }
                }
                if !fold {
                    let mut tensors = tensors;
                    tensors.truncate(n_out);
                    return Ok(Outcome::Known(types, tensors));
                }
                return Ok(Outcome::Fold(
                    tensors
                        .iter()
                        .take(n_out)
                        .map(|t: &Tensor| t.to_proto(""))
                        .collect(),
                ));
            }
            Ok(None) => {}
            Err(e) => {
                out.issues.push(issue(format!("{e:#}")));
                return Ok(Outcome::Nothing);
            }
        }
    }
    Ok(Outcome::Types(types))
}

fn foldable(
    g: &Graph,
    cx: &PassContext,
    known: &HashMap<ValueId, Tensor>,
    node: &crate::ir::Node,
    needs_values: bool,
    types: &[TensorType],
) -> bool {
    let max = cx.options.max_fold_elements as u128;
    let max_float = cx.options.max_float_fold_elements as u128;
    let within = |t: &TensorType| match numel(t) {
        Some(n) => n <= max && (!t.elem.is_float() || n <= max_float),
        None => false,
    };
    if needs_values {
        for v in node.inputs().iter().flatten() {
            if !is_constant(g, *v) && !known.contains_key(v) {
                return false;
            }
            match g.value(*v).tensor_type() {
                Some(t) if within(t) => {}
                _ => return false,
            }
        }
    }
    let n_out = node.outputs().len();
    types.len() >= n_out
        && types[..n_out]
            .iter()
            .all(|t| within(t) && Tensor::supports(t.elem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;

    #[test]
    fn merge_prefers_known_dims() {
        let declared = ValueType::Tensor(TensorType {
            elem: DataType::FLOAT,
            shape: Some(vec![
                Dim::Symbol("batch".into()),
                Dim::Fixed(4),
                Dim::Unknown,
            ]),
        });
        let inferred = TensorType {
            elem: DataType::FLOAT,
            shape: Some(vec![Dim::Unknown, Dim::Fixed(4), Dim::Fixed(9)]),
        };
        let (t, note) = merge(Some(&declared), inferred);
        assert_eq!(t.to_string(), "f32[batch,4,9]");
        assert!(note.is_none());
    }
}
