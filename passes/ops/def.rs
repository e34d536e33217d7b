//! One row of operator knowledge: [`OpDef`] holds an operator's shape-and-type rule, its
//! constant evaluation, its partition rule (or the reason it refuses a split input) and, where
//! it matters for time, its cost rule, so they cannot drift apart.
//!
//! A cost rule ([`CostFn`]) counts the floating-point operations of one node (a multiply-add is
//! two) and the bytes it reads and writes, from its input and output types and attributes. Rows
//! without one cost what they move: every input and output once, no arithmetic
//! ([`default_cost`]).

use anyhow::Result;

use super::OpCx;
use super::layout::{Part, PartitionFn};
use crate::ir::TensorType;
use crate::tensor::Tensor;

/// Shape-and-type rule: one [`TensorType`] per output port (extra entries are ignored).
pub type InferFn = fn(&OpCx<'_>) -> Result<Vec<TensorType>>;
/// Evaluation on constant inputs; `Ok(None)` when this instance cannot be evaluated.
pub type EvalFn = fn(&OpCx<'_>) -> Result<Option<Vec<Tensor>>>;

/// FLOPs and memory traffic of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Floating-point operations (a multiply-add counts two).
    pub flops: f64,
    /// Bytes read from memory (inputs, weights included).
    pub bytes_read: f64,
    /// Bytes written (outputs).
    pub bytes_written: f64,
    /// Output tiles of a matrix-unit kernel: the [`TILE`]×[`TILE`] blocks of the output
    /// matrix (times the batch) that a GEMM, an implicit-GEMM convolution or a flash-attention
    /// kernel hands out to the GPU's multiprocessors, one per block ([`gemm_tiles`]). Zero for
    /// every other kernel. Summed over nodes, the total count.
    pub tiles: f64,
}

impl Cost {
    /// Total memory traffic.
    pub fn bytes(&self) -> f64 {
        self.bytes_read + self.bytes_written
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;

    /// Field by field.
    fn add(self, other: Cost) -> Cost {
        Cost {
            flops: self.flops + other.flops,
            bytes_read: self.bytes_read + other.bytes_read,
            bytes_written: self.bytes_written + other.bytes_written,
            tiles: self.tiles + other.tiles,
        }
    }
}

/// Cost rule: the node's [`Cost`] from its context (input types, attributes) and its output
/// types. Fails when a shape it needs is not static.
pub type CostFn = fn(&OpCx<'_>, &[TensorType]) -> Result<Cost>;

/// The side of the square output block one multiprocessor computes in a tensor-core GEMM
/// (128×128 is the common tile of cuBLAS/CUTLASS fp16 kernels and of flash attention's query
/// blocks).
pub const TILE: f64 = 128.0;

/// Output tiles of `batch` independent `m × n` matrix products: `batch · ⌈m/TILE⌉ · ⌈n/TILE⌉`.
pub fn gemm_tiles(batch: f64, m: f64, n: f64) -> f64 {
    batch * (m / TILE).ceil() * (n / TILE).ceil()
}

/// Tiles of a product whose output has static dims `y`: the last two are the matrix, the
/// others the batch (a vector output is one row).
pub fn matrix_output_tiles(y: &[i64]) -> f64 {
    match y {
        [] => 1.0,
        [n] => gemm_tiles(1.0, 1.0, *n as f64),
        [batch @ .., m, n] => {
            gemm_tiles(batch.iter().product::<i64>() as f64, *m as f64, *n as f64)
        }
    }
}

/// Bytes of a tensor of static type `t` (`None` when its shape or element size is unknown).
pub fn tensor_bytes(t: &TensorType) -> Option<f64> {
    let bits = t.elem.bits()? as f64;
    Some(t.numel()? as f64 * bits / 8.0)
}

/// Elements of static type `t`, or an error naming the missing shape.
pub fn numel(t: &TensorType) -> Result<f64> {
    t.numel()
        .map(|n| n as f64)
        .ok_or_else(|| anyhow::anyhow!("shape {t} is not static"))
}

/// Bytes of every connected input, and of every output, of a node.
pub fn io_bytes(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<(f64, f64)> {
    let mut read = 0.0;
    for port in 0..cx.n_inputs() {
        if !cx.has_input(port) {
            continue;
        }
        let t = cx.input(port)?;
        read +=
            tensor_bytes(t).ok_or_else(|| anyhow::anyhow!("input {port} ({t}) is not static"))?;
    }
    let mut written = 0.0;
    for t in outputs {
        written += tensor_bytes(t).ok_or_else(|| anyhow::anyhow!("output {t} is not static"))?;
    }
    Ok((read, written))
}

/// The cost of a row without a cost rule: what it moves, no arithmetic.
pub fn default_cost(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let (bytes_read, bytes_written) = io_bytes(cx, outputs)?;
    Ok(Cost {
        flops: 0.0,
        bytes_read,
        bytes_written,
        tiles: 0.0,
    })
}

/// A node that moves its inputs and outputs once and does `per_output` operations for every
/// element of its first output.
pub fn per_output_element(cx: &OpCx<'_>, outputs: &[TensorType], per_output: f64) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    if let Some(t) = outputs.first() {
        c.flops = per_output * numel(t)?;
    }
    Ok(c)
}

/// Cost of a view (a reshape of a contiguous tensor, a shape query): nothing is moved.
pub fn view_cost(_cx: &OpCx<'_>, _outputs: &[TensorType]) -> Result<Cost> {
    Ok(Cost::default())
}

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
    /// FLOPs and bytes of one node (`None`: [`default_cost`], bytes only).
    pub cost: Option<CostFn>,
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
            cost: None,
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
            cost: None,
        }
    }

    /// This operator's partition rule.
    pub const fn split(mut self, rule: PartitionFn) -> Self {
        self.partition = Part::Rule(rule);
        self
    }

    /// This operator's cost rule.
    pub const fn cost(mut self, rule: CostFn) -> Self {
        self.cost = Some(rule);
        self
    }

    /// The cost of one node of this operator: its cost rule, or [`default_cost`].
    pub fn cost_of(&self, cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
        match self.cost {
            Some(rule) => rule(cx, outputs),
            None => default_cost(cx, outputs),
        }
    }

    /// This operator refuses a split input, for `reason`.
    pub const fn refuse(mut self, reason: &'static str) -> Self {
        self.partition = Part::Refuse(reason);
        self
    }
}

/// Runs a row's cost rule on hand-made types, for the families' tests.
#[cfg(test)]
pub(crate) mod cost_testing {
    use anyhow::{Result, anyhow};

    use super::Cost;
    use crate::ir::TensorType;
    use crate::onnx::proto::AttributeProto;
    use crate::ops::OpCx;
    use crate::ops::registry::lookup;
    use crate::ops::testing::wired_node;
    use crate::tensor::Tensor;

    /// The cost of one node of `op` (default, internal or ONNX Runtime domain, looked up in that
    /// order) with the given input types and constant values; its output types come from the
    /// row's shape rule.
    pub fn cost(
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
    ) -> Result<Cost> {
        cost_in(def_domain(op), op, attrs, opset, types, values)
    }

    /// [`cost`] of the row of `op` in `domain`.
    pub fn cost_in(
        domain: &str,
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
    ) -> Result<Cost> {
        let def = lookup(domain, op).ok_or_else(|| anyhow!("no row for {op}"))?;
        let node = wired_node(domain, op, attrs, &types, &values, 1)?;
        let cx = OpCx::detached(&node, opset, types, values);
        let outs = (def.infer)(&cx)?;
        let outs: Vec<TensorType> = outs.into_iter().take(1).collect();
        def.cost_of(&cx, &outs)
    }

    fn def_domain(op: &str) -> &'static str {
        [
            "",
            crate::ops::norm::INTERNAL_DOMAIN,
            crate::ops::ORT_DOMAIN,
        ]
        .into_iter()
        .find(|d| lookup(d, op).is_some())
        .unwrap_or("")
    }

    /// An f32 tensor type.
    pub fn f32t(dims: &[i64]) -> Option<TensorType> {
        Some(TensorType::fixed(crate::ir::DataType::FLOAT, dims))
    }

    /// An f16 tensor type.
    pub fn f16t(dims: &[i64]) -> Option<TensorType> {
        Some(TensorType::fixed(crate::ir::DataType::FLOAT16, dims))
    }
}
