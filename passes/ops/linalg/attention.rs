//! The fused `Attention` operator (opset 23: 4-D `[B, heads, S, D]` and 3-D
//! `[B, S, heads·D]` forms, grouped heads, a KV cache): shape rule, cost, partition rule, and
//! the attention partition core that `MultiHeadAttention` shares.
//!
//! `Attention` keeps the queries' token split and gathers keys and values split on their token
//! axis; it refuses a KV cache, causal masking and the optional extra outputs on a split
//! tensor.

use anyhow::{Result, anyhow, bail};

use super::{add_dims, div_dim, merge_dim, present};
use crate::ir::{Dim, TensorType};
use crate::ops::def::{Cost, default_cost, gemm_tiles};
use crate::ops::layout::{Layout, Need, PartCx, Verdict};
use crate::ops::{OpCx, tt};

/// `Attention` (opset 23): `Y` `[B, Hq, Sq, Dv]` (4-D) or `[B, Sq, Hq·Dv]` (3-D, with
/// `q_num_heads` and `kv_num_heads`); `present_key`/`present_value` `[B, Hkv, Sp + Skv, ·]`;
/// `qk_matmul_output` `[B, Hq, Sq, Sp + Skv]`.
pub(super) fn attention(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let q = cx.input(0)?;
    let k = cx.input(1)?;
    let v = cx.input(2)?;
    let (Some(qd), Some(kd), Some(vd)) = (&q.shape, &k.shape, &v.shape) else {
        return Ok(vec![
            tt(q.elem, None),
            tt(k.elem, None),
            tt(v.elem, None),
            tt(q.elem, None),
        ]);
    };
    if !matches!((qd.len(), kd.len(), vd.len()), (3, 3, 3) | (4, 4, 4)) {
        bail!(
            "Attention needs Q, K, V all 3-D or all 4-D, not ranks {}, {}, {}",
            qd.len(),
            kd.len(),
            vd.len()
        );
    }
    let batch = merge_dim(&qd[0], &kd[0], "Attention: Q and K batch differ")
        .and_then(|b| merge_dim(&b, &vd[0], "Attention: K and V batch differ"))?;
    // Per-head views: (heads, tokens, head size) of Q, K and V.
    let (qh, kh, vh) = match (qd.len(), kd.len(), vd.len()) {
        (4, 4, 4) => (
            [qd[1].clone(), qd[2].clone(), qd[3].clone()],
            [kd[1].clone(), kd[2].clone(), kd[3].clone()],
            [vd[1].clone(), vd[2].clone(), vd[3].clone()],
        ),
        (3, 3, 3) => {
            let hq = cx.attr_i("q_num_heads", 0);
            let hkv = cx.attr_i("kv_num_heads", 0);
            if hq <= 0 || hkv <= 0 {
                bail!("3-D Attention needs positive `q_num_heads` and `kv_num_heads`");
            }
            (
                [
                    Dim::Fixed(hq),
                    qd[1].clone(),
                    div_dim(&qd[2], hq, "Attention Q hidden size")?,
                ],
                [
                    Dim::Fixed(hkv),
                    kd[1].clone(),
                    div_dim(&kd[2], hkv, "Attention K hidden size")?,
                ],
                [
                    Dim::Fixed(hkv),
                    vd[1].clone(),
                    div_dim(&vd[2], hkv, "Attention V hidden size")?,
                ],
            )
        }
        (a, b, c) => bail!("Attention needs Q, K, V all 3-D or all 4-D, not ranks {a}, {b}, {c}"),
    };
    merge_dim(&qh[2], &kh[2], "Attention: Q and K head sizes differ")?;
    let heads_kv = merge_dim(&kh[0], &vh[0], "Attention: K and V heads differ")?;
    let kv_len = merge_dim(&kh[1], &vh[1], "Attention: K and V lengths differ")?;
    if let (Dim::Fixed(a), Dim::Fixed(b)) = (&qh[0], &heads_kv)
        && (*b <= 0 || a % b != 0)
    {
        bail!("Attention: {a} query heads are not a multiple of {b} key/value heads");
    }
    let past = if present(cx, 4) {
        match cx.dims(4)? {
            Some(p) if p.len() == 4 => p[2].clone(),
            Some(p) => bail!("Attention past_key must be 4-D, not rank {}", p.len()),
            None => Dim::Unknown,
        }
    } else {
        Dim::Fixed(0)
    };
    let total = add_dims(&past, &kv_len);
    let y = if qd.len() == 4 {
        vec![batch.clone(), qh[0].clone(), qh[1].clone(), vh[2].clone()]
    } else {
        let hidden = match (&qh[0], &vh[2]) {
            (Dim::Fixed(h), Dim::Fixed(d)) => h.checked_mul(*d).map_or(Dim::Unknown, Dim::Fixed),
            _ => Dim::Unknown,
        };
        vec![batch.clone(), qh[1].clone(), hidden]
    };
    let mut out = vec![
        tt(q.elem, Some(y)),
        tt(
            k.elem,
            Some(vec![
                batch.clone(),
                heads_kv.clone(),
                total.clone(),
                kh[2].clone(),
            ]),
        ),
        tt(
            v.elem,
            Some(vec![batch.clone(), heads_kv, total.clone(), vh[2].clone()]),
        ),
        tt(
            q.elem,
            Some(vec![batch, qh[0].clone(), qh[1].clone(), total]),
        ),
    ];
    out.truncate(cx.node.outputs().len().max(1));
    Ok(out)
}

/// Attention (fused, as a flash-attention kernel runs it): `Q·Kᵀ` and `P·V` as multiply-adds
/// (`2 · B · Hq · Sq · Skv · (D + Dv)`) and the softmax (5 operations per score: max,
/// subtract, exp, sum, divide); the scores never reach memory, so the bytes are Q, K, V, the
/// mask and the outputs.
pub(super) fn cost_attention(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let dims = |port: usize| {
        cx.static_dims(port)
            .ok_or_else(|| anyhow!("Attention input {port} shape is not static"))
    };
    let (q, k, v) = (dims(0)?, dims(1)?, dims(2)?);
    let (b, hq, sq, skv, qk_width, pv_width) = match (q.as_slice(), k.as_slice(), v.as_slice()) {
        ([b, hq, sq, d], [_, _, skv, _], [_, hkv, _, dv]) => {
            // Grouped heads: every query head reads its group's K and V.
            let _ = hkv;
            (*b, *hq, *sq, *skv, hq * d, hq * dv)
        }
        ([b, sq, qw], [_, skv, _], [_, _, vw]) => {
            let hq = cx.attr_i("q_num_heads", 1).max(1);
            let hkv = cx.attr_i("kv_num_heads", 1).max(1);
            (*b, hq, *sq, *skv, *qw, vw * hq / hkv)
        }
        _ => bail!("Attention needs Q, K, V all 3-D or all 4-D"),
    };
    // Flash attention hands out one block of TILE queries of one head per multiprocessor.
    c.tiles = gemm_tiles((b * hq) as f64, sq as f64, 1.0);
    let scores = (b * sq) as f64 * skv as f64;
    c.flops = 2.0 * scores * (qk_width + pv_width) as f64 + 5.0 * scores * hq as f64;
    Ok(c)
}

pub(super) fn part_attention(cx: &PartCx<'_>) -> Result<Verdict> {
    if present(cx.op, 4) || present(cx.op, 5) {
        return Ok(Verdict::Refuse(
            "Attention with past_key/past_value (a KV cache) on a split tensor: export the UNet's attention without a cache"
                .into(),
        ));
    }
    if present(cx.op, 6) {
        return Ok(Verdict::Refuse(
            "Attention with nonpad_kv_seqlen on a split tensor has no partition rule".into(),
        ));
    }
    if (1..4).any(|p| cx.op.node.output(p).is_some()) {
        return Ok(Verdict::Refuse(
            "Attention's present_key/present_value/qk_matmul_output outputs on a split tensor have no partition rule"
                .into(),
        ));
    }
    if cx.op.attr_i("is_causal", 0) != 0 {
        return Ok(Verdict::Refuse(
            "causal Attention masks by absolute token position: not supported on a split tensor"
                .into(),
        ));
    }
    let (Some(q), Some(_)) = (cx.dims(0), cx.out_dims(0)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let tok = match q.len() {
        4 => 2,
        3 => 1,
        r => return Ok(Verdict::Refuse(format!("Attention queries of rank {r}"))),
    };
    split_attention(
        cx,
        &q,
        &AttentionSplit {
            op: "Attention",
            other_axes: "heads or channels",
            tok,
            // The mask's query axis is its second to last; K and V follow the queries only on
            // the batch axis.
            follows: |port, axis, rank| match (port, axis) {
                (3, 0) => (rank == 4).then_some(0),
                (3, _) => rank.checked_sub(2),
                (_, 0) => Some(0),
                _ => None,
            },
            bad_extent: |port, e, full| {
                let e = e.map_or_else(|| "none".to_string(), |e| e.to_string());
                format!("input {port} has extent {e} on the split axis, neither 1 nor {full}")
            },
        },
    )
}

/// What differs between the partition rules of `Attention` and `MultiHeadAttention` once each
/// has refused what it has no rule for.
pub(super) struct AttentionSplit {
    /// The operator, as refusals name it.
    pub(super) op: &'static str,
    /// The query axes other than batch and tokens, as refusals name them.
    pub(super) other_axes: &'static str,
    /// The token axis of the queries, keys and values.
    pub(super) tok: usize,
    /// The axis of input `port` (1, 2 or 3; of rank `rank`) that follows queries split on
    /// `axis`; `None` when the input is read whole.
    pub(super) follows: fn(port: usize, axis: usize, rank: usize) -> Option<usize>,
    /// The refusal of input `port` whose extent on its following axis is neither 1 nor `full`.
    pub(super) bad_extent: fn(port: usize, e: Option<i64>, full: i64) -> String,
}

/// The attention partition rule on queries `q`: keys and values split on their tokens are
/// gathered (every query reads every key); queries stay split on the batch or token axis, and
/// replicated operands that follow that axis are taken per band; replicated queries gather
/// every split operand.
pub(super) fn split_attention(
    cx: &PartCx<'_>,
    q: &[i64],
    rule: &AttentionSplit,
) -> Result<Verdict> {
    let tok = rule.tok;
    for port in [1, 2] {
        if cx.axis(port) == Some(tok) {
            return Ok(Verdict::Gather { port });
        }
    }
    let axis = match cx.axis(0) {
        Some(a) if a == tok || a == 0 => a,
        Some(a) => {
            return Ok(Verdict::Refuse(format!(
                "{} with queries split on axis {a} ({})",
                rule.op, rule.other_axes
            )));
        }
        None => {
            if let Some(&(port, _)) = cx.split_inputs().first() {
                return Ok(Verdict::Gather { port });
            }
            return Ok(Verdict::local(vec![Layout::Replicated; cx.n_outputs]));
        }
    };
    let mut needs = Vec::new();
    for port in 1..cx.layouts.len().min(4) {
        if !present(cx.op, port) {
            continue;
        }
        let Some(d) = cx.dims(port) else {
            return Ok(Verdict::Refuse(format!("input {port} has no static shape")));
        };
        match (cx.axis(port), (rule.follows)(port, axis, d.len())) {
            (Some(a), Some(ia)) if a == ia => {}
            (Some(_), _) => return Ok(Verdict::Gather { port }),
            (None, None) => {}
            (None, Some(ia)) => {
                let full = q[axis];
                match d.get(ia).copied() {
                    Some(1) => {}
                    Some(e) if e == full => needs.push(Need::SliceOperand { port, axis: ia }),
                    e => return Ok(Verdict::Refuse((rule.bad_extent)(port, e, full))),
                }
            }
        }
    }
    Ok(Verdict::split_all(cx, axis, needs))
}

#[cfg(test)]
mod tests {
    use crate::ops::def::cost_testing::cost;
    use crate::ops::testing::*;

    #[test]
    fn attention_op_shapes() {
        let f = |d: &[i64]| f32t(d);
        assert_eq!(
            infer_text_n(
                "Attention",
                vec![],
                23,
                vec![f(&[2, 8, 64, 40]), f(&[2, 4, 77, 40]), f(&[2, 4, 77, 32])],
                vec![],
                4
            ),
            "f32[2,8,64,32] f32[2,4,77,40] f32[2,4,77,32] f32[2,8,64,77]"
        );
        assert_eq!(
            infer_text(
                "Attention",
                vec![ai("q_num_heads", 8), ai("kv_num_heads", 8)],
                23,
                vec![f(&[2, 64, 320]), f(&[2, 77, 320]), f(&[2, 77, 320])],
                vec![]
            ),
            "f32[2,64,320]"
        );
        // A KV cache lengthens the present keys.
        assert_eq!(
            infer_text_n(
                "Attention",
                vec![],
                23,
                vec![
                    f(&[1, 2, 4, 8]),
                    f(&[1, 2, 4, 8]),
                    f(&[1, 2, 4, 8]),
                    None,
                    f(&[1, 2, 10, 8]),
                    f(&[1, 2, 10, 8])
                ],
                vec![],
                2
            ),
            "f32[1,2,4,8] f32[1,2,14,8]"
        );
        assert!(
            infer_text(
                "Attention",
                vec![],
                23,
                vec![f(&[2, 64, 320]), f(&[2, 77, 320]), f(&[2, 77, 320])],
                vec![]
            )
            .contains("q_num_heads")
        );
        assert!(
            infer_text(
                "Attention",
                vec![],
                23,
                vec![f(&[2, 6, 64, 40]), f(&[2, 4, 64, 40]), f(&[2, 4, 64, 40])],
                vec![]
            )
            .contains("multiple")
        );
    }

    #[test]
    fn attention_op_partition() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Need, Verdict};
        let s = |axis| Layout::Split { axis };
        let r = Layout::Replicated;
        let att = node(
            "Attention",
            vec![ai("q_num_heads", 8), ai("kv_num_heads", 8)],
        );
        let t = |d: &[i64]| f32t(d);
        // Self-attention (3-D): keys, then values, gathered; then local on the query tokens.
        let types = vec![t(&[2, 64, 320]), t(&[2, 64, 320]), t(&[2, 64, 320])];
        let run = |layouts: Vec<Layout>, types: Vec<Option<crate::ir::TensorType>>| {
            verdict(&att, 23, types, vec![], layouts, vec![t(&[2, 64, 320])], 2)
        };
        assert_eq!(
            run(vec![s(1), s(1), s(1)], types.clone()),
            Verdict::Gather { port: 1 }
        );
        assert_eq!(
            run(vec![s(1), r, s(1)], types.clone()),
            Verdict::Gather { port: 2 }
        );
        assert_eq!(
            run(vec![s(1), r, r], types.clone()),
            Verdict::local(vec![s(1)])
        );
        // Cross-attention: keys and values from the text: nothing to exchange.
        let cross = vec![t(&[2, 64, 320]), t(&[2, 77, 320]), t(&[2, 77, 320])];
        assert_eq!(run(vec![s(1), r, r], cross), Verdict::local(vec![s(1)]));
        // A full mask [Sq, Skv] is taken per band of queries.
        let masked = vec![
            t(&[2, 64, 320]),
            t(&[2, 64, 320]),
            t(&[2, 64, 320]),
            t(&[64, 64]),
        ];
        assert_eq!(
            run(vec![s(1), r, r, r], masked),
            Verdict::Local {
                outputs: vec![s(1)],
                needs: vec![Need::SliceOperand { port: 3, axis: 0 }]
            }
        );
        // Split on the batch (CFG halves): local.
        assert_eq!(
            run(vec![s(0), s(0), s(0)], types.clone()),
            Verdict::local(vec![s(0)])
        );
        // Split on heads: refused.
        let v = run(vec![s(2), r, r], types);
        assert!(matches!(v, Verdict::Refuse(_)), "{v:?}");
        // A KV cache and causal masking are refused with their reasons.
        let cache = vec![
            t(&[2, 8, 64, 40]),
            t(&[2, 8, 64, 40]),
            t(&[2, 8, 64, 40]),
            None,
            t(&[2, 8, 4, 40]),
            t(&[2, 8, 4, 40]),
        ];
        let v = verdict(
            &node("Attention", vec![]),
            23,
            cache,
            vec![],
            vec![s(2), r, r, r, r, r],
            vec![t(&[2, 8, 64, 40])],
            2,
        );
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.contains("KV cache")),
            "{v:?}"
        );
        let v = verdict(
            &node("Attention", vec![ai("is_causal", 1)]),
            23,
            vec![t(&[2, 8, 64, 40]), t(&[2, 8, 64, 40]), t(&[2, 8, 64, 40])],
            vec![],
            vec![s(2), r, r],
            vec![t(&[2, 8, 64, 40])],
            2,
        );
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.contains("causal")),
            "{v:?}"
        );
    }

    #[test]
    fn attention_counts_both_products_and_the_softmax() {
        // B 1, 2 heads, 3 queries, 5 keys, d 4, dv 6: Q·Kᵀ 2·2·3·5·4 = 240, P·V 2·2·3·5·6 = 360,
        // softmax 5·2·3·5 = 150.
        let c = cost(
            "Attention",
            vec![],
            23,
            vec![
                f32t(&[1, 2, 3, 4]),
                f32t(&[1, 2, 5, 4]),
                f32t(&[1, 2, 5, 6]),
            ],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 750.0);
        // The scores never reach memory: Q, K, V in, Y out.
        assert_eq!(c.bytes_read, (24.0 + 40.0 + 60.0) * 4.0);
        assert_eq!(c.bytes_written, 36.0 * 4.0);
        // One block of queries per head.
        assert_eq!(c.tiles, 2.0);
        // The same attention in 3-D form.
        let c = cost(
            "Attention",
            vec![ai("q_num_heads", 2), ai("kv_num_heads", 2)],
            23,
            vec![f32t(&[1, 3, 8]), f32t(&[1, 5, 8]), f32t(&[1, 5, 12])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 750.0);
        assert_eq!(c.tiles, 2.0);
        let c = cost("Softmax", vec![], 13, vec![f32t(&[2, 10])], vec![]).unwrap();
        assert_eq!(c.flops, 100.0);
    }
}
