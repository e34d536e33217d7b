//! The C ABI of `libdfc_trt_plugins.so` (`plugins/tensorrt/include/dfc_plugin.h`), loaded with
//! libloading: one [`PluginContext`] per rank.
//!
//! The library must be the one TensorRT loaded the plugins from (same path: the dynamic
//! loader then hands out the same image, so the context created here is the one the plugins'
//! `enqueue` finds).

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;
use std::sync::Arc;

use libloading::Library;

use super::GpuError;

/// `DFC_ABI_VERSION` this runtime speaks.
pub const ABI_VERSION: u32 = 1;
/// `DFC_TRANSPORT_NCCL`.
pub const TRANSPORT_NCCL: i32 = 0;
/// `DFC_TRANSPORT_LOCAL`.
pub const TRANSPORT_LOCAL: i32 = 1;

type Opaque = c_void;

/// The library's entry points.
pub struct PluginLib {
    _lib: Library,
    abi_version: unsafe extern "C" fn() -> u32,
    last_error: unsafe extern "C" fn() -> *const c_char,
    local_group_create: unsafe extern "C" fn(i32, u32, *mut *mut Opaque) -> i32,
    local_group_destroy: unsafe extern "C" fn(*mut Opaque) -> i32,
    #[allow(clippy::type_complexity)]
    context_create: unsafe extern "C" fn(
        i32,
        i32,
        *const i64,
        i32,
        *const u32,
        i32,
        i32,
        *mut c_void,
        *mut *mut Opaque,
    ) -> i32,
    context_set_step: unsafe extern "C" fn(*mut Opaque, u64, i32) -> i32,
    context_synchronize: unsafe extern "C" fn(*mut Opaque) -> i32,
    context_abort: unsafe extern "C" fn(*mut Opaque, *const c_char) -> i32,
    context_destroy: unsafe extern "C" fn(*mut Opaque) -> i32,
}

impl PluginLib {
    /// Loads the library at `path` and checks its ABI version.
    pub fn open(path: &Path) -> Result<Arc<Self>, GpuError> {
        let fail = |e: String| GpuError::Plugins(format!("{}: {e}", path.display()));
        // SAFETY: loading a library runs its initializers; the dfc plugin library's only set
        // up its own statics.
        let lib = unsafe { Library::new(path) }.map_err(|e| fail(e.to_string()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the one declared in dfc_plugin.h.
                *unsafe { lib.get($name) }.map_err(|e| fail(e.to_string()))?
            };
        }
        let me = Self {
            abi_version: sym!(b"dfc_abi_version\0"),
            last_error: sym!(b"dfc_last_error\0"),
            local_group_create: sym!(b"dfc_local_group_create\0"),
            local_group_destroy: sym!(b"dfc_local_group_destroy\0"),
            context_create: sym!(b"dfc_context_create\0"),
            context_set_step: sym!(b"dfc_context_set_step\0"),
            context_synchronize: sym!(b"dfc_context_synchronize\0"),
            context_abort: sym!(b"dfc_context_abort\0"),
            context_destroy: sym!(b"dfc_context_destroy\0"),
            _lib: lib,
        };
        // SAFETY: no arguments.
        let v = unsafe { (me.abi_version)() };
        if v != ABI_VERSION {
            return Err(fail(format!(
                "C ABI version {v}, this dfc speaks {ABI_VERSION} (rebuild the plugins)"
            )));
        }
        Ok(Arc::new(me))
    }

    fn check(&self, call: &'static str, code: i32) -> Result<(), GpuError> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: dfc_last_error returns a NUL-terminated thread-local string (or null).
        let message = unsafe {
            let p = (self.last_error)();
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(GpuError::Plugin {
            call,
            code,
            message,
        })
    }
}

/// How a rank's context exchanges with its peers.
pub enum Transport {
    /// An initialized `ncclComm_t` of the rank's group (owned by the caller, who keeps it
    /// alive longer than the context).
    Nccl(*mut c_void),
    /// A group of one: a plan with a single rank.
    Alone,
}

/// One rank's plugin context (and, for [`Transport::Alone`], its one-rank local group).
pub struct PluginContext {
    lib: Arc<PluginLib>,
    ctx: *mut Opaque,
    local_group: *mut Opaque,
}

/// What aborting a context needs, sendable to the thread that watches for the launcher's
/// abort.
#[derive(Clone)]
pub struct ContextAbort {
    lib: Arc<PluginLib>,
    ctx: usize,
}

// SAFETY: dfc_context_abort may be called from any thread (it marks the context failed).
unsafe impl Send for ContextAbort {}

impl ContextAbort {
    /// Marks the context failed with `reason`.
    pub fn abort(&self, reason: &str) {
        let reason = CString::new(reason.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the context outlives the process's abort path (it exits right after).
        unsafe { (self.lib.context_abort)(self.ctx as *mut Opaque, reason.as_ptr()) };
    }
}

impl PluginContext {
    /// `dfc_context_create`: `rank` of a group of `rows.len() - 1` bands with boundaries
    /// `rows` (latent rows), GroupNorm mode `gn` (`DFC_GN_*`), the always-fresh slots.
    pub fn create(
        lib: &Arc<PluginLib>,
        rank: usize,
        rows: &[i64],
        gn: i32,
        always_fresh: &[u32],
        transport: Transport,
    ) -> Result<Self, GpuError> {
        let size = rows.len().saturating_sub(1);
        let (kind, handle, local_group) = match transport {
            Transport::Nccl(comm) => (TRANSPORT_NCCL, comm, std::ptr::null_mut()),
            Transport::Alone => {
                let mut g = std::ptr::null_mut();
                // SAFETY: out-pointer to a local.
                lib.check("dfc_local_group_create", unsafe {
                    (lib.local_group_create)(1, 0, &mut g)
                })?;
                (TRANSPORT_LOCAL, g, g)
            }
        };
        let mut ctx = std::ptr::null_mut();
        // SAFETY: `rows` has size + 1 entries, `always_fresh` its length; the handle is a
        // live communicator or local group.
        let code = unsafe {
            (lib.context_create)(
                rank as i32,
                size as i32,
                rows.as_ptr(),
                gn,
                always_fresh.as_ptr(),
                always_fresh.len() as i32,
                kind,
                handle,
                &mut ctx,
            )
        };
        let me = Self {
            lib: lib.clone(),
            ctx,
            local_group,
        };
        lib.check("dfc_context_create", code)?;
        Ok(me)
    }

    /// `dfc_context_set_step`: before every enqueue (or graph replay), on the enqueueing
    /// thread.
    pub fn set_step(&self, step: u64, stale: bool) -> Result<(), GpuError> {
        // SAFETY: a live context.
        let code = unsafe { (self.lib.context_set_step)(self.ctx, step, i32::from(stale)) };
        self.lib.check("dfc_context_set_step", code)
    }

    /// `dfc_context_synchronize`: waits for the communication stream.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        // SAFETY: a live context.
        let code = unsafe { (self.lib.context_synchronize)(self.ctx) };
        self.lib.check("dfc_context_synchronize", code)
    }

    /// A handle that aborts this context from another thread.
    pub fn abort_handle(&self) -> ContextAbort {
        ContextAbort {
            lib: self.lib.clone(),
            ctx: self.ctx as usize,
        }
    }
}

impl Drop for PluginContext {
    fn drop(&mut self) {
        // SAFETY: destroyed once, the context before its local group.
        unsafe {
            if !self.ctx.is_null() {
                (self.lib.context_destroy)(self.ctx);
            }
            if !self.local_group.is_null() {
                (self.lib.local_group_destroy)(self.local_group);
            }
        }
    }
}
