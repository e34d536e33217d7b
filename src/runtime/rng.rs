//! A small seeded pseudo-random source (SplitMix64 with Box–Muller normals): reproducible
//! inputs for `dfc verify` and the tests, identical on every machine.

use super::host::HostTensor;

/// A seeded source of pseudo-random numbers (SplitMix64), so seeded inputs need no extra crate.
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// A standard-normal tensor of `shape`, in the element type of `like`.
    pub fn tensor_like(&mut self, like: &HostTensor, shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.normal()).collect();
        let a = ndarray::ArrayD::from_shape_vec(shape, data).expect("shape and length agree");
        match like {
            HostTensor::F32(_) => HostTensor::F32(a),
            HostTensor::F16(_) => HostTensor::F16(a.mapv(half::f16::from_f32)),
            HostTensor::I64(_) => HostTensor::I64(a.mapv(|v| (v.abs() * 100.0) as i64)),
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}
