//! Prints sgemm GFLOP/s on the current rayon pool for square sizes or `MxNxK` shapes:
//! `cargo run --release -p accelmesh-kernels --example sgemm_rate -- 512 1024 64x3136x576`
//! (`RAYON_NUM_THREADS=1` for one thread).

use std::time::Instant;

use accelmesh_kernels::gemm::{MatMut, MatRef, sgemm};

/// `n` or `MxNxK` as (m, n, k).
fn parse_shape(arg: &str) -> Option<(usize, usize, usize)> {
    let dims: Vec<usize> = arg
        .split('x')
        .map(|d| d.parse().ok())
        .collect::<Option<_>>()?;
    match dims[..] {
        [n] => Some((n, n, n)),
        [m, n, k] => Some((m, n, k)),
        _ => None,
    }
}

fn main() {
    let mut shapes = Vec::new();
    for arg in std::env::args().skip(1) {
        match parse_shape(&arg) {
            Some(shape) => shapes.push(shape),
            None => {
                eprintln!("error: `{arg}` is neither a size nor MxNxK");
                std::process::exit(2);
            }
        }
    }
    if shapes.is_empty() {
        shapes = [256, 512, 1024, 2048].map(|n| (n, n, n)).to_vec();
    }
    for (m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = (2e10 / flops).clamp(5.0, 200.0) as usize;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps + 2 {
            let start = Instant::now();
            let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let cv = MatMut::row_major(&mut c, m, n);
            sgemm(1.0, av.unwrap(), bv.unwrap(), 0.0, cv.unwrap()).unwrap();
            times.push(start.elapsed().as_secs_f64());
        }
        times.drain(..2);
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{m}x{n}x{k}, {} threads: {:.3} ms, {:.1} GFLOP/s",
            rayon::current_num_threads(),
            median * 1e3,
            flops / median / 1e9
        );
    }
}
