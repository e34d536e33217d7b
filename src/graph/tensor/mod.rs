//! Constant tensors: decoded initializers and the results of constant folding.
//!
//! A [`Tensor`] is an `ndarray` array of one of the numeric ONNX element types (or `bool`).
//! [`Tensor::from_proto`] reads every storage form of a `TensorProto` (little-endian
//! `raw_data`, the typed fields, external data through an [`ExternalStore`]) and
//! [`Tensor::to_proto`] writes `raw_data`. The structural operations (reshape, transpose, slice,
//! gather, concat, expand, tile) and the elementwise arithmetic are the ones constant folding
//! and per-band constants need; integer arithmetic wraps and truncates like ONNX Runtime's C++
//! kernels, and never panics: division by zero and impossible shapes are errors.
//!
//! This module holds the type, its errors and constructors; the rest is split by concern:
//! `elem` (element types and casts), `proto` (protobuf decoding and encoding), `structural`
//! (shapes, broadcasting and the structural operations), `arith` (elementwise arithmetic,
//! comparisons, reductions, `Range`).
//!
//! **Invariant:** every constructor refuses shapes with more than [`MAX_ELEMENTS`] elements, so
//! no value read from a model can make dfc allocate without bound.

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::ir::DataType;
#[cfg(doc)]
use crate::onnx::ExternalStore;
use crate::onnx::OnnxError;

/// The most elements a constant tensor may hold (1 Gi elements is far beyond any shape
/// computation; weights are never decoded whole by the compiler).
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Errors of decoding or computing constant tensors.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("tensor `{name}`: {reason}")]
    Invalid { name: String, reason: String },
    #[error("tensor `{name}`: element type {dtype} is not supported for constant evaluation")]
    UnsupportedType { name: String, dtype: DataType },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// An operation on tensors was not possible (shapes, indices, division by zero, …).
    #[error("{0}")]
    Op(String),
}

fn op_err(msg: impl Into<String>) -> TensorError {
    TensorError::Op(msg.into())
}

/// A constant tensor of one of the supported element types.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I8(ArrayD<i8>),
    I16(ArrayD<i16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    Bool(ArrayD<bool>),
}

/// Runs `$e` with `$a` bound to the inner array, whatever the element type.
#[macro_export]
#[doc(hidden)]
macro_rules! tensor_each {
    ($t:expr, $a:ident => $e:expr) => {
        match $t {
            $crate::tensor::Tensor::F32($a) => $e,
            $crate::tensor::Tensor::F64($a) => $e,
            $crate::tensor::Tensor::F16($a) => $e,
            $crate::tensor::Tensor::BF16($a) => $e,
            $crate::tensor::Tensor::I8($a) => $e,
            $crate::tensor::Tensor::I16($a) => $e,
            $crate::tensor::Tensor::I32($a) => $e,
            $crate::tensor::Tensor::I64($a) => $e,
            $crate::tensor::Tensor::U8($a) => $e,
            $crate::tensor::Tensor::U16($a) => $e,
            $crate::tensor::Tensor::U32($a) => $e,
            $crate::tensor::Tensor::U64($a) => $e,
            $crate::tensor::Tensor::Bool($a) => $e,
        }
    };
}

/// Like [`tensor_each!`], but `$e` yields an array of the same element type, re-wrapped.
#[macro_export]
#[doc(hidden)]
macro_rules! tensor_map {
    ($t:expr, $a:ident => $e:expr) => {
        match $t {
            $crate::tensor::Tensor::F32($a) => $crate::tensor::Tensor::F32($e),
            $crate::tensor::Tensor::F64($a) => $crate::tensor::Tensor::F64($e),
            $crate::tensor::Tensor::F16($a) => $crate::tensor::Tensor::F16($e),
            $crate::tensor::Tensor::BF16($a) => $crate::tensor::Tensor::BF16($e),
            $crate::tensor::Tensor::I8($a) => $crate::tensor::Tensor::I8($e),
            $crate::tensor::Tensor::I16($a) => $crate::tensor::Tensor::I16($e),
            $crate::tensor::Tensor::I32($a) => $crate::tensor::Tensor::I32($e),
            $crate::tensor::Tensor::I64($a) => $crate::tensor::Tensor::I64($e),
            $crate::tensor::Tensor::U8($a) => $crate::tensor::Tensor::U8($e),
            $crate::tensor::Tensor::U16($a) => $crate::tensor::Tensor::U16($e),
            $crate::tensor::Tensor::U32($a) => $crate::tensor::Tensor::U32($e),
            $crate::tensor::Tensor::U64($a) => $crate::tensor::Tensor::U64($e),
            $crate::tensor::Tensor::Bool($a) => $crate::tensor::Tensor::Bool($e),
        }
    };
}

/// Dispatches on a [`DataType`] with `$t` bound to the Rust element type.
macro_rules! with_dtype {
    ($dt:expr, $t:ident => $e:expr, else $other:expr) => {
        match $dt {
            DataType::FLOAT => {
                type $t = f32;
                $e
            }
            DataType::DOUBLE => {
                type $t = f64;
                $e
            }
            DataType::FLOAT16 => {
                type $t = f16;
                $e
            }
            DataType::BFLOAT16 => {
                type $t = bf16;
                $e
            }
            DataType::INT8 => {
                type $t = i8;
                $e
            }
            DataType::INT16 => {
                type $t = i16;
                $e
            }
            DataType::INT32 => {
                type $t = i32;
                $e
            }
            DataType::INT64 => {
                type $t = i64;
                $e
            }
            DataType::UINT8 => {
                type $t = u8;
                $e
            }
            DataType::UINT16 => {
                type $t = u16;
                $e
            }
            DataType::UINT32 => {
                type $t = u32;
                $e
            }
            DataType::UINT64 => {
                type $t = u64;
                $e
            }
            DataType::BOOL => {
                type $t = bool;
                $e
            }
            _ => $other,
        }
    };
}

mod arith;
mod elem;
mod proto;
mod structural;

pub use arith::{BinOp, CmpOp, UnaryOp, range_len};
pub use elem::{Elem, Kind, cast_elem};
use structural::from_vec;
pub use structural::{broadcast_shapes, checked_numel, to_shape, zip_broadcast};

impl Tensor {
    /// The ONNX element type.
    pub fn dtype(&self) -> DataType {
        fn dt<T: Elem>(_: &ArrayD<T>) -> DataType {
            T::DTYPE
        }
        tensor_each!(self, a => dt(a))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        tensor_each!(self, a => a.shape())
    }

    /// The shape as ONNX dims.
    pub fn dims(&self) -> Vec<i64> {
        self.shape().iter().map(|&d| d as i64).collect()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        tensor_each!(self, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `dtype` can be held by a [`Tensor`].
    pub fn supports(dtype: DataType) -> bool {
        with_dtype!(dtype, T => { let _ = std::marker::PhantomData::<T>; true }, else false)
    }

    /// Builds a tensor from a flat vector in row-major order.
    pub fn from_vec<T: Elem>(shape: &[usize], data: Vec<T>) -> Result<Tensor, TensorError> {
        checked_numel(shape)?;
        Ok(T::wrap(from_vec(shape, data)?))
    }

    /// A 1-D int64 tensor.
    pub fn from_i64s(values: &[i64]) -> Tensor {
        Tensor::I64(
            ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap_or_default(),
        )
    }

    /// A scalar (rank-0) tensor.
    pub fn scalar<T: Elem>(v: T) -> Tensor {
        T::wrap(ArrayD::from_elem(IxDyn(&[]), v))
    }

    /// A tensor of `shape` filled with the single element of `value` (any shape, one element).
    pub fn full_like_scalar(value: &Tensor, shape: &[usize]) -> Result<Tensor, TensorError> {
        checked_numel(shape)?;
        if value.len() != 1 {
            return Err(op_err(format!(
                "fill value must have one element, it has {}",
                value.len()
            )));
        }
        Ok(tensor_map!(value, a => {
            let v = a.iter().next().copied().unwrap_or_default();
            ArrayD::from_elem(IxDyn(shape), v)
        }))
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DataType, shape: &[usize]) -> Result<Tensor, TensorError> {
        checked_numel(shape)?;
        with_dtype!(dtype, T => Ok(T::wrap(ArrayD::<T>::default(IxDyn(shape)))),
            else Err(TensorError::UnsupportedType { name: String::new(), dtype }))
    }
}
