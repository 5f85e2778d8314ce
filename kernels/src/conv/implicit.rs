//! The implicit-gemm path: per image and group, `out[O/g × OH·OW] = W_g · im2col(x)` + epilogue,
//! computed in pieces.
//!
//! A job (one image and group) is cut into pieces of output columns, so that each piece's
//! packed share of the im2col matrix stays in the L2 cache and the threads get at least two
//! pieces each; when the output has fewer columns than channels, into pieces of output channels
//! instead (one per thread). Every piece is one gemm that packs its own operands on its own
//! thread: packed data never crosses cores. Pieces of all jobs run in one parallel loop.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use super::im2col::{Im2col, Taps};
use super::params::Geometry;
use crate::gemm::{CacheSizes, Epilogue, MatMut, MatRef, gemm_packed};
use crate::{Isa, Result};

/// Output columns of a column piece are multiples of this.
const COL_ALIGN: usize = 16;
/// Output channels of a channel piece are multiples of this.
const ROW_ALIGN: usize = 4;
/// Fewest output columns of a column piece: each piece packs its rows of A again.
const MIN_PIECE_COLS: usize = 128;
/// Fewest output channels of a channel piece: each piece packs the im2col matrix again.
const MIN_PIECE_ROWS: usize = 32;
/// Multiply-adds of a job below which it is not cut for load balance across threads.
const MIN_SPLIT_MACS: usize = 1 << 22;

thread_local! {
    /// Output buffer of a column piece, kept between calls on this thread.
    static PIECE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The output, written by pieces that own pairwise disjoint elements of it.
#[derive(Clone, Copy)]
struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl<'a> SharedOut<'a> {
    /// Shares `output` between pieces.
    fn new(output: &'a mut [f32]) -> Self {
        Self {
            ptr: output.as_mut_ptr(),
            len: output.len(),
            _borrow: PhantomData,
        }
    }

    /// The elements `start..start + len` as a slice.
    ///
    /// # Safety
    /// The range must be inside the output and no other live slice or write may touch it.
    unsafe fn slice(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.len, "piece outside the output");
        // SAFETY: in bounds (checked); exclusive by the caller's contract; the output's `&mut`
        // borrow lasts for 'a and is used through this SharedOut only.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

// SAFETY: pieces sharing one SharedOut write pairwise disjoint elements (`run` cuts them), and
// the `&mut` borrow it comes from outlives them all.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedOut<'_> {}

/// How each job of one convolution is cut: into `row_pieces` × `col_pieces` pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    row_pieces: usize,
    col_pieces: usize,
}

/// The cut of a job of `m` output channels, `n` output columns and depth `k`, with `jobs`
/// jobs on `threads` threads, and a budget of `l2_half` bytes of packed im2col per piece.
fn cut(m: usize, n: usize, k: usize, jobs: usize, threads: usize, l2_half: usize) -> Cut {
    let macs = m.saturating_mul(n).saturating_mul(k);
    let balance = threads > 1 && macs >= MIN_SPLIT_MACS && jobs < 2 * threads;
    if balance && n < m && m >= 2 * MIN_PIECE_ROWS {
        // Few, wide columns: share the channels instead; every piece packs all of B.
        let pieces = threads.div_ceil(jobs).min(m / MIN_PIECE_ROWS).max(1);
        return Cut {
            row_pieces: pieces,
            col_pieces: 1,
        };
    }
    let packed = n.saturating_mul(k).saturating_mul(4);
    let mut pieces = packed.div_ceil(l2_half.max(1)).max(1);
    if balance {
        pieces = pieces.max((2 * threads).div_ceil(jobs));
        if jobs == 1 {
            pieces = pieces.next_multiple_of(threads);
        }
    }
    Cut {
        row_pieces: 1,
        col_pieces: pieces.min(n / MIN_PIECE_COLS).max(1),
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

/// Everything the pieces of one convolution share.
struct Conv<'a> {
    isa: Isa,
    g: &'a Geometry,
    /// The whole input, widened to f32.
    input: &'a [f32],
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    /// The im2col taps, or `None` for a pointwise convolution (the image is B as is).
    taps: Option<Taps>,
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
        let a = MatRef::row_major(
            &self.weight[first * depth..][..rows.len() * depth],
            rows.len(),
            depth,
        )?;
        let epilogue = Epilogue {
            row_bias: self.bias.map(|b| &b[first..first + rows.len()]),
            col_bias: None,
            relu: g.relu,
        };
        match &self.taps {
            None => {
                let b = MatRef::new(&x[cols.start..], g.cg, cols.len(), plane, 1)?;
                gemm_packed(self.isa, depth, 1.0, &a, &b, 0.0, c, &epilogue)
            }
            Some(taps) => {
                let b = Im2col::new(x, taps, g, self.isa).starting_at(cols.start);
                gemm_packed(self.isa, depth, 1.0, &a, &b, 0.0, c, &epilogue)
            }
        }
    }

    /// One piece of job `job` into the output; `alone` when no other piece runs meanwhile.
    fn piece(
        &self,
        job: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        out: SharedOut<'_>,
        alone: bool,
    ) -> Result<()> {
        let g = self.g;
        let (n, group) = (job / g.groups, job % g.groups);
        let plane = g.out_plane();
        let first = job * g.og * plane + rows.start * plane + cols.start;
        if alone || cols.len() == plane {
            // The piece's output rows, `plane` apart, straight from the gemm.
            let span = (rows.len() - 1) * plane + cols.len();
            // SAFETY: the span covers this piece's elements and, unless the piece has whole
            // rows (a contiguous run no other piece touches), other pieces' columns in
            // between, which no one else accesses while this piece runs `alone`.
            let dst = unsafe { out.slice(first, span) };
            let c = MatMut::new(dst, rows.len(), cols.len(), plane, 1)?;
            return self.gemm(n, group, rows, cols, c);
        }
        let w = cols.len();
        let mut buf = PIECE.take();
        buf.resize(rows.len() * w, 0.0);
        let c = MatMut::row_major(&mut buf, rows.len(), w)?;
        let result = self.gemm(n, group, rows, cols, c);
        if result.is_ok() {
            for (i, src) in buf.chunks_exact(w).enumerate() {
                // SAFETY: pieces own disjoint (job, channel, column) ranges, so this run of
                // the piece's i-th channel is its alone.
                unsafe { out.slice(first + i * plane, w) }.copy_from_slice(src);
            }
        }
        PIECE.set(buf);
        result
    }
}

/// The implicit-gemm convolution of the f32 `input` into `output`, all shapes validated.
pub(super) fn run(
    isa: Isa,
    g: &Geometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    let jobs = g.n * g.groups;
    let threads = rayon::current_num_threads();
    let l2_half = CacheSizes::detect().l2 / 2;
    let cut = cut(g.og, g.out_plane(), g.depth(), jobs, threads, l2_half);
    let row_ranges = ranges(g.og, cut.row_pieces, ROW_ALIGN);
    let col_ranges = ranges(g.out_plane(), cut.col_pieces, COL_ALIGN);
    let conv = Conv {
        isa,
        g,
        input,
        weight,
        bias,
        taps: (!g.is_pointwise()).then(|| Taps::new(g)),
    };
    let per_job = row_ranges.len() * col_ranges.len();
    let out = SharedOut::new(output);
    let pieces = jobs * per_job;
    let parallel = threads > 1 && pieces > 1;
    let piece = |index: usize| {
        let (job, at) = (index / per_job, index % per_job);
        let rows = row_ranges[at / col_ranges.len()].clone();
        let cols = col_ranges[at % col_ranges.len()].clone();
        conv.piece(job, rows, cols, out, !parallel)
    };
    if parallel {
        (0..pieces).into_par_iter().try_for_each(piece)
    } else {
        (0..pieces).try_for_each(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L2_HALF: usize = 1 << 20;

    #[test]
    fn cuts_resnet_layers() {
        // 3×3, 64 channels at 56×56, one image, two threads: L2-sized column pieces.
        let c = cut(64, 3136, 576, 1, 2, L2_HALF);
        assert_eq!(
            c,
            Cut {
                row_pieces: 1,
                col_pieces: 8
            }
        );
        // 256 channels at 14×14: fewer columns than channels, one channel piece per thread.
        let c = cut(256, 196, 2304, 1, 2, L2_HALF);
        assert_eq!(
            c,
            Cut {
                row_pieces: 2,
                col_pieces: 1
            }
        );
        // A batch of eight: no cut for balance, only for the cache.
        let c = cut(64, 3136, 576, 8, 2, L2_HALF);
        assert_eq!(
            c,
            Cut {
                row_pieces: 1,
                col_pieces: 7
            }
        );
        // One thread, small problem: one piece.
        let c = cut(16, 100, 27, 1, 1, L2_HALF);
        assert_eq!(
            c,
            Cut {
                row_pieces: 1,
                col_pieces: 1
            }
        );
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
