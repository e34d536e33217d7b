//! Images out of latents, and how close two of them are.
//!
//! A latent becomes RGB either through a VAE decoder ONNX model ([`VaeDecoder`]) or, with
//! no decoder, by reading its first three channels as RGB in [-1, 1] ([`latent_images`]: exact
//! for pixel-space models such as `models/shapes`, a preview for SD latents). Images are f32
//! RGB in [0, 1]. [`psnr`] and [`ssim`] compare two of them (data range 1); [`grid`] lays
//! panels out for a PNG.

use std::path::Path;

use ndarray::{ArrayD, Axis};
use thiserror::Error;

use super::host::HostTensor;
use super::session::{ModelSession, RunError, SessionOptions};

/// Errors of making, comparing or writing images.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// An RGB image, f32 channels in [0, 1], row-major `[y][x][c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<f32>,
}

impl Image {
    /// A black image.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            rgb: vec![0.0; width * height * 3],
        }
    }

    /// Image `img` of a `[n, C, H, W]` array whose values map from `[lo, hi]` to [0, 1]: the
    /// first three channels as RGB (one channel as gray; missing channels black).
    fn from_nchw(a: &ArrayD<f32>, img: usize, lo: f32, hi: f32) -> Self {
        let (c, h, w) = (a.shape()[1], a.shape()[2], a.shape()[3]);
        let mut out = Self::new(w, h);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let src = if c == 1 {
                        Some(0)
                    } else {
                        (ch < c).then_some(ch)
                    };
                    if let Some(src) = src {
                        let v = (a[[img, src, y, x]] - lo) / (hi - lo);
                        out.rgb[(y * w + x) * 3 + ch] = v.clamp(0.0, 1.0);
                    }
                }
            }
        }
        out
    }

    /// `|self − other| · gain`, clipped to [0, 1].
    pub fn abs_diff(&self, other: &Image, gain: f32) -> Result<Image, ImageError> {
        same_size(self, other)?;
        Ok(Image {
            width: self.width,
            height: self.height,
            rgb: self
                .rgb
                .iter()
                .zip(&other.rgb)
                .map(|(a, b)| ((a - b).abs() * gain).min(1.0))
                .collect(),
        })
    }

    /// 8-bit RGB bytes.
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.rgb
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }

    /// Writes the image as a PNG (replacing `path` only once the file is complete).
    pub fn save_png(&self, path: &Path) -> Result<(), ImageError> {
        let err = |message: String| ImageError::Write {
            path: path.display().to_string(),
            message,
        };
        let (w, h) = (
            u32::try_from(self.width).map_err(|_| err("image too wide".into()))?,
            u32::try_from(self.height).map_err(|_| err("image too tall".into()))?,
        );
        let mut bytes = Vec::new();
        image::write_buffer_with_format(
            &mut std::io::Cursor::new(&mut bytes),
            &self.to_rgb8(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| err(e.to_string()))?;
        crate::onnx::write_atomic(path, &bytes).map_err(|e| err(e.to_string()))
    }
}

fn nchw(latent: &ArrayD<f32>) -> Result<[usize; 4], ImageError> {
    match *latent.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(ImageError::Shape(format!(
            "latent of shape {:?}, not NCHW",
            latent.shape()
        ))),
    }
}

/// The latent's images without a decoder: channels 0..3 read as RGB in [-1, 1].
pub fn latent_images(latent: &ArrayD<f32>) -> Result<Vec<Image>, ImageError> {
    let [n, ..] = nchw(latent)?;
    Ok((0..n)
        .map(|i| Image::from_nchw(latent, i, -1.0, 1.0))
        .collect())
}

/// A VAE decoder ONNX model: one input (the latent divided by the scaling factor, diffusers'
/// `scaling_factor`), first output the image `[b, 3, H', W']` in [-1, 1]. Decoders with a fixed
/// batch of 1 work: images are decoded one by one.
pub struct VaeDecoder {
    session: ModelSession,
    input: String,
    scale: f32,
    path: String,
}

impl VaeDecoder {
    /// Loads the decoder at `path` and checks that it has one input.
    pub fn open(path: &Path, scale: f32, threads: usize) -> Result<Self, ImageError> {
        if !(scale.is_finite() && scale != 0.0) {
            return Err(ImageError::Shape(format!(
                "the VAE scaling factor must be a finite non-zero number, not {scale}"
            )));
        }
        let session = ModelSession::new(
            path,
            SessionOptions {
                threads,
                ..SessionOptions::default()
            },
        )?;
        let names = session.input_names();
        let [input] = names.as_slice() else {
            return Err(ImageError::Shape(format!(
                "{} is not a VAE decoder: it has {} inputs ({}), a decoder has one (the latent)",
                path.display(),
                names.len(),
                names.join(", ")
            )));
        };
        Ok(Self {
            input: input.clone(),
            session,
            scale,
            path: path.display().to_string(),
        })
    }

    /// Decodes the latent `[n, C, H, W]` into `n` images.
    pub fn decode(&mut self, latent: &ArrayD<f32>) -> Result<Vec<Image>, ImageError> {
        let [n, ..] = nchw(latent)?;
        let scaled = latent.mapv(|v| v / self.scale);
        let mut images = Vec::with_capacity(n);
        for i in 0..n {
            let one = scaled
                .index_axis(Axis(0), i)
                .insert_axis(Axis(0))
                .to_owned();
            let out = self
                .session
                .run(&[(self.input.clone(), HostTensor::F32(one))], false)?;
            let decoded = match out.into_iter().next() {
                Some((_, HostTensor::F32(a))) => a,
                Some((_, HostTensor::F16(a))) => a.mapv(|v| v.to_f32()),
                _ => {
                    return Err(ImageError::Shape(format!(
                        "the VAE decoder {} returned no floating-point image",
                        self.path
                    )));
                }
            };
            let [b, c, ..] = nchw(&decoded)?;
            if b != 1 || c != 3 {
                return Err(ImageError::Shape(format!(
                    "the VAE decoder {} returned shape {:?}; [1, 3, H, W] expected",
                    self.path,
                    decoded.shape()
                )));
            }
            images.push(Image::from_nchw(&decoded, 0, -1.0, 1.0));
        }
        Ok(images)
    }
}

fn same_size(a: &Image, b: &Image) -> Result<(), ImageError> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(ImageError::Shape(format!(
            "images of different sizes: {}x{} and {}x{}",
            a.width, a.height, b.width, b.height
        )));
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB (data range 1; infinite for equal images).
pub fn psnr(a: &Image, b: &Image) -> Result<f64, ImageError> {
    same_size(a, b)?;
    let mse = a
        .rgb
        .iter()
        .zip(&b.rgb)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.rgb.len().max(1) as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    })
}

/// Side of the SSIM window (Gaussian, σ = 1.5, Wang et al. 2004).
pub const SSIM_WINDOW: usize = 11;

/// Structural similarity (Wang et al. 2004): Gaussian window 11×11, σ = 1.5, K1 = 0.01,
/// K2 = 0.03, data range 1, per channel over the positions where the window fits, averaged
/// over positions and channels.
pub fn ssim(a: &Image, b: &Image) -> Result<f64, ImageError> {
    same_size(a, b)?;
    let (w, h) = (a.width, a.height);
    if w < SSIM_WINDOW || h < SSIM_WINDOW {
        return Err(ImageError::Shape(format!(
            "SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; these are {w}x{h}"
        )));
    }
    let radius = SSIM_WINDOW / 2;
    let kernel: Vec<f64> = {
        let k: Vec<f64> = (0..SSIM_WINDOW)
            .map(|i| {
                let d = i as f64 - radius as f64;
                (-d * d / (2.0 * 1.5 * 1.5)).exp()
            })
            .collect();
        let sum: f64 = k.iter().sum();
        k.into_iter().map(|v| v / sum).collect()
    };
    // Separable "valid" filtering: rows, then columns.
    let (ow, oh) = (w - 2 * radius, h - 2 * radius);
    let filter = |plane: &[f64]| -> Vec<f64> {
        let mut rows = vec![0.0; ow * h];
        for y in 0..h {
            for x in 0..ow {
                rows[y * ow + x] = (0..SSIM_WINDOW)
                    .map(|k| kernel[k] * plane[y * w + x + k])
                    .sum();
            }
        }
        let mut out = vec![0.0; ow * oh];
        for y in 0..oh {
            for x in 0..ow {
                out[y * ow + x] = (0..SSIM_WINDOW)
                    .map(|k| kernel[k] * rows[(y + k) * ow + x])
                    .sum();
            }
        }
        out
    };
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mut total = 0.0;
    for ch in 0..3 {
        let x: Vec<f64> = (0..w * h).map(|i| f64::from(a.rgb[i * 3 + ch])).collect();
        let y: Vec<f64> = (0..w * h).map(|i| f64::from(b.rgb[i * 3 + ch])).collect();
        let product =
            |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
        let (mx, my) = (filter(&x), filter(&y));
        let (mxx, myy, mxy) = (
            filter(&product(&x, &x)),
            filter(&product(&y, &y)),
            filter(&product(&x, &y)),
        );
        for i in 0..ow * oh {
            let (ux, uy) = (mx[i], my[i]);
            let (vx, vy, cxy) = (mxx[i] - ux * ux, myy[i] - uy * uy, mxy[i] - ux * uy);
            total += ((2.0 * ux * uy + c1) * (2.0 * cxy + c2))
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
        }
    }
    Ok(total / (3 * ow * oh) as f64)
}

/// Lays out `rows` of panels (all of one size) in a grid with `gap` pixels of gray between
/// them, each panel magnified `zoom` times (nearest neighbour).
pub fn grid(rows: &[Vec<Image>], zoom: usize, gap: usize) -> Result<Image, ImageError> {
    let first = rows
        .first()
        .and_then(|r| r.first())
        .ok_or_else(|| ImageError::Shape("no panels to lay out".into()))?;
    let (pw, ph) = (first.width * zoom.max(1), first.height * zoom.max(1));
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = cols * pw + (cols + 1) * gap;
    let height = rows.len() * ph + (rows.len() + 1) * gap;
    let mut out = Image {
        width,
        height,
        rgb: vec![0.5; width * height * 3],
    };
    let z = zoom.max(1);
    for (r, row) in rows.iter().enumerate() {
        for (c, panel) in row.iter().enumerate() {
            same_size(first, panel)?;
            let (x0, y0) = (gap + c * (pw + gap), gap + r * (ph + gap));
            for y in 0..ph {
                for x in 0..pw {
                    let src = ((y / z) * panel.width + x / z) * 3;
                    let dst = ((y0 + y) * width + x0 + x) * 3;
                    out.rgb[dst..dst + 3].copy_from_slice(&panel.rgb[src..src + 3]);
                }
            }
        }
    }
    Ok(out)
}

/// The images side by side in one row (no gaps).
pub fn side_by_side(images: &[Image]) -> Result<Image, ImageError> {
    grid(&[images.to_vec()], 1, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn flat(w: usize, h: usize, v: f32) -> Image {
        Image {
            width: w,
            height: h,
            rgb: vec![v; w * h * 3],
        }
    }

    /// A deterministic textured image.
    fn texture(w: usize, h: usize) -> Image {
        let mut img = Image::new(w, h);
        for (i, v) in img.rgb.iter_mut().enumerate() {
            *v = ((i * 37 % 101) as f32) / 100.0;
        }
        img
    }

    #[test]
    fn psnr_of_a_known_error() {
        let a = flat(4, 4, 0.5);
        let b = flat(4, 4, 0.6);
        // MSE 0.01 → 20 dB.
        assert!((psnr(&a, &b).unwrap() - 20.0).abs() < 1e-5);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        assert!(psnr(&a, &flat(4, 5, 0.5)).is_err());
    }

    #[test]
    fn ssim_of_constant_images_is_the_luminance_term() {
        // Constant images: σ = 0, so SSIM = (2ab + C1) / (a² + b² + C1).
        let (a, b) = (0.2f64, 0.7f64);
        let c1 = 1e-4;
        let want = (2.0 * a * b + c1) / (a * a + b * b + c1);
        let got = ssim(&flat(16, 12, a as f32), &flat(16, 12, b as f32)).unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn ssim_is_one_for_equal_images_and_drops_with_noise() {
        let a = texture(20, 16);
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        let mut b = a.clone();
        for (i, v) in b.rgb.iter_mut().enumerate() {
            *v = (*v + if i % 2 == 0 { 0.05 } else { -0.05 }).clamp(0.0, 1.0);
        }
        let s = ssim(&a, &b).unwrap();
        assert!(s < 0.999 && s > 0.5, "{s}");
        let inverted = Image {
            rgb: a.rgb.iter().map(|v| 1.0 - v).collect(),
            ..a.clone()
        };
        assert!(ssim(&a, &inverted).unwrap() < 0.0);
        assert!(ssim(&flat(8, 8, 0.0), &flat(8, 8, 0.0)).is_err());
    }

    #[test]
    fn latent_channels_read_as_rgb() {
        let mut data = vec![0f32; 2 * 4 * 2];
        data[0] = 1.0; // image 0, R, (0, 0)
        data[8 + 2 * 2 + 1] = -1.0; // image 1, B, (1, 0)
        data[8 + 2 + 1] = 5.0; // image 1, G, (1, 0): clipped
        let l = ArrayD::from_shape_vec(IxDyn(&[2, 4, 1, 2]), data).unwrap();
        let imgs = latent_images(&l).unwrap();
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[0].rgb[0..3], [1.0, 0.5, 0.5]);
        assert_eq!(imgs[1].rgb[3..6], [0.5, 1.0, 0.0]);
    }

    #[test]
    fn grid_places_zoomed_panels() {
        let a = flat(1, 1, 0.0);
        let b = flat(1, 1, 1.0);
        let g = grid(&[vec![a.clone(), b.clone()]], 2, 1).unwrap();
        assert_eq!((g.width, g.height), (7, 4));
        let px = |x: usize, y: usize| g.rgb[(y * g.width + x) * 3];
        assert_eq!(px(0, 0), 0.5);
        assert_eq!(px(1, 1), 0.0);
        assert_eq!(px(2, 2), 0.0);
        assert_eq!(px(4, 1), 1.0);
        assert_eq!(px(5, 2), 1.0);
        assert_eq!(px(6, 2), 0.5);
        assert_eq!(
            side_by_side(&[a, b]).unwrap().rgb,
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
    }
}
