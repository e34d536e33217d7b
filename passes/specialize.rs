//! Specialization to static shapes: `bind-inputs` fixes the symbolic input dimensions,
//! `fold-constants` then types and folds the graph, and `require-static` checks the result.
//! [`specialize`] runs the whole `specialize` pipeline; [`infer_shapes`] only types the graph.
//!
//! Binding rules. The *spatial input* is the first rank-4 floating-point graph input (a UNet's
//! latent `sample`, a VAE decoder's `latent_sample`): its dim 0 is the batch, dims 2 and 3 the
//! height and width. A symbolic dimension bound there binds every dimension of that name in
//! every input; a symbolic or unknown dim 0 of any other input gets the batch; `--dim NAME=VALUE`
//! binds a symbol explicitly (and wins over the rest).
//!
//! **Invariant:** after `bind-inputs`, every graph input has a static shape; after
//! `require-static`, every value of the graph has a static shape. `bind-inputs` rejects a size
//! that contradicts a fixed input dimension, a size that is not positive, a `--dim` name no input
//! uses, and symbolic dimensions left unbound (all listed at once). `require-static` rejects
//! unsupported operators (all listed at once, with counts), inconsistent nodes, and values whose
//! shape stayed unknown.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;

use super::{NodeIssue, Pass, PassContext, PassError, PassManager, PassTiming, UnsupportedOp};
use crate::ir::{Dim, Graph, IrError, TensorType, ValueType};
use crate::onnx::ExternalStore;

/// Sizes to bind; `None` leaves a dimension as the model has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecializeOptions {
    pub batch: Option<i64>,
    pub height: Option<i64>,
    pub width: Option<i64>,
    /// Explicit symbol bindings, `NAME=VALUE`; override the rules above.
    pub dims: Vec<(String, i64)>,
}

/// What [`specialize`] did.
#[derive(Clone, Debug, Default)]
pub struct SpecializeReport {
    /// Symbol → size, for every symbol bound.
    pub bindings: BTreeMap<String, i64>,
    /// Every graph input with its final shape.
    pub inputs: Vec<(String, Vec<i64>)>,
    /// Nodes replaced by constants.
    pub folded: usize,
    /// Nodes removed as dead (mostly the shape arithmetic feeding folded nodes).
    pub removed: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Declared types contradicted by inference, and other non-fatal notes.
    pub warnings: Vec<String>,
    pub timings: Vec<PassTiming>,
}

/// What [`infer_shapes`] found.
#[derive(Clone, Debug, Default)]
pub struct InferReport {
    pub unsupported: Vec<UnsupportedOp>,
    pub issues: Vec<NodeIssue>,
    pub warnings: Vec<String>,
    /// Values whose type is still unknown or not a tensor.
    pub untyped: usize,
    /// Values with a tensor type whose shape is not fully static.
    pub dynamic: usize,
}

/// A dimension that could not be bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnboundDim {
    pub input: String,
    pub axis: usize,
    /// The symbol, or `None` for an unnamed unknown dimension.
    pub symbol: Option<String>,
}

/// A value whose shape is not static after specialization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicValue {
    pub value: String,
    /// Its type as text (`f32[2,?,8]`, `?` when untyped).
    pub ty: String,
    /// `name (op)` of the producing node, if any.
    pub producer: Option<String>,
}

/// Errors of specialization; each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum SpecializeError {
    #[error("{what} must be positive, not {value}")]
    InvalidSize { what: String, value: i64 },
    #[error("{what} {given} contradicts input `{input}`, whose axis {axis} is fixed to {expected}")]
    Conflict {
        what: String,
        input: String,
        axis: usize,
        expected: i64,
        given: i64,
    },
    #[error(
        "--height/--width name the spatial input, but the model has no rank-4 floating-point input (inputs: {inputs})"
    )]
    NoSpatialInput { inputs: String },
    #[error("--dim {name}: no input has a dimension named `{name}` (symbols: {known})")]
    UnknownDim { name: String, known: String },
    #[error("{}", unbound_text(.0))]
    Unbound(Vec<UnboundDim>),
    #[error("{}", unsupported_text(.0))]
    UnsupportedOps(Vec<UnsupportedOp>),
    #[error("{} node(s) are inconsistent:\n{}", .0.len(), list_text(.0))]
    InvalidNodes(Vec<NodeIssue>),
    #[error("{}", dynamic_text(.0))]
    NotStatic(Vec<DynamicValue>),
    #[error("invalid graph: {0}")]
    Ir(#[from] IrError),
    #[error(transparent)]
    Pass(PassError),
}

fn list_text<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn unbound_text(dims: &[UnboundDim]) -> String {
    let mut s = format!("{} input dimension(s) are still symbolic:", dims.len());
    let mut names: Vec<&str> = Vec::new();
    for d in dims {
        match &d.symbol {
            Some(n) => {
                s += &format!("\n  input `{}` axis {}: `{n}`", d.input, d.axis);
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
            None => s += &format!("\n  input `{}` axis {}: unnamed", d.input, d.axis),
        }
    }
    if names.is_empty() {
        s += "\nthe model leaves them unnamed; re-export it with named or fixed dimensions";
    } else {
        let hint: Vec<String> = names.iter().map(|n| format!("--dim {n}=VALUE")).collect();
        s += &format!("\ngive their sizes with {}", hint.join(" "));
    }
    s
}

fn unsupported_text(ops: &[UnsupportedOp]) -> String {
    let mut s = format!("{} operator type(s) are not supported:", ops.len());
    for o in ops {
        s += &format!(
            "\n  {} ({} node{}, first `{}`)",
            o.op,
            o.count,
            if o.count == 1 { "" } else { "s" },
            o.first_node
        );
    }
    s
}

const SHOWN: usize = 20;

fn dynamic_text(vals: &[DynamicValue]) -> String {
    let mut s = format!(
        "{} value(s) have no static shape after specialization:",
        vals.len()
    );
    for v in vals.iter().take(SHOWN) {
        s += &format!("\n  `{}`: {}", v.value, v.ty);
        if let Some(p) = &v.producer {
            s += &format!(" (from {p})");
        }
    }
    if vals.len() > SHOWN {
        s += &format!("\n  … and {} more", vals.len() - SHOWN);
    }
    s
}

/// Specializes `graph` to static shapes (see the module documentation) and folds everything
/// that becomes constant. On success every value has a static shape; on error the graph may be
/// partly rewritten and should be discarded.
pub fn specialize(
    graph: &mut Graph,
    store: &ExternalStore,
    opts: &SpecializeOptions,
) -> Result<SpecializeReport, SpecializeError> {
    let nodes_before = graph.node_count();
    let mut cx = PassContext::new(store.clone());
    cx.specialize = opts.clone();
    let pm = PassManager::pipeline("specialize").map_err(SpecializeError::Pass)?;
    let run = pm.run(graph, &mut cx).map_err(|e| match e {
        PassError::Failed { error, pass } => match error.downcast::<SpecializeError>() {
            Ok(se) => se,
            Err(error) => SpecializeError::Pass(PassError::Failed { pass, error }),
        },
        other => SpecializeError::Pass(other),
    })?;
    let mut warnings = cx.diagnostics.warnings;
    warnings.dedup();
    Ok(SpecializeReport {
        inputs: graph
            .inputs
            .iter()
            .map(|&v| {
                let dims = graph
                    .value(v)
                    .tensor_type()
                    .and_then(TensorType::static_dims)
                    .unwrap_or_default();
                (graph.value(v).name.clone(), dims)
            })
            .collect(),
        bindings: cx.bindings,
        folded: cx.diagnostics.folded,
        removed: cx.diagnostics.removed,
        nodes_before,
        nodes_after: graph.node_count(),
        warnings,
        timings: run.timings,
    })
}

/// Types every value without binding anything (for `dfc inspect`); unsupported operators and
/// inconsistent nodes are reported, not errors.
pub fn infer_shapes(
    graph: &mut Graph,
    store: &ExternalStore,
) -> Result<InferReport, SpecializeError> {
    let mut cx = PassContext::new(store.clone());
    PassManager::pipeline("infer")
        .and_then(|pm| pm.run(graph, &mut cx))
        .map_err(SpecializeError::Pass)?;
    let mut report = InferReport {
        unsupported: cx.diagnostics.unsupported.into_values().collect(),
        issues: cx.diagnostics.issues,
        warnings: cx.diagnostics.warnings,
        ..Default::default()
    };
    for v in graph.value_ids() {
        match graph.value(v).tensor_type() {
            Some(t) if t.static_dims().is_some() => {}
            Some(_) => report.dynamic += 1,
            None => report.untyped += 1,
        }
    }
    Ok(report)
}

/// `bind-inputs`: see the module documentation.
pub struct BindInputs;

impl Pass for BindInputs {
    fn name(&self) -> &'static str {
        "bind-inputs"
    }
    fn description(&self) -> &'static str {
        "fix symbolic input dimensions from --batch/--height/--width/--dim"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let bindings = bind(g, &cx.specialize)?;
        let mut changed = false;
        // Substitute everywhere, declared intermediate types included.
        let ids: Vec<_> = g.value_ids().collect();
        for v in ids {
            let is_input = g.inputs.contains(&v);
            let val = g.value_mut(v);
            if let Some(ValueType::Tensor(t)) = &mut val.ty
                && let Some(dims) = &mut t.shape
            {
                for (axis, d) in dims.iter_mut().enumerate() {
                    let new = match d {
                        Dim::Symbol(s) => bindings.symbols.get(s).copied(),
                        Dim::Unknown if is_input => bindings.unnamed.get(&(v, axis)).copied(),
                        _ => None,
                    };
                    if let Some(n) = new {
                        *d = Dim::Fixed(n);
                        changed = true;
                    }
                }
            }
        }
        cx.bindings = bindings.symbols;
        Ok(changed)
    }
}

struct Bindings {
    symbols: BTreeMap<String, i64>,
    unnamed: BTreeMap<(crate::ir::ValueId, usize), i64>,
}

fn bind(g: &Graph, opts: &SpecializeOptions) -> Result<Bindings, SpecializeError> {
    for (what, v) in [
        ("--batch", opts.batch),
        ("--height", opts.height),
        ("--width", opts.width),
    ] {
        if let Some(v) = v
            && v <= 0
        {
            return Err(SpecializeError::InvalidSize {
                what: what.into(),
                value: v,
            });
        }
    }
    for (n, v) in &opts.dims {
        if *v <= 0 {
            return Err(SpecializeError::InvalidSize {
                what: format!("--dim {n}"),
                value: *v,
            });
        }
    }
    // Real inputs only: initializers listed as inputs are not bound.
    let inputs: Vec<_> = g
        .inputs
        .iter()
        .copied()
        .filter(|&v| g.value(v).init.is_none())
        .collect();
    let dims_of = |v| g.value(v).tensor_type().and_then(|t| t.shape.clone());
    let spatial = g.spatial_input();
    let mut symbols: BTreeMap<String, i64> = BTreeMap::new();
    let mut unnamed = BTreeMap::new();
    let wants_spatial = opts.height.is_some() || opts.width.is_some();
    match spatial {
        Some(sv) => {
            let name = &g.value(sv).name;
            let dims = dims_of(sv).unwrap_or_default();
            for (axis, what, given) in [
                (0, "--batch", opts.batch),
                (2, "--height", opts.height),
                (3, "--width", opts.width),
            ] {
                let Some(given) = given else { continue };
                match &dims[axis] {
                    Dim::Fixed(e) if *e != given => {
                        return Err(SpecializeError::Conflict {
                            what: what.into(),
                            input: name.clone(),
                            axis,
                            expected: *e,
                            given,
                        });
                    }
                    Dim::Fixed(_) => {}
                    Dim::Symbol(s) => {
                        if let Some(&prev) = symbols.get(s)
                            && prev != given
                        {
                            return Err(SpecializeError::Conflict {
                                what: what.into(),
                                input: name.clone(),
                                axis,
                                expected: prev,
                                given,
                            });
                        }
                        symbols.insert(s.clone(), given);
                    }
                    Dim::Unknown => {
                        unnamed.insert((sv, axis), given);
                    }
                }
            }
        }
        None if wants_spatial => {
            return Err(SpecializeError::NoSpatialInput {
                inputs: inputs
                    .iter()
                    .map(|&v| {
                        let t = g
                            .value(v)
                            .tensor_type()
                            .map(|t| t.to_string())
                            .unwrap_or("?".into());
                        format!("{}: {t}", g.value(v).name)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        None => {}
    }
    // Dim 0 of the other inputs takes the batch.
    if let Some(b) = opts.batch {
        for &v in &inputs {
            if Some(v) == spatial {
                continue;
            }
            match dims_of(v).as_deref().and_then(|d| d.first()) {
                Some(Dim::Symbol(s)) => {
                    symbols.entry(s.clone()).or_insert(b);
                }
                Some(Dim::Unknown) => {
                    unnamed.insert((v, 0), b);
                }
                _ => {}
            }
        }
    }
    // Explicit names win.
    let all_symbols: Vec<String> = inputs
        .iter()
        .flat_map(|&v| dims_of(v).unwrap_or_default())
        .filter_map(|d| match d {
            Dim::Symbol(s) => Some(s),
            _ => None,
        })
        .collect();
    for (n, val) in &opts.dims {
        if !all_symbols.contains(n) {
            let mut known = all_symbols.clone();
            known.sort();
            known.dedup();
            return Err(SpecializeError::UnknownDim {
                name: n.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        symbols.insert(n.clone(), *val);
    }
    // Conflicts between explicit names and fixed dims are impossible (a fixed dim has no name);
    // what is left unbound is an error, listed in full.
    let mut unbound = Vec::new();
    for &v in &inputs {
        for (axis, d) in dims_of(v).unwrap_or_default().iter().enumerate() {
            let missing = match d {
                Dim::Symbol(s) => (!symbols.contains_key(s)).then(|| Some(s.clone())),
                Dim::Unknown => (!unnamed.contains_key(&(v, axis))).then_some(None),
                Dim::Fixed(_) => None,
            };
            if let Some(symbol) = missing {
                unbound.push(UnboundDim {
                    input: g.value(v).name.clone(),
                    axis,
                    symbol,
                });
            }
        }
        if g.value(v).tensor_type().is_some_and(|t| t.shape.is_none()) {
            return Err(SpecializeError::NotStatic(vec![DynamicValue {
                value: g.value(v).name.clone(),
                ty: "input of unknown rank".into(),
                producer: None,
            }]));
        }
    }
    if !unbound.is_empty() {
        return Err(SpecializeError::Unbound(unbound));
    }
    Ok(Bindings { symbols, unnamed })
}

/// `require-static`: see the module documentation.
pub struct RequireStatic;

impl Pass for RequireStatic {
    fn establishes(&self) -> Option<crate::ir::Phase> {
        Some(crate::ir::Phase::Specialized)
    }
    fn name(&self) -> &'static str {
        "require-static"
    }
    fn description(&self) -> &'static str {
        "fail unless every value has a static shape (lists unsupported ops and dynamic values)"
    }
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<bool> {
        let d = &cx.diagnostics;
        if !d.unsupported.is_empty() {
            return Err(
                SpecializeError::UnsupportedOps(d.unsupported.values().cloned().collect()).into(),
            );
        }
        if !d.issues.is_empty() {
            return Err(SpecializeError::InvalidNodes(d.issues.clone()).into());
        }
        let mut dynamic = Vec::new();
        for v in g.value_ids() {
            let val = g.value(v);
            let ok = val.tensor_type().is_some_and(|t| t.static_dims().is_some());
            if ok {
                continue;
            }
            dynamic.push(DynamicValue {
                value: val.name.clone(),
                ty: match &val.ty {
                    Some(ValueType::Tensor(t)) => t.to_string(),
                    Some(ValueType::Other(_)) => "not a tensor".into(),
                    None => "?".into(),
                },
                producer: val.producer().map(|(n, _)| {
                    let n = g.node(n);
                    format!("`{}` ({})", n.name, n.op_type)
                }),
            });
        }
        if !dynamic.is_empty() {
            return Err(SpecializeError::NotStatic(dynamic).into());
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::passes::test_graphs::{dynamic_reshape, model, node, vi};

    fn store() -> ExternalStore {
        ExternalStore::new(std::env::temp_dir())
    }

    fn opts(b: Option<i64>, h: Option<i64>, w: Option<i64>) -> SpecializeOptions {
        SpecializeOptions {
            batch: b,
            height: h,
            width: w,
            dims: vec![],
        }
    }

    #[test]
    fn specializes_dynamic_reshape() -> Result<()> {
        let mut g = dynamic_reshape();
        let r = specialize(&mut g, &store(), &opts(Some(1), Some(6), Some(4)))?;
        assert_eq!(r.bindings.get("height"), Some(&6));
        assert_eq!(r.inputs, vec![("x".to_string(), vec![1, 4, 6, 4])]);
        assert_eq!(g.node_count(), 2);
        let y = g.outputs[0];
        assert_eq!(
            g.value(y).tensor_type().map(|t| t.to_string()),
            Some("f32[1,96]".into())
        );
        Ok(())
    }

    #[test]
    fn unbound_symbols_are_listed_with_a_hint() {
        let f = DataType::FLOAT;
        let mut g = model(
            vec![node("MatMul", "mm", &["a", "b"], &["y"])],
            vec![vi("a", f, &["batch", "seq", "8"]), vi("b", f, &["8", "n"])],
            vec![vi("y", f, &["?", "?", "?"])],
            vec![],
            17,
        );
        let e = specialize(&mut g, &store(), &opts(Some(2), None, None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("`seq`") && e.contains("`n`") && e.contains("--dim seq=VALUE"),
            "{e}"
        );
        let mut o = opts(Some(2), None, None);
        o.dims = vec![("seq".into(), 3), ("n".into(), 5)];
        let r = specialize(&mut g, &store(), &o);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            g.value(g.outputs[0]).tensor_type().map(|t| t.to_string()),
            Some("f32[2,3,5]".into())
        );
    }

    #[test]
    fn conflicts_and_bad_names_are_errors() {
        let mut g = dynamic_reshape();
        let e = specialize(&mut g, &store(), &opts(Some(0), None, None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--batch must be positive"), "{e}");
        let mut o = opts(Some(1), Some(8), Some(8));
        o.dims = vec![("nope".into(), 3)];
        let e = specialize(&mut g, &store(), &o)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nope") && e.contains("height"), "{e}");

        let f = DataType::FLOAT;
        let mut g = model(
            vec![node("Relu", "r", &["x"], &["y"])],
            vec![vi("x", f, &["2", "4", "32", "32"])],
            vec![vi("y", f, &["2", "4", "32", "32"])],
            vec![],
            17,
        );
        let e = specialize(&mut g, &store(), &opts(None, Some(64), None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("--height 64")
                && e.contains("`x`")
                && e.contains("axis 2")
                && e.contains("32"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_ops_are_listed_together() {
        let f = DataType::FLOAT;
        let mut g = model(
            vec![
                node("Foo", "foo1", &["x"], &["a"]),
                node("Foo", "foo2", &["a"], &["b"]),
                node("Bar", "bar", &["b"], &["y"]),
            ],
            vec![vi("x", f, &["2"])],
            vec![vi("y", f, &["2"])],
            vec![],
            17,
        );
        let e = specialize(&mut g, &store(), &SpecializeOptions::default()).err();
        let text = e.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            matches!(e, Some(SpecializeError::UnsupportedOps(_))),
            "{text}"
        );
        assert!(
            text.contains("Foo (2 nodes, first `foo1`)") && text.contains("Bar (1 node"),
            "{text}"
        );
    }

    #[test]
    fn infer_shapes_reports_without_failing() -> Result<()> {
        let mut g = dynamic_reshape();
        let r = infer_shapes(&mut g, &store())?;
        assert!(r.unsupported.is_empty());
        assert!(r.dynamic > 0);
        let y = g
            .value_by_name("r")
            .and_then(|v| g.value(v).tensor_type().map(|t| t.to_string()));
        assert_eq!(y, Some("f32[?,?]".into()));
        Ok(())
    }
}

#[cfg(test)]
mod fixture_tests {
    //! Specializes the committed fixtures (`models/`). Set `DFC_SPECIALIZE_OUT` to a folder to
    //! also write the specialized models there for a differential check in ONNX Runtime.
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> Vec<PathBuf> {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"));
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.push(dir.join("sd15_tiny_external").join("model.onnx"));
        v.retain(|p| p.extension().is_some_and(|e| e == "onnx") && p.is_file());
        v.sort();
        v
    }

    fn run(path: &Path, opts: &SpecializeOptions, tag: &str) -> anyhow::Result<()> {
        let model = crate::onnx::load(path)?;
        let store = model.external_store();
        let mut g = Graph::from_model(model.proto)?;
        let r = specialize(&mut g, &store, opts)?;
        g.verify()?;
        for v in g.value_ids() {
            let t = g.value(v).tensor_type();
            assert!(
                t.is_some_and(|t| t.static_dims().is_some()),
                "{}: `{}` not static",
                path.display(),
                g.value(v).name
            );
        }
        println!(
            "{} [{tag}]: {} -> {} nodes, {} folded, inputs {:?}",
            path.display(),
            r.nodes_before,
            r.nodes_after,
            r.folded,
            r.inputs
        );
        if let Some(out) = std::env::var_os("DFC_SPECIALIZE_OUT") {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let parent = path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|s| s.to_str())
                .unwrap_or("");
            let name = if stem == "model" {
                parent.to_string()
            } else {
                stem.to_string()
            };
            let dir = PathBuf::from(out);
            let proto = g.to_model()?;
            let out_path = dir.join(format!("{name}.{tag}.onnx"));
            if let Some(gp) = proto.graph.as_ref() {
                crate::onnx::external::share_into(gp, &model.dir, &dir)?;
            }
            crate::onnx::save(&proto, &out_path)?;
        }
        Ok(())
    }

    #[test]
    fn fixtures_specialize_to_static() -> anyhow::Result<()> {
        let files = fixtures();
        // The fixtures are committed: finding none means the path is wrong, not a skip.
        anyhow::ensure!(!files.is_empty(), "no fixtures found in models/");
        for f in files {
            let name = f.to_string_lossy().to_string();
            if name.contains("dynamic") {
                let o = |b, h, w| SpecializeOptions {
                    batch: Some(b),
                    height: Some(h),
                    width: Some(w),
                    dims: vec![("sequence".into(), 8)],
                };
                run(&f, &o(2, 32, 32), "b2_32x32")?;
                run(&f, &o(1, 64, 48), "b1_64x48")?;
            } else {
                run(&f, &SpecializeOptions::default(), "static")?;
                // Plain inference types a static model completely without rewriting it.
                let model = crate::onnx::load(&f)?;
                let store = model.external_store();
                let mut g = Graph::from_model(model.proto)?;
                let nodes = g.node_count();
                let r = infer_shapes(&mut g, &store)?;
                assert_eq!(
                    (r.dynamic, r.untyped, g.node_count()),
                    (0, 0, nodes),
                    "{name}"
                );
                assert!(
                    r.unsupported.is_empty() && r.issues.is_empty(),
                    "{name}: {r:?}"
                );
            }
        }
        Ok(())
    }
}
