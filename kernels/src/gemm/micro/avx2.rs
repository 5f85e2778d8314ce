//! AVX2 + FMA microkernel: a 6 × 16 tile in twelve ymm accumulators.
//!
//! Edge tiles run narrower variants (2 or 4 rows, one vector of columns), so small problems do
//! not pay for empty lanes. B is read packed, or in place (row-major, any row stride) with
//! masked loads that never touch the columns past the tile; with B in place, A may be read in
//! place too (any strides, its live rows only). Rows of C are written with vector stores,
//! masked for a partial tile.

use std::arch::x86_64::*;

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 6;
const NR: usize = 16;
const LANES: usize = 8;

/// The AVX2 kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    direct_b: true,
    direct_a: true,
    packs_b: false,
    run: entry,
};

unsafe fn entry(args: &TileArgs) {
    let rows = match args.mr_eff {
        0..=2 => 2,
        3..=4 => 4,
        _ => 6,
    };
    let vectors = if args.nr_eff <= LANES { 1 } else { 2 };
    // SAFETY: the driver only selects this kernel when AVX2 and FMA are detected; the variant
    // covers at least the live rows and columns of the tile.
    unsafe {
        match (rows, vectors) {
            (2, 1) => kernel::<2, 1>(args),
            (2, _) => kernel::<2, 2>(args),
            (4, 1) => kernel::<4, 1>(args),
            (4, _) => kernel::<4, 2>(args),
            (_, 1) => kernel::<6, 1>(args),
            _ => kernel::<6, 2>(args),
        }
    }
}

/// One depth step: `R` broadcasts of A against `V` vectors of B.
#[inline(always)]
unsafe fn step<const R: usize, const V: usize>(
    acc: &mut [[__m256; V]; R],
    a: *const f32,
    b: [__m256; V],
) {
    for (i, row) in acc.iter_mut().enumerate() {
        // SAFETY: the caller passes a pointer to one full step (MR values) of packed A; the
        // enclosing kernel has AVX2 and FMA enabled.
        unsafe {
            let ai = _mm256_broadcast_ss(&*a.add(i));
            for v in 0..V {
                row[v] = _mm256_fmadd_ps(ai, b[v], row[v]);
            }
        }
    }
}

/// A lane mask with the low `lanes` (at most 8) lanes set, for masked loads and stores.
#[inline(always)]
unsafe fn lane_mask(lanes: usize) -> __m256i {
    // SAFETY: plain register arithmetic; the enclosing kernel has AVX2 enabled.
    unsafe {
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes.min(LANES) as i32), index)
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize, const V: usize>(args: &TileArgs) {
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    let (mut a, mut b) = (args.a, args.b);
    let cols = args.nr_eff.min(NR);
    // SAFETY: register arithmetic only.
    let masks = unsafe { [lane_mask(cols), lane_mask(cols.saturating_sub(LANES))] };
    if args.b_packed && args.a_packed {
        for _ in 0..args.kc {
            // SAFETY: each step reads V·8 <= NR floats of a packed B step and MR of A, inside
            // the packed panels.
            unsafe {
                let bv = std::array::from_fn(|v| _mm256_loadu_ps(b.add(LANES * v)));
                step::<R, V>(&mut acc, a, bv);
                a = a.add(MR);
                b = b.add(NR);
            }
        }
    } else {
        // B in place (each step a row of B; masked loads never touch columns past nr_eff), A
        // packed or in place: row i of A at offset i·a_rs, each step a_ks further (1 and MR
        // when packed). Rows past mr_eff repeat the last live row; their results are never
        // stored.
        let offsets: [usize; R] = std::array::from_fn(|i| i.min(args.mr_eff - 1) * args.a_rs);
        let full = cols == NR;
        for _ in 0..args.kc {
            // SAFETY: the offsets stay on live rows of A, which the caller guarantees readable
            // for kc steps of a_ks (a packed panel holds them all); the loads read only the
            // nr_eff columns of one step of B, which the caller guarantees readable (unmasked
            // only when all NR columns exist).
            unsafe {
                let bv: [__m256; V] = std::array::from_fn(|v| {
                    if full {
                        _mm256_loadu_ps(b.add(LANES * v))
                    } else {
                        _mm256_maskload_ps(b.add(LANES * v), masks[v])
                    }
                });
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*a.add(offsets[i]));
                    for v in 0..V {
                        row[v] = _mm256_fmadd_ps(ai, bv[v], row[v]);
                    }
                }
                // Wrapping: after the last step these point past A and B and are never used.
                a = a.wrapping_add(args.a_ks);
                b = b.wrapping_add(args.b_stride);
            }
        }
    }
    let alpha = _mm256_set1_ps(args.alpha);
    if args.cs_c == 1 {
        // Rows are contiguous: vector stores, masked for a partial tile's columns.
        let beta = _mm256_set1_ps(args.beta);
        let live = [cols.min(LANES), cols.saturating_sub(LANES)];
        let zero = _mm256_setzero_ps();
        for (i, row) in acc.iter().enumerate().take(args.mr_eff) {
            // SAFETY: i < mr_eff rows of the bias.
            let bias = _mm256_set1_ps(unsafe { args.bias(i) });
            for (v, sum) in row.iter().enumerate() {
                if live[v] == 0 {
                    continue;
                }
                // SAFETY: row i < mr_eff of the tile, which the caller owns; a partial vector
                // is masked to the nr_eff columns (masked-off lanes are neither read nor
                // written).
                unsafe {
                    let c = args.c.add(i * args.rs_c + LANES * v);
                    let mut out = _mm256_mul_ps(alpha, *sum);
                    if args.beta != 0.0 {
                        let old = if live[v] == LANES {
                            _mm256_loadu_ps(c)
                        } else {
                            _mm256_maskload_ps(c, masks[v])
                        };
                        out = _mm256_fmadd_ps(beta, old, out);
                    }
                    out = _mm256_add_ps(out, bias);
                    if args.relu {
                        // max(0, x) returns its second operand for NaN and for -0.0.
                        out = _mm256_max_ps(zero, out);
                    }
                    if live[v] == LANES {
                        _mm256_storeu_ps(c, out);
                    } else {
                        _mm256_maskstore_ps(c, masks[v], out);
                    }
                }
            }
        }
    } else {
        let mut tile = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                // SAFETY: `tile` has room for MR rows of NR floats.
                unsafe { _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + LANES * v), *sum) };
            }
        }
        // SAFETY: the caller owns the C tile.
        unsafe { store_tile_scalar(&tile, NR, args) };
    }
}
