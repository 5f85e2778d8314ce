//! AVX2 + FMA microkernel: a 6 × 16 tile in twelve ymm accumulators.

use std::arch::x86_64::*;

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 6;
const NR: usize = 16;

/// The AVX2 kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    direct_b: false,
    run: entry,
};

unsafe fn entry(args: &TileArgs) {
    // SAFETY: the driver only selects this kernel when AVX2 and FMA are detected.
    unsafe { kernel(args) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(args: &TileArgs) {
    debug_assert!(
        args.b_packed && args.b_stride == NR,
        "this kernel reads packed B only"
    );
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (args.a, args.b);
    if args.nr_eff <= NR / 2 {
        // At most 8 columns exist (an edge tile, such as 49 = 3·16 + 1 at 7×7): the second
        // vector would only multiply padding, so half the work is skipped.
        for _ in 0..args.kc {
            // SAFETY: as below, reading the first half of each B step only.
            unsafe {
                let b0 = _mm256_loadu_ps(b);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*a.add(i));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                }
                a = a.add(MR);
                b = b.add(NR);
            }
        }
    }
    for _ in 0..if args.nr_eff <= NR / 2 { 0 } else { args.kc } {
        // SAFETY: each step reads NR floats of B and MR of A, inside the packed panels.
        unsafe {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let alpha = _mm256_set1_ps(args.alpha);
    if args.mr_eff == MR && args.nr_eff == NR && args.cs_c == 1 {
        let beta = _mm256_set1_ps(args.beta);
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: the full tile is inside C and owned by this call; rows are contiguous.
            unsafe {
                let c = args.c.add(i * args.rs_c);
                for (v, sum) in row.iter().enumerate() {
                    let mut out = _mm256_mul_ps(alpha, *sum);
                    if args.beta != 0.0 {
                        out = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c.add(8 * v)), out);
                    }
                    _mm256_storeu_ps(c.add(8 * v), out);
                }
            }
        }
    } else {
        let mut tile = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: `tile` has room for MR rows of NR floats.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), row[1]);
            }
        }
        // SAFETY: the caller owns the C tile.
        unsafe { store_tile_scalar(&tile, NR, args) };
    }
}
