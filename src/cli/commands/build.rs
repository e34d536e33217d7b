//! `dfc build PLAN_DIR [--fp16|--bf16] [--workspace MB] [--tensorrt LIB] [--plugins LIB]`: one
//! TensorRT engine per rank (`rank{i}.engine`, weights embedded), recorded in `plan.json`.
//!
//! Every rank graph is parsed and built into a temporary file of the plan folder; each engine's
//! inputs and outputs (names, types, shapes of the parsed network) are checked against the
//! plan's tensors on that rank's band. Only when every rank has built and checked are the
//! engines renamed into place and `plan.json` rewritten (atomically) with their
//! [`EngineSpec`]s: a failed build leaves the folder as it was. (A build killed inside TensorRT
//! cannot clean up after itself; the next build removes its `.rankR.engine.*.tmp` files.)
//!
//! Plans with exchanges need the dfc plugin library (`--plugins`, else found like the shim):
//! the exchange nodes become its `IPluginV3` layers.
//!
//! TensorRT 11 and TensorRT-RTX build strongly typed networks: every layer runs in the type the
//! ONNX graph gives it. `--fp16` / `--bf16` therefore do not convert anything: they assert that
//! the plan's floating-point inputs and outputs are of that type (a plan compiled from a
//! half-precision model) and are recorded with the engines.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::commands::Internal;
use crate::contract::exchange::ExchangeKind;
use crate::plan::{EngineSpec, PLAN_FILE, Plan, RankSpec};
use crate::trt::{BuildFlags, IoSpec, ShimCode, TensorRt, TrtError};

/// Arguments of `dfc build`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The plan folder (`dfc compile`'s output).
    pub plan: PathBuf,
    /// Assert that the plan's floating-point tensors are f16 (a half-precision model).
    #[arg(long, conflicts_with = "bf16")]
    pub fp16: bool,
    /// Assert that the plan's floating-point tensors are bf16.
    #[arg(long)]
    pub bf16: bool,
    /// Builder workspace limit in MiB (default: TensorRT's).
    #[arg(long, value_name = "MB")]
    pub workspace: Option<u64>,
    /// TensorRT library (libnvinfer.so.N or libtensorrt_rtx.so.1) or its folder.
    #[arg(long, value_name = "LIB")]
    pub tensorrt: Option<PathBuf>,
    /// The dfc TensorRT plugin library (libdfc_trt_plugins.so).
    #[arg(long, value_name = "LIB")]
    pub plugins: Option<PathBuf>,
}

/// The engine file name of `rank`.
pub fn engine_file(rank: usize) -> String {
    format!("rank{rank}.engine")
}

/// Runs `dfc build`.
pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let dir = &args.plan;
    let mut plan = Plan::load(dir)?;
    let flag_names = check_precision(&plan, args)?;

    let found = TensorRt::find(args.tensorrt.as_deref())?;
    let plugins = args.plugins.clone().or_else(|| found.plugins.clone());
    if !plan.exchanges.is_empty() && plugins.is_none() {
        bail!(
            "{} has {} exchanges ({}): TensorRT builds them as layers of the dfc plugin library \
             libdfc_trt_plugins.so, which was not found; build it with tools/build_plugins.sh or \
             pass --plugins LIB (or set DFC_TRT_PLUGINS)",
            dir.display(),
            plan.exchanges.len(),
            exchange_ops(&plan)
        );
    }
    let trt = TensorRt::open(&found)?;
    eprintln!(
        "building with {} {} ({})",
        trt.name(),
        trt.version(),
        found.lib.display()
    );
    if !plan.exchanges.is_empty()
        && let Some(p) = &plugins
    {
        trt.load_plugins(p)
            .with_context(|| format!("loading the plugin library {}", p.display()))?;
    }

    remove_stale_temporaries(dir)?;
    let workspace = args.workspace.unwrap_or(0).saturating_mul(1 << 20);
    let mut built = Vec::new();
    for rank in &plan.ranks {
        let t = Instant::now();
        let onnx = dir.join(&rank.file);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".rank{}.engine.", rank.rank))
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?
            .into_temp_path();
        let io = trt
            .build(&onnx, &tmp, BuildFlags::default(), workspace)
            .map_err(|e| build_error(e, rank, &trt))?;
        check_io(&plan, rank, &io).with_context(|| {
            format!(
                "rank {}: the engine's inputs and outputs do not match {}",
                rank.rank,
                dir.join(PLAN_FILE).display()
            )
        })?;
        let sha256 = sha256_file(&tmp)?;
        let size = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "  rank {}: {} ({:.1} MB) in {:.1} s",
            rank.rank,
            engine_file(rank.rank),
            size as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        built.push((
            tmp,
            EngineSpec {
                rank: rank.rank,
                file: engine_file(rank.rank),
                builder: trt.name().to_string(),
                builder_version: trt.version().to_string(),
                flags: flag_names.clone(),
                sha256,
            },
        ));
    }

    let mut engines = Vec::new();
    for (tmp, spec) in built {
        let target = dir.join(&spec.file);
        // Temporary files are private (0600); engines are read like the rank graphs.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .with_context(|| format!("writing {}", target.display()))?;
        tmp.persist(&target)
            .with_context(|| format!("writing {}", target.display()))?;
        engines.push(spec);
    }
    plan.engines = engines;
    plan.check()
        .map_err(|e| Internal(format!("the plan with its engines is inconsistent: {e}")))?;
    let text = serde_json::to_string_pretty(&plan)?;
    crate::onnx::write_atomic(&dir.join(PLAN_FILE), text.as_bytes())?;
    println!(
        "built {} engine(s) with {} {} in {} in {:.1} s",
        plan.engines.len(),
        trt.name(),
        trt.version(),
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Removes the temporary engine files (`.rankR.engine.*.tmp`) a build that was killed or
/// aborted inside TensorRT left in the plan folder; nothing else is touched. (Two builds of
/// one plan folder at once are not supported: each would remove the other's temporaries.)
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name
            .strip_prefix(".rank")
            .and_then(|rest| rest.split_once(".engine."))
            .is_some_and(|(rank, _)| rank.parse::<usize>().is_ok())
            && name.ends_with(".tmp");
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The flags to record; an error when the plan's floating-point tensors are not of the
/// asserted type.
fn check_precision(plan: &Plan, args: &Args) -> Result<Vec<String>> {
    let want = match (args.fp16, args.bf16) {
        (true, _) => "f16",
        (_, true) => "bf16",
        _ => return Ok(Vec::new()),
    };
    let other: Vec<String> = plan
        .inputs
        .iter()
        .chain(&plan.outputs)
        .filter(|t| matches!(t.dtype.as_str(), "f32" | "f16" | "bf16" | "f64") && t.dtype != want)
        .map(|t| format!("`{}` is {}", t.name, t.dtype))
        .collect();
    if !other.is_empty() {
        bail!(
            "--{}: TensorRT 11 and TensorRT-RTX build strongly typed networks, so layers run in \
             the ONNX graph's types and there is no {want} builder flag; this plan's tensors are \
             not {want} ({}). Compile a half-precision export of the model instead",
            if want == "f16" { "fp16" } else { "bf16" },
            other.join(", ")
        );
    }
    Ok(vec![
        if want == "f16" { "fp16" } else { "bf16" }.to_string(),
    ])
}

/// `DfcHaloExchange ×28, …` for the plan's exchanges.
fn exchange_ops(plan: &Plan) -> String {
    ExchangeKind::ALL
        .iter()
        .filter_map(|k| {
            let n = plan.exchanges.iter().filter(|e| e.kind == *k).count();
            (n > 0).then(|| format!("{} ×{n}", k.op_type()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A build failure with the rank and, for exchanges TensorRT cannot build, what to do.
fn build_error(e: TrtError, rank: &RankSpec, trt: &TensorRt) -> anyhow::Error {
    let file = &rank.file;
    let exchange = matches!(&e, TrtError::Call { code: ShimCode::Parse, message, .. }
        if ExchangeKind::ALL.iter().any(|k| message.contains(k.op_type())));
    let what = if exchange {
        format!(
            "rank {}: {} {} cannot build the exchange operators of {file} (the dfc plugin \
             library must load and register them); the parser names the node and op",
            rank.rank,
            trt.name(),
            trt.version()
        )
    } else {
        format!("rank {}: building {file}", rank.rank)
    };
    if matches!(
        &e,
        TrtError::Call {
            code: ShimCode::Invalid,
            ..
        }
    ) {
        // dfc passes no flags and valid arguments: a refusal is dfc's fault.
        anyhow::Error::new(Internal(e.to_string())).context(what)
    } else {
        anyhow::Error::new(e).context(what)
    }
}

/// Compares the network's inputs and outputs with the plan's tensors on `rank`'s band.
fn check_io(plan: &Plan, rank: &RankSpec, io: &[IoSpec]) -> Result<()> {
    let mut problems = Vec::new();
    let expected = plan
        .inputs
        .iter()
        .map(|t| (t, true))
        .chain(plan.outputs.iter().map(|t| (t, false)));
    for (t, is_input) in expected {
        let kind = if is_input { "input" } else { "output" };
        let Some(got) = io.iter().find(|g| g.name == t.name) else {
            problems.push(format!("{kind} `{}` is missing", t.name));
            continue;
        };
        let shape = t.local_shape(rank.band);
        if got.is_input != is_input {
            problems.push(format!(
                "`{}` is an {kind} of the plan but not of the engine",
                t.name
            ));
        }
        if got.dtype != t.dtype {
            problems.push(format!(
                "{kind} `{}` is {} in the engine, {} in the plan",
                t.name, got.dtype, t.dtype
            ));
        }
        if got.dims != shape {
            problems.push(format!(
                "{kind} `{}` has shape {:?} in the engine, {:?} in the plan (band {})",
                t.name, got.dims, shape, rank.band
            ));
        }
    }
    for g in io {
        if !plan
            .inputs
            .iter()
            .chain(&plan.outputs)
            .any(|t| t.name == g.name)
        {
            problems.push(format!("the engine has `{}`, which the plan lacks", g.name));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_engine_temporaries_are_removed() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let names = [
            ".rank0.engine.a1B2c3.tmp",
            ".rank12.engine.xyz.tmp",
            ".rankX.engine.xyz.tmp",
            "rank0.engine",
            "rank0.onnx",
            ".rank0.engine.keep",
            "plan.json",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x")?;
        }
        remove_stale_temporaries(dir.path())?;
        let mut left: Vec<String> = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".rank0.engine.keep",
                ".rankX.engine.xyz.tmp",
                "plan.json",
                "rank0.engine",
                "rank0.onnx"
            ]
        );
        Ok(())
    }
}
