//! Malformed and hostile models through the `dfc` binary: each ends with exit code 1, a
//! message on stderr naming the cause, no panic, and no output file.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use dfc::ir::DataType;
use dfc::onnx::proto::{GraphProto, ModelProto, NodeProto, StringStringEntryProto, ValueInfoProto};
use prost::Message;

use common::*;

/// Runs `dfc specialize MODEL -o OUT` and `dfc inspect MODEL`; both must fail cleanly with a
/// message containing every string of `causes` (case-insensitive).
fn expect_clean_failure(case: &str, model: &Path, causes: &[&str]) -> Result<()> {
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("out.onnx");
    let runs = [
        vec![
            OsStr::new("specialize"),
            model.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
        ],
        vec![OsStr::new("inspect"), model.as_os_str()],
    ];
    for args in runs {
        let o = dfc(&args)?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        let cmd = args[0].to_string_lossy();
        ensure!(
            o.status.code() == Some(1),
            "{case}: dfc {cmd} exited with {:?} (want 1); stderr:\n{stderr}",
            o.status.code()
        );
        ensure!(
            !stderr.contains("panicked"),
            "{case}: dfc {cmd} panicked:\n{stderr}"
        );
        let lower = stderr.to_lowercase();
        for cause in causes {
            ensure!(
                lower.contains(&cause.to_lowercase()),
                "{case}: dfc {cmd}: stderr does not mention `{cause}`:\n{stderr}"
            );
        }
        ensure!(!out.exists(), "{case}: an output file was written");
        let leftovers: Vec<PathBuf> = std::fs::read_dir(out_dir.path())?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(
            leftovers.is_empty(),
            "{case}: files left behind: {leftovers:?}"
        );
        eprintln!("{case}: dfc {cmd}: {}", stderr.lines().next().unwrap_or(""));
    }
    Ok(())
}

fn fixture(rel: &str) -> PathBuf {
    root().join("models").join(rel)
}

#[test]
fn truncated_random_empty_directory_missing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bytes = std::fs::read(fixture("sd15_tiny.onnx"))?;

    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    expect_clean_failure("truncated", &truncated, &["not a valid ONNX model"])?;

    let random = dir.path().join("random.onnx");
    std::fs::write(&random, Rng::new(42).bytes(4096))?;
    expect_clean_failure("random bytes", &random, &["not a valid ONNX model"])?;

    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"")?;
    expect_clean_failure("empty file", &empty, &["empty"])?;

    let folder = dir.path().join("folder.onnx");
    std::fs::create_dir(&folder)?;
    expect_clean_failure("directory", &folder, &["directory"])?;

    let missing = dir.path().join("missing.onnx");
    expect_clean_failure("missing file", &missing, &["missing.onnx", "no such file"])?;
    Ok(())
}

/// Copies the external-data fixture into `dir/inner/` with the location of its first external
/// tensor replaced by `location` (and the offset by `offset` when given).
fn external_variant(dir: &Path, location: &str, offset: Option<u64>) -> Result<PathBuf> {
    let inner = dir.join("inner");
    std::fs::create_dir_all(&inner)?;
    std::fs::copy(
        fixture("sd15_tiny_external/model.onnx.data"),
        inner.join("model.onnx.data"),
    )?;
    let mut proto = dfc::onnx::load(&fixture("sd15_tiny_external/model.onnx"))?.proto;
    let graph = proto.graph.as_mut().context("no graph")?;
    let tensor = graph
        .initializer
        .iter_mut()
        .find(|t| !t.external_data.is_empty())
        .context("the fixture has no external tensor")?;
    for entry in &mut tensor.external_data {
        match entry.key() {
            "location" => entry.value = Some(location.to_string()),
            "offset" => {
                if let Some(o) = offset {
                    entry.value = Some(o.to_string());
                }
            }
            _ => {}
        }
    }
    if offset.is_some() && !tensor.external_data.iter().any(|e| e.key() == "offset") {
        tensor.external_data.push(StringStringEntryProto {
            key: Some("offset".into()),
            value: offset.map(|o| o.to_string()),
        });
    }
    let path = inner.join("model.onnx");
    std::fs::write(&path, proto.encode_to_vec())?;
    Ok(path)
}

#[test]
fn hostile_external_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let outside = dir.path().join("outside.bin");
    std::fs::write(&outside, vec![0u8; 1 << 20])?;

    let m = external_variant(dir.path(), "nope.bin", None)?;
    expect_clean_failure("missing external file", &m, &["nope.bin", "missing"])?;

    let m = external_variant(dir.path(), "../outside.bin", None)?;
    expect_clean_failure("`..` location", &m, &["../outside.bin", "escapes"])?;

    let m = external_variant(dir.path(), "/etc/passwd", None)?;
    expect_clean_failure("absolute location", &m, &["/etc/passwd", "absolute"])?;

    std::os::unix::fs::symlink(&outside, dir.path().join("inner/link.bin"))?;
    let m = external_variant(dir.path(), "link.bin", None)?;
    expect_clean_failure("symlink to outside", &m, &["link.bin", "symbolic link"])?;

    let size = std::fs::metadata(fixture("sd15_tiny_external/model.onnx.data"))?.len();
    let m = external_variant(dir.path(), "model.onnx.data", Some(size + 100))?;
    expect_clean_failure("out-of-range offset", &m, &["exceeds"])?;
    Ok(())
}

/// A node named `{op}_0` reading `input` and writing `output`.
fn node(op: &str, input: &str, output: &str) -> NodeProto {
    NodeProto::new(op, &format!("{op}_0"), &[input], &[output])
}

#[test]
fn unknown_ops_are_all_listed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let f = DataType::FLOAT;
    let graph = GraphProto::new(
        "unknown_ops",
        vec![node("FooOp", "x", "y"), node("BarOp", "y", "z")],
        vec![ValueInfoProto::tensor("x", f, &["1", "4", "8", "8"])],
        vec![ValueInfoProto::tensor("z", f, &["1", "4", "8", "8"])],
        vec![],
    );
    let model = ModelProto::new(graph, 17);
    let path = dir.path().join("unknown.onnx");
    std::fs::write(&path, model.encode_to_vec())?;

    let out = dir.path().join("out.onnx");
    let o = dfc(&[
        OsStr::new("specialize"),
        path.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ])?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(1),
        "exit {:?}; stderr:\n{stderr}",
        o.status.code()
    );
    ensure!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    ensure!(
        stderr.contains("FooOp") && stderr.contains("BarOp"),
        "the error does not list both unknown ops:\n{stderr}"
    );
    ensure!(!out.exists(), "an output file was written");
    eprintln!("unknown ops: {}", stderr.trim());

    // `inspect` still describes the model, and names what the compiler lacks.
    let o = dfc(&[
        OsStr::new("inspect"),
        path.as_os_str(),
        OsStr::new("--json"),
    ])?;
    ensure!(
        o.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let unsupported = &report["unsupported_ops"];
    ensure!(
        unsupported["FooOp"] == 1 && unsupported["BarOp"] == 1,
        "inspect's unsupported_ops: {unsupported}"
    );
    Ok(())
}

#[test]
fn bad_arguments() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.onnx");
    let model = fixture("sd15_tiny_dynamic.onnx");
    let cases: [(&str, Vec<&OsStr>, &str); 3] = [
        (
            "image size not divisible by the VAE factor",
            vec![OsStr::new("--image-height"), OsStr::new("100")],
            "divisible",
        ),
        (
            "malformed --dim",
            vec![OsStr::new("--dim"), OsStr::new("sequence")],
            "NAME=VALUE",
        ),
        ("missing output folder", vec![], "does not exist"),
    ];
    for (case, extra, cause) in cases {
        let out_path = if case == "missing output folder" {
            dir.path().join("no/such/folder/out.onnx")
        } else {
            out.clone()
        };
        let mut args = vec![OsStr::new("specialize"), model.as_os_str()];
        args.extend(extra);
        args.extend([OsStr::new("-o"), out_path.as_os_str()]);
        let o = dfc(&args)?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        ensure!(
            o.status.code() == Some(1),
            "{case}: exit {:?}; stderr:\n{stderr}",
            o.status.code()
        );
        ensure!(stderr.contains(cause), "{case}: no `{cause}` in:\n{stderr}");
        ensure!(!stderr.contains("panicked"), "{case}: panicked:\n{stderr}");
        ensure!(!out_path.exists(), "{case}: output written");
    }
    Ok(())
}
