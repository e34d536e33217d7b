//! Einsum: the general subscript rule (ellipsis and implicit output included), constant
//! evaluation of the plain form, cost and partition rule.
//!
//! Einsum follows the split index through its equation: when every split operand's split
//! index survives in the output (the same index), the output is split there and replicated
//! operands carrying that index are taken per band; an operand whose split index is contracted
//! (the values of `b i j, b j d -> b i d`) or differs from the one kept (the keys of
//! `b i d, b j d -> b i j`: the output keeps the index that comes first) is gathered. Ellipsis
//! and repeated-index forms have no partition rule.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};

use super::merge_dim;
use crate::ir::{Dim, TensorType};
use crate::ops::def::{Cost, default_cost, gemm_tiles, numel};
use crate::ops::layout::{Layout, Need, PartCx, Verdict};
use crate::ops::{OpCx, broadcast, tt};
use crate::tensor::Tensor;

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

pub(super) fn einsum(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

/// Einsum: every combination of the equation's distinct indices is one multiply-add (two
/// operations with two or more operands, one addition with one); with an ellipsis, one
/// operation per output element.
pub(super) fn cost_einsum(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let eq: String = cx
        .node
        .attr_s("equation")
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, rhs) = eq.split_once("->").unwrap_or((eq.as_str(), ""));
    let out = outputs
        .first()
        .ok_or_else(|| anyhow!("Einsum has no output type"))?;
    let y = numel(out)?;
    if lhs.contains('.') {
        c.flops = y;
        return Ok(c);
    }
    let mut sizes: BTreeMap<char, i64> = BTreeMap::new();
    let terms: Vec<&str> = lhs.split(',').collect();
    for (port, term) in terms.iter().enumerate() {
        let dims = cx
            .static_dims(port)
            .ok_or_else(|| anyhow!("Einsum operand {port} shape is not static"))?;
        for (letter, d) in term.chars().zip(dims) {
            sizes.insert(letter, d);
        }
    }
    let space: f64 = sizes.values().map(|&d| d as f64).product();
    c.flops = if terms.len() >= 2 { 2.0 * space } else { space };
    if let [a, b] = terms.as_slice()
        && space > y
    {
        // A contraction of two operands runs as a batched matrix product: indices of both
        // operands and the output are its batch, those of one operand and the output its rows
        // (the first operand) or columns (the second).
        let extent = |keep: &dyn Fn(char) -> bool| -> f64 {
            rhs.chars()
                .filter(|&l| keep(l))
                .map(|l| sizes.get(&l).copied().unwrap_or(1) as f64)
                .product()
        };
        let batch = extent(&|l| a.contains(l) && b.contains(l));
        let rows = extent(&|l| a.contains(l) && !b.contains(l));
        let cols = extent(&|l| b.contains(l) && !a.contains(l));
        c.tiles = gemm_tiles(batch, rows, cols);
    }
    Ok(c)
}

/// The subscripts of an Einsum equation in the plain form partition rules handle: one letter
/// per axis, no ellipsis, no letter twice in one term.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscripts {
    /// Letters of each input term.
    pub inputs: Vec<Vec<char>>,
    /// Letters of the output (implicit output: the letters seen once, sorted).
    pub output: Vec<char>,
}

/// Parses `equation` for `n_inputs` operands into [`Subscripts`]; the error says which form
/// is not supported.
pub fn plain_subscripts(equation: &str, n_inputs: usize) -> Result<Subscripts, String> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    if eq.contains("...") {
        return Err(format!(
            "Einsum `{equation}` uses an ellipsis; only equations with one letter per axis have a partition rule"
        ));
    }
    let term = |t: &str| -> Result<Vec<char>, String> {
        let mut v: Vec<char> = Vec::new();
        for c in t.chars() {
            if !c.is_ascii_alphabetic() {
                return Err(format!("Einsum `{equation}`: invalid character `{c}`"));
            }
            if v.contains(&c) {
                return Err(format!(
                    "Einsum `{equation}` repeats index `{c}` in one term (a diagonal or trace); it has no partition rule"
                ));
            }
            v.push(c);
        }
        Ok(v)
    };
    let inputs = lhs.split(',').map(term).collect::<Result<Vec<_>, _>>()?;
    if inputs.len() != n_inputs {
        return Err(format!(
            "Einsum `{equation}` has {} terms for {n_inputs} inputs",
            inputs.len()
        ));
    }
    let output = match rhs {
        Some(r) => term(r)?,
        None => {
            let mut counts: BTreeMap<char, usize> = BTreeMap::new();
            for c in inputs.iter().flatten() {
                *counts.entry(*c).or_default() += 1;
            }
            counts
                .into_iter()
                .filter(|(_, n)| *n == 1)
                .map(|(c, _)| c)
                .collect()
        }
    };
    if let Some(c) = output
        .iter()
        .find(|c| !inputs.iter().flatten().any(|x| x == *c))
    {
        return Err(format!(
            "Einsum `{equation}`: output index `{c}` appears in no input"
        ));
    }
    Ok(Subscripts { inputs, output })
}

pub(super) fn part_einsum(cx: &PartCx<'_>) -> Result<Verdict> {
    let Some(eq) = cx.op.node.attr_s("equation") else {
        return Ok(Verdict::Refuse("Einsum has no `equation`".into()));
    };
    let s = match plain_subscripts(&eq, cx.layouts.len()) {
        Ok(s) => s,
        Err(m) => return Ok(Verdict::Refuse(m)),
    };
    let Some(o) = cx.out_dims(0) else {
        return Ok(Verdict::Refuse("output shape is not static".into()));
    };
    // The split index kept: the earliest output axis any split operand is split on. An operand
    // whose split index is contracted away is gathered first.
    let split = cx.split_inputs();
    let mut keep: Option<(usize, char)> = None;
    for &(port, a) in &split {
        let Some(&letter) = s.inputs[port].get(a) else {
            return Ok(Verdict::Refuse(format!(
                "input {port} is split on axis {a}, beyond its term `{}`",
                s.inputs[port].iter().collect::<String>()
            )));
        };
        match s.output.iter().position(|&c| c == letter) {
            None => return Ok(Verdict::Gather { port }),
            Some(oa) if keep.is_none_or(|(k, _)| oa < k) => keep = Some((oa, letter)),
            Some(_) => {}
        }
    }
    let Some((axis, letter)) = keep else {
        return Ok(Verdict::local(vec![Layout::Replicated; cx.n_outputs]));
    };
    if let Some(&(port, _)) = split.iter().find(|&&(p, a)| s.inputs[p][a] != letter) {
        return Ok(Verdict::Gather { port });
    }
    let mut needs = Vec::new();
    for (port, l) in cx.layouts.iter().enumerate() {
        if *l != Layout::Replicated {
            continue;
        }
        let Some(ia) = s.inputs[port].iter().position(|&c| c == letter) else {
            continue;
        };
        let Some(d) = cx.dims(port) else {
            return Ok(Verdict::Refuse(format!("input {port} has no static shape")));
        };
        match d.get(ia) {
            Some(1) => {}
            Some(&e) if e == o[axis] => needs.push(Need::SliceOperand { port, axis: ia }),
            _ => {
                return Ok(Verdict::Refuse(format!(
                    "input {port} has extent {:?} on index `{letter}`, neither 1 nor {}",
                    d.get(ia),
                    o[axis]
                )));
            }
        }
    }
    Ok(Verdict::split_all(cx, axis, needs))
}

/// Evaluates a plain Einsum (see [`plain_subscripts`]) on small constant float inputs by
/// summing over every index assignment; `None` for other forms, types or sizes.
pub(super) fn eval_einsum(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
    const MAX_TERMS: usize = 1 << 16;
    let Some(eq) = cx.node.attr_s("equation") else {
        return Ok(None);
    };
    let Ok(s) = plain_subscripts(&eq, cx.n_inputs()) else {
        return Ok(None);
    };
    let mut values = Vec::new();
    for port in 0..cx.n_inputs() {
        let Some(t) = cx.value(port)? else {
            return Ok(None);
        };
        if !t.dtype().is_float() {
            return Ok(None);
        }
        values.push(t);
    }
    let elem = values.first().map(|t| t.dtype());
    if values.iter().any(|t| Some(t.dtype()) != elem) {
        return Ok(None);
    }
    // Every letter's extent; broadcast (extent-1) axes read index 0.
    let mut extent: BTreeMap<char, usize> = BTreeMap::new();
    for (t, letters) in values.iter().zip(&s.inputs) {
        let dims = t.shape();
        if dims.len() != letters.len() {
            return Ok(None);
        }
        for (&c, &d) in letters.iter().zip(dims) {
            let e = extent.entry(c).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && d != *e {
                return Ok(None);
            }
        }
    }
    let letters: Vec<char> = extent.keys().copied().collect();
    let Some(total) = extent
        .values()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_TERMS)
    else {
        return Ok(None);
    };
    let pos = |c: char| letters.iter().position(|&x| x == c).unwrap_or(0);
    let data: Vec<Vec<f64>> = values.iter().map(|t| t.to_f64s()).collect();
    let offsets = |term: &[char], dims: &[usize], idx: &[usize]| -> usize {
        let mut off = 0;
        for (k, &c) in term.iter().enumerate() {
            let i = if dims[k] == 1 { 0 } else { idx[pos(c)] };
            off = off * dims[k] + i;
        }
        off
    };
    let in_dims: Vec<Vec<usize>> = values.iter().map(|t| t.shape().to_vec()).collect();
    let out_dims: Vec<usize> = s.output.iter().map(|c| extent[c]).collect();
    let out_len = out_dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_TERMS);
    let Some(out_len) = out_len else {
        return Ok(None);
    };
    let mut out = vec![0f64; out_len];
    let mut idx = vec![0usize; letters.len()];
    for _ in 0..total {
        let mut prod = 1f64;
        for ((term, dims), d) in s.inputs.iter().zip(&in_dims).zip(&data) {
            prod *= d[offsets(term, dims, &idx)];
        }
        out[offsets(&s.output, &out_dims, &idx)] += prod;
        for k in (0..letters.len()).rev() {
            idx[k] += 1;
            if idx[k] < extent[&letters[k]] {
                break;
            }
            idx[k] = 0;
        }
    }
    let Some(elem) = elem else {
        return Ok(None);
    };
    Ok(Some(vec![Tensor::from_vec(&out_dims, out)?.cast(elem)?]))
}

#[cfg(test)]
mod tests {
    use crate::ops::def::cost_testing::cost;
    use crate::ops::testing::*;

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

    fn einsum_verdict(
        eq: &str,
        types: Vec<Option<crate::ir::TensorType>>,
        layouts: Vec<crate::passes::ops::layout::Layout>,
        out: &[i64],
    ) -> crate::passes::ops::layout::Verdict {
        crate::passes::ops::layout::testing::verdict(
            &node("Einsum", vec![astr("equation", eq)]),
            12,
            types,
            vec![],
            layouts,
            vec![f32t(out)],
            2,
        )
    }

    #[test]
    fn einsum_attention_forms() {
        use crate::passes::ops::layout::{Layout, Need, Verdict};
        let s = |axis| Layout::Split { axis };
        let r = Layout::Replicated;
        // (b h) i d, (b h) j d -> (b h) i j: queries and keys split on tokens: keys gathered.
        let v = einsum_verdict(
            "b i d, b j d -> b i j",
            vec![f32t(&[16, 64, 40]), f32t(&[16, 64, 40])],
            vec![s(1), s(1)],
            &[16, 64, 64],
        );
        assert_eq!(v, Verdict::Gather { port: 1 });
        // After the gather: local, split on the query tokens.
        let v = einsum_verdict(
            "b i d, b j d -> b i j",
            vec![f32t(&[16, 64, 40]), f32t(&[16, 64, 40])],
            vec![s(1), r],
            &[16, 64, 64],
        );
        assert_eq!(v, Verdict::local(vec![s(1)]));
        // Probabilities times values: the contraction runs over the split value tokens.
        let v = einsum_verdict(
            "bij,bjd->bid",
            vec![f32t(&[16, 64, 64]), f32t(&[16, 64, 40])],
            vec![s(1), s(1)],
            &[16, 64, 40],
        );
        assert_eq!(v, Verdict::Gather { port: 1 });
        // Heads axis, keys first in the equation: the earliest output index is kept.
        let v = einsum_verdict(
            "bhkd,bhqd->bhqk",
            vec![f32t(&[2, 8, 64, 40]), f32t(&[2, 8, 64, 40])],
            vec![s(2), s(2)],
            &[2, 8, 64, 64],
        );
        assert_eq!(v, Verdict::Gather { port: 0 });
        let v = einsum_verdict(
            "bhqk,bhkd->bhqd",
            vec![f32t(&[2, 8, 64, 64]), f32t(&[2, 8, 64, 40])],
            vec![s(2), r],
            &[2, 8, 64, 40],
        );
        assert_eq!(v, Verdict::local(vec![s(2)]));
        // Cross-attention: keys from the replicated text need nothing.
        let v = einsum_verdict(
            "bhqd,bhkd->bhqk",
            vec![f32t(&[2, 8, 64, 40]), f32t(&[2, 8, 77, 40])],
            vec![s(2), r],
            &[2, 8, 64, 77],
        );
        assert_eq!(v, Verdict::local(vec![s(2)]));
        // A transpose moves the split axis; a full-extent replicated operand is taken per band.
        let v = einsum_verdict(
            "bic,ci->bci",
            vec![f32t(&[2, 64, 8]), f32t(&[8, 64])],
            vec![s(1), r],
            &[2, 8, 64],
        );
        assert_eq!(
            v,
            Verdict::Local {
                outputs: vec![s(2)],
                needs: vec![Need::SliceOperand { port: 1, axis: 1 }]
            }
        );
        // Split on the batch: local.
        let v = einsum_verdict(
            "bid,bjd->bij",
            vec![f32t(&[2, 64, 40]), f32t(&[2, 64, 40])],
            vec![s(0), s(0)],
            &[2, 64, 64],
        );
        assert_eq!(v, Verdict::local(vec![s(0)]));
        // Unsupported forms are refused with the reason.
        for (eq, what) in [
            ("...id,...jd->...ij", "ellipsis"),
            ("bii,bid->bd", "repeats"),
        ] {
            let v = einsum_verdict(
                eq,
                vec![f32t(&[2, 64, 64]), f32t(&[2, 64, 40])],
                vec![s(1), r],
                &[2, 64, 64],
            );
            assert!(
                matches!(&v, Verdict::Refuse(m) if m.contains(what)),
                "{eq}: {v:?}"
            );
        }
    }

    #[test]
    fn einsum_folds_small_constants() -> anyhow::Result<()> {
        use crate::tensor::Tensor;
        let a = Tensor::from_vec(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.])?;
        let b = Tensor::from_vec(&[3, 2], vec![1f32, 0., 0., 1., 1., 1.])?;
        let out = eval(
            "Einsum",
            vec![astr("equation", "ij,jk->ik")],
            12,
            vec![Some(a.clone()), Some(b)],
        )?;
        assert_eq!(out[0].to_f64s(), vec![4., 5., 10., 11.]);
        let out = eval(
            "Einsum",
            vec![astr("equation", "ij->ji")],
            12,
            vec![Some(a)],
        )?;
        assert_eq!(out[0].dims(), vec![3, 2]);
        assert_eq!(out[0].to_f64s(), vec![1., 4., 2., 5., 3., 6.]);
        Ok(())
    }

    #[test]
    fn einsum_counts_its_index_space() {
        // b=1 h=2 q=3 d=4 k=5: 120 multiply-adds.
        let c = cost(
            "Einsum",
            vec![astr("equation", "bhqd,bhkd->bhqk")],
            17,
            vec![f32t(&[1, 2, 3, 4]), f32t(&[1, 2, 5, 4])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 240.0);
    }
}
