//! The sampling loop through plans (`dfc run`): a banded sync run equals the one-rank run,
//! displaced mode stays close to it, naive mode drifts further; and the command's files and
//! errors.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dfc::passes::driver::{CompileOptions, compile};
use dfc::passes::specialize::SpecializeOptions;
use dfc::plan::Mode;
use dfc::plugins::Jitter;
use dfc::runtime::host::{HostTensor, difference, read_npz, write_npz};
use dfc::runtime::sampler::{Prediction, SamplerConfig, SamplerKind};
use dfc::runtime::sampling::{SampleOptions, sample};
use dfc::runtime::{ExecOptions, PlanExecutor};

use common::*;

const STEPS: usize = 5;
const GUIDANCE: f32 = 3.0;
const SEED: u64 = 1234;

fn dynamic_sizes() -> SpecializeOptions {
    SpecializeOptions {
        batch: Some(2),
        height: Some(32),
        width: Some(32),
        dims: vec![("sequence".into(), 8)],
    }
}

fn compile_plan(
    model: &Path,
    out: &Path,
    gpus: usize,
    mode: Mode,
    split_batch: bool,
    sizes: SpecializeOptions,
) -> Result<()> {
    compile(&CompileOptions {
        bands: None,
        model: model.to_path_buf(),
        output: out.to_path_buf(),
        gpus,
        sizes,
        mode,
        warmup: 1,
        gn: Default::default(),
        split_batch,
        dump_after: None,
    })
    .with_context(|| format!("compiling {} for {gpus} ({mode:?})", model.display()))?;
    Ok(())
}

/// Compiles `models/sd15_tiny.onnx` at its own sizes.
fn compile_tiny(out: &Path, gpus: usize, mode: Mode) -> Result<()> {
    compile_plan(
        &root().join("models/sd15_tiny.onnx"),
        out,
        gpus,
        mode,
        false,
        SpecializeOptions::default(),
    )
}

fn exec_options() -> ExecOptions {
    ExecOptions {
        threads: 4,
        timeout: Some(Duration::from_secs(120)),
        ..ExecOptions::default()
    }
}

/// Samples `STEPS` DDIM steps with guidance through the plan in `dir`.
fn sample_plan(dir: &Path, cond: &[(String, HostTensor)]) -> Result<HostTensor> {
    sample_steps(dir, cond, STEPS, exec_options())
}

/// Samples `steps` DDIM steps with guidance through the plan in `dir`.
fn sample_steps(
    dir: &Path,
    cond: &[(String, HostTensor)],
    steps: usize,
    exec: ExecOptions,
) -> Result<HostTensor> {
    let mut exec = PlanExecutor::load(dir, exec)?;
    let options = SampleOptions {
        sampler: SamplerConfig::sd15(SamplerKind::Ddim, steps, Prediction::Epsilon),
        guidance: Some(GUIDANCE),
        seed: SEED,
    };
    let mut seen = Vec::new();
    let out = sample(&mut exec, cond, &options, |done| seen.push(done))?;
    ensure!(seen == (1..=steps).collect::<Vec<_>>(), "progress {seen:?}");
    ensure!(
        out.latent.iter().all(|v| v.is_finite()),
        "non-finite latent"
    );
    Ok(HostTensor::F32(out.latent))
}

/// Max relative error (max |a − b| / max |b|) and the L2 relative error ‖a − b‖ / ‖b‖.
fn errors(a: &HostTensor, b: &HostTensor) -> Result<(f64, f64)> {
    let d = difference(a, b).map_err(anyhow::Error::msg)?;
    ensure!(!d.non_finite, "non-finite values");
    let (x, y) = (a.to_f64(), b.to_f64());
    let num: f64 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum();
    let den: f64 = y.iter().map(|q| q * q).sum();
    Ok((d.max_rel, (num / den).sqrt()))
}

#[test]
fn banded_sampling_matches_one_rank_and_displaced_beats_naive() -> Result<()> {
    require_ort()?;
    let cond = read_npz(&root().join("models/sd15_tiny.io.npz"))?;
    let tmp = tempfile::tempdir()?;
    let plans = [
        ("one", 1, Mode::Sync),
        ("sync4", 4, Mode::Sync),
        ("displaced4", 4, Mode::Displaced),
        ("naive4", 4, Mode::Naive),
    ];
    let mut latents = Vec::new();
    for (name, gpus, mode) in plans {
        let dir = tmp.path().join(name);
        compile_tiny(&dir, gpus, mode)?;
        latents.push(sample_plan(&dir, &cond).with_context(|| format!("sampling {name}"))?);
    }
    let reference = &latents[0];
    ensure!(
        reference.shape() == [1, 4, 32, 32],
        "{:?}",
        reference.shape()
    );
    let (sync, sync_l2) = errors(&latents[1], reference)?;
    let (displaced, displaced_l2) = errors(&latents[2], reference)?;
    let (naive, naive_l2) = errors(&latents[3], reference)?;
    eprintln!(
        "vs 1 rank, {STEPS} DDIM steps, guidance {GUIDANCE} (max rel / L2 rel): \
         sync4 {sync:.3e} / {sync_l2:.3e}, displaced4 (warmup 1) {displaced:.4} / \
         {displaced_l2:.4}, naive4 {naive:.4} / {naive_l2:.4}"
    );
    ensure!(sync <= 1e-4, "4-rank sync differs from 1 rank by {sync:e}");
    ensure!(
        latents[2] != latents[1],
        "displaced is bit-identical to sync: stale context was never used"
    );
    ensure!(displaced < 0.5, "displaced error {displaced} ≥ 0.5");
    ensure!(
        naive > displaced && naive_l2 > displaced_l2,
        "naive ({naive}, L2 {naive_l2}) is not worse than displaced ({displaced}, L2 {displaced_l2})"
    );
    Ok(())
}

#[test]
fn eight_ranks_give_the_same_samples_whatever_their_timing() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    compile_tiny(&plan, 8, Mode::Displaced)?;
    let cond = read_npz(&root().join("models/sd15_tiny.io.npz"))?;
    let steps = 20;
    let plain = sample_steps(&plan, &cond, steps, exec_options())?;
    for seed in [1, 2] {
        let jittered = sample_steps(
            &plan,
            &cond,
            steps,
            ExecOptions {
                jitter: Some(Jitter {
                    seed,
                    max: Duration::from_micros(1500),
                }),
                ..exec_options()
            },
        )?;
        ensure!(
            jittered == plain,
            "random delays (seed {seed}) changed the result: {:?}",
            difference(&jittered, &plain)
        );
    }
    Ok(())
}

/// `model` with its inputs `sample` and `timestep` renamed (graph inputs and node inputs).
fn renamed_inputs(model: &Path, out: &Path) -> Result<()> {
    use prost::Message;
    let mut proto = dfc::onnx::load(model)?.proto;
    let graph = proto.graph.as_mut().context("no graph")?;
    let rename = |name: &mut String| match name.as_str() {
        "sample" => *name = "noisy_latent".into(),
        "timestep" => *name = "t".into(),
        _ => {}
    };
    for input in &mut graph.input {
        if let Some(n) = input.name.as_mut() {
            rename(n);
        }
    }
    for node in &mut graph.node {
        node.input.iter_mut().for_each(rename);
    }
    std::fs::write(out, proto.encode_to_vec())?;
    Ok(())
}

#[test]
fn latent_and_timestep_are_found_by_role_under_other_names() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let renamed = tmp.path().join("renamed.onnx");
    renamed_inputs(&root().join("models/sd15_tiny.onnx"), &renamed)?;
    let cond = read_npz(&root().join("models/sd15_tiny.io.npz"))?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    compile_tiny(&a, 2, Mode::Sync)?;
    compile_plan(
        &renamed,
        &b,
        2,
        Mode::Sync,
        false,
        SpecializeOptions::default(),
    )?;
    let names: Vec<String> = dfc::plan::Plan::load(&b)?
        .inputs
        .into_iter()
        .map(|i| i.name)
        .collect();
    ensure!(
        names.contains(&"noisy_latent".to_string()) && names.contains(&"t".to_string()),
        "{names:?}"
    );
    let (want, got) = (sample_plan(&a, &cond)?, sample_plan(&b, &cond)?);
    ensure!(got == want, "{:?}", difference(&got, &want));
    Ok(())
}

#[test]
fn split_batch_sync_sampling_matches_one_rank() -> Result<()> {
    require_ort()?;
    let model = root().join("models/sd15_tiny_dynamic.onnx");
    let cond = read_npz(&root().join("models/sd15_tiny_dynamic.io.npz"))?;
    let tmp = tempfile::tempdir()?;
    let one = tmp.path().join("one");
    let split = tmp.path().join("split");
    compile_plan(&model, &one, 1, Mode::Sync, false, dynamic_sizes())?;
    compile_plan(&model, &split, 4, Mode::Sync, true, dynamic_sizes())?;
    let plan = dfc::plan::Plan::load(&split)?;
    ensure!(
        plan.split_batch && plan.groups.len() == 2,
        "{:?}",
        plan.groups
    );
    let reference = sample_plan(&one, &cond)?;
    let got = sample_plan(&split, &cond)?;
    let (err, l2) = errors(&got, &reference)?;
    eprintln!(
        "split batch (2 groups × 2 bands) sync vs 1 rank: max rel {err:.3e}, L2 rel {l2:.3e}"
    );
    ensure!(
        err <= 1e-4,
        "split-batch sync differs from 1 rank by {err:e}"
    );
    Ok(())
}

#[test]
fn run_command_writes_latent_and_png_and_names_missing_inputs() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    compile_tiny(&plan, 2, Mode::Displaced)?;
    let out = tmp.path().join("out.npz");
    let png = tmp.path().join("out.png");
    let io = root().join("models/sd15_tiny.io.npz");
    let args: Vec<&OsStr> = vec![
        "run".as_ref(),
        plan.as_os_str(),
        "--steps".as_ref(),
        "3".as_ref(),
        "--scheduler".as_ref(),
        "dpmpp2m".as_ref(),
        "--guidance".as_ref(),
        "3".as_ref(),
        "--seed".as_ref(),
        "5".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--inputs".as_ref(),
        io.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--png".as_ref(),
        png.as_os_str(),
    ];
    let o = dfc(&args)?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(0), "exit {:?}: {stderr}", o.status);
    let written = read_npz(&out)?;
    ensure!(
        written.len() == 1 && written[0].0 == "latent" && written[0].1.shape() == [1, 4, 32, 32],
        "{:?}",
        written
            .iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect::<Vec<_>>()
    );
    let bytes = std::fs::read(&png)?;
    ensure!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // Conditioning without `encoder_hidden_states`: exit 1, naming it.
    let bad = tmp.path().join("bad.npz");
    let only_sample: Vec<(String, HostTensor)> = read_npz(&io)?
        .into_iter()
        .filter(|(n, _)| n != "encoder_hidden_states")
        .collect();
    write_npz(&bad, &only_sample)?;
    let mut bad_args = args.clone();
    let at = bad_args
        .iter()
        .position(|a| *a == io.as_os_str())
        .context("inputs arg")?;
    bad_args[at] = bad.as_os_str();
    let o = dfc(&bad_args)?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {stderr}", o.status);
    ensure!(
        stderr.contains("encoder_hidden_states"),
        "the error does not name the missing input: {stderr}"
    );
    Ok(())
}
