//! Linear algebra and attention pieces: MatMul (numpy broadcasting of batch dims, 1-D
//! promotion), Gemm (`transA`/`transB`), Einsum (the general subscript rule, ellipsis and
//! implicit output included), the fused `Attention` operator (opset 23: 4-D
//! `[B, heads, S, D]` and 3-D `[B, S, heads·D]` forms, grouped heads, a KV cache) and the
//! softmax family.
//!
//! Partition rules: a MatMul whose left operand is split on its rows (M) and whose right one is
//! replicated is local; a contraction over a split axis, or two split operands, gathers the
//! operand split on K or N. That is how self-attention is told apart from cross-attention
//! structurally: in Q·Kᵀ and P·V the keys and values come from the split image and get a
//! `DfcPatchAllGather`; in cross-attention they come from the replicated text and need
//! nothing. Softmax over a non-split axis is local.
//!
//! Einsum follows the split index through its equation: when every split operand's split
//! index survives in the output (the same index), the output is split there and replicated
//! operands carrying that index are taken per band; an operand whose split index is contracted
//! (the values of `b i j, b j d -> b i d`) or differs from the one kept (the keys of
//! `b i d, b j d -> b i j`: the output keeps the index that comes first) is gathered. Ellipsis
//! and repeated-index forms have no partition rule. `Attention` keeps the queries' token split
//! and gathers keys and values split on their token axis; it refuses a KV cache, causal
//! masking and the optional extra outputs on a split tensor.
//!
//! ONNX Runtime's `com.microsoft:MultiHeadAttention {num_heads, scale?, unidirectional?}` (in
//! [`ORT_OPS`]; its CPU provider runs it) takes `query` `[B, S, D]`, `key` `[B, L, D]` and
//! `value` `[B, L, Dv]` (or a packed KV `[B, L, N, 2, H]` as `key`, 4-D keys and values
//! `[B, N, L, H]`, or a packed QKV `[B, S, N, 3, H]` as `query`), an optional projection
//! `bias`, masks and a KV cache, and returns `[B, S, N·Hv]`. Its partition rule is
//! `Attention`'s on 3-D tensors: queries split on tokens stay split, keys and values split on
//! tokens are gathered, replicated ones (cross-attention) are read as they are; packed QKV,
//! 4-D keys, masks, a cache, the extra outputs and `unidirectional` are refused on a split
//! tensor.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};

use super::def::{Cost, OpDef, default_cost, gemm_tiles, matrix_output_tiles, numel};
use super::layout::{Layout, Need, PartCx, Verdict};
use super::{OpCx, broadcast, join_dims, same_as, tt};
use crate::ir::{DataType, Dim, TensorType};
use crate::tensor::Tensor;

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

/// MatMul: `2 · |Y| · K`, K the inner dimension (A's last).
fn cost_matmul(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
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

/// Gemm: `2 · M · N · K`, plus `M · N` for `C` when present.
fn cost_gemm(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
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

/// Einsum: every combination of the equation's distinct indices is one multiply-add (two
/// operations with two or more operands, one addition with one); with an ellipsis, one
/// operation per output element.
fn cost_einsum(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
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

/// Attention (fused, as a flash-attention kernel runs it): `Q·Kᵀ` and `P·V` as multiply-adds
/// (`2 · B · Hq · Sq · Skv · (D + Dv)`) and the softmax (5 operations per score: max,
/// subtract, exp, sum, divide); the scores never reach memory, so the bytes are Q, K, V, the
/// mask and the outputs.
fn cost_attention(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
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

/// Softmax and its kin: 5 operations per element (max, subtract, exp, sum, divide).
fn cost_softmax(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    c.flops = 5.0 * numel(cx.input(0)?)?;
    Ok(c)
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
    OpDef::infer("MatMul", matmul)
        .split(part_matmul)
        .cost(cost_matmul),
    OpDef::infer("Gemm", gemm).split(part_gemm).cost(cost_gemm),
    OpDef::fold("Einsum", einsum, eval_einsum)
        .split(part_einsum)
        .cost(cost_einsum),
    OpDef::infer("Attention", attention)
        .split(part_attention)
        .cost(cost_attention),
    OpDef::infer("Softmax", softmax)
        .split(part_softmax)
        .cost(cost_softmax),
    OpDef::infer("LogSoftmax", softmax)
        .split(part_softmax)
        .cost(cost_softmax),
    OpDef::infer("Hardmax", softmax)
        .split(part_softmax)
        .cost(cost_softmax),
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
        (None, None) => Verdict::local(vec![Layout::Replicated]),
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

fn part_einsum(cx: &PartCx<'_>) -> Result<Verdict> {
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
fn eval_einsum(cx: &OpCx<'_>) -> Result<Option<Vec<Tensor>>> {
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

/// Whether input `port` is given (connected, or typed in a detached context).
fn present(cx: &OpCx<'_>, port: usize) -> bool {
    cx.has_input(port) || cx.types.get(port).is_some_and(Option::is_some)
}

/// `a / b` on a dim; unknown unless both are known.
fn div_dim(a: &Dim, b: i64, what: &str) -> Result<Dim> {
    match a {
        Dim::Fixed(x) if b > 0 && x % b == 0 => Ok(Dim::Fixed(x / b)),
        Dim::Fixed(x) => bail!("{what}: {x} is not a multiple of {b}"),
        _ => Ok(Dim::Unknown),
    }
}

fn add_dims(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x.checked_add(*y).map_or(Dim::Unknown, Dim::Fixed),
        _ => Dim::Unknown,
    }
}

/// `Attention` (opset 23): `Y` `[B, Hq, Sq, Dv]` (4-D) or `[B, Sq, Hq·Dv]` (3-D, with
/// `q_num_heads` and `kv_num_heads`); `present_key`/`present_value` `[B, Hkv, Sp + Skv, ·]`;
/// `qk_matmul_output` `[B, Hq, Sq, Sp + Skv]`.
fn attention(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

fn part_attention(cx: &PartCx<'_>) -> Result<Verdict> {
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
struct AttentionSplit {
    /// The operator, as refusals name it.
    op: &'static str,
    /// The query axes other than batch and tokens, as refusals name them.
    other_axes: &'static str,
    /// The token axis of the queries, keys and values.
    tok: usize,
    /// The axis of input `port` (1, 2 or 3; of rank `rank`) that follows queries split on
    /// `axis`; `None` when the input is read whole.
    follows: fn(port: usize, axis: usize, rank: usize) -> Option<usize>,
    /// The refusal of input `port` whose extent on its following axis is neither 1 nor `full`.
    bad_extent: fn(port: usize, e: Option<i64>, full: i64) -> String,
}

/// The attention partition rule on queries `q`: keys and values split on their tokens are
/// gathered (every query reads every key); queries stay split on the batch or token axis, and
/// replicated operands that follow that axis are taken per band; replicated queries gather
/// every split operand.
fn split_attention(cx: &PartCx<'_>, q: &[i64], rule: &AttentionSplit) -> Result<Verdict> {
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
fn multi_head_attention(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
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

/// MultiHeadAttention: like [`cost_attention`], `Q·Kᵀ` and `P·V` as multiply-adds and the
/// softmax, the scores never in memory.
fn cost_multi_head_attention(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
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
fn part_multi_head_attention(cx: &PartCx<'_>) -> Result<Verdict> {
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

/// The attention operators of ONNX Runtime's domain ([`super::ORT_DOMAIN`]).
pub const ORT_OPS: &[OpDef] = &[OpDef::infer("MultiHeadAttention", multi_head_attention)
    .split(part_multi_head_attention)
    .cost(cost_multi_head_attention)];

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
}

#[cfg(test)]
mod multi_head_attention_tests {
    use super::super::testing::*;
    use crate::ir::TensorType;
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
        use super::super::def::cost_testing::cost;
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

#[cfg(test)]
mod cost_tests {
    use super::super::def::cost_testing::{cost, f32t};
    use super::super::testing::{ai, astr};

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
