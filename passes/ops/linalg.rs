//! Linear algebra and attention pieces: MatMul (numpy broadcasting of batch dims, 1-D
//! promotion), Gemm (`transA`/`transB`), Einsum (the general subscript rule, ellipsis and
//! implicit output included), and the softmax family.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};

use super::{OpCx, OpDef, broadcast, join_dims, same_as, tt};
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
    OpDef::infer("MatMul", matmul),
    OpDef::infer("Gemm", gemm),
    OpDef::infer("Einsum", einsum),
    OpDef::infer("Softmax", softmax),
    OpDef::infer("LogSoftmax", softmax),
    OpDef::infer("Hardmax", softmax),
];

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
}
