//! conv2d against a naive float64 direct convolution on seeded random data, on every ISA here.

use accelmesh_kernels::conv::{Conv2dParams, conv2d, conv2d_max_pool, conv2d_output_dims};
use accelmesh_kernels::pool::{Pool2dParams, max_pool2d_with_isa, pool2d_output_dims};
use accelmesh_kernels::{Element, Isa, KernelError};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative tolerance on |got - exact| / (Σ|w·x| + |bias|).
const REL_TOL: f64 = 2e-5;

/// One convolution to run: dims, options, and whether it has a bias.
#[derive(Debug, Clone)]
struct Case {
    input: [usize; 4],
    weight: [usize; 4],
    params: Conv2dParams,
    bias: bool,
}

impl Case {
    /// Output dims computed here, independently of the library.
    fn output_dims(&self) -> Option<[usize; 4]> {
        let [n, _, h, w] = self.input;
        let [o, _, kh, kw] = self.weight;
        let p = &self.params;
        let extent = |size: usize, lo: usize, hi: usize, k: usize, s: usize, d: usize| {
            let padded = size + lo + hi;
            let eff = (k - 1) * d + 1;
            (padded >= eff).then(|| (padded - eff) / s + 1)
        };
        let oh = extent(h, p.pads[0], p.pads[2], kh, p.stride[0], p.dilation[0])?;
        let ow = extent(w, p.pads[1], p.pads[3], kw, p.stride[1], p.dilation[1])?;
        Some([n, o, oh, ow])
    }

    fn macs(&self) -> usize {
        let [n, o, oh, ow] = self.output_dims().unwrap();
        let [_, cg, kh, kw] = self.weight;
        n * o * oh * ow * cg * kh * kw
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        input: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        dilation: [usize; 2],
        pads: [usize; 4],
        groups: usize,
        relu: bool,
        bias: bool,
    ) -> Case {
        Case {
            input,
            weight,
            params: Conv2dParams {
                stride,
                dilation,
                pads,
                groups,
                relu,
            },
            bias,
        }
    }
}

fn random_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The exact result (relu applied, NaN kept) and the error scale of every output.
fn reference(case: &Case, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> (Vec<f64>, Vec<f64>) {
    let [n, c, h, wd] = case.input;
    let [o, cg, kh, kw] = case.weight;
    let [_, _, oh, ow] = case.output_dims().unwrap();
    let p = &case.params;
    let og = o / p.groups;
    let mut exact = vec![0.0; n * o * oh * ow];
    let mut scale = vec![0.0; n * o * oh * ow];
    for img in 0..n {
        for oc in 0..o {
            let group = oc / og;
            let b = bias.map_or(0.0, |b| b[oc] as f64);
            for y in 0..oh {
                for xo in 0..ow {
                    let (mut sum, mut mag) = (b, b.abs() + 1e-30);
                    for ci in 0..cg {
                        let ch = group * cg + ci;
                        for r in 0..kh {
                            let ih =
                                (y * p.stride[0] + r * p.dilation[0]) as isize - p.pads[0] as isize;
                            if ih < 0 || ih as usize >= h {
                                continue;
                            }
                            for s in 0..kw {
                                let iw = (xo * p.stride[1] + s * p.dilation[1]) as isize
                                    - p.pads[1] as isize;
                                if iw < 0 || iw as usize >= wd {
                                    continue;
                                }
                                let xv = x[((img * c + ch) * h + ih as usize) * wd + iw as usize];
                                let wv = w[((oc * cg + ci) * kh + r) * kw + s];
                                let prod = xv as f64 * wv as f64;
                                sum += prod;
                                mag += prod.abs();
                            }
                        }
                    }
                    if p.relu && sum < 0.0 {
                        sum = 0.0;
                    }
                    let at = ((img * o + oc) * oh + y) * ow + xo;
                    exact[at] = sum;
                    scale[at] = mag;
                }
            }
        }
    }
    (exact, scale)
}

fn rounded<T: Element>(values: &[f32]) -> (Vec<T>, Vec<f32>) {
    let typed: Vec<T> = values.iter().map(|&v| T::from_f32(v)).collect();
    let seen = typed.iter().map(|v| v.to_f32()).collect();
    (typed, seen)
}

/// Runs `case` with element type T on every available ISA and compares with float64.
/// `poison` sets one input element to NaN first.
fn check_case<T: Element>(rng: &mut ChaCha8Rng, case: &Case, poison: Option<usize>) {
    let [n, c, h, w] = case.input;
    let mut x = random_vec(rng, n * c * h * w);
    if let Some(at) = poison {
        x[at] = f32::NAN;
    }
    let wt = random_vec(rng, case.weight.iter().product());
    let bias = case.bias.then(|| random_vec(rng, case.weight[0]));
    let (x_t, x_seen) = rounded::<T>(&x);
    let (w_t, w_seen) = rounded::<T>(&wt);
    let (exact, scale) = reference(case, &x_seen, &w_seen, bias.as_deref());
    let dims = case.output_dims().unwrap();
    assert_eq!(
        conv2d_output_dims(case.input, case.weight, &case.params).unwrap(),
        dims
    );
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; exact.len()];
        conv2d(
            isa,
            &x_t,
            case.input,
            &w_t,
            case.weight,
            bias.as_deref(),
            &case.params,
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{isa} {case:?}: {e}"));
        for (i, ((&got, &want), &mag)) in out.iter().zip(&exact).zip(&scale).enumerate() {
            if want.is_nan() {
                assert!(
                    got.is_nan(),
                    "{isa} {} {case:?}: out[{i}] = {got}, want NaN",
                    T::NAME
                );
                continue;
            }
            let err = (got as f64 - want).abs() / mag;
            assert!(
                err <= REL_TOL,
                "{isa} {} {case:?}: out[{i}] = {got}, want {want} (rel {err:e})",
                T::NAME
            );
        }
    }
}

/// A random valid configuration of at most `max_macs` multiply-adds.
fn random_case(rng: &mut ChaCha8Rng, max_macs: usize) -> Case {
    const SIZES: [usize; 4] = [1, 7, 17, 33];
    loop {
        let (c, o, groups) = match rng.random_range(0..3) {
            0 => (rng.random_range(1..=8), rng.random_range(1..=12), 1),
            1 => (2 * rng.random_range(1..=4), 2 * rng.random_range(1..=6), 2),
            _ => {
                let c = rng.random_range(1..=8);
                let multiplier = [1, 1, 2, 5][rng.random_range(0..4)];
                (c, c * multiplier, c)
            }
        };
        let mut pick = |range: std::ops::RangeInclusive<usize>| rng.random_range(range);
        let case = Case::new(
            [pick(1..=3), c, SIZES[pick(0..=3)], SIZES[pick(0..=3)]],
            [o, c / groups, pick(1..=7), pick(1..=7)],
            [pick(1..=3), pick(1..=3)],
            [pick(1..=2), pick(1..=2)],
            [pick(0..=3), pick(0..=3), pick(0..=3), pick(0..=3)],
            groups,
            pick(0..=1) == 1,
            pick(0..=2) != 0,
        );
        if case.output_dims().is_some() && case.macs() <= max_macs {
            return case;
        }
    }
}

#[test]
fn random_configurations_match_f64_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc0f2d);
    for _ in 0..300 {
        let case = random_case(&mut rng, 400_000);
        check_case::<f32>(&mut rng, &case, None);
    }
}

#[test]
fn each_path_and_blocking_edge() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let cases = [
        // Depth 576 > one packed depth block, 3 output rows' worth of columns per panel edge.
        Case::new(
            [1, 64, 12, 13],
            [40, 64, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        // 16+ channels at stride 1 (AVX-512 flat tiles) over 667 outputs: two tasks of outputs
        // per image, two images, strips of unequal width.
        Case::new(
            [2, 32, 23, 29],
            [40, 32, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        // 1089 columns: several packed column blocks; large enough for the parallel gemm.
        Case::new(
            [1, 8, 33, 33],
            [70, 8, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            false,
            true,
        ),
        // Pointwise (the image is B as is), batch 2, with and without groups.
        Case::new(
            [2, 24, 17, 7],
            [20, 24, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            1,
            true,
            true,
        ),
        Case::new(
            [2, 24, 17, 7],
            [20, 12, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            2,
            false,
            false,
        ),
        // 1×1 with stride 2: through the im2col packer.
        Case::new(
            [1, 16, 17, 17],
            [8, 16, 1, 1],
            [2, 2],
            [1, 1],
            [0; 4],
            1,
            false,
            true,
        ),
        // ResNet stem shape, smaller.
        Case::new(
            [1, 3, 33, 33],
            [16, 3, 7, 7],
            [2, 2],
            [1, 1],
            [3, 3, 3, 3],
            1,
            true,
            true,
        ),
        // Depthwise, multiplier 1 and 2 (direct), 6 (gemm with one channel per group).
        Case::new(
            [2, 16, 17, 33],
            [16, 1, 3, 3],
            [2, 2],
            [1, 1],
            [1, 1, 1, 1],
            16,
            true,
            true,
        ),
        Case::new(
            [1, 5, 33, 17],
            [10, 1, 5, 3],
            [1, 1],
            [2, 1],
            [3, 0, 1, 2],
            5,
            false,
            true,
        ),
        Case::new(
            [1, 4, 17, 17],
            [24, 1, 3, 3],
            [1, 2],
            [1, 1],
            [1, 1, 1, 1],
            4,
            true,
            false,
        ),
        // Wide depthwise rows: the direct kernel's unmasked multi-register interior.
        Case::new(
            [1, 3, 5, 150],
            [3, 1, 3, 3],
            [1, 1],
            [1, 1],
            [1, 2, 1, 0],
            3,
            true,
            true,
        ),
        Case::new(
            [1, 2, 4, 200],
            [4, 1, 3, 5],
            [1, 2],
            [1, 2],
            [0, 3, 2, 1],
            2,
            false,
            true,
        ),
        Case::new(
            [1, 2, 3, 300],
            [2, 1, 2, 3],
            [1, 3],
            [2, 1],
            [1, 1, 0, 2],
            2,
            true,
            false,
        ),
        // One input channel, no groups: the direct kernel.
        Case::new(
            [3, 1, 17, 33],
            [3, 1, 5, 5],
            [1, 1],
            [1, 1],
            [2, 2, 2, 2],
            1,
            false,
            true,
        ),
        // Kernel as large as the padded input: one output.
        Case::new(
            [1, 3, 7, 1],
            [5, 3, 7, 3],
            [1, 1],
            [1, 1],
            [0, 1, 0, 1],
            1,
            false,
            true,
        ),
        // Many groups, batch 3 (parallel over images and groups).
        Case::new(
            [3, 32, 17, 17],
            [32, 4, 3, 3],
            [1, 1],
            [1, 2],
            [2, 1, 0, 3],
            8,
            true,
            true,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
    }
}

#[test]
fn few_input_channels_with_deep_kernels() {
    // First layers of image networks and their kin (on AVX-512, the lanes path): few input
    // channels per group, a depth of 64 or more, output rows of 16 and wider, so that vectors
    // of outputs wrap from one output row into the next past the padding columns.
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let cases = [
        // A 7×7 stride-2 stem, 64 channels (five panels of 12 and one of 4).
        Case::new(
            [1, 3, 45, 47],
            [64, 3, 7, 7],
            [2, 2],
            [1, 1],
            [3; 4],
            1,
            true,
            true,
        ),
        // Output rows of 48 (three whole vectors), covered row by row: a tile of two vectors
        // and one of one per row, 17 channels (a panel of 5).
        Case::new(
            [1, 3, 96, 95],
            [17, 3, 7, 7],
            [2, 2],
            [1, 1],
            [3; 4],
            1,
            true,
            true,
        ),
        // 11×11 at stride 4, asymmetric pads, 13 channels, batch 2; outputs exactly 16 wide.
        Case::new(
            [2, 3, 71, 70],
            [13, 3, 11, 11],
            [4, 4],
            [1, 1],
            [2, 1, 3, 0],
            1,
            false,
            true,
        ),
        // Two groups of two channels, a dilated 5×7 kernel, no bias.
        Case::new(
            [1, 4, 20, 40],
            [10, 2, 5, 7],
            [1, 1],
            [2, 1],
            [1, 2, 0, 3],
            2,
            true,
            false,
        ),
        // Depthwise with a channel multiplier of 8 (beyond the direct kernel's).
        Case::new(
            [1, 2, 17, 33],
            [16, 1, 9, 9],
            [1, 1],
            [1, 1],
            [0; 4],
            2,
            false,
            true,
        ),
        // Outputs 16 wide in a grid 20 wide; 5 output channels.
        Case::new(
            [1, 3, 18, 18],
            [5, 3, 5, 5],
            [1, 1],
            [1, 1],
            [1; 4],
            1,
            true,
            true,
        ),
        // Strides differing per axis.
        Case::new(
            [1, 2, 30, 61],
            [7, 2, 6, 6],
            [3, 2],
            [1, 1],
            [2; 4],
            1,
            false,
            true,
        ),
        // Up to 31 channels on rows of 40 outputs and more (stride 1, one group): 16 → 64
        // 3×3 on rows of 41, and 31 → 17 (one panel of 12 and one of 5) with asymmetric pads.
        Case::new(
            [1, 16, 9, 41],
            [64, 16, 3, 3],
            [1, 1],
            [1, 1],
            [1; 4],
            1,
            true,
            true,
        ),
        Case::new(
            [2, 31, 6, 45],
            [17, 31, 3, 3],
            [1, 1],
            [1, 1],
            [0, 2, 1, 0],
            1,
            false,
            true,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
        let [n, c, h, w] = case.input;
        check_case::<f32>(&mut rng, case, Some(n * c * h * w / 2 + w / 3));
    }
}

#[test]
fn winograd_tiles_odd_planes_and_pads() {
    // 3×3 stride-1 layers with at least 64 input channels and as many tiles (2×2 outputs) per
    // image (on AVX-512, Winograd F(2×2, 3×3)): odd output rows and columns (a last tile half
    // outside), asymmetric padding, odd channel counts, several images, and planes cut into
    // several blocks of tile rows run in parallel.
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let cases = [
        Case::new(
            [1, 64, 17, 33],
            [16, 64, 3, 3],
            [1, 1],
            [1, 1],
            [0, 2, 1, 0],
            1,
            true,
            true,
        ),
        Case::new(
            [3, 65, 19, 17],
            [33, 65, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            false,
            true,
        ),
        Case::new(
            [1, 67, 25, 27],
            [17, 67, 3, 3],
            [1, 1],
            [1, 1],
            [2, 0, 0, 2],
            1,
            true,
            false,
        ),
        Case::new(
            [2, 64, 34, 30],
            [48, 64, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        // Small planes in a batch, whole images grouped (where 512-bit multiply-adds do not
        // pay; `ACCELMESH_WIDE_FMA=0` forces it): 8 × 25 and 9 × 16 tiles in one block, the
        // last tile row and column half outside.
        Case::new(
            [8, 64, 9, 9],
            [33, 64, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        Case::new(
            [9, 66, 7, 7],
            [17, 66, 3, 3],
            [1, 1],
            [1, 1],
            [1, 0, 1, 2],
            1,
            false,
            true,
        ),
        // Small planes of one or two images (where 512-bit multiply-adds do not pay): whole
        // images split by output channels, patches gathered; 7 × 7 and 7 × 6 tiles, 4 × 5
        // over two images with asymmetric padding.
        Case::new(
            [1, 96, 14, 14],
            [64, 96, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        Case::new(
            [1, 128, 13, 11],
            [70, 128, 3, 3],
            [1, 1],
            [1, 1],
            [1, 0, 0, 2],
            1,
            false,
            true,
        ),
        Case::new(
            [2, 100, 7, 9],
            [65, 100, 3, 3],
            [1, 1],
            [1, 1],
            [2, 1, 0, 0],
            1,
            true,
            false,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
        let [n, c, h, w] = case.input;
        check_case::<f32>(&mut rng, case, Some(n * c * h * w / 3 + w / 2));
    }
    // More than 512 channels in and out, 132 tiles per image: both images one block,
    // transforms split by channels over the threads, each gemm threaded.
    let whole_images = Case::new(
        [2, 260, 23, 22],
        [257, 260, 3, 3],
        [1, 1],
        [1, 1],
        [1, 1, 1, 1],
        1,
        true,
        true,
    );
    check_case::<f32>(&mut rng, &whole_images, None);
}

#[test]
fn winograd_four_by_four_tiles() {
    // 3×3 stride-1 layers with at least 32 input channels and 128 tiles of 4×4 outputs per
    // image (on AVX-512, Winograd F(4×4, 3×3)): planes whose last tile row and column are partly outside,
    // asymmetric padding, odd channel counts, a batch, several channels per block, and a
    // wide layer whose blocks hold one tile row. NaN inputs reach only the outputs whose
    // windows hold them, although they spread over the transformed tile.
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let cases = [
        Case::new(
            [1, 33, 45, 47],
            [19, 33, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        Case::new(
            [2, 32, 50, 61],
            [33, 32, 3, 3],
            [1, 1],
            [1, 1],
            [2, 0, 1, 2],
            1,
            false,
            true,
        ),
        Case::new(
            [1, 200, 46, 46],
            [208, 200, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            false,
        ),
        // Small planes whose tiles count over the batch (where 512-bit multiply-adds do not
        // pay; `ACCELMESH_WIDE_FMA=0` forces it): 3 × 49 tiles, blocks across the images.
        Case::new(
            [3, 64, 26, 27],
            [33, 64, 3, 3],
            [1, 1],
            [1, 1],
            [1, 1, 1, 0],
            1,
            true,
            true,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
        let [n, c, h, w] = case.input;
        check_case::<f32>(&mut rng, case, Some(n * c * h * w / 3 + w / 2 + 1));
    }
}

#[test]
fn winograd_over_stride_phases() {
    // 7×7 and 8×8 kernels at stride 2 over at most 64 input channels with 16 or more output
    // channels (on AVX-512, F(3×3, 4×4) over the four stride phases): output planes whose
    // last tile row and column are partly outside, asymmetric padding, output channels not a
    // multiple of the four per pass, a batch, rows of fewer tiles than a vector (vectors
    // spanning several tile rows), planes of a few tiles, one, sixteen and forty input channels,
    // a 7×8 kernel. NaN inputs reach only the outputs whose windows hold them, although they
    // spread over the transformed tile.
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let cases = [
        Case::new(
            [2, 3, 37, 29],
            [19, 3, 7, 7],
            [2, 2],
            [1, 1],
            [2, 3, 1, 0],
            1,
            true,
            true,
        ),
        Case::new(
            [1, 1, 20, 70],
            [16, 1, 8, 8],
            [2, 2],
            [1, 1],
            [0, 1, 3, 2],
            1,
            false,
            true,
        ),
        Case::new(
            [1, 16, 23, 25],
            [18, 16, 7, 8],
            [2, 2],
            [1, 1],
            [3, 3, 3, 3],
            1,
            true,
            false,
        ),
        Case::new(
            [3, 2, 9, 9],
            [16, 2, 7, 7],
            [2, 2],
            [1, 1],
            [3, 3, 3, 3],
            1,
            false,
            true,
        ),
        Case::new(
            [1, 40, 19, 21],
            [20, 40, 7, 7],
            [2, 2],
            [1, 1],
            [3, 2, 1, 3],
            1,
            false,
            true,
        ),
        Case::new(
            [1, 3, 66, 65],
            [33, 3, 7, 7],
            [2, 2],
            [1, 1],
            [3, 3, 3, 3],
            1,
            true,
            true,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
        let [n, c, h, w] = case.input;
        check_case::<f32>(&mut rng, case, Some(n * c * h * w / 2 + w / 3 + 1));
        check_case::<f32>(&mut rng, case, Some(w + 1));
    }
}

#[test]
fn pointwise_widening_on_small_planes() {
    // Pointwise layers that widen the channels fourfold or more on planes of up to 64 outputs
    // (on AVX-512, the flat tiles): a plane of 49, depths below and above one depth block
    // (288), two groups, odd channel counts.
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let cases = [
        Case::new(
            [2, 24, 7, 7],
            [100, 24, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            1,
            true,
            true,
        ),
        Case::new(
            [1, 300, 5, 9],
            [1210, 300, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            1,
            false,
            true,
        ),
        Case::new(
            [1, 32, 6, 6],
            [130, 16, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            2,
            true,
            false,
        ),
        Case::new(
            [3, 17, 1, 7],
            [69, 17, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            1,
            false,
            true,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
        let [n, c, h, w] = case.input;
        check_case::<f32>(&mut rng, case, Some(n * c * h * w / 3));
    }
}

#[test]
fn strided_kernels_on_small_planes() {
    // Strided kernels over 16 or more channels with output planes of up to 64 (on AVX-512,
    // the flat tiles): 3×3 at stride 2 from 14×14 and an odd 13×13, 5×5 at stride 3 with
    // asymmetric padding, a dilated one, two groups, depths below and above a depth block.
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let cases = [
        Case::new(
            [1, 64, 14, 14],
            [70, 64, 3, 3],
            [2, 2],
            [1, 1],
            [1, 1, 1, 1],
            1,
            true,
            true,
        ),
        Case::new(
            [2, 17, 13, 13],
            [33, 17, 3, 3],
            [2, 2],
            [1, 1],
            [1, 0, 2, 1],
            1,
            true,
            false,
        ),
        Case::new(
            [1, 40, 17, 15],
            [32, 20, 5, 5],
            [3, 3],
            [1, 1],
            [2, 1, 0, 3],
            2,
            false,
            true,
        ),
        Case::new(
            [1, 129, 15, 15],
            [7, 129, 3, 3],
            [2, 2],
            [2, 2],
            [2, 2, 2, 2],
            1,
            true,
            true,
        ),
    ];
    for case in &cases {
        check_case::<f32>(&mut rng, case, None);
        let [n, c, h, w] = case.input;
        check_case::<f32>(&mut rng, case, Some(n * c * h * w / 3));
    }
}

#[test]
fn half_precision_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x16);
    for i in 0..24 {
        let case = random_case(&mut rng, 200_000);
        if i % 2 == 0 {
            check_case::<f16>(&mut rng, &case, None);
        } else {
            check_case::<bf16>(&mut rng, &case, None);
        }
    }
    let pointwise = Case::new(
        [2, 12, 7, 17],
        [9, 12, 1, 1],
        [1, 1],
        [1, 1],
        [0; 4],
        1,
        true,
        true,
    );
    check_case::<f16>(&mut rng, &pointwise, None);
    check_case::<bf16>(&mut rng, &pointwise, None);
}

#[test]
fn nan_reaches_exactly_its_receptive_field() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7a7);
    let cases = [
        Case::new(
            [2, 6, 17, 17],
            [8, 6, 3, 5],
            [1, 2],
            [2, 1],
            [1, 2, 3, 0],
            1,
            true,
            true,
        ),
        Case::new(
            [1, 6, 17, 17],
            [6, 1, 3, 3],
            [2, 1],
            [1, 1],
            [1, 1, 1, 1],
            6,
            true,
            false,
        ),
        Case::new(
            [1, 8, 7, 7],
            [4, 4, 1, 1],
            [1, 1],
            [1, 1],
            [0; 4],
            2,
            false,
            true,
        ),
        Case::new(
            [1, 3, 33, 33],
            [8, 3, 7, 7],
            [2, 2],
            [1, 1],
            [3, 3, 3, 3],
            1,
            true,
            true,
        ),
    ];
    for case in &cases {
        let [n, c, h, w] = case.input;
        for at in [0, n * c * h * w - 1, rng.random_range(0..n * c * h * w)] {
            check_case::<f32>(&mut rng, case, Some(at));
        }
    }
    // The receptive field check above is only meaningful if NaN does reach some outputs and
    // not others: count them for one case.
    let case = &cases[0];
    let [n, c, h, w] = case.input;
    let mut x = random_vec(&mut rng, n * c * h * w);
    x[(c + 2) * h * w + 8 * w + 8] = f32::NAN; // image 1, channel 2, (8, 8)
    let wt = random_vec(&mut rng, case.weight.iter().product());
    let dims = case.output_dims().unwrap();
    let mut out = vec![0.0; dims.iter().product()];
    conv2d(
        Isa::selected(),
        &x,
        case.input,
        &wt,
        case.weight,
        None,
        &case.params,
        &mut out,
    )
    .unwrap();
    let nans = out.iter().filter(|v| v.is_nan()).count();
    assert!(nans > 0 && nans < out.len() / 2, "{nans} NaN outputs");
}

#[test]
fn runs_in_caller_pools() {
    // One image large enough to be split by output columns across the pool's threads, a
    // batch that is split by images (both laying out their small inputs once per thread), an
    // image whose layout is large enough to be shared by the threads, and layers whose weights
    // outweigh their input, whose threads split the output channels (one image; two grouped
    // and dilated), after one another in each thread's buffers.
    let split = Case::new(
        [1, 32, 40, 41],
        [48, 32, 3, 3],
        [1, 1],
        [1, 1],
        [1, 1, 1, 1],
        1,
        true,
        true,
    );
    let batch = Case::new(
        [3, 16, 33, 33],
        [24, 16, 3, 3],
        [1, 1],
        [1, 1],
        [1, 1, 1, 1],
        1,
        false,
        true,
    );
    let large = Case::new(
        [1, 64, 66, 70],
        [24, 64, 3, 3],
        [1, 1],
        [1, 1],
        [1, 1, 1, 1],
        1,
        true,
        true,
    );
    let deep = Case::new(
        [1, 64, 9, 11],
        [128, 64, 5, 5],
        [1, 1],
        [1, 1],
        [2, 2, 2, 2],
        1,
        true,
        true,
    );
    let deep_grouped = Case::new(
        [2, 64, 7, 10],
        [128, 32, 3, 3],
        [1, 1],
        [2, 1],
        [2, 1, 2, 0],
        2,
        false,
        true,
    );
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(threads as u64);
        pool.install(|| {
            check_case::<f32>(&mut rng, &split, None);
            check_case::<f32>(&mut rng, &batch, None);
            check_case::<f32>(&mut rng, &large, None);
            check_case::<f32>(&mut rng, &deep, None);
            check_case::<f32>(&mut rng, &deep_grouped, None);
            check_case::<f32>(&mut rng, &split, None);
        });
    }
}

#[test]
fn empty_depth_and_outputs() {
    // No input channels: the output is the bias.
    let p = Conv2dParams::default();
    let bias = [0.5f32, -1.0];
    let mut out = vec![f32::NAN; 2 * 4 * 3];
    conv2d::<f32>(
        Isa::selected(),
        &[],
        [1, 0, 4, 3],
        &[],
        [2, 0, 1, 1],
        Some(&bias),
        &p,
        &mut out,
    )
    .unwrap();
    assert!(out[..12].iter().all(|&v| v == 0.5) && out[12..].iter().all(|&v| v == -1.0));
    // No images: nothing to do, nothing to check but the dims.
    let mut none: [f32; 0] = [];
    let w = [1.0f32; 9];
    conv2d(
        Isa::selected(),
        &[],
        [0, 1, 5, 5],
        &w,
        [1, 1, 3, 3],
        None,
        &p,
        &mut none,
    )
    .unwrap();
}

/// Runs conv2d on all-ones data of the right sizes for the dims, with the given overrides.
fn call(
    input_dims: [usize; 4],
    weight_dims: [usize; 4],
    params: &Conv2dParams,
    lens: Option<(usize, usize, usize)>,
    bias_len: Option<usize>,
) -> Result<(), KernelError> {
    let expected = conv2d_output_dims(input_dims, weight_dims, params)
        .map(|d| d.iter().product())
        .unwrap_or(1);
    let (xl, wl, ol) = lens.unwrap_or_else(|| {
        (
            input_dims.iter().product(),
            weight_dims.iter().product(),
            expected,
        )
    });
    let x = vec![1.0f32; xl];
    let w = vec![1.0f32; wl];
    let mut out = vec![0.0f32; ol];
    let bias = bias_len.map(|l| vec![0.0f32; l]);
    conv2d(
        Isa::Scalar,
        &x,
        input_dims,
        &w,
        weight_dims,
        bias.as_deref(),
        params,
        &mut out,
    )
}

fn detail(err: KernelError) -> String {
    err.to_string()
}

#[test]
fn bad_inputs_are_typed_errors() {
    let p = Conv2dParams::default();
    let with = |f: &dyn Fn(&mut Conv2dParams)| {
        let mut q = Conv2dParams::default();
        f(&mut q);
        q
    };
    // Zero stride, dilation, groups.
    for q in [
        with(&|q| q.stride = [0, 1]),
        with(&|q| q.dilation = [1, 0]),
        with(&|q| q.groups = 0),
    ] {
        let err = call([1, 4, 8, 8], [4, 4, 3, 3], &q, None, None).unwrap_err();
        assert!(
            matches!(err, KernelError::InvalidArgument { .. }),
            "{err:?}"
        );
    }
    // Channels not divisible by groups.
    let err = call(
        [1, 6, 8, 8],
        [4, 1, 3, 3],
        &with(&|q| q.groups = 4),
        None,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, KernelError::ShapeMismatch { detail, .. } if detail.contains("6") && detail.contains("4")),
        "{err:?}"
    );
    let err = call(
        [1, 4, 8, 8],
        [6, 1, 3, 3],
        &with(&|q| q.groups = 4),
        None,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, KernelError::ShapeMismatch { detail, .. } if detail.contains("output channels 6")),
        "{err:?}"
    );
    // Weight channel mismatch.
    let err = call([1, 4, 8, 8], [4, 3, 3, 3], &p, None, None).unwrap_err();
    assert!(
        matches!(&err, KernelError::ShapeMismatch { detail, .. } if detail.contains("3 input channels")),
        "{err:?}"
    );
    // Kernel larger than the padded input.
    let err = call([1, 1, 4, 4], [1, 1, 5, 3], &p, None, None).unwrap_err();
    assert!(
        matches!(&err, KernelError::ShapeMismatch { detail, .. } if detail.contains("5")),
        "{err:?}"
    );
    let err = call(
        [1, 1, 4, 4],
        [1, 1, 3, 3],
        &with(&|q| q.dilation = [2, 1]),
        None,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { .. }), "{err:?}");
    // Zero-sized kernel.
    let err = call([1, 1, 4, 4], [1, 1, 0, 3], &p, None, None).unwrap_err();
    assert!(
        matches!(err, KernelError::InvalidArgument { .. }),
        "{err:?}"
    );
    // Slices of the wrong length.
    let err = call([1, 2, 5, 5], [3, 2, 3, 3], &p, Some((49, 54, 27)), None).unwrap_err();
    assert_eq!(
        err,
        KernelError::BufferTooSmall {
            what: "conv2d input",
            needed: 50,
            actual: 49
        }
    );
    let err = call([1, 2, 5, 5], [3, 2, 3, 3], &p, Some((51, 54, 27)), None).unwrap_err();
    assert!(
        detail(err.clone()).contains("51") && matches!(err, KernelError::ShapeMismatch { .. }),
        "{err:?}"
    );
    let err = call([1, 2, 5, 5], [3, 2, 3, 3], &p, Some((50, 53, 27)), None).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::BufferTooSmall {
                needed: 54,
                actual: 53,
                ..
            }
        ),
        "{err:?}"
    );
    let err = call([1, 2, 5, 5], [3, 2, 3, 3], &p, Some((50, 54, 26)), None).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::BufferTooSmall {
                needed: 27,
                actual: 26,
                ..
            }
        ),
        "{err:?}"
    );
    let err = call([1, 2, 5, 5], [3, 2, 3, 3], &p, Some((50, 54, 28)), None).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { .. }), "{err:?}");
    // Bias of the wrong length.
    let err = call([1, 2, 5, 5], [3, 2, 3, 3], &p, None, Some(2)).unwrap_err();
    assert!(
        matches!(&err, KernelError::ShapeMismatch { detail, .. } if detail.contains("bias has 2")),
        "{err:?}"
    );
    // Overflowing dims.
    let err = call(
        [usize::MAX, 2, 5, 5],
        [3, 2, 3, 3],
        &p,
        Some((1, 54, 1)),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::SizeOverflow { .. }), "{err:?}");
    let err = conv2d_output_dims(
        [1, 1, 4, 4],
        [1, 1, 3, 3],
        &with(&|q| q.pads = [0, usize::MAX - 2, 0, 5]),
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::SizeOverflow { .. }), "{err:?}");
    // An instruction set this machine lacks.
    if let Some(missing) = Isa::ALL.into_iter().find(|isa| !isa.is_available()) {
        let x = [1.0f32; 9];
        let mut out = [0.0f32; 1];
        let err = conv2d(
            missing,
            &x,
            [1, 1, 3, 3],
            &x,
            [1, 1, 3, 3],
            None,
            &p,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err, KernelError::IsaUnavailable(missing.name()));
    }
}

#[test]
fn zero_input_channels_give_the_bias_and_huge_kernels_no_panic() {
    let p = Conv2dParams {
        relu: true,
        ..Conv2dParams::default()
    };
    let bias = [0.5f32, -2.0];
    let mut out = vec![f32::NAN; 2 * 3 * 3];
    conv2d(
        Isa::Scalar,
        &[] as &[f32],
        [1, 0, 3, 3],
        &[],
        [2, 0, 1, 1],
        Some(&bias),
        &p,
        &mut out,
    )
    .unwrap();
    assert!(out[..9].iter().all(|v| *v == 0.5));
    assert!(out[9..].iter().all(|v| *v == 0.0));
    let err = conv2d(
        Isa::Scalar,
        &[] as &[f32],
        [1, 0, 1 << 62, 5],
        &[],
        [1, 0, 1 << 62, 5],
        None,
        &Conv2dParams::default(),
        &mut [0.0],
    );
    assert!(
        matches!(err, Err(KernelError::SizeOverflow { .. })),
        "{err:?}"
    );
}

/// One convolution followed by a max pooling, fused (banded) and apart.
struct PooledCase {
    x: [usize; 4],
    w: [usize; 4],
    params: Conv2dParams,
    pool: Pool2dParams,
}

impl PooledCase {
    /// Runs the case fused and apart on `isa` and checks the two outputs bit for bit, with a
    /// NaN at input element `poison` when given.
    fn check(&self, rng: &mut ChaCha8Rng, isa: Isa, poison: Option<usize>) {
        let mut x = random_vec(rng, self.x.iter().product());
        if let Some(at) = poison {
            x[at] = f32::NAN;
        }
        let w = random_vec(rng, self.w.iter().product());
        let bias = random_vec(rng, self.w[0]);
        let conv_dims = conv2d_output_dims(self.x, self.w, &self.params).unwrap();
        let out_dims = pool2d_output_dims(conv_dims, &self.pool).unwrap();
        let mut conv = vec![0.0f32; conv_dims.iter().product()];
        conv2d(
            isa,
            &x,
            self.x,
            &w,
            self.w,
            Some(&bias),
            &self.params,
            &mut conv,
        )
        .unwrap();
        let mut apart = vec![0.0f32; out_dims.iter().product()];
        max_pool2d_with_isa(&conv, conv_dims, &self.pool, &mut apart, isa).unwrap();
        let mut fused = vec![f32::MAX; apart.len()];
        conv2d_max_pool(
            isa,
            &x,
            self.x,
            &w,
            self.w,
            Some(&bias),
            &self.params,
            &self.pool,
            &mut fused,
        )
        .unwrap();
        for (i, (f, a)) in fused.iter().zip(&apart).enumerate() {
            assert!(
                f.to_bits() == a.to_bits(),
                "{isa} {:?} {:?} {:?} {:?}: output {i} fused {f} apart {a}",
                self.x,
                self.w,
                self.params,
                self.pool
            );
        }
        if poison.is_some() {
            assert!(
                fused.iter().any(|v| v.is_nan()),
                "the NaN reached no output"
            );
        }
    }
}

#[test]
fn convolution_then_max_pool_fused_in_bands_matches_the_two_apart() {
    let pool = |k: usize, s: usize, pads: [usize; 4]| {
        Pool2dParams::new([k, k])
            .with_stride([s, s])
            .with_pads(pads)
    };
    let conv = |s: usize, pads: [usize; 4], relu: bool| Conv2dParams {
        stride: [s, s],
        pads,
        relu,
        ..Conv2dParams::default()
    };
    let cases = [
        // An image network's stem: 7×7 at stride 2, then 3×3 at stride 2.
        PooledCase {
            x: [2, 3, 67, 61],
            w: [16, 3, 7, 7],
            params: conv(2, [3; 4], true),
            pool: pool(3, 2, [1; 4]),
        },
        // Odd sizes, asymmetric padding on both ops, windows not overlapping.
        PooledCase {
            x: [1, 5, 33, 17],
            w: [7, 5, 3, 3],
            params: conv(1, [0, 1, 2, 1], false),
            pool: pool(2, 2, [0, 1, 1, 0]),
        },
        // Overlapping windows at stride 1, a bottom pad on the pooling.
        PooledCase {
            x: [3, 2, 29, 20],
            w: [17, 2, 5, 5],
            params: conv(1, [2; 4], true),
            pool: pool(3, 1, [1, 0, 2, 1]),
        },
        // A stem tall enough for several bands (on AVX-512, Winograd over stride phases, whose
        // bands start and end on whole tile rows of three conv rows).
        PooledCase {
            x: [1, 3, 122, 101],
            w: [64, 3, 7, 7],
            params: conv(2, [3, 2, 3, 3], true),
            pool: pool(3, 2, [1; 4]),
        },
        // Output tall enough for several bands of 512 KiB per image.
        PooledCase {
            x: [1, 3, 129, 129],
            w: [33, 3, 3, 3],
            params: conv(1, [1; 4], true),
            pool: pool(3, 2, [1; 4]),
        },
        // Ceil mode and dilation run the two apart.
        PooledCase {
            x: [1, 4, 17, 17],
            w: [8, 4, 3, 3],
            params: conv(1, [1; 4], false),
            pool: pool(2, 2, [0; 4]).with_ceil_mode(true),
        },
        PooledCase {
            x: [1, 4, 17, 17],
            w: [8, 4, 3, 3],
            params: conv(1, [1; 4], false),
            pool: pool(2, 1, [0; 4]).with_dilation([2, 2]),
        },
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(0x9001);
    for threads in [1, 2, 3] {
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        workers.install(|| {
            for isa in Isa::available() {
                for case in &cases {
                    case.check(&mut rng, isa, None);
                }
            }
        });
    }
    // A NaN in the input reaches the pooled outputs whose windows see it, as apart.
    cases[0].check(&mut rng, Isa::best(), Some(3 * 67 * 61 + 30 * 61 + 29));
}

#[test]
fn convolution_then_max_pool_rejects_bad_shapes() {
    // 9×9 convolved by 3×3 is 7×7, pooled 2×2 at stride 2 is 3×3: 4·3·3 outputs.
    let (x, w) = (vec![0.5f32; 3 * 9 * 9], vec![0.25f32; 4 * 3 * 3 * 3]);
    let pool = Pool2dParams::new([2, 2]).with_stride([2, 2]);
    let params = Conv2dParams::default();
    let run = |x_dims: [usize; 4], w_dims: [usize; 4], out_len: usize| {
        let mut out = vec![0.0f32; out_len];
        conv2d_max_pool(
            Isa::best(),
            &x,
            x_dims,
            &w,
            w_dims,
            None,
            &params,
            &pool,
            &mut out,
        )
    };
    let err = run([1, 3, 9, 9], [4, 3, 3, 3], 35);
    assert!(
        matches!(
            err,
            Err(KernelError::BufferTooSmall {
                needed: 36,
                actual: 35,
                ..
            })
        ),
        "{err:?}"
    );
    let err = run([1, 3, 9, 9], [4, 3, 3, 3], 37);
    assert!(
        matches!(err, Err(KernelError::ShapeMismatch { .. })),
        "{err:?}"
    );
    let err = run([1, 3, 9, 8], [4, 3, 3, 3], 36);
    assert!(err.is_err(), "an input longer than its dims was accepted");
    let err = run([1, 2, 9, 9], [4, 3, 3, 3], 36);
    assert!(err.is_err(), "mismatched channels were accepted");
    assert_eq!(run([1, 3, 9, 9], [4, 3, 3, 3], 36), Ok(()));
}
