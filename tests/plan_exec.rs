//! The plan executor on hand-made plans: tiny rank graphs that contain the `dfc` exchange
//! operators, run through ONNX Runtime in lockstep, against the same computation on the full
//! tensor run as a one-rank model.

mod common;

use std::path::Path;

use anyhow::{Context, Result, bail};
use dfc::contract::Bands;
use dfc::onnx::proto::tensor_proto::DataType;
use dfc::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use dfc::plan::{
    ExchangeKind, ExchangeSpec, Layout, Mode, PLAN_FILE, PLAN_FORMAT, Plan, RankSpec, TensorSpec,
};
use dfc::runtime::host::{HostTensor, NamedTensors, difference, read_npz, write_npz};
use dfc::runtime::{ExecOptions, PlanExecutor, Rng};
use half::f16;
use ndarray::{ArrayD, IxDyn};

// ---------------------------------------------------------------- graph building

/// A node named after its op and first output; `Dfc*` ops come from the `dfc` domain.
fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let n = NodeProto::new(op, &format!("{}_{}", op, outs[0]), ins, outs).with_attrs(attrs);
    if op.starts_with("Dfc") {
        n.with_domain("dfc")
    } else {
        n
    }
}

fn value_info(name: &str, elem: DataType, dims: &[usize]) -> ValueInfoProto {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    ValueInfoProto::tensor(name, elem, &dims)
}

fn f32_init(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// A model importing the default domain at opset 17 and the `dfc` domain.
fn model(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> ModelProto {
    let mut m = ModelProto::new(GraphProto::new("g", nodes, inputs, outputs, inits), 17)
        .with_opset("dfc", 1);
    m.producer_name = Some("dfc tests".into());
    m
}

fn save(m: &ModelProto, path: &Path) -> Result<()> {
    dfc::onnx::save(m, path).with_context(|| format!("saving {}", path.display()))
}

fn random(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
    (0..shape.iter().product::<usize>())
        .map(|_| rng.normal())
        .collect()
}

fn f32_tensor(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape"))
}

// ---------------------------------------------------------------- plans

struct PlanShape {
    /// Bands per group.
    bands: usize,
    /// Groups (2 with `--split-batch`).
    groups: usize,
}

fn spec(name: &str, dtype: &str, shape: &[usize], local: &[usize], layout: Layout) -> TensorSpec {
    spec_bands(name, dtype, shape, &[local], layout)
}

/// A tensor spec with its shape on each band.
fn spec_bands(
    name: &str,
    dtype: &str,
    shape: &[usize],
    locals: &[&[usize]],
    layout: Layout,
) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.iter().map(|&d| d as i64).collect(),
        local_shapes: locals
            .iter()
            .map(|l| l.iter().map(|&d| d as i64).collect())
            .collect(),
        layout,
    }
}

fn exchange(slot: u32, kind: ExchangeKind, dtype: &str, axis: Option<usize>) -> ExchangeSpec {
    ExchangeSpec {
        slot,
        kind,
        node: format!("x{slot}"),
        for_node: format!("n{slot}"),
        dtype: dtype.into(),
        input_shapes: Vec::new(),
        output_shapes: Vec::new(),
        axis,
        parts: None,
        top: None,
        bottom: None,
        always_fresh: false,
        bytes_received: Vec::new(),
    }
}

/// Writes `plan.json` and one graph per rank (`rank_graph(group, band)`) into `dir`, with
/// equal bands.
fn write_plan(
    dir: &Path,
    shape: &PlanShape,
    height: usize,
    mut inputs: Vec<TensorSpec>,
    mut outputs: Vec<TensorSpec>,
    exchanges: Vec<ExchangeSpec>,
    rank_graph: impl Fn(usize, usize) -> ModelProto,
) -> Result<()> {
    // Every band has the one local shape given.
    for t in inputs.iter_mut().chain(outputs.iter_mut()) {
        t.local_shapes = vec![t.local_shapes[0].clone(); shape.bands];
    }
    let heights = vec![(height / shape.bands) as i64; shape.bands];
    write_plan_with(
        dir,
        &heights,
        shape.groups,
        inputs,
        outputs,
        exchanges,
        rank_graph,
    )
}

/// [`write_plan`] with bands of the given heights.
fn write_plan_with(
    dir: &Path,
    heights: &[i64],
    group_count: usize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    mut exchanges: Vec<ExchangeSpec>,
    rank_graph: impl Fn(usize, usize) -> ModelProto,
) -> Result<()> {
    let bands = Bands::from_heights(heights)?;
    let n = bands.n();
    let world = n * group_count;
    for e in &mut exchanges {
        e.input_shapes = vec![Vec::new(); n];
        e.output_shapes = vec![Vec::new(); n];
    }
    let mut ranks = Vec::new();
    let mut groups = Vec::new();
    for g in 0..group_count {
        let mut members = Vec::new();
        for b in 0..n {
            let rank = g * n + b;
            let file = format!("rank{rank}.onnx");
            save(&rank_graph(g, b), &dir.join(&file))?;
            let rows = bands.rows(b);
            ranks.push(RankSpec {
                rank,
                group: g,
                band: b,
                file,
                rows: [rows.start, rows.end],
                levels: vec![[rows.start, rows.end]],
                share: bands.share(b),
                batch: [g as i64, g as i64 + 1],
            });
            members.push(rank);
        }
        groups.push(members);
    }
    let plan = Plan {
        format: PLAN_FORMAT,
        source: "hand-made".into(),
        source_sha256: "0".repeat(64),
        mode: Mode::Sync,
        warmup: 0,
        gn: Default::default(),
        world_size: world,
        split_batch: group_count > 1,
        groups,
        ranks,
        latent: [bands.height(), 0],
        row_step: 1,
        levels: vec![bands.height()],
        bands,
        weights: None,
        inputs,
        outputs,
        exchanges,
        bytes_per_step: vec![0; world],
        memory: Vec::new(),
        engines: Vec::new(),
    };
    std::fs::write(dir.join(PLAN_FILE), serde_json::to_string_pretty(&plan)?)?;
    Ok(())
}

/// An f32 tensor `[1, channels, H, W]` split into bands of `h` rows.
fn band_spec(name: &str, channels: usize, h: usize) -> TensorSpec {
    spec(
        name,
        "f32",
        &[1, channels, H, W],
        &[1, channels, h, W],
        band_layout(),
    )
}

fn band_layout() -> Layout {
    Layout {
        band_axis: Some(2),
        group_axis: None,
    }
}

fn options() -> ExecOptions {
    ExecOptions {
        threads: 2,
        timeout: Some(std::time::Duration::from_secs(120)),
        ..ExecOptions::default()
    }
}

fn assert_close(
    what: &str,
    actual: &NamedTensors,
    reference: &NamedTensors,
    tol: f64,
) -> Result<f64> {
    let mut worst = 0f64;
    for (name, r) in reference {
        let Some((_, a)) = actual.iter().find(|(n, _)| n == name) else {
            bail!("{what}: output `{name}` missing");
        };
        let d = difference(a, r).map_err(|e| anyhow::anyhow!("{what}: `{name}`: {e}"))?;
        if d.non_finite || d.max_abs > tol {
            bail!("{what}: `{name}` max abs error {:e} > {tol:e}", d.max_abs);
        }
        worst = worst.max(d.max_abs);
    }
    Ok(worst)
}

// ---------------------------------------------------------------- halo + conv

const C_IN: usize = 3;
const C_OUT: usize = 4;
const H: usize = 16;
const W: usize = 6;

struct Conv {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    fn new(rng: &mut Rng) -> Self {
        Self {
            weight: random(rng, &[C_OUT, C_IN, 3, 3]),
            bias: random(rng, &[C_OUT]),
        }
    }

    fn inits(&self) -> Vec<TensorProto> {
        vec![
            f32_init("w", &[C_OUT, C_IN, 3, 3], &self.weight),
            f32_init("b", &[C_OUT], &self.bias),
        ]
    }

    /// `x → Conv(3×3, pads) → y`, preceded by a halo exchange when `halo` is given
    /// (`(top, bottom)`), with an optional f16 input cast to f32 first.
    fn graph(
        &self,
        batch: usize,
        rows: usize,
        halo: Option<(usize, usize)>,
        f16_in: bool,
    ) -> ModelProto {
        let mut nodes = Vec::new();
        let elem = if f16_in {
            DataType::Float16
        } else {
            DataType::Float
        };
        let mut cur = "x".to_string();
        if let Some((top, bottom)) = halo {
            nodes.push(node(
                "DfcHaloExchange",
                &[&cur],
                &["xh"],
                vec![
                    AttributeProto::int("axis", 2),
                    AttributeProto::int("top", top as i64),
                    AttributeProto::int("bottom", bottom as i64),
                    AttributeProto::int("slot", 0),
                ],
            ));
            cur = "xh".into();
        }
        if f16_in {
            nodes.push(node(
                "Cast",
                &[&cur],
                &["xf"],
                vec![AttributeProto::int("to", DataType::Float as i64)],
            ));
            cur = "xf".into();
        }
        let pads = if halo.is_some() {
            [0, 1, 0, 1]
        } else {
            [1, 1, 1, 1]
        };
        nodes.push(node(
            "Conv",
            &[&cur, "w", "b"],
            &["y"],
            vec![
                AttributeProto::ints("kernel_shape", &[3, 3]),
                AttributeProto::ints("pads", &pads),
            ],
        ));
        model(
            nodes,
            self.inits(),
            vec![value_info("x", elem, &[batch, C_IN, rows, W])],
            vec![value_info("y", DataType::Float, &[batch, C_OUT, rows, W])],
        )
    }
}

fn conv_plan(dir: &Path, conv: &Conv, shape: &PlanShape, batch: usize, f16_in: bool) -> Result<()> {
    let h = H / shape.bands;
    let local_batch = batch / shape.groups;
    let group_axis = (shape.groups > 1).then_some(0);
    let layout = Layout {
        band_axis: Some(2),
        group_axis,
    };
    let dtype = if f16_in { "f16" } else { "f32" };
    write_plan(
        dir,
        shape,
        H,
        vec![spec(
            "x",
            dtype,
            &[batch, C_IN, H, W],
            &[local_batch, C_IN, h, W],
            layout.clone(),
        )],
        vec![spec(
            "y",
            "f32",
            &[batch, C_OUT, H, W],
            &[local_batch, C_OUT, h, W],
            layout,
        )],
        vec![exchange(0, ExchangeKind::Halo, dtype, Some(2))],
        |_, _| conv.graph(local_batch, h, Some((1, 1)), f16_in),
    )
}

#[test]
fn halo_then_conv_equals_the_full_convolution() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(11);
    let conv = Conv::new(&mut rng);
    let tmp = tempfile::tempdir()?;
    let full_model = tmp.path().join("full.onnx");
    save(&conv.graph(1, H, None, false), &full_model)?;
    let inputs = vec![(
        "x".to_string(),
        f32_tensor(&[1, C_IN, H, W], random(&mut rng, &[1, C_IN, H, W])),
    )];
    let reference = common::run(&full_model, &inputs)?;
    for bands in [1, 2, 4, 8] {
        let dir = tmp.path().join(format!("plan{bands}"));
        std::fs::create_dir(&dir)?;
        conv_plan(&dir, &conv, &PlanShape { bands, groups: 1 }, 1, false)?;
        let mut exec = PlanExecutor::load(&dir, options())?;
        // Several steps in a row: buffers of both parities are used.
        for step in 0..3 {
            let out = exec.run_unet(&inputs)?;
            let err = assert_close(
                &format!("{bands} bands, step {step}"),
                &out,
                &reference,
                1e-5,
            )?;
            println!("{bands} bands, step {step}: max abs error {err:e}");
        }
    }
    Ok(())
}

#[test]
fn f16_halo_and_split_batch_groups() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(12);
    let conv = Conv::new(&mut rng);
    let tmp = tempfile::tempdir()?;
    let full_model = tmp.path().join("full.onnx");
    save(&conv.graph(2, H, None, true), &full_model)?;
    let x: Vec<f16> = random(&mut rng, &[2, C_IN, H, W])
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let inputs = vec![(
        "x".to_string(),
        HostTensor::F16(ArrayD::from_shape_vec(IxDyn(&[2, C_IN, H, W]), x)?),
    )];
    let reference = common::run(&full_model, &inputs)?;
    let dir = tmp.path().join("plan");
    std::fs::create_dir(&dir)?;
    conv_plan(
        &dir,
        &conv,
        &PlanShape {
            bands: 2,
            groups: 2,
        },
        2,
        true,
    )?;
    let mut exec = PlanExecutor::load(&dir, options())?;
    let out = exec.run_unet(&inputs)?;
    let err = assert_close("2 groups × 2 bands, f16 halo", &out, &reference, 1e-5)?;
    println!("split batch, f16 halo: max abs error {err:e}");
    Ok(())
}

// ---------------------------------------------------------------- stats + gather

/// Rank graph: per-channel normalization with statistics reduced over the group, then
/// `y = n · mean over the whole image of gather(x)` (an attention-like read of every band).
/// `parts`: every band's rows.
fn norm_gather_graph(rows: usize, parts: &[i64]) -> ModelProto {
    let c = C_IN;
    let nodes = vec![
        node(
            "ReduceMean",
            &["x"],
            &["m"],
            vec![
                AttributeProto::ints("axes", &[2, 3]),
                AttributeProto::int("keepdims", 1),
            ],
        ),
        node("Mul", &["x", "x"], &["xx"], vec![]),
        node(
            "ReduceMean",
            &["xx"],
            &["m2"],
            vec![
                AttributeProto::ints("axes", &[2, 3]),
                AttributeProto::int("keepdims", 1),
            ],
        ),
        node(
            "Concat",
            &["m", "m2"],
            &["s"],
            vec![AttributeProto::int("axis", -1)],
        ),
        node(
            "DfcStatsAllReduce",
            &["s"],
            &["g"],
            vec![AttributeProto::int("slot", 1)],
        ),
        node(
            "Split",
            &["g"],
            &["gm", "gm2"],
            vec![AttributeProto::int("axis", -1)],
        ),
        node("Mul", &["gm", "gm"], &["gmsq"], vec![]),
        node("Sub", &["gm2", "gmsq"], &["var"], vec![]),
        node("Add", &["var", "eps"], &["vare"], vec![]),
        node("Sqrt", &["vare"], &["sd"], vec![]),
        node("Sub", &["x", "gm"], &["xc"], vec![]),
        node("Div", &["xc", "sd"], &["n"], vec![]),
        node(
            "DfcPatchAllGather",
            &["x"],
            &["k"],
            vec![
                AttributeProto::int("axis", 2),
                AttributeProto::ints("parts", parts),
                AttributeProto::int("slot", 2),
            ],
        ),
        node(
            "ReduceMean",
            &["k"],
            &["km"],
            vec![
                AttributeProto::ints("axes", &[2, 3]),
                AttributeProto::int("keepdims", 1),
            ],
        ),
        node("Mul", &["n", "km"], &["y"], vec![]),
    ];
    model(
        nodes,
        vec![f32_init("eps", &[], &[1e-5])],
        vec![value_info("x", DataType::Float, &[1, c, rows, W])],
        vec![value_info("y", DataType::Float, &[1, c, rows, W])],
    )
}

/// The same on the full tensor, without exchanges.
fn norm_gather_full() -> ModelProto {
    let nodes = vec![
        node(
            "ReduceMean",
            &["x"],
            &["m"],
            vec![
                AttributeProto::ints("axes", &[2, 3]),
                AttributeProto::int("keepdims", 1),
            ],
        ),
        node("Mul", &["x", "x"], &["xx"], vec![]),
        node(
            "ReduceMean",
            &["xx"],
            &["m2"],
            vec![
                AttributeProto::ints("axes", &[2, 3]),
                AttributeProto::int("keepdims", 1),
            ],
        ),
        node("Mul", &["m", "m"], &["msq"], vec![]),
        node("Sub", &["m2", "msq"], &["var"], vec![]),
        node("Add", &["var", "eps"], &["vare"], vec![]),
        node("Sqrt", &["vare"], &["sd"], vec![]),
        node("Sub", &["x", "m"], &["xc"], vec![]),
        node("Div", &["xc", "sd"], &["n"], vec![]),
        node("Mul", &["n", "m"], &["y"], vec![]),
    ];
    model(
        nodes,
        vec![f32_init("eps", &[], &[1e-5])],
        vec![value_info("x", DataType::Float, &[1, C_IN, H, W])],
        vec![value_info("y", DataType::Float, &[1, C_IN, H, W])],
    )
}

#[test]
fn stats_and_gather_equal_the_full_computation() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(13);
    let tmp = tempfile::tempdir()?;
    let full_model = tmp.path().join("full.onnx");
    save(&norm_gather_full(), &full_model)?;
    let x: Vec<f32> = random(&mut rng, &[1, C_IN, H, W])
        .iter()
        .map(|v| 2.0 * v + 0.5)
        .collect();
    let inputs = vec![("x".to_string(), f32_tensor(&[1, C_IN, H, W], x))];
    let reference = common::run(&full_model, &inputs)?;
    for bands in [2, 4] {
        let dir = tmp.path().join(format!("plan{bands}"));
        std::fs::create_dir(&dir)?;
        let h = H / bands;
        write_plan(
            &dir,
            &PlanShape { bands, groups: 1 },
            H,
            vec![band_spec("x", C_IN, h)],
            vec![band_spec("y", C_IN, h)],
            vec![
                exchange(1, ExchangeKind::Stats, "f32", None),
                exchange(2, ExchangeKind::Gather, "f32", Some(2)),
            ],
            |_, _| norm_gather_graph(h, &vec![h as i64; bands]),
        )?;
        let mut exec = PlanExecutor::load(&dir, options())?;
        let out = exec.run_unet(&inputs)?;
        let err = assert_close(&format!("{bands} bands"), &out, &reference, 1e-4)?;
        println!("stats + gather, {bands} bands: max abs error {err:e}");
    }
    // Unequal bands: statistics weighted by each band's rows, gathers of unequal parts.
    for heights in [vec![7i64, 5, 4], vec![3, 10, 2, 1]] {
        let dir = tmp.path().join(format!("uneven{}", heights.len()));
        std::fs::create_dir(&dir)?;
        let locals: Vec<Vec<usize>> = heights
            .iter()
            .map(|&h| vec![1, C_IN, h as usize, W])
            .collect();
        let local_refs: Vec<&[usize]> = locals.iter().map(Vec::as_slice).collect();
        let io = |name: &str| spec_bands(name, "f32", &[1, C_IN, H, W], &local_refs, band_layout());
        write_plan_with(
            &dir,
            &heights,
            1,
            vec![io("x")],
            vec![io("y")],
            vec![
                exchange(1, ExchangeKind::Stats, "f32", None),
                exchange(2, ExchangeKind::Gather, "f32", Some(2)),
            ],
            |_, band| norm_gather_graph(heights[band] as usize, &heights),
        )?;
        let mut exec = PlanExecutor::load(&dir, options())?;
        let out = exec.run_unet(&inputs)?;
        let err = assert_close(&format!("bands {heights:?}"), &out, &reference, 1e-4)?;
        println!("stats + gather, bands {heights:?}: max abs error {err:e}");
    }
    Ok(())
}

// ---------------------------------------------------------------- failures

#[test]
fn a_failing_rank_fails_the_run_without_hanging_the_others() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(14);
    let conv = Conv::new(&mut rng);
    let tmp = tempfile::tempdir()?;
    let bands = 4;
    let h = H / bands;
    // Rank 2 asks for a halo taller than the band: its kernel fails while the others wait.
    write_plan(
        tmp.path(),
        &PlanShape { bands, groups: 1 },
        H,
        vec![band_spec("x", C_IN, h)],
        vec![band_spec("y", C_OUT, h)],
        vec![exchange(0, ExchangeKind::Halo, "f32", Some(2))],
        |_, band| {
            let mut m = conv.graph(1, h, Some((1, 1)), false);
            if band == 2 {
                let g = m.graph.as_mut().expect("graph");
                g.node[0].attribute[1] = AttributeProto::int("top", 2 * h as i64);
            }
            m
        },
    )?;
    let inputs = vec![(
        "x".to_string(),
        f32_tensor(&[1, C_IN, H, W], random(&mut rng, &[1, C_IN, H, W])),
    )];
    let mut exec = PlanExecutor::load(
        tmp.path(),
        ExecOptions {
            timeout: None,
            ..options()
        },
    )?;
    let err = exec.run_unet(&inputs).expect_err("rank 2 fails");
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains("rank 2") && msg.contains("larger than the band"),
        "{msg}"
    );
    let again = exec.run_unet(&inputs).expect_err("the executor is spent");
    assert!(again.to_string().contains("earlier run"), "{again}");
    Ok(())
}

#[test]
fn a_rank_without_the_exchange_fails_its_peers_instead_of_hanging() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(15);
    let conv = Conv::new(&mut rng);
    let tmp = tempfile::tempdir()?;
    let h = H / 2;
    write_plan(
        tmp.path(),
        &PlanShape {
            bands: 2,
            groups: 1,
        },
        H,
        vec![band_spec("x", C_IN, h)],
        vec![band_spec("y", C_OUT, h)],
        vec![exchange(0, ExchangeKind::Halo, "f32", Some(2))],
        |_, band| conv.graph(1, h, (band == 0).then_some((1, 1)), false),
    )?;
    let inputs = vec![(
        "x".to_string(),
        f32_tensor(&[1, C_IN, H, W], random(&mut rng, &[1, C_IN, H, W])),
    )];
    let mut exec = PlanExecutor::load(
        tmp.path(),
        ExecOptions {
            timeout: None,
            ..options()
        },
    )?;
    let err = exec.run_unet(&inputs).expect_err("rank 1 never exchanges");
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(msg.contains("different exchanges"), "{msg}");
    Ok(())
}

#[test]
fn missing_or_misshapen_inputs_are_named() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(16);
    let conv = Conv::new(&mut rng);
    let tmp = tempfile::tempdir()?;
    conv_plan(
        tmp.path(),
        &conv,
        &PlanShape {
            bands: 2,
            groups: 1,
        },
        1,
        false,
    )?;
    let mut exec = PlanExecutor::load(tmp.path(), options())?;
    let err = exec.run_unet(&[]).expect_err("no inputs");
    assert!(err.to_string().contains("no `x`"), "{err}");
    let wrong = vec![(
        "x".to_string(),
        f32_tensor(&[1, C_IN, H, W + 1], vec![0.0; C_IN * H * (W + 1)]),
    )];
    let err = exec.run_unet(&wrong).expect_err("wrong shape");
    assert!(err.to_string().contains("input `x`"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------- the command

#[test]
fn dfc_unet_splits_runs_and_gathers() -> Result<()> {
    common::require_ort()?;
    let mut rng = Rng::new(17);
    let conv = Conv::new(&mut rng);
    let tmp = tempfile::tempdir()?;
    let full_model = tmp.path().join("full.onnx");
    save(&conv.graph(1, H, None, false), &full_model)?;
    let mut io = vec![(
        "x".to_string(),
        f32_tensor(&[1, C_IN, H, W], random(&mut rng, &[1, C_IN, H, W])),
    )];
    let reference = common::run(&full_model, &io)?;
    // The `.io.npz` convention: inputs and reference outputs in one file.
    io.extend(
        reference
            .iter()
            .map(|(n, t)| (format!("ref_{n}"), t.clone())),
    );
    let io_path = tmp.path().join("io.npz");
    write_npz(&io_path, &io)?;
    let plan = tmp.path().join("plan");
    std::fs::create_dir(&plan)?;
    conv_plan(
        &plan,
        &conv,
        &PlanShape {
            bands: 4,
            groups: 1,
        },
        1,
        false,
    )?;
    let out_path = tmp.path().join("out.npz");
    let out = common::dfc(&[
        "unet".as_ref(),
        plan.as_os_str(),
        "--inputs".as_ref(),
        io_path.as_os_str(),
        "--output".as_ref(),
        out_path.as_os_str(),
        "--threads".as_ref(),
        "2".as_ref(),
    ])?;
    if !out.status.success() {
        bail!("dfc unet failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let got = read_npz(&out_path)?;
    assert_close("dfc unet", &got, &reference, 1e-5)?;

    // A plan folder without plan.json: a clear error, exit code 1.
    let out = common::dfc(&[
        "unet".as_ref(),
        tmp.path().as_os_str(),
        "--inputs".as_ref(),
        io_path.as_os_str(),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plan.json"), "{stderr}");
    Ok(())
}
