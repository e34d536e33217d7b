//! onnxsim's Linear layer back into a MatMul on the tokens.
//!
//! Linear layers: onnxsim (and ONNX Runtime's `MatMul + Add → Gemm` fusion) turns a biased
//! Linear on tokens `x[B, N, …]` into `Reshape(x, [B·N, K]) → Gemm(A, W, bias) → Reshape(→
//! [B, N, M])`. The first Reshape merges the token axis, which `partition` splits, with the
//! batch, so the bands would interleave. The chain becomes `Reshape(x, [B, N, K]) → MatMul(·,
//! W) → Add(·, bias)` ([`match_gemm_linear`]): the same rows in the same order, so the same
//! numbers. It is rewritten only when it matches exactly: a Gemm with `transA = 0`,
//! `alpha = 1`, `beta = 1` (or no bias), a constant `W` and a constant bias that broadcasts
//! over the rows (`[M]`, `[1, M]`, `[1]` or a scalar), each link read only by the next and no
//! graph output, and a last Reshape that restores leading axes whose product is the Gemm's
//! row count. With `transB = 1` the MatMul reads `Transpose(W)`, a node over the
//! initializer (the weights are not read or duplicated; ONNX Runtime folds it when it loads the
//! rank graph).

use anyhow::{Result, bail};

use super::{dims_of, only_reader};
use crate::ir::{DataType, Graph, Node, NodeId, TensorType, ValueId, ValueType};
use crate::onnx::proto::AttributeProto;
use crate::ops::is_constant;
use crate::tensor::Tensor;

/// onnxsim's Linear on tokens: `Reshape(x) → Gemm → Reshape`, checked (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemmLinear {
    /// The Reshape of `x` to `[rows, k]` (kept, with a new target shape).
    pub reshape_in: NodeId,
    pub gemm: NodeId,
    /// The Reshape of the Gemm's `[rows, m]` result to `lead ++ [m]` (removed).
    pub reshape_out: NodeId,
    /// The weight, `[k, m]` (or `[m, k]` with `trans_b`).
    pub weight: ValueId,
    pub trans_b: bool,
    pub bias: Option<ValueId>,
    /// The leading axes the last Reshape restores.
    pub lead: Vec<i64>,
    pub k: i64,
    pub m: i64,
    pub elem: DataType,
    /// The value the chain produces (kept).
    pub out: ValueId,
}

/// Matches onnxsim's `Reshape → Gemm → Reshape` Linear around `gemm`, with every check the
/// rewrite needs (static shapes, attributes, constant weight and bias, sole readers); `None`
/// when anything differs.
pub fn match_gemm_linear(g: &Graph, gemm: NodeId) -> Option<GemmLinear> {
    let n = g.node(gemm);
    if n.op_type != "Gemm" || !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return None;
    }
    if n.attr_i("transA", 0) != 0 || n.attr_f("alpha", 1.0) != 1.0 {
        return None;
    }
    let trans_b = match n.attr_i("transB", 0) {
        0 => false,
        1 => true,
        _ => return None,
    };
    let (a, weight, bias) = (n.input(0)?, n.input(1)?, n.input(2));
    if bias.is_some() && n.attr_f("beta", 1.0) != 1.0 {
        return None;
    }
    if !is_constant(g, weight) || bias.is_some_and(|c| !is_constant(g, c)) {
        return None;
    }
    let (reshape_in, 0) = g.value(a).producer()? else {
        return None;
    };
    if !is_default_reshape(g, reshape_in) || only_reader(g, a) != Some((gemm, 0)) {
        return None;
    }
    let y = n.output(0)?;
    let (reshape_out, 0) = only_reader(g, y)? else {
        return None;
    };
    if !is_default_reshape(g, reshape_out) {
        return None;
    }
    let out = g.node(reshape_out).output(0)?;
    let [rows, k] = <[i64; 2]>::try_from(dims_of(g, Some(a))?).ok()?;
    let [rows_y, m] = <[i64; 2]>::try_from(dims_of(g, Some(y))?).ok()?;
    let od = dims_of(g, Some(out))?;
    let (&last, lead) = od.split_last()?;
    if rows != rows_y || last != m || lead.is_empty() || lead.iter().product::<i64>() != rows {
        return None;
    }
    if [rows, k, m].iter().chain(lead).any(|&d| d <= 0) {
        return None;
    }
    let w = dims_of(g, Some(weight))?;
    if w != if trans_b { [m, k] } else { [k, m] } {
        return None;
    }
    if let Some(c) = bias {
        let cd = dims_of(g, Some(c))?;
        let rowless = matches!(cd.as_slice(), [] | [1]) || cd == [m] || cd == [1, m];
        if !rowless {
            return None;
        }
    }
    let elem = g.value(y).tensor_type()?.elem;
    if g.value(out).tensor_type()?.elem != elem {
        return None;
    }
    Some(GemmLinear {
        reshape_in,
        gemm,
        reshape_out,
        weight,
        trans_b,
        bias,
        lead: lead.to_vec(),
        k,
        m,
        elem,
        out,
    })
}

fn is_default_reshape(g: &Graph, id: NodeId) -> bool {
    let n = g.node(id);
    n.op_type == "Reshape" && (n.domain.is_empty() || n.domain == "ai.onnx")
}

fn set_type(g: &mut Graph, v: ValueId, elem: DataType, dims: &[i64]) {
    g.value_mut(v).ty = Some(ValueType::Tensor(TensorType::fixed(elem, dims)));
}

/// `Reshape(x, lead ++ [k]) → MatMul(·, W or Transpose(W)) → Add(·, bias)`, producing the
/// chain's value; the MatMul takes the Gemm's name, place and output value.
pub(super) fn rewrite_gemm_linear(g: &mut Graph, m: GemmLinear) -> Result<()> {
    let gemm = g.node(m.gemm);
    let (name, order) = (gemm.name.clone(), gemm.order);
    let Some(y) = gemm.output(0) else {
        bail!("Gemm `{name}` lost its output");
    };
    let reshape_name = g.node(m.reshape_in).name.clone();
    let Some(a) = g.node(m.reshape_in).output(0) else {
        bail!("Reshape `{reshape_name}` lost its output");
    };
    // The first Reshape keeps the leading axes instead of merging them into rows.
    let tokens: Vec<i64> = m.lead.iter().copied().chain([m.k]).collect();
    let spec = g.add_constant(
        &format!("{reshape_name}.shape"),
        Tensor::from_i64s(&tokens).to_proto(""),
    );
    g.set_input(m.reshape_in, 1, Some(spec));
    set_type(g, a, m.elem, &tokens);
    let weight = if m.trans_b {
        let wname = g.value(m.weight).name.clone();
        let wt = g.add_value(&format!("{wname}.T"), None);
        set_type(g, wt, m.elem, &[m.k, m.m]);
        let mut t = Node::new(format!("{name}.transpose_b"), "Transpose", "");
        t.attrs = vec![AttributeProto::ints("perm", &[1, 0])];
        g.add_node(t, vec![Some(m.weight)], vec![Some(wt)], Some(m.reshape_in))?;
        wt
    } else {
        m.weight
    };
    g.remove_node(m.reshape_out);
    g.remove_node(m.gemm);
    let rows_out: Vec<i64> = m.lead.iter().copied().chain([m.m]).collect();
    let product = if m.bias.is_some() { y } else { m.out };
    set_type(g, product, m.elem, &rows_out);
    let id = g.add_node(
        Node::new(name.clone(), "MatMul", ""),
        vec![Some(a), Some(weight)],
        vec![Some(product)],
        None,
    )?;
    g.node_mut(id).order = order;
    if let Some(bias) = m.bias {
        g.add_node(
            Node::new(format!("{name}.bias"), "Add", ""),
            vec![Some(y), Some(bias)],
            vec![Some(m.out)],
            Some(id),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};

    use super::super::testing::{f32s, run};
    use crate::ir::{DataType, Graph};
    use crate::onnx::ExternalStore;
    use crate::onnx::proto::AttributeProto;
    use crate::ops::load_constant;
    use crate::passes::test_graphs::{model, node, vi};
    use crate::tensor::Tensor;

    /// onnxsim's Linear on x[2,8,2,4] (batch, tokens, heads, head dim): `Reshape [16,8] →
    /// Gemm(W, c) → Reshape [2,8,6]`, with `gemm_attrs` and a bias of shape `bias`.
    fn gemm_linear(gemm_attrs: Vec<AttributeProto>, trans_b: bool, bias: &[usize]) -> Graph {
        let f = DataType::FLOAT;
        let w: &[usize] = if trans_b { &[6, 8] } else { &[8, 6] };
        let mut attrs = gemm_attrs;
        attrs.push(AttributeProto::int("transB", i64::from(trans_b)));
        model(
            vec![
                node("Reshape", "lin/r1", &["x", "rows"], &["a"]),
                node("Gemm", "lin/gemm", &["a", "w", "c"], &["g"]).with_attrs(attrs),
                node("Reshape", "lin/r2", &["g", "back"], &["y"]),
            ],
            vec![vi("x", f, &["2", "8", "2", "4"])],
            vec![vi("y", f, &["2", "8", "6"])],
            vec![
                Tensor::from_i64s(&[-1, 8]).to_proto("rows"),
                Tensor::from_i64s(&[2, 8, 6]).to_proto("back"),
                f32s(w, 0.5).to_proto("w"),
                f32s(bias, 0.25).to_proto("c"),
            ],
            17,
        )
    }

    #[test]
    fn onnxsim_linear_becomes_matmul_and_add() -> Result<()> {
        let mut g = gemm_linear(vec![AttributeProto::float("alpha", 1.0)], false, &[6]);
        run(&mut g)?;
        let dump = g.dump();
        assert_eq!(g.node_count(), 3, "{dump}");
        for want in [
            "lin/r1 = Reshape(%0, %",
            "lin/gemm = MatMul(",
            "lin/gemm.bias = Add(",
            ": f32[2,8,8]",
            ": f32[2,8,6]",
        ] {
            assert!(dump.contains(want), "{want} missing:\n{dump}");
        }
        assert!(
            !dump.contains("Gemm") && !dump.contains("f32[16,"),
            "{dump}"
        );
        // The chain's value keeps its name; the Reshape reads the token shape [2, 8, 8].
        assert_eq!(g.value(g.outputs[0]).name, "y");
        let spec = g.value_by_name("lin/r1.shape").context("new shape")?;
        let spec = load_constant(&g, &ExternalStore::new(std::env::temp_dir()), spec, 16)?;
        assert_eq!(spec.context("constant")?.to_i64s()?, vec![2, 8, 8]);
        Ok(())
    }

    #[test]
    fn transposed_weights_are_read_through_a_transpose_node() -> Result<()> {
        let mut g = gemm_linear(vec![], true, &[1, 6]);
        run(&mut g)?;
        let dump = g.dump();
        assert_eq!(g.node_count(), 4, "{dump}");
        assert!(
            dump.contains("lin/gemm.transpose_b = Transpose(%3) {perm=[1,0]}"),
            "{dump}"
        );
        // The initializer is read, not copied: `w` is still [6, 8], its transpose a node output.
        assert!(dump.contains("init   %3 w: f32[6,8]"), "{dump}");
        let wt = g.value_by_name("w.T").context("value w.T")?;
        assert!(g.value(wt).init.is_none() && g.value(wt).producer().is_some());
        Ok(())
    }

    #[test]
    fn gemm_chains_that_differ_are_left_alone() -> Result<()> {
        // A scaled product, a bias per row, and a Gemm output read twice.
        let mut scaled = gemm_linear(vec![AttributeProto::float("alpha", 0.5)], false, &[6]);
        let mut per_row = gemm_linear(vec![], false, &[16, 6]);
        let mut read_twice = gemm_linear(vec![], false, &[6]);
        let g_out = read_twice.value_by_name("g").context("value g")?;
        read_twice.outputs.push(g_out);
        for g in [&mut scaled, &mut per_row, &mut read_twice] {
            run(g)?;
            assert!(g.dump().contains("= Gemm("), "{}", g.dump());
        }
        Ok(())
    }
}
