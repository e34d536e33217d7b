//! Elementwise arithmetic, comparisons and logic with numpy broadcasting, reductions, and
//! `Range`. Integer arithmetic wraps and truncates like ONNX Runtime's C++ kernels; division
//! by zero is an error.

use half::{bf16, f16};
use ndarray::{ArrayD, Axis};

use super::structural::{checked_numel, from_vec, zip_broadcast};
use super::{Elem, Tensor, TensorError, op_err};
use crate::ir::DataType;

/// Elementwise binary arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `Mod` with `fmod = 0` (integer result takes the divisor's sign).
    Mod,
    /// `Mod` with `fmod = 1` (C `fmod`: the dividend's sign).
    FMod,
    Min,
    Max,
    Pow,
}

/// Elementwise comparison (bool result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Abs,
    Floor,
    Ceil,
    Round,
    Sqrt,
    Reciprocal,
    Sign,
    Not,
}

trait Num: Elem {
    fn bin(op: BinOp, a: Self, b: Self) -> Result<Self, TensorError>;
    fn un(op: UnaryOp, a: Self) -> Result<Self, TensorError>;
}

macro_rules! int_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn bin(op: BinOp, a: Self, b: Self) -> Result<Self, TensorError> {
                Ok(match op {
                    BinOp::Add => a.wrapping_add(b),
                    BinOp::Sub => a.wrapping_sub(b),
                    BinOp::Mul => a.wrapping_mul(b),
                    BinOp::Div => {
                        if b == 0 {
                            return Err(op_err("integer division by zero"));
                        }
                        a.wrapping_div(b)
                    }
                    BinOp::Mod | BinOp::FMod => {
                        if b == 0 {
                            return Err(op_err("integer modulo by zero"));
                        }
                        let r = a.wrapping_rem(b);
                        #[allow(unused_comparisons)]
                        let adjust = op == BinOp::Mod && r != 0 && ((r < 0) != (b < 0));
                        if adjust { r.wrapping_add(b) } else { r }
                    }
                    BinOp::Min => if b < a { b } else { a },
                    BinOp::Max => if b > a { b } else { a },
                    BinOp::Pow => {
                        // ONNX Runtime computes integer powers by repeated multiplication.
                        #[allow(unused_comparisons)]
                        if b < 0 {
                            return Err(op_err("integer power with a negative exponent"));
                        }
                        let mut e = b as u64;
                        let mut base = a;
                        let mut acc: $t = 1;
                        while e > 0 {
                            if e & 1 == 1 {
                                acc = acc.wrapping_mul(base);
                            }
                            base = base.wrapping_mul(base);
                            e >>= 1;
                        }
                        acc
                    }
                })
            }
            fn un(op: UnaryOp, a: Self) -> Result<Self, TensorError> {
                #[allow(unused_comparisons)]
                let neg = a < 0;
                Ok(match op {
                    UnaryOp::Neg => (0 as $t).wrapping_sub(a),
                    UnaryOp::Abs => if neg { (0 as $t).wrapping_sub(a) } else { a },
                    UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => a,
                    UnaryOp::Sign => if neg { (0 as $t).wrapping_sub(1) } else if a == 0 { 0 } else { 1 },
                    _ => return Err(op_err(format!("{op:?} is not defined on integers"))),
                })
            }
        }
    )*};
}
int_num!(i8, i16, i32, i64, u8, u16, u32, u64);

fn float_bin(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::FMod => a % b,
        BinOp::Mod => {
            let r = a % b;
            if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
                r + b
            } else {
                r
            }
        }
        BinOp::Min => a.min(b),
        BinOp::Max => a.max(b),
        BinOp::Pow => a.powf(b),
    }
}

fn float_un(op: UnaryOp, a: f64) -> Result<f64, TensorError> {
    Ok(match op {
        UnaryOp::Neg => -a,
        UnaryOp::Abs => a.abs(),
        UnaryOp::Floor => a.floor(),
        UnaryOp::Ceil => a.ceil(),
        UnaryOp::Round => a.round_ties_even(),
        UnaryOp::Sqrt => a.sqrt(),
        UnaryOp::Reciprocal => 1.0 / a,
        UnaryOp::Sign => {
            if a > 0.0 {
                1.0
            } else if a < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Not => return Err(op_err("Not is only defined on bool")),
    })
}

// f32 arithmetic through f64 then rounding to f32 is exact for + - * / and sqrt (double
// rounding is innocuous when the wide format has more than 2p+2 bits), so results equal f32
// IEEE arithmetic; the same holds for f16/bf16 through f64.
macro_rules! float_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn bin(op: BinOp, a: Self, b: Self) -> Result<Self, TensorError> {
                Ok(<$t as Elem>::from_f64(float_bin(op, Elem::to_f64(a), Elem::to_f64(b))))
            }
            fn un(op: UnaryOp, a: Self) -> Result<Self, TensorError> {
                Ok(<$t as Elem>::from_f64(float_un(op, Elem::to_f64(a))?))
            }
        }
    )*};
}
float_num!(f32, f64, f16, bf16);

macro_rules! numeric_pair {
    ($a:expr, $b:expr, $x:ident, $y:ident => $e:expr, bool => $bool:expr) => {
        match ($a, $b) {
            (Tensor::F32($x), Tensor::F32($y)) => Tensor::F32($e),
            (Tensor::F64($x), Tensor::F64($y)) => Tensor::F64($e),
            (Tensor::F16($x), Tensor::F16($y)) => Tensor::F16($e),
            (Tensor::BF16($x), Tensor::BF16($y)) => Tensor::BF16($e),
            (Tensor::I8($x), Tensor::I8($y)) => Tensor::I8($e),
            (Tensor::I16($x), Tensor::I16($y)) => Tensor::I16($e),
            (Tensor::I32($x), Tensor::I32($y)) => Tensor::I32($e),
            (Tensor::I64($x), Tensor::I64($y)) => Tensor::I64($e),
            (Tensor::U8($x), Tensor::U8($y)) => Tensor::U8($e),
            (Tensor::U16($x), Tensor::U16($y)) => Tensor::U16($e),
            (Tensor::U32($x), Tensor::U32($y)) => Tensor::U32($e),
            (Tensor::U64($x), Tensor::U64($y)) => Tensor::U64($e),
            (Tensor::Bool(_), Tensor::Bool(_)) => $bool,
            (a, b) => {
                return Err(op_err(format!(
                    "element types differ: {} and {}",
                    a.dtype(),
                    b.dtype()
                )))
            }
        }
    };
}

impl Tensor {
    /// Elementwise arithmetic with numpy broadcasting; both sides must share an element type.
    pub fn binary(&self, op: BinOp, other: &Tensor) -> Result<Tensor, TensorError> {
        Ok(
            numeric_pair!(self, other, a, b => zip_broadcast(a, b, |x, y| Num::bin(op, x, y))?,
            bool => return Err(op_err(format!("{op:?} is not defined on bool")))),
        )
    }

    /// Elementwise comparison with numpy broadcasting.
    pub fn compare(&self, op: CmpOp, other: &Tensor) -> Result<Tensor, TensorError> {
        fn cmp<T: PartialOrd>(op: CmpOp, x: T, y: T) -> Result<bool, TensorError> {
            Ok(match op {
                CmpOp::Eq => x == y,
                CmpOp::Lt => x < y,
                CmpOp::Gt => x > y,
                CmpOp::Le => x <= y,
                CmpOp::Ge => x >= y,
            })
        }
        macro_rules! go {
            ($($var:ident),*) => {
                match (self, other) {
                    $((Tensor::$var(a), Tensor::$var(b)) => zip_broadcast(a, b, |x, y| cmp(op, x, y))?,)*
                    (a, b) => {
                        return Err(op_err(format!(
                            "element types differ: {} and {}",
                            a.dtype(),
                            b.dtype()
                        )))
                    }
                }
            };
        }
        Ok(Tensor::Bool(go!(
            F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool
        )))
    }

    /// Elementwise logic on bool tensors: `And`, `Or`, `Xor`.
    pub fn logic(&self, op: &str, other: &Tensor) -> Result<Tensor, TensorError> {
        let (Tensor::Bool(a), Tensor::Bool(b)) = (self, other) else {
            return Err(op_err(format!("{op} needs bool inputs")));
        };
        let f = match op {
            "And" => |x: bool, y: bool| x && y,
            "Or" => |x: bool, y: bool| x || y,
            "Xor" => |x: bool, y: bool| x != y,
            _ => return Err(op_err(format!("unknown logic op {op}"))),
        };
        Ok(Tensor::Bool(zip_broadcast(a, b, |x, y| Ok(f(x, y)))?))
    }

    /// Elementwise unary operation.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor, TensorError> {
        fn go<T: Num>(a: &ArrayD<T>, op: UnaryOp) -> Result<ArrayD<T>, TensorError> {
            let v = a
                .iter()
                .map(|&x| T::un(op, x))
                .collect::<Result<Vec<_>, _>>()?;
            from_vec(a.shape(), v)
        }
        Ok(match self {
            Tensor::Bool(a) if op == UnaryOp::Not => Tensor::Bool(a.mapv(|x| !x)),
            Tensor::Bool(_) => return Err(op_err(format!("{op:?} is not defined on bool"))),
            Tensor::F32(a) => Tensor::F32(go(a, op)?),
            Tensor::F64(a) => Tensor::F64(go(a, op)?),
            Tensor::F16(a) => Tensor::F16(go(a, op)?),
            Tensor::BF16(a) => Tensor::BF16(go(a, op)?),
            Tensor::I8(a) => Tensor::I8(go(a, op)?),
            Tensor::I16(a) => Tensor::I16(go(a, op)?),
            Tensor::I32(a) => Tensor::I32(go(a, op)?),
            Tensor::I64(a) => Tensor::I64(go(a, op)?),
            Tensor::U8(a) => Tensor::U8(go(a, op)?),
            Tensor::U16(a) => Tensor::U16(go(a, op)?),
            Tensor::U32(a) => Tensor::U32(go(a, op)?),
            Tensor::U64(a) => Tensor::U64(go(a, op)?),
        })
    }

    /// Reduces `axes` (sorted, unique, in range) with `op` (`Add`, `Mul`, `Min`, `Max`).
    pub fn reduce(&self, op: BinOp, axes: &[usize], keepdims: bool) -> Result<Tensor, TensorError> {
        let r = self.shape().len();
        if axes.iter().any(|&a| a >= r) {
            return Err(op_err("reduce axis out of range"));
        }
        fn go<T: Num>(
            a: &ArrayD<T>,
            op: BinOp,
            axes: &[usize],
            keep: bool,
        ) -> Result<ArrayD<T>, TensorError> {
            let mut cur = a.clone();
            let mut sorted: Vec<usize> = axes.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            for &ax in sorted.iter().rev() {
                if cur.shape()[ax] == 0 && matches!(op, BinOp::Min | BinOp::Max) {
                    return Err(op_err("Min/Max reduction over an empty axis"));
                }
                let init = match op {
                    BinOp::Add => T::from_i64(0),
                    BinOp::Mul => T::from_i64(1),
                    _ => T::default(),
                };
                let mut err = None;
                let mut red = cur.map_axis(Axis(ax), |lane| {
                    let mut it = lane.iter();
                    let mut acc = match op {
                        BinOp::Min | BinOp::Max => it.next().copied().unwrap_or(init),
                        _ => init,
                    };
                    for &x in it {
                        match T::bin(op, acc, x) {
                            Ok(v) => acc = v,
                            Err(e) => err = Some(e),
                        }
                    }
                    acc
                });
                if let Some(e) = err {
                    return Err(e);
                }
                if keep {
                    red = red.insert_axis(Axis(ax));
                }
                cur = red;
            }
            Ok(cur)
        }
        Ok(match self {
            Tensor::Bool(_) => return Err(op_err("reduction of bool")),
            Tensor::F32(a) => Tensor::F32(go(a, op, axes, keepdims)?),
            Tensor::F64(a) => Tensor::F64(go(a, op, axes, keepdims)?),
            Tensor::F16(a) => Tensor::F16(go(a, op, axes, keepdims)?),
            Tensor::BF16(a) => Tensor::BF16(go(a, op, axes, keepdims)?),
            Tensor::I8(a) => Tensor::I8(go(a, op, axes, keepdims)?),
            Tensor::I16(a) => Tensor::I16(go(a, op, axes, keepdims)?),
            Tensor::I32(a) => Tensor::I32(go(a, op, axes, keepdims)?),
            Tensor::I64(a) => Tensor::I64(go(a, op, axes, keepdims)?),
            Tensor::U8(a) => Tensor::U8(go(a, op, axes, keepdims)?),
            Tensor::U16(a) => Tensor::U16(go(a, op, axes, keepdims)?),
            Tensor::U32(a) => Tensor::U32(go(a, op, axes, keepdims)?),
            Tensor::U64(a) => Tensor::U64(go(a, op, axes, keepdims)?),
        })
    }

    /// ONNX `Range` for a scalar `start`, `limit`, `delta` of one element type.
    pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor, TensorError> {
        let dt = start.dtype();
        if limit.dtype() != dt || delta.dtype() != dt {
            return Err(op_err("Range inputs have different element types"));
        }
        if start.len() != 1 || limit.len() != 1 || delta.len() != 1 {
            return Err(op_err("Range inputs must be scalars"));
        }
        let n = range_len(start, limit, delta)?;
        fn go<T: Num>(s: T, d: T, n: usize) -> Result<Tensor, TensorError> {
            let mut out = Vec::with_capacity(n);
            let mut v = s;
            for _ in 0..n {
                out.push(v);
                v = T::bin(BinOp::Add, v, d)?;
            }
            Tensor::from_vec(&[n], out)
        }
        macro_rules! first {
            ($a:expr) => {
                $a.iter().next().copied().unwrap_or_default()
            };
        }
        match (start, delta) {
            (Tensor::F32(s), Tensor::F32(d)) => go(first!(s), first!(d), n),
            (Tensor::F64(s), Tensor::F64(d)) => go(first!(s), first!(d), n),
            (Tensor::I16(s), Tensor::I16(d)) => go(first!(s), first!(d), n),
            (Tensor::I32(s), Tensor::I32(d)) => go(first!(s), first!(d), n),
            (Tensor::I64(s), Tensor::I64(d)) => go(first!(s), first!(d), n),
            _ => Err(op_err(format!("Range is not defined on {dt}"))),
        }
    }
}

/// Number of elements of ONNX `Range(start, limit, delta)`: `max(ceil((limit-start)/delta), 0)`,
/// computed exactly for integers and in the element type for floats (as ONNX Runtime does).
pub fn range_len(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<usize, TensorError> {
    let n: i128 = if start.dtype().is_float() {
        let (s, l, d) = (start.to_f64s(), limit.to_f64s(), delta.to_f64s());
        let (s, l, d) = (s[0], l[0], d[0]);
        if d == 0.0 {
            return Err(op_err("Range delta is zero"));
        }
        let q = if start.dtype() == DataType::FLOAT {
            (((l as f32) - (s as f32)) / (d as f32)).ceil() as f64
        } else {
            ((l - s) / d).ceil()
        };
        if !q.is_finite() {
            return Err(op_err("Range length is not finite"));
        }
        q.max(0.0) as i128
    } else {
        let (s, l, d) = (
            start.to_i64s()?[0] as i128,
            limit.to_i64s()?[0] as i128,
            delta.to_i64s()?[0] as i128,
        );
        if d == 0 {
            return Err(op_err("Range delta is zero"));
        }
        let num = l - s;
        // Ceiling division for any signs.
        let q = num / d + i128::from((num % d != 0) && ((num < 0) == (d < 0)));
        q.max(0)
    };
    let n = usize::try_from(n).map_err(|_| op_err("Range is too long"))?;
    checked_numel(&[n])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_arithmetic_matches_cpp() -> Result<(), TensorError> {
        let a = Tensor::from_i64s(&[7, -7, 7, -7]);
        let b = Tensor::from_i64s(&[2, 2, -2, -2]);
        assert_eq!(a.binary(BinOp::Div, &b)?.to_i64s()?, vec![3, -3, -3, 3]);
        assert_eq!(a.binary(BinOp::Mod, &b)?.to_i64s()?, vec![1, 1, -1, -1]);
        assert_eq!(a.binary(BinOp::FMod, &b)?.to_i64s()?, vec![1, -1, 1, -1]);
        assert!(a.binary(BinOp::Div, &Tensor::from_i64s(&[0])).is_err());
        let big = Tensor::from_i64s(&[i64::MAX]);
        assert_eq!(
            big.binary(BinOp::Add, &Tensor::from_i64s(&[1]))?
                .to_i64s()?,
            vec![i64::MIN]
        );
        Ok(())
    }
}
