//! Full-size tensors and their per-rank parts, the same for every backend: each plan input is
//! cut per its [`Layout`] (the group's equal share along `group_axis`, then the rank's band
//! along `band_axis`, else whole) and each output is put back together (bands concatenated
//! within a group, groups across `group_axis`), with dtype and shape checked against the plan
//! on both sides. The CPU executor ([`super::PlanExecutor`]) splits and gathers with it; the
//! GPU executor splits the conditioning of the sampling loop with it.

use std::ops::Range;

use ndarray::{ArrayD, Axis, Slice};

use super::host::{HostTensor, NamedTensors};
use crate::contract::Bands;
use crate::plan::{Layout, Plan, TensorSpec};

/// A full-size tensor that does not fit the plan, or per-rank parts that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum BandError {
    #[error("the inputs have no `{name}` (the plan's inputs: {known})")]
    MissingInput { name: String, known: String },
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("output `{name}`: {reason}")]
    Output { name: String, reason: String },
}

/// Each rank's inputs (indexed by rank), cut from full-size `inputs` per `plan`'s layouts, for
/// every plan input except those named in `skip` (see [`super::PlanExecutor::split_inputs_except`]).
pub fn split_for_plan(
    plan: &Plan,
    inputs: &[(String, HostTensor)],
    skip: &[&str],
) -> Result<Vec<NamedTensors>, BandError> {
    let mut per_rank: Vec<NamedTensors> = vec![Vec::new(); plan.world_size];
    for spec in &plan.inputs {
        if skip.contains(&spec.name.as_str()) {
            continue;
        }
        let Some((_, full)) = inputs.iter().find(|(n, _)| *n == spec.name) else {
            return Err(BandError::MissingInput {
                name: spec.name.clone(),
                known: plan
                    .inputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .filter(|n| !skip.contains(n))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let bad = |reason: String| BandError::Input {
            name: spec.name.clone(),
            reason,
        };
        check_tensor(spec, full, &spec.shape, "the plan's full").map_err(bad)?;
        for r in &plan.ranks {
            let part = split(
                full,
                &spec.layout,
                (r.group, plan.groups.len()),
                (r.band, &plan.bands),
            )
            .map_err(bad)?;
            check_tensor(spec, &part, spec.local_shape(r.band), "the plan's per-rank")
                .map_err(|e| bad(format!("rank {}: {e}", r.rank)))?;
            per_rank[r.rank].push((spec.name.clone(), part));
        }
    }
    Ok(per_rank)
}

/// The full-size outputs of `plan`, assembled from every rank's outputs (`per_rank`, indexed
/// by rank), in the plan's order.
pub fn gather_for_plan(plan: &Plan, per_rank: &[NamedTensors]) -> Result<NamedTensors, BandError> {
    let mut out = Vec::new();
    for spec in &plan.outputs {
        let bad = |reason: String| BandError::Output {
            name: spec.name.clone(),
            reason,
        };
        let of_rank = |rank: usize| -> Result<&HostTensor, BandError> {
            let t = per_rank
                .get(rank)
                .and_then(|o| o.iter().find(|(n, _)| *n == spec.name))
                .map(|(_, t)| t)
                .ok_or_else(|| bad(format!("rank {rank} did not produce it")))?;
            let band = plan.ranks.get(rank).map_or(0, |r| r.band);
            check_tensor(spec, t, spec.local_shape(band), "the plan's per-rank")
                .map_err(|e| bad(format!("rank {rank}: {e}")))?;
            Ok(t)
        };
        let mut groups = Vec::with_capacity(plan.groups.len());
        for members in &plan.groups {
            let bands: Vec<&HostTensor> = members
                .iter()
                .map(|&r| of_rank(r))
                .collect::<Result<_, _>>()?;
            groups.push(match spec.layout.band_axis {
                Some(axis) => concat(&bands, axis).map_err(bad)?,
                None => bands[0].clone(),
            });
        }
        let refs: Vec<&HostTensor> = groups.iter().collect();
        let full = match spec.layout.group_axis {
            Some(axis) => concat(&refs, axis).map_err(bad)?,
            None => groups.swap_remove(0),
        };
        check_tensor(spec, &full, &spec.shape, "the plan's full").map_err(bad)?;
        out.push((spec.name.clone(), full));
    }
    Ok(out)
}

/// Checks dtype and shape of `t` against `spec` and `shape`.
fn check_tensor(
    spec: &TensorSpec,
    t: &HostTensor,
    shape: &[i64],
    which: &str,
) -> Result<(), String> {
    if t.dtype() != spec.dtype {
        return Err(format!(
            "element type {} where the plan has {}",
            t.dtype(),
            spec.dtype
        ));
    }
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    if dims != shape {
        return Err(format!("shape {dims:?} where {which} shape is {shape:?}"));
    }
    Ok(())
}

/// Elements `cut` of `t` along `axis`.
fn part_of(t: &HostTensor, axis: usize, cut: Range<usize>) -> Result<HostTensor, String> {
    let shape = t.shape();
    let Some(&len) = shape.get(axis) else {
        return Err(format!("axis {axis} is outside the shape {shape:?}"));
    };
    if cut.end > len {
        return Err(format!("part {cut:?} of axis {axis} beyond its size {len}"));
    }
    let cut = Slice::from(cut);
    fn slice<T: Clone>(a: &ArrayD<T>, axis: usize, cut: Slice) -> ArrayD<T> {
        a.slice_axis(Axis(axis), cut).to_owned()
    }
    Ok(match t {
        HostTensor::F32(a) => HostTensor::F32(slice(a, axis, cut)),
        HostTensor::F16(a) => HostTensor::F16(slice(a, axis, cut)),
        HostTensor::I64(a) => HostTensor::I64(slice(a, axis, cut)),
    })
}

/// The part of the full tensor `t` that the rank at `band` of `bands`, in group `group.0` of
/// `group.1`, holds: its group's equal share along `group_axis`, then its band along
/// `band_axis`.
fn split(
    t: &HostTensor,
    layout: &Layout,
    (group, groups): (usize, usize),
    (band, bands): (usize, &Bands),
) -> Result<HostTensor, String> {
    let mut t = t.clone();
    if let Some(axis) = layout.group_axis {
        let len = t.shape().get(axis).copied().unwrap_or(0);
        if groups == 0 || len % groups != 0 {
            return Err(format!(
                "size {len} on axis {axis} does not split into {groups} equal parts"
            ));
        }
        let step = len / groups;
        t = part_of(&t, axis, group * step..(group + 1) * step)?;
    }
    if let Some(axis) = layout.band_axis {
        let len = t.shape().get(axis).copied().unwrap_or(0);
        let part = bands.part(band, len as i64).ok_or_else(|| {
            format!("size {len} on axis {axis} does not cut into the bands {bands}")
        })?;
        t = part_of(&t, axis, part.start as usize..part.end as usize)?;
    }
    Ok(t)
}

/// Concatenation of `parts` (same element type) along `axis`.
fn concat(parts: &[&HostTensor], axis: usize) -> Result<HostTensor, String> {
    fn cat<T: Clone>(arrays: Vec<&ArrayD<T>>, axis: usize) -> Result<ArrayD<T>, String> {
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(axis), &views).map_err(|e| format!("cannot concatenate: {e}"))
    }
    macro_rules! all {
        ($variant:ident) => {
            parts
                .iter()
                .map(|p| match p {
                    HostTensor::$variant(a) => Ok(a),
                    other => Err(format!(
                        "ranks returned mixed element types ({})",
                        other.dtype()
                    )),
                })
                .collect::<Result<Vec<_>, String>>()
        };
    }
    match parts.first() {
        None => Err("no parts to concatenate".into()),
        Some(HostTensor::F32(_)) => Ok(HostTensor::F32(cat(all!(F32)?, axis)?)),
        Some(HostTensor::F16(_)) => Ok(HostTensor::F16(cat(all!(F16)?, axis)?)),
        Some(HostTensor::I64(_)) => Ok(HostTensor::I64(cat(all!(I64)?, axis)?)),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::IxDyn;

    use super::*;

    fn iota(shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor::F32(
            ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|v| v as f32).collect())
                .expect("shape"),
        )
    }

    #[test]
    fn split_then_concat_is_the_identity() {
        let t = iota(&[2, 3, 8, 5]);
        let layout = Layout {
            band_axis: Some(2),
            group_axis: Some(0),
        };
        let mut groups = Vec::new();
        let four = Bands::from_heights(&[2, 2, 2, 2]).expect("bands");
        let uneven = Bands::from_heights(&[3, 3, 2]).expect("bands");
        for g in 0..2 {
            let bands: Vec<HostTensor> = (0..4)
                .map(|b| split(&t, &layout, (g, 2), (b, &four)).expect("split"))
                .collect();
            assert_eq!(bands[0].shape(), &[1, 3, 2, 5]);
            let refs: Vec<&HostTensor> = bands.iter().collect();
            groups.push(concat(&refs, 2).expect("concat"));
        }
        let refs: Vec<&HostTensor> = groups.iter().collect();
        assert_eq!(concat(&refs, 0).expect("concat"), t);
        let mut groups = Vec::new();
        for g in 0..2 {
            let bands: Vec<HostTensor> = (0..3)
                .map(|b| split(&t, &layout, (g, 2), (b, &uneven)).expect("split"))
                .collect();
            assert_eq!(bands[2].shape(), &[1, 3, 2, 5]);
            let refs: Vec<&HostTensor> = bands.iter().collect();
            groups.push(concat(&refs, 2).expect("concat"));
        }
        let refs: Vec<&HostTensor> = groups.iter().collect();
        assert_eq!(concat(&refs, 0).expect("concat"), t);
    }

    #[test]
    fn a_cut_off_the_rows_is_an_error() {
        let t = iota(&[1, 6]);
        let layout = Layout {
            band_axis: Some(1),
            group_axis: None,
        };
        let bands = Bands::from_heights(&[3, 5]).expect("bands");
        let err = split(&t, &layout, (0, 1), (0, &bands)).expect_err("6 into 3/8 and 5/8");
        assert!(err.contains("does not cut"), "{err}");
        let err = part_of(&t, 1, 4..8).expect_err("beyond the end");
        assert!(err.contains("beyond"), "{err}");
    }
}
