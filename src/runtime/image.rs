//! Images out of latents, and how close two of them are.
//!
//! A latent becomes RGB either through a VAE decoder ONNX model ([`VaeDecoder`]) or, with
//! no decoder, by reading its first three channels as RGB in [-1, 1] ([`latent_images`]: exact
//! for pixel-space models such as `models/shapes`, a preview for SD latents). Images are f32
//! RGB in [0, 1]. [`psnr`] and [`ssim`] compare two of them (data range 1); [`grid`] lays
//! panels out for a PNG, magnified by a `--zoom` ([`zoom_for`]).

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
    /// The input's declared dimensions (`None`: symbolic or unknown); `None` when the model
    /// declares no shape.
    input_dims: Option<Vec<Option<i64>>>,
    scale: f32,
    path: String,
}

/// The declared dimensions of the graph input `name` of the model at `path` (`None` for a
/// symbolic one); `None` when they cannot be read (ONNX Runtime then finds out at run time).
fn declared_dims(path: &Path, name: &str) -> Option<Vec<Option<i64>>> {
    use crate::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let model = crate::onnx::load(path).ok()?;
    let info = model
        .proto
        .graph
        .as_ref()?
        .input
        .iter()
        .find(|i| i.name() == name)?;
    let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimValue(v)) if *v > 0 => Some(*v),
                _ => None,
            })
            .collect(),
    )
}

/// `[1, 4, ?, ?]`.
fn dims_text(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
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
            input_dims: declared_dims(path, input),
            input: input.clone(),
            session,
            scale,
            path: path.display().to_string(),
        })
    }

    /// Checks that a latent of `shape` (`[n, C, H, W]`) fits the decoder's input where the
    /// decoder declares static sizes: it is fed one image at a time, `[1, C, H, W]`. For
    /// checking before any sampling.
    pub fn check_latent(&self, shape: &[usize]) -> Result<(), ImageError> {
        let [_, c, h, w] = *shape else {
            return Err(ImageError::Shape(format!(
                "latent of shape {shape:?}, not NCHW"
            )));
        };
        let fed = [1, c, h, w];
        let Some(dims) = &self.input_dims else {
            return Ok(());
        };
        let fits = dims.len() == fed.len()
            && dims
                .iter()
                .zip(fed)
                .all(|(d, f)| d.is_none_or(|d| usize::try_from(d) == Ok(f)));
        if fits {
            return Ok(());
        }
        Err(ImageError::Shape(format!(
            "the VAE decoder {} takes `{}` of shape {}, but the latent gives it {:?} (one \
             image at a time); use the VAE that matches the UNet's latent channels and size",
            self.path,
            self.input,
            dims_text(dims),
            fed
        )))
    }

    /// Decodes the latent `[n, C, H, W]` into `n` images.
    pub fn decode(&mut self, latent: &ArrayD<f32>) -> Result<Vec<Image>, ImageError> {
        let [n, ..] = nchw(latent)?;
        self.check_latent(latent.shape())?;
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

/// The most pixels [`grid`] makes (a 16k × 16k image).
pub const MAX_PIXELS: usize = 1 << 28;

/// Lays out `rows` of panels (all of one size) in a grid with `gap` pixels of gray between
/// them, each panel magnified `zoom` times (nearest neighbour); at most [`MAX_PIXELS`].
pub fn grid(rows: &[Vec<Image>], zoom: usize, gap: usize) -> Result<Image, ImageError> {
    let first = rows
        .first()
        .and_then(|r| r.first())
        .ok_or_else(|| ImageError::Shape("no panels to lay out".into()))?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let side = |panel: usize, count: usize| {
        panel
            .checked_mul(zoom.max(1))
            .and_then(|p| p.checked_mul(count))
            .and_then(|p| p.checked_add((count + 1) * gap))
    };
    let too_large = || {
        ImageError::Shape(format!(
            "{} × {} panels of {}x{} pixels magnified {zoom} times are larger than {} pixels; \
             use a smaller zoom",
            rows.len(),
            cols,
            first.width,
            first.height,
            MAX_PIXELS
        ))
    };
    let (width, height) = match (side(first.width, cols), side(first.height, rows.len())) {
        (Some(w), Some(h)) if w.checked_mul(h).is_some_and(|n| n <= MAX_PIXELS) => (w, h),
        _ => return Err(too_large()),
    };
    let (pw, ph) = (first.width * zoom.max(1), first.height * zoom.max(1));
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

/// The images side by side in one row (no gaps), each magnified `zoom` times.
pub fn side_by_side(images: &[Image], zoom: usize) -> Result<Image, ImageError> {
    grid(&[images.to_vec()], zoom, 0)
}

/// Panels this tall or taller are not magnified by an automatic zoom.
pub const AUTO_ZOOM_HEIGHT: usize = 128;

/// The magnification of panels `height` pixels high for a `--zoom` of `zoom`: `zoom` itself,
/// or for 0 the least whole factor that makes them [`AUTO_ZOOM_HEIGHT`] pixels high or more.
pub fn zoom_for(zoom: usize, height: usize) -> usize {
    match zoom {
        0 => AUTO_ZOOM_HEIGHT.div_ceil(height.max(1)).max(1),
        z => z,
    }
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
    fn zoom_is_bounded_and_automatic_at_zero() {
        assert_eq!(zoom_for(0, 64), 2);
        assert_eq!(zoom_for(0, 100), 2);
        assert_eq!(zoom_for(0, 128), 1);
        assert_eq!(zoom_for(3, 64), 3);
        let a = flat(64, 64, 0.5);
        assert!(side_by_side(std::slice::from_ref(&a), usize::MAX).is_err());
        assert!(side_by_side(std::slice::from_ref(&a), 1000).is_err());
        assert_eq!(side_by_side(&[a.clone(), a], 2).unwrap().width, 256);
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
            side_by_side(&[a, b], 1).unwrap().rgb,
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
    }
}
