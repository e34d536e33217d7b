//! `check-local`: re-runs shape inference on the local graph and checks that every value's
//! inferred type equals the local type `localize` expects (the full type with `dim / n` on the
//! split axis). A size-carrying constant that was not localized, or a rule that placed a value
//! wrongly, shows up here as a mismatch at the node that produces it.
//!
//! **Invariant:** after this pass every value of the local graph has a static type that shape
//! inference derives from the graph inputs alone; the types written to the rank graphs are
//! those. Rejects (as an internal error naming the node) any mismatch, any node the shape rules
//! find inconsistent, and any operator they do not know. In `naive` mode, values downstream of
//! a skipped gather (band-local attention) may differ from the band of the full tensor; they
//! take the inferred type.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::{Pass, PassContext, propagate};
use crate::ir::{Graph, TensorType, ValueId};

/// See the module documentation.
pub struct CheckLocal;

impl Pass for CheckLocal {
    fn name(&self) -> &'static str {
        "check-local"
    }
    fn description(&self) -> &'static str {
        "re-infer the local graph's shapes and check them against the expected band shapes"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let skipped: HashSet<_> = cx
            .local
            .as_ref()
            .map(|l| l.skipped_gathers.iter().copied().collect())
            .unwrap_or_default();
        check(g, cx, &skipped)?;
        Ok(false)
    }
}

fn check(g: &mut Graph, cx: &PassContext, skipped: &HashSet<crate::ir::NodeId>) -> Result<()> {
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
