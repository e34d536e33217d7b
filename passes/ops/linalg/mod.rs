//! Linear algebra and attention pieces: MatMul (numpy broadcasting of batch dims, 1-D
//! promotion), Gemm (`transA`/`transB`), Einsum (the general subscript rule, ellipsis and
//! implicit output included), the fused `Attention` operator (opset 23: 4-D
//! `[B, heads, S, D]` and 3-D `[B, S, heads·D]` forms, grouped heads, a KV cache) and the
//! softmax family.
//!
//! One file per operator family: `matmul` (MatMul, Gemm), `einsum`, `attention` (the fused
//! ONNX operator and the partition core it shares with `multi_head_attention`, ONNX Runtime's
//! operator) and `softmax`; this module holds their tables and the dimension helpers they
//! share.

use anyhow::{Result, bail};

use crate::ir::Dim;
use crate::ops::OpCx;
use crate::ops::def::OpDef;

mod attention;
mod einsum;
mod matmul;
mod multi_head_attention;
mod softmax;

use attention::{attention, cost_attention, part_attention};
use einsum::{cost_einsum, einsum, eval_einsum, part_einsum};
use matmul::{cost_gemm, cost_matmul, gemm, matmul, part_gemm, part_matmul};
use multi_head_attention::{
    cost_multi_head_attention, multi_head_attention, part_multi_head_attention,
};
use softmax::{cost_softmax, part_softmax, softmax};

pub use einsum::{Subscripts, einsum_dims, plain_subscripts};
pub use matmul::matmul_dims;

/// The linear-algebra family.
pub const OPS: &[OpDef] = &[
    OpDef::infer("MatMul", matmul)
        .split(part_matmul)
        .cost(cost_matmul),
    OpDef::infer("Gemm", gemm).split(part_gemm).cost(cost_gemm),
    OpDef::fold("Einsum", einsum, eval_einsum)
        .split(part_einsum)
        .cost(cost_einsum),
    OpDef::infer("Attention", attention)
        .split(part_attention)
        .cost(cost_attention),
    OpDef::infer("Softmax", softmax)
        .split(part_softmax)
        .cost(cost_softmax),
    OpDef::infer("LogSoftmax", softmax)
        .split(part_softmax)
        .cost(cost_softmax),
    OpDef::infer("Hardmax", softmax)
        .split(part_softmax)
        .cost(cost_softmax),
];

/// The attention operators of ONNX Runtime's domain ([`super::ORT_DOMAIN`]).
pub const ORT_OPS: &[OpDef] = &[OpDef::infer("MultiHeadAttention", multi_head_attention)
    .split(part_multi_head_attention)
    .cost(cost_multi_head_attention)];

fn merge_dim(a: &Dim, b: &Dim, what: &str) -> Result<Dim> {
    Ok(match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) if x != y => bail!("{what}: {x} vs {y}"),
        (Dim::Fixed(_), _) => a.clone(),
        (_, Dim::Fixed(_)) => b.clone(),
        (Dim::Symbol(x), Dim::Symbol(y)) if x == y => a.clone(),
        (Dim::Unknown, _) => b.clone(),
        _ => a.clone(),
    })
}

/// Whether input `port` is given (connected, or typed in a detached context).
fn present(cx: &OpCx<'_>, port: usize) -> bool {
    cx.has_input(port) || cx.types.get(port).is_some_and(Option::is_some)
}

/// `a / b` on a dim; unknown unless both are known.
fn div_dim(a: &Dim, b: i64, what: &str) -> Result<Dim> {
    match a {
        Dim::Fixed(x) if b > 0 && x % b == 0 => Ok(Dim::Fixed(x / b)),
        Dim::Fixed(x) => bail!("{what}: {x} is not a multiple of {b}"),
        _ => Ok(Dim::Unknown),
    }
}

fn add_dims(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x.checked_add(*y).map_or(Dim::Unknown, Dim::Fixed),
        _ => Dim::Unknown,
    }
}
