//! Elementwise kernels against float64 references on seeded random data, on every instruction
//! set here: accuracy sweeps of the transcendental approximations, NaN / ±inf behaviour,
//! activations with parameters, and every broadcasting pattern of the binary ops.

use accelmesh_kernels::elementwise::{
    BinaryOp, Unary, add, binary_assign, binary_with_isa, broadcast_shape, clip, div, elu,
    leaky_relu, mul, relu, sigmoid, sub, unary, unary_into, unary_into_with_isa, unary_with_isa,
};
use accelmesh_kernels::{Isa, KernelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{pool, random_vec};

const SIZES: [usize; 8] = [1, 7, 16, 17, 33, 129, 1000, 200_003];

// ---------------------------------------------------------------------------------------------
// float64 references.
// ---------------------------------------------------------------------------------------------

/// erf by its everywhere-positive series (|x| < 2.5) or via erfc.
fn erf64(x: f64) -> f64 {
    if x < 0.0 {
        return -erf64(-x);
    }
    if x < 2.5 {
        let (mut t, mut s, mut n) = (x, x, 0.0);
        loop {
            n += 1.0;
            t *= 2.0 * x * x / (2.0 * n + 1.0);
            s += t;
            if t <= 1e-17 * s {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * s
    } else {
        1.0 - erfc64(x)
    }
}

/// erfc by a continued fraction (x ≥ 2.5) or via erf; ~1e-14 relative.
fn erfc64(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc64(-x);
    }
    if x < 2.5 {
        return 1.0 - erf64(x);
    }
    let mut k = x;
    for i in (1..=120).rev() {
        k = x + (i as f64 / 2.0) / k;
    }
    (-x * x).exp() / (std::f64::consts::PI.sqrt() * k)
}

fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn reference(op: Unary, x: f64) -> f64 {
    match op {
        Unary::Relu => x.max(0.0),
        Unary::Clip { min, max } => x.clamp(min as f64, max as f64),
        Unary::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                alpha as f64 * x
            }
        }
        Unary::Elu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                alpha as f64 * x.exp_m1()
            }
        }
        Unary::Sigmoid => sigmoid64(x),
        Unary::Tanh => x.tanh(),
        Unary::Gelu => 0.5 * x * erfc64(-x / std::f64::consts::SQRT_2),
        Unary::GeluTanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            x * sigmoid64(2.0 * u)
        }
        Unary::Silu => x * sigmoid64(x),
        Unary::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
        Unary::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        Unary::Exp => x.exp(),
        Unary::Expm1 => x.exp_m1(),
        Unary::Erf => erf64(x),
        Unary::Erfc => erfc64(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Accuracy of the approximations.
// ---------------------------------------------------------------------------------------------

/// Dense sweep of `[lo, hi]` plus log-spaced magnitudes from 1e-30 up, both signs, clipped.
fn sweep(lo: f32, hi: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut xs = Vec::new();
    let steps = 200_000;
    for i in 0..=steps {
        xs.push(lo + (hi - lo) * (i as f32 / steps as f32));
    }
    for i in 0..20_000 {
        let m = 10f32.powf(-30.0 + 31.0 * i as f32 / 20_000.0);
        for v in [m, -m] {
            if v >= lo && v <= hi {
                xs.push(v);
            }
        }
    }
    xs.extend((0..50_000).map(|_| rng.random_range(lo..hi)));
    xs
}

/// Max relative error where the reference is a normal f32, and max absolute error below.
fn measure(op: Unary, xs: &[f32], isa: Isa) -> (f64, f32, f64) {
    let mut y = vec![0.0; xs.len()];
    unary_into_with_isa(op, xs, &mut y, isa).unwrap();
    let (mut worst_rel, mut at, mut worst_abs) = (0.0f64, 0.0f32, 0.0f64);
    for (&x, &v) in xs.iter().zip(&y) {
        let r = reference(op, x as f64);
        if (r as f32).is_infinite() {
            // Beyond the f32 range the right answer is inf.
            assert_eq!(v, r as f32, "{isa} {op:?}({x})");
            continue;
        }
        let err = (v as f64 - r).abs();
        if r.abs() >= f32::MIN_POSITIVE as f64 {
            if err / r.abs() > worst_rel {
                worst_rel = err / r.abs();
                at = x;
            }
        } else {
            worst_abs = worst_abs.max(err);
        }
    }
    (worst_rel, at, worst_abs)
}

#[test]
fn approximations_are_accurate() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (op, sweep range, bound on the max relative error)
    let cases = [
        (Unary::Exp, -104.0, 89.0, 4e-7),
        (Unary::Expm1, -30.0, 89.0, 4e-7),
        (Unary::Tanh, -12.0, 12.0, 4e-7),
        (Unary::Sigmoid, -104.0, 104.0, 4e-7),
        (Unary::Erf, -6.0, 6.0, 4e-7),
        (Unary::Erfc, -6.0, 10.1, 6e-7),
        (Unary::Gelu, -14.0, 14.0, 6e-7),
        (Unary::GeluTanh, -14.0, 14.0, 4e-7),
        (Unary::Silu, -100.0, 100.0, 4e-7),
        (Unary::Elu { alpha: 1.0 }, -30.0, 30.0, 4e-7),
    ];
    for isa in Isa::available() {
        for &(op, lo, hi, bound) in &cases {
            let xs = sweep(lo, hi, &mut rng);
            let (rel, at, abs) = measure(op, &xs, isa);
            println!(
                "{isa:>7} {:<28} max rel err {rel:.2e} (at x = {at:e}), \
                 max abs err in the subnormal range {abs:.1e}",
                format!("{op:?}")
            );
            assert!(
                rel <= bound,
                "{isa} {op:?}: relative error {rel:e} at x = {at} over {bound:e}"
            );
            assert!(
                abs <= 2.0 * f32::MIN_POSITIVE as f64,
                "{isa} {op:?}: abs {abs:e}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Special values.
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_and_infinities() {
    let inf = f32::INFINITY;
    let ninf = f32::NEG_INFINITY;
    // (op, f(+inf), f(-inf)); f(NaN) is NaN for all.
    let cases = [
        (Unary::Relu, inf, 0.0),
        (
            Unary::Clip {
                min: -1.0,
                max: 2.0,
            },
            2.0,
            -1.0,
        ),
        (
            Unary::Clip {
                min: ninf,
                max: inf,
            },
            inf,
            ninf,
        ),
        (Unary::LeakyRelu { alpha: 0.1 }, inf, ninf),
        (Unary::Elu { alpha: 0.5 }, inf, -0.5),
        (Unary::Sigmoid, 1.0, 0.0),
        (Unary::Tanh, 1.0, -1.0),
        (Unary::Gelu, inf, 0.0),
        (Unary::GeluTanh, inf, 0.0),
        (Unary::Silu, inf, 0.0),
        (
            Unary::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            1.0,
            0.0,
        ),
        (Unary::HardSwish, inf, 0.0),
        (Unary::Exp, inf, 0.0),
        (Unary::Expm1, inf, -1.0),
        (Unary::Erf, 1.0, -1.0),
        (Unary::Erfc, 0.0, 2.0),
    ];
    for isa in Isa::available() {
        for &(op, at_inf, at_ninf) in &cases {
            // Long enough for the vector body and a scalar tail.
            let mut data: Vec<f32> = [f32::NAN, inf, ninf, -f32::NAN]
                .into_iter()
                .cycle()
                .take(37)
                .collect();
            unary_with_isa(op, &mut data, isa).unwrap();
            for (i, &v) in data.iter().enumerate() {
                match i % 4 {
                    0 | 3 => assert!(v.is_nan(), "{isa} {op:?}(NaN) = {v}"),
                    1 => assert_eq!(v, at_inf, "{isa} {op:?}(+inf)"),
                    _ => assert_eq!(v, at_ninf, "{isa} {op:?}(-inf)"),
                }
            }
        }
    }
    // Signed zeros and the exact points.
    let mut z = [0.0f32, -0.0];
    relu(&mut z).unwrap();
    assert_eq!(z, [0.0, 0.0]);
    let mut z = [0.0f32, -0.0];
    unary(Unary::Tanh, &mut z).unwrap();
    assert!(z[0] == 0.0 && z[1] == 0.0 && z[1].is_sign_negative());
    let mut z = [0.0f32];
    sigmoid(&mut z).unwrap();
    assert_eq!(z, [0.5]);
    let mut z = [0.0f32, 1.0];
    unary(Unary::Exp, &mut z).unwrap();
    assert_eq!(z[0], 1.0);
    assert!((z[1] - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
}

// ---------------------------------------------------------------------------------------------
// Activations on random data, odd sizes, serial and parallel.
// ---------------------------------------------------------------------------------------------

#[test]
fn activations_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let ops = [
        Unary::Relu,
        Unary::Clip {
            min: -0.5,
            max: 1.25,
        },
        Unary::LeakyRelu { alpha: 0.01 },
        Unary::LeakyRelu { alpha: -2.5 },
        Unary::Elu { alpha: 1.5 },
        Unary::Sigmoid,
        Unary::Tanh,
        Unary::Gelu,
        Unary::GeluTanh,
        Unary::Silu,
        Unary::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Unary::HardSwish,
    ];
    let threads = pool(4);
    for &n in &SIZES {
        let x = random_vec(&mut rng, n, -8.0, 8.0);
        for isa in Isa::available() {
            for &op in &ops {
                let mut inplace = x.clone();
                threads
                    .install(|| unary_with_isa(op, &mut inplace, isa))
                    .unwrap();
                let mut out = vec![f32::NAN; n];
                threads
                    .install(|| unary_into_with_isa(op, &x, &mut out, isa))
                    .unwrap();
                for i in 0..n {
                    let r = reference(op, x[i] as f64);
                    // HardSigmoid's output is a cancelling sum of its own parameters.
                    let scale = match op {
                        Unary::HardSigmoid { .. } => 1.0,
                        _ => r.abs(),
                    };
                    let tol = 1e-6 * scale + 1e-37;
                    assert!(
                        (inplace[i] as f64 - r).abs() <= tol,
                        "{isa} {op:?} n={n} x={}: {} vs {r}",
                        x[i],
                        inplace[i]
                    );
                    assert_eq!(inplace[i].to_bits(), out[i].to_bits(), "in place vs into");
                }
            }
        }
    }
    // The convenience wrappers run the selected path.
    let mut a = x_small();
    clip(&mut a, -1.0, 1.0).unwrap();
    assert_eq!(a, [-1.0, -0.25, 0.0, 0.5, 1.0]);
    let mut a = x_small();
    leaky_relu(&mut a, 0.5).unwrap();
    assert_eq!(a, [-1.5, -0.125, 0.0, 0.5, 3.0]);
    let mut a = x_small();
    elu(&mut a, 2.0).unwrap();
    assert!((a[0] - 2.0 * (-3.0f32).exp_m1()).abs() < 1e-6);
    let mut b = vec![0.0; 5];
    unary_into(Unary::Relu, &x_small(), &mut b).unwrap();
    assert_eq!(b, [0.0, 0.0, 0.0, 0.5, 3.0]);
}

fn x_small() -> Vec<f32> {
    vec![-3.0, -0.25, 0.0, 0.5, 3.0]
}

#[test]
fn bad_parameters_are_refused() {
    let mut d = vec![1.0f32; 4];
    let bad = [
        Unary::Clip { min: 2.0, max: 1.0 },
        Unary::Clip {
            min: f32::NAN,
            max: 1.0,
        },
        Unary::LeakyRelu {
            alpha: f32::INFINITY,
        },
        Unary::Elu { alpha: f32::NAN },
        Unary::HardSigmoid {
            alpha: 1.0,
            beta: f32::NEG_INFINITY,
        },
    ];
    for op in bad {
        let e = unary(op, &mut d).unwrap_err();
        assert!(
            matches!(e, KernelError::InvalidArgument { .. }),
            "{op:?}: {e}"
        );
    }
    assert_eq!(d, [1.0; 4], "a refused call leaves the data alone");
    let e = unary_into(Unary::Relu, &[1.0; 3], &mut [0.0; 4]).unwrap_err();
    assert!(matches!(e, KernelError::ShapeMismatch { .. }));
    let message = clip(&mut d, 3.0, -3.0).unwrap_err().to_string();
    assert!(message.contains("[3, -3]"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Broadcasting binary ops.
// ---------------------------------------------------------------------------------------------

fn op64(op: BinaryOp, a: f32, b: f32) -> f32 {
    let (a, b) = (a as f64, b as f64);
    (match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }) as f32
}

/// Naive broadcast: walk every output index and map it into both operands.
fn broadcast_ref(op: BinaryOp, a: &[f32], sa: &[usize], b: &[f32], sb: &[usize]) -> Vec<f32> {
    let out = broadcast_shape(sa, sb).unwrap();
    let rank = out.len();
    let total: usize = out.iter().product();
    let index = |shape: &[usize], idx: &[usize]| {
        let off = rank - shape.len();
        shape.iter().enumerate().fold(0, |acc, (k, &d)| {
            acc * d + if d == 1 { 0 } else { idx[off + k] }
        })
    };
    (0..total)
        .map(|mut flat| {
            let mut idx = vec![0; rank];
            for k in (0..rank).rev() {
                idx[k] = flat % out[k];
                flat /= out[k];
            }
            op64(op, a[index(sa, &idx)], b[index(sb, &idx)])
        })
        .collect()
}

const OPS: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

fn check_pair(rng: &mut ChaCha8Rng, sa: &[usize], sb: &[usize], threads: &rayon::ThreadPool) {
    let na: usize = sa.iter().product();
    let nb: usize = sb.iter().product();
    let a = random_vec(rng, na, -4.0, 4.0);
    // Keep divisors away from zero.
    let b: Vec<f32> = random_vec(rng, nb, 0.5, 3.0)
        .into_iter()
        .map(|v| if rng.random_range(0..2) == 0 { -v } else { v })
        .collect();
    let shape = broadcast_shape(sa, sb).unwrap();
    let n: usize = shape.iter().product();
    for isa in Isa::available() {
        for op in OPS {
            let expect = broadcast_ref(op, &a, sa, &b, sb);
            let mut out = vec![f32::NAN; n];
            threads
                .install(|| binary_with_isa(op, &a, sa, &b, sb, &mut out, isa))
                .unwrap();
            for i in 0..n {
                assert_eq!(
                    out[i].to_bits(),
                    expect[i].to_bits(),
                    "{isa} {op:?} {sa:?} ∘ {sb:?} at {i}: {} vs {}",
                    out[i],
                    expect[i]
                );
            }
            // Swapped operands broadcast the other way.
            let expect = broadcast_ref(op, &b, sb, &a, sa);
            threads
                .install(|| binary_with_isa(op, &b, sb, &a, sa, &mut out, isa))
                .unwrap();
            assert!(
                out.iter()
                    .zip(&expect)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
            );
        }
    }
    // In place, when b fits into a's shape.
    if shape == sa {
        for op in OPS {
            let mut inplace = a.clone();
            threads
                .install(|| binary_assign(op, &mut inplace, sa, &b, sb))
                .unwrap();
            let expect = broadcast_ref(op, &a, sa, &b, sb);
            assert!(
                inplace
                    .iter()
                    .zip(&expect)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
            );
        }
    }
}

#[test]
fn broadcasting_patterns() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let threads = pool(4);
    let pairs: &[(&[usize], &[usize])] = &[
        (&[17], &[17]),                       // same shape
        (&[3, 7, 5], &[3, 7, 5]),             // same shape, rank 3
        (&[2, 3], &[]),                       // rank-0 scalar
        (&[33], &[1]),                        // one-element vector
        (&[1], &[1]),                         // both single
        (&[2, 3, 4, 5], &[3, 1, 1]),          // per-channel bias
        (&[2, 3, 4, 5], &[1, 3, 1, 1]),       // per-channel, rank 4
        (&[2, 3, 4, 5], &[2, 3, 1, 1]),       // per-(n, c): squeeze-excitation scale
        (&[2, 3, 4, 5], &[5]),                // last axis
        (&[2, 3, 4, 5], &[4, 1]),             // middle axis
        (&[2, 3, 4, 5], &[1, 3, 4, 5]),       // over batch
        (&[2, 1, 4, 1], &[1, 3, 1, 5]),       // both stretch
        (&[4, 1], &[1, 7]),                   // outer product
        (&[1, 1, 7], &[3, 1, 1]),             // rank 3 both ways
        (&[7], &[2, 3, 7]),                   // lower rank on the left
        (&[0, 3], &[1, 3]),                   // empty
        (&[0], &[1]),                         // empty against one
        (&[2, 0, 4], &[2, 1, 4]),             // empty in the middle
        (&[4, 64, 33, 17], &[64, 1, 1]),      // parallel, per-channel
        (&[3, 129, 129], &[3, 129, 129]),     // parallel, same shape
        (&[2, 5, 7, 1000], &[1, 5, 1, 1000]), // parallel, strided both
        (&[200_003], &[]),                    // parallel, scalar
    ];
    for &(sa, sb) in pairs {
        check_pair(&mut rng, sa, sb, &threads);
    }
    // Random shapes of rank up to 5 with random broadcast axes.
    for _ in 0..60 {
        let rank = rng.random_range(0..=5);
        let out: Vec<usize> = (0..rank)
            .map(|_| [1, 2, 3, 5, 7][rng.random_range(0..5)])
            .collect();
        let mut sb = out.clone();
        for d in sb.iter_mut() {
            if rng.random_range(0..3) == 0 {
                *d = 1;
            }
        }
        let drop = rng.random_range(0..=rank);
        let sb = sb[drop..].to_vec();
        let mut sa = out.clone();
        for d in sa.iter_mut() {
            if rng.random_range(0..4) == 0 {
                *d = 1;
            }
        }
        check_pair(&mut rng, &sa, &sb, &threads);
    }
}

#[test]
fn ieee_division_and_nan() {
    let a = [1.0f32, -1.0, 0.0, f32::NAN, f32::INFINITY];
    let b = [0.0f32];
    let mut out = [0.0f32; 5];
    div(&a, &[5], &b, &[1], &mut out).unwrap();
    assert_eq!(out[0], f32::INFINITY);
    assert_eq!(out[1], f32::NEG_INFINITY);
    assert!(out[2].is_nan() && out[3].is_nan());
    assert_eq!(out[4], f32::INFINITY);
    add(&a, &[5], &[f32::NEG_INFINITY], &[], &mut out).unwrap();
    assert_eq!(out[0], f32::NEG_INFINITY);
    assert!(out[3].is_nan() && out[4].is_nan());
    mul(&a, &[5], &[2.0], &[1], &mut out).unwrap();
    assert_eq!(&out[..3], &[2.0, -2.0, 0.0]);
    sub(&a, &[5], &a, &[5], &mut out).unwrap();
    assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
    assert!(out[3].is_nan() && out[4].is_nan());
}

#[test]
fn broadcast_errors() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3], &[3, 2]),
        (&[3], &[4]),
        (&[0], &[3]),
        (&[2, 3, 4], &[5, 4]),
        (&[2, 3, 4, 5], &[6, 1, 1, 1, 4]),
    ];
    for &(sa, sb) in cases {
        let e = broadcast_shape(sa, sb).unwrap_err();
        let KernelError::ShapeMismatch { detail, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(detail.contains(&format!("{sa:?}")), "{detail}");
        let a = vec![1.0; sa.iter().product()];
        let b = vec![1.0; sb.iter().product()];
        let mut out = vec![0.0; 1024];
        let e = add(&a, sa, &b, sb, &mut out).unwrap_err();
        assert!(
            matches!(e, KernelError::ShapeMismatch { op: "add", .. }),
            "{e:?}"
        );
    }
    assert_eq!(broadcast_shape(&[5, 1, 3], &[4, 1]).unwrap(), vec![5, 4, 3]);
    assert_eq!(broadcast_shape(&[], &[]).unwrap(), Vec::<usize>::new());
    // Buffer lengths that disagree with the shapes.
    let mut out = [0.0f32; 6];
    let e = add(&[1.0; 5], &[2, 3], &[1.0], &[1], &mut out).unwrap_err();
    assert!(e.to_string().contains("a has 5 elements"), "{e}");
    let e = mul(&[1.0; 6], &[2, 3], &[1.0; 2], &[3], &mut out).unwrap_err();
    assert!(e.to_string().contains("b has 2 elements"), "{e}");
    let e = sub(&[1.0; 6], &[2, 3], &[1.0; 3], &[3], &mut out[..5]).unwrap_err();
    assert!(e.to_string().contains("out has 5 elements"), "{e}");
    let e = add(&[], &[usize::MAX, 2], &[1.0], &[1], &mut out).unwrap_err();
    assert!(matches!(e, KernelError::SizeOverflow { .. }), "{e:?}");
    // In place cannot grow a.
    let mut a = [1.0f32; 3];
    let e = binary_assign(BinaryOp::Add, &mut a, &[3, 1], &[1.0; 4], &[4]).unwrap_err();
    assert!(matches!(e, KernelError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("[3, 4]"), "{e}");
}
