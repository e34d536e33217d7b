//! `libtriton_dfc.so`: the `dfc` backend of NVIDIA Triton Inference Server.
//!
//! Triton loads it from `BACKEND_DIR/dfc/` for every model whose `config.pbtxt` says
//! `backend: "dfc"` (written by `dfc triton`). One model instance is one lockstep group of the
//! plan's ranks ([`dfc_runtime::serving::Instance`]: the CPU executor, every rank a thread, the
//! sessions created once when the instance starts). Requests of one `execute` call run one
//! after another; concurrency comes from instances. See `docs/serving.md`.
//!
//! Every entry point catches panics and turns them into Triton errors; every request gets
//! exactly one response (an error response for a bad request, a cancelled request or a failed
//! rank) and is released, so the server and the instance stay up.

mod backend;
mod sys;

pub use backend::*;
