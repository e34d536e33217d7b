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
//! **Invariant:** every constructor refuses shapes with more than [`MAX_ELEMENTS`] elements, so
//! no value read from a model can make dfc allocate without bound.

use std::fmt;

use bytes::Bytes;
use half::{bf16, f16};
use ndarray::{ArrayD, Axis, IxDyn, Zip};

use crate::ir::DataType;
use crate::onnx::proto::TensorProto;
use crate::onnx::{ExternalStore, OnnxError};

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

/// Number of elements of `shape`, refusing overflow and anything over [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                op_err(format!(
                    "shape {shape:?} has more than {MAX_ELEMENTS} elements"
                ))
            })?;
    }
    Ok(n)
}

/// Converts ONNX dims (i64) to sizes, refusing negative values and oversized shapes.
pub fn to_shape(dims: &[i64]) -> Result<Vec<usize>, TensorError> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| op_err(format!("negative dimension in {dims:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    checked_numel(&shape)?;
    Ok(shape)
}

/// The numpy broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, TensorError> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(op_err(format!("shapes {a:?} and {b:?} do not broadcast")));
        };
    }
    checked_numel(&out)?;
    Ok(out)
}

fn broadcast_to<'a, T: Clone>(
    a: &'a ArrayD<T>,
    shape: &[usize],
) -> Result<ndarray::ArrayViewD<'a, T>, TensorError> {
    a.broadcast(IxDyn(shape)).ok_or_else(|| {
        op_err(format!(
            "shape {:?} does not broadcast to {shape:?}",
            a.shape()
        ))
    })
}

fn from_vec<T>(shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>, TensorError> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| op_err(format!("shape {shape:?}: {e}")))
}

/// Applies `f` to `a` and `b` broadcast to their common shape.
pub fn zip_broadcast<A: Clone, B: Clone, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    mut f: impl FnMut(A, B) -> Result<C, TensorError>,
) -> Result<ArrayD<C>, TensorError> {
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let av = broadcast_to(a, &shape)?;
    let bv = broadcast_to(b, &shape)?;
    let mut out = Vec::with_capacity(checked_numel(&shape)?);
    for (x, y) in av.iter().zip(bv.iter()) {
        out.push(f(x.clone(), y.clone())?);
    }
    from_vec(&shape, out)
}

fn transpose_arr<T: Clone>(a: &ArrayD<T>, perm: &[usize]) -> ArrayD<T> {
    a.view()
        .permuted_axes(IxDyn(perm))
        .as_standard_layout()
        .into_owned()
}

fn select_axes<T: Clone>(a: &ArrayD<T>, picks: &[Vec<usize>]) -> ArrayD<T> {
    let mut cur = a.clone();
    for (ax, idx) in picks.iter().enumerate() {
        if idx.len() == cur.shape()[ax] && idx.iter().enumerate().all(|(i, &j)| i == j) {
            continue;
        }
        cur = cur.select(Axis(ax), idx);
    }
    cur
}

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

    /// Decodes an initializer or constant. External data is read through `store`.
    pub fn from_proto(t: &TensorProto, store: &ExternalStore) -> Result<Tensor, TensorError> {
        let name = t.name().to_string();
        let dtype = DataType(t.data_type());
        let invalid = |reason: String| TensorError::Invalid {
            name: name.clone(),
            reason,
        };
        if t.segment.is_some() {
            return Err(invalid("segmented tensors are not supported".into()));
        }
        let shape = to_shape(&t.dims).map_err(|e| invalid(e.to_string()))?;
        let n = checked_numel(&shape).map_err(|e| invalid(e.to_string()))?;
        let raw = store.raw_bytes(t)?;
        with_dtype!(dtype, T => {
            let data: Vec<T> = match raw {
                Some(bytes) => decode_raw::<T>(&bytes, n).map_err(invalid)?,
                None => decode_typed::<T>(t, n).map_err(invalid)?,
            };
            Ok(T::wrap(from_vec(&shape, data)?))
        }, else Err(TensorError::UnsupportedType { name, dtype }))
    }

    /// Encodes the tensor as a `TensorProto` named `name`, data in `raw_data`.
    pub fn to_proto(&self, name: &str) -> TensorProto {
        fn enc<T: Elem>(a: &ArrayD<T>) -> Vec<u8> {
            let mut out = Vec::with_capacity(a.len() * T::SIZE);
            for &v in a.iter() {
                v.put_le(&mut out);
            }
            out
        }
        let raw = tensor_each!(self, a => enc(a));
        TensorProto {
            dims: self.dims(),
            data_type: Some(self.dtype().0),
            name: Some(name.to_string()),
            raw_data: Some(Bytes::from(raw)),
            ..Default::default()
        }
    }

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

    /// Row-major reshape to `shape` (same number of elements).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor, TensorError> {
        if checked_numel(shape)? != self.len() {
            return Err(op_err(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape()
            )));
        }
        Ok(tensor_map!(self, a => from_vec(shape, a.iter().cloned().collect())?))
    }

    /// Permutes the axes: output axis `i` is input axis `perm[i]`.
    pub fn transpose(&self, perm: &[usize]) -> Result<Tensor, TensorError> {
        let r = self.shape().len();
        let mut seen = vec![false; r];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return Err(op_err(format!("{perm:?} is not a permutation of {r} axes")));
        }
        Ok(tensor_map!(self, a => transpose_arr(a, perm)))
    }

    /// Picks, on every axis, the listed indices (in order; repeats allowed).
    pub fn select(&self, picks: &[Vec<usize>]) -> Result<Tensor, TensorError> {
        let shape = self.shape();
        if picks.len() != shape.len()
            || picks
                .iter()
                .zip(shape)
                .any(|(p, &d)| p.iter().any(|&i| i >= d))
        {
            return Err(op_err(format!("selection out of bounds of {shape:?}")));
        }
        let out: Vec<usize> = picks.iter().map(Vec::len).collect();
        checked_numel(&out)?;
        Ok(tensor_map!(self, a => select_axes(a, picks)))
    }

    /// ONNX `Gather`: indices (already normalized to `0..dim`) taken on `axis`.
    pub fn gather(
        &self,
        axis: usize,
        indices: &[usize],
        idx_shape: &[usize],
    ) -> Result<Tensor, TensorError> {
        let shape = self.shape().to_vec();
        if axis >= shape.len() {
            return Err(op_err(format!(
                "gather axis {axis} out of range for {shape:?}"
            )));
        }
        if let Some(bad) = indices.iter().find(|&&i| i >= shape[axis]) {
            return Err(op_err(format!(
                "gather index {bad} out of range for dimension {}",
                shape[axis]
            )));
        }
        let mut out = shape[..axis].to_vec();
        out.extend_from_slice(idx_shape);
        out.extend_from_slice(&shape[axis + 1..]);
        checked_numel(&out)?;
        let picked = tensor_map!(self, a => a.select(Axis(axis), indices));
        picked.reshape(&out)
    }

    /// Concatenates tensors of one element type along `axis`.
    pub fn concat(parts: &[Tensor], axis: usize) -> Result<Tensor, TensorError> {
        let first = parts
            .first()
            .ok_or_else(|| op_err("concat of no tensors"))?;
        let dt = first.dtype();
        if parts.iter().any(|p| p.dtype() != dt) {
            return Err(op_err("concat of tensors of different element types"));
        }
        let r = first.shape().len();
        if axis >= r || parts.iter().any(|p| p.shape().len() != r) {
            return Err(op_err(format!(
                "concat axis {axis} out of range or ranks differ"
            )));
        }
        for p in parts {
            for (i, (&x, &y)) in p.shape().iter().zip(first.shape()).enumerate() {
                if i != axis && x != y {
                    return Err(op_err(format!(
                        "concat of shapes {:?} and {:?} on axis {axis}",
                        first.shape(),
                        p.shape()
                    )));
                }
            }
        }
        let total: usize = parts.iter().map(|p| p.shape()[axis]).sum();
        let mut out_shape = first.shape().to_vec();
        out_shape[axis] = total;
        checked_numel(&out_shape)?;
        fn cat<T: Elem>(
            parts: &[Tensor],
            axis: usize,
            get: fn(&Tensor) -> Option<&ArrayD<T>>,
        ) -> Result<ArrayD<T>, TensorError> {
            let views: Vec<_> = parts.iter().filter_map(get).map(|a| a.view()).collect();
            ndarray::concatenate(Axis(axis), &views).map_err(|e| op_err(format!("concat: {e}")))
        }
        macro_rules! cat_as {
            ($var:ident) => {
                Tensor::$var(cat(parts, axis, |t| match t {
                    Tensor::$var(a) => Some(a),
                    _ => None,
                })?)
            };
        }
        Ok(match first {
            Tensor::F32(_) => cat_as!(F32),
            Tensor::F64(_) => cat_as!(F64),
            Tensor::F16(_) => cat_as!(F16),
            Tensor::BF16(_) => cat_as!(BF16),
            Tensor::I8(_) => cat_as!(I8),
            Tensor::I16(_) => cat_as!(I16),
            Tensor::I32(_) => cat_as!(I32),
            Tensor::I64(_) => cat_as!(I64),
            Tensor::U8(_) => cat_as!(U8),
            Tensor::U16(_) => cat_as!(U16),
            Tensor::U32(_) => cat_as!(U32),
            Tensor::U64(_) => cat_as!(U64),
            Tensor::Bool(_) => cat_as!(Bool),
        })
    }

    /// Broadcasts to `shape` (numpy rules; `shape` must be the broadcast result).
    pub fn broadcast(&self, shape: &[usize]) -> Result<Tensor, TensorError> {
        checked_numel(shape)?;
        Ok(tensor_map!(self, a => broadcast_to(a, shape)?.to_owned()))
    }

    /// ONNX `Expand`: bidirectional broadcast with `shape`.
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor, TensorError> {
        let out = broadcast_shapes(self.shape(), shape)?;
        self.broadcast(&out)
    }

    /// ONNX `Tile`.
    pub fn tile(&self, repeats: &[usize]) -> Result<Tensor, TensorError> {
        let shape = self.shape();
        if repeats.len() != shape.len() {
            return Err(op_err("tile repeats must have one entry per axis"));
        }
        let out: Vec<usize> = shape
            .iter()
            .zip(repeats)
            .map(|(&d, &r)| {
                d.checked_mul(r)
                    .ok_or_else(|| op_err("tile size overflows"))
            })
            .collect::<Result<_, _>>()?;
        checked_numel(&out)?;
        let picks: Vec<Vec<usize>> = out
            .iter()
            .zip(shape)
            .map(|(&o, &d)| (0..o).map(|i| i % d.max(1)).collect())
            .collect();
        if out.contains(&0) {
            return Tensor::zeros(self.dtype(), &out);
        }
        self.select(&picks)
    }

    /// Elementwise `where(cond, x, y)` with three-way broadcasting.
    pub fn where_(cond: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor, TensorError> {
        let Tensor::Bool(c) = cond else {
            return Err(op_err("Where condition must be bool"));
        };
        if x.dtype() != y.dtype() {
            return Err(op_err("Where branches have different element types"));
        }
        let shape = broadcast_shapes(&broadcast_shapes(c.shape(), x.shape())?, y.shape())?;
        let cb = broadcast_to(c, &shape)?;
        let xb = x.broadcast(&shape)?;
        let yb = y.broadcast(&shape)?;
        fn pick<T: Elem>(
            c: &ndarray::ArrayViewD<'_, bool>,
            x: &ArrayD<T>,
            y: &ArrayD<T>,
        ) -> ArrayD<T> {
            Zip::from(c)
                .and(x)
                .and(y)
                .map_collect(|&c, &x, &y| if c { x } else { y })
        }
        macro_rules! go {
            ($($var:ident),*) => {
                match (&xb, &yb) {
                    $((Tensor::$var(x), Tensor::$var(y)) => Ok(Tensor::$var(pick(&cb, x, y))),)*
                    _ => Err(op_err("Where branches have different element types")),
                }
            };
        }
        go!(
            F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool
        )
    }
}

fn decode_raw<T: Elem>(bytes: &[u8], n: usize) -> Result<Vec<T>, String> {
    let need = n.checked_mul(T::SIZE).ok_or("size overflows")?;
    if bytes.len() != need {
        return Err(format!(
            "raw data holds {} bytes, the shape needs {need}",
            bytes.len()
        ));
    }
    Ok(bytes.chunks_exact(T::SIZE).map(T::from_le).collect())
}

fn decode_typed<T: Elem>(t: &TensorProto, n: usize) -> Result<Vec<T>, String> {
    let check = |len: usize, field: &str| {
        if len == n {
            Ok(())
        } else {
            Err(format!("{field} holds {len} values, the shape needs {n}"))
        }
    };
    match T::DTYPE {
        DataType::FLOAT => {
            check(t.float_data.len(), "float_data")?;
            Ok(t.float_data
                .iter()
                .map(|&v| T::from_f64(v as f64))
                .collect())
        }
        DataType::DOUBLE => {
            check(t.double_data.len(), "double_data")?;
            Ok(t.double_data.iter().map(|&v| T::from_f64(v)).collect())
        }
        DataType::INT64 => {
            check(t.int64_data.len(), "int64_data")?;
            Ok(t.int64_data.iter().map(|&v| T::from_i64(v)).collect())
        }
        DataType::UINT32 | DataType::UINT64 => {
            check(t.uint64_data.len(), "uint64_data")?;
            Ok(t.uint64_data.iter().map(|&v| T::from_u64(v)).collect())
        }
        DataType::FLOAT16 | DataType::BFLOAT16 => {
            check(t.int32_data.len(), "int32_data")?;
            Ok(t.int32_data
                .iter()
                .map(|&v| T::from_le(&(v as u16).to_le_bytes()))
                .collect())
        }
        _ => {
            check(t.int32_data.len(), "int32_data")?;
            Ok(t.int32_data
                .iter()
                .map(|&v| T::from_i64(v as i64))
                .collect())
        }
    }
}

/// Elementwise binary arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `Mod` with `fmod = 0` (integer result takes the divisor's sign).
    Mod,
    /// `Mod` with `fmod = 1` (C `fmod`: the dividend's sign).
    FMod,
    Min,
    Max,
    Pow,
}

/// Elementwise comparison (bool result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Abs,
    Floor,
    Ceil,
    Round,
    Sqrt,
    Reciprocal,
    Sign,
    Not,
}

trait Num: Elem {
    fn bin(op: BinOp, a: Self, b: Self) -> Result<Self, TensorError>;
    fn un(op: UnaryOp, a: Self) -> Result<Self, TensorError>;
}

macro_rules! int_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn bin(op: BinOp, a: Self, b: Self) -> Result<Self, TensorError> {
                Ok(match op {
                    BinOp::Add => a.wrapping_add(b),
                    BinOp::Sub => a.wrapping_sub(b),
                    BinOp::Mul => a.wrapping_mul(b),
                    BinOp::Div => {
                        if b == 0 {
                            return Err(op_err("integer division by zero"));
                        }
                        a.wrapping_div(b)
                    }
                    BinOp::Mod | BinOp::FMod => {
                        if b == 0 {
                            return Err(op_err("integer modulo by zero"));
                        }
                        let r = a.wrapping_rem(b);
                        #[allow(unused_comparisons)]
                        let adjust = op == BinOp::Mod && r != 0 && ((r < 0) != (b < 0));
                        if adjust { r.wrapping_add(b) } else { r }
                    }
                    BinOp::Min => if b < a { b } else { a },
                    BinOp::Max => if b > a { b } else { a },
                    BinOp::Pow => {
                        // ONNX Runtime computes integer powers by repeated multiplication.
                        #[allow(unused_comparisons)]
                        if b < 0 {
                            return Err(op_err("integer power with a negative exponent"));
                        }
                        let mut e = b as u64;
                        let mut base = a;
                        let mut acc: $t = 1;
                        while e > 0 {
                            if e & 1 == 1 {
                                acc = acc.wrapping_mul(base);
                            }
                            base = base.wrapping_mul(base);
                            e >>= 1;
                        }
                        acc
                    }
                })
            }
            fn un(op: UnaryOp, a: Self) -> Result<Self, TensorError> {
                #[allow(unused_comparisons)]
                let neg = a < 0;
                Ok(match op {
                    UnaryOp::Neg => (0 as $t).wrapping_sub(a),
                    UnaryOp::Abs => if neg { (0 as $t).wrapping_sub(a) } else { a },
                    UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => a,
                    UnaryOp::Sign => if neg { (0 as $t).wrapping_sub(1) } else if a == 0 { 0 } else { 1 },
                    _ => return Err(op_err(format!("{op:?} is not defined on integers"))),
                })
            }
        }
    )*};
}
int_num!(i8, i16, i32, i64, u8, u16, u32, u64);

fn float_bin(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::FMod => a % b,
        BinOp::Mod => {
            let r = a % b;
            if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
                r + b
            } else {
                r
            }
        }
        BinOp::Min => a.min(b),
        BinOp::Max => a.max(b),
        BinOp::Pow => a.powf(b),
    }
}

fn float_un(op: UnaryOp, a: f64) -> Result<f64, TensorError> {
    Ok(match op {
        UnaryOp::Neg => -a,
        UnaryOp::Abs => a.abs(),
        UnaryOp::Floor => a.floor(),
        UnaryOp::Ceil => a.ceil(),
        UnaryOp::Round => a.round_ties_even(),
        UnaryOp::Sqrt => a.sqrt(),
        UnaryOp::Reciprocal => 1.0 / a,
        UnaryOp::Sign => {
            if a > 0.0 {
                1.0
            } else if a < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Not => return Err(op_err("Not is only defined on bool")),
    })
}

// f32 arithmetic through f64 then rounding to f32 is exact for + - * / and sqrt (double
// rounding is innocuous when the wide format has more than 2p+2 bits), so results equal f32
// IEEE arithmetic; the same holds for f16/bf16 through f64.
macro_rules! float_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn bin(op: BinOp, a: Self, b: Self) -> Result<Self, TensorError> {
                Ok(<$t as Elem>::from_f64(float_bin(op, Elem::to_f64(a), Elem::to_f64(b))))
            }
            fn un(op: UnaryOp, a: Self) -> Result<Self, TensorError> {
                Ok(<$t as Elem>::from_f64(float_un(op, Elem::to_f64(a))?))
            }
        }
    )*};
}
float_num!(f32, f64, f16, bf16);

macro_rules! numeric_pair {
    ($a:expr, $b:expr, $x:ident, $y:ident => $e:expr, bool => $bool:expr) => {
        match ($a, $b) {
            (Tensor::F32($x), Tensor::F32($y)) => Tensor::F32($e),
            (Tensor::F64($x), Tensor::F64($y)) => Tensor::F64($e),
            (Tensor::F16($x), Tensor::F16($y)) => Tensor::F16($e),
            (Tensor::BF16($x), Tensor::BF16($y)) => Tensor::BF16($e),
            (Tensor::I8($x), Tensor::I8($y)) => Tensor::I8($e),
            (Tensor::I16($x), Tensor::I16($y)) => Tensor::I16($e),
            (Tensor::I32($x), Tensor::I32($y)) => Tensor::I32($e),
            (Tensor::I64($x), Tensor::I64($y)) => Tensor::I64($e),
            (Tensor::U8($x), Tensor::U8($y)) => Tensor::U8($e),
            (Tensor::U16($x), Tensor::U16($y)) => Tensor::U16($e),
            (Tensor::U32($x), Tensor::U32($y)) => Tensor::U32($e),
            (Tensor::U64($x), Tensor::U64($y)) => Tensor::U64($e),
            (Tensor::Bool(_), Tensor::Bool(_)) => $bool,
            (a, b) => {
                return Err(op_err(format!(
                    "element types differ: {} and {}",
                    a.dtype(),
                    b.dtype()
                )))
            }
        }
    };
}

impl Tensor {
    /// Elementwise arithmetic with numpy broadcasting; both sides must share an element type.
    pub fn binary(&self, op: BinOp, other: &Tensor) -> Result<Tensor, TensorError> {
        Ok(
            numeric_pair!(self, other, a, b => zip_broadcast(a, b, |x, y| Num::bin(op, x, y))?,
            bool => return Err(op_err(format!("{op:?} is not defined on bool")))),
        )
    }

    /// Elementwise comparison with numpy broadcasting.
    pub fn compare(&self, op: CmpOp, other: &Tensor) -> Result<Tensor, TensorError> {
        fn cmp<T: PartialOrd>(op: CmpOp, x: T, y: T) -> Result<bool, TensorError> {
            Ok(match op {
                CmpOp::Eq => x == y,
                CmpOp::Lt => x < y,
                CmpOp::Gt => x > y,
                CmpOp::Le => x <= y,
                CmpOp::Ge => x >= y,
            })
        }
        macro_rules! go {
            ($($var:ident),*) => {
                match (self, other) {
                    $((Tensor::$var(a), Tensor::$var(b)) => zip_broadcast(a, b, |x, y| cmp(op, x, y))?,)*
                    (a, b) => {
                        return Err(op_err(format!(
                            "element types differ: {} and {}",
                            a.dtype(),
                            b.dtype()
                        )))
                    }
                }
            };
        }
        Ok(Tensor::Bool(go!(
            F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool
        )))
    }

    /// Elementwise logic on bool tensors: `And`, `Or`, `Xor`.
    pub fn logic(&self, op: &str, other: &Tensor) -> Result<Tensor, TensorError> {
        let (Tensor::Bool(a), Tensor::Bool(b)) = (self, other) else {
            return Err(op_err(format!("{op} needs bool inputs")));
        };
        let f = match op {
            "And" => |x: bool, y: bool| x && y,
            "Or" => |x: bool, y: bool| x || y,
            "Xor" => |x: bool, y: bool| x != y,
            _ => return Err(op_err(format!("unknown logic op {op}"))),
        };
        Ok(Tensor::Bool(zip_broadcast(a, b, |x, y| Ok(f(x, y)))?))
    }

    /// Elementwise unary operation.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor, TensorError> {
        fn go<T: Num>(a: &ArrayD<T>, op: UnaryOp) -> Result<ArrayD<T>, TensorError> {
            let v = a
                .iter()
                .map(|&x| T::un(op, x))
                .collect::<Result<Vec<_>, _>>()?;
            from_vec(a.shape(), v)
        }
        Ok(match self {
            Tensor::Bool(a) if op == UnaryOp::Not => Tensor::Bool(a.mapv(|x| !x)),
            Tensor::Bool(_) => return Err(op_err(format!("{op:?} is not defined on bool"))),
            Tensor::F32(a) => Tensor::F32(go(a, op)?),
            Tensor::F64(a) => Tensor::F64(go(a, op)?),
            Tensor::F16(a) => Tensor::F16(go(a, op)?),
            Tensor::BF16(a) => Tensor::BF16(go(a, op)?),
            Tensor::I8(a) => Tensor::I8(go(a, op)?),
            Tensor::I16(a) => Tensor::I16(go(a, op)?),
            Tensor::I32(a) => Tensor::I32(go(a, op)?),
            Tensor::I64(a) => Tensor::I64(go(a, op)?),
            Tensor::U8(a) => Tensor::U8(go(a, op)?),
            Tensor::U16(a) => Tensor::U16(go(a, op)?),
            Tensor::U32(a) => Tensor::U32(go(a, op)?),
            Tensor::U64(a) => Tensor::U64(go(a, op)?),
        })
    }

    /// Reduces `axes` (sorted, unique, in range) with `op` (`Add`, `Mul`, `Min`, `Max`).
    pub fn reduce(&self, op: BinOp, axes: &[usize], keepdims: bool) -> Result<Tensor, TensorError> {
        let r = self.shape().len();
        if axes.iter().any(|&a| a >= r) {
            return Err(op_err("reduce axis out of range"));
        }
        fn go<T: Num>(
            a: &ArrayD<T>,
            op: BinOp,
            axes: &[usize],
            keep: bool,
        ) -> Result<ArrayD<T>, TensorError> {
            let mut cur = a.clone();
            let mut sorted: Vec<usize> = axes.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            for &ax in sorted.iter().rev() {
                if cur.shape()[ax] == 0 && matches!(op, BinOp::Min | BinOp::Max) {
                    return Err(op_err("Min/Max reduction over an empty axis"));
                }
                let init = match op {
                    BinOp::Add => T::from_i64(0),
                    BinOp::Mul => T::from_i64(1),
                    _ => T::default(),
                };
                let mut err = None;
                let mut red = cur.map_axis(Axis(ax), |lane| {
                    let mut it = lane.iter();
                    let mut acc = match op {
                        BinOp::Min | BinOp::Max => it.next().copied().unwrap_or(init),
                        _ => init,
                    };
                    for &x in it {
                        match T::bin(op, acc, x) {
                            Ok(v) => acc = v,
                            Err(e) => err = Some(e),
                        }
                    }
                    acc
                });
                if let Some(e) = err {
                    return Err(e);
                }
                if keep {
                    red = red.insert_axis(Axis(ax));
                }
                cur = red;
            }
            Ok(cur)
        }
        Ok(match self {
            Tensor::Bool(_) => return Err(op_err("reduction of bool")),
            Tensor::F32(a) => Tensor::F32(go(a, op, axes, keepdims)?),
            Tensor::F64(a) => Tensor::F64(go(a, op, axes, keepdims)?),
            Tensor::F16(a) => Tensor::F16(go(a, op, axes, keepdims)?),
            Tensor::BF16(a) => Tensor::BF16(go(a, op, axes, keepdims)?),
            Tensor::I8(a) => Tensor::I8(go(a, op, axes, keepdims)?),
            Tensor::I16(a) => Tensor::I16(go(a, op, axes, keepdims)?),
            Tensor::I32(a) => Tensor::I32(go(a, op, axes, keepdims)?),
            Tensor::I64(a) => Tensor::I64(go(a, op, axes, keepdims)?),
            Tensor::U8(a) => Tensor::U8(go(a, op, axes, keepdims)?),
            Tensor::U16(a) => Tensor::U16(go(a, op, axes, keepdims)?),
            Tensor::U32(a) => Tensor::U32(go(a, op, axes, keepdims)?),
            Tensor::U64(a) => Tensor::U64(go(a, op, axes, keepdims)?),
        })
    }

    /// ONNX `Range` for a scalar `start`, `limit`, `delta` of one element type.
    pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor, TensorError> {
        let dt = start.dtype();
        if limit.dtype() != dt || delta.dtype() != dt {
            return Err(op_err("Range inputs have different element types"));
        }
        if start.len() != 1 || limit.len() != 1 || delta.len() != 1 {
            return Err(op_err("Range inputs must be scalars"));
        }
        let n = range_len(start, limit, delta)?;
        fn go<T: Num>(s: T, d: T, n: usize) -> Result<Tensor, TensorError> {
            let mut out = Vec::with_capacity(n);
            let mut v = s;
            for _ in 0..n {
                out.push(v);
                v = T::bin(BinOp::Add, v, d)?;
            }
            Tensor::from_vec(&[n], out)
        }
        macro_rules! first {
            ($a:expr) => {
                $a.iter().next().copied().unwrap_or_default()
            };
        }
        match (start, delta) {
            (Tensor::F32(s), Tensor::F32(d)) => go(first!(s), first!(d), n),
            (Tensor::F64(s), Tensor::F64(d)) => go(first!(s), first!(d), n),
            (Tensor::I16(s), Tensor::I16(d)) => go(first!(s), first!(d), n),
            (Tensor::I32(s), Tensor::I32(d)) => go(first!(s), first!(d), n),
            (Tensor::I64(s), Tensor::I64(d)) => go(first!(s), first!(d), n),
            _ => Err(op_err(format!("Range is not defined on {dt}"))),
        }
    }
}

/// Number of elements of ONNX `Range(start, limit, delta)`: `max(ceil((limit-start)/delta), 0)`,
/// computed exactly for integers and in the element type for floats (as ONNX Runtime does).
pub fn range_len(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<usize, TensorError> {
    let n: i128 = if start.dtype().is_float() {
        let (s, l, d) = (start.to_f64s(), limit.to_f64s(), delta.to_f64s());
        let (s, l, d) = (s[0], l[0], d[0]);
        if d == 0.0 {
            return Err(op_err("Range delta is zero"));
        }
        let q = if start.dtype() == DataType::FLOAT {
            (((l as f32) - (s as f32)) / (d as f32)).ceil() as f64
        } else {
            ((l - s) / d).ceil()
        };
        if !q.is_finite() {
            return Err(op_err("Range length is not finite"));
        }
        q.max(0.0) as i128
    } else {
        let (s, l, d) = (
            start.to_i64s()?[0] as i128,
            limit.to_i64s()?[0] as i128,
            delta.to_i64s()?[0] as i128,
        );
        if d == 0 {
            return Err(op_err("Range delta is zero"));
        }
        let num = l - s;
        // Ceiling division for any signs.
        let q = num / d + i128::from((num % d != 0) && ((num < 0) == (d < 0)));
        q.max(0)
    };
    let n = usize::try_from(n).map_err(|_| op_err("Range is too long"))?;
    checked_numel(&[n])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ExternalStore {
        ExternalStore::new(std::env::temp_dir())
    }

    #[test]
    fn proto_round_trip_raw_and_typed() -> Result<(), TensorError> {
        let t = Tensor::from_vec(&[2, 3], vec![1i64, -2, 3, 4, 5, 6])?;
        let p = t.to_proto("x");
        assert_eq!(Tensor::from_proto(&p, &store())?, t);
        let typed = TensorProto {
            dims: vec![3],
            data_type: Some(1),
            float_data: vec![1.5, -2.0, 3.25],
            ..Default::default()
        };
        let f = Tensor::from_proto(&typed, &store())?;
        assert_eq!(f.to_f64s(), vec![1.5, -2.0, 3.25]);
        let half = TensorProto {
            dims: vec![1],
            data_type: Some(10),
            int32_data: vec![0x3c00],
            ..Default::default()
        };
        assert_eq!(Tensor::from_proto(&half, &store())?.to_f64s(), vec![1.0]);
        Ok(())
    }

    #[test]
    fn malformed_protos_are_errors() {
        let short = TensorProto {
            dims: vec![4],
            data_type: Some(7),
            raw_data: Some(Bytes::from_static(&[0; 8])),
            ..Default::default()
        };
        assert!(Tensor::from_proto(&short, &store()).is_err());
        let negative = TensorProto {
            dims: vec![-1],
            data_type: Some(7),
            ..Default::default()
        };
        assert!(Tensor::from_proto(&negative, &store()).is_err());
        let huge = TensorProto {
            dims: vec![1 << 40, 1 << 40],
            data_type: Some(1),
            ..Default::default()
        };
        assert!(Tensor::from_proto(&huge, &store()).is_err());
    }

    #[test]
    fn integer_arithmetic_matches_cpp() -> Result<(), TensorError> {
        let a = Tensor::from_i64s(&[7, -7, 7, -7]);
        let b = Tensor::from_i64s(&[2, 2, -2, -2]);
        assert_eq!(a.binary(BinOp::Div, &b)?.to_i64s()?, vec![3, -3, -3, 3]);
        assert_eq!(a.binary(BinOp::Mod, &b)?.to_i64s()?, vec![1, 1, -1, -1]);
        assert_eq!(a.binary(BinOp::FMod, &b)?.to_i64s()?, vec![1, -1, 1, -1]);
        assert!(a.binary(BinOp::Div, &Tensor::from_i64s(&[0])).is_err());
        let big = Tensor::from_i64s(&[i64::MAX]);
        assert_eq!(
            big.binary(BinOp::Add, &Tensor::from_i64s(&[1]))?
                .to_i64s()?,
            vec![i64::MIN]
        );
        Ok(())
    }

    #[test]
    fn structural_ops() -> Result<(), TensorError> {
        let t = Tensor::from_vec(&[2, 3], (0..6i64).collect())?;
        assert_eq!(t.transpose(&[1, 0])?.to_i64s()?, vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(t.gather(1, &[2, 0], &[2])?.to_i64s()?, vec![2, 0, 5, 3]);
        assert_eq!(t.tile(&[1, 2])?.shape(), &[2, 6]);
        let c = Tensor::concat(&[t.clone(), t.clone()], 0)?;
        assert_eq!(c.shape(), &[4, 3]);
        assert_eq!(Tensor::from_i64s(&[1]).expand(&[2, 3])?.shape(), &[2, 3]);
        let r = Tensor::range(
            &Tensor::scalar(10i64),
            &Tensor::scalar(0i64),
            &Tensor::scalar(-3i64),
        )?;
        assert_eq!(r.to_i64s()?, vec![10, 7, 4, 1]);
        let f = Tensor::from_vec(&[2], vec![2.7f32, -2.7])?.cast(DataType::INT64)?;
        assert_eq!(f.to_i64s()?, vec![2, -2]);
        let s = t.reduce(BinOp::Mul, &[1], false)?;
        assert_eq!(s.to_i64s()?, vec![0, 60]);
        Ok(())
    }
}
