//! The elementwise, pooling, softmax and batch-norm ops on the CPU node and on the GPU node,
//! against float64 references on seeded random inputs: odd sizes, every broadcasting pattern,
//! every softmax axis, pooling with pads / dilation / ceil_mode / count_include_pad, half-
//! precision inputs, typed errors for bad inputs, and a device-resident layer chain on the GPU
//! compared with the same chain on the CPU. GPU cases skip with a message when no adapter
//! opens, unless `ACCELMESH_REQUIRE_GPU=1`.

mod common;

use accelmesh::node::gpu::{GpuDevice, LimitOverrides};
use accelmesh::op::{BinaryOp, Pool2dParams, Unary};
use accelmesh::{Conv2dParams, CpuDevice, DType, Device, Error, Op, Tensor};
use common::conv_ref;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// Nodes.
// ---------------------------------------------------------------------------------------------

/// Opens the first adapter, or returns `None` (after saying why) when there is none.
fn gpu_with(overrides: LimitOverrides) -> Option<GpuDevice> {
    match GpuDevice::open(0, 0, overrides) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("ACCELMESH_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ACCELMESH_REQUIRE_GPU=1 but no GPU adapter opened: {e}");
            }
            eprintln!(
                "skipping GPU cases: no GPU adapter ({e}). On Debian, `apt-get install \
                 mesa-vulkan-drivers libvulkan1` provides a software Vulkan adapter."
            );
            None
        }
    }
}

/// The CPU node and, when one opens, the GPU node.
fn nodes() -> Vec<Box<dyn Device>> {
    let mut nodes: Vec<Box<dyn Device>> = vec![Box::new(CpuDevice::with_threads(2).unwrap())];
    if let Some(g) = gpu_with(LimitOverrides::default()) {
        nodes.push(Box::new(g));
    }
    nodes
}

fn id(dev: &dyn Device) -> &str {
    &dev.info().id
}

// ---------------------------------------------------------------------------------------------
// Inputs and comparison.
// ---------------------------------------------------------------------------------------------

/// Seeded uniform values in `[-scale, scale)` (never all zero), rounded to `dtype`.
fn random(shape: &[usize], dtype: DType, seed: u64, scale: f32) -> Tensor {
    let base = Tensor::random(shape.to_vec(), DType::F32, seed).unwrap();
    let v: Vec<f32> = base.to_f32_vec().iter().map(|x| x * scale).collect();
    Tensor::from_f32(shape.to_vec(), dtype, &v).unwrap()
}

/// Asserts `|out − ref| ≤ rel·|ref| + abs` element by element (NaN must meet NaN); returns the
/// largest relative error seen where |ref| ≥ 1e-30.
fn check(what: &str, out: &Tensor, want: &[f64], rel: f64, abs: f64) -> f64 {
    let got = out.as_f32().expect("outputs are f32");
    assert_eq!(got.len(), want.len(), "{what}: output length");
    let mut worst = 0.0f64;
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        if r.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} is {g}, reference NaN");
            continue;
        }
        let err = (f64::from(g) - r).abs();
        assert!(
            err <= rel * r.abs() + abs,
            "{what}: element {i} is {g}, reference {r} (abs err {err:e}, rel {:e})",
            err / r.abs()
        );
        if r.abs() >= 1e-30 {
            worst = worst.max(err / r.abs());
        }
    }
    worst
}

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

/// erfc by a continued fraction (x ≥ 2.5) or via erf.
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

fn unary64(op: Unary, x: f64) -> f64 {
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

fn binary64(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

/// numpy broadcast of two shapes, or `None` where they disagree.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], k: usize| if k < s.len() { s[s.len() - 1 - k] } else { 1 };
    let mut out = vec![0; rank];
    for k in 0..rank {
        let (x, y) = (at(a, k), at(b, k));
        out[rank - 1 - k] = match (x, y) {
            _ if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// `a ∘ b` with broadcasting, element by element through multi-indices.
fn binary_ref(op: BinaryOp, a: &Tensor, b: &Tensor) -> Vec<f64> {
    let out = broadcast(a.dims(), b.dims()).unwrap();
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let n: usize = out.iter().product();
    let offset = |shape: &[usize], idx: &[usize]| {
        let skip = idx.len() - shape.len();
        let mut off = 0;
        for (k, &d) in shape.iter().enumerate() {
            off = off * d + if d == 1 { 0 } else { idx[skip + k] };
        }
        off
    };
    (0..n)
        .map(|flat| {
            let mut idx = vec![0; out.len()];
            let mut rem = flat;
            for k in (0..out.len()).rev() {
                idx[k] = rem % out[k];
                rem /= out[k];
            }
            binary64(op, av[offset(a.dims(), &idx)], bv[offset(b.dims(), &idx)])
        })
        .collect()
}

/// Softmax / log-softmax of `x` (shape `dims`) along `axis`.
fn softmax_ref(x: &[f64], dims: &[usize], axis: usize, log: bool) -> Vec<f64> {
    let outer: usize = dims[..axis].iter().product();
    let n = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * n + j) * inner + i;
            let m = (0..n).map(|j| x[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..n).map(|j| (x[at(j)] - m).exp()).sum();
            for j in 0..n {
                y[at(j)] = if log {
                    x[at(j)] - m - s.ln()
                } else {
                    (x[at(j)] - m).exp() / s
                };
            }
        }
    }
    y
}

/// ONNX output length of one pooling axis, written out independently of the kernels.
fn out_len(len: usize, k: usize, s: usize, pb: usize, pe: usize, d: usize, ceil: bool) -> usize {
    let extent = (k - 1) * d + 1;
    let span = (len + pb + pe - extent) as f64 / s as f64;
    let mut out = if ceil { span.ceil() } else { span.floor() } as usize + 1;
    if ceil && (out - 1) * s >= len + pb {
        out -= 1;
    }
    out
}

/// Naive pooling in f64: every output visits its taps; returns the output and its dims.
fn pool_ref(x: &[f64], dims: [usize; 4], p: &Pool2dParams, max: bool) -> (Vec<f64>, [usize; 4]) {
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
                            let v = x[plane * h * w + ih as usize * w + iw as usize];
                            best = best.max(v);
                            sum += v;
                            valid += 1;
                        }
                    }
                }
                y.push(if max {
                    best
                } else {
                    let div = if p.count_include_pad { padded } else { valid };
                    sum / div as f64
                });
            }
        }
    }
    (y, [n, c, oh, ow])
}

/// Mean of each of the `planes` contiguous planes of `x`.
fn global_avg_ref(x: &[f64], planes: usize) -> Vec<f64> {
    if planes == 0 {
        return Vec::new();
    }
    let size = x.len() / planes;
    x.chunks(size)
        .map(|c| c.iter().sum::<f64>() / size as f64)
        .collect()
}

/// Inference batch norm of `x` `[N, C, …]` with per-channel `[scale, bias, mean, var]`.
fn batch_norm_ref(x: &[f64], dims: &[usize], p: [&[f64]; 4], eps: f64) -> Vec<f64> {
    let c = dims[1];
    let plane: usize = dims[2..].iter().product();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / plane) % c;
            (v - p[2][ch]) / (p[3][ch] + eps).sqrt() * p[0][ch] + p[1][ch]
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Unary.
// ---------------------------------------------------------------------------------------------

/// Every unary op the kernels have, with parameters.
fn all_unary() -> Vec<Unary> {
    vec![
        Unary::Relu,
        Unary::Clip {
            min: -0.5,
            max: 1.25,
        },
        Unary::LeakyRelu { alpha: 0.1 },
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
        Unary::Exp,
        Unary::Expm1,
        Unary::Erf,
        Unary::Erfc,
    ]
}

/// (Relative, absolute) tolerance per unary op: exact where no rounding happens, one
/// rounding for products, a few f32 ulps for the transcendental functions (the GPU's
/// division and unfused `fma` cost a little more than the CPU's), and f32 evaluation of the
/// cubic for the tanh form of GELU. The absolute floor only admits exact zeros, except where
/// `alpha·x + beta` may cancel.
fn unary_tol(u: Unary) -> (f64, f64) {
    match u {
        Unary::Relu | Unary::Clip { .. } => (0.0, 1e-30),
        Unary::LeakyRelu { .. } => (1e-7, 1e-30),
        Unary::HardSigmoid { .. } => (1e-6, 1e-7),
        Unary::GeluTanh => (2e-5, 1e-30),
        _ => (1e-5, 1e-30),
    }
}

#[test]
fn unary_ops_match_f64_on_odd_sizes() {
    for dev in nodes() {
        let dev = dev.as_ref();
        for u in all_unary() {
            let mut worst = 0.0f64;
            for (i, &len) in [1usize, 7, 17, 33, 129, 1000].iter().enumerate() {
                let shape: Vec<usize> = if i % 2 == 0 {
                    vec![len]
                } else {
                    vec![1, len, 1]
                };
                let x = random(&shape, DType::F32, 10 + i as u64, 6.0);
                let out = dev.execute(&Op::Unary(u), &[&x]).unwrap();
                assert_eq!(out[0].dims(), &shape[..]);
                let want: Vec<f64> = x.to_f64_vec().into_iter().map(|v| unary64(u, v)).collect();
                let what = format!("{} {u:?} [{len}]", id(dev));
                let (rel, abs) = unary_tol(u);
                worst = worst.max(check(&what, &out[0], &want, rel, abs));
            }
            println!("{} {u:?}: max rel err {worst:e}", id(dev));
        }
    }
}

#[test]
fn unary_ops_on_wide_ranges_and_half_inputs() {
    for dev in nodes() {
        let dev = dev.as_ref();
        // Tails: ±20 reaches erfc's and gelu's underflowing tails and exp's large values.
        let x = random(&[4099], DType::F32, 3, 20.0);
        for u in [
            Unary::Exp,
            Unary::Sigmoid,
            Unary::Tanh,
            Unary::Erf,
            Unary::Silu,
            Unary::Elu { alpha: 1.0 },
        ] {
            let out = dev.execute(&Op::Unary(u), &[&x]).unwrap();
            let want: Vec<f64> = x.to_f64_vec().into_iter().map(|v| unary64(u, v)).collect();
            // Below f32's normal range only an absolute bound is meaningful.
            check(
                &format!("{} wide {u:?}", id(dev)),
                &out[0],
                &want,
                2e-5,
                1e-37,
            );
        }
        // f16 and bf16 inputs are widened to f32.
        for dtype in [DType::F16, DType::BF16] {
            let x = random(&[5, 33], dtype, 4, 3.0);
            for u in [Unary::Relu, Unary::Gelu, Unary::Sigmoid] {
                let out = dev.execute(&Op::Unary(u), &[&x]).unwrap();
                assert_eq!(out[0].dtype(), DType::F32);
                let want: Vec<f64> = x.to_f64_vec().into_iter().map(|v| unary64(u, v)).collect();
                let (rel, abs) = unary_tol(u);
                check(
                    &format!("{} {dtype} {u:?}", id(dev)),
                    &out[0],
                    &want,
                    rel,
                    abs,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binary.
// ---------------------------------------------------------------------------------------------

/// Broadcasting pairs: same shape, scalars, rows, columns, rank 4 with 1s, rank 6.
fn broadcast_cases() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![1], vec![1]),
        (vec![7], vec![7]),
        (vec![33, 17], vec![33, 17]),
        (vec![2, 3, 5, 7], vec![2, 3, 5, 7]),
        (vec![5, 7], vec![]),
        (vec![], vec![129]),
        (vec![1], vec![3, 17]),
        (vec![17, 33], vec![33]),
        (vec![33], vec![17, 33]),
        (vec![17, 33], vec![17, 1]),
        (vec![17, 1], vec![1, 33]),
        (vec![2, 1, 4, 1], vec![1, 3, 1, 5]),
        (vec![2, 3, 4, 5], vec![3, 1, 1]),
        (vec![1, 3, 1, 1], vec![2, 3, 7, 7]),
        (vec![2, 1, 3, 1, 2, 3], vec![1, 2, 1, 3, 1, 1]),
        (vec![0, 3], vec![3]),
    ]
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    for dev in nodes() {
        let dev = dev.as_ref();
        let mut seed = 100;
        for (sa, sb) in broadcast_cases() {
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                seed += 2;
                let a = random(&sa, DType::F32, seed, 2.0);
                let b = random(&sb, DType::F32, seed + 1, 2.0);
                let out = dev.execute(&Op::Binary(op), &[&a, &b]).unwrap();
                let shape = broadcast(&sa, &sb).unwrap();
                assert_eq!(out[0].dims(), &shape[..], "{sa:?} {sb:?}");
                let what = format!("{} {op:?} {sa:?} {sb:?}", id(dev));
                check(&what, &out[0], &binary_ref(op, &a, &b), 1e-6, 1e-30);
            }
        }
        // Mixed dtypes are each widened.
        let a = random(&[3, 17], DType::F16, 1, 2.0);
        let b = random(&[17], DType::BF16, 2, 2.0);
        let out = dev.execute(&Op::Binary(BinaryOp::Mul), &[&a, &b]).unwrap();
        check(
            &format!("{} f16*bf16", id(dev)),
            &out[0],
            &binary_ref(BinaryOp::Mul, &a, &b),
            1e-6,
            1e-30,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax.
// ---------------------------------------------------------------------------------------------

#[test]
fn softmax_on_every_axis() {
    let shapes: Vec<Vec<usize>> = vec![
        vec![1],
        vec![7],
        vec![129],
        vec![3, 17],
        vec![2, 3, 33],
        vec![4, 1, 7, 5],
        vec![2, 5000],
        vec![1000, 3],
    ];
    for dev in nodes() {
        let dev = dev.as_ref();
        let mut seed = 200;
        for shape in &shapes {
            for axis in 0..shape.len() {
                for log in [false, true] {
                    seed += 1;
                    let x = random(shape, DType::F32, seed, 8.0);
                    let out = dev.execute(&Op::Softmax { axis, log }, &[&x]).unwrap();
                    let want = softmax_ref(&x.to_f64_vec(), shape, axis, log);
                    let what = format!("{} softmax {shape:?} axis {axis} log {log}", id(dev));
                    if log {
                        check(&what, &out[0], &want, 1e-6, 1e-5);
                    } else {
                        check(&what, &out[0], &want, 1e-5, 1e-30);
                    }
                }
            }
        }
        let x = random(&[3, 40], DType::BF16, 9, 4.0);
        let out = dev
            .execute(
                &Op::Softmax {
                    axis: 1,
                    log: false,
                },
                &[&x],
            )
            .unwrap();
        let want = softmax_ref(&x.to_f64_vec(), &[3, 40], 1, false);
        check(
            &format!("{} bf16 softmax", id(dev)),
            &out[0],
            &want,
            1e-5,
            1e-30,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling.
// ---------------------------------------------------------------------------------------------

/// Hand-picked pooling geometries on odd sizes, then seeded random ones.
fn pool_cases() -> Vec<([usize; 4], Pool2dParams)> {
    let mut cases = vec![
        ([1, 1, 1, 1], Pool2dParams::new([1, 1])),
        ([2, 3, 7, 7], Pool2dParams::new([2, 2]).with_stride([2, 2])),
        (
            [2, 3, 7, 7],
            Pool2dParams::new([2, 2])
                .with_stride([2, 2])
                .with_ceil_mode(true),
        ),
        (
            [1, 2, 17, 33],
            Pool2dParams::new([3, 3])
                .with_stride([2, 2])
                .with_pads([1, 1, 1, 1]),
        ),
        (
            [1, 2, 17, 33],
            Pool2dParams::new([3, 3])
                .with_stride([2, 2])
                .with_pads([1, 1, 1, 1])
                .with_count_include_pad(true),
        ),
        (
            [1, 3, 17, 17],
            Pool2dParams::new([3, 2])
                .with_stride([3, 1])
                .with_pads([2, 1, 0, 1])
                .with_dilation([2, 2])
                .with_ceil_mode(true)
                .with_count_include_pad(true),
        ),
        (
            [2, 1, 33, 1],
            Pool2dParams::new([5, 1])
                .with_stride([4, 1])
                .with_ceil_mode(true),
        ),
        (
            [1, 1, 129, 129],
            Pool2dParams::new([7, 7]).with_stride([3, 3]),
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    while cases.len() < 48 {
        let kernel = [rng.random_range(1..=4usize), rng.random_range(1..=4usize)];
        let p = Pool2dParams {
            kernel,
            stride: [rng.random_range(1..=3usize), rng.random_range(1..=3usize)],
            pads: [0, 1, 0, 1].map(|a| rng.random_range(0..kernel[a])),
            dilation: [rng.random_range(1..=2usize), rng.random_range(1..=2usize)],
            ceil_mode: rng.random_bool(0.5),
            count_include_pad: rng.random_bool(0.5),
        };
        let h = rng.random_range(1..=17usize);
        let w = rng.random_range(1..=17usize);
        cases.push(([rng.random_range(1..=2), rng.random_range(1..=3), h, w], p));
    }
    cases
}

#[test]
fn pooling_matches_f64_with_pads_dilation_and_ceil_mode() {
    let cpu = CpuDevice::with_threads(2).unwrap();
    for dev in nodes() {
        let dev = dev.as_ref();
        let mut ran = 0;
        for (i, (dims, p)) in pool_cases().into_iter().enumerate() {
            let x = random(&dims, DType::F32, 300 + i as u64, 4.0);
            for max in [true, false] {
                let op = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
                let what = format!("{} {} {dims:?} {p:?}", id(dev), op.name());
                let geometry_ok = cpu.execute(&op, &[&x]).is_ok();
                let out = match dev.execute(&op, &[&x]) {
                    Ok(out) => out,
                    Err(e) => {
                        // A window larger than the padded input is refused on every node.
                        assert!(!geometry_ok, "{what}: {e}");
                        assert!(matches!(e, Error::Kernel(_)), "{what}: {e:?}");
                        continue;
                    }
                };
                ran += 1;
                let (want, odims) = pool_ref(&x.to_f64_vec(), dims, &p, max);
                assert_eq!(out[0].dims(), &odims[..], "{what}");
                // A max is exact; an average differs only by summation order.
                // The average of signed values may cancel: bound the error by the inputs' size.
                let (rel, abs) = if max { (0.0, 1e-30) } else { (1e-6, 4e-6) };
                check(&what, &out[0], &want, rel, abs);
            }
        }
        assert!(ran >= 60, "only {ran} pooling cases had a valid geometry");
    }
}

#[test]
fn global_average_pool_over_every_spatial_rank() {
    let shapes: Vec<Vec<usize>> = vec![
        vec![1, 1, 1, 1],
        vec![2, 3, 7, 7],
        vec![1, 5, 33, 17],
        vec![2, 4, 129],
        vec![1, 2, 3, 4, 5],
        vec![1, 3, 129, 129],
    ];
    for dev in nodes() {
        let dev = dev.as_ref();
        for (i, shape) in shapes.iter().enumerate() {
            for dtype in [DType::F32, DType::F16] {
                let x = random(shape, dtype, 400 + i as u64, 3.0);
                let out = dev.execute(&Op::GlobalAvgPool, &[&x]).unwrap();
                let mut odims = shape.clone();
                odims[2..].fill(1);
                assert_eq!(out[0].dims(), &odims[..]);
                let want = global_avg_ref(&x.to_f64_vec(), shape[0] * shape[1]);
                // Relative to the mean of |x|: a mean of signed values may cancel.
                let what = format!("{} global_avg_pool {shape:?} {dtype}", id(dev));
                check(&what, &out[0], &want, 1e-6, 1e-6);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Batch normalisation.
// ---------------------------------------------------------------------------------------------

/// `[scale, bias, mean, var]` for `c` channels, the variance positive.
fn bn_params(c: usize, seed: u64, dtype: DType) -> [Tensor; 4] {
    let var: Vec<f32> = random(&[c], DType::F32, seed + 3, 1.0)
        .to_f32_vec()
        .iter()
        .map(|v| v.abs() + 0.1)
        .collect();
    [
        random(&[c], dtype, seed, 2.0),
        random(&[c], dtype, seed + 1, 1.0),
        random(&[c], dtype, seed + 2, 0.5),
        Tensor::from_f32([c], dtype, &var).unwrap(),
    ]
}

#[test]
fn batch_norm_matches_f64() {
    let shapes: Vec<Vec<usize>> = vec![
        vec![1, 1, 1, 1],
        vec![2, 3, 7, 7],
        vec![1, 17, 5],
        vec![4, 5],
        vec![2, 33, 3, 3, 3],
        vec![1, 7, 129],
    ];
    for dev in nodes() {
        let dev = dev.as_ref();
        for (i, shape) in shapes.iter().enumerate() {
            for dtype in [DType::F32, DType::F16] {
                let seed = 500 + 10 * i as u64;
                let x = random(shape, dtype, seed, 3.0);
                let p = bn_params(shape[1], seed + 1, dtype);
                let eps = 1e-3;
                for relu in [false, true] {
                    let op = Op::BatchNorm { epsilon: eps, relu };
                    let out = dev.execute(&op, &[&x, &p[0], &p[1], &p[2], &p[3]]).unwrap();
                    let pv = p.each_ref().map(Tensor::to_f64_vec);
                    let mut want = batch_norm_ref(
                        &x.to_f64_vec(),
                        shape,
                        [&pv[0], &pv[1], &pv[2], &pv[3]],
                        f64::from(eps),
                    );
                    if relu {
                        want.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                    let what = format!("{} batch_norm relu {relu} {shape:?} {dtype}", id(dev));
                    check(&what, &out[0], &want, 1e-5, 1e-5);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

fn expect_err(dev: &dyn Device, op: &Op, inputs: &[&Tensor], needles: &[&str]) -> Error {
    let Err(err) = dev.execute(op, inputs) else {
        panic!("{} {} should fail", id(dev), op.name());
    };
    let text = err.to_string();
    for n in needles {
        assert!(text.contains(n), "{}: `{text}` lacks `{n}`", id(dev));
    }
    err
}

#[test]
fn bad_inputs_give_typed_errors_naming_the_values() {
    for dev in nodes() {
        let dev = dev.as_ref();
        let a = random(&[2, 3], DType::F32, 1, 1.0);
        let b = random(&[4], DType::F32, 2, 1.0);
        let e = expect_err(
            dev,
            &Op::Binary(BinaryOp::Add),
            &[&a, &b],
            &["[2, 3]", "[4]", "add"],
        );
        assert!(matches!(e, Error::Shape { .. }), "{e:?}");
        let e = expect_err(dev, &Op::Binary(BinaryOp::Mul), &[&a], &["mul", "2", "1"]);
        assert!(matches!(e, Error::Arity { got: 1, .. }), "{e:?}");

        let e = expect_err(
            dev,
            &Op::Softmax {
                axis: 2,
                log: false,
            },
            &[&a],
            &["axis 2", "[2, 3]", "rank 2"],
        );
        assert!(matches!(e, Error::Shape { .. }), "{e:?}");

        let x = random(&[2, 3, 4, 4], DType::F32, 3, 1.0);
        let p = bn_params(3, 4, DType::F32);
        let short = random(&[4], DType::F32, 5, 1.0);
        let bn = Op::BatchNorm {
            epsilon: 1e-5,
            relu: false,
        };
        let e = expect_err(
            dev,
            &bn,
            &[&x, &p[0], &short, &p[2], &p[3]],
            &["bias", "[4]", "[3]"],
        );
        assert!(matches!(e, Error::Shape { .. }), "{e:?}");
        let e = expect_err(dev, &bn, &[&x, &p[0], &p[1]], &["batch_norm", "5", "3"]);
        assert!(matches!(e, Error::Arity { got: 3, .. }), "{e:?}");
        let e = expect_err(
            dev,
            &Op::BatchNorm {
                epsilon: -1.0,
                relu: false,
            },
            &[&x, &p[0], &p[1], &p[2], &p[3]],
            &["epsilon", "-1"],
        );
        assert!(matches!(e, Error::Kernel(_)), "{e:?}");

        let e = expect_err(
            dev,
            &Op::MaxPool(Pool2dParams::new([3, 3])),
            &[&a],
            &["NCHW", "[2, 3]"],
        );
        assert!(matches!(e, Error::Shape { .. }), "{e:?}");
        let e = expect_err(
            dev,
            &Op::AvgPool(Pool2dParams::new([2, 2]).with_pads([2, 0, 0, 0])),
            &[&x],
            &["pads", "[2, 0, 0, 0]"],
        );
        assert!(matches!(e, Error::Kernel(_)), "{e:?}");
        let e = expect_err(
            dev,
            &Op::MaxPool(Pool2dParams::new([9, 1])),
            &[&x],
            &["height", "9"],
        );
        assert!(matches!(e, Error::Kernel(_)), "{e:?}");
        let e = expect_err(dev, &Op::GlobalAvgPool, &[&a], &["[2, 3]", "rank"]);
        assert!(matches!(e, Error::Shape { .. }), "{e:?}");

        let clip = Op::Unary(Unary::Clip { min: 2.0, max: 1.0 });
        let e = expect_err(dev, &clip, &[&a], &["clip", "[2, 1]"]);
        assert!(matches!(e, Error::Kernel(_)), "{e:?}");
        let leaky = Op::Unary(Unary::LeakyRelu { alpha: f32::NAN });
        expect_err(dev, &leaky, &[&a], &["alpha", "NaN"]);
        let e = expect_err(dev, &Op::Unary(Unary::Relu), &[&a, &b], &["relu", "2"]);
        assert!(matches!(e, Error::Arity { got: 2, .. }), "{e:?}");
    }
}

#[test]
fn gpu_refuses_broadcasts_beyond_six_merged_dimensions() {
    let Some(dev) = gpu_with(LimitOverrides::default()) else {
        return;
    };
    // Alternating broadcast axes cannot merge: seven dimensions remain.
    let a = random(&[2, 1, 2, 1, 2, 1, 2], DType::F32, 1, 1.0);
    let b = random(&[1, 2, 1, 2, 1, 2, 1], DType::F32, 2, 1.0);
    let op = Op::Binary(BinaryOp::Add);
    let e = expect_err(&dev, &op, &[&a, &b], &["7 dimensions", "at most 6"]);
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    // The CPU node takes it.
    let cpu = CpuDevice::with_threads(1).unwrap();
    let out = cpu.execute(&op, &[&a, &b]).unwrap();
    check(
        "cpu rank 7",
        &out[0],
        &binary_ref(BinaryOp::Add, &a, &b),
        1e-6,
        1e-30,
    );
}

// ---------------------------------------------------------------------------------------------
// Oversize tensors and chains.
// ---------------------------------------------------------------------------------------------

#[test]
fn gpu_splits_tensors_larger_than_one_binding() {
    // 4 KiB bindings and at most 27 workgroups per dispatch force many pieces.
    let Some(dev) = gpu_with(LimitOverrides {
        max_storage_binding: Some(4096),
        max_workgroups_per_dim: Some(3),
        ..LimitOverrides::default()
    }) else {
        return;
    };
    let x = random(&[3, 5, 33, 17], DType::F32, 1, 4.0);
    let u = Unary::Silu;
    let out = dev.execute(&Op::Unary(u), &[&x]).unwrap();
    let want: Vec<f64> = x.to_f64_vec().into_iter().map(|v| unary64(u, v)).collect();
    check("oversize silu", &out[0], &want, 5e-6, 1e-30);

    let y = random(&[3, 5, 33, 17], DType::F16, 2, 4.0);
    let s = random(&[], DType::F32, 3, 4.0);
    for (a, b) in [(&x, &y), (&x, &s)] {
        let out = dev.execute(&Op::Binary(BinaryOp::Sub), &[a, b]).unwrap();
        check(
            "oversize sub",
            &out[0],
            &binary_ref(BinaryOp::Sub, a, b),
            1e-6,
            1e-30,
        );
    }
    // Broadcast operands must fit one binding each; the output is still cut to the grid.
    let small = random(&[2, 1, 5], DType::F32, 4, 1.0);
    let col = random(&[3, 1], DType::F32, 5, 1.0);
    let out = dev
        .execute(&Op::Binary(BinaryOp::Div), &[&small, &col])
        .unwrap();
    check(
        "oversize broadcast",
        &out[0],
        &binary_ref(BinaryOp::Div, &small, &col),
        1e-6,
        1e-30,
    );
    // Operands cut by rows of the outermost merged dimension, column and row broadcasts.
    let wide = random(&[70, 40], DType::F32, 6, 1.0);
    let row = random(&[1, 40], DType::F32, 7, 1.0);
    let tall = random(&[2000, 1], DType::F32, 8, 1.0);
    for (a, b) in [(&wide, &row), (&tall, &row), (&row, &wide)] {
        let out = dev.execute(&Op::Binary(BinaryOp::Add), &[a, b]).unwrap();
        let what = format!("oversize {:?} + {:?}", a.dims(), b.dims());
        check(
            &what,
            &out[0],
            &binary_ref(BinaryOp::Add, a, b),
            1e-6,
            1e-30,
        );
    }
    // An operand broadcast along the outer dimension is bound whole: too big here.
    let long = random(&[1, 2000], DType::F32, 9, 1.0);
    let col3 = random(&[3, 1], DType::F32, 10, 1.0);
    let e = expect_err(
        &dev,
        &Op::Binary(BinaryOp::Add),
        &[&long, &col3],
        &["binding limit of 4096 bytes"],
    );
    assert!(matches!(e, Error::Device { .. }), "{e:?}");

    for axis in 0..4 {
        let op = Op::Softmax {
            axis,
            log: axis % 2 == 1,
        };
        let x = random(&[3, 5, 7, 9], DType::F32, 10 + axis as u64, 4.0);
        let out = dev.execute(&op, &[&x]).unwrap();
        let want = softmax_ref(&x.to_f64_vec(), &[3, 5, 7, 9], axis, axis % 2 == 1);
        check(
            &format!("oversize softmax {axis}"),
            &out[0],
            &want,
            1e-5,
            1e-5,
        );
    }

    let dims = [3, 5, 17, 13];
    let x = random(&dims, DType::F32, 20, 4.0);
    let p = Pool2dParams::new([3, 3])
        .with_stride([2, 2])
        .with_pads([1, 1, 1, 1])
        .with_ceil_mode(true);
    for max in [true, false] {
        let op = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
        let out = dev.execute(&op, &[&x]).unwrap();
        let (want, _) = pool_ref(&x.to_f64_vec(), dims, &p, max);
        check("oversize pool", &out[0], &want, 1e-6, 1e-30);
    }
    let out = dev.execute(&Op::GlobalAvgPool, &[&x]).unwrap();
    check(
        "oversize global pool",
        &out[0],
        &global_avg_ref(&x.to_f64_vec(), 15),
        1e-6,
        1e-6,
    );
    let bp = bn_params(5, 30, DType::F32);
    let op = Op::BatchNorm {
        epsilon: 1e-5,
        relu: false,
    };
    let out = dev
        .execute(&op, &[&x, &bp[0], &bp[1], &bp[2], &bp[3]])
        .unwrap();
    let pv = bp.each_ref().map(Tensor::to_f64_vec);
    let want = batch_norm_ref(
        &x.to_f64_vec(),
        &dims,
        [&pv[0], &pv[1], &pv[2], &pv[3]],
        1e-5,
    );
    check("oversize batch_norm", &out[0], &want, 1e-5, 1e-5);

    // One channel plane larger than a binding is refused, naming the limit.
    let huge = random(&[1, 1, 40, 40], DType::F32, 40, 1.0);
    let e = expect_err(&dev, &Op::GlobalAvgPool, &[&huge], &["4096"]);
    assert!(matches!(e, Error::Device { .. }), "{e:?}");
}

/// The layer chain conv2d → batch_norm → relu → max_pool → global_avg_pool → softmax.
fn chain_ops() -> Vec<Op> {
    vec![
        Op::Conv2d(Conv2dParams {
            pads: [1, 1, 1, 1],
            ..Conv2dParams::default()
        }),
        Op::BatchNorm {
            epsilon: 1e-5,
            relu: false,
        },
        Op::Unary(Unary::Relu),
        Op::MaxPool(
            Pool2dParams::new([3, 3])
                .with_stride([2, 2])
                .with_pads([1, 1, 1, 1])
                .with_ceil_mode(true),
        ),
        Op::GlobalAvgPool,
        Op::Softmax {
            axis: 1,
            log: false,
        },
    ]
}

#[test]
fn gpu_chain_stays_resident_and_matches_the_cpu() {
    let Some(gpu) = gpu_with(LimitOverrides::default()) else {
        return;
    };
    let cpu = CpuDevice::with_threads(2).unwrap();
    let x = random(&[2, 3, 17, 17], DType::F32, 1, 1.0);
    let w = random(&[8, 3, 3, 3], DType::F32, 2, 1.0);
    let bn = bn_params(8, 3, DType::F32);
    let ops = chain_ops();

    // CPU: host tensors all the way.
    let mut h = cpu.execute(&ops[0], &[&x, &w]).unwrap().remove(0);
    h = cpu
        .execute(&ops[1], &[&h, &bn[0], &bn[1], &bn[2], &bn[3]])
        .unwrap()
        .remove(0);
    for op in &ops[2..] {
        h = cpu.execute(op, &[&h]).unwrap().remove(0);
    }
    assert_eq!(h.dims(), [2, 8, 1, 1]);

    // GPU: upload the inputs once, run the chain resident, download once.
    let before = gpu.transfer_stats();
    let gx = gpu.upload(&x).unwrap();
    let gw = gpu.upload(&w).unwrap();
    let gbn: Vec<_> = bn.iter().map(|t| gpu.upload(t).unwrap()).collect();
    let mut g = gpu.run(&ops[0], &[&gx, &gw]).unwrap().remove(0);
    g = gpu
        .run(&ops[1], &[&g, &gbn[0], &gbn[1], &gbn[2], &gbn[3]])
        .unwrap()
        .remove(0);
    for op in &ops[2..] {
        g = gpu.run(op, &[&g]).unwrap().remove(0);
    }
    let out = g.download().unwrap();
    let after = gpu.transfer_stats();
    assert_eq!(
        after.uploads - before.uploads,
        6,
        "x, w and four bn parameters"
    );
    assert_eq!(
        after.downloads - before.downloads,
        1,
        "only the final output"
    );
    assert_eq!(out.dims(), [2, 8, 1, 1]);
    let cpu_out: Vec<f64> = h.to_f64_vec();
    check("gpu chain vs cpu chain", &out, &cpu_out, 1e-4, 1e-6);

    // Both against the chain in f64.
    let conv: Vec<f64> = conv_ref(
        &x,
        &w,
        None,
        &Conv2dParams {
            pads: [1, 1, 1, 1],
            ..Conv2dParams::default()
        },
    )
    .into_iter()
    .map(|(v, _)| v)
    .collect();
    let pv = bn.each_ref().map(Tensor::to_f64_vec);
    let dims = [2, 8, 17, 17];
    let mut r = batch_norm_ref(&conv, &dims, [&pv[0], &pv[1], &pv[2], &pv[3]], 1e-5);
    r.iter_mut().for_each(|v| *v = v.max(0.0));
    let Op::MaxPool(p) = ops[3] else {
        unreachable!()
    };
    let (r, pdims) = pool_ref(&r, dims, &p, true);
    let r = global_avg_ref(&r, pdims[0] * pdims[1]);
    let r = softmax_ref(&r, &[2, 8, 1, 1], 1, false);
    check("cpu chain vs f64", &h, &r, 1e-4, 1e-6);
    check("gpu chain vs f64", &out, &r, 1e-4, 1e-6);
}

#[test]
fn ops_describe_themselves() {
    let x = accelmesh::Shape::new([2, 3, 8, 8]);
    let c = accelmesh::Shape::new([3]);
    let p = Pool2dParams::new([2, 2]).with_stride([2, 2]);
    assert_eq!(
        Op::MaxPool(p).output_shape(&[&x]).unwrap().dims(),
        [2, 3, 4, 4]
    );
    assert_eq!(
        Op::GlobalAvgPool.output_shape(&[&x]).unwrap().dims(),
        [2, 3, 1, 1]
    );
    assert_eq!(Op::MaxPool(p).flops(&[&x]).unwrap(), 2 * 3 * 16 * 4);
    assert_eq!(Op::AvgPool(p).flops(&[&x]).unwrap(), 2 * 3 * 16 * 5);
    let bn = Op::BatchNorm {
        epsilon: 1e-5,
        relu: false,
    };
    assert_eq!(bn.flops(&[&x, &c, &c, &c, &c]).unwrap(), 3 * 384);
    assert_eq!(
        bn.bytes(&[&x, &c, &c, &c, &c], DType::F16).unwrap(),
        (384 + 12) * 2 + 384 * 4
    );
    assert_eq!(Op::Softmax { axis: 0, log: true }.name(), "log_softmax");
    assert_eq!(Op::Unary(Unary::GeluTanh).name(), "gelu_tanh");
    assert_eq!(
        Op::Unary(Unary::Elu { alpha: f32::NAN }),
        Op::Unary(Unary::Elu { alpha: f32::NAN })
    );
    assert_ne!(Op::Unary(Unary::Relu), Op::Binary(BinaryOp::Add));
}

#[test]
fn nan_propagates_through_relu_max_pool_softmax_and_add() {
    for dev in nodes() {
        let dev = dev.as_ref();
        let mut v = random(&[1, 1, 4, 4], DType::F32, 1, 1.0).to_f32_vec();
        v[5] = f32::NAN;
        let x = Tensor::from_vec([1, 1, 4, 4], v).unwrap();
        let relu = dev.execute(&Op::Unary(Unary::Relu), &[&x]).unwrap();
        assert!(relu[0].to_f32_vec()[5].is_nan(), "{} relu", id(dev));
        let pool = dev
            .execute(
                &Op::MaxPool(Pool2dParams::new([2, 2]).with_stride([2, 2])),
                &[&x],
            )
            .unwrap();
        let got = pool[0].to_f32_vec();
        assert!(
            got[0].is_nan() && !got[1].is_nan(),
            "{} max_pool {got:?}",
            id(dev)
        );
        let sm = dev
            .execute(
                &Op::Softmax {
                    axis: 3,
                    log: false,
                },
                &[&x],
            )
            .unwrap();
        let got = sm[0].to_f32_vec();
        assert!(
            got[4..8].iter().all(|v| v.is_nan()),
            "{} softmax {got:?}",
            id(dev)
        );
        assert!(
            got[..4].iter().all(|v| v.is_finite()),
            "{} softmax {got:?}",
            id(dev)
        );
        let y = random(&[4], DType::F32, 2, 1.0);
        let sum = dev.execute(&Op::Binary(BinaryOp::Add), &[&x, &y]).unwrap();
        assert!(sum[0].to_f32_vec()[5].is_nan(), "{} add", id(dev));
    }
}
