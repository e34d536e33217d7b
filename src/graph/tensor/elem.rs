//! Element types: the [`Elem`] trait over the Rust types a [`Tensor`] holds (little-endian
//! encoding, conversions), and casts between them with ONNX `Cast` semantics.

use std::fmt;

use half::{bf16, f16};
use ndarray::ArrayD;

use super::{Tensor, TensorError, op_err};
use crate::ir::DataType;

/// What kind of number an element type is; decides how casts convert.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Float,
    Signed,
    Unsigned,
    Bool,
}

/// An element type a [`Tensor`] can hold.
pub trait Elem:
    Copy + Default + PartialEq + PartialOrd + fmt::Debug + Send + Sync + 'static
{
    const DTYPE: DataType;
    const SIZE: usize;
    const KIND: Kind;
    /// Reads one element from `SIZE` little-endian bytes.
    fn from_le(b: &[u8]) -> Self;
    /// Appends the little-endian bytes of the element.
    fn put_le(self, out: &mut Vec<u8>);
    fn to_f64(self) -> f64;
    fn to_i64(self) -> i64;
    fn to_u64(self) -> u64;
    /// Conversion with C++ `static_cast`-like semantics (saturating for floats to ints).
    fn from_f64(v: f64) -> Self;
    /// Conversion that wraps for narrower integers, like `static_cast`.
    fn from_i64(v: i64) -> Self;
    fn from_u64(v: u64) -> Self;
    fn wrap(a: ArrayD<Self>) -> Tensor;
}

macro_rules! prim_elem {
    ($t:ty, $dt:ident, $var:ident, $kind:ident) => {
        impl Elem for $t {
            const DTYPE: DataType = DataType::$dt;
            const SIZE: usize = std::mem::size_of::<$t>();
            const KIND: Kind = Kind::$kind;
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..std::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(a)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn from_u64(v: u64) -> Self {
                v as $t
            }
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$var(a)
            }
        }
    };
}

prim_elem!(f32, FLOAT, F32, Float);
prim_elem!(f64, DOUBLE, F64, Float);
prim_elem!(i8, INT8, I8, Signed);
prim_elem!(i16, INT16, I16, Signed);
prim_elem!(i32, INT32, I32, Signed);
prim_elem!(i64, INT64, I64, Signed);
prim_elem!(u8, UINT8, U8, Unsigned);
prim_elem!(u16, UINT16, U16, Unsigned);
prim_elem!(u32, UINT32, U32, Unsigned);
prim_elem!(u64, UINT64, U64, Unsigned);

macro_rules! half_elem {
    ($t:ty, $dt:ident, $var:ident) => {
        impl Elem for $t {
            const DTYPE: DataType = DataType::$dt;
            const SIZE: usize = 2;
            const KIND: Kind = Kind::Float;
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_bits(u16::from_le_bytes([b[0], b[1]]))
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_bits().to_le_bytes());
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn to_i64(self) -> i64 {
                <$t>::to_f64(self) as i64
            }
            fn to_u64(self) -> u64 {
                <$t>::to_f64(self) as u64
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn from_i64(v: i64) -> Self {
                <$t>::from_f64(v as f64)
            }
            fn from_u64(v: u64) -> Self {
                <$t>::from_f64(v as f64)
            }
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$var(a)
            }
        }
    };
}

half_elem!(f16, FLOAT16, F16);
half_elem!(bf16, BFLOAT16, BF16);

impl Elem for bool {
    const DTYPE: DataType = DataType::BOOL;
    const SIZE: usize = 1;
    const KIND: Kind = Kind::Bool;
    fn from_le(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn to_u64(self) -> u64 {
        self as u64
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn from_u64(v: u64) -> Self {
        v != 0
    }
    fn wrap(a: ArrayD<Self>) -> Tensor {
        Tensor::Bool(a)
    }
}

/// Converts one element between element types with ONNX `Cast` semantics.
pub fn cast_elem<S: Elem, D: Elem>(s: S) -> D {
    match S::KIND {
        Kind::Float => {
            let v = s.to_f64();
            if D::KIND == Kind::Float {
                D::from_f64(v)
            } else if v.is_nan() {
                D::from_i64(0)
            } else {
                D::from_f64(v.trunc())
            }
        }
        Kind::Unsigned => D::from_u64(s.to_u64()),
        Kind::Signed | Kind::Bool => D::from_i64(s.to_i64()),
    }
}

impl Tensor {
    /// Converts to `dtype` with ONNX `Cast` semantics.
    pub fn cast(&self, dtype: DataType) -> Result<Tensor, TensorError> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        fn conv<S: Elem, D: Elem>(a: &ArrayD<S>) -> Tensor {
            D::wrap(a.mapv(cast_elem::<S, D>))
        }
        with_dtype!(dtype, D => Ok(tensor_each!(self, a => conv::<_, D>(a))),
            else Err(TensorError::UnsupportedType { name: String::new(), dtype }))
    }

    /// The elements as i64 (integer and bool tensors only), in row-major order.
    pub fn to_i64s(&self) -> Result<Vec<i64>, TensorError> {
        if self.dtype().is_float() {
            return Err(op_err(format!(
                "expected an integer tensor, got {}",
                self.dtype()
            )));
        }
        Ok(tensor_each!(self, a => a.iter().map(|v| v.to_i64()).collect()))
    }

    /// The elements as f64, in row-major order.
    pub fn to_f64s(&self) -> Vec<f64> {
        tensor_each!(self, a => a.iter().map(|v| v.to_f64()).collect())
    }
}
