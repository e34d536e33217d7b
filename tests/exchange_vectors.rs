//! Test vectors of the exchange operators for the TensorRT plugins' C++ host reference and CUDA
//! kernels: the CPU operators (`plugins/exchange.rs`, the reference semantics) run N ranks in
//! lockstep over fresh then stale steps, every call is checked here against the whole image it
//! was cut from, and the calls are written to `plugins/tensorrt/build/exchange_vectors.txt`.
//! `plugins/tensorrt/build/vectors_check` (built by `tools/build_plugins.sh`) then recomputes
//! every expected output with `src/host.cpp`; `dfc_gpu_harness --vectors FILE` does the same
//! with the CUDA kernels on a GPU.
//!
//! # File format (text, one record a line)
//!
//! ```text
//! dfc-exchange-vectors 1
//! # comment
//! rec SCENARIO STEP RANK CALL OP slot S fresh_slot F stale T gn G n N rows R0 … RN
//!     dtype D axis A top P bottom B parts K P0 … dims K D0 … x K W0 … y K W0 …
//! ```
//!
//! (one line; wrapped here). `SCENARIO` names one group of N ranks (no spaces); `STEP` counts
//! from 0; `CALL` is the position of the call within the rank's step (every rank makes the same
//! calls in the same order, one per slot); `OP` is the operator name (`DfcHaloExchange`,
//! `DfcStatsAllReduce`, `DfcPatchAllGather`). `fresh_slot` 1: the slot is exchanged fresh even in
//! stale steps; `stale` 1: the step reads the previous step's context (displaced mode after
//! warmup; the effective staleness of the call is `stale && !fresh_slot`); `gn` the GroupNorm
//! mode code (`DFC_GN_*`); `rows` the band boundaries (N + 1 values; the bands' shares weight the
//! statistics). `dtype` is `f32` or `f16`; `axis`, `top`, `bottom`, `parts` the operator's
//! attributes (0 / empty where the operator has none); `dims` the rank's input shape; `x` the
//! rank's input and `y` the output the CPU operator computed, as hexadecimal bit patterns (8
//! digits for f32, 4 for f16), row-major. Records are ordered by scenario, step, call, rank.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

use dfc::contract::Bands;
use dfc::plan::{ExchangeKind, GnMode};
use dfc::plugins::Communicator;
use dfc::plugins::exchange::{
    Halo, RankContext, halo_exchange, halo_output_shape, patch_all_gather, stats_all_reduce,
};
use half::f16;

/// Steps per scenario; steps after `WARMUP` are stale.
const STEPS: u64 = 6;
const WARMUP: u64 = 2;
/// The slot exchanged fresh in every step (the model input's halo).
const FRESH_SLOT: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F32,
    F16,
}

/// One exchange node of the test graph; every rank runs them in this order each step.
#[derive(Debug, Clone)]
struct Op {
    kind: ExchangeKind,
    slot: u32,
    dtype: Dtype,
    /// Whole-image dims; `axis` holds the image rows (replaced by the band's rows per rank).
    dims: Vec<usize>,
    axis: usize,
    top: usize,
    bottom: usize,
}

fn graph() -> Vec<Op> {
    let halo = |slot, dtype, dims: &[usize], axis| Op {
        kind: ExchangeKind::Halo,
        slot,
        dtype,
        dims: dims.to_vec(),
        axis,
        top: 1,
        bottom: 1,
    };
    let other = |kind, slot, dtype, dims: &[usize]| Op {
        kind,
        slot,
        dtype,
        dims: dims.to_vec(),
        axis: 1,
        top: 0,
        bottom: 0,
    };
    vec![
        halo(FRESH_SLOT, Dtype::F32, &[2, 3, 8, 5], 2),
        halo(1, Dtype::F32, &[2, 8, 7], 1),
        halo(2, Dtype::F16, &[3, 8, 4], 1),
        // (E[x], E[x²]) of 2 groups: [2, 2].
        other(ExchangeKind::Stats, 3, Dtype::F32, &[2, 2]),
        other(ExchangeKind::Gather, 4, Dtype::F32, &[2, 8, 6]),
        other(ExchangeKind::Gather, 5, Dtype::F16, &[1, 8, 9]),
        // Pairs whose corrected estimate has a negative variance (band 0 jumps at step 3).
        other(ExchangeKind::Stats, 6, Dtype::F32, &[2, 2]),
        // Zero-mean activations: the group mean is small next to the bands' means.
        other(ExchangeKind::Stats, 7, Dtype::F32, &[1, 2]),
    ]
}

fn hash(a: u64, b: u64, c: u64, d: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in [a, b, c, d] {
        h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// Element `i` of the whole image of `slot` at `step` (halo and gather inputs).
fn image_value(slot: u32, step: u64, i: usize) -> f32 {
    let h = hash(u64::from(slot), step, i as u64, 7);
    ((h % 200_001) as i64 - 100_000) as f32 / 1000.0
}

/// The whole image of `op` at `step`, rounded to the op's type (as f32 values).
fn image(op: &Op, step: u64) -> Vec<f32> {
    let len: usize = op.dims.iter().product();
    (0..len)
        .map(|i| {
            let v = image_value(op.slot, step, i);
            match op.dtype {
                Dtype::F32 => v,
                Dtype::F16 => f16::from_f32(v).to_f32(),
            }
        })
        .collect()
}

/// Rows `rows` of `t` (dims `dims`) on `axis`.
fn rows_of(t: &[f32], dims: &[usize], axis: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let h = dims[axis];
    (0..outer)
        .flat_map(|o| t[(o * h + rows.start) * inner..(o * h + rows.end) * inner].to_vec())
        .collect()
}

/// The stats tensor of slot 3: 2 groups × 8 rows × 6 columns whose rows drift at different
/// rates over the steps.
fn stats_image(step: u64) -> Vec<f64> {
    (0..2 * 8 * 6)
        .map(|i| {
            let base = ((hash(3, 0, i as u64, 11) % 2001) as f64 - 1000.0) / 400.0;
            let rate = (i % 5) as f64 * 0.07 - 0.1;
            base + rate * step as f64 + (i / 48) as f64 * 0.5
        })
        .collect()
}

/// (E[x], E[x²]) per group of rows `rows` of the slot-3 tensor, in f64.
fn moments(step: u64, rows: std::ops::Range<usize>) -> Vec<f64> {
    let t = stats_image(step);
    (0..2)
        .flat_map(|g| {
            let vals: Vec<f64> = rows
                .clone()
                .flat_map(|r| (0..6).map(move |c| (g, r, c)))
                .map(|(g, r, c)| t[(g * 8 + r) * 6 + c])
                .collect();
            let k = vals.len() as f64;
            let m = vals.iter().sum::<f64>() / k;
            let m2 = vals.iter().map(|v| v * v).sum::<f64>() / k;
            [m, m2]
        })
        .collect()
}

/// Slot 6 on band `r` at `step`: group 0 of band 0 moves its mean 0 → 3 at step 3 (variance
/// 10 → 1), the other bands stay at (0, 0.1); group 1 drifts mildly everywhere.
fn jump_pairs(r: usize, step: u64) -> Vec<f32> {
    let g0 = match (r, step) {
        (0, t) if t >= 3 => [3.0, 10.0],
        (0, _) => [0.0, 10.0],
        _ => [0.0, 0.1],
    };
    let m = 0.25 * r as f32 + 0.125 * step as f32;
    vec![g0[0], g0[1], m, m * m + 2.0]
}

/// Slot 7 on band `r` of `n` at `step`: band means of alternating sign around 0 that drift
/// slowly, so that the group mean and its stale corrections nearly cancel.
fn centred_pairs(r: usize, n: usize, step: u64) -> Vec<f32> {
    let m = if r.is_multiple_of(2) { 0.3127 } else { -0.3111 }
        * (1.0 + 0.0013 * step as f32 * (r + 1) as f32)
        + if !n.is_multiple_of(2) && r + 1 == n {
            -0.0013
        } else {
            0.0
        };
    vec![m, m * m + 1.0]
}

/// One call of one rank, as written to the file.
#[derive(Debug, Clone)]
struct Record {
    step: u64,
    rank: usize,
    call: usize,
    op: Op,
    stale: bool,
    dims: Vec<usize>,
    parts: Vec<usize>,
    x: Vec<f32>,
    y: Vec<f32>,
}

struct Scenario {
    name: String,
    bands: Bands,
    gn: GnMode,
}

impl Scenario {
    fn n(&self) -> usize {
        self.bands.n()
    }
    fn band(&self, r: usize) -> std::ops::Range<usize> {
        let rows = self.bands.rows(r);
        rows.start as usize..rows.end as usize
    }
}

fn scenarios() -> Vec<Scenario> {
    let mut out = Vec::new();
    for heights in [&[4i64, 4][..], &[3, 3, 2], &[2, 2, 2, 2]] {
        for gn in GnMode::ALL {
            let bands = Bands::from_heights(heights).expect("bands");
            out.push(Scenario {
                name: format!("n{}-{}", heights.len(), gn.name()),
                bands,
                gn,
            });
        }
    }
    out
}

/// The input of `op` on band `r` of scenario `sc` at `step`, and its dims.
fn input(sc: &Scenario, op: &Op, r: usize, step: u64) -> (Vec<f32>, Vec<usize>) {
    match (op.kind, op.slot) {
        (ExchangeKind::Stats, 3) => (
            moments(step, sc.band(r))
                .iter()
                .map(|&v| v as f32)
                .collect(),
            op.dims.clone(),
        ),
        (ExchangeKind::Stats, 6) => (jump_pairs(r, step), op.dims.clone()),
        (ExchangeKind::Stats, _) => (centred_pairs(r, sc.n(), step), op.dims.clone()),
        _ => {
            let mut dims = op.dims.clone();
            dims[op.axis] = sc.band(r).len();
            (
                rows_of(&image(op, step), &op.dims, op.axis, sc.band(r)),
                dims,
            )
        }
    }
}

/// Runs one call of `op` on `ctx`.
fn call(ctx: &RankContext, op: &Op, dims: &[usize], parts: &[usize], x: &[f32]) -> Vec<f32> {
    match op.kind {
        ExchangeKind::Halo => {
            let halo = Halo {
                axis: op.axis,
                top: op.top,
                bottom: op.bottom,
            };
            let len: usize = halo_output_shape(dims, halo).iter().product();
            match op.dtype {
                Dtype::F32 => {
                    let mut y = vec![f32::NAN; len];
                    halo_exchange(ctx, op.slot, halo, dims, x, &mut y).expect("halo");
                    y
                }
                Dtype::F16 => {
                    let xs: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                    let mut y = vec![f16::NAN; len];
                    halo_exchange(ctx, op.slot, halo, dims, &xs, &mut y).expect("halo");
                    y.iter().map(|v| v.to_f32()).collect()
                }
            }
        }
        ExchangeKind::Stats => {
            let mut g = vec![f32::NAN; x.len()];
            stats_all_reduce(ctx, op.slot, dims, x, &mut g).expect("stats");
            g
        }
        ExchangeKind::Gather => {
            let len = x.len() / dims[op.axis] * parts.iter().sum::<usize>();
            match op.dtype {
                Dtype::F32 => {
                    let mut y = vec![f32::NAN; len];
                    patch_all_gather(ctx, op.slot, dims, op.axis, parts, x, &mut y)
                        .expect("gather");
                    y
                }
                Dtype::F16 => {
                    let xs: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                    let mut y = vec![f16::NAN; len];
                    patch_all_gather(ctx, op.slot, dims, op.axis, parts, &xs, &mut y)
                        .expect("gather");
                    y.iter().map(|v| v.to_f32()).collect()
                }
            }
        }
    }
}

/// Every rank of `sc` in lockstep (one thread each) over `STEPS` steps, stale after `WARMUP`.
fn run(sc: &Scenario) -> Vec<Record> {
    let n = sc.n();
    let ops = graph();
    let parts: Vec<usize> = (0..n).map(|r| sc.band(r).len()).collect();
    let comm = Arc::new(Communicator::new(n));
    let mut records: Vec<Record> = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let ctx = RankContext::new(comm.clone(), rank)
                    .with_gn(sc.gn)
                    .with_bands(&sc.bands)
                    .with_always_fresh([FRESH_SLOT]);
                let (ops, parts) = (&ops, &parts);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for step in 0..STEPS {
                        let stale = step > WARMUP;
                        ctx.begin_step(step, stale);
                        for (k, op) in ops.iter().enumerate() {
                            let (x, dims) = input(sc, op, rank, step);
                            let p = if op.kind == ExchangeKind::Gather {
                                parts.clone()
                            } else {
                                Vec::new()
                            };
                            let y = call(&ctx, op, &dims, &p, &x);
                            out.push(Record {
                                step,
                                rank,
                                call: k,
                                op: op.clone(),
                                stale,
                                dims,
                                parts: p,
                                x,
                                y,
                            });
                        }
                        ctx.end_step();
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("rank thread"))
            .collect()
    });
    records.sort_by_key(|r| (r.step, r.call, r.rank));
    records
}

fn close(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// What each record must hold, derived from the whole images rather than from the operators.
/// Returns how many corrected pairs fell back to the band's own statistics.
fn check(sc: &Scenario, records: &[Record]) -> usize {
    let n = sc.n();
    let shares = sc.bands.shares();
    let mut fallbacks = 0;
    for rec in records {
        let (r, t, op) = (rec.rank, rec.step, &rec.op);
        let what = format!("{} step {t} rank {r} slot {}", sc.name, op.slot);
        let stale = rec.stale && op.slot != FRESH_SLOT;
        // The step whose data the other bands contribute.
        let ctx_step = if stale { t - 1 } else { t };
        match op.kind {
            ExchangeKind::Halo => {
                let rows = sc.band(r);
                let (fresh, old) = (image(op, t), image(op, ctx_step));
                let mut want = Vec::new();
                let outer: usize = op.dims[..op.axis].iter().product();
                let inner: usize = op.dims[op.axis + 1..].iter().product();
                let h = op.dims[op.axis];
                for o in 0..outer {
                    let lo = rows.start as i64 - op.top as i64;
                    let hi = (rows.end + op.bottom) as i64;
                    for row in lo..hi {
                        let src = if rows.contains(&(row as usize)) {
                            &fresh
                        } else {
                            &old
                        };
                        for c in 0..inner {
                            want.push(if (0..h as i64).contains(&row) {
                                src[(o * h + row as usize) * inner + c]
                            } else {
                                0.0
                            });
                        }
                    }
                }
                assert_eq!(rec.y, want, "{what}");
            }
            ExchangeKind::Gather => {
                let (fresh, old) = (image(op, t), image(op, ctx_step));
                let mut want = old.clone();
                let own = rows_of(&fresh, &op.dims, op.axis, sc.band(r));
                let outer: usize = op.dims[..op.axis].iter().product();
                let inner: usize = op.dims[op.axis + 1..].iter().product();
                let (h, band) = (op.dims[op.axis], sc.band(r));
                let block = band.len() * inner;
                for o in 0..outer {
                    let dst = (o * h + band.start) * inner;
                    want[dst..dst + block].copy_from_slice(&own[o * block..(o + 1) * block]);
                }
                assert_eq!(rec.y, want, "{what}");
            }
            ExchangeKind::Stats => {
                let s = |q: usize, t: u64| -> Vec<f64> {
                    if op.slot == 3 {
                        moments(t, sc.band(q))
                            .iter()
                            .map(|&v| f64::from(v as f32))
                            .collect()
                    } else if op.slot == 6 {
                        jump_pairs(q, t).iter().map(|&v| f64::from(v)).collect()
                    } else {
                        centred_pairs(q, n, t)
                            .iter()
                            .map(|&v| f64::from(v))
                            .collect()
                    }
                };
                let len = rec.x.len();
                let mean = |t: u64| -> Vec<f64> {
                    (0..len)
                        .map(|k| (0..n).map(|q| shares[q] * s(q, t)[k]).sum())
                        .collect()
                };
                if op.slot == 3 && (!stale || sc.gn == GnMode::Sync) {
                    // The group mean is the whole image's moments, computed directly.
                    let direct = moments(t, 0..8);
                    for (a, b) in rec.y.iter().zip(&direct) {
                        assert!(close(*a, *b), "{what}: {:?} vs {direct:?}", rec.y);
                    }
                }
                let want: Vec<f64> = if !stale || sc.gn == GnMode::Sync {
                    mean(t)
                } else {
                    let (old, now, before) = (mean(t - 1), s(r, t), s(r, t - 1));
                    match sc.gn {
                        GnMode::Separate => now,
                        GnMode::Stale => (0..len)
                            .map(|k| old[k] + shares[r] * (now[k] - before[k]))
                            .collect(),
                        _ => {
                            let mut g: Vec<f64> =
                                (0..len).map(|k| old[k] + now[k] - before[k]).collect();
                            for k in (0..len).step_by(2) {
                                if g[k + 1] - g[k] * g[k] < 0.0 {
                                    g[k] = now[k];
                                    g[k + 1] = now[k + 1];
                                    fallbacks += 1;
                                }
                            }
                            g
                        }
                    }
                };
                for (a, b) in rec.y.iter().zip(&want) {
                    assert!(close(*a, *b), "{what}: {:?} vs {want:?}", rec.y);
                }
                if sc.gn == GnMode::Separate && stale {
                    assert_eq!(rec.y, rec.x, "{what}: separate is the band's own");
                }
            }
        }
    }
    fallbacks
}

fn hex(dtype: Dtype, v: &[f32]) -> String {
    let mut s = format!("{}", v.len());
    for &x in v {
        match dtype {
            Dtype::F32 => write!(s, " {:08x}", x.to_bits()),
            Dtype::F16 => write!(s, " {:04x}", f16::from_f32(x).to_bits()),
        }
        .expect("format");
    }
    s
}

fn list(v: &[usize]) -> String {
    let mut s = format!("{}", v.len());
    for x in v {
        write!(s, " {x}").expect("format");
    }
    s
}

fn write_record(out: &mut String, sc: &Scenario, rec: &Record) {
    let op = &rec.op;
    let (axis, top, bottom) = match op.kind {
        ExchangeKind::Stats => (0, 0, 0),
        _ => (op.axis, op.top, op.bottom),
    };
    let rows: Vec<String> = sc.bands.bounds().iter().map(|b| b.to_string()).collect();
    writeln!(
        out,
        "rec {} {} {} {} {} slot {} fresh_slot {} stale {} gn {} n {} rows {} dtype {} axis {axis} top {top} bottom {bottom} parts {} dims {} x {} y {}",
        sc.name,
        rec.step,
        rec.rank,
        rec.call,
        op.kind.op_type(),
        op.slot,
        u8::from(op.slot == FRESH_SLOT),
        u8::from(rec.stale),
        sc.gn.code(),
        sc.n(),
        rows.join(" "),
        match op.dtype {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        },
        list(&rec.parts),
        list(&rec.dims),
        hex(op.dtype, &rec.x),
        hex(op.dtype, &rec.y),
    )
    .expect("format");
}

fn build_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("plugins/tensorrt/build")
}

#[test]
fn exchange_vectors_match_the_whole_image_and_the_cpp_host_reference() {
    let mut text = String::from(
        "dfc-exchange-vectors 1\n# Written by tests/exchange_vectors.rs from the CPU exchange operators; format in that file.\n",
    );
    let mut fallbacks = 0;
    let mut count = 0;
    for sc in scenarios() {
        let records = run(&sc);
        assert_eq!(records.len(), sc.n() * STEPS as usize * graph().len());
        let f = check(&sc, &records);
        if sc.gn == GnMode::Corrected {
            // Slot 6 band 0 at its jump (step 3, stale) at every N.
            assert!(f >= 1, "{}: no corrected pair fell back", sc.name);
        } else {
            assert_eq!(f, 0, "{}", sc.name);
        }
        fallbacks += f;
        for rec in &records {
            write_record(&mut text, &sc, rec);
        }
        count += records.len();
    }
    assert!(fallbacks >= 3);
    let dir = build_dir();
    std::fs::create_dir_all(&dir).expect("build dir");
    let file = dir.join("exchange_vectors.txt");
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = dir.join(format!("exchange_vectors.txt.{}", std::process::id()));
    std::fs::write(&tmp, &text).expect("write vectors");
    std::fs::rename(&tmp, &file).expect("rename vectors");
    println!("wrote {count} records to {}", file.display());

    let checker = dir.join("vectors_check");
    if !checker.is_file() {
        println!("skipped: vectors_check not built (tools/build_plugins.sh)");
        return;
    }
    let out = Command::new(&checker)
        .arg(&file)
        .output()
        .expect("run vectors_check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "vectors_check failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("{count} records")),
        "vectors_check did not check every record:\n{stdout}"
    );
}
