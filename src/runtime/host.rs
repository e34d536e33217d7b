//! Host tensors: the element types dfc feeds to and reads from models (f32, f16, i64), and
//! their `.npz` files (NumPy's `np.savez` format, uncompressed; NumPy's default float64 and
//! int32 are converted to f32 and i64 on reading).

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Write};
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{
    NpzReader, NpzWriter, ReadDataError, ReadNpyError, ReadNpzError, ReadableElement,
    WritableElement, WriteDataError,
};
use py_literal::Value as PyValue;

/// Named tensors, in order (model inputs or outputs, `.npz` contents).
pub type NamedTensors = Vec<(String, HostTensor)>;

/// A dense tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    I64(ArrayD<i64>),
}

impl HostTensor {
    /// Short element type name (`f32`, `f16`, `i64`), as in dumps and `inspect`.
    pub fn dtype(&self) -> &'static str {
        match self {
            HostTensor::F32(_) => "f32",
            HostTensor::F16(_) => "f16",
            HostTensor::I64(_) => "i64",
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(a) => a.shape(),
            HostTensor::F16(a) => a.shape(),
            HostTensor::I64(a) => a.shape(),
        }
    }

    /// The values widened to f64, in logical (row-major) order; for comparisons.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            HostTensor::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            HostTensor::F16(a) => a.iter().map(|&v| f64::from(v.to_f32())).collect(),
            HostTensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
        }
    }
}

/// How far apart two tensors are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// Largest absolute difference of corresponding elements.
    pub max_abs: f64,
    /// `max_abs` divided by the largest magnitude of the reference (1 when that is 0).
    pub max_rel: f64,
    /// Whether either side holds a NaN or an infinity where the other does not.
    pub non_finite: bool,
}

/// Compares `actual` with `reference`; `Err` when dtypes or shapes differ.
pub fn difference(actual: &HostTensor, reference: &HostTensor) -> Result<Difference, String> {
    if actual.dtype() != reference.dtype() || actual.shape() != reference.shape() {
        return Err(format!(
            "{}{:?} vs reference {}{:?}",
            actual.dtype(),
            actual.shape(),
            reference.dtype(),
            reference.shape()
        ));
    }
    let (a, r) = (actual.to_f64(), reference.to_f64());
    let mut max_abs = 0f64;
    let mut scale = 0f64;
    let mut non_finite = false;
    for (x, y) in a.iter().zip(&r) {
        if x.is_finite() != y.is_finite() {
            non_finite = true;
            continue;
        }
        if !y.is_finite() {
            continue;
        }
        max_abs = max_abs.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    let max_rel = if scale > 0.0 {
        max_abs / scale
    } else {
        max_abs
    };
    Ok(Difference {
        max_abs,
        max_rel,
        non_finite,
    })
}

/// Errors of reading or writing `.npz` files.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
}

/// Reads every array of an `.npz` file, in the file's order. Supported element types: f32,
/// f16, i64, and NumPy's defaults f64 (narrowed to f32) and i32 (widened to i64); other types
/// are an error naming the array and its NumPy descriptor.
pub fn read_npz(path: &Path) -> Result<Vec<(String, HostTensor)>, NpzError> {
    let p = path.display().to_string();
    let io = |source| NpzError::Io {
        path: p.clone(),
        source,
    };
    let fmt = |message: String| NpzError::Format {
        path: p.clone(),
        message,
    };
    let file = File::open(path).map_err(io)?;
    let mut npz = NpzReader::new(BufReader::new(file)).map_err(|e| fmt(e.to_string()))?;
    let names = npz.names().map_err(|e| fmt(e.to_string()))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let t = read_one(&mut npz, &name).map_err(|e| fmt(format!("array `{name}`: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

fn read_one<R: Read + std::io::Seek>(
    npz: &mut NpzReader<R>,
    name: &str,
) -> Result<HostTensor, String> {
    fn wrong_type(e: &ReadNpzError) -> bool {
        matches!(e, ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_)))
    }
    match npz.by_name::<_, IxDyn>(name) {
        Ok(a) => return Ok(HostTensor::F32(a)),
        Err(e) if !wrong_type(&e) => return Err(e.to_string()),
        Err(_) => {}
    }
    match npz.by_name::<ndarray::OwnedRepr<NpyF16>, IxDyn>(name) {
        Ok(a) => return Ok(HostTensor::F16(a.mapv(|v| v.0))),
        Err(e) if !wrong_type(&e) => return Err(e.to_string()),
        Err(_) => {}
    }
    match npz.by_name::<_, IxDyn>(name) {
        Ok(a) => return Ok(HostTensor::I64(a)),
        Err(e) if !wrong_type(&e) => return Err(e.to_string()),
        Err(_) => {}
    }
    // NumPy's defaults, narrowed to what models take (as ONNX Runtime's users expect).
    match npz.by_name::<ndarray::OwnedRepr<f64>, IxDyn>(name) {
        Ok(a) => return Ok(HostTensor::F32(a.mapv(|v| v as f32))),
        Err(e) if !wrong_type(&e) => return Err(e.to_string()),
        Err(_) => {}
    }
    match npz.by_name::<ndarray::OwnedRepr<i32>, IxDyn>(name) {
        Ok(a) => Ok(HostTensor::I64(a.mapv(i64::from))),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(d))) => Err(format!(
            "unsupported element type {d} (dfc reads float32, float16 and int64, and converts \
             float64 to float32 and int32 to int64)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `arrays` to `path` as an uncompressed `.npz` (readable by `numpy.load`), through a
/// temporary file and a rename: `path` is replaced only once the archive is complete.
pub fn write_npz(path: &Path, arrays: &[(String, HostTensor)]) -> Result<(), NpzError> {
    let p = path.display().to_string();
    let fmt = |e: ndarray_npy::WriteNpzError| NpzError::Format {
        path: p.clone(),
        message: e.to_string(),
    };
    let mut npz = NpzWriter::new(Cursor::new(Vec::new()));
    for (name, t) in arrays {
        match t {
            HostTensor::F32(a) => npz.add_array(name.as_str(), a).map_err(fmt)?,
            HostTensor::F16(a) => npz.add_array(name.as_str(), &a.mapv(NpyF16)).map_err(fmt)?,
            HostTensor::I64(a) => npz.add_array(name.as_str(), a).map_err(fmt)?,
        }
    }
    let bytes = npz.finish().map_err(fmt)?.into_inner();
    crate::onnx::write_atomic(path, &bytes).map_err(|e| match e {
        crate::onnx::OnnxError::Write { source, .. } => NpzError::Write { path: p, source },
        other => NpzError::Format {
            path: p,
            message: other.to_string(),
        },
    })
}

/// `half::f16` as a NumPy `float16` element (`ndarray-npy` has no f16 support of its own).
#[derive(Debug, Clone, Copy, PartialEq)]
struct NpyF16(f16);

const F16_DESCR: &str = if cfg!(target_endian = "little") {
    "<f2"
} else {
    ">f2"
};

impl ReadableElement for NpyF16 {
    fn read_to_end_exact_vec<R: Read>(
        mut reader: R,
        type_desc: &PyValue,
        len: usize,
    ) -> Result<Vec<Self>, ReadDataError> {
        let little = match type_desc {
            PyValue::String(s) if s == "<f2" => true,
            PyValue::String(s) if s == ">f2" => false,
            other => return Err(ReadDataError::WrongDescriptor(other.clone())),
        };
        let mut bytes = vec![0u8; len.checked_mul(2).ok_or(ReadDataError::MissingData)?];
        reader.read_exact(&mut bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ReadDataError::MissingData
            } else {
                ReadDataError::Io(e)
            }
        })?;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).map_err(ReadDataError::Io)?;
        if !rest.is_empty() {
            return Err(ReadDataError::ExtraBytes(rest.len()));
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|c| {
                let b = [c[0], c[1]];
                NpyF16(if little {
                    f16::from_le_bytes(b)
                } else {
                    f16::from_be_bytes(b)
                })
            })
            .collect())
    }
}

impl WritableElement for NpyF16 {
    fn type_descriptor() -> PyValue {
        PyValue::String(F16_DESCR.into())
    }

    fn write<W: Write>(&self, mut writer: W) -> Result<(), WriteDataError> {
        writer
            .write_all(&self.0.to_ne_bytes())
            .map_err(WriteDataError::Io)
    }

    fn write_slice<W: Write>(slice: &[Self], mut writer: W) -> Result<(), WriteDataError> {
        let bytes: Vec<u8> = slice.iter().flat_map(|v| v.0.to_ne_bytes()).collect();
        writer.write_all(&bytes).map_err(WriteDataError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NumPy's default types (float64, and int32 on some platforms) are read as the types
    /// models take, as ONNX Runtime's Python users expect.
    #[test]
    fn float64_and_int32_are_converted_on_reading() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("numpy.npz");
        let mut npz = NpzWriter::new(File::create(&path)?);
        let doubles = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.5f64, -1.25, 3.0, 1e-3])?;
        let ints = ArrayD::from_shape_vec(IxDyn(&[3]), vec![7i32, -2, 0])?;
        npz.add_array("context", &doubles)?;
        npz.add_array("ids", &ints)?;
        npz.finish()?;
        let read = read_npz(&path)?;
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0, "context");
        assert_eq!(read[0].1, HostTensor::F32(doubles.mapv(|v| v as f32)));
        assert_eq!(read[1].0, "ids");
        assert_eq!(read[1].1, HostTensor::I64(ints.mapv(i64::from)));
        Ok(())
    }
}
