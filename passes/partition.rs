//! `partition`: sharding propagation. The model's spatial input (the first rank-4
//! floating-point input, a UNet's `sample`) is split into `n` bands along its height (axis 2
//! of NCHW), possibly unequal ([`Bands`]); every other input and every constant is replicated. One sweep in topological
//! order gives every value a layout from the partition rules of [`super::ops::layout`]: a node
//! whose inputs are all replicated computes replicated outputs (the time embedding, the text
//! path); otherwise its rule decides, possibly asking for an operand to be gathered first (the
//! keys and values of self-attention).
//!
//! The bands are chosen here: a first sweep with one band finds every split extent (the
//! feature maps of every level, the token axes of attention), whose coarsest level sets the
//! row step that keeps band boundaries whole everywhere ([`Bands::granularity`]); the request
//! (a count, spread as evenly as that step allows; heights; or GPU weights) is resolved on it,
//! and a second sweep checks every rule against the real bands.
//!
//! **Invariant:** after this pass every value has exactly one layout, replicated or split on
//! one axis into the bands of [`Partition::bands`] ([`Partition::layouts`]), and every node that needs an
//! exchange or a per-band operand says so ([`Partition::needs`], [`Partition::gathers`]). The
//! graph itself is not changed.
//!
//! Rejects, all listed in one error (node, op, reason): constructs without a rule on a split
//! tensor (a Concat or Slice along the split axis, a bilinear Resize of a split tensor, a
//! reduction other than a mean over the split axis, …). When the only problems are bands that
//! do not fit (more bands than rows at the coarsest level, boundaries off the row step, halos
//! larger than a band), the error says which band counts and lists would work instead.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use anyhow::Result;

use super::ops::layout::{Layout, Need, Part, PartCx, Verdict};
use super::ops::registry::partition_of;
use super::ops::{OpCx, default_opset};
use super::propagate::FALLBACK_OPSET;
use super::{BandRequest, NodeIssue, Pass, PassContext};
use crate::contract::{BandError, Bands};
use crate::ir::{Graph, NodeId, ValueId};
use crate::onnx::ExternalStore;

/// Axis of the spatial input cut into bands (H of NCHW).
pub const BAND_AXIS: usize = 2;
/// Largest band count suggested when a count does not divide the image.
pub const MAX_SUGGESTED: usize = 64;

/// The layouts of a graph cut into bands.
#[derive(Clone, Debug)]
pub struct Partition {
    /// The bands of a group.
    pub bands: Bands,
    /// Band boundaries are multiples of this many latent rows.
    pub row_step: i64,
    /// Heights of the split feature maps (rank-4 values split on H), largest first.
    pub levels: Vec<i64>,
    /// The model input cut into bands.
    pub spatial_input: ValueId,
    /// Every value's layout (values absent here are replicated).
    pub layouts: HashMap<ValueId, Layout>,
    /// What each node needs to compute its bands locally.
    pub needs: BTreeMap<NodeId, Vec<Need>>,
    /// Operands to gather before they are read: `(node, input port, axis)`.
    pub gathers: Vec<(NodeId, usize, usize)>,
}

impl Partition {
    /// Number of bands.
    pub fn n(&self) -> usize {
        self.bands.n()
    }

    /// The layout of `v`.
    pub fn layout(&self, v: ValueId) -> Layout {
        self.layouts.get(&v).copied().unwrap_or(Layout::Replicated)
    }

    /// Text form: one line per node that touches a split value, in topological order.
    pub fn dump(&self, g: &Graph) -> String {
        let mut s = String::new();
        let show = |l: Layout| match l {
            Layout::Replicated => "R".to_string(),
            Layout::Split { axis } => format!("S{axis}"),
        };
        let Ok(order) = g.topo_order() else {
            return "# cannot order nodes\n".into();
        };
        for id in order {
            let n = g.node(id);
            let ins: Vec<Layout> = n
                .inputs()
                .iter()
                .map(|v| v.map(|v| self.layout(v)).unwrap_or(Layout::Replicated))
                .collect();
            let outs: Vec<Layout> = n
                .outputs()
                .iter()
                .map(|v| v.map(|v| self.layout(v)).unwrap_or(Layout::Replicated))
                .collect();
            if ins.iter().chain(&outs).all(|l| *l == Layout::Replicated) {
                continue;
            }
            let _ = write!(
                s,
                "{} ({}): {} -> {}",
                n.name,
                n.op_type,
                ins.iter().map(|&l| show(l)).collect::<Vec<_>>().join(","),
                outs.iter().map(|&l| show(l)).collect::<Vec<_>>().join(",")
            );
            for (node, port, axis) in &self.gathers {
                if *node == id {
                    let _ = write!(s, " gather(input {port}, axis {axis})");
                }
            }
            for need in self.needs.get(&id).into_iter().flatten() {
                let _ = match need {
                    Need::Halo { axis, top, bottom } => {
                        write!(s, " halo(axis {axis}, top {top}, bottom {bottom})")
                    }
                    Need::SliceOperand { port, axis } => {
                        write!(s, " band-slice(input {port}, axis {axis})")
                    }
                    Need::MeanStats => write!(s, " mean-stats"),
                    Need::GroupNormStats => write!(s, " group-norm-stats"),
                };
            }
            s.push('\n');
        }
        s
    }
}

/// A node that cannot be partitioned as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub issue: NodeIssue,
    /// Whether another band count could work.
    pub indivisible: bool,
    /// Whether it is dfc's fault (a partition rule misbehaved), not the model's.
    pub internal: bool,
}

/// Errors of partitioning.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("the model has no rank-4 floating-point input to cut into bands (inputs: {inputs})")]
    NoSpatialInput { inputs: String },
    #[error("{} node(s) cannot be partitioned into bands:\n{}", .0.len(), list(.0))]
    Unsupported(Vec<NodeIssue>),
    #[error(
        "{n} bands do not fit this model at this size:\n{}\nband counts that work (≤ {max}): {}",
        list_capped(issues),
        valid_text(valid)
    )]
    Indivisible {
        n: usize,
        issues: Vec<NodeIssue>,
        valid: Vec<usize>,
        max: usize,
    },
    /// A partition rule misbehaved: dfc's fault, whatever the model.
    #[error("partition rules misbehaved: {0}")]
    Bug(String),
    #[error("cannot cut the image's {height} latent rows into bands as asked: {error}")]
    Bands {
        height: i64,
        #[source]
        error: BandError,
    },
}

fn list(items: &[NodeIssue]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// At most 20 entries; long lists end with a count.
fn list_capped(items: &[NodeIssue]) -> String {
    const SHOWN: usize = 20;
    let mut s = list(&items[..items.len().min(SHOWN)]);
    if items.len() > SHOWN {
        s += &format!("\n  … and {} more", items.len() - SHOWN);
    }
    s
}

fn valid_text(v: &[usize]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The input cut into bands ([`Graph::spatial_input`]).
pub fn spatial_input(g: &Graph) -> Option<ValueId> {
    g.spatial_input()
}

/// Latent height of the spatial input (0 when unknown).
fn spatial_height(g: &Graph, spatial: ValueId) -> i64 {
    g.value(spatial)
        .tensor_type()
        .and_then(|t| t.static_dims())
        .map(|d| d[BAND_AXIS])
        .unwrap_or(0)
}

/// Computes the layouts of `g` cut into `bands`, with every problem found.
pub fn analyze(
    g: &Graph,
    store: &ExternalStore,
    bands: &Bands,
) -> Result<(Partition, Vec<Problem>), PartitionError> {
    let Some(spatial) = spatial_input(g) else {
        return Err(PartitionError::NoSpatialInput {
            inputs: g
                .inputs
                .iter()
                .map(|&v| g.value(v).name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let opset = default_opset(g).unwrap_or(FALLBACK_OPSET);
    let mut p = Partition {
        bands: bands.clone(),
        row_step: 1,
        levels: Vec::new(),
        spatial_input: spatial,
        layouts: HashMap::new(),
        needs: BTreeMap::new(),
        gathers: Vec::new(),
    };
    let mut problems = Vec::new();
    let h = spatial_height(g, spatial);
    if bands.height() != h {
        problems.push(Problem {
            issue: NodeIssue {
                node: g.value(spatial).name.clone(),
                op: "input".into(),
                message: format!(
                    "bands {bands} cover {} rows, its height is {h}",
                    bands.height()
                ),
            },
            indivisible: true,
            internal: false,
        });
    }
    p.layouts.insert(spatial, Layout::Split { axis: BAND_AXIS });
    let order = g.topo_order().map_err(|e| {
        PartitionError::Unsupported(vec![NodeIssue {
            node: String::new(),
            op: String::new(),
            message: e.to_string(),
        }])
    })?;
    for id in order {
        let node = g.node(id);
        let mut layouts: Vec<Layout> = node
            .inputs()
            .iter()
            .map(|v| v.map(|v| p.layout(v)).unwrap_or(Layout::Replicated))
            .collect();
        if layouts.iter().all(|l| *l == Layout::Replicated) {
            continue;
        }
        let mut problem = |message: String, indivisible: bool, internal: bool| {
            problems.push(Problem {
                issue: NodeIssue {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    message,
                },
                indivisible,
                internal,
            })
        };
        let rule = match partition_of(&node.domain, &node.op_type) {
            Some(Part::Rule(rule)) => rule,
            Some(Part::Refuse(reason)) => {
                problem(reason.to_string(), false, false);
                continue;
            }
            Some(Part::Undeclared) => {
                problem(
                    format!("{} declares no partition rule", node.op_type),
                    false,
                    true,
                );
                continue;
            }
            None => {
                problem(
                    format!("no partition rule for {} on a split tensor", node.op_type),
                    false,
                    false,
                );
                continue;
            }
        };
        let op = OpCx::new(g, store, node, opset, crate::ops::MAX_FOLD_ELEMENTS);
        let outputs: Vec<_> = node
            .outputs()
            .iter()
            .map(|v| v.and_then(|v| g.value(v).tensor_type().cloned()))
            .collect();
        let constant: Vec<bool> = node
            .inputs()
            .iter()
            .map(|v| v.is_some_and(|v| super::ops::is_constant(g, v)))
            .collect();
        let mut verdict = None;
        let mut bug = None;
        for _ in 0..=layouts.len() {
            let cx = PartCx {
                op: &op,
                layouts: layouts.clone(),
                constant: constant.clone(),
                bands,
                n_outputs: outputs.len(),
                outputs: outputs.clone(),
            };
            match (rule)(&cx) {
                Ok(Verdict::Gather { port }) => match layouts.get(port).and_then(|l| l.axis()) {
                    Some(axis) => {
                        p.gathers.push((id, port, axis));
                        layouts[port] = Layout::Replicated;
                    }
                    None => {
                        bug = Some(format!(
                            "the rule asked to gather input {port}, which is not split"
                        ));
                        break;
                    }
                },
                Ok(v) => {
                    verdict = Some(v);
                    break;
                }
                Err(e) => {
                    verdict = Some(Verdict::Refuse(format!("{e:#}")));
                    break;
                }
            }
        }
        match verdict {
            Some(Verdict::Local {
                outputs: outs,
                needs,
            }) => {
                for (port, (v, l)) in node.outputs().iter().zip(outs).enumerate() {
                    let Some(v) = v else { continue };
                    if let Layout::Split { axis } = l {
                        let extent = outputs
                            .get(port)
                            .and_then(|t| t.as_ref())
                            .and_then(|t| t.static_dims())
                            .and_then(|d| d.get(axis).copied());
                        match extent {
                            Some(e) if bands.divides(e) => {}
                            Some(e) => problem(
                                format!(
                                    "bands {bands} do not cut axis {axis} ({e}) of its output into whole parts"
                                ),
                                true,
                                false,
                            ),
                            None => problem("its output has no static shape".into(), false, false),
                        }
                    }
                    p.layouts.insert(*v, l);
                }
                if !needs.is_empty() {
                    p.needs.insert(id, needs);
                }
            }
            Some(Verdict::Refuse(m)) => problem(m, false, false),
            Some(Verdict::Indivisible(m)) => problem(m, true, false),
            Some(Verdict::Gather { .. }) | None => problem(
                bug.take()
                    .unwrap_or_else(|| "the partition rule did not settle".into()),
                false,
                true,
            ),
        }
    }
    Ok((p, problems))
}

/// Extents of every split axis in `p` (with the spatial height), and the heights of the
/// model's feature maps (the spatial input and every map a convolution or pooling reads or
/// writes while split on H), largest first.
fn split_extents(g: &Graph, p: &Partition) -> (Vec<i64>, Vec<i64>) {
    let h = spatial_height(g, p.spatial_input);
    let mut extents = vec![h];
    for (&v, l) in &p.layouts {
        if let (Some(axis), Some(d)) = (
            l.axis(),
            g.value(v).tensor_type().and_then(|t| t.static_dims()),
        ) && let Some(&e) = d.get(axis)
        {
            extents.push(e);
        }
    }
    let height_of = |v: Option<ValueId>| -> Option<i64> {
        let v = v?;
        (p.layout(v) == Layout::Split { axis: BAND_AXIS }).then_some(())?;
        let d = g.value(v).tensor_type()?.static_dims()?;
        (d.len() == 4).then(|| d[BAND_AXIS])
    };
    let mut levels = vec![h];
    for id in g.node_ids() {
        let node = g.node(id);
        let conv_like = node.domain.is_empty()
            && matches!(
                node.op_type.as_str(),
                "Conv" | "MaxPool" | "AveragePool" | "LpPool"
            );
        if !conv_like {
            continue;
        }
        for e in [height_of(node.input(0)), height_of(node.output(0))]
            .into_iter()
            .flatten()
        {
            if !levels.contains(&e) {
                levels.push(e);
            }
        }
    }
    levels.sort_unstable_by(|a, b| b.cmp(a));
    (extents, levels)
}

/// Band counts up to `max` for which `g` partitions without problems with bands spread as
/// evenly as `step` allows.
pub fn valid_counts(
    g: &Graph,
    store: &ExternalStore,
    height: i64,
    step: i64,
    max: usize,
) -> Vec<usize> {
    (1..=max)
        .filter(|&n| {
            Bands::even(height, n, step)
                .is_ok_and(|b| matches!(analyze(g, store, &b), Ok((_, p)) if p.is_empty()))
        })
        .collect()
}

/// Fails with [`PartitionError::Bug`] when a partition rule misbehaved on some node.
fn bugs(problems: &[Problem]) -> Result<(), PartitionError> {
    let bugs: Vec<String> = problems
        .iter()
        .filter(|p| p.internal)
        .map(|p| p.issue.to_string())
        .collect();
    if bugs.is_empty() {
        Ok(())
    } else {
        Err(PartitionError::Bug(bugs.join("; ")))
    }
}

/// Partitions `g` into the bands `request` asks for, or explains, in one error, every node
/// that prevents it.
pub fn partition(
    g: &Graph,
    store: &ExternalStore,
    request: &BandRequest,
) -> Result<Partition, PartitionError> {
    let Some(spatial) = spatial_input(g) else {
        return analyze(g, store, &Bands::single(1)).map(|(p, _)| p);
    };
    let height = spatial_height(g, spatial);
    // One band: every rule sees the split axes; their extents set the row step.
    let (whole, problems) = analyze(g, store, &Bands::single(height))?;
    bugs(&problems)?;
    if problems.iter().any(|p| !p.indivisible) {
        return Err(PartitionError::Unsupported(
            problems
                .into_iter()
                .filter(|p| !p.indivisible)
                .map(|p| p.issue)
                .collect(),
        ));
    }
    let (extents, levels) = split_extents(g, &whole);
    let step = Bands::granularity(height, extents);
    let resolved = match request {
        BandRequest::Count(n) => Bands::even(height, *n, step),
        BandRequest::Weights(w) => Bands::weighted(height, w, step),
        BandRequest::Heights(h) => {
            Bands::from_heights(h).and_then(|b| b.check(height, step).map(|()| b))
        }
    };
    let bands = match resolved {
        Ok(b) => b,
        Err(error) => return Err(PartitionError::Bands { height, error }),
    };
    let n = bands.n();
    let (mut p, problems) = analyze(g, store, &bands)?;
    bugs(&problems)?;
    p.row_step = step;
    p.levels = levels;
    if problems.is_empty() {
        return Ok(p);
    }
    if problems.iter().any(|p| !p.indivisible) {
        return Err(PartitionError::Unsupported(
            problems.into_iter().map(|p| p.issue).collect(),
        ));
    }
    let max = MAX_SUGGESTED.min((height / step).max(1) as usize);
    Err(PartitionError::Indivisible {
        n,
        issues: problems.into_iter().map(|p| p.issue).collect(),
        valid: valid_counts(g, store, height, step, max),
        max,
    })
}

/// See the module documentation.
pub struct PartitionPass;

impl Pass for PartitionPass {
    fn establishes(&self) -> Option<crate::ir::Phase> {
        Some(crate::ir::Phase::Partitioned)
    }
    fn name(&self) -> &'static str {
        "partition"
    }
    fn description(&self) -> &'static str {
        "give every value a layout (replicated or split into bands) from the partition rules"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let request = &cx.partition_options.bands;
        if request.n() == 0 {
            anyhow::bail!("the number of bands must be at least 1");
        }
        let p = partition(g, &cx.store, request)?;
        let ids: Vec<ValueId> = g.value_ids().collect();
        for v in ids {
            g.value_mut(v).layout = Some(p.layout(v));
        }
        cx.partition = Some(p);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::onnx::proto::AttributeProto;
    use crate::passes::test_graphs::{model, node, vi};

    fn store() -> ExternalStore {
        ExternalStore::new(std::env::temp_dir())
    }

    fn typed(mut g: Graph) -> Graph {
        let mut cx = PassContext::new(store());
        crate::passes::fold_constants::FoldConstants
            .run(&mut g, &mut cx)
            .expect("typing");
        g
    }

    #[test]
    fn every_offending_node_is_listed() {
        let f = DataType::FLOAT;
        let cat = node("Concat", "cat_h", &["x", "x"], &["c"])
            .with_attrs([AttributeProto::int("axis", 2)]);
        let up = node("Resize", "up_bilinear", &["x", "", "scales"], &["u"])
            .with_attrs([AttributeProto::string("mode", "linear")]);
        let scales = crate::tensor::Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 2.0])
            .expect("tensor")
            .to_proto("scales");
        let g = typed(model(
            vec![cat, up],
            vec![vi("x", f, &["1", "4", "8", "8"])],
            vec![
                vi("c", f, &["?", "?", "?", "?"]),
                vi("u", f, &["?", "?", "?", "?"]),
            ],
            vec![scales],
            17,
        ));
        let e = partition(&g, &store(), &BandRequest::Count(2))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("2 node(s)"), "{e}");
        assert!(
            e.contains("`cat_h` (Concat)") && e.contains("along the split axis"),
            "{e}"
        );
        assert!(
            e.contains("`up_bilinear` (Resize)") && e.contains("linear"),
            "{e}"
        );
    }

    #[test]
    fn counts_beyond_the_rows_name_the_ones_that_work() {
        let f = DataType::FLOAT;
        let g = typed(model(
            vec![node("Relu", "relu", &["x"], &["y"])],
            vec![vi("x", f, &["1", "4", "12", "8"])],
            vec![vi("y", f, &["?", "?", "?", "?"])],
            vec![],
            17,
        ));
        let e = partition(&g, &store(), &BandRequest::Count(13))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("from 1 to 12"), "{e}");
        // 5 bands of 12 rows: 3, 3, 2, 2, 2.
        let p = partition(&g, &store(), &BandRequest::Count(5)).expect("uneven bands");
        assert_eq!(p.bands.heights(), vec![3, 3, 2, 2, 2]);
        let y = g.outputs[0];
        assert_eq!(p.layout(y), Layout::Split { axis: 2 });
    }

    #[test]
    fn the_coarsest_level_sets_the_row_step() {
        let f = DataType::FLOAT;
        let pool = node("MaxPool", "pool", &["x"], &["y"]).with_attrs([
            AttributeProto::ints("kernel_shape", &[2, 2]),
            AttributeProto::ints("strides", &[2, 2]),
        ]);
        let g = typed(model(
            vec![pool],
            vec![vi("x", f, &["1", "4", "12", "8"])],
            vec![vi("y", f, &["?", "?", "?", "?"])],
            vec![],
            17,
        ));
        let p = partition(&g, &store(), &BandRequest::Count(4)).expect("4 bands");
        assert_eq!((p.row_step, p.bands.heights()), (2, vec![4, 4, 2, 2]));
        assert_eq!(p.levels, vec![12, 6]);
        let e = partition(&g, &store(), &BandRequest::Heights(vec![5, 7]))
            .expect_err("5 is odd")
            .to_string();
        assert!(e.contains("multiple of 2"), "{e}");
        let p = partition(&g, &store(), &BandRequest::Weights(vec![2.0, 1.0])).expect("weights");
        assert_eq!(p.bands.heights(), vec![8, 4]);
    }

    #[test]
    fn misbehaving_rules_are_dfc_bugs_not_model_errors() {
        let issue = |internal| Problem {
            issue: NodeIssue {
                node: "n".into(),
                op: "Op".into(),
                message: "m".into(),
            },
            indivisible: false,
            internal,
        };
        assert!(bugs(&[issue(false)]).is_ok());
        let e = bugs(&[issue(false), issue(true)]).expect_err("a bug");
        assert!(matches!(e, PartitionError::Bug(_)), "{e}");
    }
}
