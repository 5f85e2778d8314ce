//! Op descriptors: what to compute, the output shape it has, and its flop and byte counts.

use accelmesh_kernels::conv::{Conv2dParams, conv2d_output_dims};

use crate::tensor::{DType, Shape};
use crate::{Error, Result};

/// One operation a device can execute on tensors.
///
/// Outputs are f32 whatever the input dtype: the kernels accumulate in f32 and keep it.
/// New variants (elementwise, pooling, …) are added here with one arm in each method.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

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

    /// The lower-case name used in reports and errors (`matmul`, `conv2d`).
    pub fn name(&self) -> &'static str {
        match self {
            Op::MatMul { .. } => "matmul",
            Op::Conv2d(_) => "conv2d",
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
}
