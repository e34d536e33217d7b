//! Round trips and specialization of every fixture in `models/`, checked in ONNX Runtime.
//!
//! - load → IR → model → save decodes field-for-field equal to the source, and runs to the
//!   reference outputs of `<name>.io.npz`;
//! - `specialize` (library and binary) keeps the outputs on the reference inputs;
//! - a dynamic model specialized to another size gives what the dynamic model gives at that
//!   size on the same random inputs.
//!
//! Tolerances: fp32 max abs error ≤ 1e-5; fp16 max abs error ≤ 1e-2 of the reference's range.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use dfc::commands::specialize::specialize_file;
use dfc::ir::Graph;
use dfc::onnx::{self, ModelProto};
use dfc::passes::specialize::SpecializeOptions;
use dfc::runtime::{HostTensor, read_npz};
use prost::Message;

use common::*;

/// Sorted copy of a list by name, for lists whose order the IR does not keep.
fn by_name<T: Clone>(list: &[T], name: impl Fn(&T) -> &str) -> Vec<T> {
    let mut v = list.to_vec();
    v.sort_by(|a, b| name(a).cmp(name(b)));
    v
}

/// Compares two models field by field: everything outside the graph exactly; in the graph,
/// nodes, inputs and outputs in order, initializers and value infos as sets by name.
fn assert_same_model(what: &str, a: &ModelProto, b: &ModelProto) -> Result<()> {
    let (mut a, mut b) = (a.clone(), b.clone());
    let (ga, gb) = (
        a.graph.take().context("no graph")?,
        b.graph.take().context("no graph")?,
    );
    ensure!(a == b, "{what}: model fields outside the graph differ");
    ensure!(ga.node.len() == gb.node.len(), "{what}: node counts differ");
    for (i, (x, y)) in ga.node.iter().zip(&gb.node).enumerate() {
        ensure!(
            x == y,
            "{what}: node {i} ({:?}) differs: {x:?} vs {y:?}",
            x.name
        );
    }
    ensure!(ga.input == gb.input, "{what}: graph inputs differ");
    ensure!(ga.output == gb.output, "{what}: graph outputs differ");
    let init = |g: &onnx::proto::GraphProto| by_name(&g.initializer, |t| t.name());
    ensure!(init(&ga) == init(&gb), "{what}: initializers differ");
    let vi = |g: &onnx::proto::GraphProto| by_name(&g.value_info, |t| t.name());
    ensure!(vi(&ga) == vi(&gb), "{what}: value_info differ");
    let rest = |g: &onnx::proto::GraphProto| {
        let mut g = g.clone();
        g.node.clear();
        g.input.clear();
        g.output.clear();
        g.initializer.clear();
        g.value_info.clear();
        g
    };
    ensure!(
        rest(&ga) == rest(&gb),
        "{what}: other graph fields (name, doc, sparse initializers, annotations) differ"
    );
    Ok(())
}

#[test]
fn roundtrip_every_fixture_is_lossless_and_runs() -> Result<()> {
    require_ort()?;
    for fx in fixtures()? {
        let what = format!("round trip of {}", fx.name);
        let model = onnx::load(&fx.model)?;
        let original = model.proto.clone();
        let rt = Graph::from_model(model.proto.clone())?.to_model()?;
        assert_same_model(&what, &original, &rt)?;

        let dir = tempfile::tempdir()?;
        let out = dir.path().join("model.onnx");
        let graph = rt.graph.as_ref().context("no graph")?;
        onnx::external::share_into(graph, &model.dir, dir.path())?;
        onnx::save(&rt, &out)?;
        let saved = ModelProto::decode(bytes::Bytes::from(std::fs::read(&out)?))?;
        ensure!(
            saved == rt,
            "{what}: the saved file does not decode to what was saved"
        );

        let io = read_npz(&fx.io)?;
        let g = Graph::from_model(original)?;
        let (inputs, reference) = split_io(&g, io);
        let outputs = run(&out, &inputs)?;
        let err = assert_outputs_close(&what, &outputs, &reference)?;
        eprintln!("{what}: ok, max error {err:e}");
    }
    Ok(())
}

/// Options that fix every symbolic dim of `model` to the sizes of `inputs`.
fn options_for(model: &Path, inputs: &[(String, HostTensor)]) -> Result<SpecializeOptions> {
    let g = Graph::from_model(onnx::load(model)?.proto)?;
    let spatial = g
        .inputs
        .iter()
        .map(|&v| g.value(v))
        .find(|v| v.tensor_type().and_then(|t| t.rank()) == Some(4))
        .context("no rank-4 input")?;
    let shape = inputs
        .iter()
        .find(|(n, _)| *n == spatial.name)
        .map(|(_, t)| t.shape().to_vec())
        .context("no data for the spatial input")?;
    Ok(SpecializeOptions {
        batch: Some(shape[0] as i64),
        height: Some(shape[2] as i64),
        width: Some(shape[3] as i64),
        dims: symbol_sizes(&g, inputs)?,
    })
}

#[test]
fn specialize_every_fixture_keeps_outputs() -> Result<()> {
    require_ort()?;
    for fx in fixtures()? {
        let what = format!("specialize {}", fx.name);
        let g = Graph::from_model(onnx::load(&fx.model)?.proto)?;
        let (inputs, reference) = split_io(&g, read_npz(&fx.io)?);
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("specialized.onnx");
        let options = options_for(&fx.model, &inputs)?;
        let summary = specialize_file(&fx.model, &out, &options).context(what.clone())?;
        ensure!(
            all_io_static(&out)?,
            "{what}: inputs/outputs are not all static"
        );
        let outputs = run(&out, &inputs)?;
        let err = assert_outputs_close(&what, &outputs, &reference)?;
        eprintln!(
            "{what}: ok, {} -> {} nodes, max error {err:e}",
            summary.nodes_before, summary.nodes_after
        );
    }
    Ok(())
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn specialize_through_the_binary() -> Result<()> {
    require_ort()?;
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &[&str]); 3] = [
        (
            "sd15_tiny_dynamic.onnx",
            &[
                "--batch",
                "2",
                "--height",
                "32",
                "--width",
                "32",
                "--dim",
                "sequence=8",
            ],
        ),
        (
            "sdxl_tiny_dynamic.onnx",
            &[
                "--batch",
                "2",
                "--image-height",
                "256",
                "--image-width",
                "256",
                "--dim",
                "sequence=8",
            ],
        ),
        ("sd15_tiny_external/model.onnx", &[]),
    ];
    for (i, (model, extra)) in cases.iter().enumerate() {
        let src = root().join("models").join(model);
        if !src.is_file() {
            bail!("fixture {} is missing", src.display());
        }
        let io = match model.strip_suffix(".onnx") {
            Some(stem) => root().join("models").join(format!("{stem}.io.npz")),
            None => unreachable!(),
        };
        let out = dir.path().join(format!("out{i}.onnx"));
        let mut args: Vec<&OsStr> = vec![os("specialize"), src.as_os_str()];
        args.extend(extra.iter().map(|s| os(s)));
        args.extend([os("-o"), out.as_os_str()]);
        let o = dfc(&args)?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        ensure!(
            o.status.code() == Some(0),
            "dfc specialize {model} failed ({:?}): {stderr}",
            o.status.code()
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        ensure!(stdout.contains("nodes"), "no summary line: {stdout}");
        let g = Graph::from_model(onnx::load(&src)?.proto)?;
        let (inputs, reference) = split_io(&g, read_npz(&io)?);
        let outputs = run(&out, &inputs)?;
        let err =
            assert_outputs_close(&format!("binary specialize {model}"), &outputs, &reference)?;
        eprintln!("binary specialize {model}: ok, max error {err:e}");
    }
    // The external-data model's weights are shared next to the output, not rewritten.
    let data = dir.path().join("model.onnx.data");
    ensure!(
        data.is_file(),
        "external data was not placed next to the output"
    );
    Ok(())
}

#[test]
fn specialize_dynamic_fixtures_at_another_size() -> Result<()> {
    require_ort()?;
    let mut rng = Rng::new(0x5eed);
    let mut tried = 0;
    for fx in fixtures()? {
        let g = Graph::from_model(onnx::load(&fx.model)?.proto)?;
        let dynamic = g.inputs.iter().any(|&v| {
            g.value(v)
                .tensor_type()
                .is_some_and(|t| t.static_dims().is_none())
        });
        if !dynamic {
            continue;
        }
        tried += 1;
        let what = format!("{} at batch 1, 16x24 latent, sequence 5", fx.name);
        let (reference_inputs, _) = split_io(&g, read_npz(&fx.io)?);
        // New inputs: batch 1, latent 16×24, sequence 5; the timestep keeps its shape and value.
        let mut inputs = Vec::new();
        for (name, t) in &reference_inputs {
            let v = g.value(g.value_by_name(name).context("input")?);
            let shape = v
                .tensor_type()
                .and_then(|t| t.shape.clone())
                .context("input without shape")?;
            if shape.iter().all(|d| d.fixed().is_some()) {
                inputs.push((name.clone(), t.clone()));
                continue;
            }
            let mut dims = t.shape().to_vec();
            for (i, d) in shape.iter().enumerate() {
                if let dfc::ir::Dim::Symbol(s) = d {
                    dims[i] = match s.as_str() {
                        "batch" => 1,
                        "height" => 16,
                        "width" => 24,
                        "sequence" => 5,
                        other => bail!("{}: unexpected symbolic dim `{other}`", fx.name),
                    };
                }
            }
            inputs.push((
                name.clone(),
                dfc::runtime::rng::tensor_like(&mut rng, t, &dims),
            ));
        }
        let expected = run(&fx.model, &inputs)?;
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("specialized.onnx");
        let options = options_for(&fx.model, &inputs)?;
        ensure!(
            options.batch == Some(1) && options.height == Some(16) && options.width == Some(24),
            "{what}: unexpected sizes {:?} {:?} {:?}",
            options.batch,
            options.height,
            options.width
        );
        specialize_file(&fx.model, &out, &options).context(what.clone())?;
        ensure!(
            all_io_static(&out)?,
            "{what}: inputs/outputs are not all static"
        );
        let outputs = run(&out, &inputs)?;
        let err = assert_outputs_close(&what, &outputs, &expected)?;
        eprintln!("{what}: ok, max error {err:e}");
    }
    ensure!(
        tried >= 2,
        "expected at least two dynamic fixtures, found {tried}"
    );
    Ok(())
}

#[test]
fn eval_through_the_binary_writes_the_reference_outputs() -> Result<()> {
    require_ort()?;
    let dir = tempfile::tempdir()?;
    for name in ["sd15_tiny_fp16", "vae_decoder_tiny"] {
        let model = root().join(format!("models/{name}.onnx"));
        let io = root().join(format!("models/{name}.io.npz"));
        let out = dir.path().join(format!("{name}.out.npz"));
        let o = dfc(&[
            os("eval"),
            model.as_os_str(),
            os("--inputs"),
            io.as_os_str(),
            os("--reference"),
            io.as_os_str(),
            os("--threads"),
            os("1"),
            os("-o"),
            out.as_os_str(),
        ])?;
        ensure!(
            o.status.success(),
            "dfc eval {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let g = Graph::from_model(onnx::load(&model)?.proto)?;
        let (_, reference) = split_io(&g, read_npz(&io)?);
        assert_outputs_close(&format!("dfc eval {name}"), &read_npz(&out)?, &reference)?;
    }
    Ok(())
}
