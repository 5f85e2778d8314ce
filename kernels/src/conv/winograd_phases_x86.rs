//! AVX-512 transforms of the stride-phase Winograd path (`winograd_phases.rs`): sixteen tiles
//! per vector, F(3×3, 4×4) on each stride phase of a 7×7 (or 8×8) stride-2 convolution.

use std::arch::x86_64::*;

use super::winograd_x86::{finish_vector, input_column_4};
use crate::gemm::lane_mask;

/// Positions of the 6×6 transform.
pub(super) const POSITIONS: usize = 36;
/// Stride phases of a stride-2 convolution (rows × columns).
pub(super) const PHASES: usize = 4;
/// Rows (and columns) of input a tile's four phase patches span: two 6×6 patches interleaved.
pub(super) const REACH: usize = 12;
/// Floats per vector.
pub(super) const LANES: usize = 16;

/// Where sixteen tiles' patches lie in a plane: per lane, the offset of the patch's top left
/// corner (row `y0`, column `x0`, either possibly negative), and per row (and column) offset
/// `k < 12` from it, the lanes whose row `y0 + k` (column `x0 + k`) is read: inside the plane
/// and inside the tile's windows (a 7-tap kernel's windows leave out offset 11, which only
/// its phase kernels' zero taps would read, so that a patch holds nothing the convolution
/// does not read).
#[derive(Clone, Copy)]
pub(super) struct TileVector {
    /// `y0·w + x0` per lane (lanes past the block's tiles: 0, masked off).
    pub origin: [i32; LANES],
    /// Lanes whose row `y0 + k` lies inside the plane, for each `k`.
    pub rows: [u16; REACH],
    /// Lanes whose column `x0 + k` lies inside the plane, for each `k`.
    pub columns: [u16; REACH],
}

impl TileVector {
    /// The vector of tiles whose patch corners are `corners` (row, column; as many as there
    /// are live lanes, at most 16) in a plane of `h × w`, read by windows of `kh × kw` (7 or
    /// 8) taps.
    pub(super) fn new(
        corners: &[(isize, isize)],
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
    ) -> TileVector {
        let mut vector = TileVector {
            origin: [0; LANES],
            rows: [0; REACH],
            columns: [0; REACH],
        };
        let inside = |at: isize, k: usize, len: usize| {
            at.checked_add_unsigned(k)
                .is_some_and(|v| v >= 0 && v.unsigned_abs() < len)
        };
        for (lane, &(y0, x0)) in corners.iter().enumerate().take(LANES) {
            let origin = y0 * w as isize + x0;
            vector.origin[lane] = i32::try_from(origin).expect("the caller bounds the plane");
            // A tile's three outputs at stride 2 read 4 + k taps along an axis.
            for k in 0..REACH {
                vector.rows[k] |= u16::from(k < kh + 4 && inside(y0, k, h)) << lane;
                vector.columns[k] |= u16::from(k < kw + 4 && inside(x0, k, w)) << lane;
            }
        }
        vector
    }
}

/// Values of one input channel's transformed phase patches for sixteen tiles:
/// `[phase][ξ][lane]`.
pub(super) const CHANNEL_VALUES: usize = PHASES * POSITIONS * LANES;

/// The input transform of one channel for the sixteen tiles of `vector`, read by gathers: for
/// lane `l` and phase `(py, px)`, the 6×6 patch `d[r][j] = plane[y0 + 2r + py][x0 + 2j + px]`
/// (zero where the vector's masks leave it out) becomes
/// `dst[((2·py + px)·36 + ξ)·16 + l] = (Bᵀ·d·B)[ξ]`, with F(4×4, 3×3)'s `Bᵀ` (the same six
/// points serve F(3×3, 4×4)). Lanes without a tile (no mask bits) get zeros.
///
/// # Safety
/// AVX-512F must be available, and every offset under a mask bit of `vector` must lie inside
/// `plane` (rows below `plane.len() / w`, columns below `w`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // rows of a transposed 6×6 array
pub(super) unsafe fn input_vector(
    plane: &[f32],
    w: usize,
    vector: &TileVector,
    dst: &mut [f32; CHANNEL_VALUES],
) {
    let base = plane.as_ptr();
    let out = dst.as_mut_ptr();
    // SAFETY: reading the 16 i32 of `origin`.
    let origin = unsafe { _mm512_loadu_si512(vector.origin.as_ptr().cast()) };
    for (phase, (py, px)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
        // Bᵀ·d for each column j, then (Bᵀ·d)·B for each row a: position a·6 + b.
        let mut q = [[_mm512_setzero_ps(); 6]; 6];
        for (j, q) in q.iter_mut().enumerate() {
            let dx = 2 * j + px;
            let mut d = [_mm512_setzero_ps(); 6];
            for (r, d) in d.iter_mut().enumerate() {
                let dy = 2 * r + py;
                let mask = vector.rows[dy] & vector.columns[dx];
                let index = _mm512_add_epi32(origin, _mm512_set1_epi32((dy * w + dx) as i32));
                // SAFETY: a gathered lane's row and column lie inside the plane (its mask
                // bits, the caller's promise), so its offset `y·w + x` lies inside `plane`;
                // masked-off lanes are not read.
                *d = unsafe {
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, base)
                };
            }
            *q = input_column_4(d);
        }
        for a in 0..6 {
            let row = input_column_4([q[0][a], q[1][a], q[2][a], q[3][a], q[4][a], q[5][a]]);
            for (b, value) in row.into_iter().enumerate() {
                // SAFETY: position a·6 + b of this phase lies inside `dst`.
                unsafe {
                    _mm512_storeu_ps(out.add((phase * POSITIONS + a * 6 + b) * LANES), value);
                }
            }
        }
    }
}

/// Output channels per pass of [`products_out`].
pub(super) const GROUP: usize = 4;
/// Values [`products_out`] writes: `[channel][3i + j][lane]`.
pub(super) const GROUP_OUTPUTS: usize = GROUP * 9 * LANES;

/// The products and output transform of sixteen tiles for [`GROUP`] output channels:
/// `M[ξ] = Σ_c' U[ξ][c'][r]·V[c'][ξ]` for channel `r` of the group, then
/// `y[(r·9 + 3i + j)·16 + l] = (Aᵀ·M·A)[i][j]` of lane `l`. `v` holds the tiles'
/// transformed inputs `[c'][ξ][lane]` (`depth` phase channels, [`CHANNEL_VALUES`] per input
/// channel); `u[ξ·u_stride + c'·4 + r]` the group's transformed weights. Returns whether every
/// value written is finite.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // columns of 6×3 arrays
pub(super) unsafe fn products_out(
    v: &[f32],
    depth: usize,
    u: &[f32],
    u_stride: usize,
    y: &mut [f32; GROUP_OUTPUTS],
) -> bool {
    assert!(
        v.len() >= depth * POSITIONS * LANES
            && depth > 0
            && u.len() >= (POSITIONS - 1) * u_stride + depth * GROUP,
        "stride-phase products need every position's inputs and weights"
    );
    let zero = _mm512_setzero_ps();
    // Per channel r and product row a, the three columns of M·A.
    let mut rows = [[[zero; 3]; 6]; GROUP];
    for a in 0..6 {
        let mut acc = [[zero; 6]; GROUP];
        for k in 0..depth {
            // SAFETY: position a·6 + b of phase channel k lies inside `v`, and its weights
            // inside `u` (asserted).
            unsafe {
                let vk = v.as_ptr().add((k * POSITIONS + a * 6) * LANES);
                let uk = u.as_ptr().add(a * 6 * u_stride + k * GROUP);
                for b in 0..6 {
                    let x = _mm512_loadu_ps(vk.add(b * LANES));
                    let w = uk.add(b * u_stride);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        acc[b] = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(r)), x, acc[b]);
                    }
                }
            }
        }
        for (r, acc) in acc.into_iter().enumerate() {
            rows[r][a] = output_column_3(acc);
        }
    }
    // Zero times every value written: zero while they are all finite, NaN after any is not.
    let mut poison = zero;
    let out = y.as_mut_ptr();
    for (r, rows) in rows.iter().enumerate() {
        for j in 0..3 {
            let column = [
                rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j],
            ];
            for (i, value) in output_column_3(column).into_iter().enumerate() {
                poison = _mm512_fmadd_ps(zero, value, poison);
                // SAFETY: value (r, 3i + j) lies inside `y`'s GROUP·9 vectors.
                unsafe { _mm512_storeu_ps(out.add((r * 9 + 3 * i + j) * LANES), value) };
            }
        }
    }
    _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(poison, poison) == 0
}

/// `Aᵀ·m` for one column `m` of a 6×6 product, F(3×3, 4×4)'s
/// `Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 1]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn output_column_3(m: [__m512; 6]) -> [__m512; 3] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12) = (_mm512_add_ps(m1, m2), _mm512_sub_ps(m1, m2));
    let (s34, d34) = (_mm512_add_ps(m3, m4), _mm512_sub_ps(m3, m4));
    [
        _mm512_add_ps(_mm512_add_ps(m0, s12), s34),
        _mm512_fmadd_ps(_mm512_set1_ps(2.0), d34, d12),
        _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(4.0), s34, s12), m5),
    ]
}

/// Permutations that interleave three column phases into output vectors: output vector `v`
/// of a group of 48 columns holds, in slot `s`, column `16v + s = 3i + j`, phase `j`'s tile
/// `i`. `first[v]` picks phases 0 and 1 (of two vectors), `second[v]` phase 2 into the slots
/// of `third[v]`.
struct Interleave {
    first: [[i32; LANES]; 3],
    second: [[i32; LANES]; 3],
    third: [__mmask16; 3],
}

/// The three-phase interleave's tables.
const INTERLEAVE: Interleave = {
    let mut tables = Interleave {
        first: [[0; LANES]; 3],
        second: [[0; LANES]; 3],
        third: [0; 3],
    };
    let mut v = 0;
    while v < 3 {
        let mut s = 0;
        while s < LANES {
            let column = 16 * v + s;
            let (i, j) = ((column / 3) as i32, column % 3);
            tables.second[v][s] = i;
            match j {
                0 => tables.first[v][s] = i,
                1 => tables.first[v][s] = 16 + i,
                _ => tables.third[v] |= 1 << s,
            }
            s += 1;
        }
        v += 1;
    }
    tables
};

/// Writes one output row from its three column phases (`dst[3t + j] = phases[j][t]`):
/// `relu?(y + bias + beta·old)`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn finish_row(
    dst: &mut [f32],
    phases: [&[f32]; 3],
    bias: f32,
    beta: f32,
    relu: bool,
) {
    let len = dst.len();
    assert!(
        phases.iter().all(|p| p.len() >= len.div_ceil(3)),
        "stride-phase output columns are too few"
    );
    // SAFETY: reading 16 i32 from each 16-element table; AVX-512F is enabled here.
    let (first, second) = unsafe {
        (
            INTERLEAVE
                .first
                .map(|slots| _mm512_loadu_si512(slots.as_ptr().cast())),
            INTERLEAVE
                .second
                .map(|slots| _mm512_loadu_si512(slots.as_ptr().cast())),
        )
    };
    let third = INTERLEAVE.third;
    let bias_v = _mm512_set1_ps(bias);
    let mut x = 0;
    while x < len {
        // Output columns x..x + 48 come from tiles x/3..x/3 + 16.
        let tile = x / 3;
        let load = |p: &[f32]| {
            let live = lane_mask(p.len().min(tile + LANES).max(tile) - tile);
            // SAFETY: the mask keeps the load inside `p`.
            unsafe { _mm512_maskz_loadu_ps(live, p.as_ptr().add(tile)) }
        };
        let (p0, p1, p2) = (load(phases[0]), load(phases[1]), load(phases[2]));
        for v in 0..3 {
            let start = x + v * LANES;
            if start >= len {
                break;
            }
            let store = lane_mask(len - start);
            let pairs = _mm512_permutex2var_ps(p0, first[v], p1);
            let y = _mm512_mask_permutexvar_ps(pairs, third[v], second[v], p2);
            // SAFETY: the store's mask keeps it inside `dst` (columns start.. below `len`).
            unsafe { finish_vector(dst.as_mut_ptr().add(start), store, y, bias_v, beta, relu) };
        }
        x += 3 * LANES;
    }
}
