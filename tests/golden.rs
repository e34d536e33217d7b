//! Golden text dumps of `models/sd15_tiny.onnx` compiled for 2 GPUs, one snapshot per pass of
//! the partitioning half of the `compile` pipeline: `canonicalize` (GroupNorm constructs become
//! one internal node), `partition` (the graph plus every node's layouts and needs) and
//! `localize` (the band-local graph with its exchanges).
//!
//! Bless after an intended change, in one command:
//! `INSTA_UPDATE=always cargo test --test golden` (or `cargo insta accept` with cargo-insta).

mod common;

use anyhow::{Context, Result};
use dfc::passes::driver::{CompileOptions, compile};
use dfc::plan::Mode;

use common::*;

fn dump_after(pass: &str) -> Result<String> {
    let opts = CompileOptions {
        bands: None,
        model: root().join("models/sd15_tiny.onnx"),
        output: std::env::temp_dir().join("dfc-golden-unused"),
        gpus: 2,
        sizes: Default::default(),
        mode: Mode::Sync,
        warmup: 4,
        gn: Default::default(),
        split_batch: false,
        dump_after: Some(pass.to_string()),
    };
    let report = compile(&opts)?;
    Ok(report.dump.context("no dump")?.1)
}

#[test]
fn canonicalize() -> Result<()> {
    insta::assert_snapshot!("sd15_tiny_n2_canonicalize", dump_after("canonicalize")?);
    Ok(())
}

#[test]
fn partition() -> Result<()> {
    insta::assert_snapshot!("sd15_tiny_n2_partition", dump_after("partition")?);
    Ok(())
}

#[test]
fn localize() -> Result<()> {
    insta::assert_snapshot!("sd15_tiny_n2_localize", dump_after("insert-exchanges")?);
    Ok(())
}
