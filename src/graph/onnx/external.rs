//! External data: tensors whose bytes live in a separate file next to the model.
//!
//! ONNX stores the reference as `external_data` key/value entries (`location`, `offset`,
//! `length`, `checksum`) with `data_location = EXTERNAL`. Locations are relative to the model's
//! folder. ONNX Runtime refuses locations outside that folder, and so do we, at load time, with
//! an error that names the tensor.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::proto::{GraphProto, TensorProto, tensor_proto::DataLocation};
use super::{Model, OnnxError};

/// A parsed external-data reference of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// Path relative to the model's folder, as written in the model.
    pub location: String,
    /// Byte offset into the file.
    pub offset: u64,
    /// Byte length; `None` means "to the end of the file".
    pub length: Option<u64>,
}

impl ExternalData {
    /// Parses the reference of `tensor`; `None` when its data is stored inline.
    pub fn of(tensor: &TensorProto) -> Result<Option<Self>, OnnxError> {
        if tensor.data_location != Some(DataLocation::External as i32) {
            return Ok(None);
        }
        let name = tensor.name().to_string();
        let bad = |reason: String| OnnxError::BadExternal {
            tensor: name.clone(),
            reason,
        };
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for entry in &tensor.external_data {
            let value = entry.value();
            let parse = |what: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{what} `{value}` is not a non-negative integer")))
            };
            match entry.key() {
                "location" => location = Some(value.to_string()),
                "offset" => offset = parse("offset")?,
                "length" => length = Some(parse("length")?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| bad("no `location` entry".into()))?;
        if location.is_empty() {
            return Err(bad("empty `location`".into()));
        }
        Ok(Some(Self {
            location,
            offset,
            length,
        }))
    }
}

/// Resolves `location` inside `dir` (canonical), refusing anything that leaves it.
pub fn resolve(dir: &Path, tensor: &str, location: &str) -> Result<PathBuf, OnnxError> {
    let escape = |why| OnnxError::EscapingLocation {
        tensor: tensor.to_string(),
        location: location.to_string(),
        dir: dir.to_path_buf(),
        why,
    };
    let rel = Path::new(location);
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err(escape("absolute path"));
    }
    if location.contains('\0') {
        return Err(escape("NUL byte in path"));
    }
    for comp in rel.components() {
        match comp {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(escape("`..` component")),
            Component::RootDir | Component::Prefix(_) => return Err(escape("absolute path")),
        }
    }
    let joined = dir.join(rel);
    // A plain file name in the (canonical) folder is its own real path unless it is a link.
    if rel.components().count() == 1
        && !location.ends_with('/')
        && fs::symlink_metadata(&joined).is_ok_and(|m| m.file_type().is_file())
    {
        return Ok(joined);
    }
    match fs::canonicalize(&joined) {
        Ok(real) if real.starts_with(dir) => Ok(real),
        Ok(_) => Err(escape("symbolic link to outside the folder")),
        Err(_) => Err(OnnxError::MissingExternal {
            tensor: tensor.to_string(),
            path: joined,
        }),
    }
}

/// Every tensor of a graph and its subgraphs, initializers first, with a stable order.
pub fn tensors_of(graph: &GraphProto) -> Vec<&TensorProto> {
    let mut out: Vec<&TensorProto> = graph.initializer.iter().collect();
    for sparse in &graph.sparse_initializer {
        out.extend(sparse.values.iter());
        out.extend(sparse.indices.iter());
    }
    for node in &graph.node {
        for attr in &node.attribute {
            out.extend(attr.t.iter());
            out.extend(attr.tensors.iter());
            if let Some(g) = &attr.g {
                out.extend(tensors_of(g));
            }
            for g in &attr.graphs {
                out.extend(tensors_of(g));
            }
        }
    }
    out
}

/// Checks every external reference of `model`: inside the folder, file present, range in bounds.
pub(super) fn validate(model: &Model) -> Result<(), OnnxError> {
    let Some(graph) = &model.proto.graph else {
        return Ok(());
    };
    let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
    for tensor in tensors_of(graph) {
        let Some(ext) = ExternalData::of(tensor)? else {
            continue;
        };
        let path = resolve(&model.dir, tensor.name(), &ext.location)?;
        let size = match sizes.get(&path) {
            Some(s) => *s,
            None => {
                let meta = fs::metadata(&path).map_err(|source| OnnxError::Read {
                    path: path.clone(),
                    source,
                })?;
                if !meta.is_file() {
                    return Err(OnnxError::BadExternal {
                        tensor: tensor.name().to_string(),
                        reason: format!("{} is not a regular file", path.display()),
                    });
                }
                sizes.insert(path.clone(), meta.len());
                meta.len()
            }
        };
        let end = ext.offset.checked_add(ext.length.unwrap_or(0));
        if ext.offset > size || end.is_none_or(|e| e > size) {
            return Err(OnnxError::BadExternal {
                tensor: tensor.name().to_string(),
                reason: format!(
                    "range offset {} length {} exceeds the {} bytes of {}",
                    ext.offset,
                    ext.length.unwrap_or(0),
                    size,
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Lazily memory-maps external-data files of one model folder and hands out zero-copy slices.
#[derive(Debug, Clone)]
pub struct ExternalStore {
    dir: PathBuf,
    maps: Arc<Mutex<HashMap<PathBuf, Bytes>>>,
}

impl ExternalStore {
    /// A store resolving locations against the canonical folder `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            maps: Arc::default(),
        }
    }

    /// The bytes of `tensor`: its inline `raw_data`, or a slice of its mapped external file.
    /// Returns `None` for tensors stored in typed fields (`float_data`, `int64_data`, …).
    pub fn raw_bytes(&self, tensor: &TensorProto) -> Result<Option<Bytes>, OnnxError> {
        let Some(ext) = ExternalData::of(tensor)? else {
            return Ok(tensor.raw_data.clone());
        };
        let path = resolve(&self.dir, tensor.name(), &ext.location)?;
        let file_bytes = {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            match maps.get(&path) {
                Some(b) => b.clone(),
                None => {
                    let read_err = |source| OnnxError::Read {
                        path: path.clone(),
                        source,
                    };
                    let file = fs::File::open(&path).map_err(read_err)?;
                    let len = file.metadata().map_err(read_err)?.len();
                    let b = if len == 0 {
                        Bytes::new()
                    } else {
                        // SAFETY: read-only mapping of a weights file; see `onnx::load`.
                        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(read_err)?;
                        Bytes::from_owner(map)
                    };
                    maps.insert(path.clone(), b.clone());
                    b
                }
            }
        };
        let start = usize::try_from(ext.offset).unwrap_or(usize::MAX);
        let end = match ext.length {
            Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
            None => file_bytes.len(),
        };
        if start > end || end > file_bytes.len() {
            return Err(OnnxError::BadExternal {
                tensor: tensor.name().to_string(),
                reason: format!(
                    "range {start}..{end} exceeds {} bytes of {}",
                    file_bytes.len(),
                    path.display()
                ),
            });
        }
        Ok(Some(file_bytes.slice(start..end)))
    }
}

/// Makes the external files referenced by `graph` available next to a model written into
/// `out_dir`: nothing to do when `out_dir` is the source folder, otherwise each file is
/// hard-linked (shared, no copy) or, across file systems, copied. Returns the files placed.
pub fn share_into(
    graph: &GraphProto,
    src_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, OnnxError> {
    let out_canon = fs::canonicalize(out_dir).map_err(|source| OnnxError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    if out_canon == src_dir {
        return Ok(Vec::new());
    }
    let mut placed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for tensor in tensors_of(graph) {
        let Some(ext) = ExternalData::of(tensor)? else {
            continue;
        };
        if !seen.insert(ext.location.clone()) {
            continue;
        }
        let src = resolve(src_dir, tensor.name(), &ext.location)?;
        let dst = out_canon.join(&ext.location);
        let write_err = |source| OnnxError::Write {
            path: dst.clone(),
            source,
        };
        if let Some(parent) = dst.parent().filter(|p| *p != out_canon) {
            fs::create_dir_all(parent).map_err(write_err)?;
        }
        if dst.exists() {
            if same_file(&src, &dst) {
                continue;
            }
            return Err(OnnxError::Write {
                path: dst.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a different file with this name is already there; refusing to overwrite it",
                ),
            });
        }
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).map_err(write_err)?;
        }
        placed.push(dst);
    }
    Ok(placed)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = fs::canonicalize(tmp.path()).expect("canonical");
        fs::create_dir(dir.join("model")).expect("mkdir");
        fs::write(dir.join("model/w.bin"), [0u8; 16]).expect("write");
        fs::write(dir.join("outside.bin"), [0u8; 16]).expect("write");
        (tmp, dir)
    }

    #[test]
    fn resolves_inside_and_refuses_escapes() {
        let (_tmp, root) = folder();
        let dir = root.join("model");
        assert_eq!(resolve(&dir, "t", "w.bin").unwrap(), dir.join("w.bin"));
        assert_eq!(resolve(&dir, "t", "./w.bin").unwrap(), dir.join("w.bin"));
        for (loc, why) in [
            ("../outside.bin", "`..` component"),
            ("sub/../../outside.bin", "`..` component"),
            ("/etc/passwd", "absolute path"),
        ] {
            match resolve(&dir, "t", loc) {
                Err(OnnxError::EscapingLocation { why: w, .. }) => assert_eq!(w, why, "{loc}"),
                other => panic!("{loc}: expected an escape error, got {other:?}"),
            }
        }
        std::os::unix::fs::symlink(root.join("outside.bin"), dir.join("link.bin")).unwrap();
        assert!(matches!(
            resolve(&dir, "t", "link.bin"),
            Err(OnnxError::EscapingLocation {
                why: "symbolic link to outside the folder",
                ..
            })
        ));
        assert!(matches!(
            resolve(&dir, "t", "absent.bin"),
            Err(OnnxError::MissingExternal { .. })
        ));
    }

    #[test]
    fn parses_references_and_maps_slices() {
        let (_tmp, root) = folder();
        let dir = root.join("model");
        fs::write(dir.join("w.bin"), (0u8..16).collect::<Vec<_>>()).unwrap();
        let entry = |k: &str, v: &str| crate::onnx::proto::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        let tensor = TensorProto {
            name: Some("w".into()),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                entry("location", "w.bin"),
                entry("offset", "4"),
                entry("length", "8"),
            ],
            ..Default::default()
        };
        let ext = ExternalData::of(&tensor).unwrap().unwrap();
        assert_eq!((ext.offset, ext.length), (4, Some(8)));
        let store = ExternalStore::new(dir.clone());
        let bytes = store.raw_bytes(&tensor).unwrap().unwrap();
        assert_eq!(&bytes[..], &[4, 5, 6, 7, 8, 9, 10, 11]);

        let mut bad = tensor.clone();
        bad.external_data[1] = entry("offset", "-3");
        assert!(matches!(
            ExternalData::of(&bad),
            Err(OnnxError::BadExternal { .. })
        ));
        let mut past_end = tensor.clone();
        past_end.external_data[2] = entry("length", "100");
        assert!(matches!(
            store.raw_bytes(&past_end),
            Err(OnnxError::BadExternal { .. })
        ));
    }
}
