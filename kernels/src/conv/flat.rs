//! The flat path (AVX2): a convolution as a gemm whose B rows are read in place from a
//! zero-padded copy of the input, split by stride phase, so that nothing is packed per call.
//!
//! Output positions are numbered on a grid as wide as one padded phase row: grid column
//! `q = oy·Wph + ox`, of which only `ox < OW` are real outputs. Tap `(c, r, s)` reads, for
//! every grid column, `phase[(r·dh mod sh, s·dw mod sw)][c][q + (r·dh / sh)·Wph + s·dw / sw]`:
//! one offset per depth index, the same for all columns. A depth row of B over 16 consecutive
//! columns is then one contiguous 16-float load, and the register tile reads B through a table
//! of these offsets instead of from packed panels. The price is the grid's unused columns
//! (`Wph - OW` per output row), which [`suits`] weighs against the im2col packing it saves.
//!
//! Work is cut into tasks of (image, group, grid columns, weight panels), one contiguous share
//! of them per thread ([`even_cuts`]); each computes its tile of the grid in a buffer of its
//! own and writes the real columns out with the bias, the residual and the ReLU.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::flat_x86::{MR, NR, NR_NARROW};
use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;

/// Grid columns per task.
const TASK_COLS: usize = 192;
/// Padding values copied below which the input is laid out on one thread.
const PARALLEL_FILL_MIN: usize = 1 << 15;
/// Most depth indices per block: the B rows of a register tile then stay in L1 (3×3 taps of
/// 32 channels read about 200 lines).
const DEPTH_BLOCK: usize = 288;
/// Largest layout buffer (in values) a thread keeps for its next convolution: 16 MiB.
const KEEP_LAYOUT_MAX: usize = 1 << 22;

thread_local! {
    /// The layout buffer of this thread's last convolution, reused by its next one, which
    /// then neither allocates nor zero-fills it. A call takes it out for its whole run, so a
    /// nested call finds none and allocates its own.
    static LAYOUT_BUFFER: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Input channels per group up to which a strided convolution takes the flat path.
const FEW_CHANNELS: usize = 4;
/// What the im2col gemm spends per im2col value besides its multiply-adds (packing it, and
/// the edge panels and per-thread packing around it), in units of 8 multiply-adds (one
/// vector FMA). Measured: the flat path still wins by 5–10 % on 3×3 layers of 7×7 planes
/// with 128–512 output channels, where an eighth of its grid is unused.
const PACK_COST: f64 = 10.0;

/// Whether the flat path beats the im2col gemm for `g` on AVX2: its unused grid columns cost
/// less than the im2col path's overhead on each im2col value, which serves `og` multiply-adds.
pub(super) fn suits(g: &Geometry) -> bool {
    // Pointwise kernels pack cheaply; strided ones read more lines per tile than L1 keeps,
    // which only pays where few channels make the im2col gathers dominate (a stem).
    if g.kh * g.kw == 1 || ((g.sh > 1 || g.sw > 1) && g.cg > FEW_CHANNELS) {
        return false;
    }
    let waste = 1.0 - g.ow as f64 / grid_width(g) as f64;
    let packing = PACK_COST / (g.og as f64 / 8.0 + PACK_COST);
    waste <= packing
}

/// Columns of a phase plane of `g`, which is also the width of the output grid.
///
/// Neighbouring rows share their padding: a tap that reads past the end of a row reads the
/// start of the next one, which is left padding (zero) in every plane. So a row holds only
/// its image columns and the wider of the two paddings, not both of them.
fn grid_width(g: &Geometry) -> usize {
    // Phase column j of column phase px holds padded column j·sw + px; these bound the image.
    let first = |px: usize| g.pads[1].saturating_sub(px).div_ceil(g.sw);
    let end = |px: usize| (g.pads[1] + g.w).saturating_sub(px).div_ceil(g.sw);
    let phases = || (0..g.kw).map(|s| (s * g.dw % g.sw, s * g.dw / g.sw));
    // Zero columns that start every row of every plane (a read may wrap into another plane).
    let leading = phases().map(|(px, _)| first(px)).min().unwrap_or(0);
    phases()
        .map(|(px, offset)| end(px).max((g.ow + offset).saturating_sub(leading)))
        .fold(g.ow, usize::max)
}

/// The depth block of the flat path for `g`: its weight panels are packed with it.
pub(super) fn depth_block(g: &Geometry) -> usize {
    let blocks = g.depth().div_ceil(DEPTH_BLOCK).max(1);
    g.depth().div_ceil(blocks)
}

/// Where the flat path reads: the input's padded phase planes and the offset of each tap.
struct Layout {
    /// The (row, column) stride phases some tap reads, in layout order.
    phases: Vec<(usize, usize)>,
    /// Columns of a phase plane: the grid's width.
    wph: usize,
    /// Values of one phase plane of one channel.
    plane: usize,
    /// Values of one image (every phase of every channel).
    image_len: usize,
    /// Grid columns: `OH·Wph`.
    grid_len: usize,
    /// Per depth index of group 0: where its B row starts relative to the image.
    offsets: Vec<usize>,
    /// Values of the whole layout, with room for the last tiles' reads past the grid.
    len: usize,
}

impl Layout {
    fn new(g: &Geometry) -> Layout {
        let hph = (g.pads[0] + g.h + g.pads[2]).div_ceil(g.sh);
        let wph = grid_width(g);
        let plane = hph * wph;
        let mut phases = Vec::new();
        for r in 0..g.kh {
            for s in 0..g.kw {
                let phase = (r * g.dh % g.sh, s * g.dw % g.sw);
                if !phases.contains(&phase) {
                    phases.push(phase);
                }
            }
        }
        // Depth index k = (c·KH + r)·KW + s: the offset of each tap within a channel, then
        // every channel's copy of them.
        let taps: Vec<usize> = (0..g.kh)
            .flat_map(|r| (0..g.kw).map(move |s| (r, s)))
            .map(|(r, s)| {
                let phase = (r * g.dh % g.sh, s * g.dw % g.sw);
                let index = phases.iter().position(|&p| p == phase).unwrap_or(0);
                index * g.c * plane + (r * g.dh / g.sh) * wph + s * g.dw / g.sw
            })
            .collect();
        let offsets: Vec<usize> = (0..g.cg)
            .flat_map(|c| taps.iter().map(move |tap| tap + c * plane))
            .collect();
        let image_len = phases.len() * g.c * plane;
        let grid_len = g.oh * wph;
        // The furthest read: the last image, the last group, the last tile's last column.
        let furthest = offsets.iter().max().copied().unwrap_or(0)
            + (g.groups - 1) * g.cg * plane
            + grid_len.next_multiple_of(NR);
        let len = (g.n * image_len).max((g.n - 1) * image_len + furthest);
        Layout {
            phases,
            wph,
            plane,
            image_len,
            grid_len,
            offsets,
            len,
        }
    }

    /// The input laid out as phase planes in `data`, zero where a plane reads padding.
    ///
    /// Every value of the layout is written, so `data` may come back from an earlier call
    /// with old values in it; it is only zero-filled where it has to grow.
    fn fill(&self, g: &Geometry, input: &[f32], data: &mut Vec<f32>) {
        data.resize(self.len, 0.0);
        let (channels, phases) = (g.c, self.phases.len());
        let fill_plane = |(index, dst): (usize, &mut [f32])| {
            let (n, phase, c) = (
                index / (phases * channels),
                index / channels % phases,
                index % channels,
            );
            let (py, px) = self.phases[phase];
            let src = &input[(n * channels + c) * g.h * g.w..][..g.h * g.w];
            // Phase columns j whose padded column j·sw + px lies inside the image.
            let first = g.pads[1].saturating_sub(px).div_ceil(g.sw);
            let end = (g.pads[1] + g.w)
                .saturating_sub(px)
                .div_ceil(g.sw)
                .min(self.wph)
                .max(first);
            // One fill for the plane's padding, then a copy per image row.
            dst.fill(0.0);
            let x0 = first * g.sw + px - g.pads[1];
            for (i, row) in dst.chunks_exact_mut(self.wph).enumerate() {
                let image_row = (i * g.sh + py).checked_sub(g.pads[0]);
                let Some(y) = image_row.filter(|&y| y < g.h) else {
                    continue;
                };
                let line = &src[y * g.w..][..g.w];
                let image = &mut row[first..end];
                if g.sw == 1 {
                    image.copy_from_slice(&line[x0..x0 + image.len()]);
                } else {
                    for (value, x) in image.iter_mut().zip((x0..).step_by(g.sw)) {
                        *value = line[x];
                    }
                }
            }
        };
        let (planes, tail) = data.split_at_mut(g.n * self.image_len);
        tail.fill(0.0);
        if planes.len() >= PARALLEL_FILL_MIN && rayon::current_num_threads() > 1 {
            planes
                .par_chunks_exact_mut(self.plane)
                .enumerate()
                .for_each(fill_plane);
        } else {
            planes
                .chunks_exact_mut(self.plane)
                .enumerate()
                .for_each(fill_plane);
        }
    }
}

/// Everything the tasks of one convolution share.
struct Flat<'a> {
    g: &'a Geometry,
    layout: Layout,
    /// The input as phase planes ([`Layout::fill`]).
    data: Vec<f32>,
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    /// Scale of the output's old values added to the convolution.
    beta: f32,
}

impl Flat<'_> {
    /// Grid columns `cols` of output channel panels `panels` of (image `n`, group `group`),
    /// computed in `tile` and written to `out` (elements no other task writes).
    fn task(
        &self,
        n: usize,
        group: usize,
        cols: Range<usize>,
        panels: Range<usize>,
        tile: &mut Vec<f32>,
        out: SharedOut<'_>,
    ) {
        let (g, layout) = (self.g, &self.layout);
        let width = cols.len().next_multiple_of(NR_NARROW);
        // The first depth block overwrites the tile: old values need no clearing.
        let tile_len = panels.len() * MR * width;
        if tile.len() < tile_len {
            tile.resize(tile_len, 0.0);
        }
        let base = n * layout.image_len + group * g.cg * layout.plane + cols.start;
        let depth = g.depth();
        let kc = self.weights.kc();
        // Every B row read below lies inside the layout (`Layout::len`).
        assert!(
            base + width + layout.offsets.iter().max().copied().unwrap_or(0) <= self.data.len(),
            "flat convolution reads outside its layout"
        );
        let b = self.data[base..].as_ptr();
        for (block, k0) in (0..depth).step_by(kc).enumerate() {
            let offsets = &layout.offsets[k0..(k0 + kc).min(depth)];
            for strip in (0..width).step_by(NR) {
                let kernel = super::flat_x86::tile_for(width - strip);
                for (row, panel) in panels.clone().enumerate() {
                    let a = self.weights.panel(group, block, panel);
                    // SAFETY: the caller of `run` checked AVX2 and FMA; `a` holds MR values per
                    // depth index of the block; the B rows at b + strip + offset lie inside the
                    // layout for the 16 or 8 columns of the tile (asserted above: the strip
                    // ends at or before `width`); the tile has MR rows of `width` values from
                    // (row·MR, strip).
                    unsafe {
                        kernel(
                            offsets.len(),
                            a.as_ptr(),
                            b.add(strip),
                            offsets.as_ptr(),
                            tile.as_mut_ptr().add(row * MR * width + strip),
                            width,
                            block > 0,
                        );
                    }
                }
            }
        }
        self.write_out(n, group, &cols, &panels, tile, width, out);
    }

    /// Writes the real columns of a task's tile to the output, with bias, residual and ReLU.
    #[allow(clippy::too_many_arguments)]
    fn write_out(
        &self,
        n: usize,
        group: usize,
        cols: &Range<usize>,
        panels: &Range<usize>,
        tile: &[f32],
        width: usize,
        out: SharedOut<'_>,
    ) {
        let (g, wph) = (self.g, self.layout.wph);
        let first = group * g.og + panels.start * MR;
        let rows = (panels.end * MR).min(g.og) - panels.start * MR;
        for (r, values) in tile.chunks_exact(width).take(rows).enumerate() {
            let channel = first + r;
            let bias = self.bias.map_or(0.0, |b| b[channel]);
            let plane = (n * g.o + channel) * g.out_plane();
            let mut q = cols.start;
            while q < cols.end {
                let (oy, ox) = (q / wph, q % wph);
                let row_end = ((oy + 1) * wph).min(cols.end);
                if ox < g.ow {
                    let run_end = (oy * wph + g.ow).min(cols.end);
                    // SAFETY: output columns ox.. of row oy of this channel's plane belong to
                    // this task alone (tasks own disjoint grid columns and channels).
                    let dst = unsafe { out.slice(plane + oy * g.ow + ox, run_end - q) };
                    let src = &values[q - cols.start..run_end - cols.start];
                    finish(dst, src, bias, self.beta, g.relu);
                }
                q = row_end;
            }
        }
    }
}

/// `dst = relu?(src + bias + beta·dst)`.
fn finish(dst: &mut [f32], src: &[f32], bias: f32, beta: f32, relu: bool) {
    for (d, &v) in dst.iter_mut().zip(src) {
        let sum = if beta != 0.0 {
            v + beta * *d + bias
        } else {
            v + bias
        };
        *d = if relu && sum < 0.0 { 0.0 } else { sum };
    }
}

/// Where `threads` contiguous shares of the work start, as (job, panel) in job-major order,
/// with a last cut at `(jobs, 0)`: each share holds the same work to within one panel of one
/// job, panel `p` of job `j` weighing `strips(j)`. A thread keeps the columns of one job in
/// cache while it walks that job's panels, and the shares end together without stealing.
fn even_cuts(
    jobs: usize,
    panels: usize,
    threads: usize,
    strips: impl Fn(usize) -> usize,
) -> Vec<(usize, usize)> {
    let total: usize = (0..jobs).map(|job| strips(job) * panels).sum();
    let mut cuts = vec![(0, 0)];
    let (mut job, mut before) = (0, 0);
    for t in 1..threads {
        let target = total * t / threads;
        while job < jobs && before + strips(job) * panels <= target {
            before += strips(job) * panels;
            job += 1;
        }
        let cut = if job < jobs {
            let weight = strips(job).max(1);
            (job, ((target - before + weight / 2) / weight).min(panels))
        } else {
            (jobs, 0)
        };
        cuts.push(cut.max(*cuts.last().unwrap_or(&(0, 0))));
    }
    cuts.push((jobs, 0));
    cuts
}

/// The grid columns `0..len` cut into tasks of about [`TASK_COLS`], each starting on a
/// register tile and holding as many tiles as the others or one fewer.
fn column_ranges(len: usize) -> Vec<Range<usize>> {
    let count = len.div_ceil(TASK_COLS).max(1);
    let strips = len.div_ceil(NR);
    split(strips, count)
        .into_iter()
        .map(|tiles| tiles.start * NR..(tiles.end * NR).min(len))
        .filter(|cols| !cols.is_empty())
        .collect()
}

/// Splits `0..len` into `pieces` nearly equal ranges.
fn split(len: usize, pieces: usize) -> Vec<Range<usize>> {
    let pieces = pieces.clamp(1, len.max(1));
    (0..pieces)
        .map(|i| len * i / pieces..len * (i + 1) / pieces)
        .collect()
}

/// The flat-path convolution of the f32 `input` into `output`, all shapes validated, with
/// the weights packed for AVX2: `output = epilogue(conv + beta·output)`.
///
/// The caller must have checked that AVX2 and FMA are available.
pub(super) fn run(
    g: &Geometry,
    input: &[f32],
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) {
    debug_assert_eq!(weights.mr(), MR, "flat path needs the AVX2 gemm's panels");
    let layout = Layout::new(g);
    let mut data = LAYOUT_BUFFER.take();
    layout.fill(g, input, &mut data);
    let flat = Flat {
        g,
        layout,
        data,
        weights,
        bias,
        beta,
    };
    let threads = rayon::current_num_threads();
    let columns = column_ranges(flat.layout.grid_len);
    let jobs = g.n * g.groups * columns.len();
    let panels = weights.panels();
    // Work of one weight panel over job j's columns, in narrow strips.
    let strips = |job: usize| columns[job % columns.len()].len().div_ceil(NR_NARROW);
    let out = SharedOut::new(output);
    let run_share = |share: Range<(usize, usize)>| {
        let mut tile = Vec::new();
        for job in share.start.0..=share.end.0.min(jobs.saturating_sub(1)) {
            let first = if job == share.start.0 {
                share.start.1
            } else {
                0
            };
            let end = if job == share.end.0 {
                share.end.1
            } else {
                panels
            };
            if first >= end {
                continue;
            }
            let (image_group, col) = (job / columns.len(), job % columns.len());
            flat.task(
                image_group / g.groups,
                image_group % g.groups,
                columns[col].clone(),
                first..end,
                &mut tile,
                out,
            );
        }
    };
    if threads > 1 && jobs * panels > 1 {
        let cuts = even_cuts(jobs, panels, threads, strips);
        (0..cuts.len() - 1)
            .into_par_iter()
            .for_each(|t| run_share(cuts[t]..cuts[t + 1]));
    } else {
        run_share((0, 0)..(jobs, 0));
    }
    if flat.data.capacity() <= KEEP_LAYOUT_MAX {
        LAYOUT_BUFFER.set(flat.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Isa;
    use crate::conv::Conv2dParams;

    /// Seeded values in [-1, 1), never all zero.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Shares cover every (job, panel) pair once, in order, each within one panel of one
    /// job of an even share; column ranges tile the grid.
    #[test]
    fn shares_are_even_and_complete() {
        for (jobs, panels, threads, widths) in [
            (5, 22, 2, vec![11, 10, 10, 10, 10]),
            (2, 43, 2, vec![14, 11]),
            (1, 1, 2, vec![3]),
            (3, 2, 4, vec![1, 7, 2]),
            (17, 11, 3, vec![12; 17]),
        ] {
            let strips = |job: usize| widths[job];
            let cuts = even_cuts(jobs, panels, threads, strips);
            assert_eq!(cuts.len(), threads + 1);
            assert_eq!((cuts[0], cuts[threads]), ((0, 0), (jobs, 0)));
            let total: usize = widths.iter().map(|w| w * panels).sum();
            let heaviest = widths.iter().max().copied().unwrap_or(0);
            let position = |(job, panel): (usize, usize)| -> usize {
                widths[..job].iter().map(|w| w * panels).sum::<usize>()
                    + widths.get(job).map_or(0, |w| w * panel)
            };
            for pair in cuts.windows(2) {
                assert!(pair[0] <= pair[1], "{cuts:?}");
            }
            for (t, &cut) in cuts.iter().enumerate() {
                let even = total * t / threads;
                assert!(position(cut).abs_diff(even) <= heaviest, "{cuts:?} at {t}");
            }
        }
        for len in [1, 7, 17, 196, 210, 812, 12768] {
            let ranges = column_ranges(len);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(len));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].start.is_multiple_of(NR));
            }
        }
    }

    /// The flat path against the im2col gemm, whatever [`suits`] would choose.
    #[test]
    fn matches_the_im2col_gemm() {
        if !Isa::Avx2.is_available() {
            return;
        }
        let cases = [
            // input dims, weight dims, stride, dilation, pads, groups, relu, beta
            (
                [1, 7, 17, 13],
                [9, 7, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                false,
                0.0,
            ),
            (
                [2, 3, 33, 29],
                [13, 3, 7, 7],
                [2, 2],
                [1, 1],
                [3, 2, 3, 1],
                1,
                true,
                0.0,
            ),
            (
                [1, 4, 15, 16],
                [8, 2, 3, 3],
                [1, 1],
                [2, 2],
                [2, 0, 1, 3],
                2,
                true,
                1.0,
            ),
            (
                [3, 5, 9, 11],
                [7, 5, 5, 3],
                [3, 2],
                [1, 2],
                [0, 3, 2, 0],
                1,
                false,
                1.0,
            ),
            (
                [1, 33, 7, 7],
                [17, 33, 1, 1],
                [1, 1],
                [1, 1],
                [0, 0, 0, 0],
                1,
                true,
                0.0,
            ),
            // Right padding wider than the left, both phases of a stride, dilated taps.
            (
                [2, 3, 10, 9],
                [5, 3, 3, 5],
                [1, 2],
                [2, 2],
                [1, 0, 2, 3],
                1,
                false,
                1.0,
            ),
            // Rows that share their padding and end on a narrow strip (7×7, 14×14 planes).
            (
                [1, 16, 7, 7],
                [20, 8, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                2,
                true,
                0.0,
            ),
            (
                [1, 9, 14, 14],
                [13, 9, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                false,
                0.0,
            ),
            (
                [1, 40, 12, 12],
                [70, 40, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                false,
                0.0,
            ),
        ];
        for (seed, (input, weight, stride, dilation, pads, groups, relu, beta)) in
            cases.into_iter().enumerate()
        {
            let params = Conv2dParams {
                stride,
                dilation,
                pads,
                groups,
                relu,
            };
            let g = Geometry::new(input, weight, &params).unwrap();
            let x = values(input.iter().product(), seed as u64);
            let w = values(weight.iter().product(), 100 + seed as u64);
            let bias = values(g.o, 200 + seed as u64);
            let old = values(g.n * g.o * g.out_plane(), 300 + seed as u64);
            let mut want = old.clone();
            let isa = Isa::Avx2;
            let gemm_kc = PackedWeights::gemm_depth_block(isa, &g);
            let packed = PackedWeights::pack(isa, &g, &w, gemm_kc).unwrap();
            super::super::implicit::run(
                isa,
                &g,
                &x,
                &w,
                Some(&packed),
                Some(&bias),
                &mut want,
                beta,
            )
            .unwrap();
            for threads in [1, 2, 3] {
                let weights = PackedWeights::pack(isa, &g, &w, depth_block(&g)).unwrap();
                let mut got = old.clone();
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| run(&g, &x, &weights, Some(&bias), &mut got, beta));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "case {seed}, {threads} threads: out[{i}] = {a}, im2col gives {b}"
                    );
                }
            }
        }
    }
}
