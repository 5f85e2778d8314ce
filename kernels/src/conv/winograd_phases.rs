//! Winograd over stride phases: a 7×7 (or 8×8) convolution at stride 2 — the first layer of
//! ResNets, GoogLeNet and DenseNets — as F(3×3, 4×4) with 3.1× fewer multiplies.
//!
//! At stride 2, output `(y, x)` reads input rows `2y + r` and columns `2x + s`. Split the
//! input into its four stride phases (`(py, px)`: rows `2i + py`, columns `2j + px`) and the
//! kernel likewise (taps `(2a + py, 2b + px)`, zero past the kernel's edge): the convolution
//! is the sum over the phases of stride-1 convolutions with 4×4 kernels — one stride-1 4×4
//! convolution over `4·C` phase channels. F(3×3, 4×4) computes each 3×3 block of its outputs
//! (a *tile*) from the 6×6 patch of each phase channel under it, `Aᵀ·[Σ U ⊙ V]·A`, with the
//! six points (0, ±1, ±2, ∞) of F(4×4, 3×3): the input transform `V = Bᵀ·d·B` is the same,
//! `G` (6×4) and `Aᵀ` (3×6) are its counterparts for a 4-tap filter and 3 outputs. 36
//! multiplies per phase channel give 9 outputs: 48 per output over 3 input channels, against
//! the 147 of the direct 7×7 convolution. The sum over phase channels is, per position ξ, a
//! product `M[ξ] (O × tiles) = U[ξ] (O × 4C) · V[ξ] (4C × tiles)`.
//!
//! The work is cut into vectors of 16 tiles of one image (counted row by row, so a vector may
//! span tile rows), a few per parallel task. Each vector gathers its tiles' phase patches
//! straight from the NCHW input (no phase-split copy; padding is a gather mask) and
//! transforms them; then, for each group of four output channels and each of the task's
//! vectors, one kernel forms the 36 products of depth `4C` in registers and applies the
//! output transform to them there, and the outputs are interleaved into the output rows with
//! the bias, the residual and the ReLU. The products never reach memory: run as 36 gemms of
//! depth 12 over blocks in L2, their round trip cost more than the multiplies they saved.
//! Groups outside, vectors inside: a thread writes 12 output rows at a time, which run on
//! from vector to vector, instead of 192 short pieces (for 64 channels) that the hardware
//! prefetchers could not follow into a cold output.
//!
//! The transforms scale values by up to 5 and 8, as F(4×4, 3×3)'s do, within the tests'
//! bound (weights are transformed in f64 and rounded once). A NaN or an infinity in a patch
//! spreads over the whole transformed tile: outputs whose transform is not finite are
//! computed directly instead. Patches leave out the input only a 7×7 kernel's zero phase
//! taps would read, so a tile's values depend only on the input its outputs' windows read:
//! convolving a band of whole tile rows gives the same bits as the whole image
//! ([`row_alignment`]).

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::params::Geometry;
use super::prepack::PackedWeights;
use super::shared::SharedOut;
use super::winograd_phases_x86::{
    self as x86, CHANNEL_VALUES, GROUP_OUTPUTS, LANES, PHASES, POSITIONS, TileVector,
};
use crate::Isa;

pub(super) use super::winograd_phases_x86::GROUP;

/// Outputs along each side of a tile.
const OUT: usize = 3;
/// Input rows (and columns) between neighbouring tiles' patches: a tile's outputs at stride 2.
const TILE_STEP: usize = 2 * OUT;
/// Taps of a phase kernel along each side.
const PHASE_TAPS: usize = 4;
/// Fewest output channels. Measured against the lanes path (two threads, alternating, time
/// of this path / lanes path): 3 → 16 on 224×224 0.94.
const MIN_OUT_CHANNELS: usize = 16;
/// Most input channels (each four phase channels of depth): the most measured. Against the
/// lanes path (up to 15 channels) or the flat path (more), 7×7 at stride 2 into 64 channels:
/// 3 channels on 224×224 0.75 (0.59 on 30×30, 0.85 on 56×56), 8 on 112×112 0.71, 16 0.51;
/// 24 on 56×56 0.58, 32 0.57, 64 0.53.
const MAX_CHANNELS: usize = 64;
/// Most vectors of sixteen tiles per parallel task (their transformed inputs, 9 KiB per input
/// channel each, stay in L2 while every group of output channels runs over them). Against 4,
/// ResNet-50's stem and pool in the model ran 0.96× the time, the stem alone the same.
const TASK_VECTORS: usize = 8;
/// Largest buffer (in values) a thread keeps for its next call: 4 MiB (a task of the stem
/// holds 216 KiB).
const KEEP_BUFFER_MAX: usize = 1 << 20;
/// Tasks per thread at least, where the vectors allow (for load balance on small planes).
const TASKS_PER_THREAD: usize = 4;

/// The rows of G, F(3×3, 4×4)'s weight transform (`U = G·g·Gᵀ`): `s·(1, p, p², p³)` for the
/// points p = 0, 1, -1, 2, -2 with F(4×4, 3×3)'s scales `s`, and `(0, 0, 0, 1)` for ∞.
const G_ROWS: [[f64; PHASE_TAPS]; 6] = [
    [0.25, 0.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0],
    [0.0, 0.0, 0.0, 1.0],
];

thread_local! {
    /// A task's transformed inputs, kept for this thread's next call.
    static INPUT_BUFFER: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether the stride-phase Winograd path runs `g`: a 7×7 or 8×8 kernel (4×4 phase
/// kernels) at stride 2 and dilation 1, one group, at least [`MIN_OUT_CHANNELS`] output
/// channels and at most [`MAX_CHANNELS`] input channels, and a plane whose gather offsets
/// fit in 32 bits.
pub(super) fn suits(g: &Geometry) -> bool {
    g.sh == 2
        && g.sw == 2
        && g.dh == 1
        && g.dw == 1
        && g.groups == 1
        && matches!(g.kh, 7 | 8)
        && matches!(g.kw, 7 | 8)
        && g.og >= MIN_OUT_CHANNELS
        && g.cg <= MAX_CHANNELS
        && offsets_fit(g)
}

/// Whether every offset a gather forms (from a tile's patch corner, which may lie in the
/// padding, to any of its 12×12 values) fits in an `i32`.
fn offsets_fit(g: &Geometry) -> bool {
    let (th, tw) = tiles(g);
    let (h, w) = (g.h as i128, g.w as i128);
    let lowest = -(g.pads[0] as i128) * w - g.pads[1] as i128;
    let y_most = (TILE_STEP * th + x86::REACH) as i128 - g.pads[0] as i128;
    let x_most = (TILE_STEP * tw + x86::REACH) as i128 - g.pads[1] as i128;
    let highest = y_most * w + x_most;
    let range = i128::from(i32::MIN)..=i128::from(i32::MAX);
    range.contains(&lowest) && range.contains(&highest) && range.contains(&(h * w))
}

/// The output rows a band of `g`'s output (convolved apart, as `conv2d_max_pool` does) should
/// start and end on (unless it ends with the image) to compute the same bits as the whole
/// image: whole tile rows on this path, any row elsewhere.
pub(super) fn row_alignment(isa: Isa, g: &Geometry) -> usize {
    if isa == Isa::Avx512 && suits(g) {
        OUT
    } else {
        1
    }
}

/// Tiles along each axis.
fn tiles(g: &Geometry) -> (usize, usize) {
    (g.oh.div_ceil(OUT), g.ow.div_ceil(OUT))
}

/// The geometry whose "weights" are the transformed ones: one group per position, each an
/// `O × 4C` matrix, so that they pack into the gemm's panels as a pointwise convolution's.
pub(super) fn transformed_geometry(g: &Geometry) -> Geometry {
    Geometry::matrices(POSITIONS, g.o, PHASES * g.c)
}

/// `U[ξ][o][4c + 2py + px] = (G·g·Gᵀ)[ξ]` for the phase `(py, px)` kernel `g` of channel `c`
/// of OIHW weights `weight` (`g[a][b]` is tap `(2a + py, 2b + px)`, zero past the kernel),
/// position-major, computed in f64 and rounded once.
pub(super) fn transform_weights(weight: &[f32], g: &Geometry) -> Vec<f32> {
    let depth = PHASES * g.c;
    let mut u = vec![0.0f32; POSITIONS * g.o * depth];
    let taps = g.kh * g.kw;
    for (index, kernel) in weight.chunks_exact(taps).take(g.o * g.c).enumerate() {
        let (o, c) = (index / g.c, index % g.c);
        for (phase, (py, px)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
            let tap = |a: usize, b: usize| {
                let (r, s) = (2 * a + py, 2 * b + px);
                if r < g.kh && s < g.kw {
                    f64::from(kernel[r * g.kw + s])
                } else {
                    0.0
                }
            };
            // G·g (6 × 4), then (G·g)·Gᵀ (6 × 6).
            let gg: Vec<[f64; PHASE_TAPS]> = G_ROWS
                .iter()
                .map(|row| {
                    std::array::from_fn(|b| (0..PHASE_TAPS).map(|a| row[a] * tap(a, b)).sum())
                })
                .collect();
            for (a, left) in gg.iter().enumerate() {
                for (b, row) in G_ROWS.iter().enumerate() {
                    let value: f64 = (0..PHASE_TAPS).map(|s| left[s] * row[s]).sum();
                    u[((a * 6 + b) * g.o + o) * depth + PHASES * c + phase] = value as f32;
                }
            }
        }
    }
    u
}

/// Runs the convolution `g` (see [`suits`]) with `weights`, the transformed weights packed as
/// [`PackedWeights::winograd_phases`] packs them: `output = relu?(conv + bias + beta·output)`.
/// `weight` (OIHW) computes directly the outputs of tiles whose transform is not finite.
pub(super) fn run(
    g: &Geometry,
    input: &[f32],
    weight: &[f32],
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    output: &mut [f32],
    beta: f32,
) {
    let (values, per_position) = weights.groups_values();
    assert!(
        weights.mr() == GROUP && per_position >= g.o.div_ceil(GROUP) * GROUP * PHASES * g.c,
        "stride-phase weights need panels of {GROUP} channels"
    );
    let convolution = Convolution {
        g,
        input,
        weight,
        values,
        per_position,
        bias,
        beta,
    };
    let (th, tw) = tiles(g);
    let vectors = (th * tw).div_ceil(LANES);
    let threads = rayon::current_num_threads();
    let per_task = (g.n * vectors / (TASKS_PER_THREAD * threads)).clamp(1, TASK_VECTORS);
    let jobs: Vec<(usize, Range<usize>)> = (0..g.n)
        .flat_map(|n| {
            (0..vectors)
                .step_by(per_task)
                .map(move |first| (n, first..(first + per_task).min(vectors)))
        })
        .collect();
    let out = SharedOut::new(output);
    let run_job = |(n, span): &(usize, Range<usize>)| {
        let mut buffer = INPUT_BUFFER.take();
        buffer.resize(per_task * g.c * CHANNEL_VALUES, 0.0);
        convolution.task(*n, span.clone(), &mut buffer, out);
        if buffer.capacity() <= KEEP_BUFFER_MAX {
            INPUT_BUFFER.set(buffer);
        }
    };
    if jobs.len() > 1 && threads > 1 {
        jobs.par_iter().for_each(run_job);
    } else {
        jobs.iter().for_each(run_job);
    }
}

/// Where a vector's tiles lie: the first, how many there are, and their runs within one tile
/// row (first lane, lanes, tile row, first tile column; at most one per lane).
struct VectorPlan {
    first: usize,
    live: usize,
    runs: [(usize, usize, usize, usize); LANES],
    count: usize,
}

/// A plan of no tiles.
const EMPTY_PLAN: VectorPlan = VectorPlan {
    first: 0,
    live: 0,
    runs: [(0, 0, 0, 0); LANES],
    count: 0,
};

impl VectorPlan {
    /// The runs of lanes within one tile row.
    fn runs(&self) -> &[(usize, usize, usize, usize)] {
        &self.runs[..self.count]
    }
}

/// What the vectors of tiles of one convolution share.
struct Convolution<'a> {
    g: &'a Geometry,
    input: &'a [f32],
    /// The untransformed OIHW weights.
    weight: &'a [f32],
    /// The transformed weights: position ξ's panels from `ξ·per_position`, each [`GROUP`]
    /// channels × `4C` phase channels.
    values: &'a [f32],
    per_position: usize,
    bias: Option<&'a [f32]>,
    beta: f32,
}

impl Convolution<'_> {
    /// Vectors `span` of sixteen tiles (counted row by row) of image `n`: their input
    /// transforms into `v`, then per group of output channels, vector by vector, the products
    /// and output transform and the outputs into `out` (which no other task writes). A group's
    /// outputs of the task's vectors are written one after the other, so that the rows a
    /// thread writes at a time are few (12, not 192 for 64 channels) and run on.
    fn task(&self, n: usize, span: Range<usize>, v: &mut [f32], out: SharedOut<'_>) {
        let g = self.g;
        let per_vector = g.c * CHANNEL_VALUES;
        let mut plans = [EMPTY_PLAN; TASK_VECTORS];
        let count = span.len();
        for ((plan, vector), v) in plans
            .iter_mut()
            .zip(span)
            .zip(v.chunks_exact_mut(per_vector))
        {
            *plan = self.transform_input(n, vector, v);
        }
        let depth = PHASES * g.c;
        let mut y = [0.0f32; GROUP_OUTPUTS];
        for group in 0..g.o.div_ceil(GROUP) {
            let u = &self.values[group * GROUP * depth..];
            for (plan, v) in plans[..count].iter().zip(v.chunks_exact(per_vector)) {
                // SAFETY: this path runs only with AVX-512F selected, hence available.
                let finite = unsafe { x86::products_out(v, depth, u, self.per_position, &mut y) };
                let channels = (group * GROUP..g.o).take(GROUP);
                for (o, y) in channels.zip(y.chunks_exact_mut(9 * LANES)) {
                    if !finite {
                        self.direct_non_finite(n, o, plan.first, plan.live, y);
                    }
                    self.finish(n, o, plan.runs(), y, out);
                }
            }
        }
    }

    /// The input transform of vector `vector` of image `n` into `v`, and where its tiles lie.
    fn transform_input(&self, n: usize, vector: usize, v: &mut [f32]) -> VectorPlan {
        let g = self.g;
        let (th, tw) = tiles(g);
        let first = vector * LANES;
        let live = (th * tw - first).min(LANES);
        let mut corners = [(0isize, 0isize); LANES];
        for (corner, t) in corners.iter_mut().zip(first..first + live) {
            let (ty, tx) = (t / tw, t % tw);
            *corner = (
                (TILE_STEP * ty) as isize - g.pads[0] as isize,
                (TILE_STEP * tx) as isize - g.pads[1] as isize,
            );
        }
        let tiles = TileVector::new(&corners[..live], (g.h, g.w), (g.kh, g.kw));
        let plane = g.h * g.w;
        for (c, v) in v.chunks_exact_mut(CHANNEL_VALUES).take(g.c).enumerate() {
            let src = &self.input[(n * g.c + c) * plane..][..plane];
            let v: &mut [f32; CHANNEL_VALUES] = v.try_into().expect("a channel's values");
            // SAFETY: this path runs only with AVX-512F selected, hence available; the
            // vector's masks keep every gathered offset inside the plane (`TileVector::new`).
            unsafe { x86::input_vector(src, g.w, &tiles, v) };
        }
        let mut plan = VectorPlan {
            first,
            live,
            ..EMPTY_PLAN
        };
        let mut lane = 0;
        while lane < live {
            let t = first + lane;
            let (ty, tx) = (t / tw, t % tw);
            let len = (tw - tx).min(live - lane);
            plan.runs[plan.count] = (lane, len, ty, tx);
            plan.count += 1;
            lane += len;
        }
        plan
    }

    /// Writes channel `o`'s outputs of a vector of tiles, `y[(3i + j)·16 + lane]`, into its
    /// output rows with the bias, `beta` times the old output and the ReLU.
    fn finish(
        &self,
        n: usize,
        o: usize,
        runs: &[(usize, usize, usize, usize)],
        y: &[f32],
        out: SharedOut<'_>,
    ) {
        let g = self.g;
        let bias = self.bias.map_or(0.0, |b| b[o]);
        for &(lane, len, ty, tx) in runs {
            let x0 = OUT * tx;
            let width = (OUT * (tx + len)).min(g.ow) - x0;
            for i in 0..OUT {
                let oy = OUT * ty + i;
                if oy >= g.oh {
                    break;
                }
                let start = ((n * g.o + o) * g.oh + oy) * g.ow + x0;
                // SAFETY: these columns of output row `oy` of channel `o` of image `n` belong
                // to this vector's tiles, which no other vector holds.
                let dst = unsafe { out.slice(start, width) };
                let phase = |j: usize| &y[(OUT * i + j) * LANES + lane..][..len];
                // SAFETY: this path runs only with AVX-512F selected, hence available.
                unsafe {
                    x86::finish_row(dst, [phase(0), phase(1), phase(2)], bias, self.beta, g.relu);
                }
            }
        }
    }

    /// Replaces each value of `y` (channel `o`'s outputs of the `live` tiles from `first` of
    /// image `n`, `y[(3i + j)·16 + lane]`) that is not finite by the direct sum of its window.
    fn direct_non_finite(&self, n: usize, o: usize, first: usize, live: usize, y: &mut [f32]) {
        let g = self.g;
        let tw = tiles(g).1;
        for (index, value) in y.iter_mut().enumerate() {
            let (line, lane) = (index / LANES, index % LANES);
            let t = first + lane;
            let (oy, ox) = (OUT * (t / tw) + line / OUT, OUT * (t % tw) + line % OUT);
            if lane >= live || value.is_finite() || oy >= g.oh || ox >= g.ow {
                continue;
            }
            *value = g.direct_output(self.input, self.weight, n, o, (oy, ox));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F(4×4, 3×3)'s input transform, which the kernels apply (`winograd_x86::input_column_4`).
    const B_T: [[f64; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    /// F(3×3, 4×4)'s output transform (`winograd_phases_x86::output_column_3`).
    const A_T: [[f64; 6]; 3] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 1.0],
    ];

    #[test]
    fn transforms_compute_three_outputs_of_a_four_tap_correlation() {
        // Aᵀ·[(G·g) ⊙ (Bᵀ·d)] = (Σ_k g[k]·d[i + k])_i for i < 3, on uneven values.
        let d: [f64; 6] = [0.7, -1.3, 2.1, 0.4, -0.9, 1.6];
        let g: [f64; 4] = [1.1, -0.6, 0.35, 2.2];
        let gg: Vec<f64> = G_ROWS
            .iter()
            .map(|row| row.iter().zip(&g).map(|(r, v)| r * v).sum())
            .collect();
        let bd: Vec<f64> = B_T
            .iter()
            .map(|row| row.iter().zip(&d).map(|(r, v)| r * v).sum())
            .collect();
        for (i, row) in A_T.iter().enumerate() {
            let got: f64 = (0..6).map(|xi| row[xi] * gg[xi] * bd[xi]).sum();
            let want: f64 = (0..4).map(|k| g[k] * d[i + k]).sum();
            assert!(
                (got - want).abs() < 1e-12,
                "output {i}: {got} against {want}"
            );
        }
    }

    #[test]
    fn suits_stems_only() {
        let geometry = |input: [usize; 4], weight: [usize; 4], stride: usize| {
            let params = crate::conv::Conv2dParams {
                stride: [stride, stride],
                pads: [3; 4],
                ..Default::default()
            };
            Geometry::new(input, weight, &params).unwrap()
        };
        assert!(suits(&geometry([1, 3, 224, 224], [64, 3, 7, 7], 2)));
        assert!(suits(&geometry([1, 64, 56, 56], [16, 64, 8, 7], 2)));
        assert!(!suits(&geometry([1, 3, 224, 224], [15, 3, 7, 7], 2)));
        assert!(!suits(&geometry([1, 65, 56, 56], [64, 65, 7, 7], 2)));
        assert!(!suits(&geometry([1, 3, 224, 224], [64, 3, 7, 7], 1)));
        assert!(!suits(&geometry([1, 3, 224, 224], [64, 3, 5, 5], 2)));
    }
}
