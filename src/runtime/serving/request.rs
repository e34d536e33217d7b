//! The request contract: raw tensors as a server hands them over ([`RawInput`]) checked against
//! the plan and turned into a sampling [`Job`]; the model's [`Settings`] (the `parameters` of
//! its `config.pbtxt`).
//!
//! A request carries one input per conditioning array of `dfc run --inputs` (every plan input
//! but the latent and the timestep: same name, element type and full-batch shape, the
//! unconditional half first under guidance) and the scalars `seed` (INT64), `steps` (INT32),
//! `guidance` (FP32) and optionally `scheduler` (BYTES), each of shape `[1]`. Every error names
//! the input and what is wrong with it.

use std::collections::BTreeMap;

use half::f16;
use ndarray::{ArrayD, IxDyn};

use super::{GUIDANCE, SCHEDULER, SEED, STEPS};
use crate::host::HostTensor;
use crate::plan::{Plan, TensorSpec};
use crate::sampler::{Prediction, SamplerConfig, SamplerKind};
use crate::sampling::{SampleError, SampleOptions, conditioning_inputs};

/// Element types of the server protocol (Triton's names), as far as dfc meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Uint8,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
    /// Any other type, by its protocol name.
    Other(&'static str),
}

impl DataType {
    /// The protocol's name (`FP32`, `INT64`, …).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
            DataType::Other(name) => name,
        }
    }

    /// Bytes per element (`None` for BYTES and unknown types).
    pub fn size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 => Some(1),
            DataType::Fp16 => Some(2),
            DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes | DataType::Other(_) => None,
        }
    }

    /// The type a plan tensor of dfc element type `dtype` (`f32`, `f16`, `i64`) is served as.
    pub fn of_plan(dtype: &str) -> Option<DataType> {
        match dtype {
            "f32" => Some(DataType::Fp32),
            "f16" => Some(DataType::Fp16),
            "i64" => Some(DataType::Int64),
            _ => None,
        }
    }
}

/// One input of a request, its bytes contiguous and in host memory.
#[derive(Debug, Clone)]
pub struct RawInput {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

/// A request that cannot be served; the message names the input and the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError(message.into()))
}

/// The sampling settings of a served model: `config.pbtxt`'s `parameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The most steps a request may ask for.
    pub max_steps: usize,
    /// The scheduler of requests without a `scheduler` input.
    pub scheduler: SamplerKind,
    /// SDXL's scheduler config (`leading` spacing) instead of SD1.5's.
    pub sdxl_schedule: bool,
    /// What the model predicts.
    pub prediction: Prediction,
    /// The VAE's scaling factor (the latent is divided by it before decoding).
    pub vae_scale: f32,
    /// Cores of one instance (0: the machine's cores shared evenly by the instances).
    pub threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_steps: 200,
            scheduler: SamplerKind::Ddim,
            sdxl_schedule: false,
            prediction: Prediction::Epsilon,
            vae_scale: 0.18215,
            threads: 0,
        }
    }
}

/// The parameter keys of [`Settings`], in the order they are written.
pub const SETTING_KEYS: [&str; 6] = [
    "max_steps",
    "scheduler",
    "schedule",
    "prediction",
    "vae_scale",
    "threads",
];

impl Settings {
    /// The settings as `(key, value)` parameters.
    pub fn to_parameters(&self) -> Vec<(&'static str, String)> {
        vec![
            ("max_steps", self.max_steps.to_string()),
            ("scheduler", self.scheduler.name().to_string()),
            (
                "schedule",
                if self.sdxl_schedule { "sdxl" } else { "sd15" }.to_string(),
            ),
            (
                "prediction",
                match self.prediction {
                    Prediction::Epsilon => "epsilon",
                    Prediction::VPrediction => "v",
                }
                .to_string(),
            ),
            ("vae_scale", self.vae_scale.to_string()),
            ("threads", self.threads.to_string()),
        ]
    }

    /// Reads parameters (absent keys keep their defaults; unknown keys and bad values are
    /// errors naming the key).
    pub fn from_parameters<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut s = Settings::default();
        for (key, value) in params {
            let bad = |what: &str| format!("parameter `{key}`: {value:?} is not {what}");
            match key {
                "max_steps" => {
                    s.max_steps = value
                        .parse()
                        .ok()
                        .filter(|&n: &usize| n >= 1)
                        .ok_or_else(|| bad("a step count ≥ 1"))?;
                }
                "scheduler" => {
                    s.scheduler = value
                        .parse()
                        .map_err(|e: String| format!("parameter `{key}`: {e}"))?;
                }
                "schedule" => {
                    s.sdxl_schedule = match value {
                        "sd15" => false,
                        "sdxl" => true,
                        _ => return Err(bad("`sd15` or `sdxl`")),
                    }
                }
                "prediction" => {
                    s.prediction = match value {
                        "epsilon" => Prediction::Epsilon,
                        "v" => Prediction::VPrediction,
                        _ => return Err(bad("`epsilon` or `v`")),
                    }
                }
                "vae_scale" => {
                    s.vae_scale = value
                        .parse()
                        .ok()
                        .filter(|v: &f32| v.is_finite() && *v != 0.0)
                        .ok_or_else(|| bad("a finite non-zero number"))?;
                }
                "threads" => {
                    s.threads = value.parse().map_err(|_| bad("a thread count"))?;
                }
                _ => {
                    return Err(format!(
                        "unknown parameter `{key}`; dfc models take {}",
                        SETTING_KEYS.join(", ")
                    ));
                }
            }
        }
        Ok(s)
    }
}

/// A checked request: the conditioning at full batch and the sampling options.
#[derive(Debug, Clone)]
pub struct Job {
    pub cond: Vec<(String, HostTensor)>,
    pub options: SampleOptions,
}

/// The conditioning inputs of `plan` (every input but the latent and the timestep), each with
/// its protocol type; an input dfc cannot serve is an error naming it.
pub fn conditioning(plan: &Plan) -> Result<Vec<(&TensorSpec, DataType)>, String> {
    let specs = conditioning_inputs(plan).map_err(|e: SampleError| e.to_string())?;
    specs
        .into_iter()
        .map(|s| match DataType::of_plan(&s.dtype) {
            Some(t) => Ok((s, t)),
            None => Err(format!(
                "the plan's input `{}` has element type {}, which dfc does not serve \
                 (f32, f16 and i64 are)",
                s.name, s.dtype
            )),
        })
        .collect()
}

/// Checks `inputs` against the plan and the settings and makes the sampling job.
pub fn parse_job(
    plan: &Plan,
    settings: &Settings,
    inputs: Vec<RawInput>,
) -> Result<Job, RequestError> {
    let cond_specs = conditioning(plan).map_err(RequestError)?;
    let mut by_name: BTreeMap<String, RawInput> = BTreeMap::new();
    for input in inputs {
        if by_name.contains_key(&input.name) {
            return fail(format!("input `{}` is given twice", input.name));
        }
        by_name.insert(input.name.clone(), input);
    }
    let known: Vec<&str> = cond_specs
        .iter()
        .map(|(s, _)| s.name.as_str())
        .chain([SEED, STEPS, GUIDANCE, SCHEDULER])
        .collect();
    if let Some(name) = by_name.keys().find(|n| !known.contains(&n.as_str())) {
        return fail(format!(
            "unexpected input `{name}`; this model's inputs are {}",
            known.join(", ")
        ));
    }
    let mut take = |name: &str| by_name.remove(name);

    let mut cond = Vec::with_capacity(cond_specs.len());
    for (spec, dtype) in &cond_specs {
        let Some(raw) = take(&spec.name) else {
            return fail(format!(
                "missing input `{}` ({} {:?})",
                spec.name,
                dtype.name(),
                spec.shape
            ));
        };
        cond.push((spec.name.clone(), tensor(&raw, *dtype, &spec.shape)?));
    }
    let seed = match scalar(take(SEED), SEED, DataType::Int64)? {
        Some(b) => {
            let v = i64::from_le_bytes(b.try_into().map_err(|_| RequestError("seed".into()))?);
            u64::try_from(v)
                .map_err(|_| RequestError(format!("input `{SEED}`: {v} is negative")))?
        }
        None => return fail(format!("missing input `{SEED}` (INT64 [1])")),
    };
    let steps = match scalar(take(STEPS), STEPS, DataType::Int32)? {
        Some(b) => i32::from_le_bytes(b.try_into().map_err(|_| RequestError("steps".into()))?),
        None => return fail(format!("missing input `{STEPS}` (INT32 [1])")),
    };
    if steps < 1 || steps as usize > settings.max_steps {
        return fail(format!(
            "input `{STEPS}`: {steps} is outside 1..={} (the model's max_steps)",
            settings.max_steps
        ));
    }
    let guidance = match scalar(take(GUIDANCE), GUIDANCE, DataType::Fp32)? {
        Some(b) => f32::from_le_bytes(b.try_into().map_err(|_| RequestError("guidance".into()))?),
        None => return fail(format!("missing input `{GUIDANCE}` (FP32 [1])")),
    };
    if !guidance.is_finite() {
        return fail(format!(
            "input `{GUIDANCE}`: {guidance} is not a finite number"
        ));
    }
    let scheduler = match take(SCHEDULER) {
        None => settings.scheduler,
        Some(raw) => {
            check_header(&raw, DataType::Bytes, &[1])?;
            let text = bytes_element(&raw.data)
                .ok_or_else(|| RequestError(format!("input `{SCHEDULER}`: malformed BYTES")))?;
            text.parse()
                .map_err(|e: String| RequestError(format!("input `{SCHEDULER}`: {e}")))?
        }
    };
    let batch = crate::sampling::latent_batch(plan).map_err(|e| RequestError(e.to_string()))?;
    if guidance != 1.0 && !batch.is_multiple_of(2) {
        return fail(format!(
            "input `{GUIDANCE}`: {guidance} needs a plan compiled for an even batch \
             (unconditional half first); this plan's batch is {batch}: send 1, or compile \
             with --batch {}",
            2 * batch
        ));
    }
    let steps = steps as usize;
    let sampler = if settings.sdxl_schedule {
        SamplerConfig::sdxl(scheduler, steps, settings.prediction)
    } else {
        SamplerConfig::sd15(scheduler, steps, settings.prediction)
    };
    sampler
        .build()
        .map_err(|e| RequestError(format!("input `{STEPS}`: {e}")))?;
    Ok(Job {
        cond,
        options: SampleOptions {
            sampler,
            guidance: Some(guidance),
            seed,
        },
    })
}

fn check_header(raw: &RawInput, dtype: DataType, shape: &[i64]) -> Result<(), RequestError> {
    if raw.dtype != dtype {
        return fail(format!(
            "input `{}` has type {}, the model takes {}",
            raw.name,
            raw.dtype.name(),
            dtype.name()
        ));
    }
    if raw.shape != shape {
        return fail(format!(
            "input `{}` has shape {:?}, the model takes {shape:?}",
            raw.name, raw.shape
        ));
    }
    Ok(())
}

/// The bytes of a `[1]` scalar of type `dtype` (`None` when absent).
fn scalar(
    raw: Option<RawInput>,
    name: &str,
    dtype: DataType,
) -> Result<Option<Vec<u8>>, RequestError> {
    let Some(raw) = raw else { return Ok(None) };
    check_header(&raw, dtype, &[1])?;
    let size = dtype.size().unwrap_or(0);
    if raw.data.len() != size {
        return fail(format!(
            "input `{name}` holds {} bytes, one {} holds {size}",
            raw.data.len(),
            dtype.name()
        ));
    }
    Ok(Some(raw.data))
}

/// The one element of a BYTES tensor: a little-endian u32 length, then that many bytes.
fn bytes_element(data: &[u8]) -> Option<String> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() == len)
        .then(|| String::from_utf8(rest.to_vec()).ok())
        .flatten()
}

fn tensor(raw: &RawInput, dtype: DataType, shape: &[i64]) -> Result<HostTensor, RequestError> {
    check_header(raw, dtype, shape)?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let count: usize = dims.iter().product();
    let size = dtype.size().unwrap_or(0);
    if raw.data.len() != count * size {
        return fail(format!(
            "input `{}` holds {} bytes; {} {shape:?} is {} bytes",
            raw.name,
            raw.data.len(),
            dtype.name(),
            count * size
        ));
    }
    Ok(match dtype {
        DataType::Fp32 => HostTensor::F32(decode(raw, &dims, f32::from_le_bytes)?),
        DataType::Fp16 => HostTensor::F16(decode(raw, &dims, f16::from_le_bytes)?),
        DataType::Int64 => HostTensor::I64(decode(raw, &dims, i64::from_le_bytes)?),
        other => {
            return fail(format!(
                "input `{}`: type {} is not served",
                raw.name,
                other.name()
            ));
        }
    })
}

/// The little-endian elements of `raw` (whose length is checked) as an array of `dims`.
fn decode<T, const N: usize>(
    raw: &RawInput,
    dims: &[usize],
    from_le: fn([u8; N]) -> T,
) -> Result<ArrayD<T>, RequestError> {
    let values = raw
        .data
        .chunks_exact(N)
        .map(|c| from_le(c.try_into().unwrap_or([0; N])))
        .collect();
    ArrayD::from_shape_vec(IxDyn(dims), values)
        .map_err(|e| RequestError(format!("input `{}`: {e}", raw.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_refuse_unknown_keys() {
        let s = Settings {
            max_steps: 50,
            scheduler: SamplerKind::Euler,
            sdxl_schedule: true,
            prediction: Prediction::VPrediction,
            vae_scale: 0.13025,
            threads: 3,
        };
        let params = s.to_parameters();
        let back = Settings::from_parameters(params.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        assert_eq!(back, s);
        let err = Settings::from_parameters([("max_stepz", "3")]).unwrap_err();
        assert!(err.contains("unknown parameter `max_stepz`"), "{err}");
        let err = Settings::from_parameters([("max_steps", "0")]).unwrap_err();
        assert!(err.contains("max_steps"), "{err}");
    }

    #[test]
    fn bytes_elements_are_length_prefixed() {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend_from_slice(b"euler");
        assert_eq!(bytes_element(&b).as_deref(), Some("euler"));
        assert_eq!(bytes_element(&b[..6]), None);
        assert_eq!(bytes_element(&[1, 0]), None);
    }
}
