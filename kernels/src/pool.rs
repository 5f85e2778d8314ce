//! 2-D pooling on NCHW tensors with ONNX semantics: max and average pooling with kernel,
//! stride, asymmetric pads, dilation, `ceil_mode` and `count_include_pad`, and global
//! average / max pooling.
//!
//! Each output row is accumulated in place, one kernel tap at a time over the whole row, so
//! stride-1 windows become contiguous vector loops. Channel planes are split across the current
//! rayon pool when the tensor is large.

use rayon::prelude::*;

use crate::elementwise::check_len;
use crate::math::{Kernel, PAR_CHUNK, dispatch, go_parallel, max_nan};
use crate::norm::sum_of;
use crate::{Isa, KernelError, Result};

/// Geometry of a 2-D pooling window (ONNX MaxPool / AveragePool attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Window height and width (≥ 1).
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride (≥ 1).
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`; each must be smaller than its kernel extent.
    pub pads: [usize; 4],
    /// Spacing between window taps (≥ 1); 1 is a dense window.
    pub dilation: [usize; 2],
    /// Round the output size up instead of down (the last window may hang over the edge).
    pub ceil_mode: bool,
    /// Average pooling divides by the full window including padding, not only the valid taps.
    pub count_include_pad: bool,
}

impl Pool2dParams {
    /// A dense `kernel` window with stride 1, no padding, floor mode, padding not counted.
    pub fn new(kernel: [usize; 2]) -> Self {
        Pool2dParams {
            kernel,
            stride: [1, 1],
            pads: [0; 4],
            dilation: [1, 1],
            ceil_mode: false,
            count_include_pad: false,
        }
    }

    /// The same window with another stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }

    /// The same window with other pads `[top, left, bottom, right]`.
    pub fn with_pads(mut self, pads: [usize; 4]) -> Self {
        self.pads = pads;
        self
    }

    /// The same window with another dilation.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }

    /// The same window with `ceil_mode` set as given.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// The same window with `count_include_pad` set as given.
    pub fn with_count_include_pad(mut self, count_include_pad: bool) -> Self {
        self.count_include_pad = count_include_pad;
        self
    }

    /// Output length along one axis (0 = height, 1 = width) for an input of length `len`.
    fn out_len(&self, axis: usize, len: usize) -> Result<usize> {
        let (k, s, d) = (self.kernel[axis], self.stride[axis], self.dilation[axis]);
        let (pb, pe) = (self.pads[axis], self.pads[axis + 2]);
        let extent = (k - 1)
            .checked_mul(d)
            .and_then(|e| e.checked_add(1))
            .ok_or_else(|| KernelError::SizeOverflow {
                what: "pool window",
                detail: format!("kernel {k} with dilation {d}"),
            })?;
        let padded = len
            .checked_add(pb)
            .and_then(|v| v.checked_add(pe))
            .ok_or_else(|| KernelError::SizeOverflow {
                what: "padded input",
                detail: format!("{len} + {pb} + {pe}"),
            })?;
        if padded < extent {
            return Err(KernelError::ShapeMismatch {
                op: "pool2d",
                detail: format!(
                    "{} axis: padded input {padded} ({len} + pads {pb}, {pe}) is smaller than \
                     the window extent {extent}",
                    AXIS[axis]
                ),
            });
        }
        let span = padded - extent;
        let mut out = if self.ceil_mode {
            span.div_ceil(s) + 1
        } else {
            span / s + 1
        };
        // ONNX / PyTorch: in ceil mode the last window must start inside the input or the
        // leading padding, not in the trailing padding.
        if self.ceil_mode && (out - 1).saturating_mul(s) >= len.saturating_add(pb) {
            out -= 1;
        }
        Ok(out)
    }

    fn validate(&self) -> Result<()> {
        // Window arithmetic runs in isize: keep every quantity well inside it.
        const LIMIT: usize = (isize::MAX as usize) / 4;
        if self.kernel.iter().any(|&k| k > MAX_WINDOW) {
            return Err(KernelError::InvalidArgument {
                name: "kernel",
                value: format!("{:?}", self.kernel),
                reason: "pooling windows are limited to 65536 taps per axis",
            });
        }
        for (name, values) in [
            ("kernel", self.kernel.to_vec()),
            ("stride", self.stride.to_vec()),
            ("dilation", self.dilation.to_vec()),
            ("pads", self.pads.to_vec()),
        ] {
            if values.iter().any(|&v| v > LIMIT) {
                return Err(KernelError::InvalidArgument {
                    name,
                    value: format!("{values:?}"),
                    reason: "too large for a pooling window",
                });
            }
        }
        for axis in 0..2 {
            for (name, v) in [
                ("kernel", self.kernel[axis]),
                ("stride", self.stride[axis]),
                ("dilation", self.dilation[axis]),
            ] {
                if v == 0 {
                    return Err(KernelError::InvalidArgument {
                        name,
                        value: format!("{:?}", self.field(name)),
                        reason: "every entry must be at least 1",
                    });
                }
            }
            for pad in [self.pads[axis], self.pads[axis + 2]] {
                if pad >= self.kernel[axis] {
                    return Err(KernelError::InvalidArgument {
                        name: "pads",
                        value: format!("{:?} with kernel {:?}", self.pads, self.kernel),
                        reason: "each pad must be smaller than the kernel along its axis",
                    });
                }
            }
        }
        Ok(())
    }

    fn field(&self, name: &str) -> [usize; 2] {
        match name {
            "kernel" => self.kernel,
            "stride" => self.stride,
            _ => self.dilation,
        }
    }
}

const AXIS: [&str; 2] = ["height", "width"];

/// Most taps of a pooling window along one axis (per-tap tables are built for each).
pub const MAX_WINDOW: usize = 1 << 16;

/// Output dimensions `[N, C, OH, OW]` of a 2-D pooling of an NCHW input of dimensions `dims`.
pub fn pool2d_output_dims(dims: [usize; 4], p: &Pool2dParams) -> Result<[usize; 4]> {
    p.validate()?;
    let [n, c, h, w] = dims;
    if h == 0 || w == 0 {
        return Err(KernelError::InvalidArgument {
            name: "dims",
            value: format!("{dims:?}"),
            reason: "pooling needs a non-empty spatial extent",
        });
    }
    Ok([n, c, p.out_len(0, h)?, p.out_len(1, w)?])
}

/// Precomputed per-axis geometry of one pooling.
struct AxisPlan {
    /// Input length.
    len: usize,
    out: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    /// Per output index: number of taps inside the input.
    valid: Vec<u32>,
    /// Per output index: number of taps inside the padded input.
    padded: Vec<u32>,
}

/// How many taps `start + t·d` (t in 0..k) fall in `lo..hi`, in O(1) rather than O(k).
fn taps_within(start: isize, k: usize, d: usize, lo: isize, hi: isize) -> u32 {
    // Distances are non-negative here, so the divisions run on usize.
    let first = ((lo - start).max(0) as usize).div_ceil(d); // i >= lo
    let end = if hi <= start {
        0
    } else {
        ((hi - start) as usize).div_ceil(d).min(k) // i < hi
    };
    u32::try_from(end.saturating_sub(first)).unwrap_or(u32::MAX)
}

impl AxisPlan {
    /// Length of the input padded on both sides as far as any window reaches (at least the
    /// input and its leading padding).
    fn padded_len(&self) -> usize {
        (self.out.saturating_sub(1) * self.stride + (self.kernel - 1) * self.dilation + 1)
            .max(self.pad_begin + self.len)
    }

    fn new(p: &Pool2dParams, axis: usize, len: usize, out: usize) -> Self {
        let (k, s, d) = (p.kernel[axis], p.stride[axis], p.dilation[axis]);
        let (pb, pe) = (p.pads[axis] as isize, p.pads[axis + 2] as isize);
        let mut valid = Vec::with_capacity(out);
        let mut padded = Vec::with_capacity(out);
        for o in 0..out {
            let start = (o * s) as isize - pb;
            valid.push(taps_within(start, k, d, 0, len as isize));
            padded.push(taps_within(start, k, d, -pb, len as isize + pe));
        }
        AxisPlan {
            len,
            out,
            kernel: k,
            stride: s,
            dilation: d,
            pad_begin: p.pads[axis],
            valid,
            padded,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Max,
    Avg,
}

/// Shared geometry of one pooling call.
struct PoolPlan {
    rows: AxisPlan,
    cols: AxisPlan,
    mode: Mode,
    count_include_pad: bool,
}

/// A run of whole channel planes of a pooling, run under [`dispatch`].
struct PoolPlanes<'a> {
    plan: &'a PoolPlan,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl Kernel for PoolPlanes<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        match self.plan.mode {
            Mode::Max => pool_planes::<MaxAcc>(self),
            Mode::Avg => pool_planes::<SumAcc>(self),
        }
    }
}

trait Acc {
    const INIT: f32;
    fn acc(a: f32, v: f32) -> f32;
}

struct MaxAcc;
impl Acc for MaxAcc {
    const INIT: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn acc(a: f32, v: f32) -> f32 {
        max_nan(a, v)
    }
}

struct SumAcc;
impl Acc for SumAcc {
    const INIT: f32 = 0.0;
    #[inline(always)]
    fn acc(a: f32, v: f32) -> f32 {
        a + v
    }
}

/// Values per register block of the pooling passes.
const BLOCK: usize = 16;

#[inline(always)]
fn pool_planes<A: Acc>(k: PoolPlanes<'_>) {
    let plan = k.plan;
    let (h, w) = (plan.rows.len, plan.cols.len);
    let (oh, ow) = (plan.rows.out, plan.cols.out);
    let cols = &plan.cols;
    let col_div = if plan.count_include_pad {
        &plan.cols.padded
    } else {
        &plan.cols.valid
    };
    let row_div = if plan.count_include_pad {
        &plan.rows.padded
    } else {
        &plan.rows.valid
    };
    // An average's scale per output of a plane (one over its taps, counted per axis),
    // applied to whole planes at once, so it vectorises even on planes narrower than a
    // vector (a division per row of 14 values ran one at a time: 40 % of a 14×14 pooling).
    let scales: Vec<f32> = if plan.mode == Mode::Avg {
        row_div[..oh]
            .iter()
            .flat_map(|&rd| {
                col_div[..ow]
                    .iter()
                    .map(move |&cd| 1.0 / (rd as f32 * cd as f32))
            })
            .collect()
    } else {
        Vec::new()
    };
    let divide = |planes: &mut [f32]| {
        if plan.mode == Mode::Avg {
            for plane in planes.chunks_exact_mut(oh * ow) {
                for (a, &scale) in plane.iter_mut().zip(&scales) {
                    // A window with no valid tap (which needs dilation) sums to 0 and scales
                    // by 1/0: NaN, as 0/0.
                    *a *= scale;
                }
            }
        }
    };
    // Column taps as offsets along a padded line, for unit column strides.
    let col_taps: Vec<usize> = (0..cols.kernel).map(|t| t * cols.dilation).collect();
    if plan.rows.stride == 1 && cols.stride == 1 {
        return unit_stride::<A>(k, &col_taps, divide);
    }
    // The window is separable. The input rows of an output row's window (those inside the
    // input) are first reduced column by column into the middle of `line`, a contiguous pass
    // that vectorises without shuffles; `line` holds INIT in the padding on both sides (and
    // past the input for ceil mode), so every output then reads its column taps from `line`
    // alone, in full blocks, with no border cases. INIT never wins a max and adds nothing to
    // a sum (the average's divisors count the taps).
    let pad = cols.pad_begin;
    let mut line = vec![A::INIT; cols.padded_len()];
    let mut window_rows: Vec<usize> = Vec::with_capacity(plan.rows.kernel);
    let horizontal = Horizontal {
        kernel: cols.kernel,
        stride: cols.stride,
        dilation: cols.dilation,
    };
    for (x, y) in k.x.chunks_exact(h * w).zip(k.y.chunks_exact_mut(oh * ow)) {
        for (r, out) in y.chunks_exact_mut(ow).enumerate() {
            let start = (r * plan.rows.stride) as isize - plan.rows.pad_begin as isize;
            window_rows.clear();
            window_rows.extend(
                (0..plan.rows.kernel)
                    .map(|t| start + (t * plan.rows.dilation) as isize)
                    .filter(|&ih| ih >= 0 && ih < h as isize)
                    .map(|ih| ih as usize * w),
            );
            reduce_rows::<A>(&mut line[pad..pad + w], x, &window_rows);
            if cols.stride == 1 {
                // Unit column strides read the taps as shifted lines, like the row pass.
                reduce_rows::<A>(out, &line, &col_taps);
            } else {
                horizontal.run::<A>(&line, out);
            }
        }
        divide(y);
    }
}

/// [`pool_planes`] for unit strides, a whole plane per pass: the plane is copied into one
/// padded with INIT (as wide and high as its windows reach), and both passes then run as
/// single contiguous reductions over the plane, the windows' rows `WP` values apart and
/// their columns 1 apart, with no per-row work but copying the real columns out.
#[inline(always)]
fn unit_stride<A: Acc>(k: PoolPlanes<'_>, col_taps: &[usize], divide: impl Fn(&mut [f32])) {
    let plan = k.plan;
    let (rows, cols) = (&plan.rows, &plan.cols);
    let (h, w, oh, ow) = (rows.len, cols.len, rows.out, cols.out);
    let (top, left) = (rows.pad_begin, cols.pad_begin);
    let wp = cols.padded_len();
    let mut padded = vec![A::INIT; rows.padded_len() * wp];
    let mut vertical = vec![A::INIT; oh * wp];
    let mut horizontal = vec![A::INIT; oh.saturating_sub(1) * wp + ow];
    let row_taps: Vec<usize> = (0..rows.kernel).map(|t| t * rows.dilation * wp).collect();
    for (x, y) in k.x.chunks_exact(h * w).zip(k.y.chunks_exact_mut(oh * ow)) {
        // Only the image is written: the padding around it stays INIT from the start.
        for (src, dst) in x
            .chunks_exact(w)
            .zip(padded[top * wp..].chunks_exact_mut(wp))
        {
            dst[left..left + w].copy_from_slice(src);
        }
        reduce_rows::<A>(&mut vertical, &padded, &row_taps);
        reduce_rows::<A>(&mut horizontal, &vertical, col_taps);
        for (r, out) in y.chunks_exact_mut(ow).enumerate() {
            out.copy_from_slice(&horizontal[r * wp..r * wp + ow]);
        }
        divide(y);
    }
}

/// The column pass of a pooling with a column stride above 1: output `o` reduces
/// `line[o·stride + t·dilation]` over the taps `t`, where `line` is an input row padded on
/// both sides. (Unit strides take [`reduce_rows`] with the taps as offsets.)
struct Horizontal {
    kernel: usize,
    stride: usize,
    dilation: usize,
}

impl Horizontal {
    /// All of `out`, in blocks of 16, 8 or 4 outputs (the last block shifted back to end at
    /// the row's end, recomputing a few), or one at a time for rows narrower than 4.
    #[inline(always)]
    fn run<A: Acc>(&self, line: &[f32], out: &mut [f32]) {
        let ow = out.len();
        if ow >= BLOCK {
            self.blocks::<A, BLOCK>(line, out);
        } else if ow >= BLOCK / 2 {
            self.blocks::<A, { BLOCK / 2 }>(line, out);
        } else if ow >= BLOCK / 4 {
            self.blocks::<A, { BLOCK / 4 }>(line, out);
        } else {
            for (o, dst) in out.iter_mut().enumerate() {
                *dst = (0..self.kernel).fold(A::INIT, |a, t| {
                    A::acc(a, line[o * self.stride + t * self.dilation])
                });
            }
        }
    }

    /// Blocks of `N` outputs; `out` holds at least `N`.
    #[inline(always)]
    fn blocks<A: Acc, const N: usize>(&self, line: &[f32], out: &mut [f32]) {
        let (ow, s) = (out.len(), self.stride);
        let mut o = 0;
        while o < ow {
            let first = o.min(ow - N);
            let mut acc = [A::INIT; N];
            for t in 0..self.kernel {
                let base = first * s + t * self.dilation;
                match s {
                    2 => {
                        let seg = &line[base..base + 2 * N - 1];
                        for (l, a) in acc.iter_mut().enumerate() {
                            *a = A::acc(*a, seg[2 * l]);
                        }
                    }
                    _ => {
                        let seg = &line[base..base + (N - 1) * s + 1];
                        for (l, a) in acc.iter_mut().enumerate() {
                            *a = A::acc(*a, seg[l * s]);
                        }
                    }
                }
            }
            out[first..first + N].copy_from_slice(&acc);
            o = first + N;
        }
    }
}

/// `line[i] = reduction over rows of x[row + i]` (INIT where `rows` is empty), in blocks of
/// 16, 8 and 4 values held in registers and stored once (a reduction in place in `line`
/// compiles to masked stores, which some CPUs run slowly), the last few one at a time.
///
/// Windows of two and three rows (2×2 and 3×3 pools) take [`reduce_fixed`], whose tap loop
/// unrolls and whose reads are bounds-checked once per row rather than once per block.
#[inline(always)]
fn reduce_rows<A: Acc>(line: &mut [f32], x: &[f32], rows: &[usize]) {
    match *rows {
        [a, b, c] => return reduce_fixed::<A, 3>(line, x, [a, b, c]),
        [a, b] => return reduce_fixed::<A, 2>(line, x, [a, b]),
        _ => {}
    }
    let mut done = reduce_blocks::<A, BLOCK>(line, x, rows, 0);
    done = reduce_blocks::<A, { BLOCK / 2 }>(line, x, rows, done);
    done = reduce_blocks::<A, { BLOCK / 4 }>(line, x, rows, done);
    for (i, dst) in line.iter_mut().enumerate().skip(done) {
        *dst = rows.iter().fold(A::INIT, |a, &row| A::acc(a, x[row + i]));
    }
}

/// [`reduce_rows`] over exactly `K` rows: each row's `line.len()` values sliced once, then
/// blocks of 16, 8 and 4 values and the last few one at a time.
#[inline(always)]
fn reduce_fixed<A: Acc, const K: usize>(line: &mut [f32], x: &[f32], rows: [usize; K]) {
    let len = line.len();
    let sources: [&[f32]; K] = rows.map(|row| &x[row..row + len]);
    let mut done = reduce_fixed_blocks::<A, K, BLOCK>(line, &sources, 0);
    done = reduce_fixed_blocks::<A, K, { BLOCK / 2 }>(line, &sources, done);
    done = reduce_fixed_blocks::<A, K, { BLOCK / 4 }>(line, &sources, done);
    for (i, dst) in line.iter_mut().enumerate().skip(done) {
        *dst = sources.iter().fold(A::INIT, |a, src| A::acc(a, src[i]));
    }
}

/// [`reduce_fixed`] for the whole blocks of `N` values from `first` on; returns where they
/// end. Every source holds `line.len()` values.
#[inline(always)]
fn reduce_fixed_blocks<A: Acc, const K: usize, const N: usize>(
    line: &mut [f32],
    sources: &[&[f32]; K],
    first: usize,
) -> usize {
    let blocks = (line.len() - first) / N;
    let end = first + blocks * N;
    let mut reads = sources.map(|src| src[first..end].chunks_exact(N));
    for dst in line[first..end].chunks_exact_mut(N) {
        let mut acc = [A::INIT; N];
        for read in reads.iter_mut() {
            if let Some(src) = read.next() {
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a = A::acc(*a, v);
                }
            }
        }
        dst.copy_from_slice(&acc);
    }
    end
}

/// [`reduce_rows`] for the whole blocks of `N` values from `first` on; returns where they end.
#[inline(always)]
fn reduce_blocks<A: Acc, const N: usize>(
    line: &mut [f32],
    x: &[f32],
    rows: &[usize],
    first: usize,
) -> usize {
    let blocks = (line.len() - first) / N;
    for block in 0..blocks {
        let at = first + block * N;
        let mut acc = [A::INIT; N];
        for &row in rows {
            for (a, &v) in acc.iter_mut().zip(&x[row + at..][..N]) {
                *a = A::acc(*a, v);
            }
        }
        line[at..at + N].copy_from_slice(&acc);
    }
    first + blocks * N
}

fn pool2d(
    mode: Mode,
    x: &[f32],
    dims: [usize; 4],
    p: &Pool2dParams,
    y: &mut [f32],
    isa: Isa,
) -> Result<()> {
    let op = match mode {
        Mode::Max => "max_pool2d",
        Mode::Avg => "avg_pool2d",
    };
    isa.require()?;
    let out_dims = pool2d_output_dims(dims, p)?;
    check_len(op, "input", x.len(), &dims)?;
    check_len(op, "output", y.len(), &out_dims)?;
    let [n, c, h, w] = dims;
    let [_, _, oh, ow] = out_dims;
    let planes = n * c;
    if planes == 0 {
        return Ok(());
    }
    if (oh, ow) == (1, 1) && p.kernel == [h, w] && p.pads == [0; 4] && p.dilation == [1, 1] {
        // One window over each whole plane (a classifier's average pooling): a global pooling,
        // one vectorised pass per plane instead of the separable passes' per-plane set-up.
        return global_planes(mode, x, y, h * w, isa);
    }
    let rows = AxisPlan::new(p, 0, h, oh);
    let cols = AxisPlan::new(p, 1, w, ow);
    let plan = PoolPlan {
        rows,
        cols,
        mode,
        count_include_pad: p.count_include_pad,
    };
    let work = x.len().max(
        y.len()
            .saturating_mul(p.kernel[0])
            .saturating_mul(p.kernel[1]),
    );
    if go_parallel(work) {
        let planes_per_task = (PAR_CHUNK / (h * w).max(oh * ow)).clamp(1, planes);
        x.par_chunks(planes_per_task * h * w)
            .zip(y.par_chunks_mut(planes_per_task * oh * ow))
            .for_each(|(x, y)| dispatch(isa, PoolPlanes { plan: &plan, x, y }));
    } else {
        dispatch(isa, PoolPlanes { plan: &plan, x, y });
    }
    Ok(())
}

/// Max pooling of an NCHW tensor `x` (dimensions `dims`) into `y` (dimensions from
/// [`pool2d_output_dims`]). Padding never wins; NaN in a window gives NaN.
pub fn max_pool2d(x: &[f32], dims: [usize; 4], p: &Pool2dParams, y: &mut [f32]) -> Result<()> {
    pool2d(Mode::Max, x, dims, p, y, Isa::selected())
}

/// Average pooling of an NCHW tensor `x` (dimensions `dims`) into `y` (dimensions from
/// [`pool2d_output_dims`]).
pub fn avg_pool2d(x: &[f32], dims: [usize; 4], p: &Pool2dParams, y: &mut [f32]) -> Result<()> {
    pool2d(Mode::Avg, x, dims, p, y, Isa::selected())
}

/// Max pooling on the given instruction set.
pub fn max_pool2d_with_isa(
    x: &[f32],
    dims: [usize; 4],
    p: &Pool2dParams,
    y: &mut [f32],
    isa: Isa,
) -> Result<()> {
    pool2d(Mode::Max, x, dims, p, y, isa)
}

/// Average pooling on the given instruction set.
pub fn avg_pool2d_with_isa(
    x: &[f32],
    dims: [usize; 4],
    p: &Pool2dParams,
    y: &mut [f32],
    isa: Isa,
) -> Result<()> {
    pool2d(Mode::Avg, x, dims, p, y, isa)
}

/// A run of whole planes of a global pooling, run under [`dispatch`].
struct GlobalPlanes<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    mode: Mode,
}

impl Kernel for GlobalPlanes<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let plane = self.x.len() / self.y.len();
        for (x, y) in self.x.chunks_exact(plane).zip(self.y.iter_mut()) {
            *y = match self.mode {
                Mode::Avg => (sum_of(x) / plane as f64) as f32,
                Mode::Max => {
                    let mut acc = [f32::NEG_INFINITY; 16];
                    let mut chunks = x.chunks_exact(16);
                    for c in &mut chunks {
                        for j in 0..16 {
                            acc[j] = max_nan(acc[j], c[j]);
                        }
                    }
                    chunks
                        .remainder()
                        .iter()
                        .chain(acc.iter())
                        .fold(f32::NEG_INFINITY, |m, &v| max_nan(m, v))
                }
            };
        }
    }
}

fn global_pool(mode: Mode, x: &[f32], dims: [usize; 4], y: &mut [f32]) -> Result<()> {
    let op = match mode {
        Mode::Max => "global_max_pool",
        Mode::Avg => "global_average_pool",
    };
    check_len(op, "input", x.len(), &dims)?;
    let [n, c, h, w] = dims;
    if h == 0 || w == 0 {
        return Err(KernelError::InvalidArgument {
            name: "dims",
            value: format!("{dims:?}"),
            reason: "global pooling needs a non-empty spatial extent",
        });
    }
    check_len(op, "output", y.len(), &[n, c])?;
    if y.is_empty() {
        return Ok(());
    }
    global_planes(mode, x, y, h * w, Isa::selected())
}

/// The global pooling of whole planes of `plane` values of `x` into one value each of `y`.
fn global_planes(mode: Mode, x: &[f32], y: &mut [f32], plane: usize, isa: Isa) -> Result<()> {
    if go_parallel(x.len()) {
        let planes_per_task = (PAR_CHUNK / plane).max(1);
        x.par_chunks(planes_per_task * plane)
            .zip(y.par_chunks_mut(planes_per_task))
            .for_each(|(x, y)| dispatch(isa, GlobalPlanes { x, y, mode }));
    } else {
        dispatch(isa, GlobalPlanes { x, y, mode });
    }
    Ok(())
}

/// Mean over H×W of each channel plane of an NCHW tensor: `y` holds N×C values.
pub fn global_average_pool(x: &[f32], dims: [usize; 4], y: &mut [f32]) -> Result<()> {
    global_pool(Mode::Avg, x, dims, y)
}

/// Maximum over H×W of each channel plane of an NCHW tensor (NaN propagates): `y` holds N×C.
pub fn global_max_pool(x: &[f32], dims: [usize; 4], y: &mut [f32]) -> Result<()> {
    global_pool(Mode::Max, x, dims, y)
}
