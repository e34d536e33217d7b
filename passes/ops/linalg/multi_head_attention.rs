//! ONNX Runtime's `com.microsoft:MultiHeadAttention {num_heads, scale?, unidirectional?}` (in
//! [`super::ORT_OPS`]; its CPU provider runs it) takes `query` `[B, S, D]`, `key` `[B, L, D]` and
//! `value` `[B, L, Dv]` (or a packed KV `[B, L, N, 2, H]` as `key`, 4-D keys and values
//! `[B, N, L, H]`, or a packed QKV `[B, S, N, 3, H]` as `query`), an optional projection
//! `bias`, masks and a KV cache, and returns `[B, S, N·Hv]`. Its partition rule is
//! `Attention`'s on 3-D tensors: queries split on tokens stay split, keys and values split on
//! tokens are gathered, replicated ones (cross-attention) are read as they are; packed QKV,
//! 4-D keys, masks, a cache, the extra outputs and `unidirectional` are refused on a split
//! tensor.

use anyhow::{Result, anyhow, bail};

use super::attention::{AttentionSplit, split_attention};
use super::{add_dims, div_dim, merge_dim, present};
use crate::ir::{DataType, Dim, TensorType};
use crate::ops::def::{Cost, default_cost, gemm_tiles};
use crate::ops::layout::{PartCx, Verdict};
use crate::ops::{OpCx, tt};

/// `a · b` on dims; unknown unless both are known.
fn mul_dims(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x.checked_mul(*y).map_or(Dim::Unknown, Dim::Fixed),
        _ => Dim::Unknown,
    }
}

/// Checks that `d` is `want` where both are known (a fixed layout slot of a packed form).
fn expect_dim(d: &Dim, want: i64, what: &str) -> Result<()> {
    match d {
        Dim::Fixed(x) if *x != want => bail!("{what} is {x}, not {want}"),
        _ => Ok(()),
    }
}

/// `com.microsoft:MultiHeadAttention {num_heads}`: `output` `[B, S, N·Hv]`; `present_key`,
/// `present_value` `[B, N, P + L, H]`; `qk` `[B, N, S, P + L]` (P: the past length, L: the
/// keys'). Forms: 3-D `query` `[B, S, D]` with 3-D `key` `[B, L, D]` and `value` `[B, L, Dv]`,
/// with packed `key` `[B, L, N, 2, H]` and no `value`, or with 4-D `key`/`value`
/// `[B, N, L, H]`; or packed `query` `[B, S, N, 3, H]` alone.
pub(super) fn multi_head_attention(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let heads = cx.attr_i("num_heads", 0);
    if heads <= 0 {
        bail!("MultiHeadAttention needs a positive `num_heads`");
    }
    let q = cx.input(0)?;
    if !matches!(
        q.elem,
        DataType::FLOAT | DataType::FLOAT16 | DataType::BFLOAT16
    ) {
        bail!("query must be float, float16 or bfloat16, not {}", q.elem);
    }
    let unknown = Ok(vec![tt(q.elem, None); 4]);
    let Some(qd) = &q.shape else {
        return unknown;
    };
    let n = Dim::Fixed(heads);
    // Batch, query tokens, key tokens, head sizes of the keys and of the values.
    let (b, s, l, hk, hv) = match qd.len() {
        5 => {
            expect_dim(&qd[2], heads, "packed QKV heads")?;
            expect_dim(&qd[3], 3, "packed QKV's Q/K/V axis")?;
            if present(cx, 1) || present(cx, 2) {
                bail!("packed QKV takes no separate key or value");
            }
            let (b, s, h) = (qd[0].clone(), qd[1].clone(), qd[4].clone());
            (b, s.clone(), s, h.clone(), h)
        }
        3 => {
            let head = div_dim(&qd[2], heads, "MultiHeadAttention query hidden size")?;
            if !present(cx, 1) {
                bail!("a 3-D query needs a key");
            }
            let Some(kd) = cx.dims(1)? else {
                return unknown;
            };
            let batch = |d: &Dim| merge_dim(&qd[0], d, "MultiHeadAttention: batch sizes differ");
            match kd.len() {
                3 => {
                    if !present(cx, 2) {
                        bail!("a 3-D key needs a value");
                    }
                    let Some(vd) = cx.dims(2)? else {
                        return unknown;
                    };
                    if vd.len() != 3 {
                        bail!("a 3-D key needs a 3-D value, not rank {}", vd.len());
                    }
                    merge_dim(
                        &qd[2],
                        &kd[2],
                        "MultiHeadAttention: query and key widths differ",
                    )?;
                    let l = merge_dim(
                        &kd[1],
                        &vd[1],
                        "MultiHeadAttention: key and value lengths differ",
                    )?;
                    let hv = div_dim(&vd[2], heads, "MultiHeadAttention value hidden size")?;
                    let b = merge_dim(
                        &batch(&kd[0])?,
                        &vd[0],
                        "MultiHeadAttention: batch sizes differ",
                    )?;
                    (b, qd[1].clone(), l, head, hv)
                }
                5 => {
                    if present(cx, 2) {
                        bail!("packed KV takes no separate value");
                    }
                    expect_dim(&kd[2], heads, "packed KV heads")?;
                    expect_dim(&kd[3], 2, "packed KV's K/V axis")?;
                    let h = merge_dim(
                        &head,
                        &kd[4],
                        "MultiHeadAttention: query and key head sizes differ",
                    )?;
                    (batch(&kd[0])?, qd[1].clone(), kd[1].clone(), h.clone(), h)
                }
                4 => {
                    if !present(cx, 2) {
                        bail!("a 4-D key needs a value");
                    }
                    let Some(vd) = cx.dims(2)? else {
                        return unknown;
                    };
                    if vd.len() != 4 {
                        bail!("a 4-D key needs a 4-D value, not rank {}", vd.len());
                    }
                    expect_dim(&kd[1], heads, "key heads")?;
                    expect_dim(&vd[1], heads, "value heads")?;
                    let h = merge_dim(
                        &head,
                        &kd[3],
                        "MultiHeadAttention: query and key head sizes differ",
                    )?;
                    let l = merge_dim(
                        &kd[2],
                        &vd[2],
                        "MultiHeadAttention: key and value lengths differ",
                    )?;
                    (batch(&kd[0])?, qd[1].clone(), l, h, vd[3].clone())
                }
                r => bail!("key must be 3-D, 4-D or packed 5-D, not rank {r}"),
            }
        }
        r => bail!("query must be 3-D [B, S, D] or packed 5-D [B, S, N, 3, H], not rank {r}"),
    };
    let past = if present(cx, 6) {
        match cx.dims(6)? {
            Some(p) if p.len() == 4 => p[2].clone(),
            Some(p) => bail!("past_key must be 4-D, not rank {}", p.len()),
            None => Dim::Unknown,
        }
    } else {
        Dim::Fixed(0)
    };
    let total = add_dims(&past, &l);
    let kv = |h: Dim| tt(q.elem, Some(vec![b.clone(), n.clone(), total.clone(), h]));
    Ok(vec![
        tt(q.elem, Some(vec![b.clone(), s.clone(), mul_dims(&n, &hv)])),
        kv(hk),
        kv(hv),
        tt(q.elem, Some(vec![b.clone(), n.clone(), s, total.clone()])),
    ])
}

/// MultiHeadAttention: like [`super::attention::cost_attention`], `Q·Kᵀ` and `P·V` as multiply-adds and the
/// softmax, the scores never in memory.
pub(super) fn cost_multi_head_attention(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let heads = cx.attr_i("num_heads", 1).max(1);
    let q = cx
        .static_dims(0)
        .ok_or_else(|| anyhow!("MultiHeadAttention query shape is not static"))?;
    let (l, qk_width) = match (q.as_slice(), cx.static_dims(1).as_deref()) {
        ([_, s, n, _, h], _) => (*s, n * h),
        ([_, _, d], Some([_, l, _] | [_, l, _, _, _])) => (*l, *d),
        ([_, _, d], Some([_, _, l, _])) => (*l, *d),
        _ => bail!("MultiHeadAttention input shapes are not static or not a supported form"),
    };
    let y = outputs
        .first()
        .and_then(TensorType::static_dims)
        .ok_or_else(|| anyhow!("MultiHeadAttention output shape is not static"))?;
    let [b, s, pv_width] = y[..] else {
        bail!("MultiHeadAttention output is not 3-D");
    };
    c.tiles = gemm_tiles((b * heads) as f64, s as f64, 1.0);
    let scores = (b * s) as f64 * l as f64;
    c.flops = 2.0 * scores * (qk_width + pv_width) as f64 + 5.0 * scores * heads as f64;
    Ok(c)
}

/// MultiHeadAttention's optional inputs that have no partition rule, by port.
const MHA_UNSUPPORTED_INPUTS: [(usize, &str); 6] = [
    (4, "key_padding_mask"),
    (5, "attention_bias"),
    (6, "past_key"),
    (7, "past_value"),
    (8, "past_sequence_length"),
    (9, "cache_indirection"),
];

/// MultiHeadAttention as `Attention`: the queries keep their token split; keys and values
/// split on their tokens are gathered (self-attention), replicated ones (cross-attention) are
/// read as they are. Only separate 3-D Q, K, V (and packed KV, which travels like a key) have
/// the rule; packed QKV, 4-D keys, masks, a KV cache, the extra outputs and `unidirectional`
/// are refused on a split tensor.
pub(super) fn part_multi_head_attention(cx: &PartCx<'_>) -> Result<Verdict> {
    for (port, what) in MHA_UNSUPPORTED_INPUTS {
        if present(cx.op, port) {
            return Ok(Verdict::Refuse(format!(
                "MultiHeadAttention with {what} (input {port}) on a split tensor has no partition rule"
            )));
        }
    }
    if (1..4).any(|p| cx.op.node.output(p).is_some()) {
        return Ok(Verdict::Refuse(
            "MultiHeadAttention's present_key/present_value/qk outputs on a split tensor have no partition rule"
                .into(),
        ));
    }
    if cx.op.attr_i("unidirectional", 0) != 0 {
        return Ok(Verdict::Refuse(
            "unidirectional MultiHeadAttention masks by absolute token position: not supported on a split tensor"
                .into(),
        ));
    }
    let Some(q) = cx.dims(0) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    if q.len() == 5 {
        return Ok(Verdict::Refuse(
            "MultiHeadAttention with packed QKV [B, S, N, 3, H] on a split tensor: the keys travel with the split queries; export separate Q, K and V (optimizer option enable_packed_qkv off)"
                .into(),
        ));
    }
    let Some(k) = cx.dims(1) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    if k.len() == 4 {
        return Ok(Verdict::Refuse(
            "MultiHeadAttention with 4-D keys and values [B, N, L, H] on a split tensor has no partition rule; export 3-D [B, L, D] keys and values"
                .into(),
        ));
    }
    split_attention(
        cx,
        &q,
        &AttentionSplit {
            op: "MultiHeadAttention",
            other_axes: "the hidden channels",
            // Keys and values (packed KV too) carry their tokens on axis 1.
            tok: 1,
            // Keys and values follow the queries on the batch axis only; the bias (input 3) is
            // per channel.
            follows: |port, axis, _| (port != 3 && axis == 0).then_some(0),
            bad_extent: |port, e, full| {
                format!("input {port} has batch {e:?}, neither 1 nor {full}")
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use crate::ir::TensorType;
    use crate::ops::testing::*;
    use crate::passes::ops::ORT_DOMAIN;
    use crate::passes::ops::layout::testing::verdict;
    use crate::passes::ops::layout::{Layout, Need, Verdict};

    fn mha(attrs: Vec<crate::onnx::proto::AttributeProto>) -> crate::ir::Node {
        let mut n = node("MultiHeadAttention", attrs);
        n.domain = ORT_DOMAIN.into();
        n
    }

    fn shapes(types: Vec<Option<TensorType>>, n_out: usize) -> String {
        infer_text_in(
            ORT_DOMAIN,
            "MultiHeadAttention",
            vec![ai("num_heads", 8)],
            types,
            n_out,
        )
    }

    #[test]
    fn multi_head_attention_shapes() {
        let t = |d: &[i64]| f32t(d);
        // Self- and cross-attention on separate 3-D Q, K, V; the value width sets the output.
        assert_eq!(
            shapes(
                vec![t(&[2, 64, 320]), t(&[2, 64, 320]), t(&[2, 64, 320])],
                1
            ),
            "f32[2,64,320]"
        );
        assert_eq!(
            shapes(
                vec![t(&[2, 64, 320]), t(&[2, 77, 320]), t(&[2, 77, 640])],
                4
            ),
            "f32[2,64,640] f32[2,8,77,40] f32[2,8,77,80] f32[2,8,64,77]"
        );
        // Packed KV, 4-D keys and values, packed QKV.
        assert_eq!(
            shapes(vec![t(&[2, 64, 320]), t(&[2, 77, 8, 2, 40])], 1),
            "f32[2,64,320]"
        );
        assert_eq!(
            shapes(
                vec![t(&[2, 64, 320]), t(&[2, 8, 77, 40]), t(&[2, 8, 77, 40])],
                1
            ),
            "f32[2,64,320]"
        );
        assert_eq!(shapes(vec![t(&[2, 64, 8, 3, 40])], 1), "f32[2,64,320]");
        // Widths that differ, heads that do not divide, a key without a value: errors.
        for types in [
            vec![t(&[2, 64, 320]), t(&[2, 77, 160]), t(&[2, 77, 320])],
            vec![t(&[2, 64, 324]), t(&[2, 77, 324]), t(&[2, 77, 324])],
            vec![t(&[2, 64, 320]), t(&[2, 77, 320])],
            vec![t(&[2, 64, 320]), t(&[2, 77, 320]), t(&[2, 76, 320])],
            vec![t(&[2, 64, 320]), t(&[2, 77, 4, 2, 80])],
            vec![t(&[64, 320])],
        ] {
            let out = shapes(types.clone(), 1);
            assert!(out.starts_with("error"), "{types:?}: {out}");
        }
        assert!(
            infer_text_in(
                ORT_DOMAIN,
                "MultiHeadAttention",
                vec![],
                vec![t(&[2, 64, 320]), t(&[2, 64, 320]), t(&[2, 64, 320])],
                1
            )
            .contains("num_heads")
        );
    }

    #[test]
    fn multi_head_attention_partition() {
        let s = |axis| Layout::Split { axis };
        let r = Layout::Replicated;
        let t = |d: &[i64]| f32t(d);
        let att = mha(vec![ai("num_heads", 8)]);
        let run = |layouts: Vec<Layout>, types: Vec<Option<TensorType>>| {
            verdict(&att, 17, types, vec![], layouts, vec![t(&[2, 64, 320])], 2)
        };
        // Self-attention: keys, then values, gathered; then local on the query tokens.
        let own = || vec![t(&[2, 64, 320]), t(&[2, 64, 320]), t(&[2, 64, 320])];
        assert_eq!(
            run(vec![s(1), s(1), s(1)], own()),
            Verdict::Gather { port: 1 }
        );
        assert_eq!(run(vec![s(1), r, s(1)], own()), Verdict::Gather { port: 2 });
        assert_eq!(run(vec![s(1), r, r], own()), Verdict::local(vec![s(1)]));
        // Cross-attention on the text: nothing to exchange; with a projection bias too.
        let cross = vec![t(&[2, 64, 320]), t(&[2, 77, 320]), t(&[2, 77, 320])];
        assert_eq!(
            run(vec![s(1), r, r], cross.clone()),
            Verdict::local(vec![s(1)])
        );
        let biased = [cross, vec![t(&[960])]].concat();
        assert_eq!(run(vec![s(1), r, r, r], biased), Verdict::local(vec![s(1)]));
        // Packed KV travels like a key: gathered when split on its tokens.
        let packed = vec![t(&[2, 64, 320]), t(&[2, 64, 8, 2, 40])];
        assert_eq!(
            run(vec![s(1), s(1)], packed.clone()),
            Verdict::Gather { port: 1 }
        );
        assert_eq!(run(vec![s(1), r], packed), Verdict::local(vec![s(1)]));
        // Queries split on the batch: replicated keys of the full batch are taken per band.
        assert_eq!(
            run(vec![s(0), r, r], own()),
            Verdict::Local {
                outputs: vec![s(0)],
                needs: vec![
                    Need::SliceOperand { port: 1, axis: 0 },
                    Need::SliceOperand { port: 2, axis: 0 }
                ]
            }
        );
        assert_eq!(
            run(vec![s(0), s(0), s(0)], own()),
            Verdict::local(vec![s(0)])
        );
        // Split on the hidden channels, packed QKV, 4-D keys: refused with the reason.
        for (layouts, types, why) in [
            (vec![s(2), r, r], own(), "hidden"),
            (vec![s(1)], vec![t(&[2, 64, 8, 3, 40])], "packed QKV"),
            (
                vec![s(1), r, r],
                vec![t(&[2, 64, 320]), t(&[2, 8, 64, 40]), t(&[2, 8, 64, 40])],
                "4-D keys",
            ),
        ] {
            let v = run(layouts, types);
            assert!(
                matches!(&v, Verdict::Refuse(m) if m.contains(why)),
                "{why}: {v:?}"
            );
        }
        // A mask, a cache and causal masking are refused.
        let masked = [own(), vec![None, t(&[2, 64])]].concat();
        let v = run(vec![s(1), r, r, r, r], masked);
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.contains("key_padding_mask")),
            "{v:?}"
        );
        let cached = [own(), vec![None, None, None, t(&[2, 8, 4, 40])]].concat();
        let v = run(vec![s(1), r, r, r, r, r, r], cached);
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.contains("past_key")),
            "{v:?}"
        );
        let causal = mha(vec![ai("num_heads", 8), ai("unidirectional", 1)]);
        let v = verdict(
            &causal,
            17,
            own(),
            vec![],
            vec![s(1), r, r],
            vec![t(&[2, 64, 320])],
            2,
        );
        assert!(
            matches!(&v, Verdict::Refuse(m) if m.contains("unidirectional")),
            "{v:?}"
        );
    }

    #[test]
    fn multi_head_attention_costs_like_attention() {
        use crate::ops::def::cost_testing::cost;
        // B 1, 2 heads, 3 queries, 5 keys, d 4 per head, dv 6 per head: as the Attention
        // operator's test, 750 operations.
        let c = cost(
            "MultiHeadAttention",
            vec![ai("num_heads", 2)],
            17,
            vec![f32t(&[1, 3, 8]), f32t(&[1, 5, 8]), f32t(&[1, 5, 12])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 750.0);
        assert_eq!(c.bytes_read, (24.0 + 40.0 + 60.0) * 4.0);
        assert_eq!(c.bytes_written, 36.0 * 4.0);
        assert_eq!(c.tiles, 2.0);
    }
}
