//! Products with very few rows (`m ≤ 8`) and B stored column by column (a dense layer's
//! `x·Wᵀ`): B is streamed once from where it lies, never packed.
//!
//! Each output accumulates its depth block in the order the microkernels do (one fused
//! multiply-add per step, from zero, then `alpha·sum + beta·C`, blocks `kc` deep), so the
//! results are bit-identical with the packed path. Eight columns at a time are read as eight
//! contiguous runs and transposed in registers. Up to four rows run in the sixteen AVX2
//! registers; five to eight rows (eight accumulators beside the eight transposed columns) use
//! AVX-512VL's thirty-two where the call allows it, else AVX2 with a spilled register.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Most rows of A the path takes.
pub(crate) const MAX_ROWS: usize = 8;
/// Most rows run with the four-row register block.
#[cfg(target_arch = "x86_64")]
const NARROW_ROWS: usize = 4;

/// One task's share: columns `cols` of `C[m×n] (+)= alpha·A·B` for one depth block.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Block<'a> {
    /// A's rows for this depth block, row `i` at `a[i·kc..]`.
    pub a: &'a [f32],
    pub m: usize,
    pub kc: usize,
    /// B's columns: column `j`, step `k` of this block at `b[j·cs + k]`.
    pub b: &'a [f32],
    pub cs: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Whether AVX-512F and AVX-512VL may be used (the call runs on the AVX-512 path).
    pub wide: bool,
}

/// Runs columns `cols` of one depth block; `store(i, j, sum)` receives each finished sum
/// and applies `alpha`, `beta` and C.
///
/// # Safety
/// AVX2 and FMA must be available, and AVX-512F and AVX-512VL too when `blk.wide`; `b` must
/// hold every column of `cols` for `kc` steps; `blk.m <= MAX_ROWS`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn columns(
    blk: &Block<'_>,
    cols: std::ops::Range<usize>,
    store: &mut dyn FnMut(usize, usize, f32),
) {
    debug_assert!(blk.m <= MAX_ROWS, "gemv takes at most {MAX_ROWS} rows");
    // SAFETY: the features each variant enables are available, as the caller promises.
    unsafe {
        if blk.m <= NARROW_ROWS {
            columns_avx2::<NARROW_ROWS>(blk, cols, store);
        } else if blk.wide {
            columns_avx512::<MAX_ROWS>(blk, cols, store);
        } else {
            columns_avx2::<MAX_ROWS>(blk, cols, store);
        }
    }
}

/// [`columns_of`] compiled for AVX2 and FMA.
///
/// # Safety
/// As [`columns`], with AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2<const R: usize>(
    blk: &Block<'_>,
    cols: std::ops::Range<usize>,
    store: &mut dyn FnMut(usize, usize, f32),
) {
    // SAFETY: as the caller promises.
    unsafe { columns_of::<R>(blk, cols, store) }
}

/// [`columns_of`] compiled for AVX-512VL (thirty-two vector registers).
///
/// # Safety
/// As [`columns`], with AVX2, FMA, AVX-512F and AVX-512VL available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn columns_avx512<const R: usize>(
    blk: &Block<'_>,
    cols: std::ops::Range<usize>,
    store: &mut dyn FnMut(usize, usize, f32),
) {
    // SAFETY: as the caller promises.
    unsafe { columns_of::<R>(blk, cols, store) }
}

/// The columns with `R ≥ m` accumulators per group of eight columns.
///
/// # Safety
/// As [`columns`]; inlined into a function that enables at least AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn columns_of<const R: usize>(
    blk: &Block<'_>,
    cols: std::ops::Range<usize>,
    store: &mut dyn FnMut(usize, usize, f32),
) {
    let (m, kc) = (blk.m, blk.kc);
    assert!(
        m <= R && blk.a.len() >= m * kc,
        "gemv: {m} rows for {R} accumulators, or A shorter than m·kc"
    );
    // SAFETY (whole body): the enclosing function enables AVX2 and FMA (the caller's
    // promise); the loads of B read columns j..j+8, which hold kc steps each (caller), at
    // steps k..k+8 <= kc; those of A rows i < m at steps below kc (asserted above); `v` and
    // `sums` hold eight floats.
    unsafe {
        // Row i of A at rows[i] (rows past m are never read).
        let rows: [*const f32; R] = std::array::from_fn(|i| blk.a.as_ptr().wrapping_add(i * kc));
        let mut j = cols.start;
        while j + 8 <= cols.end {
            let mut acc = [_mm256_setzero_ps(); R];
            let base: [usize; 8] = std::array::from_fn(|c| (j + c) * blk.cs);
            let mut k = 0;
            while k + 8 <= kc {
                // Columns j..j+8 hold kc steps each (caller), k + 8 <= kc.
                let r: [__m256; 8] =
                    std::array::from_fn(|c| _mm256_loadu_ps(blk.b.as_ptr().add(base[c] + k)));
                let t = transpose8(r);
                for (kk, tk) in t.iter().enumerate() {
                    for (i, acc) in acc.iter_mut().enumerate().take(m) {
                        // i < m and k + kk < kc: inside A's m·kc values (caller).
                        let ai = _mm256_set1_ps(*rows[i].add(k + kk));
                        *acc = _mm256_fmadd_ps(ai, *tk, *acc);
                    }
                }
                k += 8;
            }
            while k < kc {
                let v: [f32; 8] = std::array::from_fn(|c| blk.b[base[c] + k]);
                let tk = _mm256_loadu_ps(v.as_ptr());
                for (i, acc) in acc.iter_mut().enumerate().take(m) {
                    let ai = _mm256_set1_ps(blk.a[i * kc + k]);
                    *acc = _mm256_fmadd_ps(ai, tk, *acc);
                }
                k += 1;
            }
            for (i, acc) in acc.iter().enumerate().take(m) {
                let mut sums = [0.0f32; 8];
                _mm256_storeu_ps(sums.as_mut_ptr(), *acc);
                for (c, &s) in sums.iter().enumerate() {
                    store(i, j + c, s);
                }
            }
            j += 8;
        }
        for j in j..cols.end {
            let col = &blk.b[j * blk.cs..][..kc];
            for i in 0..m {
                let a = &blk.a[i * kc..][..kc];
                let mut sum = 0.0f32;
                for (x, y) in a.iter().zip(col) {
                    sum = x.mul_add(*y, sum);
                }
                store(i, j, sum);
            }
        }
    }
}

/// The 8×8 transpose of eight rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}
