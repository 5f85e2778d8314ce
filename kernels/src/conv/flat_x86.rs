//! The register tiles of the flat path. On AVX2: up to 6 output pixels × 16 output channels in
//! twelve ymm accumulators (× 8 channels in six, for a group's last narrow panel). On AVX-512:
//! up to 8 output pixels × 32 output channels (two panels) in 16 zmm accumulators, or, for
//! up to 14 consecutive pixels of one output row, 28 accumulators from one base. Each
//! pixel's input value is broadcast from the layout through a table of per-depth offsets; the
//! weights are a panel of 16 channels per depth index, one cache line.

use std::arch::x86_64::*;

use crate::prefetch::Ahead;

/// Output channels of a weight panel (the row count its weights are packed with).
pub(super) const CHANNELS: usize = 16;
/// Output channels of the narrow tile: one ymm vector.
pub(super) const CHANNELS_NARROW: usize = 8;
/// Most output pixels of an AVX2 tile.
pub(super) const PIXELS: usize = 6;
/// Most output pixels of an AVX-512 tile. With 12, LLVM hoists the twelve broadcasts above
/// the multiply-adds and spills accumulators (0.6× the speed); 8 fits the 32 registers.
/// In L1, 8 px × 2 panels runs at 177 GFLOP/s per core, 6 px × 4 panels at 181, 8 × 3 at
/// 184; on the resnet preset they are within noise of each other.
pub(super) const PIXELS_WIDE: usize = 8;
/// Weight panels an AVX-512 tile covers at most.
pub(super) const PANELS_WIDE: usize = 2;

/// A register tile's signature: see [`tile`] and [`tile_wide`].
pub(super) type TileFn = unsafe fn(
    usize,
    *const f32,
    *const f32,
    *const usize,
    *const usize,
    *mut f32,
    usize,
    bool,
    Ahead,
);

/// The AVX2 tile for `pixels` output pixels (1 to [`PIXELS`]) and `channels` output channels
/// left in the panel: the full one, or the narrow one when at most [`CHANNELS_NARROW`] remain.
pub(super) fn tile_for(pixels: usize, channels: usize) -> TileFn {
    let narrow = channels <= CHANNELS_NARROW;
    match (pixels, narrow) {
        (1, false) => tile::<2, 1>,
        (2, false) => tile::<2, 2>,
        (3, false) => tile::<2, 3>,
        (4, false) => tile::<2, 4>,
        (5, false) => tile::<2, 5>,
        (_, false) => tile::<2, 6>,
        (1, true) => tile::<1, 1>,
        (2, true) => tile::<1, 2>,
        (3, true) => tile::<1, 3>,
        (4, true) => tile::<1, 4>,
        (5, true) => tile::<1, 5>,
        (_, true) => tile::<1, 6>,
    }
}

/// The AVX-512 tile for `pixels` output pixels (1 to [`PIXELS_WIDE`]) and `panels` weight
/// panels (1 to [`PANELS_WIDE`]).
pub(super) fn tile_wide_for(pixels: usize, panels: usize) -> TileFn {
    macro_rules! by_pixels {
        ($v:literal) => {
            match pixels {
                1 => tile_wide::<$v, 1>,
                2 => tile_wide::<$v, 2>,
                3 => tile_wide::<$v, 3>,
                4 => tile_wide::<$v, 4>,
                5 => tile_wide::<$v, 5>,
                6 => tile_wide::<$v, 6>,
                7 => tile_wide::<$v, 7>,
                _ => tile_wide::<$v, 8>,
            }
        };
    }
    if panels >= PANELS_WIDE {
        by_pixels!(2)
    } else {
        by_pixels!(1)
    }
}

/// Most output pixels of an AVX-512 row tile ([`tile_rows`]): read from one base, 14 pixels
/// × 2 panels take 28 accumulators, 2 weight and 1 broadcast register and compile without
/// spills (12 pixels with a base each did not: see [`PIXELS_WIDE`]). Against the 8-pixel
/// tile, alternating in one process: resnet-preset 3×3 layers 1.01–1.19× by median, one
/// thread and two; ResNet-50 1.01–1.03× and VGG-19 1.04–1.20× whole.
pub(super) const PIXELS_ROW: usize = 14;

/// The AVX-512 row tile for `pixels` consecutive outputs of one row (9 to [`PIXELS_ROW`]) and
/// `panels` weight panels (1 or 2).
pub(super) fn tile_row_for(pixels: usize, panels: usize) -> TileFn {
    debug_assert!(
        (9..=PIXELS_ROW).contains(&pixels),
        "row tile of {pixels} outputs"
    );
    macro_rules! by_pixels {
        ($v:literal) => {
            match pixels {
                ..=9 => tile_rows::<$v, 9, 1>,
                10 => tile_rows::<$v, 10, 1>,
                11 => tile_rows::<$v, 11, 1>,
                12 => tile_rows::<$v, 12, 1>,
                13 => tile_rows::<$v, 13, 1>,
                _ => tile_rows::<$v, 14, 1>,
            }
        };
    }
    if panels >= PANELS_WIDE {
        by_pixels!(2)
    } else {
        by_pixels!(1)
    }
}

/// The AVX-512 tile for two rows of `width` consecutive outputs each (5 to
/// [`PIXELS_ROW`] / 2) and `panels` weight panels (1 or 2).
pub(super) fn tile_two_rows_for(width: usize, panels: usize) -> TileFn {
    debug_assert!(
        (5..=PIXELS_ROW / 2).contains(&width),
        "two-row tile {width} wide"
    );
    macro_rules! by_width {
        ($v:literal) => {
            match width {
                ..=5 => tile_rows::<$v, 5, 2>,
                6 => tile_rows::<$v, 6, 2>,
                _ => tile_rows::<$v, 7, 2>,
            }
        };
    }
    if panels >= PANELS_WIDE {
        by_width!(2)
    } else {
        by_width!(1)
    }
}

/// Where each of a tile's `P` pixels reads its input: `b + cols[i]`.
///
/// # Safety
/// `cols` must hold `P` entries, and `b + cols[i]` must stay inside the allocation `b` points
/// into.
#[inline(always)]
unsafe fn pixel_bases<const P: usize>(b: *const f32, cols: *const usize) -> [*const f32; P] {
    // SAFETY: i < P entries of `cols`; each base is inside the layout by the contract.
    std::array::from_fn(|i| unsafe { b.add(*cols.add(i)) })
}

/// `c[0..P][0..8·V] (+)= X · w`: pixel `i` reads its value of depth index `k` at
/// `b + cols[i] + offsets[k]`, and `w` is a packed panel ([`CHANNELS`] values per depth index,
/// of which the first `8·V` are used). Row `i` of `c` (pixel `i`) starts at `c + i·CHANNELS`.
///
/// # Safety
/// AVX2 and FMA must be available; `w` must hold `CHANNELS·kc` floats, `cols` `P` entries and
/// `offsets` `kc` entries; `b + cols[i] + offsets[k]` must be readable for every `i < P` and
/// `k < kc`; `c` must be writable for `P` rows of `8·V` floats `CHANNELS` apart (and readable
/// with `accumulate`). `_c_step` is unused: the tile covers one panel.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile<const V: usize, const P: usize>(
    kc: usize,
    w: *const f32,
    b: *const f32,
    cols: *const usize,
    offsets: *const usize,
    c: *mut f32,
    _c_step: usize,
    accumulate: bool,
    ahead: Ahead,
) {
    // SAFETY: `cols` holds P entries, each a column inside the layout (the contract).
    let bases = unsafe { pixel_bases::<P>(b, cols) };
    let mut acc = [[_mm256_setzero_ps(); V]; P];
    let mut ahead = ahead.walk(kc);
    for k in 0..kc {
        ahead.step();
        // SAFETY: k < kc: the offset, the input values it points to and the panel step are in
        // bounds by the caller's contract.
        unsafe {
            let offset = *offsets.add(k);
            let step = w.add(CHANNELS * k);
            let mut wv = [_mm256_setzero_ps(); V];
            for (v, value) in wv.iter_mut().enumerate() {
                *value = _mm256_loadu_ps(step.add(8 * v));
            }
            for (sum, base) in acc.iter_mut().zip(&bases) {
                let x = _mm256_broadcast_ss(&*base.add(offset));
                for (s, &wv) in sum.iter_mut().zip(&wv) {
                    *s = _mm256_fmadd_ps(x, wv, *s);
                }
            }
        }
    }
    for (i, sum) in acc.iter().enumerate() {
        // SAFETY: row i of the tile is inside C by the caller's contract.
        unsafe {
            let row = c.add(i * CHANNELS);
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

/// `c[v][0..P][0..16] (+)= X · w[v]` for the `V` panels `w[v] = w + v·CHANNELS·kc` (panels
/// of one depth block lie one after the other): pixel `i` reads its value of depth index `k`
/// at `b + cols[i] + offsets[k]`. Row `i` of panel `v`'s tile starts at
/// `c + v·c_step + i·CHANNELS`.
///
/// # Safety
/// AVX-512F must be available; `w` must hold `V·CHANNELS·kc` floats, `cols` `P` entries and
/// `offsets` `kc` entries; `b + cols[i] + offsets[k]` must be readable for every `i < P` and
/// `k < kc`; `c + v·c_step` must be writable for `P` rows of [`CHANNELS`] floats (and
/// readable with `accumulate`) for every `v < V`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_wide<const V: usize, const P: usize>(
    kc: usize,
    w: *const f32,
    b: *const f32,
    cols: *const usize,
    offsets: *const usize,
    c: *mut f32,
    c_step: usize,
    accumulate: bool,
    ahead: Ahead,
) {
    // SAFETY: `cols` holds P entries, each a column inside the layout (the contract).
    let bases = unsafe { pixel_bases::<P>(b, cols) };
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    let mut ahead = ahead.walk(kc);
    for k in 0..kc {
        ahead.step();
        // SAFETY: k < kc: the offset, the input values it points to and each panel's step
        // are in bounds by the caller's contract.
        unsafe {
            let offset = *offsets.add(k);
            let wv = panel_weights::<V>(w, kc, k);
            for (sum, base) in acc.iter_mut().zip(&bases) {
                let x = _mm512_set1_ps(*base.add(offset));
                for (s, &wv) in sum.iter_mut().zip(&wv) {
                    *s = _mm512_fmadd_ps(x, wv, *s);
                }
            }
        }
    }
    for (i, sum) in acc.iter().enumerate() {
        // SAFETY: row i of each panel's tile is inside C by the caller's contract.
        unsafe { store_pixel(sum, c, c_step, i, accumulate) };
    }
}

/// [`tile_wide`] for `R` rows of `L` consecutive outputs each: pixel `r·L + i` reads at
/// `b + cols[r·L] + i + offsets[k]`, so one base per row serves the whole tile and up to 14
/// pixels (28 accumulators) fit the registers, each panel's cache line of weights feeding 14
/// multiply-adds instead of 8.
///
/// # Safety
/// As [`tile_wide`] for `R·L` pixels, with `cols[r·L + i] = cols[r·L] + i` for every `r < R`
/// and `i < L` (only `cols[r·L]` is read).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_rows<const V: usize, const L: usize, const R: usize>(
    kc: usize,
    w: *const f32,
    b: *const f32,
    cols: *const usize,
    offsets: *const usize,
    c: *mut f32,
    c_step: usize,
    accumulate: bool,
    ahead: Ahead,
) {
    // SAFETY: each `cols[r·L]` is a column inside the layout (the contract).
    let bases: [*const f32; R] = std::array::from_fn(|r| unsafe { b.add(*cols.add(r * L)) });
    let mut acc = [[[_mm512_setzero_ps(); V]; L]; R];
    let mut ahead = ahead.walk(kc);
    for k in 0..kc {
        ahead.step();
        // SAFETY: k < kc: the offset, the L consecutive input values it points to in each
        // row and each panel's step are in bounds by the caller's contract.
        unsafe {
            let offset = *offsets.add(k);
            let wv = panel_weights::<V>(w, kc, k);
            for (row_acc, base) in acc.iter_mut().zip(&bases) {
                let row = base.add(offset);
                for (i, sum) in row_acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*row.add(i));
                    for (s, &wv) in sum.iter_mut().zip(&wv) {
                        *s = _mm512_fmadd_ps(x, wv, *s);
                    }
                }
            }
        }
    }
    for (r, row_acc) in acc.iter().enumerate() {
        for (l, sum) in row_acc.iter().enumerate() {
            // SAFETY: pixel r·L + l of each panel's tile is inside C by the caller's contract.
            unsafe { store_pixel(sum, c, c_step, r * L + l, accumulate) };
        }
    }
}

/// The weight vectors of depth index `k` of `V` panels packed one after the other
/// (`CHANNELS·kc` floats each).
///
/// # Safety
/// AVX-512F must be available; `w` must hold `V·CHANNELS·kc` floats and `k < kc`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn panel_weights<const V: usize>(w: *const f32, kc: usize, k: usize) -> [__m512; V] {
    // SAFETY: panel v's step k lies inside `w` by the contract.
    std::array::from_fn(|v| unsafe { _mm512_loadu_ps(w.add(CHANNELS * (v * kc + k))) })
}

/// Writes pixel `i`'s accumulators, one vector per panel, to `c + v·c_step + i·CHANNELS`
/// (added to the values there if `accumulate`).
///
/// # Safety
/// AVX-512F must be available; each of those rows of [`CHANNELS`] floats must be writable
/// (and readable with `accumulate`).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_pixel<const V: usize>(
    sum: &[__m512; V],
    c: *mut f32,
    c_step: usize,
    i: usize,
    accumulate: bool,
) {
    for (v, &value) in sum.iter().enumerate() {
        // SAFETY: the row is inside C by the contract.
        unsafe {
            let row = c.add(v * c_step + i * CHANNELS);
            let value = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(row), value)
            } else {
                value
            };
            _mm512_storeu_ps(row, value);
        }
    }
}

/// [`finish_block`] on `blocks` consecutive blocks of 8 outputs: block `b` reads the tile
/// from `src + b·8·CHANNELS` and writes `dst[j] + b·8`. One call per 8 channels of a task,
/// so the destinations and biases are set up once, not once per block.
///
/// # Safety
/// AVX2 must be available; `src` must be readable for `8·blocks` rows of 8 floats `CHANNELS`
/// apart, and each `dst[j]` readable and writable for `8·blocks` floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn finish_blocks(
    src: *const f32,
    dst: [*mut f32; 8],
    blocks: usize,
    bias: [f32; 8],
    beta: f32,
    relu: bool,
) {
    for b in 0..blocks {
        // SAFETY: block b < blocks lies inside `src` and every `dst[j]` by the contract.
        unsafe {
            let rows = dst.map(|d| d.add(b * 8));
            finish_block(src.add(b * 8 * CHANNELS), rows, bias, beta, relu);
        }
    }
}

/// Writes 8 outputs × 8 channels of a tile to the output:
/// `dst[j][i] = relu?(src[i·CHANNELS + j] + beta·dst[j][i] + bias[j])` for `i, j < 8`, the
/// tile's values transposed in registers.
///
/// # Safety
/// AVX2 must be available; `src` must be readable for 8 rows of 8 floats `CHANNELS` apart,
/// and each `dst[j]` readable and writable for 8 floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn finish_block(src: *const f32, dst: [*mut f32; 8], bias: [f32; 8], beta: f32, relu: bool) {
    // SAFETY: the 8 rows of `src` are readable by the caller's contract.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * CHANNELS)) });
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let s = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    // Row j: channel j of the 8 outputs.
    let rows = [
        _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
        _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
    ];
    let (zero, scale) = (_mm256_setzero_ps(), _mm256_set1_ps(beta));
    for ((row, dst), bias) in rows.into_iter().zip(dst).zip(bias) {
        // SAFETY: `dst` holds 8 readable and writable floats by the caller's contract.
        unsafe {
            let with_old = if beta != 0.0 {
                _mm256_add_ps(row, _mm256_mul_ps(scale, _mm256_loadu_ps(dst)))
            } else {
                row
            };
            let sum = _mm256_add_ps(with_old, _mm256_set1_ps(bias));
            // max(0, x) returns x when x is NaN, and keeps -0.0, as the scalar epilogue does.
            let value = if relu { _mm256_max_ps(zero, sum) } else { sum };
            _mm256_storeu_ps(dst, value);
        }
    }
}
