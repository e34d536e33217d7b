//! The Triton model repository of a plan, as `dfc triton` writes it:
//!
//! ```text
//! REPO/NAME/config.pbtxt        backend "dfc", the request contract, instance_group, parameters
//! REPO/NAME/1/plan.json, rank*.onnx, weights …   the plan folder's files, hard-linked
//! REPO/NAME/1/vae.onnx          the VAE decoder (optional), hard-linked
//! REPO/NAME/1/dfc_serving.json  the manifest: every file above with its size and SHA-256
//! ```
//!
//! Files are hard-linked where the file system allows (copied otherwise), so a repository costs
//! no second copy of the weights and a plan compiled again into the same folder does not change
//! what is served. At load the backend checks every file against the manifest
//! ([`Manifest::verify`]): a missing or changed file fails the load with its name.
//!
//! **Invariant:** the model folder is written atomically: built under a temporary name beside
//! it and renamed into place; a failure leaves nothing behind, and an existing folder is
//! replaced only when it is a dfc model.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::request::{Settings, conditioning};
use super::{GUIDANCE, IMAGE, LATENT, SCHEDULER, SEED, STEPS};
use crate::plan::{PLAN_FILE, Plan};
use crate::sampling::latent_batch;

/// Name of the manifest in the version folder.
pub const MANIFEST_FILE: &str = "dfc_serving.json";
/// Name the VAE decoder gets in the version folder.
pub const VAE_FILE: &str = "vae.onnx";
/// Format version of the manifest.
pub const MANIFEST_FORMAT: u32 = 1;
/// The version folder `dfc triton` writes.
pub const VERSION: &str = "1";

/// Errors of writing or checking a model repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file of the version folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What the version folder holds (`dfc_serving.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The plan folder the repository was written from.
    pub plan: String,
    /// The VAE decoder's file in the version folder, if any.
    pub vae: Option<String>,
    pub files: Vec<FileDigest>,
}

/// What `dfc triton` writes.
#[derive(Debug, Clone)]
pub struct RepoOptions {
    pub plan: PathBuf,
    pub repository: PathBuf,
    pub name: String,
    pub instances: usize,
    pub vae: Option<PathBuf>,
    pub settings: Settings,
}

fn digest(path: &Path) -> Result<FileDigest, RepoError> {
    let mut file = fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(FileDigest {
        name,
        bytes,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

impl Manifest {
    /// Reads the manifest of the version folder `dir`.
    pub fn read(dir: &Path) -> Result<Self, RepoError> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            RepoError::Invalid(format!(
                "{}: {e}; write the model folder with `dfc triton PLAN_DIR -o REPO --name NAME`",
                path.display()
            ))
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| RepoError::Invalid(format!("{}: {e}", path.display())))?;
        if m.format != MANIFEST_FORMAT {
            return Err(RepoError::Invalid(format!(
                "{}: format {} (this dfc reads {MANIFEST_FORMAT}); write the model folder again",
                path.display(),
                m.format
            )));
        }
        Ok(m)
    }

    /// Checks every file of the version folder `dir` against the manifest: present, same size,
    /// same SHA-256. The error names the first file that differs.
    pub fn verify(&self, dir: &Path) -> Result<(), RepoError> {
        for f in &self.files {
            if f.name.contains('/') || f.name.contains('\\') || f.name.starts_with('.') {
                return Err(RepoError::Invalid(format!(
                    "{}: file name {:?} is not a plain file name",
                    dir.join(MANIFEST_FILE).display(),
                    f.name
                )));
            }
            let path = dir.join(&f.name);
            let meta = fs::metadata(&path).map_err(|e| {
                RepoError::Invalid(format!(
                    "{} is missing ({e}); write the model folder again with `dfc triton`",
                    path.display()
                ))
            })?;
            let changed = || {
                RepoError::Invalid(format!(
                    "{} changed since the model folder was written (it recorded {} bytes, \
                     SHA-256 {}); write the model folder again with `dfc triton`",
                    path.display(),
                    f.bytes,
                    f.sha256
                ))
            };
            if meta.len() != f.bytes {
                return Err(changed());
            }
            if digest(&path)?.sha256 != f.sha256 {
                return Err(changed());
            }
        }
        Ok(())
    }
}

/// Whether `name` is usable as a Triton model name and a folder name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `config.pbtxt` of the plan.
pub fn config_pbtxt(
    plan: &Plan,
    name: &str,
    instances: usize,
    vae: bool,
    settings: &Settings,
) -> Result<String, RepoError> {
    let cond = conditioning(plan).map_err(RepoError::Invalid)?;
    let latent = &crate::sampling::latent_spec(plan)
        .map_err(|e| RepoError::Invalid(e.to_string()))?
        .shape;
    let dims = |d: &[i64]| d.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let mut inputs = Vec::new();
    for (spec, dtype) in &cond {
        inputs.push(format!(
            "  {{ name: \"{}\" data_type: TYPE_{} dims: [ {} ] }}",
            spec.name,
            dtype.name(),
            dims(&spec.shape)
        ));
    }
    for (n, t) in [(SEED, "INT64"), (STEPS, "INT32"), (GUIDANCE, "FP32")] {
        inputs.push(format!(
            "  {{ name: \"{n}\" data_type: TYPE_{t} dims: [ 1 ] }}"
        ));
    }
    inputs.push(format!(
        "  {{ name: \"{SCHEDULER}\" data_type: TYPE_STRING dims: [ 1 ] optional: true }}"
    ));
    // The batch of the outputs depends on the request (guidance halves it): -1.
    let [_, c, h, w] = [latent[0], latent[1], latent[2], latent[3]];
    let mut outputs = vec![format!(
        "  {{ name: \"{LATENT}\" data_type: TYPE_FP32 dims: [ -1, {c}, {h}, {w} ] }}"
    )];
    if vae {
        outputs.push(format!(
            "  {{ name: \"{IMAGE}\" data_type: TYPE_UINT8 dims: [ -1, -1, -1, 3 ] }}"
        ));
    }
    let params: Vec<String> = settings
        .to_parameters()
        .into_iter()
        .map(|(k, v)| format!("  {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}"))
        .collect();
    Ok(format!(
        "# Written by dfc triton: a dfc plan of {world} rank(s), {mode} mode.\n\
         name: \"{name}\"\n\
         backend: \"dfc\"\n\
         max_batch_size: 0\n\
         input [\n{inputs}\n]\n\
         output [\n{outputs}\n]\n\
         instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n\
         parameters [\n{params}\n]\n",
        world = plan.world_size,
        mode = plan.mode.name(),
        inputs = inputs.join(",\n"),
        outputs = outputs.join(",\n"),
        params = params.join(",\n"),
    ))
}

/// Hard-links `from` to `to`, or copies it where the file system cannot link.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), RepoError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(io(from))?;
    Ok(())
}

/// What [`write_repository`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub model_dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
}

/// Writes the model folder `REPO/NAME` (see the module documentation).
pub fn write_repository(options: &RepoOptions) -> Result<Written, RepoError> {
    let RepoOptions {
        plan: plan_dir,
        repository,
        name,
        instances,
        vae,
        settings,
    } = options;
    if !valid_name(name) {
        return Err(RepoError::Invalid(format!(
            "--name {name:?}: a model name is letters, digits, `_`, `-` and `.`"
        )));
    }
    if *instances == 0 {
        return Err(RepoError::Invalid("--instances must be at least 1".into()));
    }
    let plan = Plan::load(plan_dir).map_err(|e| RepoError::Invalid(e.to_string()))?;
    latent_batch(&plan).map_err(|e| RepoError::Invalid(e.to_string()))?;
    if let Some(v) = vae {
        if v.is_dir() {
            return Err(RepoError::Invalid(format!(
                "--vae {}: a folder; give the VAE decoder's ONNX file (patch-parallel VAE plans \
                 are not served yet)",
                v.display()
            )));
        }
        fs::metadata(v).map_err(io(v))?;
    }
    let config = config_pbtxt(&plan, name, *instances, vae.is_some(), settings)?;
    fs::create_dir_all(repository).map_err(io(repository))?;
    let target = repository.join(name);
    if target.exists() && !target.join(VERSION).join(MANIFEST_FILE).is_file() {
        let empty = fs::read_dir(&target)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(RepoError::Invalid(format!(
                "{} exists and is not a dfc model folder; choose another --name or remove it",
                target.display()
            )));
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(repository)
        .map_err(io(repository))?;
    let version = tmp.path().join(VERSION);
    fs::create_dir(&version).map_err(io(&version))?;
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(plan_dir)
        .map_err(io(plan_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    entries.sort();
    if !entries.iter().any(|p| p.ends_with(PLAN_FILE)) {
        return Err(RepoError::Invalid(format!(
            "{} holds no {PLAN_FILE}",
            plan_dir.display()
        )));
    }
    let mut bytes = 0;
    for from in &entries {
        let file_name = from.file_name().unwrap_or_default();
        if file_name == MANIFEST_FILE || file_name == VAE_FILE {
            return Err(RepoError::Invalid(format!(
                "{}: a plan file may not be named {}",
                from.display(),
                file_name.to_string_lossy()
            )));
        }
        let to = version.join(file_name);
        link_or_copy(from, &to)?;
        let d = digest(&to)?;
        bytes += d.bytes;
        files.push(d);
    }
    if let Some(v) = vae {
        let to = version.join(VAE_FILE);
        link_or_copy(v, &to)?;
        let d = digest(&to)?;
        bytes += d.bytes;
        files.push(d);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        plan: fs::canonicalize(plan_dir)
            .unwrap_or_else(|_| plan_dir.clone())
            .display()
            .to_string(),
        vae: vae.as_ref().map(|_| VAE_FILE.to_string()),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| RepoError::Invalid(format!("manifest: {e}")))?;
    let path = version.join(MANIFEST_FILE);
    fs::write(&path, text + "\n").map_err(io(&path))?;
    let path = tmp.path().join("config.pbtxt");
    fs::write(&path, config).map_err(io(&path))?;
    if target.exists() {
        fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    let kept = tmp.keep();
    fs::rename(&kept, &target).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        io(&target)(e)
    })?;
    Ok(Written {
        files: manifest.files.len(),
        model_dir: target,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_plain() {
        assert!(valid_name("shapes_4gpu-v1.2"));
        for bad in ["", ".hidden", "a/b", "a b", "..", "ünï"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_changed_or_missing_file_is_named() -> Result<(), RepoError> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let file = dir.path().join("rank0.onnx");
        fs::write(&file, b"abc").map_err(io(&file))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            plan: "p".into(),
            vae: None,
            files: vec![digest(&file)?],
        };
        manifest.verify(dir.path())?;
        fs::write(&file, b"abd").map_err(io(&file))?;
        let err = manifest.verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rank0.onnx changed"), "{err}");
        fs::remove_file(&file).map_err(io(&file))?;
        let err = manifest.verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rank0.onnx is missing"), "{err}");
        Ok(())
    }
}
