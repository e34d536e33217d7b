//! One row of operator knowledge: [`OpDef`] holds an operator's shape-and-type rule, its
//! constant evaluation and its partition rule (or the reason it refuses a split input), so the
//! three cannot drift apart.

use anyhow::Result;

use super::OpCx;
use super::layout::{Part, PartitionFn};
use crate::ir::TensorType;
use crate::tensor::Tensor;

/// Shape-and-type rule: one [`TensorType`] per output port (extra entries are ignored).
pub type InferFn = fn(&OpCx<'_>) -> Result<Vec<TensorType>>;
/// Evaluation on constant inputs; `Ok(None)` when this instance cannot be evaluated.
pub type EvalFn = fn(&OpCx<'_>) -> Result<Option<Vec<Tensor>>>;

/// What dfc knows about one operator.
pub struct OpDef {
    pub op_type: &'static str,
    pub infer: InferFn,
    pub eval: Option<EvalFn>,
    /// Whether `eval` needs every input's value; `false` for ops that read only input types
    /// (`Shape`, `Size`), which fold whenever the input's shape is static.
    pub eval_needs_values: bool,
    /// How a split input is partitioned; every row declares it ([`OpDef::split`] or
    /// [`OpDef::refuse`]), which `registry`'s tests check.
    pub partition: Part,
}

impl OpDef {
    /// An operator with a shape rule only.
    pub const fn infer(op_type: &'static str, infer: InferFn) -> Self {
        Self {
            op_type,
            infer,
            eval: None,
            eval_needs_values: true,
            partition: Part::Undeclared,
        }
    }

    /// An operator with a shape rule and constant evaluation.
    pub const fn fold(op_type: &'static str, infer: InferFn, eval: EvalFn) -> Self {
        Self {
            op_type,
            infer,
            eval: Some(eval),
            eval_needs_values: true,
            partition: Part::Undeclared,
        }
    }

    /// This operator's partition rule.
    pub const fn split(mut self, rule: PartitionFn) -> Self {
        self.partition = Part::Rule(rule);
        self
    }

    /// This operator refuses a split input, for `reason`.
    pub const fn refuse(mut self, reason: &'static str) -> Self {
        self.partition = Part::Refuse(reason);
        self
    }
}
