//! Analyses and rewrites over the [`crate::ir::Graph`], and the pass manager that runs them.
//!
//! A pass is a unit struct implementing [`Pass`]; it reads its options from the
//! [`PassContext`]. Every pass is listed once in [`REGISTRY`], and every pipeline once in
//! [`PIPELINES`]: the CLI lists both from there. [`PassManager`] runs a pipeline (or any list of
//! pass names), verifies the IR after every pass in debug builds or when asked (the offending
//! graph, dumped, is part of the error), times each pass, and can stop after or dump after a
//! named pass.
//!
//! Operator knowledge (shape rules, evaluation) lives in tables in [`ops`], one module per
//! operator family; [`propagate`] is the engine that applies it over a graph. [`driver`] compiles
//! a model into a plan folder by running the `compile` pipelines of [`PIPELINES`];
//! [`analysis`] answers questions about a model by the same rules without changing it.

// The layers below, under the names the passes use.
pub(crate) use crate as passes;
pub use dfc_contract as contract;
pub use dfc_contract::plan;
pub use dfc_graph::{error, internal, ir, onnx, tensor};

pub mod analysis;
pub mod batch;
pub mod canonicalize;
pub mod cost;
pub mod dce;
pub mod driver;
pub mod fold_constants;
pub mod fused;
pub mod infer_shapes;
pub mod localize;
pub mod ops;
pub mod partition;
pub mod propagate;
pub mod specialize;
pub mod verify;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ir::{Graph, IrError, Phase};
use crate::onnx::ExternalStore;

/// A graph transformation or analysis.
pub trait Pass: Sync {
    /// The name used in pipelines, `--stop-after` and `--dump-after`.
    fn name(&self) -> &'static str;
    /// One line for `--list-passes`.
    fn description(&self) -> &'static str;
    /// Runs the pass; returns whether the graph changed.
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> anyhow::Result<bool>;
    /// The phase the graph is in after this pass (`None`: unchanged).
    fn establishes(&self) -> Option<Phase> {
        None
    }
}

/// Tunables shared by the passes.
#[derive(Clone, Debug)]
pub struct PassOptions {
    /// Verify the IR after every pass even in release builds.
    pub verify: bool,
    /// Constant folding never creates a tensor with more elements than this.
    pub max_fold_elements: usize,
    /// Folding never reads or writes a floating-point tensor larger than this, so weights are
    /// never rewritten (or duplicated) by the compiler.
    pub max_float_fold_elements: usize,
}

impl Default for PassOptions {
    fn default() -> Self {
        Self {
            verify: false,
            max_fold_elements: ops::MAX_FOLD_ELEMENTS,
            max_float_fold_elements: 1 << 12,
        }
    }
}

/// One operator type the passes do not know, with how often it occurs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOp {
    /// `op_type`, prefixed by `domain:` outside the default domain.
    pub op: String,
    pub count: usize,
    /// Name of the first node (in topological order) using it.
    pub first_node: String,
}

/// A problem found at one node (a shape inconsistency, an invalid attribute…).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIssue {
    pub node: String,
    pub op: String,
    pub message: String,
}

impl std::fmt::Display for NodeIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node `{}` ({}): {}", self.node, self.op, self.message)
    }
}

/// Findings the passes accumulate for the caller.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    /// Unsupported operators by name, from the last propagation.
    pub unsupported: BTreeMap<String, UnsupportedOp>,
    /// Node problems from the last propagation.
    pub issues: Vec<NodeIssue>,
    /// Non-fatal notes (e.g. a model annotation contradicted by inference).
    pub warnings: Vec<String>,
    /// Nodes replaced by constants so far.
    pub folded: usize,
    /// Nodes removed as dead so far.
    pub removed: usize,
}

/// How a group's image is to be cut into bands.
#[derive(Clone, Debug, PartialEq)]
pub enum BandRequest {
    /// This many bands, as even as the model's levels allow.
    Count(usize),
    /// Bands of these heights in latent rows, top to bottom.
    Heights(Vec<i64>),
    /// One band per weight, sized in proportion (relative GPU speeds).
    Weights(Vec<f64>),
}

impl BandRequest {
    /// Number of bands asked for.
    pub fn n(&self) -> usize {
        match self {
            BandRequest::Count(n) => *n,
            BandRequest::Heights(h) => h.len(),
            BandRequest::Weights(w) => w.len(),
        }
    }
}

/// What the partitioning passes are asked for.
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// The bands of a group (GPUs per CFG group).
    pub bands: BandRequest,
    pub mode: crate::plan::Mode,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        Self {
            bands: BandRequest::Count(1),
            mode: crate::plan::Mode::Displaced,
        }
    }
}

/// What passes share: the model's external data, options, and accumulated findings.
pub struct PassContext {
    pub store: ExternalStore,
    pub options: PassOptions,
    /// Sizes for the `bind-inputs` pass.
    pub specialize: specialize::SpecializeOptions,
    /// Symbol bindings made by `bind-inputs`, by symbol name.
    pub bindings: BTreeMap<String, i64>,
    pub diagnostics: Diagnostics,
    /// Band count and mode for `partition` and the localizing passes.
    pub partition_options: PartitionOptions,
    /// What `partition` found: bands, needs and gathers (read by the localizing passes).
    pub partition: Option<partition::Partition>,
    /// The band whose local graph the localizing passes build (position within the group).
    pub band: usize,
    /// What the localizing passes found: exchanges, per-band constants, I/O layouts.
    pub local: Option<localize::LocalGraph>,
}

impl PassContext {
    pub fn new(store: ExternalStore) -> Self {
        Self {
            store,
            options: PassOptions::default(),
            specialize: Default::default(),
            bindings: BTreeMap::new(),
            diagnostics: Diagnostics::default(),
            partition_options: PartitionOptions::default(),
            partition: None,
            band: 0,
            local: None,
        }
    }
}

/// Every pass, once.
pub static REGISTRY: &[&dyn Pass] = &[
    &fused::RejectFused,
    &specialize::BindInputs,
    &infer_shapes::InferShapes,
    &fold_constants::FoldConstants,
    &dce::DeadCode,
    &specialize::RequireStatic,
    &canonicalize::Canonicalize,
    &batch::HalveBatch,
    &partition::PartitionPass,
    &localize::LocalTypes,
    &localize::LowerGroupNorm,
    &localize::InsertExchanges,
];

/// Every pipeline: name → pass names, in order.
///
/// The compiler ([`driver`]) runs `compile` on the whole graph, then `compile-band` once per
/// distinct band height on a copy of the partitioned graph; with `--split-batch` and a batch
/// fixed to the CFG pair, `split-batch` first turns the model into the graph of one CFG group.
pub static PIPELINES: &[(&str, &[&str])] = &[
    ("infer", &["infer-shapes"]),
    ("simplify", &["fold-constants", "dce"]),
    (
        "specialize",
        &["bind-inputs", "fold-constants", "dce", "require-static"],
    ),
    (
        "split-batch",
        &[
            "reject-fused",
            "bind-inputs",
            "fold-constants",
            "dce",
            "require-static",
            "canonicalize",
            "halve-batch",
        ],
    ),
    (
        "compile",
        &[
            "reject-fused",
            "bind-inputs",
            "fold-constants",
            "dce",
            "require-static",
            "canonicalize",
            "partition",
        ],
    ),
    (
        "compile-band",
        &["local-types", "lower-group-norm", "insert-exchanges"],
    ),
];

/// The passes of pipeline `name` (see [`PIPELINES`]).
pub fn pipeline(name: &str) -> Result<&'static [&'static str], PassError> {
    PIPELINES
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, names)| *names)
        .ok_or_else(|| PassError::UnknownPipeline {
            name: name.to_string(),
            valid: PIPELINES
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Errors of the pass manager.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("unknown pass `{name}`; valid passes: {valid}")]
    UnknownPass { name: String, valid: String },
    #[error("unknown pipeline `{name}`; valid pipelines: {valid}")]
    UnknownPipeline { name: String, valid: String },
    #[error("pass `{name}` is not in this pipeline; its passes: {valid}")]
    NotInPipeline { name: String, valid: String },
    #[error("pass `{pass}` failed: {error:#}")]
    Failed {
        pass: &'static str,
        error: anyhow::Error,
    },
    #[error("the IR is invalid after pass `{pass}`: {error}\n--- graph after `{pass}` ---\n{dump}")]
    Verify {
        pass: &'static str,
        error: IrError,
        dump: String,
    },
    /// The graph breaks an invariant of its phase (see [`verify`]).
    #[error("after pass `{pass}`, the {phase} graph breaks its invariants: {error:#}")]
    Phase {
        pass: &'static str,
        phase: Phase,
        error: anyhow::Error,
    },
}

impl PassError {
    /// Whether the failure is dfc's own fault rather than a problem of the model or of the
    /// request. A failed IR verifier ([`PassError::Verify`]) or phase verifier
    /// ([`PassError::Phase`]) always is; a failed pass ([`PassError::Failed`]) is when its error
    /// is a [`PartitionError::Bug`](partition::PartitionError::Bug) or has an
    /// [`Internal`](crate::error::Internal) anywhere in its chain. Unknown pass and pipeline
    /// names are the user's. Callers map an internal fault to exit code 2.
    pub fn is_internal(&self) -> bool {
        match self {
            Self::Verify { .. } | Self::Phase { .. } => true,
            Self::Failed { error, .. } => {
                matches!(
                    error.downcast_ref::<partition::PartitionError>(),
                    Some(partition::PartitionError::Bug(_))
                ) || crate::error::is_internal(error)
            }
            Self::UnknownPass { .. }
            | Self::UnknownPipeline { .. }
            | Self::NotInPipeline { .. } => false,
        }
    }
}

/// Looks a pass up by name.
pub fn pass_by_name(name: &str) -> Result<&'static dyn Pass, PassError> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| PassError::UnknownPass {
            name: name.to_string(),
            valid: REGISTRY
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Time and effect of one pass run.
#[derive(Clone, Debug)]
pub struct PassTiming {
    pub pass: &'static str,
    pub duration: Duration,
    pub changed: bool,
}

/// What a [`PassManager::run`] did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub timings: Vec<PassTiming>,
    /// `(pass, dump)` for every pass named in `dump_after`.
    pub dumps: Vec<(&'static str, String)>,
    /// The pass the run stopped after, when `stop_after` cut it short.
    pub stopped_after: Option<&'static str>,
}

/// Runs a sequence of passes with verification, timing, stop-after and dump-after.
pub struct PassManager {
    passes: Vec<&'static dyn Pass>,
    /// Verify after every pass (always on in debug builds).
    pub verify: bool,
    stop_after: Option<&'static str>,
    dump_after: Vec<&'static str>,
}

impl PassManager {
    /// The passes of pipeline `name` (see [`PIPELINES`]).
    pub fn pipeline(name: &str) -> Result<Self, PassError> {
        Self::from_names(pipeline(name)?)
    }

    /// An explicit list of passes.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, PassError> {
        let passes = names
            .iter()
            .map(|n| pass_by_name(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            passes,
            verify: cfg!(debug_assertions),
            stop_after: None,
            dump_after: Vec::new(),
        })
    }

    fn in_pipeline(&self, name: &str) -> Result<&'static str, PassError> {
        self.passes
            .iter()
            .map(|p| p.name())
            .find(|p| *p == name)
            .ok_or_else(|| {
                pass_by_name(name)
                    .err()
                    .unwrap_or(PassError::NotInPipeline {
                        name: name.to_string(),
                        valid: self.pass_names().join(", "),
                    })
            })
    }

    /// Stops the run after the first execution of pass `name`.
    pub fn stop_after(mut self, name: &str) -> Result<Self, PassError> {
        self.stop_after = Some(self.in_pipeline(name)?);
        Ok(self)
    }

    /// Records a text dump of the graph after pass `name`.
    pub fn dump_after(mut self, name: &str) -> Result<Self, PassError> {
        let n = self.in_pipeline(name)?;
        self.dump_after.push(n);
        Ok(self)
    }

    /// Names of the passes, in order.
    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs the passes in order.
    pub fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<RunReport, PassError> {
        let mut report = RunReport::default();
        let verify = self.verify || cx.options.verify || cfg!(debug_assertions);
        for pass in &self.passes {
            let name = pass.name();
            let start = Instant::now();
            let changed = pass
                .run(g, cx)
                .map_err(|error| PassError::Failed { pass: name, error })?;
            let entered = pass.establishes().filter(|&p| p > g.phase);
            if let Some(p) = entered {
                g.phase = p;
            }
            if verify && let Err(error) = g.verify() {
                return Err(PassError::Verify {
                    pass: name,
                    error,
                    dump: g.dump(),
                });
            }
            // The local graph's invariants are checked always: the plan's rank graphs are it.
            if (verify || entered == Some(Phase::Local))
                && let Err(error) = verify::verify_phase(g, cx)
            {
                return Err(PassError::Phase {
                    pass: name,
                    phase: g.phase,
                    error,
                });
            }
            report.timings.push(PassTiming {
                pass: name,
                duration: start.elapsed(),
                changed,
            });
            if self.dump_after.contains(&name) {
                report.dumps.push((name, g.dump()));
            }
            if self.stop_after == Some(name) {
                report.stopped_after = Some(name);
                break;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
pub(crate) mod test_graphs {
    //! Small hand-built models for pass tests, in short names over the constructors of
    //! [`crate::onnx::proto`].
    use crate::ir::{DataType, Graph};
    use crate::onnx::proto::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
    use crate::tensor::Tensor;

    /// A value info with dims given as text (`"4"` fixed, `"h"` symbolic, `"?"` unknown).
    pub fn vi(name: &str, elem: DataType, dims: &[&str]) -> ValueInfoProto {
        ValueInfoProto::tensor(name, elem, dims)
    }

    pub fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
        NodeProto::new(op, name, ins, outs)
    }

    pub fn i64_init(name: &str, v: &[i64]) -> TensorProto {
        Tensor::from_i64s(v).to_proto(name)
    }

    /// The graph of a model named `test` importing the default domain at `opset`.
    pub fn model(
        nodes: Vec<NodeProto>,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        inits: Vec<TensorProto>,
        opset: i64,
    ) -> Graph {
        let m = ModelProto::new(
            GraphProto::new("test", nodes, inputs, outputs, inits),
            opset,
        );
        Graph::from_model(m).expect("test model is well formed")
    }

    /// `x[b,4,h,w] -> Shape -> Gather(0) -> Unsqueeze -> Concat([b, -1]) -> Reshape(x) -> y`.
    pub fn dynamic_reshape() -> Graph {
        let f = DataType::FLOAT;
        model(
            vec![
                node("Shape", "shape", &["x"], &["s"]),
                node("Gather", "gather", &["s", "zero"], &["b"]),
                node("Unsqueeze", "unsq", &["b", "axes0"], &["b1"]),
                node("Concat", "concat", &["b1", "minus1"], &["spec"]),
                node("Reshape", "reshape", &["x", "spec"], &["r"]),
                node("Relu", "relu", &["r"], &["y"]),
            ],
            vec![vi("x", f, &["batch", "4", "height", "width"])],
            vec![vi("y", f, &["batch", "?"])],
            vec![
                Tensor::scalar(0i64).to_proto("zero"),
                i64_init("axes0", &[0]),
                i64_init("minus1", &[-1]),
            ],
            13,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> PassContext {
        PassContext::new(ExternalStore::new(std::env::temp_dir()))
    }

    #[test]
    fn internal_faults_are_decided_by_type() {
        use partition::PartitionError;
        let failed = |error| PassError::Failed {
            pass: "partition",
            error,
        };
        assert!(failed(crate::internal!("a rule broke")).is_internal());
        let bug = anyhow::Error::new(PartitionError::Bug("rows lost".into()));
        assert!(failed(bug.context("node conv_in")).is_internal());
        assert!(!failed(anyhow::anyhow!("the model reads a missing value")).is_internal());
        let user = PartitionError::NoSpatialInput {
            inputs: "t: i64[1]".into(),
        };
        assert!(!failed(user.into()).is_internal());
        let phase = PassError::Phase {
            pass: "partition",
            phase: Phase::Partitioned,
            error: anyhow::anyhow!("value without layout"),
        };
        assert!(phase.is_internal());
        let unknown = PassError::UnknownPass {
            name: "nope".into(),
            valid: "dce".into(),
        };
        assert!(!unknown.is_internal());
    }

    #[test]
    fn unknown_names_list_valid_ones() {
        let e = PassManager::from_names(&["fold-constants", "nope"])
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("unknown pass `nope`"), "{e}");
        assert!(e.contains("infer-shapes") && e.contains("dce"), "{e}");
        let e = PassManager::pipeline("nope")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("specialize"), "{e}");
        let e = PassManager::pipeline("simplify")
            .and_then(|p| p.stop_after("infer-shapes"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not in this pipeline"), "{e}");
    }

    #[test]
    fn pipelines_name_registered_passes() {
        for (p, names) in PIPELINES {
            for n in *names {
                assert!(
                    pass_by_name(n).is_ok(),
                    "pipeline {p} names unknown pass {n}"
                );
            }
        }
    }

    #[test]
    fn stop_and_dump_after() -> anyhow::Result<()> {
        let mut g = test_graphs::dynamic_reshape();
        let mut c = cx();
        c.specialize.batch = Some(2);
        c.specialize.height = Some(8);
        c.specialize.width = Some(8);
        let pm = PassManager::pipeline("specialize")?
            .dump_after("bind-inputs")?
            .stop_after("fold-constants")?;
        let report = pm.run(&mut g, &mut c)?;
        assert_eq!(report.stopped_after, Some("fold-constants"));
        assert_eq!(report.timings.len(), 2);
        assert_eq!(report.dumps.len(), 1);
        assert!(
            report.dumps[0].1.contains("x: f32[2,4,8,8]"),
            "{}",
            report.dumps[0].1
        );
        Ok(())
    }
}
