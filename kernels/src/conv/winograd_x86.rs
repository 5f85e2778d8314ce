//! AVX-512 row transforms of the Winograd path (`winograd.rs`): sixteen tiles per vector,
//! for F(2×2, 3×3) and F(4×4, 3×3).

use std::arch::x86_64::*;

use crate::gemm::lane_mask;

/// Positions of F(2×2, 3×3)'s 4×4 transform.
const POSITIONS: usize = 16;
/// Positions of F(4×4, 3×3)'s 6×6 transform.
const POSITIONS_4: usize = 36;

/// Floats per vector.
const LANES: usize = 16;

/// Columns `x - left` of `line` (zero outside it) for `x = 2i` into `even[i]` and `2i + 1`
/// into `odd[i]`, for every `i` of `even` (as long as `odd`).
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn split_columns(line: &[f32], left: usize, even: &mut [f32], odd: &mut [f32]) {
    let len = even.len().min(odd.len());
    let at = |x: usize| match x.checked_sub(left) {
        Some(x) if x < line.len() => line[x],
        _ => 0.0,
    };
    // From the first pair at or right of the line's start on, sixteen pairs at a time: the
    // 32 source values from 2i - left, those past the line's end read as zero (its right
    // padding) by masked loads.
    let first = left.div_ceil(2).min(len);
    for i in 0..first {
        (even[i], odd[i]) = (at(2 * i), at(2 * i + 1));
    }
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut i = first;
    while i < len {
        let start = 2 * i - left;
        let live = line.len().saturating_sub(start);
        let (lo_mask, hi_mask) = (lane_mask(live), lane_mask(live.saturating_sub(LANES)));
        let out_mask = lane_mask(len - i);
        // SAFETY: the loads' masks keep them inside `line` (values start.. below its length;
        // a masked-off lane is never read, so an address past the end is not touched), and
        // the stores' inside the `len` values of `even` and `odd` from `i`.
        unsafe {
            let src = line.as_ptr().wrapping_add(start);
            let lo = _mm512_maskz_loadu_ps(lo_mask, src);
            let hi = _mm512_maskz_loadu_ps(hi_mask, src.wrapping_add(LANES));
            let (e, o) = (
                _mm512_permutex2var_ps(lo, evens, hi),
                _mm512_permutex2var_ps(lo, odds, hi),
            );
            _mm512_mask_storeu_ps(even.as_mut_ptr().add(i), out_mask, e);
            _mm512_mask_storeu_ps(odd.as_mut_ptr().add(i), out_mask, o);
        }
        i += LANES;
    }
}

/// `Bᵀ·v` for a column of four values, `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transform_four([v0, v1, v2, v3]: [__m512; 4]) -> [__m512; 4] {
    [
        _mm512_sub_ps(v0, v2),
        _mm512_add_ps(v1, v2),
        _mm512_sub_ps(v2, v1),
        _mm512_sub_ps(v1, v3),
    ]
}

/// `Bᵀ·d·B` of sixteen tiles' 4×4 patches given by columns (`columns[j][r]` is `d[r][j]`):
/// position `a·4 + b` of the result is its row `a`, column `b`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transform_patch(columns: [[__m512; 4]; 4]) -> [__m512; POSITIONS] {
    // Bᵀ·d column by column, then (Bᵀ·d)·B row by row (no closures: they would not inline).
    let [q0, q1, q2, q3] = columns;
    let (q0, q1, q2, q3) = (
        transform_four(q0),
        transform_four(q1),
        transform_four(q2),
        transform_four(q3),
    );
    let row = |a: usize| transform_four([q0[a], q1[a], q2[a], q3[a]]);
    let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (row(0), row(1));
    let ([c0, c1, c2, c3], [d0, d1, d2, d3]) = (row(2), row(3));
    [
        a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
    ]
}

/// One tile row's input transform: the 4×4 patch `d[r][j]` of tile `tx` is `even[r][tx]`,
/// `odd[r][tx]`, `even[r][tx+1]`, `odd[r][tx+1]`; `dst[ξ][tx] = (Bᵀ·d·B)[ξ]` with
/// `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, for every `tx` of `dst[0]`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_row(even: [&[f32]; 4], odd: [&[f32]; 4], dst: [&mut [f32]; POSITIONS]) {
    let tw = dst[0].len();
    assert!(
        even.iter().chain(&odd).all(|line| line.len() > tw)
            && dst.iter().all(|run| run.len() == tw),
        "winograd input rows are too short"
    );
    let dst = dst.map(|run| run.as_mut_ptr());
    let mut tx = 0;
    while tx < tw {
        let m = lane_mask(tw - tx);
        // SAFETY: lanes tx.. under mask `m` lie inside the `tw` values of each output and
        // the `tw + 1` of each input (asserted), the inputs also at tx + 1.
        unsafe {
            let load = |line: &[f32], at: usize| _mm512_maskz_loadu_ps(m, line.as_ptr().add(at));
            // Columns j: 0 even tx, 1 odd tx, 2 even tx+1, 3 odd tx+1.
            let column = |lines: [&[f32]; 4], at: usize| lines.map(|line| load(line, at));
            let columns = [
                column(even, tx),
                column(odd, tx),
                column(even, tx + 1),
                column(odd, tx + 1),
            ];
            for (xi, value) in transform_patch(columns).into_iter().enumerate() {
                _mm512_mask_storeu_ps(dst[xi].add(tx), m, value);
            }
        }
        tx += LANES;
    }
}

/// One tile row's output transform: `Aᵀ·m·A` with `Aᵀ = [1 1 1 0; 0 1 -1 -1]`, `m[ξ][tx]` the
/// products of tile `tx`; `lines` get output row 0's even and odd columns, then row 1's.
/// Returns whether every value written is finite.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_row(m: [&[f32]; POSITIONS], lines: [&mut [f32]; 4]) -> bool {
    let tw = lines[0].len();
    assert!(
        m.iter().all(|run| run.len() >= tw) && lines.iter().all(|line| line.len() == tw),
        "winograd output rows are too short"
    );
    let lines = lines.map(|line| line.as_mut_ptr());
    let mut non_finite = 0;
    let mut tx = 0;
    while tx < tw {
        let k = lane_mask(tw - tx);
        // SAFETY: lanes tx.. under mask `k` lie inside the `tw` values of every run (asserted).
        unsafe {
            let mut v = [_mm512_setzero_ps(); POSITIONS];
            for (value, run) in v.iter_mut().zip(&m) {
                *value = _mm512_maskz_loadu_ps(k, run.as_ptr().add(tx));
            }
            // Aᵀ·m for each column b: rows 0 and 1.
            let mut p = [[_mm512_setzero_ps(); 2]; 4];
            for (b, column) in p.iter_mut().enumerate() {
                let (m0, m1, m2, m3) = (v[b], v[4 + b], v[8 + b], v[12 + b]);
                column[0] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                column[1] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            // (Aᵀ·m)·A for rows 0 and 1: even and odd columns.
            for i in 0..2 {
                let (p0, p1, p2, p3) = (p[0][i], p[1][i], p[2][i], p[3][i]);
                let even = _mm512_add_ps(_mm512_add_ps(p0, p1), p2);
                let odd = _mm512_sub_ps(_mm512_sub_ps(p1, p2), p3);
                non_finite |= not_finite(k, even) | not_finite(k, odd);
                _mm512_mask_storeu_ps(lines[2 * i].add(tx), k, even);
                _mm512_mask_storeu_ps(lines[2 * i + 1].add(tx), k, odd);
            }
        }
        tx += LANES;
    }
    non_finite == 0
}

/// The lanes of `v` under `mask` that hold a NaN or an infinity.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn not_finite(mask: __mmask16, v: __m512) -> __mmask16 {
    _mm512_mask_cmp_ps_mask::<_CMP_NLT_UQ>(mask, _mm512_abs_ps(v), _mm512_set1_ps(f32::INFINITY))
}

/// Stores `y + bias`, plus `beta` times the values already there, through the ReLU if
/// `relu`, into the lanes of `store` from `ptr`: the Winograd paths' output epilogue.
///
/// # Safety
/// AVX-512F must be available, and the lanes of `store` from `ptr` must be writable.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn finish_vector(
    ptr: *mut f32,
    store: __mmask16,
    y: __m512,
    bias: __m512,
    beta: f32,
    relu: bool,
) {
    let mut y = _mm512_add_ps(y, bias);
    // SAFETY: the caller's promise: the masked lanes from `ptr` are writable (so readable);
    // masked-off lanes are not touched.
    unsafe {
        if beta != 0.0 {
            let old = _mm512_maskz_loadu_ps(store, ptr);
            y = _mm512_fmadd_ps(_mm512_set1_ps(beta), old, y);
        }
        if relu {
            y = _mm512_max_ps(_mm512_setzero_ps(), y);
        }
        _mm512_mask_storeu_ps(ptr, store, y);
    }
}

/// Writes one output row from its even and odd columns: `relu?(y + bias + beta·old)`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn finish_row(
    dst: &mut [f32],
    even: &[f32],
    odd: &[f32],
    bias: f32,
    beta: f32,
    relu: bool,
) {
    assert!(
        even.len() >= dst.len().div_ceil(2) && odd.len() >= dst.len() / 2,
        "winograd output columns are too few"
    );
    let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let bias_v = _mm512_set1_ps(bias);
    let len = dst.len();
    let mut x = 0;
    while x < len {
        // Output columns x..x + 32 come from tiles x/2..x/2 + 16.
        let tile = x / 2;
        let (e_mask, o_mask) = (
            lane_mask(even.len().min(tile + LANES) - tile),
            lane_mask(odd.len().min(tile + LANES).max(tile) - tile),
        );
        // SAFETY: the masks keep the loads inside `even` and `odd`, and the stores' masks
        // inside `dst` (columns x.. below `len`).
        unsafe {
            let e = _mm512_maskz_loadu_ps(e_mask, even.as_ptr().add(tile));
            let o = _mm512_maskz_loadu_ps(o_mask, odd.as_ptr().add(tile));
            for (half, index) in [low, high].into_iter().enumerate() {
                let start = x + half * LANES;
                if start >= len {
                    break;
                }
                let store = lane_mask(len - start);
                let y = _mm512_permutex2var_ps(e, index, o);
                finish_vector(dst.as_mut_ptr().add(start), store, y, bias_v, beta, relu);
            }
        }
        x += 2 * LANES;
    }
}

/// F(2×2, 3×3)'s input transform of one channel's tiles read by gathers (small planes,
/// whose tile rows would fill a fraction of a vector): lane `l` of vector `i` is tile
/// `16·i + l`, its patch value `d[r][j]` is `src[index[(16·i + 4·r + j)·16 + l]]` where bit
/// `l` of `masks[16·i + 4·r + j]` is set and zero (padding) where it is clear;
/// `dst[ξ·count + t] = (Bᵀ·d·B)[ξ]` for the `count` tiles, `count = dst.len() / 16`.
///
/// # Safety
/// AVX-512F must be available, and every index whose mask bit is set must lie in
/// `0..reach`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_gathered(
    src: &[f32],
    (index, masks, reach): (&[i32], &[u16], usize),
    dst: &mut [f32],
) {
    let count = dst.len() / POSITIONS;
    let vectors = count.div_ceil(LANES);
    assert!(
        index.len() >= vectors * POSITIONS * LANES
            && masks.len() >= vectors * POSITIONS
            && reach <= src.len(),
        "winograd gather indices outside the input"
    );
    let base = src.as_ptr();
    let out = dst.as_mut_ptr();
    for i in 0..vectors {
        let t = LANES * i;
        let m = lane_mask(count - t);
        // SAFETY: every index read is below `reach` (the caller's promise), inside `src`
        // (asserted), and masked-off lanes are not read;
        // the stores' lanes t.. under `m` lie inside each position's `count` values.
        unsafe {
            let d = |r: usize, j: usize| {
                let at = (i * POSITIONS + 4 * r + j) * LANES;
                let idx = _mm512_loadu_si512(index.as_ptr().add(at).cast());
                _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    masks[i * POSITIONS + 4 * r + j],
                    idx,
                    base,
                )
            };
            let column = |j: usize| [d(0, j), d(1, j), d(2, j), d(3, j)];
            let columns = [column(0), column(1), column(2), column(3)];
            for (xi, value) in transform_patch(columns).into_iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(xi * count + t), m, value);
            }
        }
    }
}

/// Padded rows `first..` of `plane` (`h` rows of `w` columns; padded row `y` is the plane's
/// row `y - top`, zero outside it), as many as `dst` holds, each split into `step` (2 or 4)
/// column phases of `half` values ([`split_columns`], [`split_columns_4`]): phase `j` of the
/// `k`-th row into `dst[(k·step + j)·half..][..half]`. One call per plane, not per row.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn split_rows(
    plane: &[f32],
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    first: usize,
    step: usize,
    half: usize,
    dst: &mut [f32],
) {
    for (k, lines) in dst.chunks_exact_mut(step * half).enumerate() {
        let Some(y) = (first + k).checked_sub(top).filter(|&y| y < h) else {
            lines.fill(0.0);
            continue;
        };
        let line = &plane[y * w..][..w];
        let mut phases = lines.chunks_exact_mut(half);
        let mut next = || phases.next().expect("a line per phase");
        // SAFETY: AVX-512F is available (this function's contract).
        unsafe {
            if step == 2 {
                split_columns(line, left, next(), next());
            } else {
                split_columns_4(line, left, [next(), next(), next(), next()]);
            }
        }
    }
}

/// Columns `x - left` of `line` (zero outside it) for `x = 4i + j` into `phases[j][i]`, for
/// every `i` of the shortest of `phases`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn split_columns_4(line: &[f32], left: usize, phases: [&mut [f32]; 4]) {
    let len = phases.iter().map(|p| p.len()).min().unwrap_or(0);
    let at = |x: usize| match x.checked_sub(left) {
        Some(x) if x < line.len() => line[x],
        _ => 0.0,
    };
    let first = left.div_ceil(4).min(len);
    let mut phases = phases;
    for i in 0..first {
        for (j, phase) in phases.iter_mut().enumerate() {
            phase[i] = at(4 * i + j);
        }
    }
    // Phase j of 64 source values: lanes 0..8 of each half gather every fourth value.
    let index: [__m512i; 4] = std::array::from_fn(|j| {
        let j = j as i32;
        _mm512_setr_epi32(
            j,
            j + 4,
            j + 8,
            j + 12,
            j + 16,
            j + 20,
            j + 24,
            j + 28,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        )
    });
    let mut i = first;
    while i < len {
        let start = 4 * i - left;
        let live = line.len().saturating_sub(start);
        let out_mask = lane_mask(len - i);
        // SAFETY: the loads' masks keep them inside `line` (a masked-off lane is never read),
        // the stores' inside the `len` values of each phase from `i`.
        unsafe {
            let src = line.as_ptr().wrapping_add(start);
            let v: [__m512; 4] = std::array::from_fn(|q| {
                let mask = lane_mask(live.saturating_sub(q * LANES));
                _mm512_maskz_loadu_ps(mask, src.wrapping_add(q * LANES))
            });
            for (phase, index) in phases.iter_mut().zip(index) {
                let lo = _mm512_permutex2var_ps(v[0], index, v[1]);
                let hi = _mm512_permutex2var_ps(v[2], index, v[3]);
                // Lanes 0..8 of lo, then lanes 0..8 of hi.
                let joined = _mm512_shuffle_f32x4::<0x44>(lo, hi);
                _mm512_mask_storeu_ps(phase.as_mut_ptr().add(i), out_mask, joined);
            }
        }
        i += LANES;
    }
}

/// `Bᵀ·d` for one column `d` of a 6×6 patch, F(4×4, 3×3)'s
/// `Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn input_column_4(d: [__m512; 6]) -> [__m512; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    let (e, f) = (_mm512_sub_ps(d4, d2), _mm512_sub_ps(d3, d1));
    [
        _mm512_fmadd_ps(four, d0, _mm512_fnmadd_ps(five, d2, d4)),
        _mm512_fnmadd_ps(four, _mm512_add_ps(d1, d2), _mm512_add_ps(d3, d4)),
        _mm512_fmadd_ps(four, _mm512_sub_ps(d1, d2), _mm512_sub_ps(d4, d3)),
        _mm512_fmadd_ps(two, f, e),
        _mm512_fnmadd_ps(two, f, e),
        _mm512_fmadd_ps(four, d1, _mm512_fnmadd_ps(five, d3, d5)),
    ]
}

/// One tile row's F(4×4, 3×3) input transform: the 6×6 patch `d[r][j]` of tile `tx` is
/// `rows[r][j][tx]` for `j < 4` and `rows[r][j - 4][tx + 1]` after; `dst[ξ][tx] = (Bᵀ·d·B)[ξ]`
/// for every `tx` of `dst[0]`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_row_4(rows: [[&[f32]; 4]; 6], dst: [&mut [f32]; POSITIONS_4]) {
    let tw = dst[0].len();
    assert!(
        rows.iter().flatten().all(|line| line.len() > tw) && dst.iter().all(|run| run.len() == tw),
        "winograd input rows are too short"
    );
    let dst = dst.map(|run| run.as_mut_ptr());
    let mut tx = 0;
    while tx < tw {
        let m = lane_mask(tw - tx);
        // SAFETY: lanes tx.. under mask `m` lie inside the `tw` values of each output and
        // the `tw + 1` of each input (asserted), the inputs also at tx + 1; AVX-512F is
        // enabled here.
        unsafe {
            let load = |line: &[f32], at: usize| _mm512_maskz_loadu_ps(m, line.as_ptr().add(at));
            // Bᵀ·d for each column j.
            let q: [[__m512; 6]; 6] = std::array::from_fn(|j| {
                let (phase, at) = if j < 4 { (j, tx) } else { (j - 4, tx + 1) };
                input_column_4(std::array::from_fn(|r| load(rows[r][phase], at)))
            });
            // (Bᵀ·d)·B for each row a: position a·6 + b.
            for a in 0..6 {
                let out = input_column_4(std::array::from_fn(|j| q[j][a]));
                for (b, value) in out.into_iter().enumerate() {
                    _mm512_mask_storeu_ps(dst[a * 6 + b].add(tx), m, value);
                }
            }
        }
        tx += LANES;
    }
}

/// `Aᵀ·m` for one column `m` of a 6×6 product, F(4×4, 3×3)'s
/// `Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn output_column_4(m: [__m512; 6]) -> [__m512; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12) = (_mm512_add_ps(m1, m2), _mm512_sub_ps(m1, m2));
    let (s34, d34) = (_mm512_add_ps(m3, m4), _mm512_sub_ps(m3, m4));
    [
        _mm512_add_ps(_mm512_add_ps(m0, s12), s34),
        _mm512_fmadd_ps(_mm512_set1_ps(2.0), d34, d12),
        _mm512_fmadd_ps(_mm512_set1_ps(4.0), s34, s12),
        _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), d34, d12), m5),
    ]
}

/// One tile row's F(4×4, 3×3) output transform: `Aᵀ·m·A`, `m[ξ][tx]` the products of tile
/// `tx`; `lines[4i + j]` gets the columns `4tx + j` of output row `i`. Returns whether every
/// value written is finite.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_row_4(m: [&[f32]; POSITIONS_4], lines: [&mut [f32]; 16]) -> bool {
    let tw = lines[0].len();
    assert!(
        m.iter().all(|run| run.len() >= tw) && lines.iter().all(|line| line.len() == tw),
        "winograd output rows are too short"
    );
    let lines = lines.map(|line| line.as_mut_ptr());
    let mut non_finite = 0;
    let mut tx = 0;
    while tx < tw {
        let k = lane_mask(tw - tx);
        // SAFETY: lanes tx.. under mask `k` lie inside the `tw` values of every run
        // (asserted); AVX-512F is enabled here.
        unsafe {
            let load = |xi: usize| _mm512_maskz_loadu_ps(k, m[xi].as_ptr().add(tx));
            // Aᵀ·m for each column b: rows 0 to 3.
            let p: [[__m512; 4]; 6] =
                std::array::from_fn(|b| output_column_4(std::array::from_fn(|a| load(a * 6 + b))));
            // (Aᵀ·m)·A for each row i: columns 4tx + j.
            for i in 0..4 {
                let out = output_column_4(std::array::from_fn(|b| p[b][i]));
                for (j, value) in out.into_iter().enumerate() {
                    non_finite |= not_finite(k, value);
                    _mm512_mask_storeu_ps(lines[4 * i + j].add(tx), k, value);
                }
            }
        }
        tx += LANES;
    }
    non_finite == 0
}
