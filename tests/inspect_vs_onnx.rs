//! `dfc inspect --json` agrees with the `onnx` Python package on every fixture: node count, op
//! histogram, initializer and parameter counts, and the inputs' and outputs' names, element
//! types and shapes. The Python side runs in the project's virtual environment (found like
//! ONNX Runtime is: `.venv` next to the repository).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use common::*;

const PY: &str = r#"
import collections, json, sys
import numpy as np
import onnx

def dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        w = d.WhichOneof("value")
        out.append(d.dim_value if w == "dim_value" else d.dim_param if w == "dim_param" else None)
    return out

def io(vis):
    return [{"name": v.name, "elem_type": v.type.tensor_type.elem_type, "shape": dims(v)} for v in vis]

res = {}
for path in sys.argv[1:]:
    g = onnx.load(path, load_external_data=False).graph
    res[path] = {
        "nodes": len(g.node),
        "ops": dict(collections.Counter(n.op_type for n in g.node)),
        "initializers": len(g.initializer),
        "parameters": int(sum(int(np.prod(t.dims)) for t in g.initializer)),
        "inputs": io(g.input),
        "outputs": io(g.output),
    }
print(json.dumps(res))
"#;

/// The fields of an input/output entry that Python also reports.
fn io_view(list: &Value) -> Result<Vec<Value>> {
    list.as_array()
        .context("not a list")?
        .iter()
        .map(|e| {
            Ok(serde_json::json!({
                "name": e.get("name").context("no name")?,
                "elem_type": e.get("elem_type").context("no elem_type")?,
                "shape": e.get("shape").context("no shape")?,
            }))
        })
        .collect()
}

#[test]
fn inspect_counts_match_the_onnx_package() -> Result<()> {
    let Some(python) = dfc::runtime::ort_env::find_venv_python() else {
        bail!(
            "no Python virtual environment with the `onnx` package was found; create it with\n    {}",
            dfc::runtime::INSTALL_HINT
        );
    };
    let fixtures = fixtures()?;
    let out = Command::new(&python)
        .arg("-c")
        .arg(PY)
        .args(fixtures.iter().map(|f| &f.model))
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        out.status.success(),
        "the onnx reference script failed (is `onnx` installed? {}):\n{}",
        dfc::runtime::INSTALL_HINT,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout)?;

    for fx in &fixtures {
        let key = fx.model.to_string_lossy().to_string();
        let want = expected.get(&key).context("python skipped a fixture")?;
        let o = dfc(&[
            std::ffi::OsStr::new("inspect"),
            fx.model.as_os_str(),
            std::ffi::OsStr::new("--json"),
        ])?;
        ensure!(
            o.status.success(),
            "dfc inspect {} failed: {}",
            fx.name,
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Value = serde_json::from_slice(&o.stdout)
            .with_context(|| format!("dfc inspect --json {} is not one JSON object", fx.name))?;
        for key in ["nodes", "ops", "initializers", "parameters"] {
            ensure!(
                got.get(key) == want.get(key),
                "{}: `{key}` differs: dfc {:?}, onnx {:?}",
                fx.name,
                got.get(key),
                want.get(key)
            );
        }
        for key in ["inputs", "outputs"] {
            let g = io_view(got.get(key).context("missing key")?)?;
            let w = io_view(want.get(key).context("missing key")?)?;
            ensure!(
                g == w,
                "{}: `{key}` differs:\n dfc  {g:?}\n onnx {w:?}",
                fx.name
            );
        }
        for key in [
            "opsets",
            "external_data",
            "convs_kernel_gt1",
            "group_norms",
            "self_attentions",
            "cross_attentions",
        ] {
            ensure!(
                got.get(key).is_some(),
                "{}: no `{key}` in the JSON",
                fx.name
            );
        }
        eprintln!("{}: inspect agrees with onnx", fx.name);
    }
    Ok(())
}

/// The structural counts on the fixtures, whose architectures are known: the SD1.5-style UNet
/// has 7 transformer blocks (self + cross each), SDXL-style 11, the VAE decoder one mid-block
/// self-attention and no cross-attention.
#[test]
fn inspect_recognizes_attention_and_group_norm() -> Result<()> {
    for fx in fixtures()? {
        let r = dfc::commands::inspect::inspect_file(&fx.model)?;
        let softmax = r.ops.get("Softmax").copied().unwrap_or(0);
        ensure!(
            r.self_attentions + r.cross_attentions == softmax && r.other_attentions == 0,
            "{}: {} self + {} cross (+{} other) attentions for {softmax} Softmax nodes",
            fx.name,
            r.self_attentions,
            r.cross_attentions,
            r.other_attentions
        );
        let norms = r.ops.get("GroupNormalization").copied().unwrap_or(0)
            + r.ops.get("InstanceNormalization").copied().unwrap_or(0);
        ensure!(
            r.group_norms == norms,
            "{}: {} group norms recognized, {norms} normalization nodes",
            fx.name,
            r.group_norms
        );
        ensure!(
            r.convs_kernel_gt1 > 0,
            "{}: no 3x3 convolution found",
            fx.name
        );
        if fx.name.starts_with("vae") {
            ensure!(
                r.cross_attentions == 0 && r.self_attentions == 1,
                "{}",
                fx.name
            );
        } else {
            ensure!(
                r.self_attentions == r.cross_attentions && r.self_attentions > 0,
                "{}: {} self vs {} cross",
                fx.name,
                r.self_attentions,
                r.cross_attentions
            );
        }
    }
    Ok(())
}
