//! The GPU node against float64 references on seeded random inputs. Runs on whatever adapter
//! wgpu finds (Mesa's software Vulkan driver in CI); skips with a message when there is none,
//! unless `ACCELMESH_REQUIRE_GPU=1`.

mod common;

use accelmesh::node::gpu::{GpuDevice, LimitOverrides};
use accelmesh::{Conv2dParams, DType, Device, Op, Tensor};
use common::{assert_close_tol, conv_ref, matmul_ref};

/// Opens the first adapter, or returns `None` (after saying why) when there is none.
fn gpu_with(overrides: LimitOverrides) -> Option<GpuDevice> {
    match GpuDevice::open(0, 0, overrides) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("ACCELMESH_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ACCELMESH_REQUIRE_GPU=1 but no GPU adapter opened: {e}");
            }
            eprintln!(
                "skipping GPU test: no GPU adapter ({e}). On Debian, `apt-get install \
                 mesa-vulkan-drivers libvulkan1` provides a software Vulkan adapter."
            );
            None
        }
    }
}

fn gpu() -> Option<GpuDevice> {
    gpu_with(LimitOverrides::default())
}

/// Tolerance per dtype (inputs are rounded to the dtype before the reference, so f16 and
/// bf16 differ from f32 only by accumulation order).
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        _ => 5e-5,
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_case(
    dev: &GpuDevice,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    dtype: DType,
    seed: u64,
) {
    let a_shape = if ta { [k, m] } else { [m, k] };
    let b_shape = if tb { [n, k] } else { [k, n] };
    let a = Tensor::random(a_shape, dtype, seed).unwrap();
    let b = Tensor::random(b_shape, dtype, seed + 1).unwrap();
    let op = Op::MatMul {
        trans_a: ta,
        trans_b: tb,
    };
    let out = dev.execute(&op, &[&a, &b]).unwrap();
    assert_eq!(out[0].dims(), &[m, n]);
    assert_close_tol(
        &format!("{m}x{n}x{k} ta={ta} tb={tb} {dtype}"),
        &out[0],
        &matmul_ref(&a, &b, ta, tb),
        tol(dtype),
    );
}

#[test]
fn matmul_matches_f64_on_odd_sizes_and_transposes() {
    let Some(dev) = gpu() else { return };
    let sizes = [1usize, 2, 7, 17, 33, 65, 129];
    let mut seed = 1;
    for (i, &m) in sizes.iter().enumerate() {
        let n = sizes[(i + 3) % sizes.len()];
        let k = sizes[(i + 5) % sizes.len()];
        for ta in [false, true] {
            for tb in [false, true] {
                matmul_case(&dev, m, n, k, ta, tb, DType::F32, seed);
                seed += 2;
            }
        }
    }
    matmul_case(&dev, 257, 100, 300, false, false, DType::F32, 99);
    // Rows of A and B in multiples of four, with partial tiles: the vec4 load paths.
    matmul_case(&dev, 33, 68, 36, false, false, DType::F32, 98);
    matmul_case(&dev, 7, 132, 20, false, false, DType::F32, 97);
}

#[test]
fn matmul_in_half_precisions() {
    let Some(dev) = gpu() else { return };
    for dtype in [DType::F16, DType::BF16] {
        for (m, n, k) in [(1, 1, 1), (7, 33, 17), (65, 3, 129), (33, 64, 31)] {
            for (ta, tb) in [(false, false), (true, true)] {
                matmul_case(&dev, m, n, k, ta, tb, dtype, 7);
            }
        }
    }
}

#[test]
fn matmul_skinny_deep_uses_split_k() {
    let Some(dev) = gpu() else { return };
    matmul_case(&dev, 3, 5, 4099, false, false, DType::F32, 11);
    matmul_case(&dev, 17, 1, 2048, true, false, DType::F32, 12);
    matmul_case(&dev, 5, 8, 4100, false, false, DType::F32, 13);
    matmul_case(&dev, 24, 5, 4099, false, true, DType::F32, 14);
}

#[test]
fn matmul_of_few_rows_runs_as_matrix_vector_products() {
    // One to eight rows: B stored either way, depths that are and are not whole vec4 words,
    // and depths deep enough to be split (partials summed after).
    let Some(dev) = gpu() else { return };
    let mut seed = 40;
    for (m, n, k) in [
        (1usize, 1usize, 1usize),
        (1, 129, 33),
        (2, 7, 4100),
        (3, 65, 17),
        (5, 1000, 2048),
        (7, 33, 129),
        (8, 17, 20_003),
        (8, 257, 512),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                matmul_case(&dev, m, n, k, ta, tb, DType::F32, seed);
                seed += 2;
            }
        }
    }
    for dtype in [DType::F16, DType::BF16] {
        matmul_case(&dev, 4, 100, 3000, false, true, dtype, seed);
        matmul_case(&dev, 1, 70, 257, false, false, dtype, seed + 2);
        seed += 4;
    }
}

#[test]
fn matmul_with_k_zero_gives_zeros() {
    let Some(dev) = gpu() else { return };
    let a = Tensor::random([3, 0], DType::F32, 1).unwrap();
    let b = Tensor::random([0, 4], DType::F32, 2).unwrap();
    let out = dev.execute(&Op::matmul(), &[&a, &b]).unwrap();
    assert_eq!(out[0].to_f32_vec(), vec![0.0; 12]);
}

#[test]
fn oversize_operands_split_into_sub_dispatches() {
    // A binding limit of 4 KiB forces splits over M, N and K on modest shapes.
    let Some(dev) = gpu_with(LimitOverrides {
        max_storage_binding: Some(4096),
        max_workgroups_per_dim: Some(3),
        ..LimitOverrides::default()
    }) else {
        return;
    };
    assert_eq!(dev.limits().max_storage_binding, 4096);
    for (m, n, k, ta, tb) in [
        (70, 50, 40, false, false),
        (33, 65, 129, true, false),
        (40, 90, 30, false, true),
        (5, 300, 20, true, true),
        // A few rows (matrix-vector products) in pieces along N and K.
        (3, 300, 200, false, true),
        (7, 50, 900, true, false),
        (1, 1000, 40, false, false),
    ] {
        matmul_case(&dev, m, n, k, ta, tb, DType::F32, 21);
    }
    matmul_case(&dev, 40, 30, 50, false, true, DType::BF16, 22);
    let x = Tensor::random([3, 4, 9, 9], DType::F32, 5).unwrap();
    let w = Tensor::random([6, 4, 3, 3], DType::F32, 6).unwrap();
    let p = Conv2dParams {
        pads: [1, 1, 1, 1],
        ..Conv2dParams::default()
    };
    let out = dev.execute(&Op::Conv2d(p.clone()), &[&x, &w]).unwrap();
    assert_close_tol("oversize conv", &out[0], &conv_ref(&x, &w, None, &p), 2e-5);
}

/// Random convolution configurations covering every option.
fn conv_cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams, bool)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut cases = Vec::new();
    for i in 0..40 {
        let groups = match i % 3 {
            0 => 1,
            1 => 2,
            _ => 0, // depthwise
        };
        let k = rng.random_range(1..=7usize);
        let kw = if i % 4 == 0 {
            rng.random_range(1..=7usize)
        } else {
            k
        };
        let c = if groups == 0 {
            rng.random_range(1..=9usize)
        } else {
            groups * rng.random_range(1..=5usize)
        };
        let (groups, o) = if groups == 0 {
            (c, c * rng.random_range(1..=2usize))
        } else {
            (groups, groups * rng.random_range(1..=6usize))
        };
        let stride = [rng.random_range(1..=3usize), rng.random_range(1..=3usize)];
        let dilation = [rng.random_range(1..=2usize), rng.random_range(1..=2usize)];
        let pads = [0; 4].map(|_: usize| rng.random_range(0..=3usize));
        let span_h = (k - 1) * dilation[0] + 1;
        let span_w = (kw - 1) * dilation[1] + 1;
        let h = rng.random_range(span_h.saturating_sub(pads[0] + pads[2]).max(1)..=span_h + 9);
        let w = rng.random_range(span_w.saturating_sub(pads[1] + pads[3]).max(1)..=span_w + 9);
        let n = rng.random_range(1..=2usize);
        let p = Conv2dParams {
            stride,
            dilation,
            pads,
            groups,
            relu: i % 2 == 1,
        };
        cases.push(([n, c, h, w], [o, c / groups, k, kw], p, i % 5 != 0));
    }
    cases
}

/// One convolution of seeded random `dtype` input and weights (seeds `seed`, `seed + 100`;
/// an f32 bias from `seed + 200` when `with_bias`) against the float64 reference.
fn conv_case(
    dev: &GpuDevice,
    (xs, ws): ([usize; 4], [usize; 4]),
    p: &Conv2dParams,
    with_bias: bool,
    dtype: DType,
    seed: u64,
    label: &str,
) {
    let x = Tensor::random(xs, dtype, seed).unwrap();
    let w = Tensor::random(ws, dtype, seed + 100).unwrap();
    let bias = Tensor::random([ws[0]], DType::F32, seed + 200).unwrap();
    let mut inputs = vec![&x, &w];
    if with_bias {
        inputs.push(&bias);
    }
    let out = dev.execute(&Op::Conv2d(p.clone()), &inputs).unwrap();
    let reference = conv_ref(&x, &w, with_bias.then_some(&bias), p);
    assert_close_tol(label, &out[0], &reference, tol(dtype));
}

#[test]
fn conv2d_matches_f64_on_random_configurations() {
    let Some(dev) = gpu() else { return };
    for (i, (xs, ws, p, with_bias)) in conv_cases().into_iter().enumerate() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            if dtype != DType::F32 && i % 4 != 0 {
                continue;
            }
            let label = format!("case {i} {xs:?} {ws:?} {p:?} {dtype}");
            conv_case(&dev, (xs, ws), &p, with_bias, dtype, 100 + i as u64, &label);
        }
    }
}

#[test]
fn deep_convolutions_of_one_image_split_their_depth() {
    // Deep layers on small planes at batch 1 (few output tiles) split K into partial outputs
    // summed after with bias and ReLU: one and two groups, odd planes and channel counts, a
    // stride; a batch of two takes the unsplit path on the same layer.
    let Some(dev) = gpu() else { return };
    let cases = [
        (
            [1usize, 64, 5, 5],
            [33usize, 64, 3, 3],
            1usize,
            [1usize, 1],
            true,
            true,
        ),
        ([1, 130, 7, 7], [18, 65, 3, 3], 2, [1, 1], false, true),
        ([1, 513, 3, 3], [7, 513, 1, 1], 1, [1, 1], true, false),
        ([1, 96, 9, 7], [40, 96, 3, 3], 1, [2, 2], true, true),
        ([2, 64, 5, 5], [33, 64, 3, 3], 1, [1, 1], true, true),
    ];
    for (i, (xs, ws, groups, stride, relu, with_bias)) in cases.into_iter().enumerate() {
        let p = Conv2dParams {
            stride,
            pads: [1, 1, 1, 1],
            groups,
            relu,
            ..Conv2dParams::default()
        };
        let label = format!("deep case {i} {xs:?} {ws:?}");
        conv_case(
            &dev,
            (xs, ws),
            &p,
            with_bias,
            DType::F32,
            500 + i as u64,
            &label,
        );
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    let Some(dev) = gpu() else { return };
    let a = Tensor::random([3, 4], DType::F32, 1).unwrap();
    let b = Tensor::random([5, 6], DType::F32, 2).unwrap();
    let err = dev.execute(&Op::matmul(), &[&a, &b]).unwrap_err();
    assert!(
        err.to_string().contains('4') && err.to_string().contains('5'),
        "{err}"
    );
    let h = Tensor::random([4, 6], DType::F16, 3).unwrap();
    let err = dev.execute(&Op::matmul(), &[&a, &h]).unwrap_err();
    assert!(err.to_string().contains("f16"), "{err}");
}

#[test]
fn resident_chain_counts_transfers_and_reuses_buffers() {
    let Some(dev) = gpu() else { return };
    let a = Tensor::random([33, 17], DType::F32, 1).unwrap();
    let b = Tensor::random([17, 33], DType::F32, 2).unwrap();
    let before = dev.transfer_stats();
    let ga = dev.upload(&a).unwrap();
    let gb = dev.upload(&b).unwrap();
    // (A·B)·(A·B) without leaving the GPU.
    let ab = dev.run(&Op::matmul(), &[&ga, &gb]).unwrap().remove(0);
    let abab = dev.run(&Op::matmul(), &[&ab, &ab]).unwrap().remove(0);
    let out = abab.download().unwrap();
    let ab_host =
        Tensor::from_f32([33, 33], DType::F32, &ab.download().unwrap().to_f32_vec()).unwrap();
    assert_close_tol(
        "chain",
        &out,
        &matmul_ref(&ab_host, &ab_host, false, false),
        2e-5,
    );
    let after = dev.transfer_stats();
    assert_eq!(after.uploads - before.uploads, 2);
    assert_eq!(after.downloads - before.downloads, 2);
    assert!(after.upload_bytes - before.upload_bytes >= (33 * 17 * 2 * 4) as u64);
    drop((ab, abab));
    let created = dev.pool_stats().created;
    let again = dev.run(&Op::matmul(), &[&ga, &gb]).unwrap();
    drop(again);
    assert_eq!(
        dev.pool_stats().created,
        created,
        "the output buffer came from the pool"
    );
}

#[test]
fn operands_beyond_the_largest_buffer_are_tiled_on_the_host() {
    // A 16 KiB buffer limit: a 100×90·90×70 product needs 36 KB for A.
    let Some(dev) = gpu_with(LimitOverrides {
        max_buffer: Some(16 << 10),
        ..LimitOverrides::default()
    }) else {
        return;
    };
    for (m, n, k, ta, tb) in [(100, 70, 90, false, false), (65, 129, 40, true, true)] {
        matmul_case(&dev, m, n, k, ta, tb, DType::F32, 31);
    }
    let a = Tensor::random([2, 8192], DType::F32, 1).unwrap();
    let b = Tensor::random([8192, 2], DType::F32, 2).unwrap();
    let err = dev.execute(&Op::matmul(), &[&a, &b]).unwrap_err();
    assert!(err.to_string().contains("8192"), "{err}");
}

#[test]
fn a_lost_device_fails_every_later_call_with_a_typed_error() {
    let Some(dev) = gpu() else { return };
    let a = Tensor::random([9, 5], DType::F32, 1).unwrap();
    let b = Tensor::random([5, 3], DType::F32, 2).unwrap();
    let resident = dev.upload(&a).unwrap();
    dev.inject_device_loss();
    assert!(dev.is_failed());
    for err in [
        dev.execute(&Op::matmul(), &[&a, &b]).unwrap_err(),
        dev.upload(&b).unwrap_err(),
        resident.download().unwrap_err(),
        dev.run(&Op::matmul(), &[&resident, &resident]).unwrap_err(),
    ] {
        assert!(matches!(err, accelmesh::Error::Device { .. }), "{err}");
        assert!(
            err.to_string().contains("gpu0") && err.to_string().contains("lost"),
            "{err}"
        );
    }
}

#[test]
fn gpu_and_cpu_nodes_agree() {
    let Some(gpu) = gpu() else { return };
    let cpu = accelmesh::CpuDevice::with_threads(2).unwrap();
    let x = Tensor::random([2, 8, 15, 13], DType::F32, 3).unwrap();
    let w = Tensor::random([12, 4, 3, 3], DType::F32, 4).unwrap();
    let bias = Tensor::random([12], DType::F32, 5).unwrap();
    let op = Op::Conv2d(Conv2dParams {
        stride: [2, 1],
        pads: [1, 0, 2, 1],
        groups: 2,
        relu: true,
        ..Conv2dParams::default()
    });
    let g = gpu
        .execute(&op, &[&x, &w, &bias])
        .unwrap()
        .remove(0)
        .to_f32_vec();
    let c = cpu
        .execute(&op, &[&x, &w, &bias])
        .unwrap()
        .remove(0)
        .to_f32_vec();
    assert_eq!(g.len(), c.len());
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "element {i}: gpu {a}, cpu {b}"
        );
    }
}
