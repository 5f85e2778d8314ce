//! x86 panel fillers of the im2col packer: each depth row of a panel is built in registers from
//! masked loads (stride 1) or masked gathers (other strides) and stored once, so padding costs
//! nothing and no per-run library call is made.
//!
//! Per panel, the runs of each kernel tap (`Im2col::plan`) are turned into per-vector loads
//! `(lane mask, offset of lane 0)`; they are the same for every input channel, so each depth row
//! then costs one masked load per (vector, run) and one store per vector.

use std::arch::x86_64::*;

use super::im2col::{Im2col, Scratch};

/// Largest column stride the gathers serve: their lane offsets `j·stride` are i32.
pub(super) const MAX_GATHER_STRIDE: usize = 1 << 24;

/// Bit `l` set for each lane `l` in `a..b` (lanes past 63 ignored).
#[inline(always)]
fn lane_bits(a: usize, b: usize) -> u64 {
    let below = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    below(b) & !below(a)
}

/// Turns the runs in `scratch` into loads of `LANES`-wide vectors, the same number `per` for
/// every (kernel tap, vector) so the fill loops run a fixed count (no mispredicted branches):
/// those of tap t and vector v are `loads[(t·NV + v)·per..][..per]`, each a mask and the offset
/// (relative to a channel plane, wrapping) that lane 0 reads. The mask has bit j set for each
/// enabled lane j, or with `pairs`, bits 2j for each enabled lane j and every bit between (the
/// source elements of a stride-2 run read as two contiguous vectors); padding entries have an
/// empty mask and read nothing. Returns `per`.
#[inline(always)]
fn vector_loads<const LANES: usize, const NV: usize>(
    sw: usize,
    pairs: bool,
    scratch: &mut Scratch,
) -> usize {
    let Scratch {
        runs, index, loads, ..
    } = scratch;
    // Runs touching vector v of a tap: at most the tap's runs; usually one or two.
    let touching = |tap: &[usize], v: usize| {
        runs[tap[0]..tap[1]]
            .iter()
            .filter(|run| run.a < LANES * (v + 1) && run.b > LANES * v)
            .count()
    };
    let per = index
        .windows(2)
        .flat_map(|tap| (0..NV).map(move |v| (tap, v)))
        .map(|(tap, v)| touching(tap, v))
        .max()
        .unwrap_or(0);
    loads.clear();
    for tap in index.windows(2) {
        for v in 0..NV {
            let first = LANES * v;
            let before = loads.len();
            for run in &runs[tap[0]..tap[1]] {
                let (ja, jb) = (
                    run.a.clamp(first, first + LANES) - first,
                    run.b.clamp(first, first + LANES) - first,
                );
                if ja == jb {
                    continue;
                }
                let mask = if pairs {
                    lane_bits(2 * ja, 2 * jb - 1)
                } else {
                    lane_bits(ja, jb)
                };
                // Lane j of vector v is panel column first + j, reading
                // off + (first + j - a)·sw: lane 0 reads off + (first - a)·sw.
                let lane0 = run
                    .off
                    .wrapping_add(first.wrapping_sub(run.a).wrapping_mul(sw));
                loads.push((mask, lane0));
            }
            loads.resize(before + per, (0, 0));
        }
    }
    per
}

/// Fills the depth rows of one `16·NV`-column panel (`depth.len()` rows) with AVX-512F.
///
/// # Safety
/// AVX-512F must be available; `panel` must hold `depth.len()·16·NV` floats; the runs in
/// `scratch` must come from `im.plan` for at most `16·NV` columns, and `depth` from the same
/// `Taps`; `im.sw <= MAX_GATHER_STRIDE`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn fill_panel_avx512<const NV: usize>(
    im: &Im2col<'_>,
    depth: &[(usize, usize)],
    scratch: &mut Scratch,
    panel: &mut [f32],
) {
    let per = vector_loads::<16, NV>(im.sw, im.sw == 2, scratch);
    if per == 0 {
        // Every tap reads padding only.
        panel.fill(0.0);
        return;
    }
    let loads = &scratch.loads;
    // SAFETY: the caller's contract, passed on; `loads` holds `per` entries per (tap, vector).
    unsafe {
        match per {
            1 => rows_avx512::<NV, 1>(im, depth, loads, per, panel),
            2 => rows_avx512::<NV, 2>(im, depth, loads, per, panel),
            _ => rows_avx512::<NV, 0>(im, depth, loads, per, panel),
        }
    }
}

/// The rows of [`fill_panel_avx512`], with `L` loads per vector (0: `per`, known at run time).
///
/// # Safety
/// As [`fill_panel_avx512`]; `loads` from `vector_loads::<16, NV>` with `per` per vector.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512<const NV: usize, const L: usize>(
    im: &Im2col<'_>,
    depth: &[(usize, usize)],
    loads: &[(u64, usize)],
    per: usize,
    panel: &mut [f32],
) {
    let per = if L == 0 { per } else { L };
    let sw = im.sw;
    let x = im.x.as_ptr();
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(sw as i32),
    );
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (&(chan, tap), row) in depth.iter().zip(panel.chunks_exact_mut(16 * NV)) {
        let plane = x.wrapping_add(chan);
        let entries = &loads[tap * NV * per..][..NV * per];
        for (v, entries) in entries.chunks_exact(per).enumerate() {
            let mut acc = _mm512_setzero_ps();
            for &(mask, lane0) in entries {
                // Lane 0's address may lie outside x (only when lane 0 is disabled), hence the
                // wrapping arithmetic.
                let origin = plane.wrapping_add(lane0);
                acc = if sw == 1 {
                    // SAFETY: the enabled lanes are one run's columns a..b, which read
                    // x[chan + off..chan + off + b - a], inside the image (`Im2col::plan`);
                    // disabled lanes are not accessed and cannot fault.
                    unsafe { _mm512_mask_loadu_ps(acc, mask as u16, origin) }
                } else if sw == 2 {
                    // SAFETY: the enabled source elements are those from the run's first
                    // column's input to its last one's, x[chan + off..=chan + off + 2(b-a-1)],
                    // all in one image row; disabled ones are not accessed and load zero.
                    let (low, high) = unsafe {
                        (
                            _mm512_maskz_loadu_ps(mask as u16, origin),
                            _mm512_maskz_loadu_ps((mask >> 16) as u16, origin.wrapping_add(16)),
                        )
                    };
                    // Lane j takes source element 2j: zero for lanes outside the run, which
                    // other runs fill, so OR-ing merges.
                    let picked = _mm512_permutex2var_ps(low, evens, high);
                    _mm512_castsi512_ps(_mm512_or_si512(
                        _mm512_castps_si512(acc),
                        _mm512_castps_si512(picked),
                    ))
                } else {
                    // SAFETY: as above, the enabled lanes read x[chan + off + (j - a)·sw] for
                    // the run's columns, inside the image; offsets j·sw fit in i32.
                    unsafe { _mm512_mask_i32gather_ps::<4>(acc, mask as u16, offsets, origin) }
                };
            }
            // SAFETY: `row` holds 16·NV floats.
            unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * v), acc) };
        }
    }
}

/// Fills the depth rows of one `8·NV`-column panel (`depth.len()` rows) with AVX2.
///
/// # Safety
/// AVX2 must be available; `panel` must hold `depth.len()·8·NV` floats; the runs in `scratch`
/// must come from `im.plan` for at most `8·NV` columns, and `depth` from the same `Taps`;
/// `im.sw <= MAX_GATHER_STRIDE`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn fill_panel_avx2<const NV: usize>(
    im: &Im2col<'_>,
    depth: &[(usize, usize)],
    scratch: &mut Scratch,
    panel: &mut [f32],
) {
    let per = vector_loads::<8, NV>(im.sw, false, scratch);
    if per == 0 {
        // Every tap reads padding only.
        panel.fill(0.0);
        return;
    }
    let loads = &scratch.loads;
    // SAFETY: the caller's contract, passed on; `loads` holds `per` entries per (tap, vector).
    unsafe {
        match per {
            1 => rows_avx2::<NV, 1>(im, depth, loads, per, panel),
            2 => rows_avx2::<NV, 2>(im, depth, loads, per, panel),
            _ => rows_avx2::<NV, 0>(im, depth, loads, per, panel),
        }
    }
}

/// The rows of [`fill_panel_avx2`], with `L` loads per vector (0: `per`, known at run time).
///
/// # Safety
/// As [`fill_panel_avx2`]; `loads` from `vector_loads::<8, NV>` with `per` per vector.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<const NV: usize, const L: usize>(
    im: &Im2col<'_>,
    depth: &[(usize, usize)],
    loads: &[(u64, usize)],
    per: usize,
    panel: &mut [f32],
) {
    let per = if L == 0 { per } else { L };
    let sw = im.sw;
    let x = im.x.as_ptr();
    let lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let offsets = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(sw as i32),
    );
    for (&(chan, tap), row) in depth.iter().zip(panel.chunks_exact_mut(8 * NV)) {
        let plane = x.wrapping_add(chan);
        let entries = &loads[tap * NV * per..][..NV * per];
        for (v, entries) in entries.chunks_exact(per).enumerate() {
            let mut acc = _mm256_setzero_ps();
            for &(mask, lane0) in entries {
                // Lane j enabled iff bit j of the mask is set: all ones in that lane.
                let bits = _mm256_and_si256(_mm256_set1_epi32(mask as i32), lanes);
                let mask = _mm256_cmpeq_epi32(bits, lanes);
                let origin = plane.wrapping_add(lane0);
                acc = if sw == 1 {
                    // SAFETY: the enabled lanes read x[chan + off..chan + off + b - a], inside
                    // the image (`Im2col::plan`); disabled lanes are not accessed, cannot fault
                    // and load +0.0, so OR-ing merges this run into the lanes filled so far.
                    _mm256_or_ps(acc, unsafe { _mm256_maskload_ps(origin, mask) })
                } else {
                    // SAFETY: the enabled lanes read x[chan + off + (j - a)·sw] for the run's
                    // columns, inside the image; offsets j·sw fit in i32.
                    unsafe {
                        _mm256_mask_i32gather_ps::<4>(
                            acc,
                            origin,
                            offsets,
                            _mm256_castsi256_ps(mask),
                        )
                    }
                };
            }
            // SAFETY: `row` holds 8·NV floats.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * v), acc) };
        }
    }
}
