//! `--check`: compares outputs against a float64 reference computed from the same
//! (dtype-rounded) inputs, on a seeded sample of output elements or on all of small outputs.
//!
//! The error of one element is `|out − ref| / Σ|aᵢ·bᵢ|` over the products that make it, so
//! the f32 accumulation of long sums is judged at its own scale.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use accelmesh_kernels::conv::Conv2dParams;

use crate::op::{conv2d_dims, matmul_dims};
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// Output elements checked on large outputs.
pub const SAMPLES: usize = 512;
/// Outputs with at most this many elements are checked completely.
pub const FULL_CHECK_LIMIT: usize = 4096;

/// The output indices to check: all of a small output, else `SAMPLES` seeded random ones.
fn indices(len: usize, seed: u64) -> Vec<usize> {
    if len <= FULL_CHECK_LIMIT {
        return (0..len).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..SAMPLES).map(|_| rng.random_range(0..len)).collect()
}

/// Max relative error of `out` over the checked indices, given each element's reference
/// value and scale; a NaN or infinite difference counts as infinite.
fn max_rel_err(out: &[f32], seed: u64, reference: impl Fn(usize) -> (f64, f64)) -> f64 {
    indices(out.len(), seed)
        .into_iter()
        .map(|i| {
            let (value, scale) = reference(i);
            let err = (f64::from(out[i]) - value).abs();
            let rel = if scale > 0.0 { err / scale } else { err };
            if rel.is_finite() { rel } else { f64::INFINITY }
        })
        .fold(0.0, f64::max)
}

/// Fails unless `out` is f32 with the expected shape.
fn check_output<'a>(out: &'a Tensor, expected: &Shape) -> Result<&'a [f32]> {
    if out.shape() != expected {
        return Err(Error::shape(
            "check",
            format!("output has shape {}, expected {expected}", out.shape()),
        ));
    }
    out.as_f32()
}

/// Max relative error of a matmul output `out` against an f64 reference of `op(a)·op(b)`.
pub fn matmul_max_rel_err(
    a: &Tensor,
    b: &Tensor,
    (trans_a, trans_b): (bool, bool),
    out: &Tensor,
    seed: u64,
) -> Result<f64> {
    let d = matmul_dims(trans_a, trans_b, &[a.shape(), b.shape()])?;
    let out = check_output(out, &Shape::new([d.m, d.n]))?;
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let at = |i: usize, p: usize| {
        if trans_a {
            a[p * d.m + i]
        } else {
            a[i * d.k + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if trans_b {
            b[j * d.k + p]
        } else {
            b[p * d.n + j]
        }
    };
    Ok(max_rel_err(out, seed, |idx| {
        let (i, j) = (idx / d.n, idx % d.n);
        (0..d.k).fold((0.0, 0.0), |(sum, scale), p| {
            let prod = at(i, p) * bt(p, j);
            (sum + prod, scale + prod.abs())
        })
    }))
}

/// Max relative error of a conv2d output `out` against an f64 reference (bias and ReLU
/// included).
pub fn conv2d_max_rel_err(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    params: &Conv2dParams,
    out: &Tensor,
    seed: u64,
) -> Result<f64> {
    let mut shapes = vec![x.shape(), w.shape()];
    shapes.extend(bias.map(Tensor::shape));
    let d = conv2d_dims(params, &shapes)?;
    let out = check_output(out, &Shape::new(d.output))?;
    let (xs, ws) = (x.to_f64_vec(), w.to_f64_vec());
    let bias = bias.map(Tensor::to_f64_vec);
    let [_, c, h, wd] = d.input;
    let [o, cg, kh, kw] = d.weight;
    let [_, _, oh, ow] = d.output;
    let og = o / params.groups.max(1);
    Ok(max_rel_err(out, seed, |idx| {
        let (ox, rest) = (idx % ow, idx / ow);
        let (oy, rest) = (rest % oh, rest / oh);
        let (oc, n) = (rest % o, rest / o);
        let g = oc / og;
        let (mut sum, mut scale) = bias.as_ref().map_or((0.0, 0.0), |b| (b[oc], b[oc].abs()));
        for ci in 0..cg {
            let ch = g * cg + ci;
            for ky in 0..kh {
                let iy =
                    (oy * params.stride[0] + ky * params.dilation[0]).checked_sub(params.pads[0]);
                let Some(iy) = iy.filter(|&v| v < h) else {
                    continue;
                };
                for kx in 0..kw {
                    let ix = (ox * params.stride[1] + kx * params.dilation[1])
                        .checked_sub(params.pads[1]);
                    let Some(ix) = ix.filter(|&v| v < wd) else {
                        continue;
                    };
                    let prod = xs[((n * c + ch) * h + iy) * wd + ix]
                        * ws[((oc * cg + ci) * kh + ky) * kw + kx];
                    sum += prod;
                    scale += prod.abs();
                }
            }
        }
        if params.relu && sum < 0.0 {
            sum = 0.0;
        }
        (sum, scale)
    }))
}
