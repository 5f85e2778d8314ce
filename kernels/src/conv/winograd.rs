//! Winograd F(2×2, 3×3): 3×3 stride-1 convolutions with 2.25× fewer multiplies.
//!
//! Each 2×2 block of outputs (a *tile*) of channel `o` is `Aᵀ·[Σ_c U[o][c] ⊙ V[c]]·A`, where
//! `V[c] = Bᵀ·d·B` is the 4×4 input patch `d` of channel `c` under the tile, transformed, and
//! `U[o][c] = G·g·Gᵀ` the transformed 3×3 weights (Lavin and Gray, 2016). Summing over `c`
//! for each of the 16 positions `ξ` of a 4×4 transform is a matrix product,
//! `M[ξ] (O × tiles) = U[ξ] (O × C) · V[ξ] (C × tiles)`: 16 gemms of depth C replace one of
//! depth 9·C, and the transforms cost a few additions per input and output value.
//!
//! The work is cut into blocks of whole tile rows of one image, sized so that a block's
//! transformed inputs and products stay in L2. Each block transforms its inputs, runs the 16
//! gemms on the calling thread (the blocks run in parallel) with the transformed weights
//! packed once into the gemm's panels, and transforms the products back, adding the bias and
//! the residual and applying the ReLU as it writes the output. Layers with many channels,
//! whose blocks in L2 would be too narrow, run groups of whole images as one block instead:
//! transforms split over the threads by channels, each gemm split by the gemm itself.
//!
//! Transformed values are stored channel-major, `v[c][ξ][t]` and `m[o][ξ][t]`: a channel's
//! values are contiguous for the transforms, and position ξ's matrix is read by the gemms
//! with a row stride of 16 blocks.
//!
//! F(2×2, 3×3)'s transforms use only ±1 and ½, so its rounding stays close to the direct
//! convolution's (the tests hold it to the same 2·10⁻⁵ of Σ|w·x|); larger Winograd tiles
//! scale values by up to 4 and 8 in their transforms and lose more.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;
use super::winograd_x86;
use crate::gemm::{Epilogue, MatMut, MatRef, PackA, PrepackedA, Threading, gemm_packed};
use crate::{Isa, Result};

/// Positions of a 4×4 transform: the number of gemms per block.
pub(super) const POSITIONS: usize = 16;
/// Fewest input and output channels: below, the transforms outweigh the saved multiplies.
const MIN_CHANNELS: usize = 16;
/// Fewest tiles per image of a layer whose images run whole (a 28×28 plane has 196).
const MIN_WHOLE_TILES: usize = 128;
/// Most transformed values of a group of whole images: 32 MiB.
const WHOLE_MAX_FLOATS: usize = 1 << 23;
/// Largest buffer (in values) a thread keeps for its next call: 16 MiB.
const KEEP_BUFFER_MAX: usize = 1 << 22;
/// Floats of transformed inputs and products a block aims to keep (in L2): 1 MiB.
const BLOCK_FLOATS: usize = 1 << 18;
/// Fewest tiles per block, so that the gemms keep some width.
const MIN_BLOCK_TILES: usize = 32;
/// Fewest tiles of a block in L2 below which images run whole ([`in_blocks`]).
const WHOLE_BELOW_TILES: usize = 32;
/// Channels per parallel piece of a whole image's transforms.
const CHANNELS_PER_PIECE: usize = 16;
/// Blocks per thread, for load balance.
const BLOCKS_PER_THREAD: usize = 4;

thread_local! {
    /// A block's transformed inputs and products, kept for this thread's next block.
    static BLOCK_BUFFER: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether `g` runs through the Winograd path: a 3×3 kernel at stride 1 and dilation 1, one
/// group, at least [`MIN_CHANNELS`] input and output channels, and enough tiles: as many per
/// image as input channels for blocks in L2 ([`in_blocks`]), or at least [`MIN_WHOLE_TILES`]
/// per image when whole images run as blocks. Measured against the flat path (two threads, alternating in
/// one process, Winograd time / flat time): 64 channels on 224×224 0.79, on 56×56 0.86; 128
/// on 112×112 0.74, on 28×28 0.88; 256 on 56×56 0.86; 512 on 28×28 0.72. Fewer tiles lost or
/// barely won alone (256 on 14×14, batch 1: 1.46 in L2-sized blocks, 0.95 whole; 512 on 7×7:
/// 2.95 in blocks, 1.04 whole) and lost inside the models: with them, ResNet-50 ran 1.07× and Inception v1 1.20×
/// the time of the flat path. A batch does not make up for small planes: eight 14×14 planes
/// of 256 channels (392 tiles in one group) ran 0.88 and 1.17 in two runs, eight 7×7 planes
/// of 512 channels 1.18.
pub(super) fn suits(g: &Geometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.dh == 1
        && g.dw == 1
        && g.groups == 1
        && g.cg >= MIN_CHANNELS
        && g.og >= MIN_CHANNELS
        && (in_blocks(g) || image_tiles(g) >= MIN_WHOLE_TILES)
}

/// The geometry whose "weights" are the transformed ones: 16 groups (one per position), each
/// an `O × C` matrix, so that they pack into the gemm's panels as a pointwise convolution's.
pub(super) fn transformed_geometry(g: &Geometry) -> Geometry {
    Geometry {
        n: 1,
        c: POSITIONS * g.c,
        h: 1,
        w: 1,
        o: POSITIONS * g.o,
        kh: 1,
        kw: 1,
        oh: 1,
        ow: 1,
        groups: POSITIONS,
        cg: g.c,
        og: g.o,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pads: [0; 4],
        relu: false,
    }
}

/// `U[ξ][o][c] = (G·g·Gᵀ)[ξ]` for OIHW 3×3 weights `weight` of `o × c` channels, position-major.
pub(super) fn transform_weights(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; POSITIONS * o * c];
    for (index, g) in weight.chunks_exact(9).take(o * c).enumerate() {
        // G·g (4 × 3), then (G·g)·Gᵀ (4 × 4); G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
        let gg: [[f32; 3]; 4] = std::array::from_fn(|a| {
            std::array::from_fn(|s| {
                let (g0, g1, g2) = (g[s], g[3 + s], g[6 + s]);
                match a {
                    0 => g0,
                    1 => 0.5 * (g0 + g1 + g2),
                    2 => 0.5 * (g0 - g1 + g2),
                    _ => g2,
                }
            })
        });
        for (a, row) in gg.iter().enumerate() {
            let [r0, r1, r2] = *row;
            let out = [r0, 0.5 * (r0 + r1 + r2), 0.5 * (r0 - r1 + r2), r2];
            for (b, value) in out.into_iter().enumerate() {
                u[(a * 4 + b) * o * c + index] = value;
            }
        }
    }
    u
}

/// Tiles along each axis: 2×2 outputs each.
fn tiles(g: &Geometry) -> (usize, usize) {
    (g.oh.div_ceil(2), g.ow.div_ceil(2))
}

/// Tiles of one image.
fn image_tiles(g: &Geometry) -> usize {
    let (th, tw) = tiles(g);
    th * tw
}

/// Whether `g` runs in blocks of tile rows sized for L2: when such a block holds at least
/// [`WHOLE_BELOW_TILES`] tiles (C + O at most 512) and an image has at least as many tiles
/// as input channels. Otherwise groups of whole images run as one block each, with threaded
/// gemms: blocks in L2 would be so narrow that each would read all the transformed weights
/// again for little work. Measured against the flat path (Winograd time / flat time): 256
/// channels on 14×14 1.46 in blocks, 0.95 whole; 512 on 7×7 2.95 in blocks, 1.04 whole; whole
/// images of 512 channels on 28×28 and 14×14 0.72 and 0.77.
fn in_blocks(g: &Geometry) -> bool {
    BLOCK_FLOATS / (POSITIONS * (g.c + g.o)) >= WHOLE_BELOW_TILES && image_tiles(g) >= g.c
}

/// Images per group when whole images run as one block: as many as keep its transformed
/// values within [`WHOLE_MAX_FLOATS`], at least one, at most the batch.
fn group_images(g: &Geometry) -> usize {
    let per_image = POSITIONS * (g.c + g.o) * image_tiles(g);
    (WHOLE_MAX_FLOATS / per_image.max(1)).clamp(1, g.n.max(1))
}

/// The blocks of tile rows of one image on `threads` threads: each small enough for its
/// transformed data to stay in L2 ([`BLOCK_FLOATS`]), and enough of them over the batch
/// for [`BLOCKS_PER_THREAD`] per thread.
fn row_blocks(g: &Geometry, threads: usize) -> Vec<Range<usize>> {
    let (th, tw) = tiles(g);
    let per_tile = POSITIONS * (g.c + g.o);
    let rows_by_cache = (BLOCK_FLOATS / per_tile / tw)
        .max(MIN_BLOCK_TILES.div_ceil(tw))
        .clamp(1, th);
    let by_cache = th.div_ceil(rows_by_cache);
    let by_threads = (BLOCKS_PER_THREAD * threads).div_ceil(g.n);
    let blocks = by_cache.max(by_threads).clamp(1, th);
    (0..blocks)
        .map(|b| (b * th / blocks)..((b + 1) * th / blocks))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Runs the convolution `g` (see [`suits`]) with `weights`, the transformed weights packed as
/// [`transformed_geometry`]'s: `output = relu?(conv + bias + beta·output)`.
pub(super) fn run(
    isa: Isa,
    g: &Geometry,
    input: &[f32],
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) -> Result<()> {
    let block = Block {
        isa,
        g,
        input,
        weights,
        bias,
        beta,
    };
    let (th, _) = tiles(g);
    let out = SharedOut::new(output);
    if !in_blocks(g) {
        let group = group_images(g);
        let mut buffer = BLOCK_BUFFER.take();
        let result = (0..g.n).step_by(group).try_for_each(|first| {
            let rows = first * th..(first + group).min(g.n) * th;
            block.run_whole(rows, &mut buffer, out)
        });
        if buffer.capacity() <= KEEP_BUFFER_MAX {
            BLOCK_BUFFER.set(buffer);
        }
        return result;
    }
    let blocks = row_blocks(g, rayon::current_num_threads());
    let jobs: Vec<Range<usize>> = (0..g.n)
        .flat_map(|n| {
            blocks
                .iter()
                .map(move |rows| n * th + rows.start..n * th + rows.end)
        })
        .collect();
    let run_job = |rows: &Range<usize>| {
        let mut buffer = BLOCK_BUFFER.take();
        let result = block.run(rows.clone(), &mut buffer, out);
        BLOCK_BUFFER.set(buffer);
        result
    };
    if jobs.len() > 1 && rayon::current_num_threads() > 1 {
        jobs.par_iter().try_for_each(run_job)
    } else {
        jobs.iter().try_for_each(run_job)
    }
}

/// `buffer` as the transformed inputs (`v_len` values) and products (`m_len`), grown if needed.
fn split_buffer(buffer: &mut Vec<f32>, v_len: usize, m_len: usize) -> (&mut [f32], &mut [f32]) {
    if buffer.len() < v_len + m_len {
        buffer.resize(v_len + m_len, 0.0);
    }
    let (v, m) = buffer[..v_len + m_len].split_at_mut(v_len);
    (v, m)
}

/// What the blocks of one convolution share.
struct Block<'a> {
    isa: Isa,
    g: &'a Geometry,
    input: &'a [f32],
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    beta: f32,
}

impl Block<'_> {
    /// Tile rows `rows` (counted over the batch: row `ty` of image `n` is `n·th + ty`):
    /// transform, 16 gemms on this thread, transform back into `out` (whose output rows of
    /// these tile rows this block alone writes).
    fn run(&self, rows: Range<usize>, buffer: &mut Vec<f32>, out: SharedOut<'_>) -> Result<()> {
        let g = self.g;
        let count = rows.len() * tiles(g).1;
        let (v, m) = split_buffer(buffer, g.c * POSITIONS * count, g.o * POSITIONS * count);
        self.transform_input(&rows, 0..g.c, v);
        self.gemms(v, m, count, Threading::Single)?;
        self.transform_output(&rows, 0..g.o, m, out);
        Ok(())
    }

    /// Tile rows `rows` (whole images) as one block: its transforms split over the threads by
    /// channels, its 16 gemms each split by the gemm itself.
    fn run_whole(
        &self,
        rows: Range<usize>,
        buffer: &mut Vec<f32>,
        out: SharedOut<'_>,
    ) -> Result<()> {
        let g = self.g;
        let count = rows.len() * tiles(g).1;
        let (v, m) = split_buffer(buffer, g.c * POSITIONS * count, g.o * POSITIONS * count);
        let piece = CHANNELS_PER_PIECE * POSITIONS * count;
        v.par_chunks_mut(piece).enumerate().for_each(|(p, v)| {
            let first = p * CHANNELS_PER_PIECE;
            let channels = first..(first + CHANNELS_PER_PIECE).min(g.c);
            self.transform_input(&rows, channels, v);
        });
        self.gemms(v, m, count, Threading::CurrentPool)?;
        m.par_chunks(piece).enumerate().for_each(|(p, m)| {
            let first = p * CHANNELS_PER_PIECE;
            let channels = first..(first + CHANNELS_PER_PIECE).min(g.o);
            self.transform_output(&rows, channels, m, out);
        });
        Ok(())
    }

    /// `m[o][ξ][t] = Σ_c U[ξ][o][c]·v[c][ξ][t]` for the block's `count` tiles: 16 gemms.
    fn gemms(&self, v: &[f32], m: &mut [f32], count: usize, threading: Threading) -> Result<()> {
        let g = self.g;
        let stride = POSITIONS * count;
        for xi in 0..POSITIONS {
            let a = Panels {
                pre: self
                    .weights
                    .view(xi, 0)
                    .expect("position panels start at row 0"),
                depth: g.c,
            };
            let b = MatRef::new(&v[xi * count..], g.c, count, stride, 1)?;
            let c = MatMut::new(&mut m[xi * count..], g.o, count, stride, 1)?;
            gemm_packed(
                self.isa,
                threading,
                g.c,
                1.0,
                &a,
                &b,
                0.0,
                c,
                &Epilogue::NONE,
            )?;
        }
        Ok(())
    }

    /// `v[c][ξ][t] = (Bᵀ·d·B)[ξ]` for channels `channels` (`v` starts at the first) and every
    /// tile `t` of the block.
    fn transform_input(&self, rows: &Range<usize>, channels: Range<usize>, v: &mut [f32]) {
        let g = self.g;
        let (th, tw) = tiles(g);
        let count = rows.len() * tw;
        let (top, left) = (g.pads[0], g.pads[1]);
        // Each padded input row under a tile row, split into its even and odd columns (tile
        // tx reads even and odd columns tx and tx + 1): the transform then reads contiguously.
        let half = tw + 1;
        let mut split = vec![0.0f32; 8 * half];
        for (c, v) in channels.zip(v.chunks_exact_mut(POSITIONS * count)) {
            for (row_index, row) in rows.clone().enumerate() {
                let (n, ty) = (row / th, row % th);
                let plane = &self.input[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
                let (even, odd) = split.split_at_mut(4 * half);
                for r in 0..4 {
                    let (even, odd) = (&mut even[r * half..][..half], &mut odd[r * half..][..half]);
                    match (2 * ty + r).checked_sub(top).filter(|&y| y < g.h) {
                        // SAFETY: as for the input transform below.
                        Some(y) => unsafe {
                            winograd_x86::split_columns(&plane[y * g.w..][..g.w], left, even, odd)
                        },
                        None => {
                            even.fill(0.0);
                            odd.fill(0.0);
                        }
                    }
                }
                let first = row_index * tw;
                let mut dst = v.chunks_exact_mut(count).map(|position| {
                    let run: &mut [f32] = &mut position[first..][..tw];
                    run
                });
                let dst: [&mut [f32]; POSITIONS] =
                    std::array::from_fn(|_| dst.next().expect("a block holds every position"));
                let (even, odd) = split.split_at(4 * half);
                let even: [&[f32]; 4] = std::array::from_fn(|r| &even[r * half..][..half]);
                let odd: [&[f32]; 4] = std::array::from_fn(|r| &odd[r * half..][..half]);
                // SAFETY: the Winograd path runs only with AVX-512F selected, hence available.
                unsafe { winograd_x86::input_row(even, odd, dst) };
            }
        }
    }

    /// Output rows of the block's tiles: `Aᵀ·m·A` per tile, with the bias, `beta` times the
    /// old output and the ReLU.
    fn transform_output(
        &self,
        rows: &Range<usize>,
        channels: Range<usize>,
        m: &[f32],
        out: SharedOut<'_>,
    ) {
        let g = self.g;
        let (th, tw) = tiles(g);
        let count = rows.len() * tw;
        // Output rows 2·ty and 2·ty + 1, each as its even and odd columns.
        let mut lines = vec![0.0f32; 4 * tw];
        for (o, m) in channels.zip(m.chunks_exact(POSITIONS * count)) {
            let bias = self.bias.map_or(0.0, |b| b[o]);
            for (row_index, row) in rows.clone().enumerate() {
                let (n, ty) = (row / th, row % th);
                let first = row_index * tw;
                let m: [&[f32]; POSITIONS] =
                    std::array::from_fn(|xi| &m[xi * count + first..][..tw]);
                let mut parts = lines.chunks_exact_mut(tw);
                let parts: [&mut [f32]; 4] =
                    std::array::from_fn(|_| parts.next().expect("four lines"));
                // SAFETY: as for the input transform.
                unsafe { winograd_x86::output_row(m, parts) };
                for i in 0..2 {
                    let oy = 2 * ty + i;
                    if oy >= g.oh {
                        break;
                    }
                    let start = ((n * g.o + o) * g.oh + oy) * g.ow;
                    // SAFETY: output row `oy` of channel `o` of image `n` belongs to this
                    // block's tile rows, which no other block holds.
                    let dst = unsafe { out.slice(start, g.ow) };
                    let (even, odd) =
                        (&lines[2 * i * tw..][..tw], &lines[(2 * i + 1) * tw..][..tw]);
                    let (relu, beta) = (g.relu, self.beta);
                    // SAFETY: as for the input transform.
                    unsafe { winograd_x86::finish_row(dst, even, odd, bias, beta, relu) };
                }
            }
        }
    }
}

/// One position's transformed weights as the gemm's A: read in place from their panels, or
/// repacked from them should the gemm block its depth otherwise.
struct Panels<'a> {
    pre: PrepackedA<'a>,
    depth: usize,
}

impl Panels<'_> {
    /// Weight `(i, k)` of the position's `O × C` matrix.
    fn at(&self, i: usize, k: usize) -> f32 {
        let pre = &self.pre;
        let k0 = k / pre.kc * pre.kc;
        let block_depth = pre.kc.min(self.depth - k0);
        let panel = pre.first_panel + i / pre.mr;
        pre.data[k0 * pre.panels * pre.mr
            + panel * pre.mr * block_depth
            + (k - k0) * pre.mr
            + i % pre.mr]
    }
}

impl PackA for Panels<'_> {
    fn pack_a(&self, m0: usize, mc: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        for (p, panel) in dst
            .chunks_exact_mut(mr * kc)
            .take(mc.div_ceil(mr))
            .enumerate()
        {
            for (k, step) in panel.chunks_exact_mut(mr).enumerate() {
                for (r, value) in step.iter_mut().enumerate() {
                    let row = p * mr + r;
                    *value = if row < mc {
                        self.at(m0 + row, k0 + k)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    fn prepacked(&self) -> Option<PrepackedA<'_>> {
        Some(self.pre)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Conv2dParams;

    fn geometry(input: [usize; 4], weight: [usize; 4]) -> Geometry {
        let params = Conv2dParams {
            pads: [1; 4],
            ..Default::default()
        };
        Geometry::new(input, weight, &params).unwrap()
    }

    #[test]
    fn panels_repack_as_the_transformed_rows_pack() {
        // The fallback for a gemm whose blocking differs from the packed one: rows, depth
        // steps and panel heights other than the packed ones give the same panels.
        let (o, c) = (37, 29);
        let g = geometry([1, c, 8, 8], [o, c, 3, 3]);
        let weight: Vec<f32> = (0..o * c * 9)
            .map(|v| (v % 23) as f32 * 0.25 - 2.0)
            .collect();
        let packed = PackedWeights::winograd(Isa::Avx512, &g, &weight).unwrap();
        let rows = transform_weights(&weight, o, c);
        for xi in [0, 5, 15] {
            let panels = Panels {
                pre: packed.view(xi, 0).unwrap(),
                depth: c,
            };
            let matrix = MatRef::row_major(&rows[xi * o * c..][..o * c], o, c).unwrap();
            for (m0, mc, k0, kc, mr) in [(0, o, 0, c, 12), (3, 30, 2, 25, 4), (5, 7, 11, 5, 8)] {
                let len = mc.div_ceil(mr) * mr * kc;
                let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                panels.pack_a(m0, mc, k0, kc, mr, &mut got);
                matrix.pack_a(m0, mc, k0, kc, mr, &mut want);
                assert_eq!(
                    got, want,
                    "position {xi}, rows {m0}+{mc}, depth {k0}+{kc}, mr {mr}"
                );
            }
        }
    }

    #[test]
    fn blocks_cover_every_tile_row() {
        for (input, weight, threads) in [
            ([1, 64, 56, 56], [64, 64, 3, 3], 2),
            ([8, 64, 56, 56], [64, 64, 3, 3], 2),
            ([1, 128, 28, 28], [128, 128, 3, 3], 16),
            ([1, 16, 3, 3], [16, 16, 3, 3], 4),
        ] {
            let g = geometry(input, weight);
            let (th, _) = tiles(&g);
            let blocks = row_blocks(&g, threads);
            assert_eq!(blocks.first().unwrap().start, 0);
            assert_eq!(blocks.last().unwrap().end, th);
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
