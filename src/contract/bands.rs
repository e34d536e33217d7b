//! Band geometry: which rows of the image each band of a group owns, at every UNet level.
//!
//! A group cuts the latent's `H` rows into `n` contiguous bands with boundaries
//! `0 = b_0 < b_1 < … < b_n = H`. Any tensor split along an axis of extent `E` (a feature map
//! of `E` rows, or a token axis of `E = rows · width` tokens) is cut at the same relative
//! positions: band `r` owns `[E·b_r/H, E·b_{r+1}/H)`. A cut is valid when every such position
//! is a whole number for every split extent of the model; the compiler derives the smallest
//! row step (the *granularity*, `2^(levels−1)` for a UNet with `levels` resolutions) that
//! guarantees it. Bands may be unequal: by default the rows are spread as evenly as the
//! granularity allows (128 rows, step 4, 3 bands: 44 / 44 / 40), or set by hand, or sized by
//! relative GPU speed.
//!
//! Every consumer takes band geometry from here: the compiler (local shapes, per-band
//! constants, halo checks), the exchange operators (gather parts, statistics weights), the
//! runtime (splitting inputs, sampling each band) and, through `plan.json`, the GPU plugins.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Why a band list is not valid.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BandError {
    #[error("at least one band is needed")]
    Empty,
    #[error("band {band} has {rows} rows; every band needs at least one row")]
    EmptyBand { band: usize, rows: i64 },
    #[error("the bands cover {sum} rows, the image has {height}")]
    Coverage { sum: i64, height: i64 },
    #[error(
        "band boundary {boundary} is not a multiple of {step} rows, so it would not stay on a row \
         boundary at every level of the model; {hint}"
    )]
    Granularity {
        boundary: i64,
        step: i64,
        hint: String,
    },
    #[error("{n} bands do not fit {height} rows in steps of {step} rows; {hint}")]
    TooMany {
        n: usize,
        height: i64,
        step: i64,
        hint: String,
    },
    #[error("GPU weights must be positive and finite, got {0:?}")]
    Weights(Vec<f64>),
    #[error("{weights} GPU weights given for {n} bands")]
    WeightCount { weights: usize, n: usize },
}

/// The bands of one group: boundaries at the latent level.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<i64>", into = "Vec<i64>")]
pub struct Bands {
    bounds: Vec<i64>,
}

impl TryFrom<Vec<i64>> for Bands {
    type Error = BandError;
    fn try_from(bounds: Vec<i64>) -> Result<Self, BandError> {
        Self::from_bounds(bounds)
    }
}

impl From<Bands> for Vec<i64> {
    fn from(b: Bands) -> Self {
        b.bounds
    }
}

impl Bands {
    /// Bands from their boundaries `0 = b_0 < … < b_n = H`.
    pub fn from_bounds(bounds: Vec<i64>) -> Result<Self, BandError> {
        if bounds.len() < 2 {
            return Err(BandError::Empty);
        }
        if bounds[0] != 0 {
            return Err(BandError::EmptyBand {
                band: 0,
                rows: -bounds[0],
            });
        }
        for (band, w) in bounds.windows(2).enumerate() {
            if w[1] <= w[0] {
                return Err(BandError::EmptyBand {
                    band,
                    rows: w[1] - w[0],
                });
            }
        }
        Ok(Self { bounds })
    }

    /// Bands of the given heights, top to bottom.
    pub fn from_heights(heights: &[i64]) -> Result<Self, BandError> {
        if heights.is_empty() {
            return Err(BandError::Empty);
        }
        let mut bounds = Vec::with_capacity(heights.len() + 1);
        bounds.push(0);
        for (band, &h) in heights.iter().enumerate() {
            if h <= 0 {
                return Err(BandError::EmptyBand { band, rows: h });
            }
            bounds.push(bounds[band] + h);
        }
        Self::from_bounds(bounds)
    }

    /// One band holding all `height` rows.
    pub fn single(height: i64) -> Self {
        Self {
            bounds: vec![0, height.max(1)],
        }
    }

    /// `n` bands of `height` rows, as even as boundaries on multiples of `step` allow: every
    /// band gets `⌊units/n⌋` steps of rows and the first `units mod n` bands one more (the
    /// last band absorbs a remainder of `height` that is not a whole step).
    pub fn even(height: i64, n: usize, step: i64) -> Result<Self, BandError> {
        let (units, rest) = Self::units(height, n, step)?;
        let step = step.max(1);
        let (q, r) = (units / n as i64, units % n as i64);
        let mut heights: Vec<i64> = (0..n as i64)
            .map(|i| (q + i64::from(i < r)) * step)
            .collect();
        heights[n - 1] += rest;
        Self::from_heights(&heights)
    }

    /// Bands for GPUs of relative speeds `weights` (one per band), on multiples of `step`
    /// rows, every band at least one step: a band of `rows` takes `rows / weight`, and the
    /// bands are those whose slowest band takes the least time. Among the lists that reach
    /// it, the most even one (least sum of squared heights; ties go to the bands nearer the
    /// top), so equal weights give [`Bands::even`]. The remainder of `height` that is not a
    /// whole step stays on the last band and counts in its time.
    pub fn weighted(height: i64, weights: &[f64], step: i64) -> Result<Self, BandError> {
        if weights.iter().any(|w| !w.is_finite() || *w <= 0.0) {
            return Err(BandError::Weights(weights.to_vec()));
        }
        let n = weights.len();
        let (units, rest) = Self::units(height, n, step)?;
        let step = step.max(1);
        let extra = |i: usize| if i == n - 1 { rest } else { 0 };
        let time = |i: usize, k: i64| (k * step + extra(i)) as f64 / weights[i];
        // The most units band `i` may hold within time `t` (a relative tolerance keeps a
        // band whose time is `t` itself, whatever the rounding of the division).
        let cap = |i: usize, t: f64| -> i64 {
            let rows = t * weights[i] * (1.0 + 1e-9) - extra(i) as f64;
            ((rows / step as f64).floor() as i64).min(units)
        };
        let caps = |t: f64| -> Option<Vec<i64>> {
            let c: Vec<i64> = (0..n).map(|i| cap(i, t)).collect();
            (c.iter().all(|&k| k >= 1) && c.iter().sum::<i64>() >= units).then_some(c)
        };
        // The least slowest-band time is one band's time at some number of units: the
        // smallest candidate within which every band fits (feasibility grows with the time).
        let mut candidates: Vec<f64> = (0..n)
            .flat_map(|i| (1..=units).map(move |k| (i, k)))
            .map(|(i, k)| time(i, k))
            .collect();
        candidates.sort_by(f64::total_cmp);
        candidates.dedup();
        let first = candidates.partition_point(|&t| caps(t).is_none());
        let limits = candidates
            .get(first)
            .and_then(|&t| caps(t))
            .ok_or_else(|| BandError::Weights(weights.to_vec()))?;
        // Within the limits, each further unit goes to the shortest band (the top one among
        // equals): the least sum of squares for a convex, separable cost.
        let mut got = vec![1i64; n];
        for _ in n as i64..units {
            let next = (0..n)
                .filter(|&i| got[i] < limits[i])
                .min_by_key(|&i| (got[i] * step + extra(i), i))
                .ok_or_else(|| BandError::Weights(weights.to_vec()))?;
            got[next] += 1;
        }
        let heights: Vec<i64> = (0..n).map(|i| got[i] * step + extra(i)).collect();
        Self::from_heights(&heights)
    }

    /// Whole steps of `height` and the rows left over, checked to give `n` bands one step
    /// each.
    fn units(height: i64, n: usize, step: i64) -> Result<(i64, i64), BandError> {
        if n == 0 {
            return Err(BandError::Empty);
        }
        let step = step.max(1);
        let units = height / step;
        if units < n as i64 {
            return Err(BandError::TooMany {
                n,
                height,
                step,
                hint: counts_hint(height, step),
            });
        }
        Ok((units, height - units * step))
    }

    /// Checks that these bands cover `height` rows with every boundary on a multiple of
    /// `step`.
    pub fn check(&self, height: i64, step: i64) -> Result<(), BandError> {
        if self.height() != height {
            return Err(BandError::Coverage {
                sum: self.height(),
                height,
            });
        }
        let step = step.max(1);
        for &b in &self.bounds[1..self.n()] {
            if b % step != 0 {
                return Err(BandError::Granularity {
                    boundary: b,
                    step,
                    hint: format!(
                        "{}; e.g. {}",
                        counts_hint(height, step),
                        example_lists(height, step)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Number of bands.
    pub fn n(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Latent rows of the whole image.
    pub fn height(&self) -> i64 {
        self.bounds[self.n()]
    }

    /// The boundaries `b_0 … b_n`.
    pub fn bounds(&self) -> &[i64] {
        &self.bounds
    }

    /// Latent rows of band `r`.
    pub fn rows(&self, r: usize) -> Range<i64> {
        self.bounds[r]..self.bounds[r + 1]
    }

    /// Heights of every band, top to bottom.
    pub fn heights(&self) -> Vec<i64> {
        self.bounds.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Whether every band has the same height.
    pub fn is_even(&self) -> bool {
        let h = self.heights();
        h.iter().all(|&x| x == h[0])
    }

    /// Band `r`'s share of the image (its rows over all rows): the weight of its partial
    /// statistics in a group mean, at every level.
    pub fn share(&self, r: usize) -> f64 {
        let rows = self.rows(r);
        (rows.end - rows.start) as f64 / self.height() as f64
    }

    /// The shares of every band.
    pub fn shares(&self) -> Vec<f64> {
        (0..self.n()).map(|r| self.share(r)).collect()
    }

    /// Whether an axis of `extent` cuts at whole positions for every band.
    pub fn divides(&self, extent: i64) -> bool {
        let h = self.height();
        self.bounds.iter().all(|&b| (extent * b) % h == 0)
    }

    /// Band `r`'s range of an axis of `extent` (`None` when it is not whole).
    pub fn part(&self, r: usize, extent: i64) -> Option<Range<i64>> {
        if !self.divides(extent) || r >= self.n() {
            return None;
        }
        let h = self.height();
        Some(extent * self.bounds[r] / h..extent * self.bounds[r + 1] / h)
    }

    /// Every band's length on an axis of `extent` (`None` when the cut is not whole).
    pub fn parts(&self, extent: i64) -> Option<Vec<i64>> {
        if !self.divides(extent) {
            return None;
        }
        let h = self.height();
        Some(
            self.bounds
                .windows(2)
                .map(|w| extent * (w[1] - w[0]) / h)
                .collect(),
        )
    }

    /// The number of latent rows per step that keeps every boundary whole on every one of
    /// `extents` (split axes of the model): `lcm_E H / gcd(E, H)`.
    pub fn granularity(height: i64, extents: impl IntoIterator<Item = i64>) -> i64 {
        let mut step = 1;
        for e in extents {
            if e <= 0 {
                continue;
            }
            let need = height / gcd(e, height);
            step = lcm(step, need);
        }
        step
    }

    /// The text form `44,44,40` (heights).
    pub fn heights_text(&self) -> String {
        self.heights()
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for Bands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.heights_text())
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

fn lcm(a: i64, b: i64) -> i64 {
    a / gcd(a, b) * b
}

/// "band counts 1 to K work (boundaries on multiples of S rows)".
fn counts_hint(height: i64, step: i64) -> String {
    let max = (height / step.max(1)).max(1);
    format!("any band count from 1 to {max} works, with boundaries on multiples of {step} rows")
}

/// Two example band lists for the hint of an invalid list.
fn example_lists(height: i64, step: i64) -> String {
    let max = (height / step.max(1)).max(1) as usize;
    [3usize, 2]
        .iter()
        .filter(|&&n| n <= max)
        .filter_map(|&n| Bands::even(height, n, step).ok())
        .map(|b| format!("--bands {b}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_spread_matches_the_sdxl_example() -> Result<(), BandError> {
        let b = Bands::even(128, 3, 4)?;
        assert_eq!(b.heights(), vec![44, 44, 40]);
        assert_eq!(Bands::even(128, 8, 4)?.heights(), vec![16; 8]);
        assert_eq!(Bands::even(128, 32, 4)?.heights(), vec![4; 32]);
        assert!(matches!(
            Bands::even(128, 33, 4),
            Err(BandError::TooMany { .. })
        ));
        Ok(())
    }

    #[test]
    fn equal_counts_give_equal_bands() -> Result<(), BandError> {
        for n in [1, 2, 4, 8] {
            let b = Bands::even(64, n, 4)?;
            assert!(b.is_even(), "{b}");
            assert_eq!(b.n(), n);
        }
        Ok(())
    }

    #[test]
    fn weights_size_the_bands() -> Result<(), BandError> {
        let b = Bands::weighted(128, &[1.0, 1.0, 0.8], 4)?;
        assert_eq!(b.height(), 128);
        let h = b.heights();
        assert!(h[2] < h[0] && h.iter().all(|x| x % 4 == 0), "{h:?}");
        assert_eq!(b, Bands::weighted(128, &[2.0, 2.0, 1.6], 4)?);
        assert!(Bands::weighted(128, &[1.0, 0.0], 4).is_err());
        Ok(())
    }

    #[test]
    fn weights_minimise_the_slowest_band_time() -> Result<(), BandError> {
        // Time of a band is rows / weight: 20, 20, 8 take at most 20 (8 / 0.5 = 16).
        assert_eq!(
            Bands::weighted(48, &[1.0, 1.0, 0.5], 4)?.heights(),
            vec![20, 20, 8]
        );
        assert_eq!(
            Bands::weighted(48, &[0.5, 1.0, 1.0], 4)?.heights(),
            vec![8, 20, 20]
        );
        // A remainder that is not a whole step stays on the last band and counts in its time.
        assert_eq!(
            Bands::weighted(50, &[1.0, 1.0, 1.0], 4)?.heights(),
            vec![16, 16, 18]
        );
        for step in [1, 2, 4, 8] {
            for h in step..=160 {
                for n in 1..=((h / step) as usize).min(9) {
                    assert_eq!(
                        Bands::weighted(h, &vec![0.3; n], step)?,
                        Bands::even(h, n, step)?,
                        "{h} rows, {n} bands, step {step}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn parts_scale_with_the_level() -> Result<(), BandError> {
        let b = Bands::from_heights(&[44, 44, 40])?;
        assert_eq!(b.parts(128), Some(vec![44, 44, 40]));
        assert_eq!(b.parts(32), Some(vec![11, 11, 10]));
        assert_eq!(b.parts(32 * 32), Some(vec![352, 352, 320]));
        assert_eq!(b.part(2, 64), Some(44..64));
        assert_eq!(b.parts(16), None);
        Ok(())
    }

    #[test]
    fn granularity_is_the_coarsest_level() {
        assert_eq!(Bands::granularity(128, [128, 64, 32, 32 * 40]), 4);
        assert_eq!(Bands::granularity(48, [48, 24, 12]), 4);
        assert_eq!(Bands::granularity(12, [12]), 1);
    }

    #[test]
    fn hand_set_lists_are_checked() -> Result<(), BandError> {
        let b = Bands::from_heights(&[44, 44, 40])?;
        b.check(128, 4)?;
        let e = Bands::from_heights(&[42, 46, 40])?
            .check(128, 4)
            .expect_err("42 is not on a step");
        let text = e.to_string();
        assert!(
            text.contains("multiple of 4") && text.contains("1 to 32"),
            "{text}"
        );
        assert!(Bands::from_heights(&[44, 44]).is_ok_and(|b| b.check(128, 4).is_err()));
        assert!(Bands::from_heights(&[44, 0, 84]).is_err());
        Ok(())
    }

    #[test]
    fn serde_round_trips_through_bounds() -> Result<(), Box<dyn std::error::Error>> {
        let b = Bands::from_heights(&[44, 44, 40])?;
        let text = serde_json::to_string(&b)?;
        assert_eq!(text, "[0,44,88,128]");
        assert_eq!(serde_json::from_str::<Bands>(&text)?, b);
        assert!(serde_json::from_str::<Bands>("[0,5,3]").is_err());
        Ok(())
    }
}
