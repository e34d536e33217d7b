//! `fold-constants`: types every value (as `infer-shapes`) and replaces nodes computable at
//! compile time by initializers, repeating until nothing changes.
//!
//! **Invariant:** after this pass no supported node has only constant inputs and a foldable
//! result within the size caps; `Constant` nodes are gone (their tensors are initializers);
//! `Shape`/`Size` of a static shape are constants. Values keep their names. Weights are never
//! rewritten: floating-point tensors larger than `max_float_fold_elements` are neither read nor
//! produced. Rejects nothing; an integer division by zero or an out-of-range index in shape
//! arithmetic is recorded as a node issue and the node is left in place.

use anyhow::{Result, bail};

use super::{Pass, PassContext, propagate};
use crate::ir::Graph;

/// Sweeps after which folding is considered stuck (each sweep folds whole chains already).
const MAX_SWEEPS: usize = 32;

/// See the module documentation.
pub struct FoldConstants;

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold-constants"
    }
    fn description(&self) -> &'static str {
        "infer types and fold constant subgraphs (Constant nodes, shape arithmetic) to initializers"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let mut changed = false;
        for _ in 0..MAX_SWEEPS {
            let sweep = propagate::sweep(g, cx, true)?;
            changed |= sweep.retyped;
            cx.diagnostics.folded += sweep.folded;
            cx.diagnostics.warnings.extend(sweep.warnings);
            cx.diagnostics.unsupported = sweep.unsupported;
            cx.diagnostics.issues = sweep.issues;
            if sweep.folded == 0 && !sweep.retyped {
                return Ok(changed);
            }
            if sweep.folded == 0 {
                // Types changed but nothing folded: one more sweep settles them.
                continue;
            }
        }
        bail!("constant folding did not settle after {MAX_SWEEPS} sweeps")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::onnx::ExternalStore;
    use crate::onnx::proto::AttributeProto;
    use crate::passes::dce::DeadCode;
    use crate::passes::test_graphs::{dynamic_reshape, i64_init, model, node, vi};
    use crate::tensor::Tensor;

    fn cx() -> PassContext {
        PassContext::new(ExternalStore::new(std::env::temp_dir()))
    }

    #[test]
    fn shape_chain_folds_once_input_is_static() -> Result<()> {
        let mut g = dynamic_reshape();
        // Dynamic: nothing but types.
        let mut c = cx();
        FoldConstants.run(&mut g, &mut c)?;
        assert_eq!(c.diagnostics.folded, 0);
        assert_eq!(g.node_count(), 6);
        // Make the input static, then the whole shape chain folds.
        let x = g.inputs[0];
        g.value_mut(x).ty = Some(crate::ir::ValueType::Tensor(crate::ir::TensorType::fixed(
            DataType::FLOAT,
            &[2, 4, 3, 3],
        )));
        FoldConstants.run(&mut g, &mut c)?;
        DeadCode.run(&mut g, &mut c)?;
        assert_eq!(g.node_count(), 2, "{}", g.dump());
        let spec = g
            .value_by_name("spec")
            .and_then(|v| g.value(v).init.clone());
        let spec = Tensor::from_proto(&spec.unwrap_or_default(), &c.store)?;
        assert_eq!(spec.to_i64s()?, vec![2, -1]);
        let y = g
            .value_by_name("y")
            .and_then(|v| g.value(v).tensor_type().cloned());
        assert_eq!(y.map(|t| t.to_string()), Some("f32[2,36]".into()));
        g.verify()?;
        Ok(())
    }

    #[test]
    fn constants_become_initializers_and_big_floats_stay() -> Result<()> {
        let f = DataType::FLOAT;
        let k = node("Constant", "k", &[], &["k"])
            .with_attrs([AttributeProto::ints("value_ints", &[3, 4])]);
        let big = Tensor::zeros(f, &[1100, 4])?.to_proto("w");
        let mut g = model(
            vec![
                k,
                node("Transpose", "wt", &["w"], &["wt"]),
                node("Reshape", "r", &["x", "k"], &["xr"]),
                node("MatMul", "mm", &["xr", "wt"], &["y"]),
                node("Div", "div", &["k", "zero"], &["bad"]),
                node("Identity", "id", &["bad"], &["bad2"]),
            ],
            vec![vi("x", f, &["12"])],
            vec![vi("y", f, &["?", "?"]), vi("bad2", DataType::INT64, &["?"])],
            vec![big, i64_init("zero", &[0])],
            17,
        );
        let mut c = cx();
        FoldConstants.run(&mut g, &mut c)?;
        let ops: Vec<String> = g
            .topo_order()?
            .into_iter()
            .map(|n| g.node(n).op_type.clone())
            .collect();
        assert_eq!(ops, ["Transpose", "Reshape", "MatMul", "Div", "Identity"]);
        assert!(
            c.diagnostics
                .issues
                .iter()
                .any(|i| i.node == "div" && i.message.contains("division by zero"))
        );
        assert_eq!(
            g.value_by_name("y")
                .and_then(|v| g.value(v).tensor_type().map(|t| t.to_string())),
            Some("f32[3,1100]".into())
        );
        g.verify()?;
        Ok(())
    }
}
