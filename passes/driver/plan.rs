//! `plan.json` from the compiled graphs: a pure function of the local graphs, the options and
//! what the writer recorded (the weights file's name, the source's digest, each local graph's
//! memory). Every band's shapes come from its own local graph; per-rank figures (bytes
//! received, memory) repeat per CFG group.

use std::collections::HashMap;

use anyhow::Result;

use super::CompileOptions;
use super::graphs::Compiled;
use crate::contract::bands::Bands;
use crate::cost::GraphMemory;
use crate::error::Internal;
use crate::ir::{DataType, Dim, TensorType, ValueId};
use crate::localize::Exchange;
use crate::partition::BAND_AXIS;
use crate::plan::{
    ExchangeKind, ExchangeSpec, Layout as IoLayout, Mode, PLAN_FORMAT, Plan, RankMemory, RankSpec,
    TensorSpec,
};

/// What writing the plan folder recorded for the plan.
pub(super) struct Written {
    /// The shared weights file (ours, else the source's own external file), if any.
    pub weights: Option<String>,
    pub source_sha256: String,
    /// Memory of each local graph, in the order of [`Compiled::parts`].
    pub memory: Vec<GraphMemory>,
}

/// The geometry every part of the plan is built on.
struct Geometry<'a> {
    opts: &'a CompileOptions,
    c: &'a Compiled,
    bands: &'a Bands,
    /// Bands per group, ranks.
    n: usize,
    world: usize,
    /// Batch of one group (half the full batch with `--split-batch`).
    half: i64,
}

/// The plan of the compiled graphs `c` (see the module documentation).
pub(super) fn build_plan(opts: &CompileOptions, c: &Compiled, written: Written) -> Result<Plan> {
    let first = c
        .parts
        .first()
        .ok_or_else(|| Internal("no local graph".into()))?;
    let bands = &first.local.bands;
    let groups = if opts.split_batch { 2 } else { 1 };
    let g = &first.graph;
    let spatial =
        crate::partition::spatial_input(g).ok_or_else(|| Internal("no spatial input".into()))?;
    let sd = c
        .full_io
        .get(&g.value(spatial).name)
        .ok_or_else(|| Internal("spatial input not static".into()))?;
    let (h, w) = (sd[BAND_AXIS], sd[BAND_AXIS + 1]);
    if h != bands.height() {
        return Err(Internal(format!("bands {bands} do not cover the latent's {h} rows")).into());
    }
    let s = Geometry {
        opts,
        c,
        bands,
        n: bands.n(),
        world: opts.gpus,
        half: sd[0],
    };
    let inputs: Vec<TensorSpec> = g
        .inputs
        .iter()
        .filter(|&&v| g.value(v).init.is_none())
        .map(|&v| s.tensor_spec(v, &c.original_inputs))
        .collect();
    let outputs: Vec<TensorSpec> = g
        .outputs
        .iter()
        .map(|&v| s.tensor_spec(v, &c.original_outputs))
        .collect();
    let exchanges = s.exchanges()?;
    let plan = Plan {
        format: PLAN_FORMAT,
        source: opts.model.display().to_string(),
        source_sha256: written.source_sha256,
        mode: opts.mode,
        warmup: opts.warmup,
        gn: opts.gn,
        world_size: s.world,
        split_batch: opts.split_batch,
        groups: (0..groups)
            .map(|gi| (gi * s.n..(gi + 1) * s.n).collect())
            .collect(),
        ranks: s.ranks(),
        latent: [h, w],
        bands: bands.clone(),
        row_step: c.row_step,
        levels: c.levels.clone(),
        weights: written.weights,
        inputs,
        outputs,
        bytes_per_step: (0..s.world)
            .map(|r| exchanges.iter().map(|e| e.bytes_received[r]).sum())
            .collect(),
        memory: s.memory(&exchanges, &written.memory),
        exchanges,
        engines: Vec::new(),
    };
    plan.check()
        .map_err(|e| Internal(format!("the emitted plan is inconsistent: {e}")))?;
    Ok(plan)
}

impl Geometry<'_> {
    /// The type of the value named `name` in each band's graph.
    fn band_dims(&self, name: &str) -> Vec<Vec<i64>> {
        (0..self.n)
            .map(|band| {
                let part = &self.c.parts[self.c.part_of_band[band]];
                part.graph
                    .value_ids()
                    .find(|&v| part.graph.value(v).name == name)
                    .and_then(|v| part.graph.value(v).tensor_type())
                    .map(static_dims)
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The plan's description of graph input or output `v` of the first band's graph, whose
    /// source types are `original`.
    fn tensor_spec(&self, v: ValueId, original: &HashMap<String, TensorType>) -> TensorSpec {
        let first = &self.c.parts[0];
        let g = &first.graph;
        let name = g.value(v).name.clone();
        let t = g.value(v).tensor_type().cloned().unwrap_or(TensorType {
            elem: DataType::UNDEFINED,
            shape: None,
        });
        let local_shapes = self.band_dims(&name);
        let local = static_dims(&t);
        let band_axis = first.local.io_layouts.get(&name).and_then(|l| l.axis());
        let group_axis = if self.opts.split_batch {
            batch_axis(original.get(&name), &local, self.half)
        } else {
            None
        };
        let mut shape = self.c.full_io.get(&name).cloned().unwrap_or(local);
        if let Some(a) = group_axis {
            shape[a] *= 2;
        }
        TensorSpec {
            name,
            dtype: t.elem.name().to_string(),
            shape,
            local_shapes,
            layout: IoLayout {
                band_axis,
                group_axis,
            },
        }
    }

    /// Every exchange, with each band's shapes and each rank's bytes received per step.
    fn exchanges(&self) -> Result<Vec<ExchangeSpec>> {
        let first = &self.c.parts[0];
        let mut exchanges = Vec::new();
        for (i, e) in first.local.exchanges.iter().enumerate() {
            let mut input_shapes = Vec::with_capacity(self.n);
            let mut output_shapes = Vec::with_capacity(self.n);
            for band in 0..self.n {
                let other = self.c.parts[self.c.part_of_band[band]]
                    .local
                    .exchanges
                    .get(i)
                    .filter(|x| x.node == e.node && x.slot == e.slot)
                    .ok_or_else(|| {
                        Internal(format!(
                            "band {band}'s graph has no exchange slot {} (`{}`)",
                            e.slot, e.node
                        ))
                    })?;
                input_shapes.push(other.input_shape.clone());
                output_shapes.push(other.output_shape.clone());
            }
            let per_band: Vec<u64> = (0..self.n)
                .map(|band| bytes_received(e, &input_shapes, band))
                .collect();
            exchanges.push(ExchangeSpec {
                slot: e.slot,
                kind: e.kind,
                node: e.node.clone(),
                for_node: e.for_node.clone(),
                dtype: e.dtype.name().to_string(),
                input_shapes,
                output_shapes,
                axis: e.axis,
                parts: e.parts.clone(),
                top: e.top,
                bottom: e.bottom,
                always_fresh: e.reads_model_input,
                bytes_received: (0..self.world).map(|r| per_band[r % self.n]).collect(),
            });
        }
        Ok(exchanges)
    }

    /// Each rank's device memory: its local graph's, plus the stale exchanges' buffers in
    /// displaced mode.
    fn memory(&self, exchanges: &[ExchangeSpec], parts: &[GraphMemory]) -> Vec<RankMemory> {
        (0..self.world)
            .map(|r| {
                let m = parts[self.c.part_of_band[r % self.n]];
                let stale: u64 = if self.opts.mode == Mode::Displaced {
                    exchanges
                        .iter()
                        .filter(|e| !e.always_fresh)
                        .map(|e| 2 * e.bytes_received[r])
                        .sum()
                } else {
                    0
                };
                RankMemory {
                    rank: r,
                    weights_bytes: m.weights_bytes,
                    activation_peak_bytes: m.activation_peak_bytes,
                    activation_sum_bytes: m.activation_sum_bytes,
                    stale_buffer_bytes: stale,
                }
            })
            .collect()
    }

    /// Every rank: its group, band, file, rows (in latent rows and at every level), share and
    /// batch.
    fn ranks(&self) -> Vec<RankSpec> {
        let full_batch = self.half * if self.opts.split_batch { 2 } else { 1 };
        let level_rows = |band: usize| -> Vec<[i64; 2]> {
            self.c
                .levels
                .iter()
                .filter_map(|&e| self.bands.part(band, e))
                .map(|p| [p.start, p.end])
                .collect()
        };
        (0..self.world)
            .map(|r| {
                let (group, band) = (r / self.n, r % self.n);
                let batch = if self.opts.split_batch {
                    [group as i64 * self.half, (group as i64 + 1) * self.half]
                } else {
                    [0, full_batch]
                };
                let rows = self.bands.rows(band);
                RankSpec {
                    rank: r,
                    group,
                    band,
                    file: format!("rank{r}.onnx"),
                    rows: [rows.start, rows.end],
                    levels: level_rows(band),
                    share: self.bands.share(band),
                    batch,
                }
            })
            .collect()
    }
}

fn elem_bytes(dtype: DataType) -> u64 {
    dtype.bits().map(|b| (b / 8).max(1) as u64).unwrap_or(4)
}

fn numel(d: &[i64]) -> u64 {
    d.iter().map(|&x| x.max(0) as u64).product()
}

/// Bytes band `band` of `n` receives per step through one exchange, whose input on each band
/// has the shapes `inputs` (band order).
pub fn bytes_received(e: &Exchange, inputs: &[Vec<i64>], band: usize) -> u64 {
    let eb = elem_bytes(e.dtype);
    let n = inputs.len();
    let others = || {
        (0..n)
            .filter(|&q| q != band)
            .map(|q| numel(&inputs[q]) * eb)
            .sum::<u64>()
    };
    match e.kind {
        ExchangeKind::Halo => {
            let axis = e.axis.unwrap_or(BAND_AXIS);
            let row: u64 = inputs[band]
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != axis)
                .map(|(_, &d)| d.max(0) as u64)
                .product();
            let top = if band > 0 {
                e.top.unwrap_or(0) as u64
            } else {
                0
            };
            let bottom = if band + 1 < n {
                e.bottom.unwrap_or(0) as u64
            } else {
                0
            };
            (top + bottom) * row * eb
        }
        ExchangeKind::Stats | ExchangeKind::Gather => others(),
    }
}

fn static_dims(t: &TensorType) -> Vec<i64> {
    t.shape
        .as_ref()
        .map(|d| d.iter().map(|x| x.fixed().unwrap_or(-1)).collect())
        .unwrap_or_default()
}

/// Whether an I/O tensor's dim 0 is the batch the CFG halves split: the source declares it
/// symbolic (bound to the half batch) or fixed to the full batch.
fn batch_axis(original: Option<&TensorType>, local: &[i64], half: i64) -> Option<usize> {
    let d0 = original?.shape.as_ref()?.first()?;
    let is_batch = match d0 {
        Dim::Fixed(v) => *v == 2 * half,
        _ => local.first() == Some(&half),
    };
    is_batch.then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halo_bytes_count_one_side_at_the_edges() {
        let e = Exchange {
            slot: 0,
            kind: ExchangeKind::Halo,
            node: "c.halo".into(),
            for_node: "c".into(),
            dtype: DataType::FLOAT,
            input_shape: vec![2, 4, 8, 16],
            output_shape: vec![2, 4, 10, 16],
            axis: Some(2),
            top: Some(1),
            bottom: Some(1),
            parts: None,
            reads_model_input: false,
        };
        let row = 2 * 4 * 16 * 4;
        let inputs = vec![vec![2, 4, 8, 16]; 4];
        let got: Vec<u64> = (0..4).map(|b| bytes_received(&e, &inputs, b)).collect();
        assert_eq!(got, vec![row, 2 * row, 2 * row, row]);
        let s = Exchange {
            kind: ExchangeKind::Stats,
            input_shape: vec![2, 8, 2],
            ..e.clone()
        };
        let stats = vec![vec![2, 8, 2]; 4];
        let got: Vec<u64> = (0..4).map(|b| bytes_received(&s, &stats, b)).collect();
        assert_eq!(got, vec![3 * 2 * 8 * 2 * 4; 4]);
    }

    #[test]
    fn gather_bytes_are_the_other_bands_parts() {
        let e = Exchange {
            slot: 0,
            kind: ExchangeKind::Gather,
            node: "k.gather".into(),
            for_node: "k".into(),
            dtype: DataType::FLOAT16,
            input_shape: vec![2, 11, 8],
            output_shape: vec![2, 32, 8],
            axis: Some(1),
            top: None,
            bottom: None,
            parts: Some(vec![11, 11, 10]),
            reads_model_input: false,
        };
        let inputs = vec![vec![2, 11, 8], vec![2, 11, 8], vec![2, 10, 8]];
        let got: Vec<u64> = (0..3).map(|b| bytes_received(&e, &inputs, b)).collect();
        assert_eq!(got, vec![2 * 21 * 8 * 2, 2 * 21 * 8 * 2, 2 * 22 * 8 * 2]);
    }
}
