//! Finding TensorRT, the shim and the dfc plugin library on disk, without loading anything.
//!
//! TensorRT is looked for, in this order (the first place that has a library wins):
//!
//! 1. the path given on the command line (`--tensorrt`: the library itself or its folder);
//! 2. the environment variable `DFC_TENSORRT` (same forms);
//! 3. virtual environments: `$VIRTUAL_ENV`, `.venv` in the current folder and its ancestors and in
//!    the running executable's ancestors, then `$DFC_CACHE/cuda-venv` (the toolchain cache of
//!    `tools/setup_cuda.sh`, `DFC_CACHE` defaulting to `~/.cache/dfc`): their
//!    `lib/python3*/site-packages/tensorrt_libs/` (PyPI's TensorRT wheels) and
//!    `.../tensorrt_rtx_libs/` (TensorRT-RTX);
//! 4. the same packages of the `python3` on `PATH`;
//! 5. the folders of `LD_LIBRARY_PATH`, then those `ldconfig -p` knows.
//!
//! In one folder, TensorRT 10/11 (`libnvinfer.so.*` with `libnvonnxparser.so.*`) is preferred
//! to TensorRT-RTX (`libtensorrt_rtx.so.1` with `libtensorrt_onnxparser_rtx.so.1`).
//!
//! The shim (`libdfc_trt_shim.so` for TensorRT, `libdfc_trt_shim_rtx.so` for TensorRT-RTX) and
//! the plugin library (`libdfc_trt_plugins.so`) are looked for in `DFC_TRT_SHIM` /
//! `DFC_TRT_PLUGINS` (a file or a folder), next to the running executable, then in
//! `plugins/tensorrt/build/` under the current folder's and the executable's ancestors (a
//! repository checkout).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Found, TrtError};

/// Which TensorRT a library is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TensorRT 10/11 (`libnvinfer.so.*`).
    TensorRt,
    /// TensorRT-RTX (`libtensorrt_rtx.so.*`).
    Rtx,
}

impl Kind {
    /// The kind of the TensorRT library at `lib`, from its file name.
    pub fn of(lib: &Path) -> Kind {
        let name = lib
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("libtensorrt_rtx") {
            Kind::Rtx
        } else {
            Kind::TensorRt
        }
    }

    /// File name of the shim compiled against this kind's headers.
    pub const fn shim_name(self) -> &'static str {
        match self {
            Kind::TensorRt => "libdfc_trt_shim.so",
            Kind::Rtx => "libdfc_trt_shim_rtx.so",
        }
    }
}

/// File name of the dfc TensorRT plugin library.
pub const PLUGINS_NAME: &str = "libdfc_trt_plugins.so";

/// The places [`Search::find`] looks at, explicit so that tests can build their own.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// `--tensorrt`.
    pub explicit: Option<PathBuf>,
    /// `DFC_TENSORRT`.
    pub env_path: Option<PathBuf>,
    /// Virtual-environment roots, nearest first.
    pub venvs: Vec<PathBuf>,
    /// Python interpreter to ask (`None`: skip).
    pub python: Option<String>,
    /// Library folders (`LD_LIBRARY_PATH`, then `ldconfig`'s).
    pub lib_dirs: Vec<PathBuf>,
    /// `DFC_TRT_SHIM`.
    pub shim_env: Option<PathBuf>,
    /// `DFC_TRT_PLUGINS`.
    pub plugins_env: Option<PathBuf>,
    /// Folders for the shim and the plugin library, nearest first.
    pub build_dirs: Vec<PathBuf>,
}

impl Search {
    /// The places of the running process: its environment, current folder and executable.
    pub fn from_env(explicit: Option<&Path>) -> Search {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut venvs = Vec::new();
        let push = |v: &mut Vec<PathBuf>, p: PathBuf| {
            if !v.contains(&p) {
                v.push(p);
            }
        };
        if let Some(v) = var("VIRTUAL_ENV") {
            push(&mut venvs, v);
        }
        let cwd = std::env::current_dir().ok();
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.canonicalize().ok())
            .and_then(|e| e.parent().map(Path::to_path_buf));
        for base in cwd.iter().chain(exe_dir.iter()) {
            for dir in base.ancestors() {
                push(&mut venvs, dir.join(".venv"));
            }
        }
        push(&mut venvs, cache_dir().join("cuda-venv"));

        let mut lib_dirs = Vec::new();
        if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
            for d in std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()) {
                push(&mut lib_dirs, d);
            }
        }
        for d in ldconfig_dirs() {
            push(&mut lib_dirs, d);
        }

        let mut build_dirs = Vec::new();
        if let Some(d) = &exe_dir {
            push(&mut build_dirs, d.clone());
        }
        for base in cwd.iter().chain(exe_dir.iter()) {
            for dir in base.ancestors() {
                push(&mut build_dirs, dir.join("plugins/tensorrt/build"));
            }
        }
        Search {
            explicit: explicit.map(Path::to_path_buf),
            env_path: var("DFC_TENSORRT"),
            venvs,
            python: Some("python3".into()),
            lib_dirs,
            shim_env: var("DFC_TRT_SHIM"),
            plugins_env: var("DFC_TRT_PLUGINS"),
            build_dirs,
        }
    }

    /// Looks in order; the error lists every place looked at and the install commands.
    pub fn find(&self) -> Result<Found, TrtError> {
        let (lib, parser) = self.find_tensorrt()?;
        let kind = Kind::of(&lib);
        let shim = self.find_shim(kind)?;
        let plugins = self.find_plugins();
        Ok(Found {
            lib,
            parser,
            shim,
            plugins,
        })
    }

    fn find_tensorrt(&self) -> Result<(PathBuf, PathBuf), TrtError> {
        let mut searched = Vec::new();
        for (what, path) in [
            ("--tensorrt", &self.explicit),
            ("DFC_TENSORRT", &self.env_path),
        ] {
            match path {
                Some(p) => {
                    return libraries_at(p).ok_or_else(|| TrtError::BadPath {
                        what,
                        path: p.clone(),
                    });
                }
                None => searched.push(format!("{what} (not given)")),
            }
        }
        for root in &self.venvs {
            for pkg in ["tensorrt_libs", "tensorrt_rtx_libs"] {
                searched.push(
                    root.join(format!("lib/python3*/site-packages/{pkg}"))
                        .display()
                        .to_string(),
                );
            }
            for dir in site_package_dirs(root) {
                if let Some(found) = libraries_in_dir(&dir) {
                    return Ok(found);
                }
            }
        }
        if let Some(python) = &self.python {
            searched.push(format!(
                "the tensorrt_libs / tensorrt_rtx_libs packages of `{python}` on PATH"
            ));
            for dir in python_package_dirs(python) {
                if let Some(found) = libraries_in_dir(&dir) {
                    return Ok(found);
                }
            }
        }
        for dir in &self.lib_dirs {
            searched.push(dir.display().to_string());
            if let Some(found) = libraries_in_dir(dir) {
                return Ok(found);
            }
        }
        Err(TrtError::NotFound { searched })
    }

    fn find_shim(&self, kind: Kind) -> Result<PathBuf, TrtError> {
        let name = kind.shim_name();
        let mut searched = Vec::new();
        if let Some(p) = &self.shim_env {
            if p.is_file() {
                return Ok(p.clone());
            }
            if p.join(name).is_file() {
                return Ok(p.join(name));
            }
            return Err(TrtError::BadPath {
                what: "DFC_TRT_SHIM",
                path: p.clone(),
            });
        }
        searched.push("DFC_TRT_SHIM (not set)".to_string());
        for dir in &self.build_dirs {
            let p = dir.join(name);
            searched.push(p.display().to_string());
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(TrtError::ShimNotFound { name, searched })
    }

    fn find_plugins(&self) -> Option<PathBuf> {
        if let Some(p) = &self.plugins_env {
            return if p.is_dir() {
                Some(p.join(PLUGINS_NAME)).filter(|p| p.is_file())
            } else {
                Some(p.clone())
            };
        }
        self.build_dirs
            .iter()
            .map(|d| d.join(PLUGINS_NAME))
            .find(|p| p.is_file())
    }
}

/// `${DFC_CACHE:-$HOME/.cache/dfc}`: the toolchain cache of `tools/setup_cuda.sh`.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("DFC_CACHE").filter(|c| !c.is_empty()) {
        return PathBuf::from(c);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(".cache/dfc")
}

/// The TensorRT library and parser at `path`: the library file itself (its parser beside it) or
/// a folder holding both.
fn libraries_at(path: &Path) -> Option<(PathBuf, PathBuf)> {
    if path.is_dir() {
        return libraries_in_dir(path);
    }
    if !path.is_file() {
        return None;
    }
    let dir = path.parent()?;
    let parser_prefix = match Kind::of(path) {
        Kind::Rtx => "libtensorrt_onnxparser_rtx.so",
        Kind::TensorRt => "libnvonnxparser.so",
    };
    Some((path.to_path_buf(), newest(dir, parser_prefix)?))
}

/// TensorRT 10/11's or TensorRT-RTX's library and parser inside `dir`.
pub fn libraries_in_dir(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    for (lib, parser) in [
        ("libnvinfer.so", "libnvonnxparser.so"),
        ("libtensorrt_rtx.so", "libtensorrt_onnxparser_rtx.so"),
    ] {
        if let (Some(l), Some(p)) = (newest(dir, lib), newest(dir, parser)) {
            return Some((l, p));
        }
    }
    None
}

/// The file of `dir` named `prefix` or `prefix.N[.N…]` with the highest version.
fn newest(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let version: Option<Vec<u64>> = if rest.is_empty() {
            Some(Vec::new())
        } else {
            rest.strip_prefix('.')
                .map(|r| r.split('.').map(|p| p.parse().ok()).collect::<Option<_>>())
                .unwrap_or(None)
        };
        let (Some(version), path) = (version, entry.path()) else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, path));
        }
    }
    best.map(|(_, p)| p)
}

/// `lib/python3*/site-packages/{tensorrt_libs,tensorrt_rtx_libs}` of a virtual environment.
fn site_package_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("lib")) else {
        return out;
    };
    let mut pythons: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    for py in pythons.iter().rev() {
        for pkg in ["tensorrt_libs", "tensorrt_rtx_libs"] {
            let d = py.join("site-packages").join(pkg);
            if d.is_dir() {
                out.push(d);
            }
        }
    }
    out
}

fn python_package_dirs(python: &str) -> Vec<PathBuf> {
    let script = "import importlib.util as u\n\
        for n in ('tensorrt_libs', 'tensorrt_rtx_libs'):\n    \
            s = u.find_spec(n)\n    \
            if s and s.submodule_search_locations:\n        \
                print(list(s.submodule_search_locations)[0])\n";
    let Ok(out) = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .collect()
}

/// Folders of the TensorRT libraries in the dynamic linker's cache (`ldconfig -p`).
fn ldconfig_dirs() -> Vec<PathBuf> {
    for cmd in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        let Ok(out) = Command::new(cmd)
            .arg("-p")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if !(line.starts_with("libnvinfer.so") || line.starts_with("libtensorrt_rtx.so")) {
                continue;
            }
            if let Some(dir) = line
                .rsplit("=> ")
                .next()
                .and_then(|p| Path::new(p).parent())
                .map(Path::to_path_buf)
                && !dirs.contains(&dir)
            {
                dirs.push(dir);
            }
        }
        return dirs;
    }
    Vec::new()
}

/// Folders that may hold the CUDA runtime and NCCL the plugin library needs
/// (`libcudart.so.13`, `libnccl.so.2`): the NVIDIA wheels beside TensorRT's package, the
/// toolchain cache's, `DFC_CUDA_LIB` / `DFC_NCCL_LIB`, and the plugin library's own folder.
pub fn cuda_dirs(tensorrt_lib: &Path, plugins: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["DFC_CUDA_LIB", "DFC_NCCL_LIB"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(v));
        }
    }
    let mut site_packages: Vec<PathBuf> = tensorrt_lib
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    site_packages.extend(
        site_package_dirs(&cache_dir().join("cuda-venv"))
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf)),
    );
    for sp in site_packages {
        for sub in [
            "nvidia/cu13/lib",
            "nvidia/nccl/lib",
            "nvidia/cuda_runtime/lib",
        ] {
            dirs.push(sp.join(sub));
        }
    }
    if let Some(d) = plugins.parent() {
        dirs.push(d.to_path_buf());
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, b"").expect("write");
    }

    #[test]
    fn newest_version_wins_and_other_names_do_not_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [
            "libnvinfer.so.10",
            "libnvinfer.so.11.4.0",
            "libnvinfer_plugin.so.11",
            "libnvinfer.so.x",
            "libnvonnxparser.so.11",
        ] {
            touch(&dir.path().join(f));
        }
        let (lib, parser) = libraries_in_dir(dir.path()).expect("found");
        assert_eq!(lib, dir.path().join("libnvinfer.so.11.4.0"));
        assert_eq!(parser, dir.path().join("libnvonnxparser.so.11"));
        assert_eq!(Kind::of(&lib), Kind::TensorRt);
    }

    #[test]
    fn rtx_in_a_venv_is_found_with_its_shim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pkg = dir
            .path()
            .join(".venv/lib/python3.11/site-packages/tensorrt_rtx_libs");
        touch(&pkg.join("libtensorrt_rtx.so.1"));
        touch(&pkg.join("libtensorrt_onnxparser_rtx.so.1"));
        let build = dir.path().join("build");
        touch(&build.join("libdfc_trt_shim_rtx.so"));
        touch(&build.join("libdfc_trt_shim.so"));
        let found = Search {
            venvs: vec![dir.path().join(".venv")],
            build_dirs: vec![build.clone()],
            ..Search::default()
        }
        .find()
        .expect("found");
        assert_eq!(found.lib, pkg.join("libtensorrt_rtx.so.1"));
        assert_eq!(found.parser, pkg.join("libtensorrt_onnxparser_rtx.so.1"));
        assert_eq!(found.shim, build.join("libdfc_trt_shim_rtx.so"));
        assert_eq!(found.plugins, None);
    }

    #[test]
    fn nothing_found_lists_the_places_and_the_install_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Search {
            venvs: vec![dir.path().join(".venv")],
            lib_dirs: vec![dir.path().join("lib")],
            ..Search::default()
        }
        .find()
        .expect_err("nothing there");
        let msg = err.to_string();
        assert!(msg.contains(super::super::INSTALL_HINT), "{msg}");
        assert!(msg.contains(super::super::PIP_HINT), "{msg}");
        assert!(
            msg.contains(&dir.path().join("lib").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn an_explicit_path_without_tensorrt_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Search {
            explicit: Some(dir.path().to_path_buf()),
            ..Search::default()
        }
        .find()
        .expect_err("empty folder");
        assert!(
            matches!(
                err,
                TrtError::BadPath {
                    what: "--tensorrt",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_shim_names_the_build_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch(&dir.path().join("libnvinfer.so.11"));
        touch(&dir.path().join("libnvonnxparser.so.11"));
        let err = Search {
            explicit: Some(dir.path().join("libnvinfer.so.11")),
            build_dirs: vec![dir.path().join("build")],
            ..Search::default()
        }
        .find()
        .expect_err("no shim");
        let msg = err.to_string();
        assert!(msg.contains("libdfc_trt_shim.so"), "{msg}");
        assert!(msg.contains("tools/build_plugins.sh"), "{msg}");
    }
}
