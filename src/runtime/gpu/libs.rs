//! Finding NCCL for the rank processes.
//!
//! cudarc loads NCCL by bare names (`libnccl.so`, `libnccl.so.13`, …), but NVIDIA's packages
//! (PyPI's `nvidia-nccl-cu13`, the `libnccl2` deb) ship `libnccl.so.2` only. So the launcher
//! finds `libnccl.so.2` ([`find_nccl`]: `DFC_NCCL_LIB`, the folders of `LD_LIBRARY_PATH`, the
//! toolchain cache `$DFC_CACHE/cuda-venv`, the system's library folders), links it as
//! `libnccl.so` in `$DFC_CACHE/nccl-links/` (`DFC_CACHE` defaulting to `~/.cache/dfc`), and
//! puts that folder and NCCL's own first on the rank processes' `LD_LIBRARY_PATH`
//! ([`rank_library_env`]). Both names then resolve to the same file, so the communicator
//! cudarc creates and the one the plugin library (linked against `libnccl.so.2`) uses come
//! from one loaded NCCL.

use std::path::{Path, PathBuf};

use super::GpuError;

/// NCCL's file names, preferred first.
const NCCL_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("DFC_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(c);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/dfc")
}

/// `lib/python3*/site-packages/nvidia/nccl/lib` under a virtual environment.
fn venv_nccl_dirs(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/nvidia/nccl/lib"))
        .collect()
}

/// The folders searched for NCCL, in order.
pub fn nccl_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("DFC_NCCL_LIB").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        match p.parent() {
            Some(parent) if p.is_file() => dirs.push(parent.to_path_buf()),
            _ => dirs.push(p),
        }
    }
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()));
    }
    dirs.extend(venv_nccl_dirs(&cache_dir().join("cuda-venv")));
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        dirs.extend(venv_nccl_dirs(Path::new(&v)));
    }
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/local/cuda/lib64",
            "/usr/lib64",
            "/usr/lib",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// NCCL's library file (`libnccl.so.2` preferred), or an error listing where it was looked for.
pub fn find_nccl() -> Result<PathBuf, GpuError> {
    let dirs = nccl_search_dirs();
    for d in &dirs {
        for name in NCCL_NAMES {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(GpuError::NoNccl(format!(
        "no libnccl.so.2 in {} (install `nvidia-nccl-cu13` or `libnccl2`, or set DFC_NCCL_LIB \
         to its folder)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// `$DFC_CACHE/nccl-links`, holding `libnccl.so` → `nccl` (created or updated atomically).
pub fn link_dir(nccl: &Path) -> Result<PathBuf, GpuError> {
    link_dir_in(&cache_dir(), nccl)
}

/// `cache/nccl-links`, holding `libnccl.so` → `nccl` (created or updated atomically).
pub fn link_dir_in(cache: &Path, nccl: &Path) -> Result<PathBuf, GpuError> {
    let io = |what: &str, e: std::io::Error| GpuError::NoNccl(format!("{what}: {e}"));
    let dir = cache.join("nccl-links");
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let link = dir.join("libnccl.so");
    let target = nccl
        .canonicalize()
        .map_err(|e| io(&nccl.display().to_string(), e))?;
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(dir);
    }
    let tmp = dir.join(format!(".libnccl.so.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| io("linking libnccl.so", e))?;
    std::fs::rename(&tmp, &link).map_err(|e| io("linking libnccl.so", e))?;
    Ok(dir)
}

/// The environment of a rank process: `LD_LIBRARY_PATH` with the `libnccl.so` link folder and
/// NCCL's folder first, then `DFC_CUDA_LIB` (the CUDA runtime the plugin library links) and
/// the launcher's own `LD_LIBRARY_PATH`.
pub fn rank_library_env() -> Result<Vec<(String, String)>, GpuError> {
    let nccl = find_nccl()?;
    let links = link_dir(&nccl)?;
    let mut path = vec![links];
    if let Some(d) = nccl.parent() {
        path.push(d.to_path_buf());
    }
    if let Some(v) = std::env::var_os("DFC_CUDA_LIB").filter(|v| !v.is_empty()) {
        path.push(PathBuf::from(v));
    }
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        path.extend(std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()));
    }
    let joined = std::env::join_paths(path)
        .map_err(|e| GpuError::NoNccl(format!("LD_LIBRARY_PATH: {e}")))?;
    Ok(vec![(
        "LD_LIBRARY_PATH".to_string(),
        joined.to_string_lossy().into_owned(),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_points_at_the_library() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lib = tmp.path().join("libnccl.so.2");
        std::fs::write(&lib, b"not really").expect("write");
        let cache = tmp.path().join("cache");
        let dir = link_dir_in(&cache, &lib).expect("link");
        let target = std::fs::read_link(dir.join("libnccl.so")).expect("read link");
        assert_eq!(target, lib.canonicalize().expect("canonical"));
        // Idempotent.
        assert_eq!(link_dir_in(&cache, &lib).expect("again"), dir);
    }
}
