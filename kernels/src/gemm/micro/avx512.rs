//! AVX-512F microkernel: a 12 × 32 tile in twenty-four zmm accumulators.
//!
//! Per depth step it loads two vectors of B and broadcasts twelve values of A, for 24 FMAs:
//! enough independent chains to keep both FMA ports busy.

use std::arch::x86_64::*;

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 12;
const NR: usize = 32;

/// The AVX-512 kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    run: entry,
};

unsafe fn entry(args: &TileArgs) {
    // SAFETY: the driver only selects this kernel when AVX-512F is detected.
    unsafe { kernel(args) }
}

/// One depth step of the tile.
#[inline(always)]
unsafe fn step(acc: &mut [[__m512; 2]; MR], a: *const f32, b: *const f32) {
    // SAFETY: the caller passes pointers to one full step of each packed panel.
    unsafe {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*a.add(i));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn kernel(args: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (args.a, args.b);
    let mut left = args.kc;
    // SAFETY (whole loop): every step stays inside the kc·MR and kc·NR packed panels.
    unsafe {
        while left >= 4 {
            _mm_prefetch::<_MM_HINT_T0>(b.add(8 * NR) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.add(8 * NR + 16) as *const i8);
            step(&mut acc, a, b);
            step(&mut acc, a.add(MR), b.add(NR));
            _mm_prefetch::<_MM_HINT_T0>(b.add(10 * NR) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.add(10 * NR + 16) as *const i8);
            step(&mut acc, a.add(2 * MR), b.add(2 * NR));
            step(&mut acc, a.add(3 * MR), b.add(3 * NR));
            a = a.add(4 * MR);
            b = b.add(4 * NR);
            left -= 4;
        }
        while left > 0 {
            step(&mut acc, a, b);
            a = a.add(MR);
            b = b.add(NR);
            left -= 1;
        }
    }
    let alpha = _mm512_set1_ps(args.alpha);
    if args.cs_c == 1 {
        // Rows are contiguous: masked vector stores cover a partial tile's columns too.
        let cols = args.nr_eff.min(NR);
        let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(16))];
        let beta = _mm512_set1_ps(args.beta);
        for (i, row) in acc.iter().enumerate().take(args.mr_eff) {
            for (v, sum) in row.iter().enumerate() {
                if masks[v] == 0 {
                    continue;
                }
                // SAFETY: the mask limits the access to the nr_eff columns of row i, which the
                // caller owns; masked-off lanes are neither read nor written.
                unsafe {
                    let c = args.c.add(i * args.rs_c + 16 * v);
                    let mut out = _mm512_mul_ps(alpha, *sum);
                    if args.beta != 0.0 {
                        let old = _mm512_maskz_loadu_ps(masks[v], c);
                        out = _mm512_fmadd_ps(beta, old, out);
                    }
                    _mm512_mask_storeu_ps(c, masks[v], out);
                }
            }
        }
    } else {
        let mut tile = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: `tile` has room for MR rows of NR floats.
            unsafe {
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), row[0]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), row[1]);
            }
        }
        // SAFETY: the caller owns the C tile.
        unsafe { store_tile_scalar(&tile, NR, args) };
    }
}

/// A mask with the low `lanes` (at most 16) bits set.
#[inline(always)]
fn lane_mask(lanes: usize) -> __mmask16 {
    if lanes >= 16 {
        0xFFFF
    } else {
        ((1u32 << lanes) - 1) as __mmask16
    }
}
