//! Linear algebra and attention pieces: MatMul (numpy broadcasting of batch dims, 1-D
//! promotion), Gemm (`transA`/`transB`), Einsum (the general subscript rule, ellipsis and
//! implicit output included), and the softmax family.
//!
//! Partition rules: a MatMul whose left operand is split on its rows (M) and whose right one is
//! replicated is local; a contraction over a split axis, or two split operands, gathers the
//! operand split on K or N. That is how self-attention is told apart from cross-attention
//! structurally: in Q·Kᵀ and P·V the keys and values come from the split image and get a
//! `DfcPatchAllGather`; in cross-attention they come from the replicated text and need
//! nothing. Softmax over a non-split axis is local.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};

use super::def::OpDef;
use super::layout::{Need, PartCx, Verdict};
use super::{OpCx, broadcast, join_dims, same_as, tt};
use crate::ir::{Dim, TensorType};

fn merge_dim(a: &Dim, b: &Dim, what: &str) -> Result<Dim> {
    Ok(match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) if x != y => bail!("{what}: {x} vs {y}"),
        (Dim::Fixed(_), _) => a.clone(),
        (_, Dim::Fixed(_)) => b.clone(),
        (Dim::Symbol(x), Dim::Symbol(y)) if x == y => a.clone(),
        (Dim::Unknown, _) => b.clone(),
        _ => a.clone(),
    })
}

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

fn matmul(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let shape = match (&a.shape, &b.shape) {
        (Some(x), Some(y)) => Some(matmul_dims(x, y)?),
        _ => None,
    };
    Ok(vec![tt(a.elem, shape)])
}

fn gemm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

/// One parsed Einsum term: letters, with the ellipsis position if any.
struct Term {
    letters: Vec<char>,
    ellipsis: Option<usize>,
}

fn parse_term(s: &str) -> Result<Term> {
    let mut letters = Vec::new();
    let mut ellipsis = None;
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if ellipsis.replace(letters.len()).is_some() {
                bail!("Einsum term `{s}` has two ellipses");
            }
            rest = r;
            continue;
        }
        let mut it = rest.chars();
        let c = it.next().ok_or_else(|| anyhow!("empty term"))?;
        if !c.is_ascii_alphabetic() {
            bail!("Einsum term `{s}` has an invalid character `{c}`");
        }
        letters.push(c);
        rest = it.as_str();
    }
    Ok(Term { letters, ellipsis })
}

/// Output dims of Einsum `equation` over inputs of the given shapes.
pub fn einsum_dims(equation: &str, inputs: &[&[Dim]]) -> Result<Vec<Dim>> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms = lhs.split(',').map(parse_term).collect::<Result<Vec<_>>>()?;
    if terms.len() != inputs.len() {
        bail!(
            "Einsum equation `{equation}` has {} terms for {} inputs",
            terms.len(),
            inputs.len()
        );
    }
    let mut sizes: BTreeMap<char, Dim> = BTreeMap::new();
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    let mut ell: Vec<Dim> = Vec::new();
    for (t, dims) in terms.iter().zip(inputs) {
        let n = t.letters.len();
        let ell_len = match t.ellipsis {
            Some(_) => dims.len().checked_sub(n).ok_or_else(|| {
                anyhow!(
                    "Einsum term has more letters than the input's rank {}",
                    dims.len()
                )
            })?,
            None => {
                if dims.len() != n {
                    bail!(
                        "Einsum term has {n} letters for an input of rank {}",
                        dims.len()
                    );
                }
                0
            }
        };
        let mut k = 0;
        for (i, &c) in t.letters.iter().enumerate() {
            if t.ellipsis == Some(i) {
                ell = broadcast(&ell, &dims[k..k + ell_len])?;
                k += ell_len;
            }
            let d = &dims[k];
            k += 1;
            *counts.entry(c).or_default() += 1;
            let cur = sizes.entry(c).or_insert(Dim::Fixed(1));
            *cur = match (&*cur, d) {
                (Dim::Fixed(1), _) => d.clone(),
                (_, Dim::Fixed(1)) => cur.clone(),
                _ => merge_dim(cur, d, &format!("Einsum label `{c}` has different sizes"))?,
            };
        }
        if t.ellipsis == Some(n) {
            ell = broadcast(&ell, &dims[k..k + ell_len])?;
        }
    }
    let out_term = match rhs {
        Some(r) => parse_term(r)?,
        None => Term {
            letters: counts
                .iter()
                .filter(|(_, n)| **n == 1)
                .map(|(c, _)| *c)
                .collect(),
            ellipsis: terms.iter().any(|t| t.ellipsis.is_some()).then_some(0),
        },
    };
    let mut out = Vec::new();
    for (i, c) in out_term.letters.iter().enumerate() {
        if out_term.ellipsis == Some(i) {
            out.extend(ell.iter().cloned());
        }
        out.push(
            sizes
                .get(c)
                .cloned()
                .ok_or_else(|| anyhow!("Einsum output label `{c}` appears in no input"))?,
        );
    }
    if out_term.ellipsis == Some(out_term.letters.len()) {
        out.extend(ell.iter().cloned());
    }
    Ok(out)
}

fn einsum(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let eq = cx
        .node
        .attr_s("equation")
        .ok_or_else(|| anyhow!("Einsum needs `equation`"))?;
    let elem = cx.elem(0)?;
    let mut shapes = Vec::new();
    for i in 0..cx.n_inputs() {
        match &cx.input(i)?.shape {
            Some(s) => shapes.push(s.as_slice()),
            None => return Ok(vec![tt(elem, None)]),
        }
    }
    Ok(vec![tt(elem, Some(einsum_dims(&eq, &shapes)?))])
}

fn softmax(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    if let Some(d) = cx.dims(0)? {
        let default = if cx.opset >= 13 { -1 } else { 1 };
        super::norm_axis(cx.attr_i("axis", default), d.len().max(1))?;
    }
    same_as(cx, 0)
}

/// The linear-algebra family.
pub const OPS: &[OpDef] = &[
    OpDef::infer("MatMul", matmul).split(part_matmul),
    OpDef::infer("Gemm", gemm).split(part_gemm),
    OpDef::infer("Einsum", einsum).split(part_einsum),
    OpDef::infer("Softmax", softmax).split(part_softmax),
    OpDef::infer("LogSoftmax", softmax).split(part_softmax),
    OpDef::infer("Hardmax", softmax).split(part_softmax),
];

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

fn part_matmul(cx: &PartCx<'_>) -> Result<Verdict> {
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
        (None, None) => Verdict::local(vec![crate::passes::ops::layout::Layout::Replicated]),
    })
}

fn part_gemm(cx: &PartCx<'_>) -> Result<Verdict> {
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

fn part_einsum(_cx: &PartCx<'_>) -> Result<Verdict> {
    Ok(Verdict::Refuse(
        "Einsum on a split tensor has no rule".into(),
    ))
}

fn part_softmax(cx: &PartCx<'_>) -> Result<Verdict> {
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    let r = cx.dims(0).map(|d| d.len()).unwrap_or(0);
    let default = if cx.op.opset >= 13 { -1 } else { 1 };
    let axis = super::norm_axis(cx.op.attr_i("axis", default), r.max(1))?;
    let over = if cx.op.opset >= 13 {
        a == axis
    } else {
        a >= axis
    };
    if over {
        return Ok(Verdict::Refuse(format!(
            "{} over the split axis {a}",
            cx.op.node.op_type
        )));
    }
    Ok(Verdict::split_all(cx, a, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::ir::DataType;

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
    fn einsum_general_rule() {
        let eq = |e: &str| astr("equation", e);
        assert_eq!(
            infer_text(
                "Einsum",
                vec![eq("bhqd,bhkd->bhqk")],
                12,
                vec![f32t(&[2, 8, 64, 40]), f32t(&[2, 8, 77, 40])],
                vec![]
            ),
            "f32[2,8,64,77]"
        );
        assert_eq!(
            infer_text(
                "Einsum",
                vec![eq("ij,jk")],
                12,
                vec![f32t(&[3, 4]), f32t(&[4, 5])],
                vec![]
            ),
            "f32[3,5]"
        );
        assert_eq!(
            infer_text(
                "Einsum",
                vec![eq("...ij,...jk->...ik")],
                12,
                vec![f32t(&[7, 1, 3, 4]), f32t(&[6, 4, 5])],
                vec![]
            ),
            "f32[7,6,3,5]"
        );
        assert_eq!(
            infer_text("Einsum", vec![eq("ii->i")], 12, vec![f32t(&[3, 3])], vec![]),
            "f32[3]"
        );
        assert_eq!(
            infer_text(
                "Einsum",
                vec![eq("i,i")],
                12,
                vec![f32t(&[3]), f32t(&[3])],
                vec![]
            ),
            "f32[]"
        );
        assert!(
            infer_text(
                "Einsum",
                vec![eq("ij,jk->ik")],
                12,
                vec![f32t(&[3, 4]), f32t(&[5, 5])],
                vec![]
            )
            .starts_with("error")
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
}
