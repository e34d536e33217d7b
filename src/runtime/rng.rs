//! Random host tensors from the shared seeded source ([`Rng`], in the contract).

use super::host::HostTensor;
pub use crate::contract::rng::Rng;

/// A standard-normal tensor of `shape` from `rng`, in the element type of `like` (integers:
/// |x|·100, truncated).
pub fn tensor_like(rng: &mut Rng, like: &HostTensor, shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let a = ndarray::ArrayD::from_shape_vec(shape, data).expect("shape and length agree");
    match like {
        HostTensor::F32(_) => HostTensor::F32(a),
        HostTensor::F16(_) => HostTensor::F16(a.mapv(half::f16::from_f32)),
        HostTensor::I64(_) => HostTensor::I64(a.mapv(|v| (v.abs() * 100.0) as i64)),
    }
}
