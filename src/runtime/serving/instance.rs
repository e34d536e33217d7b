//! One served model instance: a lockstep group of the plan's ranks (the CPU executor: every
//! rank a thread, every session created once) and the optional VAE decoder, kept across
//! requests. Requests run one after another; a failed rank fails its request and the ranks are
//! loaded again before the next one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::ArrayD;

use super::request::{Job, Settings};
use crate::bands::BandError;
use crate::image::VaeDecoder;
use crate::plan::Plan;
use crate::plan_exec::{ExecError, ExecOptions, PlanExecutor};
use crate::sampling::{SampleError, sample_until};

/// What a request produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final latent `[n, C, H, W]`.
    pub latent: ArrayD<f32>,
    /// The images, `[n, H, W, 3]` RGB bytes, when the instance decodes.
    pub image: Option<(Vec<u8>, [usize; 4])>,
    /// Wall time of every step (seconds).
    pub step_seconds: Vec<f64>,
}

/// Why a request did not produce an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// The request was cancelled between two steps.
    #[error("the request was cancelled after {done} of {steps} steps")]
    Cancelled { done: usize, steps: usize },
    /// The request does not fit the plan (nothing failed inside a rank).
    #[error("{0}")]
    Request(String),
    /// A rank (or the decoder) failed; the ranks were loaded again (`reloaded` says whether
    /// that worked: if not, the next request tries again).
    #[error("{message}{}", if *reloaded { "" } else { " (loading the ranks again failed too)" })]
    Rank { message: String, reloaded: bool },
}

/// A model instance (see the module documentation).
pub struct Instance {
    dir: PathBuf,
    exec_options: ExecOptions,
    exec: Option<PlanExecutor>,
    plan: Plan,
    vae: Option<(PathBuf, VaeDecoder)>,
    settings: Settings,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl Instance {
    /// Loads the plan folder `dir` (every rank's session) and the VAE decoder at `vae`, using
    /// `threads` cores in all (0: every core).
    pub fn load(
        dir: &Path,
        vae: Option<&Path>,
        settings: Settings,
        threads: usize,
    ) -> Result<Self, String> {
        let exec_options = ExecOptions {
            threads,
            ..ExecOptions::default()
        };
        let exec = PlanExecutor::load(dir, exec_options)
            .map_err(|e| format!("loading the plan {}: {}", dir.display(), chain(&e)))?;
        let plan = exec.plan().clone();
        super::request::conditioning(&plan)?;
        let vae = match vae {
            Some(path) => Some((
                path.to_path_buf(),
                VaeDecoder::open(path, settings.vae_scale, threads)
                    .map_err(|e| format!("loading the VAE {}: {}", path.display(), chain(&e)))?,
            )),
            None => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            exec_options,
            exec: Some(exec),
            plan,
            vae,
            settings,
        })
    }

    /// The plan served.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the instance decodes images.
    pub fn has_vae(&self) -> bool {
        self.vae.is_some()
    }

    /// Runs one job. `go_on` is asked after every step (false cancels the request); `step`
    /// hears every finished step's index and wall time.
    pub fn run(
        &mut self,
        job: &Job,
        mut go_on: impl FnMut() -> bool,
        mut step: impl FnMut(usize, f64),
    ) -> Result<Outcome, RunFailure> {
        if self.exec.is_none() {
            self.reload().map_err(|message| RunFailure::Rank {
                message,
                reloaded: false,
            })?;
        }
        let Some(exec) = self.exec.as_mut() else {
            return Err(RunFailure::Rank {
                message: "the ranks are not loaded".into(),
                reloaded: false,
            });
        };
        let mut last = Instant::now();
        let sampled = sample_until(exec, &job.cond, &job.options, |done| {
            step(done - 1, last.elapsed().as_secs_f64());
            last = Instant::now();
            go_on()
        });
        let sampled = match sampled {
            Ok(s) => s,
            Err(SampleError::Cancelled { done, steps }) => {
                return Err(RunFailure::Cancelled { done, steps });
            }
            Err(e @ (SampleError::Options(_) | SampleError::Plan(_) | SampleError::Sampler(_))) => {
                return Err(RunFailure::Request(chain(&e)));
            }
            Err(SampleError::Exec(ExecError::Bands(
                e @ (BandError::Input { .. } | BandError::MissingInput { .. }),
            ))) => {
                return Err(RunFailure::Request(chain(&e)));
            }
            Err(e) => return Err(self.failed(chain(&e))),
        };
        let image = match &mut self.vae {
            Some((path, vae)) => {
                let images = vae.decode(&sampled.latent).map_err(|e| {
                    RunFailure::Request(format!("decoding with {}: {}", path.display(), chain(&e)))
                })?;
                Some(pack(&images))
            }
            None => None,
        };
        Ok(Outcome {
            latent: sampled.latent,
            image,
            step_seconds: sampled.step_seconds,
        })
    }

    /// After a rank failed: drop the ranks and load them again.
    fn failed(&mut self, message: String) -> RunFailure {
        self.exec = None;
        let reloaded = self.reload().is_ok();
        RunFailure::Rank { message, reloaded }
    }

    fn reload(&mut self) -> Result<(), String> {
        let exec = PlanExecutor::load(&self.dir, self.exec_options)
            .map_err(|e| format!("loading the plan {}: {}", self.dir.display(), chain(&e)))?;
        self.exec = Some(exec);
        Ok(())
    }
}

/// Images as one `[n, H, W, 3]` byte array.
fn pack(images: &[crate::image::Image]) -> (Vec<u8>, [usize; 4]) {
    let (w, h) = images.first().map_or((0, 0), |i| (i.width, i.height));
    let mut bytes = Vec::with_capacity(images.len() * w * h * 3);
    for i in images {
        bytes.extend_from_slice(&i.to_rgb8());
    }
    (bytes, [images.len(), h, w, 3])
}
