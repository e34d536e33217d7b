//! Elementwise operators: numpy-broadcasting binary and variadic ops, comparisons and logic
//! (bool results), and unary activations and math.
//!
//! Folding covers integer and small float arithmetic whose result is exactly what ONNX
//! Runtime computes (`+ - * /`, `Mod`, `Min`, `Max`, comparisons, logic, `Neg`, `Abs`,
//! `Floor`, `Ceil`, `Round`, `Sqrt`, `Reciprocal`, `Sign`); transcendental functions are never
//! folded, so no result depends on a libm. Arithmetic on 16-bit floats is not folded either:
//! ONNX Runtime's CPU provider computes runs of such nodes in f32 without rounding between
//! them, so a folded (correctly rounded) f16 constant would differ from what it computes.
//!
//! Partition rule: every operator here broadcasts ([`broadcast`]): outputs are split like the
//! split inputs; a replicated input of extent 1 on the split axis broadcasts, one with the full
//! extent is sliced per band; inputs split on different axes gather the later one.
//!
//! ONNX Runtime's `com.microsoft:Gelu` (the exact, erf-based GELU its transformer optimizer
//! fuses the `Div → Erf → Add → Mul → Mul` chain into) is one more unary row, in [`ORT_OPS`].

use anyhow::{Result, bail};

use super::def::{Cost, OpDef, per_output_element};
use super::layout::broadcast;
use super::{OpCx, broadcast_all, same_as, tt};
use crate::ir::{DataType, TensorType};
use crate::tensor::{BinOp, CmpOp, Tensor, UnaryOp};

fn binary(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    variadic(cx)
}

fn variadic(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    if cx.n_inputs() == 0 {
        bail!("no inputs");
    }
    let elem = cx.elem(0)?;
    let mut shapes = Vec::with_capacity(cx.n_inputs());
    for i in 0..cx.n_inputs() {
        shapes.push(cx.input(i)?.shape.as_deref());
    }
    Ok(vec![tt(elem, broadcast_all(&shapes)?)])
}

fn to_bool(mut t: Vec<TensorType>) -> Vec<TensorType> {
    for x in &mut t {
        x.elem = DataType::BOOL;
    }
    t
}

fn compare(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let shape = broadcast_all(&[a.shape.as_deref(), b.shape.as_deref()])?;
    Ok(vec![tt(DataType::BOOL, shape)])
}

fn unary(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    same_as(cx, 0)
}

fn unary_bool(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    Ok(to_bool(same_as(cx, 0)?))
}

fn prelu(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    // The slope broadcasts to X (unidirectionally): the output has X's type.
    let x = cx.input(0)?;
    if let (Some(xs), Some(Some(ss))) = (
        &x.shape,
        cx.types
            .get(1)
            .map(|t| t.as_ref().and_then(|t| t.shape.as_ref())),
    ) {
        let b = super::broadcast(xs, ss)?;
        if b.len() != xs.len() {
            bail!(
                "slope of rank {} does not broadcast to X of rank {}",
                ss.len(),
                xs.len()
            );
        }
    }
    Ok(vec![x.clone()])
}

fn bin_op(op: &str, fmod: bool) -> Option<BinOp> {
    Some(match op {
        "Add" | "Sum" => BinOp::Add,
        "Sub" => BinOp::Sub,
        "Mul" => BinOp::Mul,
        "Div" => BinOp::Div,
        "Mod" if fmod => BinOp::FMod,
        "Mod" => BinOp::Mod,
        "Min" => BinOp::Min,
        "Max" => BinOp::Max,
        "Pow" => BinOp::Pow,
        _ => return None,
    })
}

/// Whether arithmetic on `t` may be folded (not on 16-bit floats; see the module docs).
fn foldable_arith(t: &Tensor) -> bool {
    !matches!(t.dtype(), DataType::FLOAT16 | DataType::BFLOAT16)
}

fn eval_binary(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let op = cx.node.op_type.as_str();
    if !foldable_arith(cx.val(0)?) {
        return Ok(None);
    }
    let Some(bop) = bin_op(op, cx.attr_i("fmod", 0) != 0) else {
        return Ok(None);
    };
    let a = cx.val(0)?;
    let b = cx.val(1)?;
    if bop == BinOp::Pow && (a.dtype() != b.dtype() || a.dtype().is_float()) {
        // Float powers depend on the libm; mixed-type Pow needs promotion rules: not folded.
        return Ok(None);
    }
    if a.dtype().is_float() && bop == BinOp::Mod {
        // Float Mod requires fmod=1 in ONNX; fmod=0 on floats is invalid.
        bail!("Mod on floating-point inputs requires fmod=1");
    }
    Ok(Some(vec![a.binary(bop, b)?]))
}

fn eval_variadic(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let op = cx.node.op_type.as_str();
    let Some(bop) = bin_op(op, false) else {
        return Ok(None);
    };
    let mut acc = cx.val(0)?.clone();
    if !foldable_arith(&acc) {
        return Ok(None);
    }
    for i in 1..cx.n_inputs() {
        acc = acc.binary(bop, cx.val(i)?)?;
    }
    Ok(Some(vec![acc]))
}

fn eval_compare(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let op = match cx.node.op_type.as_str() {
        "Equal" => CmpOp::Eq,
        "Less" => CmpOp::Lt,
        "Greater" => CmpOp::Gt,
        "LessOrEqual" => CmpOp::Le,
        "GreaterOrEqual" => CmpOp::Ge,
        _ => return Ok(None),
    };
    Ok(Some(vec![cx.val(0)?.compare(op, cx.val(1)?)?]))
}

fn eval_logic(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    Ok(Some(vec![cx.val(0)?.logic(&cx.node.op_type, cx.val(1)?)?]))
}

fn eval_unary(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let op = match cx.node.op_type.as_str() {
        "Neg" => UnaryOp::Neg,
        "Abs" => UnaryOp::Abs,
        "Floor" => UnaryOp::Floor,
        "Ceil" => UnaryOp::Ceil,
        "Round" => UnaryOp::Round,
        "Sqrt" => UnaryOp::Sqrt,
        "Reciprocal" => UnaryOp::Reciprocal,
        "Sign" => UnaryOp::Sign,
        "Not" => UnaryOp::Not,
        _ => return Ok(None),
    };
    if !foldable_arith(cx.val(0)?) {
        return Ok(None);
    }
    Ok(Some(vec![cx.val(0)?.unary(op)?]))
}

fn eval_mean(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    let first = cx.val(0)?;
    if !first.dtype().is_float() || !foldable_arith(first) {
        return Ok(None);
    }
    let mut acc = first.clone();
    for i in 1..cx.n_inputs() {
        acc = acc.binary(BinOp::Add, cx.val(i)?)?;
    }
    let n = Tensor::scalar(cx.n_inputs() as f64).cast(first.dtype())?;
    Ok(Some(vec![acc.binary(BinOp::Div, &n)?]))
}

/// The elementwise family.
pub const OPS: &[OpDef] = &[
    OpDef::fold("Add", binary, eval_binary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Sub", binary, eval_binary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Mul", binary, eval_binary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Div", binary, eval_binary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Mod", binary, eval_binary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Pow", pow, eval_binary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("BitShift", binary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("PRelu", prelu)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Equal", compare, eval_compare)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Less", compare, eval_compare)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Greater", compare, eval_compare)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("LessOrEqual", compare, eval_compare)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("GreaterOrEqual", compare, eval_compare)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("And", compare, eval_logic)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Or", compare, eval_logic)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Xor", compare, eval_logic)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Not", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Min", variadic, eval_variadic)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Max", variadic, eval_variadic)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Sum", variadic, eval_variadic)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Mean", variadic, eval_mean)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Neg", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Abs", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Floor", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Ceil", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Round", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Sqrt", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Reciprocal", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::fold("Sign", unary, eval_unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("Exp", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Log", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Erf", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Gelu", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Sigmoid", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Tanh", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Relu", unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("LeakyRelu", unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("Elu", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Selu", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Celu", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("ThresholdedRelu", unary)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("Mish", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Softplus", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Softsign", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("HardSigmoid", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("HardSwish", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Sin", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Cos", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Tan", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Asin", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Acos", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Atan", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Sinh", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("Cosh", unary)
        .split(broadcast)
        .cost(cost_transcendental),
    OpDef::infer("IsNaN", unary_bool)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("IsInf", unary_bool)
        .split(broadcast)
        .cost(cost_arith),
    OpDef::infer("Clip", unary)
        .split(broadcast)
        .cost(cost_arith),
];

/// The elementwise operators of ONNX Runtime's domain ([`super::ORT_DOMAIN`]).
pub const ORT_OPS: &[OpDef] = &[OpDef::infer("Gelu", unary)
    .split(broadcast)
    .cost(cost_transcendental)];

/// Arithmetic, comparisons, logic, min/max: one operation per output element.
fn cost_arith(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    per_output_element(cx, outputs, 1.0)
}

/// Transcendental functions (exp, erf, sigmoid, GELU, trigonometry, powers): counted as 8
/// operations per output element (a polynomial or a few special-function instructions).
fn cost_transcendental(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    per_output_element(cx, outputs, 8.0)
}

fn pow(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    // Pow's output has the base's type; the exponent may differ (opset 12+).
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    Ok(vec![tt(
        a.elem,
        broadcast_all(&[a.shape.as_deref(), b.shape.as_deref()])?,
    )])
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::ir::DataType;
    use crate::tensor::Tensor;

    #[test]
    fn broadcasting_rules() {
        let f = DataType::FLOAT;
        assert_eq!(
            infer_text(
                "Add",
                vec![],
                17,
                vec![f32t(&[2, 1, 4]), f32t(&[3, 1])],
                vec![]
            ),
            "f32[2,3,4]"
        );
        assert_eq!(
            infer_text(
                "Mul",
                vec![],
                17,
                vec![sym(f, &["b", "c", "h", "w"]), f32t(&[1, 1])],
                vec![]
            ),
            "f32[b,c,h,w]"
        );
        assert_eq!(
            infer_text(
                "Add",
                vec![],
                17,
                vec![sym(f, &["b", "4"]), sym(f, &["n", "4"])],
                vec![]
            ),
            "f32[?,4]"
        );
        assert_eq!(
            infer_text(
                "Sum",
                vec![],
                17,
                vec![f32t(&[2, 3]), f32t(&[3]), f32t(&[1, 1])],
                vec![]
            ),
            "f32[2,3]"
        );
        assert!(
            infer_text("Add", vec![], 17, vec![f32t(&[2, 3]), f32t(&[4])], vec![])
                .starts_with("error")
        );
        assert_eq!(
            infer_text("Less", vec![], 17, vec![f32t(&[2, 3]), f32t(&[3])], vec![]),
            "bool[2,3]"
        );
        assert_eq!(
            infer_text("IsNaN", vec![], 17, vec![f32t(&[5])], vec![]),
            "bool[5]"
        );
        assert_eq!(
            infer_text("Gelu", vec![], 20, vec![f32t(&[5, 2])], vec![]),
            "f32[5,2]"
        );
    }

    #[test]
    fn folds_integer_arithmetic() -> anyhow::Result<()> {
        let a = Tensor::from_i64s(&[6, -7]);
        let b = Tensor::from_i64s(&[4]);
        let r = eval("Div", vec![], 17, vec![Some(a.clone()), Some(b.clone())])?;
        assert_eq!(r[0].to_i64s()?, vec![1, -1]);
        let r = eval("Mod", vec![], 17, vec![Some(a.clone()), Some(b.clone())])?;
        assert_eq!(r[0].to_i64s()?, vec![2, 1]);
        let r = eval(
            "Equal",
            vec![],
            17,
            vec![Some(a), Some(Tensor::from_i64s(&[6]))],
        )?;
        assert_eq!(r[0].to_i64s()?, vec![1, 0]);
        assert!(
            eval(
                "Div",
                vec![],
                17,
                vec![Some(b), Some(Tensor::from_i64s(&[0]))]
            )
            .is_err()
        );
        Ok(())
    }
}

#[cfg(test)]
mod cost_tests {
    use super::super::def::cost_testing::{cost, f32t};

    #[test]
    fn elementwise_ops_cost_per_output_element() {
        // [2,3] + [3]: 6 additions; reads 9 floats, writes 6.
        let c = cost("Add", vec![], 17, vec![f32t(&[2, 3]), f32t(&[3])], vec![]).unwrap();
        assert_eq!((c.flops, c.bytes_read, c.bytes_written), (6.0, 36.0, 24.0));
        // A transcendental: 8 operations per element.
        let c = cost("Sigmoid", vec![], 17, vec![f32t(&[4])], vec![]).unwrap();
        assert_eq!((c.flops, c.bytes_read, c.bytes_written), (32.0, 16.0, 16.0));
    }
}
