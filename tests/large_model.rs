//! A model whose weights exceed protobuf's 2 GiB limit, as such models always come: external
//! data. The weights file is sparse (no disk blocks) and dfc must never read it to specialize:
//! the test checks that the process's peak resident memory stays far below the weights' size.

mod common;

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use dfc::commands::specialize::specialize_file;
use dfc::onnx::proto::{
    AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_proto::DataLocation, tensor_shape_proto, type_proto,
};
use dfc::passes::specialize::SpecializeOptions;
use prost::Message;

const CHANNELS: i64 = 16384;

fn value_info(name: &str, dims: &[&str]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d.parse::<i64>() {
                Ok(v) => tensor_shape_proto::dimension::Value::DimValue(v),
                Err(_) => tensor_shape_proto::dimension::Value::DimParam(d.to_string()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

/// x[batch, C, h, w] → Conv 3×3 (weights [C, C, 3, 3] f32 = 9 GiB, external) → y.
fn write_model(dir: &Path) -> Result<u64> {
    let weight_bytes = (CHANNELS * CHANNELS * 9 * 4) as u64;
    let data = fs::File::create(dir.join("weights.bin"))?;
    data.set_len(weight_bytes)?;
    let weight = TensorProto {
        dims: vec![CHANNELS, CHANNELS, 3, 3],
        data_type: Some(1),
        name: Some("w".into()),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            entry("location", "weights.bin"),
            entry("offset", "0"),
            entry("length", &weight_bytes.to_string()),
        ],
        ..Default::default()
    };
    let conv = NodeProto {
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        name: Some("conv".into()),
        op_type: Some("Conv".into()),
        attribute: vec![AttributeProto {
            name: Some("pads".into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: vec![1, 1, 1, 1],
            ..Default::default()
        }],
        ..Default::default()
    };
    let c = CHANNELS.to_string();
    let model = ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            node: vec![conv],
            name: Some("large".into()),
            initializer: vec![weight],
            input: vec![value_info("x", &["batch", &c, "height", "width"])],
            output: vec![value_info("y", &["batch", &c, "height", "width"])],
            ..Default::default()
        }),
        ..Default::default()
    };
    fs::write(dir.join("model.onnx"), model.encode_to_vec())?;
    Ok(weight_bytes)
}

/// Peak resident set size of this process, in bytes (Linux `VmHWM`).
fn peak_rss() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kib * 1024)
}

#[test]
fn weights_over_two_gib_are_never_read() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    fs::create_dir_all(&src)?;
    fs::create_dir_all(&out)?;
    let weight_bytes = write_model(&src)?;
    ensure!(weight_bytes > 2 << 30, "the fixture must exceed 2 GiB");

    let options = SpecializeOptions {
        batch: Some(1),
        height: Some(64),
        width: Some(64),
        dims: Vec::new(),
    };
    let summary = specialize_file(&src.join("model.onnx"), &out.join("model.onnx"), &options)?;
    ensure!(
        summary.shared_files.len() == 1,
        "the weights file is shared into the output folder"
    );

    let written = dfc::onnx::load(&out.join("model.onnx"))?;
    let graph = written.proto.graph.context("no graph")?;
    let w = graph
        .initializer
        .iter()
        .find(|t| t.name() == "w")
        .context("weight kept")?;
    ensure!(w.data_location == Some(DataLocation::External as i32) && w.raw_data.is_none());
    ensure!(
        graph.output[0] == value_info("y", &["1", &CHANNELS.to_string(), "64", "64"]),
        "output typed statically: {:?}",
        graph.output[0]
    );
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        fs::metadata(src.join("weights.bin"))?,
        fs::metadata(out.join("weights.bin"))?,
    );
    ensure!(a.ino() == b.ino(), "weights are hard-linked, not copied");

    let peak = peak_rss()?;
    ensure!(
        peak < weight_bytes / 16,
        "peak RSS {peak} bytes: the {weight_bytes}-byte weights must not be read"
    );
    Ok(())
}
