//! sgemm GFLOP/s for one shape: `cargo run --release --example shape_rate -- M N K`.

use std::time::Instant;

use accelmesh_kernels::gemm::{MatMut, MatRef, sgemm};

fn main() {
    let dims: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let [m, n, k] = dims[..] else {
        eprintln!("usage: shape_rate M N K");
        std::process::exit(2);
    };
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let mut c = vec![0.0f32; m * n];
    let mut times = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        let (av, bv) = (
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
        );
        sgemm(1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n).unwrap()).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[15];
    println!(
        "{m}x{n}x{k}: {:.3} ms, {:.1} GFLOP/s",
        median * 1e3,
        2.0 * (m * n * k) as f64 / median / 1e9
    );
}
