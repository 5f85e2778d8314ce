//! Op descriptors: what to compute, the output shape it has, and its flop and byte counts.

use accelmesh_kernels::KernelError;
use accelmesh_kernels::conv::{Conv2dParams, conv2d_output_dims};
use accelmesh_kernels::elementwise::broadcast_shape;
use accelmesh_kernels::pool::pool2d_output_dims;

/// The operator of [`Op::Binary`], re-exported from the kernels.
pub use accelmesh_kernels::elementwise::BinaryOp;
/// The activation of [`Op::Unary`], re-exported from the kernels.
pub use accelmesh_kernels::elementwise::Unary;
/// The window geometry of [`Op::MaxPool`] and [`Op::AvgPool`], re-exported from the kernels.
pub use accelmesh_kernels::pool::Pool2dParams;

use crate::tensor::{DType, Shape};
use crate::{Error, Result};

/// One operation a device can execute on tensors.
///
/// Outputs are f32 whatever the input dtype: the kernels accumulate in f32 and keep it.
/// The elementwise, pooling and normalisation ops widen f16 / bf16 inputs to f32 (each input
/// may have its own dtype). New variants are added here with one arm in each method.
///
/// Equality compares float parameters bit for bit, so that `Op` is `Eq` (a NaN parameter
/// equals itself; `0.0` and `-0.0` differ).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Op {
    /// `C[M×N] = op(A)·op(B)` with inputs `[A, B]`; `op(A)` is `A` (`[M, K]`) or, with
    /// `trans_a`, the transpose of `A` stored as `[K, M]`; likewise `B` is `[K, N]` or `[N, K]`.
    MatMul {
        /// A is stored as `[K, M]` and used transposed.
        trans_a: bool,
        /// B is stored as `[N, K]` and used transposed.
        trans_b: bool,
    },
    /// 2-D convolution with inputs `[x (NCHW), w (OIHW)]` or `[x, w, bias ([O])]`.
    Conv2d(Conv2dParams),
    /// Elementwise activation `y = f(x)` of one input `[x]` of any shape.
    Unary(Unary),
    /// Elementwise `y = a ∘ b` of inputs `[a, b]` with numpy / ONNX broadcasting.
    Binary(BinaryOp),
    /// Softmax (log-softmax with `log`) of one input `[x]` along `axis`.
    Softmax {
        /// The axis normalised over (less than the rank).
        axis: usize,
        /// Return `log(softmax(x))`, computed as `x - max - log Σ e^(x - max)`.
        log: bool,
    },
    /// 2-D max pooling of one input `[x (NCHW)]` (ONNX MaxPool, NaN propagates).
    MaxPool(Pool2dParams),
    /// 2-D average pooling of one input `[x (NCHW)]` (ONNX AveragePool).
    AvgPool(Pool2dParams),
    /// Mean over the spatial axes of one input `[x (N, C, D1, …)]`, giving `[N, C, 1, …]`.
    GlobalAvgPool,
    /// Batch normalisation in inference form with inputs `[x (N, C, …), scale, bias, mean,
    /// var]` (each `[C]`): `y = (x - mean) / sqrt(var + epsilon) · scale + bias`, then
    /// `max(y, 0)` with `relu`.
    BatchNorm {
        /// Added to the variance (finite, ≥ 0).
        epsilon: f32,
        /// Whether a ReLU follows (NaN stays NaN).
        relu: bool,
    },
}

impl PartialEq for Op {
    fn eq(&self, other: &Op) -> bool {
        match (self, other) {
            (
                Op::MatMul { trans_a, trans_b },
                Op::MatMul {
                    trans_a: a2,
                    trans_b: b2,
                },
            ) => trans_a == a2 && trans_b == b2,
            (Op::Conv2d(a), Op::Conv2d(b)) => a == b,
            (Op::Unary(a), Op::Unary(b)) => unary_bits(*a) == unary_bits(*b),
            (Op::Binary(a), Op::Binary(b)) => a == b,
            (Op::Softmax { axis, log }, Op::Softmax { axis: a2, log: l2 }) => {
                axis == a2 && log == l2
            }
            (Op::MaxPool(a), Op::MaxPool(b)) | (Op::AvgPool(a), Op::AvgPool(b)) => a == b,
            (Op::GlobalAvgPool, Op::GlobalAvgPool) => true,
            (
                Op::BatchNorm {
                    epsilon: a,
                    relu: ra,
                },
                Op::BatchNorm {
                    epsilon: b,
                    relu: rb,
                },
            ) => a.to_bits() == b.to_bits() && ra == rb,
            _ => false,
        }
    }
}

impl Eq for Op {}

/// A unary op as (variant number, float parameters as bits), for bitwise equality.
fn unary_bits(u: Unary) -> (u8, [u32; 2]) {
    let b = f32::to_bits;
    match u {
        Unary::Relu => (0, [0; 2]),
        Unary::Clip { min, max } => (1, [b(min), b(max)]),
        Unary::LeakyRelu { alpha } => (2, [b(alpha), 0]),
        Unary::Elu { alpha } => (3, [b(alpha), 0]),
        Unary::Sigmoid => (4, [0; 2]),
        Unary::Tanh => (5, [0; 2]),
        Unary::Gelu => (6, [0; 2]),
        Unary::GeluTanh => (7, [0; 2]),
        Unary::Silu => (8, [0; 2]),
        Unary::HardSigmoid { alpha, beta } => (9, [b(alpha), b(beta)]),
        Unary::HardSwish => (10, [0; 2]),
        Unary::Exp => (11, [0; 2]),
        Unary::Expm1 => (12, [0; 2]),
        Unary::Erf => (13, [0; 2]),
        Unary::Erfc => (14, [0; 2]),
    }
}

/// The lower-case name of a unary op (`relu`, `gelu_tanh`, …).
pub fn unary_name(u: Unary) -> &'static str {
    match u {
        Unary::Relu => "relu",
        Unary::Clip { .. } => "clip",
        Unary::LeakyRelu { .. } => "leaky_relu",
        Unary::Elu { .. } => "elu",
        Unary::Sigmoid => "sigmoid",
        Unary::Tanh => "tanh",
        Unary::Gelu => "gelu",
        Unary::GeluTanh => "gelu_tanh",
        Unary::Silu => "silu",
        Unary::HardSigmoid { .. } => "hard_sigmoid",
        Unary::HardSwish => "hard_swish",
        Unary::Exp => "exp",
        Unary::Expm1 => "expm1",
        Unary::Erf => "erf",
        Unary::Erfc => "erfc",
    }
}

/// Nominal flops per element of a unary op: 1 per compare, add or multiply, with the
/// polynomial evaluations of the transcendental functions counted at their length.
fn unary_flops(u: Unary) -> usize {
    match u {
        Unary::Relu => 1,
        Unary::Clip { .. } | Unary::LeakyRelu { .. } => 2,
        Unary::HardSigmoid { .. } => 4,
        Unary::HardSwish => 5,
        Unary::Exp | Unary::Expm1 => 15,
        Unary::Elu { .. } | Unary::Sigmoid | Unary::Silu => 20,
        Unary::Tanh => 20,
        Unary::Erf | Unary::Erfc => 30,
        Unary::Gelu | Unary::GeluTanh => 35,
    }
}

/// Nominal flops per element of a softmax: max, subtract, exponential, sum and scale.
const SOFTMAX_FLOPS: usize = 20;

/// The problem size of a matrix multiply: `C[m×n] = A[m×k]·B[k×n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulDims {
    /// Rows of the output.
    pub m: usize,
    /// Columns of the output.
    pub n: usize,
    /// The shared (reduced) dimension.
    pub k: usize,
}

/// The validated dimensions of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dDims {
    /// Input `[N, C, H, W]`.
    pub input: [usize; 4],
    /// Weight `[O, C/groups, KH, KW]`.
    pub weight: [usize; 4],
    /// Output `[N, O, OH, OW]`.
    pub output: [usize; 4],
    /// Whether a bias input is present.
    pub has_bias: bool,
}

impl Op {
    /// A matrix multiply without transposes.
    pub fn matmul() -> Op {
        Op::MatMul {
            trans_a: false,
            trans_b: false,
        }
    }

    /// The lower-case name used in reports and errors (`matmul`, `conv2d`, `relu`, `add`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Op::MatMul { .. } => "matmul",
            Op::Conv2d(_) => "conv2d",
            Op::Unary(u) => unary_name(*u),
            Op::Binary(b) => b.name(),
            Op::Softmax { log: false, .. } => "softmax",
            Op::Softmax { log: true, .. } => "log_softmax",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::BatchNorm { .. } => "batch_norm",
        }
    }

    /// The shape of the (single) output for inputs of these shapes, or an error naming them.
    pub fn output_shape(&self, inputs: &[&Shape]) -> Result<Shape> {
        match self {
            Op::MatMul { trans_a, trans_b } => {
                let d = matmul_dims(*trans_a, *trans_b, inputs)?;
                Ok(Shape::new([d.m, d.n]))
            }
            Op::Conv2d(params) => Ok(Shape::new(conv2d_dims(params, inputs)?.output)),
            Op::Unary(u) => {
                check_arity(self.name(), inputs.len(), 1, 1, "1")?;
                check_unary(*u)?;
                Ok(inputs[0].clone())
            }
            Op::Binary(b) => Ok(Shape::new(binary_shape(*b, inputs)?)),
            Op::Softmax { axis, .. } => {
                softmax_dims(self.name(), *axis, inputs)?;
                Ok(inputs[0].clone())
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                Ok(Shape::new(pool2d_dims(self.name(), p, inputs)?.1))
            }
            Op::GlobalAvgPool => {
                let d = global_pool_dims(inputs)?;
                let mut out = vec![d[0], d[1]];
                out.resize(inputs[0].rank(), 1);
                Ok(Shape::new(out))
            }
            Op::BatchNorm { epsilon, .. } => {
                batch_norm_dims(*epsilon, inputs)?;
                Ok(inputs[0].clone())
            }
        }
    }

    /// Floating-point operations (a multiply-add counts 2) for inputs of these shapes.
    pub fn flops(&self, inputs: &[&Shape]) -> Result<u64> {
        match self {
            Op::MatMul { trans_a, trans_b } => {
                let d = matmul_dims(*trans_a, *trans_b, inputs)?;
                product(self.name(), &[2, d.m, d.n, d.k])
            }
            Op::Conv2d(params) => {
                let d = conv2d_dims(params, inputs)?;
                let [n, o, oh, ow] = d.output;
                let [_, cg, kh, kw] = d.weight;
                product(self.name(), &[2, n, o, oh, ow, cg, kh, kw])
            }
            Op::Unary(u) => {
                let out = self.output_shape(inputs)?.numel()?;
                product(self.name(), &[out, unary_flops(*u)])
            }
            Op::Binary(_) => product(self.name(), &[self.output_shape(inputs)?.numel()?]),
            Op::Softmax { .. } => {
                let out = self.output_shape(inputs)?.numel()?;
                product(self.name(), &[out, SOFTMAX_FLOPS])
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let (_, out) = pool2d_dims(self.name(), p, inputs)?;
                let taps = p.kernel[0].saturating_mul(p.kernel[1]);
                // Average pooling adds one division per output.
                let per = taps.saturating_add(usize::from(matches!(self, Op::AvgPool(_))));
                product(self.name(), &[out[0], out[1], out[2], out[3], per])
            }
            Op::GlobalAvgPool => {
                let d = global_pool_dims(inputs)?;
                let sums = product(self.name(), &[d[0], d[1], d[2]])?;
                let divs = product(self.name(), &[d[0], d[1]])?;
                Ok(sums.saturating_add(divs))
            }
            Op::BatchNorm { epsilon, .. } => {
                batch_norm_dims(*epsilon, inputs)?;
                // A subtraction and a multiply-add per element.
                product(self.name(), &[inputs[0].numel()?, 3])
            }
        }
    }

    /// Bytes moved: every input read once at `dtype` (a conv bias as f32), the output written
    /// once as f32.
    pub fn bytes(&self, inputs: &[&Shape], dtype: DType) -> Result<u64> {
        let out = self.output_shape(inputs)?;
        let size = dtype.size_bytes();
        let mut total = product(self.name(), &[out.numel()?, 4])?;
        for (i, shape) in inputs.iter().enumerate() {
            let elem = match self {
                Op::Conv2d(_) if i == 2 => 4,
                _ => size,
            };
            let bytes = product(self.name(), &[shape.numel()?, elem])?;
            total = total
                .checked_add(bytes)
                .ok_or_else(|| Error::overflow(self.name(), "byte count exceeds u64"))?;
        }
        Ok(total)
    }
}

/// Multiplies sizes in u64, or an overflow error naming `context` and the factors.
fn product(context: &str, factors: &[usize]) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .ok_or_else(|| Error::overflow(context, format!("product of {factors:?} exceeds u64")))
}

/// Checks the input count of `op` against `min..=max`.
fn check_arity(
    op: &'static str,
    inputs: usize,
    min: usize,
    max: usize,
    expected: &'static str,
) -> Result<()> {
    if inputs < min || inputs > max {
        return Err(Error::Arity {
            op,
            expected,
            got: inputs,
        });
    }
    Ok(())
}

/// Checks the parameters of a unary op as the kernels do (clip bounds ordered and not NaN,
/// slopes and offsets finite), so that every node refuses the same ops.
pub fn check_unary(u: Unary) -> Result<()> {
    let invalid = |name: &'static str, value: String, reason: &'static str| {
        Err(Error::Kernel(KernelError::InvalidArgument {
            name,
            value,
            reason,
        }))
    };
    let finite = |name: &'static str, v: f32| {
        if v.is_finite() {
            Ok(())
        } else {
            invalid(name, v.to_string(), "must be finite")
        }
    };
    match u {
        Unary::Clip { min, max } if min.is_nan() || max.is_nan() || min > max => invalid(
            "clip bounds",
            format!("[{min}, {max}]"),
            "need min <= max, neither NaN",
        ),
        Unary::LeakyRelu { alpha } => finite("leaky_relu alpha", alpha),
        Unary::Elu { alpha } => finite("elu alpha", alpha),
        Unary::HardSigmoid { alpha, beta } => {
            finite("hard_sigmoid alpha", alpha)?;
            finite("hard_sigmoid beta", beta)
        }
        _ => Ok(()),
    }
}

/// Validates the inputs `[a, b]` of a binary op and returns their broadcast shape.
pub fn binary_shape(op: BinaryOp, inputs: &[&Shape]) -> Result<Vec<usize>> {
    check_arity(op.name(), inputs.len(), 2, 2, "2")?;
    broadcast_shape(inputs[0].dims(), inputs[1].dims()).map_err(|e| match e {
        KernelError::ShapeMismatch { detail, .. } => Error::shape(op.name(), detail),
        other => Error::Kernel(other),
    })
}

/// Validates the input `[x]` of a softmax along `axis`; returns `(outer, n, inner)`: the
/// product of the axes before `axis`, its length, and the product of the axes after it.
pub fn softmax_dims(
    name: &'static str,
    axis: usize,
    inputs: &[&Shape],
) -> Result<(usize, usize, usize)> {
    check_arity(name, inputs.len(), 1, 1, "1")?;
    let x = inputs[0];
    if axis >= x.rank() {
        return Err(Error::shape(
            name,
            format!(
                "axis {axis} is out of range for input of shape {x} (rank {})",
                x.rank()
            ),
        ));
    }
    let d = x.dims();
    let outer = Shape::new(&d[..axis]).numel()?;
    let inner = Shape::new(&d[axis + 1..]).numel()?;
    Ok((outer, d[axis], inner))
}

/// Validates the input `[x (NCHW)]` of a 2-D pooling; returns the input and output dims.
pub fn pool2d_dims(
    name: &'static str,
    p: &Pool2dParams,
    inputs: &[&Shape],
) -> Result<([usize; 4], [usize; 4])> {
    check_arity(name, inputs.len(), 1, 1, "1")?;
    let x = inputs[0];
    let dims = <[usize; 4]>::try_from(x.dims())
        .map_err(|_| Error::shape(name, format!("input must be NCHW (rank 4), got shape {x}")))?;
    Ok((dims, pool2d_output_dims(dims, p)?))
}

/// Validates the input `[x (N, C, D1, …)]` of a global pooling; returns `[N, C, D1·D2·…]`.
pub fn global_pool_dims(inputs: &[&Shape]) -> Result<[usize; 3]> {
    let name = "global_avg_pool";
    check_arity(name, inputs.len(), 1, 1, "1")?;
    let x = inputs[0];
    if x.rank() < 3 {
        return Err(Error::shape(
            name,
            format!("input must be N, C and at least one spatial axis (rank ≥ 3), got shape {x}"),
        ));
    }
    let d = x.dims();
    let spatial = Shape::new(&d[2..]).numel()?;
    if spatial == 0 {
        return Err(Error::shape(
            name,
            format!("input {x} has an empty spatial extent, whose mean is undefined"),
        ));
    }
    x.numel()?;
    Ok([d[0], d[1], spatial])
}

/// Validates the inputs `[x (N, C, …), scale, bias, mean, var]` of a batch normalisation and
/// its epsilon; returns `[N, C, plane]` where `plane` is the product of the axes after C.
pub fn batch_norm_dims(epsilon: f32, inputs: &[&Shape]) -> Result<[usize; 3]> {
    let name = "batch_norm";
    check_arity(name, inputs.len(), 5, 5, "5 (x, scale, bias, mean, var)")?;
    let x = inputs[0];
    if x.rank() < 2 {
        return Err(Error::shape(
            name,
            format!("x must be [N, C, …] (rank ≥ 2), got shape {x}"),
        ));
    }
    let d = x.dims();
    let c = d[1];
    for (what, s) in ["scale", "bias", "mean", "var"].iter().zip(&inputs[1..]) {
        if s.dims() != [c] {
            return Err(Error::shape(
                name,
                format!("{what} has shape {s}, expected [{c}] (one value per channel of x {x})"),
            ));
        }
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(Error::Kernel(KernelError::InvalidArgument {
            name: "epsilon",
            value: epsilon.to_string(),
            reason: "must be finite and non-negative",
        }));
    }
    x.numel()?;
    let plane = Shape::new(&d[2..]).numel()?;
    Ok([d[0], c, plane])
}

/// Validates the shapes of a matrix multiply's inputs `[A, B]` and returns its sizes.
pub fn matmul_dims(trans_a: bool, trans_b: bool, inputs: &[&Shape]) -> Result<MatMulDims> {
    check_arity("matmul", inputs.len(), 2, 2, "2")?;
    let (a, b) = (inputs[0], inputs[1]);
    for (name, s) in [("A", a), ("B", b)] {
        if s.rank() != 2 {
            return Err(Error::shape(
                "matmul",
                format!("{name} must be a matrix (rank 2), got shape {s}"),
            ));
        }
    }
    let (a, b) = (a.dims(), b.dims());
    let (m, ka) = if trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
    let (kb, n) = if trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
    if ka != kb {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner dimensions differ: A{} is {m}x{ka}, B{} is {kb}x{n}",
                if trans_a { "ᵀ" } else { "" },
                if trans_b { "ᵀ" } else { "" },
            ),
        ));
    }
    Ok(MatMulDims { m, n, k: ka })
}

/// Validates the shapes of a convolution's inputs `[x, w]` or `[x, w, bias]`.
pub fn conv2d_dims(params: &Conv2dParams, inputs: &[&Shape]) -> Result<Conv2dDims> {
    check_arity("conv2d", inputs.len(), 2, 3, "2 or 3")?;
    let four = |name: &str, s: &Shape| -> Result<[usize; 4]> {
        <[usize; 4]>::try_from(s.dims())
            .map_err(|_| Error::shape("conv2d", format!("{name} must have rank 4, got shape {s}")))
    };
    let input = four("input (NCHW)", inputs[0])?;
    let weight = four("weight (OIHW)", inputs[1])?;
    let output = conv2d_output_dims(input, weight, params)?;
    let has_bias = inputs.len() == 3;
    if has_bias && inputs[2].dims() != [weight[0]] {
        return Err(Error::shape(
            "conv2d",
            format!(
                "bias must have shape [{}] (one value per output channel), got {}",
                weight[0], inputs[2]
            ),
        ));
    }
    Ok(Conv2dDims {
        input,
        weight,
        output,
        has_bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_shapes_and_counts() {
        let a = Shape::new([5, 3]);
        let b = Shape::new([7, 3]);
        let op = Op::MatMul {
            trans_a: false,
            trans_b: true,
        };
        assert_eq!(op.output_shape(&[&a, &b]).unwrap(), Shape::new([5, 7]));
        assert_eq!(op.flops(&[&a, &b]).unwrap(), 2 * 5 * 7 * 3);
        assert_eq!(
            op.bytes(&[&a, &b], DType::F16).unwrap(),
            (15 + 21) * 2 + 35 * 4
        );
        let err = Op::matmul().output_shape(&[&a, &b]).unwrap_err();
        assert!(err.to_string().contains("5x3"), "{err}");
    }

    #[test]
    fn conv_counts() {
        let x = Shape::new([2, 4, 9, 9]);
        let w = Shape::new([6, 2, 3, 3]);
        let op = Op::Conv2d(Conv2dParams {
            groups: 2,
            ..Conv2dParams::default()
        });
        assert_eq!(
            op.output_shape(&[&x, &w]).unwrap(),
            Shape::new([2, 6, 7, 7])
        );
        assert_eq!(op.flops(&[&x, &w]).unwrap(), 2 * 2 * 6 * 7 * 7 * 2 * 3 * 3);
        let bad_bias = Shape::new([5]);
        assert!(op.output_shape(&[&x, &w, &bad_bias]).is_err());
        assert!(matches!(
            op.output_shape(&[&x]),
            Err(Error::Arity { got: 1, .. })
        ));
    }

    #[test]
    fn layer_op_shapes_and_errors() {
        let x = Shape::new([2, 3, 9, 9]);
        let c = Shape::new([3]);
        let add = Op::Binary(BinaryOp::Add);
        let row = Shape::new([9]);
        assert_eq!(add.output_shape(&[&x, &row]).unwrap(), x);
        let err = add.output_shape(&[&x, &Shape::new([4])]).unwrap_err();
        assert!(err.to_string().contains("[4]"), "{err}");
        let sm = Op::Softmax {
            axis: 4,
            log: false,
        };
        let err = sm.output_shape(&[&x]).unwrap_err();
        assert!(err.to_string().contains("axis 4"), "{err}");
        let pool = Op::AvgPool(Pool2dParams::new([3, 3]).with_stride([2, 2]));
        assert_eq!(pool.output_shape(&[&x]).unwrap(), Shape::new([2, 3, 4, 4]));
        let bn = Op::BatchNorm {
            epsilon: 1e-5,
            relu: false,
        };
        assert_eq!(bn.output_shape(&[&x, &c, &c, &c, &c]).unwrap(), x);
        let err = bn.output_shape(&[&x, &c, &c, &row, &c]).unwrap_err();
        assert!(err.to_string().contains("mean has shape [9]"), "{err}");
        assert_eq!(
            Op::GlobalAvgPool
                .output_shape(&[&Shape::new([2, 3, 5])])
                .unwrap(),
            Shape::new([2, 3, 1])
        );
        assert_eq!(
            Op::Unary(Unary::Clip { min: 0.0, max: 6.0 }),
            Op::Unary(Unary::Clip { min: 0.0, max: 6.0 })
        );
        let bn = |epsilon: f32, relu: bool| Op::BatchNorm { epsilon, relu };
        assert_ne!(bn(0.0, false), bn(-0.0, false));
        assert_ne!(bn(1e-5, false), bn(1e-5, true));
        assert_eq!(bn(1e-5, true), bn(1e-5, true));
    }
}
