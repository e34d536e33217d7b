//! Protobuf decoding and encoding of [`Tensor`]s: every storage form of a `TensorProto` in,
//! little-endian `raw_data` out.

use bytes::Bytes;
use half::{bf16, f16};
use ndarray::ArrayD;

use super::structural::{checked_numel, from_vec, to_shape};
use super::{Elem, Tensor, TensorError};
use crate::ir::DataType;
use crate::onnx::ExternalStore;
use crate::onnx::proto::TensorProto;

impl Tensor {
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
}
