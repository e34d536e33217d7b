//! Finding and loading ONNX Runtime.
//!
//! dfc links ONNX Runtime dynamically (`ort` with `load-dynamic`) and uses the
//! `libonnxruntime.so` shipped in PyPI's `onnxruntime` wheel. [`find_onnxruntime`] looks for it,
//! in this order:
//!
//! 1. the file named by the environment variable `ORT_DYLIB_PATH`;
//! 2. a project-local virtual environment: `.venv/lib/python3*/site-packages/onnxruntime/capi/`
//!    under `$VIRTUAL_ENV`, the current folder and each of its ancestors, and each ancestor of
//!    the running executable's folder (so `target/debug/dfc` finds the repository's `.venv`);
//! 3. the `onnxruntime` package of the `python3` found on `PATH`.
//!
//! [`environment`] loads the library and creates the process-wide ORT environment once; every
//! later call returns the same environment (or the same error).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;

/// The command that installs the ONNX Runtime dfc expects, from the repository root.
pub const INSTALL_HINT: &str =
    "python3 -m venv .venv && .venv/bin/pip install -r tools/requirements.txt";

/// Errors of locating or starting ONNX Runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtEnvError {
    #[error(
        "ONNX Runtime (libonnxruntime.so) was not found; install it from the repository root with\n    {INSTALL_HINT}\nor point ORT_DYLIB_PATH at libonnxruntime.so.<version>. Looked in:\n{}",
        .searched.iter().map(|s| format!("    {s}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound { searched: Vec<String> },
    #[error("ORT_DYLIB_PATH is set to {0}, which is not a file")]
    BadEnvPath(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// Where the library was found and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtLibrary {
    /// Path of `libonnxruntime.so.<version>`.
    pub path: PathBuf,
    /// Which rule found it (`ORT_DYLIB_PATH`, `venv`, `python3`).
    pub source: &'static str,
}

/// Locates `libonnxruntime.so*` without loading it; the error lists every place looked at.
pub fn find_onnxruntime() -> Result<OrtLibrary, OrtEnvError> {
    Search {
        env_path: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        venvs: venv_roots(),
        python: "python3".into(),
    }
    .find()
}

/// The places [`find_onnxruntime`] looks at, explicit (tests build their own).
#[derive(Debug, Clone)]
pub struct Search {
    /// Value of `ORT_DYLIB_PATH`, if set.
    pub env_path: Option<PathBuf>,
    /// Virtual-environment folders, nearest first.
    pub venvs: Vec<PathBuf>,
    /// The Python interpreter to ask last.
    pub python: String,
}

impl Search {
    /// Looks in order; the error lists every place looked at and the install command.
    pub fn find(&self) -> Result<OrtLibrary, OrtEnvError> {
        let mut searched = Vec::new();
        match &self.env_path {
            Some(path) if !path.as_os_str().is_empty() => {
                if path.is_file() {
                    return Ok(OrtLibrary {
                        path: path.clone(),
                        source: "ORT_DYLIB_PATH",
                    });
                }
                return Err(OrtEnvError::BadEnvPath(path.clone()));
            }
            _ => searched.push("ORT_DYLIB_PATH (not set)".to_string()),
        }
        for root in &self.venvs {
            let pattern =
                root.join("lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*");
            searched.push(pattern.display().to_string());
            if let Some(path) = library_in_venv(root) {
                return Ok(OrtLibrary {
                    path,
                    source: "venv",
                });
            }
        }
        searched.push(format!(
            "the onnxruntime package of `{}` on PATH",
            self.python
        ));
        if let Some(path) = library_from_python(&self.python) {
            return Ok(OrtLibrary {
                path,
                source: "python3",
            });
        }
        Err(OrtEnvError::NotFound { searched })
    }
}

/// Virtual-environment folders to try, nearest first, without duplicates.
fn venv_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !roots.contains(&p) {
            roots.push(p);
        }
    };
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        push(PathBuf::from(v));
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            push(dir.join(".venv"));
        }
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok())
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for dir in exe_dir.ancestors() {
            push(dir.join(".venv"));
        }
    }
    roots
}

/// The Python interpreter of the virtual environment at `root`, if there is one.
pub fn venv_python(root: &Path) -> Option<PathBuf> {
    let py = root.join("bin/python");
    py.is_file().then_some(py)
}

fn library_in_venv(root: &Path) -> Option<PathBuf> {
    let lib = root.join("lib");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("python3") {
            continue;
        }
        let capi = entry.path().join("site-packages/onnxruntime/capi");
        if let Some(p) = library_in_dir(&capi) {
            found.push(p);
        }
    }
    found.sort();
    found.pop()
}

/// `libonnxruntime.so.<version>` (or `libonnxruntime.so`) inside `dir`, newest version first.
fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n == "libonnxruntime.so" || n.starts_with("libonnxruntime.so.")
                })
        })
        .collect();
    // Longest name = most specific version (`.so.1.32.0` over `.so.1`); ties broken by name.
    candidates.sort_by_key(|p| (p.as_os_str().len(), p.clone()));
    candidates.pop()
}

fn library_from_python(python: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    library_in_dir(&dir.join("capi"))
}

/// Finds a Python interpreter of a virtual environment next to the project (same search as
/// for the library: `$VIRTUAL_ENV`, `.venv` in the current folder and its ancestors, then in
/// the executable's ancestors). Used by tests and tools that compare with the `onnx` package.
pub fn find_venv_python() -> Option<PathBuf> {
    venv_roots().iter().find_map(|r| venv_python(r))
}

static ENV: OnceLock<Result<(Environment, OrtLibrary), OrtEnvError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, created on first use from the library that
/// [`find_onnxruntime`] locates.
pub fn environment() -> Result<&'static Environment, OrtEnvError> {
    ENV.get_or_init(|| {
        let lib = find_onnxruntime()?;
        let load = |reason: String| OrtEnvError::Load {
            path: lib.path.clone(),
            reason,
        };
        let builder = ort::init_from(&lib.path).map_err(|e| load(e.to_string()))?;
        let env = builder
            .with_name("dfc")
            .with_telemetry(false)
            .build()
            .map_err(|e| load(e.to_string()))?;
        Ok((env, lib))
    })
    .as_ref()
    .map(|(env, _)| env)
    .map_err(Clone::clone)
}

/// The library the environment was created from (after a successful [`environment`]).
pub fn loaded_library() -> Option<&'static OrtLibrary> {
    ENV.get()?.as_ref().ok().map(|(_, lib)| lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_install_command_and_the_places() {
        let dir = tempfile::tempdir().expect("tempdir");
        let venv = dir.path().join(".venv");
        let err = Search {
            env_path: None,
            venvs: vec![venv.clone()],
            python: "dfc-no-such-python".into(),
        }
        .find()
        .expect_err("nothing to find");
        let msg = err.to_string();
        assert!(msg.contains(INSTALL_HINT), "{msg}");
        assert!(msg.contains(&venv.display().to_string()), "{msg}");
        assert!(msg.contains("dfc-no-such-python"), "{msg}");
    }

    #[test]
    fn finds_the_newest_library_in_a_venv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capi = dir
            .path()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).expect("mkdir");
        for f in [
            "libonnxruntime.so.1.32.0",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(capi.join(f), b"").expect("write");
        }
        let found = Search {
            env_path: None,
            venvs: vec![dir.path().join(".venv")],
            python: "dfc-no-such-python".into(),
        }
        .find()
        .expect("found");
        assert_eq!(found.path, capi.join("libonnxruntime.so.1.32.0"));
        assert_eq!(found.source, "venv");
    }

    #[test]
    fn env_var_that_is_not_a_file_is_an_error() {
        let err = Search {
            env_path: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
            venvs: Vec::new(),
            python: "dfc-no-such-python".into(),
        }
        .find()
        .expect_err("not a file");
        assert!(matches!(err, OrtEnvError::BadEnvPath(_)));
    }
}
