//! 2-D convolution (ONNX Conv semantics, NCHW input, OIHW weights, f32 output).
//!
//! Paths, chosen from the geometry:
//! - one input channel per group (depthwise): a direct kernel, parallel over output planes;
//! - on AVX-512, 3×3 stride-1 single-group layers with at least 16 output channels: on
//!   planes with 128 or more 4×4 output tiles, 32 or more input channels and up to 910
//!   channels in and out, Winograd F(4×4, 3×3) (see `winograd`), 36 gemms of depth C per
//!   block of tiles instead of one of depth 9·C; otherwise, with 64 or more input channels
//!   and enough 2×2 tiles per image (as many as input channels, or 128 for layers run image
//!   by image), F(2×2, 3×3), 16 gemms per block;
//! - 1×1, stride 1, no padding: a plain gemm per image and group, the image being B as is; a
//!   strided 1×1 convolution without padding gathers its sub-grid once and runs the same way
//!   (except on AVX-512, where the im2col gemm below reads the sub-grid as it packs);
//! - on AVX2 and AVX-512, every kernel larger than 1×1 (see `flat`): a register tile (6
//!   outputs × 16 output channels on AVX2, 8 outputs × 32 channels on AVX-512) that
//!   broadcasts each output's input values from a zero-padded, stride-phase-split copy of
//!   the input through a table of per-tap offsets — no im2col packing at all; on AVX-512 only
//!   with 16 or more input channels per group, at stride 1;
//! - on AVX-512, kernels larger than 1×1 over at most 15 input channels per group (31 at
//!   stride 1 in one group on output rows of 40 or more) with a depth of 64 or more (an image
//!   network's first layer, SqueezeNet's 16-channel expands; see `lanes`), taken before the
//!   flat path: the same layout read
//!   as vectors of 16 consecutive outputs, 12 output channels broadcast from packed weights,
//!   stored straight into the NCHW output;
//! - everything else: an implicit gemm per image and group, `out[O/g × OH·OW] =
//!   W_g[O/g × C/g·KH·KW] · im2col(x)`, where the im2col matrix is produced panel by panel
//!   by the gemm's B packer and never stored whole.
//!
//! Bias and ReLU are fused (gemm epilogue, or the direct kernel's last pass);
//! [`conv2d_accumulate`] also adds what the output holds (a residual). Weights pinned with
//! [`WeightPin`] are packed into the gemm's panels once per path and reused (`prepack`). Work
//! is split with rayon on the current pool: the implicit gemms into pieces of output columns
//! (or of output channels) sized for the L2 cache and for load balance, computed in parallel
//! each on its own thread's packed data (see `implicit`); the flat path into tasks of outputs
//! and weight panels, evened out over the threads; the direct kernel by output planes.

mod depthwise;
#[cfg(target_arch = "x86_64")]
mod depthwise_x86;
#[cfg(target_arch = "x86_64")]
mod flat;
#[cfg(target_arch = "x86_64")]
mod flat_x86;
mod im2col;
mod implicit;
#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod lanes_x86;
#[cfg(target_arch = "x86_64")]
mod pack_x86;
mod params;
mod pooled;
mod prepack;
mod shared;
#[cfg(target_arch = "x86_64")]
mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_phases;
#[cfg(target_arch = "x86_64")]
mod winograd_phases_x86;
#[cfg(target_arch = "x86_64")]
mod winograd_x86;

use std::borrow::Cow;

use rayon::prelude::*;

pub use params::{Conv2dParams, conv2d_output_dims};
pub use pooled::{banding_pays, conv2d_max_pool};
pub use prepack::{WeightPin, is_pinned, pin_part};

use crate::{Element, Isa, KernelError, Result};
use params::{Geometry, product};

/// Largest channel multiplier (`O/groups` with one input channel per group) run by the direct
/// kernel; larger ones go through the gemm, whose register tile then fills.
const DIRECT_MAX_MULTIPLIER: usize = 4;

/// `output (N·O·OH·OW f32, NCHW) = relu?(conv(input, weight) + bias)`; f16/bf16 widened to f32.
#[allow(clippy::too_many_arguments)]
pub fn conv2d<T: Element>(
    isa: Isa,
    input: &[T],
    input_dims: [usize; 4],
    weight: &[T],
    weight_dims: [usize; 4],
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    output: &mut [f32],
) -> Result<()> {
    run(
        isa,
        input,
        input_dims,
        weight,
        weight_dims,
        bias,
        params,
        output,
        false,
    )
}

/// [`conv2d`] adding to what `output` holds: `output = relu?(conv(input, weight) + bias +
/// output)` — a residual connection fused into the convolution (the sum is formed in the
/// gemm, before the bias and the ReLU).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_accumulate<T: Element>(
    isa: Isa,
    input: &[T],
    input_dims: [usize; 4],
    weight: &[T],
    weight_dims: [usize; 4],
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    output: &mut [f32],
) -> Result<()> {
    run(
        isa,
        input,
        input_dims,
        weight,
        weight_dims,
        bias,
        params,
        output,
        true,
    )
}

/// [`conv2d`], or [`conv2d_accumulate`] with `accumulate`.
#[allow(clippy::too_many_arguments)]
fn run<T: Element>(
    isa: Isa,
    input: &[T],
    input_dims: [usize; 4],
    weight: &[T],
    weight_dims: [usize; 4],
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    output: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let isa = isa.require()?;
    let g = Geometry::new(input_dims, weight_dims, params)?;
    check_len(
        "conv2d input",
        input.len(),
        product("conv2d input", input_dims)?,
    )?;
    check_len(
        "conv2d weight",
        weight.len(),
        product("conv2d weight", weight_dims)?,
    )?;
    check_len(
        "conv2d output",
        output.len(),
        product("conv2d output", [g.n, g.o, g.oh, g.ow])?,
    )?;
    if let Some(b) = bias
        && b.len() != g.o
    {
        return Err(KernelError::ShapeMismatch {
            op: "conv2d",
            detail: format!(
                "bias has {} values, expected {} (output channels)",
                b.len(),
                g.o
            ),
        });
    }
    if output.is_empty() {
        return Ok(());
    }
    if g.depth() == 0 {
        // No input channels: every output is its channel's bias (then ReLU).
        let plane = g.out_plane();
        for (index, out) in output.chunks_mut(plane).enumerate() {
            let value = bias.map_or(0.0, |b| b[index % g.o]);
            for v in out.iter_mut() {
                let sum = if accumulate { *v + value } else { value };
                *v = if g.relu && sum < 0.0 { 0.0 } else { sum };
            }
        }
        return Ok(());
    }
    let weight = widened(weight);
    if g.cg == 1 && g.og <= DIRECT_MAX_MULTIPLIER {
        if !accumulate {
            depthwise::run(isa, &g, input, &weight, bias, output);
            return Ok(());
        }
        // The direct kernel overwrites: convolve apart, then add (then the ReLU).
        let plain = Geometry { relu: false, ..g };
        let mut conv = vec![0.0f32; output.len()];
        depthwise::run(isa, &plain, input, &weight, bias, &mut conv);
        for (out, v) in output.iter_mut().zip(conv) {
            let sum = *out + v;
            *out = if g.relu && sum < 0.0 { 0.0 } else { sum };
        }
        return Ok(());
    }
    let input = widened_par(input);
    let beta = if accumulate { 1.0 } else { 0.0 };
    // A strided 1×1 convolution without padding reads a sub-grid of the input: gathered once,
    // it runs as a pointwise one (a plain gemm). On AVX-512 the im2col gemm reads the sub-grid
    // as it packs, which measured faster than gathering it first (a pass over a fresh buffer
    // by both threads before the product): 256 → 512 from 56×56 0.96× the time (batch 8
    // 0.93×), 512 → 1024 from 28×28 0.97×, 1024 → 2048 from 14×14 0.99×; ResNet-50 0.991×.
    // (With the AVX2 kernel on the same core: 0.98× and 1.02×, so AVX2 keeps the gather.)
    let sub = (isa != Isa::Avx512)
        .then(|| subsampled(&g, &input))
        .flatten();
    let (g, input) = match sub {
        Some((pointwise, x)) => (pointwise, Cow::Owned(x)),
        None => (g, input),
    };
    // Pinned f32 weights: their panels are packed once per path and reused.
    let pinned = |kc: usize, mr: usize| match &weight {
        Cow::Borrowed(w) => prepack::packed(isa, &g, w, kc, mr),
        Cow::Owned(_) => None,
    };
    // The caller's own f32 weights, which may be pinned.
    #[cfg(target_arch = "x86_64")]
    let pinnable = matches!(weight, Cow::Borrowed(_));
    // The panels of a path that packs its own (pinned ones, or packed for this call).
    #[cfg(target_arch = "x86_64")]
    let pinned_or_packed = |kc: usize, mr: usize| {
        pinned_or_made(
            &weight,
            pinnable,
            |w| prepack::packed(isa, &g, w, kc, mr),
            |w| prepack::PackedWeights::pack(isa, &g, w, kc, mr),
        )
    };
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512
        && let Some(tile) = winograd::variant(&g)
    {
        let weights = pinned_or_made(
            &weight,
            pinnable,
            |w| prepack::packed_winograd(isa, &g, w, tile),
            |w| prepack::PackedWeights::winograd(isa, &g, w, tile),
        );
        if let Some(weights) = weights {
            return winograd::run(isa, &g, tile, &input, &weight, &weights, bias, output, beta);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && winograd_phases::suits(&g) {
        let weights = pinned_or_made(
            &weight,
            pinnable,
            |w| prepack::packed_winograd_phases(isa, &g, w),
            |w| prepack::PackedWeights::winograd_phases(isa, &g, w),
        );
        if let Some(weights) = weights {
            winograd_phases::run(&g, &input, &weight, &weights, bias, output, beta);
            return Ok(());
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && lanes::suits(&g) {
        let (kc, mr) = (g.depth(), lanes::PANEL_ROWS);
        if let Some(weights) = pinned_or_packed(kc, mr) {
            lanes::run(&g, &input, &weights, bias, output, beta);
            return Ok(());
        }
    }
    #[cfg(target_arch = "x86_64")]
    if match isa {
        Isa::Avx2 => flat::suits(&g),
        Isa::Avx512 => Isa::Avx2.is_available() && flat::suits_wide(&g),
        _ => false,
    } {
        let (kc, mr) = (flat::depth_block(&g), flat::PANEL_CHANNELS);
        if let Some(weights) = pinned_or_packed(kc, mr) {
            flat::run(isa == Isa::Avx512, &g, &input, &weights, bias, output, beta);
            return Ok(());
        }
    }
    let packed = pinned(
        prepack::PackedWeights::gemm_depth_block(isa, &g),
        prepack::PackedWeights::gemm_rows(isa),
    );
    implicit::run(
        isa,
        &g,
        &input,
        &weight,
        packed.as_deref(),
        bias,
        output,
        beta,
    )
}

/// Weights packed for a path: once per pinned buffer (`pinned`, which finds or makes the
/// pack; `None` for a buffer that is not pinned) where the caller's own buffer is at hand
/// (`pinnable`: not widened from another type), else by `make` for this call.
#[cfg(target_arch = "x86_64")]
fn pinned_or_made(
    weight: &[f32],
    pinnable: bool,
    pinned: impl FnOnce(&[f32]) -> Option<std::sync::Arc<prepack::PackedWeights>>,
    make: impl FnOnce(&[f32]) -> Option<prepack::PackedWeights>,
) -> Option<std::sync::Arc<prepack::PackedWeights>> {
    pinnable
        .then(|| pinned(weight))
        .flatten()
        .or_else(|| make(weight).map(std::sync::Arc::new))
}

/// The output rows a band of this convolution's output, convolved apart from the rest,
/// should start on (and end on, unless it ends with the image) to hold the same bits as the
/// whole image's: 1 except on paths whose tiles span several output rows.
pub(super) fn band_row_alignment(
    isa: Isa,
    input_dims: [usize; 4],
    weight_dims: [usize; 4],
    params: &Conv2dParams,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Ok(g) = Geometry::new(input_dims, weight_dims, params) {
        return winograd_phases::row_alignment(isa, &g);
    }
    let _ = (isa, input_dims, weight_dims, params);
    1
}

/// For a 1×1 convolution with a stride and no padding: the geometry of the same convolution
/// as a pointwise one, and its input (every `sh`-th row, every `sw`-th column of each plane).
fn subsampled(g: &Geometry, input: &[f32]) -> Option<(Geometry, Vec<f32>)> {
    if g.kh != 1 || g.kw != 1 || g.pads != [0; 4] || (g.sh == 1 && g.sw == 1) {
        return None;
    }
    let (plane, out_plane) = (g.h * g.w, g.out_plane());
    let mut x = vec![0.0f32; g.n * g.c * out_plane];
    let gather = |(dst, src): (&mut [f32], &[f32])| {
        for (row, oy) in dst.chunks_exact_mut(g.ow).zip(0..) {
            let line = &src[oy * g.sh * g.w..];
            for (value, ox) in row.iter_mut().zip(0..) {
                *value = line[ox * g.sw];
            }
        }
    };
    if x.len() >= 1 << 15 {
        x.par_chunks_mut(out_plane)
            .zip(input.par_chunks(plane))
            .for_each(gather);
    } else {
        x.chunks_mut(out_plane)
            .zip(input.chunks(plane))
            .for_each(gather);
    }
    let pointwise = Geometry {
        h: g.oh,
        w: g.ow,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        ..*g
    };
    Some((pointwise, x))
}

/// A length check: shorter is [`KernelError::BufferTooSmall`], longer a shape mismatch.
fn check_len(what: &'static str, actual: usize, needed: usize) -> Result<()> {
    if actual < needed {
        return Err(KernelError::BufferTooSmall {
            what,
            needed,
            actual,
        });
    }
    if actual > needed {
        return Err(KernelError::ShapeMismatch {
            op: "conv2d",
            detail: format!("{what} has {actual} values, its dims give {needed}"),
        });
    }
    Ok(())
}

/// `x` as f32: borrowed when it already is, widened into a new buffer otherwise.
pub(crate) fn widened<T: Element>(x: &[T]) -> Cow<'_, [f32]> {
    if let Some(x) = T::as_f32(x) {
        return Cow::Borrowed(x);
    }
    let mut wide = vec![0.0; x.len()];
    T::widen_slice(x, &mut wide);
    Cow::Owned(wide)
}

/// [`widened`], in parallel chunks for large inputs.
fn widened_par<T: Element>(x: &[T]) -> Cow<'_, [f32]> {
    const CHUNK: usize = 1 << 16;
    if T::as_f32(x).is_some() || x.len() <= CHUNK {
        return widened(x);
    }
    let mut wide = vec![0.0; x.len()];
    wide.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(dst, src)| T::widen_slice(src, dst));
    Cow::Owned(wide)
}
