//! AVX-512F microkernel: a 12 × 32 tile in twenty-four zmm accumulators.
//!
//! Per depth step it loads two vectors of B and broadcasts twelve values of A, for 24 FMAs:
//! enough independent chains to keep both FMA ports busy. Edge tiles run a narrower variant
//! (4 or 8 rows, one vector of columns) so small problems do not pay for empty lanes.

use std::arch::x86_64::*;

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 12;
const NR: usize = 32;
const LANES: usize = 16;
/// Rows ahead that the unpacked-B loop asks for: measured on the Winograd path's gemms (rows
/// 7 KiB apart), 1.02–1.08× faster 3×3 layers than without.
const PREFETCH_ROWS: usize = 6;

/// The AVX-512 kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    direct_b: true,
    direct_a: false,
    run: entry,
};

unsafe fn entry(args: &TileArgs) {
    let rows = match args.mr_eff {
        0..=4 => 4,
        5..=8 => 8,
        _ => 12,
    };
    let vectors = if args.nr_eff <= LANES { 1 } else { 2 };
    // SAFETY: the driver only selects this kernel when AVX-512F is detected; the variant
    // covers at least the live rows and columns of the tile.
    unsafe {
        match (rows, vectors) {
            (4, 1) => kernel::<4, 1>(args),
            (4, _) => kernel::<4, 2>(args),
            (8, 1) => kernel::<8, 1>(args),
            (8, _) => kernel::<8, 2>(args),
            (_, 1) => kernel::<12, 1>(args),
            _ => kernel::<12, 2>(args),
        }
    }
}

/// One depth step: `R` broadcasts of A against `V` vectors of B.
#[inline(always)]
unsafe fn step<const R: usize, const V: usize>(
    acc: &mut [[__m512; V]; R],
    a: *const f32,
    b: [__m512; V],
) {
    for (i, row) in acc.iter_mut().enumerate() {
        // SAFETY: the caller passes a pointer to one full step (MR values) of packed A; the
        // enclosing kernel has AVX-512F enabled.
        unsafe {
            let ai = _mm512_set1_ps(*a.add(i));
            for v in 0..V {
                row[v] = _mm512_fmadd_ps(ai, b[v], row[v]);
            }
        }
    }
}

/// Loads `V` vectors of one packed B step.
#[inline(always)]
unsafe fn load_packed<const V: usize>(b: *const f32) -> [__m512; V] {
    // SAFETY: a packed step holds NR >= V·16 floats; AVX-512F is enabled by the caller.
    std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(LANES * v)) })
}

#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize>(args: &TileArgs) {
    debug_assert!(
        args.a_packed && args.a_rs == 1 && args.a_ks == MR,
        "this kernel reads packed A only"
    );
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let (mut a, mut b) = (args.a, args.b);
    // Ask for the C tile now, so its lines arrive while the depth loop runs (prefetches are
    // hints: they never fault, whatever the address).
    let row_span = (args.nr_eff.max(1) - 1) * args.cs_c;
    for i in 0..args.mr_eff.min(R) {
        let row = args.c.wrapping_add(i * args.rs_c);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(row_span) as *const i8);
    }
    let cols = args.nr_eff.min(NR);
    let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(LANES))];
    if !args.b_packed {
        // Unpacked B: each step is a row of B; masked loads never touch columns past nr_eff.
        let ahead = PREFETCH_ROWS * args.b_stride;
        let mut ahead_a = args.ahead.walk(args.kc);
        for _ in 0..args.kc {
            ahead_a.step();
            // SAFETY: A stays inside its packed panel; the masked loads read only the nr_eff
            // columns of one row of B, which the caller guarantees readable.
            unsafe {
                // Rows of B in place may lie far apart (the Winograd path's are 16 blocks
                // apart): ask for them ahead, past the strides the prefetchers follow. A
                // prefetch is a hint and never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead + LANES) as *const i8);
                let bv = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], b.add(LANES * v)));
                step::<R, V>(&mut acc, a, bv);
                a = a.add(MR);
                // Wrapping: after the last row this points past B and is never used.
                b = b.wrapping_add(args.b_stride);
            }
        }
    } else {
        let mut left = args.kc;
        // SAFETY (whole loop): every step stays inside the kc·MR and kc·NR packed panels;
        // prefetches of addresses past the panel are hints and never fault.
        unsafe {
            let mut ahead = args.ahead.walk(args.kc);
            while left >= 4 {
                for _ in 0..4 {
                    ahead.step();
                }
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * NR + LANES) as *const i8);
                step::<R, V>(&mut acc, a, load_packed::<V>(b));
                step::<R, V>(&mut acc, a.add(MR), load_packed::<V>(b.add(NR)));
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(10 * NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(10 * NR + LANES) as *const i8);
                step::<R, V>(&mut acc, a.add(2 * MR), load_packed::<V>(b.add(2 * NR)));
                step::<R, V>(&mut acc, a.add(3 * MR), load_packed::<V>(b.add(3 * NR)));
                a = a.add(4 * MR);
                b = b.add(4 * NR);
                left -= 4;
            }
            while left > 0 {
                ahead.step();
                step::<R, V>(&mut acc, a, load_packed::<V>(b));
                a = a.add(MR);
                b = b.add(NR);
                left -= 1;
            }
        }
    }
    // SAFETY: as for this function.
    unsafe { store::<R, V>(acc, args, masks) };
}

/// Writes the finished accumulators `acc` (times alpha, plus beta times the old C, then the
/// row bias and the ReLU) into the C tile. A function of its own, taking the accumulators by
/// value: the depth loop then keeps them in registers (with the finishing code inlined into
/// the loop's function, LLVM kept them in memory too, storing each after every FMA).
///
/// # Safety
/// As [`MicroKernel::run`](super::MicroKernel); `masks` cover the tile's `nr_eff` columns.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize, const V: usize>(
    acc: [[__m512; V]; R],
    args: &TileArgs,
    masks: [__mmask16; 2],
) {
    let alpha = _mm512_set1_ps(args.alpha);
    if args.cs_c == 1 {
        // Rows are contiguous: masked vector stores cover a partial tile's columns too.
        let beta = _mm512_set1_ps(args.beta);
        let zero = _mm512_setzero_ps();
        for (i, row) in acc.iter().enumerate().take(args.mr_eff) {
            // SAFETY: i < mr_eff rows of the bias.
            let bias = _mm512_set1_ps(unsafe { args.bias(i) });
            for (v, sum) in row.iter().enumerate() {
                if masks[v] == 0 {
                    continue;
                }
                // SAFETY: the mask limits the access to the nr_eff columns of row i, which the
                // caller owns; masked-off lanes are neither read nor written.
                unsafe {
                    let c = args.c.add(i * args.rs_c + LANES * v);
                    let mut out = _mm512_mul_ps(alpha, *sum);
                    if args.beta != 0.0 {
                        let old = _mm512_maskz_loadu_ps(masks[v], c);
                        out = _mm512_fmadd_ps(beta, old, out);
                    }
                    out = _mm512_add_ps(out, bias);
                    if args.relu {
                        // max(0, x) returns its second operand for NaN and for -0.0.
                        out = _mm512_max_ps(zero, out);
                    }
                    _mm512_mask_storeu_ps(c, masks[v], out);
                }
            }
        }
    } else {
        let mut tile = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                // SAFETY: `tile` has room for MR rows of NR floats.
                unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + LANES * v), *sum) };
            }
        }
        // SAFETY: the caller owns the C tile.
        unsafe { store_tile_scalar(&tile, NR, args) };
    }
}

/// A mask with the low `lanes` (at most 16) bits set.
#[inline(always)]
pub(crate) fn lane_mask(lanes: usize) -> __mmask16 {
    if lanes >= LANES {
        0xFFFF
    } else {
        ((1u32 << lanes) - 1) as __mmask16
    }
}
