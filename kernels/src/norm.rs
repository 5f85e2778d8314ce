//! Normalisation kernels: softmax / log-softmax along any axis, batch normalisation in
//! inference form, and local response normalisation (ONNX LRN).
//!
//! Softmax subtracts the maximum before exponentiating, so it never overflows; a slice that
//! contains `+inf` gets the limit (equal shares among the infinite entries), NaN anywhere in a
//! slice makes that whole slice NaN, and a slice of only `-inf` is NaN (0/0). Exponentials use
//! the vectorised `math::exp`; sums accumulate in 16 f32 lanes per block of 1024 and in f64
//! across blocks.

use rayon::prelude::*;

use crate::elementwise::{check_len, numel};
use crate::math::{self, Kernel, PAR_CHUNK, dispatch, fmadd, go_parallel, max_fast};
use crate::{Isa, KernelError, Result};

// ---------------------------------------------------------------------------------------------
// Vectorised row helpers (inlined into the dispatched kernels).
// ---------------------------------------------------------------------------------------------

const LANES: usize = 16;
/// Elements of one column group of a strided softmax (64 KiB of f32).
const COLUMN_TILE: usize = 16 * 1024;

/// Maximum of `x`, ignoring NaN (`-inf` for an empty or all-NaN slice).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            acc[j] = max_fast(acc[j], c[j]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder().iter().chain(acc.iter()) {
        m = max_fast(m, v);
    }
    m
}

/// Sum of `x`: 16 f32 lanes per block of 1024, blocks added in f64.
#[inline(always)]
pub(crate) fn sum_of(x: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(1024) {
        let mut acc = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for j in 0..LANES {
                acc[j] += c[j];
            }
        }
        let mut s = 0.0f64;
        for &v in chunks.remainder().iter().chain(acc.iter()) {
            s += v as f64;
        }
        total += s;
    }
    total
}

/// Where the maximum is `+inf`: infinite entries become 0, finite ones `-inf`, NaN stays, so
/// that the ordinary pass with maximum 0 yields the limit.
#[inline(always)]
fn mask_infinite(x: &mut [f32]) {
    for v in x.iter_mut() {
        let u = *v;
        *v = if u == f32::INFINITY {
            0.0
        } else if u.is_nan() {
            u
        } else {
            f32::NEG_INFINITY
        };
    }
}

/// `x ← e^(x - m)`; returns the sum.
#[inline(always)]
fn exp_store_sum<const FMA: bool>(x: &mut [f32], m: f32) -> f64 {
    for v in x.iter_mut() {
        *v = math::exp_diff::<FMA>(*v, m);
    }
    sum_of(x)
}

/// Σ e^(x - m), leaving `x` untouched.
#[inline(always)]
fn exp_sum<const FMA: bool>(x: &[f32], m: f32) -> f64 {
    let mut buf = [0.0f32; 256];
    let mut total = 0.0;
    for c in x.chunks(256) {
        let b = &mut buf[..c.len()];
        for (b, &v) in b.iter_mut().zip(c) {
            *b = math::exp_diff::<FMA>(v, m);
        }
        total += sum_of(b);
    }
    total
}

/// `x ← x · s`.
#[inline(always)]
fn scale(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// `x ← (x - m) - lse`.
#[inline(always)]
fn shift(x: &mut [f32], m: f32, lse: f32) {
    for v in x.iter_mut() {
        *v = (*v - m) - lse;
    }
}

/// Softmax or log-softmax of one contiguous row.
#[inline(always)]
fn softmax_row<const FMA: bool>(row: &mut [f32], log: bool) {
    let mut m = max_of(row);
    if m == f32::INFINITY {
        mask_infinite(row);
        m = 0.0;
    }
    if log {
        let lse = exp_sum::<FMA>(row, m).ln() as f32;
        shift(row, m, lse);
    } else {
        let s = exp_store_sum::<FMA>(row, m);
        scale(row, (1.0 / s) as f32);
    }
}

/// One pass of softmax over a chunk, run under [`dispatch`].
enum Pass {
    /// Softmax or log-softmax (`true`) of every row of length `n`.
    Rows { n: usize, log: bool },
    /// Returns the maximum.
    Max,
    /// [`mask_infinite`].
    MaskInfinite,
    /// `x ← e^(x - m)`, returns the sum.
    ExpStore(f32),
    /// Returns Σ e^(x - m).
    ExpSum(f32),
    /// `x ← x · s`.
    Scale(f32),
    /// `x ← (x - m) - lse`.
    Shift(f32, f32),
}

struct RowPass<'a> {
    pass: Pass,
    data: &'a mut [f32],
}

impl Kernel for RowPass<'_> {
    type Output = f64;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> f64 {
        let data = self.data;
        match self.pass {
            Pass::Rows { n, log } => {
                for row in data.chunks_exact_mut(n) {
                    softmax_row::<FMA>(row, log);
                }
                0.0
            }
            Pass::Max => max_of(data) as f64,
            Pass::MaskInfinite => {
                mask_infinite(data);
                0.0
            }
            Pass::ExpStore(m) => exp_store_sum::<FMA>(data, m),
            Pass::ExpSum(m) => exp_sum::<FMA>(data, m),
            Pass::Scale(s) => {
                scale(data, s);
                0.0
            }
            Pass::Shift(m, lse) => {
                shift(data, m, lse);
                0.0
            }
        }
    }
}

/// Softmax of one long row, each pass split across the pool.
fn softmax_row_parallel(row: &mut [f32], log: bool, isa: Isa) {
    let run = |pass: Pass, data: &mut [f32]| dispatch(isa, RowPass { pass, data });
    let mut m = row
        .par_chunks_mut(PAR_CHUNK)
        .map(|c| run(Pass::Max, c) as f32)
        .reduce(|| f32::NEG_INFINITY, max_fast);
    if m == f32::INFINITY {
        row.par_chunks_mut(PAR_CHUNK).for_each(|c| {
            run(Pass::MaskInfinite, c);
        });
        m = 0.0;
    }
    if log {
        let s: f64 = row
            .par_chunks_mut(PAR_CHUNK)
            .map(|c| run(Pass::ExpSum(m), c))
            .sum();
        let lse = s.ln() as f32;
        row.par_chunks_mut(PAR_CHUNK).for_each(|c| {
            run(Pass::Shift(m, lse), c);
        });
    } else {
        let s: f64 = row
            .par_chunks_mut(PAR_CHUNK)
            .map(|c| run(Pass::ExpStore(m), c))
            .sum();
        let inv = (1.0 / s) as f32;
        row.par_chunks_mut(PAR_CHUNK).for_each(|c| {
            run(Pass::Scale(inv), c);
        });
    }
}

/// Softmax over the rows of a strided block: `segs` are the `n` rows (equal width) of a set of
/// columns, and each column is normalised on its own.
struct ColumnSoftmax<'a, 'b> {
    segs: &'b mut [&'a mut [f32]],
    log: bool,
}

impl Kernel for ColumnSoftmax<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let segs = self.segs;
        let Some(w) = segs.first().map(|s| s.len()) else {
            return;
        };
        let mut mx = vec![f32::NEG_INFINITY; w];
        for s in segs.iter() {
            for (m, &v) in mx.iter_mut().zip(s.iter()) {
                *m = max_fast(*m, v);
            }
        }
        if mx.contains(&f32::INFINITY) {
            for s in segs.iter_mut() {
                for (v, &m) in s.iter_mut().zip(&mx) {
                    if m == f32::INFINITY {
                        mask_infinite(std::slice::from_mut(v));
                    }
                }
            }
            for m in mx.iter_mut().filter(|m| **m == f32::INFINITY) {
                *m = 0.0;
            }
        }
        // Column sums: f32 over runs of 16 rows (error ≤ 16 ulp-ish), added up in f64.
        let mut sum = vec![0.0f64; w];
        let mut part = vec![0.0f32; w];
        let flush = |part: &mut [f32], sum: &mut [f64]| {
            for (s, p) in sum.iter_mut().zip(part.iter_mut()) {
                *s += *p as f64;
                *p = 0.0;
            }
        };
        if self.log {
            for run in segs.chunks(16) {
                for s in run {
                    for ((&v, &m), acc) in s.iter().zip(&mx).zip(part.iter_mut()) {
                        *acc += math::exp_diff::<FMA>(v, m);
                    }
                }
                flush(&mut part, &mut sum);
            }
            let lse: Vec<f32> = sum.iter().map(|&s| s.ln() as f32).collect();
            for s in segs.iter_mut() {
                for ((v, &m), &l) in s.iter_mut().zip(&mx).zip(&lse) {
                    *v = (*v - m) - l;
                }
            }
        } else {
            for run in segs.chunks_mut(16) {
                for s in run {
                    for ((v, &m), acc) in s.iter_mut().zip(&mx).zip(part.iter_mut()) {
                        let e = math::exp_diff::<FMA>(*v, m);
                        *v = e;
                        *acc += e;
                    }
                }
                flush(&mut part, &mut sum);
            }
            let inv: Vec<f32> = sum.iter().map(|&s| (1.0 / s) as f32).collect();
            for s in segs.iter_mut() {
                for (v, &k) in s.iter_mut().zip(&inv) {
                    *v *= k;
                }
            }
        }
    }
}

/// Splits `n` into axis geometry: (outer, n, inner).
fn axis_geometry(op: &'static str, dims: &[usize], axis: usize) -> Result<(usize, usize, usize)> {
    if axis >= dims.len() {
        return Err(KernelError::InvalidArgument {
            name: "axis",
            value: format!("{axis} for dims {dims:?}"),
            reason: "must be less than the rank",
        });
    }
    let outer = numel(op, &dims[..axis])?;
    let inner = numel(op, &dims[axis + 1..])?;
    Ok((outer, dims[axis], inner))
}

/// Softmax (or log-softmax when `log`) in place along `axis` of a row-major tensor of shape
/// `dims`, on the given instruction set.
pub fn softmax_inplace_with_isa(
    data: &mut [f32],
    dims: &[usize],
    axis: usize,
    log: bool,
    isa: Isa,
) -> Result<()> {
    let op = if log { "log_softmax" } else { "softmax" };
    isa.require()?;
    check_len(op, "input", data.len(), dims)?;
    let (outer, n, inner) = axis_geometry(op, dims, axis)?;
    if data.is_empty() {
        return Ok(());
    }
    let parallel = go_parallel(data.len());
    if inner == 1 {
        let threads = rayon::current_num_threads();
        if parallel && n >= PAR_CHUNK && outer < 2 * threads {
            for row in data.chunks_exact_mut(n) {
                softmax_row_parallel(row, log, isa);
            }
        } else if parallel {
            let rows_per_task = (PAR_CHUNK / n).max(1);
            data.par_chunks_mut(rows_per_task * n).for_each(|c| {
                dispatch(
                    isa,
                    RowPass {
                        pass: Pass::Rows { n, log },
                        data: c,
                    },
                );
            });
        } else {
            dispatch(
                isa,
                RowPass {
                    pass: Pass::Rows { n, log },
                    data,
                },
            );
        }
        return Ok(());
    }
    // The axis is strided: normalise the columns of each [n, inner] block, a group of columns
    // at a time, so that the group's n rows stay in cache across the three passes
    // (max, exp + sum, scale). The groups are also the unit of parallel work.
    let width = (COLUMN_TILE / n).clamp(LANES, inner.max(LANES));
    let width = width.div_ceil(LANES) * LANES;
    let groups_per_block = inner.div_ceil(width);
    let mut tasks: Vec<Vec<&mut [f32]>> = Vec::with_capacity(outer * groups_per_block);
    for block in data.chunks_exact_mut(n * inner) {
        let first = tasks.len();
        tasks.extend((0..groups_per_block).map(|_| Vec::with_capacity(n)));
        for row in block.chunks_exact_mut(inner) {
            for (g, seg) in row.chunks_mut(width).enumerate() {
                tasks[first + g].push(seg);
            }
        }
    }
    if parallel {
        tasks.par_iter_mut().for_each(|segs| {
            dispatch(isa, ColumnSoftmax { segs, log });
        });
    } else {
        for segs in tasks.iter_mut() {
            dispatch(isa, ColumnSoftmax { segs, log });
        }
    }
    Ok(())
}

/// Softmax in place along `axis` of a row-major tensor of shape `dims`.
pub fn softmax_inplace(data: &mut [f32], dims: &[usize], axis: usize) -> Result<()> {
    softmax_inplace_with_isa(data, dims, axis, false, Isa::selected())
}

/// Log-softmax in place along `axis` of a row-major tensor of shape `dims`.
pub fn log_softmax_inplace(data: &mut [f32], dims: &[usize], axis: usize) -> Result<()> {
    softmax_inplace_with_isa(data, dims, axis, true, Isa::selected())
}

/// Writes the softmax of `x` (shape `dims`) along `axis` into `y`.
pub fn softmax(x: &[f32], dims: &[usize], axis: usize, y: &mut [f32]) -> Result<()> {
    copy_checked("softmax", x, y)?;
    softmax_inplace(y, dims, axis)
}

/// Writes the log-softmax of `x` (shape `dims`) along `axis` into `y`.
pub fn log_softmax(x: &[f32], dims: &[usize], axis: usize, y: &mut [f32]) -> Result<()> {
    copy_checked("log_softmax", x, y)?;
    log_softmax_inplace(y, dims, axis)
}

/// Copies `x` into `y` after checking their lengths agree.
fn copy_checked(op: &'static str, x: &[f32], y: &mut [f32]) -> Result<()> {
    if x.len() != y.len() {
        return Err(KernelError::ShapeMismatch {
            op,
            detail: format!("input has {} elements, output {}", x.len(), y.len()),
        });
    }
    y.copy_from_slice(x);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batch normalisation.
// ---------------------------------------------------------------------------------------------

/// Per-channel parameters of batch normalisation in inference form:
/// `y = (x - mean) / sqrt(var + epsilon) · scale + bias`, then `max(y, 0)` with `relu`.
#[derive(Debug, Clone, Copy)]
pub struct BatchNorm<'a> {
    /// γ, one per channel.
    pub scale: &'a [f32],
    /// β, one per channel.
    pub bias: &'a [f32],
    /// Running mean, one per channel.
    pub mean: &'a [f32],
    /// Running variance, one per channel.
    pub var: &'a [f32],
    /// Added to the variance (finite, ≥ 0).
    pub epsilon: f32,
    /// Whether a ReLU follows (NaN stays NaN, as in the convolution epilogue).
    pub relu: bool,
}

impl BatchNorm<'_> {
    /// Checks lengths against `channels` and returns per-channel (mean, multiplier, bias).
    fn coefficients(&self, channels: usize) -> Result<Vec<[f32; 3]>> {
        for (what, v) in [
            ("scale", self.scale),
            ("bias", self.bias),
            ("mean", self.mean),
            ("var", self.var),
        ] {
            if v.len() != channels {
                return Err(KernelError::ShapeMismatch {
                    op: "batch_norm",
                    detail: format!("{what} has {} values for {channels} channels", v.len()),
                });
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(KernelError::InvalidArgument {
                name: "epsilon",
                value: self.epsilon.to_string(),
                reason: "must be finite and non-negative",
            });
        }
        (0..channels)
            .map(|c| {
                let denom = self.var[c] as f64 + self.epsilon as f64;
                if denom.is_nan() || denom <= 0.0 {
                    return Err(KernelError::InvalidArgument {
                        name: "var",
                        value: format!("var[{c}] = {} with epsilon {}", self.var[c], self.epsilon),
                        reason: "variance + epsilon must be positive",
                    });
                }
                let k = self.scale[c] as f64 / denom.sqrt();
                Ok([self.mean[c], k as f32, self.bias[c]])
            })
            .collect()
    }
}

/// A run of whole channel planes of batch normalisation, run under [`dispatch`].
struct BatchNormPlanes<'a> {
    src: Option<&'a [f32]>,
    dst: &'a mut [f32],
    plane: usize,
    first_plane: usize,
    coef: &'a [[f32; 3]],
    relu: bool,
}

impl Kernel for BatchNormPlanes<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let channels = self.coef.len();
        for (p, dst) in self.dst.chunks_exact_mut(self.plane).enumerate() {
            let plane_index = self.first_plane + p;
            let [mean, k, bias] = self.coef[plane_index % channels];
            match self.src {
                None => {
                    for v in dst.iter_mut() {
                        *v = fmadd::<FMA>(*v - mean, k, bias);
                    }
                }
                Some(src) => {
                    let off = p * self.plane;
                    let src = &src[off..off + self.plane];
                    for (v, &x) in dst.iter_mut().zip(src) {
                        *v = fmadd::<FMA>(x - mean, k, bias);
                    }
                }
            }
            if self.relu {
                // A second pass over the plane, still in L1: both loops stay branch-free.
                for v in dst.iter_mut() {
                    *v = if *v < 0.0 { 0.0 } else { *v };
                }
            }
        }
    }
}

fn batch_norm_impl(
    src: Option<&[f32]>,
    dst: &mut [f32],
    dims: &[usize],
    p: &BatchNorm<'_>,
    isa: Isa,
) -> Result<()> {
    isa.require()?;
    if dims.len() < 2 {
        return Err(KernelError::InvalidArgument {
            name: "dims",
            value: format!("{dims:?}"),
            reason: "batch_norm needs [N, C, ...]",
        });
    }
    check_len("batch_norm", "output", dst.len(), dims)?;
    if let Some(src) = src {
        check_len("batch_norm", "input", src.len(), dims)?;
    }
    let coef = p.coefficients(dims[1])?;
    let plane = numel("batch_norm", &dims[2..])?;
    if dst.is_empty() {
        return Ok(());
    }
    if go_parallel(dst.len()) {
        let planes_per_task = (PAR_CHUNK / plane).max(1);
        let chunk = planes_per_task * plane;
        let coef = &coef;
        dst.par_chunks_mut(chunk).enumerate().for_each(|(i, dst)| {
            let src = src.map(|s| &s[i * chunk..i * chunk + dst.len()]);
            let k = BatchNormPlanes {
                src,
                dst,
                plane,
                first_plane: i * planes_per_task,
                coef,
                relu: p.relu,
            };
            dispatch(isa, k);
        });
    } else {
        let k = BatchNormPlanes {
            src,
            dst,
            plane,
            first_plane: 0,
            coef: &coef,
            relu: p.relu,
        };
        dispatch(isa, k);
    }
    Ok(())
}

/// Batch normalisation (inference) of `x` with shape `[N, C, ...]` into `y`, on the given
/// instruction set.
pub fn batch_norm_with_isa(
    x: &[f32],
    dims: &[usize],
    p: &BatchNorm<'_>,
    y: &mut [f32],
    isa: Isa,
) -> Result<()> {
    batch_norm_impl(Some(x), y, dims, p, isa)
}

/// Batch normalisation (inference) of `x` with shape `[N, C, ...]` into `y`.
pub fn batch_norm(x: &[f32], dims: &[usize], p: &BatchNorm<'_>, y: &mut [f32]) -> Result<()> {
    batch_norm_impl(Some(x), y, dims, p, Isa::selected())
}

/// Batch normalisation (inference) in place on a tensor of shape `[N, C, ...]`.
pub fn batch_norm_inplace(data: &mut [f32], dims: &[usize], p: &BatchNorm<'_>) -> Result<()> {
    batch_norm_impl(None, data, dims, p, Isa::selected())
}

// ---------------------------------------------------------------------------------------------
// Local response normalisation.
// ---------------------------------------------------------------------------------------------

/// Parameters of local response normalisation across channels (ONNX LRN):
/// `y = x / (bias + alpha/size · Σ x²)^beta`, the sum over channels
/// `[c - ⌊(size-1)/2⌋, c + ⌈(size-1)/2⌉]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lrn {
    /// Number of channels summed over (≥ 1).
    pub size: usize,
    /// Scale of the sum of squares.
    pub alpha: f32,
    /// Exponent.
    pub beta: f32,
    /// Additive constant.
    pub bias: f32,
}

impl Default for Lrn {
    /// ONNX defaults: alpha 1e-4, beta 0.75, bias 1, and a window of 5 channels.
    fn default() -> Self {
        Lrn {
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
        }
    }
}

/// A run of whole output planes of LRN, run under [`dispatch`].
struct LrnPlanes<'a> {
    x: &'a [f32],
    dst: &'a mut [f32],
    channels: usize,
    plane: usize,
    first_plane: usize,
    p: Lrn,
}

impl Kernel for LrnPlanes<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let LrnPlanes {
            x,
            dst,
            channels,
            plane,
            first_plane,
            p,
        } = self;
        let mut sq = vec![0.0f32; plane];
        let coef = p.alpha / p.size as f32;
        for (i, out) in dst.chunks_exact_mut(plane).enumerate() {
            let index = first_plane + i;
            let (n, c) = (index / channels, index % channels);
            let lo = c.saturating_sub((p.size - 1) / 2);
            let hi = (c + p.size / 2).min(channels - 1);
            sq.fill(0.0);
            for cc in lo..=hi {
                let off = (n * channels + cc) * plane;
                for (s, &v) in sq.iter_mut().zip(&x[off..off + plane]) {
                    *s = fmadd::<FMA>(v, v, *s);
                }
            }
            let off = index * plane;
            let src = &x[off..off + plane];
            let bias = p.bias;
            match p.beta {
                0.75 => {
                    for ((o, &v), &s) in out.iter_mut().zip(src).zip(&sq) {
                        let b = fmadd::<FMA>(coef, s, bias);
                        let r = b.sqrt();
                        *o = v / (r * r.sqrt());
                    }
                }
                0.5 => {
                    for ((o, &v), &s) in out.iter_mut().zip(src).zip(&sq) {
                        *o = v / fmadd::<FMA>(coef, s, bias).sqrt();
                    }
                }
                1.0 => {
                    for ((o, &v), &s) in out.iter_mut().zip(src).zip(&sq) {
                        *o = v / fmadd::<FMA>(coef, s, bias);
                    }
                }
                beta => {
                    for ((o, &v), &s) in out.iter_mut().zip(src).zip(&sq) {
                        *o = v * fmadd::<FMA>(coef, s, bias).powf(-beta);
                    }
                }
            }
        }
    }
}

/// Local response normalisation of `x` (NCHW, `dims`) into `y`, ONNX semantics.
pub fn lrn(x: &[f32], dims: [usize; 4], p: &Lrn, y: &mut [f32]) -> Result<()> {
    check_len("lrn", "input", x.len(), &dims)?;
    check_len("lrn", "output", y.len(), &dims)?;
    if p.size == 0 {
        return Err(KernelError::InvalidArgument {
            name: "size",
            value: "0".into(),
            reason: "LRN needs a window of at least one channel",
        });
    }
    for (name, v) in [("alpha", p.alpha), ("beta", p.beta), ("bias", p.bias)] {
        if !v.is_finite() {
            return Err(KernelError::InvalidArgument {
                name,
                value: v.to_string(),
                reason: "must be finite",
            });
        }
    }
    if y.is_empty() {
        return Ok(());
    }
    let [_, channels, h, w] = dims;
    let plane = h * w;
    let isa = Isa::selected();
    let p = *p;
    if go_parallel(y.len().saturating_mul(p.size.min(channels))) {
        let planes_per_task = (PAR_CHUNK / plane).max(1);
        y.par_chunks_mut(planes_per_task * plane)
            .enumerate()
            .for_each(|(i, dst)| {
                let k = LrnPlanes {
                    x,
                    dst,
                    channels,
                    plane,
                    first_plane: i * planes_per_task,
                    p,
                };
                dispatch(isa, k);
            });
    } else {
        let k = LrnPlanes {
            x,
            dst: y,
            channels,
            plane,
            first_plane: 0,
            p,
        };
        dispatch(isa, k);
    }
    Ok(())
}
