//! Winograd F(2×2, 3×3) and F(4×4, 3×3): 3×3 stride-1 convolutions with 2.25× and 4× fewer
//! multiplies.
//!
//! Each m×m block of outputs (a *tile*, m = 2 or 4) of channel `o` is
//! `Aᵀ·[Σ_c U[o][c] ⊙ V[c]]·A`, where `V[c] = Bᵀ·d·B` is the (m+2)×(m+2) input patch `d` of
//! channel `c` under the tile, transformed, and `U[o][c] = G·g·Gᵀ` the transformed 3×3
//! weights (Lavin and Gray, 2016). Summing over `c` for each position `ξ` of the transform
//! is a matrix product, `M[ξ] (O × tiles) = U[ξ] (O × C) · V[ξ] (C × tiles)`: 16 (or 36)
//! gemms of depth C replace one of depth 9·C, and the transforms cost a few additions per
//! input and output value.
//!
//! The work is cut into blocks of whole tile rows of one image, sized so that a block's
//! transformed inputs and products stay in L2. Each block transforms its inputs, runs the
//! gemms on the calling thread (the blocks run in parallel) with the transformed weights
//! packed once into the gemm's panels, and transforms the products back, adding the bias and
//! the residual and applying the ReLU as it writes the output. Layers with many channels,
//! whose F(2×2, 3×3) blocks in L2 would be too narrow, run groups of whole images as one
//! block instead: transforms split over the threads by channels, each gemm split by the gemm
//! itself.
//!
//! Transformed values are stored channel-major, `v[c][ξ][t]` and `m[o][ξ][t]`: a channel's
//! values are contiguous for the transforms, and position ξ's matrix is read by the gemms
//! with a row stride of one block per position.
//!
//! F(2×2, 3×3)'s transforms use only ±1 and ½, so its rounding stays close to the direct
//! convolution's; F(4×4, 3×3)'s scale values by up to 5 and 8 and lose more, still within the
//! tests' 2·10⁻⁵ of Σ|w·x| (weights are transformed in f64 and rounded once). A NaN or an
//! infinity in a patch spreads over the whole transformed tile: outputs whose transform is
//! not finite are computed directly instead.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;
use super::winograd_x86;
use crate::gemm::{Epilogue, MatMut, MatRef, PackA, PrepackedA, Threading, gemm_packed};
use crate::{Isa, Result};

/// Fewest output channels: below, the transforms outweigh the saved multiplies.
const MIN_OUT_CHANNELS: usize = 16;
/// Fewest input channels (the gemms' depth) of F(2×2, 3×3).
const F2_MIN_CHANNELS: usize = 64;
/// Fewest input channels of F(4×4, 3×3).
const F4_MIN_CHANNELS: usize = 32;
/// Fewest tiles of a block of whole images (a 28×28 plane has 196; see [`whole_tiles`]).
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
/// Fewest F(4×4, 3×3) tiles per image for that variant (a 56×56 plane has 196).
const F4_MIN_TILES: usize = 128;
/// Fewest F(4×4, 3×3) tiles per image for the batch to count in [`f4_tiles`] (a 28×28 plane
/// has 49; a 14×14 one, 16, runs F(2×2, 3×3) over whole images instead).
const F4_MIN_IMAGE_TILES: usize = 49;
/// Fewest F(4×4, 3×3) tiles a block in L2 holds (C + O at most 910).
const F4_MIN_BLOCK_TILES: usize = 8;
/// Channels per parallel piece of a whole image's transforms.
const CHANNELS_PER_PIECE: usize = 16;
/// Blocks per thread, for load balance.
const BLOCKS_PER_THREAD: usize = 4;
/// Fewest output channels of a layer whose small planes split by them
/// ([`small_planes_split`]).
const SPLIT_MIN_OUT_CHANNELS: usize = 64;
/// Fewest input channels (the gemms' depth) of a layer whose small planes split by output
/// channels: SqueezeNet's 64 → 256 on 13×13 ran the model 1.04× the time of the flat path.
const SPLIT_MIN_IN_CHANNELS: usize = 96;
/// Tiles per row below which F(2×2, 3×3)'s input transform gathers each channel's patches
/// ([`Block::gather_plan`]) instead of transforming tile row by tile row, whose vectors
/// would be mostly empty.
const GATHER_BELOW_TILES: usize = 8;
/// Fewest multiply-adds of a piece of output channels when whole images split by them
/// ([`Block::products_by_channels`]): one weight panel of 256 channels on 14×14 (2.4 M), two
/// of 512 on 7×7. Measured there against pieces of two and three panels (one), one and three
/// (two): 0.96–0.97×, 0.94–1.04×.
const PIECE_MIN_MACS: usize = 1 << 21;

/// A Winograd variant, named by its output tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tile {
    /// F(2×2, 3×3): 4×4 transforms, 16 gemms.
    F2,
    /// F(4×4, 3×3): 6×6 transforms, 36 gemms.
    F4,
}

impl Tile {
    /// Outputs along each side of a tile.
    pub(super) fn out(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Inputs along each side of a tile's patch (and of its transform).
    fn span(self) -> usize {
        self.out() + 2
    }

    /// Positions of the transform: the number of gemms per block.
    pub(super) fn positions(self) -> usize {
        self.span() * self.span()
    }

    /// The rows of G, the weight transform (`U = G·g·Gᵀ`).
    fn g_rows(self) -> &'static [[f64; 3]] {
        match self {
            Tile::F2 => &[
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            Tile::F4 => &[
                [0.25, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }
}

thread_local! {
    /// A block's transformed inputs and products, kept for this thread's next block.
    static BLOCK_BUFFER: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The Winograd variant `g` runs with, if any: a 3×3 kernel at stride 1 and dilation 1, one
/// group, at least [`MIN_OUT_CHANNELS`] output channels, and either F(4×4, 3×3)'s bounds
/// ([`suits_f4`]) or F(2×2, 3×3)'s: at least [`F2_MIN_CHANNELS`] input channels and enough
/// tiles, as many per image as input channels for blocks in L2 ([`in_blocks`]), or at least
/// [`MIN_WHOLE_TILES`] in a block when whole images run as blocks ([`whole_tiles`]), or
/// small planes split by output channels ([`small_planes_split`]).
///
/// F(2×2, 3×3) measured against the flat path (two threads, alternating in one process,
/// Winograd time / flat time): 64 channels on 224×224 0.79, on 56×56 0.86; 128 on 112×112
/// 0.74, on 28×28 0.88; 64 on 28×28 0.89–0.92; 256 on 56×56 0.86; 512 on 28×28 0.72. Fewer
/// input channels lost (32 → 128 on 27×27 1.13–1.16, 48 → 192 on 13×13 1.95–2.02), and so
/// did fewer tiles alone (256 on 14×14, batch 1: 1.46 in L2-sized blocks, 0.95 whole; 512 on
/// 7×7: 2.95 in blocks, 1.04 whole) and inside the models: with them, ResNet-50 ran 1.07× and
/// Inception v1 1.20× the time of the flat path. On a two-FMA Xeon a batch did not make up
/// for small planes (eight 14×14 planes of 256 channels, 392 tiles in one group, ran 0.88 and
/// 1.17 in two runs; eight 7×7 planes of 512 channels 1.18); on a core whose 512-bit
/// multiply-adds run at the 256-bit rate it does (see [`whole_tiles`]).
pub(super) fn variant(g: &Geometry) -> Option<Tile> {
    let three_by_three = g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.dh == 1
        && g.dw == 1
        && g.groups == 1
        && g.og >= MIN_OUT_CHANNELS;
    if !three_by_three {
        None
    } else if suits_f4(g) {
        Some(Tile::F4)
    } else if g.cg >= F2_MIN_CHANNELS
        && (in_blocks(g) || whole_tiles(g) >= MIN_WHOLE_TILES || small_planes_split(g))
    {
        Some(Tile::F2)
    } else {
        None
    }
}

/// The F(2×2, 3×3) tiles one block of whole images holds: one image's, or, on cores where
/// 512-bit multiply-adds run no faster than two 256-bit ones ([`crate::peak::wide_fma_pays`]),
/// those of a group of images ([`group_images`]), which share each transformed weight.
///
/// Measured on such a core (AMD EPYC, Zen 4 class), chains of layers whose weights come from
/// memory as in a model, F(2×2) time / flat time: 256 channels on 14×14, four images 0.75,
/// eight 0.80–0.82; 512 on 7×7, eight images 0.83; ResNet-50 at batch 8 0.92–0.95. One
/// 14×14 image (49 tiles) ran 1.61× the flat path's time with each gemm threaded; split by
/// output channels it runs by [`small_planes_split`]. On a Skylake-SP Xeon,
/// whose 512-bit multiply-adds run at twice the rate, eight 7×7 planes of 512 channels ran
/// 1.18× and eight 14×14 planes of 256 channels 0.88–1.17× (alone, before the gemm's tail
/// columns): there the saved multiplies are worth less against the transforms' traffic.
fn whole_tiles(g: &Geometry) -> usize {
    let images = if crate::peak::wide_fma_pays() {
        1
    } else {
        group_images(g, Tile::F2)
    };
    images * image_tiles(g, Tile::F2)
}

/// Whether F(4×4, 3×3) runs `g` (a 3×3 stride-1 layer): at least [`F4_MIN_CHANNELS`] input
/// channels, at least [`F4_MIN_TILES`] of its tiles per image, and blocks in L2 of at least
/// [`F4_MIN_BLOCK_TILES`]. Measured against F(2×2, 3×3) (two threads, alternating in one
/// process, F(4×4) time / F(2×2) time): 64 channels on 56×56 0.77–0.80 (batch 8: 0.84), on
/// 224×224 0.67–0.73; 128 on 112×112 0.74–0.78, on 56×56 0.68–0.71; 64 → 192 on 56×56 0.73;
/// 256 on 56×56 0.73–0.75. On 28×28 planes (49 tiles) it lost: 1.32–1.43, and 1.46 in a
/// chain of 128-channel layers on a Zen 4 core, but see [`f4_tiles`] for batches. Against the
/// flat path (F(4×4) time / flat time): 32 → 32 on 56×56 0.72–0.75, 32 → 128 0.66–0.67, 48 →
/// 96 0.57–0.59, 32 → 64 on 112×112 0.63; 16 → 64 on 55×55 1.01–1.03, hence the channel bound.
fn suits_f4(g: &Geometry) -> bool {
    g.cg >= F4_MIN_CHANNELS
        && f4_tiles(g) >= F4_MIN_TILES
        && BLOCK_FLOATS / (Tile::F4.positions() * (g.c + g.o)) >= F4_MIN_BLOCK_TILES
}

/// The F(4×4, 3×3) tiles counted against [`F4_MIN_TILES`]: one image's, or, on cores where
/// 512-bit multiply-adds run no faster than two 256-bit ones ([`crate::peak::wide_fma_pays`]),
/// the whole batch's for planes of at least [`F4_MIN_IMAGE_TILES`] tiles and layers of at least
/// [`F2_MIN_CHANNELS`] input channels: the blocks of tile rows run across the images, so a
/// batch gives them the width one 28×28 image lacks. Measured on such a core (AMD EPYC, Zen 4
/// class), chains of 128 → 128 3×3 layers on 28×28, F(4×4) time / F(2×2) time: batch 2 0.94,
/// 4 0.96, 8 0.95 (batch 1 1.46); inside ResNet-50 at batch 8 0.92 on those layers, 0.99 in
/// all. Not measured on a core with twice the 512-bit rate, which keeps the bound per image.
fn f4_tiles(g: &Geometry) -> usize {
    let per_image = image_tiles(g, Tile::F4);
    if crate::peak::wide_fma_pays() || per_image < F4_MIN_IMAGE_TILES || g.cg < F2_MIN_CHANNELS {
        per_image
    } else {
        per_image * g.n
    }
}

/// The geometry whose "weights" are the transformed ones: one group per position, each an
/// `O × C` matrix, so that they pack into the gemm's panels as a pointwise convolution's.
pub(super) fn transformed_geometry(g: &Geometry, tile: Tile) -> Geometry {
    Geometry::matrices(tile.positions(), g.o, g.c)
}

/// `U[ξ][o][c] = (G·g·Gᵀ)[ξ]` for OIHW 3×3 weights `weight` of `o × c` channels,
/// position-major, computed in f64 and rounded once.
pub(super) fn transform_weights(weight: &[f32], o: usize, c: usize, tile: Tile) -> Vec<f32> {
    let (rows, positions) = (tile.g_rows(), tile.positions());
    let mut u = vec![0.0f32; positions * o * c];
    for (index, g) in weight.chunks_exact(9).take(o * c).enumerate() {
        let g = |r: usize, s: usize| f64::from(g[3 * r + s]);
        // G·g (span × 3), then (G·g)·Gᵀ (span × span).
        let gg: Vec<[f64; 3]> = rows
            .iter()
            .map(|row| std::array::from_fn(|s| (0..3).map(|r| row[r] * g(r, s)).sum()))
            .collect();
        for (a, left) in gg.iter().enumerate() {
            for (b, row) in rows.iter().enumerate() {
                let value: f64 = (0..3).map(|s| left[s] * row[s]).sum();
                u[(a * rows.len() + b) * o * c + index] = value as f32;
            }
        }
    }
    u
}

/// Tiles along each axis.
fn tiles(g: &Geometry, tile: Tile) -> (usize, usize) {
    (g.oh.div_ceil(tile.out()), g.ow.div_ceil(tile.out()))
}

/// Tiles of one image.
fn image_tiles(g: &Geometry, tile: Tile) -> usize {
    let (th, tw) = tiles(g, tile);
    th * tw
}

/// Whether `g`'s small planes run F(2×2, 3×3) as whole images split by output channels
/// ([`Block::products_by_channels`]), on cores where 512-bit multiply-adds run no faster
/// than two 256-bit ones ([`crate::peak::wide_fma_pays`]): at least
/// [`SPLIT_MIN_IN_CHANNELS`] input and [`SPLIT_MIN_OUT_CHANNELS`] output channels, and a
/// group of whole images whose transformed inputs per position stay small
/// ([`by_output_channels`]). Measured on such a core (AMD EPYC, Zen 4 class), two threads,
/// alternating, time with / without: 256 channels on 14×14 alone 0.80 / 1.05 ms
/// (onnxruntime 0.98); in the models ResNet-50 0.963–0.968, batch 8 0.974 (its 7×7 planes
/// gathered), Inception v1 0.98, Inception v2 0.97, VGG-19 0.99, ZFNet-512 0.94. Not
/// measured on a core with twice the 512-bit rate, which keeps the flat path.
fn small_planes_split(g: &Geometry) -> bool {
    !crate::peak::wide_fma_pays()
        && g.og >= SPLIT_MIN_OUT_CHANNELS
        && g.cg >= SPLIT_MIN_IN_CHANNELS
        && by_output_channels(g, group_images(g, Tile::F2) * image_tiles(g, Tile::F2))
}

/// Whether `g` runs F(2×2, 3×3) in blocks of tile rows sized for L2: when such a block holds
/// at least [`WHOLE_BELOW_TILES`] tiles (C + O at most 512) and an image has at least as many
/// tiles as input channels. Otherwise groups of whole images run as one block each,
/// with threaded gemms: blocks in L2 would be so narrow that each would read all the
/// transformed weights again for little work. Measured against the flat path (Winograd time
/// / flat time): 256 channels on 14×14 1.46 in blocks, 0.95 whole; 512 on 7×7 2.95 in blocks,
/// 1.04 whole; whole images of 512 channels on 28×28 and 14×14 0.72 and 0.77.
fn in_blocks(g: &Geometry) -> bool {
    BLOCK_FLOATS / (Tile::F2.positions() * (g.c + g.o)) >= WHOLE_BELOW_TILES
        && image_tiles(g, Tile::F2) >= g.c
}

/// Whether a block of `count` tiles of whole images of `g` splits its gemms by output
/// channels ([`Block::products_by_channels`]) rather than each gemm over the threads: when a
/// position's transformed inputs (`C × count`) are small enough for every thread's gemms to
/// read them in place from L2, as each piece of channels reads them again.
fn by_output_channels(g: &Geometry, count: usize) -> bool {
    g.c * count * 4 <= crate::gemm::CacheSizes::detect().l2 / 8
}

/// Whether `g` runs with `tile` as groups of whole images: F(2×2, 3×3) outside
/// [`in_blocks`]; F(4×4, 3×3) always runs in blocks ([`suits_f4`]).
fn runs_whole(g: &Geometry, tile: Tile) -> bool {
    tile == Tile::F2 && !in_blocks(g)
}

/// Images per group when whole images run as one block: as many as keep its transformed
/// values within [`WHOLE_MAX_FLOATS`], at least one, at most the batch.
fn group_images(g: &Geometry, tile: Tile) -> usize {
    let per_image = tile.positions() * (g.c + g.o) * image_tiles(g, tile);
    (WHOLE_MAX_FLOATS / per_image.max(1)).clamp(1, g.n.max(1))
}

/// The blocks of tile rows of one image on `threads` threads: each small enough for its
/// transformed data to stay in L2 ([`BLOCK_FLOATS`]), and enough of them over the batch
/// for [`BLOCKS_PER_THREAD`] per thread.
fn row_blocks(g: &Geometry, tile: Tile, threads: usize) -> Vec<Range<usize>> {
    let (th, tw) = tiles(g, tile);
    let per_tile = tile.positions() * (g.c + g.o);
    let least = match tile {
        Tile::F2 => MIN_BLOCK_TILES,
        Tile::F4 => F4_MIN_BLOCK_TILES,
    };
    let rows_by_cache = (BLOCK_FLOATS / per_tile / tw)
        .max(least.div_ceil(tw))
        .clamp(1, th);
    let by_cache = th.div_ceil(rows_by_cache);
    let by_threads = (BLOCKS_PER_THREAD * threads).div_ceil(g.n);
    let blocks = by_cache.max(by_threads).clamp(1, th);
    (0..blocks)
        .map(|b| (b * th / blocks)..((b + 1) * th / blocks))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Runs the convolution `g` with `tile` (see [`variant`]) and `weights`, the transformed
/// weights packed as [`transformed_geometry`]'s: `output = relu?(conv + bias + beta·output)`.
/// `weight` (OIHW) computes directly the outputs of tiles whose transform is not finite, so
/// that NaN and infinities reach exactly the outputs whose windows hold them.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    isa: Isa,
    g: &Geometry,
    tile: Tile,
    input: &[f32],
    weight: &[f32],
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) -> Result<()> {
    let block = Block {
        isa,
        g,
        tile,
        input,
        weight,
        weights,
        bias,
        beta,
    };
    let (th, _) = tiles(g, tile);
    let out = SharedOut::new(output);
    if runs_whole(g, tile) {
        let group = group_images(g, tile);
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
    let blocks = row_blocks(g, tile, rayon::current_num_threads());
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

/// The `P` runs of `tw` values from `first` in each position's `count` values of `v`.
fn position_runs<const P: usize>(
    v: &mut [f32],
    count: usize,
    first: usize,
    tw: usize,
) -> [&mut [f32]; P] {
    let mut runs = v.chunks_exact_mut(count).map(|position| {
        let run: &mut [f32] = &mut position[first..][..tw];
        run
    });
    std::array::from_fn(|_| runs.next().expect("a block holds every position"))
}

/// Where F(2×2, 3×3)'s gathered input transform reads each tile's patch
/// ([`Block::gather_plan`]).
struct GatherPlan {
    /// Offsets from a channel's plane in image 0, per vector of 16 tiles, patch value and lane.
    index: Vec<i32>,
    /// Per vector and patch value, the lanes inside the input (the rest is padding).
    masks: Vec<u16>,
    /// One past the largest offset under a mask bit.
    reach: usize,
}

/// What the blocks of one convolution share.
struct Block<'a> {
    isa: Isa,
    g: &'a Geometry,
    tile: Tile,
    input: &'a [f32],
    /// The untransformed OIHW weights.
    weight: &'a [f32],
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    beta: f32,
}

impl Block<'_> {
    /// Tile rows `rows` (counted over the batch: row `ty` of image `n` is `n·th + ty`):
    /// transform, the gemms on this thread, transform back into `out` (whose output rows of
    /// these tile rows this block alone writes).
    fn run(&self, rows: Range<usize>, buffer: &mut Vec<f32>, out: SharedOut<'_>) -> Result<()> {
        let g = self.g;
        let positions = self.tile.positions();
        let count = rows.len() * tiles(g, self.tile).1;
        let (v, m) = split_buffer(buffer, g.c * positions * count, g.o * positions * count);
        self.transform_input(&rows, 0..g.c, self.gather_plan(&rows).as_ref(), v);
        self.gemms(v, m, count, Threading::Single)?;
        self.transform_output(&rows, 0..g.o, m, out);
        Ok(())
    }

    /// Tile rows `rows` (whole images) as one block: its transforms split over the threads by
    /// channels, its gemms each split by the gemm itself.
    fn run_whole(
        &self,
        rows: Range<usize>,
        buffer: &mut Vec<f32>,
        out: SharedOut<'_>,
    ) -> Result<()> {
        let g = self.g;
        let positions = self.tile.positions();
        let count = rows.len() * tiles(g, self.tile).1;
        let (v, m) = split_buffer(buffer, g.c * positions * count, g.o * positions * count);
        let piece = CHANNELS_PER_PIECE * positions * count;
        let gather = self.gather_plan(&rows);
        v.par_chunks_mut(piece).enumerate().for_each(|(p, v)| {
            let first = p * CHANNELS_PER_PIECE;
            let channels = first..(first + CHANNELS_PER_PIECE).min(g.c);
            self.transform_input(&rows, channels, gather.as_ref(), v);
        });
        if by_output_channels(g, count) {
            return self.products_by_channels(&rows, v, m, out);
        }
        self.gemms(v, m, count, Threading::CurrentPool)?;
        m.par_chunks(piece).enumerate().for_each(|(p, m)| {
            let first = p * CHANNELS_PER_PIECE;
            let channels = first..(first + CHANNELS_PER_PIECE).min(g.o);
            self.transform_output(&rows, channels, m, out);
        });
        Ok(())
    }

    /// The products and the output transform of a block of whole images, split over the
    /// threads by output channels: each piece of whole weight panels runs
    /// its rows of every position's gemm on one thread, then transforms its channels back
    /// while their products are in its cache. One hand-over (after the input transform)
    /// instead of one per gemm.
    fn products_by_channels(
        &self,
        rows: &Range<usize>,
        v: &[f32],
        m: &mut [f32],
        out: SharedOut<'_>,
    ) -> Result<()> {
        let g = self.g;
        let count = rows.len() * tiles(g, self.tile).1;
        let mr = self.weights.mr();
        let panel_macs = mr * g.c * count * self.tile.positions();
        let piece_panels = PIECE_MIN_MACS.div_ceil(panel_macs).max(1);
        let piece_rows = piece_panels * mr;
        let stride = self.tile.positions() * count;
        m[..g.o * stride]
            .par_chunks_mut(piece_rows * stride)
            .enumerate()
            .try_for_each(|(p, m)| {
                let first = p * piece_rows;
                let channels = first..(first + piece_rows).min(g.o);
                self.gemms_rows(v, m, count, channels.clone(), Threading::Single)?;
                self.transform_output(rows, channels, m, out);
                Ok(())
            })
    }

    /// `m[o][ξ][t] = Σ_c U[ξ][o][c]·v[c][ξ][t]` for the block's `count` tiles: one gemm per
    /// position.
    fn gemms(&self, v: &[f32], m: &mut [f32], count: usize, threading: Threading) -> Result<()> {
        self.gemms_rows(v, m, count, 0..self.g.o, threading)
    }

    /// [`Self::gemms`] for output channels `channels` only (their first a multiple of the
    /// weight panels' rows), `m` starting at the first.
    fn gemms_rows(
        &self,
        v: &[f32],
        m: &mut [f32],
        count: usize,
        channels: Range<usize>,
        threading: Threading,
    ) -> Result<()> {
        let g = self.g;
        let positions = self.tile.positions();
        let stride = positions * count;
        let view = |xi: usize| {
            self.weights
                .view(xi, channels.start)
                .expect("channel pieces start at a panel's first row")
        };
        let mut pre = view(0);
        for xi in 0..positions {
            // The next position's first panel comes from memory while this one computes.
            let next = (xi + 1 < positions).then(|| view(xi + 1));
            if let Some(next) = next {
                pre.then = next.panel(0, next.kc.min(g.c), 0);
            }
            let a = Panels { pre, depth: g.c };
            let b = MatRef::new(&v[xi * count..], g.c, count, stride, 1)?;
            let c = MatMut::new(&mut m[xi * count..], channels.len(), count, stride, 1)?;
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
            if let Some(next) = next {
                pre = next;
            }
        }
        Ok(())
    }

    /// `v[c][ξ][t] = (Bᵀ·d·B)[ξ]` for channels `channels` (`v` starts at the first) and every
    /// tile `t` of the block.
    fn transform_input(
        &self,
        rows: &Range<usize>,
        channels: Range<usize>,
        gather: Option<&GatherPlan>,
        v: &mut [f32],
    ) {
        let (g, tile) = (self.g, self.tile);
        let (th, tw) = tiles(g, tile);
        let (step, span) = (tile.out(), tile.span());
        let count = rows.len() * tw;
        let (top, left) = (g.pads[0], g.pads[1]);
        if let Some(plan) = gather {
            let plane = g.h * g.w;
            let plan = (&plan.index[..], &plan.masks[..], plan.reach);
            for (c, v) in channels.zip(v.chunks_exact_mut(tile.positions() * count)) {
                // SAFETY: the Winograd path runs only with AVX-512F selected, hence
                // available; the plan's indices lie below its reach (`gather_plan`).
                unsafe {
                    winograd_x86::input_gathered(&self.input[c * plane..], plan, v);
                }
            }
            return;
        }
        // The padded input rows under a run of tile rows of one image, each split into
        // `step` phases of its columns (phase j holds columns step·i + j; tile tx reads
        // phases at tx and tx + 1), so that the transform reads contiguously. Padded row
        // step·ty0 + k's phase j is line k·step + j.
        let half = tw + 1;
        let most_rows = rows.len().min(th);
        let mut split = vec![0.0f32; (step * most_rows + span - step) * step * half];
        for (c, v) in channels.zip(v.chunks_exact_mut(tile.positions() * count)) {
            let mut row = rows.start;
            while row < rows.end {
                let (n, ty0) = (row / th, row % th);
                let run = (th - ty0).min(rows.end - row);
                let plane = &self.input[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
                let lines = &mut split[..(step * run + span - step) * step * half];
                // SAFETY: the Winograd path runs only with AVX-512F selected, hence
                // available.
                unsafe {
                    winograd_x86::split_rows(
                        plane,
                        (g.h, g.w),
                        (top, left),
                        step * ty0,
                        step,
                        half,
                        lines,
                    );
                }
                for k in 0..run {
                    let first = (row - rows.start + k) * tw;
                    let line =
                        |r: usize, j: usize| &split[((step * k + r) * step + j) * half..][..half];
                    // SAFETY: as above.
                    unsafe {
                        match tile {
                            Tile::F2 => winograd_x86::input_row(
                                std::array::from_fn(|r| line(r, 0)),
                                std::array::from_fn(|r| line(r, 1)),
                                position_runs::<16>(v, count, first, tw),
                            ),
                            Tile::F4 => winograd_x86::input_row_4(
                                std::array::from_fn(|r| std::array::from_fn(|j| line(r, j))),
                                position_runs::<36>(v, count, first, tw),
                            ),
                        }
                    }
                }
                row += run;
            }
        }
    }

    /// Where F(2×2, 3×3)'s input transform gathers the patches of tile rows `rows` from, if
    /// it does ([`GATHER_BELOW_TILES`]): per vector of 16 tiles and patch value `(r, j)`, the
    /// 16 tiles' offsets from their channel's plane in image 0 and the mask of those inside
    /// the input (the rest is padding), as [`winograd_x86::input_gathered`] reads them.
    fn gather_plan(&self, rows: &Range<usize>) -> Option<GatherPlan> {
        let (g, tile) = (self.g, self.tile);
        let (th, tw) = tiles(g, tile);
        let image = g.c * g.h * g.w;
        let last = (rows.end.checked_sub(1)? / th + 1).checked_mul(image)?;
        if tile != Tile::F2 || tw >= GATHER_BELOW_TILES || i32::try_from(last).is_err() {
            return None;
        }
        let count = rows.len() * tw;
        let vectors = count.div_ceil(16);
        let mut index = vec![0i32; vectors * 16 * 16];
        let mut masks = vec![0u16; vectors * 16];
        let mut reach = 0;
        for t in 0..count {
            let (row, tx) = (rows.start + t / tw, t % tw);
            let (n, ty) = (row / th, row % th);
            let (vector, lane) = (t / 16, t % 16);
            for (rj, (r, j)) in (0..4).flat_map(|r| (0..4).map(move |j| (r, j))).enumerate() {
                let y = (2 * ty + r).checked_sub(g.pads[0]).filter(|&y| y < g.h);
                let x = (2 * tx + j).checked_sub(g.pads[1]).filter(|&x| x < g.w);
                if let (Some(y), Some(x)) = (y, x) {
                    let at = n * image + y * g.w + x;
                    index[(vector * 16 + rj) * 16 + lane] =
                        i32::try_from(at).expect("offsets below the last image's end fit");
                    masks[vector * 16 + rj] |= 1 << lane;
                    reach = reach.max(at + 1);
                }
            }
        }
        Some(GatherPlan {
            index,
            masks,
            reach,
        })
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
        let (g, tile) = (self.g, self.tile);
        let (th, tw) = tiles(g, tile);
        let step = tile.out();
        let positions = tile.positions();
        let count = rows.len() * tw;
        // Output row i of a tile row as its `step` column phases: line i·step + j.
        let mut lines = vec![0.0f32; step * step * tw];
        // F(4×4, 3×3): phases 0 and 2, then 1 and 3, interleaved (two columns of four each).
        let mut pairs = vec![0.0f32; if step == 4 { 4 * tw } else { 0 }];
        for (o, m) in channels.zip(m.chunks_exact(positions * count)) {
            let bias = self.bias.map_or(0.0, |b| b[o]);
            for (row_index, row) in rows.clone().enumerate() {
                let (n, ty) = (row / th, row % th);
                let first = row_index * tw;
                let run = |xi: usize| &m[xi * count + first..][..tw];
                let mut parts = lines.chunks_exact_mut(tw);
                let mut next = || parts.next().expect("a line per output row and phase");
                // SAFETY: as for the input transform.
                let finite = unsafe {
                    match tile {
                        Tile::F2 => winograd_x86::output_row(
                            std::array::from_fn(run),
                            std::array::from_fn(|_| next()),
                        ),
                        Tile::F4 => winograd_x86::output_row_4(
                            std::array::from_fn(run),
                            std::array::from_fn(|_| next()),
                        ),
                    }
                };
                if !finite {
                    self.direct_non_finite(n, o, ty, &mut lines);
                }
                for i in 0..step {
                    let oy = step * ty + i;
                    if oy >= g.oh {
                        break;
                    }
                    let start = ((n * g.o + o) * g.oh + oy) * g.ow;
                    // SAFETY: output row `oy` of channel `o` of image `n` belongs to this
                    // block's tile rows, which no other block holds.
                    let dst = unsafe { out.slice(start, g.ow) };
                    let phase = |j: usize| &lines[(i * step + j) * tw..][..tw];
                    let (relu, beta) = (g.relu, self.beta);
                    // SAFETY: as for the input transform.
                    unsafe {
                        if step == 2 {
                            winograd_x86::finish_row(dst, phase(0), phase(1), bias, beta, relu);
                        } else {
                            // Columns 4t + j: phases 0 and 2 zipped give the even columns,
                            // 1 and 3 the odd ones.
                            let (even, odd) = pairs.split_at_mut(2 * tw);
                            winograd_x86::finish_row(even, phase(0), phase(2), 0.0, 0.0, false);
                            winograd_x86::finish_row(odd, phase(1), phase(3), 0.0, 0.0, false);
                            winograd_x86::finish_row(dst, even, odd, bias, beta, relu);
                        }
                    }
                }
            }
        }
    }

    /// Replaces each value of `lines` (output rows of tile row `ty` of channel `o` of image
    /// `n`, laid out as in [`Self::transform_output`]) that is not finite by the direct sum
    /// of its window: a NaN or an infinity in a patch spreads over the whole transformed
    /// tile, but reaches only the outputs whose windows hold it.
    fn direct_non_finite(&self, n: usize, o: usize, ty: usize, lines: &mut [f32]) {
        let (g, step) = (self.g, self.tile.out());
        let tw = tiles(g, self.tile).1;
        for (index, value) in lines.iter_mut().enumerate() {
            let (line, tx) = (index / tw, index % tw);
            let (oy, ox) = (step * ty + line / step, step * tx + line % step);
            if value.is_finite() || oy >= g.oh || ox >= g.ow {
                continue;
            }
            *value = g.direct_output(self.input, self.weight, n, o, (oy, ox));
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
        for tile in [Tile::F2, Tile::F4] {
            let packed = PackedWeights::winograd(Isa::Avx512, &g, &weight, tile).unwrap();
            let rows = transform_weights(&weight, o, c, tile);
            for xi in [0, 5, tile.positions() - 1] {
                let panels = Panels {
                    pre: packed.view(xi, 0).unwrap(),
                    depth: c,
                };
                let matrix = MatRef::row_major(&rows[xi * o * c..][..o * c], o, c).unwrap();
                for (m0, mc, k0, kc, mr) in [(0, o, 0, c, 12), (3, 30, 2, 25, 4), (5, 7, 11, 5, 8)]
                {
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
    }

    #[test]
    fn variants_follow_the_measured_bounds() {
        for (input, out, want) in [
            ([1, 64, 56, 56], 64, Some(Tile::F4)),
            ([1, 32, 56, 56], 128, Some(Tile::F4)),
            ([1, 256, 56, 56], 256, Some(Tile::F4)),
            ([1, 128, 28, 28], 128, Some(Tile::F2)),
            ([1, 512, 28, 28], 512, Some(Tile::F2)),
            ([1, 16, 55, 55], 64, None),
            ([1, 32, 27, 27], 128, None),
            ([1, 48, 13, 13], 192, None),
            ([1, 64, 13, 13], 256, None),
            ([1, 64, 56, 56], 8, None),
        ] {
            let g = geometry(input, [out, input[1], 3, 3]);
            assert_eq!(variant(&g), want, "{input:?} -> {out}");
        }
        // Small planes: whole images together where 512-bit multiply-adds do not pay (a batch's
        // tiles, or one or two images split by output channels), one image at a time (too
        // few tiles) where they do.
        let narrow_fma = !crate::peak::wide_fma_pays();
        let grouped = narrow_fma.then_some(Tile::F2);
        let over_batch = if narrow_fma { Tile::F4 } else { Tile::F2 };
        for (input, out, want) in [
            ([8, 256, 14, 14], 256, grouped),
            ([8, 512, 7, 7], 512, grouped),
            ([4, 256, 14, 14], 256, grouped),
            ([2, 256, 14, 14], 256, grouped),
            ([1, 256, 14, 14], 256, grouped),
            ([1, 512, 7, 7], 512, grouped),
            ([1, 96, 14, 14], 64, grouped),
            ([1, 96, 14, 14], 48, None),
            // 28×28 planes: F(4×4) blocks across a batch of three or more.
            ([8, 128, 28, 28], 128, Some(over_batch)),
            ([3, 128, 28, 28], 128, Some(over_batch)),
            ([2, 128, 28, 28], 128, Some(Tile::F2)),
            ([8, 48, 28, 28], 96, None),
        ] {
            let g = geometry(input, [out, input[1], 3, 3]);
            assert_eq!(variant(&g), want, "{input:?} -> {out}");
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
            for tile in [Tile::F2, Tile::F4] {
                let (th, _) = tiles(&g, tile);
                let blocks = row_blocks(&g, tile, threads);
                assert_eq!(blocks.first().unwrap().start, 0);
                assert_eq!(blocks.last().unwrap().end, th);
                assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
    }
}
