//! The plan folder, written atomically: built in a temporary folder next to the target (rank
//! files and weights on one thread, the source's external files, digest and memory figures on
//! another), completed with `plan.json`, then renamed into place.
//!
//! **Invariant:** on any error nothing is left; an existing folder is replaced only when it is
//! empty or holds a dfc plan (`plan.json`).

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::CompileOptions;
use super::graphs::{Compiled, LocalPart};
use super::plan::{Written, build_plan};
use super::weights::write_ranks;
use crate::cost::GraphMemory;
use crate::error::Internal;
use crate::onnx::proto::GraphProto;
use crate::onnx::{self, ExternalData};
use crate::plan::{PLAN_FILE, Plan};

/// The folder `target` is created in.
pub(super) fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fails unless a plan folder may be written at `target` (in `parent`).
pub(super) fn check_target(target: &Path, parent: &Path) -> Result<()> {
    if !parent.is_dir() {
        bail!("output folder {} does not exist", parent.display());
    }
    if target.exists() {
        if !target.is_dir() {
            bail!(
                "output {} exists and is not a folder; refusing to overwrite it",
                target.display()
            );
        }
        let empty = fs::read_dir(target)
            .with_context(|| format!("reading {}", target.display()))?
            .next()
            .is_none();
        if !empty && !target.join(PLAN_FILE).is_file() {
            bail!(
                "output folder {} is not empty and holds no dfc plan; refusing to overwrite it",
                target.display()
            );
        }
    }
    Ok(())
}

/// Writes the plan folder of `c` to `opts.output` (in `parent`); returns its plan.
pub(super) fn write_plan(opts: &CompileOptions, c: &Compiled, parent: &Path) -> Result<Plan> {
    let first = c
        .parts
        .first()
        .ok_or_else(|| Internal("no local graph".into()))?;
    let bands = &first.local.bands;
    let tmp = tempfile::Builder::new()
        .prefix(".dfc-plan-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let dir = tmp.path().to_path_buf();
    let taken = external_files(first);
    if let Some(clash) = taken.iter().find(|l| is_plan_file_name(l)) {
        bail!(
            "{}'s external data file `{clash}` has the name of a file of the plan folder (plan.json, rankN.onnx, rankN.engine); rename it (and its `location` in the model)",
            opts.model.display()
        );
    }
    // The source's own external files, the source's digest and the graphs' memory are
    // independent of the rank files: work them out on a second thread meanwhile.
    let (side, weights) = std::thread::scope(|s| {
        let side = s.spawn(|| side_work(opts, c, &taken, &dir));
        let weights = write_ranks(c, bands, opts.gpus, &dir, &taken);
        (side.join(), weights)
    });
    let weights = weights?;
    let (source_sha256, memory) =
        side.map_err(|_| Internal("the plan writer's second thread panicked".into()))??;
    let plan = build_plan(
        opts,
        c,
        Written {
            // Ours, else the source's own (shared into the folder).
            weights: weights.or_else(|| taken.first().cloned()),
            source_sha256,
            memory,
        },
    )?;
    let text = serde_json::to_string_pretty(&plan)?;
    onnx::write_atomic(&dir.join(PLAN_FILE), text.as_bytes())?;
    install(tmp, &opts.output)?;
    Ok(plan)
}

/// The source's external files `first`'s initializers reference, by the path they will have in
/// the plan folder: they must not take the name of a file the plan writes.
fn external_files(first: &LocalPart) -> Vec<String> {
    first
        .graph
        .value_ids()
        .filter_map(|v| first.graph.value(v).init.as_ref())
        .filter_map(|t| ExternalData::of(t).ok().flatten())
        .map(|e| {
            Path::new(&e.location)
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect::<PathBuf>()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Shares the source's external files (`taken`) into `dir`; returns the source's digest and
/// each local graph's memory.
fn side_work(
    opts: &CompileOptions,
    c: &Compiled,
    taken: &[String],
    dir: &Path,
) -> Result<(String, Vec<GraphMemory>)> {
    if !taken.is_empty() {
        // Only the source's own external files are shared (ours are already here).
        let first = &c.parts[0].graph;
        let source_refs = GraphProto {
            initializer: first
                .value_ids()
                .filter_map(|v| first.value(v).init.clone())
                .filter(|t| matches!(ExternalData::of(t), Ok(Some(_))))
                .collect(),
            ..Default::default()
        };
        onnx::external::share_into(&source_refs, &c.src_dir, dir)?;
    }
    let memory = c
        .parts
        .iter()
        .map(|p| crate::cost::graph_memory(&p.graph))
        .collect::<Result<_>>()
        .map_err(|e| Internal(format!("memory of a rank graph: {e}")))?;
    Ok((sha256_of(&opts.model)?, memory))
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `name` is a file the plan folder holds: `plan.json`, `rankN.onnx`, `rankN.engine`.
fn is_plan_file_name(name: &str) -> bool {
    name == PLAN_FILE
        || ["onnx", "engine"].iter().any(|ext| {
            name.strip_prefix("rank")
                .and_then(|r| r.strip_suffix(ext))
                .and_then(|r| r.strip_suffix('.'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Moves the finished temporary folder to `target`, replacing an existing plan.
fn install(tmp: tempfile::TempDir, target: &Path) -> Result<()> {
    let parent = parent_of(target);
    check_target(target, &parent)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
    }
    let staged = tmp.keep();
    let mut old = None;
    if target.exists() {
        let trash = tempfile::Builder::new()
            .prefix(".dfc-old-")
            .tempdir_in(&parent)?
            .keep();
        let slot = trash.join("plan");
        fs::rename(target, &slot).map_err(|e| {
            let _ = fs::remove_dir_all(&staged);
            anyhow!("cannot move the old plan {} aside: {e}", target.display())
        })?;
        old = Some(trash);
    }
    if let Err(e) = fs::rename(&staged, target) {
        let _ = fs::remove_dir_all(&staged);
        if let Some(t) = &old {
            let _ = fs::rename(t.join("plan"), target);
            let _ = fs::remove_dir_all(t);
        }
        bail!("cannot move the plan into {}: {e}", target.display());
    }
    if let Some(t) = old {
        let _ = fs::remove_dir_all(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_file_names_are_recognized() {
        for name in ["plan.json", "rank0.onnx", "rank12.onnx", "rank3.engine"] {
            assert!(is_plan_file_name(name), "{name}");
        }
        for name in [
            "weights.bin",
            "rank.onnx",
            "rankA.onnx",
            "rank0.onnx.data",
            "x/plan.json",
        ] {
            assert!(!is_plan_file_name(name), "{name}");
        }
    }
}
