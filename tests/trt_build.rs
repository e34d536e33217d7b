//! `dfc build` and `dfc::trt`: discovery and its error messages (fake folder layouts, through
//! the binary), and real engine builds with TensorRT-RTX when the toolchain cache of
//! `tools/setup_cuda.sh` and the shim (`tools/build_plugins.sh`) are present (else the build
//! tests print `skipped: …`).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use dfc::plan::Plan;
use dfc::trt::{BuildFlags, Found, Kind, TensorRt};
use sha2::{Digest, Sha256};

/// Compiles `model` (under `models/`) for `gpus` ranks into `out`.
fn compile(model: &str, gpus: usize, sync: bool, out: &Path) -> Result<()> {
    let model = common::root().join("models").join(model);
    let mode: &[&str] = if sync { &["--mode", "sync"] } else { &[] };
    let o = common::dfc_compile(&model, gpus, out, mode)?;
    ensure!(
        o.status.success(),
        "dfc compile failed: {}",
        text(&o.stderr)
    );
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A copy of the `dfc` binary in `dir/bin`, so that its ancestors hold no `.venv` and no
/// `plugins/tensorrt/build`.
fn lonely_dfc(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let exe = bin.join("dfc");
    std::fs::copy(env!("CARGO_BIN_EXE_dfc"), &exe).context("copying the dfc binary")?;
    Ok(exe)
}

/// Runs `exe build …` in `cwd` with a bare environment: no TensorRT variables, `DFC_CACHE` in
/// `cwd`, an empty `PATH`, plus `env`.
fn build_isolated(
    exe: &Path,
    cwd: &Path,
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
) -> Result<Output> {
    let mut cmd = Command::new(exe);
    cmd.arg("build").args(args).current_dir(cwd).env_clear();
    cmd.env("HOME", cwd)
        .env("DFC_CACHE", cwd.join("cache"))
        .env("PATH", cwd.join("empty-path"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().context("starting dfc")
}

fn touch(p: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(p.parent().context("no parent")?)?;
    std::fs::write(p, bytes)?;
    Ok(())
}

#[test]
fn no_tensorrt_prints_the_install_commands_and_exits_1() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan");
    compile("sd15_tiny.onnx", 1, false, &plan)?;
    let exe = lonely_dfc(dir.path())?;
    let o = build_isolated(&exe, dir.path(), &[plan.as_os_str()], &[])?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no TensorRT was found"), "{err}");
    assert!(err.contains("tools/setup_cuda.sh"), "{err}");
    assert!(
        err.contains("pip install tensorrt-rtx-cu13-libs==1.7.1.116"),
        "{err}"
    );
    let venv = dir
        .path()
        .join(".venv/lib/python3*/site-packages/tensorrt_rtx_libs");
    assert!(err.contains(&venv.display().to_string()), "{err}");
    assert!(!plan.join("rank0.engine").exists());
    Ok(())
}

#[test]
fn a_fake_rtx_layout_is_found_and_each_missing_piece_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan");
    compile("sd15_tiny.onnx", 1, false, &plan)?;
    let exe = lonely_dfc(dir.path())?;
    let pkg = dir
        .path()
        .join(".venv/lib/python3.11/site-packages/tensorrt_rtx_libs");
    touch(&pkg.join("libtensorrt_rtx.so.1"), b"not a library")?;
    touch(
        &pkg.join("libtensorrt_onnxparser_rtx.so.1"),
        b"not a library",
    )?;

    // The RTX libraries are found in the project .venv; the RTX shim is what is missing.
    let o = build_isolated(&exe, dir.path(), &[plan.as_os_str()], &[])?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("libdfc_trt_shim_rtx.so was not found"),
        "{err}"
    );
    assert!(err.contains("tools/build_plugins.sh"), "{err}");

    // --tensorrt naming a folder without TensorRT.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let o = build_isolated(
        &exe,
        dir.path(),
        &[plan.as_os_str(), "--tensorrt".as_ref(), empty.as_os_str()],
        &[],
    )?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--tensorrt is"), "{err}");
    assert!(err.contains(&empty.display().to_string()), "{err}");

    // With a real shim, the fake library is loaded and refused, by path.
    let shim = common::root().join("plugins/tensorrt/build/libdfc_trt_shim_rtx.so");
    if !shim.is_file() {
        println!("skipped (last part): {} not built", shim.display());
        return Ok(());
    }
    let o = build_isolated(
        &exe,
        dir.path(),
        &[plan.as_os_str()],
        &[("DFC_TRT_SHIM", shim.as_os_str())],
    )?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot load {}",
            pkg.join("libtensorrt_rtx.so.1").display()
        )),
        "{err}"
    );
    assert!(!plan.join("rank0.engine").exists());
    Ok(())
}

#[test]
fn fp16_on_an_f32_plan_is_refused_with_the_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan");
    compile("sd15_tiny.onnx", 1, false, &plan)?;
    let o = common::dfc(&["build".as_ref(), plan.as_os_str(), "--fp16".as_ref()])?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("strongly typed"), "{err}");
    assert!(err.contains("`sample` is f32"), "{err}");
    Ok(())
}

/// TensorRT-RTX, its shim and the plugin library, or why not.
fn rtx_toolchain() -> std::result::Result<Found, String> {
    let found = TensorRt::find(None).map_err(|e| {
        let e = e.to_string();
        format!("no TensorRT ({})", e.lines().next().unwrap_or_default())
    })?;
    if Kind::of(&found.lib) != Kind::Rtx {
        return Err(format!("{} is not TensorRT-RTX", found.lib.display()));
    }
    if found.plugins.is_none() {
        return Err("libdfc_trt_plugins.so not built (tools/build_plugins.sh)".into());
    }
    Ok(found)
}

macro_rules! require_rtx {
    () => {
        match rtx_toolchain() {
            Ok(found) => found,
            Err(why) => {
                println!("skipped: {why}");
                return Ok(());
            }
        }
    };
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs `dfc build` on `plan` and checks what it recorded: one engine per rank, its digest.
fn build_and_check(plan: &Path, extra: &[&str]) -> Result<Plan> {
    let mut args: Vec<&OsStr> = vec!["build".as_ref(), plan.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let o = common::dfc(&args)?;
    ensure!(
        o.status.success(),
        "dfc build {} failed: {}",
        plan.display(),
        text(&o.stderr)
    );
    let p = Plan::load(plan)?;
    ensure!(p.engines.len() == p.world_size, "{:?}", p.engines);
    for (rank, e) in p.engines.iter().enumerate() {
        ensure!(
            e.rank == rank && e.file == format!("rank{rank}.engine"),
            "{e:?}"
        );
        ensure!(
            e.builder == "TensorRT-RTX" && !e.builder_version.is_empty(),
            "{e:?}"
        );
        let file = plan.join(&e.file);
        ensure!(
            std::fs::metadata(&file)?.len() > 0,
            "{} is empty",
            file.display()
        );
        ensure!(sha256(&file)? == e.sha256, "digest of {}", file.display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(plan)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    ensure!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    Ok(p)
}

#[test]
fn one_rank_plans_build_rebuild_and_match_the_plan() -> Result<()> {
    let found = require_rtx!();
    let dir = tempfile::tempdir()?;

    // sd15 through the command, then again over the existing engine.
    let sd15 = dir.path().join("sd15");
    compile("sd15_tiny.onnx", 1, false, &sd15)?;
    build_and_check(&sd15, &[])?;
    let first = std::fs::metadata(sd15.join("rank0.engine"))?.len();
    let again = build_and_check(&sd15, &["--workspace", "256"])?;
    assert_eq!(again.engines.len(), 1);
    assert!(std::fs::metadata(sd15.join("rank0.engine"))?.len() > first / 2);

    // sdxl through the library: the network's I/O equals the plan's, name by name.
    let sdxl = dir.path().join("sdxl");
    compile("sdxl_tiny.onnx", 1, false, &sdxl)?;
    let plan = Plan::load(&sdxl)?;
    let trt = TensorRt::open(&found)?;
    assert_eq!(trt.name(), "TensorRT-RTX");
    let engine = dir.path().join("sdxl.engine");
    let io = trt.build(
        &sdxl.join(&plan.ranks[0].file),
        &engine,
        BuildFlags::default(),
        0,
    )?;
    assert!(std::fs::metadata(&engine)?.len() > 0);
    let expected = plan.inputs.len() + plan.outputs.len();
    assert_eq!(io.len(), expected, "{io:?}");
    for (t, is_input) in plan
        .inputs
        .iter()
        .map(|t| (t, true))
        .chain(plan.outputs.iter().map(|t| (t, false)))
    {
        let got = io
            .iter()
            .find(|g| g.name == t.name)
            .with_context(|| format!("`{}` missing from {io:?}", t.name))?;
        assert_eq!(got.is_input, is_input, "{got:?}");
        assert_eq!(got.dtype, t.dtype, "{got:?}");
        assert_eq!(got.dims, t.local_shape(0), "{got:?}");
    }
    Ok(())
}

#[test]
fn fp16_plan_builds_with_the_flag_recorded() -> Result<()> {
    require_rtx!();
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("fp16");
    compile("sd15_tiny_fp16.onnx", 1, false, &plan)?;
    let p = build_and_check(&plan, &["--fp16"])?;
    assert_eq!(p.engines[0].flags, vec!["fp16".to_string()]);
    Ok(())
}

#[test]
fn two_rank_sync_plans_build_with_the_plugins() -> Result<()> {
    require_rtx!();
    let dir = tempfile::tempdir()?;
    for model in ["sd15_tiny.onnx", "sdxl_tiny.onnx"] {
        let plan = dir.path().join(model);
        compile(model, 2, true, &plan)?;
        let p = build_and_check(&plan, &[])?;
        assert!(!p.exchanges.is_empty());
        // Both bands have the same height here: same I/O, so the engines differ only by
        // their per-band constants (the edge bands' zero halos).
        assert_eq!(p.engines.len(), 2);
    }
    Ok(())
}

#[test]
fn four_rank_displaced_and_three_rank_unequal_plans_build_with_the_plugins() -> Result<()> {
    require_rtx!();
    let dir = tempfile::tempdir()?;
    for model in ["sd15_tiny.onnx", "sdxl_tiny.onnx"] {
        let plan = dir.path().join(format!("{model}.4"));
        compile(model, 4, false, &plan)?;
        let p = build_and_check(&plan, &[])?;
        assert!(p.exchanges.iter().any(|e| e.parts.is_some()), "gathers");
        assert_eq!(p.engines.len(), 4);
    }
    // Three GPUs cut 32 latent rows as 12 / 12 / 8: the last band's graph has other shapes,
    // and every gather carries unequal parts through the plugins' shape rules.
    let plan = dir.path().join("sd15_tiny.3");
    compile("sd15_tiny.onnx", 3, false, &plan)?;
    let p = build_and_check(&plan, &[])?;
    assert_eq!(p.bands.heights(), [12, 12, 8]);
    assert_eq!(p.engines.len(), 3);
    Ok(())
}

#[test]
fn exchanges_without_the_plugin_library_is_one_clear_error() -> Result<()> {
    let found = require_rtx!();
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan");
    compile("sd15_tiny.onnx", 2, true, &plan)?;
    let exe = lonely_dfc(dir.path())?;
    let o = build_isolated(
        &exe,
        dir.path(),
        &[plan.as_os_str()],
        &[
            ("DFC_TENSORRT", found.lib.as_os_str()),
            ("DFC_TRT_SHIM", found.shim.as_os_str()),
        ],
    )?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("libdfc_trt_plugins.so, which was not found"),
        "{err}"
    );
    assert!(err.contains("DfcHaloExchange"), "{err}");
    assert!(!plan.join("rank0.engine").exists());
    Ok(())
}

#[test]
fn a_corrupt_rank_graph_exits_1_and_leaves_no_engine() -> Result<()> {
    require_rtx!();
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan");
    compile("sd15_tiny.onnx", 1, false, &plan)?;
    let before = std::fs::read(plan.join("plan.json"))?;
    std::fs::write(plan.join("rank0.onnx"), b"\x08\x07garbage, not a protobuf")?;
    let o = common::dfc(&["build".as_ref(), plan.as_os_str()])?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("rank 0: building rank0.onnx"), "{err}");
    let names: Vec<String> = std::fs::read_dir(&plan)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("engine")),
        "left behind: {names:?}"
    );
    assert_eq!(std::fs::read(plan.join("plan.json"))?, before);
    Ok(())
}

#[test]
fn engine_io_that_differs_from_the_plan_is_refused() -> Result<()> {
    require_rtx!();
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan");
    compile("sd15_tiny.onnx", 1, false, &plan)?;
    let path = plan.join("plan.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    json["outputs"][0]["local_shapes"][0][3] = serde_json::json!(31);
    let edited = serde_json::to_string_pretty(&json)?;
    std::fs::write(&path, &edited)?;
    let o = common::dfc(&["build".as_ref(), plan.as_os_str()])?;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("do not match"), "{err}");
    assert!(err.contains("output `out_sample` has shape"), "{err}");
    assert!(!plan.join("rank0.engine").exists());
    assert_eq!(std::fs::read_to_string(&path)?, edited);
    Ok(())
}
