//! Direct convolution for one input channel per group (depthwise, any channel multiplier).
//!
//! Each output plane is the sum over the kernel taps of a weight times a (strided) window of
//! one input plane: per output row and tap, one multiply-add pass over the columns whose input
//! lies inside the image (padding contributes nothing and is skipped, never materialised).
//! The passes are plain slice loops compiled once per instruction set, so LLVM vectorises
//! them with that set's widest registers and fused multiply-adds.

use rayon::prelude::*;

use super::params::Geometry;
use super::widened;
use crate::{Element, Isa};

/// Multiply-adds per rayon task, at least (planes are grouped until they reach it).
const MIN_TASK_MACS: usize = 1 << 15;

/// Output columns `lo..hi` of one kernel column, and the input column of output column `lo`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cols {
    pub lo: usize,
    pub hi: usize,
    pub start: usize,
}

/// What one output plane needs besides its input plane.
pub(super) struct Plane<'a> {
    pub g: &'a Geometry,
    /// Per kernel column.
    pub cols: &'a [Cols],
    /// Output columns inside every kernel column's range (all taps read inside the image).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub interior: (usize, usize),
    /// Load masks and offsets per 16-column chunk and kernel column (AVX-512 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub table: &'a [(u32, usize)],
    /// The `KH·KW` weights of the output channel.
    pub weights: &'a [f32],
    pub bias: f32,
}

/// `output[n, o] = relu?(bias[o] + Σ_rs w[o, 0, r, s]·x[n, o / (O/C), …])` for `C/groups == 1`.
pub(crate) fn run<T: Element>(
    isa: Isa,
    g: &Geometry,
    input: &[T],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let plane_len = g.out_plane();
    let taps = g.kh * g.kw;
    let pad_left = g.pads[1];
    let cols: Vec<Cols> = (0..g.kw)
        .map(|s| {
            let (col, lo, hi) = g.tap_columns(s);
            // For lo < hi the input column lo·sw + col - pad_left is inside the image.
            let start = (lo * g.sw + col).saturating_sub(pad_left);
            Cols { lo, hi, start }
        })
        .collect();
    let interior = cols
        .iter()
        .fold((0, g.ow), |(lo, hi), c| (lo.max(c.lo), hi.min(c.hi)));
    #[cfg(target_arch = "x86_64")]
    let table = if isa == Isa::Avx512 {
        super::depthwise_x86::chunk_table(&cols, g.ow, g.sw)
    } else {
        Vec::new()
    };
    #[cfg(not(target_arch = "x86_64"))]
    let table = Vec::new();
    let in_plane = g.h * g.w;
    let min_len = (MIN_TASK_MACS / (plane_len * taps).max(1)).max(1);
    output
        .par_chunks_mut(plane_len)
        .with_min_len(min_len)
        .enumerate()
        .for_each(|(index, out)| {
            let (n, o) = (index / g.o, index % g.o);
            let c = o / g.og;
            let x = widened(&input[(n * g.c + c) * in_plane..][..in_plane]);
            let plane = Plane {
                g,
                cols: &cols,
                interior,
                table: &table,
                weights: &weight[o * taps..(o + 1) * taps],
                bias: bias.map_or(0.0, |b| b[o]),
            };
            dispatch(isa, &plane, &x, out);
        });
}

/// Runs the plane kernel compiled for `isa` (which the caller has checked is available).
fn dispatch(isa: Isa, plane: &Plane<'_>, x: &[f32], out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `conv2d` called `isa.require()`, so this machine has AVX-512F; the planes
        // and column ranges are those of `run`, and the stride is bounded by the guard.
        Isa::Avx512 if plane.g.sw <= super::depthwise_x86::MAX_STRIDE => unsafe {
            super::depthwise_x86::plane_avx512(plane, x, out)
        },
        // SAFETY: `conv2d` called `isa.require()`, so this machine has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { plane_avx2(plane, x, out) },
        // AArch64 always has fused multiply-add.
        Isa::Neon => plane_kernel::<true>(plane, x, out),
        _ => plane_kernel::<false>(plane, x, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn plane_avx2(plane: &Plane<'_>, x: &[f32], out: &mut [f32]) {
    plane_kernel::<true>(plane, x, out)
}

/// `acc + w·x`, fused when the caller is compiled with FMA.
#[inline(always)]
fn madd<const FMA: bool>(w: f32, x: f32, acc: f32) -> f32 {
    if FMA { w.mul_add(x, acc) } else { acc + w * x }
}

/// One output plane (`OH·OW` values in `out`) from one input plane (`H·W` values in `x`).
#[inline(always)]
fn plane_kernel<const FMA: bool>(plane: &Plane<'_>, x: &[f32], out: &mut [f32]) {
    let g = plane.g;
    for (oh, row) in out.chunks_exact_mut(g.ow).enumerate() {
        row.fill(plane.bias);
        for r in 0..g.kh {
            let ih = (oh * g.sh + r * g.dh).wrapping_sub(g.pads[0]);
            if ih >= g.h {
                continue;
            }
            let input_row = &x[ih * g.w..(ih + 1) * g.w];
            let weights = &plane.weights[r * g.kw..(r + 1) * g.kw];
            for (cols, &w) in plane.cols.iter().zip(weights) {
                if cols.lo == cols.hi {
                    continue;
                }
                let dst = &mut row[cols.lo..cols.hi];
                if g.sw == 1 {
                    let src = &input_row[cols.start..cols.start + dst.len()];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = madd::<FMA>(w, v, *d);
                    }
                } else {
                    let src = &input_row[cols.start..cols.start + (dst.len() - 1) * g.sw + 1];
                    for (d, &v) in dst.iter_mut().zip(src.iter().step_by(g.sw)) {
                        *d = madd::<FMA>(w, v, *d);
                    }
                }
            }
        }
        if g.relu {
            for v in row.iter_mut() {
                if *v < 0.0 {
                    *v = 0.0;
                }
            }
        }
    }
}
