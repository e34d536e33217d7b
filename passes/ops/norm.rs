//! Normalization operators: InstanceNormalization, LayerNormalization (with its optional
//! `Mean` and `InvStdDev` outputs), GroupNormalization, BatchNormalization (inference and
//! training outputs), LpNormalization, MeanVarianceNormalization.

use anyhow::{Result, bail};

use super::{OpCx, OpDef, norm_axis, same_as, tt};
use crate::ir::{DataType, Dim, TensorType};

fn check_channels(cx: &OpCx<'_>, port: usize, what: &str) -> Result<()> {
    let (Some(x), Some(p)) = (cx.static_dims(0), cx.static_dims(port)) else {
        return Ok(());
    };
    if x.len() >= 2 && p.len() == 1 && p[0] != x[1] {
        bail!("{what} has {} entries for {} channels", p[0], x[1]);
    }
    Ok(())
}

fn instance_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    check_channels(cx, 1, "scale")?;
    check_channels(cx, 2, "bias")?;
    same_as(cx, 0)
}

fn layer_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let x = cx.input(0)?;
    let stash = DataType(i32::try_from(cx.attr_i("stash_type", 1)).unwrap_or(1));
    let Some(d) = &x.shape else {
        return Ok(vec![x.clone(), tt(stash, None), tt(stash, None)]);
    };
    let axis = norm_axis(cx.attr_i("axis", -1), d.len())?;
    let stats: Vec<Dim> = d
        .iter()
        .enumerate()
        .map(|(i, v)| if i < axis { v.clone() } else { Dim::Fixed(1) })
        .collect();
    Ok(vec![
        x.clone(),
        tt(stash, Some(stats.clone())),
        tt(stash, Some(stats)),
    ])
}

fn group_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    let groups = cx.attr_i("num_groups", 0);
    if groups <= 0 {
        bail!("num_groups must be positive");
    }
    if let Some(x) = cx.static_dims(0)
        && x.len() >= 2
        && x[1] % groups != 0
    {
        bail!("{} channels do not divide into {groups} groups", x[1]);
    }
    same_as(cx, 0)
}

fn batch_norm(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    check_channels(cx, 1, "scale")?;
    let x = cx.input(0)?;
    let c = x
        .shape
        .as_ref()
        .and_then(|d| d.get(1).cloned())
        .unwrap_or(Dim::Unknown);
    let stat = tt(
        cx.types
            .get(3)
            .and_then(|t| t.as_ref())
            .map(|t| t.elem)
            .unwrap_or(x.elem),
        Some(vec![c]),
    );
    Ok(vec![
        x.clone(),
        stat.clone(),
        stat.clone(),
        stat.clone(),
        stat,
    ])
}

fn same(cx: &OpCx<'_>) -> Result<Vec<TensorType>> {
    same_as(cx, 0)
}

/// The normalization family.
pub const OPS: &[OpDef] = &[
    OpDef::infer("InstanceNormalization", instance_norm),
    OpDef::infer("LayerNormalization", layer_norm),
    OpDef::infer("GroupNormalization", group_norm),
    OpDef::infer("BatchNormalization", batch_norm),
    OpDef::infer("LpNormalization", same),
    OpDef::infer("MeanVarianceNormalization", same),
];

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn layer_norm_outputs() {
        assert_eq!(
            infer_text(
                "LayerNormalization",
                vec![ai("axis", -1)],
                17,
                vec![f32t(&[2, 64, 32]), f32t(&[32])],
                vec![]
            ),
            "f32[2,64,32] f32[2,64,1] f32[2,64,1]"
        );
        assert_eq!(
            infer_text(
                "LayerNormalization",
                vec![ai("axis", 1)],
                17,
                vec![f32t(&[2, 64, 32]), f32t(&[64, 32])],
                vec![]
            ),
            "f32[2,64,32] f32[2,1,1] f32[2,1,1]"
        );
    }

    #[test]
    fn group_and_instance_norm() {
        assert_eq!(
            infer_text(
                "GroupNormalization",
                vec![ai("num_groups", 8)],
                21,
                vec![f32t(&[2, 32, 4, 4]), f32t(&[32]), f32t(&[32])],
                vec![]
            ),
            "f32[2,32,4,4]"
        );
        assert!(
            infer_text(
                "GroupNormalization",
                vec![ai("num_groups", 5)],
                21,
                vec![f32t(&[2, 32, 4, 4])],
                vec![]
            )
            .starts_with("error")
        );
        assert!(
            infer_text(
                "InstanceNormalization",
                vec![],
                17,
                vec![f32t(&[2, 32, 4]), f32t(&[16])],
                vec![]
            )
            .starts_with("error")
        );
        assert_eq!(
            infer_text(
                "BatchNormalization",
                vec![],
                15,
                vec![
                    f32t(&[2, 3, 4, 4]),
                    f32t(&[3]),
                    f32t(&[3]),
                    f32t(&[3]),
                    f32t(&[3])
                ],
                vec![]
            ),
            "f32[2,3,4,4] f32[3] f32[3] f32[3] f32[3]"
        );
    }
}
