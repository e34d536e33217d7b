//! Convolution-like operators: Conv, ConvTranspose, MaxPool, AveragePool, LpPool and the
//! global pools, with `auto_pad`, strides, dilations, `ceil_mode` and `output_padding`.
//!
//! The geometry helpers ([`ConvGeom`]) are public because partitioning needs the same numbers
//! (how many rows of context a kernel reads above and below a band).

use anyhow::{Result, anyhow, bail};

use super::def::{Cost, OpDef, default_cost, gemm_tiles, numel};
use super::layout::{Need, PartCx, Verdict};
use super::{OpCx, tt};
use crate::contract::Bands;
use crate::ir::{DataType, Dim, TensorType};

/// Kernel geometry of one conv-like node, per spatial axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// Begin pads then end pads (`[b0, b1, …, e0, e1, …]`), explicit `pads` only.
    pub pads: Vec<i64>,
    /// `NOTSET`, `SAME_UPPER`, `SAME_LOWER` or `VALID`.
    pub auto_pad: String,
    pub ceil_mode: bool,
}

impl ConvGeom {
    /// Reads the attributes of `cx.node` for `n` spatial axes; `kernel` from the attribute or
    /// from the weight's trailing dims.
    pub fn of(cx: &OpCx<'_>, n: usize, kernel_from_weight: Option<Vec<i64>>) -> Result<Self> {
        let list = |name: &str, default: i64, len: usize| -> Result<Vec<i64>> {
            match cx.attr_ints(name) {
                Some(v) if !v.is_empty() => {
                    if v.len() != len {
                        bail!("`{name}` {v:?} must have {len} entries");
                    }
                    Ok(v)
                }
                _ => Ok(vec![default; len]),
            }
        };
        let kernel = match cx.attr_ints("kernel_shape") {
            Some(k) if !k.is_empty() => k,
            _ => kernel_from_weight.ok_or_else(|| anyhow!("kernel shape unknown"))?,
        };
        if kernel.len() != n {
            bail!("kernel {kernel:?} does not have {n} spatial dims");
        }
        let g = Self {
            kernel,
            strides: list("strides", 1, n)?,
            dilations: list("dilations", 1, n)?,
            pads: list("pads", 0, 2 * n)?,
            auto_pad: cx
                .node
                .attr_s("auto_pad")
                .unwrap_or_else(|| "NOTSET".into()),
            ceil_mode: cx.attr_i("ceil_mode", 0) != 0,
        };
        if g.kernel.iter().any(|&k| k <= 0)
            || g.strides.iter().any(|&s| s <= 0)
            || g.dilations.iter().any(|&d| d <= 0)
        {
            bail!("kernel, strides and dilations must be positive");
        }
        if g.pads.iter().any(|&p| p < 0) {
            bail!("pads {:?} must not be negative", g.pads);
        }
        if !matches!(
            g.auto_pad.as_str(),
            "NOTSET" | "SAME_UPPER" | "SAME_LOWER" | "VALID"
        ) {
            bail!("unknown auto_pad `{}`", g.auto_pad);
        }
        Ok(g)
    }

    /// Extent of the dilated kernel on axis `i` (saturating; real kernels are small).
    pub fn extent(&self, i: usize) -> i64 {
        self.dilations[i]
            .saturating_mul(self.kernel[i] - 1)
            .saturating_add(1)
    }

    /// The (begin, end) padding actually applied on axis `i` for an input of size `input`.
    pub fn pads_for(&self, i: usize, input: i64) -> (i64, i64) {
        let n = self.kernel.len();
        match self.auto_pad.as_str() {
            "VALID" => (0, 0),
            "SAME_UPPER" | "SAME_LOWER" => {
                let (inp, s, ext) = (
                    input as i128,
                    self.strides[i] as i128,
                    self.extent(i) as i128,
                );
                let out = (inp + s - 1) / s;
                let total = ((out - 1) * s + ext - inp).clamp(0, i64::MAX as i128) as i64;
                let small = total / 2;
                if self.auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            _ => (self.pads[i], self.pads[i + n]),
        }
    }

    /// Output size of a convolution or pool on axis `i`.
    pub fn output(&self, i: usize, input: i64) -> Result<i64> {
        let (b, e) = self.pads_for(i, input);
        let (b, e, inp) = (b as i128, e as i128, input as i128);
        let ext = self.extent(i) as i128;
        let span = inp + b + e - ext;
        if span < 0 {
            bail!(
                "kernel extent {ext} is larger than the padded input {}",
                inp + b + e
            );
        }
        let s = self.strides[i] as i128;
        let mut out = if self.ceil_mode {
            (span + s - 1) / s + 1
        } else {
            span / s + 1
        };
        // A last window that starts inside the end padding is dropped (ONNX Runtime, PyTorch).
        if self.ceil_mode && (out - 1) * s >= inp + b {
            out -= 1;
        }
        i64::try_from(out).map_err(|_| anyhow!("output size overflows"))
    }
}

fn spatial(cx: &OpCx<'_>, d: &[Dim], geom: &ConvGeom) -> Result<Vec<Dim>> {
    let _ = cx;
    d[2..]
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Dim::Fixed(v) => Ok(Dim::Fixed(geom.output(i, *v)?)),
            _ => Ok(Dim::Unknown),
        })
        .collect()
}

fn conv(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let (Some(d), Some(w)) = (&x.shape, cx.input(1)?.shape.as_ref()) else {
        return Ok(vec![tt(x.elem, x.rank().map(|r| vec![Dim::Unknown; r]))]);
    };
    if d.len() < 3 || w.len() != d.len() {
        bail!(
            "Conv input rank {} and weight rank {} do not match",
            d.len(),
            w.len()
        );
    }
    let group = cx.attr_i("group", 1);
    if group <= 0 {
        bail!("group must be positive");
    }
    if let (Dim::Fixed(c), Dim::Fixed(wc)) = (&d[1], &w[1])
        && Some(*c) != wc.checked_mul(group)
    {
        bail!("input has {c} channels, the weight expects {wc} × group {group}");
    }
    let kw: Option<Vec<i64>> = w[2..].iter().map(Dim::fixed).collect();
    let geom = ConvGeom::of(cx, d.len() - 2, kw)?;
    let mut out = vec![d[0].clone(), w[0].clone()];
    out.extend(spatial(cx, d, &geom)?);
    Ok(vec![tt(x.elem, Some(out))])
}

/// Conv: every output element is a dot product over `C_in / group × kernel` inputs (the
/// weight's elements per output channel), plus the bias: `2 · |Y| · |W| / C_out (+ |Y|)`.
fn cost_conv(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let out = outputs
        .first()
        .ok_or_else(|| anyhow!("Conv has no output type"))?;
    let y = numel(out)?;
    let w = cx
        .static_dims(1)
        .ok_or_else(|| anyhow!("Conv weight shape is not static"))?;
    let c_out = *w.first().unwrap_or(&1);
    let per_output = w.iter().product::<i64>() as f64 / c_out.max(1) as f64;
    c.flops = 2.0 * y * per_output + if cx.has_input(2) { y } else { 0.0 };
    c.tiles = implicit_gemm_tiles(
        &out.static_dims().unwrap_or_default(),
        cx.attr_i("group", 1),
    );
    Ok(c)
}

/// ConvTranspose: every input element is scattered to `C_out / group × kernel` outputs
/// (the weight's elements per input channel): `2 · |X| · |W| / C_in`.
fn cost_conv_transpose(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let x = numel(cx.input(0)?)?;
    let w = cx
        .static_dims(1)
        .ok_or_else(|| anyhow!("ConvTranspose weight shape is not static"))?;
    let c_in = *w.first().unwrap_or(&1);
    c.flops = 2.0 * x * w.iter().product::<i64>() as f64 / c_in.max(1) as f64;
    if let Some(y) = outputs.first().and_then(|t| t.static_dims()) {
        c.tiles = implicit_gemm_tiles(&y, cx.attr_i("group", 1));
    }
    Ok(c)
}

/// Tiles of a convolution run as an implicit GEMM per group: the output's pixels (batch
/// included) are the rows, the group's output channels the columns.
fn implicit_gemm_tiles(y: &[i64], group: i64) -> f64 {
    let [b, c, spatial @ ..] = y else {
        return 0.0;
    };
    let group = group.max(1);
    let pixels = (*b * spatial.iter().product::<i64>()) as f64;
    gemm_tiles(group as f64, pixels, (*c / group) as f64)
}

/// Pools: one operation per kernel element for every output element.
fn cost_pool(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    let window: i64 = cx
        .attr_ints("kernel_shape")
        .map(|k| k.iter().product())
        .unwrap_or(1);
    let y = numel(
        outputs
            .first()
            .ok_or_else(|| anyhow!("pool has no output type"))?,
    )?;
    c.flops = y * window as f64;
    Ok(c)
}

/// Global pools: one operation per input element.
fn cost_global_pool(cx: &OpCx<'_>, outputs: &[TensorType]) -> Result<Cost> {
    let mut c = default_cost(cx, outputs)?;
    c.flops = numel(cx.input(0)?)?;
    Ok(c)
}

fn conv_transpose(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let (Some(d), Some(w)) = (&x.shape, cx.input(1)?.shape.as_ref()) else {
        return Ok(vec![tt(x.elem, x.rank().map(|r| vec![Dim::Unknown; r]))]);
    };
    if d.len() < 3 || w.len() != d.len() {
        bail!(
            "ConvTranspose input rank {} and weight rank {} do not match",
            d.len(),
            w.len()
        );
    }
    let n = d.len() - 2;
    let group = cx.attr_i("group", 1);
    if group <= 0 {
        bail!("group must be positive");
    }
    let channels = match &w[1] {
        Dim::Fixed(m) => Dim::Fixed(
            m.checked_mul(group)
                .ok_or_else(|| anyhow!("channel count overflows"))?,
        ),
        _ => Dim::Unknown,
    };
    let kw: Option<Vec<i64>> = w[2..].iter().map(Dim::fixed).collect();
    let geom = ConvGeom::of(cx, n, kw)?;
    let out_pad = match cx.attr_ints("output_padding") {
        Some(v) if !v.is_empty() => v,
        _ => vec![0; n],
    };
    if out_pad.len() != n {
        bail!("output_padding must have {n} entries");
    }
    let mut out = vec![d[0].clone(), channels];
    if let Some(shape) = cx.attr_ints("output_shape").filter(|v| !v.is_empty()) {
        let sp = if shape.len() == n {
            shape
        } else if shape.len() == n + 2 {
            shape[2..].to_vec()
        } else {
            bail!("output_shape must have {n} entries");
        };
        for v in sp {
            out.push(super::size_dim(v, "output_shape entry")?);
        }
        return Ok(vec![tt(x.elem, Some(out))]);
    }
    for (i, x) in d[2..].iter().enumerate() {
        out.push(match x {
            Dim::Fixed(v) => {
                let s = geom.strides[i];
                let o = if geom.auto_pad.starts_with("SAME") {
                    v * s
                } else {
                    let (b, e) = if geom.auto_pad == "VALID" {
                        (0, 0)
                    } else {
                        (geom.pads[i], geom.pads[i + n])
                    };
                    s * (v - 1) + out_pad[i] + geom.extent(i) - b - e
                };
                super::size_dim(o, "ConvTranspose output")?
            }
            _ => Dim::Unknown,
        });
    }
    Ok(vec![tt(x.elem, Some(out))])
}

fn pool(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let Some(d) = &x.shape else {
        return Ok(vec![tt(x.elem, None), tt(DataType::INT64, None)]);
    };
    if d.len() < 3 {
        bail!("{} needs an input of rank ≥ 3", cx.node.op_type);
    }
    let geom = ConvGeom::of(cx, d.len() - 2, None)?;
    let mut out = vec![d[0].clone(), d[1].clone()];
    out.extend(spatial(cx, d, &geom)?);
    Ok(vec![
        tt(x.elem, Some(out.clone())),
        tt(DataType::INT64, Some(out)),
    ])
}

fn global_pool(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let Some(d) = &x.shape else {
        return Ok(vec![tt(x.elem, None)]);
    };
    if d.len() < 3 {
        bail!("{} needs an input of rank ≥ 3", cx.node.op_type);
    }
    let mut out = vec![d[0].clone(), d[1].clone()];
    out.extend(std::iter::repeat_n(Dim::Fixed(1), d.len() - 2));
    Ok(vec![tt(x.elem, Some(out))])
}

/// The conv family.
pub const OPS: &[OpDef] = &[
    OpDef::infer("Conv", conv)
        .split(part_conv_like)
        .cost(cost_conv),
    OpDef::infer("ConvTranspose", conv_transpose)
        .split(part_conv_like)
        .cost(cost_conv_transpose),
    OpDef::infer("MaxPool", pool)
        .split(part_conv_like)
        .cost(cost_pool),
    OpDef::infer("AveragePool", pool)
        .split(part_conv_like)
        .cost(cost_pool),
    OpDef::infer("LpPool", pool)
        .split(part_conv_like)
        .cost(cost_pool),
    OpDef::infer("GlobalAveragePool", global_pool)
        .split(part_conv_like)
        .cost(cost_global_pool),
    OpDef::infer("GlobalMaxPool", global_pool)
        .split(part_conv_like)
        .cost(cost_global_pool),
    OpDef::infer("GlobalLpPool", global_pool)
        .split(part_conv_like)
        .cost(cost_global_pool),
];

/// The halo a conv-like kernel needs on one spatial axis when its input is cut into bands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Halo {
    /// Rows needed from the band above.
    pub top: i64,
    /// Rows needed from the band below.
    pub bottom: i64,
    /// Rows of each band of the input and of the output (band order).
    pub bands_in: Vec<i64>,
    pub bands_out: Vec<i64>,
}

/// Why a kernel cannot run band-locally with a halo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaloError {
    /// Not for these bands.
    Indivisible(String),
    /// Not for any bands.
    Unsupported(String),
}

/// Computes the halo of spatial axis `i` (of `geom`) for an input of `input` rows and an
/// output of `output` rows cut into `bands`: `top = pad_top`,
/// `bottom = (k−1)·d − pad_top − (s−1)`, clamped at 0; checks that every band's rows are
/// whole on both sides, that bands line up (`band_in = band_out · s`, band by band), that a
/// band of the input with its halo and no padding gives exactly its band of the output, and
/// that the halo fits within the smallest band.
pub fn halo(
    geom: &ConvGeom,
    i: usize,
    input: i64,
    output: i64,
    bands: &Bands,
) -> Result<Halo, HaloError> {
    if geom.ceil_mode {
        return Err(HaloError::Unsupported(
            "ceil_mode on the split axis is not supported".into(),
        ));
    }
    let n = bands.n();
    let (Some(bands_in), Some(bands_out)) = (bands.parts(input), bands.parts(output)) else {
        return Err(HaloError::Indivisible(format!(
            "bands {bands} do not cut the {input} input rows and {output} output rows into whole rows"
        )));
    };
    let (pad_top, _) = geom.pads_for(i, input);
    let (k, s, d) = (geom.kernel[i], geom.strides[i], geom.dilations[i]);
    let top = pad_top.max(0);
    let bottom = ((k - 1) * d - pad_top - (s - 1)).max(0);
    for (&band_in, &band_out) in bands_in.iter().zip(&bands_out) {
        if band_in != band_out * s {
            return Err(HaloError::Indivisible(format!(
                "bands of {band_in} input rows and {band_out} output rows do not line up with stride {s}"
            )));
        }
        let span = band_in + top + bottom - (k - 1) * d - 1;
        if span < 0 || span / s + 1 != band_out {
            return Err(HaloError::Indivisible(format!(
                "a band of {band_in} rows with a halo of {top}+{bottom} rows does not give {band_out} output rows"
            )));
        }
    }
    let smallest = bands_in.iter().copied().min().unwrap_or(0);
    if n > 1 && (top > smallest || bottom > smallest) {
        return Err(HaloError::Indivisible(format!(
            "the halo ({top} above, {bottom} below) is larger than a band of {smallest} rows"
        )));
    }
    Ok(Halo {
        top,
        bottom,
        bands_in,
        bands_out,
    })
}

fn part_conv_like(cx: &PartCx<'_>) -> anyhow::Result<Verdict> {
    let op = cx.op.node.op_type.as_str();
    let a = match cx.only_first_split() {
        Ok(a) => a,
        Err(v) => return Ok(v),
    };
    if a == 0 {
        return Ok(Verdict::split_all(cx, 0, Vec::new()));
    }
    if a == 1 {
        return Ok(Verdict::Refuse(format!(
            "{op} over channels split into bands"
        )));
    }
    if op == "ConvTranspose" {
        return Ok(Verdict::Refuse(
            "ConvTranspose on the split axis has no rule".into(),
        ));
    }
    if op.starts_with("Global") {
        return Ok(Verdict::Refuse(format!(
            "{op} reduces over the split axis {a}"
        )));
    }
    if cx.n_outputs > 1 && cx.op.node.output(1).is_some() {
        return Ok(Verdict::Refuse(format!("{op} with an Indices output")));
    }
    let (Some(x), Some(y)) = (cx.dims(0), cx.out_dims(0)) else {
        return Ok(Verdict::Refuse("shapes are not static".into()));
    };
    let kw = if op == "Conv" {
        cx.dims(1).map(|w| w[2..].to_vec())
    } else {
        None
    };
    let geom = ConvGeom::of(cx.op, x.len() - 2, kw)?;
    let i = a - 2;
    let h = match halo(&geom, i, x[a], y[a], cx.bands) {
        Ok(h) => h,
        Err(HaloError::Indivisible(m)) => return Ok(Verdict::Indivisible(m)),
        Err(HaloError::Unsupported(m)) => return Ok(Verdict::Refuse(m)),
    };
    let (pb, pe) = geom.pads_for(i, x[a]);
    let padded = pb > 0 || pe > 0;
    if padded && (op == "MaxPool" || op == "LpPool") {
        return Ok(Verdict::Refuse(format!(
            "{op} pads the image edge differently from the zero rows a halo supplies"
        )));
    }
    if padded && op == "AveragePool" && cx.op.attr_i("count_include_pad", 0) == 0 {
        return Ok(Verdict::Refuse(
            "AveragePool without count_include_pad pads differently from a zero halo".into(),
        ));
    }
    let needs = if padded || h.top > 0 || h.bottom > 0 {
        vec![Need::Halo {
            axis: a,
            top: h.top,
            bottom: h.bottom,
        }]
    } else {
        Vec::new()
    };
    Ok(Verdict::split_all(cx, a, needs))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::ir::DataType;

    fn geom(k: i64, s: i64, p: i64) -> super::ConvGeom {
        super::ConvGeom {
            kernel: vec![k, k],
            strides: vec![s, s],
            dilations: vec![1, 1],
            pads: vec![p, p, p, p],
            auto_pad: "NOTSET".into(),
            ceil_mode: false,
        }
    }

    /// `n` equal bands.
    fn eq(n: usize) -> crate::contract::Bands {
        crate::contract::Bands::from_heights(&vec![1; n]).expect("bands")
    }

    #[test]
    fn halos_of_common_kernels() {
        // 3×3 stride 1 pad 1: one row each side.
        let h = super::halo(&geom(3, 1, 1), 0, 32, 32, &eq(4)).unwrap();
        assert_eq!((h.top, h.bottom), (1, 1));
        assert_eq!((h.bands_in, h.bands_out), (vec![8; 4], vec![8; 4]));
        // 3×3 stride 2 pad 1: one row above, none below (DESIGN §2).
        let h = super::halo(&geom(3, 2, 1), 0, 16, 8, &eq(2)).unwrap();
        assert_eq!((h.top, h.bottom), (1, 0));
        // 1×1: nothing.
        let h = super::halo(&geom(1, 1, 0), 0, 16, 16, &eq(8)).unwrap();
        assert_eq!((h.top, h.bottom), (0, 0));
        // 5×5 pad 2 on bands of one row: the halo does not fit.
        assert!(matches!(
            super::halo(&geom(5, 1, 2), 0, 8, 8, &eq(8)),
            Err(super::HaloError::Indivisible(_))
        ));
        // Stride 2 with odd bands: bands do not line up.
        assert!(matches!(
            super::halo(&geom(3, 2, 1), 0, 12, 6, &eq(4)),
            Err(super::HaloError::Indivisible(_))
        ));
    }

    #[test]
    fn unequal_bands_get_the_same_halo() {
        // 128 latent rows as 44 / 44 / 40: the stride-2 conv from 64 to 32 rows.
        let bands = crate::contract::Bands::from_heights(&[44, 44, 40]).expect("bands");
        let h = super::halo(&geom(3, 2, 1), 0, 64, 32, &bands).unwrap();
        assert_eq!((h.top, h.bottom), (1, 0));
        assert_eq!(h.bands_in, vec![22, 22, 20]);
        assert_eq!(h.bands_out, vec![11, 11, 10]);
        // At 16 rows the boundary 44 would fall inside a row.
        assert!(matches!(
            super::halo(&geom(3, 1, 1), 0, 16, 16, &bands),
            Err(super::HaloError::Indivisible(_))
        ));
    }

    #[test]
    fn conv_partition_rule() {
        use crate::passes::ops::layout::testing::verdict;
        use crate::passes::ops::layout::{Layout, Need, Verdict};
        let conv = node("Conv", vec![aints("pads", &[1, 1, 1, 1])]);
        let v = verdict(
            &conv,
            17,
            vec![f32t(&[1, 4, 16, 16]), f32t(&[8, 4, 3, 3])],
            vec![],
            vec![Layout::Split { axis: 2 }, Layout::Replicated],
            vec![f32t(&[1, 8, 16, 16])],
            4,
        );
        assert_eq!(
            v,
            Verdict::Local {
                outputs: vec![Layout::Split { axis: 2 }],
                needs: vec![Need::Halo {
                    axis: 2,
                    top: 1,
                    bottom: 1
                }]
            }
        );
        let one = node("Conv", vec![]);
        let v = verdict(
            &one,
            17,
            vec![f32t(&[1, 4, 16, 16]), f32t(&[8, 4, 1, 1])],
            vec![],
            vec![Layout::Split { axis: 2 }, Layout::Replicated],
            vec![f32t(&[1, 8, 16, 16])],
            4,
        );
        assert_eq!(v, Verdict::local(vec![Layout::Split { axis: 2 }]));
    }

    #[test]
    fn conv_shapes() {
        let f = DataType::FLOAT;
        let x = f32t(&[2, 4, 32, 32]);
        let w = f32t(&[8, 4, 3, 3]);
        assert_eq!(
            infer_text(
                "Conv",
                vec![aints("pads", &[1, 1, 1, 1])],
                17,
                vec![x.clone(), w.clone()],
                vec![]
            ),
            "f32[2,8,32,32]"
        );
        assert_eq!(
            infer_text(
                "Conv",
                vec![aints("pads", &[1, 1, 1, 1]), aints("strides", &[2, 2])],
                17,
                vec![x.clone(), w.clone()],
                vec![]
            ),
            "f32[2,8,16,16]"
        );
        assert_eq!(
            infer_text(
                "Conv",
                vec![astr("auto_pad", "SAME_UPPER"), aints("strides", &[2, 2])],
                17,
                vec![f32t(&[1, 4, 7, 7]), w.clone()],
                vec![]
            ),
            "f32[1,8,4,4]"
        );
        assert_eq!(
            infer_text(
                "Conv",
                vec![astr("auto_pad", "VALID")],
                17,
                vec![x.clone(), w.clone()],
                vec![]
            ),
            "f32[2,8,30,30]"
        );
        assert_eq!(
            infer_text(
                "Conv",
                vec![aints("dilations", &[2, 2])],
                17,
                vec![x.clone(), w.clone()],
                vec![]
            ),
            "f32[2,8,28,28]"
        );
        assert_eq!(
            infer_text(
                "Conv",
                vec![],
                17,
                vec![sym(f, &["b", "4", "h", "w"]), w.clone()],
                vec![]
            ),
            "f32[b,8,?,?]"
        );
        assert!(
            infer_text("Conv", vec![], 17, vec![f32t(&[2, 3, 8, 8]), w], vec![])
                .starts_with("error")
        );
    }

    #[test]
    fn conv_transpose_and_pools() {
        assert_eq!(
            infer_text(
                "ConvTranspose",
                vec![
                    aints("strides", &[2, 2]),
                    aints("pads", &[1, 1, 1, 1]),
                    aints("output_padding", &[1, 1])
                ],
                17,
                vec![f32t(&[1, 8, 16, 16]), f32t(&[8, 4, 3, 3])],
                vec![]
            ),
            "f32[1,4,32,32]"
        );
        assert_eq!(
            infer_text(
                "MaxPool",
                vec![
                    aints("kernel_shape", &[3, 3]),
                    aints("strides", &[2, 2]),
                    ai("ceil_mode", 1)
                ],
                17,
                vec![f32t(&[1, 3, 8, 8])],
                vec![]
            ),
            "f32[1,3,4,4] i64[1,3,4,4]"
        );
        assert_eq!(
            infer_text(
                "AveragePool",
                vec![aints("kernel_shape", &[2, 2]), aints("strides", &[2, 2])],
                17,
                vec![f32t(&[1, 3, 9, 9])],
                vec![]
            ),
            "f32[1,3,4,4] i64[1,3,4,4]"
        );
        assert_eq!(
            infer_text(
                "GlobalAveragePool",
                vec![],
                17,
                vec![f32t(&[1, 3, 9, 9])],
                vec![]
            ),
            "f32[1,3,1,1]"
        );
    }
}

#[cfg(test)]
mod cost_tests {
    use super::super::def::cost_testing::{cost, f16t, f32t};
    use super::super::testing::{ai, aints};

    #[test]
    fn conv_counts_a_dot_product_per_output_and_its_bias() {
        // 8 → 4 channels, 3×3, pad 1, 16×16: Y has 1,024 elements, each 8·9 multiply-adds
        // plus a bias addition.
        let c = cost(
            "Conv",
            vec![aints("pads", &[1, 1, 1, 1])],
            17,
            vec![f32t(&[1, 8, 16, 16]), f32t(&[4, 8, 3, 3]), f32t(&[4])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 2.0 * 1024.0 * 72.0 + 1024.0);
        // 256 pixels × 4 channels: 2 × 1 tiles.
        assert_eq!(c.tiles, 2.0);
        assert_eq!(c.bytes_read, (2048.0 + 288.0 + 4.0) * 4.0);
        assert_eq!(c.bytes_written, 1024.0 * 4.0);
        // Grouped (depthwise) and fp16: 2 bytes per element, 9 multiply-adds per output.
        let c = cost(
            "Conv",
            vec![ai("group", 8), aints("pads", &[1, 1, 1, 1])],
            17,
            vec![f16t(&[1, 8, 16, 16]), f16t(&[8, 1, 3, 3])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 2.0 * 2048.0 * 9.0);
        assert_eq!(c.bytes_written, 2048.0 * 2.0);
        // Implicit GEMM per group: 256 pixels are 2 row tiles; one channel is 1 column tile.
        assert_eq!(c.tiles, 8.0 * 2.0);
    }

    #[test]
    fn transposed_conv_and_pools() {
        // ConvTranspose 4 → 2 channels, 2×2 stride 2 on 3×3: each of the 36 inputs feeds 2·4
        // outputs.
        let c = cost(
            "ConvTranspose",
            vec![aints("strides", &[2, 2])],
            17,
            vec![f32t(&[1, 4, 3, 3]), f32t(&[4, 2, 2, 2])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 2.0 * 36.0 * 8.0);
        // MaxPool 2×2 stride 2 on [1,2,4,4]: 8 outputs, 4 reads each.
        let c = cost(
            "MaxPool",
            vec![aints("kernel_shape", &[2, 2]), aints("strides", &[2, 2])],
            17,
            vec![f32t(&[1, 2, 4, 4])],
            vec![],
        )
        .unwrap();
        assert_eq!(c.flops, 32.0);
        let c = cost(
            "GlobalAveragePool",
            vec![],
            17,
            vec![f32t(&[1, 2, 4, 4])],
            vec![],
        )
        .unwrap();
        assert_eq!((c.flops, c.bytes_written), (32.0, 8.0));
    }
}
