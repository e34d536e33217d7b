//! `dfc estimate`: predicted latency and speedup of plans on GPUs that are not here (the model
//! is [`crate::estimate`]'s): per rank, FLOPs and bytes of its graph on the GPU's roofline,
//! exchange time on the link, the mode's schedule; `--png` plots speedup against GPU count,
//! one line per resolution.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::estimate::{
    CALIBRATED_EFFICIENCY, Estimate, Gpu, KERNEL_LAUNCH_S, LinkKind, Setup, calibrate, cost_plan,
    estimate,
};
use crate::plan::Plan;

/// Arguments of `dfc estimate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Plan folders; a one-GPU plan of the same latent size is the baseline of the speedups.
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
    /// GPU type: a100, h100, h200 or l40s.
    #[arg(long, default_value = "a100")]
    pub gpu: String,
    /// Interconnect between the GPUs.
    #[arg(long, value_enum, default_value = "nvlink")]
    pub link: LinkKind,
    /// Sampling steps.
    #[arg(long, default_value_t = 50)]
    pub steps: u32,
    /// Roofline efficiency (default: the calibrated one).
    #[arg(long, conflicts_with = "calibrate")]
    pub efficiency: Option<f64>,
    /// Fit the efficiency to a measurement of your own: the seconds the one-GPU plan among
    /// PLANS takes for `--steps` steps on this GPU.
    #[arg(long, value_name = "SECONDS")]
    pub calibrate: Option<f64>,
    /// Fixed microseconds per launched kernel.
    #[arg(long, default_value_t = KERNEL_LAUNCH_S * 1e6)]
    pub kernel_us: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write a plot of speedup against GPU count (one line per latent size) to this PNG.
    #[arg(long, value_name = "PLOT")]
    pub png: Option<PathBuf>,
}

/// One plan's estimate and its speedup.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub plan: String,
    #[serde(flatten)]
    pub estimate: Estimate,
    /// Over the one-GPU plan of the same latent size among the plans given.
    pub speedup: Option<f64>,
}

/// Estimates every plan of `args`.
pub fn rows(args: &Args) -> Result<Vec<Row>> {
    let gpu = Gpu::by_name(&args.gpu)?;
    let link = gpu.link(args.link)?;
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !(args.kernel_us >= 0.0 && args.kernel_us.is_finite()) {
        bail!(
            "--kernel-us must be a non-negative number, not {}",
            args.kernel_us
        );
    }
    let kernel_s = args.kernel_us * 1e-6;
    let mut plans = Vec::new();
    for dir in &args.plans {
        let plan = Plan::load(dir)?;
        let costs = cost_plan(dir, &plan).with_context(|| format!("costing {}", dir.display()))?;
        plans.push((dir, plan, costs));
    }
    let efficiency = match args.calibrate {
        None => args.efficiency.unwrap_or(CALIBRATED_EFFICIENCY),
        Some(seconds) => {
            if !(seconds.is_finite() && seconds > 0.0) {
                bail!("--calibrate takes the measured seconds, a positive number, not {seconds}");
            }
            let Some((_, _, costs)) = plans.iter().find(|(_, p, _)| p.world_size == 1) else {
                bail!(
                    "--calibrate needs a one-GPU plan among the plans (compile one with --gpus 1)"
                );
            };
            calibrate(&costs[0], &gpu, args.steps, seconds, kernel_s).with_context(|| {
                format!(
                    "{seconds} s is less than the kernel launches alone take at --kernel-us {}",
                    args.kernel_us
                )
            })?
        }
    };
    if !(efficiency > 0.0 && efficiency <= 1.0) {
        match args.calibrate {
            Some(seconds) => bail!(
                "{seconds} s for {} steps is faster than this GPU's roofline allows for the one-GPU plan (fitted efficiency {efficiency:.3} > 1)",
                args.steps
            ),
            None => bail!("--efficiency must be in (0, 1], not {efficiency}"),
        }
    }
    let setup = Setup {
        gpu,
        link,
        steps: args.steps,
        efficiency,
        kernel_s,
    };
    let mut out = Vec::new();
    for (dir, plan, costs) in &plans {
        out.push(Row {
            plan: dir.display().to_string(),
            estimate: estimate(plan, costs, &setup),
            speedup: None,
        });
    }
    let baselines: Vec<([i64; 2], f64)> = out
        .iter()
        .filter(|r| r.estimate.world_size == 1)
        .map(|r| (r.estimate.latent, r.estimate.latency_s))
        .collect();
    for r in &mut out {
        r.speedup = baselines
            .iter()
            .find(|(l, _)| *l == r.estimate.latent)
            .map(|(_, t)| t / r.estimate.latency_s);
    }
    Ok(out)
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let rows = rows(args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("encoding the estimate")?
        );
    } else {
        print!("{}", render(&rows));
    }
    if let Some(png) = &args.png {
        plot(&rows)
            .save(png)
            .with_context(|| format!("writing {}", png.display()))?;
    }
    Ok(())
}

/// The human-readable table.
pub fn render(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(r) = rows.first() {
        let e = &r.estimate;
        let _ = writeln!(
            s,
            "{} with {:?}, {} steps, roofline efficiency {:.3}, {:.1} µs per kernel",
            e.gpu,
            e.link,
            e.steps,
            e.efficiency,
            e.kernel_s * 1e6
        );
    }
    let _ = writeln!(
        s,
        "{:>9} {:>4} {:>5} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}  plan",
        "latent",
        "GPUs",
        "split",
        "mode",
        "TFLOP/rk",
        "comp ms",
        "exch ms",
        "sync ms",
        "stale ms",
        "latency s",
        "speedup",
        "mem GB"
    );
    for r in rows {
        let e = &r.estimate;
        let slow = e
            .ranks
            .iter()
            .max_by(|a, b| a.stale_step_s.total_cmp(&b.stale_step_s));
        let mem = e
            .ranks
            .iter()
            .filter_map(|k| k.memory_bytes)
            .max()
            .map_or("-".to_string(), |m| format!("{:.2}", m as f64 / 1e9));
        let _ = writeln!(
            s,
            "{:>9} {:>4} {:>5} {:>9} {:>10.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>7} {:>9}  {}",
            format!("{}x{}", e.latent[0], e.latent[1]),
            e.world_size,
            if e.split_batch { "yes" } else { "no" },
            e.mode,
            slow.map_or(0.0, |k| k.flops / 1e12),
            slow.map_or(0.0, |k| k.compute_s * 1e3),
            slow.map_or(0.0, |k| (k.stale_exchange_s + k.fresh_exchange_s) * 1e3
                + 0.0),
            e.sync_step_s * 1e3,
            e.stale_step_s * 1e3,
            e.latency_s,
            r.speedup.map_or("-".to_string(), |x| format!("{x:.2}x")),
            match e.fits {
                Some(false) => format!("{mem} (!)"),
                _ => mem,
            },
            r.plan,
        );
    }
    s
}

// ---- the plot ----

const W: u32 = 720;
const H: u32 = 480;
const LEFT: i64 = 70;
const RIGHT: i64 = 30;
const TOP: i64 = 30;
const BOTTOM: i64 = 60;
const COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [23, 190, 207],
];

/// 3×5 glyphs of the characters the plot writes.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'x' => [0, 5, 2, 5, 0],
        '.' => [0, 0, 0, 0, 2],
        _ => [0; 5],
    }
}

struct Canvas(image::RgbImage);

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < W && (y as u32) < H {
            self.0.put_pixel(x as u32, y as u32, image::Rgb(c));
        }
    }

    fn line(
        &mut self,
        (x0, y0): (f64, f64),
        (x1, y1): (f64, f64),
        c: [u8; 3],
        thick: i64,
        dash: bool,
    ) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
        for i in 0..=n {
            if dash && (i / 6) % 2 == 1 {
                continue;
            }
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for dx in -(thick / 2)..=thick / 2 {
                for dy in -(thick / 2)..=thick / 2 {
                    self.put(x.round() as i64 + dx, y.round() as i64 + dy, c);
                }
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        const SCALE: i64 = 2;
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for sx in 0..SCALE {
                            for sy in 0..SCALE {
                                self.put(
                                    x + (k as i64 * 4 + col) * SCALE + sx,
                                    y + row as i64 * SCALE + sy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Speedup against GPU count (both axes log₂), one line per latent size (labelled with the
/// image size, 8 × the latent; plans splitting the CFG batch dashed in the same colour), the
/// ideal (linear) speedup dashed in grey.
pub fn plot(rows: &[Row]) -> image::RgbImage {
    let mut lines: BTreeMap<(i64, bool), Vec<(usize, f64)>> = BTreeMap::new();
    for r in rows {
        if let Some(s) = r.speedup {
            let key = (r.estimate.latent[0], r.estimate.split_batch);
            lines
                .entry(key)
                .or_default()
                .push((r.estimate.world_size, s));
        }
    }
    // A split-batch line starts from the one-GPU plan of its size.
    let starts: Vec<(i64, (usize, f64))> = lines
        .iter()
        .filter(|((_, split), _)| !split)
        .filter_map(|((l, _), pts)| pts.iter().find(|p| p.0 == 1).map(|&p| (*l, p)))
        .collect();
    for (latent, p) in starts {
        if let Some(v) = lines.get_mut(&(latent, true)) {
            v.push(p);
        }
    }
    let max_n = rows
        .iter()
        .map(|r| r.estimate.world_size)
        .max()
        .unwrap_or(1)
        .max(2);
    let max_s = max_n as f64;
    let mut cv = Canvas(image::RgbImage::from_pixel(
        W,
        H,
        image::Rgb([255, 255, 255]),
    ));
    let (x0, x1) = (LEFT as f64, (W as i64 - RIGHT) as f64);
    let (y0, y1) = ((H as i64 - BOTTOM) as f64, TOP as f64);
    let lx = max_s.log2();
    let px = |n: usize| x0 + (n as f64).log2() / lx * (x1 - x0);
    let py = |s: f64| y0 - s.max(1.0).log2() / lx * (y0 - y1);
    let grey = [200, 200, 200];
    let black = [0, 0, 0];
    // Grid and ticks on powers of two.
    let mut n = 1;
    while n <= max_n {
        let (x, y) = (px(n), py(n as f64));
        cv.line((x, y0), (x, y1), [235, 235, 235], 1, false);
        cv.line((x0, y), (x1, y), [235, 235, 235], 1, false);
        cv.text(x as i64 - 4, y0 as i64 + 10, &n.to_string(), black);
        let label = format!("{n}x");
        cv.text(
            LEFT - 14 - 8 * label.len() as i64,
            y as i64 - 5,
            &label,
            black,
        );
        n *= 2;
    }
    cv.line((x0, y0), (x1, y0), black, 1, false);
    cv.line((x0, y0), (x0, y1), black, 1, false);
    cv.line((px(1), py(1.0)), (px(max_n), py(max_s)), grey, 2, true);
    let latents: Vec<i64> = {
        let mut v: Vec<i64> = lines.keys().map(|k| k.0).collect();
        v.dedup();
        v
    };
    for ((latent, split), pts) in lines.iter_mut() {
        pts.sort_by_key(|p| p.0);
        let i = latents.iter().position(|l| l == latent).unwrap_or(0);
        let c = COLORS[i % COLORS.len()];
        for w in pts.windows(2) {
            cv.line(
                (px(w[0].0), py(w[0].1)),
                (px(w[1].0), py(w[1].1)),
                c,
                3,
                *split,
            );
        }
        for &(n, s) in pts.iter() {
            for dx in -4..=4 {
                for dy in -4..=4 {
                    cv.put(px(n) as i64 + dx, py(s) as i64 + dy, c);
                }
            }
        }
        if *split {
            continue;
        }
        // Legend: colour, then the image size (8 × latent).
        let ly = TOP + 10 + 22 * i as i64;
        cv.line(
            (x0 + 20.0, ly as f64 + 5.0),
            (x0 + 50.0, ly as f64 + 5.0),
            c,
            3,
            false,
        );
        cv.text(LEFT + 60, ly, &(8 * *latent).to_string(), black);
    }
    cv.0
}
