//! conv2d on the ResNet preset layers: `cargo bench --bench conv2d`.
//!
//! Layers are N-C-H-K-R-stride-pad (H = W, square R×R kernel), with bias and f32 data; the
//! side-by-side comparison with onnxruntime lives in `benches/compare.sh`.

use std::hint::black_box;

use accelmesh_kernels::Isa;
use accelmesh_kernels::conv::{Conv2dParams, conv2d, conv2d_output_dims};
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

criterion_group!(benches, bench_conv2d);
criterion_main!(benches);
