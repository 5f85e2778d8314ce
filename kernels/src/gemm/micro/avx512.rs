//! AVX-512F microkernel: a 12 × 32 tile in twenty-four zmm accumulators.
//!
//! Per depth step it loads two vectors of B and broadcasts twelve values of A, for 24 FMAs:
//! enough independent chains to keep both FMA ports busy. Edge tiles run a narrower variant
//! (4 or 8 rows, one vector of columns) so small problems do not pay for empty lanes, and a
//! packed panel whose last vector would hold 1–4 live columns runs those as tail columns: the
//! rows in the lanes of one vector, one multiply-add per column and depth step instead of one
//! per row (a 7×7 plane's 49 columns take 37 multiply-adds per depth step of twelve rows
//! instead of 48: 2048 → 512 channels on 7×7 ran 0.79× the time). Every output is summed in
//! the same order either way, so a product's columns come out bit for bit the same whatever
//! its width or split.

use std::arch::x86_64::*;

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 12;
const NR: usize = 32;
const LANES: usize = 16;
/// Rows ahead that the unpacked-B loop asks for: measured on the Winograd path's gemms (rows
/// 7 KiB apart), 1.02–1.08× faster 3×3 layers than without.
const PREFETCH_ROWS: usize = 6;

/// Rows ahead that the unpacked-B loop asks into L2 when it packs B as it goes (the first
/// row panel of a block, B a whole image far from cache): without it, one thread running 4 ×
/// 256 → 64 channels on 56×56 took 1.09–1.24× the time of packing first; with it 0.97–1.02×.
const PACK_PREFETCH_ROWS: usize = 64;

/// The AVX-512 kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    direct_b: true,
    direct_a: false,
    packs_b: true,
    run: entry,
};

unsafe fn entry(args: &TileArgs) {
    let rows = match args.mr_eff {
        0..=4 => 4,
        5..=8 => 8,
        _ => 12,
    };
    // A packed panel whose last vector would hold at most NARROW live columns runs them as
    // columns (rows in the lanes, see `tail_step`): beside a full vector, or alone on a tile
    // of twelve rows, where a vector would cost one multiply-add per row.
    let cols = args.nr_eff;
    let tail = cols % LANES;
    let narrow = args.b_packed && (1..=NARROW).contains(&tail) && (cols > LANES || rows == 12);
    // SAFETY: the driver only selects this kernel when AVX-512F is detected; the variant
    // covers at least the live rows and columns of the tile.
    unsafe {
        match (rows, cols > LANES, narrow.then_some(tail)) {
            (4, false, _) => kernel::<4, 1, 0>(args),
            (4, true, Some(1)) => kernel::<4, 1, 1>(args),
            (4, true, Some(2)) => kernel::<4, 1, 2>(args),
            (4, true, Some(_)) => kernel::<4, 1, 4>(args),
            (4, true, None) => kernel::<4, 2, 0>(args),
            (8, false, _) => kernel::<8, 1, 0>(args),
            (8, true, Some(1)) => kernel::<8, 1, 1>(args),
            (8, true, Some(2)) => kernel::<8, 1, 2>(args),
            (8, true, Some(_)) => kernel::<8, 1, 4>(args),
            (8, true, None) => kernel::<8, 2, 0>(args),
            (_, false, Some(1)) => kernel::<12, 0, 1>(args),
            (_, false, Some(2)) => kernel::<12, 0, 2>(args),
            (_, false, Some(_)) => kernel::<12, 0, 4>(args),
            (_, false, None) => kernel::<12, 1, 0>(args),
            (_, true, Some(1)) => kernel::<12, 1, 1>(args),
            (_, true, Some(2)) => kernel::<12, 1, 2>(args),
            (_, true, Some(_)) => kernel::<12, 1, 4>(args),
            (_, true, None) => kernel::<12, 2, 0>(args),
        }
    }
}

/// Most live columns of a packed panel's last vector that run as tail columns.
const NARROW: usize = 4;

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

/// One depth step of `T` tail columns: the step's twelve values of A in the lanes of one
/// vector, times each column's value of B broadcast. Each sum is formed as in [`step`] (one
/// fused multiply-add per depth step, in depth order), so an output comes out bit for bit the
/// same whether its column runs in a vector or in the tail.
#[inline(always)]
unsafe fn tail_step<const T: usize>(acc: &mut [__m512; T], a: *const f32, b: *const f32) {
    if T == 0 {
        return;
    }
    // SAFETY: a packed step holds MR values of A (the mask reads no more) and NR >= T values
    // of B from `b`; the enclosing kernel has AVX-512F enabled.
    unsafe {
        let av = _mm512_maskz_loadu_ps(lane_mask(MR), a);
        for (j, sum) in acc.iter_mut().enumerate() {
            *sum = _mm512_fmadd_ps(av, _mm512_set1_ps(*b.add(j)), *sum);
        }
    }
}

/// Loads `V` vectors of one packed B step.
#[inline(always)]
unsafe fn load_packed<const V: usize>(b: *const f32) -> [__m512; V] {
    // SAFETY: a packed step holds NR >= V·16 floats; AVX-512F is enabled by the caller.
    std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(LANES * v)) })
}

/// The `R × (16·V + T)` tile: `V` vectors of columns and `T` tail columns after them (only
/// with packed B).
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize, const T: usize>(args: &TileArgs) {
    debug_assert!(
        args.a_packed && args.a_rs == 1 && args.a_ks == MR,
        "this kernel reads packed A only"
    );
    debug_assert!(T == 0 || args.b_packed, "tail columns need packed B");
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut tail = [_mm512_setzero_ps(); T];
    let tail_at = LANES * V;
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
        let mut pack = args.pack_b;
        for _ in 0..args.kc {
            ahead_a.step();
            // SAFETY: A stays inside its packed panel; the masked loads read only the nr_eff
            // columns of one row of B, which the caller guarantees readable; `pack`, when not
            // null, writes the step's NR floats of the kc·NR the caller handed over.
            unsafe {
                // Rows of B in place may lie far apart (the Winograd path's are 16 blocks
                // apart): ask for them ahead, past the strides the prefetchers follow. A
                // prefetch is a hint and never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead + LANES) as *const i8);
                let bv: [__m512; V] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], b.add(LANES * v)));
                if !pack.is_null() {
                    let far = b.wrapping_add(PACK_PREFETCH_ROWS * args.b_stride);
                    _mm_prefetch::<_MM_HINT_T1>(far as *const i8);
                    _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(LANES) as *const i8);
                    // The step as a packed panel holds it: the live columns, zeros after.
                    for (v, value) in bv.iter().enumerate() {
                        _mm512_storeu_ps(pack.add(LANES * v), *value);
                    }
                    for v in V..NR / LANES {
                        _mm512_storeu_ps(pack.add(LANES * v), _mm512_setzero_ps());
                    }
                    pack = pack.add(NR);
                }
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
                tail_step::<T>(&mut tail, a, b.add(tail_at));
                step::<R, V>(&mut acc, a.add(MR), load_packed::<V>(b.add(NR)));
                tail_step::<T>(&mut tail, a.add(MR), b.add(NR + tail_at));
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(10 * NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(10 * NR + LANES) as *const i8);
                step::<R, V>(&mut acc, a.add(2 * MR), load_packed::<V>(b.add(2 * NR)));
                tail_step::<T>(&mut tail, a.add(2 * MR), b.add(2 * NR + tail_at));
                step::<R, V>(&mut acc, a.add(3 * MR), load_packed::<V>(b.add(3 * NR)));
                tail_step::<T>(&mut tail, a.add(3 * MR), b.add(3 * NR + tail_at));
                a = a.add(4 * MR);
                b = b.add(4 * NR);
                left -= 4;
            }
            while left > 0 {
                ahead.step();
                step::<R, V>(&mut acc, a, load_packed::<V>(b));
                tail_step::<T>(&mut tail, a, b.add(tail_at));
                a = a.add(MR);
                b = b.add(NR);
                left -= 1;
            }
        }
    }
    if T == 0 {
        // SAFETY: as for this function.
        unsafe { store::<R, V>(acc, args, masks) };
    } else {
        if V > 0 {
            let vectors = TileArgs {
                nr_eff: tail_at,
                ..*args
            };
            // SAFETY: the vectors' columns, in front of the tail's, of the caller's tile.
            unsafe { store::<R, V>(acc, &vectors, masks) };
        }
        // SAFETY: as for this function; the tail columns follow the vectors' inside the tile.
        unsafe { store_tail::<T>(tail, args, tail_at) };
    }
}

/// Writes the tail columns' sums (`acc[j]` lane `i` is row `i` of column `first + j`) into
/// C as [`store`] writes a vector's: the same operations in the same order, element by element.
///
/// # Safety
/// As [`MicroKernel::run`](super::MicroKernel); columns `first..nr_eff` are the tail's.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn store_tail<const T: usize>(acc: [__m512; T], args: &TileArgs, first: usize) {
    let cols = args.nr_eff - first;
    let mut lanes = [[0.0f32; LANES]; T];
    for (column, sum) in lanes.iter_mut().zip(acc) {
        // SAFETY: `column` holds LANES floats.
        unsafe { _mm512_storeu_ps(column.as_mut_ptr(), sum) };
    }
    if args.cs_c != 1 {
        // Strided C: `store` writes through `store_tile_scalar`, and so does the tail.
        let mut tile = [0.0f32; MR * NARROW];
        for i in 0..args.mr_eff {
            for j in 0..cols {
                tile[i * NARROW + j] = lanes[j][i];
            }
        }
        let rest = TileArgs {
            c: args.c.wrapping_add(first * args.cs_c),
            nr_eff: cols,
            ..*args
        };
        // SAFETY: the tail's columns of the caller's tile.
        unsafe { store_tile_scalar(&tile, NARROW, &rest) };
        return;
    }
    for i in 0..args.mr_eff {
        // SAFETY: i < mr_eff rows of the bias.
        let bias = unsafe { args.bias(i) };
        for (j, column) in lanes.iter().enumerate().take(cols) {
            // SAFETY: (i, first + j) is inside the tile the caller owns.
            unsafe {
                let c = args.c.add(i * args.rs_c + first + j);
                let mut out = args.alpha * column[i];
                if args.beta != 0.0 {
                    out = args.beta.mul_add(*c, out);
                }
                out += bias;
                // As `_mm512_max_ps(zero, out)`: NaN and -0.0 stay, negatives become +0.0.
                if args.relu && out < 0.0 {
                    out = 0.0;
                }
                *c = out;
            }
        }
    }
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
