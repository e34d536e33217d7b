//! Benchmark: compile time of the largest fixture, and the CPU runtime against a plain ONNX
//! Runtime session.
//!
//! `cargo bench --bench compile_run [-- ITERATIONS]` (default 15). Prints medians:
//! - `dfc compile` (library call: specialize → partition → localize → emit, atomic write) of
//!   `models/sdxl_tiny_dynamic.onnx` at 2×4×32×32 for 1, 2, 4 and 8 GPUs;
//! - one UNet evaluation of `models/sd15_tiny.onnx` (reference inputs of its `.io.npz`): a plain
//!   ONNX Runtime session on the original model, and plans of 1, 2 and 4 ranks run by
//!   `PlanExecutor`, every side with the same total thread budget (all cores). Runners take
//!   turns in blocks of runs (5 rounds), with a pause between blocks: interleaving single runs
//!   would let one session's spinning pool threads slow the next session down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dfc::passes::driver::{CompileOptions, compile};
use dfc::passes::specialize::SpecializeOptions;
use dfc::plan::Mode;
use dfc::runtime::plan_exec::{ExecOptions, PlanExecutor};
use dfc::runtime::{ModelSession, SessionOptions, read_npz};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn options(
    model: PathBuf,
    output: PathBuf,
    gpus: usize,
    sizes: SpecializeOptions,
) -> CompileOptions {
    CompileOptions {
        bands: None,
        model,
        output,
        gpus,
        sizes,
        mode: Mode::Sync,
        warmup: 4,
        gn: Default::default(),
        split_batch: false,
        dump_after: None,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let iterations: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(15);
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let tmp = tempfile::tempdir()?;

    let largest = root.join("models/sdxl_tiny_dynamic.onnx");
    let sizes = SpecializeOptions {
        batch: Some(2),
        height: Some(32),
        width: Some(32),
        dims: vec![("sequence".into(), 8)],
    };
    println!(
        "compile {} (2x4x32x32), {iterations} iterations",
        largest.display()
    );
    println!("{:<6} {:>10}", "gpus", "median ms");
    for gpus in [1, 2, 4, 8] {
        let mut times = Vec::new();
        for i in 0..iterations {
            let out = tmp.path().join(format!("c{gpus}_{i}"));
            let t = Instant::now();
            compile(&options(largest.clone(), out, gpus, sizes.clone()))?;
            times.push(t.elapsed());
        }
        println!("{gpus:<6} {:>10.2}", median(times));
    }

    let model = root.join("models/sd15_tiny.onnx");
    let inputs = read_npz(&root.join("models/sd15_tiny.io.npz"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut plain = ModelSession::new(
        &model,
        SessionOptions {
            threads: cores,
            optimize: true,
            spin: true,
        },
    )?;
    let mut plans = Vec::new();
    for ranks in [1, 2, 4] {
        let dir = tmp.path().join(format!("plan{ranks}"));
        compile(&options(
            model.clone(),
            dir.clone(),
            ranks,
            SpecializeOptions::default(),
        ))?;
        let exec = PlanExecutor::load(
            &dir,
            ExecOptions {
                threads: cores,
                ..ExecOptions::default()
            },
        )?;
        plans.push((ranks, exec));
    }
    // Warm up every side once.
    plain.run(&inputs, true)?;
    for (_, p) in &mut plans {
        p.run_unet(&inputs)?;
    }
    let rounds = 5;
    let per_block = iterations.div_ceil(rounds).max(2);
    let mut plain_t = Vec::new();
    let mut plan_t: Vec<Vec<Duration>> = vec![Vec::new(); plans.len()];
    let pause = || std::thread::sleep(Duration::from_millis(300));
    for _ in 0..rounds {
        // The first run of each block only wakes the runner's threads up.
        plain.run(&inputs, true)?;
        for _ in 0..per_block {
            let t = Instant::now();
            plain.run(&inputs, true)?;
            plain_t.push(t.elapsed());
        }
        pause();
        for (i, (_, p)) in plans.iter_mut().enumerate() {
            p.run_unet(&inputs)?;
            for _ in 0..per_block {
                let t = Instant::now();
                p.run_unet(&inputs)?;
                plan_t[i].push(t.elapsed());
            }
            pause();
        }
    }
    let base = median(plain_t);
    println!(
        "\nunet step {} ({cores} cores), {rounds} rounds of {per_block} runs per runner",
        model.display()
    );
    println!("{:<28} {:>10} {:>8}", "runner", "median ms", "ratio");
    println!(
        "{:<28} {:>10.2} {:>8.3}",
        "ONNX Runtime, original", base, 1.0
    );
    for ((ranks, _), t) in plans.iter().zip(plan_t) {
        let m = median(t);
        println!(
            "{:<28} {:>10.2} {:>8.3}",
            format!("dfc plan, {ranks} rank(s)"),
            m,
            m / base
        );
    }
    Ok(())
}
