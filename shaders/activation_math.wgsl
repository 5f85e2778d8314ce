// f32 elementary functions shared by the elementwise and softmax kernels: ports of the CPU
// kernels' `math.rs` (Cody-Waite reduced exponentials, Cephes / Numerical Recipes polynomials),
// so that results do not depend on the accuracy of a driver's built-in exp, tanh or erf.
// Rounding uses `round` rather than magic-constant tricks, which a compiler may reassociate.

const LOG2E: f32 = 1.4426950408889634;
// ln 2 split for Cody-Waite reduction: LN2_HI has 9 significant bits, so n·LN2_HI is exact.
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
// 2^-24, undoing the scale of exp_parts_scaled.
const TWO_POW_M24: f32 = 5.9604644775390625e-8;
const FRAC_2_SQRT_PI: f32 = 1.1283791670955126;
const FRAC_1_SQRT_2: f32 = 0.7071067811865476;

// Whether x is NaN, read from its bits: some drivers fold float comparisons with NaN away.
fn is_nan_bits(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Clamps x into [lo, hi], letting NaN through.
fn clamp_nan(x: f32, lo: f32, hi: f32) -> f32 {
    let y = select(x, lo, x < lo);
    return select(select(y, hi, y > hi), x, is_nan_bits(x));
}

// |v| with the sign of s.
fn copy_sign(v: f32, s: f32) -> f32 {
    return bitcast<f32>((bitcast<u32>(v) & 0x7fffffffu) | (bitcast<u32>(s) & 0x80000000u));
}

// 2^n for n + 127 in 1..=254.
fn pow2i(n: i32) -> f32 {
    return bitcast<f32>(u32(n + 127) << 23u);
}

// e^r - 1 for |r| ≤ ln2/2 (Cephes minimax).
fn expm1_reduced(r: f32) -> f32 {
    var p = 1.9875692e-4;
    p = fma(p, r, 1.3981999e-3);
    p = fma(p, r, 8.333452e-3);
    p = fma(p, r, 4.1665796e-2);
    p = fma(p, r, 1.6666665e-1);
    p = fma(p, r, 0.5);
    return fma(p, r * r, r);
}

// 2^k · e^(hi + lo), where lo carries low-order bits hi cannot hold; 0 ≤ k ≤ 24 keeps a tiny
// result normal until the caller has multiplied it by its other factors.
fn exp_parts_scaled(hi_in: f32, lo: f32, k: i32) -> f32 {
    // Below -104 the result is 0 and above 89 it is inf.
    let hi = clamp_nan(hi_in, -104.0, 89.0);
    let nf = round((hi + lo) * LOG2E);
    var r = fma(nf, -LN2_HI, hi);
    r = fma(nf, -LN2_LO, r) + lo;
    let p = expm1_reduced(r) + 1.0;
    // n lies in [-153, 131]: scale in two halves so that both powers stay normal.
    let n = i32(nf) + k;
    let n1 = n >> 1u;
    let n2 = n - n1;
    return p * pow2i(n1) * pow2i(n2);
}

// e^x.
fn exp_acc(x: f32) -> f32 {
    return exp_parts_scaled(x, 0.0, 0);
}

// e^x - 1, accurate near zero.
fn expm1_acc(x_in: f32) -> f32 {
    let x = clamp_nan(x_in, -30.0, 89.0);
    let nf = round(x * LOG2E);
    var r = fma(nf, -LN2_HI, x);
    r = fma(nf, -LN2_LO, r);
    let q = expm1_reduced(r);
    // e^x - 1 = 2·(2^(n-1)·q + (2^(n-1) - 1/2)).
    let half = pow2i(i32(nf) - 1);
    return 2.0 * fma(half, q, half - 0.5);
}

// tanh: an odd polynomial below |x| = 0.625, 1 - 2/(e^{2|x|} + 1) above.
fn tanh_acc(x: f32) -> f32 {
    let a = abs(x);
    let z = x * x;
    var p = -5.7049887e-3;
    p = fma(p, z, 2.063909e-2);
    p = fma(p, z, -5.3739716e-2);
    p = fma(p, z, 1.3331442e-1);
    p = fma(p, z, -3.333328e-1);
    let small = fma(p * z, x, x);
    let e = exp_acc(a + a);
    let large = copy_sign(1.0 - 2.0 / (e + 1.0), x);
    return select(large, small, a < 0.625);
}

// The logistic function, accurate in both tails.
fn sigmoid_acc(x: f32) -> f32 {
    let e = exp_acc(-abs(x));
    let s = 1.0 / (1.0 + e);
    return select(e * s, s, x >= 0.0);
}

// erf(x) for |x| ≤ 1: x·P(x²) (Cephes).
fn erf_small(x: f32) -> f32 {
    let z = x * x;
    var p = 7.8538614e-5;
    p = fma(p, z, -8.0101936e-4);
    p = fma(p, z, 5.1883277e-3);
    p = fma(p, z, -2.6853812e-2);
    p = fma(p, z, 1.1283585e-1);
    p = fma(p, z, -3.7612626e-1);
    p = fma(p, z, FRAC_2_SQRT_PI);
    return x * p;
}

// (hi, lo) with hi + lo = v² to about 2^-48 relative: v split into 12-bit halves whose
// products are exact in f32.
fn square_parts(v: f32) -> vec2<f32> {
    let h = bitcast<f32>(bitcast<u32>(v) & 0xfffff000u);
    let l = v - h;
    return vec2<f32>(h * h, fma(h + h, l, l * l));
}

// 2^k · erfc(a) for 0 ≤ a ≤ 10.5 given a² = sq.x + sq.y: t·exp(-a² - 1.26551223 + t·P(t)),
// t = 1/(1 + a/2) (Numerical Recipes erfcc, relative error ≤ 1.2e-7).
fn erfc_tail_scaled(a: f32, sq: vec2<f32>, k: i32) -> f32 {
    let t = 1.0 / fma(0.5, a, 1.0);
    var p = 0.17087277;
    p = fma(p, t, -0.82215223);
    p = fma(p, t, 1.4885159);
    p = fma(p, t, -1.135204);
    p = fma(p, t, 0.27886807);
    p = fma(p, t, -0.18628806);
    p = fma(p, t, 0.09678418);
    p = fma(p, t, 0.37409196);
    p = fma(p, t, 1.0000237);
    let lo = fma(t, p, -1.2655122) - sq.y;
    return t * exp_parts_scaled(-sq.x, lo, k);
}

// erf(x).
fn erf_acc(x: f32) -> f32 {
    let a = clamp_nan(abs(x), 0.0, 6.0);
    let large = copy_sign(1.0 - erfc_tail_scaled(a, square_parts(a), 0), x);
    return select(large, erf_small(x), a < 1.0);
}

// erfc(x) = 1 - erf(x), relatively accurate in the right tail.
fn erfc_acc(x: f32) -> f32 {
    let a = clamp_nan(abs(x), 0.0, 10.5);
    let tail = erfc_tail_scaled(a, square_parts(a), 0);
    let large = select(tail, 2.0 - tail, x < 0.0);
    return select(large, 1.0 - erf_small(x), a < 0.5);
}

// GELU, erf form: x·Φ(x) = x/2 · erfc(-x/√2), with (x/√2)² taken exactly as x²/2.
fn gelu_acc(x: f32) -> f32 {
    let ax = clamp_nan(abs(x), 0.0, 14.8);
    let a = ax * FRAC_1_SQRT_2;
    let sq = square_parts(ax) * 0.5;
    // The tail scaled by 2^24 stays normal until multiplied by x.
    let tail_s = erfc_tail_scaled(a, sq, 24);
    let y_neg = (0.5 * x * tail_s) * TWO_POW_M24;
    let y_pos = 0.5 * x * (2.0 - tail_s * TWO_POW_M24);
    let y_small = 0.5 * x * (1.0 - erf_small(-x * FRAC_1_SQRT_2));
    let y = select(select(y_neg, y_pos, x > 0.0), y_small, a < 0.5);
    // gelu(-inf) = 0 (the product would be -inf · 0).
    return select(y, 0.0, x < -1.0e30);
}

// x·σ(s) from e_s = 2^24·e^{-|s|}, rounded once rather than first as a subnormal.
fn times_sigmoid(x: f32, s: f32) -> f32 {
    let e_s = exp_parts_scaled(-abs(s), 0.0, 24);
    let q = 1.0 / (1.0 + e_s * TWO_POW_M24);
    let y = select((x * e_s * q) * TWO_POW_M24, x * q, s >= 0.0);
    return select(y, 0.0, x < -1.0e30);
}

// GELU, tanh approximation: x·σ(2u), 2u = 2·√(2/π)·(x + 0.044715x³) (evaluated in f32).
fn gelu_tanh_acc(x: f32) -> f32 {
    let xc = clamp_nan(x, -60.0, 60.0);
    let u = xc * fma(0.07135481627260025, xc * xc, 1.5957691216057308);
    return times_sigmoid(x, u);
}

// SiLU / swish: x·σ(x).
fn silu_acc(x: f32) -> f32 {
    return times_sigmoid(x, x);
}
