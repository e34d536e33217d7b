//! The semantics of the three exchange operators (DESIGN §3) on plain slices, independent of
//! any executor: every backend's kernels call these (ONNX Runtime today, see [`super::ort_ops`]).
//!
//! A kernel is bound to a [`RankContext`]: the rank's position in its group, the group's
//! [`Communicator`], the step number and whether this step may read stale context. The
//! operators themselves carry only `slot` and their geometry (`axis`, `top`, `bottom`).
//!
//! | op | fresh (sync, warmup) | stale (displaced, after warmup) |
//! |---|---|---|
//! | `DfcHaloExchange` | `[last top rows of band r−1 ‖ x ‖ first bottom rows of band r+1]`, zero rows at the image edges | the neighbours' rows of the previous step |
//! | `DfcStatsAllReduce` | mean over the group of `s` (f32), each band weighted by its share of the image rows `w_j` | by the context's [`GnMode`]: `corrected` (default, paper Eq. 2) `Σ_j w_j·s_j(t−1) + s − s(t−1)`, where the last axis has 2 entries (E\[x\], E\[x²\]) and the estimated variance is negative the local pair; `stale` the previous step's mean with the own part fresh, `Σ_j w_j·s_j(t−1) + w_i·(s − s(t−1))`; `sync` fresh; `separate` the local `s` |
//! | `DfcPatchAllGather` | concatenation of every band's `x` along `axis`, band order; the bands' extents are the `parts` attribute (bands may be unequal) | own band fresh, the others of the previous step |

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use half::f16;

use super::comm::{Call, CommError, Communicator, Payload};
use crate::contract::Bands;
use crate::contract::exchange::STATS_PAIR;
use crate::plan::{ExchangeKind, GnMode};

/// Errors of an exchange operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Comm(#[from] CommError),
    /// The operator's input or attributes do not fit together.
    #[error("{op} (slot {slot}): {reason}")]
    Shape {
        op: &'static str,
        slot: u32,
        reason: String,
    },
    /// A peer published something that does not match this rank's view of the slot.
    #[error(
        "{op} (slot {slot}): rank {peer} published {found} elements of {dtype}, expected {expected}"
    )]
    Mismatch {
        op: &'static str,
        slot: u32,
        peer: usize,
        found: usize,
        dtype: &'static str,
        expected: usize,
    },
}

/// Element types the exchange operators move (f32 everywhere, f16 for halo and gather).
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// Wraps owned elements as a payload.
    fn into_payload(v: Vec<Self>) -> Payload;
    /// The elements of a payload of this type (`None` for another type).
    fn from_payload(p: &Payload) -> Option<&[Self]>;
}

impl Element for f32 {
    fn into_payload(v: Vec<Self>) -> Payload {
        Payload::F32(v)
    }
    fn from_payload(p: &Payload) -> Option<&[Self]> {
        match p {
            Payload::F32(v) => Some(v),
            Payload::F16(_) => None,
        }
    }
}

impl Element for f16 {
    fn into_payload(v: Vec<Self>) -> Payload {
        Payload::F16(v)
    }
    fn from_payload(p: &Payload) -> Option<&[Self]> {
        match p {
            Payload::F16(v) => Some(v),
            Payload::F32(_) => None,
        }
    }
}

/// What the exchange kernels of one rank's session are bound to.
///
/// The runtime calls [`begin_step`](Self::begin_step) before every evaluation of the rank graph;
/// the kernels then number their calls in execution order.
#[derive(Debug)]
pub struct RankContext {
    comm: Arc<Communicator>,
    rank: usize,
    step: AtomicU64,
    index: AtomicUsize,
    stale: AtomicBool,
    always_fresh: HashSet<u32>,
    gn: GnMode,
    /// Each band's share of the image rows (weights of the statistics' mean); `None`: equal.
    shares: Option<Vec<f64>>,
}

impl RankContext {
    /// The context of the rank at position `rank` of the group served by `comm`.
    pub fn new(comm: Arc<Communicator>, rank: usize) -> Self {
        Self {
            comm,
            rank,
            step: AtomicU64::new(0),
            index: AtomicUsize::new(0),
            stale: AtomicBool::new(false),
            always_fresh: HashSet::new(),
            gn: GnMode::default(),
            shares: None,
        }
    }

    /// The group's bands, when they are unequal: `DfcStatsAllReduce` weights each band's
    /// statistics by its share of the rows. Equal bands keep the plain mean.
    pub fn with_bands(mut self, bands: &Bands) -> Self {
        self.shares = (!bands.is_even()).then(|| bands.shares());
        self
    }

    /// How `DfcStatsAllReduce` treats GroupNorm statistics in stale steps (default
    /// [`GnMode::Corrected`]).
    pub fn with_gn(mut self, gn: GnMode) -> Self {
        self.gn = gn;
        self
    }

    /// Slots that are exchanged fresh even in stale steps (the halo of the model's input, which
    /// each rank holds only as its band; DESIGN §2).
    pub fn with_always_fresh(mut self, slots: impl IntoIterator<Item = u32>) -> Self {
        self.always_fresh = slots.into_iter().collect();
        self
    }

    /// Position of this rank in its group (band order).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the group.
    pub fn group_size(&self) -> usize {
        self.comm.size()
    }

    /// The group's communicator.
    pub fn communicator(&self) -> &Arc<Communicator> {
        &self.comm
    }

    /// Starts step `step` (strictly larger than the previous one; 0 first). With `stale`, the
    /// exchanges of this step read the peers' context of the previous step (displaced mode
    /// after warmup), except the [always fresh](Self::with_always_fresh) slots.
    pub fn begin_step(&self, step: u64, stale: bool) {
        self.step.store(step, Ordering::SeqCst);
        self.index.store(0, Ordering::SeqCst);
        self.stale.store(stale && step > 0, Ordering::SeqCst);
    }

    /// Ends the current step: peers still waiting for this rank at this step fail instead of
    /// hanging (its graph has no exchange they expect).
    pub fn end_step(&self) {
        self.comm
            .finish_step(self.rank, self.step.load(Ordering::SeqCst));
    }

    /// The current step.
    pub fn step(&self) -> u64 {
        self.step.load(Ordering::SeqCst)
    }

    /// Whether the calls of this step at `slot` read the previous step's payloads.
    fn is_stale(&self, slot: u32) -> bool {
        self.stale.load(Ordering::SeqCst) && !self.always_fresh.contains(&slot)
    }

    /// The next call of this step at `slot`.
    fn next_call(&self, slot: u32) -> Call {
        self.next_call_as(slot, self.is_stale(slot))
    }

    /// The next call of this step at `slot`, stale or not.
    fn next_call_as(&self, slot: u32, stale: bool) -> Call {
        Call {
            rank: self.rank,
            slot,
            step: self.step.load(Ordering::SeqCst),
            index: self.index.fetch_add(1, Ordering::SeqCst),
            fresh: !stale,
        }
    }
}

/// `(outer, rows, inner)` of `shape` around `axis`.
fn split_dims(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

fn check_len(
    op: &'static str,
    slot: u32,
    what: &str,
    shape: &[usize],
    len: usize,
) -> Result<(), ExchangeError> {
    let want: usize = shape.iter().product();
    if want != len {
        return Err(ExchangeError::Shape {
            op,
            slot,
            reason: format!("{what} has {len} elements, its shape {shape:?} needs {want}"),
        });
    }
    Ok(())
}

fn check_axis(
    op: &'static str,
    slot: u32,
    shape: &[usize],
    axis: usize,
) -> Result<(), ExchangeError> {
    if axis >= shape.len() {
        return Err(ExchangeError::Shape {
            op,
            slot,
            reason: format!("axis {axis} is outside the input's shape {shape:?}"),
        });
    }
    Ok(())
}

fn payload_of<'a, T: Element>(
    op: &'static str,
    slot: u32,
    peer: usize,
    p: &'a Payload,
    expected: usize,
) -> Result<&'a [T], ExchangeError> {
    match T::from_payload(p) {
        Some(v) if v.len() == expected => Ok(v),
        _ => Err(ExchangeError::Mismatch {
            op,
            slot,
            peer,
            found: p.len(),
            dtype: p.dtype(),
            expected,
        }),
    }
}

const HALO: &str = ExchangeKind::Halo.op_type();
const STATS: &str = ExchangeKind::Stats.op_type();
const GATHER: &str = ExchangeKind::Gather.op_type();

/// The geometry attributes of a `DfcHaloExchange` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Halo {
    /// The split axis.
    pub axis: usize,
    /// Rows from the band above.
    pub top: usize,
    /// Rows from the band below.
    pub bottom: usize,
}

/// Output shape of `DfcHaloExchange`.
pub fn halo_output_shape(shape: &[usize], halo: Halo) -> Vec<usize> {
    let mut out = shape.to_vec();
    if let Some(d) = out.get_mut(halo.axis) {
        *d += halo.top + halo.bottom;
    }
    out
}

/// Output shape of `DfcPatchAllGather` whose bands have `parts` on `axis`.
pub fn gather_output_shape(shape: &[usize], axis: usize, parts: &[usize]) -> Vec<usize> {
    let mut out = shape.to_vec();
    if let Some(d) = out.get_mut(axis) {
        *d = parts.iter().sum();
    }
    out
}

/// `DfcHaloExchange`: `y = [last top rows of band r−1 ‖ x ‖ first bottom rows of band r+1]`
/// along `axis` (zeros beyond the image edges). `x` has `shape`; `y` has
/// [`halo_output_shape`].
pub fn halo_exchange<T: Element>(
    ctx: &RankContext,
    slot: u32,
    halo: Halo,
    shape: &[usize],
    x: &[T],
    y: &mut [T],
) -> Result<(), ExchangeError> {
    let Halo { axis, top, bottom } = halo;
    check_axis(HALO, slot, shape, axis)?;
    check_len(HALO, slot, "the input", shape, x.len())?;
    check_len(
        HALO,
        slot,
        "the output",
        &halo_output_shape(shape, halo),
        y.len(),
    )?;
    let (outer, h, inner) = split_dims(shape, axis);
    if top > h || bottom > h {
        return Err(ExchangeError::Shape {
            op: HALO,
            slot,
            reason: format!(
                "a halo of {top} rows above and {bottom} below is larger than the band's {h} rows on axis {axis}; use fewer ranks"
            ),
        });
    }
    let (n, r) = (ctx.group_size(), ctx.rank());
    let (above, below) = if n > 1 {
        let call = ctx.next_call(slot);
        // What the neighbours need: first `bottom` rows (for r−1), then last `top` rows (for r+1).
        let mut send = Vec::with_capacity(outer * (top + bottom) * inner);
        for o in 0..outer {
            let base = o * h * inner;
            send.extend_from_slice(&x[base..base + bottom * inner]);
        }
        for o in 0..outer {
            let base = o * h * inner;
            send.extend_from_slice(&x[base + (h - top) * inner..base + h * inner]);
        }
        let mut wanted = Vec::with_capacity(2);
        if r > 0 {
            wanted.push(r - 1);
        }
        if r + 1 < n {
            wanted.push(r + 1);
        }
        let got = ctx.comm.exchange(call, T::into_payload(send), &wanted)?;
        let mut got = wanted.into_iter().zip(got);
        let above = if r > 0 { got.next() } else { None };
        let below = if r + 1 < n { got.next() } else { None };
        (above, below)
    } else {
        (None, None)
    };
    let expected = outer * (top + bottom) * inner;
    let above = above
        .as_ref()
        .map(|(q, p)| payload_of::<T>(HALO, slot, *q, p, expected))
        .transpose()?;
    let below = below
        .as_ref()
        .map(|(q, p)| payload_of::<T>(HALO, slot, *q, p, expected))
        .transpose()?;
    let hy = h + top + bottom;
    for o in 0..outer {
        let dst = &mut y[o * hy * inner..(o + 1) * hy * inner];
        let (dst_top, rest) = dst.split_at_mut(top * inner);
        let (dst_mid, dst_bottom) = rest.split_at_mut(h * inner);
        match &above {
            // The band above sent its last `top` rows in the second part of its payload.
            Some(p) => {
                let start = outer * bottom * inner + o * top * inner;
                dst_top.copy_from_slice(&p[start..start + top * inner]);
            }
            None => dst_top.fill(T::default()),
        }
        dst_mid.copy_from_slice(&x[o * h * inner..(o + 1) * h * inner]);
        match &below {
            // The band below sent its first `bottom` rows in the first part of its payload.
            Some(p) => {
                let start = o * bottom * inner;
                dst_bottom.copy_from_slice(&p[start..start + bottom * inner]);
            }
            None => dst_bottom.fill(T::default()),
        }
    }
    Ok(())
}

/// `DfcStatsAllReduce`: `g` = mean over the group of every rank's `s` (of `shape`), weighted by
/// each band's share of the rows (elementwise, summed in f64 in band order, so every rank gets
/// the same bits). Stale: paper Eq. 2 (module docs); the negative-variance fallback applies
/// when the last axis holds (E\[x\], E\[x²\]) pairs ([`STATS_PAIR`] entries).
pub fn stats_all_reduce(
    ctx: &RankContext,
    slot: u32,
    shape: &[usize],
    s: &[f32],
    g: &mut [f32],
) -> Result<(), ExchangeError> {
    check_len(STATS, slot, "the input", shape, s.len())?;
    if s.len() != g.len() {
        return Err(ExchangeError::Shape {
            op: STATS,
            slot,
            reason: format!("input has {} elements, output {}", s.len(), g.len()),
        });
    }
    let n = ctx.group_size();
    let stale = ctx.is_stale(slot);
    if n == 1 || (stale && ctx.gn == GnMode::Separate) {
        g.copy_from_slice(s);
        return Ok(());
    }
    let call = ctx.next_call_as(slot, stale && ctx.gn != GnMode::Sync);
    let all: Vec<usize> = (0..n).collect();
    let got = ctx.comm.exchange(call, Payload::F32(s.to_vec()), &all)?;
    let parts: Vec<&[f32]> = got
        .iter()
        .enumerate()
        .map(|(q, p)| payload_of::<f32>(STATS, slot, q, p, s.len()))
        .collect::<Result<_, _>>()?;
    match &ctx.shares {
        Some(w) if w.len() == n => {
            for (i, out) in g.iter_mut().enumerate() {
                let sum: f64 = parts.iter().zip(w).map(|(p, w)| f64::from(p[i]) * w).sum();
                *out = sum as f32;
            }
        }
        Some(w) => {
            return Err(ExchangeError::Shape {
                op: STATS,
                slot,
                reason: format!("{} band shares for a group of {n}", w.len()),
            });
        }
        None => {
            for (i, out) in g.iter_mut().enumerate() {
                let sum: f64 = parts.iter().map(|p| f64::from(p[i])).sum();
                *out = (sum / n as f64) as f32;
            }
        }
    }
    if call.fresh {
        return Ok(());
    }
    // The previous step's mean, with this band's change since then: all of it extrapolated
    // to the whole image (corrected), or only its own share (stale).
    let share = match (ctx.gn, &ctx.shares) {
        (GnMode::Corrected, _) => 1.0,
        (_, Some(w)) => w[ctx.rank()] as f32,
        (_, None) => 1.0 / n as f32,
    };
    let own_old = parts[ctx.rank()];
    for ((out, &fresh), &old) in g.iter_mut().zip(s).zip(own_old) {
        *out += (fresh - old) * share;
    }
    // A mean of (E[x], E[x²]) pairs keeps the variance non-negative; an extrapolated one may
    // not: fall back to the band's own pair there.
    if ctx.gn == GnMode::Corrected && shape.last() == Some(&STATS_PAIR) {
        for (pair, local) in g.chunks_exact_mut(2).zip(s.chunks_exact(2)) {
            if pair[1] - pair[0] * pair[0] < 0.0 {
                pair.copy_from_slice(local);
            }
        }
    }
    Ok(())
}

/// `DfcPatchAllGather`: `y` = every band's `x` concatenated along `axis` in band order. Band
/// `q` has `parts[q]` entries on `axis` (this rank's `x` has `shape`, whose extent there must
/// be its own part); `y` has [`gather_output_shape`].
pub fn patch_all_gather<T: Element>(
    ctx: &RankContext,
    slot: u32,
    shape: &[usize],
    axis: usize,
    parts: &[usize],
    x: &[T],
    y: &mut [T],
) -> Result<(), ExchangeError> {
    check_axis(GATHER, slot, shape, axis)?;
    check_len(GATHER, slot, "the input", shape, x.len())?;
    let (n, r) = (ctx.group_size(), ctx.rank());
    if parts.len() != n || parts[r] != shape[axis] {
        return Err(ExchangeError::Shape {
            op: GATHER,
            slot,
            reason: format!(
                "parts {parts:?} do not fit band {r} of {n} with {} entries on axis {axis}",
                shape[axis]
            ),
        });
    }
    check_len(
        GATHER,
        slot,
        "the output",
        &gather_output_shape(shape, axis, parts),
        y.len(),
    )?;
    if n == 1 {
        y.copy_from_slice(x);
        return Ok(());
    }
    let call = ctx.next_call(slot);
    let peers: Vec<usize> = (0..n).filter(|&q| q != r).collect();
    let got = ctx
        .comm
        .exchange(call, T::into_payload(x.to_vec()), &peers)?;
    let (outer, _, inner) = split_dims(shape, axis);
    let received: Vec<&[T]> = peers
        .iter()
        .zip(&got)
        .map(|(&q, p)| payload_of::<T>(GATHER, slot, q, p, outer * parts[q] * inner))
        .collect::<Result<_, _>>()?;
    let total: usize = parts.iter().sum();
    for o in 0..outer {
        let mut dst = o * total * inner;
        for q in 0..n {
            let block = parts[q] * inner;
            let src = if q == r {
                x
            } else {
                received[if q < r { q } else { q - 1 }]
            };
            y[dst..dst + block].copy_from_slice(&src[o * block..(o + 1) * block]);
            dst += block;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    use crate::contract::rng::Rng;

    /// Runs `f(ctx)` on `n` rank threads of one group for `steps` steps; returns the results per
    /// rank and step.
    fn on_ranks<R: Send>(
        n: usize,
        steps: u64,
        stale_after: Option<u64>,
        f: impl Fn(&RankContext, u64) -> R + Sync,
    ) -> Vec<Vec<R>> {
        on_ranks_gn(n, steps, stale_after, GnMode::default(), f)
    }

    /// [`on_ranks`] with GroupNorm statistics handled as `gn` in stale steps.
    fn on_ranks_gn<R: Send>(
        n: usize,
        steps: u64,
        stale_after: Option<u64>,
        gn: GnMode,
        f: impl Fn(&RankContext, u64) -> R + Sync,
    ) -> Vec<Vec<R>> {
        on_ranks_with(n, steps, stale_after, gn, None, f)
    }

    /// [`on_ranks_gn`] on the given (possibly unequal) bands.
    fn on_ranks_with<R: Send>(
        n: usize,
        steps: u64,
        stale_after: Option<u64>,
        gn: GnMode,
        bands: Option<&Bands>,
        f: impl Fn(&RankContext, u64) -> R + Sync,
    ) -> Vec<Vec<R>> {
        let comm = Arc::new(Communicator::new(n));
        thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|rank| {
                    let mut ctx = RankContext::new(comm.clone(), rank).with_gn(gn);
                    if let Some(b) = bands {
                        ctx = ctx.with_bands(b);
                    }
                    let f = &f;
                    s.spawn(move || {
                        (0..steps)
                            .map(|step| {
                                ctx.begin_step(step, stale_after.is_some_and(|w| step > w));
                                let r = f(&ctx, step);
                                ctx.end_step();
                                r
                            })
                            .collect::<Vec<R>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect()
        })
    }

    /// Full tensor [2, 8, 3] with value 100·o + 10·row + col; bands of 2 rows on axis 1.
    fn full(step: u64) -> Vec<f32> {
        let mut v = Vec::new();
        for o in 0..2 {
            for row in 0..8 {
                for c in 0..3 {
                    v.push((100 * o + 10 * row + c) as f32 + 1000.0 * step as f32);
                }
            }
        }
        v
    }

    fn band(full: &[f32], n: usize, r: usize) -> Vec<f32> {
        let (h, inner) = (8 / n, 3);
        let mut v = Vec::new();
        for o in 0..2 {
            let base = o * 8 * inner + r * h * inner;
            v.extend_from_slice(&full[base..base + h * inner]);
        }
        v
    }

    /// Expected halo output computed by hand from the full tensor: rows r·h−top … (r+1)·h+bottom,
    /// zeros outside 0..8.
    fn expected_halo(full: &[f32], n: usize, r: usize, top: usize, bottom: usize) -> Vec<f32> {
        let h = 8 / n;
        let mut v = Vec::new();
        for o in 0..2 {
            for row in (r * h) as i64 - top as i64..((r + 1) * h + bottom) as i64 {
                for c in 0..3 {
                    v.push(if (0..8).contains(&row) {
                        full[o * 24 + row as usize * 3 + c]
                    } else {
                        0.0
                    });
                }
            }
        }
        v
    }

    #[test]
    fn halo_matches_rows_of_the_full_tensor_with_zero_edges() {
        for (n, top, bottom) in [(4, 1, 1), (4, 2, 0), (2, 1, 2), (1, 1, 1), (8, 1, 0)] {
            let got = on_ranks(n, 1, None, |ctx, step| {
                let x = band(&full(step), n, ctx.rank());
                let shape = [2, 8 / n, 3];
                let mut y = vec![f32::NAN; 2 * (8 / n + top + bottom) * 3];
                halo_exchange(
                    ctx,
                    0,
                    Halo {
                        axis: 1,
                        top,
                        bottom,
                    },
                    &shape,
                    &x,
                    &mut y,
                )
                .expect("halo");
                y
            });
            for (r, per_step) in got.iter().enumerate() {
                assert_eq!(
                    per_step[0],
                    expected_halo(&full(0), n, r, top, bottom),
                    "n {n} rank {r} top {top} bottom {bottom}"
                );
            }
        }
    }

    #[test]
    fn halo_in_f16() {
        let n = 2;
        let got = on_ranks(n, 1, None, |ctx, _| {
            let x: Vec<f16> = band(&full(0), n, ctx.rank())
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let mut y = vec![f16::NAN; 2 * 6 * 3];
            halo_exchange(
                ctx,
                0,
                Halo {
                    axis: 1,
                    top: 1,
                    bottom: 1,
                },
                &[2, 4, 3],
                &x,
                &mut y,
            )
            .expect("halo");
            y.into_iter().map(f16::to_f32).collect::<Vec<f32>>()
        });
        for (r, per_step) in got.iter().enumerate() {
            assert_eq!(per_step[0], expected_halo(&full(0), n, r, 1, 1));
        }
    }

    #[test]
    fn halo_larger_than_the_band_is_an_error() {
        let comm = Arc::new(Communicator::new(1));
        let ctx = RankContext::new(comm, 0);
        let mut y = vec![0f32; 6];
        let err = halo_exchange(
            &ctx,
            3,
            Halo {
                axis: 0,
                top: 3,
                bottom: 1,
            },
            &[2, 1],
            &[1.0, 2.0],
            &mut y,
        )
        .expect_err("too big");
        assert!(err.to_string().contains("larger than the band"), "{err}");
    }

    #[test]
    fn stats_is_the_group_mean_on_every_rank() {
        let n = 4;
        let got = on_ranks(n, 3, None, |ctx, step| {
            let r = ctx.rank() as f32;
            let s = vec![r, 10.0 * r + step as f32, -r];
            let mut g = vec![0f32; 3];
            stats_all_reduce(ctx, 9, &[3], &s, &mut g).expect("stats");
            g
        });
        for per_step in &got {
            for (step, g) in per_step.iter().enumerate() {
                // mean of 0..4 = 1.5
                assert_eq!(g, &vec![1.5, 15.0 + step as f32, -1.5]);
            }
        }
    }

    #[test]
    fn gather_concatenates_bands_in_order() {
        for n in [1, 2, 4, 8] {
            let got = on_ranks(n, 2, None, |ctx, step| {
                let x = band(&full(step), n, ctx.rank());
                let mut y = vec![f32::NAN; 48];
                let parts = vec![8 / n; n];
                patch_all_gather(ctx, 2, &[2, 8 / n, 3], 1, &parts, &x, &mut y).expect("gather");
                y
            });
            for per_step in &got {
                for (step, y) in per_step.iter().enumerate() {
                    assert_eq!(y, &full(step as u64), "n {n}");
                }
            }
        }
    }

    /// One rank graph's worth of exchanges per step: halo, stats, gather, halo, on bands of a
    /// step-dependent tensor.
    fn pipeline(ctx: &RankContext, step: u64, n: usize, delay: Option<u64>) -> Vec<f32> {
        let mut rng = delay.map(|seed| Rng::new(seed ^ (ctx.rank() as u64 * 7919) ^ step));
        let mut pause = || {
            if let Some(rng) = rng.as_mut() {
                let us = (rng.uniform() * 300.0) as u64;
                thread::sleep(Duration::from_micros(us));
            }
        };
        let x = band(&full(step), n, ctx.rank());
        let h = 8 / n;
        let mut out = Vec::new();
        pause();
        let mut y = vec![0f32; 2 * (h + 2) * 3];
        halo_exchange(
            ctx,
            0,
            Halo {
                axis: 1,
                top: 1,
                bottom: 1,
            },
            &[2, h, 3],
            &x,
            &mut y,
        )
        .expect("halo");
        out.extend_from_slice(&y);
        pause();
        let mut g = vec![0f32; 2];
        stats_all_reduce(ctx, 1, &[2], &x[..2], &mut g).expect("stats");
        out.extend_from_slice(&g);
        pause();
        let mut z = vec![0f32; 48];
        patch_all_gather(ctx, 2, &[2, h, 3], 1, &vec![h; n], &x, &mut z).expect("gather");
        out.extend_from_slice(&z);
        pause();
        let mut w = vec![0f32; 2 * (h + 1) * 3];
        halo_exchange(
            ctx,
            3,
            Halo {
                axis: 1,
                top: 0,
                bottom: 1,
            },
            &[2, h, 3],
            &x,
            &mut w,
        )
        .expect("halo");
        out.extend_from_slice(&w);
        out
    }

    #[test]
    fn random_delays_give_the_same_results_as_none() {
        for stale_after in [None, Some(2)] {
            let n = 4;
            let plain = on_ranks(n, 12, stale_after, |ctx, step| pipeline(ctx, step, n, None));
            for seed in 1..4 {
                let delayed = on_ranks(n, 12, stale_after, |ctx, step| {
                    pipeline(ctx, step, n, Some(seed))
                });
                assert_eq!(plain, delayed, "seed {seed}, stale after {stale_after:?}");
            }
        }
    }

    #[test]
    fn eight_ranks_many_steps_do_not_deadlock() {
        let n = 8;
        let steps = 400;
        let got = on_ranks(n, steps, Some(4), |ctx, step| {
            let out = pipeline(ctx, step, n, None);
            out.iter().map(|&v| f64::from(v)).sum::<f64>()
        });
        assert_eq!(got.len(), n);
        assert!(got.iter().all(|per_step| per_step.len() == steps as usize));
    }

    #[test]
    fn stale_steps_read_the_previous_steps_context() {
        let n = 2;
        // Stale from step 2 on: neighbours' halo rows and gathered bands come from step − 1.
        let got = on_ranks(n, 5, Some(1), |ctx, step| {
            let x = band(&full(step), n, ctx.rank());
            let mut y = vec![0f32; 2 * 6 * 3];
            halo_exchange(
                ctx,
                0,
                Halo {
                    axis: 1,
                    top: 1,
                    bottom: 1,
                },
                &[2, 4, 3],
                &x,
                &mut y,
            )
            .expect("halo");
            let mut z = vec![0f32; 48];
            patch_all_gather(ctx, 1, &[2, 4, 3], 1, &[4, 4], &x, &mut z).expect("gather");
            (y, z)
        });
        for (r, per_step) in got.iter().enumerate() {
            for (step, (y, z)) in per_step.iter().enumerate() {
                let step = step as u64;
                let context = if step >= 2 { step - 1 } else { step };
                let mut want_y = expected_halo(&full(context), n, r, 1, 1);
                // Own rows always fresh.
                let own = expected_halo(&full(step), n, r, 0, 0);
                for o in 0..2 {
                    want_y[o * 18 + 3..o * 18 + 15].copy_from_slice(&own[o * 12..o * 12 + 12]);
                }
                if r == 0 {
                    for o in 0..2 {
                        want_y[o * 18..o * 18 + 3].fill(0.0);
                    }
                } else {
                    for o in 0..2 {
                        want_y[o * 18 + 15..o * 18 + 18].fill(0.0);
                    }
                }
                assert_eq!(y, &want_y, "rank {r} step {step}");
                let mut want_z = full(context);
                for o in 0..2 {
                    let base = o * 24 + r * 12;
                    want_z[base..base + 12].copy_from_slice(&full(step)[base..base + 12]);
                }
                assert_eq!(z, &want_z, "rank {r} step {step}");
            }
        }
    }

    /// Runs `stats_all_reduce` with `gn` on `n` ranks for 5 steps (stale after step 1), rank `r`
    /// contributing `s(r, step)`.
    fn stats_run(
        n: usize,
        gn: GnMode,
        s: impl Fn(usize, u64) -> Vec<f32> + Sync,
    ) -> Vec<Vec<Vec<f32>>> {
        on_ranks_gn(n, 5, Some(1), gn, |ctx, step| {
            let x = s(ctx.rank(), step);
            let mut g = vec![0f32; x.len()];
            stats_all_reduce(ctx, 0, &[x.len() / 2, 2], &x, &mut g).expect("stats");
            g
        })
    }

    #[test]
    fn stale_stats_follow_the_gn_mode() {
        let n = 2;
        // (E[x], E[x²]) pairs changing at a different rate on each band.
        let m = |r: usize, t: u64| r as f32 + t as f32 * (r as f32 + 1.0);
        let s = |r: usize, t: u64| vec![m(r, t), 100.0 + m(r, t)];
        let mean = |t: u64| (0..n).map(|r| m(r, t)).sum::<f32>() / n as f32;
        for gn in [
            GnMode::Corrected,
            GnMode::Stale,
            GnMode::Sync,
            GnMode::Separate,
        ] {
            let got = stats_run(n, gn, s);
            for (r, per_step) in got.iter().enumerate() {
                for (t, g) in per_step.iter().enumerate() {
                    let t = t as u64;
                    let want = if t <= 1 {
                        mean(t)
                    } else {
                        match gn {
                            GnMode::Corrected => mean(t - 1) + m(r, t) - m(r, t - 1),
                            GnMode::Stale => mean(t - 1) + (m(r, t) - m(r, t - 1)) / n as f32,
                            GnMode::Sync => mean(t),
                            GnMode::Separate => m(r, t),
                        }
                    };
                    assert_eq!(g, &vec![want, 100.0 + want], "{gn:?}: rank {r} step {t}");
                }
            }
        }
    }

    #[test]
    fn corrected_stats_fall_back_to_the_band_where_the_variance_would_be_negative() {
        // Step ≥ 1: band 0 moves its mean from 0 to 3 (variance 10 → 1), band 1 stays at
        // (0, 0.1). Extrapolated: (0 + 3, 5.05) has variance 5.05 − 9 < 0.
        let s = |r: usize, t: u64| match (r, t) {
            (0, 0) => vec![0.0, 10.0],
            (0, _) => vec![3.0, 10.0],
            _ => vec![0.0, 0.1],
        };
        let got = stats_run(2, GnMode::Corrected, s);
        // Step 2 is stale; band 0 reads step 1 (already moved) — unchanged, exact.
        assert_eq!(got[0][2], vec![1.5, 5.05]);
        let shifted = |r: usize, t: u64| s(r, t.saturating_sub(1));
        let got = stats_run(2, GnMode::Corrected, shifted);
        // Now band 0 changes between steps 1 and 2 (a stale step): fallback to its own pair.
        assert_eq!(got[0][2], vec![3.0, 10.0]);
        // Band 1 did not change: the stale mean.
        assert_eq!(got[1][2], vec![0.0, 5.05]);
    }

    /// Rows `rows` (axis 1) of the [2, 8, 3] tensor `t`.
    fn rows_of(t: &[f32], rows: std::ops::Range<usize>) -> Vec<f32> {
        (0..2)
            .flat_map(|o| t[o * 24 + rows.start * 3..o * 24 + rows.end * 3].to_vec())
            .collect()
    }

    #[test]
    fn gather_concatenates_unequal_bands_in_order() -> Result<(), crate::contract::BandError> {
        for heights in [&[3i64, 3, 2][..], &[2, 5, 1], &[1, 7]] {
            let bands = Bands::from_heights(heights)?;
            let n = bands.n();
            let parts: Vec<usize> = heights.iter().map(|&h| h as usize).collect();
            let got = on_ranks_with(n, 2, None, GnMode::default(), Some(&bands), |ctx, step| {
                let r = bands.rows(ctx.rank());
                let x = rows_of(&full(step), r.start as usize..r.end as usize);
                let mut y = vec![f32::NAN; 48];
                let shape = [2, parts[ctx.rank()], 3];
                patch_all_gather(ctx, 2, &shape, 1, &parts, &x, &mut y).expect("gather");
                y
            });
            for per_step in &got {
                for (step, y) in per_step.iter().enumerate() {
                    assert_eq!(y, &full(step as u64), "bands {bands}");
                }
            }
        }
        Ok(())
    }

    /// (E[x], E[x²]) over rows `rows` of a [2, 8, 3] tensor, per outer index: [2, 2] in f64.
    fn moments(t: &[f32], rows: std::ops::Range<usize>) -> Vec<f64> {
        let part = rows_of(t, rows);
        part.chunks(part.len() / 2)
            .flat_map(|c| {
                let k = c.len() as f64;
                let m = c.iter().map(|&v| f64::from(v)).sum::<f64>() / k;
                let m2 = c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / k;
                [m, m2]
            })
            .collect()
    }

    /// A step-dependent [2, 8, 3] tensor whose rows change at different rates.
    fn moving(step: u64) -> Vec<f32> {
        full(0)
            .iter()
            .enumerate()
            .map(|(i, &v)| v * 0.01 + (i % 7) as f32 * 0.1 * (1.0 + step as f32 * (i % 5) as f32))
            .collect()
    }

    #[test]
    fn weighted_stats_equal_the_whole_image_fresh_and_corrected()
    -> Result<(), crate::contract::BandError> {
        let bands = Bands::from_heights(&[3, 3, 2])?;
        let n = bands.n();
        let got = on_ranks_with(
            n,
            5,
            Some(1),
            GnMode::Corrected,
            Some(&bands),
            |ctx, step| {
                let r = bands.rows(ctx.rank());
                let s: Vec<f32> = moments(&moving(step), r.start as usize..r.end as usize)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let mut g = vec![0f32; 4];
                stats_all_reduce(ctx, 0, &[2, 2], &s, &mut g).expect("stats");
                g
            },
        );
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0);
        for (r, per_step) in got.iter().enumerate() {
            let rows = bands.rows(r);
            let own = |t: u64| moments(&moving(t), rows.start as usize..rows.end as usize);
            for (t, g) in per_step.iter().enumerate() {
                let t = t as u64;
                // Fresh (t ≤ 1): the whole image's moments, computed directly.
                // Stale-corrected: the whole image at t − 1 plus this band's change.
                let want: Vec<f64> = if t <= 1 {
                    moments(&moving(t), 0..8)
                } else {
                    let (old, now, before) = (moments(&moving(t - 1), 0..8), own(t), own(t - 1));
                    (0..4).map(|i| old[i] + now[i] - before[i]).collect()
                };
                for (a, b) in g.iter().zip(&want) {
                    assert!(close(*a, *b), "rank {r} step {t}: {g:?} vs {want:?}");
                }
            }
        }
        // The equal-weight mean of the bands' moments is not the image's: the weights matter.
        let plain: Vec<f64> = (0..n)
            .map(|r| {
                let rows = bands.rows(r);
                moments(&moving(0), rows.start as usize..rows.end as usize)[0]
            })
            .collect();
        let unweighted = plain.iter().sum::<f64>() / n as f64;
        assert!(!close(unweighted as f32, moments(&moving(0), 0..8)[0]));
        Ok(())
    }
}
