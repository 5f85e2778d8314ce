//! conv2d on the ResNet preset layers: `cargo bench --bench conv2d`.
//!
//! Layers are N-C-H-K-R-stride-pad (H = W, square R×R kernel), with bias and f32 data; the
//! side-by-side comparison with onnxruntime lives in `benches/compare.sh`.
//!
//! `conv2d_chain` runs one layer (64 → 64 3×3 on 27×27, weights pinned as a session pins
//! them) 21 times per iteration, each step reading either the same input or the output of
//! the step before (three buffers in turn), as a model's steps do: the difference is what a
//! layer pays inside a model for the data its previous step left in the caches.

use std::hint::black_box;

use accelmesh_kernels::Isa;
use accelmesh_kernels::conv::{Conv2dParams, WeightPin, conv2d, conv2d_output_dims};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

mod common;
use common::filled;

const RESNET: [[usize; 7]; 6] = [
    [1, 64, 56, 64, 3, 1, 1],
    [1, 128, 28, 128, 3, 1, 1],
    [1, 256, 14, 256, 3, 1, 1],
    [8, 64, 56, 64, 3, 1, 1],
    [1, 3, 224, 64, 7, 2, 3],
    [1, 256, 56, 64, 1, 1, 0],
];

fn bench_conv2d(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(20);
    let isa = Isa::selected();
    for [n, ch, h, k, r, stride, pad] in RESNET {
        let params = Conv2dParams {
            stride: [stride; 2],
            pads: [pad; 4],
            ..Conv2dParams::default()
        };
        let input_dims = [n, ch, h, h];
        let weight_dims = [k, ch, r, r];
        let out_dims = conv2d_output_dims(input_dims, weight_dims, &params).unwrap();
        let input = filled(input_dims.iter().product(), 1);
        let weight = filled(weight_dims.iter().product(), 2);
        let bias = filled(k, 3);
        let mut output = vec![0.0f32; out_dims.iter().product()];
        let macs = out_dims.iter().product::<usize>() * ch * r * r;
        group.throughput(Throughput::Elements(2 * macs as u64));
        let name = format!("{n}-{ch}-{h}-{k}-{r}-{stride}-{pad}");
        group.bench_function(BenchmarkId::new("accelmesh", name), |bench| {
            bench.iter(|| {
                conv2d(
                    isa,
                    black_box(&input),
                    input_dims,
                    black_box(&weight),
                    weight_dims,
                    Some(&bias),
                    &params,
                    &mut output,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

/// Steps per iteration of the chain benchmark.
const CHAIN_STEPS: usize = 21;

fn bench_conv2d_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_chain");
    group.sample_size(20);
    let isa = Isa::selected();
    let (ch, h) = (64, 27);
    let params = Conv2dParams {
        pads: [1; 4],
        ..Conv2dParams::default()
    };
    let dims = [1, ch, h, h];
    let weight_dims = [ch, ch, 3, 3];
    let weight: Vec<f32> = filled(weight_dims.iter().product(), 2)
        .iter()
        .map(|w| w * 0.1)
        .collect();
    let _pin = WeightPin::new(&weight);
    let bias = filled(ch, 3);
    let len: usize = dims.iter().product();
    let mut buffers: Vec<Vec<f32>> = (0..3).map(|seed| filled(len, 10 + seed)).collect();
    group.throughput(Throughput::Elements(
        (2 * len * ch * 9 * CHAIN_STEPS) as u64,
    ));
    for chained in [false, true] {
        let name = if chained { "chained" } else { "same_input" };
        group.bench_function(BenchmarkId::new("accelmesh", name), |bench| {
            bench.iter(|| {
                for step in 0..CHAIN_STEPS {
                    let (from, to) = if chained {
                        (step % 3, (step + 1) % 3)
                    } else {
                        (0, 1 + step % 2)
                    };
                    let (input, output) = two_of(&mut buffers, from, to);
                    conv2d(
                        isa,
                        black_box(input),
                        dims,
                        &weight,
                        weight_dims,
                        Some(&bias),
                        &params,
                        output,
                    )
                    .unwrap();
                }
            })
        });
    }
    group.finish();
}

/// Buffer `from` to read and buffer `to` (another one) to write.
fn two_of(buffers: &mut [Vec<f32>], from: usize, to: usize) -> (&[f32], &mut [f32]) {
    assert_ne!(from, to);
    if from < to {
        let (low, high) = buffers.split_at_mut(to);
        (&low[from], &mut high[0])
    } else {
        let (low, high) = buffers.split_at_mut(from);
        (&high[0], &mut low[to])
    }
}

criterion_group!(benches, bench_conv2d, bench_conv2d_chain);
criterion_main!(benches);
