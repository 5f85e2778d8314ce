//! The CPU node against float64 references on seeded random inputs.

mod common;

use accelmesh::{Conv2dParams, CpuDevice, DType, Device, Error, Op, Tensor};
use common::{assert_close, conv_ref, matmul_ref};

fn device(threads: usize) -> CpuDevice {
    CpuDevice::with_threads(threads).expect("a CPU node starts")
}

fn run(dev: &dyn Device, op: &Op, inputs: &[&Tensor]) -> Tensor {
    let mut outputs = dev.execute(op, inputs).expect("op runs");
    assert_eq!(outputs.len(), 1);
    outputs.remove(0)
}

#[test]
fn matmul_with_transposes_matches_f64_on_odd_sizes() {
    let dev = device(2);
    let sizes = [1, 7, 17, 33];
    let mut seed = 100;
    for &m in &sizes {
        for &n in &sizes {
            for &k in &[1, 17, 33] {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    seed += 2;
                    let a_dims = if ta { [k, m] } else { [m, k] };
                    let b_dims = if tb { [n, k] } else { [k, n] };
                    let a = Tensor::random(a_dims, DType::F32, seed).unwrap();
                    let b = Tensor::random(b_dims, DType::F32, seed + 1).unwrap();
                    let op = Op::MatMul {
                        trans_a: ta,
                        trans_b: tb,
                    };
                    let out = run(&dev, &op, &[&a, &b]);
                    assert_eq!(out.dims(), [m, n]);
                    assert_eq!(out.dtype(), DType::F32);
                    let what = format!("matmul {m}x{n}x{k} ta={ta} tb={tb}");
                    assert_close(&what, &out, &matmul_ref(&a, &b, ta, tb));
                }
            }
        }
    }
}

#[test]
fn matmul_in_half_precisions_gives_f32() {
    let dev = device(2);
    for dtype in [DType::F16, DType::BF16] {
        for (m, n, k, ta, tb) in [
            (33, 17, 65, false, true),
            (7, 130, 33, true, false),
            (1, 1, 7, true, true),
        ] {
            let a_dims = if ta { [k, m] } else { [m, k] };
            let b_dims = if tb { [n, k] } else { [k, n] };
            let a = Tensor::random(a_dims, dtype, 7).unwrap();
            let b = Tensor::random(b_dims, dtype, 8).unwrap();
            let op = Op::MatMul {
                trans_a: ta,
                trans_b: tb,
            };
            let out = run(&dev, &op, &[&a, &b]);
            assert_eq!(out.dtype(), DType::F32);
            let what = format!("{dtype} matmul {m}x{n}x{k}");
            assert_close(&what, &out, &matmul_ref(&a, &b, ta, tb));
        }
    }
}

/// Convolution cases: input dims, weight dims, params, with bias.
fn conv_cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams, bool)> {
    let p = Conv2dParams::default;
    vec![
        ([1, 1, 1, 1], [1, 1, 1, 1], p(), false),
        ([1, 3, 7, 7], [5, 3, 3, 3], p(), true),
        (
            [2, 4, 17, 13],
            [7, 4, 3, 3],
            Conv2dParams {
                stride: [2, 1],
                pads: [1, 2, 0, 1],
                relu: true,
                ..p()
            },
            true,
        ),
        (
            [1, 6, 17, 17],
            [4, 3, 3, 5],
            Conv2dParams {
                groups: 2,
                dilation: [2, 1],
                pads: [2, 2, 2, 2],
                ..p()
            },
            false,
        ),
        (
            [2, 8, 9, 9],
            [8, 1, 3, 3],
            Conv2dParams {
                groups: 8,
                pads: [1, 1, 1, 1],
                ..p()
            },
            true,
        ),
        ([1, 33, 7, 7], [17, 33, 1, 1], p(), false),
        (
            [1, 8, 33, 33],
            [16, 8, 3, 3],
            Conv2dParams {
                stride: [2, 2],
                pads: [1, 1, 1, 1],
                ..p()
            },
            true,
        ),
    ]
}

#[test]
fn conv2d_matches_f64_for_every_dtype() {
    let dev = device(2);
    for dtype in DType::ALL {
        for (i, (xd, wd, params, with_bias)) in conv_cases().into_iter().enumerate() {
            let seed = 1000 + 10 * i as u64;
            let x = Tensor::random(xd, dtype, seed).unwrap();
            let w = Tensor::random(wd, dtype, seed + 1).unwrap();
            let bias = Tensor::random([wd[0]], DType::F32, seed + 2).unwrap();
            let op = Op::Conv2d(params.clone());
            let out = if with_bias {
                run(&dev, &op, &[&x, &w, &bias])
            } else {
                run(&dev, &op, &[&x, &w])
            };
            let shapes = [x.shape(), w.shape()];
            assert_eq!(out.shape(), &op.output_shape(&shapes).unwrap());
            let what = format!("{dtype} conv {xd:?} * {wd:?} {params:?}");
            let reference = conv_ref(&x, &w, with_bias.then_some(&bias), &params);
            assert_close(&what, &out, &reference);
        }
    }
}

#[test]
fn mismatched_inputs_give_typed_errors() {
    let dev = device(1);
    let a = Tensor::random([4, 5], DType::F32, 1).unwrap();
    let b = Tensor::random([5, 3], DType::F32, 2).unwrap();
    let b16 = b.to_dtype(DType::F16);
    let err = dev.execute(&Op::matmul(), &[&a, &b16]).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    assert!(
        err.to_string().contains("f16") && err.to_string().contains("f32"),
        "{err}"
    );

    let err = dev.execute(&Op::matmul(), &[&a, &a]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("4x5"), "{err}");

    let err = dev.execute(&Op::matmul(), &[&a]).unwrap_err();
    assert!(matches!(err, Error::Arity { got: 1, .. }), "{err}");

    let v = Tensor::random([5], DType::F32, 3).unwrap();
    let err = dev.execute(&Op::matmul(), &[&v, &b]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");

    let conv = Op::Conv2d(Conv2dParams::default());
    let x = Tensor::random([1, 3, 8, 8], DType::F32, 4).unwrap();
    let w = Tensor::random([4, 3, 3, 3], DType::F32, 5).unwrap();
    let err = dev
        .execute(&conv, &[&x, &w.to_dtype(DType::BF16)])
        .unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    let bad_bias = Tensor::random([3], DType::F32, 6).unwrap();
    let err = dev.execute(&conv, &[&x, &w, &bad_bias]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[3]"), "{err}");
    let wrong_channels = Tensor::random([4, 2, 3, 3], DType::F32, 7).unwrap();
    assert!(dev.execute(&conv, &[&x, &wrong_channels]).is_err());
    let flat = Tensor::random([3, 8, 8], DType::F32, 8).unwrap();
    let err = dev.execute(&conv, &[&flat, &w]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let too_big = Tensor::random([4, 3, 9, 9], DType::F32, 9).unwrap();
    assert!(dev.execute(&conv, &[&x, &too_big]).is_err());
    let err = dev.execute(&conv, &[&x, &w, &v, &v]).unwrap_err();
    assert!(matches!(err, Error::Arity { got: 4, .. }), "{err}");
}

#[test]
fn convolution_added_onto_its_residual_in_place() {
    let dev = device(2);
    for (i, (xd, wd, params, _)) in conv_cases().into_iter().enumerate() {
        for relu in [false, true] {
            let params = Conv2dParams {
                relu,
                ..params.clone()
            };
            let seed = 5000 + 10 * i as u64;
            let x = Tensor::random(xd, DType::F32, seed).unwrap();
            let w = Tensor::random(wd, DType::F32, seed + 1).unwrap();
            let bias = Tensor::random([wd[0]], DType::F32, seed + 2).unwrap();
            let op = Op::Conv2d(params.clone());
            let out_shape = op.output_shape(&[x.shape(), w.shape()]).unwrap();
            let residual = Tensor::random(out_shape.dims().to_vec(), DType::F32, seed + 3).unwrap();
            // The residual as a fourth input, and the same sum formed in the residual's buffer.
            let as_input = run(&dev, &op, &[&x, &w, &bias, &residual]);
            let mut in_place = residual.clone();
            dev.conv_accumulate(&op, &[&x, &w, &bias], &mut in_place)
                .expect("the CPU node adds in place")
                .unwrap();
            assert_eq!(
                as_input.as_f32().unwrap(),
                in_place.as_f32().unwrap(),
                "case {i}"
            );
            let plain = Conv2dParams {
                relu: false,
                ..params.clone()
            };
            let reference: Vec<(f64, f64)> = conv_ref(&x, &w, Some(&bias), &plain)
                .into_iter()
                .zip(residual.as_f32().unwrap())
                .map(|((s, scale), &r)| {
                    let sum = s + f64::from(r);
                    (
                        if relu && sum < 0.0 { 0.0 } else { sum },
                        scale + f64::from(r).abs(),
                    )
                })
                .collect();
            assert_close(
                &format!("residual conv {xd:?} * {wd:?} {params:?}"),
                &in_place,
                &reference,
            );
        }
    }
    // A residual of another shape is a typed error naming both shapes.
    let x = Tensor::random([1, 3, 9, 9], DType::F32, 1).unwrap();
    let w = Tensor::random([4, 3, 3, 3], DType::F32, 2).unwrap();
    let mut wrong = Tensor::random([1, 4, 9, 9], DType::F32, 3).unwrap();
    let op = Op::Conv2d(Conv2dParams::default());
    let err = dev
        .conv_accumulate(&op, &[&x, &w], &mut wrong)
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[1, 4, 7, 7]"), "{err}");
    // Other ops have no in-place form.
    assert!(
        dev.conv_accumulate(&Op::matmul(), &[&x, &w], &mut wrong)
            .is_none()
    );
}

#[test]
fn launched_work_runs_on_the_pool_and_a_panic_ends_only_that_run() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dev = device(2);
    let (tx, rx) = mpsc::channel();
    let sent = tx.clone();
    dev.launch(Box::new(move || {
        let name = std::thread::current().name().map(str::to_string);
        sent.send(name).unwrap();
    }))
    .unwrap();
    let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        name.as_deref().is_some_and(|n| n.contains("worker")),
        "ran on {name:?}, not on a worker of the node's pool"
    );
    // A panicking run drops its sender without an answer; the pool keeps working.
    let lost = tx.clone();
    dev.launch(Box::new(move || {
        let _keep = lost;
        panic!("a run that fails");
    }))
    .unwrap();
    let sent = tx.clone();
    drop(tx);
    dev.launch(Box::new(move || sent.send(None).unwrap()))
        .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), None);
    assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
}
