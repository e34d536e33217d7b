//! `dfc estimate`: predicted latency and speedup of plans on GPUs that are not here (the model
//! is [`crate::estimate`]'s): per rank, FLOPs and bytes of its graph on the GPU's roofline,
//! exchange time on the link, the mode's schedule; `--png` plots the table's speedups against
//! GPU count, one line per latent size, mode and CFG split ([`series`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::estimate::{
    CALIBRATED_EFFICIENCY, Estimate, Gpu, KERNEL_LAUNCH_S, LinkKind, Setup, calibrate, cost_plan,
    estimate,
};
use crate::plan::Plan;

use super::run::at_least;

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
    #[arg(long, default_value_t = 50, allow_negative_numbers = true,
          value_parser = at_least::<u32, 1>)]
    pub steps: u32,
    /// Roofline efficiency (default: the calibrated one).
    #[arg(long, conflicts_with = "calibrate", allow_negative_numbers = true)]
    pub efficiency: Option<f64>,
    /// Fit the efficiency to a measurement of your own: the seconds the one-GPU plan among
    /// PLANS takes for `--steps` steps on this GPU.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub calibrate: Option<f64>,
    /// Fixed microseconds per launched kernel.
    #[arg(long, default_value_t = KERNEL_LAUNCH_S * 1e6, allow_negative_numbers = true)]
    pub kernel_us: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write a plot of speedup against GPU count (one line per latent size, mode and CFG
    /// split) to this PNG.
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

/// 3×5 glyphs of the characters the plot writes (digits, `x`, `.` and the letters of the
/// modes' names and `split`).
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
        'a' => [0, 3, 5, 5, 3],
        'b' => [4, 6, 5, 5, 6],
        'c' => [0, 3, 4, 4, 3],
        'd' => [1, 3, 5, 5, 3],
        'e' => [0, 2, 7, 4, 3],
        'g' => [0, 3, 5, 3, 6],
        'h' => [4, 6, 5, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'l' => [6, 2, 2, 2, 7],
        'm' => [0, 7, 7, 5, 5],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 2, 5, 5, 2],
        'p' => [0, 6, 5, 6, 4],
        'r' => [0, 5, 6, 4, 4],
        's' => [0, 3, 4, 1, 6],
        't' => [2, 7, 2, 2, 1],
        'u' => [0, 5, 5, 5, 3],
        'v' => [0, 5, 5, 5, 2],
        'y' => [0, 5, 3, 1, 6],
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

/// One line of the plot: the plans of one latent size, mode and CFG split, by GPU count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Latent height and width, as in the table.
    pub latent: [i64; 2],
    pub mode: String,
    pub split_batch: bool,
    /// `(GPUs, speedup)` by GPU count, the speedups as the table prints them (below 1 too);
    /// a line of several GPUs starts from the one-GPU baseline of its size when that is
    /// among the plans.
    pub points: Vec<(usize, f64)>,
}

impl Series {
    /// The legend's text: `64x64 displaced`, `128x128 sync split` (the plan records the
    /// latent's size, not the VAE's factor, so no pixel size is guessed).
    pub fn label(&self) -> String {
        format!(
            "{}x{} {}{}",
            self.latent[0],
            self.latent[1],
            self.mode,
            if self.split_batch { " split" } else { "" }
        )
    }
}

/// The plot's lines: one per (latent size, mode, CFG split) among the rows that have a
/// speedup, in that order; the one-GPU baseline of a size (the plan its speedups are over)
/// begins every line of that size that has no one-GPU point of its own.
pub fn series(rows: &[Row]) -> Vec<Series> {
    type Key = ([i64; 2], String, bool);
    let mut lines: BTreeMap<Key, Vec<(usize, f64)>> = BTreeMap::new();
    let mut baselines: BTreeMap<[i64; 2], (Key, f64)> = BTreeMap::new();
    for r in rows {
        let Some(speedup) = r.speedup else {
            continue;
        };
        let e = &r.estimate;
        let key = (e.latent, e.mode.clone(), e.split_batch);
        if e.world_size == 1 && !baselines.contains_key(&e.latent) {
            baselines.insert(e.latent, (key, speedup));
            continue;
        }
        lines.entry(key).or_default().push((e.world_size, speedup));
    }
    for (latent, (key, speedup)) in baselines {
        let mut sized = false;
        for ((l, _, _), points) in lines.iter_mut() {
            if *l != latent {
                continue;
            }
            sized = true;
            if !points.iter().any(|p| p.0 == 1) {
                points.push((1, speedup));
            }
        }
        if !sized {
            lines.insert(key, vec![(1, speedup)]);
        }
    }
    lines
        .into_iter()
        .map(|((latent, mode, split_batch), mut points)| {
            points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            Series {
                latent,
                mode,
                split_batch,
                points,
            }
        })
        .collect()
}

/// Speedup against GPU count (both axes log₂) of every line of [`series`], each in its own
/// colour (plans splitting the CFG batch dashed) and named in the legend; the ideal (linear)
/// speedup dashed in grey. The speedup axis reaches below 1 when a plan is slower than its
/// baseline.
pub fn plot(rows: &[Row]) -> image::RgbImage {
    let lines: Vec<Series> = series(rows)
        .into_iter()
        .map(|mut l| {
            l.points.retain(|p| p.1.is_finite() && p.1 > 0.0);
            l
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    let points = || lines.iter().flat_map(|l| l.points.iter().copied());
    let max_n = points().map(|p| p.0).max().unwrap_or(1).max(2);
    let (lo, hi) = points().fold((1.0f64, max_n as f64), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (e_lo, e_hi) = (lo.log2().floor() as i32, hi.log2().ceil() as i32);
    let mut cv = Canvas(image::RgbImage::from_pixel(
        W,
        H,
        image::Rgb([255, 255, 255]),
    ));
    let (x0, x1) = (LEFT as f64, (W as i64 - RIGHT) as f64);
    let (y0, y1) = ((H as i64 - BOTTOM) as f64, TOP as f64);
    let lx = (max_n as f64).log2();
    let px = |n: usize| x0 + (n as f64).log2() / lx * (x1 - x0);
    let py = |s: f64| y0 - (s.log2() - f64::from(e_lo)) / f64::from(e_hi - e_lo) * (y0 - y1);
    let grey = [200, 200, 200];
    let light = [235, 235, 235];
    let black = [0, 0, 0];
    // Grid and ticks on powers of two.
    let mut n = 1;
    while n <= max_n {
        let x = px(n);
        cv.line((x, y0), (x, y1), light, 1, false);
        cv.text(x as i64 - 4, y0 as i64 + 10, &n.to_string(), black);
        n *= 2;
    }
    for e in e_lo..=e_hi {
        let s = 2f64.powi(e);
        let y = py(s);
        cv.line((x0, y), (x1, y), light, 1, false);
        let label = format!("{s}x");
        cv.text(
            LEFT - 14 - 8 * label.len() as i64,
            y as i64 - 5,
            &label,
            black,
        );
    }
    cv.line((x0, y0), (x1, y0), black, 1, false);
    cv.line((x0, y0), (x0, y1), black, 1, false);
    cv.line(
        (px(1), py(1.0)),
        (px(max_n), py(max_n as f64)),
        grey,
        2,
        true,
    );
    for (i, line) in lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        for w in line.points.windows(2) {
            cv.line(
                (px(w[0].0), py(w[0].1)),
                (px(w[1].0), py(w[1].1)),
                c,
                3,
                line.split_batch,
            );
        }
        for &(n, s) in &line.points {
            for dx in -4..=4 {
                for dy in -4..=4 {
                    cv.put(px(n) as i64 + dx, py(s) as i64 + dy, c);
                }
            }
        }
        // Legend: the line's colour and dash, then its size, mode and split.
        let ly = TOP + 10 + 22 * i as i64;
        cv.line(
            (x0 + 20.0, ly as f64 + 5.0),
            (x0 + 50.0, ly as f64 + 5.0),
            c,
            3,
            line.split_batch,
        );
        cv.text(LEFT + 60, ly, &line.label(), black);
    }
    cv.0
}
