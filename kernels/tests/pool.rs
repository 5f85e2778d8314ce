//! 2-D max / average pooling and global pooling against a naive float64 reference of the ONNX
//! semantics, on every instruction set here, serial and split across a pool.

use accelmesh_kernels::pool::{
    Pool2dParams, avg_pool2d, avg_pool2d_with_isa, global_average_pool, global_max_pool,
    max_pool2d, max_pool2d_with_isa, pool2d_output_dims,
};
use accelmesh_kernels::{Isa, KernelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::pool;

fn random_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-5.0f32..5.0)).collect()
}

/// ONNX output length of one axis, written out independently of the kernel.
fn out_len(len: usize, k: usize, s: usize, pb: usize, pe: usize, d: usize, ceil: bool) -> usize {
    let extent = (k - 1) * d + 1;
    let span = (len + pb + pe - extent) as f64 / s as f64;
    let mut out = if ceil { span.ceil() } else { span.floor() } as usize + 1;
    if ceil && (out - 1) * s >= len + pb {
        out -= 1;
    }
    out
}

/// Naive pooling: every output visits its taps, checks each against the input and the padded
/// input, and reduces in f64. Returns the output and its dims.
fn pool_ref(x: &[f32], dims: [usize; 4], p: &Pool2dParams, max: bool) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = dims;
    let oh = out_len(
        h,
        p.kernel[0],
        p.stride[0],
        p.pads[0],
        p.pads[2],
        p.dilation[0],
        p.ceil_mode,
    );
    let ow = out_len(
        w,
        p.kernel[1],
        p.stride[1],
        p.pads[1],
        p.pads[3],
        p.dilation[1],
        p.ceil_mode,
    );
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for r in 0..oh {
            for q in 0..ow {
                let (mut best, mut sum, mut valid, mut padded) = (f64::NEG_INFINITY, 0.0, 0, 0);
                let mut nan = false;
                for i in 0..p.kernel[0] {
                    let ih = (r * p.stride[0] + i * p.dilation[0]) as isize - p.pads[0] as isize;
                    for j in 0..p.kernel[1] {
                        let iw =
                            (q * p.stride[1] + j * p.dilation[1]) as isize - p.pads[1] as isize;
                        let in_pad_h = ih >= -(p.pads[0] as isize) && ih < (h + p.pads[2]) as isize;
                        let in_pad_w = iw >= -(p.pads[1] as isize) && iw < (w + p.pads[3]) as isize;
                        if in_pad_h && in_pad_w {
                            padded += 1;
                        }
                        if ih >= 0 && (ih as usize) < h && iw >= 0 && (iw as usize) < w {
                            let v = x[plane * h * w + ih as usize * w + iw as usize] as f64;
                            nan |= v.is_nan();
                            best = best.max(v);
                            sum += v;
                            valid += 1;
                        }
                    }
                }
                y.push(if max {
                    if nan { f32::NAN } else { best as f32 }
                } else {
                    let div = if p.count_include_pad { padded } else { valid };
                    (sum / div as f64) as f32
                });
            }
        }
    }
    (y, [n, c, oh, ow])
}

fn assert_close(got: &[f32], want: &[f32], exact: bool, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if exact {
            g == w
        } else {
            (g - w).abs() <= 1e-6 * w.abs().max(1.0)
        };
        assert!(ok, "{what} at {i}: {g} vs {w}");
    }
}

fn check(x: &[f32], dims: [usize; 4], p: &Pool2dParams, isa: Isa, threads: &rayon::ThreadPool) {
    for max in [true, false] {
        let (want, want_dims) = pool_ref(x, dims, p, max);
        assert_eq!(
            pool2d_output_dims(dims, p).unwrap(),
            want_dims,
            "{dims:?} {p:?}"
        );
        let mut y = vec![f32::NAN; want.len()];
        threads
            .install(|| {
                if max {
                    max_pool2d_with_isa(x, dims, p, &mut y, isa)
                } else {
                    avg_pool2d_with_isa(x, dims, p, &mut y, isa)
                }
            })
            .unwrap();
        let what = format!("{isa} max={max} {dims:?} {p:?}");
        assert_close(&y, &want, max, &what);
    }
}

#[test]
fn random_geometries_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let threads = pool(3);
    let sizes = [1, 2, 5, 7, 17, 33];
    let mut checked = 0;
    for _ in 0..400 {
        let dims = [
            rng.random_range(1..=2),
            rng.random_range(1..=3),
            sizes[rng.random_range(0..sizes.len())],
            sizes[rng.random_range(0..sizes.len())],
        ];
        let kernel = [rng.random_range(1..=4), rng.random_range(1..=4)];
        let p = Pool2dParams {
            kernel,
            stride: [rng.random_range(1..=3), rng.random_range(1..=3)],
            pads: [
                rng.random_range(0..kernel[0]),
                rng.random_range(0..kernel[1]),
                rng.random_range(0..kernel[0]),
                rng.random_range(0..kernel[1]),
            ],
            dilation: [rng.random_range(1..=2), rng.random_range(1..=2)],
            ceil_mode: rng.random_range(0..2) == 1,
            count_include_pad: rng.random_range(0..2) == 1,
        };
        let fits = (0..2)
            .all(|a| dims[2 + a] + p.pads[a] + p.pads[a + 2] > (p.kernel[a] - 1) * p.dilation[a]);
        if !fits {
            let e = pool2d_output_dims(dims, &p).unwrap_err();
            assert!(matches!(e, KernelError::ShapeMismatch { .. }), "{e:?}");
            continue;
        }
        let x = random_vec(&mut rng, dims.iter().product());
        for isa in Isa::available() {
            check(&x, dims, &p, isa, &threads);
        }
        checked += 1;
    }
    assert!(checked > 250, "only {checked} geometries fit");
}

#[test]
fn every_option_on_odd_sizes() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let threads = pool(2);
    for &(h, w) in &[(1, 1), (7, 7), (17, 33), (33, 17), (129, 7)] {
        let dims = [2, 3, h, w];
        let x = random_vec(&mut rng, dims.iter().product());
        for stride in 1..=3 {
            for &(pads, kernel) in &[
                ([0, 0, 0, 0], [1, 1]),
                ([0, 0, 0, 0], [2, 2]),
                ([1, 1, 1, 1], [3, 3]),
                ([0, 1, 2, 0], [3, 3]),
                ([2, 0, 1, 3], [3, 4]),
                ([1, 0, 0, 1], [2, 3]),
            ] {
                for ceil_mode in [false, true] {
                    for count_include_pad in [false, true] {
                        let p = Pool2dParams::new(kernel)
                            .with_stride([stride, stride])
                            .with_pads(pads)
                            .with_ceil_mode(ceil_mode)
                            .with_count_include_pad(count_include_pad);
                        if pool2d_output_dims(dims, &p).is_err() {
                            continue;
                        }
                        for isa in Isa::available() {
                            check(&x, dims, &p, isa, &threads);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn large_tensors_split_across_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let threads = pool(4);
    let dims = [2, 64, 56, 57];
    let x = random_vec(&mut rng, dims.iter().product());
    let cases = [
        Pool2dParams::new([3, 3])
            .with_stride([2, 2])
            .with_pads([1, 1, 1, 1]),
        Pool2dParams::new([2, 2])
            .with_stride([2, 2])
            .with_ceil_mode(true),
        Pool2dParams::new([3, 3])
            .with_pads([1, 1, 1, 1])
            .with_count_include_pad(true),
        Pool2dParams::new([1, 1]).with_stride([1, 1]),
    ];
    for p in &cases {
        for isa in Isa::available() {
            check(&x, dims, p, isa, &threads);
        }
    }
    // One huge plane.
    let dims = [1, 1, 513, 301];
    let x = random_vec(&mut rng, dims.iter().product());
    check(&x, dims, &cases[0], Isa::selected(), &threads);
}

#[test]
fn onnx_examples() {
    let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let dims = [1, 1, 4, 4];
    // test_maxpool_2d_ceil / test_averagepool_2d_ceil.
    let p = Pool2dParams::new([3, 3])
        .with_stride([2, 2])
        .with_ceil_mode(true);
    assert_eq!(pool2d_output_dims(dims, &p).unwrap(), [1, 1, 2, 2]);
    let mut y = [0.0f32; 4];
    max_pool2d(&x, dims, &p, &mut y).unwrap();
    assert_eq!(y, [11.0, 12.0, 15.0, 16.0]);
    avg_pool2d(&x, dims, &p, &mut y).unwrap();
    assert_eq!(y, [6.0, 7.5, 12.0, 13.5]);
    // test_maxpool_2d_ceil_output_size_reduce_by_one: the last window would start past the end.
    let p = Pool2dParams::new([1, 1])
        .with_stride([2, 2])
        .with_ceil_mode(true);
    assert_eq!(pool2d_output_dims([1, 1, 2, 2], &p).unwrap(), [1, 1, 1, 1]);
    // Same pads, count_include_pad: the corner of a 3×3 window over a 1-padded 4×4.
    let p = Pool2dParams::new([3, 3])
        .with_pads([1, 1, 1, 1])
        .with_count_include_pad(true);
    let mut y = [0.0f32; 16];
    avg_pool2d(&x, dims, &p, &mut y).unwrap();
    assert_eq!(y[0], (1.0 + 2.0 + 5.0 + 6.0) / 9.0);
    let p = p.with_count_include_pad(false);
    avg_pool2d(&x, dims, &p, &mut y).unwrap();
    assert_eq!(y[0], (1.0 + 2.0 + 5.0 + 6.0) / 4.0);
}

#[test]
fn max_pool_special_values() {
    let nan = f32::NAN;
    let ninf = f32::NEG_INFINITY;
    // Padding never wins over negative data, NaN propagates, -inf is an ordinary value.
    let x = [-3.0f32, -2.0, nan, -4.0, ninf, ninf, -1.0, -5.0, -6.0];
    let dims = [1, 1, 3, 3];
    let p = Pool2dParams::new([2, 2]).with_pads([1, 1, 0, 0]);
    for isa in Isa::available() {
        let mut y = [0.0f32; 9];
        max_pool2d_with_isa(&x, dims, &p, &mut y, isa).unwrap();
        assert_eq!(
            y[0], -3.0,
            "{isa}: a corner window holds one value, padding ignored"
        );
        assert_eq!(y[1], -2.0);
        assert!(y[2].is_nan() && y[5].is_nan(), "{isa}: {y:?}");
        assert_eq!(y[4], -2.0);
        assert_eq!(y[7], -1.0);
        assert_eq!(y[8], -5.0);
        let x2 = [ninf; 9];
        max_pool2d_with_isa(&x2, dims, &p, &mut y, isa).unwrap();
        assert!(y.iter().all(|&v| v == ninf));
    }
}

#[test]
fn global_pools_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    let threads = pool(4);
    for dims in [
        [1, 1, 1, 1],
        [2, 3, 7, 7],
        [1, 17, 33, 1],
        [3, 5, 129, 17],
        [2, 64, 56, 56],
        [1, 2, 224, 224],
    ] {
        let [n, c, h, w] = dims;
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.random_range(-2.0f32..4.0))
            .collect();
        let mut avg = vec![0.0f32; n * c];
        let mut max = vec![0.0f32; n * c];
        threads
            .install(|| global_average_pool(&x, dims, &mut avg))
            .unwrap();
        threads
            .install(|| global_max_pool(&x, dims, &mut max))
            .unwrap();
        for (i, plane) in x.chunks(h * w).enumerate() {
            let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64;
            assert!(
                (avg[i] as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "{dims:?} plane {i}: {} vs {mean}",
                avg[i]
            );
            let m = plane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max[i], m);
        }
    }
    let mut y = [0.0f32; 2];
    global_max_pool(&[1.0, f32::NAN, 2.0, 3.0], [1, 2, 1, 2], &mut y).unwrap();
    assert!(y[0].is_nan());
    assert_eq!(y[1], 3.0);
    let e = global_average_pool(&[1.0; 6], [1, 2, 3, 1], &mut y[..1]).unwrap_err();
    assert!(e.to_string().contains("out"), "{e}");
    let e = global_average_pool(&[], [1, 2, 0, 1], &mut y).unwrap_err();
    assert!(matches!(e, KernelError::InvalidArgument { .. }));
}

#[test]
fn bad_parameters_are_refused() {
    let x = vec![1.0f32; 2 * 3 * 5 * 5];
    let dims = [2, 3, 5, 5];
    let mut y = vec![0.0f32; 2 * 3 * 5 * 5];
    let zero_kernel = Pool2dParams::new([0, 3]);
    let e = max_pool2d(&x, dims, &zero_kernel, &mut y).unwrap_err();
    assert!(
        matches!(e, KernelError::InvalidArgument { name: "kernel", .. }),
        "{e:?}"
    );
    let e = avg_pool2d(
        &x,
        dims,
        &Pool2dParams::new([2, 2]).with_stride([1, 0]),
        &mut y,
    )
    .unwrap_err();
    assert!(
        matches!(e, KernelError::InvalidArgument { name: "stride", .. }),
        "{e:?}"
    );
    let e = max_pool2d(
        &x,
        dims,
        &Pool2dParams::new([2, 2]).with_dilation([0, 1]),
        &mut y,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::InvalidArgument {
                name: "dilation",
                ..
            }
        ),
        "{e:?}"
    );
    let e = max_pool2d(
        &x,
        dims,
        &Pool2dParams::new([2, 2]).with_pads([0, 0, 2, 0]),
        &mut y,
    )
    .unwrap_err();
    assert!(e.to_string().contains("pads"), "{e}");
    let e = max_pool2d(&x, dims, &Pool2dParams::new([6, 1]), &mut y).unwrap_err();
    assert!(e.to_string().contains("height"), "{e}");
    let e = max_pool2d(
        &x,
        dims,
        &Pool2dParams::new([3, 3]).with_dilation([1, 3]),
        &mut y,
    )
    .unwrap_err();
    assert!(e.to_string().contains("width"), "{e}");
    // Output buffer sized for another geometry.
    let e = max_pool2d(&x, dims, &Pool2dParams::new([2, 2]), &mut y).unwrap_err();
    assert!(e.to_string().contains("output has 150 elements"), "{e}");
    let e = avg_pool2d(&x[..10], dims, &Pool2dParams::new([1, 1]), &mut y).unwrap_err();
    assert!(e.to_string().contains("input has 10 elements"), "{e}");
    let e = pool2d_output_dims([1, 1, 0, 4], &Pool2dParams::new([1, 1])).unwrap_err();
    assert!(matches!(
        e,
        KernelError::InvalidArgument { name: "dims", .. }
    ));
    // Empty batch is fine.
    max_pool2d(&[], [0, 3, 5, 5], &Pool2dParams::new([2, 2]), &mut []).unwrap();
}

#[test]
fn absurd_windows_are_refused_or_cheap() {
    use accelmesh_kernels::pool::{Pool2dParams, max_pool2d, pool2d_output_dims};
    // Pads beyond isize: refused.
    let p = Pool2dParams::new([usize::MAX / 2, 1]).with_pads([usize::MAX / 2 - 1, 0, 0, 0]);
    assert!(pool2d_output_dims([1, 1, 1, 1], &p).is_err());
    // A huge window over one pixel: refused before anything is built for it.
    let p = Pool2dParams::new([1 << 40, 1]).with_pads([(1 << 40) - 1, 0, 0, 0]);
    assert!(matches!(
        pool2d_output_dims([1, 1, 1, 1], &p),
        Err(KernelError::InvalidArgument { name: "kernel", .. })
    ));
    // The largest window allowed, over one pixel with padding: one output, the pixel itself.
    let k = accelmesh_kernels::pool::MAX_WINDOW;
    let p = Pool2dParams::new([k, 1]).with_pads([k - 1, 0, 0, 0]);
    assert_eq!(pool2d_output_dims([1, 1, 1, 1], &p).unwrap(), [1, 1, 1, 1]);
    let mut y = [0.0f32];
    max_pool2d(&[2.5], [1, 1, 1, 1], &p, &mut y).unwrap();
    assert_eq!(y[0], 2.5);
}

#[test]
fn size_keeping_windows_over_many_planes() {
    // Unit stride, pads adding up to the kernel less one: the output keeps the plane's size
    // and all of a task's planes are reduced as one line, so plane and row borders matter.
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    let threads = pool(2);
    for &(h, w) in &[(1, 1), (2, 3), (6, 6), (13, 13), (7, 17), (33, 1)] {
        for &(kernel, pads) in &[
            ([3, 3], [1, 1, 1, 1]),
            ([3, 3], [0, 2, 2, 0]),
            ([5, 5], [2, 2, 2, 2]),
            ([2, 4], [1, 3, 0, 0]),
            ([1, 3], [0, 1, 0, 1]),
        ] {
            let dims = [2, 37, h, w];
            let mut x = random_vec(&mut rng, dims.iter().product());
            // NaN on the last value of some planes: it must not leak into the next plane.
            for plane in (0..74).step_by(9) {
                x[(plane + 1) * h * w - 1] = f32::NAN;
            }
            for count_include_pad in [false, true] {
                let p = Pool2dParams::new(kernel)
                    .with_pads(pads)
                    .with_count_include_pad(count_include_pad);
                assert_eq!(pool2d_output_dims(dims, &p).unwrap(), dims);
                for isa in Isa::available() {
                    check(&x, dims, &p, isa, &threads);
                }
            }
        }
    }
}

#[test]
fn whole_plane_windows_match_reference() {
    // A window exactly the plane's size, no padding: one output per plane, taken as a global
    // pooling; strides and ceil mode cannot add outputs. NaN stays in its own plane.
    let mut rng = ChaCha8Rng::seed_from_u64(45);
    let threads = pool(2);
    for &(n, c, h, w) in &[
        (1, 1, 1, 1),
        (1, 7, 7, 7),
        (3, 17, 5, 9),
        (8, 129, 7, 7),
        (1, 33, 17, 1),
    ] {
        let dims = [n, c, h, w];
        let mut x = random_vec(&mut rng, dims.iter().product());
        x[h * w - 1] = f32::NAN;
        for (stride, ceil_mode) in [([1, 1], false), ([2, 3], true)] {
            let p = Pool2dParams::new([h, w])
                .with_stride(stride)
                .with_ceil_mode(ceil_mode);
            assert_eq!(pool2d_output_dims(dims, &p).unwrap(), [n, c, 1, 1]);
            for isa in Isa::available() {
                check(&x, dims, &p, isa, &threads);
            }
        }
    }
}
