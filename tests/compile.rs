//! `dfc compile` on every fixture UNet for 1, 2, 4 and 8 GPUs: the rank graphs load, verify
//! and pass `onnx.checker`; the exchange volume in `plan.json` equals an analytic count made
//! here from the specialized original graph (not by the compiler's code); refusals list every
//! offending node; indivisible GPU counts list the ones that work; writes are atomic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use dfc::ir::{DataType, Graph, NodeId, ValueId};
use dfc::passes::driver::{CompileOptions, compile};
use dfc::passes::specialize::{SpecializeOptions, specialize};
use dfc::plan::{Mode, Plan};

use common::*;

const COUNTS: [usize; 4] = [1, 2, 4, 8];

/// Every fixture UNet, with the sizes it is compiled at.
fn unets() -> Result<Vec<(String, PathBuf, SpecializeOptions)>> {
    let mut out = Vec::new();
    for f in fixtures()? {
        if !(f.name.starts_with("sd15_tiny") || f.name.starts_with("sdxl_tiny")) {
            continue;
        }
        let sizes = if f.name.contains("dynamic") {
            SpecializeOptions {
                batch: Some(2),
                height: Some(32),
                width: Some(32),
                dims: vec![("sequence".into(), 8)],
            }
        } else {
            SpecializeOptions::default()
        };
        out.push((f.name, f.model, sizes));
    }
    ensure!(
        out.len() >= 7,
        "expected the 7 UNet fixtures, found {}",
        out.len()
    );
    Ok(out)
}

fn options(model: &Path, out: &Path, n: usize, sizes: &SpecializeOptions) -> CompileOptions {
    CompileOptions {
        bands: None,
        model: model.to_path_buf(),
        output: out.to_path_buf(),
        gpus: n,
        sizes: sizes.clone(),
        mode: Mode::Sync,
        warmup: 4,
        gn: Default::default(),
        split_batch: false,
        dump_after: None,
    }
}

fn elem_bytes(g: &Graph, v: ValueId) -> u64 {
    g.value(v)
        .tensor_type()
        .and_then(|t| t.elem.bits())
        .map(|b| b as u64 / 8)
        .unwrap_or(4)
}

fn dims(g: &Graph, v: Option<ValueId>) -> Vec<i64> {
    v.and_then(|v| g.value(v).tensor_type()?.static_dims())
        .unwrap_or_default()
}

fn attr_ints(g: &Graph, n: NodeId, name: &str) -> Vec<i64> {
    g.node(n)
        .attr_ints(name)
        .map(<[i64]>::to_vec)
        .unwrap_or_default()
}

/// Bytes each of `n` bands receives per step, counted from the full graph: halo rows of every
/// conv with a kernel taller than one row, the statistics of every GroupNorm, and the keys and
/// values of every self-attention (a softmax over as many keys as queries).
fn analytic_bytes(g: &Graph, n: usize) -> Vec<u64> {
    let mut per_band = vec![0u64; n];
    if n == 1 {
        return per_band;
    }
    let n64 = n as u64;
    for id in g.topo_order().expect("acyclic") {
        let node = g.node(id);
        match node.op_type.as_str() {
            "Conv" => {
                let w = dims(g, node.input(1));
                let x = dims(g, node.input(0));
                let (k, s) = (
                    w[2],
                    attr_ints(g, id, "strides").first().copied().unwrap_or(1),
                );
                let d = attr_ints(g, id, "dilations").first().copied().unwrap_or(1);
                let pad_top = attr_ints(g, id, "pads").first().copied().unwrap_or(0);
                if k <= 1 {
                    continue;
                }
                let above = pad_top as u64;
                let below = ((k - 1) * d - pad_top - (s - 1)).max(0) as u64;
                // One row of the band: B·C·W elements.
                let row = (x[0] * x[1] * x[3]) as u64 * elem_bytes(g, node.input(0).unwrap());
                for (band, b) in per_band.iter_mut().enumerate() {
                    if band > 0 {
                        *b += above * row;
                    }
                    if band + 1 < n {
                        *b += below * row;
                    }
                }
            }
            "InstanceNormalization" => {
                // torch's GroupNorm pattern: the input is [B, G, C/G·H·W].
                let x = dims(g, node.input(0));
                for b in per_band.iter_mut() {
                    *b += (n64 - 1) * (x[0] * x[1]) as u64 * 2 * 4;
                }
            }
            "GroupNormalization" => {
                let x = dims(g, node.input(0));
                let groups = node.attr_i("num_groups", 0) as u64;
                for b in per_band.iter_mut() {
                    *b += (n64 - 1) * x[0] as u64 * groups * 2 * 4;
                }
            }
            "Softmax" => {
                let p = dims(g, node.input(0));
                let r = p.len();
                if r < 2 || p[r - 1] != p[r - 2] {
                    continue; // Cross-attention: keys from the text.
                }
                // P·V reads V of the same size as K.
                let out = node.output(0).unwrap();
                let (pv, port) = g.value(out).uses()[0];
                let v = g.node(pv).input(1 - port);
                let kv: u64 = dims(g, v).iter().map(|&x| x as u64).product::<u64>()
                    * elem_bytes(g, v.unwrap());
                for b in per_band.iter_mut() {
                    *b += 2 * kv / n64 * (n64 - 1);
                }
            }
            _ => {}
        }
    }
    per_band
}

/// Runs `onnx.checker.check_model` on every model (loaded in memory, external data not read).
fn onnx_check(paths: &[PathBuf]) -> Result<()> {
    let Some(python) = dfc::runtime::ort_env::find_venv_python() else {
        println!("skipped onnx.checker: no project .venv with the onnx package");
        return Ok(());
    };
    const PY: &str = r#"
import os, sys, onnx
for p in sys.argv[1:]:
    m = onnx.load(p, load_external_data=False)
    # External data resolves against the working folder: the plan folder.
    os.chdir(os.path.dirname(os.path.abspath(p)))
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        # The checker refuses external data files with several hard links; a plan shares the
        # source's external data by hard link on purpose (ONNX Runtime accepts it). Check the
        # rest of the model without external references.
        if "hard link" not in str(e):
            raise
        for t in m.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = bytes(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * max(1, __import__("math").prod(t.dims)))
        onnx.checker.check_model(m)
print("ok", len(sys.argv) - 1)
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(PY)
        .args(paths)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        out.status.success(),
        "onnx.checker failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn every_fixture_compiles_for_1_2_4_8_gpus_with_the_analytic_exchange_volume() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut rank_files = Vec::new();
    for (name, model, sizes) in unets()? {
        let m = dfc::onnx::load(&model)?;
        let store = m.external_store();
        let mut full = Graph::from_model(m.proto)?;
        specialize(&mut full, &store, &sizes)?;
        for n in COUNTS {
            let out = tmp.path().join(format!("{name}_{n}"));
            let report = compile(&options(&model, &out, n, &sizes))
                .with_context(|| format!("{name} n={n}"))?;
            let plan = report.plan.context("no plan")?;
            let loaded = Plan::load(&out)?;
            ensure!(
                loaded == plan,
                "{name} n={n}: plan.json differs from the report"
            );
            let want = analytic_bytes(&full, n);
            ensure!(
                plan.bytes_per_step == want,
                "{name} n={n}: plan says {:?} bytes per step, the analytic count {:?}",
                plan.bytes_per_step,
                want
            );
            let from_slots: Vec<u64> = (0..n)
                .map(|r| plan.exchanges.iter().map(|e| e.bytes_received[r]).sum())
                .collect();
            ensure!(
                from_slots == plan.bytes_per_step,
                "{name} n={n}: totals disagree"
            );
            // Only the first convolution's halo of the latent itself is exchanged fresh always.
            let fresh: Vec<&str> = plan
                .exchanges
                .iter()
                .filter(|e| e.always_fresh)
                .map(|e| e.for_node.as_str())
                .collect();
            let want_fresh: &[&str] = if n == 1 { &[] } else { &["/unet/conv_in/Conv"] };
            ensure!(
                fresh == want_fresh,
                "{name} n={n}: always-fresh exchanges {fresh:?}, want {want_fresh:?}"
            );
            for r in &plan.ranks {
                let path = out.join(&r.file);
                let rm = dfc::onnx::load(&path).with_context(|| path.display().to_string())?;
                let g = Graph::from_model(rm.proto)?;
                g.verify()?;
                let exchange_ops = g
                    .node_ids()
                    .filter(|&id| g.node(id).domain == "dfc")
                    .count();
                ensure!(
                    exchange_ops == plan.exchanges.len(),
                    "{name} n={n}: {exchange_ops} exchange nodes, {} slots",
                    plan.exchanges.len()
                );
                if n == 1 {
                    ensure!(exchange_ops == 0, "{name}: one GPU needs no exchange");
                }
                // Every value has a static type (value_info for every value).
                for v in g.value_ids() {
                    let t = g.value(v).tensor_type();
                    ensure!(
                        t.is_some_and(|t| t.static_dims().is_some()),
                        "{name} n={n}: `{}` has no static type",
                        g.value(v).name
                    );
                }
                rank_files.push(path);
            }
        }
    }
    onnx_check(&rank_files)
}

#[test]
fn weights_are_shared_once_and_ranks_differ_only_in_band_constants() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = root().join("models/sd15_tiny.onnx");
    let out = tmp.path().join("plan");
    compile(&options(&model, &out, 4, &SpecializeOptions::default()))?;
    let weights = std::fs::metadata(out.join("weights.bin"))?.len();
    let params: u64 = 626_100 * 4;
    ensure!(
        weights >= params * 9 / 10 && weights < params * 2,
        "weights.bin has {weights} bytes for {params} bytes of parameters"
    );
    let r0 = std::fs::read(out.join("rank0.onnx"))?;
    for r in 1..4 {
        ensure!(
            std::fs::read(out.join(format!("rank{r}.onnx")))? == r0,
            "rank {r} differs from rank 0 though the model has no per-band constant"
        );
    }
    Ok(())
}

/// A model reading its split input along H twice: a Concat along H and a bilinear Resize.
fn hand_made(path: &Path) -> Result<()> {
    use dfc::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto};
    let f = DataType::FLOAT;
    let scales =
        dfc::tensor::Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 2.0])?.to_proto("scales");
    let graph = GraphProto::new(
        "bad",
        vec![
            NodeProto::new("Relu", "relu", &["sample"], &["a"]),
            NodeProto::new("Concat", "concat_h", &["a", "a"], &["c"])
                .with_attrs([AttributeProto::int("axis", 2)]),
            NodeProto::new("Resize", "resize_bilinear", &["a", "", "scales"], &["u"])
                .with_attrs([AttributeProto::string("mode", "linear")]),
        ],
        vec![ValueInfoProto::tensor("sample", f, &["1", "4", "8", "8"])],
        vec![
            ValueInfoProto::tensor("c", f, &["1", "4", "16", "8"]),
            ValueInfoProto::tensor("u", f, &["1", "4", "16", "16"]),
        ],
        vec![scales],
    );
    let model = ModelProto::new(graph, 17);
    dfc::onnx::save(&model, path)?;
    Ok(())
}

fn no_leftovers(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().to_string();
        ensure!(!name.starts_with(".dfc-"), "temporary {name} left behind");
    }
    Ok(())
}

#[test]
fn refusals_list_every_offending_node_and_write_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("bad.onnx");
    hand_made(&model)?;
    let out = tmp.path().join("plan");
    let run = dfc_compile(&model, 2, &out, &[])?;
    let err = String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.code() == Some(1), "exit {:?}: {err}", run.status);
    for want in [
        "2 node(s) cannot be partitioned",
        "`concat_h` (Concat)",
        "along the split axis",
        "`resize_bilinear` (Resize)",
        "linear Resize along the split axis",
    ] {
        ensure!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    ensure!(!out.exists(), "a failed compile left {}", out.display());
    no_leftovers(tmp.path())
}

#[test]
fn any_gpu_count_up_to_the_row_step_compiles_and_others_say_what_works() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    let model = root().join("models/sd15_tiny.onnx");
    // 32 latent rows, levels 32 / 16 / 8: boundaries on multiples of 4, so up to 8 GPUs.
    let run = dfc_compile(&model, 3, &out, &[])?;
    let text = String::from_utf8_lossy(&run.stdout);
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    ensure!(text.contains("bands of 12,12,8 latent rows"), "{text}");
    let plan = dfc::plan::Plan::load(&out)?;
    ensure!(plan.bands.heights() == [12, 12, 8] && plan.row_step == 4);
    ensure!(plan.levels == [32, 16, 8], "levels {:?}", plan.levels);
    ensure!(
        plan.ranks[2].rows == [24, 32] && plan.ranks[2].levels == [[24, 32], [12, 16], [6, 8]],
        "{:?}",
        plan.ranks[2]
    );
    // Nine GPUs: more bands than 4-row steps.
    let nine = tmp.path().join("nine");
    let run = dfc_compile(&model, 9, &nine, &[])?;
    let err = String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.code() == Some(1), "exit {:?}: {err}", run.status);
    ensure!(
        err.contains("9 bands do not fit 32 rows in steps of 4 rows")
            && err.contains("any band count from 1 to 8 works"),
        "{err}"
    );
    ensure!(!nine.exists());
    // A hand-set band list off the row step names the step and lists that would work.
    let run = dfc_compile(&model, 3, &nine, &["--bands", "10,12,10"])?;
    let err = String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.code() == Some(1), "exit {:?}: {err}", run.status);
    ensure!(
        err.contains("not a multiple of 4 rows") && err.contains("--bands 12,12,8"),
        "{err}"
    );
    // A band list for the wrong number of GPUs.
    let e = compile(&CompileOptions {
        bands: Some(dfc::passes::BandRequest::Heights(vec![16, 16])),
        ..options(&model, &nine, 4, &SpecializeOptions::default())
    })
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    ensure!(e.contains("2 bands given for groups of 4 GPUs"), "{e}");
    ensure!(!nine.exists());
    no_leftovers(tmp.path())
}

#[test]
fn weights_size_the_bands_for_mixed_gpus() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    let model = root().join("models/sd15_tiny.onnx");
    let report = compile(&CompileOptions {
        bands: Some(dfc::passes::BandRequest::Weights(vec![1.0, 1.0, 2.0])),
        ..options(&model, &out, 3, &SpecializeOptions::default())
    })?;
    let plan = report.plan.context("a plan")?;
    // 8 steps of 4 rows shared 1 : 1 : 2 after one step each: 2, 2, 4 steps.
    ensure!(plan.bands.heights() == [8, 8, 16], "{}", plan.bands);
    ensure!((plan.ranks[2].share - 0.5).abs() < 1e-12);
    // The gathers carry every band's part; the statistics slots are the same size on every band.
    for e in &plan.exchanges {
        if let Some(parts) = &e.parts {
            let axis = e.axis.context("gather axis")?;
            let got: Vec<i64> = e.input_shapes.iter().map(|s| s[axis]).collect();
            ensure!(&got == parts, "slot {}: {got:?} vs {parts:?}", e.slot);
        }
    }
    no_leftovers(tmp.path())
}

#[test]
fn plans_replace_plans_but_not_other_folders() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = root().join("models/sd15_tiny.onnx");
    let out = tmp.path().join("plan");
    let sizes = SpecializeOptions::default();
    compile(&options(&model, &out, 2, &sizes))?;
    compile(&options(&model, &out, 4, &sizes))?;
    ensure!(Plan::load(&out)?.world_size == 4);
    ensure!(!out.join("rank5.onnx").exists());
    no_leftovers(tmp.path())?;
    let other = tmp.path().join("photos");
    std::fs::create_dir(&other)?;
    std::fs::write(other.join("cat.jpg"), b"meow")?;
    let e = compile(&options(&model, &other, 2, &sizes))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(e.contains("refusing to overwrite"), "{e}");
    ensure!(std::fs::read(other.join("cat.jpg"))? == b"meow");
    Ok(())
}

#[test]
fn split_batch_puts_the_cfg_halves_on_two_groups() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = root().join("models/sdxl_tiny_dynamic.onnx");
    let out = tmp.path().join("plan");
    let mut o = options(
        &model,
        &out,
        4,
        &SpecializeOptions {
            batch: Some(2),
            height: Some(32),
            width: Some(32),
            dims: vec![("sequence".into(), 8)],
        },
    );
    o.split_batch = true;
    let plan = compile(&o)?.plan.context("no plan")?;
    ensure!(plan.groups == vec![vec![0, 1], vec![2, 3]]);
    ensure!(plan.ranks[2].batch == [1, 2] && plan.ranks[2].rows == [0, 16]);
    let by_name: HashMap<_, _> = plan.inputs.iter().map(|i| (i.name.as_str(), i)).collect();
    let sample = by_name["sample"];
    ensure!(sample.shape == vec![2, 4, 32, 32] && sample.local_shape(0) == [1, 4, 16, 32]);
    ensure!(sample.layout.band_axis == Some(2) && sample.layout.group_axis == Some(0));
    ensure!(by_name["timestep"].layout.group_axis.is_none());
    ensure!(by_name["encoder_hidden_states"].layout.group_axis == Some(0));
    // `--dim batch=2` names the same full batch as `--batch 2`.
    let mut by_dim = o.clone();
    by_dim.output = tmp.path().join("by_dim");
    by_dim.sizes.batch = None;
    by_dim.sizes.dims.push(("batch".into(), 2));
    let same = compile(&by_dim)?.plan.context("no plan")?;
    ensure!(same.inputs == plan.inputs && same.ranks == plan.ranks);
    o.gpus = 3;
    let e = compile(&o).err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(e.contains("must be even"), "{e}");
    // A batch baked into the export is halved: the same plan layout as the dynamic export.
    let mut fixed = options(
        &root().join("models/sd15_tiny.onnx"),
        &tmp.path().join("fixed"),
        4,
        &SpecializeOptions::default(),
    );
    fixed.split_batch = true;
    let plan = compile(&fixed)?.plan.context("no plan")?;
    let sample = plan
        .inputs
        .iter()
        .find(|i| i.name == "sample")
        .context("sample")?;
    ensure!(sample.shape == vec![2, 4, 32, 32] && sample.local_shape(0) == [1, 4, 16, 32]);
    ensure!(sample.layout.group_axis == Some(0) && plan.ranks[2].batch == [1, 2]);
    // A --batch that contradicts the fixed batch is refused, and nothing is written.
    let mut wrong = options(
        &root().join("models/sd15_tiny.onnx"),
        &tmp.path().join("wrong"),
        4,
        &SpecializeOptions {
            batch: Some(4),
            ..Default::default()
        },
    );
    wrong.split_batch = true;
    let e = compile(&wrong)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        e.contains("--batch 4 contradicts input `sample`, whose batch is fixed to 2"),
        "{e}"
    );
    ensure!(!tmp.path().join("wrong").exists());
    Ok(())
}

#[test]
fn dump_after_stops_and_writes_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("plan");
    let model = root().join("models/sd15_tiny.onnx");
    let run = dfc_compile(&model, 2, &out, &["--dump-after", "partition", "--timings"])?;
    let text = String::from_utf8_lossy(&run.stdout);
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    ensure!(text.contains("--- graph after `partition` ---"));
    ensure!(text.contains("--- layouts ---") && text.contains("halo(axis 2, top 1, bottom 1)"));
    ensure!(text.contains("canonicalize") && text.contains(" ms"));
    ensure!(!out.exists());
    let bad = dfc_compile(&model, 2, &out, &["--dump-after", "nope"])?;
    let err = String::from_utf8_lossy(&bad.stderr);
    if !(bad.status.code() == Some(1) && err.contains("valid passes")) {
        bail!("{err}");
    }
    Ok(())
}
