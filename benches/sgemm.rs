//! sgemm: accelmesh vs the `gemm` crate vs `matrixmultiply`, same sizes, same run.
//!
//! `cargo bench --bench sgemm`. All three use every core of the machine (accelmesh and `gemm`
//! through rayon's global pool, `matrixmultiply` through its own threads).

use std::hint::black_box;

use accelmesh_kernels::gemm::{MatMut, MatRef, sgemm};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

mod common;
use common::filled;

const SIZES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

fn bench_sgemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("sgemm");
    for n in SIZES {
        let a = filled(n * n, 1);
        let b = filled(n * n, 2);
        let mut out = vec![0.0f32; n * n];
        group.throughput(Throughput::Elements((2 * n * n * n) as u64));
        if n >= 512 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("accelmesh", n), &n, |bench, &n| {
            bench.iter(|| {
                sgemm(
                    1.0,
                    MatRef::row_major(black_box(&a), n, n).unwrap(),
                    MatRef::row_major(black_box(&b), n, n).unwrap(),
                    0.0,
                    MatMut::row_major(&mut out, n, n).unwrap(),
                )
                .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("gemm-crate", n), &n, |bench, &n| {
            bench.iter(|| {
                // SAFETY: all three buffers hold n·n floats, row-major with row stride n.
                unsafe {
                    gemm::gemm(
                        n,
                        n,
                        n,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        black_box(&a).as_ptr(),
                        1,
                        n as isize,
                        black_box(&b).as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(0),
                    )
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("matrixmultiply", n), &n, |bench, &n| {
            bench.iter(|| {
                // SAFETY: all three buffers hold n·n floats, row-major with row stride n.
                unsafe {
                    matrixmultiply::sgemm(
                        n,
                        n,
                        n,
                        1.0,
                        black_box(&a).as_ptr(),
                        n as isize,
                        1,
                        black_box(&b).as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sgemm);
criterion_main!(benches);
