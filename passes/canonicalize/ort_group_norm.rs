//! ONNX Runtime's `com.microsoft:GroupNorm` and `SkipGroupNorm` (its transformer optimizer's
//! fusions, which its CPU provider has no kernel for) become the internal GroupNorm on NCHW.
//! A channels-last input is read through the `Transpose` to NHWC that produced it, or through
//! a new `Transpose` to NCHW; SkipGroupNorm's sum `X + skip (+ bias)` becomes `Add`s first (a
//! `[N, C]` skip and the bias reshaped to broadcast over NCHW), and is its second output when
//! the node has one; gamma and beta are cast to the input's type when they differ;
//! `activation = 1` appends `x·sigmoid(x)` (`Sigmoid`, `Mul`). Each result goes back to NHWC
//! through a `Transpose`, except for readers that transposed it to NCHW themselves: they read
//! the NCHW value, and their Transposes go.

use anyhow::{Result, bail};

use super::dims_of;
use crate::ir::{DataType, Graph, Node, NodeId, TensorType, ValueId, ValueType};
use crate::onnx::proto::AttributeProto;
use crate::ops::ORT_DOMAIN;
use crate::ops::norm::INTERNAL_DOMAIN;
use crate::tensor::Tensor;

/// The nodes that replace one source node: the first takes the source node's place in the
/// order, the others sort right after it.
struct Chain {
    name: String,
    order: (u32, u32),
    first: Option<NodeId>,
}

/// Where a [`Chain`] node's output goes.
enum Out {
    /// A fresh value of this type.
    Fresh(TensorType),
    /// An existing value whose producer was removed (it keeps its name and type).
    Into(ValueId),
}

impl Chain {
    /// Adds `op(inputs) {attrs}`, named after the source node (`{name}.{suffix}`, or the source
    /// node's own name for an empty suffix); returns its output.
    fn op(
        &mut self,
        g: &mut Graph,
        suffix: &str,
        (op, domain): (&str, &str),
        inputs: &[ValueId],
        attrs: Vec<AttributeProto>,
        out: Out,
    ) -> Result<ValueId> {
        let name = if suffix.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{suffix}", self.name)
        };
        let out = match out {
            Out::Into(v) => v,
            Out::Fresh(t) => g.add_value(&name, Some(ValueType::Tensor(t))),
        };
        let mut node = Node::new(name, op, domain);
        node.attrs = attrs;
        let inputs = inputs.iter().map(|&v| Some(v)).collect();
        let id = g.add_node(node, inputs, vec![Some(out)], self.first)?;
        if self.first.is_none() {
            g.node_mut(id).order = self.order;
            self.first = Some(id);
        }
        Ok(out)
    }
}

/// NHWC → NCHW.
const TO_NCHW: [i64; 4] = [0, 3, 1, 2];
/// NCHW → NHWC.
const TO_NHWC: [i64; 4] = [0, 2, 3, 1];

/// Whether `id` is a default-domain Transpose by `perm`.
fn is_transpose(g: &Graph, id: NodeId, perm: &[i64]) -> bool {
    let n = g.node(id);
    n.op_type == "Transpose"
        && (n.domain.is_empty() || n.domain == "ai.onnx")
        && n.attr_ints("perm") == Some(perm)
}

/// `v` (channels last, `nchw` its dims channels first) in channels-first order: the input of
/// the `Transpose` to NHWC that produced it, or a new `Transpose` to NCHW.
fn to_nchw(
    g: &mut Graph,
    chain: &mut Chain,
    v: ValueId,
    what: &str,
    nchw: TensorType,
) -> Result<ValueId> {
    if let Some((p, 0)) = g.value(v).producer()
        && is_transpose(g, p, &TO_NHWC)
        && let Some(src) = g.node(p).input(0)
    {
        return Ok(src);
    }
    chain.op(
        g,
        &format!("{what}_to_nchw"),
        ("Transpose", ""),
        &[v],
        vec![AttributeProto::ints("perm", &TO_NCHW)],
        Out::Fresh(nchw),
    )
}

/// Makes the channels-last value `out` (whose producer was removed) hold the channels-first
/// `v`: readers that transpose `out` back to NCHW read `v` instead (their Transposes are
/// removed, unless they produce a graph output), and a `Transpose` to NHWC produces `out` when
/// anything else still reads it.
fn from_nchw(g: &mut Graph, chain: &mut Chain, v: ValueId, out: ValueId, what: &str) -> Result<()> {
    for (reader, _) in g.value(out).uses().to_vec() {
        if !is_transpose(g, reader, &TO_NCHW) {
            continue;
        }
        let Some(t) = g.node(reader).output(0) else {
            continue;
        };
        if g.outputs.contains(&t) {
            continue;
        }
        g.replace_all_uses(t, v);
        g.remove_node(reader);
    }
    if !g.value(out).uses().is_empty() || g.outputs.contains(&out) {
        chain.op(
            g,
            &format!("{what}_to_nhwc"),
            ("Transpose", ""),
            &[v],
            vec![AttributeProto::ints("perm", &TO_NHWC)],
            Out::Into(out),
        )?;
    }
    Ok(())
}

/// `v` reshaped to `dims` (a constant shape), for operands that must broadcast over NCHW.
fn reshaped(
    g: &mut Graph,
    chain: &mut Chain,
    v: ValueId,
    what: &str,
    elem: DataType,
    dims: &[i64],
) -> Result<ValueId> {
    let name = format!("{}.{what}_shape", chain.name);
    let spec = g.add_constant(&name, Tensor::from_i64s(dims).to_proto(""));
    chain.op(
        g,
        &format!("{what}_reshape"),
        ("Reshape", ""),
        &[v, spec],
        vec![],
        Out::Fresh(TensorType::fixed(elem, dims)),
    )
}

/// Rewrites ONNX Runtime's `GroupNorm` or `SkipGroupNorm` `id` into the internal GroupNorm on
/// NCHW (see the module documentation). Fails on a form ONNX Runtime itself would reject
/// (a non-4-D or non-static input, attributes out of range), since the node has no kernel on
/// the CPU and must not reach a rank graph.
pub(super) fn rewrite_ort_group_norm(g: &mut Graph, id: NodeId) -> Result<()> {
    let n = g.node(id).clone();
    let what = format!("{ORT_DOMAIN}:{} `{}`", n.op_type, n.name);
    let skip_op = n.op_type == "SkipGroupNorm";
    let (Some(x), Some(gamma), Some(beta)) = (n.input(0), n.input(1), n.input(2)) else {
        bail!("{what}: inputs X, gamma and beta are required");
    };
    let Some(xt) = g.value(x).tensor_type().cloned() else {
        bail!("{what}: input has no type");
    };
    let Some(xd) = xt.static_dims().filter(|d| d.len() == 4) else {
        bail!("{what}: input {xt} is not a static 4-D tensor");
    };
    let channels_last = match n.attr_i("channels_last", 1) {
        0 => false,
        1 => true,
        v => bail!("{what}: `channels_last` must be 0 or 1, not {v}"),
    };
    let silu = match n.attr_i("activation", 0) {
        0 => false,
        1 => true,
        v => bail!("{what}: `activation` must be 0 (none) or 1 (SiLU), not {v}"),
    };
    let nchw = if channels_last {
        [xd[0], xd[3], xd[1], xd[2]]
    } else {
        [xd[0], xd[1], xd[2], xd[3]]
    };
    let (batch, c) = (nchw[0], nchw[1]);
    let groups = n.attr_i("groups", 0);
    if groups <= 0 || c % groups != 0 {
        bail!("{what}: {c} channels do not divide into {groups} groups");
    }
    let elem = xt.elem;
    let t_nchw = TensorType::fixed(elem, &nchw);
    let (y, sum) = (n.output(0), n.output(1).filter(|_| skip_op));
    let (skip, bias) = if skip_op {
        let Some(skip) = n.input(3) else {
            bail!("{what}: input skip is required");
        };
        (Some(skip), n.input(4))
    } else {
        (None, None)
    };
    g.remove_node(id);
    let mut chain = Chain {
        name: n.name.clone(),
        order: n.order,
        first: None,
    };
    let mut normalized = if channels_last {
        to_nchw(g, &mut chain, x, "x", t_nchw.clone())?
    } else {
        x
    };
    if let Some(skip) = skip {
        let sd = dims_of(g, Some(skip)).unwrap_or_default();
        let skip = if sd.len() == 2 {
            reshaped(g, &mut chain, skip, "skip", elem, &[batch, c, 1, 1])?
        } else {
            let pixel = sd.len() == 4 && sd[1..].iter().product::<i64>() == c;
            let pixel_dims = [batch, c, 1, 1];
            let skip_nchw = TensorType::fixed(elem, if pixel { &pixel_dims } else { &nchw });
            if channels_last {
                to_nchw(g, &mut chain, skip, "skip", skip_nchw)?
            } else {
                skip
            }
        };
        let sum_into = |last: bool| match (last && !channels_last, sum) {
            (true, Some(s)) => Out::Into(s),
            _ => Out::Fresh(t_nchw.clone()),
        };
        normalized = chain.op(
            g,
            "skip_add",
            ("Add", ""),
            &[normalized, skip],
            vec![],
            sum_into(bias.is_none()),
        )?;
        if let Some(bias) = bias {
            let bias = reshaped(g, &mut chain, bias, "bias", elem, &[c, 1, 1])?;
            normalized = chain.op(
                g,
                "bias_add",
                ("Add", ""),
                &[normalized, bias],
                vec![],
                sum_into(true),
            )?;
        }
        if let (Some(s), true) = (sum, channels_last) {
            from_nchw(g, &mut chain, normalized, s, "sum")?;
        }
    }
    // The internal GroupNorm reads scale and bias of the input's element type.
    let mut affine = Vec::new();
    for (v, what) in [(gamma, "gamma"), (beta, "beta")] {
        let pt = g.value(v).tensor_type().map(|t| t.elem);
        affine.push(if pt == Some(elem) {
            v
        } else {
            chain.op(
                g,
                &format!("{what}_cast"),
                ("Cast", ""),
                &[v],
                vec![AttributeProto::int("to", i64::from(elem.0))],
                Out::Fresh(TensorType::fixed(elem, &[c])),
            )?
        });
    }
    let y_into = |last: bool| match (last && !channels_last, y) {
        (true, Some(y)) => Out::Into(y),
        _ => Out::Fresh(t_nchw.clone()),
    };
    let mut out = chain.op(
        g,
        "",
        ("GroupNorm", INTERNAL_DOMAIN),
        &[normalized, affine[0], affine[1]],
        vec![
            AttributeProto::int("num_groups", groups),
            AttributeProto::float("epsilon", n.attr_f("epsilon", 1e-5)),
        ],
        y_into(!silu),
    )?;
    if silu {
        let sig = chain.op(
            g,
            "silu_sigmoid",
            ("Sigmoid", ""),
            &[out],
            vec![],
            Out::Fresh(t_nchw.clone()),
        )?;
        out = chain.op(g, "silu", ("Mul", ""), &[out, sig], vec![], y_into(true))?;
    }
    if let (Some(y), true) = (y, channels_last) {
        from_nchw(g, &mut chain, out, y, "y")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};

    use super::super::Canonicalize;
    use super::super::testing::{f32s, run};
    use crate::ir::{DataType, Graph};
    use crate::onnx::ExternalStore;
    use crate::onnx::proto::AttributeProto;
    use crate::ops::ORT_DOMAIN;
    use crate::passes::test_graphs::{model, node, vi};
    use crate::passes::{Pass, PassContext};

    /// An ONNX Runtime group norm node of `op` (domain com.microsoft) with 4 groups.
    fn ort_node(
        op: &str,
        name: &str,
        ins: &[&str],
        outs: &[&str],
        activation: i64,
    ) -> crate::onnx::proto::NodeProto {
        node(op, name, ins, outs)
            .with_domain(ORT_DOMAIN)
            .with_attrs([
                AttributeProto::int("groups", 4),
                AttributeProto::float("epsilon", 1e-6),
                AttributeProto::int("activation", activation),
            ])
    }

    fn ops_of(g: &Graph) -> Vec<String> {
        let mut v: Vec<String> = g
            .topo_order()
            .expect("acyclic")
            .into_iter()
            .map(|id| g.node(id).op_type.clone())
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn ort_group_norm_between_its_transposes_becomes_the_internal_one() -> Result<()> {
        // What ONNX Runtime's optimizer writes: NCHW → NHWC, GroupNorm with SiLU, NHWC → NCHW.
        let f = DataType::FLOAT;
        let mut g = model(
            vec![
                node("Transpose", "to_nhwc", &["x"], &["h"])
                    .with_attrs([AttributeProto::ints("perm", &[0, 2, 3, 1])]),
                ort_node("GroupNorm", "gn", &["h", "gamma", "beta"], &["n"], 1),
                node("Transpose", "to_nchw", &["n"], &["t"])
                    .with_attrs([AttributeProto::ints("perm", &[0, 3, 1, 2])]),
                node("Relu", "relu", &["t"], &["y"]),
            ],
            vec![vi("x", f, &["2", "8", "4", "4"])],
            vec![vi("y", f, &["2", "8", "4", "4"])],
            vec![
                f32s(&[8], 1.5).to_proto("gamma"),
                f32s(&[8], 0.25).to_proto("beta"),
            ],
            17,
        );
        run(&mut g)?;
        let dump = g.dump();
        // The Transposes cancel: the group norm reads x, Relu reads the SiLU.
        assert_eq!(
            ops_of(&g),
            ["GroupNorm", "Sigmoid", "Mul", "Relu"],
            "{dump}"
        );
        for want in [
            "gn = dfc.internal:GroupNorm(%0, %1, %2) {num_groups=4, epsilon=0.000001} -> ",
            "gn.silu_sigmoid = Sigmoid(",
            "gn.silu = Mul(",
            ": f32[2,8,4,4]",
        ] {
            assert!(dump.contains(want), "{want} missing:\n{dump}");
        }
        assert!(!dump.contains("f32[2,4,4,8]"), "{dump}");
        Ok(())
    }

    #[test]
    fn skip_group_norm_sums_first_and_returns_the_sum() -> Result<()> {
        // NHWC input straight from the graph, a [N, C] skip, a bias, the sum read in NHWC and
        // in NCHW, the output a graph output in NHWC.
        let f = DataType::FLOAT;
        let mut g = model(
            vec![
                ort_node(
                    "SkipGroupNorm",
                    "sgn",
                    &["x", "gamma", "beta", "skip", "bias"],
                    &["y", "s"],
                    0,
                ),
                node("Relu", "relu_nhwc", &["s"], &["r"]),
                node("Transpose", "sum_to_nchw", &["s"], &["t"])
                    .with_attrs([AttributeProto::ints("perm", &[0, 3, 1, 2])]),
                node("Relu", "relu_nchw", &["t"], &["u"]),
            ],
            vec![
                vi("x", f, &["2", "4", "4", "8"]),
                vi("skip", f, &["2", "8"]),
            ],
            vec![
                vi("y", f, &["2", "4", "4", "8"]),
                vi("r", f, &["2", "4", "4", "8"]),
                vi("u", f, &["2", "8", "4", "4"]),
            ],
            vec![
                f32s(&[8], 1.5).to_proto("gamma"),
                f32s(&[8], 0.25).to_proto("beta"),
                f32s(&[8], 0.5).to_proto("bias"),
            ],
            17,
        );
        run(&mut g)?;
        let dump = g.dump();
        for want in [
            "sgn.x_to_nchw = Transpose(%0) {perm=[0,3,1,2]} -> %",
            "sgn.skip_reshape = Reshape(%1, %",
            ": f32[2,8,1,1]",
            "sgn.skip_add = Add(",
            "sgn.bias_reshape = Reshape(%4, %",
            ": f32[8,1,1]",
            "sgn.bias_add = Add(",
            "sgn.sum_to_nhwc = Transpose(",
            "sgn = dfc.internal:GroupNorm(",
            "sgn.y_to_nhwc = Transpose(",
        ] {
            assert!(dump.contains(want), "{want} missing:\n{dump}");
        }
        // The NCHW reader of the sum reads the Add; its Transpose is gone.
        assert!(!dump.contains("sum_to_nchw"), "{dump}");
        let bias_add = g.value_by_name("sgn.bias_add").context("the sum")?;
        let (relu, _) = g
            .value(g.value_by_name("u").context("u")?)
            .producer()
            .context("relu")?;
        assert_eq!(g.node(relu).input(0), Some(bias_add));
        // The values the node produced keep their names: the graph still returns y and r.
        assert_eq!(g.value(g.outputs[0]).name, "y");
        assert!(g.value_by_name("s").is_some(), "{dump}");
        Ok(())
    }

    #[test]
    fn channels_first_group_norm_casts_its_parameters_and_writes_its_outputs() -> Result<()> {
        let h = DataType::FLOAT16;
        let gn = ort_node("GroupNorm", "gn", &["x", "gamma", "beta"], &["y"], 1)
            .with_attrs([AttributeProto::int("channels_last", 0)]);
        let mut g = model(
            vec![gn],
            vec![vi("x", h, &["1", "8", "2", "2"])],
            vec![vi("y", h, &["1", "8", "2", "2"])],
            vec![
                f32s(&[8], 1.0).to_proto("gamma"),
                f32s(&[8], 0.0).to_proto("beta"),
            ],
            17,
        );
        run(&mut g)?;
        let dump = g.dump();
        assert_eq!(
            ops_of(&g),
            ["Cast", "GroupNorm", "Sigmoid", "Mul"],
            "{dump}"
        );
        assert!(
            dump.contains("gn.gamma_cast = Cast(%1) {to=10} -> ")
                && dump.contains("gn.silu = Mul(")
                && !dump.contains("Transpose"),
            "{dump}"
        );
        assert_eq!(g.value(g.outputs[0]).name, "y");
        Ok(())
    }

    #[test]
    fn ort_group_norms_ort_cannot_run_are_refused() {
        let f = DataType::FLOAT;
        let mut g = model(
            vec![ort_node(
                "GroupNorm",
                "gn",
                &["x", "gamma", "beta"],
                &["y"],
                2,
            )],
            vec![vi("x", f, &["1", "2", "2", "8"])],
            vec![vi("y", f, &["1", "2", "2", "8"])],
            vec![
                f32s(&[8], 1.0).to_proto("gamma"),
                f32s(&[8], 0.0).to_proto("beta"),
            ],
            17,
        );
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        let e = Canonicalize.run(&mut g, &mut cx).expect_err("refused");
        assert!(e.to_string().contains("`activation` must be 0"), "{e}");
    }
}
