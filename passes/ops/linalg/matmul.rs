//! MatMul (numpy broadcasting of batch dims, 1-D promotion) and Gemm (`transA`/`transB`):
//! shape rules, costs, partition rules.
//!
//! Partition rules: a MatMul whose left operand is split on its rows (M) and whose right one is
//! replicated is local; a contraction over a split axis, or two split operands, gathers the
//! operand split on K or N. That is how self-attention is told apart from cross-attention
//! structurally: in Q·Kᵀ and P·V the keys and values come from the split image and get a
//! `DfcPatchAllGather`; in cross-attention they come from the replicated text and need
//! nothing.

use anyhow::{Result, anyhow, bail};

use super::merge_dim;
use crate::ir::{Dim, TensorType};
use crate::ops::def::{Cost, default_cost, gemm_tiles, matrix_output_tiles, numel};
use crate::ops::layout::{Layout, Need, PartCx, Verdict};
use crate::ops::{OpCx, broadcast, join_dims, tt};

/// Output dims of `MatMul(a, b)`.
pub fn matmul_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    if a.is_empty() || b.is_empty() {
        bail!("MatMul of a scalar");
    }
    let one = Dim::Fixed(1);
    let a2: Vec<Dim> = if a.len() == 1 {
        vec![one.clone(), a[0].clone()]
    } else {
        a.to_vec()
    };
    let b2: Vec<Dim> = if b.len() == 1 {
        vec![b[0].clone(), one]
    } else {
        b.to_vec()
    };
    let (ra, rb) = (a2.len(), b2.len());
    merge_dim(&a2[ra - 1], &b2[rb - 2], "MatMul inner dimensions differ")
        .map_err(|e| anyhow!("{e} (shapes [{}] and [{}])", join_dims(a), join_dims(b)))?;
    let mut out = broadcast(&a2[..ra - 2], &b2[..rb - 2])?;
    if a.len() > 1 {
        out.push(a2[ra - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[rb - 1].clone());
    }
    Ok(out)
}

pub(super) fn matmul(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let shape = match (&a.shape, &b.shape) {
        (Some(x), Some(y)) => Some(matmul_dims(x, y)?),
        _ => None,
    };
    Ok(vec![tt(a.elem, shape)])
}

/// MatMul: `2 · |Y| · K`, K the inner dimension (A's last).
pub(super) fn cost_matmul(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let a = cx
        .static_dims(0)
        .ok_or_else(|| anyhow!("MatMul input shape is not static"))?;
    let k = *a.last().unwrap_or(&1);
    let out = outputs
        .first()
        .ok_or_else(|| anyhow!("MatMul has no output type"))?;
    c.flops = 2.0 * numel(out)? * k as f64;
    let y = out.static_dims().unwrap_or_default();
    c.tiles = match (cx.static_dims(1).map(|b| b.len()), y.as_slice()) {
        // A shared 2-D weight: the libraries fold the batch into the rows of one GEMM.
        (Some(2), [lead @ .., m, n]) if !lead.is_empty() => {
            gemm_tiles(1.0, (lead.iter().product::<i64>() * m) as f64, *n as f64)
        }
        _ => matrix_output_tiles(&y),
    };
    Ok(c)
}

pub(super) fn gemm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let (Some(x), Some(y)) = (&a.shape, &b.shape) else {
        return Ok(vec![tt(a.elem, Some(vec![Dim::Unknown, Dim::Unknown]))]);
    };
    if x.len() != 2 || y.len() != 2 {
        bail!(
            "Gemm needs rank-2 inputs, got [{}] and [{}]",
            join_dims(x),
            join_dims(y)
        );
    }
    let (m, ka) = if cx.attr_i("transA", 0) != 0 {
        (&x[1], &x[0])
    } else {
        (&x[0], &x[1])
    };
    let (kb, n) = if cx.attr_i("transB", 0) != 0 {
        (&y[1], &y[0])
    } else {
        (&y[0], &y[1])
    };
    merge_dim(ka, kb, "Gemm inner dimensions differ")?;
    let out = vec![m.clone(), n.clone()];
    if let Some(Some(c)) = cx
        .types
        .get(2)
        .map(|t| t.as_ref().and_then(|t| t.shape.as_ref()))
    {
        let bc = broadcast(&out, c)?;
        if bc.len() != 2 {
            bail!("Gemm bias [{}] does not broadcast to [M, N]", join_dims(c));
        }
    }
    Ok(vec![tt(a.elem, Some(out))])
}

/// Gemm: `2 · M · N · K`, plus `M · N` for `C` when present.
pub(super) fn cost_gemm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let a = cx
        .static_dims(0)
        .ok_or_else(|| anyhow!("Gemm input shape is not static"))?;
    let k = if cx.attr_i("transA", 0) != 0 {
        a.first()
    } else {
        a.get(1)
    };
    let out = outputs
        .first()
        .ok_or_else(|| anyhow!("Gemm has no output type"))?;
    let y = numel(out)?;
    c.flops = 2.0 * y * *k.unwrap_or(&1) as f64 + if cx.has_input(2) { y } else { 0.0 };
    c.tiles = matrix_output_tiles(&out.static_dims().unwrap_or_default());
    Ok(c)
}

/// The band need of replicated operand `port` (dims `d`) of an op whose output (dims `o`) is
/// split on output axis `axis`: nothing when it broadcasts, a per-band slice when it has the
/// full extent.
fn replicated_operand(
    port: usize,
    d: &[i64],
    o: &[i64],
    axis: usize,
) -> Result<Vec<Need>, Verdict> {
    if d.len() + axis < o.len() {
        return Ok(Vec::new());
    }
    let ia = axis + d.len() - o.len();
    if d[ia] == 1 {
        Ok(Vec::new())
    } else if d[ia] == o[axis] {
        Ok(vec![Need::SliceOperand { port, axis: ia }])
    } else {
        Err(Verdict::Refuse(format!(
            "input {port} has extent {} on the split axis, neither 1 nor {}",
            d[ia], o[axis]
        )))
    }
}

pub(super) fn part_matmul(cx: &PartCx<'_>) -> Result<Verdict> {
    let (Some(a), Some(b), Some(o)) = (cx.dims(0), cx.dims(1), cx.out_dims(0)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    if a.len() < 2 || b.len() < 2 {
        return Ok(Verdict::Refuse(
            "a 1-D operand of a MatMul on a split tensor".into(),
        ));
    }
    let (r, ra, rb) = (o.len(), a.len(), b.len());
    let (la, lb) = (cx.axis(0), cx.axis(1));
    // A contraction over a split axis needs the whole operand.
    if la == Some(ra - 1) {
        return Ok(Verdict::Gather { port: 0 });
    }
    if lb == Some(rb - 2) {
        return Ok(Verdict::Gather { port: 1 });
    }
    let oa = la.map(|x| x + r - ra);
    let ob = lb.map(|x| x + r - rb);
    let verdict = |axis: usize, needs: Result<Vec<Need>, Verdict>| match needs {
        Ok(needs) => Verdict::split_all(cx, axis, needs),
        Err(v) => v,
    };
    Ok(match (oa, ob) {
        (Some(x), Some(y)) if x == y && x + 2 < r => Verdict::split_all(cx, x, Vec::new()),
        // Both split otherwise (A on rows, B on columns): B is gathered.
        (Some(_), Some(_)) => Verdict::Gather { port: 1 },
        (Some(x), None) if x + 2 < r => verdict(x, replicated_operand(1, &b, &o, x)),
        (Some(x), None) => Verdict::split_all(cx, x, Vec::new()),
        (None, Some(y)) if y + 2 < r => verdict(y, replicated_operand(0, &a, &o, y)),
        (None, Some(y)) => Verdict::split_all(cx, y, Vec::new()),
        (None, None) => Verdict::local(vec![Layout::Replicated]),
    })
}

pub(super) fn part_gemm(cx: &PartCx<'_>) -> Result<Verdict> {
    let (Some(o), Some(_), Some(_)) = (cx.out_dims(0), cx.dims(0), cx.dims(1)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let a_m = usize::from(cx.op.attr_i("transA", 0) != 0);
    let b_k = usize::from(cx.op.attr_i("transB", 0) != 0);
    let (la, lb, lc) = (cx.axis(0), cx.axis(1), cx.axis(2));
    if la == Some(1 - a_m) {
        return Ok(Verdict::Gather { port: 0 });
    }
    if lb == Some(b_k) {
        return Ok(Verdict::Gather { port: 1 });
    }
    let axis = match (la, lb) {
        (Some(_), Some(_)) => return Ok(Verdict::Gather { port: 1 }),
        (Some(_), None) => 0,
        (None, Some(_)) => 1,
        (None, None) => return Ok(Verdict::Gather { port: 2 }),
    };
    let mut needs = Vec::new();
    if cx.op.has_input(2) {
        let c = cx.dims(2).unwrap_or_default();
        match lc {
            Some(x) if x + o.len() - c.len() == axis => {}
            Some(_) => return Ok(Verdict::Gather { port: 2 }),
            None => match replicated_operand(2, &c, &o, axis) {
                Ok(n) => needs = n,
                Err(v) => return Ok(v),
            },
        }
    }
    Ok(Verdict::split_all(cx, axis, needs))
}

#[cfg(test)]
mod tests {
    use crate::ir::DataType;
    use crate::ops::def::cost_testing::cost;
    use crate::ops::testing::*;

    #[test]
    fn matmul_broadcasts_and_promotes() {
        let f = DataType::FLOAT;
        assert_eq!(
            infer_text(
                "MatMul",
                vec![],
                17,
                vec![f32t(&[2, 8, 64, 40]), f32t(&[2, 8, 40, 64])],
                vec![]
            ),
            "f32[2,8,64,64]"
        );
        assert_eq!(
            infer_text(
                "MatMul",
                vec![],
                17,
                vec![f32t(&[5, 3, 4]), f32t(&[4])],
                vec![]
            ),
            "f32[5,3]"
        );
        assert_eq!(
            infer_text(
                "MatMul",
                vec![],
                17,
                vec![f32t(&[4]), f32t(&[7, 4, 2])],
                vec![]
            ),
            "f32[7,2]"
        );
        assert_eq!(
            infer_text(
                "MatMul",
                vec![],
                17,
                vec![sym(f, &["b", "n", "32"]), f32t(&[32, 64])],
                vec![]
            ),
            "f32[b,n,64]"
        );
        assert!(
            infer_text(
                "MatMul",
                vec![],
                17,
                vec![f32t(&[2, 3]), f32t(&[4, 5])],
                vec![]
            )
            .starts_with("error")
        );
    }

    #[test]
    fn gemm_transposes() {
        assert_eq!(
            infer_text(
                "Gemm",
                vec![ai("transB", 1)],
                13,
                vec![f32t(&[2, 32]), f32t(&[128, 32]), f32t(&[128])],
                vec![]
            ),
            "f32[2,128]"
        );
        assert_eq!(
            infer_text(
                "Gemm",
                vec![ai("transA", 1)],
                13,
                vec![f32t(&[32, 2]), f32t(&[32, 7])],
                vec![]
            ),
            "f32[2,7]"
        );
    }

    #[test]
    fn attention_gathers_keys_and_values() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Verdict};
        let mm = node("MatMul", vec![]);
        let s = |axis| Layout::Split { axis };
        // Q·Kᵀ: Q split on tokens (rows), Kᵀ split on tokens (columns): gather Kᵀ.
        let v = verdict(
            &mm,
            17,
            vec![f32t(&[2, 8, 64, 4]), f32t(&[2, 8, 4, 64])],
            vec![],
            vec![s(2), s(3)],
            vec![f32t(&[2, 8, 64, 64])],
            2,
        );
        assert_eq!(v, Verdict::Gather { port: 1 });
        // P·V: V split on tokens (the contraction): gather V.
        let v = verdict(
            &mm,
            17,
            vec![f32t(&[2, 8, 64, 64]), f32t(&[2, 8, 64, 4])],
            vec![],
            vec![s(2), s(2)],
            vec![f32t(&[2, 8, 64, 4])],
            2,
        );
        assert_eq!(v, Verdict::Gather { port: 1 });
        // Cross-attention: K from the text is replicated: local.
        let v = verdict(
            &mm,
            17,
            vec![f32t(&[2, 8, 64, 4]), f32t(&[2, 8, 4, 77])],
            vec![],
            vec![s(2), Layout::Replicated],
            vec![f32t(&[2, 8, 64, 77])],
            2,
        );
        assert_eq!(v, Verdict::local(vec![s(2)]));
    }

    #[test]
    fn matmul_and_gemm_count_multiply_adds() {
        // [2,3,4] × [4,5]: 30 outputs of 4 multiply-adds.
        let c = cost(
            "MatMul",
            vec![],
            17,
            vec![f32t(&[2, 3, 4]), f32t(&[4, 5])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 240.0);
        assert_eq!((c.bytes_read, c.bytes_written), (176.0, 120.0));
        // Gemm [3,4]·[4,5] + C: 15 outputs, 4 multiply-adds and one addition each.
        let c = cost(
            "Gemm",
            vec![],
            17,
            vec![f32t(&[3, 4]), f32t(&[4, 5]), f32t(&[5])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 135.0);
        // transA: K is A's first dimension.
        let c = cost(
            "Gemm",
            vec![ai("transA", 1)],
            17,
            vec![f32t(&[4, 3]), f32t(&[4, 5])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 120.0);
    }

    #[test]
    fn matrix_products_count_their_output_tiles() {
        let einsum = |eq: &str| vec![astr("equation", eq)];
        let cases: [(&str, Vec<_>, &[&[i64]], f64); 6] = [
            // A shared weight: one 600×200 GEMM, ⌈600/128⌉·⌈200/128⌉ = 5·2 tiles.
            ("MatMul", vec![], &[&[2, 300, 64], &[64, 200]], 10.0),
            // Two independent 300×200 products, 3·2 tiles each.
            ("MatMul", vec![], &[&[2, 300, 64], &[2, 64, 200]], 12.0),
            // One 3×5 tile per head.
            (
                "Einsum",
                einsum("bhqd,bhkd->bhqk"),
                &[&[1, 2, 3, 4], &[1, 2, 5, 4]],
                2.0,
            ),
            // The output's index order does not matter: b=2 products of 300×200.
            (
                "Einsum",
                einsum("bqd,bkd->qbk"),
                &[&[2, 300, 4], &[2, 200, 4]],
                2.0 * 3.0 * 2.0,
            ),
            // A matrix-vector product per batch: b=2, i=4096 is 2·32 tiles.
            (
                "Einsum",
                einsum("bij,bj->bi"),
                &[&[2, 4096, 8], &[2, 8]],
                64.0,
            ),
            // An elementwise Einsum is no matrix product.
            ("Einsum", einsum("ij,ij->ij"), &[&[4, 4], &[4, 4]], 0.0),
        ];
        for (op, attrs, inputs, tiles) in cases {
            let types = inputs.iter().map(|d| f32t(d)).collect();
            let c = cost(op, attrs, 17, types, vec![]).unwrap();
            assert_eq!(c.tiles, tiles, "{op} {inputs:?}");
        }
    }
}
