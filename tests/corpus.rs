//! The corpus of export forms beyond the diffusers fixtures (`models/corpus/`). Written by
//! `tools/export_corpus.py`, node by node: an LDM-style UNet with Einsum attention on
//! `(b h) n d` tensors, the same UNet with 4-D heads Einsums and GroupNormalization-21, and one
//! with the ONNX `Attention` operator and RMSNormalization. Written by
//! `tools/export_torch_corpus.py`, by torch's exporters: the tiny SD1.5 UNet through the
//! TorchScript exporter at opset 14 and at opset 17 with dynamic axes and no constant folding,
//! through the dynamo exporter at opset 23 (`Attention`-23), folded by polygraphy, in fp16
//! with fp32 inputs and outputs, through ONNX Runtime's transformer optimizer in fp16
//! (`com.microsoft` `Gelu` and `SkipLayerNormalization`, Linear layers as `Reshape → Gemm →
//! Reshape`), simplified by onnxsim (the same Linear form), and dynamic with its attentions as
//! `com.microsoft` `MultiHeadAttention` through the optimizer with its `GroupNorm` and
//! `SkipGroupNorm` fusions (reference outputs from the unfused export: ONNX Runtime's CPU
//! provider has no GroupNorm kernel, while dfc's rank graphs hold none); and an LDM UNet
//! written in torch with Einsum attention.
//!
//! On each: a `sync` plan computes what the model computes at N = 2 and 4 (max |plan −
//! reference| / max |reference| ≤ 1e-4, or 1e-2 for models with fp16 weights),
//! `--split-batch` splits the batch of the CFG pair onto two groups with the same result, and
//! `dfc inspect` counts the attentions the model holds. A graph of ONNX Runtime's fused
//! operators dfc has no row for is refused in one error that lists every such node.

mod common;

use anyhow::{Result, bail, ensure};
use dfc::ir::{Dim, Graph};
use dfc::onnx::proto::tensor_proto::DataType;
use dfc::passes::specialize::SpecializeOptions;
use dfc::runtime::read_npz;

use common::*;

/// Binds the symbolic input dims of a dynamic export to the sizes of its reference inputs: the
/// spatial input's batch symbol as `batch` (which `--split-batch` reads as the full batch), the
/// others by name.
fn sizes_of_reference(f: &Fixture) -> Result<SpecializeOptions> {
    let graph = Graph::from_model(dfc::onnx::load(&f.model)?.proto)?;
    let mut dims = symbol_sizes(&graph, &read_npz(&f.io)?)?;
    let batch_symbol = graph.spatial_input().and_then(|v| {
        match graph.value(v).tensor_type()?.shape.as_ref()?.first()? {
            Dim::Symbol(s) => Some(s.clone()),
            _ => None,
        }
    });
    let batch = batch_symbol
        .and_then(|s| dims.iter().position(|(n, _)| *n == s))
        .map(|i| dims.remove(i).1);
    Ok(SpecializeOptions {
        batch,
        dims,
        ..Default::default()
    })
}

/// Whether the model computes in fp16: some initializer is float16 (its inputs and outputs
/// may still be fp32, with Casts at the boundary).
fn has_fp16_weights(f: &Fixture) -> Result<bool> {
    let model = dfc::onnx::load(&f.model)?;
    Ok(model.proto.graph.iter().any(|g| {
        g.initializer
            .iter()
            .any(|t| t.data_type == Some(DataType::Float16 as i32))
    }))
}

/// The (self, cross, other) attentions each corpus model holds, from how it was built.
fn expected_attentions(name: &str) -> Result<(u64, u64, u64)> {
    Ok(match name {
        // export_corpus.py: a transformer at each of two levels, one self- and one
        // cross-attention each.
        "ldm_einsum_b2" | "sd_heads_einsum_b2" | "attention_op_b2" => (2, 2, 0),
        // The tiny SD1.5 config: transformers in down blocks 0 and 1, the mid block, and
        // two in each of up blocks 1 and 2; the torch LDM UNet: input blocks 1 and 3, the
        // middle block and all four output blocks. One self- and one cross-attention each.
        // ONNX Runtime's attention fusion does not match the SD1.5 export, so its optimized
        // form keeps them as MatMul/Softmax/MatMul, as onnxsim's does;
        // torch_ort_fused_gn_mha has them as MultiHeadAttention (keys from the normalized
        // tokens for self-attention, from encoder_hidden_states for cross-attention).
        "torch_legacy_op14_b2"
        | "torch_legacy_op17_dyn_nofold"
        | "torch_dynamo_b2"
        | "torch_simplified_b2"
        | "torch_fp16_fp32io_b2"
        | "torch_ort_fp16"
        | "torch_onnxsim_b2"
        | "torch_ort_fused_gn_mha"
        | "torch_ldm_einsum_b2" => (7, 7, 0),
        _ => bail!("corpus model {name}: add the attentions it holds to expected_attentions"),
    })
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
        let tol = if has_fp16_weights(f)? { 1e-2 } else { 1e-4 };
        for (n, split) in [(2, false), (4, false), (4, true)] {
            let what = if split { " --split-batch" } else { "" };
            let e = sync_plan_error(f, n, sizes_of_reference(f)?, split)?;
            lines.push(format!("{} n={n}{what}: max rel error {e:.2e}", f.name));
            ensure!(e <= tol, "{} n={n}{what}: error {e} above {tol}", f.name);
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
        let want = expected_attentions(&f.name)?;
        ensure!(
            (
                count("self_attentions"),
                count("cross_attentions"),
                count("other_attentions")
            ) == want,
            "{}: expected {want:?} attentions: {report}",
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
    let run = dfc_compile(&model, 2, &out, &[])?;
    let err = String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.code() == Some(1), "exit {:?}: {err}", run.status);
    ensure!(
        err.contains("3 node(s) are ONNX Runtime fused operators"),
        "{err}"
    );
    for (node, op) in [
        ("/conv_in/NhwcConv", "NhwcConv"),
        ("/attn/BiasAdd", "BiasAdd"),
        ("/ff/BiasSplitGelu", "BiasSplitGelu"),
    ] {
        ensure!(
            err.contains(&format!("`{node}` (com.microsoft:{op}): ")),
            "{node} missing: {err}"
        );
    }
    // Its GroupNorm, SkipGroupNorm and MultiHeadAttention have rows: not listed.
    for op in ["GroupNorm", "SkipGroupNorm", "MultiHeadAttention"] {
        ensure!(
            !err.contains(&format!("(com.microsoft:{op})")),
            "{op} listed: {err}"
        );
    }
    ensure!(!out.exists(), "nothing is written");
    Ok(())
}
