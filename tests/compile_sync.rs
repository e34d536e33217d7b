//! The numeric proof of the rewrite (DESIGN §6.2): a `sync` plan computes what the original
//! model computes, for 1, 2, 4 and 8 GPUs, on every fixture UNet (SD1.5 and SDXL styles,
//! static, dynamic, external-data and fp16 exports) and the VAE decoder, through the plan
//! executor (ONNX Runtime, ranks in lockstep, exchanges in shared memory), and for GPU counts
//! that cut the image into unequal bands (3, 5, 6, 7, and hand-set band lists). Tolerance: max
//! |plan − reference| / max |reference| ≤ 1e-4 in fp32, ≤ 1e-2 in fp16. `naive` plans must be
//! far off (they are the quality floor, not a rewrite of the model).

mod common;

use anyhow::{Context, Result, ensure};
use dfc::passes::BandRequest;
use dfc::passes::driver::{CompileOptions, compile};
use dfc::passes::specialize::SpecializeOptions;
use dfc::plan::Mode;
use dfc::runtime::host::{HostTensor, difference};
use dfc::runtime::{ExecOptions, PlanExecutor};

use common::*;

fn sizes_for(name: &str) -> SpecializeOptions {
    if name.contains("dynamic") {
        SpecializeOptions {
            batch: Some(2),
            height: Some(32),
            width: Some(32),
            dims: vec![("sequence".into(), 8)],
        }
    } else {
        SpecializeOptions::default()
    }
}

/// Compiles `fixture` and runs the plan on its reference inputs; returns the worst relative
/// error over the outputs.
fn plan_error(f: &Fixture, n: usize, mode: Mode, split_batch: bool) -> Result<f64> {
    plan_error_with(f, n, None, mode, split_batch).map(|(e, _)| e)
}

/// [`plan_error`] with the bands asked for; also returns the bands compiled.
fn plan_error_with(
    f: &Fixture,
    n: usize,
    bands: Option<BandRequest>,
    mode: Mode,
    split_batch: bool,
) -> Result<(f64, String)> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    compile(&CompileOptions {
        bands,
        model: f.model.clone(),
        output: out.clone(),
        gpus: n,
        sizes: sizes_for(&f.name),
        mode,
        warmup: 4,
        gn: Default::default(),
        split_batch,
        dump_after: None,
    })
    .with_context(|| format!("compiling {} for {n}", f.name))?;
    let worst = plan_error_against(&out, f)?;
    Ok((worst, dfc::plan::Plan::load(&out)?.bands.to_string()))
}

#[test]
fn unequal_band_sync_plans_equal_the_original_model() -> Result<()> {
    require_ort()?;
    let mut lines = Vec::new();
    for f in fixtures()? {
        let tol = if f.name.contains("fp16") { 1e-2 } else { 1e-4 };
        for n in [3, 5, 6, 7] {
            let (e, bands) = plan_error_with(&f, n, None, Mode::Sync, false)?;
            lines.push(format!(
                "{} n={n} (bands {bands}): max rel error {e:.2e}",
                f.name
            ));
            ensure!(
                e <= tol,
                "{} n={n} (bands {bands}): error {e} above {tol}",
                f.name
            );
        }
        // By hand: the largest band in the middle, a small one at each edge.
        let req = BandRequest::Heights(vec![4, 24, 4]);
        let (e, bands) = plan_error_with(&f, 3, Some(req), Mode::Sync, false)?;
        lines.push(format!("{} bands {bands}: max rel error {e:.2e}", f.name));
        ensure!(e <= tol, "{} bands {bands}: error {e} above {tol}", f.name);
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

#[test]
fn sync_plans_equal_the_original_model() -> Result<()> {
    require_ort()?;
    let mut lines = Vec::new();
    for f in fixtures()? {
        let tol = if f.name.contains("fp16") { 1e-2 } else { 1e-4 };
        for n in [1, 2, 4, 8] {
            let e = plan_error(&f, n, Mode::Sync, false)?;
            lines.push(format!("{} n={n}: max rel error {e:.2e}", f.name));
            ensure!(e <= tol, "{} n={n}: error {e} above {tol}", f.name);
        }
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

/// The trained `shapes` UNet with its attention written as Einsum (`tools/einsum_attention.py`):
/// the score and mixing products are Einsums, and the sync plan still equals the model.
#[test]
fn einsum_attention_sync_plan_equals_the_original_model() -> Result<()> {
    require_ort()?;
    let dir = root().join("models/shapes_einsum");
    let f = Fixture {
        name: "shapes_einsum".into(),
        model: dir.join("unet.onnx"),
        io: dir.join("io.npz"),
    };
    let sizes = SpecializeOptions {
        batch: Some(2),
        height: Some(32),
        width: Some(32),
        dims: vec![("sequence".into(), 4)],
    };
    let e = sync_plan_error(&f, 4, sizes, false)?;
    println!("shapes_einsum n=4: max rel error {e:.2e}");
    ensure!(e <= 1e-4, "shapes_einsum n=4: error {e} above 1e-4");
    Ok(())
}

#[test]
fn split_batch_sync_plan_equals_the_original_model() -> Result<()> {
    require_ort()?;
    for f in fixtures()?.iter().filter(|f| f.name.contains("dynamic")) {
        let e = plan_error(f, 4, Mode::Sync, true)?;
        ensure!(e <= 1e-4, "{}: split-batch error {e}", f.name);
    }
    Ok(())
}

#[test]
fn naive_plans_are_far_off() -> Result<()> {
    require_ort()?;
    let f = fixtures()?
        .into_iter()
        .find(|f| f.name == "sd15_tiny")
        .context("sd15_tiny fixture")?;
    let e = plan_error(&f, 4, Mode::Naive, false)?;
    ensure!(e > 1e-2, "naive error {e} is suspiciously small");
    // One band is the whole image: naive equals the original.
    ensure!(plan_error(&f, 1, Mode::Naive, false)? <= 1e-4);
    Ok(())
}

/// A model with a full-height constant (sliced per band at compile time), a full-height
/// replicated value computed at run time (sliced per rank by an inserted `Slice`) and a mean
/// over the image (band means, all-reduced).
const BAND_MODEL: &str = r#"
import sys
import numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng = np.random.default_rng(0)
pos = rng.standard_normal((1, 4, 16, 1)).astype(np.float32)
big = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
nodes = [
    h.make_node("Add", ["sample", "pos"], ["a"], name="add_pos"),
    h.make_node("Relu", ["timestep"], ["t"], name="t_relu"),
    h.make_node("Mul", ["big", "t"], ["bt"], name="bt"),
    h.make_node("Mul", ["a", "bt"], ["m"], name="mul_bt"),
    h.make_node("Conv", ["m", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
    h.make_node("ReduceMean", ["c"], ["rm"], name="rmean", axes=[2, 3], keepdims=1),
    h.make_node("Sub", ["c", "rm"], ["out"], name="center"),
]
g = h.make_graph(
    nodes, "g",
    [h.make_tensor_value_info("sample", T.FLOAT, [1, 4, 16, 16]),
     h.make_tensor_value_info("timestep", T.FLOAT, [1])],
    [h.make_tensor_value_info("out", T.FLOAT, [1, 4, 16, 16])],
    [nh.from_array(pos, "pos"), nh.from_array(big, "big"), nh.from_array(w, "w")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
m.ir_version = 8
onnx.save(m, sys.argv[1])
"#;

#[test]
fn per_band_constants_and_mean_statistics() -> Result<()> {
    require_ort()?;
    let Some(python) = dfc::runtime::ort_env::find_venv_python() else {
        println!("skipped: no project .venv with the onnx package");
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("band.onnx");
    let status = std::process::Command::new(python)
        .arg("-c")
        .arg(BAND_MODEL)
        .arg(&model)
        .status()?;
    ensure!(status.success(), "making the model");
    let mut rng = Rng::new(7);
    let mut normal = |shape: &[usize]| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v).map(HostTensor::F32)
    };
    let inputs = vec![
        ("sample".to_string(), normal(&[1, 4, 16, 16])?),
        ("timestep".to_string(), normal(&[1])?),
    ];
    let want = run(&model, &inputs)?;
    for n in [2, 4, 8] {
        let out = tmp.path().join(format!("plan{n}"));
        compile(&CompileOptions {
            bands: None,
            model: model.clone(),
            output: out.clone(),
            gpus: n,
            sizes: SpecializeOptions::default(),
            mode: Mode::Sync,
            warmup: 4,
            gn: Default::default(),
            split_batch: false,
            dump_after: None,
        })?;
        let plan = dfc::plan::Plan::load(&out)?;
        ensure!(
            plan.exchanges.len() == 2,
            "one halo and one mean all-reduce"
        );
        let mut exec = PlanExecutor::load(&out, ExecOptions::default())?;
        let got = exec.run_unet(&inputs)?;
        let d = difference(&got[0].1, &want[0].1).map_err(anyhow::Error::msg)?;
        ensure!(d.max_rel <= 1e-5, "n={n}: error {}", d.max_rel);
    }
    Ok(())
}
