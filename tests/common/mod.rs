//! Helpers shared by the integration tests: fixtures, ONNX Runtime, the `dfc` binary,
//! numeric comparison and a seeded random source.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use dfc::ir::{Dim, Graph};
use dfc::runtime::host::{HostTensor, NamedTensors, difference};
use dfc::runtime::{SessionOptions, run_model};

/// The repository root (where `models/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// One runnable fixture: a model and its `.io.npz` (inputs and reference outputs).
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub model: PathBuf,
    pub io: PathBuf,
}

/// Every fixture: `models/*.onnx` with `models/<name>.io.npz`, and every
/// `models/<dir>/model.onnx` with `model.io.npz` beside it. Fails when there are none.
pub fn fixtures() -> Result<Vec<Fixture>> {
    let models = root().join("models");
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&models)
        .with_context(|| format!("reading {}", models.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            let (model, io) = (p.join("model.onnx"), p.join("model.io.npz"));
            if model.is_file() && io.is_file() {
                let name = p.file_name().unwrap_or_default().to_string_lossy().into();
                out.push(Fixture { name, model, io });
            }
        } else if p.extension().is_some_and(|e| e == "onnx") {
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let io = models.join(format!("{stem}.io.npz"));
            if !io.is_file() {
                bail!("fixture {} has no {}", p.display(), io.display());
            }
            out.push(Fixture {
                name: stem,
                model: p,
                io,
            });
        }
    }
    if out.is_empty() {
        bail!(
            "no fixtures in {}; generate them with tools/export_fixtures.py",
            models.display()
        );
    }
    Ok(out)
}

/// The corpus of other export forms (`models/corpus/*.onnx` with `<name>.io.npz`, written by
/// `tools/export_corpus.py`); empty when the folder is absent.
pub fn corpus() -> Result<Vec<Fixture>> {
    let dir = root().join("models/corpus");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        if p.extension().is_none_or(|e| e != "onnx") {
            continue;
        }
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let io = dir.join(format!("{stem}.io.npz"));
        if !io.is_file() {
            bail!("corpus model {} has no {}", p.display(), io.display());
        }
        out.push(Fixture {
            name: stem,
            model: p,
            io,
        });
    }
    Ok(out)
}

/// Makes sure ONNX Runtime loads; the error carries the install command.
pub fn require_ort() -> Result<()> {
    dfc::runtime::environment()
        .map(|_| ())
        .context("these tests run models in ONNX Runtime")
}

/// One intra-op thread: deterministic, and the tests already run in parallel.
pub fn session_options() -> SessionOptions {
    SessionOptions {
        threads: 1,
        optimize: true,
        spin: true,
    }
}

/// Runs `model` in ONNX Runtime on `inputs` (extra entries are ignored).
pub fn run(model: &Path, inputs: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
    run_model(model, inputs, session_options())
        .with_context(|| format!("running {}", model.display()))
}

/// The entries of `io` that are inputs of `model`'s graph, and the rest (reference outputs).
pub fn split_io(graph: &Graph, io: Vec<(String, HostTensor)>) -> (NamedTensors, NamedTensors) {
    let names: Vec<&str> = graph
        .inputs
        .iter()
        .map(|&v| graph.value(v).name.as_str())
        .collect();
    io.into_iter()
        .partition(|(n, _)| names.contains(&n.as_str()))
}

/// Tolerances: fp32 max |a − b| ≤ 1e-5; fp16 max |a − b| / max |reference| ≤ 1e-2.
pub fn assert_outputs_close(
    what: &str,
    actual: &[(String, HostTensor)],
    reference: &[(String, HostTensor)],
) -> Result<f64> {
    if reference.is_empty() {
        bail!("{what}: no reference outputs");
    }
    let mut worst = 0f64;
    for (name, r) in reference {
        let a = actual
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .with_context(|| format!("{what}: output `{name}` missing"))?;
        let d = difference(a, r).map_err(|e| anyhow::anyhow!("{what}: output `{name}`: {e}"))?;
        if d.non_finite {
            bail!("{what}: output `{name}` has NaN/inf where the reference does not");
        }
        let (err, tol, kind) = match r {
            HostTensor::F16(_) => (d.max_rel, 1e-2, "relative"),
            _ => (d.max_abs, 1e-5, "absolute"),
        };
        if err > tol {
            bail!("{what}: output `{name}` max {kind} error {err:e} > {tol:e}");
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// Size of every symbolic dim of the graph's inputs, read from concrete `inputs`.
pub fn symbol_sizes(graph: &Graph, inputs: &[(String, HostTensor)]) -> Result<Vec<(String, i64)>> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for &v in &graph.inputs {
        let value = graph.value(v);
        let Some(shape) = value.tensor_type().and_then(|t| t.shape.clone()) else {
            continue;
        };
        let Some((_, t)) = inputs.iter().find(|(n, _)| *n == value.name) else {
            bail!("no data for input `{}`", value.name);
        };
        for (d, &size) in shape.iter().zip(t.shape()) {
            if let Dim::Symbol(s) = d
                && !out.iter().any(|(n, _)| n == s)
            {
                out.push((s.clone(), size as i64));
            }
        }
    }
    Ok(out)
}

/// Whether every input and output of `model` has a fully static shape.
pub fn all_io_static(model: &Path) -> Result<bool> {
    let m = dfc::onnx::load(model)?;
    let g = Graph::from_model(m.proto)?;
    Ok(g.inputs.iter().chain(&g.outputs).all(|&v| {
        g.value(v)
            .tensor_type()
            .and_then(|t| t.static_dims())
            .is_some()
    }))
}

/// Runs the built `dfc` binary.
pub fn dfc(args: &[&std::ffi::OsStr]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_dfc"))
        .args(args)
        .current_dir(root())
        .output()
        .context("starting the dfc binary")
}

/// Runs `dfc compile MODEL --gpus N -o OUT` through the built binary, with the options in
/// `extra` after them (e.g. `["--mode", "sync"]`); a relative `model` is under the repository
/// root. The caller checks the exit status.
pub fn dfc_compile(
    model: impl AsRef<Path>,
    gpus: usize,
    out: &Path,
    extra: &[&str],
) -> Result<Output> {
    let gpus = gpus.to_string();
    let mut args: Vec<&OsStr> = vec![
        "compile".as_ref(),
        model.as_ref().as_os_str(),
        "--gpus".as_ref(),
        gpus.as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    dfc(&args)
}

#[allow(unused_imports)]
pub use dfc::runtime::Rng;

/// Compiles `f` for `n` GPUs in sync mode with the input sizes `sizes` (and the CFG pair split
/// onto two groups with `split_batch`) and runs the plan on its reference inputs; the worst
/// relative error over the outputs ([`plan_error_against`]).
pub fn sync_plan_error(
    f: &Fixture,
    n: usize,
    sizes: dfc::passes::specialize::SpecializeOptions,
    split_batch: bool,
) -> Result<f64> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    dfc::passes::driver::compile(&dfc::passes::driver::CompileOptions {
        bands: None,
        model: f.model.clone(),
        output: out.clone(),
        gpus: n,
        sizes,
        mode: dfc::plan::Mode::Sync,
        warmup: 4,
        gn: Default::default(),
        split_batch,
        dump_after: None,
    })
    .with_context(|| format!("compiling {} for {n}", f.name))?;
    plan_error_against(&out, f)
}

/// Runs the plan compiled into `plan` on `f`'s reference inputs (CPU runtime, 2 threads) and
/// returns the worst relative error over the reference outputs; non-finite outputs fail.
pub fn plan_error_against(plan: &Path, f: &Fixture) -> Result<f64> {
    let mut exec = dfc::runtime::PlanExecutor::load(
        plan,
        dfc::runtime::ExecOptions {
            threads: 2,
            ..Default::default()
        },
    )?;
    let names: Vec<String> = exec.plan().inputs.iter().map(|i| i.name.clone()).collect();
    let (inputs, refs): (Vec<_>, Vec<_>) = dfc::runtime::read_npz(&f.io)?
        .into_iter()
        .partition(|(name, _)| names.contains(name));
    let outputs = exec
        .run_unet(&inputs)
        .with_context(|| format!("running the plan of {}", f.name))?;
    let mut worst = 0f64;
    for (name, want) in &refs {
        let got = outputs
            .iter()
            .find(|(o, _)| o == name)
            .map(|(_, t)| t)
            .with_context(|| format!("no output {name}"))?;
        let d = difference(got, want).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!d.non_finite, "{}: non-finite output", f.name);
        worst = worst.max(d.max_rel);
    }
    Ok(worst)
}
