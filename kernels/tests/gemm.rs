//! sgemm against a float64 reference on seeded random data, on every instruction set here.

use accelmesh_kernels::gemm::{Epilogue, MatMut, MatRef, gemm};
use accelmesh_kernels::{Element, Isa, KernelError};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZES: [usize; 15] = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 65, 127, 129, 257, 1000];

fn random_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A stored operand: its buffer and a view description (rows, cols, rs, cs) of op(X).
struct Operand {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Operand {
    /// A rows × cols op(X), stored transposed or not, with `pad` spare elements per line.
    fn random(
        rng: &mut ChaCha8Rng,
        rows: usize,
        cols: usize,
        transposed: bool,
        pad: usize,
    ) -> Self {
        let (lines, line_len) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let ld = line_len + pad;
        let data = random_vec(rng, lines * ld);
        let (rs, cs) = if transposed { (1, ld) } else { (ld, 1) };
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.rs + j * self.cs] as f64
    }

    fn view<'a, T: Element>(&self, converted: &'a [T]) -> MatRef<'a, T> {
        MatRef::new(converted, self.rows, self.cols, self.rs, self.cs).unwrap()
    }
}

/// `c` as an `m × n` C, row-major or transposed (element (i, j) at `j·m + i`).
fn c_view(c: &mut [f32], m: usize, n: usize, transposed: bool) -> MatMut<'_, f32> {
    if transposed {
        MatMut::new(c, m, n, 1, m).unwrap()
    } else {
        MatMut::row_major(c, m, n).unwrap()
    }
}

fn converted<T: Element>(data: &[f32]) -> Vec<T> {
    data.iter().map(|&v| T::from_f32(v)).collect()
}

/// Runs one case and checks every element against float64 with a bound scaled by |A||B|.
#[allow(clippy::too_many_arguments)]
fn check_case<T: Element>(
    isa: Isa,
    rng: &mut ChaCha8Rng,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    pad: usize,
    alpha: f32,
    beta: f32,
    rel_tol: f64,
) {
    let a = Operand::random(rng, m, k, trans_a, pad);
    let b = Operand::random(rng, k, n, trans_b, pad);
    let a_t: Vec<T> = converted(&a.data);
    let b_t: Vec<T> = converted(&b.data);
    // Reference on the values the kernel actually sees (after rounding to T).
    let a_seen: Vec<f32> = a_t.iter().map(|v| v.to_f32()).collect();
    let b_seen: Vec<f32> = b_t.iter().map(|v| v.to_f32()).collect();
    let a_ref = Operand { data: a_seen, ..a };
    let b_ref = Operand { data: b_seen, ..b };
    let ldc = n + pad;
    let c0 = random_vec(rng, m * ldc);
    let mut c = c0.clone();
    gemm(
        isa,
        alpha,
        a_ref.view(&a_t),
        b_ref.view(&b_t),
        beta,
        MatMut::with_ld(&mut c, m, n, ldc).unwrap(),
        &Epilogue::NONE,
    )
    .unwrap();
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
            for p in 0..k {
                let prod = a_ref.get(i, p) * b_ref.get(p, j);
                exact += prod;
                magnitude += prod.abs();
            }
            let old = c0[i * ldc + j] as f64;
            let expected = alpha as f64 * exact + beta as f64 * old;
            let scale = (alpha as f64).abs() * magnitude + (beta as f64 * old).abs() + 1e-30;
            let err = (c[i * ldc + j] as f64 - expected).abs() / scale;
            assert!(
                err <= rel_tol,
                "{isa} {} m={m} n={n} k={k} ta={trans_a} tb={trans_b} pad={pad} \
                 alpha={alpha} beta={beta}: C[{i},{j}] = {} expected {expected} (rel {err:e})",
                T::NAME,
                c[i * ldc + j]
            );
        }
        // Padding between rows is never touched.
        for j in n..ldc {
            assert_eq!(
                c[i * ldc + j],
                c0[i * ldc + j],
                "padding written at row {i}"
            );
        }
    }
}

/// Sampled combinations of the sizes in every dimension, capped in work to stay quick.
fn sampled_shapes(rng: &mut ChaCha8Rng, count: usize) -> Vec<(usize, usize, usize)> {
    let mut shapes = Vec::new();
    for &s in &SIZES {
        shapes.push((s, s, s));
    }
    while shapes.len() < count {
        let pick = |rng: &mut ChaCha8Rng| SIZES[rng.random_range(0..SIZES.len())];
        let (m, n, k) = (pick(rng), pick(rng), pick(rng));
        if m * n * k <= 40_000_000 {
            shapes.push((m, n, k));
        }
    }
    shapes
}

#[test]
fn sgemm_matches_f64_on_every_isa() {
    for isa in Isa::available() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
        for (case, (m, n, k)) in sampled_shapes(&mut rng, 70).into_iter().enumerate() {
            let trans_a = case & 1 == 1;
            let trans_b = case & 2 == 2;
            let pad = [0, 3, 16][case % 3];
            let (alpha, beta) = [(1.0, 0.0), (0.75, -1.5), (-2.0, 1.0)][case % 3];
            check_case::<f32>(
                isa, &mut rng, m, n, k, trans_a, trans_b, pad, alpha, beta, 2e-5,
            );
        }
    }
}

#[test]
fn all_four_transposes_on_odd_sizes() {
    for isa in Isa::available() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (m, n, k) in [(33, 17, 129), (129, 65, 31), (7, 257, 63)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                check_case::<f32>(isa, &mut rng, m, n, k, ta, tb, 5, 1.25, 0.5, 2e-5);
            }
        }
    }
}

#[test]
fn half_precision_operands() {
    for isa in Isa::available() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (m, n, k) in [(17, 33, 65), (129, 127, 257), (1, 1000, 15)] {
            check_case::<f16>(isa, &mut rng, m, n, k, false, true, 2, 1.0, 0.0, 2e-5);
            check_case::<bf16>(isa, &mut rng, m, n, k, true, false, 0, 1.0, 1.0, 2e-5);
        }
    }
}

#[test]
fn empty_depth_scales_c() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for isa in Isa::available() {
        let c0 = random_vec(&mut rng, 12);
        let mut c = c0.clone();
        let none: [f32; 0] = [];
        let a = MatRef::row_major(&none, 3, 0).unwrap();
        let b = MatRef::row_major(&none, 0, 4).unwrap();
        let cm = MatMut::row_major(&mut c, 3, 4).unwrap();
        gemm(isa, 1.0, a, b, 0.5, cm, &Epilogue::NONE).unwrap();
        for (x, y) in c.iter().zip(&c0) {
            assert_eq!(*x, 0.5 * y);
        }
        let mut nan_c = vec![f32::NAN; 12];
        let cm = MatMut::row_major(&mut nan_c, 3, 4).unwrap();
        gemm(isa, 1.0, a, b, 0.0, cm, &Epilogue::NONE).unwrap();
        assert!(nan_c.iter().all(|v| *v == 0.0), "beta = 0 must not read C");
    }
}

#[test]
fn beta_zero_ignores_nan_in_c_and_nan_inputs_propagate() {
    for isa in Isa::available() {
        let (m, n, k) = (37, 45, 29);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut a = random_vec(&mut rng, m * k);
        let mut b = random_vec(&mut rng, k * n);
        a[3 * k + 4] = f32::NAN; // poisons row 3 of C
        b[5 * n + 9] = f32::INFINITY; // column 9 becomes ±inf (or NaN on row 3)
        let mut c = vec![f32::NAN; m * n];
        gemm(
            isa,
            1.0,
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
            0.0,
            MatMut::row_major(&mut c, m, n).unwrap(),
            &Epilogue::NONE,
        )
        .unwrap();
        for i in 0..m {
            for j in 0..n {
                let v = c[i * n + j];
                if i == 3 {
                    assert!(v.is_nan(), "{isa}: row 3 col {j} should be NaN, got {v}");
                } else if j == 9 {
                    assert!(
                        v.is_infinite(),
                        "{isa}: ({i},9) should be infinite, got {v}"
                    );
                } else {
                    assert!(v.is_finite(), "{isa}: ({i},{j}) should be finite, got {v}");
                }
            }
        }
    }
}

#[test]
fn epilogue_adds_biases_and_relu() {
    // Every combination the epilogue distinguishes: both biases, row bias with or without the
    // ReLU, the ReLU alone, column bias alone.
    let variants = [
        (true, true, true),
        (true, false, true),
        (true, false, false),
        (false, false, true),
        (false, true, false),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // A small product (one depth block, one thread), and one over several depth blocks and
    // threads, where only the last block may add the bias and clamp; each with and without a
    // residual (beta), into C row-major and transposed (non-unit column stride).
    for (m, n, k, seed) in [(19, 70, 23, 9), (37, 97, 1100, 10)] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = random_vec(&mut rng, m * k);
        let b = random_vec(&mut rng, k * n);
        let old = random_vec(&mut rng, m * n);
        let row_bias = random_vec(&mut rng, m);
        let col_bias = random_vec(&mut rng, n);
        for isa in Isa::available() {
            for (rows, cols, relu) in variants {
                for (beta, transposed) in [(0.0, false), (0.5, false), (0.5, true)] {
                    let mut c = old.clone();
                    let epi = Epilogue {
                        row_bias: rows.then_some(&row_bias[..]),
                        col_bias: cols.then_some(&col_bias[..]),
                        relu,
                    };
                    let view = c_view(&mut c, m, n, transposed);
                    let (ar, br) = (
                        MatRef::row_major(&a, m, k).unwrap(),
                        MatRef::row_major(&b, k, n).unwrap(),
                    );
                    pool.install(|| gemm(isa, 1.0, ar, br, beta, view, &epi))
                        .unwrap();
                    for i in 0..m {
                        for j in 0..n {
                            let at = if transposed { j * m + i } else { i * n + j };
                            let dot: f64 = (0..k)
                                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                                .sum();
                            let biased = dot
                                + beta as f64 * old[at] as f64
                                + if rows { row_bias[i] as f64 } else { 0.0 }
                                + if cols { col_bias[j] as f64 } else { 0.0 };
                            let expected = if relu { biased.max(0.0) } else { biased };
                            assert!(
                                (c[at] as f64 - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                                "{isa} {m}x{n}x{k} ({i},{j}) rows {rows} cols {cols} relu \
                                 {relu} beta {beta} transposed {transposed}: {} vs {expected}",
                                c[at]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let data = vec![1.0f32; 64];
    let mut out = vec![0.0f32; 64];
    let a = MatRef::row_major(&data, 4, 3).unwrap();
    let b = MatRef::row_major(&data, 4, 4).unwrap();
    let c = MatMut::row_major(&mut out, 4, 4).unwrap();
    let err = gemm(Isa::Scalar, 1.0, a, b, 0.0, c, &Epilogue::NONE).unwrap_err();
    match err {
        KernelError::ShapeMismatch { detail, .. } => {
            assert!(
                detail.contains("A is 4x3") && detail.contains("B is 4x4"),
                "{detail}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    let bias = [1.0f32; 3];
    let c = MatMut::row_major(&mut out, 4, 4).unwrap();
    let epi = Epilogue {
        row_bias: Some(&bias),
        ..Epilogue::NONE
    };
    let a = MatRef::row_major(&data, 4, 4).unwrap();
    assert!(matches!(
        gemm(Isa::Scalar, 1.0, a, b, 0.0, c, &epi),
        Err(KernelError::ShapeMismatch { .. })
    ));
}

#[test]
fn runs_inside_a_caller_chosen_pool() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    pool.install(|| {
        check_case::<f32>(
            Isa::selected(),
            &mut rng,
            300,
            200,
            150,
            false,
            false,
            0,
            1.0,
            0.0,
            2e-5,
        )
    });
}

#[test]
fn short_and_wide_products() {
    // Small A and wide B: the split where each task packs its own columns of B.
    for isa in Isa::available() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        for (m, n, k) in [
            (33, 1000, 257),
            (1, 1000, 1000),
            (129, 2049, 65),
            (17, 1000, 515),
        ] {
            check_case::<f32>(isa, &mut rng, m, n, k, false, false, 0, 1.0, 0.0, 2e-5);
            check_case::<f32>(isa, &mut rng, m, n, k, true, true, 3, 0.5, 2.0, 2e-5);
        }
        check_case::<f16>(isa, &mut rng, 65, 1500, 129, false, true, 0, 1.0, 0.0, 2e-5);
    }
}

#[test]
fn dense_layers_of_up_to_eight_rows() {
    // Up to eight rows with B stored column by column (a dense layer's x·Wᵀ) stream B in
    // place; nine rows pack it. Both match float64, on one thread and on two, and the
    // streamed rows are bit-identical with the same product through the packed path (B
    // stored row by row).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for isa in Isa::available() {
        let mut rng = ChaCha8Rng::seed_from_u64(53);
        for (m, n, k) in [
            (5, 17, 7),
            (8, 1000, 1031),
            (6, 33, 2049),
            (7, 129, 515),
            (9, 65, 129),
        ] {
            check_case::<f32>(isa, &mut rng, m, n, k, false, true, 0, 1.0, 0.0, 2e-5);
            pool.install(|| {
                check_case::<f32>(isa, &mut rng, m, n, k, true, true, 3, 0.5, -1.5, 2e-5)
            });
            let a = random_vec(&mut rng, m * k);
            let b_cols = random_vec(&mut rng, n * k);
            let b_rows: Vec<f32> = (0..k * n).map(|i| b_cols[(i % n) * k + i / n]).collect();
            let product = |b: MatRef<'_, f32>| {
                let mut c = vec![0.0f32; m * n];
                let a = MatRef::new(&a, m, k, k, 1).unwrap();
                let out = MatMut::with_ld(&mut c, m, n, n).unwrap();
                gemm(isa, 1.0, a, b, 0.0, out, &Epilogue::NONE).unwrap();
                c
            };
            let streamed = product(MatRef::new(&b_cols, k, n, 1, k).unwrap());
            let packed = product(MatRef::new(&b_rows, k, n, n, 1).unwrap());
            for (i, (s, p)) in streamed.iter().zip(&packed).enumerate() {
                assert_eq!(s.to_bits(), p.to_bits(), "{isa} m={m} n={n} k={k}: C[{i}]");
            }
        }
    }
}

#[test]
fn a_column_comes_out_the_same_whatever_the_width_of_the_product() {
    // The last few columns of a product whose width is not a multiple of a vector may run in
    // another register layout than in a wider product; each output must still be formed in
    // the same order (bit for bit), with a residual, the row bias and the ReLU, into C
    // row-major and transposed. Depth 1100 spans several depth blocks.
    let (m, k, wide) = (37, 1100, 224);
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let a = random_vec(&mut rng, m * k);
    let b = random_vec(&mut rng, k * wide);
    let old = random_vec(&mut rng, m * wide);
    let row_bias = random_vec(&mut rng, m);
    let epi = Epilogue {
        row_bias: Some(&row_bias),
        col_bias: None,
        relu: true,
    };
    let product = |isa: Isa, n: usize, beta: f32, transposed: bool| {
        let narrow: Vec<f32> = (0..k).flat_map(|p| b[p * wide..][..n].to_vec()).collect();
        let mut c: Vec<f32> = (0..m * n)
            .map(|at| {
                let (i, j) = if transposed {
                    (at % m, at / m)
                } else {
                    (at / n, at % n)
                };
                old[i * wide + j]
            })
            .collect();
        let view = c_view(&mut c, m, n, transposed);
        let (ar, br) = (
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&narrow, k, n).unwrap(),
        );
        gemm(isa, 1.0, ar, br, beta, view, &epi).unwrap();
        c
    };
    for isa in Isa::available() {
        for (beta, transposed) in [(0.0, false), (1.0, false), (0.5, false), (1.0, true)] {
            let full = product(isa, wide, beta, transposed);
            for n in [1, 2, 3, 4, 5, 17, 18, 20, 21, 33, 36, 49, 52, 113, 196] {
                let part = product(isa, n, beta, transposed);
                for i in 0..m {
                    for j in 0..n {
                        let (at, at_full) = if transposed {
                            (j * m + i, j * m + i)
                        } else {
                            (i * n + j, i * wide + j)
                        };
                        assert_eq!(
                            part[at].to_bits(),
                            full[at_full].to_bits(),
                            "{isa} n {n} ({i},{j}) beta {beta} transposed {transposed}: {} vs {}",
                            part[at],
                            full[at_full]
                        );
                    }
                }
            }
        }
    }
}

/// Checks each `(m, n, k)` on every instruction set inside a pool of `threads` threads, plain
/// and with A transposed, `pad` values between rows, alpha 0.5 and beta 2.
fn check_on_threads(threads: usize, seed: u64, shapes: &[(usize, usize, usize)], pad: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        for isa in Isa::available() {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for &(m, n, k) in shapes {
                check_case::<f32>(isa, &mut rng, m, n, k, false, false, 0, 1.0, 0.0, 2e-5);
                check_case::<f32>(isa, &mut rng, m, n, k, true, false, pad, 0.5, 2.0, 2e-5);
            }
        }
    });
}

#[test]
fn a_packed_in_shares_over_threads() {
    // Products whose A is packed once for column tasks, large enough to be packed by every
    // thread in shares of its row panels: rows that end mid-panel, depths of one and of
    // several blocks, uneven shares on three threads.
    for threads in [2, 3] {
        check_on_threads(
            threads,
            43,
            &[(65, 257, 1000), (320, 320, 320), (191, 193, 211)],
            3,
        );
    }
}

#[test]
fn few_columns_split_in_half_tiles_over_threads() {
    // Column tasks on two threads with fewer than four tiles of columns per thread: the
    // columns are cut at half tiles, so tasks start and end mid-tile.
    check_on_threads(
        2,
        41,
        &[(256, 196, 300), (257, 129, 97), (33, 200, 1001)],
        5,
    );
}

#[test]
fn b_with_row_stride_of_a_panel_width_is_read_in_place_safely() {
    // A row stride equal to the AVX-512 panel width (32) once made the in-place path look
    // packed; the slice ends right after the last live element.
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for isa in Isa::available() {
        for (k, n) in [(4, 5), (8, 1), (3, 17)] {
            let b = random_vec(&mut rng, (k - 1) * 32 + n);
            let a = random_vec(&mut rng, k);
            let mut c = vec![0.0f32; n];
            let bv = MatRef::with_ld(&b, k, n, 32).unwrap();
            gemm(
                isa,
                1.0,
                MatRef::row_major(&a, 1, k).unwrap(),
                bv,
                0.0,
                MatMut::row_major(&mut c, 1, n).unwrap(),
                &Epilogue::NONE,
            )
            .unwrap();
            for (j, v) in c.iter().enumerate() {
                let exact: f64 = (0..k).map(|p| a[p] as f64 * b[p * 32 + j] as f64).sum();
                assert!((*v as f64 - exact).abs() < 1e-5, "{isa} k={k} n={n} j={j}");
            }
        }
    }
}

#[test]
fn stride_zero_views_that_overflow_the_packing_are_errors() {
    let one = [1.0f32];
    let mut out = [0.0f32];
    let a = MatRef::new(&one, 1, 1 << 62, 0, 0).unwrap();
    let b = MatRef::new(&one, 1 << 62, 1, 0, 0).unwrap();
    let c = MatMut::row_major(&mut out, 1, 1).unwrap();
    let err = gemm(Isa::Scalar, 1.0, a, b, 0.0, c, &Epilogue::NONE).unwrap_err();
    assert!(matches!(err, KernelError::SizeOverflow { .. }), "{err:?}");
}

#[test]
fn a_read_in_place_stops_at_its_last_live_row() {
    // Small products read A in place on some ISAs: the slice ends right after the last live
    // element, for row counts that leave partial register tiles, plain and transposed.
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for isa in Isa::available() {
        for (m, k, n) in [(1, 3, 5), (5, 7, 17), (7, 1, 16), (13, 9, 33), (3, 16, 8)] {
            // ld 6 makes a transposed A's strides look like a packed 6-row panel.
            for (transposed, ld) in [(false, 40), (true, 40), (false, 6), (true, 6)] {
                let (lines, line_len) = if transposed { (k, m) } else { (m, k) };
                if line_len > ld {
                    continue;
                }
                let a = random_vec(&mut rng, (lines - 1) * ld + line_len);
                let av = if transposed {
                    MatRef::with_ld(&a, k, m, ld).unwrap().t()
                } else {
                    MatRef::with_ld(&a, m, k, ld).unwrap()
                };
                let b = random_vec(&mut rng, k * n);
                let mut c = vec![f32::NAN; m * n];
                gemm(
                    isa,
                    1.5,
                    av,
                    MatRef::row_major(&b, k, n).unwrap(),
                    0.0,
                    MatMut::row_major(&mut c, m, n).unwrap(),
                    &Epilogue::NONE,
                )
                .unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|p| av.at(i, p) as f64 * b[p * n + j] as f64)
                            .sum::<f64>()
                            * 1.5;
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - exact).abs() < 1e-5 * (1.0 + exact.abs()),
                            "{isa} {m}x{k}x{n} transposed={transposed} ({i},{j}): {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
