//! Operator knowledge, one module per op family, as tables of [`def::OpDef`]s: one row per
//! operator holding its shape-and-type rule, its constant evaluation and its partition rule
//! side by side; [`registry`] looks them up.
//!
//! Every supported operator has a shape-and-type rule ([`def::OpDef::infer`]) computing output
//! types from input types and, where the ONNX semantics need them, from constant input values
//! (Reshape's shape, Slice's starts, …). Operators constant folding can evaluate also have an
//! [`def::OpDef::eval`]. Rules read the default-domain opset of the model ([`OpCx::opset`]) where the
//! operator changed across versions (attribute vs input forms of `axes`, `split`, `pads`, …).
//!
//! A rule that lacks information (an input type unknown, a value not constant) returns a type
//! with [`Dim::Unknown`] dimensions or shape `None`; a rule fails with [`MissingInfo`] only when
//! it cannot even name the element type. Genuine inconsistencies (shapes that do not broadcast,
//! an axis out of range) are errors naming the problem.
//!
//! Every row also says how the operator is partitioned (how input layouts map to output layouts
//! when the image is cut into bands, see [`layout`]), or why it refuses a split input; the
//! exchange operators of domain `dfc` live in [`exchange`], the internal canonical GroupNorm in
//! [`norm`]. The few ONNX Runtime contributed operators (domain [`ORT_DOMAIN`]) whose semantics
//! are plain live in their families' `ORT_OPS` tables: `Gelu` in [`elementwise`],
//! `SkipLayerNormalization` in [`norm`] and `MultiHeadAttention` in [`linalg`], which ONNX
//! Runtime's CPU provider runs, and `GroupNorm` and `SkipGroupNorm` in [`norm`], which it
//! cannot run and `canonicalize` rewrites (their rows check shapes and refuse a partition).
//!
//! Dependencies point one way: this module (the rule context [`OpCx`] and shared helpers) ←
//! [`layout`] (partition types) ← [`def`] (the row type) ← the families ← [`registry`].

pub mod conv;
pub mod def;
pub mod elementwise;
pub mod exchange;
pub mod layout;
pub mod linalg;
pub mod norm;
pub mod reduce;
pub mod registry;
pub mod shape;

use std::cell::OnceCell;
use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};

use crate::ir::{DataType, Dim, Graph, Node, TensorType, ValueId};
use crate::onnx::ExternalStore;
use crate::tensor::Tensor;

/// Domain of ONNX Runtime's contributed operators.
pub const ORT_DOMAIN: &str = "com.microsoft";

/// Marker error: a rule lacks an input type it needs (not a model error).
#[derive(Debug, thiserror::Error)]
#[error("input {0} has no known type")]
pub struct MissingInfo(pub usize);

/// The default-domain opset version a model imports (`None` when it imports none).
pub fn default_opset(g: &Graph) -> Option<i64> {
    g.shell
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
}

/// Everything a rule may look at for one node.
pub struct OpCx<'a> {
    pub node: &'a Node,
    /// Default-domain opset version of the model.
    pub opset: i64,
    /// Type of each input port (`None` for omitted inputs and unknown types).
    pub types: Vec<Option<TensorType>>,
    source: Option<(&'a Graph, &'a ExternalStore)>,
    known: Option<&'a HashMap<ValueId, Tensor>>,
    cache: Vec<OnceCell<Option<Tensor>>>,
    max_value_elements: usize,
}

impl<'a> OpCx<'a> {
    /// The context of `node` in `graph`: input types from the graph, constant values read
    /// lazily (initializers that are not graph inputs, up to `max_value_elements` elements).
    pub fn new(
        graph: &'a Graph,
        store: &'a ExternalStore,
        node: &'a Node,
        opset: i64,
        max_value_elements: usize,
    ) -> Self {
        let types = node
            .inputs()
            .iter()
            .map(|v| v.and_then(|v| graph.value(v).tensor_type().cloned()))
            .collect();
        Self {
            node,
            opset,
            types,
            source: Some((graph, store)),
            known: None,
            cache: (0..node.inputs().len()).map(|_| OnceCell::new()).collect(),
            max_value_elements,
        }
    }

    /// Also treats the values in `known` (computed but not materialized) as constants.
    pub fn with_known(mut self, known: &'a HashMap<ValueId, Tensor>) -> Self {
        self.known = Some(known);
        self
    }

    /// A context without a graph, for tests: types and values given directly (a value's type
    /// is derived from the value when no type is given).
    pub fn detached(
        node: &'a Node,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
    ) -> Self {
        let n = types.len().max(values.len());
        let mut types = types;
        types.resize(n, None);
        let cache: Vec<OnceCell<Option<Tensor>>> = (0..n).map(|_| OnceCell::new()).collect();
        for (i, v) in values.into_iter().enumerate() {
            if let Some(t) = &v
                && types[i].is_none()
            {
                types[i] = Some(TensorType::fixed(t.dtype(), &t.dims()));
            }
            let _ = cache[i].set(v);
        }
        Self {
            node,
            opset,
            types,
            source: None,
            known: None,
            cache,
            max_value_elements: usize::MAX,
        }
    }

    /// Number of input ports (omitted trailing inputs excluded by the model).
    pub fn n_inputs(&self) -> usize {
        self.types.len()
    }

    /// Whether input `port` is connected.
    pub fn has_input(&self, port: usize) -> bool {
        self.node.input(port).is_some()
    }

    /// The type of input `port`, or [`MissingInfo`].
    pub fn input(&self, port: usize) -> Result<&TensorType> {
        self.types
            .get(port)
            .and_then(Option::as_ref)
            .ok_or_else(|| MissingInfo(port).into())
    }

    /// The element type of input `port`.
    pub fn elem(&self, port: usize) -> Result<DataType> {
        Ok(self.input(port)?.elem)
    }

    /// The dims of input `port`, `None` when its rank is unknown.
    pub fn dims(&self, port: usize) -> Result<Option<&[Dim]>> {
        Ok(self.input(port)?.shape.as_deref())
    }

    /// The static dims of input `port`, when every dim is known.
    pub fn static_dims(&self, port: usize) -> Option<Vec<i64>> {
        self.types.get(port)?.as_ref()?.static_dims()
    }

    /// The constant value of input `port`, when it is a (small enough) constant.
    pub fn value(&self, port: usize) -> Result<Option<&Tensor>> {
        let Some(cell) = self.cache.get(port) else {
            return Ok(None);
        };
        if let Some(v) = cell.get() {
            return Ok(v.as_ref());
        }
        let loaded = match (self.source, self.node.input(port)) {
            (Some((g, store)), Some(v)) => match self.known.and_then(|k| k.get(&v)) {
                Some(t) => Some(t.clone()),
                None => load_constant(g, store, v, self.max_value_elements)?,
            },
            _ => None,
        };
        Ok(cell.get_or_init(|| loaded).as_ref())
    }

    /// The constant value of input `port` as integers.
    pub fn ints(&self, port: usize) -> Result<Option<Vec<i64>>> {
        match self.value(port)? {
            Some(t) => Ok(Some(t.to_i64s()?)),
            None => Ok(None),
        }
    }

    /// Integer attribute or default.
    pub fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.node.attr_i(name, default)
    }

    /// Integer-list attribute.
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attr_ints(name).map(<[i64]>::to_vec)
    }

    /// Every input value, when all connected inputs are constant (`None` otherwise); omitted
    /// inputs are `None` entries.
    pub fn all_values(&self) -> Result<Option<Vec<Option<&Tensor>>>> {
        let mut out = Vec::with_capacity(self.n_inputs());
        for port in 0..self.n_inputs() {
            if !self.has_input(port) {
                out.push(None);
                continue;
            }
            match self.value(port)? {
                Some(v) => out.push(Some(v)),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Value of input `port`, which must be constant (used by `eval`).
    pub fn val(&self, port: usize) -> Result<&Tensor> {
        self.value(port)?
            .ok_or_else(|| anyhow!("input {port} is not constant"))
    }
}

/// The most elements constant folding creates in one tensor, and the most a rewrite reads
/// from one constant (the default of [`crate::PassOptions::max_fold_elements`]).
pub const MAX_FOLD_ELEMENTS: usize = 1 << 20;

/// Whether `v` is a constant: an initializer that is not also a (overridable) graph input.
pub fn is_constant(g: &Graph, v: ValueId) -> bool {
    g.value(v).init.is_some() && !g.inputs.contains(&v)
}

/// Decodes the constant `v` when it holds at most `max_elements` elements.
pub fn load_constant(
    g: &Graph,
    store: &ExternalStore,
    v: ValueId,
    max_elements: usize,
) -> Result<Option<Tensor>> {
    if !is_constant(g, v) {
        return Ok(None);
    }
    let Some(init) = &g.value(v).init else {
        return Ok(None);
    };
    let dt = DataType(init.data_type());
    if !Tensor::supports(dt) {
        return Ok(None);
    }
    let mut n: u128 = 1;
    for &d in &init.dims {
        n = n.saturating_mul(u128::try_from(d).unwrap_or(u128::MAX));
    }
    if n > max_elements as u128 {
        return Ok(None);
    }
    Ok(Some(Tensor::from_proto(init, store)?))
}

// ---- helpers shared by the op families ----

/// A tensor type.
pub fn tt(elem: DataType, shape: Option<Vec<Dim>>) -> TensorType {
    TensorType { elem, shape }
}

/// Dims from known sizes.
pub fn fixed(dims: &[i64]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// Normalizes a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

/// Normalizes a list of axes, refusing duplicates.
pub fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            bail!("axis {a} is repeated in {axes:?}");
        }
        out.push(n);
    }
    Ok(out)
}

/// Numpy broadcast of two symbolic shapes.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let r = a.len().max(b.len());
    let one = Dim::Fixed(1);
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.len() >= r {
            &a[i + a.len() - r]
        } else {
            &one
        };
        let db = if i + b.len() >= r {
            &b[i + b.len() - r]
        } else {
            &one
        };
        out.push(broadcast_dim(da, db).ok_or_else(|| {
            anyhow!(
                "shapes [{}] and [{}] do not broadcast",
                join_dims(a),
                join_dims(b)
            )
        })?);
    }
    Ok(out)
}

fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    Some(match (a, b) {
        (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => d.clone(),
        (Dim::Fixed(x), Dim::Fixed(y)) => {
            if x == y {
                Dim::Fixed(*x)
            } else {
                return None;
            }
        }
        // A symbol broadcast against a size > 1 must equal it (or the model is invalid).
        (Dim::Fixed(x), _) | (_, Dim::Fixed(x)) => Dim::Fixed(*x),
        (Dim::Symbol(x), Dim::Symbol(y)) if x == y => Dim::Symbol(x.clone()),
        _ => Dim::Unknown,
    })
}

/// Broadcast of several optional shapes (`None` when any rank is unknown).
pub fn broadcast_all(shapes: &[Option<&[Dim]>]) -> Result<Option<Vec<Dim>>> {
    let mut acc: Vec<Dim> = Vec::new();
    for s in shapes {
        match s {
            Some(s) => acc = broadcast(&acc, s)?,
            None => return Ok(None),
        }
    }
    Ok(Some(acc))
}

/// Dims as text.
pub fn join_dims(d: &[Dim]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Product of dims (`Unknown` unless all are fixed), refusing overflow.
pub fn dims_product(d: &[Dim]) -> Result<Dim> {
    let mut p: i64 = 1;
    for x in d {
        match x {
            Dim::Fixed(v) => {
                p = p
                    .checked_mul(*v)
                    .ok_or_else(|| anyhow!("element count overflows"))?
            }
            _ => return Ok(Dim::Unknown),
        }
    }
    Ok(Dim::Fixed(p))
}

/// The type of input `port`, as the sole output type (elementwise unary ops).
pub fn same_as(cx: &OpCx<'_>, port: usize) -> Result<Vec<TensorType>> {
    Ok(vec![cx.input(port)?.clone()])
}

/// Converts a non-negative size to a [`Dim`], refusing negative sizes.
pub fn size_dim(v: i64, what: &str) -> Result<Dim> {
    if v < 0 {
        bail!("{what} would be negative ({v})");
    }
    Ok(Dim::Fixed(v))
}

/// Converts static dims to tensor sizes for evaluation.
pub fn usize_dims(d: &[i64]) -> Result<Vec<usize>> {
    Ok(crate::tensor::to_shape(d)?)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers to run one rule on hand-made types.
    use super::*;
    use crate::onnx::proto::AttributeProto;

    /// A node of `op` with `n_in` inputs and `n_out` outputs (ids are placeholders).
    pub fn node(op: &str, attrs: Vec<AttributeProto>) -> Node {
        let mut n = Node::new(format!("test_{op}"), op, "");
        n.attrs = attrs;
        n
    }

    pub fn ai(name: &str, v: i64) -> AttributeProto {
        AttributeProto::int(name, v)
    }

    pub fn aints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto::ints(name, v)
    }

    pub fn af(name: &str, v: f32) -> AttributeProto {
        AttributeProto::float(name, v)
    }

    pub fn astr(name: &str, v: &str) -> AttributeProto {
        AttributeProto::string(name, v)
    }

    pub fn f32t(dims: &[i64]) -> Option<TensorType> {
        Some(TensorType::fixed(DataType::FLOAT, dims))
    }

    pub fn sym(elem: DataType, dims: &[&str]) -> Option<TensorType> {
        Some(TensorType {
            elem,
            shape: Some(
                dims.iter()
                    .map(|d| match d.parse::<i64>() {
                        Ok(v) => Dim::Fixed(v),
                        Err(_) if *d == "?" => Dim::Unknown,
                        Err(_) => Dim::Symbol(d.to_string()),
                    })
                    .collect(),
            ),
        })
    }

    /// Runs the rule of `op` (one output) with the given input types and values.
    pub fn infer(
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
    ) -> Result<Vec<TensorType>> {
        infer_n(op, attrs, opset, types, values, 1)
    }

    /// Runs the rule of `op` for a node with `n_out` outputs.
    pub fn infer_n(
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
        n_out: usize,
    ) -> Result<Vec<TensorType>> {
        infer_in("", op, attrs, opset, types, values, n_out)
    }

    /// Runs the rule of `op` of `domain` for a node with `n_out` outputs.
    pub fn infer_in(
        domain: &str,
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
        n_out: usize,
    ) -> Result<Vec<TensorType>> {
        let def = super::registry::lookup(domain, op).ok_or_else(|| anyhow!("no rule for {op}"))?;
        let n = wired_node(domain, op, attrs, &types, &values, n_out)?;
        let cx = OpCx::detached(&n, opset, types, values);
        (def.infer)(&cx)
    }

    /// A node of `op` of `domain` wired in a graph of its own: an input `in{i}` for each port
    /// with a type or a value, `n_out` outputs `out{i}`.
    pub fn wired_node(
        domain: &str,
        op: &str,
        attrs: Vec<AttributeProto>,
        types: &[Option<TensorType>],
        values: &[Option<Tensor>],
        n_out: usize,
    ) -> Result<Node> {
        let mut n = node(op, attrs);
        n.domain = domain.to_string();
        let n_in = types.len().max(values.len());
        let mut g = Graph::from_model(crate::onnx::proto::ModelProto {
            graph: Some(Default::default()),
            ..Default::default()
        })?;
        let ins: Vec<Option<ValueId>> = (0..n_in)
            .map(|i| {
                let present = types.get(i).is_some_and(Option::is_some)
                    || values.get(i).is_some_and(Option::is_some);
                present.then(|| g.add_value(&format!("in{i}"), None))
            })
            .collect();
        let outs = (0..n_out)
            .map(|i| Some(g.add_value(&format!("out{i}"), None)))
            .collect();
        let id = g.add_node(n, ins, outs, None)?;
        Ok(g.node(id).clone())
    }

    /// Output types as text (`f32[2,3] i64[2,3]`).
    pub fn infer_text(
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
    ) -> String {
        infer_text_n(op, attrs, opset, types, values, 1)
    }

    /// Output types as text for a node with `n_out` outputs.
    pub fn infer_text_n(
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
        n_out: usize,
    ) -> String {
        match infer_n(op, attrs, opset, types, values, n_out) {
            Ok(t) => t
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("error: {e}"),
        }
    }

    /// Output types as text for a node of `op` of `domain` with `n_out` outputs (the types of
    /// its first `n_out` output ports).
    pub fn infer_text_in(
        domain: &str,
        op: &str,
        attrs: Vec<AttributeProto>,
        types: Vec<Option<TensorType>>,
        n_out: usize,
    ) -> String {
        match infer_in(domain, op, attrs, 17, types, vec![], n_out) {
            Ok(t) => t
                .iter()
                .take(n_out)
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("error: {e}"),
        }
    }

    /// Evaluates `op` on constant inputs.
    pub fn eval(
        op: &str,
        attrs: Vec<AttributeProto>,
        opset: i64,
        values: Vec<Option<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let def = super::registry::lookup("", op).ok_or_else(|| anyhow!("no rule for {op}"))?;
        let mut g = Graph::from_model(crate::onnx::proto::ModelProto {
            graph: Some(Default::default()),
            ..Default::default()
        })?;
        let ins: Vec<Option<ValueId>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| v.is_some().then(|| g.add_value(&format!("in{i}"), None)))
            .collect();
        let outs = vec![Some(g.add_value("out", None))];
        let id = g.add_node(node(op, attrs), ins, outs, None)?;
        let n = g.node(id).clone();
        let cx = OpCx::detached(&n, opset, vec![], values);
        let eval = def.eval.ok_or_else(|| anyhow!("{op} has no evaluator"))?;
        eval(&cx)?.ok_or_else(|| anyhow!("{op} declined to evaluate"))
    }

    #[test]
    fn hostile_attributes_and_values_never_panic() {
        let big = [i64::MAX, i64::MIN, -1, 0, 1 << 40];
        let mut attr_sets: Vec<Vec<AttributeProto>> = vec![vec![]];
        for &v in &big {
            attr_sets.push(
                [
                    "axis",
                    "group",
                    "blocksize",
                    "num_groups",
                    "keepdims",
                    "to",
                    "start",
                    "end",
                    "num_outputs",
                    "allowzero",
                    "transA",
                    "transB",
                    "stash_type",
                ]
                .iter()
                .map(|n| ai(n, v))
                .collect(),
            );
            attr_sets.push(
                [
                    "axes",
                    "perm",
                    "pads",
                    "strides",
                    "kernel_shape",
                    "dilations",
                    "split",
                    "starts",
                    "ends",
                    "output_padding",
                    "output_shape",
                    "shape",
                ]
                .iter()
                .map(|n| aints(n, &[v, v, v, v]))
                .collect(),
            );
        }
        attr_sets.push(vec![
            astr("equation", "...a,...a->..."),
            astr("auto_pad", "SAME_LOWER"),
        ]);
        attr_sets.push(vec![astr("equation", "->"), astr("mode", "x")]);
        let types = [
            vec![f32t(&[2, 3, 4, 5]), f32t(&[3, 3, 1, 1])],
            vec![f32t(&[]), f32t(&[0])],
            vec![
                sym(DataType::FLOAT, &["b", "?", "h"]),
                None,
                sym(DataType::INT64, &["4"]),
            ],
        ];
        let values = [
            vec![],
            vec![None, Some(Tensor::from_i64s(&[i64::MAX, i64::MIN, -1, 0]))],
            vec![
                Some(Tensor::from_i64s(&[1 << 40, 3])),
                Some(Tensor::from_i64s(&[i64::MIN])),
                Some(Tensor::from_i64s(&[0])),
                Some(Tensor::from_i64s(&[0])),
                Some(Tensor::from_i64s(&[i64::MIN])),
            ],
            vec![
                None,
                Some(Tensor::scalar(0i64)),
                Some(Tensor::scalar(i64::MAX)),
                Some(Tensor::scalar(1i64)),
            ],
        ];
        for op in super::registry::supported_ops() {
            for attrs in &attr_sets {
                for t in &types {
                    for v in &values {
                        let _ = infer(op, attrs.clone(), 17, t.clone(), v.clone());
                        let _ = infer(op, attrs.clone(), 9, t.clone(), v.clone());
                    }
                }
                for v in &values {
                    let _ = eval(op, attrs.clone(), 17, v.clone());
                }
            }
        }
    }
}
