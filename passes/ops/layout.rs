//! Partition rules: how an operator maps the layouts of its inputs to the layouts of its
//! outputs when the image is cut into `n` horizontal bands ([`Bands`], possibly unequal).
//!
//! A value is either [`Layout::Replicated`] (every rank of a group holds all of it) or
//! [`Layout::Split`] on one axis (rank `r` holds band `r` of [`Bands`] scaled to the axis). A
//! rule ([`PartitionFn`]) sees the input layouts, the full (unpartitioned) types and constant
//! values of the node, and answers with a [`Verdict`]: the output layouts plus what the
//! rewrite must do for the node to compute its band locally ([`Need`]), a request to gather an
//! operand first, or a refusal naming the reason. Rules live beside the shape rules, in each
//! operator's row of its family's table (the `partition` of its [`super::def::OpDef`]).
//!
//! Rules are only asked about nodes with at least one split input: a node whose inputs are all
//! replicated computes replicated outputs, whatever it is.

use anyhow::Result;

use super::OpCx;
use crate::contract::Bands;
use crate::ir::TensorType;

pub use crate::ir::Layout;

/// What the local rewrite of one node needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Input 0 needs `top` rows from the band above and `bottom` rows from the band below on
    /// `axis` (a `DfcHaloExchange`); the node's own padding on that axis becomes 0.
    Halo { axis: usize, top: i64, bottom: i64 },
    /// Replicated input `port` has the full extent on `axis` (of that input) while the node
    /// computes one band: each rank takes its band of it (constants are sliced at compile time,
    /// other values by an inserted `Slice`).
    SliceOperand { port: usize, axis: usize },
    /// The node's output is a mean over the split axis of its band: a `DfcStatsAllReduce`
    /// after it turns the band means into the mean over the whole image.
    MeanStats,
    /// A canonical GroupNorm on a split tensor: per-band statistics, exchanged.
    GroupNormStats,
}

/// A rule's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The node computes its outputs' bands locally (given `needs`).
    Local {
        outputs: Vec<Layout>,
        needs: Vec<Need>,
    },
    /// Input `port` must be gathered (made replicated) first; the rule is asked again.
    Gather { port: usize },
    /// The construct cannot be partitioned, for this reason.
    Refuse(String),
    /// The construct can be partitioned, but not into this number of bands.
    Indivisible(String),
}

impl Verdict {
    /// Local, without needs.
    pub fn local(outputs: Vec<Layout>) -> Self {
        Verdict::Local {
            outputs,
            needs: Vec::new(),
        }
    }
    /// Every output split on `axis`.
    pub fn split_all(cx: &PartCx<'_>, axis: usize, needs: Vec<Need>) -> Self {
        Verdict::Local {
            outputs: vec![Layout::Split { axis }; cx.n_outputs],
            needs,
        }
    }
}

/// What a partition rule may look at.
pub struct PartCx<'a> {
    /// The node, its full input types and constant inputs.
    pub op: &'a OpCx<'a>,
    /// Layout of each input port (omitted inputs are replicated).
    pub layouts: Vec<Layout>,
    /// Whether each input port is a compile-time constant.
    pub constant: Vec<bool>,
    /// The bands of a group.
    pub bands: &'a Bands,
    /// Number of output ports.
    pub n_outputs: usize,
    /// Full type of each output port.
    pub outputs: Vec<Option<TensorType>>,
}

impl PartCx<'_> {
    /// Number of bands.
    pub fn n(&self) -> usize {
        self.bands.n()
    }
    /// Static dims of input `port`.
    pub fn dims(&self, port: usize) -> Option<Vec<i64>> {
        self.op.static_dims(port)
    }
    /// Static dims of output `port`.
    pub fn out_dims(&self, port: usize) -> Option<Vec<i64>> {
        self.outputs.get(port)?.as_ref()?.static_dims()
    }
    /// The split axis of input `port`.
    pub fn axis(&self, port: usize) -> Option<usize> {
        self.layouts.get(port).and_then(|l| l.axis())
    }
    /// `(port, axis)` of every split input.
    pub fn split_inputs(&self) -> Vec<(usize, usize)> {
        self.layouts
            .iter()
            .enumerate()
            .filter_map(|(p, l)| l.axis().map(|a| (p, a)))
            .collect()
    }
    /// Refuses unless only input 0 is split; returns its axis.
    pub fn only_first_split(&self) -> std::result::Result<usize, Verdict> {
        let split = self.split_inputs();
        match split.as_slice() {
            [(0, a)] => Ok(*a),
            _ => Err(Verdict::Refuse(format!(
                "only the data input may be split here, not inputs {:?}",
                split.iter().map(|s| s.0).collect::<Vec<_>>()
            ))),
        }
    }
}

/// A partition rule.
pub type PartitionFn = fn(&PartCx<'_>) -> Result<Verdict>;

/// How an operator treats a split input.
#[derive(Clone, Copy)]
pub enum Part {
    /// Its row does not say (a table mistake; `registry`'s tests reject it).
    Undeclared,
    /// Its partition rule.
    Rule(PartitionFn),
    /// It refuses a split input, for this reason.
    Refuse(&'static str),
}

/// Elementwise with numpy broadcasting: every output is split on the (output-aligned) axis of
/// the split inputs. Split inputs on different axes: the later one is gathered. A replicated
/// input of extent 1 on that axis broadcasts; one with the full extent is sliced per band.
pub fn broadcast(cx: &PartCx<'_>) -> Result<Verdict> {
    let Some(out) = cx.out_dims(0) else {
        return Ok(Verdict::Refuse("output shape is not static".into()));
    };
    let r = out.len();
    let mut axis: Option<usize> = None;
    for (port, a) in cx.split_inputs() {
        let Some(d) = cx.dims(port) else {
            return Ok(Verdict::Refuse(format!("input {port} has no static shape")));
        };
        let oa = a + r - d.len();
        match axis {
            None => axis = Some(oa),
            Some(x) if x == oa => {}
            Some(_) => return Ok(Verdict::Gather { port }),
        }
    }
    let Some(axis) = axis else {
        return Ok(Verdict::local(vec![Layout::Replicated; cx.n_outputs]));
    };
    let mut needs = Vec::new();
    for port in 0..cx.layouts.len() {
        let absent = !cx.op.has_input(port) && cx.op.types.get(port).is_none_or(Option::is_none);
        if cx.layouts[port] != Layout::Replicated || absent {
            continue;
        }
        let Some(d) = cx.dims(port) else {
            return Ok(Verdict::Refuse(format!("input {port} has no static shape")));
        };
        if d.len() + axis < r {
            continue; // The input has no such axis: it broadcasts.
        }
        let ia = axis + d.len() - r;
        if d[ia] == 1 {
            continue;
        }
        if d[ia] == out[axis] {
            needs.push(Need::SliceOperand { port, axis: ia });
        } else {
            return Ok(Verdict::Refuse(format!(
                "input {port} has extent {} on the split axis, neither 1 nor {}",
                d[ia], out[axis]
            )));
        }
    }
    Ok(Verdict::split_all(cx, axis, needs))
}

/// Outputs take input 0's layout (shape-preserving ops whose other inputs are parameters).
pub fn follow(cx: &PartCx<'_>) -> Result<Verdict> {
    let axis = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    Ok(Verdict::split_all(cx, axis, Vec::new()))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Running one partition rule on hand-made types.
    use super::*;
    use crate::ir::Node;
    use crate::tensor::Tensor;

    /// Runs the rule of `node` with the given input types, values and layouts.
    pub fn verdict(
        node: &Node,
        opset: i64,
        types: Vec<Option<TensorType>>,
        values: Vec<Option<Tensor>>,
        layouts: Vec<Layout>,
        outputs: Vec<Option<TensorType>>,
        n: usize,
    ) -> Verdict {
        let constant = (0..types.len().max(values.len()))
            .map(|i| values.get(i).is_some_and(Option::is_some))
            .collect();
        let op = OpCx::detached(node, opset, types, values);
        // `n` bands of one row each cut every extent at the fractions r/n: equal bands.
        let bands = Bands::from_heights(&vec![1; n]).expect("at least one band");
        let cx = PartCx {
            op: &op,
            layouts,
            constant,
            bands: &bands,
            n_outputs: outputs.len(),
            outputs,
        };
        let def = super::super::registry::lookup(&node.domain, &node.op_type).expect("a row");
        match def.partition {
            Part::Rule(rule) => rule(&cx).expect("the rule runs"),
            Part::Refuse(reason) => Verdict::Refuse(reason.into()),
            Part::Undeclared => panic!("{} declares no partition", node.op_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f32t, node};
    use super::testing::verdict;
    use super::*;

    const S2: Layout = Layout::Split { axis: 2 };
    const R: Layout = Layout::Replicated;

    #[test]
    fn broadcast_slices_full_extent_and_keeps_extent_one() {
        let add = node("Add", vec![]);
        let v = verdict(
            &add,
            17,
            vec![f32t(&[2, 4, 8, 8]), f32t(&[4, 1, 1])],
            vec![],
            vec![S2, R],
            vec![f32t(&[2, 4, 8, 8])],
            2,
        );
        assert_eq!(v, Verdict::local(vec![S2]));
        let v = verdict(
            &add,
            17,
            vec![f32t(&[2, 4, 8, 8]), f32t(&[1, 8, 8])],
            vec![],
            vec![S2, R],
            vec![f32t(&[2, 4, 8, 8])],
            2,
        );
        assert_eq!(
            v,
            Verdict::Local {
                outputs: vec![S2],
                needs: vec![Need::SliceOperand { port: 1, axis: 1 }]
            }
        );
        // Split on different axes: the second operand is gathered.
        let v = verdict(
            &add,
            17,
            vec![f32t(&[2, 4, 8, 8]), f32t(&[2, 4, 8, 8])],
            vec![],
            vec![S2, Layout::Split { axis: 3 }],
            vec![f32t(&[2, 4, 8, 8])],
            2,
        );
        assert_eq!(v, Verdict::Gather { port: 1 });
    }
}
