//! Benchmark: load + lift + specialize + write of a fixture model, stage by stage.
//!
//! `cargo bench --bench specialize [-- MODEL [ITERATIONS]]` (default: the largest fixture,
//! `models/sdxl_tiny_dynamic.onnx`, 20 iterations). Prints the median and the spread of each
//! stage; results go to BENCHMARKS.md with the machine and date.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dfc::ir::Graph;
use dfc::passes::specialize::{SpecializeOptions, specialize};

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let model = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/sdxl_tiny_dynamic.onnx"));
    let iterations: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("specialized.onnx");
    let opts = SpecializeOptions {
        batch: Some(2),
        height: Some(32),
        width: Some(32),
        dims: vec![("sequence".into(), 8)],
    };

    let stages = ["load", "lift", "specialize", "lower+save", "total"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); stages.len()];
    let mut nodes = (0, 0);
    for _ in 0..iterations {
        let t0 = Instant::now();
        let loaded = dfc::onnx::load(&model)?;
        let t1 = Instant::now();
        let store = loaded.external_store();
        let mut graph = Graph::from_model(loaded.proto)?;
        let t2 = Instant::now();
        let report = specialize(&mut graph, &store, &opts)?;
        let t3 = Instant::now();
        dfc::onnx::save(&graph.to_model()?, &out)?;
        let t4 = Instant::now();
        nodes = (report.nodes_before, report.nodes_after);
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]
            .into_iter()
            .enumerate()
        {
            times[i].push(d);
        }
    }
    println!(
        "model {} ({} bytes), {} → {} nodes, {iterations} iterations",
        model.display(),
        std::fs::metadata(&model)?.len(),
        nodes.0,
        nodes.1
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10}",
        "stage", "min ms", "median ms", "max ms"
    );
    for (name, t) in stages.iter().zip(times) {
        let (lo, mid, hi) = median(t);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:<12} {:>10.2} {:>10.2} {:>10.2}",
            ms(lo),
            ms(mid),
            ms(hi)
        );
    }
    Ok(())
}
