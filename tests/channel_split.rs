//! A model's convolutions split by output channels across CPU nodes (`ChannelSplit`): every
//! form the session runs (plain, bias and ReLU, the CPU node's residual input, a residual
//! added in place, grouped and depthwise) against a float64 reference at odd channel counts;
//! matrix products by columns or rows; and a member that fails mid-run.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use common::{assert_close_tol, conv_ref, cpu_nodes, matmul_ref};

use accelmesh::drac::{Fault, FaultyDevice};
use accelmesh::model::split::ChannelSplit;
use accelmesh::{Conv2dParams, DType, Device, Error, Op, Tensor};

/// f32 accumulation over up to a few hundred terms; the Winograd path rounds a little more.
const TOL: f64 = 1e-4;

fn params(pad: usize, stride: usize, groups: usize, relu: bool) -> Conv2dParams {
    Conv2dParams {
        stride: [stride; 2],
        pads: [pad; 4],
        groups,
        relu,
        ..Default::default()
    }
}

/// Three one-thread nodes with uneven shares, splitting every convolution.
fn split3() -> ChannelSplit {
    ChannelSplit::new(cpu_nodes(3), vec![2.0, 1.0, 1.5])
        .unwrap()
        .with_min_flops(0)
}

#[test]
fn split_convolutions_match_the_f64_reference() {
    let split = split3();
    // (in channels, out channels, size, kernel, pad, stride, groups)
    let cases = [
        (3, 1, 9, 3, 1, 1, 1),
        (5, 7, 13, 3, 1, 1, 1),
        (8, 17, 11, 1, 0, 1, 1),
        (16, 33, 15, 3, 1, 2, 1),
        (12, 18, 10, 3, 1, 1, 3),
        (17, 17, 9, 3, 1, 1, 17),
        (4, 129, 7, 5, 2, 1, 1),
    ];
    for (i, &(c, k, hw, r, pad, stride, groups)) in cases.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = Tensor::random([1, c, hw, hw], DType::F32, seed).unwrap();
        let w = Tensor::random([k, c / groups, r, r], DType::F32, seed + 1).unwrap();
        let b = Tensor::random([k], DType::F32, seed + 2).unwrap();
        let p = params(pad, stride, groups, i % 2 == 1);
        let op = Op::Conv2d(p.clone());
        let got = split.execute(&op, &[&x, &w, &b]).unwrap().remove(0);
        assert_close_tol(
            &format!("case {i}"),
            &got,
            &conv_ref(&x, &w, Some(&b), &p),
            TOL,
        );
        let mut into = [Tensor::random(got.dims(), DType::F32, seed + 3).unwrap()];
        split.execute_into(&op, &[&x, &w], &mut into).unwrap();
        assert_close_tol(
            &format!("case {i} into"),
            &into[0],
            &conv_ref(&x, &w, None, &p),
            TOL,
        );
    }
    let busy = split.busy_s();
    assert!(
        busy.iter().all(|&s| s > 0.0),
        "every member took parts: {busy:?}"
    );
    assert!(split.dropped().is_empty());
}

#[test]
fn split_matrix_products_match_the_f64_reference() {
    let split = split3();
    // (M, K, N, B stored transposed): one row by columns, several rows by rows.
    for (i, &(m, k, n, tb)) in [
        (1, 33, 129, true),
        (1, 7, 17, true),
        (17, 65, 31, false),
        (3, 1, 7, false),
    ]
    .iter()
    .enumerate()
    {
        let seed = 200 + 10 * i as u64;
        let a = Tensor::random([m, k], DType::F32, seed).unwrap();
        let b_dims = if tb { [n, k] } else { [k, n] };
        let b = Tensor::random(b_dims, DType::F32, seed + 1).unwrap();
        let op = Op::MatMul {
            trans_a: false,
            trans_b: tb,
        };
        let got = split.execute(&op, &[&a, &b]).unwrap().remove(0);
        assert_eq!(got.dims(), [m, n]);
        assert_close_tol(
            &format!("matmul {i}"),
            &got,
            &matmul_ref(&a, &b, false, tb),
            TOL,
        );
    }
    assert!(
        split.busy_s().iter().all(|&s| s > 0.0),
        "{:?}",
        split.busy_s()
    );
}

/// `relu(conv + bias + residual)` in float64, with the scale of its terms.
fn residual_ref(x: &Tensor, w: &Tensor, b: &Tensor, res: &Tensor) -> Vec<(f64, f64)> {
    let plain = conv_ref(x, w, Some(b), &params(1, 1, 1, false));
    plain
        .iter()
        .zip(res.to_f64_vec())
        .map(|(&(s, sc), r)| ((s + r).max(0.0), sc + r.abs()))
        .collect()
}

#[test]
fn residual_forms_match_the_f64_reference() {
    let split = split3();
    let (c, k, hw) = (7, 33, 12);
    let x = Tensor::random([1, c, hw, hw], DType::F32, 7).unwrap();
    let w = Tensor::random([k, c, 3, 3], DType::F32, 8).unwrap();
    let b = Tensor::random([k], DType::F32, 9).unwrap();
    let res = Tensor::random([1, k, hw, hw], DType::F32, 10).unwrap();
    let op = Op::Conv2d(params(1, 1, 1, true));
    let want = residual_ref(&x, &w, &b, &res);
    // The CPU node's fourth input.
    let got = split.execute(&op, &[&x, &w, &b, &res]).unwrap().remove(0);
    assert_close_tol("residual input", &got, &want, TOL);
    // Added into the residual in place.
    let mut acc = res.clone();
    split
        .conv_accumulate(&op, &[&x, &w, &b], &mut acc)
        .expect("a CPU split adds in place")
        .unwrap();
    assert_close_tol("accumulated", &acc, &want, TOL);
    // A residual of the wrong shape is refused by the lead, naming it.
    let wrong = Tensor::random([1, k, hw, hw + 1], DType::F32, 11).unwrap();
    let mut wrong_acc = wrong.clone();
    let err = split
        .conv_accumulate(&op, &[&x, &w, &b], &mut wrong_acc)
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
}

#[test]
fn a_batch_or_a_small_convolution_runs_on_the_lead() {
    let split = ChannelSplit::new(cpu_nodes(2), vec![1.0, 1.0]).unwrap();
    // Below the split threshold: the lead alone.
    let x = Tensor::random([1, 3, 8, 8], DType::F32, 1).unwrap();
    let w = Tensor::random([5, 3, 3, 3], DType::F32, 2).unwrap();
    let p = params(1, 1, 1, false);
    let got = split
        .execute(&Op::Conv2d(p.clone()), &[&x, &w])
        .unwrap()
        .remove(0);
    assert_close_tol("small", &got, &conv_ref(&x, &w, None, &p), TOL);
    // Two images: each part's channels would be strided in the output; the lead runs it.
    let split = split.with_min_flops(0);
    let x2 = Tensor::random([2, 3, 8, 8], DType::F32, 3).unwrap();
    let got = split
        .execute(&Op::Conv2d(p.clone()), &[&x2, &w])
        .unwrap()
        .remove(0);
    assert_close_tol("batch", &got, &conv_ref(&x2, &w, None, &p), TOL);
    assert_eq!(split.busy_s(), [0.0, 0.0], "nothing was split");
    // Bad shapes are the lead's typed error.
    let bad = Tensor::random([5, 4, 3, 3], DType::F32, 4).unwrap();
    let err = split.execute(&Op::Conv2d(p), &[&x, &bad]).unwrap_err();
    assert!(err.to_string().contains("[5, 4, 3, 3]"), "{err}");
    // Fewer than two members, or a share that is not a number, is refused.
    assert!(ChannelSplit::new(cpu_nodes(1), vec![1.0]).is_err());
    assert!(ChannelSplit::new(cpu_nodes(2), vec![1.0, f64::NAN]).is_err());
}

#[test]
fn a_member_that_crashes_is_dropped_and_its_block_rerun_on_the_lead() {
    let nodes = cpu_nodes(2);
    let faulty = Arc::new(FaultyDevice::new(
        Arc::clone(&nodes[1]),
        Arc::new(AtomicBool::new(false)),
    ));
    faulty.inject(Fault::crash().after(1));
    let split = ChannelSplit::new(vec![Arc::clone(&nodes[0]), faulty], vec![1.0, 1.0])
        .unwrap()
        .with_min_flops(0);
    let x = Tensor::random([1, 9, 10, 10], DType::F32, 21).unwrap();
    let w = Tensor::random([17, 9, 3, 3], DType::F32, 22).unwrap();
    let p = params(1, 1, 1, true);
    let op = Op::Conv2d(p.clone());
    for round in 0..3 {
        let got = split.execute(&op, &[&x, &w]).unwrap().remove(0);
        assert_close_tol(
            &format!("round {round}"),
            &got,
            &conv_ref(&x, &w, None, &p),
            TOL,
        );
    }
    let dropped = split.dropped();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0].member, 1);
    assert!(
        dropped[0].reason.contains("crashed"),
        "{}",
        dropped[0].reason
    );
    assert!(split.stuck_member().is_none());
}

#[test]
fn a_crash_while_adding_into_a_residual_fails_the_op() {
    let nodes = cpu_nodes(2);
    let faulty = Arc::new(FaultyDevice::new(
        Arc::clone(&nodes[1]),
        Arc::new(AtomicBool::new(false)),
    ));
    faulty.inject(Fault::crash());
    let split = ChannelSplit::new(vec![Arc::clone(&nodes[0]), faulty], vec![1.0, 1.0])
        .unwrap()
        .with_min_flops(0);
    let x = Tensor::random([1, 5, 8, 8], DType::F32, 31).unwrap();
    let w = Tensor::random([7, 5, 3, 3], DType::F32, 32).unwrap();
    let b = Tensor::random([7], DType::F32, 33).unwrap();
    let mut acc = Tensor::random([1, 7, 8, 8], DType::F32, 34).unwrap();
    let err = split
        .conv_accumulate(&Op::Conv2d(params(1, 1, 1, false)), &[&x, &w, &b], &mut acc)
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Device { .. }), "{err}");
    assert_eq!(split.dropped()[0].member, 1);
}
