//! Shapes and structural operations: element counts, broadcasting, and the reshape, transpose,
//! slice, gather, concat, expand, tile and where that constant folding and per-band constants
//! need.

use ndarray::{ArrayD, Axis, IxDyn, Zip};

use super::{Elem, MAX_ELEMENTS, Tensor, TensorError, op_err};

/// Number of elements of `shape`, refusing overflow and anything over [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                op_err(format!(
                    "shape {shape:?} has more than {MAX_ELEMENTS} elements"
                ))
            })?;
    }
    Ok(n)
}

/// Converts ONNX dims (i64) to sizes, refusing negative values and oversized shapes.
pub fn to_shape(dims: &[i64]) -> Result<Vec<usize>, TensorError> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| op_err(format!("negative dimension in {dims:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    checked_numel(&shape)?;
    Ok(shape)
}

/// The numpy broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, TensorError> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(op_err(format!("shapes {a:?} and {b:?} do not broadcast")));
        };
    }
    checked_numel(&out)?;
    Ok(out)
}

pub(super) fn broadcast_to<'a, T: Clone>(
    a: &'a ArrayD<T>,
    shape: &[usize],
) -> Result<ndarray::ArrayViewD<'a, T>, TensorError> {
    a.broadcast(IxDyn(shape)).ok_or_else(|| {
        op_err(format!(
            "shape {:?} does not broadcast to {shape:?}",
            a.shape()
        ))
    })
}

pub(super) fn from_vec<T>(shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>, TensorError> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| op_err(format!("shape {shape:?}: {e}")))
}

/// Applies `f` to `a` and `b` broadcast to their common shape.
pub fn zip_broadcast<A: Clone, B: Clone, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    mut f: impl FnMut(A, B) -> Result<C, TensorError>,
) -> Result<ArrayD<C>, TensorError> {
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let av = broadcast_to(a, &shape)?;
    let bv = broadcast_to(b, &shape)?;
    let mut out = Vec::with_capacity(checked_numel(&shape)?);
    for (x, y) in av.iter().zip(bv.iter()) {
        out.push(f(x.clone(), y.clone())?);
    }
    from_vec(&shape, out)
}

pub(super) fn transpose_arr<T: Clone>(a: &ArrayD<T>, perm: &[usize]) -> ArrayD<T> {
    a.view()
        .permuted_axes(IxDyn(perm))
        .as_standard_layout()
        .into_owned()
}

pub(super) fn select_axes<T: Clone>(a: &ArrayD<T>, picks: &[Vec<usize>]) -> ArrayD<T> {
    let mut cur = a.clone();
    for (ax, idx) in picks.iter().enumerate() {
        if idx.len() == cur.shape()[ax] && idx.iter().enumerate().all(|(i, &j)| i == j) {
            continue;
        }
        cur = cur.select(Axis(ax), idx);
    }
    cur
}

impl Tensor {
    /// Row-major reshape to `shape` (same number of elements).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor, TensorError> {
        if checked_numel(shape)? != self.len() {
            return Err(op_err(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape()
            )));
        }
        Ok(tensor_map!(self, a => from_vec(shape, a.iter().cloned().collect())?))
    }

    /// Permutes the axes: output axis `i` is input axis `perm[i]`.
    pub fn transpose(&self, perm: &[usize]) -> Result<Tensor, TensorError> {
        let r = self.shape().len();
        let mut seen = vec![false; r];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return Err(op_err(format!("{perm:?} is not a permutation of {r} axes")));
        }
        Ok(tensor_map!(self, a => transpose_arr(a, perm)))
    }

    /// Picks, on every axis, the listed indices (in order; repeats allowed).
    pub fn select(&self, picks: &[Vec<usize>]) -> Result<Tensor, TensorError> {
        let shape = self.shape();
        if picks.len() != shape.len()
            || picks
                .iter()
                .zip(shape)
                .any(|(p, &d)| p.iter().any(|&i| i >= d))
        {
            return Err(op_err(format!("selection out of bounds of {shape:?}")));
        }
        let out: Vec<usize> = picks.iter().map(Vec::len).collect();
        checked_numel(&out)?;
        Ok(tensor_map!(self, a => select_axes(a, picks)))
    }

    /// ONNX `Gather`: indices (already normalized to `0..dim`) taken on `axis`.
    pub fn gather(
        &self,
        axis: usize,
        indices: &[usize],
        idx_shape: &[usize],
    ) -> Result<Tensor, TensorError> {
        let shape = self.shape().to_vec();
        if axis >= shape.len() {
            return Err(op_err(format!(
                "gather axis {axis} out of range for {shape:?}"
            )));
        }
        if let Some(bad) = indices.iter().find(|&&i| i >= shape[axis]) {
            return Err(op_err(format!(
                "gather index {bad} out of range for dimension {}",
                shape[axis]
            )));
        }
        let mut out = shape[..axis].to_vec();
        out.extend_from_slice(idx_shape);
        out.extend_from_slice(&shape[axis + 1..]);
        checked_numel(&out)?;
        let picked = tensor_map!(self, a => a.select(Axis(axis), indices));
        picked.reshape(&out)
    }

    /// Concatenates tensors of one element type along `axis`.
    pub fn concat(parts: &[Tensor], axis: usize) -> Result<Tensor, TensorError> {
        let first = parts
            .first()
            .ok_or_else(|| op_err("concat of no tensors"))?;
        let dt = first.dtype();
        if parts.iter().any(|p| p.dtype() != dt) {
            return Err(op_err("concat of tensors of different element types"));
        }
        let r = first.shape().len();
        if axis >= r || parts.iter().any(|p| p.shape().len() != r) {
            return Err(op_err(format!(
                "concat axis {axis} out of range or ranks differ"
            )));
        }
        for p in parts {
            for (i, (&x, &y)) in p.shape().iter().zip(first.shape()).enumerate() {
                if i != axis && x != y {
                    return Err(op_err(format!(
                        "concat of shapes {:?} and {:?} on axis {axis}",
                        first.shape(),
                        p.shape()
                    )));
                }
            }
        }
        let total: usize = parts.iter().map(|p| p.shape()[axis]).sum();
        let mut out_shape = first.shape().to_vec();
        out_shape[axis] = total;
        checked_numel(&out_shape)?;
        fn cat<T: Elem>(
            parts: &[Tensor],
            axis: usize,
            get: fn(&Tensor) -> Option<&ArrayD<T>>,
        ) -> Result<ArrayD<T>, TensorError> {
            let views: Vec<_> = parts.iter().filter_map(get).map(|a| a.view()).collect();
            ndarray::concatenate(Axis(axis), &views).map_err(|e| op_err(format!("concat: {e}")))
        }
        macro_rules! cat_as {
            ($var:ident) => {
                Tensor::$var(cat(parts, axis, |t| match t {
                    Tensor::$var(a) => Some(a),
                    _ => None,
                })?)
            };
        }
        Ok(match first {
            Tensor::F32(_) => cat_as!(F32),
            Tensor::F64(_) => cat_as!(F64),
            Tensor::F16(_) => cat_as!(F16),
            Tensor::BF16(_) => cat_as!(BF16),
            Tensor::I8(_) => cat_as!(I8),
            Tensor::I16(_) => cat_as!(I16),
            Tensor::I32(_) => cat_as!(I32),
            Tensor::I64(_) => cat_as!(I64),
            Tensor::U8(_) => cat_as!(U8),
            Tensor::U16(_) => cat_as!(U16),
            Tensor::U32(_) => cat_as!(U32),
            Tensor::U64(_) => cat_as!(U64),
            Tensor::Bool(_) => cat_as!(Bool),
        })
    }

    /// Broadcasts to `shape` (numpy rules; `shape` must be the broadcast result).
    pub fn broadcast(&self, shape: &[usize]) -> Result<Tensor, TensorError> {
        checked_numel(shape)?;
        Ok(tensor_map!(self, a => broadcast_to(a, shape)?.to_owned()))
    }

    /// ONNX `Expand`: bidirectional broadcast with `shape`.
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor, TensorError> {
        let out = broadcast_shapes(self.shape(), shape)?;
        self.broadcast(&out)
    }

    /// ONNX `Tile`.
    pub fn tile(&self, repeats: &[usize]) -> Result<Tensor, TensorError> {
        let shape = self.shape();
        if repeats.len() != shape.len() {
            return Err(op_err("tile repeats must have one entry per axis"));
        }
        let out: Vec<usize> = shape
            .iter()
            .zip(repeats)
            .map(|(&d, &r)| {
                d.checked_mul(r)
                    .ok_or_else(|| op_err("tile size overflows"))
            })
            .collect::<Result<_, _>>()?;
        checked_numel(&out)?;
        let picks: Vec<Vec<usize>> = out
            .iter()
            .zip(shape)
            .map(|(&o, &d)| (0..o).map(|i| i % d.max(1)).collect())
            .collect();
        if out.contains(&0) {
            return Tensor::zeros(self.dtype(), &out);
        }
        self.select(&picks)
    }

    /// Elementwise `where(cond, x, y)` with three-way broadcasting.
    pub fn where_(cond: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor, TensorError> {
        let Tensor::Bool(c) = cond else {
            return Err(op_err("Where condition must be bool"));
        };
        if x.dtype() != y.dtype() {
            return Err(op_err("Where branches have different element types"));
        }
        let shape = broadcast_shapes(&broadcast_shapes(c.shape(), x.shape())?, y.shape())?;
        let cb = broadcast_to(c, &shape)?;
        let xb = x.broadcast(&shape)?;
        let yb = y.broadcast(&shape)?;
        fn pick<T: Elem>(
            c: &ndarray::ArrayViewD<'_, bool>,
            x: &ArrayD<T>,
            y: &ArrayD<T>,
        ) -> ArrayD<T> {
            Zip::from(c)
                .and(x)
                .and(y)
                .map_collect(|&c, &x, &y| if c { x } else { y })
        }
        macro_rules! go {
            ($($var:ident),*) => {
                match (&xb, &yb) {
                    $((Tensor::$var(x), Tensor::$var(y)) => Ok(Tensor::$var(pick(&cb, x, y))),)*
                    _ => Err(op_err("Where branches have different element types")),
                }
            };
        }
        go!(
            F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;
    use crate::tensor::BinOp;

    #[test]
    fn structural_ops() -> Result<(), TensorError> {
        let t = Tensor::from_vec(&[2, 3], (0..6i64).collect())?;
        assert_eq!(t.transpose(&[1, 0])?.to_i64s()?, vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(t.gather(1, &[2, 0], &[2])?.to_i64s()?, vec![2, 0, 5, 3]);
        assert_eq!(t.tile(&[1, 2])?.shape(), &[2, 6]);
        let c = Tensor::concat(&[t.clone(), t.clone()], 0)?;
        assert_eq!(c.shape(), &[4, 3]);
        assert_eq!(Tensor::from_i64s(&[1]).expand(&[2, 3])?.shape(), &[2, 3]);
        let r = Tensor::range(
            &Tensor::scalar(10i64),
            &Tensor::scalar(0i64),
            &Tensor::scalar(-3i64),
        )?;
        assert_eq!(r.to_i64s()?, vec![10, 7, 4, 1]);
        let f = Tensor::from_vec(&[2], vec![2.7f32, -2.7])?.cast(DataType::INT64)?;
        assert_eq!(f.to_i64s()?, vec![2, -2]);
        let s = t.reduce(BinOp::Mul, &[1], false)?;
        assert_eq!(s.to_i64s()?, vec![0, 60]);
        Ok(())
    }
}
