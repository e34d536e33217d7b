//! The ONNX group norms, each made the internal GroupNorm:
//!
//! - torch's export pattern `Reshape(x, [B,G,-1]) → InstanceNormalization(scale = ones,
//!   bias = zeros) → Reshape(back to x's shape) → Mul(γ[C,1,…]) → Add(β[C,1,…])` (the affine
//!   tail is absorbed when present and read only by the chain; the scale and bias of the
//!   InstanceNormalization are checked to be exactly ones and zeros);
//! - `GroupNormalization` (opset 21: per-channel scale and bias; opsets 18–20: per-group, made
//!   per-channel at compile time from the constants);
//! - `InstanceNormalization` on a 4-D tensor (GroupNorm with one channel per group).
//!
//! The torch chain is found by [`match_torch_group_norm`], which looks at structure only and so
//! also serves tools that count constructs on graphs without static shapes; `canonicalize` then
//! checks shapes and constants before rewriting.

use anyhow::{Result, bail};

use super::{dims_of, only_reader};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::onnx::ExternalStore;
use crate::onnx::proto::AttributeProto;
use crate::ops::norm::INTERNAL_DOMAIN;
use crate::ops::{MAX_FOLD_ELEMENTS, load_constant};

/// Turns a GroupNormalization or InstanceNormalization node into the internal GroupNorm in
/// place (same name, inputs and output).
pub(super) fn retarget(g: &mut Graph, id: NodeId, groups: i64) {
    let n = g.node_mut(id);
    let eps = n.attr_f("epsilon", 1e-5);
    n.op_type = "GroupNorm".into();
    n.domain = INTERNAL_DOMAIN.into();
    n.attrs = vec![
        AttributeProto::int("num_groups", groups),
        AttributeProto::float("epsilon", eps),
    ];
}

/// Opsets 18–20: scale and bias are per group; repeat each entry for the group's channels.
pub(super) fn per_group_to_per_channel(
    g: &mut Graph,
    store: &ExternalStore,
    id: NodeId,
    groups: i64,
) -> Result<()> {
    let name = g.node(id).name.clone();
    let Some(c) = dims_of(g, g.node(id).input(0)).map(|d| d[1]) else {
        bail!("GroupNormalization `{name}`: input shape is not static");
    };
    if groups <= 0 || c % groups != 0 {
        bail!("GroupNormalization `{name}`: {c} channels do not divide into {groups} groups");
    }
    for port in [1, 2] {
        let Some(v) = g.node(id).input(port) else {
            continue;
        };
        let Some(t) = load_constant(g, store, v, MAX_FOLD_ELEMENTS)? else {
            bail!(
                "GroupNormalization `{name}` (opset < 21): its per-group scale and bias must be constants"
            );
        };
        let per = (c / groups) as usize;
        let picks: Vec<usize> = (0..c as usize).map(|i| i / per).collect();
        let repeated = t.select(&[picks])?;
        let what = if port == 1 { "scale" } else { "bias" };
        let nv = g.add_constant(&format!("{name}.{what}"), repeated.to_proto(""));
        g.set_input(id, port, Some(nv));
    }
    Ok(())
}

/// A matched torch GroupNorm chain.
pub(super) struct PatternMatch {
    x: ValueId,
    groups: i64,
    eps: f32,
    gamma: Option<ValueId>,
    beta: Option<ValueId>,
    /// The chain's nodes, the InstanceNormalization second.
    nodes: Vec<NodeId>,
    /// The value the chain produces (kept).
    out: ValueId,
}

fn all_equal(g: &Graph, store: &ExternalStore, v: ValueId, want: f64) -> Result<bool> {
    Ok(match load_constant(g, store, v, 1 << 16)? {
        Some(t) => t.to_f64s().iter().all(|&x| x == want),
        None => false,
    })
}

/// Whether `v` holds one value per channel laid out to broadcast over `[B,C,spatial…]`:
/// shape `[C,1,…]` (rank of x − 1) or `[1,C,1,…]`.
fn per_channel(g: &Graph, v: ValueId, c: i64, rank: usize) -> bool {
    let Some(d) = dims_of(g, Some(v)) else {
        return false;
    };
    let ok = |d: &[i64]| d.first() == Some(&c) && d[1..].iter().all(|&x| x == 1);
    (d.len() == rank - 1 && ok(&d)) || (d.len() == rank && d[0] == 1 && ok(&d[1..]))
}

/// One link of the affine tail of [`TorchGroupNorm`]: a two-input node applying `operand` to
/// the chain's value and producing `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineLink {
    pub node: NodeId,
    pub operand: ValueId,
    pub out: ValueId,
}

/// torch's GroupNorm export around one InstanceNormalization, matched by structure alone:
/// `Reshape(x) → InstanceNormalization → Reshape`, then optionally `Mul` and, after the `Mul`,
/// `Add`. Each value along the chain is read by the next link only and is no graph output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorchGroupNorm {
    /// The Reshape to `[B, G, -1]`.
    pub reshape_in: NodeId,
    /// The value the chain normalizes (the first Reshape's data input).
    pub x: ValueId,
    pub inorm: NodeId,
    /// The Reshape back to the shape of `x`.
    pub reshape_out: NodeId,
    /// The value `reshape_out` produces.
    pub reshaped: ValueId,
    /// The Mul by γ, when the chain has one.
    pub mul: Option<AffineLink>,
    /// The Add of β after the Mul, when the chain has one.
    pub add: Option<AffineLink>,
}

/// Matches torch's GroupNorm chain around `inorm` by structure only: op types, ports and sole
/// readers, without looking at shapes or constants, so it works on graphs without static
/// shapes. `None` when `inorm` is no InstanceNormalization or the chain does not match.
/// [`super::Canonicalize`] rewrites a match only after checking shapes and constants as well.
pub fn match_torch_group_norm(g: &Graph, inorm: NodeId) -> Option<TorchGroupNorm> {
    let n = g.node(inorm);
    if n.op_type != "InstanceNormalization" {
        return None;
    }
    let (r1_out, in_out) = (n.input(0)?, n.output(0)?);
    let (reshape_in, 0) = g.value(r1_out).producer()? else {
        return None;
    };
    if g.node(reshape_in).op_type != "Reshape" || only_reader(g, r1_out) != Some((inorm, 0)) {
        return None;
    }
    let x = g.node(reshape_in).input(0)?;
    let (reshape_out, 0) = only_reader(g, in_out)? else {
        return None;
    };
    if g.node(reshape_out).op_type != "Reshape" {
        return None;
    }
    let reshaped = g.node(reshape_out).output(0)?;
    let link = |v: ValueId, op: &str| -> Option<AffineLink> {
        let (node, port) = only_reader(g, v)?;
        let nd = g.node(node);
        if nd.op_type != op || nd.inputs().len() != 2 {
            return None;
        }
        Some(AffineLink {
            node,
            operand: nd.input(1 - port)?,
            out: nd.output(0)?,
        })
    };
    let mul = link(reshaped, "Mul");
    let add = mul.and_then(|m| link(m.out, "Add"));
    Some(TorchGroupNorm {
        reshape_in,
        x,
        inorm,
        reshape_out,
        reshaped,
        mul,
        add,
    })
}

/// [`match_torch_group_norm`] with the checks the rewrite needs: static shapes that make the
/// Reshapes a grouping and its inverse, an InstanceNormalization scale of ones and bias of
/// zeros, and per-channel γ and β (a tail link that fails its checks ends the chain before it).
pub(super) fn match_torch_pattern(
    g: &Graph,
    store: &ExternalStore,
    inorm: NodeId,
) -> Result<Option<PatternMatch>> {
    let Some(chain) = match_torch_group_norm(g, inorm) else {
        return Ok(None);
    };
    let n = g.node(inorm);
    let (Some(r1_out), Some(scale), Some(bias)) = (n.input(0), n.input(1), n.input(2)) else {
        return Ok(None);
    };
    let x = chain.x;
    let (Some(xd), Some(rd)) = (dims_of(g, Some(x)), dims_of(g, Some(r1_out))) else {
        return Ok(None);
    };
    if xd.len() < 3 || rd.len() != 3 || rd[0] != xd[0] {
        return Ok(None);
    }
    let (c, groups) = (xd[1], rd[1]);
    if groups <= 0 || c % groups != 0 || rd[2] * groups != xd[1..].iter().product::<i64>() {
        return Ok(None);
    }
    if !all_equal(g, store, scale, 1.0)? || !all_equal(g, store, bias, 0.0)? {
        return Ok(None);
    }
    if dims_of(g, Some(chain.reshaped)).as_deref() != Some(&xd) {
        return Ok(None);
    }
    let mut m = PatternMatch {
        x,
        groups,
        eps: n.attr_f("epsilon", 1e-5),
        gamma: None,
        beta: None,
        nodes: vec![chain.reshape_in, inorm, chain.reshape_out],
        out: chain.reshaped,
    };
    // The affine tail: γ and β per channel, each link keeping the shape of x.
    let affine = |link: Option<AffineLink>| {
        link.filter(|l| {
            per_channel(g, l.operand, c, xd.len())
                && dims_of(g, Some(l.out)).as_deref() == Some(&xd)
        })
    };
    if let Some(mul) = affine(chain.mul) {
        m.nodes.push(mul.node);
        m.gamma = Some(mul.operand);
        m.out = mul.out;
        if let Some(add) = affine(chain.add) {
            m.nodes.push(add.node);
            m.beta = Some(add.operand);
            m.out = add.out;
        }
    }
    Ok(Some(m))
}

pub(super) fn rewrite_pattern(g: &mut Graph, m: PatternMatch) -> Result<()> {
    let inorm = m.nodes[1];
    let name = g.node(inorm).name.clone();
    let order = g.node(inorm).order;
    for &n in m.nodes.iter().rev() {
        g.remove_node(n);
    }
    let mut node = Node::new(name, "GroupNorm", INTERNAL_DOMAIN);
    node.attrs = vec![
        AttributeProto::int("num_groups", m.groups),
        AttributeProto::float("epsilon", m.eps),
    ];
    let id = g.add_node(
        node,
        vec![Some(m.x), m.gamma, m.beta],
        vec![Some(m.out)],
        None,
    )?;
    // Sort where the chain was.
    g.node_mut(id).order = order;
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};

    use super::super::testing::{f32s, run};
    use super::match_torch_group_norm;
    use crate::ir::{DataType, Graph};
    use crate::onnx::proto::AttributeProto;
    use crate::passes::test_graphs::{model, node, vi};
    use crate::tensor::Tensor;

    /// torch's pattern on x[2,8,4,4] with 4 groups; `scale` is the InstanceNorm scale value.
    fn pattern(scale: f32) -> Graph {
        let f = DataType::FLOAT;
        let inorm = node("InstanceNormalization", "gn/in", &["r1", "s", "b"], &["i"])
            .with_attrs([AttributeProto::float("epsilon", 1e-6)]);
        model(
            vec![
                node("Reshape", "gn/r1", &["x", "spec"], &["r1"]),
                inorm,
                node("Reshape", "gn/r2", &["i", "back"], &["r2"]),
                node("Mul", "gn/mul", &["r2", "gamma"], &["m"]),
                node("Add", "gn/add", &["m", "beta"], &["y"]),
            ],
            vec![vi("x", f, &["2", "8", "4", "4"])],
            vec![vi("y", f, &["2", "8", "4", "4"])],
            vec![
                Tensor::from_i64s(&[0, 4, -1]).to_proto("spec"),
                Tensor::from_i64s(&[2, 8, 4, 4]).to_proto("back"),
                f32s(&[4], scale).to_proto("s"),
                f32s(&[4], 0.0).to_proto("b"),
                f32s(&[8, 1, 1], 2.0).to_proto("gamma"),
                f32s(&[8, 1, 1], 0.5).to_proto("beta"),
            ],
            17,
        )
    }

    #[test]
    fn torch_pattern_becomes_one_group_norm() -> Result<()> {
        let mut g = pattern(1.0);
        run(&mut g)?;
        let dump = g.dump();
        assert_eq!(g.node_count(), 1, "{dump}");
        assert!(
            dump.contains("gn/in = dfc.internal:GroupNorm(%0, ")
                && dump.contains("num_groups=4, epsilon=0.000001")
                && dump.contains(": f32[2,8,4,4]"),
            "{dump}"
        );
        // The output keeps its name.
        assert_eq!(g.value(g.outputs[0]).name, "y");
        Ok(())
    }

    #[test]
    fn the_structural_match_needs_no_shapes() -> Result<()> {
        // Untyped (no shape inference) and with a real scale: only the structure is matched.
        let mut g = pattern(1.5);
        let i = g.value_by_name("i").context("value i")?;
        let (inorm, _) = g.value(i).producer().context("producer of i")?;
        let m = match_torch_group_norm(&g, inorm).context("no match")?;
        assert_eq!(g.node(m.reshape_in).name, "gn/r1");
        assert_eq!(g.node(m.reshape_out).name, "gn/r2");
        assert_eq!(m.mul.map(|l| g.node(l.node).name.as_str()), Some("gn/mul"));
        assert_eq!(m.add.map(|l| g.value(l.out).name.as_str()), Some("y"));
        // A link whose value the graph also returns ends the chain after it.
        let mul_out = g.value_by_name("m").context("value m")?;
        g.outputs.push(mul_out);
        let m = match_torch_group_norm(&g, inorm).context("no match")?;
        assert!(m.mul.is_some() && m.add.is_none(), "{m:?}");
        Ok(())
    }

    #[test]
    fn instance_norm_with_a_real_scale_is_left_alone() -> Result<()> {
        let mut g = pattern(1.5);
        run(&mut g)?;
        assert_eq!(g.node_count(), 5, "{}", g.dump());
        Ok(())
    }

    #[test]
    fn group_normalization_and_4d_instance_norm() -> Result<()> {
        let f = DataType::FLOAT;
        let mut gn = node("GroupNormalization", "gn", &["x", "s", "b"], &["y"]);
        gn.attribute.push(AttributeProto::int("num_groups", 2));
        let mut g = model(
            vec![gn],
            vec![vi("x", f, &["1", "4", "2", "2"])],
            vec![vi("y", f, &["1", "4", "2", "2"])],
            vec![f32s(&[2], 1.0).to_proto("s"), f32s(&[2], 0.0).to_proto("b")],
            18,
        );
        run(&mut g)?;
        let dump = g.dump();
        assert!(dump.contains("init   %4 gn.scale: f32[4]"), "{dump}");
        assert!(
            dump.contains("GroupNorm(%0, %4, %5) {num_groups=2"),
            "{dump}"
        );

        let mut g = model(
            vec![node(
                "InstanceNormalization",
                "in",
                &["x", "s", "b"],
                &["y"],
            )],
            vec![vi("x", f, &["1", "4", "2", "2"])],
            vec![vi("y", f, &["1", "4", "2", "2"])],
            vec![f32s(&[4], 1.0).to_proto("s"), f32s(&[4], 0.0).to_proto("b")],
            17,
        );
        run(&mut g)?;
        assert!(g.dump().contains("{num_groups=4"), "{}", g.dump());
        Ok(())
    }

    #[test]
    fn group_normalization_21_keeps_per_channel_scale_and_bias() -> Result<()> {
        let f = DataType::FLOAT;
        let mut gn = node("GroupNormalization", "gn", &["x", "s", "b"], &["y"]);
        gn.attribute.push(AttributeProto::int("num_groups", 2));
        gn.attribute.push(AttributeProto::int("stash_type", 1));
        gn.attribute.push(AttributeProto::float("epsilon", 1e-6));
        let mut g = model(
            vec![gn],
            vec![vi("x", f, &["1", "4", "2", "2"])],
            vec![vi("y", f, &["1", "4", "2", "2"])],
            vec![
                f32s(&[4], 1.5).to_proto("s"),
                f32s(&[4], 0.25).to_proto("b"),
            ],
            21,
        );
        run(&mut g)?;
        let dump = g.dump();
        // The model's own [C] scale and bias are read as they are: no per-group repeat.
        assert!(!dump.contains("gn.scale"), "{dump}");
        assert!(
            dump.contains("dfc.internal:GroupNorm(%0, %1, %2) {num_groups=2, epsilon=0.000001}"),
            "{dump}"
        );
        Ok(())
    }
}
