//! Running one ONNX model file in ONNX Runtime (CPU) on named host tensors.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::operator::OperatorDomain;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::host::HostTensor;
use super::ort_env::{self, OrtEnvError};

/// Errors of running a model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Env(#[from] OrtEnvError),
    #[error("ONNX Runtime cannot load {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("model {path} has no input `{name}` (its inputs: {known})")]
    UnknownInput {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("model {path}: input `{0}` is missing", .missing.join("`, `"))]
    MissingInputs { path: PathBuf, missing: Vec<String> },
    #[error("model {path}: output `{name}` has element type {ty}; dfc reads f32, f16 and i64")]
    UnsupportedOutput {
        path: PathBuf,
        name: String,
        ty: String,
    },
    #[error("ONNX Runtime failed running {path}: {message}")]
    Run { path: PathBuf, message: String },
}

/// Options of a CPU session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    pub threads: usize,
    /// Whether ONNX Runtime may rewrite the graph (all levels); off runs it as written.
    pub optimize: bool,
    /// Whether idle intra-op threads spin before sleeping (ONNX Runtime's default). Worth it
    /// when the session has its cores to itself; wasteful when ranks share them.
    pub spin: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            optimize: true,
            spin: true,
        }
    }
}

/// An ONNX Runtime CPU session of one model file.
pub struct ModelSession {
    session: Session,
    path: PathBuf,
}

impl ModelSession {
    /// Loads `path` (its external data is resolved next to it).
    pub fn new(path: &Path, options: SessionOptions) -> Result<Self, RunError> {
        Self::open(path, options, Ok::<_, String>)
    }

    /// Loads `path` with custom operator `domains` registered, for lockstep execution beside
    /// other sessions: nodes run one at a time in one order (no parallel executor, one
    /// inter-op thread); intra-op threads spin only if `options.spin`.
    ///
    /// Sessions may be created concurrently: the first one in the process is created alone,
    /// because ONNX Runtime registers a custom domain in a process-wide table without a lock
    /// (two sessions registering `dfc` at once fail with "domain is already exist").
    pub fn with_operators(
        path: &Path,
        options: SessionOptions,
        domains: Vec<OperatorDomain>,
    ) -> Result<Self, RunError> {
        static REGISTERED: Mutex<bool> = Mutex::new(false);
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        if *registered {
            drop(registered);
            return Self::open_with_operators(path, options, domains);
        }
        let session = Self::open_with_operators(path, options, domains)?;
        *registered = true;
        Ok(session)
    }

    fn open_with_operators(
        path: &Path,
        options: SessionOptions,
        domains: Vec<OperatorDomain>,
    ) -> Result<Self, RunError> {
        Self::open(path, options, move |b| {
            let msg = |e: ort::Error<SessionBuilder>| e.to_string();
            let mut b = b
                .with_parallel_execution(false)
                .map_err(msg)?
                .with_inter_threads(1)
                .map_err(msg)?
                .with_intra_op_spinning(options.spin)
                .map_err(msg)?
                .with_inter_op_spinning(false)
                .map_err(msg)?;
            for d in domains {
                b = b.with_operators(d).map_err(msg)?;
            }
            Ok(b)
        })
    }

    fn open(
        path: &Path,
        options: SessionOptions,
        configure: impl FnOnce(SessionBuilder) -> Result<SessionBuilder, String>,
    ) -> Result<Self, RunError> {
        let env = ort_env::environment()?;
        let err = |e: &dyn std::fmt::Display| RunError::Session {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(env).map_err(|e| err(&e))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| err(&e))?;
        }
        if !options.optimize {
            builder = builder
                .with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(|e| err(&e))?;
        }
        builder = configure(builder).map_err(|e| err(&e))?;
        let session = builder.commit_from_file(path).map_err(|e| err(&e))?;
        Ok(Self {
            session,
            path: path.to_path_buf(),
        })
    }

    /// Names of the model's inputs, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect()
    }

    /// Names of the model's outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// Runs the model. Every model input must be given; entries whose name is not an input
    /// are an error unless `ignore_extra` (an `.io.npz` holds outputs too). Returns every
    /// output, in the model's order.
    pub fn run(
        &mut self,
        inputs: &[(String, HostTensor)],
        ignore_extra: bool,
    ) -> Result<Vec<(String, HostTensor)>, RunError> {
        let names = self.input_names();
        let run_err = |e: &dyn std::fmt::Display| RunError::Run {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let mut feed: Vec<(String, DynValue)> = Vec::new();
        for (name, t) in inputs {
            if !names.contains(name) {
                if ignore_extra {
                    continue;
                }
                return Err(RunError::UnknownInput {
                    path: self.path.clone(),
                    name: name.clone(),
                    known: names.join(", "),
                });
            }
            let v = match t {
                HostTensor::F32(a) => Tensor::from_array(a.clone()).map(Tensor::into_dyn),
                HostTensor::F16(a) => Tensor::from_array(a.clone()).map(Tensor::into_dyn),
                HostTensor::I64(a) => Tensor::from_array(a.clone()).map(Tensor::into_dyn),
            }
            .map_err(|e| run_err(&e))?;
            feed.push((name.clone(), v));
        }
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !feed.iter().any(|(f, _)| f == *n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(RunError::MissingInputs {
                path: self.path.clone(),
                missing,
            });
        }
        let path = self.path.clone();
        let outputs = self.session.run(feed).map_err(|e| RunError::Run {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut result = Vec::new();
        for (name, value) in outputs.iter() {
            let ty = match value.dtype() {
                ValueType::Tensor { ty, .. } => *ty,
                other => {
                    return Err(RunError::UnsupportedOutput {
                        path,
                        name: name.to_string(),
                        ty: other.to_string(),
                    });
                }
            };
            let extract_err = |e: ort::Error| RunError::Run {
                path: path.clone(),
                message: format!("reading output `{name}`: {e}"),
            };
            let t = match ty {
                TensorElementType::Float32 => HostTensor::F32(
                    value
                        .try_extract_array::<f32>()
                        .map_err(extract_err)?
                        .to_owned(),
                ),
                TensorElementType::Float16 => HostTensor::F16(
                    value
                        .try_extract_array::<half::f16>()
                        .map_err(extract_err)?
                        .to_owned(),
                ),
                TensorElementType::Int64 => HostTensor::I64(
                    value
                        .try_extract_array::<i64>()
                        .map_err(extract_err)?
                        .to_owned(),
                ),
                other => {
                    return Err(RunError::UnsupportedOutput {
                        path,
                        name: name.to_string(),
                        ty: other.to_string(),
                    });
                }
            };
            result.push((name.to_string(), t));
        }
        Ok(result)
    }
}

/// Loads `path` and runs it once on `inputs` (entries that are not model inputs are ignored).
pub fn run_model(
    path: &Path,
    inputs: &[(String, HostTensor)],
    options: SessionOptions,
) -> Result<Vec<(String, HostTensor)>, RunError> {
    ModelSession::new(path, options)?.run(inputs, true)
}
