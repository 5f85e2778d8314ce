//! The register tiles of the flat path: 6 output channels × 16 grid columns in twelve ymm
//! accumulators (or × 8 columns in six, for a task's last strip), B read in place through a
//! table of row offsets.

use std::arch::x86_64::*;

/// Rows of the tile (the AVX2 gemm's, so that its packed weight panels serve here).
pub(super) const MR: usize = 6;
/// Columns of the full tile: two ymm vectors.
pub(super) const NR: usize = 16;
/// Columns of the narrow tile: one ymm vector.
pub(super) const NR_NARROW: usize = 8;

/// A register tile's signature: see [`tile`].
pub(super) type TileFn =
    unsafe fn(usize, *const f32, *const f32, *const usize, *mut f32, usize, bool);

/// The tile for a strip with `columns` grid columns left: the full one, or the narrow one
/// when at most [`NR_NARROW`] remain.
pub(super) fn tile_for(columns: usize) -> TileFn {
    if columns <= NR_NARROW {
        tile::<1>
    } else {
        tile::<2>
    }
}

/// `c[0..MR][0..8·V] (+)= a · B`, where depth row `k` of B is the `8·V` floats at
/// `b + offsets[k]`, and `a` is a packed panel (`MR` values per depth index).
///
/// # Safety
/// AVX2 and FMA must be available; `a` must hold `MR·kc` floats and `offsets` `kc` entries;
/// `b + offsets[k] .. + 8·V` must be readable for every `k < kc`; `c` must be writable for
/// `MR` rows of `8·V` floats `ldc` apart (and readable with `accumulate`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile<const V: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); V]; MR];
    for k in 0..kc {
        // SAFETY: k < kc: the offset, the B row it points to and the panel step are in bounds
        // by the caller's contract.
        unsafe {
            let row = b.add(*offsets.add(k));
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, value) in bv.iter_mut().enumerate() {
                *value = _mm256_loadu_ps(row.add(8 * v));
            }
            let step = a.add(MR * k);
            for (i, sum) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*step.add(i));
                for (s, &bv) in sum.iter_mut().zip(&bv) {
                    *s = _mm256_fmadd_ps(ai, bv, *s);
                }
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
