//! What the criterion benches share.

/// `len` seeded, non-zero values in [-0.5, 0.5): a small linear-congruential fill is enough
/// for timing (the tests check correctness on proper random data).
pub fn filled(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}
