//! The lanes path (AVX-512): convolutions with few input channels per group and a kernel
//! larger than 1×1 — the first layer of an image network (3 channels, 7×7 at stride 2, 11×11
//! at stride 4, …) — as a gemm whose input operand is read in place, with the output columns
//! on the vector lanes.
//!
//! The input is laid out as the flat path lays it out (zero-padded, split by stride phase; see
//! `flat`), so the 16 consecutive grid columns `q..q + 16` read their value of depth index `k`
//! as 16 consecutive floats at `q + offset[k]`: one plain vector load, no packing, whatever
//! the stride. A register tile holds 12 output channels × 32 columns; per depth index it loads
//! two such vectors and broadcasts 12 packed weights (the gemm's A panels). The grid is as wide
//! as a padded phase row, so a vector may cover a few padding columns and wrap into the next
//! output row: it is stored as at most two masked runs, one per output row, straight into the
//! NCHW output with the epilogue — no tile buffer and no transposition. The flat tile (outputs
//! broadcast, channels on the lanes) transposes every output on the way out: on a 7×7 stem
//! (depth 147) that write-out took 28 % of its time in a sampling profile.
//!
//! Where output rows are as wide as whole vectors, each row is covered apart instead, its
//! vectors never reaching the padding columns (`grid_tiles`: the way that computes fewer).
//!
//! Work is cut into tasks of (image, group, a range of tiles), each running every weight
//! panel over its tiles (a panel's weights stay in L1 across them).
//!
//! 7×7 and 8×8 kernels at stride 2 with 16 or more output channels take Winograd over their
//! stride phases before this path (`winograd_phases`).

use rayon::prelude::*;

use super::flat;
use super::lanes_x86::{Finish, LANES, ROWS, Spans, VECTORS, tile_for};
use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;

/// Output channels of a weight panel of the lanes path.
pub(super) const PANEL_ROWS: usize = ROWS;
/// Register tiles (of up to two vectors of grid columns) per task.
const TASK_TILES: usize = 8;
/// Most input channels per group the path takes on rows narrower than [`WIDE_ROW`]: with more,
/// the flat tiles (whose transposition then costs little against the depth) run as fast, and
/// on rows of 27 outputs faster (16 → 64 3×3 on 27×27: the lanes path 1.34× their time).
const MAX_CHANNELS: usize = 15;
/// Most input channels per group on rows of at least [`WIDE_ROW`] outputs (from 32, Winograd
/// takes such layers). Measured against the flat tiles, 3×3 layers: 16 → 64 on 55×55 0.75×
/// the time, on 56×56 0.78×, on 40×40 0.89×; 16 → 32 on 112×112 0.82×; 24 → 64 on 56×56
/// 0.86×, 24 → 96 on 48×48 0.97×; 31 → 64 on 56×56 0.85×.
const MAX_CHANNELS_WIDE: usize = 31;
/// Narrowest output rows on which the path takes up to [`MAX_CHANNELS_WIDE`] channels.
const WIDE_ROW: usize = 40;
/// Least depth the path takes: below it, the masked stores weigh too much against the
/// multiply-adds. Measured against the im2col gemm: 3×3 over 3 channels (depth 27) ran
/// 0.81–0.90× its speed, 7×7 at stride 2 (147) 1.05–1.14×, 11×11 at stride 4 (363) 1.04–1.12×.
const MIN_DEPTH: usize = 64;

/// Whether the lanes path suits `g`: a kernel larger than 1×1 over at most [`MAX_CHANNELS`]
/// input channels per group ([`MAX_CHANNELS_WIDE`] at stride 1 in one group on wide rows), a
/// depth of at least [`MIN_DEPTH`], and output rows at least a vector wide (so that a vector
/// spans at most two of them).
pub(super) fn suits(g: &Geometry) -> bool {
    let most = if g.ow >= WIDE_ROW && g.sh == 1 && g.sw == 1 && g.groups == 1 {
        MAX_CHANNELS_WIDE
    } else {
        MAX_CHANNELS
    };
    g.kh * g.kw > 1 && g.cg <= most && g.depth() >= MIN_DEPTH && g.ow >= LANES && g.og >= 2
}

/// The lanes-path convolution of the f32 `input` into `output`, shapes validated, with the
/// weights packed in panels of [`PANEL_ROWS`] channels and one depth block:
/// `output = relu?(conv + bias + beta·output)`.
///
/// The caller must have checked that AVX-512F is available.
pub(super) fn run(
    g: &Geometry,
    input: &[f32],
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) {
    assert!(
        weights.mr() == ROWS && weights.kc() >= g.depth(),
        "lanes path needs panels of {ROWS} channels in one depth block"
    );
    let out_plane = g.out_plane();
    let finish = Finish { beta, relu: g.relu };
    let zeros = vec![0.0f32; g.o];
    let bias = bias.unwrap_or(&zeros);
    let out = SharedOut::new(output);
    flat::with_layout(g, input, VECTORS * LANES, |layout, data| {
        let tiles = grid_tiles(layout.wph, g.ow, g.oh);
        let furthest = layout.offsets.iter().max().copied().unwrap_or(0);
        let tasks_per_job = tiles.len().div_ceil(TASK_TILES);
        let jobs = g.n * g.groups;
        let task = |t: usize| {
            let (job, part) = (t / tasks_per_job, t % tasks_per_job);
            let (n, group) = (job / g.groups, job % g.groups);
            let first = part * TASK_TILES;
            let mine = &tiles[first..(first + TASK_TILES).min(tiles.len())];
            let base = n * layout.image_len + group * g.cg * layout.plane;
            for panel in 0..weights.panels() {
                let rows = (g.og - panel * ROWS).min(ROWS);
                let channel = group * g.og + panel * ROWS;
                let w = weights.panel_run(group, 0, panel, 1);
                for tile in mine {
                    let kernel = tile_for(rows, tile.vectors);
                    assert!(
                        base + tile.q + furthest + tile.vectors * LANES <= data.len(),
                        "lanes convolution reads outside its layout"
                    );
                    // SAFETY: AVX-512F was checked by the caller; `w` holds ROWS values per
                    // depth index of the whole depth; every read at base + q + offset + lane
                    // lies inside `data` (asserted above); the spans' lanes address positions
                    // inside the planes of image n's channels `channel..channel + rows`
                    // (`grid_tiles`), positions of this tile that no other tile writes.
                    unsafe {
                        kernel(
                            layout.offsets.len(),
                            w.as_ptr(),
                            data.as_ptr().add(base + tile.q),
                            layout.offsets.as_ptr(),
                            out.element((n * g.o + channel) * out_plane, rows * out_plane),
                            out_plane,
                            &tile.spans[..tile.vectors],
                            &bias[channel..channel + rows],
                            finish,
                        );
                    }
                }
            }
        };
        let tasks = jobs * tasks_per_job;
        if rayon::current_num_threads() > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    });
}

/// One register tile's place in the grid: `vectors` consecutive vectors of grid columns from
/// `q`, and where each goes in the output planes.
#[derive(Clone, Copy)]
struct GridTile {
    q: usize,
    vectors: usize,
    spans: [Spans; VECTORS],
}

/// The tiles that cover an output plane of `oh` rows of `ow` on a grid `wph` wide, in one of
/// two ways, whichever computes fewer vectors: the grid's columns in order, vectors wrapping
/// from one output row into the next across the padding columns (which they compute too), or
/// each output row apart, its last vector masked where `ow` is not a multiple of 16. Rows as
/// wide as whole vectors take the second: ResNet's 7×7 stem (112 outputs on a 115-wide grid)
/// then computes 784 vectors instead of 805.
fn grid_tiles(wph: usize, ow: usize, oh: usize) -> Vec<GridTile> {
    let flat = ((oh - 1) * wph + ow).div_ceil(LANES);
    let per_row = ow.div_ceil(LANES);
    let mut tiles = Vec::new();
    if per_row * oh < flat {
        for oy in 0..oh {
            for first in (0..per_row).step_by(VECTORS) {
                let vectors = (per_row - first).min(VECTORS);
                let mut spans = [Spans::default(); VECTORS];
                for (v, span) in spans.iter_mut().enumerate().take(vectors) {
                    let ox = (first + v) * LANES;
                    span.offsets[0] = (oy * ow + ox) as isize;
                    span.masks[0] = lane_bits(0, ow - ox);
                }
                tiles.push(GridTile {
                    q: oy * wph + first * LANES,
                    vectors,
                    spans,
                });
            }
        }
    } else {
        for first in (0..flat).step_by(VECTORS) {
            let vectors = (flat - first).min(VECTORS);
            let mut spans = [Spans::default(); VECTORS];
            for (v, span) in spans.iter_mut().enumerate().take(vectors) {
                *span = spans_of((first + v) * LANES, wph, ow, oh);
            }
            tiles.push(GridTile {
                q: first * LANES,
                vectors,
                spans,
            });
        }
    }
    tiles
}

/// The lanes `from..to` of a vector (clamped to its 16) as a mask.
fn lane_bits(from: usize, to: usize) -> u16 {
    let bits = |n: usize| {
        if n >= LANES {
            u16::MAX
        } else {
            (1u16 << n) - 1
        }
    };
    bits(to.min(LANES)) & !bits(from.min(LANES))
}

/// Where the 16 grid columns from `q` go in an output plane of `oh` rows of `ow` (grid rows
/// `wph` wide, `ow ≥ 16`): the lanes before the row's end, and those that wrap into the next
/// row past its padding columns (none past the last row).
fn spans_of(q: usize, wph: usize, ow: usize, oh: usize) -> Spans {
    let (oy, ox) = (q / wph, q % wph);
    let mut spans = Spans::default();
    if oy < oh && ox < ow {
        spans.offsets[0] = (oy * ow + ox) as isize;
        spans.masks[0] = lane_bits(0, ow - ox);
    }
    // Lane l lands on column ox + l - wph of the next row when ox + l >= wph.
    if oy + 1 < oh {
        spans.offsets[1] = ((oy + 1) * ow) as isize + ox as isize - wph as isize;
        spans.masks[1] = lane_bits(wph - ox, wph - ox + ow);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output of a plane is covered by exactly one lane of one tile's vectors, each lane
    /// at the grid column it reads (`q + 16·v + lane`), in both ways of covering the plane.
    #[test]
    fn tiles_cover_each_output_once_at_its_grid_column() {
        let cases = [
            (16, 0, 3),
            (16, 3, 2),
            (17, 1, 5),
            (112, 3, 4),
            (33, 20, 3),
            (32, 2, 3),
            (48, 5, 2),
            (47, 1, 3),
        ];
        for (ow, pad, oh) in cases {
            let wph = ow + pad;
            let mut hits = vec![0u32; ow * oh];
            let tiles = grid_tiles(wph, ow, oh);
            let by_row = ow.is_multiple_of(LANES) && pad > 0;
            if by_row {
                let vectors: usize = tiles.iter().map(|t| t.vectors).sum();
                assert_eq!(vectors, oh * ow / LANES, "{ow} {pad} {oh}: rows apart");
            }
            for t in &tiles {
                for (v, s) in t.spans[..t.vectors].iter().enumerate() {
                    for run in 0..2 {
                        for lane in 0..LANES {
                            if s.masks[run] >> lane & 1 == 1 {
                                let at = s.offsets[run] + lane as isize;
                                assert!(at >= 0 && (at as usize) < ow * oh, "{ow} {pad} {oh}");
                                let at = at as usize;
                                hits[at] += 1;
                                let column = (at / ow) * wph + at % ow;
                                assert_eq!(column, t.q + v * LANES + lane, "{ow} {pad} {oh}");
                            }
                        }
                    }
                }
            }
            assert!(hits.iter().all(|&h| h == 1), "{ow} {pad} {oh}: {hits:?}");
        }
    }
}
