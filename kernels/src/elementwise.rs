//! Elementwise kernels: numpy-style broadcasting binary ops and in-place activations.
//!
//! Binary ops coalesce the broadcast into at most one "row" loop per run of contiguous output,
//! so same-shape, per-channel (`[N,C,H,W] ∘ [C,1,1]`) and scalar operands all become tight
//! vector loops. Activations use the branch-free approximations of `math`, compiled per
//! instruction set. Tensors of at least 64K elements are split across the current rayon pool.

use rayon::prelude::*;

use crate::math::{self, Kernel, PAR_CHUNK, dispatch, fmadd, go_parallel};
use crate::{Isa, KernelError, Result};

// ---------------------------------------------------------------------------------------------
// Shapes.
// ---------------------------------------------------------------------------------------------

/// Number of elements of `shape`, or a typed error if the product overflows.
pub(crate) fn numel(what: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| KernelError::SizeOverflow {
            what,
            detail: format!("shape {shape:?}"),
        })
}

/// Checks that `buffer` holds exactly the elements of `shape`; returns that count.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    len: usize,
    shape: &[usize],
) -> Result<usize> {
    let n = numel(what, shape)?;
    if n != len {
        return Err(KernelError::ShapeMismatch {
            op,
            detail: format!("{what} has {len} elements but shape {shape:?} holds {n}"),
        });
    }
    Ok(n)
}

/// The numpy broadcast of two shapes (aligned on the right; a dimension of 1 stretches).
pub fn broadcast_shape(a_shape: &[usize], b_shape: &[usize]) -> Result<Vec<usize>> {
    let rank = a_shape.len().max(b_shape.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = dim_from_right(a_shape, rank - 1 - i);
        let db = dim_from_right(b_shape, rank - 1 - i);
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(KernelError::ShapeMismatch {
                    op: "broadcast",
                    detail: format!(
                        "shapes {a_shape:?} and {b_shape:?} disagree at axis {i} of the result \
                         ({da} vs {db})"
                    ),
                });
            }
        };
    }
    Ok(out)
}

/// Dimension `k` counted from the right, 1 past the rank.
fn dim_from_right(shape: &[usize], k: usize) -> usize {
    if k < shape.len() {
        shape[shape.len() - 1 - k]
    } else {
        1
    }
}

// ---------------------------------------------------------------------------------------------
// Binary ops.
// ---------------------------------------------------------------------------------------------

/// A binary arithmetic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (IEEE: division by zero gives ±inf or NaN).
    Div,
}

impl BinaryOp {
    /// The op's lower-case name, used in errors.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

trait BinFn: Copy {
    fn apply(a: f32, b: f32) -> f32;
}

macro_rules! bin_fn {
    ($name:ident, $a:ident, $b:ident, $e:expr) => {
        #[derive(Clone, Copy)]
        struct $name;
        impl BinFn for $name {
            #[inline(always)]
            fn apply($a: f32, $b: f32) -> f32 {
                $e
            }
        }
    };
}
bin_fn!(AddFn, a, b, a + b);
bin_fn!(SubFn, a, b, a - b);
bin_fn!(MulFn, a, b, a * b);
bin_fn!(DivFn, a, b, a / b);

/// A broadcast reduced to its simplest loop nest: outer dimensions with per-operand strides
/// (0 where the operand is broadcast) around one contiguous inner run.
#[derive(Debug)]
struct BroadcastPlan {
    /// Outer dimensions, outermost first: (size, stride in a, stride in b).
    outer: Vec<(usize, usize, usize)>,
    /// Length of the inner run.
    inner: usize,
    /// Inner stride of a and b: 1 (walks) or 0 (broadcast).
    inner_a: usize,
    inner_b: usize,
}

impl BroadcastPlan {
    fn new(a_shape: &[usize], b_shape: &[usize], out_shape: &[usize]) -> Self {
        let rank = out_shape.len();
        let strides = |shape: &[usize]| {
            // Contiguous strides over the right-aligned shape, 0 where the operand broadcasts.
            let mut s = vec![0; rank];
            let mut acc = 1;
            for k in 0..rank {
                let d = dim_from_right(shape, k);
                s[rank - 1 - k] = if d == 1 { 0 } else { acc };
                acc *= d;
            }
            s
        };
        let (sa, sb) = (strides(a_shape), strides(b_shape));
        let mut dims: Vec<(usize, usize, usize)> = Vec::with_capacity(rank);
        for i in 0..rank {
            if out_shape[i] == 1 {
                continue;
            }
            let next = (out_shape[i], sa[i], sb[i]);
            if let Some(last) = dims.last_mut() {
                // Merge into the previous (outer) dimension when both operands walk it as one.
                if last.1 == next.1 * next.0 && last.2 == next.2 * next.0 {
                    *last = (last.0 * next.0, next.1, next.2);
                    continue;
                }
            }
            dims.push(next);
        }
        let (inner, inner_a, inner_b) = dims.pop().unwrap_or((1, 0, 0));
        BroadcastPlan {
            outer: dims,
            inner,
            inner_a,
            inner_b,
        }
    }
}

/// One contiguous range of a broadcast binary op, run under [`dispatch`].
struct BinaryRange<'a> {
    op: BinaryOp,
    plan: &'a BroadcastPlan,
    /// `None`: in place, `a` is the output itself.
    a: Option<&'a [f32]>,
    b: &'a [f32],
    out: &'a mut [f32],
    /// Flat output index of `out[0]`.
    start: usize,
}

impl Kernel for BinaryRange<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        match self.op {
            BinaryOp::Add => binary_range::<AddFn>(self),
            BinaryOp::Sub => binary_range::<SubFn>(self),
            BinaryOp::Mul => binary_range::<MulFn>(self),
            BinaryOp::Div => binary_range::<DivFn>(self),
        }
    }
}

#[inline(always)]
fn binary_range<F: BinFn>(k: BinaryRange<'_>) {
    let BinaryRange {
        plan, a, b, out, ..
    } = k;
    let n = plan.inner;
    let mut row = k.start / n;
    let mut col = k.start % n;
    // Multi-index of `row` over the outer dimensions, and the operands' offsets there.
    let mut idx = vec![0usize; plan.outer.len()];
    let (mut off_a, mut off_b) = (0usize, 0usize);
    for (d, &(size, sa, sb)) in plan.outer.iter().enumerate().rev() {
        idx[d] = row % size;
        row /= size;
        off_a += idx[d] * sa;
        off_b += idx[d] * sb;
    }
    let mut done = 0;
    while done < out.len() {
        let len = (n - col).min(out.len() - done);
        let o = &mut out[done..done + len];
        let ia = off_a + col * plan.inner_a;
        let ib = off_b + col * plan.inner_b;
        let bv = if plan.inner_b == 1 {
            Operand::Run(&b[ib..ib + len])
        } else {
            Operand::Scalar(b[ib])
        };
        match a {
            None => match bv {
                Operand::Run(y) => {
                    for (o, &y) in o.iter_mut().zip(y) {
                        *o = F::apply(*o, y);
                    }
                }
                Operand::Scalar(y) => {
                    for o in o.iter_mut() {
                        *o = F::apply(*o, y);
                    }
                }
            },
            Some(a) if plan.inner_a == 1 => {
                let x = &a[ia..ia + len];
                match bv {
                    Operand::Run(y) => {
                        for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                            *o = F::apply(x, y);
                        }
                    }
                    Operand::Scalar(y) => {
                        for (o, &x) in o.iter_mut().zip(x) {
                            *o = F::apply(x, y);
                        }
                    }
                }
            }
            Some(a) => {
                let x = a[ia];
                match bv {
                    Operand::Run(y) => {
                        for (o, &y) in o.iter_mut().zip(y) {
                            *o = F::apply(x, y);
                        }
                    }
                    Operand::Scalar(y) => o.fill(F::apply(x, y)),
                }
            }
        }
        done += len;
        col = 0;
        // Next row: odometer over the outer dimensions.
        for (d, &(size, sa, sb)) in plan.outer.iter().enumerate().rev() {
            idx[d] += 1;
            off_a += sa;
            off_b += sb;
            if idx[d] < size {
                break;
            }
            idx[d] = 0;
            off_a -= sa * size;
            off_b -= sb * size;
        }
    }
}

enum Operand<'a> {
    Run(&'a [f32]),
    Scalar(f32),
}

/// Runs a planned broadcast over all of `out`, in parallel above the threshold.
fn run_binary(
    isa: Isa,
    op: BinaryOp,
    plan: &BroadcastPlan,
    a: Option<&[f32]>,
    b: &[f32],
    out: &mut [f32],
) {
    if go_parallel(out.len()) {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                let k = BinaryRange {
                    op,
                    plan,
                    a,
                    b,
                    out: chunk,
                    start: i * PAR_CHUNK,
                };
                dispatch(isa, k)
            });
    } else {
        let k = BinaryRange {
            op,
            plan,
            a,
            b,
            out,
            start: 0,
        };
        dispatch(isa, k)
    }
}

/// `out = a ∘ b` with numpy broadcasting, on the given instruction set.
///
/// `out` must hold exactly the elements of `broadcast_shape(a_shape, b_shape)`.
pub fn binary_with_isa(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    isa: Isa,
) -> Result<()> {
    isa.require()?;
    let name = op.name();
    check_len(name, "a", a.len(), a_shape)?;
    check_len(name, "b", b.len(), b_shape)?;
    let out_shape = broadcast_shape(a_shape, b_shape).map_err(|e| rename(e, name))?;
    check_len(name, "out", out.len(), &out_shape)?;
    if out.is_empty() {
        return Ok(());
    }
    let plan = BroadcastPlan::new(a_shape, b_shape, &out_shape);
    run_binary(isa, op, &plan, Some(a), b, out);
    Ok(())
}

/// `out = a ∘ b` with numpy broadcasting.
pub fn binary(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    binary_with_isa(op, a, a_shape, b, b_shape, out, Isa::selected())
}

/// `a = a ∘ b` in place, where `b` broadcasts to `a`'s shape (e.g. a bias or a residual).
pub fn binary_assign(
    op: BinaryOp,
    a: &mut [f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) -> Result<()> {
    let name = op.name();
    check_len(name, "a", a.len(), a_shape)?;
    check_len(name, "b", b.len(), b_shape)?;
    let out_shape = broadcast_shape(a_shape, b_shape).map_err(|e| rename(e, name))?;
    if out_shape != a_shape {
        return Err(KernelError::ShapeMismatch {
            op: name,
            detail: format!(
                "in place needs b {b_shape:?} to broadcast to a {a_shape:?}, but the result \
                 would be {out_shape:?}"
            ),
        });
    }
    if a.is_empty() {
        return Ok(());
    }
    let plan = BroadcastPlan::new(a_shape, b_shape, &out_shape);
    run_binary(Isa::selected(), op, &plan, None, b, a);
    Ok(())
}

/// Puts the calling op's name into a broadcast error.
fn rename(e: KernelError, op: &'static str) -> KernelError {
    match e {
        KernelError::ShapeMismatch { detail, .. } => KernelError::ShapeMismatch { op, detail },
        other => other,
    }
}

/// `out = a + b` with numpy broadcasting.
pub fn add(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    binary(BinaryOp::Add, a, a_shape, b, b_shape, out)
}

/// `out = a - b` with numpy broadcasting.
pub fn sub(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    binary(BinaryOp::Sub, a, a_shape, b, b_shape, out)
}

/// `out = a * b` with numpy broadcasting.
pub fn mul(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    binary(BinaryOp::Mul, a, a_shape, b, b_shape, out)
}

/// `out = a / b` with numpy broadcasting.
pub fn div(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    binary(BinaryOp::Div, a, a_shape, b, b_shape, out)
}

// ---------------------------------------------------------------------------------------------
// Unary ops.
// ---------------------------------------------------------------------------------------------

/// An elementwise function of one tensor. NaN in gives NaN out for every variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, min), max)`; needs `min ≤ max`.
    Clip {
        /// Lower bound (may be -inf).
        min: f32,
        /// Upper bound (may be +inf).
        max: f32,
    },
    /// `x` for `x ≥ 0`, `alpha·x` below.
    LeakyRelu {
        /// Slope for negative inputs (finite).
        alpha: f32,
    },
    /// `x` for `x ≥ 0`, `alpha·(e^x - 1)` below.
    Elu {
        /// Scale of the negative branch (finite).
        alpha: f32,
    },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// GELU, exact erf form `x·Φ(x)`.
    Gelu,
    /// GELU, tanh approximation.
    GeluTanh,
    /// SiLU / swish `x·σ(x)`.
    Silu,
    /// `clip(alpha·x + beta, 0, 1)` (ONNX HardSigmoid).
    HardSigmoid {
        /// Slope (finite).
        alpha: f32,
        /// Offset (finite).
        beta: f32,
    },
    /// `x·clip(x/6 + 1/2, 0, 1)` (ONNX HardSwish).
    HardSwish,
    /// `e^x`.
    Exp,
    /// `e^x - 1`.
    Expm1,
    /// The error function.
    Erf,
    /// The complementary error function `1 - erf(x)`.
    Erfc,
}

impl Unary {
    /// Checks the op's parameters.
    fn validate(self) -> Result<()> {
        let finite = |name: &'static str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(KernelError::InvalidArgument {
                    name,
                    value: v.to_string(),
                    reason: "must be finite",
                })
            }
        };
        match self {
            Unary::Clip { min, max } => {
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(KernelError::InvalidArgument {
                        name: "clip bounds",
                        value: format!("[{min}, {max}]"),
                        reason: "need min <= max, neither NaN",
                    });
                }
                Ok(())
            }
            Unary::LeakyRelu { alpha } => finite("leaky_relu alpha", alpha),
            Unary::Elu { alpha } => finite("elu alpha", alpha),
            Unary::HardSigmoid { alpha, beta } => {
                finite("hard_sigmoid alpha", alpha)?;
                finite("hard_sigmoid beta", beta)
            }
            _ => Ok(()),
        }
    }
}

/// A scalar function applied by the unary loops; monomorphised so it inlines into them.
trait UnaryFn: Copy {
    fn apply<const FMA: bool>(self, x: f32) -> f32;
}

macro_rules! unary_fn {
    ($name:ident { $($field:ident),* }, $x:ident, $fma:ident, $e:expr) => {
        #[derive(Clone, Copy)]
        struct $name { $($field: f32),* }
        impl UnaryFn for $name {
            #[inline(always)]
            #[allow(unused_variables)]
            fn apply<const $fma: bool>(self, $x: f32) -> f32 {
                let $name { $($field),* } = self;
                $e
            }
        }
    };
}
unary_fn!(ReluFn {}, x, F, if x < 0.0 { 0.0 } else { x });
unary_fn!(ClipFn { lo, hi }, x, F, math::clamp_nan(x, lo, hi));
unary_fn!(
    LeakyFn { alpha },
    x,
    F,
    if x >= 0.0 { x } else { alpha * x }
);
unary_fn!(
    EluFn { alpha },
    x,
    F,
    if x >= 0.0 {
        x
    } else {
        alpha * math::expm1::<F>(x)
    }
);
unary_fn!(SigmoidFn {}, x, F, math::sigmoid::<F>(x));
unary_fn!(TanhFn {}, x, F, math::tanh::<F>(x));
unary_fn!(GeluFn {}, x, F, math::gelu::<F>(x));
unary_fn!(GeluTanhFn {}, x, F, math::gelu_tanh::<F>(x));
unary_fn!(SiluFn {}, x, F, math::silu::<F>(x));
unary_fn!(
    HardSigmoidFn { alpha, beta },
    x,
    F,
    math::clamp_nan(fmadd::<F>(alpha, x, beta), 0.0, 1.0)
);
unary_fn!(HardSwishFn {}, x, F, {
    // Exactly 0 from -3 down, which also covers -inf (the product would be -inf · 0).
    let y = x * math::clamp_nan((x + 3.0) * (1.0 / 6.0), 0.0, 1.0);
    if x <= -3.0 { 0.0 } else { y }
});
unary_fn!(ExpFn {}, x, F, math::exp::<F>(x));
unary_fn!(Expm1Fn {}, x, F, math::expm1::<F>(x));
unary_fn!(ErfFn {}, x, F, math::erf::<F>(x));
unary_fn!(ErfcFn {}, x, F, math::erfc::<F>(x));

/// One chunk of a unary op, run under [`dispatch`].
struct UnaryChunk<'a> {
    op: Unary,
    /// `None`: in place.
    src: Option<&'a [f32]>,
    dst: &'a mut [f32],
}

impl Kernel for UnaryChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let (src, dst) = (self.src, self.dst);
        match self.op {
            Unary::Relu => map::<FMA, _>(ReluFn {}, src, dst),
            Unary::Clip { min, max } => map::<FMA, _>(ClipFn { lo: min, hi: max }, src, dst),
            Unary::LeakyRelu { alpha } => map::<FMA, _>(LeakyFn { alpha }, src, dst),
            Unary::Elu { alpha } => map::<FMA, _>(EluFn { alpha }, src, dst),
            Unary::Sigmoid => map::<FMA, _>(SigmoidFn {}, src, dst),
            Unary::Tanh => map::<FMA, _>(TanhFn {}, src, dst),
            Unary::Gelu => map::<FMA, _>(GeluFn {}, src, dst),
            Unary::GeluTanh => map::<FMA, _>(GeluTanhFn {}, src, dst),
            Unary::Silu => map::<FMA, _>(SiluFn {}, src, dst),
            Unary::HardSigmoid { alpha, beta } => {
                map::<FMA, _>(HardSigmoidFn { alpha, beta }, src, dst)
            }
            Unary::HardSwish => map::<FMA, _>(HardSwishFn {}, src, dst),
            Unary::Exp => map::<FMA, _>(ExpFn {}, src, dst),
            Unary::Expm1 => map::<FMA, _>(Expm1Fn {}, src, dst),
            Unary::Erf => map::<FMA, _>(ErfFn {}, src, dst),
            Unary::Erfc => map::<FMA, _>(ErfcFn {}, src, dst),
        }
    }
}

#[inline(always)]
fn map<const FMA: bool, U: UnaryFn>(f: U, src: Option<&[f32]>, dst: &mut [f32]) {
    match src {
        None => {
            for v in dst.iter_mut() {
                *v = f.apply::<FMA>(*v);
            }
        }
        Some(src) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f.apply::<FMA>(s);
            }
        }
    }
}

/// Applies `op` to every element of `data` in place, on the given instruction set.
pub fn unary_with_isa(op: Unary, data: &mut [f32], isa: Isa) -> Result<()> {
    isa.require()?;
    op.validate()?;
    if go_parallel(data.len()) {
        data.par_chunks_mut(PAR_CHUNK).for_each(|chunk| {
            dispatch(
                isa,
                UnaryChunk {
                    op,
                    src: None,
                    dst: chunk,
                },
            )
        });
    } else {
        dispatch(
            isa,
            UnaryChunk {
                op,
                src: None,
                dst: data,
            },
        );
    }
    Ok(())
}

/// Applies `op` to every element of `data` in place.
pub fn unary(op: Unary, data: &mut [f32]) -> Result<()> {
    unary_with_isa(op, data, Isa::selected())
}

/// Writes `op(x)` into `y` (same length), on the given instruction set.
pub fn unary_into_with_isa(op: Unary, x: &[f32], y: &mut [f32], isa: Isa) -> Result<()> {
    isa.require()?;
    op.validate()?;
    if x.len() != y.len() {
        return Err(KernelError::ShapeMismatch {
            op: "unary",
            detail: format!("input has {} elements, output {}", x.len(), y.len()),
        });
    }
    if go_parallel(y.len()) {
        y.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(dst, src)| {
                dispatch(
                    isa,
                    UnaryChunk {
                        op,
                        src: Some(src),
                        dst,
                    },
                )
            });
    } else {
        dispatch(
            isa,
            UnaryChunk {
                op,
                src: Some(x),
                dst: y,
            },
        );
    }
    Ok(())
}

/// Writes `op(x)` into `y` (same length).
pub fn unary_into(op: Unary, x: &[f32], y: &mut [f32]) -> Result<()> {
    unary_into_with_isa(op, x, y, Isa::selected())
}

/// ReLU in place: `max(x, 0)`, NaN stays NaN.
pub fn relu(data: &mut [f32]) -> Result<()> {
    unary(Unary::Relu, data)
}

/// Clamps every element into `[min, max]` in place; NaN stays NaN.
pub fn clip(data: &mut [f32], min: f32, max: f32) -> Result<()> {
    unary(Unary::Clip { min, max }, data)
}

/// Logistic sigmoid in place.
pub fn sigmoid(data: &mut [f32]) -> Result<()> {
    unary(Unary::Sigmoid, data)
}

/// Hyperbolic tangent in place.
pub fn tanh(data: &mut [f32]) -> Result<()> {
    unary(Unary::Tanh, data)
}

/// GELU (erf form) in place.
pub fn gelu(data: &mut [f32]) -> Result<()> {
    unary(Unary::Gelu, data)
}

/// GELU (tanh approximation) in place.
pub fn gelu_tanh(data: &mut [f32]) -> Result<()> {
    unary(Unary::GeluTanh, data)
}

/// Leaky ReLU in place: `x` for `x ≥ 0`, `alpha·x` below.
pub fn leaky_relu(data: &mut [f32], alpha: f32) -> Result<()> {
    unary(Unary::LeakyRelu { alpha }, data)
}

/// ELU in place: `x` for `x ≥ 0`, `alpha·(e^x - 1)` below.
pub fn elu(data: &mut [f32], alpha: f32) -> Result<()> {
    unary(Unary::Elu { alpha }, data)
}

/// SiLU / swish in place: `x·σ(x)`.
pub fn silu(data: &mut [f32]) -> Result<()> {
    unary(Unary::Silu, data)
}
