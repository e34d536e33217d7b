//! `canonicalize`: turns every group-norm construct into one internal node,
//! `dfc.internal:GroupNorm(x, scale?, bias?) {num_groups, epsilon}` with scale and bias per
//! channel, so later passes see one construct, and onnxsim's row-matrix form of a Linear layer
//! back into a MatMul on the tokens.
//!
//! Group norms:
//!
//! - torch's export pattern `Reshape(x, [B,G,-1]) → InstanceNormalization(scale = ones,
//!   bias = zeros) → Reshape(back to x's shape) → Mul(γ[C,1,…]) → Add(β[C,1,…])` (the affine
//!   tail is absorbed when present and read only by the chain; the scale and bias of the
//!   InstanceNormalization are checked to be exactly ones and zeros);
//! - `GroupNormalization` (opset 21: per-channel scale and bias; opsets 18–20: per-group, made
//!   per-channel at compile time from the constants);
//! - `InstanceNormalization` on a 4-D tensor (GroupNorm with one channel per group);
//! - ONNX Runtime's `com.microsoft:GroupNorm` and `SkipGroupNorm` (its transformer optimizer's
//!   fusions, which its CPU provider has no kernel for): the internal GroupNorm on NCHW. A
//!   channels-last input is read through the `Transpose` to NHWC that produced it, or through
//!   a new `Transpose` to NCHW; SkipGroupNorm's sum `X + skip (+ bias)` becomes `Add`s first
//!   (a `[N, C]` skip and the bias reshaped to broadcast over NCHW), and is its second output
//!   when the node has one; gamma and beta are cast to the input's type when they differ;
//!   `activation = 1` appends `x·sigmoid(x)` (`Sigmoid`, `Mul`). Each result goes back to NHWC
//!   through a `Transpose`, except for readers that transposed it to NCHW themselves: they
//!   read the NCHW value, and their Transposes go.
//!
//! The torch chain is found by [`match_torch_group_norm`], which looks at structure only and so
//! also serves tools that count constructs on graphs without static shapes; this pass then
//! checks shapes and constants before rewriting.
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
//!
//! **Invariant:** after this pass no `GroupNormalization`, no 4-D `InstanceNormalization` and
//! no ONNX Runtime `GroupNorm` or `SkipGroupNorm` remains, and the values the rewritten chains
//! produced keep their names and types. Rejects a `GroupNormalization` of opset 18–20 whose
//! scale or bias is not constant, and an ONNX Runtime group norm whose input is not a static
//! 4-D tensor or whose attributes are out of range. A pattern that
//! does not match exactly (other constants, extra readers of an intermediate value) is left
//! alone; `partition` then explains why it cannot be split.

use anyhow::{Result, bail};

use super::ops::norm::INTERNAL_DOMAIN;
use super::ops::{ORT_DOMAIN, default_opset, is_constant, load_constant};
use super::propagate::FALLBACK_OPSET;
use super::{Pass, PassContext};
use crate::ir::{DataType, Graph, Node, NodeId, TensorType, ValueId, ValueType};
use crate::onnx::ExternalStore;
use crate::onnx::proto::AttributeProto;
use crate::tensor::Tensor;

/// See the module documentation.
pub struct Canonicalize;

impl Pass for Canonicalize {
    fn establishes(&self) -> Option<crate::ir::Phase> {
        Some(crate::ir::Phase::Canonical)
    }
    fn name(&self) -> &'static str {
        "canonicalize"
    }
    fn description(&self) -> &'static str {
        "rewrite GroupNorm constructs (torch pattern, GroupNormalization, 4-D InstanceNormalization, ONNX Runtime's GroupNorm and SkipGroupNorm) into one internal GroupNorm, and onnxsim's Reshape → Gemm → Reshape Linear into MatMul + Add"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
        let mut changed = false;
        for id in g.topo_order()? {
            if !g.contains_node(id) {
                continue;
            }
            let n = g.node(id);
            if n.domain == ORT_DOMAIN {
                if matches!(n.op_type.as_str(), "GroupNorm" | "SkipGroupNorm") {
                    rewrite_ort_group_norm(g, id)?;
                    changed = true;
                }
                continue;
            }
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                continue;
            }
            match n.op_type.as_str() {
                "InstanceNormalization" => {
                    if let Some(m) = match_torch_pattern(g, &cx.store, id)? {
                        rewrite_pattern(g, m)?;
                        changed = true;
                    } else if rank_of(g, g.node(id).input(0)) == Some(4) {
                        let c = dims_of(g, g.node(id).input(0)).map(|d| d[1]).unwrap_or(0);
                        retarget(g, id, c);
                        changed = true;
                    }
                }
                "GroupNormalization" => {
                    let groups = g.node(id).attr_i("num_groups", 0);
                    if opset < 21 {
                        per_group_to_per_channel(g, &cx.store, id, groups)?;
                    }
                    retarget(g, id, groups);
                    changed = true;
                }
                "Gemm" => {
                    if let Some(m) = match_gemm_linear(g, id) {
                        rewrite_gemm_linear(g, m)?;
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        if changed {
            g.remove_dead_nodes();
            g.remove_unused_values();
        }
        Ok(changed)
    }
}

fn dims_of(g: &Graph, v: Option<ValueId>) -> Option<Vec<i64>> {
    g.value(v?).tensor_type()?.static_dims()
}

fn rank_of(g: &Graph, v: Option<ValueId>) -> Option<usize> {
    g.value(v?).tensor_type()?.rank()
}

/// Turns a GroupNormalization or InstanceNormalization node into the internal GroupNorm in
/// place (same name, inputs and output).
fn retarget(g: &mut Graph, id: NodeId, groups: i64) {
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
fn per_group_to_per_channel(
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
        let Some(t) = load_constant(g, store, v, 1 << 20)? else {
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
struct PatternMatch {
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

/// The single reader of `v` (and the port it reads), when there is exactly one and `v` is not
/// a graph output.
fn only_reader(g: &Graph, v: ValueId) -> Option<(NodeId, usize)> {
    match g.value(v).uses() {
        [one] if !g.outputs.contains(&v) => Some(*one),
        _ => None,
    }
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
/// [`Canonicalize`] rewrites a match only after checking shapes and constants as well.
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
fn match_torch_pattern(
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

fn rewrite_pattern(g: &mut Graph, m: PatternMatch) -> Result<()> {
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
fn rewrite_ort_group_norm(g: &mut Graph, id: NodeId) -> Result<()> {
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
fn rewrite_gemm_linear(g: &mut Graph, m: GemmLinear) -> Result<()> {
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
    use anyhow::Context;

    use super::*;
    use crate::ir::DataType;
    use crate::passes::test_graphs::{model, node, vi};
    use crate::tensor::Tensor;

    fn f32s(dims: &[usize], v: f32) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(dims, vec![v; n]).expect("tensor")
    }

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

    fn run(g: &mut Graph) -> Result<()> {
        let mut cx = PassContext::new(ExternalStore::new(std::env::temp_dir()));
        crate::passes::infer_shapes::InferShapes.run(g, &mut cx)?;
        Canonicalize.run(g, &mut cx)?;
        g.verify()?;
        Ok(())
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
