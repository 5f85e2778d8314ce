//! Operand element types of the kernels: f32, and f16 / bf16 widened to f32 while packing.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A scalar type the kernels read as an operand; arithmetic always happens in f32.
pub trait Element: Copy + Send + Sync + 'static {
    /// The name used in reports and errors (`f32`, `f16`, `bf16`).
    const NAME: &'static str;

    /// Widens one value to f32 exactly.
    fn to_f32(self) -> f32;

    /// Narrows an f32 to this type, rounding to nearest even.
    fn from_f32(value: f32) -> Self;

    /// The slice itself when `Self` is f32 (so packing can skip the widening copy).
    fn as_f32(slice: &[Self]) -> Option<&[f32]> {
        let _ = slice;
        None
    }

    /// Widens a contiguous run into `dst` (same length), using F16C or shifts where available.
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

impl Element for f32 {
    const NAME: &'static str = "f32";

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        value
    }

    #[inline(always)]
    fn as_f32(slice: &[Self]) -> Option<&[f32]> {
        Some(slice)
    }

    #[inline(always)]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }

    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        // `half` dispatches to F16C (x86) or FP16 (aarch64) at run time.
        src.convert_to_f32_slice(dst);
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";

    #[inline(always)]
    fn to_f32(self) -> f32 {
        // bf16 is the top half of an f32: widening is a 16-bit shift.
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }

    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact() {
        let values = [0.5f32, -3.25, 1.0e-3, 65504.0, f32::INFINITY];
        let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let mut out = vec![0.0; values.len()];
        f16::widen_slice(&halves, &mut out);
        for (h, o) in halves.iter().zip(&out) {
            assert_eq!(h.to_f32(), *o);
        }
        let brains: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        bf16::widen_slice(&brains, &mut out);
        for (b, o) in brains.iter().zip(&out) {
            assert_eq!(bf16::to_f32(*b), *o);
        }
        assert!(<bf16 as Element>::to_f32(bf16::NAN).is_nan());
    }
}
