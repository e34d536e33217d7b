//! The corpus of export forms beyond the diffusers fixtures (`models/corpus/`, written by
//! `tools/export_corpus.py`): an LDM-style UNet with Einsum attention on `(b h) n d` tensors, the
//! same UNet with 4-D heads Einsums and GroupNormalization-21, and one with the ONNX `Attention`
//! operator and RMSNormalization, all with the batch fixed to the CFG pair. On each: a `sync`
//! plan computes what the model computes at N = 2 and 4 (max |plan − reference| / max
//! |reference| ≤ 1e-4), `--split-batch` halves the static batch onto two groups with the same
//! result, and `dfc inspect` counts the attentions the partitioner gathers for. A graph of ONNX
//! Runtime's fused operators is refused in one error that lists every fused node.

mod common;

use anyhow::{Context, Result, ensure};
use dfc::emit::{CompileOptions, compile};
use dfc::passes::specialize::SpecializeOptions;
use dfc::plan::Mode;

use common::*;

/// Compiles `f` for `n` GPUs in sync mode and runs the plan on its reference inputs; the worst
/// relative error over the outputs.
fn plan_error(f: &Fixture, n: usize, split_batch: bool) -> Result<f64> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    compile(&CompileOptions {
        bands: None,
        model: f.model.clone(),
        output: out.clone(),
        gpus: n,
        sizes: SpecializeOptions::default(),
        mode: Mode::Sync,
        warmup: 4,
        gn: Default::default(),
        split_batch,
        dump_after: None,
    })
    .with_context(|| format!("compiling {} for {n}", f.name))?;
    plan_error_against(&out, f)
}

fn corpus_or_skip() -> Result<Option<Vec<Fixture>>> {
    let c = corpus()?;
    if c.is_empty() {
        println!("skipped: no models/corpus (tools/export_corpus.py writes it)");
        return Ok(None);
    }
    Ok(Some(c))
}

#[test]
fn sync_plans_of_every_export_form_equal_the_original() -> Result<()> {
    require_ort()?;
    let Some(corpus) = corpus_or_skip()? else {
        return Ok(());
    };
    let mut lines = Vec::new();
    for f in &corpus {
        for (n, split) in [(2, false), (4, false), (4, true)] {
            let what = if split { " --split-batch" } else { "" };
            let e = plan_error(f, n, split)?;
            lines.push(format!("{} n={n}{what}: max rel error {e:.2e}", f.name));
            ensure!(e <= 1e-4, "{} n={n}{what}: error {e} above 1e-4", f.name);
        }
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

#[test]
fn inspect_counts_every_attention_form() -> Result<()> {
    let Some(corpus) = corpus_or_skip()? else {
        return Ok(());
    };
    for f in &corpus {
        let out = dfc(&["inspect".as_ref(), f.model.as_os_str(), "--json".as_ref()])?;
        ensure!(
            out.status.success(),
            "{}: {}",
            f.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let count = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
        // Every corpus UNet has a transformer at two levels: one self- and one
        // cross-attention each.
        ensure!(
            (
                count("self_attentions"),
                count("cross_attentions"),
                count("other_attentions")
            ) == (2, 2, 0),
            "{}: {report}",
            f.name
        );
    }
    Ok(())
}

#[test]
fn fused_operator_graphs_are_refused_listing_every_fused_node() -> Result<()> {
    let model = root().join("models/corpus/refused/fused_ort.onnx");
    if !model.is_file() {
        println!("skipped: no {}", model.display());
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    let run = dfc(&[
        "compile".as_ref(),
        model.as_os_str(),
        "--gpus".as_ref(),
        "2".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ])?;
    let err = String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.code() == Some(1), "exit {:?}: {err}", run.status);
    ensure!(
        err.contains("6 node(s) are ONNX Runtime fused operators"),
        "{err}"
    );
    for (node, op) in [
        ("/conv_in/NhwcConv", "NhwcConv"),
        ("/down_blocks.0/resnets.0/norm1/GroupNorm", "GroupNorm"),
        (
            "/down_blocks.0/resnets.0/norm2/SkipGroupNorm",
            "SkipGroupNorm",
        ),
        ("/attn/MultiHeadAttention", "MultiHeadAttention"),
        ("/attn/BiasAdd", "BiasAdd"),
        ("/ff/BiasSplitGelu", "BiasSplitGelu"),
    ] {
        ensure!(
            err.contains(&format!("`{node}` (com.microsoft:{op}): ")),
            "{node} missing: {err}"
        );
    }
    ensure!(!out.exists(), "nothing is written");
    Ok(())
}
