//! What a new user hits first: `dfc run` and `dfc compare` check what they can before the
//! first step and never throw a sampled latent away; `--weights` give proportional bands;
//! `--output` must be an `.npz`, `--zoom` magnifies the PNG; negative counts get a message that
//! names the smallest value; `dfc estimate --png` plots what its table says.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use dfc::commands::estimate::{Row, series};
use dfc::contract::Bands;
use dfc::estimate::{Estimate, LinkKind};
use dfc::onnx::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto, tensor_shape_proto, type_proto,
};
use dfc::plan::Plan;
use dfc::runtime::host::{HostTensor, read_npz, write_npz};
use ndarray::Axis;

use common::*;

/// The line `dfc run` prints once sampling is done.
const SAMPLED: &str = "steps of ddim";

/// `models/shapes/unet.onnx` for 2 GPUs at batch 2 (CFG pair), 64×64, 4 tokens, in `dir/plan`;
/// its conditioning (`cond8.npz` rows 0 and 8: the null tokens, then class 0) in
/// `dir/cond.npz`.
fn shapes_plan(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let plan = dir.join("plan");
    let o = dfc_compile(
        "models/shapes/unet.onnx",
        2,
        &plan,
        &[
            "--batch",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "--dim",
            "sequence=4",
        ],
    )?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cond = dir.join("cond.npz");
    let all = read_npz(&root().join("models/shapes/cond8.npz"))?;
    let sliced: Vec<(String, HostTensor)> = all
        .into_iter()
        .map(|(name, t)| match t {
            HostTensor::F32(a) => Ok((name, HostTensor::F32(a.select(Axis(0), &[0, 8])))),
            other => anyhow::bail!("{name} is {}", other.dtype()),
        })
        .collect::<Result<_>>()?;
    write_npz(&cond, &sliced)?;
    Ok((plan, cond))
}

/// `dfc run PLAN --steps 2 --guidance 3 --threads 2 --inputs COND` followed by `extra`.
fn run(plan: &Path, cond: &Path, extra: &[&OsStr]) -> Result<(Option<i32>, String)> {
    let mut args: Vec<&OsStr> = vec![
        "run".as_ref(),
        plan.as_os_str(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--guidance".as_ref(),
        "3".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--inputs".as_ref(),
        cond.as_os_str(),
    ];
    args.extend_from_slice(extra);
    let o = dfc(&args)?;
    Ok((
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

fn dims(d: &[&str]) -> TensorShapeProto {
    TensorShapeProto {
        dim: d
            .iter()
            .map(|s| tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimParam(
                    s.to_string(),
                )),
                denotation: None,
            })
            .collect(),
    }
}

fn f32_info(name: &str, d: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(dims(d)),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// A "VAE decoder" of dynamic size that returns its input: loadable, and only found wrong
/// when it decodes (a 4-channel latent is no RGB image).
fn identity_vae(path: &Path) -> Result<()> {
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("identity_vae".into()),
            node: vec![NodeProto {
                input: vec!["latent".into()],
                output: vec!["image".into()],
                name: Some("identity".into()),
                op_type: Some("Identity".into()),
                ..Default::default()
            }],
            input: vec![f32_info("latent", &["n", "c", "h", "w"])],
            output: vec![f32_info("image", &["n", "c", "h", "w"])],
            ..Default::default()
        }),
        ..Default::default()
    };
    dfc::onnx::save(&model, path)?;
    Ok(())
}

#[test]
fn run_checks_the_vae_and_the_output_folders_before_the_first_step() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let (plan, cond) = shapes_plan(tmp.path())?;
    let out = tmp.path().join("out.npz");
    let png = tmp.path().join("out.png");

    // The tiny VAE takes [1, 4, 32, 32]; this plan's latent is 64×64.
    let vae = root().join("models/vae_decoder_tiny.onnx");
    let (code, stderr) = run(
        &plan,
        &cond,
        &[
            "--vae".as_ref(),
            vae.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--png".as_ref(),
            png.as_os_str(),
        ],
    )?;
    ensure!(code == Some(1), "exit {code:?}: {stderr}");
    ensure!(
        !stderr.contains(SAMPLED),
        "sampled before refusing: {stderr}"
    );
    ensure!(
        stderr.contains("[1, 4, 64, 64]") && stderr.contains("[1, 4, 32, 32]"),
        "the error does not name both shapes: {stderr}"
    );
    ensure!(!out.exists() && !png.exists(), "files written on failure");

    // Output folders that do not exist.
    let missing = tmp.path().join("missing");
    for (flag, path) in [
        ("-o", missing.join("out.npz")),
        ("--png", missing.join("out.png")),
    ] {
        let mut extra: Vec<&OsStr> = vec![flag.as_ref(), path.as_os_str()];
        if flag == "--png" {
            extra.extend(["-o".as_ref(), out.as_os_str()]);
        }
        let (code, stderr) = run(&plan, &cond, &extra)?;
        ensure!(code == Some(1), "{flag}: exit {code:?}: {stderr}");
        ensure!(
            !stderr.contains(SAMPLED),
            "{flag}: sampled before refusing: {stderr}"
        );
        ensure!(
            stderr.contains(&missing.display().to_string()),
            "{flag}: the error does not name the folder: {stderr}"
        );
    }
    ensure!(!out.exists(), "latent written on failure");
    Ok(())
}

#[test]
fn a_failing_decoder_keeps_the_sampled_latent() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let (plan, cond) = shapes_plan(tmp.path())?;
    let vae = tmp.path().join("identity_vae.onnx");
    identity_vae(&vae)?;
    let (out, png) = (tmp.path().join("out.npz"), tmp.path().join("out.png"));
    let (code, stderr) = run(
        &plan,
        &cond,
        &[
            "--vae".as_ref(),
            vae.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--png".as_ref(),
            png.as_os_str(),
        ],
    )?;
    ensure!(code == Some(1), "exit {code:?}: {stderr}");
    ensure!(
        stderr.contains("latent was written") && stderr.contains(&out.display().to_string()),
        "the error does not say where the latent is: {stderr}"
    );
    let written = read_npz(&out).context("the latent was not written")?;
    ensure!(
        written.len() == 1 && written[0].0 == "latent" && written[0].1.shape() == [1, 4, 64, 64],
        "{:?}",
        written
            .iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect::<Vec<_>>()
    );
    ensure!(!png.exists(), "a PNG was written though decoding failed");
    Ok(())
}

#[test]
fn compare_checks_its_outputs_and_the_vae_before_sampling() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let (_, cond) = shapes_plan(tmp.path())?;
    let model = root().join("models/shapes/unet.onnx");
    let vae = root().join("models/vae_decoder_tiny.onnx");
    let compare = |extra: &[&OsStr]| -> Result<(Option<i32>, String)> {
        let mut args: Vec<&OsStr> = vec![
            "compare".as_ref(),
            model.as_os_str(),
            "--gpus".as_ref(),
            "2".as_ref(),
            "--batch".as_ref(),
            "2".as_ref(),
            "--height".as_ref(),
            "64".as_ref(),
            "--width".as_ref(),
            "64".as_ref(),
            "--dim".as_ref(),
            "sequence=4".as_ref(),
            "--modes".as_ref(),
            "displaced".as_ref(),
            "--steps".as_ref(),
            "2".as_ref(),
            "--guidance".as_ref(),
            "3".as_ref(),
            "--threads".as_ref(),
            "2".as_ref(),
            "--inputs".as_ref(),
            cond.as_os_str(),
        ];
        args.extend_from_slice(extra);
        let o = dfc(&args)?;
        Ok((
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    };
    let missing = tmp.path().join("missing");
    for (flag, path) in [
        ("--png", missing.join("grid.png")),
        ("--json", missing.join("report.json")),
    ] {
        let (code, stderr) = compare(&[flag.as_ref(), path.as_os_str()])?;
        ensure!(code == Some(1), "{flag}: exit {code:?}: {stderr}");
        ensure!(
            !stderr.contains(SAMPLED),
            "{flag}: sampled before refusing: {stderr}"
        );
        ensure!(
            stderr.contains(&missing.display().to_string()),
            "{flag}: the error does not name the folder: {stderr}"
        );
    }
    let png = tmp.path().join("grid.png");
    let (code, stderr) = compare(&[
        "--vae".as_ref(),
        vae.as_os_str(),
        "--png".as_ref(),
        png.as_os_str(),
    ])?;
    ensure!(code == Some(1), "exit {code:?}: {stderr}");
    ensure!(
        !stderr.contains(SAMPLED),
        "sampled before refusing: {stderr}"
    );
    ensure!(stderr.contains("[1, 4, 32, 32]"), "{stderr}");
    Ok(())
}

#[test]
fn run_refuses_an_output_that_is_not_npz_and_zooms_the_png() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let (plan, cond) = shapes_plan(tmp.path())?;
    let wrong = tmp.path().join("out.png");
    let start = Instant::now();
    let (code, stderr) = run(&plan, &cond, &["-o".as_ref(), wrong.as_os_str()])?;
    ensure!(code == Some(1), "exit {code:?}: {stderr}");
    ensure!(
        stderr.contains(".npz") && stderr.contains("--png"),
        "the error does not suggest --png: {stderr}"
    );
    ensure!(
        !stderr.contains(SAMPLED),
        "sampled before refusing: {stderr}"
    );
    ensure!(!wrong.exists(), "wrote {}", wrong.display());
    eprintln!("refused in {:.2} s", start.elapsed().as_secs_f64());

    let (out, png) = (tmp.path().join("out.npz"), tmp.path().join("zoomed.png"));
    let (code, stderr) = run(
        &plan,
        &cond,
        &[
            "-o".as_ref(),
            out.as_os_str(),
            "--png".as_ref(),
            png.as_os_str(),
            "--zoom".as_ref(),
            "3".as_ref(),
        ],
    )?;
    ensure!(code == Some(0), "exit {code:?}: {stderr}");
    let img = image::open(&png)?;
    ensure!(
        (img.width(), img.height()) == (192, 192),
        "{}x{}",
        img.width(),
        img.height()
    );
    Ok(())
}

#[test]
fn negative_counts_name_the_smallest_value() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (
            vec![
                "run".as_ref(),
                plan.as_os_str(),
                "--steps".as_ref(),
                "-1".as_ref(),
                "--inputs".as_ref(),
                "c.npz".as_ref(),
                "-o".as_ref(),
                "o.npz".as_ref(),
            ],
            "≥ 1",
        ),
        (
            vec![
                "run".as_ref(),
                plan.as_os_str(),
                "--threads".as_ref(),
                "-2".as_ref(),
                "--inputs".as_ref(),
                "c.npz".as_ref(),
                "-o".as_ref(),
                "o.npz".as_ref(),
            ],
            "≥ 0",
        ),
        (
            vec![
                "compare".as_ref(),
                "m.onnx".as_ref(),
                "--gpus".as_ref(),
                "-1".as_ref(),
                "--inputs".as_ref(),
                "c.npz".as_ref(),
            ],
            "≥ 1",
        ),
        (
            vec![
                "estimate".as_ref(),
                plan.as_os_str(),
                "--steps".as_ref(),
                "-5".as_ref(),
            ],
            "≥ 1",
        ),
    ];
    for (args, want) in cases {
        let o = dfc(&args)?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        ensure!(o.status.code() == Some(1), "{args:?}: {stderr}");
        ensure!(
            stderr.contains(want) && !stderr.contains("-- -"),
            "{args:?}: the error does not say {want}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn weights_give_the_slowest_gpu_the_least_time() -> Result<()> {
    // 48 rows in steps of 4 for GPUs of speeds 1, 1, 0.5: 20, 20, 8 take at most 20 row-units
    // of time (8 / 0.5 = 16); the old rounding gave 20, 16, 12 (12 / 0.5 = 24).
    let b = Bands::weighted(48, &[1.0, 1.0, 0.5], 4)?;
    ensure!(b.heights() == [20, 20, 8], "{b}");
    // Equal weights are the even spread, whatever the scale.
    for (h, n, step) in [(128, 3, 4), (50, 3, 4), (64, 5, 4), (96, 7, 8), (13, 4, 1)] {
        let want = Bands::even(h, n, step)?;
        let got = Bands::weighted(h, &vec![2.5; n], step)?;
        ensure!(
            got == want,
            "{h} rows, {n} bands, step {step}: {got} vs {want}"
        );
    }

    // Through the compiler: the plan records the bands.
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    let o = dfc_compile(
        "models/shapes/unet.onnx",
        3,
        &plan,
        &[
            "--weights",
            "1,1,0.5",
            "--batch",
            "2",
            "--height",
            "48",
            "--width",
            "48",
            "--dim",
            "sequence=4",
        ],
    )?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = Plan::load(&plan)?;
    ensure!(p.bands.heights() == [20, 20, 8], "{}", p.bands);
    Ok(())
}

fn row(world_size: usize, latent: [i64; 2], mode: &str, split: bool, speedup: f64) -> Row {
    Row {
        plan: format!("{mode}-{world_size}"),
        estimate: Estimate {
            gpu: "a100",
            link: LinkKind::Nvlink,
            world_size,
            latent,
            split_batch: split,
            mode: mode.into(),
            steps: 50,
            sync_steps: 0,
            efficiency: 0.75,
            kernel_s: 2e-6,
            ranks: Vec::new(),
            sync_step_s: 1.0,
            stale_step_s: 1.0,
            latency_s: 1.0 / speedup,
            fits: None,
        },
        speedup: Some(speedup),
    }
}

#[test]
fn the_plot_draws_one_line_per_size_mode_and_split_at_the_real_speedups() -> Result<()> {
    let rows = vec![
        row(1, [64, 64], "sync", false, 1.0),
        row(2, [64, 64], "sync", false, 0.68),
        row(4, [64, 64], "sync", false, 0.5),
        row(2, [64, 64], "displaced", false, 1.4),
        row(4, [64, 64], "displaced", false, 2.1),
        row(4, [64, 64], "displaced", true, 2.5),
        row(1, [64, 96], "sync", false, 1.0),
        row(2, [64, 96], "displaced", false, 1.7),
    ];
    let lines = series(&rows);
    let find = |latent: [i64; 2], mode: &str, split: bool| {
        lines
            .iter()
            .find(|s| s.latent == latent && s.mode == mode && s.split_batch == split)
            .with_context(|| format!("no line for {latent:?} {mode} split {split}: {lines:?}"))
    };
    ensure!(lines.len() == 4, "{lines:?}");
    ensure!(
        find([64, 64], "sync", false)?.points == [(1, 1.0), (2, 0.68), (4, 0.5)],
        "{lines:?}"
    );
    ensure!(
        find([64, 64], "displaced", false)?.points == [(1, 1.0), (2, 1.4), (4, 2.1)],
        "{lines:?}"
    );
    ensure!(
        find([64, 64], "displaced", true)?.points == [(1, 1.0), (4, 2.5)],
        "{lines:?}"
    );
    let wide = find([64, 96], "displaced", false)?;
    ensure!(wide.points == [(1, 1.0), (2, 1.7)], "{lines:?}");
    // The legend names the size the table prints, not 8 × the latent.
    ensure!(
        wide.label().contains("64x96") && !wide.label().contains("512"),
        "{}",
        wide.label()
    );
    // The picture is drawn from these lines (a smoke check that slow plans do not panic).
    let img = dfc::commands::estimate::plot(&rows);
    ensure!(img.width() > 0 && img.height() > 0);
    Ok(())
}
