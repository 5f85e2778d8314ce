//! The AVX-512 register tile of the lanes path: up to 12 output channels × 32 consecutive
//! grid columns (two zmm vectors per channel, 24 accumulators). Per depth index it loads the
//! 32 input values the columns read (contiguous in the laid-out input) and broadcasts 12
//! packed weights; the finished tile goes straight to the NCHW output with masked stores, the
//! bias, a residual and the ReLU applied on the way.

use std::arch::x86_64::*;

/// Output channels of a weight panel (the rows the weights are packed with).
pub(super) const ROWS: usize = 12;
/// Grid columns of one vector.
pub(super) const LANES: usize = 16;
/// Vectors of grid columns a tile covers at most.
pub(super) const VECTORS: usize = 2;

/// Where one vector of grid columns goes in each output channel's plane: lanes of `masks[j]`
/// are written at `offsets[j] + lane` (a run of one output row each; `j = 1` is the next row
/// for a vector that wraps). Lanes in neither mask fall on the grid's padding columns or past
/// the last output, and are dropped.
#[derive(Clone, Copy, Default)]
pub(super) struct Spans {
    /// Plane offset of lane 0 for each run (may lie before the plane for the second run).
    pub offsets: [isize; 2],
    /// Lanes of each run.
    pub masks: [u16; 2],
}

/// How a tile finishes: `out = relu?(acc + bias + beta·out)`.
#[derive(Clone, Copy)]
pub(super) struct Finish {
    pub beta: f32,
    pub relu: bool,
}

/// The tile signature: see [`tile`].
pub(super) type TileFn = unsafe fn(
    usize,
    *const f32,
    *const f32,
    *const usize,
    *mut f32,
    usize,
    &[Spans],
    &[f32],
    Finish,
);

/// The tile for `rows` live output channels (1 to [`ROWS`]) and `vectors` vectors (1 or 2).
pub(super) fn tile_for(rows: usize, vectors: usize) -> TileFn {
    match (rows, vectors) {
        (0..=4, 1) => tile::<4, 1>,
        (0..=4, _) => tile::<4, 2>,
        (5..=8, 1) => tile::<8, 1>,
        (5..=8, _) => tile::<8, 2>,
        (_, 1) => tile::<12, 1>,
        _ => tile::<12, 2>,
    }
}

/// `out[i] (at the spans of vector v) = finish(Σ_k w[k·ROWS + i] · b[offsets[k] + 16v + lane])`
/// for the `rows` live channels `i < bias.len()` of the tile's `R` (channel `i` writes the plane
/// at `out + i·plane`).
///
/// # Safety
/// AVX-512F must be available; `w` must hold `ROWS·kc` floats, `offsets` `kc` entries, and
/// `b + offsets[k] + 16·V` floats must be readable for every `k < kc`; `spans` must hold `V`
/// entries and `bias` at most `R` values; every lane of a span's mask must address an element
/// of each of the `bias.len()` planes that the caller owns.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile<const R: usize, const V: usize>(
    kc: usize,
    w: *const f32,
    b: *const f32,
    offsets: *const usize,
    out: *mut f32,
    plane: usize,
    spans: &[Spans],
    bias: &[f32],
    finish: Finish,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for k in 0..kc {
        // SAFETY: k < kc: the offset, the 16·V input values it points to and the weights of
        // step k are in bounds by the contract.
        unsafe {
            let x = b.add(*offsets.add(k));
            let xv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(x.add(LANES * v)));
            let step = w.add(ROWS * k);
            for (i, row) in acc.iter_mut().enumerate() {
                let wi = _mm512_set1_ps(*step.add(i));
                for (s, &xv) in row.iter_mut().zip(&xv) {
                    *s = _mm512_fmadd_ps(wi, xv, *s);
                }
            }
        }
    }
    // SAFETY: as for this function.
    unsafe { store::<R, V>(acc, out, plane, spans, bias, finish) };
}

/// Writes the finished accumulators (kept in registers by taking them by value in a function
/// of its own, as the gemm's microkernel does).
///
/// # Safety
/// As [`tile`].
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize, const V: usize>(
    acc: [[__m512; V]; R],
    out: *mut f32,
    plane: usize,
    spans: &[Spans],
    bias: &[f32],
    finish: Finish,
) {
    let (zero, beta) = (_mm512_setzero_ps(), _mm512_set1_ps(finish.beta));
    for (i, (row, &bias)) in acc.iter().zip(bias).enumerate() {
        let channel = out.wrapping_add(i * plane);
        let bias = _mm512_set1_ps(bias);
        for (sum, span) in row.iter().zip(spans) {
            for (&offset, &mask) in span.offsets.iter().zip(&span.masks) {
                if mask == 0 {
                    continue;
                }
                let dst = channel.wrapping_offset(offset);
                // SAFETY: the masked lanes address elements the caller owns (the contract);
                // masked-off lanes are neither read nor written.
                unsafe {
                    let mut value = _mm512_add_ps(*sum, bias);
                    if finish.beta != 0.0 {
                        value = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask, dst), value);
                    }
                    if finish.relu {
                        // max(0, x) returns x for NaN, as the other paths' epilogues do.
                        value = _mm512_max_ps(zero, value);
                    }
                    _mm512_mask_storeu_ps(dst, mask, value);
                }
            }
        }
    }
}
