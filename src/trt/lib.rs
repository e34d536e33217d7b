//! TensorRT through the C++ shim `libdfc_trt_shim*.so`, loaded at run time.
//!
//! dfc neither links TensorRT nor the shim: [`TensorRt::find`] locates a TensorRT library
//! (TensorRT 10/11 or TensorRT-RTX, see [`find`] for the order) and the shim compiled for it,
//! [`TensorRt::open`] loads them, and [`TensorRt::build`] turns an ONNX graph into a serialized
//! engine (TensorRT-RTX builds without a GPU). [`TensorRt::load_engine`] and [`Engine`] are the
//! GPU runtime's side: deserialize, bind device buffers, enqueue.
//!
//! The shim's C ABI is `src/trt/shim/dfc_trt.h`. Two shims exist because TensorRT 11
//! and TensorRT-RTX 1.7 lay out their C++ classes differently; the one matching the library's
//! kind is chosen by file name ([`find::Kind`]).
//!
//! TensorRT-RTX's ONNX parser `dlopen`s the unversioned `libtensorrt_rtx.so` (to reach the
//! plugin API) that its wheel does not ship. When that name is missing beside the parser,
//! [`TensorRt::open`] makes a private folder with `libtensorrt_rtx.so` and the parser as symbolic
//! links and loads the parser from there: the parser's `$ORIGIN` run path then finds the core
//! library, and no `LD_LIBRARY_PATH` is needed.

pub mod find;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

pub use find::{Kind, PLUGINS_NAME, Search};

/// Commands that install a TensorRT dfc can use, from the repository root.
pub const INSTALL_HINT: &str = "tools/setup_cuda.sh   (TensorRT-RTX 1.7 and CUDA into ~/.cache/dfc, found there; then tools/build_plugins.sh)";
/// The same, into the project's virtual environment.
pub const PIP_HINT: &str = ".venv/bin/pip install tensorrt-rtx-cu13-libs==1.7.1.116";

/// The shim ABI this dfc speaks (`DFC_TRT_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// What a shim call failed with (`DFC_TRT_ERR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShimCode {
    /// A library could not be loaded or lacks a symbol.
    Load,
    /// The ONNX parser refused the model.
    Parse,
    /// The builder failed.
    Build,
    /// Reading or writing a file failed.
    Io,
    /// Deserialization or execution failed.
    Runtime,
    /// A bad argument.
    Invalid,
    /// A code this dfc does not know.
    Other(i32),
}

impl ShimCode {
    fn from_raw(code: c_int) -> ShimCode {
        match code {
            1 => ShimCode::Load,
            2 => ShimCode::Parse,
            3 => ShimCode::Build,
            4 => ShimCode::Io,
            5 => ShimCode::Runtime,
            6 => ShimCode::Invalid,
            c => ShimCode::Other(c),
        }
    }
}

/// Errors of finding, loading and using TensorRT.
#[derive(Debug, thiserror::Error)]
pub enum TrtError {
    #[error(
        "no TensorRT was found (TensorRT 10/11: libnvinfer.so.* with libnvonnxparser.so.*; \
         TensorRT-RTX: libtensorrt_rtx.so.1 with libtensorrt_onnxparser_rtx.so.1). Install one from \
         the repository root with\n    {INSTALL_HINT}\nor\n    {PIP_HINT}\nor point --tensorrt or \
         DFC_TENSORRT at the library or its folder. Looked in:\n{}",
        .searched.iter().map(|s| format!("    {s}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound { searched: Vec<String> },
    #[error(
        "{what} is {path}, which holds no TensorRT library (libnvinfer.so.* with \
         libnvonnxparser.so.*, or libtensorrt_rtx.so.1 with libtensorrt_onnxparser_rtx.so.1; \
         for DFC_TRT_SHIM: the shim)"
    )]
    BadPath { what: &'static str, path: PathBuf },
    #[error(
        "the TensorRT shim {name} was not found; build it from the repository root with\n    \
         tools/build_plugins.sh\nor point DFC_TRT_SHIM at it. Looked in:\n{}",
        .searched.iter().map(|s| format!("    {s}")).collect::<Vec<_>>().join("\n")
    )]
    ShimNotFound {
        name: &'static str,
        searched: Vec<String>,
    },
    #[error("cannot load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(
        "{path} speaks shim ABI version {found}; this dfc needs version {ABI_VERSION} (rebuild it \
         with tools/build_plugins.sh)"
    )]
    Abi { path: PathBuf, found: u32 },
    #[error("{message}")]
    Call {
        /// The shim function that failed.
        op: &'static str,
        code: ShimCode,
        /// The shim's last error (TensorRT's own messages included).
        message: String,
    },
    #[error("path {0} contains a NUL byte")]
    Path(PathBuf),
    #[error("tensor name `{0}` contains a NUL byte")]
    Name(String),
    #[error("cannot prepare the TensorRT-RTX parser's library folder: {0}")]
    Links(#[source] std::io::Error),
}

/// Where [`TensorRt::find`] found everything (nothing loaded yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// TensorRT's core library (`libnvinfer.so.N` or `libtensorrt_rtx.so.1`).
    pub lib: PathBuf,
    /// Its ONNX parser (`libnvonnxparser.so.N` or `libtensorrt_onnxparser_rtx.so.1`).
    pub parser: PathBuf,
    /// The shim compiled for that library's headers.
    pub shim: PathBuf,
    /// The dfc plugin library, when one was found.
    pub plugins: Option<PathBuf>,
}

/// Builder options. TensorRT 11 and TensorRT-RTX build strongly typed networks (layer types come
/// from the ONNX graph); the shim refuses these flags there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildFlags {
    pub fp16: bool,
    pub bf16: bool,
}

/// One network or engine input/output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub is_input: bool,
    /// Element type, named as in `plan.json` (`f32`, `f16`, `bf16`, `i64`, …).
    pub dtype: String,
    pub dims: Vec<i64>,
}

/// Mirror of `dfc_trt_io`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawIo {
    name: [c_char; 256],
    is_input: i32,
    dtype: i32,
    n_dims: i32,
    dims: [i64; 8],
}

impl RawIo {
    const ZERO: RawIo = RawIo {
        name: [0; 256],
        is_input: 0,
        dtype: 0,
        n_dims: 0,
        dims: [0; 8],
    };

    fn to_spec(self) -> IoSpec {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let n = usize::try_from(self.n_dims).unwrap_or(0).min(8);
        IoSpec {
            name: String::from_utf8_lossy(&bytes).into_owned(),
            is_input: self.is_input != 0,
            dtype: dtype_name(self.dtype),
            dims: self.dims[..n].to_vec(),
        }
    }
}

/// `plan.json`'s name of a TensorRT `DataType`.
fn dtype_name(code: i32) -> String {
    match code {
        0 => "f32".into(),
        1 => "f16".into(),
        2 => "i8".into(),
        3 => "i32".into(),
        4 => "bool".into(),
        5 => "u8".into(),
        6 => "fp8".into(),
        7 => "bf16".into(),
        8 => "i64".into(),
        9 => "i4".into(),
        10 => "fp4".into(),
        c => format!("tensorrt-type-{c}"),
    }
}

type OpenFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *mut c_char,
    usize,
    *mut c_char,
    usize,
    *mut *mut c_void,
) -> c_int;
type BuildFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    u32,
    u64,
    *mut RawIo,
    i32,
    *mut i32,
) -> c_int;

/// The shim's entry points (the library itself stays loaded for the process's lifetime:
/// TensorRT may keep pointers into it, such as the logger).
struct Api {
    last_error: unsafe extern "C" fn() -> *const c_char,
    open: OpenFn,
    close: unsafe extern "C" fn(*mut c_void),
    load_plugins: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    build: BuildFn,
    engine_load: unsafe extern "C" fn(*mut c_void, *const c_char, i32, *mut *mut c_void) -> c_int,
    engine_io: unsafe extern "C" fn(*mut c_void, *mut RawIo, i32, *mut i32) -> c_int,
    engine_set_address: unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_void) -> c_int,
    engine_enqueue: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
    engine_destroy: unsafe extern "C" fn(*mut c_void),
}

impl Api {
    fn load(path: &Path) -> Result<Api, TrtError> {
        let err = |reason: String| TrtError::Load {
            path: path.to_path_buf(),
            reason,
        };
        // SAFETY: loading the shim runs only its (trivial) static initializers.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW) }.map_err(|e| err(e.to_string()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the one declared in dfc_trt.h.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| err(format!("no symbol {}: {e}", $name)))?
            };
        }
        let abi: unsafe extern "C" fn() -> u32 = sym!("dfc_trt_abi_version");
        // SAFETY: no arguments, returns a constant.
        let found = unsafe { abi() };
        if found != ABI_VERSION {
            return Err(TrtError::Abi {
                path: path.to_path_buf(),
                found,
            });
        }
        let api = Api {
            last_error: sym!("dfc_trt_last_error"),
            open: sym!("dfc_trt_open"),
            close: sym!("dfc_trt_close"),
            load_plugins: sym!("dfc_trt_load_plugins"),
            build: sym!("dfc_trt_build"),
            engine_load: sym!("dfc_trt_engine_load"),
            engine_io: sym!("dfc_trt_engine_io"),
            engine_set_address: sym!("dfc_trt_engine_set_address"),
            engine_enqueue: sym!("dfc_trt_engine_enqueue"),
            engine_destroy: sym!("dfc_trt_engine_destroy"),
        };
        // Never unloaded (see the type's documentation).
        let _ = lib.into_raw();
        Ok(api)
    }

    /// The error of a failed call `op` that returned `code`.
    fn error(&self, op: &'static str, code: c_int) -> TrtError {
        // SAFETY: returns a pointer to the calling thread's NUL-terminated error string.
        let ptr = unsafe { (self.last_error)() };
        let message = if ptr.is_null() {
            String::new()
        } else {
            // SAFETY: non-null and NUL-terminated, valid until the thread's next shim call.
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        };
        let message = if message.is_empty() {
            format!("{op} failed (code {code})")
        } else {
            message
        };
        TrtError::Call {
            op,
            code: ShimCode::from_raw(code),
            message,
        }
    }
}

struct Inner {
    api: Api,
    handle: *mut c_void,
    name: String,
    version: String,
    found: Found,
    /// Libraries loaded for the plugin library (kept loaded while TensorRT is).
    deps: Mutex<Vec<Library>>,
    /// The TensorRT-RTX parser's private library folder, if one was needed.
    _links: Option<tempfile::TempDir>,
}

// SAFETY: the shim serializes use of its builder, runtime and plugin registry with a mutex and
// keeps error strings per thread; the handle is only freed on drop.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: the handle came from dfc_trt_open; every Engine holds an Arc to this, so none
        // is alive any more.
        unsafe { (self.api.close)(self.handle) };
    }
}

/// A loaded TensorRT (core library, ONNX parser, shim). Cheap to share across threads.
#[derive(Clone)]
pub struct TensorRt {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TensorRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorRt")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("found", &self.inner.found)
            .finish()
    }
}

fn cpath(p: &Path) -> Result<CString, TrtError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| TrtError::Path(p.to_path_buf()))
}

fn cstr_buf(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The parser path to load: the parser itself, or a link to it in a private folder that also
/// links `libtensorrt_rtx.so` (see the module documentation).
fn rtx_parser_path(found: &Found) -> Result<(PathBuf, Option<tempfile::TempDir>), TrtError> {
    let dir = found.parser.parent().unwrap_or(Path::new("."));
    if Kind::of(&found.lib) != Kind::Rtx || dir.join("libtensorrt_rtx.so").exists() {
        return Ok((found.parser.clone(), None));
    }
    let links = tempfile::Builder::new()
        .prefix("dfc-tensorrt-rtx-")
        .tempdir()
        .map_err(TrtError::Links)?;
    let abs = |p: &Path| p.canonicalize().map_err(TrtError::Links);
    let parser_name = found
        .parser
        .file_name()
        .unwrap_or_else(|| std::ffi::OsStr::new("libtensorrt_onnxparser_rtx.so.1"));
    std::os::unix::fs::symlink(abs(&found.lib)?, links.path().join("libtensorrt_rtx.so"))
        .map_err(TrtError::Links)?;
    let parser = links.path().join(parser_name);
    std::os::unix::fs::symlink(abs(&found.parser)?, &parser).map_err(TrtError::Links)?;
    Ok((parser, Some(links)))
}

impl TensorRt {
    /// Finds TensorRT 10/11 (`libnvinfer.so.*` + `libnvonnxparser.so.*`) or TensorRT-RTX
    /// (`libtensorrt_rtx.so.1` + `libtensorrt_onnxparser_rtx.so.1`): `explicit` (a library or
    /// its folder), `DFC_TENSORRT`, the project `.venv` and `$DFC_CACHE/cuda-venv`
    /// site-packages (`tensorrt_libs` / `tensorrt_rtx_libs`), the `python3` on `PATH`,
    /// `LD_LIBRARY_PATH` and `ldconfig`; then the shim for it (`DFC_TRT_SHIM`, next to the
    /// executable, `plugins/tensorrt/build/`) and the plugin library if any. The errors print
    /// the commands that install what is missing.
    pub fn find(explicit: Option<&Path>) -> Result<Found, TrtError> {
        Search::from_env(explicit).find()
    }

    /// Loads the shim and, through it, TensorRT and its parser.
    pub fn open(found: &Found) -> Result<TensorRt, TrtError> {
        let api = Api::load(&found.shim)?;
        let (parser, links) = rtx_parser_path(found)?;
        let lib = cpath(&found.lib)?;
        let parser = cpath(&parser)?;
        let mut name: [c_char; 64] = [0; 64];
        let mut version: [c_char; 64] = [0; 64];
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated paths, buffers of the given lengths, an out pointer.
        let rc = unsafe {
            (api.open)(
                lib.as_ptr(),
                parser.as_ptr(),
                name.as_mut_ptr(),
                name.len(),
                version.as_mut_ptr(),
                version.len(),
                &mut handle,
            )
        };
        if rc != 0 || handle.is_null() {
            return Err(api.error("dfc_trt_open", rc));
        }
        Ok(TensorRt {
            inner: Arc::new(Inner {
                api,
                handle,
                name: cstr_buf(&name),
                version: cstr_buf(&version),
                found: found.clone(),
                deps: Mutex::new(Vec::new()),
                _links: links,
            }),
        })
    }

    /// `TensorRT` or `TensorRT-RTX`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The library's version, `major.minor.patch`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// What was loaded.
    pub fn found(&self) -> &Found {
        &self.inner.found
    }

    /// Loads a plugin library (`libdfc_trt_plugins.so`) into TensorRT's plugin registry. Its
    /// CUDA runtime and NCCL (`libcudart.so.13`, `libnccl.so.2`) are loaded first from the
    /// NVIDIA wheels beside TensorRT or the toolchain cache when the dynamic linker would not
    /// find them by itself.
    pub fn load_plugins(&self, lib: &Path) -> Result<(), TrtError> {
        if !lib.is_file() {
            return Err(TrtError::Load {
                path: lib.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        self.preload_cuda(lib);
        let path = cpath(lib)?;
        // SAFETY: a valid handle and path.
        let rc = unsafe { (self.inner.api.load_plugins)(self.inner.handle, path.as_ptr()) };
        if rc != 0 {
            return Err(self.inner.api.error("dfc_trt_load_plugins", rc));
        }
        Ok(())
    }

    fn preload_cuda(&self, plugins: &Path) {
        let dirs = find::cuda_dirs(&self.inner.found.lib, plugins);
        let Ok(mut deps) = self.inner.deps.lock() else {
            return;
        };
        for soname in ["libcudart.so.13", "libnccl.so.2"] {
            // SAFETY: loading a CUDA library runs its initializers, which touch no GPU.
            if let Ok(l) = unsafe { Library::open(Some(soname), RTLD_NOW | RTLD_GLOBAL) } {
                deps.push(l);
                continue;
            }
            for dir in &dirs {
                let p = dir.join(soname);
                if p.is_file() {
                    // SAFETY: as above.
                    if let Ok(l) = unsafe { Library::open(Some(&p), RTLD_NOW | RTLD_GLOBAL) } {
                        deps.push(l);
                        break;
                    }
                }
            }
        }
    }

    /// Parses `onnx` (external data resolved beside it), builds an engine and writes it to
    /// `engine` (a TensorRT-RTX build needs no GPU). `workspace_bytes` 0 leaves TensorRT's
    /// default. Returns the parsed network's inputs and outputs. On failure the shim leaves no
    /// partial file at `engine` when the write itself failed; callers that need atomicity build
    /// into a temporary file.
    pub fn build(
        &self,
        onnx: &Path,
        engine: &Path,
        flags: BuildFlags,
        workspace_bytes: u64,
    ) -> Result<Vec<IoSpec>, TrtError> {
        let onnx = cpath(onnx)?;
        let engine = cpath(engine)?;
        let bits = u32::from(flags.fp16) | (u32::from(flags.bf16) << 1);
        let mut io = vec![RawIo::ZERO; 64];
        let mut n: i32 = 0;
        // SAFETY: valid handle and paths; `io` holds `io.len()` entries.
        let rc = unsafe {
            (self.inner.api.build)(
                self.inner.handle,
                onnx.as_ptr(),
                engine.as_ptr(),
                bits,
                workspace_bytes,
                io.as_mut_ptr(),
                i32::try_from(io.len()).unwrap_or(i32::MAX),
                &mut n,
            )
        };
        if rc != 0 {
            return Err(self.inner.api.error("dfc_trt_build", rc));
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n > io.len() {
            return Err(TrtError::Call {
                op: "dfc_trt_build",
                code: ShimCode::Other(0),
                message: format!(
                    "the network has {n} inputs and outputs; dfc reads at most {}",
                    io.len()
                ),
            });
        }
        Ok(io[..n].iter().map(|r| r.to_spec()).collect())
    }

    /// Deserializes the engine at `path` on CUDA device `device` and creates its execution
    /// context (needs a GPU). Plugin libraries loaded before are available to it.
    pub fn load_engine(&self, path: &Path, device: i32) -> Result<Engine, TrtError> {
        let p = cpath(path)?;
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid handle, path and out pointer.
        let rc = unsafe {
            (self.inner.api.engine_load)(self.inner.handle, p.as_ptr(), device, &mut handle)
        };
        if rc != 0 || handle.is_null() {
            return Err(self.inner.api.error("dfc_trt_engine_load", rc));
        }
        Ok(Engine {
            trt: self.inner.clone(),
            handle,
        })
    }
}

/// A deserialized engine with one execution context. Not shareable between threads at once
/// (an execution context runs one enqueue at a time) but movable to another thread.
pub struct Engine {
    trt: Arc<Inner>,
    handle: *mut c_void,
}

// SAFETY: the engine and its context may be used from any one thread at a time; `&mut self` on
// every mutating call keeps that.
unsafe impl Send for Engine {}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// The engine's inputs and outputs.
    pub fn io(&self) -> Result<Vec<IoSpec>, TrtError> {
        let api = &self.trt.api;
        let mut n: i32 = 0;
        // SAFETY: a valid engine; zero entries requested to learn the count.
        let rc = unsafe { (api.engine_io)(self.handle, std::ptr::null_mut(), 0, &mut n) };
        if rc != 0 {
            return Err(api.error("dfc_trt_engine_io", rc));
        }
        let mut io = vec![RawIo::ZERO; usize::try_from(n).unwrap_or(0)];
        // SAFETY: `io` holds `n` entries.
        let rc = unsafe { (api.engine_io)(self.handle, io.as_mut_ptr(), n, &mut n) };
        if rc != 0 {
            return Err(api.error("dfc_trt_engine_io", rc));
        }
        io.truncate(usize::try_from(n).unwrap_or(0));
        Ok(io.into_iter().map(RawIo::to_spec).collect())
    }

    /// Binds the device buffer at `device_ptr` to tensor `name` (stays bound across enqueues).
    ///
    /// # Safety
    /// `device_ptr` must point to device memory of the tensor's size that outlives every
    /// enqueue using it.
    pub unsafe fn set_address(&mut self, name: &str, device_ptr: u64) -> Result<(), TrtError> {
        let api = &self.trt.api;
        let c = CString::new(name).map_err(|_| TrtError::Name(name.to_string()))?;
        // SAFETY: valid engine and name; the pointer's validity is the caller's contract.
        let rc = unsafe {
            (api.engine_set_address)(self.handle, c.as_ptr(), device_ptr as usize as *mut c_void)
        };
        if rc != 0 {
            return Err(api.error("dfc_trt_engine_set_address", rc));
        }
        Ok(())
    }

    /// Enqueues one execution (`enqueueV3`) on `stream`.
    ///
    /// # Safety
    /// `stream` must be a valid `cudaStream_t` of the engine's device (or null for the legacy
    /// default stream), and every tensor must be bound to live device memory.
    pub unsafe fn enqueue(&mut self, stream: *mut c_void) -> Result<(), TrtError> {
        let api = &self.trt.api;
        // SAFETY: the caller's contract.
        let rc = unsafe { (api.engine_enqueue)(self.handle, stream) };
        if rc != 0 {
            return Err(api.error("dfc_trt_engine_enqueue", rc));
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: the handle came from dfc_trt_engine_load and is destroyed once, before the
        // TensorRt it belongs to (held through the Arc).
        unsafe { (self.trt.api.engine_destroy)(self.handle) };
    }
}
