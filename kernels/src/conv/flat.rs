//! The flat path (AVX2 and AVX-512): a convolution as a gemm whose input operand is read in
//! place from a zero-padded copy of the input, split by stride phase, so that nothing is
//! packed per call.
//!
//! Output position `(oy, ox)` sits at grid column `q = oy·Wph + ox` of a grid as wide as one
//! padded phase row. Tap `(c, r, s)` reads, for every output,
//! `phase[(r·dh mod sh, s·dw mod sw)][c][q + (r·dh / sh)·Wph + s·dw / sw]`: one offset per
//! depth index, the same for all outputs. The register tile takes up to 6 outputs and 16
//! output channels (AVX2), or 8 outputs and two panels of 16 channels (AVX-512): per depth
//! index it broadcasts each output's input value (at its own grid column plus the offset) and
//! multiplies it with a cache line of packed weights per panel. On rows of 9 outputs or more,
//! the AVX-512 tiles take pieces of one row, up to 14 consecutive outputs read from one base
//! (28 accumulators: each cache line of weights feeds 14 outputs, not 8), and on rows of 5 to
//! 7 outputs pairs of whole rows, one base each. Only real
//! outputs are computed; the grid's padding columns are read, never computed.
//!
//! Work is cut into tasks of (image, group, outputs, weight panels), one contiguous share of
//! them per thread ([`even_cuts`]); each accumulates its tile in a buffer of its own (output-
//! major, 16 channels per output) and writes it out with the bias, the residual and the ReLU.
//! Inside a task, each depth block walks the strips of outputs inside each panel unit (whose
//! block of weights then stays in L1), and while a unit's strips run, its tiles prefetch the
//! weights of the unit read next, a piece per strip (`crate::prefetch`): a model's layers each
//! read their weights from memory once, and without this the 7×7 layers of ResNet-50 ran
//! 1.35–1.45× their time with the weights in cache.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::flat_x86::{CHANNELS, PANELS_WIDE, PIXELS, PIXELS_ROW, PIXELS_WIDE};
use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;
use crate::claim::for_each_claimed;
use crate::prefetch::{Ahead, Spread};

/// Output channels of a packed weight panel of the flat path.
pub(super) const PANEL_CHANNELS: usize = CHANNELS;
/// Outputs per task. Measured on the resnet preset's 3×3 layers against 192 (minimums of 7
/// interleaved rounds): 1.00–1.03×; 768 gave 0.98–1.03× against 384.
const TASK_OUTPUTS: usize = 384;
/// Padding values copied below which the input is laid out on one thread.
const PARALLEL_FILL_MIN: usize = 1 << 15;
/// Most depth indices per block: the input rows of a register tile then stay in L1 (3×3 taps
/// of 32 channels read about 200 lines).
const DEPTH_BLOCK: usize = 288;
/// Most input rows (one per channel and distinct phase row of the kernel) a depth block reads
/// per output: measured, a 3×3 stride-2 layer of 128 channels runs 10 % faster with 16
/// channels per block than with 32. The AVX-512 tiles took 48 while 56×56 layers ran here
/// (5–10 % faster than with 96 then); those now run as Winograd or lanes, and on the small
/// planes left, chains of layers whose weights come from memory as in a model ran faster
/// with 96: 256 channels 3×3 on 14×14 0.97–0.98× the time (batch 8 0.98×), 512 on 7×7 0.95×.
const ROWS_PER_BLOCK: usize = 96;
/// Narrowest output rows that the AVX-512 row tiles take.
const ROW_TILE_MIN: usize = 9;
/// Narrowest output rows that the AVX-512 two-row tiles take.
const TWO_ROWS_MIN: usize = 5;
/// Shares of the work per thread.
const SHARES_PER_THREAD: usize = 4;
/// Largest layout (in values) that each thread of a split over outputs copies for itself
/// instead of sharing one: 1 MiB. Alternating in the models on two threads against a shared
/// one: DenseNet-121 0.93–0.97×, Inception v2 0.99×, Inception v1 0.98–1.00×, VGG-19 1.00×
/// (with 2 MiB, which takes its 512-channel 28×28 layers too: 1.02×; every layout, 1.01×).
const PRIVATE_LAYOUT_MAX: usize = 1 << 18;
/// Largest layout buffer (in values) a thread keeps for its next convolution: 16 MiB.
const KEEP_LAYOUT_MAX: usize = 1 << 22;

thread_local! {
    /// The layout buffer of this thread's last convolution, reused by its next one, which
    /// then neither allocates nor zero-fills it. A call takes it out for its whole run, so a
    /// nested call finds none and allocates its own.
    static LAYOUT_BUFFER: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether the flat path beats the im2col gemm for `g` on AVX2: every kernel larger than
/// 1×1, strided or not (measured on 3×3 stride-2 layers of 64–512 channels: 1.00–1.25×).
/// Pointwise kernels pack cheaply and take the plain gemm.
pub(super) fn suits(g: &Geometry) -> bool {
    g.kh * g.kw > 1
}

/// Whether the AVX-512 flat tiles beat the im2col gemm for `g`, whose AVX-512 kernel packs
/// twice the multiply-adds per packed value of the AVX2 one: kernels larger than 1×1 with at
/// least 16 input channels per group, at stride 1. Measured on this path's first Xeon,
/// strided 3×3 layers ran 0.84–1.00× the gemm's speed and a 3-channel 3×3 layer 0.66×.
///
/// Strided kernels and pointwise layers on small planes took these tiles while the gemm
/// filled a 7×7 plane's 49 columns to 77 % and the tile's 8 outputs to 88 %; since the
/// gemm's kernel runs a panel's last 1–4 columns as tail columns (99 %), the gemm wins there:
/// 512 → 512 3×3 at stride 2 from 14×14 in 0.87–0.90× the flat tiles' time (batch 4 0.87×),
/// 512 → 2048 pointwise on 7×7 in 0.84× (batch 4 0.88×). 3×3 layers at stride 1 on 7×7 stay
/// here: 512 → 512 ran 1.00× on the gemm at batch 1 and 1.11× at batch 4 (192 → 384 0.87×,
/// 160 → 320 0.77×, 5×5 48 → 128 1.35×).
pub(super) fn suits_wide(g: &Geometry) -> bool {
    suits(g) && g.cg >= 16 && g.sh == 1 && g.sw == 1
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
///
/// A block holds at most [`DEPTH_BLOCK`] depth indices, and at most [`ROWS_PER_BLOCK`] input
/// rows per output: a strided kernel reads more rows per channel (a 3×3 kernel at stride 2
/// reads 6 phase rows, at stride 1 only 3), so its blocks hold fewer channels.
pub(super) fn depth_block(g: &Geometry) -> usize {
    let mut rows = Vec::new();
    for r in 0..g.kh {
        for s in 0..g.kw {
            let row = (r * g.dh % g.sh, s * g.dw % g.sw, r * g.dh / g.sh);
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
    }
    // A pointwise block reads one value per channel and output: its depth is bounded by
    // DEPTH_BLOCK alone.
    let channels = if g.kh * g.kw == 1 {
        DEPTH_BLOCK
    } else {
        (ROWS_PER_BLOCK / rows.len().max(1)).max(1)
    };
    let most = (channels * g.kh * g.kw).min(DEPTH_BLOCK);
    let blocks = g.depth().div_ceil(most).max(1);
    g.depth().div_ceil(blocks)
}

/// Where the flat path reads: the input's padded phase planes and the offset of each tap.
pub(super) struct Layout {
    /// The (row, column) stride phases some tap reads, in layout order.
    phases: Vec<(usize, usize)>,
    /// Columns of a phase plane: the grid's width.
    pub(super) wph: usize,
    /// Values of one phase plane of one channel.
    pub(super) plane: usize,
    /// Values of one image (every phase of every channel).
    pub(super) image_len: usize,
    /// The grid column of each output, `oy·Wph + ox`, in output order.
    cols: Vec<usize>,
    /// Per depth index of group 0: where grid column 0 reads it, relative to the image.
    pub(super) offsets: Vec<usize>,
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
        let cols: Vec<usize> = (0..g.oh)
            .flat_map(|oy| (0..g.ow).map(move |ox| oy * wph + ox))
            .collect();
        // The furthest read: the last image, the last group, the last output.
        let furthest = offsets.iter().max().copied().unwrap_or(0)
            + (g.groups - 1) * g.cg * plane
            + cols.last().map_or(0, |q| q + 1);
        let len = (g.n * image_len).max((g.n - 1) * image_len + furthest);
        Layout {
            phases,
            wph,
            plane,
            image_len,
            cols,
            offsets,
            len,
        }
    }

    /// The input laid out as phase planes in `data`, zero where a plane reads padding.
    ///
    /// Every value of the layout is written, so `data` may come back from an earlier call
    /// with old values in it; it is only zero-filled where it has to grow.
    ///
    /// With `parallel`, large layouts are filled by the current pool's threads.
    fn fill(&self, g: &Geometry, input: &[f32], data: &mut Vec<f32>, parallel: bool) {
        // A buffer never shrinks, so one that held a larger layout before is not zero-filled
        // again when it comes back to that size.
        if data.len() < self.len {
            data.resize(self.len, 0.0);
        }
        let data = &mut data[..self.len];
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
            // Each value written once: padding rows and columns zero, image rows copied.
            let x0 = first * g.sw + px - g.pads[1];
            for (i, row) in dst.chunks_exact_mut(self.wph).enumerate() {
                let image_row = (i * g.sh + py).checked_sub(g.pads[0]);
                let Some(y) = image_row.filter(|&y| y < g.h) else {
                    row.fill(0.0);
                    continue;
                };
                row[..first].fill(0.0);
                row[end..].fill(0.0);
                let line = &src[y * g.w..][..g.w];
                let image = &mut row[first..end];
                if g.sw == 1 {
                    image.copy_from_slice(&line[x0..x0 + image.len()]);
                } else if g.sw == 2 {
                    // Every other value, in pairs of a constant width, which the compiler
                    // turns into vector shuffles (a strided 7×7 stem's layout, 640 KB, took
                    // 7 % of its convolution's time read one value at a time).
                    let src = &line[x0..];
                    let pairs = image.len().min(src.len() / 2);
                    let (whole, last) = image.split_at_mut(pairs);
                    for (value, pair) in whole.iter_mut().zip(src.chunks_exact(2)) {
                        *value = pair[0];
                    }
                    for (value, x) in last.iter_mut().zip((2 * pairs..).step_by(2)) {
                        *value = src[x];
                    }
                } else {
                    for (value, x) in image.iter_mut().zip((x0..).step_by(g.sw)) {
                        *value = line[x];
                    }
                }
            }
        };
        let (planes, tail) = data.split_at_mut(g.n * self.image_len);
        tail.fill(0.0);
        if parallel && planes.len() >= PARALLEL_FILL_MIN && rayon::current_num_threads() > 1 {
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

/// Runs `f` on `input` laid out for `g` (in this thread's reusable layout buffer), with at
/// least `extra` readable values past the end of the layout.
pub(super) fn with_layout<R>(
    g: &Geometry,
    input: &[f32],
    extra: usize,
    f: impl FnOnce(&Layout, &[f32]) -> R,
) -> R {
    let layout = Layout::new(g);
    let filled = FilledLayout::new(g, &layout, input, extra, true);
    f(&layout, &filled.data)
}

/// An input laid out in the current thread's reusable layout buffer, which goes back to the
/// thread when this is dropped.
struct FilledLayout {
    /// The layout's values, then at least the `extra` values asked for.
    data: Vec<f32>,
}

impl FilledLayout {
    /// `input` laid out as `layout` says, with at least `extra` readable values past its end;
    /// filled by the current pool's threads if `parallel`, else by this thread alone.
    fn new(
        g: &Geometry,
        layout: &Layout,
        input: &[f32],
        extra: usize,
        parallel: bool,
    ) -> FilledLayout {
        let mut data = LAYOUT_BUFFER.take();
        layout.fill(g, input, &mut data, parallel);
        if data.len() < layout.len + extra {
            data.resize(layout.len + extra, 0.0);
        }
        FilledLayout { data }
    }
}

impl Drop for FilledLayout {
    fn drop(&mut self) {
        if self.data.capacity() <= KEEP_LAYOUT_MAX {
            LAYOUT_BUFFER.set(std::mem::take(&mut self.data));
        }
    }
}

/// Everything the tasks of one convolution share.
struct Flat<'a> {
    g: &'a Geometry,
    layout: &'a Layout,
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    /// Scale of the output's old values added to the convolution.
    beta: f32,
    /// Whether the AVX-512 tiles run (else the AVX2 ones).
    wide: bool,
}

impl Flat<'_> {
    /// Most output pixels of a register tile.
    fn pixels(&self) -> usize {
        if self.wide { PIXELS_WIDE } else { PIXELS }
    }

    /// The strips of a task's `outputs`. With the AVX-512 tiles: on rows of at least
    /// [`ROW_TILE_MIN`] outputs, pieces of one row of equal size to within one output (up to
    /// [`PIXELS_ROW`] wide; the task's first and last rows cut as they come); on rows of 5 to
    /// 7 outputs, pairs of whole rows, the task's other outputs in strips of at most
    /// [`PIXELS_WIDE`]. Otherwise pieces of the whole range of equal size to within one
    /// output, none wider than a tile.
    fn strips(&self, outputs: &Range<usize>) -> Vec<Strip> {
        let ow = self.g.ow;
        let mut strips = Vec::new();
        // `range` in pieces of equal size to within one output, none longer than `most`.
        let pieces = |strips: &mut Vec<Strip>, range: Range<usize>, most: usize, shape| {
            if range.is_empty() {
                return;
            }
            let len = range.len();
            strips.extend(
                split(len, len.div_ceil(most))
                    .into_iter()
                    .map(|piece| Strip {
                        first: range.start - outputs.start + piece.start,
                        pixels: piece.len(),
                        shape,
                    }),
            );
        };
        let scattered = StripShape::Scattered;
        if self.wide && ow >= ROW_TILE_MIN {
            let mut at = outputs.start;
            while at < outputs.end {
                let end = ((at / ow + 1) * ow).min(outputs.end);
                pieces(&mut strips, at..end, PIXELS_ROW, StripShape::Row);
                at = end;
            }
        } else if self.wide && (TWO_ROWS_MIN..=PIXELS_ROW / 2).contains(&ow) {
            // Pairs of whole rows from the task's first row start on; the rest scattered.
            let first_pair = outputs.start.next_multiple_of(ow);
            let pairs = outputs.end.saturating_sub(first_pair) / (2 * ow);
            let pairs_end = first_pair + pairs * 2 * ow;
            let leading = outputs.start..first_pair.min(outputs.end);
            pieces(&mut strips, leading, self.pixels(), scattered);
            strips.extend((0..pairs).map(|p| Strip {
                first: first_pair - outputs.start + p * 2 * ow,
                pixels: 2 * ow,
                shape: StripShape::TwoRows,
            }));
            let trailing = pairs_end.max(outputs.start)..outputs.end;
            pieces(&mut strips, trailing, self.pixels(), scattered);
        } else {
            pieces(&mut strips, outputs.clone(), self.pixels(), scattered);
        }
        strips
    }

    /// Outputs `outputs` of output channel panels `panels` of (image `n`, group `group`),
    /// read from the input laid out in `data`, accumulated in `tile` and written to `out`
    /// (elements no other task writes).
    #[allow(clippy::too_many_arguments)]
    fn task(
        &self,
        data: &[f32],
        n: usize,
        group: usize,
        outputs: Range<usize>,
        panels: Range<usize>,
        tile: &mut Vec<f32>,
        out: SharedOut<'_>,
    ) {
        let (g, layout) = (self.g, self.layout);
        let count = outputs.len();
        // The first depth block overwrites the tile: old values need no clearing.
        let tile_len = panels.len() * count * CHANNELS;
        if tile.len() < tile_len {
            tile.resize(tile_len, 0.0);
        }
        let base = n * layout.image_len + group * g.cg * layout.plane;
        let cols = &layout.cols[outputs.clone()];
        let depth = g.depth();
        let kc = self.weights.kc();
        // Every input value read below lies inside the layout (`Layout::len`).
        let furthest = cols.iter().max().copied().unwrap_or(0)
            + layout.offsets.iter().max().copied().unwrap_or(0);
        assert!(
            base + furthest < layout.len && layout.len <= data.len(),
            "flat convolution reads outside its layout"
        );
        let b = data[base..].as_ptr();
        let strips = self.strips(&outputs);
        let step = if self.wide { PANELS_WIDE } else { 1 };
        let units = panels.len().div_ceil(step);
        let blocks = depth.div_ceil(kc);
        // The weights of (block, unit): the unit's `covered` panels.
        let unit_weights = |block: usize, unit: usize| {
            let panel = panels.start + unit * step;
            self.weights
                .panel_run(group, block, panel, step.min(panels.end - panel))
        };
        for (block, k0) in (0..depth).step_by(kc).enumerate() {
            let offsets = &layout.offsets[k0..(k0 + kc).min(depth)];
            for i in 0..strips.len() * units {
                let (strip, unit) = (i % strips.len(), i / strips.len());
                // The unit read next (the next block's first after the last): its weights
                // come from memory while this unit's strips run, a piece per strip.
                let next = if unit + 1 < units {
                    Some((block, unit + 1))
                } else {
                    (block + 1 < blocks).then_some((block + 1, 0))
                };
                let ahead = next.map_or(&[][..], |(block, unit)| {
                    Spread::new(unit_weights(block, unit), strips.len()).piece(strip)
                });
                let Strip {
                    first,
                    pixels,
                    shape,
                } = strips[strip];
                let panel = panels.start + unit * step;
                let row = panel - panels.start;
                let covered = step.min(panels.end - panel);
                let kernel = if self.wide {
                    match shape {
                        StripShape::Row if pixels > PIXELS_WIDE => {
                            super::flat_x86::tile_row_for(pixels, covered)
                        }
                        StripShape::TwoRows => {
                            super::flat_x86::tile_two_rows_for(pixels / 2, covered)
                        }
                        _ => super::flat_x86::tile_wide_for(pixels, covered),
                    }
                } else {
                    super::flat_x86::tile_for(pixels, g.og - panel * CHANNELS)
                };
                let w = self.weights.panel_run(group, block, panel, covered);
                // SAFETY: the caller of `run` checked AVX2 and FMA (and AVX-512F for the
                // wide tiles); `w` holds `covered` panels of CHANNELS values per depth index
                // of the block, one after the other; `cols[first..]` holds `pixels` entries
                // whose reads at b + col + offset lie inside the layout (asserted above); the
                // tile has `pixels` rows of CHANNELS values from row `first` of each of these
                // panels, `count·CHANNELS` apart. A row strip lies in one output row and a
                // two-row strip is two whole rows, so their columns run consecutively within
                // each row, as the row tiles require.
                unsafe {
                    kernel(
                        offsets.len(),
                        w.as_ptr(),
                        b,
                        cols[first..].as_ptr(),
                        offsets.as_ptr(),
                        tile.as_mut_ptr().add((row * count + first) * CHANNELS),
                        count * CHANNELS,
                        block > 0,
                        Ahead::of(ahead),
                    );
                }
            }
        }
        self.write_out(n, group, outputs.start, count, &panels, tile, out);
    }

    /// Writes a task's tile (`count` outputs from `first` of each panel) to the output, with
    /// bias, residual and ReLU: blocks of 8 outputs × 8 channels transposed in registers,
    /// the rest one value at a time.
    #[allow(clippy::too_many_arguments)]
    fn write_out(
        &self,
        n: usize,
        group: usize,
        first: usize,
        count: usize,
        panels: &Range<usize>,
        tile: &[f32],
        out: SharedOut<'_>,
    ) {
        let g = self.g;
        let blocks = count / 8 * 8;
        for (row, panel) in panels.clone().enumerate() {
            let values = &tile[row * count * CHANNELS..][..count * CHANNELS];
            let channels = (g.og - panel * CHANNELS).min(CHANNELS);
            let channel = |j: usize| group * g.og + panel * CHANNELS + j;
            let bias = |j: usize| self.bias.map_or(0.0, |b| b[channel(j)]);
            // SAFETY: outputs first..first + count of this panel's channels belong to this
            // task alone (tasks own disjoint outputs and channels); each channel is taken once.
            let plane_of = |j: usize| unsafe {
                out.slice((n * g.o + channel(j)) * g.out_plane() + first, count)
            };
            // Column `j` of the tile, from output `from` on, finished into `dst`.
            let tail = |j: usize, from: usize, dst: &mut [f32]| {
                let src = values[from * CHANNELS + j..].iter().step_by(CHANNELS);
                finish(&mut dst[from..], src, bias(j), self.beta, g.relu);
            };
            let whole = channels / 8 * 8;
            for j0 in (0..whole).step_by(8) {
                let mut eight: [&mut [f32]; 8] = std::array::from_fn(|j| plane_of(j0 + j));
                let biases: [f32; 8] = std::array::from_fn(|j| bias(j0 + j));
                let dst: [*mut f32; 8] = std::array::from_fn(|j| eight[j].as_mut_ptr());
                // SAFETY: the caller of `run` checked AVX2; the tile holds `count` ≥ `blocks`
                // outputs of CHANNELS channels from channel j0 on; each destination row holds
                // `count` values.
                unsafe {
                    super::flat_x86::finish_blocks(
                        values[j0..].as_ptr(),
                        dst,
                        blocks / 8,
                        biases,
                        self.beta,
                        g.relu,
                    );
                }
                // Outputs past the last block of 8.
                if blocks < count {
                    for (j, dst) in eight.iter_mut().enumerate() {
                        tail(j0 + j, blocks, dst);
                    }
                }
            }
            // Channels past the last group of 8.
            for j in whole..channels {
                tail(j, 0, plane_of(j));
            }
        }
    }
}

/// A strip of a task's outputs, computed by one register tile per panel unit.
#[derive(Clone, Copy)]
struct Strip {
    /// Its first output, counted from the task's first.
    first: usize,
    /// Its outputs.
    pixels: usize,
    /// How its outputs lie on the grid, which chooses the tile.
    shape: StripShape,
}

/// How a strip's outputs lie on the grid.
#[derive(Clone, Copy)]
enum StripShape {
    /// Anywhere: each output read from a base of its own.
    Scattered,
    /// Consecutive outputs of one row.
    Row,
    /// Two whole rows, each read from one base.
    TwoRows,
}

/// `dst = relu?(src + bias + beta·dst)`.
fn finish<'a>(
    dst: &mut [f32],
    src: impl Iterator<Item = &'a f32>,
    bias: f32,
    beta: f32,
    relu: bool,
) {
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

/// The outputs `0..len` cut into tasks of about [`TASK_OUTPUTS`], of equal size to within
/// one output.
fn output_ranges(len: usize) -> Vec<Range<usize>> {
    split(len, len.div_ceil(TASK_OUTPUTS))
}

/// The outputs of `rows` rows of `width` in `pieces` ranges of whole rows (at most one per
/// row), of equal size to within one row.
fn row_ranges(rows: usize, width: usize, pieces: usize) -> Vec<Range<usize>> {
    split(rows, pieces)
        .into_iter()
        .map(|r| r.start * width..r.end * width)
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
/// the weights packed in panels of [`PANEL_CHANNELS`]: `output = epilogue(conv +
/// beta·output)`, with the AVX-512 tiles if `wide`.
///
/// The caller must have checked that AVX2 and FMA are available, and AVX-512F if `wide`.
pub(super) fn run(
    wide: bool,
    g: &Geometry,
    input: &[f32],
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) {
    debug_assert_eq!(
        weights.mr(),
        CHANNELS,
        "flat path needs panels of 16 channels"
    );
    let layout = Layout::new(g);
    let flat = Flat {
        g,
        layout: &layout,
        weights,
        bias,
        beta,
        wide,
    };
    let threads = rayon::current_num_threads();
    // Shares are cut between units of the panels a tile covers.
    let unit = if wide { PANELS_WIDE } else { 1 };
    let panels = weights.panels();
    let units = panels.div_ceil(unit);
    let images = g.n * g.groups;
    let mut columns = output_ranges(g.out_plane());
    // Fewer than two (job, unit) pairs per thread (a narrow layer on a small plane, such as
    // DenseNet's 128 → 32 3×3 on 14×14, one pair in all): the plane is cut into ranges of
    // whole rows instead, so every thread takes a share. Alternating inside the models on
    // two threads: DenseNet-121 1.01–1.03×, Inception v2 1.03–1.04×.
    if threads > 1 && images * columns.len() * units < 2 * threads {
        columns = row_ranges(g.oh, g.ow, (2 * threads).div_ceil(images * units));
    }
    let jobs = images * columns.len();
    // Work of one unit over job j's outputs, in tiles.
    let strips = |job: usize| columns[job % columns.len()].len().div_ceil(flat.pixels());
    let out = SharedOut::new(output);
    // Units `units` of job `job`, read from `data` and accumulated in `tile`.
    let run_job = |data: &[f32], job: usize, units: Range<usize>, tile: &mut Vec<f32>| {
        let (first, end) = (units.start * unit, (units.end * unit).min(panels));
        if first < end {
            let (image_group, col) = (job / columns.len(), job % columns.len());
            flat.task(
                data,
                image_group / g.groups,
                image_group % g.groups,
                columns[col].clone(),
                first..end,
                tile,
                out,
            );
        }
    };
    let run_share = |data: &[f32], share: Range<(usize, usize)>, tile: &mut Vec<f32>| {
        for job in share.start.0..=share.end.0.min(jobs.saturating_sub(1)) {
            let first = if job == share.start.0 {
                share.start.1
            } else {
                0
            };
            let end = if job == share.end.0 {
                share.end.1
            } else {
                units
            };
            run_job(data, job, first..end, tile);
        }
    };
    // Where a group's weights outweigh an image's input (deep layers on small planes), each
    // thread takes an even share of the panels for every job: it reads only its share of the
    // weights, which then stay in its L2, and all of the smaller input, which it lays out in
    // a buffer of its own. A layout filled once and read by every core cost more than its
    // copies: each call's writes wait for the other core to give up the lines it read last
    // time (256 channels 3×3 on 14×14: the shared fill took 38 µs on two threads, 22 on
    // one, and up to 150 in the VM's slow minutes).
    let weights_heavier = g.og * g.depth() > g.cg * g.h * g.w;
    let panels_split = units.is_multiple_of(threads) || units >= 4 * threads;
    // Either way the work is cut into a few shares per thread, which the threads claim one
    // at a time (`for_each_claimed`), so a slower or stalled core holds back one share at most.
    // A thread that copies the layout for itself does so on its first share.
    let own = || (FilledLayout::new(g, &layout, input, 0, false), Vec::new());
    if threads > 1 && weights_heavier && panels_split && units >= threads {
        let shares = split(units, (threads * SHARES_PER_THREAD).min(units));
        for_each_claimed(shares.len(), own, |(filled, tile), s| {
            for job in 0..jobs {
                run_job(&filled.data, job, shares[s].clone(), tile);
            }
        });
        return;
    }
    // Otherwise the threads split the outputs and read only their rows of the layout: each
    // still copies all of a small layout for itself rather than share one, while a large
    // layout (early layers on large planes) is filled once by all of them.
    if threads > 1 && jobs * units > 1 {
        let cuts = even_cuts(jobs, units, threads * SHARES_PER_THREAD, strips);
        if layout.len <= PRIVATE_LAYOUT_MAX {
            for_each_claimed(cuts.len() - 1, own, |(filled, tile), t| {
                run_share(&filled.data, cuts[t]..cuts[t + 1], tile)
            });
        } else {
            let filled = FilledLayout::new(g, &layout, input, 0, true);
            for_each_claimed(cuts.len() - 1, Vec::new, |tile, t| {
                run_share(&filled.data, cuts[t]..cuts[t + 1], tile)
            });
        }
        return;
    }
    let filled = FilledLayout::new(g, &layout, input, 0, true);
    run_share(&filled.data, (0, 0)..(jobs, 0), &mut Vec::new());
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
    /// job of an even share; output ranges tile the outputs evenly.
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
            let ranges = output_ranges(len);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(len));
            let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
            let (least, most) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                most.zip(least)
                    .is_some_and(|(m, l)| m - l <= 1 && *m <= TASK_OUTPUTS)
            );
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
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
            // Rows that share their padding (7×7, 14×14 planes), a narrow last channel panel.
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
            // Whole 8×8 blocks of the epilogue with a residual and a ReLU, and their tails.
            (
                [2, 6, 11, 10],
                [24, 6, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                true,
                1.0,
            ),
            // 32 channels, strided, two panels of 16 channels (one AVX-512 tile wide).
            (
                [2, 32, 9, 10],
                [20, 32, 3, 3],
                [2, 1],
                [1, 1],
                [1, 2, 0, 1],
                1,
                true,
                1.0,
            ),
            // Rows cut into pieces of 10 and 11 outputs for the row tiles; tasks that start
            // and end inside rows (800 outputs in three tasks).
            (
                [1, 16, 6, 31],
                [18, 16, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                true,
                1.0,
            ),
            (
                [1, 5, 20, 40],
                [33, 5, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                false,
                0.0,
            ),
            // Rows of 7 and of 5 in pairs for the two-row tiles; tasks that start inside a row
            // (399 outputs in two tasks).
            (
                [1, 3, 57, 7],
                [21, 3, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                true,
                1.0,
            ),
            (
                [2, 4, 9, 5],
                [35, 4, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                false,
                0.0,
            ),
            // Weights heavier than the input: threads split the panels.
            (
                [1, 32, 5, 6],
                [64, 32, 3, 3],
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
                1,
                true,
                1.0,
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
            let gemm_mr = PackedWeights::gemm_rows(isa);
            let packed = PackedWeights::pack(isa, &g, &w, gemm_kc, gemm_mr).unwrap();
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
            let widths = [false, true].into_iter();
            for wide in widths.filter(|&wide| !wide || Isa::Avx512.is_available()) {
                for threads in [1, 2, 3] {
                    let weights =
                        PackedWeights::pack(isa, &g, &w, depth_block(&g), CHANNELS).unwrap();
                    let mut got = old.clone();
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| run(wide, &g, &x, &weights, Some(&bias), &mut got, beta));
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "case {seed}, wide {wide}, {threads} threads: out[{i}] = \
                             {a}, im2col gives {b}"
                        );
                    }
                }
            }
        }
    }
}
