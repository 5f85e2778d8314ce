//! The register tile of the flat path: 6 output channels × 16 grid columns in twelve ymm
//! accumulators, B read in place through a table of row offsets.

use std::arch::x86_64::*;

/// Rows of the tile (the AVX2 gemm's, so that its packed weight panels serve here).
pub(super) const MR: usize = 6;
/// Columns of the tile: two ymm vectors.
pub(super) const NR: usize = 16;

/// `c[0..MR][0..NR] (+)= a · B`, where depth row `k` of B is the 16 floats at
/// `b + offsets[k]`, and `a` is a packed panel (`MR` values per depth index).
///
/// # Safety
/// AVX2 and FMA must be available; `a` must hold `MR·kc` floats and `offsets` `kc` entries;
/// `b + offsets[k] .. + NR` must be readable for every `k < kc`; `c` must be writable for
/// `MR` rows of `NR` floats `ldc` apart (and readable with `accumulate`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(
    kc: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for k in 0..kc {
        // SAFETY: k < kc: the offset, the B row it points to and the panel step are in bounds
        // by the caller's contract.
        unsafe {
            let row = b.add(*offsets.add(k));
            let b0 = _mm256_loadu_ps(row);
            let b1 = _mm256_loadu_ps(row.add(8));
            let step = a.add(MR * k);
            for (i, sum) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*step.add(i));
                sum[0] = _mm256_fmadd_ps(ai, b0, sum[0]);
                sum[1] = _mm256_fmadd_ps(ai, b1, sum[1]);
            }
        }
    }
    for (i, sum) in acc.iter().enumerate() {
        // SAFETY: row i of the tile is inside C by the caller's contract.
        unsafe {
            let row = c.add(i * ldc);
            for (v, &value) in sum.iter().enumerate() {
                let value = if accumulate {
                    _mm256_add_ps(_mm256_loadu_ps(row.add(8 * v)), value)
                } else {
                    value
                };
                _mm256_storeu_ps(row.add(8 * v), value);
            }
        }
    }
}
