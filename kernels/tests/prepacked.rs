//! Convolution weights packed once (pinned), the residual-accumulating convolution, and the
//! few-rows gemm path that streams a column-stored B: each against the path it replaces (bit
//! for bit where the order of operations is the same) and against float64, on every ISA here.

use accelmesh_kernels::conv::{
    Conv2dParams, WeightPin, conv2d, conv2d_accumulate, conv2d_output_dims, is_pinned,
};
use accelmesh_kernels::{Epilogue, Isa, MatMut, MatRef, gemm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// (input dims, weight dims, params) covering the implicit gemm's paths: small and large A,
/// pointwise, strided 7×7, channel pieces on narrow planes, groups, odd sizes, depthwise.
fn cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let p = |stride, pad, groups, relu| Conv2dParams {
        stride: [stride, stride],
        dilation: [1, 1],
        pads: [pad; 4],
        groups,
        relu,
    };
    vec![
        ([1, 16, 12, 11], [24, 16, 3, 3], p(1, 1, 1, true)),
        ([2, 64, 9, 9], [70, 64, 3, 3], p(1, 1, 1, false)),
        ([1, 256, 14, 14], [256, 256, 3, 3], p(1, 1, 1, true)),
        ([1, 96, 7, 7], [200, 96, 1, 1], p(1, 0, 1, false)),
        ([1, 3, 37, 41], [13, 3, 7, 7], p(2, 3, 1, true)),
        // A stem with enough output channels for Winograd over stride phases (AVX-512).
        ([1, 3, 37, 41], [17, 3, 7, 7], p(2, 3, 1, true)),
        ([1, 12, 10, 10], [18, 4, 3, 3], p(1, 1, 3, true)),
        ([1, 8, 9, 9], [8, 1, 3, 3], p(1, 1, 8, true)),
        ([1, 600, 5, 5], [37, 600, 1, 1], p(1, 0, 1, false)),
    ]
}

#[test]
fn pinned_weights_give_bit_identical_outputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(71);
    for isa in Isa::available() {
        for (input_dims, weight_dims, params) in cases() {
            let x = random_vec(&mut rng, input_dims.iter().product());
            let w = random_vec(&mut rng, weight_dims.iter().product());
            let bias = random_vec(&mut rng, weight_dims[0]);
            let out_len: usize = conv2d_output_dims(input_dims, weight_dims, &params)
                .unwrap()
                .iter()
                .product();
            let mut plain = vec![0.0f32; out_len];
            conv2d(
                isa,
                &x,
                input_dims,
                &w,
                weight_dims,
                Some(&bias),
                &params,
                &mut plain,
            )
            .unwrap();
            let pin = WeightPin::new(&w);
            assert!(is_pinned(&w));
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                // Twice: the first call packs, the second reuses the panels.
                for _ in 0..2 {
                    let mut packed = vec![f32::NAN; out_len];
                    pool.install(|| {
                        conv2d(
                            isa,
                            &x,
                            input_dims,
                            &w,
                            weight_dims,
                            Some(&bias),
                            &params,
                            &mut packed,
                        )
                    })
                    .unwrap();
                    let same = plain
                        .iter()
                        .zip(&packed)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{isa} {input_dims:?} {weight_dims:?} {threads} threads"
                    );
                }
            }
            drop(pin);
            assert!(!is_pinned(&w));
        }
    }
}

#[test]
fn pins_nest_and_empty_weights_are_not_pinned() {
    let w = vec![1.0f32; 12];
    let first = WeightPin::new(&w);
    let second = WeightPin::new(&w);
    drop(first);
    assert!(is_pinned(&w));
    drop(second);
    assert!(!is_pinned(&w));
    let empty: [f32; 0] = [];
    let _pin = WeightPin::new(&empty);
    assert!(!is_pinned(&empty));
}

#[test]
fn accumulate_adds_the_residual_before_the_relu() {
    let mut rng = ChaCha8Rng::seed_from_u64(72);
    for isa in Isa::available() {
        for (input_dims, weight_dims, params) in cases() {
            let x = random_vec(&mut rng, input_dims.iter().product());
            let w = random_vec(&mut rng, weight_dims.iter().product());
            let bias = random_vec(&mut rng, weight_dims[0]);
            let out_len: usize = conv2d_output_dims(input_dims, weight_dims, &params)
                .unwrap()
                .iter()
                .product();
            let residual = random_vec(&mut rng, out_len);
            let linear = Conv2dParams {
                relu: false,
                ..params.clone()
            };
            let mut conv = vec![0.0f32; out_len];
            conv2d(
                isa,
                &x,
                input_dims,
                &w,
                weight_dims,
                Some(&bias),
                &linear,
                &mut conv,
            )
            .unwrap();
            let mut fused = residual.clone();
            conv2d_accumulate(
                isa,
                &x,
                input_dims,
                &w,
                weight_dims,
                Some(&bias),
                &params,
                &mut fused,
            )
            .unwrap();
            let depth: usize = weight_dims[1..].iter().product();
            for i in 0..out_len {
                let mut expected = f64::from(conv[i]) + f64::from(residual[i]);
                if params.relu && expected < 0.0 {
                    expected = 0.0;
                }
                // Error scale: the terms of one output (|w·x| ≤ 1 each) and the residual.
                let tol = 1e-6 * (depth as f64 + 2.0);
                assert!(
                    (f64::from(fused[i]) - expected).abs() <= tol,
                    "{isa} {input_dims:?} {weight_dims:?} at {i}: {} vs {expected}",
                    fused[i]
                );
            }
        }
    }
}

#[test]
fn few_rows_with_column_stored_b_match_the_packed_path_and_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(73);
    for isa in Isa::available() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 37, 13),
            (2, 64, 700),
            (3, 33, 1201),
            (4, 129, 2500),
            (1, 1000, 2048),
        ] {
            let a = random_vec(&mut rng, m * k);
            // B stored as Bᵀ (n × k, row-major): a dense layer's weights.
            let bt = random_vec(&mut rng, n * k);
            let b_rows: Vec<f32> = (0..k * n).map(|idx| bt[(idx % n) * k + idx / n]).collect();
            let bias = random_vec(&mut rng, n);
            for (alpha, beta, relu) in [(1.0, 0.0, false), (0.5, 1.5, true)] {
                let c0 = random_vec(&mut rng, m * n);
                let epilogue = Epilogue {
                    row_bias: None,
                    col_bias: Some(&bias),
                    relu,
                };
                let run = |b: MatRef<'_, f32>| {
                    let mut c = c0.clone();
                    let a = MatRef::row_major(&a, m, k).unwrap();
                    let cm = MatMut::row_major(&mut c, m, n).unwrap();
                    gemm(isa, alpha, a, b, beta, cm, &epilogue).unwrap();
                    c
                };
                let streamed = run(MatRef::row_major(&bt, n, k).unwrap().t());
                let packed = run(MatRef::row_major(&b_rows, k, n).unwrap());
                for i in 0..m {
                    for j in 0..n {
                        let (mut exact, mut mag) = (0.0f64, 0.0f64);
                        for p in 0..k {
                            let prod = f64::from(a[i * k + p]) * f64::from(bt[j * k + p]);
                            exact += prod;
                            mag += prod.abs();
                        }
                        let old = f64::from(c0[i * n + j]);
                        let mut expected =
                            f64::from(alpha) * exact + f64::from(beta) * old + f64::from(bias[j]);
                        if relu && expected < 0.0 {
                            expected = 0.0;
                        }
                        let scale = mag + (f64::from(beta) * old).abs() + 1.0;
                        let got = streamed[i * n + j];
                        assert!(
                            (f64::from(got) - expected).abs() / scale <= 2e-5,
                            "{isa} m={m} n={n} k={k}: C[{i},{j}] = {got}, expected {expected}"
                        );
                        assert_eq!(
                            got.to_bits(),
                            packed[i * n + j].to_bits(),
                            "{isa} m={m} n={n} k={k}: C[{i},{j}] differs from the packed path"
                        );
                    }
                }
            }
        }
    }
}
