//! The phase verifier: the invariants of each [`Phase`], checked by the pass manager after
//! every pass once the graph has reached that phase (in debug builds and tests, or when asked;
//! the local graph's check runs always, since emitted plans rely on it).
//!
//! - [`Phase::Specialized`] and later: every value that has a type has a static one.
//! - [`Phase::Canonical`] and later: no `GroupNormalization` and no 4-D
//!   `InstanceNormalization` remains (group norms are one internal node, then lowered).
//! - [`Phase::Partitioned`]: every live value has exactly one layout, and a node whose inputs
//!   are all replicated has replicated outputs.
//! - [`Phase::Localizing`] (between `local-types` and `insert-exchanges`): only the invariants
//!   above that still hold (static types, canonical group norms).
//! - [`Phase::Local`]: shape inference from the graph inputs alone derives exactly the local
//!   types `localize` wrote (a size-carrying constant that was not localized, or a rule that
//!   placed a value wrongly, shows up as a mismatch at the node producing it); no internal
//!   operator remains; exchange slots are unique. In `naive` mode, values downstream of a
//!   skipped gather (band-local attention) may differ from the band of the full tensor; they
//!   take the inferred type.
//!
//! Every violation is dfc's fault: it is reported as [`crate::error::Internal`].

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::ops::norm::INTERNAL_DOMAIN;
use super::{PassContext, propagate};
use crate::contract::exchange::{ATTR_SLOT, DOMAIN};
use crate::ir::{Graph, Layout, Phase, TensorType, ValueId};

/// Checks the invariants of `g`'s phase (see the module documentation). The local check
/// re-infers types in place and puts the graph's own back afterwards, so `g` is left as it was
/// found (a copy of a large graph would cost more than the inference).
pub fn verify_phase(g: &mut Graph, cx: &PassContext) -> Result<()> {
    if g.phase >= Phase::Specialized {
        static_types(g)?;
    }
    if g.phase >= Phase::Canonical {
        canonical(g)?;
    }
    match g.phase {
        Phase::Partitioned => layouts(g),
        Phase::Local => local(g, cx),
        _ => Ok(()),
    }
}

fn static_types(g: &Graph) -> Result<()> {
    for v in g.value_ids() {
        let val = g.value(v);
        if let Some(t) = val.tensor_type()
            && (val.producer().is_some() || !val.uses().is_empty())
            && t.static_dims().is_none()
        {
            return Err(crate::internal!(
                "value `{}` has the non-static type {t} in a specialized graph",
                val.name
            ));
        }
    }
    Ok(())
}

fn canonical(g: &Graph) -> Result<()> {
    for id in g.node_ids() {
        let n = g.node(id);
        let four_d_instance_norm = n.op_type == "InstanceNormalization"
            && n.input(0)
                .and_then(|x| g.value(x).tensor_type())
                .and_then(|t| t.rank())
                == Some(4);
        if n.domain.is_empty() && (n.op_type == "GroupNormalization" || four_d_instance_norm) {
            return Err(crate::internal!(
                "node `{}` ({}) survived canonicalization",
                n.name,
                n.op_type
            ));
        }
    }
    Ok(())
}

fn layouts(g: &Graph) -> Result<()> {
    for v in g.value_ids() {
        let val = g.value(v);
        if val.layout.is_none() && (val.producer().is_some() || !val.uses().is_empty()) {
            return Err(crate::internal!(
                "value `{}` has no layout in a partitioned graph",
                val.name
            ));
        }
    }
    for id in g.node_ids() {
        let n = g.node(id);
        let replicated =
            |v: &Option<ValueId>| v.is_none_or(|v| g.value(v).layout == Some(Layout::Replicated));
        if n.inputs().iter().all(replicated) && !n.outputs().iter().all(replicated) {
            return Err(crate::internal!(
                "node `{}` ({}) has only replicated inputs but a split output",
                n.name,
                n.op_type
            ));
        }
    }
    Ok(())
}

fn local(g: &mut Graph, cx: &PassContext) -> Result<()> {
    let mut slots = HashSet::new();
    for id in g.node_ids() {
        let n = g.node(id);
        if n.domain == INTERNAL_DOMAIN {
            return Err(crate::internal!(
                "internal operator `{}` ({}) remains in the local graph",
                n.name,
                n.op_type
            ));
        }
        if n.domain == DOMAIN && !slots.insert(n.attr_i(ATTR_SLOT, -1)) {
            return Err(crate::internal!(
                "exchange slot {} is used twice (node `{}`)",
                n.attr_i(ATTR_SLOT, -1),
                n.name
            ));
        }
    }
    // Inference rewrites types: keep the graph's own and restore them whatever the outcome.
    let saved: Vec<_> = g
        .value_ids()
        .filter(|&v| g.value(v).producer().is_some())
        .map(|v| (v, g.value(v).ty.clone()))
        .collect();
    let checked = reinfer_local_types(g, cx);
    for (v, ty) in saved {
        g.value_mut(v).ty = ty;
    }
    checked
}

/// Re-infers every produced value's type of the local graph `g` from its inputs alone and
/// checks it against the type `localize` wrote; values downstream of a gather skipped in
/// `naive` mode take the inferred type. `localize` runs it to settle those types, the verifier
/// to check (restoring the graph's own types afterwards).
pub(super) fn reinfer_local_types(g: &mut Graph, cx: &PassContext) -> Result<()> {
    let skipped: HashSet<crate::ir::NodeId> = cx
        .local
        .as_ref()
        .map(|l| l.skipped_gathers.iter().copied().collect())
        .unwrap_or_default();
    let skipped = &skipped;
    let mut expected: HashMap<ValueId, TensorType> = HashMap::new();
    let produced: Vec<ValueId> = g
        .value_ids()
        .filter(|&v| g.value(v).producer().is_some())
        .collect();
    for &v in &produced {
        if let Some(t) = g.value(v).tensor_type() {
            expected.insert(v, t.clone());
        }
        // Forget declared types so inference starts from the inputs alone.
        g.value_mut(v).ty = None;
    }
    let sweep = propagate::sweep(g, cx, false)?;
    if let Some(u) = sweep.unsupported.values().next() {
        return Err(crate::internal!(
            "the local graph has an operator the shape rules do not know: {} (node `{}`)",
            u.op,
            u.first_node
        ));
    }
    if let Some(i) = sweep.issues.first() {
        return Err(crate::internal!("the local graph is inconsistent at {i}"));
    }
    let mut tainted: HashSet<ValueId> = HashSet::new();
    for id in g.topo_order()? {
        let node = g.node(id);
        let from_skipped =
            skipped.contains(&id) || node.inputs().iter().flatten().any(|v| tainted.contains(v));
        for v in node.outputs().iter().flatten() {
            let got = g.value(*v).tensor_type().cloned();
            let want = expected.get(v);
            let Some(got) = got.filter(|t| t.static_dims().is_some()) else {
                return Err(crate::internal!(
                    "value `{}` of node `{}` ({}) has no static type in the local graph",
                    g.value(*v).name,
                    node.name,
                    node.op_type
                ));
            };
            if want.is_some_and(|w| *w != got) {
                if from_skipped {
                    tainted.insert(*v);
                    continue;
                }
                return Err(crate::internal!(
                    "node `{}` ({}) produces `{}` as {got}, but its band should be {}",
                    node.name,
                    node.op_type,
                    g.value(*v).name,
                    want.map(|w| w.to_string()).unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DataType, ValueType};
    use crate::passes::test_graphs::{model, node, vi};
    use crate::passes::{BandRequest, PassManager};

    fn relu_conv() -> Graph {
        let f = DataType::FLOAT;
        let mut conv = node("Conv", "conv", &["x", "w"], &["y"]);
        conv.attribute
            .push(crate::onnx::proto::AttributeProto::ints(
                "pads",
                &[1, 1, 1, 1],
            ));
        let w = {
            let mut t = crate::tensor::Tensor::zeros(f, &[4, 4, 3, 3])
                .expect("zeros")
                .to_proto("w");
            t.name = Some("w".into());
            t
        };
        model(
            vec![node("Relu", "relu", &["x0"], &["x"]), conv],
            vec![vi("x0", f, &["1", "4", "8", "8"])],
            vec![vi("y", f, &["?", "?", "?", "?"])],
            vec![w],
            17,
        )
    }

    fn cx() -> PassContext {
        let mut cx = PassContext::new(crate::onnx::ExternalStore::new(std::env::temp_dir()));
        cx.partition_options.bands = BandRequest::Count(2);
        cx.options.verify = true;
        cx
    }

    #[test]
    fn each_phase_holds_after_its_pass_and_breaks_are_caught() -> anyhow::Result<()> {
        let mut g = relu_conv();
        let mut cx = cx();
        let pm = PassManager::from_names(&["fold-constants", "canonicalize", "partition"])?;
        pm.run(&mut g, &mut cx)?;
        assert_eq!(g.phase, Phase::Partitioned);
        verify_phase(&mut g, &cx)?;
        // A value without a layout breaks the partitioned phase.
        let x = g.inputs[0];
        g.value_mut(x).layout = None;
        let e = verify_phase(&mut g, &cx).expect_err("no layout");
        assert!(
            crate::error::is_internal(&e) && e.to_string().contains("no layout"),
            "{e}"
        );
        g.value_mut(x).layout = Some(Layout::Split { axis: 2 });
        PassManager::from_names(&["local-types", "lower-group-norm", "insert-exchanges"])?
            .run(&mut g, &mut cx)?;
        assert_eq!(g.phase, Phase::Local);
        verify_phase(&mut g, &cx)?;
        // A local type that inference does not derive breaks the local phase.
        let y = g.outputs[0];
        let wrong = crate::ir::TensorType::fixed(DataType::FLOAT, &[1, 4, 8, 8]);
        g.value_mut(y).ty = Some(ValueType::Tensor(wrong));
        let e = verify_phase(&mut g, &cx).expect_err("full-size type in a band graph");
        assert!(e.to_string().contains("its band should be"), "{e}");
        Ok(())
    }

    #[test]
    fn a_group_normalization_left_after_canonicalize_is_caught() -> anyhow::Result<()> {
        let mut g = relu_conv();
        let mut cx = cx();
        PassManager::from_names(&["fold-constants", "canonicalize"])?.run(&mut g, &mut cx)?;
        assert_eq!(g.phase, Phase::Canonical);
        verify_phase(&mut g, &cx)?;
        let relu = g
            .node_ids()
            .find(|&id| g.node(id).op_type == "Relu")
            .expect("relu");
        g.node_mut(relu).op_type = "GroupNormalization".into();
        let e = verify_phase(&mut g, &cx).expect_err("not canonical");
        assert!(e.to_string().contains("survived canonicalization"), "{e}");
        Ok(())
    }
}
