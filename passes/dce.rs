//! `dce`: removes nodes none of whose outputs reaches a graph output, then initializers and
//! values nothing reads.
//!
//! **Invariant:** after this pass every node contributes to a graph output and every
//! initializer is read. Rejects nothing.

use anyhow::Result;

use super::{Pass, PassContext};
use crate::ir::Graph;

/// See the module documentation.
pub struct DeadCode;

impl Pass for DeadCode {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn description(&self) -> &'static str {
        "remove dead nodes and unused initializers"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let before = g.value_ids().count();
        let removed = g.remove_dead_nodes();
        g.remove_unused_values();
        cx.diagnostics.removed += removed;
        Ok(removed > 0 || g.value_ids().count() != before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::onnx::ExternalStore;
    use crate::passes::test_graphs::{i64_init, model, node, vi};

    #[test]
    fn removes_dead_chains_and_unused_initializers() -> Result<()> {
        let f = DataType::FLOAT;
        let mut g = model(
            vec![
                node("Relu", "live", &["x"], &["y"]),
                node("Shape", "dead1", &["x"], &["s"]),
                node("Add", "dead2", &["s", "one"], &["t"]),
            ],
            vec![vi("x", f, &["2"])],
            vec![vi("y", f, &["2"])],
            vec![i64_init("one", &[1])],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        assert!(DeadCode.run(&mut g, &mut cx)?);
        assert_eq!(g.node_count(), 1);
        assert!(g.value_by_name("one").is_none());
        assert!(!DeadCode.run(&mut g, &mut cx)?);
        g.verify()?;
        Ok(())
    }
}
