//! `infer-shapes`: gives every node output a type (element type and shape, symbolic where the
//! input is symbolic) from the operator rules in [`super::ops`], merged with the types the model
//! declares.
//!
//! **Invariant:** after this pass, every output of a supported node whose inputs are typed has
//! a type. Nothing is rejected: unsupported operators and inconsistent nodes are recorded in
//! [`super::Diagnostics`] (`unsupported`, `issues`) for the caller to report; their outputs keep
//! their declared types.

use anyhow::Result;

use super::{Pass, PassContext, propagate};
use crate::ir::Graph;

/// See the module documentation.
pub struct InferShapes;

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        "infer-shapes"
    }
    fn description(&self) -> &'static str {
        "type every value from the operator rules (no rewriting)"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let sweep = propagate::sweep(g, cx, false)?;
        let d = &mut cx.diagnostics;
        d.unsupported = sweep.unsupported;
        d.issues = sweep.issues;
        d.warnings.extend(sweep.warnings);
        Ok(sweep.retyped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::onnx::ExternalStore;
    use crate::onnx::proto::AttributeProto;
    use crate::passes::test_graphs::{model, node, vi};

    #[test]
    fn symbolic_shapes_flow_and_unknown_ops_are_recorded() -> Result<()> {
        let f = DataType::FLOAT;
        let mut g = model(
            vec![
                node("Relu", "relu", &["x"], &["a"]),
                node("Transpose", "tr", &["a"], &["b"]),
                node("MyOp", "custom", &["b"], &["c"]),
                node("Sigmoid", "sig", &["c"], &["y"]),
            ],
            vec![vi("x", f, &["batch", "3", "?"])],
            vec![vi("y", f, &["?", "?", "?"])],
            vec![],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        InferShapes.run(&mut g, &mut cx)?;
        let b = g
            .value_by_name("b")
            .map(|v| g.value(v).tensor_type().map(|t| t.to_string()));
        assert_eq!(b, Some(Some("f32[?,3,batch]".to_string())));
        assert_eq!(cx.diagnostics.unsupported.len(), 1);
        assert_eq!(cx.diagnostics.unsupported["MyOp"].first_node, "custom");
        Ok(())
    }

    #[test]
    fn shape_arithmetic_is_evaluated_without_rewriting() -> Result<()> {
        let f = DataType::FLOAT;
        let k = node("Constant", "k", &[], &["k"])
            .with_attrs([AttributeProto::ints("value_ints", &[-1])]);
        let mut g = model(
            vec![
                node("Shape", "s", &["x"], &["s"]),
                node("Concat", "c", &["s", "k"], &["spec"]),
                node("Unsqueeze", "u", &["x", "zero"], &["xu"]),
                k,
                node("Reshape", "r", &["xu", "spec"], &["y"]),
            ],
            vec![vi("x", f, &["2", "3"])],
            vec![vi("y", f, &["?", "?", "?"])],
            vec![crate::passes::test_graphs::i64_init("zero", &[0])],
            13,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        InferShapes.run(&mut g, &mut cx)?;
        assert_eq!(g.node_count(), 5);
        let y = g.outputs[0];
        assert_eq!(
            g.value(y).tensor_type().map(|t| t.to_string()),
            Some("f32[2,3,1]".into())
        );
        Ok(())
    }
}
