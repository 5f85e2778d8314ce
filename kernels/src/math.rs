//! Vectorisable f32 transcendentals and the run-time instruction-set dispatch they run under.
//!
//! Every function here is branch-free (both sides of a range split are computed and one is
//! selected), works on plain `f32` and is `#[inline(always)]`, so a loop over a slice that calls
//! it is auto-vectorised by LLVM. The loops themselves live in [`Kernel::run`] implementations,
//! which [`dispatch`] compiles three times: for AVX-512F, for AVX2 + FMA, and for the baseline
//! target (NEON on aarch64). `FMA` selects fused multiply-adds in the polynomial evaluations.
//!
//! Accuracy (max relative error against f64 over dense sweeps wherever the result is a normal
//! f32, see `tests/elementwise.rs`): exp 8e-8, expm1 1.1e-7, tanh 1.4e-7, sigmoid 1.8e-7,
//! erf 1.8e-7, erfc 3.4e-7, gelu 4.3e-7, gelu_tanh 2.2e-7, silu 2e-7. Arguments that would be
//! rounded before an exponential with a large argument (`-x²` in erfc, `x - max` in softmax,
//! the cubic of gelu_tanh) are carried as exact hi + lo pairs, so the far tails keep this
//! accuracy. NaN in gives NaN out; ±inf give the mathematical limits.

use crate::Isa;

/// Elements below which a kernel stays on the calling thread.
pub(crate) const PAR_THRESHOLD: usize = 1 << 16;
/// Elements handed to one rayon task when a kernel does split.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

/// Whether a kernel over `elements` values should split across the current rayon pool.
#[inline]
pub(crate) fn go_parallel(elements: usize) -> bool {
    elements >= PAR_THRESHOLD && rayon::current_num_threads() > 1
}

/// A piece of work whose loops are compiled once per instruction set by [`dispatch`].
pub(crate) trait Kernel {
    /// What the work returns.
    type Output;
    /// Runs the work; `FMA` says whether fused multiply-add instructions may be used.
    /// Implementations must be `#[inline(always)]` so that they inherit the caller's features.
    fn run<const FMA: bool>(self) -> Self::Output;
}

/// Runs `kernel` compiled for `isa` (falling back to the baseline when the CPU lacks it).
#[inline]
pub(crate) fn dispatch<K: Kernel>(isa: Isa, kernel: K) -> K::Output {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if x86::has_avx512() => {
            // SAFETY: `has_avx512` checked at run time that the CPU has AVX-512F, AVX2 and FMA.
            unsafe { x86::run_avx512(kernel) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if x86::has_avx2() => {
            // SAFETY: `has_avx2` checked at run time that the CPU has AVX2 and FMA.
            unsafe { x86::run_avx2(kernel) }
        }
        // AArch64 always has NEON and fused multiply-add; the baseline build vectorises with it.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => kernel.run::<true>(),
        _ => kernel.run::<false>(),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Kernel;

    /// AVX-512F with AVX2 and FMA (every AVX-512 CPU has both, but we check anyway).
    #[inline]
    pub(super) fn has_avx512() -> bool {
        std::arch::is_x86_feature_detected!("avx512f") && has_avx2()
    }

    /// AVX2 with FMA.
    #[inline]
    pub(super) fn has_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Runs the kernel with AVX-512F code generation.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
        kernel.run::<true>()
    }

    /// Runs the kernel with AVX2 + FMA code generation.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
        kernel.run::<true>()
    }
}

/// `a * b + c`, fused when `FMA`.
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Clamps `x` into `[lo, hi]`, letting NaN through (compiles to max/min with the NaN-keeping
/// operand order).
#[inline(always)]
pub(crate) fn clamp_nan(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x < lo { lo } else { x };
    if x > hi { hi } else { x }
}

/// Max that propagates NaN from either side.
#[inline(always)]
pub(crate) fn max_nan(acc: f32, v: f32) -> f32 {
    if v > acc || v.is_nan() { v } else { acc }
}

/// Max that ignores NaN in `v` (used where NaN propagates by other means).
#[inline(always)]
pub(crate) fn max_fast(acc: f32, v: f32) -> f32 {
    if v > acc { v } else { acc }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 2⁻²⁴, undoing the scale of [`exp_parts_scaled`].
const TWO_POW_M24: f32 = 1.0 / 16_777_216.0;
/// ln 2 split for Cody-Waite reduction: `LN2_HI` has 9 significant bits, so `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds a float of magnitude < 2²² to an integer held in the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Splits `x·log2(e)` into an integer `n` (as float and as i32) and the reduced argument
/// `r = x - n·ln2`, |r| ≤ ln2/2 (up to rounding of the product). Needs |x| < 2²¹.
#[inline(always)]
fn reduce<const FMA: bool>(x: f32) -> (f32, i32, f32) {
    let t = fmadd::<FMA>(x, LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = fmadd::<FMA>(n, -LN2_HI, x);
    let r = fmadd::<FMA>(n, -LN2_LO, r);
    (n, ni, r)
}

/// `e^r - 1` for |r| ≤ ln2/2 (Cephes minimax, relative error ≈ 3e-9 before rounding).
#[inline(always)]
fn expm1_reduced<const FMA: bool>(r: f32) -> f32 {
    let mut p = 1.987_569_2e-4f32;
    p = fmadd::<FMA>(p, r, 1.398_199_9e-3);
    p = fmadd::<FMA>(p, r, 8.333_452e-3);
    p = fmadd::<FMA>(p, r, 4.166_579_6e-2);
    p = fmadd::<FMA>(p, r, 1.666_666_5e-1);
    p = fmadd::<FMA>(p, r, 0.5);
    fmadd::<FMA>(p, r * r, r)
}

/// `2^n` for an `n` whose biased exponent `n + 127` lies in 1..=254.
#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits((n.wrapping_add(127) << 23) as u32)
}

/// `e^(hi + lo)` where `|lo| ≲ 2` carries low-order bits that `hi` alone cannot hold (used to
/// feed an exactly split `-x²`). The reduction `hi - n·ln2` is exact, `lo` joins afterwards.
#[inline(always)]
pub(crate) fn exp_parts<const FMA: bool>(hi: f32, lo: f32) -> f32 {
    exp_parts_scaled::<FMA>(hi, lo, 0)
}

/// `2^k · e^(hi + lo)` for `0 ≤ k ≤ 24`: lets a caller keep a tiny exponential normal until it
/// has multiplied it by its other factors, so the product is not rounded as a subnormal.
#[inline(always)]
fn exp_parts_scaled<const FMA: bool>(hi: f32, lo: f32, k: i32) -> f32 {
    // Below -104 the result is 0 and above 89 it is inf; NaN passes through the clamp.
    let hi = clamp_nan(hi, -104.0, 89.0);
    let t = fmadd::<FMA>(hi + lo, LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = fmadd::<FMA>(n, -LN2_HI, hi);
    let r = fmadd::<FMA>(n, -LN2_LO, r) + lo;
    let p = expm1_reduced::<FMA>(r) + 1.0;
    // n lies in [-153, 131]: scale in two halves so that both powers stay normal, which gives
    // correct gradual underflow and overflow to inf.
    let ni = ni.wrapping_add(k);
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    p * pow2i(n1) * pow2i(n2)
}

/// `e^x`.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    exp_parts::<FMA>(x, 0.0)
}

/// `e^(x - m)` with the subtraction carried exactly (TwoSum), so that a large difference does
/// not cost relative accuracy (softmax: `x - m` down to -87 would otherwise lose ~2e-6).
#[inline(always)]
pub(crate) fn exp_diff<const FMA: bool>(x: f32, m: f32) -> f32 {
    let d = x - m;
    let bx = d + m;
    let bm = d - bx;
    let err = (x - bx) - (m + bm);
    // Infinite operands make the error term NaN; the difference alone is then right.
    let err = if err.is_nan() { 0.0 } else { err };
    exp_parts::<FMA>(d, err)
}

/// `e^x - 1`, accurate near zero.
#[inline(always)]
pub(crate) fn expm1<const FMA: bool>(x: f32) -> f32 {
    // expm1(-30) rounds to -1; above 89 the result is inf.
    let x = clamp_nan(x, -30.0, 89.0);
    let (_, ni, r) = reduce::<FMA>(x);
    let q = expm1_reduced::<FMA>(r);
    // e^x - 1 = 2·(2^(n-1)·q + (2^(n-1) - 1/2)); 2^(n-1) stays finite for n = 128.
    let half = pow2i(ni.wrapping_sub(1));
    2.0 * fmadd::<FMA>(half, q, half - 0.5)
}

/// `tanh(x)`: an odd polynomial below |x| = 0.625, `1 - 2/(e^{2|x|} + 1)` above.
#[inline(always)]
pub(crate) fn tanh<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = fmadd::<FMA>(p, z, 2.063_909e-2);
    p = fmadd::<FMA>(p, z, -5.373_971_6e-2);
    p = fmadd::<FMA>(p, z, 1.333_144_2e-1);
    p = fmadd::<FMA>(p, z, -3.333_328e-1);
    let small = fmadd::<FMA>(p * z, x, x);
    let e = exp::<FMA>(a + a);
    let large = 1.0 - 2.0 / (e + 1.0);
    // tanh is odd; the sign also makes tanh(-0) = -0.
    (if a < 0.625 { small } else { large }).copysign(x)
}

/// The logistic function `1 / (1 + e^-x)`, accurate in both tails.
#[inline(always)]
pub(crate) fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    let e = exp::<FMA>(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 { s } else { e * s }
}

/// `erf(x)` for |x| ≤ 1: `x·P(x²)` (Cephes, relative error ≈ 1e-9 before rounding).
#[inline(always)]
fn erf_small<const FMA: bool>(x: f32) -> f32 {
    let z = x * x;
    let mut p = 7.853_861_4e-5f32;
    p = fmadd::<FMA>(p, z, -8.010_193_6e-4);
    p = fmadd::<FMA>(p, z, 5.188_327_7e-3);
    p = fmadd::<FMA>(p, z, -2.685_381_2e-2);
    p = fmadd::<FMA>(p, z, 1.128_358_5e-1);
    p = fmadd::<FMA>(p, z, -3.761_262_6e-1);
    p = fmadd::<FMA>(p, z, std::f32::consts::FRAC_2_SQRT_PI);
    x * p
}

/// Splits `v` into `hi + lo` with `hi` holding 12 significant bits, so `hi²` and `2·hi·lo` are
/// exact in f32.
#[inline(always)]
fn split12(v: f32) -> (f32, f32) {
    let hi = f32::from_bits(v.to_bits() & 0xFFFF_F000);
    (hi, v - hi)
}

/// `(hi, lo)` with `hi + lo = v²` to about 2⁻⁴⁸ relative.
#[inline(always)]
fn square_parts<const FMA: bool>(v: f32) -> (f32, f32) {
    let (h, l) = split12(v);
    (h * h, fmadd::<FMA>(h + h, l, l * l))
}

/// `erfc(a)` for `0 ≤ a ≤ 10.5` given `a² = sq_hi + sq_lo` exactly: the Chebyshev form
/// `t·exp(-a² - 1.26551223 + t·P(t))`, `t = 1/(1 + a/2)` (relative error ≤ 1.2e-7 before rounding;
/// Numerical Recipes `erfcc`). Keeping `a²` split stops the rounding of `a²` from costing
/// accuracy in the far tail.
#[inline(always)]
fn erfc_tail<const FMA: bool>(a: f32, sq_hi: f32, sq_lo: f32) -> f32 {
    erfc_tail_scaled::<FMA>(a, sq_hi, sq_lo, 0)
}

/// [`erfc_tail`] times `2^k` (see [`exp_parts_scaled`]).
#[inline(always)]
fn erfc_tail_scaled<const FMA: bool>(a: f32, sq_hi: f32, sq_lo: f32, k: i32) -> f32 {
    let t = 1.0 / fmadd::<FMA>(0.5, a, 1.0);
    let mut p = 0.170_872_77f32;
    p = fmadd::<FMA>(p, t, -0.822_152_23);
    p = fmadd::<FMA>(p, t, 1.488_515_9);
    p = fmadd::<FMA>(p, t, -1.135_204);
    p = fmadd::<FMA>(p, t, 0.278_868_07);
    p = fmadd::<FMA>(p, t, -0.186_288_06);
    p = fmadd::<FMA>(p, t, 0.096_784_18);
    p = fmadd::<FMA>(p, t, 0.374_091_96);
    p = fmadd::<FMA>(p, t, 1.000_023_7);
    let lo = fmadd::<FMA>(t, p, -1.265_512_2) - sq_lo;
    t * exp_parts_scaled::<FMA>(-sq_hi, lo, k)
}

/// `erf(x)`.
#[inline(always)]
pub(crate) fn erf<const FMA: bool>(x: f32) -> f32 {
    // erf(x) rounds to ±1 beyond |x| ≈ 3.92; clamping keeps the split finite.
    let a = clamp_nan(x.abs(), 0.0, 6.0);
    let (sq_hi, sq_lo) = square_parts::<FMA>(a);
    let large = (1.0 - erfc_tail::<FMA>(a, sq_hi, sq_lo)).copysign(x);
    if a < 1.0 { erf_small::<FMA>(x) } else { large }
}

/// `erfc(x) = 1 - erf(x)`, with relative accuracy in the right tail.
#[inline(always)]
pub(crate) fn erfc<const FMA: bool>(x: f32) -> f32 {
    // erfc(x) underflows to 0 beyond x ≈ 10.05.
    let a = clamp_nan(x.abs(), 0.0, 10.5);
    let (sq_hi, sq_lo) = square_parts::<FMA>(a);
    let tail = erfc_tail::<FMA>(a, sq_hi, sq_lo);
    let large = if x < 0.0 { 2.0 - tail } else { tail };
    if a < 0.5 {
        1.0 - erf_small::<FMA>(x)
    } else {
        large
    }
}

/// GELU, erf form: `x·Φ(x) = x/2 · erfc(-x/√2)`; `(x/√2)²` is taken exactly as `x²/2`.
#[inline(always)]
pub(crate) fn gelu<const FMA: bool>(x: f32) -> f32 {
    use std::f32::consts::FRAC_1_SQRT_2;
    // |x| = 14.8 puts the erfc argument at 10.47, where it has underflowed.
    let ax = clamp_nan(x.abs(), 0.0, 14.8);
    let a = ax * FRAC_1_SQRT_2;
    let (h, l) = square_parts::<FMA>(ax);
    // The tail scaled by 2^24 stays normal until multiplied by x (down to x ≈ -13.2).
    let tail_s = erfc_tail_scaled::<FMA>(a, 0.5 * h, 0.5 * l, 24);
    // erfc(-x/√2): the argument is negative when x is positive.
    let y_neg = (0.5 * x * tail_s) * TWO_POW_M24;
    let y_pos = 0.5 * x * (2.0 - tail_s * TWO_POW_M24);
    let y_small = 0.5 * x * (1.0 - erf_small::<FMA>(-x * FRAC_1_SQRT_2));
    let y = if a < 0.5 {
        y_small
    } else if x > 0.0 {
        y_pos
    } else {
        y_neg
    };
    // gelu(-inf) = -0 (the product would be -inf · 0).
    if x == f32::NEG_INFINITY { -0.0 } else { y }
}

/// GELU, tanh approximation: `x/2·(1 + tanh(√(2/π)(x + 0.044715x³))) = x·σ(2u)`.
///
/// `2u` is formed in f64 and handed to `exp` as an f32 pair: in the negative tail `σ(2u)` has
/// relative condition `|2u|` (up to ~87), which f32 rounding of the cubic would turn into
/// ~1e-5 relative error.
#[inline(always)]
pub(crate) fn gelu_tanh<const FMA: bool>(x: f32) -> f32 {
    // 2·√(2/π) and 2·√(2/π)·0.044715.
    const C1: f64 = 1.595_769_121_605_730_8;
    const C3: f64 = C1 * 0.044_715;
    // Beyond |x| = 60, σ(2u) has long saturated; the clamp keeps 2u finite and lets NaN through.
    let xd = clamp_nan(x, -60.0, 60.0) as f64;
    let u = xd * (C3 * xd * xd + C1);
    let hi = u as f32;
    let lo = (u - hi as f64) as f32;
    // σ(u) from e = e^{-|u|}, with |u| = ±(hi + lo).
    let (nh, nl) = if hi >= 0.0 { (-hi, -lo) } else { (hi, lo) };
    // e·2^24, so that x·e·s is rounded once, not first as a subnormal e.
    let e_s = exp_parts_scaled::<FMA>(nh, nl, 24);
    let s = 1.0 / (1.0 + e_s * TWO_POW_M24);
    let y = if hi >= 0.0 {
        x * s
    } else {
        (x * e_s * s) * TWO_POW_M24
    };
    if x == f32::NEG_INFINITY { -0.0 } else { y }
}

/// SiLU / swish: `x·σ(x)`.
#[inline(always)]
pub(crate) fn silu<const FMA: bool>(x: f32) -> f32 {
    // As in `sigmoid`, with e kept 2^24 larger until multiplied by x.
    let e_s = exp_parts_scaled::<FMA>(-x.abs(), 0.0, 24);
    let s = 1.0 / (1.0 + e_s * TWO_POW_M24);
    let y = if x >= 0.0 {
        x * s
    } else {
        (x * e_s * s) * TWO_POW_M24
    };
    if x == f32::NEG_INFINITY { -0.0 } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_values() {
        assert_eq!(exp::<false>(0.0), 1.0);
        assert_eq!(exp::<true>(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp::<false>(f32::NEG_INFINITY), 0.0);
        assert!(exp::<false>(f32::NAN).is_nan());
        assert_eq!(expm1::<true>(f32::NEG_INFINITY), -1.0);
        assert_eq!(expm1::<false>(1e-30), 1e-30);
        assert_eq!(tanh::<false>(f32::INFINITY), 1.0);
        assert_eq!(tanh::<false>(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf::<true>(f32::NEG_INFINITY), -1.0);
        assert_eq!(erfc::<true>(f32::NEG_INFINITY), 2.0);
        assert_eq!(erfc::<true>(f32::INFINITY), 0.0);
        assert_eq!(gelu::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(gelu::<false>(f32::INFINITY), f32::INFINITY);
        for f in [
            tanh::<false>,
            sigmoid::<false>,
            erf::<false>,
            erfc::<false>,
            gelu::<true>,
        ] {
            assert!(f(f32::NAN).is_nan());
        }
    }
}
