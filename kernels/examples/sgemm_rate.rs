//! Prints sgemm GFLOP/s for square sizes: `cargo run --release --example sgemm_rate -- 256 512 1024`.

use std::time::Instant;

use accelmesh_kernels::Isa;
use accelmesh_kernels::gemm::{Epilogue, MatMut, MatRef, gemm};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![256, 512, 1024, 2048]
    } else {
        sizes
    };
    let isa = Isa::selected();
    for n in sizes {
        let a: Vec<f32> = (0..n * n)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..n * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let mut c = vec![0.0f32; n * n];
        let reps = (2e10 / (2.0 * (n as f64).powi(3))).clamp(3.0, 200.0) as usize;
        let mut times = Vec::new();
        for _ in 0..reps + 1 {
            let t = Instant::now();
            gemm(
                isa,
                1.0,
                MatRef::row_major(&a, n, n).unwrap(),
                MatRef::row_major(&b, n, n).unwrap(),
                0.0,
                MatMut::row_major(&mut c, n, n).unwrap(),
                &Epilogue::NONE,
            )
            .unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0);
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let median = times[times.len() / 2];
        println!(
            "{isa} threads={} n={n}: {:.3} ms, {:.1} GFLOP/s",
            rayon::current_num_threads(),
            median * 1e3,
            2.0 * (n as f64).powi(3) / median / 1e9
        );
    }
}
