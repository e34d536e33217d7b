//! NCCL through cudarc's raw bindings: the launcher's unique id ([`NcclIds`]), and a rank's
//! communicators ([`Comm`]: the world, and its group split from it) with the two host-side
//! exchanges of the sampling loop.
//!
//! Raw handles rather than cudarc's `Comm`: `ncclCommAbort` must be callable from the thread
//! that watches for the launcher's abort while the main thread may be blocked in a collective.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::{result, sys};

use super::GpuError;
use crate::launch::{ID_BYTES, IdSource, LaunchError};

fn nccl_err(what: &str, e: result::NcclError) -> GpuError {
    GpuError::Nccl(format!("{what}: {e:?}"))
}

/// Whether cudarc can load NCCL (`libnccl.so` or another of its names on the library path).
pub fn nccl_loadable() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// `ncclGetUniqueId` of `libnccl.so.2`, loaded by path (the launcher needs no link folder).
pub struct NcclIds {
    lib: PathBuf,
}

impl NcclIds {
    /// Finds NCCL ([`super::libs::find_nccl`]).
    pub fn find() -> Result<Self, GpuError> {
        Ok(Self {
            lib: super::libs::find_nccl()?,
        })
    }
}

/// `libnccl.so.2` as this process loaded it, never unloaded: `ncclGetUniqueId` starts a
/// bootstrap listener thread that runs NCCL's code for as long as the process lives (the ranks
/// connect to it), so closing the library would unmap code that thread executes.
static NCCL_LIBRARY: std::sync::OnceLock<libloading::Library> = std::sync::OnceLock::new();

/// The process's one `libnccl.so.2` (loaded from `path` on first use).
fn nccl_library(path: &std::path::Path) -> Result<&'static libloading::Library, String> {
    if let Some(lib) = NCCL_LIBRARY.get() {
        return Ok(lib);
    }
    // SAFETY: loading NCCL runs its initializers only.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    Ok(NCCL_LIBRARY.get_or_init(|| lib))
}

impl IdSource for NcclIds {
    fn unique_id(&self) -> Result<Vec<u8>, LaunchError> {
        let fail = |e: String| LaunchError::Id(format!("{}: {e}", self.lib.display()));
        let lib = nccl_library(&self.lib).map_err(fail)?;
        // SAFETY: ncclGetUniqueId(ncclUniqueId*) -> ncclResult_t, the id being 128 bytes.
        let get: libloading::Symbol<unsafe extern "C" fn(*mut u8) -> i32> =
            unsafe { lib.get(b"ncclGetUniqueId\0") }.map_err(|e| fail(e.to_string()))?;
        let mut id = vec![0u8; ID_BYTES];
        // SAFETY: `id` has room for the 128-byte id.
        let code = unsafe { get(id.as_mut_ptr()) };
        if code != 0 {
            return Err(fail(format!("ncclGetUniqueId returned {code}")));
        }
        Ok(id)
    }
}

/// A communicator handle that can be aborted from any thread.
#[derive(Clone, Copy)]
pub struct CommAbort(usize);

// SAFETY: ncclCommAbort is meant to be called from another thread than the one blocked in the
// communicator's operations.
unsafe impl Send for CommAbort {}

impl CommAbort {
    /// `ncclCommAbort`.
    pub fn abort(self) {
        // SAFETY: a communicator created by Comm; after an abort the process exits.
        let _ = unsafe { result::comm_abort(self.0 as sys::ncclComm_t) };
    }
}

/// One NCCL communicator of this rank.
pub struct Comm {
    comm: sys::ncclComm_t,
    rank: usize,
    size: usize,
    destroyed: bool,
}

impl Comm {
    /// `ncclCommInitRank` of the world from the launcher's id (on the current device).
    pub fn init(id: &[u8], rank: usize, size: usize) -> Result<Self, GpuError> {
        if !nccl_loadable() {
            return Err(GpuError::NoNccl(
                "cudarc cannot load libnccl.so (start the ranks with `dfc launch`, which puts a \
                 libnccl.so link on their library path)"
                    .into(),
            ));
        }
        let mut raw = sys::ncclUniqueId {
            internal: [0; ID_BYTES],
        };
        if id.len() != ID_BYTES {
            return Err(GpuError::Nccl(format!("an id of {} bytes", id.len())));
        }
        for (d, s) in raw.internal.iter_mut().zip(id) {
            *d = *s as std::ffi::c_char;
        }
        let mut comm = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; rank < size checked by the launcher's environment.
        unsafe { result::comm_init_rank(&mut comm, size as i32, raw, rank as i32) }
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self {
            comm,
            rank,
            size,
            destroyed: false,
        })
    }

    /// `ncclCommSplit`: the ranks of `color`, ordered by `key`.
    pub fn split(&self, color: usize, key: usize) -> Result<Self, GpuError> {
        let mut comm = std::ptr::null_mut();
        // SAFETY: a live communicator; null config = defaults (blocking).
        let code = unsafe {
            sys::ncclCommSplit(
                self.comm,
                color as i32,
                key as i32,
                &mut comm,
                std::ptr::null_mut(),
            )
        };
        code.result().map_err(|e| nccl_err("ncclCommSplit", e))?;
        let mut count = 0;
        // SAFETY: the new communicator.
        unsafe { sys::ncclCommCount(comm, &mut count) }
            .result()
            .map_err(|e| nccl_err("ncclCommCount", e))?;
        let mut rank = 0;
        // SAFETY: the new communicator.
        unsafe { sys::ncclCommUserRank(comm, &mut rank) }
            .result()
            .map_err(|e| nccl_err("ncclCommUserRank", e))?;
        Ok(Self {
            comm,
            rank: rank.max(0) as usize,
            size: count.max(0) as usize,
            destroyed: false,
        })
    }

    /// The raw handle (for `dfc_context_create`).
    pub fn raw(&self) -> *mut c_void {
        self.comm.cast()
    }

    /// This rank in the communicator.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The communicator's size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A handle for [`CommAbort::abort`].
    pub fn abort_handle(&self) -> CommAbort {
        CommAbort(self.comm as usize)
    }

    /// Swaps `mine` with `peer`'s equally long vector (grouped send + receive on `stream`).
    pub fn swap(
        &self,
        stream: &Arc<CudaStream>,
        mine: &[f32],
        peer: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let cuda = |e: cudarc::driver::DriverError| GpuError::Cuda(format!("{e:?}"));
        let send = stream.clone_htod(mine).map_err(cuda)?;
        let mut recv = stream.alloc_zeros::<f32>(mine.len()).map_err(cuda)?;
        {
            let (sp, _s) = send.device_ptr(stream);
            let (rp, _r) = recv.device_ptr_mut(stream);
            let raw = stream.cu_stream() as sys::cudaStream_t;
            result::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
            // SAFETY: device buffers of `mine.len()` f32 on this rank's device, alive until the
            // stream synchronizes below.
            let sent = unsafe {
                result::send(
                    sp as *const c_void,
                    mine.len(),
                    sys::ncclDataType_t::ncclFloat32,
                    peer as i32,
                    self.comm,
                    raw,
                )
            };
            // SAFETY: as above.
            let got = unsafe {
                result::recv(
                    rp as *mut c_void,
                    mine.len(),
                    sys::ncclDataType_t::ncclFloat32,
                    peer as i32,
                    self.comm,
                    raw,
                )
            };
            let ended = result::group_end();
            sent.map_err(|e| nccl_err("ncclSend", e))?;
            got.map_err(|e| nccl_err("ncclRecv", e))?;
            ended.map_err(|e| nccl_err("ncclGroupEnd", e))?;
        }
        let out = stream.clone_dtoh(&recv).map_err(cuda)?;
        stream.synchronize().map_err(cuda)?;
        Ok(out)
    }

    /// Every rank's `mine` (lengths may differ), indexed by rank: lengths first, then one
    /// padded `ncclAllGather`.
    pub fn all_gather_var(
        &self,
        stream: &Arc<CudaStream>,
        mine: &[f32],
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let cuda = |e: cudarc::driver::DriverError| GpuError::Cuda(format!("{e:?}"));
        let lens = self.all_gather_raw::<u64>(
            stream,
            &[mine.len() as u64],
            sys::ncclDataType_t::ncclUint64,
        )?;
        let max = lens.iter().copied().max().unwrap_or(0) as usize;
        let mut padded = mine.to_vec();
        padded.resize(max, 0.0);
        let all = self.all_gather_raw::<f32>(stream, &padded, sys::ncclDataType_t::ncclFloat32)?;
        stream.synchronize().map_err(cuda)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * max..r * max + n as usize].to_vec())
            .collect())
    }

    fn all_gather_raw<
        T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Default + Clone,
    >(
        &self,
        stream: &Arc<CudaStream>,
        mine: &[T],
        dtype: sys::ncclDataType_t,
    ) -> Result<Vec<T>, GpuError> {
        let cuda = |e: cudarc::driver::DriverError| GpuError::Cuda(format!("{e:?}"));
        let send = stream.clone_htod(mine).map_err(cuda)?;
        let mut recv = stream
            .alloc_zeros::<T>(mine.len() * self.size)
            .map_err(cuda)?;
        {
            let (sp, _s) = send.device_ptr(stream);
            let (rp, _r) = recv.device_ptr_mut(stream);
            // SAFETY: `send` holds `mine.len()` elements, `recv` size times as many.
            unsafe {
                result::all_gather(
                    sp as *const c_void,
                    rp as *mut c_void,
                    mine.len(),
                    dtype,
                    self.comm,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
            .map_err(|e| nccl_err("ncclAllGather", e))?;
        }
        let out = stream.clone_dtoh(&recv).map_err(cuda)?;
        stream.synchronize().map_err(cuda)?;
        Ok(out)
    }

    /// `ncclCommAbort` (a failed run: pending operations are dropped).
    pub fn abort(&mut self) {
        if !self.destroyed {
            self.destroyed = true;
            // SAFETY: a live communicator, released here.
            let _ = unsafe { result::comm_abort(self.comm) };
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.destroyed {
            self.destroyed = true;
            // SAFETY: a live communicator whose operations were synchronized by its owner.
            unsafe {
                let _ = result::comm_finalize(self.comm);
                let _ = result::comm_destroy(self.comm);
            }
        }
    }
}
