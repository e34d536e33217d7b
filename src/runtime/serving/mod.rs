//! Serving a plan behind an inference server: what the `dfc` Triton backend
//! (`libtriton_dfc.so`, crate `dfc-triton`) and `dfc triton` share, free of any server API.
//!
//! - [`repo`]: the model repository `dfc triton` writes (`config.pbtxt`, the plan's files
//!   linked into the version folder, a manifest of their digests) and its check at load time;
//! - [`request`]: the request contract (one input per conditioning array of `dfc run`'s
//!   `--inputs`, the scalars [`SEED`], [`STEPS`], [`GUIDANCE`] and optional [`SCHEDULER`]),
//!   raw server tensors checked and turned into a sampling job, every error naming its input;
//! - [`instance`]: one model instance, the plan's ranks loaded once and kept across requests,
//!   a request's cancellation honoured between steps, the ranks rebuilt after a failure.
//!
//! **Invariant:** a served request computes what `dfc run` computes for the same plan,
//! conditioning, seed, steps, guidance and scheduler: both go through
//! [`crate::sampling::sample_until`] with the same [`crate::sampling::SampleOptions`].

pub mod instance;
pub mod repo;
pub mod request;

pub use instance::{Instance, Outcome, RunFailure};
pub use repo::{Manifest, RepoError, RepoOptions, write_repository};
pub use request::{DataType, Job, RawInput, RequestError, Settings, parse_job};

/// Name of the seed input (INT64, `[1]`).
pub const SEED: &str = "seed";
/// Name of the step-count input (INT32, `[1]`).
pub const STEPS: &str = "steps";
/// Name of the guidance-scale input (FP32, `[1]`; 1 samples the batch as is).
pub const GUIDANCE: &str = "guidance";
/// Name of the optional scheduler input (BYTES, `[1]`: `ddim`, `euler` or `dpmpp2m`).
pub const SCHEDULER: &str = "scheduler";
/// Name of the final-latent output (FP32, `[n, C, H, W]`).
pub const LATENT: &str = "latent";
/// Name of the image output (UINT8, `[n, H, W, 3]`), present when the model has a VAE.
pub const IMAGE: &str = "image";
