//! Softmax, log-softmax, batch normalisation and LRN against float64 references on seeded
//! random data, on every instruction set here, serial and split across a pool.

use accelmesh_kernels::norm::{
    BatchNorm, Lrn, batch_norm, batch_norm_inplace, batch_norm_with_isa, log_softmax,
    log_softmax_inplace, lrn, softmax, softmax_inplace, softmax_inplace_with_isa,
};
use accelmesh_kernels::{Isa, KernelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{pool, random_vec};

/// (outer, n, inner) of `axis`.
fn geometry(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        dims[..axis].iter().product(),
        dims[axis],
        dims[axis + 1..].iter().product(),
    )
}

/// Softmax or log-softmax in f64, straight from the definition (max-shifted).
fn softmax_ref(x: &[f32], dims: &[usize], axis: usize, log: bool) -> Vec<f64> {
    let (outer, n, inner) = geometry(dims, axis);
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * n * inner + k * inner + i;
            let m = (0..n)
                .map(|k| x[at(k)] as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..n).map(|k| (x[at(k)] as f64 - m).exp()).sum();
            for k in 0..n {
                let d = x[at(k)] as f64 - m;
                y[at(k)] = if log { d - s.ln() } else { d.exp() / s };
            }
        }
    }
    y
}

fn check_softmax(x: &[f32], dims: &[usize], axis: usize, isa: Isa, threads: &rayon::ThreadPool) {
    let (outer, n, inner) = geometry(dims, axis);
    for log in [false, true] {
        let expect = softmax_ref(x, dims, axis, log);
        let mut y = x.to_vec();
        threads
            .install(|| softmax_inplace_with_isa(&mut y, dims, axis, log, isa))
            .unwrap();
        for (i, (&v, &r)) in y.iter().zip(&expect).enumerate() {
            let tol = if log {
                1e-6 * r.abs().max(1.0)
            } else {
                1e-6 * r + 1e-37
            };
            assert!(
                (v as f64 - r).abs() <= tol,
                "{isa} log={log} dims {dims:?} axis {axis} at {i}: {v} vs {r}"
            );
        }
        if !log {
            // Every slice along the axis sums to 1.
            for o in 0..outer {
                for i in 0..inner {
                    let s: f64 = (0..n)
                        .map(|k| y[o * n * inner + k * inner + i] as f64)
                        .sum();
                    assert!(
                        (s - 1.0).abs() < 1e-5,
                        "{isa} {dims:?} axis {axis}: sum {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let threads = pool(4);
    let shapes: &[&[usize]] = &[
        &[1],
        &[7],
        &[129],
        &[3, 17],
        &[33, 1],
        &[2, 3, 4, 5],
        &[5, 7, 1, 9],
        &[129, 33],
    ];
    for isa in Isa::available() {
        for &dims in shapes {
            let len: usize = dims.iter().product();
            let x = random_vec(&mut rng, len, -10.0, 10.0);
            for axis in 0..dims.len() {
                check_softmax(&x, dims, axis, isa, &threads);
            }
        }
    }
}

#[test]
fn softmax_parallel_paths() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let threads = pool(4);
    // (dims, axis): one long row per outer index; many short rows; channel axis of a big map;
    // strided axis with a single outer block.
    let cases: &[(&[usize], usize)] = &[
        (&[2, 70_001], 1),
        (&[1, 100_003], 1),
        (&[300, 257], 1),
        (&[2, 21, 61, 67], 1),
        (&[1, 5, 20_011], 1),
        (&[70_001, 2], 0),
    ];
    for isa in Isa::available() {
        for &(dims, axis) in cases {
            let len: usize = dims.iter().product();
            let x = random_vec(&mut rng, len, -20.0, 20.0);
            check_softmax(&x, dims, axis, isa, &threads);
        }
    }
}

#[test]
fn softmax_is_stable_for_large_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let threads = pool(2);
    for offset in [1e4f32, -1e4, 3e37, -3e37] {
        for &(dims, axis) in &[(&[5usize, 33][..], 1usize), (&[4, 9, 3], 1)] {
            let len: usize = dims.iter().product();
            // Spread comparable to the magnitude, so that e^x would overflow without the shift.
            let spread = offset.abs() * 1e-3;
            let x: Vec<f32> = (0..len)
                .map(|_| offset + rng.random_range(-spread..spread))
                .collect();
            for isa in Isa::available() {
                check_softmax(&x, dims, axis, isa, &threads);
            }
            let mut y = vec![0.0; len];
            softmax(&x, dims, axis, &mut y).unwrap();
            assert!(y.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }
}

#[test]
fn softmax_special_values() {
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    for isa in Isa::available() {
        for log in [false, true] {
            // Rows: two +inf share the mass; -inf entries get nothing; NaN poisons its own row.
            let mut x = vec![
                1.0, inf, -inf, inf, //
                0.0, -inf, 2.0, -inf, //
                1.0, nan, 3.0, 4.0, //
                -inf, -inf, -inf, -inf,
            ];
            softmax_inplace_with_isa(&mut x, &[4, 4], 1, log, isa).unwrap();
            let (half, zero) = if log {
                (-(2f32.ln()), f32::NEG_INFINITY)
            } else {
                (0.5, 0.0)
            };
            assert_eq!(&x[0..4], &[zero, half, zero, half], "{isa} log={log}");
            let e2 = if log {
                -(1.0 + (-2.0f32).exp()).ln()
            } else {
                1.0 / (1.0 + (-2.0f32).exp())
            };
            assert_eq!(x[5], zero);
            assert_eq!(x[7], zero);
            assert!((x[6] - e2).abs() < 1e-6, "{isa} {}", x[6]);
            assert!(x[8..12].iter().all(|v| v.is_nan()));
            assert!(x[12..16].iter().all(|v| v.is_nan()), "all -inf is 0/0");
            // The same through the strided path: the slices are the columns of a [4, 4].
            let mut t = vec![
                1.0, 0.0, 1.0, //
                inf, -inf, nan, //
                -inf, 2.0, 3.0, //
                inf, -inf, 4.0,
            ];
            softmax_inplace_with_isa(&mut t, &[4, 3], 0, log, isa).unwrap();
            assert_eq!([t[0], t[3], t[6], t[9]], [zero, half, zero, half], "{isa}");
            assert_eq!([t[4], t[10]], [zero, zero]);
            assert!((t[7] - e2).abs() < 1e-6);
            assert!([t[2], t[5], t[8], t[11]].iter().all(|v| v.is_nan()));
        }
    }
}

#[test]
fn softmax_errors_and_wrappers() {
    let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut y = [0.0f32; 6];
    let e = softmax(&x, &[2, 3], 2, &mut y).unwrap_err();
    assert!(
        matches!(e, KernelError::InvalidArgument { name: "axis", .. }),
        "{e:?}"
    );
    let e = softmax(&x, &[2, 4], 1, &mut y).unwrap_err();
    assert!(e.to_string().contains("6 elements"), "{e}");
    let e = log_softmax(&x, &[2, 3], 1, &mut y[..5]).unwrap_err();
    assert!(matches!(e, KernelError::ShapeMismatch { .. }));
    softmax(&x, &[2, 3], 1, &mut y).unwrap();
    let mut z = x;
    softmax_inplace(&mut z, &[2, 3], 1).unwrap();
    assert_eq!(y, z);
    log_softmax(&x, &[2, 3], 0, &mut y).unwrap();
    let mut z = x;
    log_softmax_inplace(&mut z, &[2, 3], 0).unwrap();
    assert_eq!(y, z);
    assert!((y[0] - (-(1.0 + 3f32.exp()).ln())).abs() < 1e-6);
    // Empty tensors are fine.
    softmax_inplace(&mut [], &[0, 3], 1).unwrap();
    softmax_inplace(&mut [], &[3, 0], 0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Batch normalisation.
// ---------------------------------------------------------------------------------------------

struct BnParams {
    scale: Vec<f32>,
    bias: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl BnParams {
    fn random(rng: &mut ChaCha8Rng, c: usize) -> Self {
        BnParams {
            scale: random_vec(rng, c, -2.0, 2.0),
            bias: random_vec(rng, c, -1.0, 1.0),
            mean: random_vec(rng, c, -1.0, 1.0),
            var: random_vec(rng, c, 0.0, 3.0),
        }
    }

    fn view(&self, epsilon: f32) -> BatchNorm<'_> {
        BatchNorm {
            scale: &self.scale,
            bias: &self.bias,
            mean: &self.mean,
            var: &self.var,
            epsilon,
            relu: false,
        }
    }
}

#[test]
fn batch_norm_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let threads = pool(4);
    let shapes: &[&[usize]] = &[
        &[1, 1],
        &[4, 33],
        &[2, 3, 5, 7],
        &[1, 17, 1, 1],
        &[2, 8, 3, 4, 5],
        &[3, 7, 17],
        &[2, 64, 56, 57],
    ];
    for &dims in shapes {
        let c = dims[1];
        let plane: usize = dims[2..].iter().product();
        let len: usize = dims.iter().product();
        let x = random_vec(&mut rng, len, -4.0, 4.0);
        let p = BnParams::random(&mut rng, c);
        let eps = 1e-5;
        for (isa, relu) in Isa::available()
            .into_iter()
            .flat_map(|isa| [(isa, false), (isa, true)])
        {
            let mut y = vec![f32::NAN; len];
            let params = BatchNorm {
                relu,
                ..p.view(eps)
            };
            threads
                .install(|| batch_norm_with_isa(&x, dims, &params, &mut y, isa))
                .unwrap();
            for i in 0..len {
                let ch = (i / plane) % c;
                let k = p.scale[ch] as f64 / (p.var[ch] as f64 + eps as f64).sqrt();
                let d = (x[i] as f64 - p.mean[ch] as f64) * k;
                let r = d + p.bias[ch] as f64;
                let r = if relu { r.max(0.0) } else { r };
                let tol = 1e-6 * (d.abs() + (p.bias[ch] as f64).abs()) + 1e-30;
                assert!(
                    (y[i] as f64 - r).abs() <= tol,
                    "{isa} relu {relu} {dims:?} at {i}: {} vs {r}",
                    y[i]
                );
            }
        }
        let mut a = vec![0.0; len];
        threads
            .install(|| batch_norm(&x, dims, &p.view(eps), &mut a))
            .unwrap();
        let mut b = x.clone();
        threads
            .install(|| batch_norm_inplace(&mut b, dims, &p.view(eps)))
            .unwrap();
        assert_eq!(a, b, "{dims:?}: in place and out of place agree");
    }
}

#[test]
fn batch_norm_errors() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let x = vec![1.0f32; 2 * 3 * 4];
    let mut y = vec![0.0f32; 24];
    let mut p = BnParams::random(&mut rng, 3);
    let dims = [2, 3, 4];
    batch_norm(&x, &dims, &p.view(1e-5), &mut y).unwrap();
    let e = batch_norm(&x, &[2, 4, 3], &p.view(1e-5), &mut y).unwrap_err();
    assert!(
        e.to_string().contains("scale has 3 values for 4 channels"),
        "{e}"
    );
    let e = batch_norm(&x, &[24], &p.view(1e-5), &mut y).unwrap_err();
    assert!(matches!(
        e,
        KernelError::InvalidArgument { name: "dims", .. }
    ));
    let e = batch_norm(&x, &dims, &p.view(-1.0), &mut y).unwrap_err();
    assert!(matches!(
        e,
        KernelError::InvalidArgument {
            name: "epsilon",
            ..
        }
    ));
    let e = batch_norm(&x, &dims, &p.view(1e-5), &mut y[..23]).unwrap_err();
    assert!(matches!(e, KernelError::ShapeMismatch { .. }));
    p.var[1] = -1.0;
    let e = batch_norm(&x, &dims, &p.view(1e-5), &mut y).unwrap_err();
    assert!(e.to_string().contains("var[1] = -1"), "{e}");
    p.var[1] = f32::NAN;
    let e = batch_norm(&x, &dims, &p.view(1e-5), &mut y).unwrap_err();
    assert!(e.to_string().contains("var[1] = NaN"), "{e}");
    p.var[1] = 0.0;
    let e = batch_norm(&x, &dims, &p.view(0.0), &mut y).unwrap_err();
    assert!(matches!(
        e,
        KernelError::InvalidArgument { name: "var", .. }
    ));
    p.var[1] = 1.0;
    p.mean.pop();
    let e = batch_norm(&x, &dims, &p.view(1e-5), &mut y).unwrap_err();
    assert!(e.to_string().contains("mean has 2 values"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// LRN.
// ---------------------------------------------------------------------------------------------

fn lrn_ref(x: &[f32], dims: [usize; 4], p: &Lrn) -> Vec<f64> {
    let [n, c, h, w] = dims;
    let plane = h * w;
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            let lo = ch.saturating_sub((p.size - 1) / 2);
            // ONNX: [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)], clipped.
            let hi = (ch + (p.size - 1).div_ceil(2)).min(c - 1);
            for i in 0..plane {
                let sq: f64 = (lo..=hi)
                    .map(|cc| (x[(b * c + cc) * plane + i] as f64).powi(2))
                    .sum();
                let v = x[(b * c + ch) * plane + i] as f64;
                let base = p.bias as f64 + p.alpha as f64 / p.size as f64 * sq;
                y[(b * c + ch) * plane + i] = v / base.powf(p.beta as f64);
            }
        }
    }
    y
}

#[test]
fn lrn_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let threads = pool(4);
    let params = [
        Lrn::default(),
        Lrn {
            size: 3,
            alpha: 0.01,
            beta: 0.5,
            bias: 2.0,
        },
        Lrn {
            size: 4,
            alpha: 0.5,
            beta: 1.0,
            bias: 1.0,
        },
        Lrn {
            size: 1,
            alpha: 1.0,
            beta: 0.6,
            bias: 0.5,
        },
        Lrn {
            size: 9,
            alpha: 0.2,
            beta: 0.75,
            bias: 1.0,
        },
    ];
    for dims in [[1, 1, 1, 1], [2, 7, 5, 3], [1, 17, 9, 11], [2, 96, 27, 27]] {
        let len: usize = dims.iter().product();
        let x = random_vec(&mut rng, len, -3.0, 3.0);
        for p in &params {
            let expect = lrn_ref(&x, dims, p);
            let mut y = vec![f32::NAN; len];
            threads.install(|| lrn(&x, dims, p, &mut y)).unwrap();
            for i in 0..len {
                assert!(
                    (y[i] as f64 - expect[i]).abs() <= 2e-6 * expect[i].abs() + 1e-30,
                    "{dims:?} {p:?} at {i}: {} vs {}",
                    y[i],
                    expect[i]
                );
            }
        }
    }
    let mut y = [0.0f32; 4];
    let e = lrn(
        &[1.0; 4],
        [1, 4, 1, 1],
        &Lrn {
            size: 0,
            ..Lrn::default()
        },
        &mut y,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        KernelError::InvalidArgument { name: "size", .. }
    ));
    let bad = Lrn {
        beta: f32::NAN,
        ..Lrn::default()
    };
    assert!(lrn(&[1.0; 4], [1, 4, 1, 1], &bad, &mut y).is_err());
    assert!(lrn(&[1.0; 4], [1, 2, 1, 1], &Lrn::default(), &mut y).is_err());
}
