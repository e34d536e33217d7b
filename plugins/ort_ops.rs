//! The exchange operators as ONNX Runtime custom operators (domain `dfc`), through `ort`'s
//! custom-operator API.
//!
//! Each session registers its own [`operator_domain`], bound to the [`RankContext`] of the rank
//! it runs; the kernels read `slot`, `axis`, `top` and `bottom` from the node and call the
//! backend-independent semantics of [`super::exchange`]. Registered element types: f32 and f16
//! for `DfcHaloExchange` and `DfcPatchAllGather`, f32 for `DfcStatsAllReduce`.
//!
//! A kernel never panics into ONNX Runtime (a panic across the C boundary would abort the
//! process): panics are caught and returned as errors.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use half::f16;
use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput, ShapeInferenceContext,
};
use ort::value::{PrimitiveTensorElementType, Shape, TensorElementType, ValueType};

use crate::contract::exchange::{ATTR_AXIS, ATTR_BOTTOM, ATTR_PARTS, ATTR_SLOT, ATTR_TOP};
use crate::plan::ExchangeKind;

use super::exchange::{
    Element, Halo, RankContext, gather_output_shape, halo_exchange, halo_output_shape,
    patch_all_gather, stats_all_reduce,
};

pub use crate::contract::exchange::DOMAIN;

/// An operator domain `dfc` with every exchange operator bound to `ctx`. Register one per
/// session (`SessionBuilder::with_operators`).
pub fn operator_domain(ctx: Arc<RankContext>) -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(AxisOp::<f32>::halo(ctx.clone()))?
        .add(AxisOp::<f16>::halo(ctx.clone()))?
        .add(StatsOp { ctx: ctx.clone() })?
        .add(AxisOp::<f32>::gather(ctx.clone()))?
        .add(AxisOp::<f16>::gather(ctx))
}

/// Element types an exchange kernel can be registered for.
pub trait KernelElement: Element + PrimitiveTensorElementType {}
impl KernelElement for f32 {}
impl KernelElement for f16 {}

fn ty<T: KernelElement>() -> TensorElementType {
    T::into_tensor_element_type()
}

/// A required integer attribute; the error names the node.
fn int_attr(k: &KernelContext<'_>, op: &str, node: &str, name: &str) -> ort::Result<i64> {
    k.get::<i64>(name).ok_or_else(|| {
        ort::Error::new(format!(
            "{op} node `{node}` has no integer attribute `{name}`"
        ))
    })
}

/// A non-negative integer attribute (defaults to `default` when given).
fn usize_attr(
    k: &KernelContext<'_>,
    op: &str,
    node: &str,
    name: &str,
    default: Option<i64>,
) -> ort::Result<usize> {
    let v = match (k.get::<i64>(name), default) {
        (Some(v), _) => v,
        (None, Some(d)) => d,
        (None, None) => int_attr(k, op, node, name)?,
    };
    usize::try_from(v).map_err(|_| {
        ort::Error::new(format!(
            "{op} node `{node}`: attribute `{name}` = {v} must be ≥ 0"
        ))
    })
}

fn slot_attr(k: &KernelContext<'_>, op: &str, node: &str) -> ort::Result<u32> {
    let v = int_attr(k, op, node, ATTR_SLOT)?;
    u32::try_from(v)
        .map_err(|_| ort::Error::new(format!("{op} node `{node}`: slot {v} is out of range")))
}

/// Runs `f`, turning a panic into an error.
fn guarded(node: &str, f: impl FnOnce() -> ort::Result<()>) -> ort::Result<()> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(ort::Error::new(format!(
            "exchange node `{node}` panicked: {msg}"
        )))
    })
}

fn dims(shape: &Shape, node: &str) -> ort::Result<Vec<usize>> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                ort::Error::new(format!("node `{node}`: input has a negative dim {d}"))
            })
        })
        .collect()
}

/// Sets output 0 to input 0's element type with `f` applied to its dims (unknown dims stay -1).
fn infer_from_input(
    ctx: &mut ShapeInferenceContext,
    f: impl Fn(usize, i64) -> i64,
) -> ort::Result<()> {
    let Some(ValueType::Tensor {
        ty,
        shape,
        dimension_symbols,
    }) = ctx.inputs().into_iter().next()
    else {
        return Ok(());
    };
    let shape = Shape::new(
        shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if d < 0 { d } else { f(i, d) }),
    );
    ctx.set_output(
        0,
        &ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        },
    )
}

/// `DfcHaloExchange(x) -> y` or `DfcPatchAllGather(x) -> y` (`kind`), element type `T`: the two
/// operators that work along an `axis` of their input.
struct AxisOp<T> {
    ctx: Arc<RankContext>,
    kind: ExchangeKind,
    _t: PhantomData<T>,
}

impl<T> AxisOp<T> {
    fn halo(ctx: Arc<RankContext>) -> Self {
        Self {
            ctx,
            kind: ExchangeKind::Halo,
            _t: PhantomData,
        }
    }

    fn gather(ctx: Arc<RankContext>) -> Self {
        Self {
            ctx,
            kind: ExchangeKind::Gather,
            _t: PhantomData,
        }
    }
}

impl<T: KernelElement> Operator for AxisOp<T> {
    type Kernel<'a> = BoxedKernel<'a>;

    fn name(&self) -> &str {
        self.kind.op_type()
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(ty::<T>())]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(ty::<T>())]
    }

    fn create_kernel<'a>(&self, k: &KernelContext<'a>) -> ort::Result<BoxedKernel<'a>> {
        let node = k.node_name()?;
        let op = self.name();
        let slot = slot_attr(k, op, &node)?;
        let axis = usize_attr(k, op, &node, ATTR_AXIS, None)?;
        // `None`: the gather, with its bands' parts.
        let halo = match self.kind {
            ExchangeKind::Halo => Some(Halo {
                axis,
                top: usize_attr(k, op, &node, ATTR_TOP, Some(0))?,
                bottom: usize_attr(k, op, &node, ATTR_BOTTOM, Some(0))?,
            }),
            _ => None,
        };
        let parts: Vec<usize> = match self.kind {
            ExchangeKind::Gather => k
                .get::<Vec<i64>>(ATTR_PARTS)
                .ok_or_else(|| {
                    ort::Error::new(format!(
                        "{op} node `{node}` has no integer list attribute `{ATTR_PARTS}`"
                    ))
                })?
                .into_iter()
                .map(|p| {
                    usize::try_from(p).map_err(|_| {
                        ort::Error::new(format!("{op} node `{node}`: part {p} must be ≥ 0"))
                    })
                })
                .collect::<ort::Result<_>>()?,
            _ => Vec::new(),
        };
        let ctx = self.ctx.clone();
        Ok(Box::new(move |c: &ComputeContext| {
            guarded(&node, || {
                let x = c
                    .input(0)?
                    .ok_or_else(|| ort::Error::new("missing input"))?;
                let (shape, xs) = x.try_extract_tensor::<T>()?;
                let shape = dims(shape, &node)?;
                if axis >= shape.len() {
                    return Err(ort::Error::new(format!(
                        "node `{node}`: axis {axis} is outside the input's shape {shape:?}"
                    )));
                }
                let out = match halo {
                    Some(halo) => halo_output_shape(&shape, halo),
                    None => gather_output_shape(&shape, axis, &parts),
                };
                let mut y = c
                    .output(0, out.iter().map(|&d| d as i64).collect::<Vec<_>>())?
                    .ok_or_else(|| ort::Error::new("missing output"))?;
                let (_, ys) = y.try_extract_tensor_mut::<T>()?;
                match halo {
                    Some(halo) => halo_exchange(&ctx, slot, halo, &shape, xs, ys),
                    None => patch_all_gather(&ctx, slot, &shape, axis, &parts, xs, ys),
                }
                .map_err(|e| ort::Error::new(format!("node `{node}`: {e}")))
            })
        }))
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let axis = ctx.attr::<i64>(ATTR_AXIS)?;
        // Along the axis, the halo adds its rows; the gather's extent is the sum of its parts.
        let along = match self.kind {
            ExchangeKind::Halo => {
                let grow = ctx.attr::<i64>(ATTR_TOP).unwrap_or(0)
                    + ctx.attr::<i64>(ATTR_BOTTOM).unwrap_or(0);
                Along::Add(grow)
            }
            _ => Along::Set(ctx.attr::<Vec<i64>>(ATTR_PARTS)?.iter().sum()),
        };
        infer_from_input(ctx, |i, d| match along {
            _ if i as i64 != axis => d,
            Along::Add(k) => d + k,
            Along::Set(v) => v,
        })
    }
}

/// How an exchange changes its split axis.
#[derive(Clone, Copy)]
enum Along {
    Add(i64),
    Set(i64),
}

/// `DfcStatsAllReduce(s) -> g` (f32).
struct StatsOp {
    ctx: Arc<RankContext>,
}

impl Operator for StatsOp {
    type Kernel<'a> = BoxedKernel<'a>;

    fn name(&self) -> &str {
        ExchangeKind::Stats.op_type()
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'a>(&self, k: &KernelContext<'a>) -> ort::Result<BoxedKernel<'a>> {
        let node = k.node_name()?;
        let slot = slot_attr(k, self.name(), &node)?;
        let ctx = self.ctx.clone();
        Ok(Box::new(move |c: &ComputeContext| {
            guarded(&node, || {
                let s = c
                    .input(0)?
                    .ok_or_else(|| ort::Error::new("missing input"))?;
                let (shape, ss) = s.try_extract_tensor::<f32>()?;
                let mut g = c
                    .output(0, shape.to_vec())?
                    .ok_or_else(|| ort::Error::new("missing output"))?;
                let (_, gs) = g.try_extract_tensor_mut::<f32>()?;
                let shape = dims(shape, &node)?;
                stats_all_reduce(&ctx, slot, &shape, ss, gs)
                    .map_err(|e| ort::Error::new(format!("node `{node}`: {e}")))
            })
        }))
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_from_input(ctx, |_, d| d)
    }
}
