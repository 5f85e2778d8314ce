//! AVX-512 depthwise plane kernel: sixteen output columns per register, summed over every
//! kernel tap in registers before one store.
//!
//! Runs of columns whose every tap reads inside the image take plain loads, four registers at a
//! time; edge chunks mask off the lanes that would read padding (masked lanes are never
//! accessed, so the padding is neither stored nor read).

use std::arch::x86_64::*;

use super::depthwise::Plane;

/// Bit j set for each lane j in `a..b`, for sixteen lanes.
#[inline(always)]
fn lane_mask(a: usize, b: usize) -> u16 {
    let below = |n: usize| if n >= 16 { u32::MAX } else { (1u32 << n) - 1 };
    (below(b) & !below(a)) as u16
}

/// Largest column stride served (gather offsets `j·stride` are i32).
pub(super) const MAX_STRIDE: usize = 1 << 24;

/// One output plane from one input plane (`H·W` values in `x`) with AVX-512F.
///
/// # Safety
/// AVX-512F must be available; `x` must hold the `H·W` input plane and `out` the `OH·OW`
/// output plane of `plane.g`; `plane.cols` and `plane.interior` must be those of
/// `depthwise::run`; the column stride must be at most `MAX_STRIDE`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn plane_avx512(plane: &Plane<'_>, x: &[f32], out: &mut [f32]) {
    // SAFETY: the caller's contract, passed on; SW matches the plane's stride (0: any).
    unsafe {
        match plane.g.sw {
            1 => plane_strided::<1>(plane, x, out),
            2 => plane_strided::<2>(plane, x, out),
            _ => plane_strided::<0>(plane, x, out),
        }
    }
}

/// Per 16-column chunk of an output row and kernel column s, at `table[chunk·KW + s]`: the
/// load mask and the offset from an input row's start of the element lane 0 reads (wrapping).
///
/// The mask enables the lanes whose input column is inside the image (bit j for lane j); for
/// stride 2 it covers source elements instead, bits 2j of those lanes and all between, which
/// lie in the same image row.
pub(super) fn chunk_table(
    plane_cols: &[super::depthwise::Cols],
    ow: usize,
    sw: usize,
) -> Vec<(u32, usize)> {
    let mut table = Vec::with_capacity(ow.div_ceil(16) * plane_cols.len());
    for j0 in (0..ow).step_by(16) {
        let live = 16.min(ow - j0);
        for cols in plane_cols {
            let a = cols.lo.clamp(j0, j0 + live);
            let b = cols.hi.clamp(a, j0 + live);
            let mask = if a == b {
                0
            } else if sw == 2 {
                let below = |n: usize| if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
                below(2 * (b - j0) - 1) & !below(2 * (a - j0))
            } else {
                u32::from(lane_mask(a - j0, b - j0))
            };
            // Lane 0 is output column j0, reading input column start + (j0 - lo)·sw.
            let offset = cols
                .start
                .wrapping_add(j0.wrapping_sub(cols.lo).wrapping_mul(sw));
            table.push((mask, offset));
        }
    }
    table
}

/// Lanes of sixteen columns, lane j reading `origin[j·sw]`, for the lanes enabled by `mask`
/// (see [`chunk_table`]; the others are zero and read nothing). `SW` is the stride when 1 or
/// 2, else 0 (gathers with `offsets`, lane j at `j·sw`).
///
/// # Safety
/// Every enabled element must be inside the input plane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load<const SW: usize>(mask: u32, origin: *const f32, offsets: __m512i) -> __m512 {
    match SW {
        // SAFETY: the caller's contract; disabled lanes are not accessed.
        1 => unsafe { _mm512_maskz_loadu_ps(mask as u16, origin) },
        2 => {
            let evens =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            // SAFETY: the caller's contract; disabled elements are not accessed.
            let (low, high) = unsafe {
                (
                    _mm512_maskz_loadu_ps(mask as u16, origin),
                    _mm512_maskz_loadu_ps((mask >> 16) as u16, origin.wrapping_add(16)),
                )
            };
            _mm512_permutex2var_ps(low, evens, high)
        }
        // SAFETY: the caller's contract; offsets fit in i32 (sw <= MAX_STRIDE).
        _ => unsafe {
            _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask as u16, offsets, origin)
        },
    }
}

/// Negative lanes to zero when `relu`; NaN compares false and stays NaN.
#[inline]
#[target_feature(enable = "avx512f")]
fn activate(relu: bool, acc: __m512) -> __m512 {
    if relu {
        let zero = _mm512_setzero_ps();
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(acc, zero);
        _mm512_mask_mov_ps(acc, negative, zero)
    } else {
        acc
    }
}

/// [`plane_avx512`] for column stride `SW` (0: any stride, with gathers).
#[target_feature(enable = "avx512f")]
unsafe fn plane_strided<const SW: usize>(plane: &Plane<'_>, x: &[f32], out: &mut [f32]) {
    const BLOCK: usize = 4;
    let g = plane.g;
    let (kw, sw) = (g.kw, g.sw);
    let full = if SW == 2 {
        u32::MAX >> 1
    } else {
        u32::from(u16::MAX)
    };
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(sw as i32),
    );
    let (interior_lo, interior_hi) = plane.interior;
    let bias = _mm512_set1_ps(plane.bias);
    let table = plane.table;
    for (oh, row) in out.chunks_exact_mut(g.ow).enumerate() {
        // Kernel rows r_lo..r_hi have their input row inside the image.
        let top = oh * g.sh;
        let r_lo = g.pads[0].saturating_sub(top).div_ceil(g.dh).min(g.kh);
        let r_hi = (g.pads[0] + g.h)
            .saturating_sub(top)
            .div_ceil(g.dh)
            .clamp(r_lo, g.kh);
        let input_row = |r: usize| x.as_ptr().wrapping_add((top + r * g.dh - g.pads[0]) * g.w);
        let mut j0 = 0;
        while j0 < g.ow {
            let chunk = &table[j0 / 16 * kw..(j0 / 16 + 1) * kw];
            if j0 >= interior_lo && j0 + 16 * BLOCK <= interior_hi {
                // Every lane of every tap reads inside the image.
                let mut acc = [bias; BLOCK];
                for r in r_lo..r_hi {
                    let input_row = input_row(r);
                    for (&w, &(_, offset)) in plane.weights[r * kw..(r + 1) * kw].iter().zip(chunk)
                    {
                        let w = _mm512_set1_ps(w);
                        let origin = input_row.wrapping_add(offset);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: columns j0..j0+16·BLOCK are inside every tap's lo..hi
                            // range, so every lane reads inside the image row.
                            let v = unsafe {
                                load::<SW>(full, origin.wrapping_add(16 * i * sw), offsets)
                            };
                            *acc = _mm512_fmadd_ps(w, v, *acc);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    // SAFETY: columns j0 + 16i..j0 + 16i + 16 are inside this output row.
                    unsafe {
                        _mm512_storeu_ps(row.as_mut_ptr().add(j0 + 16 * i), activate(g.relu, *acc))
                    };
                }
                j0 += 16 * BLOCK;
                continue;
            }
            let live = 16.min(g.ow - j0);
            let mut acc = bias;
            for r in r_lo..r_hi {
                let input_row = input_row(r);
                for (&w, &(mask, offset)) in plane.weights[r * kw..(r + 1) * kw].iter().zip(chunk) {
                    // SAFETY: the table enables only lanes (or stride-2 spans) whose input
                    // column is inside this image row (`chunk_table`).
                    let v = unsafe { load::<SW>(mask, input_row.wrapping_add(offset), offsets) };
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(w), v, acc);
                }
            }
            // SAFETY: lanes 0..live are columns j0..j0+live of this output row.
            unsafe {
                _mm512_mask_storeu_ps(
                    row.as_mut_ptr().add(j0),
                    lane_mask(0, live),
                    activate(g.relu, acc),
                )
            };
            j0 += 16;
        }
    }
}
