//! Golden text dumps of small hand-built graphs, one snapshot per pass of the `compile` and
//! `compile-band` pipelines (the whole graph's passes, then one band's),
//! each showing the graph before and after that pass (a pass that leaves the graph as it was says
//! `unchanged`), plus the `plan.json` of one small model compiled in `displaced` and in `naive`
//! mode (source path and digest redacted).
//!
//! The graphs are small enough to read every line: a dynamic-shape Reshape that specialization
//! folds, torch's GroupNorm pattern, onnxsim's `Reshape → Gemm → Reshape` Linear, ONNX
//! Runtime's channels-last `GroupNorm` between its Transposes, and a
//! miniature UNet (padded conv + ReLU, GroupNorm, a
//! stride-2 conv, self-attention over its tokens, a nearest Resize ×2, an output conv) cut into
//! 2 equal bands and into 3 unequal ones.
//!
//! Bless after an intended change, together with `tests/golden.rs`, in one command:
//! `INSTA_UPDATE=always cargo test --test golden --test golden_passes`, then review the diff.

use std::fmt::Write;

use anyhow::{Context, Result};
use dfc::ir::{DataType, Graph};
use dfc::onnx::ExternalStore;
use dfc::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use dfc::passes::driver::{CompileOptions, compile};
use dfc::passes::specialize::SpecializeOptions;
use dfc::passes::{BandRequest, PassContext, PassManager, pipeline};
use dfc::plan::Mode;
use dfc::tensor::Tensor;

// ---------------------------------------------------------------------------------------------
// Building graphs

/// An f32 constant of shape `dims` holding `0.01·i` (weights are never shown in dumps).
fn f32s(name: &str, dims: &[usize]) -> Result<TensorProto> {
    let n: usize = dims.iter().product();
    let data = (0..n).map(|i| 0.01 * (i % 17) as f32).collect();
    Ok(Tensor::from_vec(dims, data)?.to_proto(name))
}

/// An f32 constant of shape `dims` filled with `v`.
fn f32_fill(name: &str, dims: &[usize], v: f32) -> Result<TensorProto> {
    let n: usize = dims.iter().product();
    Ok(Tensor::from_vec(dims, vec![v; n])?.to_proto(name))
}

/// A model named `golden` importing the default domain at opset 17.
fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> ModelProto {
    ModelProto::new(GraphProto::new("golden", nodes, inputs, outputs, inits), 17)
}

/// `x[batch,4,height,width] → Shape → Gather(0) → Unsqueeze → Concat([b, -1]) → Reshape(x) →
/// Relu → y[batch,?]`: the Reshape's target is computed from the input's shape at run time.
fn dynamic_reshape() -> ModelProto {
    let f = DataType::FLOAT;
    model(
        vec![
            NodeProto::new("Shape", "shape", &["x"], &["s"]),
            NodeProto::new("Gather", "gather", &["s", "zero"], &["b"]),
            NodeProto::new("Unsqueeze", "unsq", &["b", "axes0"], &["b1"]),
            NodeProto::new("Concat", "concat", &["b1", "minus1"], &["spec"]),
            NodeProto::new("Reshape", "reshape", &["x", "spec"], &["r"]),
            NodeProto::new("Relu", "relu", &["r"], &["y"]),
        ],
        vec![ValueInfoProto::tensor(
            "x",
            f,
            &["batch", "4", "height", "width"],
        )],
        vec![ValueInfoProto::tensor("y", f, &["batch", "?"])],
        vec![
            Tensor::scalar(0i64).to_proto("zero"),
            Tensor::from_i64s(&[0]).to_proto("axes0"),
            Tensor::from_i64s(&[-1]).to_proto("minus1"),
        ],
    )
}

/// torch's GroupNorm export with 4 groups on 8 channels, from `x` to `y`: `Reshape([0,4,-1]) →
/// InstanceNormalization(ones, zeros) → Reshape(back) → Mul(γ) → Add(β)`; its constants come
/// from [`torch_group_norm_weights`].
fn torch_group_norm_nodes(x: &str, y: &str) -> Vec<NodeProto> {
    vec![
        NodeProto::new("Reshape", "gn/r1", &[x, "gn.spec"], &["gn.r1"]),
        NodeProto::new(
            "InstanceNormalization",
            "gn/in",
            &["gn.r1", "gn.ones", "gn.zeros"],
            &["gn.in"],
        )
        .with_attrs([AttributeProto::float("epsilon", 1e-5)]),
        NodeProto::new("Reshape", "gn/r2", &["gn.in", "gn.back"], &["gn.r2"]),
        NodeProto::new("Mul", "gn/mul", &["gn.r2", "gn.gamma"], &["gn.m"]),
        NodeProto::new("Add", "gn/add", &["gn.m", "gn.beta"], &[y]),
    ]
}

/// The constants of [`torch_group_norm_nodes`] for an input of shape `back`.
fn torch_group_norm_weights(back: &[i64]) -> Result<Vec<TensorProto>> {
    Ok(vec![
        Tensor::from_i64s(&[0, 4, -1]).to_proto("gn.spec"),
        Tensor::from_i64s(back).to_proto("gn.back"),
        f32_fill("gn.ones", &[4], 1.0)?,
        f32_fill("gn.zeros", &[4], 0.0)?,
        f32s("gn.gamma", &[8, 1, 1])?,
        f32s("gn.beta", &[8, 1, 1])?,
    ])
}

/// torch's GroupNorm export on x[1,8,4,4] with 4 groups: `Reshape([0,4,-1]) →
/// InstanceNormalization(ones, zeros) → Reshape(back) → Mul(γ) → Add(β)`.
fn torch_group_norm() -> Result<ModelProto> {
    let f = DataType::FLOAT;
    Ok(model(
        torch_group_norm_nodes("x", "y"),
        vec![ValueInfoProto::tensor("x", f, &["1", "8", "4", "4"])],
        vec![ValueInfoProto::tensor("y", f, &["1", "8", "4", "4"])],
        torch_group_norm_weights(&[1, 8, 4, 4])?,
    ))
}

/// onnxsim's form of a biased Linear on tokens x[2,4,8]: `Reshape [-1,8] → Gemm(W[6,8],
/// transB = 1, c[6]) → Reshape [2,4,6] → y`.
fn onnxsim_linear() -> Result<ModelProto> {
    let f = DataType::FLOAT;
    Ok(model(
        vec![
            NodeProto::new("Reshape", "lin/r1", &["x", "lin.rows"], &["lin.a"]),
            NodeProto::new("Gemm", "lin/gemm", &["lin.a", "lin.w", "lin.c"], &["lin.g"])
                .with_attrs([
                    AttributeProto::float("alpha", 1.0),
                    AttributeProto::float("beta", 1.0),
                    AttributeProto::int("transB", 1),
                ]),
            NodeProto::new("Reshape", "lin/r2", &["lin.g", "lin.back"], &["y"]),
        ],
        vec![ValueInfoProto::tensor("x", f, &["2", "4", "8"])],
        vec![ValueInfoProto::tensor("y", f, &["2", "4", "6"])],
        vec![
            Tensor::from_i64s(&[-1, 8]).to_proto("lin.rows"),
            Tensor::from_i64s(&[2, 4, 6]).to_proto("lin.back"),
            f32s("lin.w", &[6, 8])?,
            f32s("lin.c", &[6])?,
        ],
    ))
}

/// A miniature UNet on a latent x[1,4,8,8]:
///
/// ```text
/// conv_in (3×3, pads 1, 4→8) → relu → GroupNorm (torch pattern, 4 groups)      [1,8,8,8]
/// → down (3×3, stride 2, pads 1)                                               [1,8,4,4]
/// → tokens: Transpose(0,2,3,1) → Reshape [1,16,8]
/// → q, k, v = tokens·Wq, tokens·Wk, tokens·Wv; Softmax(q·kᵀ)·v                 [1,16,8]
/// → back: Reshape [1,4,4,8] → Transpose(0,3,1,2)                               [1,8,4,4]
/// → up: Resize nearest ×2                                                      [1,8,8,8]
/// → conv_out (3×3, pads 1, 8→4) → y                                            [1,4,8,8]
/// ```
fn mini_unet() -> Result<ModelProto> {
    let f = DataType::FLOAT;
    let conv = |name: &str, ins: &[&str], out: &str, strides: i64| {
        NodeProto::new("Conv", name, ins, &[out]).with_attrs([
            AttributeProto::ints("kernel_shape", &[3, 3]),
            AttributeProto::ints("pads", &[1, 1, 1, 1]),
            AttributeProto::ints("strides", &[strides, strides]),
        ])
    };
    Ok(model(
        [
            vec![
                conv("conv_in", &["x", "conv_in.w", "conv_in.b"], "h0", 1),
                NodeProto::new("Relu", "act", &["h0"], &["h1"]),
            ],
            torch_group_norm_nodes("h1", "h2"),
            vec![
                conv("down", &["h2", "down.w", "down.b"], "h3", 2),
                NodeProto::new("Transpose", "attn/nhwc", &["h3"], &["attn.nhwc"])
                    .with_attrs([AttributeProto::ints("perm", &[0, 2, 3, 1])]),
                NodeProto::new(
                    "Reshape",
                    "attn/tokens",
                    &["attn.nhwc", "attn.tok_shape"],
                    &["attn.t"],
                ),
                NodeProto::new("MatMul", "attn/q", &["attn.t", "attn.wq"], &["attn.q"]),
                NodeProto::new("MatMul", "attn/k", &["attn.t", "attn.wk"], &["attn.k"]),
                NodeProto::new("MatMul", "attn/v", &["attn.t", "attn.wv"], &["attn.v"]),
                NodeProto::new("Transpose", "attn/kt", &["attn.k"], &["attn.kt"])
                    .with_attrs([AttributeProto::ints("perm", &[0, 2, 1])]),
                NodeProto::new("MatMul", "attn/qk", &["attn.q", "attn.kt"], &["attn.s"]),
                NodeProto::new("Softmax", "attn/softmax", &["attn.s"], &["attn.p"])
                    .with_attrs([AttributeProto::int("axis", -1)]),
                NodeProto::new("MatMul", "attn/pv", &["attn.p", "attn.v"], &["attn.o"]),
                NodeProto::new(
                    "Reshape",
                    "attn/untokens",
                    &["attn.o", "attn.map_shape"],
                    &["attn.map"],
                ),
                NodeProto::new("Transpose", "attn/nchw", &["attn.map"], &["h4"])
                    .with_attrs([AttributeProto::ints("perm", &[0, 3, 1, 2])]),
                NodeProto::new("Resize", "up", &["h4", "", "up.scales"], &["h5"]).with_attrs([
                    AttributeProto::string("mode", "nearest"),
                    AttributeProto::string("nearest_mode", "floor"),
                    AttributeProto::string("coordinate_transformation_mode", "asymmetric"),
                ]),
                conv("conv_out", &["h5", "conv_out.w", "conv_out.b"], "y", 1),
            ],
        ]
        .concat(),
        vec![ValueInfoProto::tensor("x", f, &["1", "4", "8", "8"])],
        vec![ValueInfoProto::tensor("y", f, &["1", "4", "8", "8"])],
        [
            vec![f32s("conv_in.w", &[8, 4, 3, 3])?, f32s("conv_in.b", &[8])?],
            torch_group_norm_weights(&[1, 8, 8, 8])?,
            vec![
                f32s("down.w", &[8, 8, 3, 3])?,
                f32s("down.b", &[8])?,
                Tensor::from_i64s(&[1, 16, 8]).to_proto("attn.tok_shape"),
                f32s("attn.wq", &[8, 8])?,
                f32s("attn.wk", &[8, 8])?,
                f32s("attn.wv", &[8, 8])?,
                Tensor::from_i64s(&[1, 4, 4, 8]).to_proto("attn.map_shape"),
                Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 2.0])?.to_proto("up.scales"),
                f32s("conv_out.w", &[4, 8, 3, 3])?,
                f32s("conv_out.b", &[4])?,
            ],
        ]
        .concat(),
    ))
}

/// `x[1,4,8,8] → Relu → NonZero → y`: NonZero's output length depends on the data, so its shape
/// cannot become static.
fn data_dependent() -> ModelProto {
    let f = DataType::FLOAT;
    model(
        vec![
            NodeProto::new("Relu", "relu", &["x"], &["h"]),
            NodeProto::new("NonZero", "nonzero", &["h"], &["y"]),
        ],
        vec![ValueInfoProto::tensor("x", f, &["1", "4", "8", "8"])],
        vec![ValueInfoProto::tensor("y", DataType::INT64, &["4", "?"])],
        vec![],
    )
}

/// A graph that ONNX Runtime's optimizer fused into an operator dfc has no row for: a
/// `com.microsoft:BiasSplitGelu` (bias, split into halves, GELU gate) between two ReLUs.
fn fused_bias_split_gelu() -> Result<ModelProto> {
    let f = DataType::FLOAT;
    let m = model(
        vec![
            NodeProto::new("Relu", "pre", &["x"], &["h"]),
            NodeProto::new("BiasSplitGelu", "ff_fused", &["h", "bias"], &["g"])
                .with_domain("com.microsoft"),
            NodeProto::new("Relu", "post", &["g"], &["y"]),
        ],
        vec![ValueInfoProto::tensor("x", f, &["1", "16", "16"])],
        vec![ValueInfoProto::tensor("y", f, &["1", "16", "8"])],
        vec![f32s("bias", &[16])?],
    );
    Ok(m.with_opset("com.microsoft", 1))
}

/// What ONNX Runtime's optimizer makes of a group norm with its SiLU:
/// `x[1,8,4,4] → Transpose to NHWC → com.microsoft:GroupNorm {activation=1} → Transpose to
/// NCHW → Relu → y`.
fn ort_group_norm() -> Result<ModelProto> {
    let f = DataType::FLOAT;
    let m = model(
        vec![
            NodeProto::new("Transpose", "to_nhwc", &["x"], &["x_nhwc"])
                .with_attrs([AttributeProto::ints("perm", &[0, 2, 3, 1])]),
            NodeProto::new(
                "GroupNorm",
                "gn_fused",
                &["x_nhwc", "gamma", "beta"],
                &["g_nhwc"],
            )
            .with_domain("com.microsoft")
            .with_attrs([
                AttributeProto::int("groups", 4),
                AttributeProto::float("epsilon", 1e-5),
                AttributeProto::int("activation", 1),
            ]),
            NodeProto::new("Transpose", "to_nchw", &["g_nhwc"], &["g"])
                .with_attrs([AttributeProto::ints("perm", &[0, 3, 1, 2])]),
            NodeProto::new("Relu", "post", &["g"], &["y"]),
        ],
        vec![ValueInfoProto::tensor("x", f, &["1", "8", "4", "4"])],
        vec![ValueInfoProto::tensor("y", f, &["1", "8", "4", "4"])],
        vec![f32s("gamma", &[8])?, f32s("beta", &[8])?],
    );
    Ok(m.with_opset("com.microsoft", 1))
}

// ---------------------------------------------------------------------------------------------
// Running the pipeline

/// How a graph is compiled: sizes for `bind-inputs`, the bands and mode for `partition`, and the
/// band whose local graph the passes after `partition` build.
struct Setup {
    sizes: SpecializeOptions,
    bands: usize,
    mode: Mode,
    band: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            sizes: SpecializeOptions::default(),
            bands: 2,
            mode: Mode::Displaced,
            band: 0,
        }
    }
}

/// The passes of the `compile` pipeline, then those of `compile-band`, in order.
fn compile_passes() -> Result<Vec<&'static str>> {
    Ok([pipeline("compile")?, pipeline("compile-band")?].concat())
}

/// The graph after running the compile pipelines on `proto` up to `pass` (`None`: the graph
/// as lifted), with the pass context.
fn run_until(proto: ModelProto, setup: &Setup, pass: Option<&str>) -> Result<(Graph, PassContext)> {
    let mut g = Graph::from_model(proto)?;
    let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
    cx.options.verify = true;
    cx.specialize = setup.sizes.clone();
    cx.partition_options.bands = BandRequest::Count(setup.bands);
    cx.partition_options.mode = setup.mode;
    cx.band = setup.band;
    let Some(pass) = pass else {
        return Ok((g, cx));
    };
    if pipeline("compile")?.contains(&pass) {
        PassManager::pipeline("compile")?
            .stop_after(pass)?
            .run(&mut g, &mut cx)?;
    } else {
        PassManager::pipeline("compile")?.run(&mut g, &mut cx)?;
        PassManager::pipeline("compile-band")?
            .stop_after(pass)?
            .run(&mut g, &mut cx)?;
    }
    Ok((g, cx))
}

/// Runs the `compile` pipeline on `proto` up to `pass` and renders the graph and its phase
/// before and after it (after `partition`, with the bands and layouts it found).
fn before_after(proto: ModelProto, setup: &Setup, pass: &str) -> Result<String> {
    let passes = compile_passes()?;
    let at = passes
        .iter()
        .position(|p| *p == pass)
        .with_context(|| format!("`{pass}` is not in the compile pipeline: {passes:?}"))?;
    let partition_at = passes.iter().position(|p| *p == "partition");
    let (before, _) = run_until(proto.clone(), setup, at.checked_sub(1).map(|i| passes[i]))?;
    let (after, cx) = run_until(proto, setup, Some(pass))?;
    let mut s = String::new();
    if partition_at.is_some_and(|p| at >= p) {
        writeln!(
            s,
            "# {} band(s), {} mode, band {}",
            setup.bands,
            setup.mode.name(),
            setup.band
        )?;
    }
    writeln!(s, "--- before `{pass}` ({} phase) ---", before.phase)?;
    s += &before.dump();
    if after.dump() == before.dump() {
        writeln!(
            s,
            "--- after `{pass}` ({} phase): graph unchanged ---",
            after.phase
        )?;
    } else {
        writeln!(s, "--- after `{pass}` ({} phase) ---", after.phase)?;
        s += &after.dump();
    }
    if pass == "partition" {
        let p = cx
            .partition
            .as_ref()
            .context("partition found no layouts")?;
        writeln!(
            s,
            "--- bands {:?} (row step {}), levels {:?} ---",
            p.bands.heights(),
            p.row_step,
            p.levels
        )?;
        s += "--- layouts ---\n";
        s += &p.dump(&after);
    }
    Ok(s)
}

/// The error of running the `compile` pipeline on `proto` (it must fail).
fn failure(proto: ModelProto, setup: &Setup) -> Result<String> {
    let mut g = Graph::from_model(proto)?;
    let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
    cx.specialize = setup.sizes.clone();
    cx.partition_options.bands = BandRequest::Count(setup.bands);
    match PassManager::pipeline("compile")?.run(&mut g, &mut cx) {
        Ok(_) => anyhow::bail!("the compile pipeline accepted a graph it must refuse"),
        Err(e) => Ok(format!("{e}\n")),
    }
}

fn sizes(batch: i64, height: i64, width: i64) -> SpecializeOptions {
    SpecializeOptions {
        batch: Some(batch),
        height: Some(height),
        width: Some(width),
        dims: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// One snapshot per pass

/// Every pass of the `compile` pipeline has a golden test here; a new pass needs one too.
#[test]
fn every_compile_pass_has_a_golden_dump() -> Result<()> {
    let covered = [
        "reject-fused",
        "bind-inputs",
        "fold-constants",
        "dce",
        "require-static",
        "canonicalize",
        "partition",
        "local-types",
        "lower-group-norm",
        "insert-exchanges",
    ];
    let passes = compile_passes()?;
    let missing: Vec<_> = passes.iter().filter(|p| !covered.contains(p)).collect();
    let stale: Vec<_> = covered.iter().filter(|p| !passes.contains(p)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "passes without a golden dump: {missing:?}; golden dumps of passes no longer in the pipeline: {stale:?}"
    );
    Ok(())
}

/// Look for: the clean graph is `unchanged`; the fused graph's error names the node
/// `ff_fused`, its operator `com.microsoft:BiasSplitGelu` and the standard form to export
/// instead.
#[test]
fn reject_fused() -> Result<()> {
    insta::assert_snapshot!(
        "reject_fused_clean",
        before_after(dynamic_reshape(), &Setup::default(), "reject-fused")?
    );
    insta::assert_snapshot!(
        "reject_fused_refused",
        failure(fused_bias_split_gelu()?, &Setup::default())?
    );
    Ok(())
}

/// Look for: the symbols `batch`, `height`, `width` of `x` become 2, 8, 8, and the output's
/// annotation `[batch,?]` becomes `[2,?]`; the shape subgraph is still there.
#[test]
fn bind_inputs() -> Result<()> {
    let setup = Setup {
        sizes: sizes(2, 8, 8),
        ..Setup::default()
    };
    insta::assert_snapshot!(
        "dynamic_reshape_bind_inputs",
        before_after(dynamic_reshape(), &setup, "bind-inputs")?
    );
    Ok(())
}

/// Look for: `Shape → Gather → Unsqueeze → Concat` evaluated on the now static shape: their
/// outputs become constants (`s`, `b`, `b1`, `spec`), the Reshape reads `spec` (`[2,-1]`), and its
/// output and `y` get the static type `f32[2,256]`.
#[test]
fn fold_constants() -> Result<()> {
    let setup = Setup {
        sizes: sizes(2, 8, 8),
        ..Setup::default()
    };
    insta::assert_snapshot!(
        "dynamic_reshape_fold_constants",
        before_after(dynamic_reshape(), &setup, "fold-constants")?
    );
    Ok(())
}

/// Look for: the constants folding left without readers (`zero`, `axes0`, `minus1`, `s`, `b`,
/// `b1`) are gone; `spec`, `reshape` and `relu` remain.
#[test]
fn dce() -> Result<()> {
    let setup = Setup {
        sizes: sizes(2, 8, 8),
        ..Setup::default()
    };
    insta::assert_snapshot!(
        "dynamic_reshape_dce",
        before_after(dynamic_reshape(), &setup, "dce")?
    );
    Ok(())
}

/// Look for: on a fully static graph the pass changes nothing but the phase (`source` →
/// `specialized`); on a graph with a data-dependent shape (NonZero), the error names the node.
#[test]
fn require_static() -> Result<()> {
    let setup = Setup {
        sizes: sizes(2, 8, 8),
        ..Setup::default()
    };
    insta::assert_snapshot!(
        "dynamic_reshape_require_static",
        before_after(dynamic_reshape(), &setup, "require-static")?
    );
    insta::assert_snapshot!(
        "nonzero_require_static_refused",
        failure(data_dependent(), &Setup::default())?
    );
    Ok(())
}

/// Look for: the five nodes of torch's pattern (`gn/r1`, `gn/in`, `gn/r2`, `gn/mul`, `gn/add`)
/// become one `dfc.internal:GroupNorm` with `num_groups=4`, reading `x`, γ and β (flattened to
/// `[8]`), still producing `y`. In onnxsim's Linear, `lin/r1` reshapes to `[2,4,8]` (a new
/// shape constant) instead of `[8,8]`, `lin/gemm` becomes a MatMul reading `Transpose(lin.w)`
/// (`perm=[1,0]`, the initializer unchanged), `lin/gemm.bias` adds `lin.c` and produces `y`;
/// `lin/r2` and the old shapes are gone. ONNX Runtime's `gn_fused` becomes the internal
/// GroupNorm reading `x` itself (its Transposes cancel and are gone), then
/// `gn_fused.silu_sigmoid` and `gn_fused.silu` (the SiLU), which `post` reads.
#[test]
fn canonicalize() -> Result<()> {
    insta::assert_snapshot!(
        "torch_group_norm_canonicalize",
        before_after(torch_group_norm()?, &Setup::default(), "canonicalize")?
    );
    insta::assert_snapshot!(
        "onnxsim_linear_canonicalize",
        before_after(onnxsim_linear()?, &Setup::default(), "canonicalize")?
    );
    insta::assert_snapshot!(
        "ort_group_norm_canonicalize",
        before_after(ort_group_norm()?, &Setup::default(), "canonicalize")?
    );
    Ok(())
}

/// Look for: the graph is unchanged; the layouts say `x` and every feature map are split on
/// axis 2 (`S2`), the tokens on axis 1 (`S1`), weights replicated (`R`); the convolutions
/// need halos (one row each side, `down` only the top row with stride 2), the keys and values
/// are gathered, the GroupNorm needs statistics. Two bands are 4 + 4 rows; three bands
/// cannot be equal on 8 rows with a row step of 2, so they are unequal.
#[test]
fn partition() -> Result<()> {
    insta::assert_snapshot!(
        "mini_unet_n2_partition",
        before_after(mini_unet()?, &Setup::default(), "partition")?
    );
    let three = Setup {
        bands: 3,
        ..Setup::default()
    };
    insta::assert_snapshot!(
        "mini_unet_n3_partition",
        before_after(mini_unet()?, &three, "partition")?
    );
    Ok(())
}

/// Look for: every split value gets its band's type (`x` f32[1,4,4,8] of 2 bands; in the
/// 3-band case of 4, 2, 2 rows, band 2 is half as high as band 0), the token Reshapes read new
/// shape constants of local sizes, and `attn/qk` already has the type it will have once the keys
/// are gathered (every token's column); no exchange yet.
#[test]
fn local_types() -> Result<()> {
    insta::assert_snapshot!(
        "mini_unet_n2_local_types",
        before_after(mini_unet()?, &Setup::default(), "local-types")?
    );
    for band in [0, 2] {
        let setup = Setup {
            bands: 3,
            band,
            ..Setup::default()
        };
        insta::assert_snapshot!(
            format!("mini_unet_n3_b{band}_local_types"),
            before_after(mini_unet()?, &setup, "local-types")?
        );
    }
    Ok(())
}

/// Look for: with a split input, the GroupNorm becomes fp32 statistics of the band
/// (E[x], E[x²] per group) → `DfcStatsAllReduce` → normalization, then `· γ + β`; in `naive`
/// mode (no exchanges) it goes back to torch's Reshape → InstanceNormalization → Reshape form.
#[test]
fn lower_group_norm() -> Result<()> {
    insta::assert_snapshot!(
        "mini_unet_n2_lower_group_norm",
        before_after(mini_unet()?, &Setup::default(), "lower-group-norm")?
    );
    let naive = Setup {
        mode: Mode::Naive,
        ..Setup::default()
    };
    insta::assert_snapshot!(
        "mini_unet_n2_naive_lower_group_norm",
        before_after(mini_unet()?, &naive, "lower-group-norm")?
    );
    Ok(())
}

/// Look for: a `DfcHaloExchange` before `conv_in`, `down` and `conv_out` (their `pads` on the
/// split axis become 0), a gather of the keys and values before `attn/qk` and `attn/pv` with
/// `parts` listing every band's token count, and slots numbered in topological order; in the
/// 3-band case, band 2's gathers list the same unequal parts as band 0's.
#[test]
fn insert_exchanges() -> Result<()> {
    insta::assert_snapshot!(
        "mini_unet_n2_insert_exchanges",
        before_after(mini_unet()?, &Setup::default(), "insert-exchanges")?
    );
    for band in [0, 2] {
        let setup = Setup {
            bands: 3,
            band,
            ..Setup::default()
        };
        insta::assert_snapshot!(
            format!("mini_unet_n3_b{band}_insert_exchanges"),
            before_after(mini_unet()?, &setup, "insert-exchanges")?
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// plan.json

/// Compiles the miniature UNet for 2 GPUs in `mode` and returns its `plan.json`, with the
/// source's path and digest (which depend on the temporary folder and the encoder) redacted.
fn plan_json(mode: Mode) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("mini_unet.onnx");
    dfc::onnx::save(&mini_unet()?, &model)?;
    let output = dir.path().join("plan");
    compile(&CompileOptions {
        model,
        output: output.clone(),
        gpus: 2,
        bands: None,
        sizes: SpecializeOptions::default(),
        mode,
        warmup: 2,
        gn: Default::default(),
        split_batch: false,
        dump_after: None,
    })?;
    let text = std::fs::read_to_string(output.join("plan.json"))?;
    let mut plan: serde_json::Value = serde_json::from_str(&text)?;
    for field in ["source", "source_sha256"] {
        let v = plan
            .get_mut(field)
            .with_context(|| format!("plan.json has no `{field}`"))?;
        *v = serde_json::Value::String("[redacted]".into());
    }
    Ok(flat_number_lists(&serde_json::to_string_pretty(&plan)?) + "\n")
}

/// Puts every list of plain numbers of pretty-printed JSON on one line (`[1, 4, 4, 8]`).
fn flat_number_lists(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(open) = rest.find('[') {
        out += &rest[..open];
        let tail = &rest[open + 1..];
        match tail.find(']') {
            Some(close)
                if tail[..close]
                    .chars()
                    .all(|c| c.is_ascii_digit() || " \n,.-+eE".contains(c))
                    && !tail[..close].trim().is_empty() =>
            {
                let items: Vec<&str> = tail[..close].split(',').map(str::trim).collect();
                out += "[";
                out += &items.join(", ");
                out += "]";
                rest = &tail[close + 1..];
            }
            _ => {
                out += "[";
                rest = tail;
            }
        }
    }
    out + rest
}

/// Look for: mode `displaced` with `warmup` 2, two ranks of 4 latent rows, each rank's graph
/// file and I/O, and the exchanges (halos, statistics, gathers) in the order every rank runs
/// them with the bytes each rank receives per step (`down`'s halo reaches only upwards, so rank 0
/// receives nothing through it).
#[test]
fn plan_displaced() -> Result<()> {
    insta::assert_snapshot!("mini_unet_n2_displaced_plan", plan_json(Mode::Displaced)?);
    Ok(())
}

/// Look for: mode `naive`: the same ranks and bands, no exchange and zero bytes per step.
#[test]
fn plan_naive() -> Result<()> {
    insta::assert_snapshot!("mini_unet_n2_naive_plan", plan_json(Mode::Naive)?);
    Ok(())
}
