//! Helpers the kernel test files share.

// Each test file uses the helpers it needs; the others would warn as unused there.
#![allow(dead_code)]

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A rayon pool of `threads` threads, for running kernels on a chosen share of the cores.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// `len` seeded uniform values in `lo..hi`.
pub fn random_vec(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}
