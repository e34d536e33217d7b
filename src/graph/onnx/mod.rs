//! ONNX model I/O: decoding and encoding [`proto::ModelProto`] losslessly, and external data.
//!
//! Loading memory-maps the model file and decodes it without copying tensor payloads. External
//! data is resolved relative to the model's folder and validated at load time (the file exists,
//! stays inside the folder, and is large enough), but its bytes are only mapped when asked for
//! through [`ExternalStore`]. A `location` that is absolute, contains `..`, or resolves through a
//! symbolic link to a place outside the model's folder is refused.
//!
//! **Invariant:** a [`Model`] returned by [`load`] has a graph, and every external-data reference
//! in its initializers points to an existing byte range of a file inside [`Model::dir`].

pub mod external;
pub mod proto;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

pub use external::{ExternalData, ExternalStore};
pub use proto::ModelProto;
use proto::TensorProto;

/// Protobuf refuses to parse messages of 2 GiB or more; larger models keep weights external.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// Errors of model I/O. Each names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read model {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid ONNX model (protobuf decoding failed: {source})")]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path} is not a valid ONNX model: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "tensor `{tensor}`: external data location `{location}` escapes the model folder {dir} ({why}); \
         external data must live inside the model's folder"
    )]
    EscapingLocation {
        tensor: String,
        location: String,
        dir: PathBuf,
        why: &'static str,
    },
    #[error("tensor `{tensor}`: external data file {path} is missing")]
    MissingExternal { tensor: String, path: PathBuf },
    #[error("tensor `{tensor}`: malformed external data reference: {reason}")]
    BadExternal { tensor: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "model {path} would be {size} bytes, over protobuf's 2 GiB limit; keep its weights as external data"
    )]
    TooLarge { path: PathBuf, size: usize },
}

/// A decoded model together with the folder its external data is resolved against.
#[derive(Debug, Clone)]
pub struct Model {
    /// The decoded protobuf. Tensor payloads borrow the mapped file.
    pub proto: ModelProto,
    /// Path the model was loaded from.
    pub path: PathBuf,
    /// Canonical folder of the model file; external data locations are relative to it.
    pub dir: PathBuf,
}

impl Model {
    /// The external-data store of this model (maps files lazily).
    pub fn external_store(&self) -> ExternalStore {
        ExternalStore::new(self.dir.clone())
    }
}

/// Loads `path` as an ONNX model and validates its external-data references.
pub fn load(path: &Path) -> Result<Model, OnnxError> {
    let read_err = |source| OnnxError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(OnnxError::Invalid {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        });
    }
    let bytes = if meta.len() == 0 {
        Bytes::new()
    } else {
        // SAFETY: the mapping is read-only; a model file changed by another process while dfc
        // reads it is outside what dfc can defend against (as for every mmap-based reader).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(read_err)?;
        Bytes::from_owner(map)
    };
    let proto = decode(path, bytes)?;
    let canonical = fs::canonicalize(path).map_err(read_err)?;
    let dir = canonical
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let model = Model {
        proto,
        path: path.to_path_buf(),
        dir,
    };
    external::validate(&model)?;
    Ok(model)
}

/// Decodes a model from bytes and checks the minimum structure every later stage relies on.
pub fn decode(path: &Path, bytes: Bytes) -> Result<ModelProto, OnnxError> {
    let invalid = |reason: &str| OnnxError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.is_empty() {
        return Err(invalid("the file is empty"));
    }
    let proto = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    if proto.ir_version.is_none() {
        return Err(invalid("no ir_version field"));
    }
    let Some(graph) = &proto.graph else {
        return Err(invalid("no graph"));
    };
    if graph.node.is_empty() && graph.output.is_empty() {
        return Err(invalid("the graph has no nodes and no outputs"));
    }
    Ok(proto)
}

/// Encodes `proto` and writes it to `path` atomically (a temporary file in the same folder,
/// then a rename). Nothing is left behind on failure.
pub fn save(proto: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    within_protobuf_limit(proto.encoded_len(), path)?;
    write_atomic(path, &proto.encode_to_vec())
}

/// Refuses a model of `size` encoded bytes that protobuf readers could not parse.
fn within_protobuf_limit(size: usize, path: &Path) -> Result<(), OnnxError> {
    if size > PROTOBUF_LIMIT {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(())
}

/// A model encoded once and written many times, each copy with initializers of its own
/// appended to the graph: protobuf merges a repeated field's entries across a message's bytes,
/// so the bytes decode as the model with those initializers added to `graph.initializer`.
/// Writing `N` variants of one large graph costs one encoding instead of `N`.
#[derive(Debug, Clone)]
pub struct EncodedModel {
    /// Every field of the model but its graph.
    head: Vec<u8>,
    /// The graph's fields.
    graph: Vec<u8>,
}

/// `ModelProto.graph`'s field number.
const MODEL_GRAPH_FIELD: u32 = 7;
/// `GraphProto.initializer`'s field number.
const GRAPH_INITIALIZER_FIELD: u32 = 5;

impl EncodedModel {
    /// Encodes `model` (its graph separately).
    pub fn new(mut model: ModelProto) -> Self {
        let graph = model.graph.take().unwrap_or_default().encode_to_vec();
        Self {
            head: model.encode_to_vec(),
            graph,
        }
    }

    /// The model's bytes with `extra` appended to its graph's initializers.
    pub fn encode_with(&self, extra: &[TensorProto]) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, message};
        let extra_len: usize = extra
            .iter()
            .map(|t| message::encoded_len(GRAPH_INITIALIZER_FIELD, t))
            .sum();
        let graph_len = self.graph.len() + extra_len;
        let mut out = Vec::with_capacity(
            self.head.len() + 1 + encoded_len_varint(graph_len as u64) + graph_len,
        );
        out.extend_from_slice(&self.head);
        encode_key(MODEL_GRAPH_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint(graph_len as u64, &mut out);
        out.extend_from_slice(&self.graph);
        for t in extra {
            message::encode(GRAPH_INITIALIZER_FIELD, t, &mut out);
        }
        out
    }

    /// Writes the model with `extra` appended to its initializers to `path`, atomically.
    pub fn save_with(&self, extra: &[TensorProto], path: &Path) -> Result<(), OnnxError> {
        let bytes = self.encode_with(extra);
        within_protobuf_limit(bytes.len(), path)?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let write_err = |source| OnnxError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".dfc-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    // Temporary files are private (0600); a written model is an ordinary file.
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(perms).map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{GraphProto, NodeProto, OperatorSetIdProto, StringStringEntryProto};

    fn tensor(name: &str, v: f32) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: vec![1],
            data_type: Some(1),
            raw_data: Some(Bytes::copy_from_slice(&v.to_le_bytes())),
            ..Default::default()
        }
    }

    #[test]
    fn an_encoded_model_decodes_with_its_extra_initializers() {
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            metadata_props: vec![StringStringEntryProto {
                key: Some("k".into()),
                value: Some("v".into()),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: vec![NodeProto {
                    op_type: Some("Add".into()),
                    input: vec!["a".into(), "b".into()],
                    output: vec!["c".into()],
                    ..Default::default()
                }],
                initializer: vec![tensor("a", 1.0)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let encoded = EncodedModel::new(model.clone());
        for extra in [
            vec![],
            vec![tensor("b", 2.0)],
            vec![tensor("b", 3.0), tensor("d", 4.0)],
        ] {
            let bytes = encoded.encode_with(&extra);
            let decoded = ModelProto::decode(bytes.as_slice()).expect("decodes");
            let mut want = model.clone();
            if let Some(g) = want.graph.as_mut() {
                g.initializer.extend(extra.iter().cloned());
            }
            assert_eq!(decoded, want);
        }
    }
}
