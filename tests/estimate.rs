//! `dfc estimate`'s model on a small plan: `models/sd15_tiny.onnx` compiled for 2 GPUs, its
//! latency recomputed by hand from `plan.json` and the rank graphs' types.

use std::path::{Path, PathBuf};

use anyhow::Result;
use dfc::estimate::{Gpu, Link, LinkKind, Setup, calibrate, cost_plan, estimate};
use dfc::ir::{DataType, Graph};
use dfc::passes::driver::{CompileOptions, compile};
use dfc::passes::specialize::SpecializeOptions;
use dfc::plan::{Mode, Plan};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn compile_tiny(out: &Path, gpus: usize, mode: Mode) -> Result<Plan> {
    compile(&CompileOptions {
        model: root().join("models/sd15_tiny.onnx"),
        output: out.to_path_buf(),
        gpus,
        bands: None,
        sizes: SpecializeOptions::default(),
        mode,
        warmup: 4,
        gn: Default::default(),
        split_batch: false,
        dump_after: None,
    })?;
    Ok(Plan::load(out)?)
}

/// A GPU with unlimited memory bandwidth: every node takes FLOPs / peak.
const COMPUTE_ONLY: Gpu = Gpu {
    name: "test",
    sms: 1,
    fp16_flops: 1e12,
    memory_bandwidth: 1e30,
    memory_bytes: 1e12,
    nvlink: Some(1e9),
    pcie: 1e8,
};

/// FLOPs of every Conv and MatMul of a rank graph, counted directly from its types:
/// `2 · |Y| · |W| / C_out (+ |Y|` for a bias`)` and `2 · |Y| · K`.
fn conv_matmul_flops(path: &Path) -> Result<f64> {
    let g = Graph::from_model(dfc::onnx::load(path)?.proto)?;
    let dims = |v| -> Vec<i64> {
        g.value(v)
            .tensor_type()
            .and_then(|t| t.static_dims())
            .unwrap_or_default()
    };
    let numel = |d: &[i64]| d.iter().product::<i64>() as f64;
    let mut flops = 0.0;
    for id in g.node_ids() {
        let n = g.node(id);
        let (Some(x), Some(w), Some(y)) = (n.input(0), n.input(1), n.output(0)) else {
            continue;
        };
        let (w, y) = (dims(w), dims(y));
        match n.op_type.as_str() {
            "Conv" => {
                flops += 2.0 * numel(&y) * numel(&w) / w[0] as f64;
                if n.input(2).is_some() {
                    flops += numel(&y);
                }
            }
            "MatMul" => flops += 2.0 * numel(&y) * *dims(x).last().unwrap_or(&1) as f64,
            _ => {}
        }
    }
    Ok(flops)
}

#[test]
fn latency_of_the_tiny_plan_matches_a_hand_calculation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("plan");
    let plan = compile_tiny(&out, 2, Mode::Displaced)?;
    let costs = cost_plan(&out, &plan)?;
    assert_eq!(costs.len(), 2);
    let link = Link {
        kind: LinkKind::Nvlink,
        bandwidth: 1e9,
        latency: 1e-5,
    };
    let setup = Setup {
        gpu: COMPUTE_ONLY,
        link,
        steps: 10,
        efficiency: 0.5,
        kernel_s: 0.0,
    };
    let e = estimate(&plan, &costs, &setup);

    // By hand: compute = FLOPs / (peak · efficiency); each slot 10 µs + bytes / 1 GB/s; step 0
    // and 4 warmup steps wait for every exchange, the 5 others overlap the stale ones.
    let mut sync = 0f64;
    let mut stale_step = 0f64;
    for (r, c) in costs.iter().enumerate() {
        let compute = c.flops / (1e12 * 0.5);
        let (mut fresh, mut stale) = (0.0, 0.0);
        for x in &plan.exchanges {
            let t = 1e-5 + x.bytes_received[r] as f64 / 1e9;
            if x.always_fresh {
                fresh += t;
            } else {
                stale += t;
            }
        }
        sync = sync.max(compute + fresh + stale);
        stale_step = stale_step.max(compute.max(stale) + fresh);
    }
    let want = 5.0 * sync + 5.0 * stale_step;
    assert_eq!(e.sync_steps, 5);
    assert!(
        (e.latency_s - want).abs() <= 1e-12 * want,
        "{} vs {want}",
        e.latency_s
    );
    assert!(e.stale_step_s < e.sync_step_s);

    // The FLOPs of the convolutions and matrix products, counted from the types directly,
    // are part of what the cost rules count, and dominate it.
    for r in &plan.ranks {
        let direct = conv_matmul_flops(&out.join(&r.file))?;
        let counted = costs[r.rank].flops;
        assert!(direct > 0.0 && direct <= counted, "{direct} vs {counted}");
        assert!(direct > 0.8 * counted, "{direct} vs {counted}");
        assert_eq!(costs[r.rank].unknown_nodes, 0);
    }
    Ok(())
}

#[test]
fn halves_cost_about_half_and_memory_is_recorded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let one = compile_tiny(&dir.path().join("n1"), 1, Mode::Displaced)?;
    let two = compile_tiny(&dir.path().join("n2"), 2, Mode::Displaced)?;
    let c1 = cost_plan(&dir.path().join("n1"), &one)?;
    let c2 = cost_plan(&dir.path().join("n2"), &two)?;
    // Each band does about half the work (its rows; the embeddings are replicated, the
    // statistics of lowered GroupNorms cost differently from the fused operator).
    for c in &c2 {
        let ratio = c.flops / c1[0].flops;
        assert!(ratio > 0.45 && ratio < 0.6, "rank {}: {ratio}", c.rank);
    }
    // Stale buffers: two parities of every slot that may be stale.
    for m in &two.memory {
        let stale: u64 = two
            .exchanges
            .iter()
            .filter(|x| !x.always_fresh)
            .map(|x| 2 * x.bytes_received[m.rank])
            .sum();
        assert_eq!(m.stale_buffer_bytes, stale);
        assert!(m.activation_peak_bytes > 0 && m.activation_peak_bytes <= m.activation_sum_bytes);
    }
    assert_eq!(one.memory[0].stale_buffer_bytes, 0);
    // Weights: every rank references the model's initializers.
    let g = Graph::from_model(dfc::onnx::load(&root().join("models/sd15_tiny.onnx"))?.proto)?;
    let weights: u64 = g
        .value_ids()
        .filter_map(|v| g.value(v).init.as_ref())
        .filter(|t| DataType(t.data_type()) == DataType::FLOAT)
        .map(|t| 4 * t.dims.iter().product::<i64>() as u64)
        .sum();
    assert!(
        one.memory[0].weights_bytes >= weights / 2,
        "{:?}",
        one.memory[0]
    );
    // A sync plan keeps no stale buffers.
    let sync = compile_tiny(&dir.path().join("s2"), 2, Mode::Sync)?;
    assert!(sync.memory.iter().all(|m| m.stale_buffer_bytes == 0));
    Ok(())
}

#[test]
fn link_and_gpu_names_are_checked() {
    assert!(
        Gpu::by_name("l40s")
            .unwrap()
            .link(LinkKind::Nvlink)
            .is_err()
    );
    assert!(Gpu::by_name("A100").is_ok());
    assert!(Gpu::by_name("v100").is_err());
}

#[test]
fn waves_and_launches_by_hand() -> Result<()> {
    // 108 SMs: a full wave, one tile too many (two waves, the second nearly empty), half a wave.
    let a100 = Gpu::by_name("a100")?;
    assert_eq!(a100.wave_fill(108.0), 1.0);
    assert_eq!(a100.wave_fill(109.0), 109.0 / 216.0);
    assert_eq!(a100.wave_fill(54.0), 0.5);
    assert_eq!(a100.wave_fill(0.0), 1.0);

    // A one-rank plan on a 4-SM GPU: every node by hand from its cost rule, 1 µs per kernel.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("n1");
    let plan = compile_tiny(&out, 1, Mode::Sync)?;
    let costs = cost_plan(&out, &plan)?;
    let gpu = Gpu {
        sms: 4,
        memory_bandwidth: 1e11,
        ..COMPUTE_ONLY
    };
    let g = Graph::from_model(dfc::onnx::load(&out.join(&plan.ranks[0].file))?.proto)?;
    let (mut roofline, mut kernels) = (0.0, 0usize);
    for n in dfc::passes::cost::graph_cost(&g)?.nodes {
        let c = n.cost;
        let waves = (c.tiles / 4.0).ceil();
        let fill = if c.tiles > 0.0 {
            c.tiles / (4.0 * waves)
        } else {
            1.0
        };
        roofline += (c.flops / (1e12 * fill)).max(c.bytes() / 1e11);
        kernels += usize::from(c.flops > 0.0 || c.bytes() > 0.0);
    }
    assert!(
        kernels > 0 && kernels < g.node_ids().count(),
        "views launch nothing"
    );
    let want = roofline / 0.5 + kernels as f64 * 1e-6;
    let got = costs[0].compute_s(&gpu, 0.5, 1e-6);
    assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");

    // Calibrating on the plan's own predicted time gives back the efficiency.
    let setup = Setup {
        gpu,
        link: gpu.link(LinkKind::Nvlink)?,
        steps: 20,
        efficiency: 0.37,
        kernel_s: 1e-6,
    };
    let e = estimate(&plan, &costs, &setup);
    let fitted = calibrate(&costs[0], &gpu, 20, e.latency_s, 1e-6).unwrap_or_default();
    assert!((fitted - 0.37).abs() < 1e-9, "{fitted}");
    // A measurement shorter than the launches alone cannot be fitted.
    assert!(calibrate(&costs[0], &gpu, 20, 20.0 * kernels as f64 * 1e-6, 1e-6).is_none());
    Ok(())
}
