//! The implicit-gemm path: per image and group, `out[O/g × OH·OW] = W_g · im2col(x)` + epilogue.
//!
//! Each job (one image and group) is one gemm over its whole output plane: the gemm packs the
//! weights once and lets each thread pack and keep its own columns of the im2col matrix (its
//! column split). Many jobs run in parallel with each other instead; a job with fewer output
//! columns than channels is cut into channel pieces, one per thread, each packing all of its B.

use std::ops::Range;

use rayon::prelude::*;

use super::im2col::{Im2col, Taps};
use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;
use crate::gemm::{
    Epilogue, MatMut, MatRef, PackA, PackB, PrepackedA, Threading, gemm_packed, micro_kernel,
};
use crate::{Isa, Result};

/// Fewest output channels of a channel piece: each piece packs the im2col matrix again.
const MIN_PIECE_ROWS: usize = 32;
/// Multiply-adds of a job below which it is not cut for load balance across threads.
const MIN_SPLIT_MACS: usize = 1 << 22;

/// Channel pieces per job of `m` output channels, `n` output columns and depth `k`, with
/// `jobs` jobs on `threads` threads: more than one only when the columns are too few for the
/// gemm's own column split and the jobs too few to keep the threads busy.
fn channel_pieces(m: usize, n: usize, k: usize, jobs: usize, threads: usize) -> usize {
    let macs = m.saturating_mul(n).saturating_mul(k);
    let balance = threads > 1 && macs >= MIN_SPLIT_MACS && jobs < 2 * threads;
    if balance && n < m && m >= 2 * MIN_PIECE_ROWS {
        threads.div_ceil(jobs).min(m / MIN_PIECE_ROWS).max(1)
    } else {
        1
    }
}

/// Splits `0..len` into `pieces` ranges of a multiple of `align` (the last one shorter).
fn ranges(len: usize, pieces: usize, align: usize) -> Vec<Range<usize>> {
    let width = len
        .div_ceil(pieces.max(1))
        .next_multiple_of(align)
        .clamp(1, len.max(1));
    (0..len)
        .step_by(width)
        .map(|start| start..(start + width).min(len))
        .collect()
}

/// The weight rows of one gemm: packed by the gemm, or read from panels packed beforehand.
struct Weights<'a> {
    rows: MatRef<'a, f32>,
    pre: Option<PrepackedA<'a>>,
}

impl PackA for Weights<'_> {
    fn pack_a(&self, m0: usize, mc: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        self.rows.pack_a(m0, mc, k0, kc, mr, dst);
    }

    fn prepacked(&self) -> Option<PrepackedA<'_>> {
        self.pre
    }
}

/// Everything the pieces of one convolution share.
struct Conv<'a> {
    isa: Isa,
    g: &'a Geometry,
    /// The whole input, widened to f32.
    input: &'a [f32],
    weight: &'a [f32],
    /// The weights packed beforehand (pinned weights), if they are.
    packed: Option<&'a PackedWeights>,
    bias: Option<&'a [f32]>,
    /// The im2col taps, or `None` for a pointwise convolution (the image is B as is).
    taps: Option<Taps>,
    /// Whether each gemm may split itself (not when jobs or pieces already run in parallel).
    threading: Threading,
    /// Scale of the output's old values added to the product (0: overwritten).
    beta: f32,
}

impl Conv<'_> {
    /// Output channels `rows` × columns `cols` of job (image `n`, group `group`) into `c`.
    fn gemm(
        &self,
        n: usize,
        group: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        c: MatMut<'_, f32>,
    ) -> Result<()> {
        let g = self.g;
        let (plane, depth, len) = (g.out_plane(), g.depth(), g.group_input_len());
        let x = &self.input[n * g.image_len() + group * len..][..len];
        let first = group * g.og + rows.start;
        let a = Weights {
            rows: MatRef::row_major(
                &self.weight[first * depth..][..rows.len() * depth],
                rows.len(),
                depth,
            )?,
            pre: self.packed.and_then(|p| p.view(group, rows.start)),
        };
        let epilogue = Epilogue {
            row_bias: self.bias.map(|b| &b[first..first + rows.len()]),
            col_bias: None,
            relu: g.relu,
        };
        let (image, im2col);
        let b: &dyn PackB = match &self.taps {
            None => {
                image = MatRef::new(&x[cols.start..], g.cg, cols.len(), plane, 1)?;
                &image
            }
            Some(taps) => {
                im2col = Im2col::new(x, taps, g, self.isa).starting_at(cols.start);
                &im2col
            }
        };
        let (isa, threading) = (self.isa, self.threading);
        gemm_packed(isa, threading, depth, 1.0, &a, b, self.beta, c, &epilogue)
    }

    /// Output channels `rows` of job `job` into the output, which this piece alone writes.
    fn piece(&self, job: usize, rows: Range<usize>, out: SharedOut<'_>) -> Result<()> {
        let g = self.g;
        let (n, group) = (job / g.groups, job % g.groups);
        let plane = g.out_plane();
        // SAFETY: pieces own pairwise disjoint (job, channel) ranges, and whole output rows of
        // them: contiguous runs no other piece touches.
        let dst = unsafe { out.slice((job * g.og + rows.start) * plane, rows.len() * plane) };
        let c = MatMut::row_major(dst, rows.len(), plane)?;
        self.gemm(n, group, rows, 0..plane, c)
    }
}

/// The implicit-gemm convolution of the f32 `input` into `output`, all shapes validated:
/// `output = epilogue(conv + beta·output)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    isa: Isa,
    g: &Geometry,
    input: &[f32],
    weight: &[f32],
    packed: Option<&PackedWeights>,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) -> Result<()> {
    let jobs = g.n * g.groups;
    let threads = rayon::current_num_threads();
    let conv = Conv {
        isa,
        g,
        input,
        weight,
        packed,
        bias,
        taps: (!g.is_pointwise()).then(|| Taps::new(g)),
        threading: Threading::Single,
        beta,
    };
    let pieces = channel_pieces(g.og, g.out_plane(), g.depth(), jobs, threads);
    if pieces > 1 {
        // Pieces start on a register-tile row, so that packed weights serve them too.
        let align = packed.map_or_else(|| micro_kernel(isa).mr, PackedWeights::mr);
        let rows = ranges(g.og, pieces, align);
        let out = SharedOut::new(output);
        return (0..jobs * rows.len())
            .into_par_iter()
            .try_for_each(|index| {
                conv.piece(index / rows.len(), rows[index % rows.len()].clone(), out)
            });
    }
    let job = |(job, dst): (usize, &mut [f32])| {
        let c = MatMut::row_major(dst, g.og, g.out_plane())?;
        conv.gemm(job / g.groups, job % g.groups, 0..g.og, 0..g.out_plane(), c)
    };
    let job_len = g.og * g.out_plane();
    if threads > 1 && jobs >= 2 * threads {
        output.par_chunks_mut(job_len).enumerate().try_for_each(job)
    } else {
        let conv = Conv {
            threading: Threading::CurrentPool,
            ..conv
        };
        output
            .chunks_mut(job_len)
            .enumerate()
            .try_for_each(|(index, dst)| {
                let c = MatMut::row_major(dst, g.og, g.out_plane())?;
                conv.gemm(
                    index / g.groups,
                    index % g.groups,
                    0..g.og,
                    0..g.out_plane(),
                    c,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_only_narrow_planes_into_channel_pieces() {
        // 256 channels at 14×14 on two threads: one channel piece per thread.
        assert_eq!(channel_pieces(256, 196, 2304, 1, 2), 2);
        // 64 channels at 56×56: the gemm's column split does the sharing.
        assert_eq!(channel_pieces(64, 3136, 576, 1, 2), 1);
        // Many jobs, one thread, or a small job: no cut.
        assert_eq!(channel_pieces(256, 196, 2304, 8, 2), 1);
        assert_eq!(channel_pieces(256, 196, 2304, 1, 1), 1);
        assert_eq!(channel_pieces(64, 49, 64, 1, 2), 1);
    }

    #[test]
    fn ranges_cover_exactly() {
        for (len, pieces, align) in [(3136, 8, 16), (196, 2, 4), (7, 3, 16), (1, 4, 1), (0, 2, 4)] {
            let r = ranges(len, pieces, align);
            assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), len);
            for pair in r.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            assert!(r.len() <= pieces.max(1));
        }
    }
}
