//! The `TRITONBACKEND_*` entry points and the glue between Triton's objects and
//! [`dfc_runtime::serving`].
//!
//! State: the model keeps a [`ModelState`] (the version folder, the settings, the instance
//! count), every instance an [`InstanceState`] (the loaded [`Instance`]). Triton never runs
//! one instance's `execute` on two threads at once, so an instance's state needs no lock.

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::Instant;

use dfc_runtime::serving::repo::{MANIFEST_FILE, Manifest};
use dfc_runtime::serving::{
    DataType, GUIDANCE, IMAGE, Instance, LATENT, RawInput, RunFailure, SCHEDULER, SEED, STEPS,
    Settings, parse_job,
};

use crate::sys::*;

/// The backend API version this library was written against (Triton 2.51 speaks 1.19).
const API_MAJOR: u32 = 1;
const API_MINOR: u32 = 19;

type TResult<T> = Result<T, Fault>;

/// An error on its way to Triton.
struct Fault {
    code: TRITONSERVER_Error_Code,
    message: String,
}

impl Fault {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: TRITONSERVER_ERROR_INVALID_ARG,
            message: message.into(),
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        Self {
            code: TRITONSERVER_ERROR_INTERNAL,
            message: message.into(),
        }
    }
    fn unsupported(message: impl Into<String>) -> Self {
        Self {
            code: TRITONSERVER_ERROR_UNSUPPORTED,
            message: message.into(),
        }
    }

    /// A new Triton error object (owned by whoever receives it).
    fn into_raw(self) -> *mut TRITONSERVER_Error {
        let text = CString::new(self.message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: Triton copies the message.
        unsafe { TRITONSERVER_ErrorNew(self.code, text.as_ptr()) }
    }
}

/// Takes an error Triton returned (and frees it).
fn check(err: *mut TRITONSERVER_Error, what: &str) -> TResult<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a live error object returned by Triton; we own it.
    let message = unsafe {
        let text = cstr(TRITONSERVER_ErrorMessage(err));
        TRITONSERVER_ErrorDelete(err);
        text
    };
    Err(Fault::internal(format!("{what}: {message}")))
}

/// A C string from Triton as an owned string ("" for null).
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: as documented.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Runs an entry point's body, turning errors and panics into a Triton error.
fn entry(body: impl FnOnce() -> TResult<()>) -> *mut TRITONSERVER_Error {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ptr::null_mut(),
        Ok(Err(fault)) => fault.into_raw(),
        Err(p) => Fault::internal(format!("dfc backend crashed: {}", panic_text(&*p))).into_raw(),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Writes `message` to Triton's log at `level`.
fn log(level: TRITONSERVER_LogLevel, message: &str) {
    // SAFETY: plain queries and a copied message.
    unsafe {
        if !TRITONSERVER_LogIsEnabled(level) {
            return;
        }
        let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
        let file = c"dfc";
        let err = TRITONSERVER_LogMessage(level, file.as_ptr(), 0, text.as_ptr());
        if !err.is_null() {
            TRITONSERVER_ErrorDelete(err);
        }
    }
}

/// Now on the clock Triton's statistics use (`CLOCK_MONOTONIC`, ns).
fn now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).wrapping_mul(1_000_000_000) + t.tv_nsec as u64
}

/// What a model keeps between its instances' calls.
struct ModelState {
    name: String,
    /// The version folder (`REPO/NAME/VERSION`).
    dir: PathBuf,
    vae: Option<PathBuf>,
    settings: Settings,
    /// Instances of this model (all groups), for sharing the cores.
    instances: usize,
    /// The model configuration (JSON), read once; every instance checks it against its plan.
    config: serde_json::Value,
}

/// What an instance keeps between requests.
struct InstanceState {
    name: String,
    instance: Instance,
}

/// The model's configuration as JSON.
fn model_config(model: *mut TRITONBACKEND_Model) -> TResult<serde_json::Value> {
    let mut message: *mut TRITONSERVER_Message = ptr::null_mut();
    // SAFETY: `model` is the live model Triton handed us; we own `message` afterwards.
    check(
        unsafe { TRITONBACKEND_ModelConfig(model, 1, &mut message) },
        "reading the model configuration",
    )?;
    let mut base: *const c_char = ptr::null();
    let mut size: usize = 0;
    // SAFETY: `message` is live until deleted below; `base` points into it.
    let text = unsafe {
        let r = check(
            TRITONSERVER_MessageSerializeToJson(message, &mut base, &mut size),
            "serializing the model configuration",
        );
        let text = if r.is_ok() && !base.is_null() {
            String::from_utf8_lossy(std::slice::from_raw_parts(base.cast::<u8>(), size))
                .into_owned()
        } else {
            String::new()
        };
        let _ = check(TRITONSERVER_MessageDelete(message), "freeing a message");
        r?;
        text
    };
    serde_json::from_str(&text)
        .map_err(|e| Fault::internal(format!("the model configuration is not JSON: {e}")))
}

/// The settings from the configuration's `parameters`.
fn settings_of(config: &serde_json::Value) -> TResult<Settings> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(map) = config.get("parameters").and_then(|p| p.as_object()) {
        for (key, value) in map {
            let v = value
                .get("string_value")
                .and_then(|s| s.as_str())
                .ok_or_else(|| Fault::invalid(format!("parameter `{key}` has no string_value")))?;
            pairs.push((key.clone(), v.to_string()));
        }
    }
    Settings::from_parameters(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(Fault::invalid)
}

/// Checks the configuration's inputs and outputs against the plan's contract.
fn check_config(config: &serde_json::Value, instance: &Instance) -> TResult<()> {
    let names = |key: &str| -> Vec<String> {
        config
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.get("name").and_then(|n| n.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cond =
        dfc_runtime::serving::request::conditioning(instance.plan()).map_err(Fault::invalid)?;
    let mut want: Vec<String> = cond.iter().map(|(s, _)| s.name.clone()).collect();
    want.extend([SEED, STEPS, GUIDANCE, SCHEDULER].map(String::from));
    let mut have = names("input");
    want.sort();
    have.sort();
    if have != want {
        return Err(Fault::invalid(format!(
            "config.pbtxt's inputs ({}) are not the plan's ({}); write the model folder again \
             with `dfc triton`",
            have.join(", "),
            want.join(", ")
        )));
    }
    let outputs = names("output");
    if !outputs.iter().any(|o| o == LATENT) {
        return Err(Fault::invalid(format!(
            "config.pbtxt has no output `{LATENT}`"
        )));
    }
    if outputs.iter().any(|o| o == IMAGE) != instance.has_vae() {
        return Err(Fault::invalid(format!(
            "config.pbtxt {} an output `{IMAGE}` but the model folder {} a VAE",
            if instance.has_vae() { "lacks" } else { "has" },
            if instance.has_vae() { "has" } else { "has no" }
        )));
    }
    Ok(())
}

/// Triton asks which backend API this library speaks.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_Initialize(
    backend: *mut TRITONBACKEND_Backend,
) -> *mut TRITONSERVER_Error {
    entry(|| {
        let (mut major, mut minor) = (0u32, 0u32);
        // SAFETY: out-parameters.
        check(
            unsafe { TRITONBACKEND_ApiVersion(&mut major, &mut minor) },
            "API version",
        )?;
        if major != API_MAJOR || minor < API_MINOR {
            return Err(Fault::unsupported(format!(
                "the dfc backend needs Triton's backend API {API_MAJOR}.{API_MINOR} or a later \
                 1.x; this server speaks {major}.{minor}"
            )));
        }
        let mut name: *const c_char = ptr::null();
        // SAFETY: `backend` is live; the name is owned by Triton.
        check(
            unsafe { TRITONBACKEND_BackendName(backend, &mut name) },
            "backend name",
        )?;
        log(
            TRITONSERVER_LOG_INFO,
            &format!(
                "dfc backend {} initialized as `{}` (backend API {major}.{minor})",
                env!("CARGO_PKG_VERSION"),
                // SAFETY: a NUL-terminated string from Triton.
                unsafe { cstr(name) }
            ),
        );
        Ok(())
    })
}

/// Nothing to free: the backend keeps no global state.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_Finalize(
    _backend: *mut TRITONBACKEND_Backend,
) -> *mut TRITONSERVER_Error {
    ptr::null_mut()
}

/// Reads the model's configuration, checks its folder against the manifest, keeps the state.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_ModelInitialize(
    model: *mut TRITONBACKEND_Model,
) -> *mut TRITONSERVER_Error {
    entry(|| {
        let mut name: *const c_char = ptr::null();
        let mut version: u64 = 0;
        let mut kind: TRITONBACKEND_ArtifactType = 0;
        let mut location: *const c_char = ptr::null();
        // SAFETY: `model` is live; out-parameters; strings owned by Triton.
        let (name, location) = unsafe {
            check(TRITONBACKEND_ModelName(model, &mut name), "model name")?;
            check(
                TRITONBACKEND_ModelVersion(model, &mut version),
                "model version",
            )?;
            check(
                TRITONBACKEND_ModelRepository(model, &mut kind, &mut location),
                "model repository",
            )?;
            (cstr(name), cstr(location))
        };
        if kind != TRITONBACKEND_ARTIFACT_FILESYSTEM {
            return Err(Fault::unsupported(format!(
                "model `{name}`: the dfc backend serves models from a file system repository"
            )));
        }
        let dir = Path::new(&location).join(version.to_string());
        let config = model_config(model)?;
        let settings = settings_of(&config).map_err(|f| Fault {
            message: format!("model `{name}`: {}", f.message),
            ..f
        })?;
        let manifest =
            Manifest::read(&dir).map_err(|e| Fault::invalid(format!("model `{name}`: {e}")))?;
        let start = Instant::now();
        manifest
            .verify(&dir)
            .map_err(|e| Fault::invalid(format!("model `{name}`: {e}")))?;
        let instances = config
            .get("instance_group")
            .and_then(|g| g.as_array())
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| g.get("count").and_then(|c| c.as_u64()).unwrap_or(1) as usize)
                    .sum::<usize>()
            })
            .unwrap_or(1)
            .max(1);
        log(
            TRITONSERVER_LOG_INFO,
            &format!(
                "dfc model `{name}` version {version}: {} files checked against {MANIFEST_FILE} in {:.2} s, {instances} instance(s)",
                manifest.files.len(),
                start.elapsed().as_secs_f64()
            ),
        );
        let state = Box::new(ModelState {
            vae: manifest.vae.as_ref().map(|v| dir.join(v)),
            name,
            dir,
            settings,
            instances,
            config,
        });
        // SAFETY: Triton keeps the pointer until ModelFinalize, which frees it.
        check(
            unsafe { TRITONBACKEND_ModelSetState(model, Box::into_raw(state).cast()) },
            "setting the model state",
        )
    })
}

/// Frees the model's state.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_ModelFinalize(
    model: *mut TRITONBACKEND_Model,
) -> *mut TRITONSERVER_Error {
    entry(|| {
        let mut state: *mut c_void = ptr::null_mut();
        // SAFETY: the state is the Box set in ModelInitialize, freed once here.
        unsafe {
            check(TRITONBACKEND_ModelState(model, &mut state), "model state")?;
            if !state.is_null() {
                drop(Box::from_raw(state.cast::<ModelState>()));
            }
        }
        Ok(())
    })
}

/// Loads every rank of the plan (and the VAE) for this instance.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceInitialize(
    instance: *mut TRITONBACKEND_ModelInstance,
) -> *mut TRITONSERVER_Error {
    entry(|| {
        let mut model: *mut TRITONBACKEND_Model = ptr::null_mut();
        let mut name: *const c_char = ptr::null();
        let mut state: *mut c_void = ptr::null_mut();
        // SAFETY: `instance` is live; the model state is ours (ModelInitialize).
        let (model_state, name) = unsafe {
            check(
                TRITONBACKEND_ModelInstanceModel(instance, &mut model),
                "instance model",
            )?;
            check(
                TRITONBACKEND_ModelInstanceName(instance, &mut name),
                "instance name",
            )?;
            check(TRITONBACKEND_ModelState(model, &mut state), "model state")?;
            (&*state.cast::<ModelState>(), cstr(name))
        };
        let threads = match model_state.settings.threads {
            0 => (std::thread::available_parallelism().map_or(1, |n| n.get())
                / model_state.instances)
                .max(1),
            n => n,
        };
        let start = Instant::now();
        let loaded = Instance::load(
            &model_state.dir,
            model_state.vae.as_deref(),
            model_state.settings.clone(),
            threads,
        )
        .map_err(|e| Fault::invalid(format!("instance `{name}`: {e}")))?;
        check_config(&model_state.config, &loaded)?;
        log(
            TRITONSERVER_LOG_INFO,
            &format!(
                "dfc instance `{name}` of `{}`: {} rank(s) loaded in {:.2} s, {threads} core(s)",
                model_state.name,
                loaded.plan().world_size,
                start.elapsed().as_secs_f64()
            ),
        );
        let state = Box::new(InstanceState {
            name,
            instance: loaded,
        });
        // SAFETY: Triton keeps the pointer until ModelInstanceFinalize, which frees it.
        check(
            unsafe { TRITONBACKEND_ModelInstanceSetState(instance, Box::into_raw(state).cast()) },
            "setting the instance state",
        )
    })
}

/// Frees the instance's ranks.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceFinalize(
    instance: *mut TRITONBACKEND_ModelInstance,
) -> *mut TRITONSERVER_Error {
    entry(|| {
        let mut state: *mut c_void = ptr::null_mut();
        // SAFETY: the state is the Box set in ModelInstanceInitialize, freed once here.
        unsafe {
            check(
                TRITONBACKEND_ModelInstanceState(instance, &mut state),
                "instance state",
            )?;
            if !state.is_null() {
                drop(Box::from_raw(state.cast::<InstanceState>()));
            }
        }
        Ok(())
    })
}

/// Serves `requests` one after another; every request gets one response and is released.
///
/// # Safety
/// Called by Triton only, with the live handle(s) its backend API passes to this entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceExecute(
    instance: *mut TRITONBACKEND_ModelInstance,
    requests: *mut *mut TRITONBACKEND_Request,
    request_count: u32,
) -> *mut TRITONSERVER_Error {
    // From here on the requests are ours: never return an error, answer each of them.
    let requests: Vec<*mut TRITONBACKEND_Request> = if requests.is_null() {
        Vec::new()
    } else {
        // SAFETY: Triton passes `request_count` live request pointers.
        unsafe { std::slice::from_raw_parts(requests, request_count as usize) }.to_vec()
    };
    let mut state: *mut c_void = ptr::null_mut();
    // SAFETY: the instance state is ours (ModelInstanceInitialize), and no other thread runs
    // this instance's execute (see the module documentation).
    let mut state = unsafe {
        match check(
            TRITONBACKEND_ModelInstanceState(instance, &mut state),
            "instance state",
        ) {
            Ok(()) if !state.is_null() => Some(&mut *state.cast::<InstanceState>()),
            _ => None,
        }
    };
    for request in requests {
        let exec_start = now_ns();
        let mut times = (exec_start, exec_start);
        let result = match state.as_deref_mut() {
            None => Err(Fault::internal("the dfc instance has no state")),
            Some(st) => catch_unwind(AssertUnwindSafe(|| serve(st, request, &mut times)))
                .unwrap_or_else(|p| {
                    Err(Fault::internal(format!(
                        "dfc backend crashed: {}",
                        panic_text(&*p)
                    )))
                }),
        };
        let success = result.is_ok();
        if let Err(fault) = result {
            respond_error(request, fault);
        }
        let exec_end = now_ns();
        // SAFETY: `instance` and `request` are live; we own the errors returned.
        unsafe {
            for err in [
                TRITONBACKEND_ModelInstanceReportStatistics(
                    instance, request, success, exec_start, times.0, times.1, exec_end,
                ),
                TRITONBACKEND_ModelInstanceReportBatchStatistics(
                    instance, 1, exec_start, times.0, times.1, exec_end,
                ),
                TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL),
            ] {
                log_error(err, "dfc");
            }
        }
    }
    ptr::null_mut()
}

/// Logs and frees an error Triton returned (nothing for null).
fn log_error(err: *mut TRITONSERVER_Error, what: &str) {
    if err.is_null() {
        return;
    }
    // SAFETY: a live error object we own.
    unsafe {
        log(
            TRITONSERVER_LOG_ERROR,
            &format!("{what}: {}", cstr(TRITONSERVER_ErrorMessage(err))),
        );
        TRITONSERVER_ErrorDelete(err);
    }
}

/// Sends an error response for `request`.
fn respond_error(request: *mut TRITONBACKEND_Request, fault: Fault) {
    let mut response: *mut TRITONBACKEND_Response = ptr::null_mut();
    // SAFETY: `request` is live; ResponseSend does not take the error, so we free it.
    unsafe {
        let err = TRITONBACKEND_ResponseNew(&mut response, request);
        if !err.is_null() {
            log(
                TRITONSERVER_LOG_ERROR,
                &format!(
                    "dfc: cannot answer a request: {}",
                    cstr(TRITONSERVER_ErrorMessage(err))
                ),
            );
            TRITONSERVER_ErrorDelete(err);
            return;
        }
        let error = fault.into_raw();
        let err = TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error);
        TRITONSERVER_ErrorDelete(error);
        if !err.is_null() {
            TRITONSERVER_ErrorDelete(err);
        }
    }
}

fn data_type(t: TRITONSERVER_DataType) -> DataType {
    match t {
        TRITONSERVER_TYPE_BOOL => DataType::Bool,
        TRITONSERVER_TYPE_UINT8 => DataType::Uint8,
        TRITONSERVER_TYPE_INT32 => DataType::Int32,
        TRITONSERVER_TYPE_INT64 => DataType::Int64,
        TRITONSERVER_TYPE_FP16 => DataType::Fp16,
        TRITONSERVER_TYPE_FP32 => DataType::Fp32,
        TRITONSERVER_TYPE_FP64 => DataType::Fp64,
        TRITONSERVER_TYPE_BYTES => DataType::Bytes,
        TRITONSERVER_TYPE_UINT16 => DataType::Other("UINT16"),
        TRITONSERVER_TYPE_UINT32 => DataType::Other("UINT32"),
        TRITONSERVER_TYPE_UINT64 => DataType::Other("UINT64"),
        TRITONSERVER_TYPE_INT8 => DataType::Other("INT8"),
        TRITONSERVER_TYPE_INT16 => DataType::Other("INT16"),
        TRITONSERVER_TYPE_BF16 => DataType::Other("BF16"),
        _ => DataType::Other("INVALID"),
    }
}

/// The request's inputs, copied into host memory.
fn read_inputs(request: *mut TRITONBACKEND_Request) -> TResult<Vec<RawInput>> {
    let mut count = 0u32;
    // SAFETY: `request` is live; every pointer read below is owned by Triton and valid while
    // the request is.
    unsafe {
        check(
            TRITONBACKEND_RequestInputCount(request, &mut count),
            "input count",
        )?;
        let mut inputs = Vec::with_capacity(count as usize);
        for i in 0..count {
            let mut input: *mut TRITONBACKEND_Input = ptr::null_mut();
            check(
                TRITONBACKEND_RequestInputByIndex(request, i, &mut input),
                "input",
            )?;
            let mut name: *const c_char = ptr::null();
            let mut dtype: TRITONSERVER_DataType = 0;
            let mut shape: *const i64 = ptr::null();
            let mut dims = 0u32;
            let mut bytes = 0u64;
            let mut buffers = 0u32;
            check(
                TRITONBACKEND_InputProperties(
                    input,
                    &mut name,
                    &mut dtype,
                    &mut shape,
                    &mut dims,
                    &mut bytes,
                    &mut buffers,
                ),
                "input properties",
            )?;
            let name = cstr(name);
            let shape = if shape.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(shape, dims as usize).to_vec()
            };
            let mut data = Vec::with_capacity(bytes as usize);
            for b in 0..buffers {
                let mut base: *const c_void = ptr::null();
                let mut size = 0u64;
                let mut memory: TRITONSERVER_MemoryType = TRITONSERVER_MEMORY_CPU;
                let mut memory_id = 0i64;
                check(
                    TRITONBACKEND_InputBuffer(
                        input,
                        b,
                        &mut base,
                        &mut size,
                        &mut memory,
                        &mut memory_id,
                    ),
                    "input buffer",
                )?;
                if memory == TRITONSERVER_MEMORY_GPU {
                    return Err(Fault::unsupported(format!(
                        "input `{name}` is in GPU memory; the dfc backend reads host memory"
                    )));
                }
                if size > 0 && !base.is_null() {
                    data.extend_from_slice(std::slice::from_raw_parts(
                        base.cast::<u8>(),
                        size as usize,
                    ));
                }
            }
            inputs.push(RawInput {
                name,
                dtype: data_type(dtype),
                shape,
                data,
            });
        }
        Ok(inputs)
    }
}

/// Whether Triton cancelled `request`.
fn cancelled(request: *mut TRITONBACKEND_Request) -> bool {
    let mut yes = false;
    // SAFETY: `request` is live.
    let err = unsafe { TRITONBACKEND_RequestIsCancelled(request, &mut yes) };
    if !err.is_null() {
        // SAFETY: we own the returned error.
        unsafe { TRITONSERVER_ErrorDelete(err) };
        return false;
    }
    yes
}

/// The outputs the request asked for (all when it named none).
fn requested_outputs(request: *mut TRITONBACKEND_Request) -> TResult<Vec<String>> {
    let mut count = 0u32;
    // SAFETY: `request` is live; names are owned by Triton.
    unsafe {
        check(
            TRITONBACKEND_RequestOutputCount(request, &mut count),
            "output count",
        )?;
        (0..count)
            .map(|i| {
                let mut name: *const c_char = ptr::null();
                check(
                    TRITONBACKEND_RequestOutputName(request, i, &mut name),
                    "output name",
                )?;
                Ok(cstr(name))
            })
            .collect()
    }
}

/// Adds output `name` to `response` and fills it with `bytes`.
fn put_output(
    response: *mut TRITONBACKEND_Response,
    name: &str,
    dtype: TRITONSERVER_DataType,
    shape: &[i64],
    bytes: &[u8],
) -> TResult<()> {
    let cname = CString::new(name).map_err(|_| Fault::internal("output name"))?;
    let mut output: *mut TRITONBACKEND_Output = ptr::null_mut();
    let mut buffer: *mut c_void = ptr::null_mut();
    let mut memory: TRITONSERVER_MemoryType = TRITONSERVER_MEMORY_CPU;
    let mut memory_id = 0i64;
    // SAFETY: `response` is live; the buffer Triton returns holds `bytes.len()` bytes.
    unsafe {
        check(
            TRITONBACKEND_ResponseOutput(
                response,
                &mut output,
                cname.as_ptr(),
                dtype,
                shape.as_ptr(),
                shape.len() as u32,
            ),
            "creating an output",
        )?;
        check(
            TRITONBACKEND_OutputBuffer(
                output,
                &mut buffer,
                bytes.len() as u64,
                &mut memory,
                &mut memory_id,
            ),
            "allocating an output buffer",
        )?;
        if memory == TRITONSERVER_MEMORY_GPU {
            return Err(Fault::internal(format!(
                "Triton gave output `{name}` a GPU buffer; the dfc backend writes host memory"
            )));
        }
        if !bytes.is_empty() {
            ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len());
        }
    }
    Ok(())
}

/// Serves one request: parse, sample (cancellable between steps), respond.
/// `times` receives the compute start and end (ns).
fn serve(
    state: &mut InstanceState,
    request: *mut TRITONBACKEND_Request,
    times: &mut (u64, u64),
) -> TResult<()> {
    let inputs = read_inputs(request)?;
    let job = parse_job(state.instance.plan(), state.instance.settings(), inputs)
        .map_err(|e| Fault::invalid(e.0))?;
    let wanted = requested_outputs(request)?;
    let id = {
        let mut id: *const c_char = ptr::null();
        // SAFETY: `request` is live.
        let err = unsafe { TRITONBACKEND_RequestId(request, &mut id) };
        if err.is_null() {
            // SAFETY: a NUL-terminated string owned by Triton.
            unsafe { cstr(id) }
        } else {
            // SAFETY: we own the returned error.
            unsafe { TRITONSERVER_ErrorDelete(err) };
            String::new()
        }
    };
    let verbose = {
        // SAFETY: a plain query.
        unsafe { TRITONSERVER_LogIsEnabled(TRITONSERVER_LOG_VERBOSE) }
    };
    let label = format!("dfc instance `{}` request `{id}`", state.name);
    times.0 = now_ns();
    let result = state.instance.run(
        &job,
        || !cancelled(request),
        |i, seconds| {
            if verbose {
                log(
                    TRITONSERVER_LOG_VERBOSE,
                    &format!(
                        "{label}: step {} of {} in {:.1} ms",
                        i + 1,
                        job.options.sampler.steps,
                        seconds * 1e3
                    ),
                );
            }
        },
    );
    times.1 = now_ns();
    let outcome = match result {
        Ok(o) => o,
        Err(RunFailure::Cancelled { done, steps }) => {
            log(
                TRITONSERVER_LOG_INFO,
                &format!("{label}: cancelled after {done} of {steps} steps"),
            );
            return Err(Fault {
                code: TRITONSERVER_ERROR_CANCELLED,
                message: format!("cancelled after {done} of {steps} steps"),
            });
        }
        Err(RunFailure::Request(message)) => return Err(Fault::invalid(message)),
        Err(e @ RunFailure::Rank { .. }) => {
            log(TRITONSERVER_LOG_ERROR, &format!("{label}: {e}"));
            return Err(Fault::internal(e.to_string()));
        }
    };
    let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let mut response: *mut TRITONBACKEND_Response = ptr::null_mut();
    // SAFETY: `request` is live.
    check(
        unsafe { TRITONBACKEND_ResponseNew(&mut response, request) },
        "creating the response",
    )?;
    let filled = (|| -> TResult<()> {
        if want(LATENT) {
            let shape: Vec<i64> = outcome.latent.shape().iter().map(|&d| d as i64).collect();
            let bytes: Vec<u8> = outcome
                .latent
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            put_output(response, LATENT, TRITONSERVER_TYPE_FP32, &shape, &bytes)?;
        }
        if let Some((bytes, shape)) = &outcome.image
            && want(IMAGE)
        {
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            put_output(response, IMAGE, TRITONSERVER_TYPE_UINT8, &shape, bytes)?;
        }
        Ok(())
    })();
    // SAFETY: `response` is live; on success ResponseSend takes it, else we send the error.
    unsafe {
        match filled {
            Ok(()) => log_error(
                TRITONBACKEND_ResponseSend(
                    response,
                    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                    ptr::null_mut(),
                ),
                "dfc: sending a response",
            ),
            Err(fault) => {
                let error = fault.into_raw();
                let err = TRITONBACKEND_ResponseSend(
                    response,
                    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                    error,
                );
                TRITONSERVER_ErrorDelete(error);
                if !err.is_null() {
                    TRITONSERVER_ErrorDelete(err);
                }
            }
        }
    }
    if verbose {
        let total: f64 = outcome.step_seconds.iter().sum();
        log(
            TRITONSERVER_LOG_VERBOSE,
            &format!(
                "{label}: {} steps in {:.3} s",
                outcome.step_seconds.len(),
                total
            ),
        );
    }
    Ok(())
}
