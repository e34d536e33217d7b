//! The TensorRT plugins compute their output shapes with their own C++ code
//! (`plugins/tensorrt/src/host.cpp`); this test feeds every exchange of every band of the
//! fixture plans (equal and unequal bands, displaced and sync) to the `dfc_trt_shapes` tool,
//! which runs those same functions, and requires the compiler's shapes (the Rust contract's) back.
//! Without the built tool (`tools/build_plugins.sh`) it prints why and counts as skipped.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use dfc::passes::driver::{CompileOptions, compile};
use dfc::plan::{ExchangeKind, Mode, Plan};

use common::*;

/// One `dfc_trt_shapes` request per exchange and band, with the shape the plan expects.
fn requests(plan: &Plan) -> Vec<(String, Vec<i64>)> {
    let dims = |d: &[i64]| {
        d.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::new();
    for e in &plan.exchanges {
        for (input, output) in e.input_shapes.iter().zip(&e.output_shapes) {
            let head = match e.kind {
                ExchangeKind::Halo => format!(
                    "halo {} {} {} {}",
                    e.slot,
                    e.axis.unwrap_or(0),
                    e.top.unwrap_or(0),
                    e.bottom.unwrap_or(0)
                ),
                ExchangeKind::Stats => format!("stats {}", e.slot),
                ExchangeKind::Gather => format!(
                    "gather {} {} {}",
                    e.slot,
                    e.axis.unwrap_or(0),
                    e.parts
                        .iter()
                        .flatten()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            out.push((format!("{head} | {}", dims(input)), output.clone()));
        }
    }
    out
}

#[test]
fn plugin_output_shapes_equal_the_contract_on_every_fixture_plan() -> Result<()> {
    let tool = root().join("plugins/tensorrt/build/dfc_trt_shapes");
    if !tool.is_file() {
        println!(
            "skipped: {} is not built (tools/build_plugins.sh builds it)",
            tool.display()
        );
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut checked = 0usize;
    for f in fixtures()? {
        if f.name.contains("dynamic") || f.name.contains("vae") {
            continue;
        }
        for (n, mode) in [
            (2, Mode::Displaced),
            (3, Mode::Sync),
            (4, Mode::Displaced),
            (7, Mode::Sync),
        ] {
            let out = tmp.path().join(format!("{}_{n}", f.name));
            compile(&CompileOptions {
                bands: None,
                model: f.model.clone(),
                output: out.clone(),
                gpus: n,
                sizes: Default::default(),
                mode,
                warmup: 4,
                gn: Default::default(),
                split_batch: false,
                dump_after: None,
            })
            .with_context(|| format!("compiling {} for {n}", f.name))?;
            let plan = Plan::load(&out)?;
            let reqs = requests(&plan);
            ensure!(!reqs.is_empty(), "{} n={n}: no exchanges", f.name);
            let mut child = Command::new(&tool)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", tool.display()))?;
            let input: String = reqs.iter().map(|(l, _)| format!("{l}\n")).collect();
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
            let got = child.wait_with_output()?;
            ensure!(got.status.success(), "{} n={n}: {got:?}", f.name);
            let lines: Vec<String> = String::from_utf8(got.stdout)?
                .lines()
                .map(str::to_string)
                .collect();
            ensure!(
                lines.len() == reqs.len(),
                "{} n={n}: {} answers",
                f.name,
                lines.len()
            );
            for ((req, want), line) in reqs.iter().zip(&lines) {
                let dims: Vec<i64> = line
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("`{req}` answered `{line}`"))?;
                ensure!(
                    &dims == want,
                    "{} n={n}: `{req}` gave {dims:?}, the plan has {want:?}",
                    f.name
                );
                checked += 1;
            }
        }
    }
    println!("{checked} exchange shapes agree");
    ensure!(checked > 0);
    Ok(())
}
