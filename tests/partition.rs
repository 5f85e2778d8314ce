//! The partitioner against the single-node result on the CPU node: matmul by rows, columns,
//! grid and K-split, conv2d by batch, output channels and output rows (halos with stride,
//! dilation, asymmetric pads, 7×7 kernels, groups), with equal, unequal and zero shares, parts
//! tiled further to fit a memory limit, and the typed errors. Row, column, grid, batch,
//! channel and output-row splits must match bit for bit; K-split within f32 rounding.

use accelmesh::drac::partition::{
    PartSpec, Strategy, assemble, candidate_strategies, extract, extract_slices, input_views,
    output_runs, partition, split_to_fit, weighted_ranges,
};
use accelmesh::op::Unary;
use accelmesh::{Conv2dParams, CpuDevice, DType, Device, Error, Op, Shape, Tensor, TensorView};

/// Share vectors every strategy is run with: equal, unequal, with zeros, a single node.
const SHARES: &[&[f64]] = &[
    &[1.0],
    &[1.0, 1.0, 1.0],
    &[1.0, 3.0, 0.5],
    &[0.0, 2.0, 0.0, 1.0],
    &[1.0, 0.0],
    &[0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25],
];

/// The CPU node every part and the whole op run on.
fn node() -> CpuDevice {
    CpuDevice::with_threads(1).unwrap()
}

/// Runs `op` whole on the node.
fn run_whole(dev: &CpuDevice, op: &Op, inputs: &[&Tensor]) -> Tensor {
    dev.execute(op, inputs).unwrap().remove(0)
}

/// Runs every part on the node and assembles the outputs; where the parts' output blocks are
/// contiguous, also runs them in place (inputs borrowed where contiguous, each part writing
/// its block of one buffer) and checks that both ways agree bit for bit.
fn run_parts(dev: &CpuDevice, op: &Op, inputs: &[&Tensor], parts: Vec<PartSpec>) -> Tensor {
    let in_place = run_parts_in_place(dev, inputs, &parts);
    let assembled = run_parts_assembled(dev, op, inputs, parts);
    if let Some(in_place) = in_place {
        let (a, b) = (assembled.as_f32().unwrap(), in_place.as_f32().unwrap());
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "element {i}: {x} assembled, {y} in place"
            );
        }
    }
    assembled
}

/// The parts run in place into one buffer (first filled with NaN, so a block no part writes
/// shows); `None` when the plan's output blocks are not contiguous.
fn run_parts_in_place(dev: &CpuDevice, inputs: &[&Tensor], parts: &[PartSpec]) -> Option<Tensor> {
    let (shape, runs) = output_runs(parts)?;
    let mut out = vec![f32::NAN; shape.numel().unwrap()];
    for (p, run) in parts.iter().zip(runs) {
        let copies = extract_slices(p, inputs).unwrap();
        let views: Vec<TensorView<'_>> = match input_views(p, inputs).unwrap() {
            Some(views) => views,
            None => copies
                .iter()
                .zip(inputs)
                .map(|(c, t)| c.as_ref().unwrap_or(t).view())
                .collect(),
        };
        for (v, s) in views.iter().zip(&p.input_shapes) {
            assert_eq!(v.shape(), s, "part {} view shape", p.index);
        }
        dev.execute_view(&p.op, &views, &mut out[run]).unwrap();
    }
    Some(Tensor::from_vec(shape, out).unwrap())
}

/// Runs every part on the node into outputs of its own and assembles them.
fn run_parts_assembled(
    dev: &CpuDevice,
    op: &Op,
    inputs: &[&Tensor],
    parts: Vec<PartSpec>,
) -> Tensor {
    let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
    let outputs = parts
        .into_iter()
        .map(|p| {
            let ins = extract(&p, inputs).unwrap();
            let refs: Vec<&Tensor> = ins.iter().collect();
            for (t, s) in ins.iter().zip(&p.input_shapes) {
                assert_eq!(t.shape(), s, "part {} input shape", p.index);
            }
            let out = dev.execute(&p.op, &refs).unwrap().remove(0);
            assert_eq!(
                out.shape(),
                &p.output_shape,
                "part {} output shape",
                p.index
            );
            (p, out)
        })
        .collect();
    assemble(op, &shapes, outputs).unwrap()
}

/// Checks the planned parts: numbered in order, non-empty, share indices valid and not of a
/// zero share, byte and flop counts consistent with their shapes.
fn check_specs(op: &Op, parts: &[PartSpec], shares: &[f64], dtype: DType) {
    assert!(!parts.is_empty());
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.index, i);
        assert!(p.share_index < shares.len());
        assert!(shares[p.share_index] > 0.0, "part for a zero share");
        let refs: Vec<&Shape> = p.input_shapes.iter().collect();
        assert_eq!(p.op.flops(&refs).unwrap(), p.flops);
        let size = dtype.size_bytes() as u64;
        let elems = |s: &Shape| s.numel().unwrap() as u64;
        let mut bytes = elems(&p.input_shapes[0]) * size + elems(&p.input_shapes[1]) * size;
        if let Some(bias) = p.input_shapes.get(2) {
            assert!(matches!(op, Op::Conv2d(_)));
            bytes += elems(bias) * 4;
        }
        assert_eq!(p.input_bytes, bytes);
        assert_eq!(p.output_bytes, elems(&p.output_shape) * 4);
    }
}

/// Asserts two tensors are equal bit for bit.
fn assert_bits(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {i} is {a}, single node gives {b}"
        );
    }
}

/// Asserts a K-split matmul result is within f32 accumulation error of the float64 product.
fn assert_matmul_close(what: &str, got: &Tensor, a: &Tensor, b: &Tensor, ta: bool, tb: bool) {
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let (m, k) = if ta {
        (a.dims()[1], a.dims()[0])
    } else {
        (a.dims()[0], a.dims()[1])
    };
    let n = if tb { b.dims()[0] } else { b.dims()[1] };
    let g = got.to_f32_vec();
    assert_eq!(g.len(), m * n, "{what}: output size");
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut scale) = (0.0f64, 0.0f64);
            for p in 0..k {
                let x = if ta { av[p * m + i] } else { av[i * k + p] };
                let y = if tb { bv[j * k + p] } else { bv[p * n + j] };
                sum += x * y;
                scale += (x * y).abs();
            }
            let err = (f64::from(g[i * n + j]) - sum).abs();
            let tol = 2.0 * (k as f64 + 2.0) * f64::from(f32::EPSILON) * scale + 1e-30;
            assert!(
                err <= tol,
                "{what}: ({i}, {j}) is {}, reference {sum} (error {err}, tolerance {tol})",
                g[i * n + j]
            );
        }
    }
}

/// Shares for a grid of `rows × cols`: equal, unequal, and with a zero cell.
fn grid_shares(rows: usize, cols: usize) -> Vec<Vec<f64>> {
    let cells = rows * cols;
    let unequal = (0..cells).map(|i| [1.0, 3.0, 0.5][i % 3]).collect();
    let zero = (0..cells)
        .map(|i| if i % 2 == 1 { 0.0 } else { 1.0 + i as f64 })
        .collect();
    vec![vec![1.0; cells], unequal, zero]
}

#[test]
fn matmul_splits_match_the_single_node() {
    let dev = node();
    let sizes = [1, 7, 17, 33, 129];
    let mut seed = 1;
    for (mi, &m) in sizes.iter().enumerate() {
        for (ni, &n) in sizes.iter().enumerate() {
            // A few depths per (m, n), covering every size and both sides of the gemm's
            // depth blocking.
            for &k in &[sizes[(mi + ni) % 5], 300] {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    if k == 300 && (ta || tb) && m > 33 {
                        continue;
                    }
                    let op = Op::MatMul {
                        trans_a: ta,
                        trans_b: tb,
                    };
                    let a_dims = if ta { [k, m] } else { [m, k] };
                    let b_dims = if tb { [n, k] } else { [k, n] };
                    seed += 2;
                    let a = Tensor::random(a_dims, DType::F32, seed).unwrap();
                    let b = Tensor::random(b_dims, DType::F32, seed + 1).unwrap();
                    let inputs = [&a, &b];
                    let shapes = [a.shape(), b.shape()];
                    let whole = run_whole(&dev, &op, &inputs);
                    for &shares in SHARES {
                        for strategy in [Strategy::Rows, Strategy::Cols, Strategy::KSplit] {
                            let what =
                                format!("matmul {m}x{n}x{k} ta={ta} tb={tb} {strategy} {shares:?}");
                            let parts =
                                partition(&op, &shapes, DType::F32, strategy, shares).unwrap();
                            check_specs(&op, &parts, shares, DType::F32);
                            let got = run_parts(&dev, &op, &inputs, parts);
                            if strategy == Strategy::KSplit {
                                assert_matmul_close(&what, &got, &a, &b, ta, tb);
                            } else {
                                assert_bits(&what, &got, &whole);
                            }
                        }
                    }
                    for (rows, cols) in [(2, 2), (1, 3), (3, 1), (2, 3)] {
                        for shares in grid_shares(rows, cols) {
                            let strategy = Strategy::Grid { rows, cols };
                            let what =
                                format!("matmul {m}x{n}x{k} ta={ta} tb={tb} {strategy} {shares:?}");
                            let parts =
                                partition(&op, &shapes, DType::F32, strategy, &shares).unwrap();
                            check_specs(&op, &parts, &shares, DType::F32);
                            assert_bits(&what, &run_parts(&dev, &op, &inputs, parts), &whole);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn grid_areas_follow_the_shares() {
    let (a, b) = (Shape::new([120, 64]), Shape::new([64, 90]));
    let shares = [1.0, 2.0, 3.0, 6.0];
    let parts = partition(
        &Op::matmul(),
        &[&a, &b],
        DType::F32,
        Strategy::Grid { rows: 2, cols: 2 },
        &shares,
    )
    .unwrap();
    assert_eq!(parts.len(), 4);
    let dims: Vec<&[usize]> = parts.iter().map(|p| p.output_shape.dims()).collect();
    // Bands: 3 : 9 of 120 rows; cells within a band by their own shares.
    assert_eq!(dims, [&[30, 30][..], &[30, 60], &[90, 30], &[90, 60]]);
    assert_eq!(
        parts.iter().map(|p| p.share_index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(parts[3].output_offset(), [30, 30]);
}

#[test]
fn half_precision_inputs_split_exactly() {
    let dev = node();
    for dtype in [DType::F16, DType::BF16] {
        let a = Tensor::random([33, 17], dtype, 5).unwrap();
        let b = Tensor::random([17, 129], dtype, 6).unwrap();
        let op = Op::matmul();
        let whole = run_whole(&dev, &op, &[&a, &b]);
        for strategy in [Strategy::Rows, Strategy::Cols] {
            let parts = partition(
                &op,
                &[a.shape(), b.shape()],
                dtype,
                strategy,
                &[1.0, 3.0, 0.5],
            )
            .unwrap();
            check_specs(&op, &parts, &[1.0, 3.0, 0.5], dtype);
            let got = run_parts(&dev, &op, &[&a, &b], parts);
            assert_bits(&format!("{dtype} {strategy}"), &got, &whole);
        }
    }
}

/// One convolution case: input dims, weight dims, parameters, and whether it has a bias.
struct ConvCase {
    name: &'static str,
    input: [usize; 4],
    weight: [usize; 4],
    params: Conv2dParams,
    bias: bool,
}

fn conv_cases() -> Vec<ConvCase> {
    let p =
        |stride: [usize; 2], dilation: [usize; 2], pads: [usize; 4], groups, relu| Conv2dParams {
            stride,
            dilation,
            pads,
            groups,
            relu,
        };
    vec![
        ConvCase {
            name: "3x3 same, relu",
            input: [3, 4, 17, 7],
            weight: [7, 4, 3, 3],
            params: p([1, 1], [1, 1], [1, 1, 1, 1], 1, true),
            bias: true,
        },
        ConvCase {
            name: "7x7 stride 2 asymmetric pads, 3 groups",
            input: [2, 6, 33, 17],
            weight: [9, 2, 7, 7],
            params: p([2, 2], [1, 1], [3, 2, 1, 3], 3, false),
            bias: true,
        },
        ConvCase {
            name: "3x3 dilation 2, stride [1, 2], asymmetric pads",
            input: [1, 3, 17, 17],
            weight: [5, 3, 3, 3],
            params: p([1, 2], [2, 2], [2, 0, 0, 2], 1, false),
            bias: false,
        },
        // 15 output channels: below Winograd over stride phases (see
        // `winograd_convolutions_split_exactly_by_batch_and_closely_otherwise`).
        ConvCase {
            name: "7x7 stem, stride 2, pads 3",
            input: [2, 3, 33, 33],
            weight: [15, 3, 7, 7],
            params: p([2, 2], [1, 1], [3, 3, 3, 3], 1, true),
            bias: true,
        },
        ConvCase {
            name: "depthwise 3x3 stride 2",
            input: [2, 8, 17, 17],
            weight: [8, 1, 3, 3],
            params: p([2, 2], [1, 1], [1, 1, 1, 1], 8, false),
            bias: true,
        },
        ConvCase {
            name: "depthwise multiplier 2, 5x5 dilation 2, stride 3",
            input: [1, 4, 33, 7],
            weight: [8, 1, 5, 5],
            params: p([3, 1], [2, 1], [4, 2, 0, 2], 4, true),
            bias: false,
        },
        ConvCase {
            name: "1x1 with row pads only",
            input: [3, 5, 7, 7],
            weight: [7, 5, 1, 1],
            params: p([1, 1], [1, 1], [1, 0, 2, 0], 1, false),
            bias: true,
        },
        ConvCase {
            name: "rows entirely in padding",
            input: [1, 2, 3, 5],
            weight: [3, 2, 3, 3],
            params: p([1, 1], [1, 1], [5, 1, 5, 1], 1, false),
            bias: true,
        },
        ConvCase {
            name: "stride larger than kernel, unused bottom rows",
            input: [2, 3, 17, 9],
            weight: [4, 3, 2, 2],
            params: p([3, 3], [1, 1], [0, 0, 1, 0], 1, false),
            bias: false,
        },
        ConvCase {
            name: "single output row",
            input: [1, 3, 7, 7],
            weight: [2, 3, 7, 7],
            params: p([1, 1], [1, 1], [0, 0, 0, 0], 1, false),
            bias: true,
        },
        ConvCase {
            name: "large channels (gemm blocking), 2 groups",
            input: [1, 130, 9, 9],
            weight: [34, 65, 3, 3],
            params: p([1, 1], [1, 1], [1, 1, 1, 1], 2, false),
            bias: true,
        },
    ]
}

/// The inputs of a convolution case.
fn conv_inputs(case: &ConvCase, seed: u64) -> Vec<Tensor> {
    let mut inputs = vec![
        Tensor::random(case.input, DType::F32, seed).unwrap(),
        Tensor::random(case.weight, DType::F32, seed + 1).unwrap(),
    ];
    if case.bias {
        inputs.push(Tensor::random([case.weight[0]], DType::F32, seed + 2).unwrap());
    }
    inputs
}

#[test]
fn conv_splits_match_the_single_node() {
    let dev = node();
    for (ci, case) in conv_cases().iter().enumerate() {
        let op = Op::Conv2d(case.params.clone());
        let inputs = conv_inputs(case, 100 + 3 * ci as u64);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let whole = run_whole(&dev, &op, &refs);
        for &shares in SHARES {
            for strategy in [Strategy::Batch, Strategy::OutChannels, Strategy::OutRows] {
                let what = format!("conv {} {strategy} {shares:?}", case.name);
                let parts = partition(&op, &shapes, DType::F32, strategy, shares).unwrap();
                check_specs(&op, &parts, shares, DType::F32);
                if strategy == Strategy::OutRows {
                    // Pads only where the halo reaches outside the image.
                    for p in &parts {
                        let Op::Conv2d(pp) = &p.op else { panic!() };
                        assert_eq!(
                            [pp.pads[1], pp.pads[3]],
                            [case.params.pads[1], case.params.pads[3]]
                        );
                        assert!(pp.pads[0] <= case.params.pads[0], "{what}: top pad");
                        assert!(pp.pads[2] <= case.params.pads[2], "{what}: bottom pad");
                    }
                }
                if strategy == Strategy::OutChannels && case.params.groups > 1 {
                    let og = case.weight[0] / case.params.groups;
                    for p in &parts {
                        assert_eq!(p.output_shape.dims()[1] % og, 0, "{what}: whole groups");
                    }
                }
                let got = run_parts(&dev, &op, &refs, parts);
                assert_bits(&what, &got, &whole);
            }
        }
    }
}

#[test]
fn halo_parts_read_only_their_rows() {
    // 7x7 stride 2 pads 3 on 33 rows: OH = 17; three parts of 6, 6, 5 output rows.
    let x = Shape::new([1, 3, 33, 33]);
    let w = Shape::new([8, 3, 7, 7]);
    let op = Op::Conv2d(Conv2dParams {
        stride: [2, 2],
        pads: [3, 3, 3, 3],
        ..Conv2dParams::default()
    });
    let parts = partition(&op, &[&x, &w], DType::F32, Strategy::OutRows, &[1.0; 3]).unwrap();
    let rows: Vec<usize> = parts.iter().map(|p| p.input_shapes[0].dims()[2]).collect();
    let pads: Vec<[usize; 4]> = parts
        .iter()
        .map(|p| match &p.op {
            Op::Conv2d(c) => c.pads,
            _ => unreachable!(),
        })
        .collect();
    // Part 0: output rows 0..6 read padded rows 0..17 = 3 pad + 14 image rows.
    // Part 1: rows 6..12 read padded 12..29 = image 9..26. Part 2: rows 12..17 read padded
    // 24..39 = image 21..33 + 3 pad.
    assert_eq!(rows, [14, 17, 12]);
    assert_eq!(pads, [[3, 3, 0, 3], [0, 3, 0, 3], [0, 3, 3, 3]]);
    for p in &parts {
        assert!(p.output_offset()[2] + p.output_shape.dims()[2] <= 17);
    }
}

#[test]
fn split_to_fit_tiles_within_the_limit_and_stays_exact() {
    let dev = node();
    // Matmul: one node's rows part is too big; tile it and check the assembly.
    let a = Tensor::random([129, 33], DType::F32, 7).unwrap();
    let b = Tensor::random([33, 129], DType::F32, 8).unwrap();
    let op = Op::matmul();
    let shapes = [a.shape(), b.shape()];
    let whole = run_whole(&dev, &op, &[&a, &b]);
    for strategy in [
        Strategy::Rows,
        Strategy::Cols,
        Strategy::Grid { rows: 2, cols: 1 },
    ] {
        for limit in [40_000u64, 12_000, 2_000, 300] {
            let parts = partition(&op, &shapes, DType::F32, strategy, &[1.0, 3.0]).unwrap();
            let mut tiled = Vec::new();
            for p in &parts {
                let subs = split_to_fit(p, limit).unwrap();
                for s in &subs {
                    assert!(
                        s.input_bytes + s.output_bytes <= limit,
                        "{strategy} {limit}"
                    );
                    assert_eq!(s.share_index, p.share_index);
                }
                tiled.extend(subs);
            }
            assert!(
                tiled.len() > parts.len(),
                "{strategy} {limit}: nothing tiled"
            );
            for (i, p) in tiled.iter_mut().enumerate() {
                p.index = i;
            }
            let got = run_parts(&dev, &op, &[&a, &b], tiled);
            assert_bits(&format!("tiled {strategy} {limit}"), &got, &whole);
        }
    }
    // K-split partials tile along K too when needed.
    let a = Tensor::random([7, 1000], DType::F32, 9).unwrap();
    let b = Tensor::random([1000, 5], DType::F32, 10).unwrap();
    let shapes = [a.shape(), b.shape()];
    let parts = partition(&op, &shapes, DType::F32, Strategy::KSplit, &[1.0, 1.0]).unwrap();
    let mut tiled = Vec::new();
    for p in &parts {
        let subs = split_to_fit(p, 4_000).unwrap();
        assert!(subs.len() > 1);
        assert!(subs.iter().all(|s| s.input_bytes + s.output_bytes <= 4_000));
        tiled.extend(subs);
    }
    // Arrival order does not matter: partials are summed in K order.
    tiled.reverse();
    let got = run_parts(&dev, &op, &[&a, &b], tiled);
    assert_matmul_close("tiled k-split", &got, &a, &b, false, false);

    // Conv: batch, channel and row tiling with halos, grouped.
    for (ci, case) in conv_cases().iter().enumerate() {
        let op = Op::Conv2d(case.params.clone());
        let inputs = conv_inputs(case, 500 + 3 * ci as u64);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let whole = run_whole(&dev, &op, &refs);
        for strategy in [Strategy::Batch, Strategy::OutChannels, Strategy::OutRows] {
            let parts = partition(&op, &shapes, DType::F32, strategy, &[1.0, 2.0]).unwrap();
            let biggest = parts
                .iter()
                .map(|p| p.input_bytes + p.output_bytes)
                .max()
                .unwrap();
            for limit in [biggest / 2, biggest / 5] {
                let mut tiled = Vec::new();
                for p in &parts {
                    match split_to_fit(p, limit) {
                        Ok(subs) => {
                            for s in &subs {
                                assert!(s.input_bytes + s.output_bytes <= limit);
                            }
                            tiled.extend(subs);
                        }
                        Err(e) => {
                            // Only when even the smallest tile is too big; the message says so.
                            let msg = e.to_string();
                            assert!(msg.contains("smallest tile"), "{msg}");
                            tiled.clear();
                            break;
                        }
                    }
                }
                if tiled.is_empty() {
                    continue;
                }
                let what = format!("tiled conv {} {strategy} {limit}", case.name);
                assert_bits(&what, &run_parts(&dev, &op, &refs, tiled), &whole);
            }
        }
    }
}

#[test]
fn split_to_fit_errors_name_the_sizes() {
    let (a, b) = (Shape::new([64, 4096]), Shape::new([4096, 64]));
    let parts = partition(&Op::matmul(), &[&a, &b], DType::F32, Strategy::Rows, &[1.0]).unwrap();
    // One output element needs a row of A and a column of B: 2·4096·4 + 4 bytes.
    let err = split_to_fit(&parts[0], 1000).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("1000 bytes") && msg.contains("32772"), "{msg}");
    // The part fits: it comes back alone.
    let same = split_to_fit(&parts[0], u64::MAX).unwrap();
    assert_eq!(same.len(), 1);
    assert_eq!(same[0].output_shape, parts[0].output_shape);
}

#[test]
fn zero_shares_get_no_part_and_sizes_follow_shares() {
    let (a, b) = (Shape::new([100, 8]), Shape::new([8, 10]));
    let parts = partition(
        &Op::matmul(),
        &[&a, &b],
        DType::F32,
        Strategy::Rows,
        &[0.0, 1.0, 3.0, 0.0],
    )
    .unwrap();
    assert_eq!(
        parts.iter().map(|p| p.share_index).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(parts[0].output_shape.dims(), [25, 10]);
    assert_eq!(parts[1].output_shape.dims(), [75, 10]);
    // Shares rounding to nothing get nothing: 2 rows over 3 equal shares.
    let a = Shape::new([2, 8]);
    let parts = partition(
        &Op::matmul(),
        &[&a, &b],
        DType::F32,
        Strategy::Rows,
        &[1.0; 3],
    )
    .unwrap();
    assert_eq!(parts.len(), 2);
    let r = weighted_ranges(10, &[1.0, 3.0, 0.5]);
    assert_eq!(r, [0..2, 2..9, 9..10]);
}

#[test]
fn empty_dimensions_still_assemble() {
    let dev = node();
    // K = 0: the K-split falls back to one part; the product is zeros.
    let a = Tensor::random([3, 0], DType::F32, 1).unwrap();
    let b = Tensor::random([0, 4], DType::F32, 2).unwrap();
    let op = Op::matmul();
    let whole = run_whole(&dev, &op, &[&a, &b]);
    for strategy in [Strategy::KSplit, Strategy::Rows, Strategy::Cols] {
        let parts = partition(
            &op,
            &[a.shape(), b.shape()],
            DType::F32,
            strategy,
            &[1.0, 2.0],
        )
        .unwrap();
        assert_eq!(
            parts.len(),
            if strategy == Strategy::KSplit { 1 } else { 2 }
        );
        assert_bits("k = 0", &run_parts(&dev, &op, &[&a, &b], parts), &whole);
    }
}

#[test]
fn errors_are_typed_and_name_the_value() {
    let (a, b) = (Shape::new([7, 5]), Shape::new([5, 3]));
    let mm = Op::matmul();
    let shapes = [&a, &b];
    let err = partition(&mm, &shapes, DType::F32, Strategy::Rows, &[1.0, -0.5]).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    assert!(err.to_string().contains("-0.5 (entry 1)"), "{err}");
    let err = partition(&mm, &shapes, DType::F32, Strategy::Rows, &[1.0, f64::NAN]).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    let err = partition(&mm, &shapes, DType::F32, Strategy::Rows, &[0.0, 0.0]).unwrap_err();
    assert!(
        err.to_string()
            .contains("at least one share must be positive"),
        "{err}"
    );
    assert!(partition(&mm, &shapes, DType::F32, Strategy::Rows, &[]).is_err());
    let err = partition(&mm, &shapes, DType::F32, Strategy::Batch, &[1.0]).unwrap_err();
    assert!(
        err.to_string().contains("batch") && err.to_string().contains("conv2d"),
        "{err}"
    );
    let err = partition(
        &mm,
        &shapes,
        DType::F32,
        Strategy::Grid { rows: 2, cols: 2 },
        &[1.0; 3],
    )
    .unwrap_err();
    assert!(err.to_string().contains("grid 2x2"), "{err}");
    assert!(
        partition(
            &mm,
            &shapes,
            DType::F32,
            Strategy::Grid { rows: 0, cols: 2 },
            &[]
        )
        .is_err()
    );

    let x = Shape::new([1, 2, 5, 5]);
    let w = Shape::new([3, 2, 3, 3]);
    let conv = Op::Conv2d(Conv2dParams::default());
    for strategy in [Strategy::Rows, Strategy::Cols, Strategy::KSplit] {
        let err = partition(&conv, &[&x, &w], DType::F32, strategy, &[1.0]).unwrap_err();
        assert!(err.to_string().contains("matmul only"), "{err}");
    }
    let relu = Op::Unary(Unary::Relu);
    let err = partition(&relu, &[&x], DType::F32, Strategy::Rows, &[1.0]).unwrap_err();
    assert!(err.to_string().contains("relu"), "{err}");
    assert!(candidate_strategies(&relu, &[&x], 4).is_empty());
    // Bad shapes are the op's own error.
    let bad = Shape::new([4, 3]);
    assert!(matches!(
        partition(&mm, &[&a, &bad], DType::F32, Strategy::Rows, &[1.0]),
        Err(Error::Shape { .. })
    ));

    // extract with the wrong inputs, assemble with gaps, overlaps or wrong shapes.
    let ta = Tensor::random([7, 5], DType::F32, 1).unwrap();
    let tb = Tensor::random([5, 3], DType::F32, 2).unwrap();
    let parts = partition(&mm, &shapes, DType::F32, Strategy::Rows, &[1.0, 1.0]).unwrap();
    assert!(matches!(
        extract(&parts[0], &[&ta]),
        Err(Error::Arity { got: 1, .. })
    ));
    let err = extract(&parts[0], &[&tb, &ta]).unwrap_err();
    assert!(err.to_string().contains("planned for [7, 5]"), "{err}");
    let dev = node();
    let outs: Vec<(PartSpec, Tensor)> = parts
        .iter()
        .map(|p| {
            let ins = extract(p, &[&ta, &tb]).unwrap();
            let refs: Vec<&Tensor> = ins.iter().collect();
            (p.clone(), dev.execute(&p.op, &refs).unwrap().remove(0))
        })
        .collect();
    let err = assemble(&mm, &shapes, outs[..1].to_vec()).unwrap_err();
    assert!(err.to_string().contains("cover 12 of the 21"), "{err}");
    let mut over = outs.clone();
    over.push(outs[1].clone());
    let err = assemble(&mm, &shapes, over).unwrap_err();
    assert!(err.to_string().contains("cover 30 of the 21"), "{err}");
    // Equal halves: part 0 twice covers as many elements as the output has, but overlaps.
    let a8 = Shape::new([8, 5]);
    let t8 = Tensor::random([8, 5], DType::F32, 3).unwrap();
    let halves = partition(&mm, &[&a8, &b], DType::F32, Strategy::Rows, &[1.0, 1.0]).unwrap();
    let ins = extract(&halves[0], &[&t8, &tb]).unwrap();
    let out0 = dev.execute(&mm, &[&ins[0], &ins[1]]).unwrap().remove(0);
    let twice = vec![(halves[0].clone(), out0.clone()), (halves[0].clone(), out0)];
    let err = assemble(&mm, &[&a8, &b], twice).unwrap_err();
    assert!(err.to_string().contains("overlapping"), "{err}");
    let mut wrong = outs.clone();
    wrong[0].1 = Tensor::zeros([1, 1], DType::F32).unwrap();
    assert!(
        assemble(&mm, &shapes, wrong)
            .unwrap_err()
            .to_string()
            .contains("expected f32")
    );
    let other = Shape::new([7, 6]);
    let b2 = Shape::new([6, 3]);
    assert!(assemble(&mm, &[&other, &b2], outs.clone()).is_err());
    assert!(assemble(&relu, &[&x], outs).is_err());
}

#[test]
fn candidates_fit_the_op_and_part_count() {
    let mm = Op::matmul();
    let (a, b) = (Shape::new([4096, 4096]), Shape::new([4096, 4096]));
    let c = candidate_strategies(&mm, &[&a, &b], 64);
    assert_eq!(
        c,
        [
            Strategy::Rows,
            Strategy::Cols,
            Strategy::Grid { rows: 8, cols: 8 },
            Strategy::KSplit
        ]
    );
    let (tall, thin) = (Shape::new([5000, 64]), Shape::new([64, 1]));
    let c = candidate_strategies(&mm, &[&tall, &thin], 6);
    assert_eq!(c, [Strategy::Rows]);
    let (wide_a, wide_b) = (Shape::new([4, 64]), Shape::new([64, 5000]));
    let c = candidate_strategies(&mm, &[&wide_a, &wide_b], 6);
    assert_eq!(c, [Strategy::Cols, Strategy::Grid { rows: 2, cols: 3 }]);
    let (small, deep) = (Shape::new([3, 8192]), Shape::new([8192, 3]));
    assert_eq!(
        candidate_strategies(&mm, &[&small, &deep], 16),
        [Strategy::KSplit]
    );
    assert_eq!(candidate_strategies(&mm, &[&a, &b], 1), [Strategy::Rows]);
    assert!(candidate_strategies(&mm, &[&a, &b], 0).is_empty());
    assert!(candidate_strategies(&mm, &[&a, &thin], 2).is_empty());
    // Every candidate partitions.
    for parts in [2, 3, 7, 12, 64] {
        for s in candidate_strategies(&mm, &[&a, &b], parts) {
            let shares = match s {
                Strategy::Grid { rows, cols } => vec![1.0; rows * cols],
                _ => vec![1.0; parts],
            };
            let p = partition(&mm, &[&a, &b], DType::F32, s, &shares).unwrap();
            assert_eq!(p.len(), parts, "{s}");
        }
    }

    let x = Shape::new([2, 8, 17, 17]);
    let w = Shape::new([16, 2, 3, 3]);
    let grouped = Op::Conv2d(Conv2dParams {
        groups: 4,
        ..Conv2dParams::default()
    });
    assert_eq!(
        candidate_strategies(&grouped, &[&x, &w], 4),
        [Strategy::OutChannels, Strategy::OutRows]
    );
    assert_eq!(
        candidate_strategies(&grouped, &[&x, &w], 2),
        [Strategy::Batch, Strategy::OutChannels, Strategy::OutRows]
    );
    assert_eq!(
        candidate_strategies(&grouped, &[&x, &w], 8),
        [Strategy::OutRows]
    );
    assert_eq!(Strategy::Grid { rows: 2, cols: 3 }.to_string(), "grid 2x3");
    assert_eq!(Strategy::OutChannels.to_string(), "out-channels");
    assert_eq!(Strategy::KSplit.to_string(), "k-split");
}

#[test]
fn planning_a_big_matmul_is_fast() {
    let mm = Op::matmul();
    let (a, b) = (Shape::new([4096, 4096]), Shape::new([4096, 4096]));
    let shares: Vec<f64> = (0..64).map(|i| 1.0 + (i % 5) as f64).collect();
    let plan = || {
        let mut parts = 0;
        for s in candidate_strategies(&mm, &[&a, &b], 64) {
            let shares = match s {
                Strategy::Grid { rows, cols } => &shares[..rows * cols],
                _ => &shares[..],
            };
            parts += partition(&mm, &[&a, &b], DType::F16, s, shares)
                .unwrap()
                .len();
        }
        parts
    };
    assert_eq!(plan(), 4 * 64);
    let reps = 200;
    let start = std::time::Instant::now();
    for _ in 0..reps {
        std::hint::black_box(plan());
    }
    let each = start.elapsed() / reps;
    eprintln!("planning 4096³ over 64 nodes, 4 strategies: {each:?}");
    assert!(
        each < std::time::Duration::from_millis(1),
        "planning took {each:?}"
    );
}

#[test]
fn splits_stay_exact_on_a_multithreaded_node() {
    // Large enough for the gemm's and the convolution's own thread splits.
    let dev = CpuDevice::with_threads(3).unwrap();
    let a = Tensor::random([257, 300], DType::F32, 31).unwrap();
    let b = Tensor::random([300, 255], DType::F32, 32).unwrap();
    let op = Op::matmul();
    let whole = run_whole(&dev, &op, &[&a, &b]);
    for strategy in [
        Strategy::Rows,
        Strategy::Cols,
        Strategy::Grid { rows: 1, cols: 2 },
    ] {
        let parts = partition(
            &op,
            &[a.shape(), b.shape()],
            DType::F32,
            strategy,
            &[1.0, 3.0],
        )
        .unwrap();
        let got = run_parts(&dev, &op, &[&a, &b], parts);
        assert_bits(&format!("threaded matmul {strategy}"), &got, &whole);
    }
    // A 5×5 kernel: the paths whose per-output order does not depend on the tiles.
    let (op, [x, w, bias]) = threaded_conv(5);
    let inputs = [&x, &w, &bias];
    let shapes = [x.shape(), w.shape(), bias.shape()];
    let whole = run_whole(&dev, &op, &inputs);
    for strategy in [Strategy::Batch, Strategy::OutChannels, Strategy::OutRows] {
        let parts = partition(&op, &shapes, DType::F32, strategy, &[1.0, 3.0, 0.5]).unwrap();
        let got = run_parts(&dev, &op, &inputs, parts);
        assert_bits(&format!("threaded conv {strategy}"), &got, &whole);
    }
}

/// A same-size, ReLU convolution of 64 → 128 channels with a `kernel × kernel` kernel on two
/// 33×33 images, large enough for the kernels' own thread splits: the op and its input,
/// weight and bias.
fn threaded_conv(kernel: usize) -> (Op, [Tensor; 3]) {
    let pad = kernel / 2;
    let op = Op::Conv2d(Conv2dParams {
        pads: [pad; 4],
        relu: true,
        ..Conv2dParams::default()
    });
    let x = Tensor::random([2, 64, 33, 33], DType::F32, 33).unwrap();
    let w = Tensor::random([128, 64, kernel, kernel], DType::F32, 34).unwrap();
    let bias = Tensor::random([128], DType::F32, 35).unwrap();
    (op, [x, w, bias])
}

#[test]
fn winograd_convolutions_split_exactly_by_batch_and_closely_otherwise() {
    // A 3×3 stride-1 layer takes the Winograd path on AVX-512, whose rounding depends on
    // where an output sits in its 2×2 tile: a split by output rows or into parts of fewer than
    // 16 channels (another path) agrees to float rounding, a batch split bit for bit — unless
    // the batch itself chooses the variant: on cores where 512-bit multiply-adds do not pay,
    // the two 33×33 images together take F(4×4, 3×3) (162 tiles over the batch), one alone
    // F(2×2, 3×3), and then the batch split agrees to float rounding too. "Float rounding"
    // here is that of F(4×4, 3×3) against F(2×2, 3×3) where the parts take another variant
    // than the whole: up to 4.3·10⁻⁵ of |output| + its mean (within the conv tests' 2·10⁻⁵
    // of Σ|w·x| against float64); parts on the same variant agree within 10⁻⁵.
    let dev = CpuDevice::with_threads(3).unwrap();
    let (op, [x, w, bias]) = threaded_conv(3);
    let inputs = [&x, &w, &bias];
    let shapes = [x.shape(), w.shape(), bias.shape()];
    let whole = run_whole(&dev, &op, &inputs);
    let want = whole.to_f32_vec();
    let scale = want.iter().map(|v| v.abs() as f64).sum::<f64>() / want.len() as f64;
    let close = |what: String, got: &[f32]| {
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let err = (a as f64 - b as f64).abs() / (b.abs() as f64 + scale);
            assert!(err < 1e-4, "{what}: element {i} is {a}, whole gives {b}");
        }
    };
    let parts = partition(&op, &shapes, DType::F32, Strategy::Batch, &[1.0, 3.0]).unwrap();
    let got = run_parts(&dev, &op, &inputs, parts);
    if accelmesh_kernels::peak::wide_fma_pays() {
        assert_bits("threaded conv batch", &got, &whole);
    } else {
        close("conv batch".into(), &got.to_f32_vec());
    }
    for strategy in [Strategy::OutChannels, Strategy::OutRows] {
        let parts = partition(&op, &shapes, DType::F32, strategy, &[1.0, 3.0, 0.5]).unwrap();
        let got = run_parts(&dev, &op, &inputs, parts).to_f32_vec();
        close(format!("conv {strategy}"), &got);
    }
    // A 7×7 stride-2 stem of 64 channels takes Winograd over its stride phases on AVX-512
    // (3×3 tiles of outputs; parts of fewer than 16 channels take the lanes path): its batch
    // splits are bit for bit the whole's, its row and channel splits agree to float rounding.
    let op = Op::Conv2d(Conv2dParams {
        stride: [2, 2],
        pads: [3; 4],
        relu: true,
        ..Conv2dParams::default()
    });
    let x = Tensor::random([2, 3, 67, 67], DType::F32, 36).unwrap();
    let w = Tensor::random([64, 3, 7, 7], DType::F32, 37).unwrap();
    let bias = Tensor::random([64], DType::F32, 38).unwrap();
    let inputs = [&x, &w, &bias];
    let shapes = [x.shape(), w.shape(), bias.shape()];
    let whole = run_whole(&dev, &op, &inputs);
    let want = whole.to_f32_vec();
    let scale = want.iter().map(|v| v.abs() as f64).sum::<f64>() / want.len() as f64;
    let parts = partition(&op, &shapes, DType::F32, Strategy::Batch, &[1.0, 3.0]).unwrap();
    assert_bits("stem batch", &run_parts(&dev, &op, &inputs, parts), &whole);
    for strategy in [Strategy::OutChannels, Strategy::OutRows] {
        let parts = partition(&op, &shapes, DType::F32, strategy, &[1.0, 3.0, 0.5]).unwrap();
        let got = run_parts(&dev, &op, &inputs, parts).to_f32_vec();
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let err = (a as f64 - b as f64).abs() / (b.abs() as f64 + scale);
            assert!(
                err < 1e-4,
                "stem {strategy}: element {i} is {a}, whole gives {b}"
            );
        }
    }
}

#[test]
fn huge_and_tiny_shares_are_proportional() {
    let r = weighted_ranges(300, &[1e308, 1e308, 1e308]);
    assert_eq!(r, [0..100, 100..200, 200..300]);
    let r = weighted_ranges(10, &[1e308, 1.0]);
    assert_eq!(r, [0..10, 10..10]);
    let (a, b) = (Shape::new([40, 8]), Shape::new([8, 40]));
    let parts = partition(
        &Op::matmul(),
        &[&a, &b],
        DType::F32,
        Strategy::Grid { rows: 2, cols: 2 },
        &[1e308, 1e308, 1e308, 1e308],
    )
    .unwrap();
    assert!(parts.iter().all(|p| p.output_shape.dims() == [20, 20]));
}

#[test]
fn row_batch_and_channel_parts_read_in_place_and_write_one_buffer() {
    let (a, b) = (Shape::new([37, 19]), Shape::new([19, 23]));
    let a_t = Tensor::random(a.dims(), DType::F32, 41).unwrap();
    let b_t = Tensor::random(b.dims(), DType::F32, 42).unwrap();
    let shares = [1.0, 2.0, 1.5];
    let rows = partition(
        &Op::matmul(),
        &[&a, &b],
        DType::F32,
        Strategy::Rows,
        &shares,
    )
    .unwrap();
    let (shape, runs) = output_runs(&rows).expect("row blocks are contiguous");
    assert_eq!(shape, Shape::new([37, 23]));
    assert_eq!(runs.first().map(|r| r.start), Some(0));
    assert!(runs.windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(runs.last().map(|r| r.end), Some(37 * 23));
    for p in &rows {
        assert!(input_views(p, &[&a_t, &b_t]).unwrap().is_some());
    }
    // Column blocks and K-split partial sums are strided or overlap: assembled instead.
    for strategy in [Strategy::Cols, Strategy::KSplit] {
        let parts = partition(&Op::matmul(), &[&a, &b], DType::F32, strategy, &shares).unwrap();
        assert!(output_runs(&parts).is_none(), "{strategy}");
    }
    let cols = partition(
        &Op::matmul(),
        &[&a, &b],
        DType::F32,
        Strategy::Cols,
        &shares,
    )
    .unwrap();
    assert!(input_views(&cols[1], &[&a_t, &b_t]).unwrap().is_none());
    // Conv by images and by output channels: the input, weight and bias slices are blocks.
    let (x, w, bias) = (
        Shape::new([4, 3, 9, 9]),
        Shape::new([8, 3, 3, 3]),
        Shape::new([8]),
    );
    let tensors: Vec<Tensor> = [&x, &w, &bias]
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor::random(s.dims(), DType::F32, 50 + i as u64).unwrap())
        .collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let op = Op::Conv2d(Conv2dParams::default());
    for strategy in [Strategy::Batch, Strategy::OutChannels] {
        let parts = partition(&op, &[&x, &w, &bias], DType::F32, strategy, &[1.0, 1.0]).unwrap();
        for p in &parts {
            assert!(input_views(p, &refs).unwrap().is_some(), "{strategy}");
        }
    }
    // Inputs of other shapes than planned are refused by name.
    let wrong = Tensor::random([36, 19], DType::F32, 43).unwrap();
    let err = input_views(&rows[0], &[&wrong, &b_t]).unwrap_err();
    assert!(err.to_string().contains("input 0"), "{err}");
}
