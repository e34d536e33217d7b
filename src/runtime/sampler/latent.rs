//! Latent helpers of the sampling loop: classifier-free guidance, the seeded initial noise,
//! and moving a band's rows in and out of a full NCHW latent.

use std::ops::Range;

use super::{SamplerError, check_len};
use crate::rng::Rng;

/// Classifier-free guidance: `uncond + scale * (cond - uncond)`, in `f32` operation by
/// operation as diffusers' pipelines compute it.
pub fn guide(uncond: &[f32], cond: &[f32], scale: f32) -> Result<Vec<f32>, SamplerError> {
    check_len("conditional model output", uncond.len(), cond.len())?;
    Ok(uncond
        .iter()
        .zip(cond)
        .map(|(&u, &c)| u + scale * (c - u))
        .collect())
}

/// The full NCHW latent noise for `seed`: standard normals from [`Rng`] in row-major order.
/// Every rank generates the same full latent and keeps its band (see [`band_noise`]), so a
/// banded run starts from exactly the single-device run's noise.
pub fn latent_noise(seed: u64, shape: [usize; 4]) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..shape.iter().product::<usize>())
        .map(|_| rng.normal())
        .collect()
}

/// Rows `rows` (axis 2) of the row-major NCHW tensor `full` of `shape`, flattened in NCHW order.
pub fn take_rows(
    full: &[f32],
    shape: [usize; 4],
    rows: Range<usize>,
) -> Result<Vec<f32>, SamplerError> {
    let [n, c, h, w] = shape;
    check_len("full latent", n * c * h * w, full.len())?;
    if rows.start > rows.end || rows.end > h {
        return Err(SamplerError::Band(format!(
            "rows {rows:?} outside a latent of {h} rows"
        )));
    }
    let mut out = Vec::with_capacity(n * c * rows.len() * w);
    for plane in full.chunks_exact(h * w) {
        out.extend_from_slice(&plane[rows.start * w..rows.end * w]);
    }
    Ok(out)
}

/// Writes `band` (rows `rows` of an NCHW tensor of `shape`, as [`take_rows`] returns them)
/// back into the full tensor `full`.
pub fn put_rows(
    band: &[f32],
    shape: [usize; 4],
    rows: Range<usize>,
    full: &mut [f32],
) -> Result<(), SamplerError> {
    let [n, c, h, w] = shape;
    check_len("full latent", n * c * h * w, full.len())?;
    if rows.start > rows.end || rows.end > h {
        return Err(SamplerError::Band(format!(
            "rows {rows:?} outside a latent of {h} rows"
        )));
    }
    check_len("band", n * c * rows.len() * w, band.len())?;
    let run = rows.len() * w;
    if run == 0 {
        return Ok(());
    }
    for (plane, part) in full.chunks_exact_mut(h * w).zip(band.chunks_exact(run)) {
        plane[rows.start * w..rows.end * w].copy_from_slice(part);
    }
    Ok(())
}

/// Rows `rows` of [`latent_noise`]`(seed, shape)`: a band's starting noise.
pub fn band_noise(
    seed: u64,
    shape: [usize; 4],
    rows: Range<usize>,
) -> Result<Vec<f32>, SamplerError> {
    take_rows(&latent_noise(seed, shape), shape, rows)
}
