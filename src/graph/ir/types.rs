//! Value types of the IR: element types, dimensions and tensor types.

use std::fmt;

use crate::onnx::proto::{
    TensorProto, TensorShapeProto, TypeProto, tensor_shape_proto, type_proto,
};

/// An ONNX element type (`TensorProto.DataType` code).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DataType(pub i32);

impl DataType {
    pub const UNDEFINED: Self = Self(0);
    pub const FLOAT: Self = Self(1);
    pub const UINT8: Self = Self(2);
    pub const INT8: Self = Self(3);
    pub const UINT16: Self = Self(4);
    pub const INT16: Self = Self(5);
    pub const INT32: Self = Self(6);
    pub const INT64: Self = Self(7);
    pub const STRING: Self = Self(8);
    pub const BOOL: Self = Self(9);
    pub const FLOAT16: Self = Self(10);
    pub const DOUBLE: Self = Self(11);
    pub const UINT32: Self = Self(12);
    pub const UINT64: Self = Self(13);
    pub const BFLOAT16: Self = Self(16);

    /// Short name used in dumps and `inspect` (`f32`, `f16`, `i64`, …).
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "undefined",
            1 => "f32",
            2 => "u8",
            3 => "i8",
            4 => "u16",
            5 => "i16",
            6 => "i32",
            7 => "i64",
            8 => "string",
            9 => "bool",
            10 => "f16",
            11 => "f64",
            12 => "u32",
            13 => "u64",
            14 => "c64",
            15 => "c128",
            16 => "bf16",
            17 => "f8e4m3fn",
            18 => "f8e4m3fnuz",
            19 => "f8e5m2",
            20 => "f8e5m2fnuz",
            21 => "u4",
            22 => "i4",
            23 => "f4e2m1",
            24 => "f8e8m0",
            25 => "u2",
            26 => "i2",
            27 => "f6e2m3",
            28 => "f6e3m2",
            _ => "unknown",
        }
    }

    /// Size of one element in bits (`None` for strings and unknown codes).
    pub fn bits(self) -> Option<usize> {
        Some(match self.0 {
            1 | 6 | 12 => 32,
            2 | 3 | 9 | 17..=20 | 24 => 8,
            4 | 5 | 10 | 16 => 16,
            7 | 11 | 13 | 14 => 64,
            15 => 128,
            21..=23 => 4,
            25 | 26 => 2,
            27 | 28 => 6,
            _ => return None,
        })
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self.0, 1 | 10 | 11 | 16..=20 | 23 | 24 | 27 | 28)
    }
}

impl From<DataType> for i32 {
    fn from(t: DataType) -> i32 {
        t.0
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a tensor shape.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Dim {
    /// A known size.
    Fixed(i64),
    /// A named symbolic size (`batch`, `height`, …).
    Symbol(String),
    /// Unknown and unnamed.
    Unknown,
}

impl Dim {
    /// The size if known.
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Symbol(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Element type and (optionally known) shape of a tensor.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TensorType {
    pub elem: DataType,
    /// `None` when even the rank is unknown.
    pub shape: Option<Vec<Dim>>,
}

impl TensorType {
    /// A tensor type with a fully static shape.
    pub fn fixed(elem: DataType, dims: &[i64]) -> Self {
        Self {
            elem,
            shape: Some(dims.iter().map(|&d| Dim::Fixed(d)).collect()),
        }
    }

    /// The type an initializer declares through its `data_type` and `dims`.
    pub fn of_initializer(t: &TensorProto) -> Self {
        Self::fixed(DataType(t.data_type()), &t.dims)
    }

    /// The shape as concrete sizes, if every dimension is known.
    pub fn static_dims(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().map(Dim::fixed).collect()
    }

    /// Rank, if known.
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// Number of elements, if the shape is static.
    pub fn numel(&self) -> Option<i64> {
        self.static_dims().map(|d| d.iter().product())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.elem)?;
        match &self.shape {
            None => f.write_str("[..]"),
            Some(dims) => {
                f.write_str("[")?;
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// The type of a value: a tensor, or another ONNX type kept as is.
#[derive(Clone, PartialEq, Debug)]
pub enum ValueType {
    Tensor(TensorType),
    /// Sequences, maps, optionals, sparse and opaque types: carried, not interpreted.
    Other(TypeProto),
}

impl ValueType {
    /// Reads a `TypeProto`.
    pub fn from_proto(tp: &TypeProto) -> Self {
        match &tp.value {
            Some(type_proto::Value::TensorType(t)) => ValueType::Tensor(TensorType {
                elem: DataType(t.elem_type()),
                shape: t.shape.as_ref().map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(tensor_shape_proto::dimension::Value::DimValue(v)) => {
                                Dim::Fixed(*v)
                            }
                            Some(tensor_shape_proto::dimension::Value::DimParam(p)) => {
                                Dim::Symbol(p.clone())
                            }
                            None => Dim::Unknown,
                        })
                        .collect()
                }),
            }),
            _ => ValueType::Other(tp.clone()),
        }
    }

    /// Writes a `TypeProto`, keeping dimension denotations of `original` where ranks agree.
    pub fn to_proto(&self, original: Option<&TypeProto>) -> TypeProto {
        match self {
            ValueType::Other(tp) => tp.clone(),
            ValueType::Tensor(t) => {
                let orig_dims = original.and_then(|o| match &o.value {
                    Some(type_proto::Value::TensorType(ot)) => ot.shape.as_ref().map(|s| &s.dim),
                    _ => None,
                });
                let shape = t.shape.as_ref().map(|dims| TensorShapeProto {
                    dim: dims
                        .iter()
                        .enumerate()
                        .map(|(i, d)| tensor_shape_proto::Dimension {
                            value: match d {
                                Dim::Fixed(v) => {
                                    Some(tensor_shape_proto::dimension::Value::DimValue(*v))
                                }
                                Dim::Symbol(s) => {
                                    Some(tensor_shape_proto::dimension::Value::DimParam(s.clone()))
                                }
                                Dim::Unknown => None,
                            },
                            denotation: orig_dims
                                .filter(|od| od.len() == dims.len())
                                .and_then(|od| od[i].denotation.clone()),
                        })
                        .collect(),
                });
                TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: Some(t.elem.0),
                        shape,
                    })),
                    denotation: None,
                }
            }
        }
    }
}
