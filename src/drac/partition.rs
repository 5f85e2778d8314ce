//! The partitioner: splits one matmul or conv2d into parts, one or more per node, whose outputs
//! assemble into the op's output.
//!
//! Strategies:
//! - matmul `C[M×N] = op(A)·op(B)`: by output rows ([`Strategy::Rows`], each part gets a slice
//!   of A and all of B), by output columns ([`Strategy::Cols`], all of A and a slice of B), by a
//!   2-D grid of blocks ([`Strategy::Grid`]), or by slices of the reduced dimension K
//!   ([`Strategy::KSplit`]: each part is a plain matmul on a K slice that outputs a full
//!   `[M, N]` partial sum, and the partials are reduced by adding them in K order);
//! - conv2d: by images of the batch ([`Strategy::Batch`]), by output channels
//!   ([`Strategy::OutChannels`], weights and bias sliced; a grouped convolution is split at
//!   group boundaries only, each part running whole groups on their input channels), or by
//!   output rows ([`Strategy::OutRows`]: each part gets the input rows its output rows read,
//!   the halo, with its top and bottom padding set to what those rows still need, so that it
//!   outputs exactly its planned rows).
//!
//! Part sizes follow the shares (predicted node speeds) by largest-remainder rounding
//! ([`weighted_ranges`]). For a grid of `rows × cols` the shares are one per cell, row-major
//! (node `i` owns cell `(i / cols, i % cols)`): each band of rows gets M rows in proportion to
//! the sum of its cells' shares, and within a band each cell gets N columns in proportion to
//! its own share, so every node's block area follows its share (column cuts need not line up
//! between bands).
//!
//! A part too large for its node's memory is tiled further by [`split_to_fit`]; [`extract`]
//! cuts a part's inputs out of the whole inputs, and [`assemble`] places (or, for K-split
//! partials, sums) the part outputs into the whole output.
//!
//! Exactness on the CPU node: every output element of a row, column, grid, batch,
//! output-channel or output-row part is computed by the same kernel with the same reduction
//! order as in the whole op (the gemm's depth blocking depends on K only, and the halo gives
//! each output row the same input values and padding), so those splits are bit for bit equal
//! to the single-node result — except row and channel splits of convolutions on a Winograd
//! path, whose rounding depends on where an output sits in its tile (see
//! docs/architecture.md). K-split partials are rounded separately and then added, so they
//! match within float tolerance.
//!
//! Planning touches no tensor data: [`partition`] and [`split_to_fit`] only compute ranges and
//! shapes.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

use crate::op::{Op, conv2d_dims, matmul_dims};
use crate::tensor::{
    DType, Shape, Tensor, TensorData, TensorElement, TensorView, try_filled, try_zeros_f32,
};
use crate::{Conv2dParams, Error, Result};

/// Fewest K values per part for [`Strategy::KSplit`] to be proposed.
pub const KSPLIT_MIN_DEPTH_PER_PART: usize = 64;

/// Most compressed cells the coverage check of [`assemble`] marks before it falls back to
/// comparing parts pairwise.
const COVERAGE_MAX_CELLS: usize = 1 << 22;

/// How an op is cut into parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Matmul by output rows (M).
    Rows,
    /// Matmul by output columns (N).
    Cols,
    /// Matmul by a 2-D grid of output blocks, one cell per share, row-major.
    Grid {
        /// Bands of output rows.
        rows: usize,
        /// Cells per band (output column ranges).
        cols: usize,
    },
    /// Matmul by slices of K, each part giving a full partial output; partials are summed.
    KSplit,
    /// Conv2d by images of the batch (N).
    Batch,
    /// Conv2d by output channels (whole groups when grouped).
    OutChannels,
    /// Conv2d by output rows, each part receiving its input halo.
    OutRows,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Rows => f.write_str("rows"),
            Strategy::Cols => f.write_str("cols"),
            Strategy::Grid { rows, cols } => write!(f, "grid {rows}x{cols}"),
            Strategy::KSplit => f.write_str("k-split"),
            Strategy::Batch => f.write_str("batch"),
            Strategy::OutChannels => f.write_str("out-channels"),
            Strategy::OutRows => f.write_str("out-rows"),
        }
    }
}

/// A box of a tensor of rank at most 4: per-axis start and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Window {
    rank: usize,
    start: [usize; 4],
    len: [usize; 4],
}

impl Window {
    /// A window of rank `N` (at most 4).
    fn new<const N: usize>(start: [usize; N], len: [usize; N]) -> Window {
        let mut w = Window {
            rank: N,
            ..Window::default()
        };
        w.start[..N].copy_from_slice(&start);
        w.len[..N].copy_from_slice(&len);
        w
    }

    /// The shape of the window.
    fn shape(&self) -> Shape {
        Shape::new(&self.len[..self.rank])
    }

    /// True when the window is all of a tensor of dims `dims`.
    fn is_whole(&self, dims: &[usize]) -> bool {
        self.start[..self.rank].iter().all(|&s| s == 0) && self.len[..self.rank] == *dims
    }
}

/// The whole op a part belongs to, with its validated sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Whole {
    MatMul {
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
    },
    Conv {
        params: Conv2dParams,
        input: [usize; 4],
        weight: [usize; 4],
        output: [usize; 4],
        has_bias: bool,
    },
}

impl Whole {
    /// Validates `op` on `shapes`; ops other than matmul and conv2d are refused.
    fn new(op: &Op, shapes: &[&Shape]) -> Result<Whole> {
        match op {
            Op::MatMul { trans_a, trans_b } => {
                let d = matmul_dims(*trans_a, *trans_b, shapes)?;
                Ok(Whole::MatMul {
                    trans_a: *trans_a,
                    trans_b: *trans_b,
                    m: d.m,
                    n: d.n,
                    k: d.k,
                })
            }
            Op::Conv2d(params) => {
                let d = conv2d_dims(params, shapes)?;
                Ok(Whole::Conv {
                    params: params.clone(),
                    input: d.input,
                    weight: d.weight,
                    output: d.output,
                    has_bias: d.has_bias,
                })
            }
            other => Err(Error::parse(
                "partition op",
                other.name(),
                "only matmul and conv2d are split; other ops run whole on one node",
            )),
        }
    }

    /// The dims of the whole output.
    fn output_dims(&self) -> ([usize; 4], usize) {
        match self {
            Whole::MatMul { m, n, .. } => ([*m, *n, 0, 0], 2),
            Whole::Conv { output, .. } => (*output, 4),
        }
    }

    /// The dims of whole input `i`, or `None` past the last input.
    fn input_dims(&self, i: usize) -> Option<Vec<usize>> {
        match *self {
            Whole::MatMul {
                trans_a,
                trans_b,
                m,
                n,
                k,
            } => match i {
                0 => Some(if trans_a { vec![k, m] } else { vec![m, k] }),
                1 => Some(if trans_b { vec![n, k] } else { vec![k, n] }),
                _ => None,
            },
            Whole::Conv {
                input,
                weight,
                has_bias,
                ..
            } => match i {
                0 => Some(input.to_vec()),
                1 => Some(weight.to_vec()),
                2 if has_bias => Some(vec![weight[0]]),
                _ => None,
            },
        }
    }

    /// How many inputs the op takes.
    fn input_count(&self) -> usize {
        match self {
            Whole::MatMul { .. } => 2,
            Whole::Conv { has_bias, .. } => 2 + usize::from(*has_bias),
        }
    }

    /// The name of the op, for errors.
    fn name(&self) -> &'static str {
        match self {
            Whole::MatMul { .. } => "matmul",
            Whole::Conv { .. } => "conv2d",
        }
    }
}

/// The piece of the whole op's iteration space one part computes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Region {
    /// Output rows × columns over the K slice `depth`; `partial` when `depth` is not all of K.
    MatMul {
        rows: Range<usize>,
        cols: Range<usize>,
        depth: Range<usize>,
        partial: bool,
    },
    /// Images × output channels × output rows (all output columns).
    Conv {
        batch: Range<usize>,
        chans: Range<usize>,
        rows: Range<usize>,
    },
}

/// One part of a partitioned op: what it runs, on which slices, and where its output goes.
#[derive(Clone, Debug)]
pub struct PartSpec {
    /// Position in the returned list.
    pub index: usize,
    /// Which entry of the shares this part belongs to (which node).
    pub share_index: usize,
    /// The op the part runs (halo parts have adjusted pads, grouped channel parts fewer
    /// groups; K-split parts are plain matmuls on K slices).
    pub op: Op,
    /// The shapes of the part's inputs, in the op's input order.
    pub input_shapes: Vec<Shape>,
    /// The shape of the part's (f32) output.
    pub output_shape: Shape,
    /// Floating-point operations of the part ([`Op::flops`] on its shapes).
    pub flops: u64,
    /// Bytes of the inputs the part must receive at the planned dtype (a conv bias as f32),
    /// shared operands included.
    pub input_bytes: u64,
    /// Bytes of the f32 output the part sends back.
    pub output_bytes: u64,
    dtype: DType,
    whole: Whole,
    region: Region,
    windows: [Window; 3],
    out: Window,
}

impl PartSpec {
    /// True for a K-split partial sum, which must be added to the other partials of its
    /// output block rather than placed.
    pub fn is_partial(&self) -> bool {
        matches!(self.region, Region::MatMul { partial: true, .. })
    }

    /// Where the part's output starts in the whole output, per axis.
    pub fn output_offset(&self) -> &[usize] {
        &self.out.start[..self.out.rank]
    }

    /// Bytes the part's inputs and output occupy together.
    pub fn total_bytes(&self) -> u64 {
        self.input_bytes.saturating_add(self.output_bytes)
    }
}

/// `total` items cut into contiguous ranges in order, one per share, whose lengths follow the
/// shares by largest-remainder rounding; together they cover `0..total`.
///
/// A share that is negative, NaN or infinite counts as 0; a share of 0 gets an empty range;
/// when no share is positive, the items are split evenly. Ties go to the earlier share.
pub fn weighted_ranges(total: usize, shares: &[f64]) -> Vec<Range<usize>> {
    let positive = |s: f64| if s.is_finite() && s > 0.0 { s } else { 0.0 };
    // Scaled by the largest share first, so that the sum cannot overflow.
    let largest = shares.iter().fold(0.0f64, |m, &s| m.max(positive(s)));
    let clean = |s: f64| {
        if largest > 0.0 {
            positive(s) / largest
        } else {
            0.0
        }
    };
    let sum: f64 = shares.iter().map(|&s| clean(s)).sum();
    let even = sum <= 0.0;
    let weight = |s: f64| if even { 1.0 } else { clean(s) / sum };
    let mut lens = Vec::with_capacity(shares.len());
    let mut fracs = Vec::with_capacity(shares.len());
    let mut assigned = 0usize;
    for (i, &s) in shares.iter().enumerate() {
        let w = weight(s);
        let w = if even { w / shares.len() as f64 } else { w };
        let quota = total as f64 * w;
        let floor = (quota.floor() as usize).min(total);
        lens.push(floor);
        assigned = assigned.saturating_add(floor);
        if w > 0.0 {
            fracs.push((quota - floor as f64, i));
        }
    }
    // Rounding error may overshoot: take back from the smallest remainders first.
    if assigned > total {
        fracs.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut excess = assigned - total;
        'outer: while excess > 0 {
            for &(_, i) in &fracs {
                if excess == 0 {
                    break 'outer;
                }
                if lens[i] > 0 {
                    lens[i] -= 1;
                    excess -= 1;
                }
            }
        }
    } else if assigned < total && !fracs.is_empty() {
        fracs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut left = total - assigned;
        let mut at = 0;
        while left > 0 {
            lens[fracs[at % fracs.len()].1] += 1;
            left -= 1;
            at += 1;
        }
    }
    let mut start = 0;
    lens.into_iter()
        .map(|len| {
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// `total` split into `pieces` contiguous ranges (offset by `offset`) whose lengths differ by
/// at most one, the longer first.
fn even_ranges(offset: usize, total: usize, pieces: usize) -> impl Iterator<Item = Range<usize>> {
    let pieces = pieces.max(1);
    let (base, extra) = (total / pieces, total % pieces);
    (0..pieces).map(move |i| {
        let start = offset + i * base + i.min(extra);
        start..start + base + usize::from(i < extra)
    })
}

/// The strategies that make sense for `op` on inputs of these shapes over `parts` parts
/// (each can give every part some work); empty for other ops, invalid shapes or no parts.
///
/// With one part the first natural strategy is returned alone (`rows` or `batch`). A grid is
/// the most nearly square factorisation `r × c = parts` with `r, c ≥ 2`, more bands along
/// the longer output side; K-split is proposed when `K ≥ max(M, N)` and every part gets at
/// least [`KSPLIT_MIN_DEPTH_PER_PART`] values of K.
pub fn candidate_strategies(op: &Op, shapes: &[&Shape], parts: usize) -> Vec<Strategy> {
    let Ok(whole) = Whole::new(op, shapes) else {
        return Vec::new();
    };
    if parts == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(4);
    match whole {
        Whole::MatMul { m, n, k, .. } => {
            if parts == 1 {
                out.push(Strategy::Rows);
                return out;
            }
            if m >= parts {
                out.push(Strategy::Rows);
            }
            if n >= parts {
                out.push(Strategy::Cols);
            }
            let small = (1..=parts.isqrt())
                .rev()
                .find(|d| parts.is_multiple_of(*d))
                .unwrap_or(1);
            if small >= 2 {
                let large = parts / small;
                let (rows, cols) = if m >= n {
                    (large, small)
                } else {
                    (small, large)
                };
                if m >= rows && n >= cols {
                    out.push(Strategy::Grid { rows, cols });
                }
            }
            if k >= m.max(n) && k / parts >= KSPLIT_MIN_DEPTH_PER_PART {
                out.push(Strategy::KSplit);
            }
        }
        Whole::Conv {
            params,
            weight,
            output,
            ..
        } => {
            if parts == 1 {
                out.push(Strategy::Batch);
                return out;
            }
            let units = if params.groups > 1 {
                params.groups
            } else {
                weight[0]
            };
            if output[0] >= parts {
                out.push(Strategy::Batch);
            }
            if units >= parts {
                out.push(Strategy::OutChannels);
            }
            if output[2] >= parts {
                out.push(Strategy::OutRows);
            }
        }
    }
    out
}

/// Checks the shares: at least one, each finite and non-negative, not all zero.
fn check_shares(shares: &[f64]) -> Result<()> {
    if shares.is_empty() {
        return Err(Error::parse(
            "partition shares",
            "[]",
            "need at least one share",
        ));
    }
    for (i, &s) in shares.iter().enumerate() {
        if !(s.is_finite() && s >= 0.0) {
            return Err(Error::parse(
                "partition share",
                format!("{s} (entry {i})"),
                "shares must be finite and non-negative",
            ));
        }
    }
    if shares.iter().all(|&s| s == 0.0) {
        return Err(Error::parse(
            "partition shares",
            format!("{shares:?}"),
            "at least one share must be positive",
        ));
    }
    Ok(())
}

/// Cuts `op` on inputs of `shapes` into parts by `strategy`, sized by `shares` (one per node,
/// any non-negative scale). Shares of 0, and shares whose rounded size is 0, get no part; the
/// parts are listed in output order (K order for K-split). A grid takes `rows × cols` shares,
/// one per cell, row-major (see the module documentation).
///
/// Errors: an op other than matmul or conv2d, a strategy for the other op, a grid with a zero
/// side or the wrong number of shares, shares that are empty, negative, NaN, infinite or all
/// zero, and shapes the op refuses. `dtype` is the element type the inputs travel as.
///
/// Conv parts receive only the input rows their outputs read (rows that a stride skips at
/// the bottom are left out, with the bottom padding reduced to match), whatever the strategy.
pub fn partition(
    op: &Op,
    shapes: &[&Shape],
    dtype: DType,
    strategy: Strategy,
    shares: &[f64],
) -> Result<Vec<PartSpec>> {
    let whole = Whole::new(op, shapes)?;
    check_shares(shares)?;
    let mut regions: Vec<(usize, Region)> = Vec::with_capacity(shares.len());
    let mismatch = |kind: &str| {
        Error::parse(
            "partition strategy",
            strategy.to_string(),
            format!("applies to {kind} only, not {}", whole.name()),
        )
    };
    match &whole {
        Whole::MatMul { m, n, k, .. } => {
            let (m, n, k) = (*m, *n, *k);
            let block = |rows: Range<usize>, cols: Range<usize>| Region::MatMul {
                rows,
                cols,
                depth: 0..k,
                partial: false,
            };
            match strategy {
                Strategy::Rows => {
                    for (i, r) in weighted_ranges(m, shares).into_iter().enumerate() {
                        if !r.is_empty() {
                            regions.push((i, block(r, 0..n)));
                        }
                    }
                }
                Strategy::Cols => {
                    for (i, c) in weighted_ranges(n, shares).into_iter().enumerate() {
                        if !c.is_empty() {
                            regions.push((i, block(0..m, c)));
                        }
                    }
                }
                Strategy::Grid { rows, cols } => {
                    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(shares.len()) {
                        return Err(Error::parse(
                            "partition grid",
                            strategy.to_string(),
                            format!(
                                "needs both sides ≥ 1 and one share per cell, got {} shares",
                                shares.len()
                            ),
                        ));
                    }
                    // Scaled by the largest share, so that no band sum overflows.
                    let largest = shares.iter().fold(0.0f64, |m, &s| m.max(s));
                    let band_sums: Vec<f64> = shares
                        .chunks(cols)
                        .map(|c| c.iter().map(|s| s / largest).sum())
                        .collect();
                    let bands = weighted_ranges(m, &band_sums);
                    for (b, band) in bands.into_iter().enumerate() {
                        if band.is_empty() {
                            continue;
                        }
                        let cells = &shares[b * cols..(b + 1) * cols];
                        for (j, c) in weighted_ranges(n, cells).into_iter().enumerate() {
                            if !c.is_empty() {
                                regions.push((b * cols + j, block(band.clone(), c)));
                            }
                        }
                    }
                }
                Strategy::KSplit => {
                    for (i, d) in weighted_ranges(k, shares).into_iter().enumerate() {
                        if !d.is_empty() {
                            regions.push((
                                i,
                                Region::MatMul {
                                    rows: 0..m,
                                    cols: 0..n,
                                    partial: d.len() != k,
                                    depth: d,
                                },
                            ));
                        }
                    }
                }
                _ => return Err(mismatch("conv2d")),
            }
        }
        Whole::Conv {
            params,
            weight,
            output,
            ..
        } => {
            let [n, o, oh, _] = *output;
            let region = |batch: Range<usize>, chans: Range<usize>, rows: Range<usize>| {
                Region::Conv { batch, chans, rows }
            };
            match strategy {
                Strategy::Batch => {
                    for (i, b) in weighted_ranges(n, shares).into_iter().enumerate() {
                        if !b.is_empty() {
                            regions.push((i, region(b, 0..o, 0..oh)));
                        }
                    }
                }
                Strategy::OutChannels => {
                    // Grouped: whole groups only, `og` output channels each.
                    let (units, per) = if params.groups > 1 {
                        (params.groups, weight[0] / params.groups)
                    } else {
                        (o, 1)
                    };
                    for (i, u) in weighted_ranges(units, shares).into_iter().enumerate() {
                        if !u.is_empty() {
                            let chans = u.start * per..u.end * per;
                            regions.push((i, region(0..n, chans, 0..oh)));
                        }
                    }
                }
                Strategy::OutRows => {
                    for (i, r) in weighted_ranges(oh, shares).into_iter().enumerate() {
                        if !r.is_empty() {
                            regions.push((i, region(0..n, 0..o, r)));
                        }
                    }
                }
                _ => return Err(mismatch("matmul")),
            }
        }
    }
    if regions.is_empty() {
        // The split dimension is empty: one part does the (empty or k = 0) whole.
        let first = shares
            .iter()
            .enumerate()
            .fold(0, |best, (i, &s)| if s > shares[best] { i } else { best });
        let region = match &whole {
            Whole::MatMul { m, n, k, .. } => Region::MatMul {
                rows: 0..*m,
                cols: 0..*n,
                depth: 0..*k,
                partial: false,
            },
            Whole::Conv { output, .. } => Region::Conv {
                batch: 0..output[0],
                chans: 0..output[1],
                rows: 0..output[2],
            },
        };
        regions.push((first, region));
    }
    regions
        .into_iter()
        .enumerate()
        .map(|(index, (share_index, region))| build_part(&whole, region, dtype, index, share_index))
        .collect()
}

/// `a · b` in u64, or an overflow error naming the factors.
fn mul(context: &str, a: usize, b: usize) -> Result<u64> {
    (a as u64)
        .checked_mul(b as u64)
        .ok_or_else(|| Error::overflow(context, format!("{a} · {b} exceeds u64")))
}

/// Bytes of the given input shapes (element size `size`, a conv bias at 4) and the output.
fn part_bytes(whole: &Whole, shapes: &[Shape], output: &Shape, size: usize) -> Result<(u64, u64)> {
    let mut input = 0u64;
    for (i, s) in shapes.iter().enumerate() {
        let elem = if matches!(whole, Whole::Conv { .. }) && i == 2 {
            4
        } else {
            size
        };
        input = input
            .checked_add(mul("partition bytes", s.numel()?, elem)?)
            .ok_or_else(|| Error::overflow("partition bytes", "input bytes exceed u64"))?;
    }
    Ok((input, mul("partition bytes", output.numel()?, 4)?))
}

/// The part of `whole` that computes `region`.
fn build_part(
    whole: &Whole,
    region: Region,
    dtype: DType,
    index: usize,
    share_index: usize,
) -> Result<PartSpec> {
    let mut windows = [Window::default(); 3];
    let (op, count, out) = match (whole, &region) {
        (
            &Whole::MatMul {
                trans_a, trans_b, ..
            },
            Region::MatMul {
                rows, cols, depth, ..
            },
        ) => {
            let (mr, nc, kd) = (rows.len(), cols.len(), depth.len());
            windows[0] = if trans_a {
                Window::new([depth.start, rows.start], [kd, mr])
            } else {
                Window::new([rows.start, depth.start], [mr, kd])
            };
            windows[1] = if trans_b {
                Window::new([cols.start, depth.start], [nc, kd])
            } else {
                Window::new([depth.start, cols.start], [kd, nc])
            };
            let out = Window::new([rows.start, cols.start], [mr, nc]);
            (Op::MatMul { trans_a, trans_b }, 2, out)
        }
        (
            Whole::Conv {
                params,
                input,
                weight,
                output,
                has_bias,
            },
            Region::Conv { batch, chans, rows },
        ) => {
            let [_, c, h, w] = *input;
            let [o, cg, kh, kw] = *weight;
            let groups = params.groups.max(1);
            let og = o / groups;
            let mut part = params.clone();
            let in_chans = if groups > 1 {
                let (g0, g1) = (chans.start / og.max(1), chans.end / og.max(1));
                part.groups = (g1 - g0).max(1);
                g0 * cg..g1 * cg
            } else {
                0..c
            };
            // A part with every output row reads the input as the whole op does, so that a
            // one-part plan is the op itself (rows a stride skips at the end included).
            let (in_rows, top, bottom) = if *rows == (0..output[2]) {
                (0..h, params.pads[0], params.pads[2])
            } else {
                halo(params, h, kh, rows)?
            };
            part.pads[0] = top;
            part.pads[2] = bottom;
            windows[0] = Window::new(
                [batch.start, in_chans.start, in_rows.start, 0],
                [batch.len(), in_chans.len(), in_rows.len(), w],
            );
            windows[1] = Window::new([chans.start, 0, 0, 0], [chans.len(), cg, kh, kw]);
            windows[2] = Window::new([chans.start], [chans.len()]);
            let out = Window::new(
                [batch.start, chans.start, rows.start, 0],
                [batch.len(), chans.len(), rows.len(), output[3]],
            );
            (Op::Conv2d(part), 2 + usize::from(*has_bias), out)
        }
        _ => {
            return Err(Error::shape(
                "partition",
                format!("region {region:?} does not belong to a {}", whole.name()),
            ));
        }
    };
    let input_shapes: Vec<Shape> = windows[..count].iter().map(Window::shape).collect();
    let refs = [
        &input_shapes[0],
        &input_shapes[1],
        input_shapes.get(2).unwrap_or(&input_shapes[0]),
    ];
    let refs = &refs[..count];
    let output_shape = out.shape();
    if let Op::Conv2d(params) = &op {
        // The halo arithmetic must give the part exactly its planned rows.
        let planned = conv2d_dims(params, refs)?.output;
        if planned != out.len {
            return Err(Error::shape(
                "partition",
                format!(
                    "conv2d part {index} would output {}, planned {output_shape}",
                    Shape::new(planned)
                ),
            ));
        }
    }
    let flops = op.flops(refs)?;
    let (input_bytes, output_bytes) =
        part_bytes(whole, &input_shapes, &output_shape, dtype.size_bytes())?;
    Ok(PartSpec {
        index,
        share_index,
        op,
        input_shapes,
        output_shape,
        flops,
        input_bytes,
        output_bytes,
        dtype,
        whole: whole.clone(),
        region,
        windows,
        out,
    })
}

/// The input rows (unpadded coordinates) output rows `rows` read, and the top and bottom
/// padding that the part then needs so that it outputs exactly those rows.
fn halo(
    params: &Conv2dParams,
    h: usize,
    kh: usize,
    rows: &Range<usize>,
) -> Result<(Range<usize>, usize, usize)> {
    if rows.is_empty() {
        return Err(Error::shape(
            "partition",
            format!("empty output rows {rows:?} have no halo"),
        ));
    }
    let (sh, dh, pt) = (params.stride[0], params.dilation[0], params.pads[0]);
    let overflow = || Error::overflow("conv2d halo", format!("rows {rows:?}, stride {sh}"));
    let eff = (kh.max(1) - 1)
        .checked_mul(dh)
        .and_then(|v| v.checked_add(1))
        .ok_or_else(overflow)?;
    // Padded coordinates: the image occupies pt..pt + h.
    let lo = rows.start.checked_mul(sh).ok_or_else(overflow)?;
    let hi = (rows.end - 1)
        .checked_mul(sh)
        .and_then(|v| v.checked_add(eff))
        .ok_or_else(overflow)?;
    let image_end = pt.checked_add(h).ok_or_else(overflow)?;
    let (in_lo, in_hi) = (lo.max(pt), hi.min(image_end));
    Ok(if in_lo < in_hi {
        (in_lo - pt..in_hi - pt, in_lo - lo, hi - in_hi)
    } else {
        // Every row read is padding: no input rows, all of the window as padding.
        (0..0, 0, hi - lo)
    })
}

/// The error for a part no tiling fits into `max_bytes`.
fn too_small(part: &PartSpec, max_bytes: u64, smallest: u128) -> Error {
    Error::parse(
        "memory limit",
        format!("{max_bytes} bytes"),
        format!(
            "part {} ({} with inputs {:?}, output {}, {} bytes) cannot be tiled that small: \
             its smallest tile needs {smallest} bytes",
            part.index,
            part.op.name(),
            part.input_shapes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            part.output_shape,
            part.total_bytes(),
        ),
    )
}

/// Ways to cut `total` into pieces with distinct largest piece, fewest pieces first:
/// `(pieces, largest piece)`; one `(1, 0)` for an empty total.
fn distinct_cuts(total: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut pieces = 1usize;
    std::iter::from_fn(move || {
        if total == 0 {
            return (pieces == 1).then(|| {
                pieces = 2;
                (1, 0)
            });
        }
        if pieces > total {
            return None;
        }
        let chunk = total.div_ceil(pieces);
        let current = pieces;
        // The fewest pieces whose largest piece is smaller than `chunk`.
        pieces = if chunk > 1 {
            total.div_ceil(chunk - 1)
        } else {
            total + 1
        };
        Some((current, chunk))
    })
}

/// Tiles `part` further (same share) until every sub-part's inputs and output fit in
/// `max_bytes` together; a part that fits already comes back alone. Sub-parts are numbered
/// from 0 in the returned list (renumber after joining lists).
///
/// Matmul parts are cut into blocks of their output (rows × columns), K-split partials also
/// along K; conv parts by images, output channels (whole groups) and output rows with their
/// halos. The fewest sub-parts win, then the least traffic. Error, naming the sizes, when
/// even the smallest tile does not fit.
pub fn split_to_fit(part: &PartSpec, max_bytes: u64) -> Result<Vec<PartSpec>> {
    if part.total_bytes() <= max_bytes {
        let mut alone = part.clone();
        alone.index = 0;
        return Ok(vec![alone]);
    }
    let size = part.dtype.size_bytes() as u128;
    let max = u128::from(max_bytes);
    let mut regions = Vec::new();
    match (&part.whole, &part.region) {
        (
            Whole::MatMul { .. },
            Region::MatMul {
                rows,
                cols,
                depth,
                partial,
            },
        ) => {
            let (mr, nc, kd) = (rows.len(), cols.len(), depth.len());
            // Bytes of an a × b output block over d values of K.
            let bytes = |a: usize, b: usize, d: usize| {
                let (a, b, d) = (a as u128, b as u128, d as u128);
                (a * d + d * b) * size + a * b * 4
            };
            let smallest_depth = if *partial { kd.min(1) } else { kd };
            let smallest = bytes(mr.min(1), nc.min(1), smallest_depth);
            if smallest > max {
                return Err(too_small(part, max_bytes, smallest));
            }
            // Best (count, traffic, row pieces, column pieces, depth pieces).
            let mut best: Option<(u128, u128, usize, usize, usize)> = None;
            let depth_cuts: Vec<(usize, usize)> = if *partial {
                distinct_cuts(kd).collect()
            } else {
                vec![(1, kd)]
            };
            for &(tk, d) in &depth_cuts {
                if best.is_some_and(|b| tk as u128 >= b.0) {
                    break;
                }
                for (tr, a) in distinct_cuts(mr) {
                    if best.is_some_and(|b| (tk * tr) as u128 >= b.0) {
                        break;
                    }
                    // Widest block b with (a·d + d·b)·size + a·b·4 ≤ max.
                    let fixed = a as u128 * d as u128 * size;
                    if fixed > max {
                        continue;
                    }
                    let per_col = d as u128 * size + 4 * a as u128;
                    let widest = (max - fixed).checked_div(per_col).unwrap_or(u128::MAX);
                    let tc = if nc == 0 {
                        1
                    } else if widest == 0 {
                        continue;
                    } else {
                        (nc as u128).div_ceil(widest).max(1) as usize
                    };
                    let b = nc.div_ceil(tc);
                    let count = (tk * tr * tc) as u128;
                    let traffic = count * bytes(a, b, d);
                    if best.is_none_or(|x| (count, traffic) < (x.0, x.1)) {
                        best = Some((count, traffic, tr, tc, tk));
                    }
                }
            }
            let Some((_, _, tr, tc, tk)) = best else {
                return Err(too_small(part, max_bytes, smallest));
            };
            for d in even_ranges(depth.start, kd, tk) {
                for r in even_ranges(rows.start, mr, tr) {
                    for c in even_ranges(cols.start, nc, tc) {
                        regions.push(Region::MatMul {
                            rows: r.clone(),
                            cols: c,
                            depth: d.clone(),
                            partial: *partial,
                        });
                    }
                }
            }
        }
        (
            Whole::Conv {
                params,
                input,
                weight,
                has_bias,
                output,
            },
            Region::Conv { batch, chans, rows },
        ) => {
            let [_, c, h, w] = *input;
            let [o, cg, kh, kw] = *weight;
            let groups = params.groups.max(1);
            // Channel units: whole groups when grouped, single channels otherwise.
            let per = if groups > 1 { o / groups } else { 1 };
            let (unit0, units) = (chans.start / per.max(1), chans.len() / per.max(1));
            let (sh, dh) = (params.stride[0] as u128, params.dilation[0] as u128);
            let eff = (kh.max(1) as u128 - 1) * dh + 1;
            let ow = output[3] as u128;
            // Bytes of the largest tile of bn images × bu units × br output rows.
            let bytes = |bn: usize, bu: usize, br: usize| {
                let (bn, bu, br) = (bn as u128, bu as u128, br as u128);
                let cin = if groups > 1 {
                    bu * cg as u128
                } else {
                    c as u128
                };
                let hin = if br == 0 {
                    0
                } else {
                    ((br - 1) * sh + eff).min(h as u128)
                };
                let oc = bu * per as u128;
                let x = bn * cin * hin * w as u128 * size;
                let wt = oc * (cg * kh * kw) as u128 * size;
                let bias = if *has_bias { oc * 4 } else { 0 };
                x + wt + bias + bn * oc * br * ow * 4
            };
            let (nb, rr) = (batch.len(), rows.len());
            let smallest = bytes(nb.min(1), units.min(1), rr.min(1));
            if smallest > max {
                return Err(too_small(part, max_bytes, smallest));
            }
            let mut best: Option<(u128, u128, usize, usize, usize)> = None;
            let row_cuts: Vec<(usize, usize)> = distinct_cuts(rr).collect();
            for (tn, bn) in distinct_cuts(nb) {
                if best.is_some_and(|b| tn as u128 >= b.0) {
                    break;
                }
                for (tu, bu) in distinct_cuts(units) {
                    if best.is_some_and(|b| (tn * tu) as u128 >= b.0) {
                        break;
                    }
                    // Fewest row pieces that fit: bytes shrink as the pieces grow in number.
                    let at = row_cuts.partition_point(|&(_, br)| bytes(bn, bu, br) > max);
                    let Some(&(th, br)) = row_cuts.get(at) else {
                        continue;
                    };
                    let count = (tn * tu * th) as u128;
                    let traffic = count * bytes(bn, bu, br);
                    if best.is_none_or(|x| (count, traffic) < (x.0, x.1)) {
                        best = Some((count, traffic, tn, tu, th));
                    }
                }
            }
            let Some((_, _, tn, tu, th)) = best else {
                return Err(too_small(part, max_bytes, smallest));
            };
            for b in even_ranges(batch.start, nb, tn) {
                for u in even_ranges(unit0, units, tu) {
                    for r in even_ranges(rows.start, rr, th) {
                        regions.push(Region::Conv {
                            batch: b.clone(),
                            chans: u.start * per..u.end * per,
                            rows: r,
                        });
                    }
                }
            }
        }
        _ => {
            return Err(Error::shape(
                "split_to_fit",
                format!("part {} has an inconsistent region", part.index),
            ));
        }
    }
    let mut out = Vec::with_capacity(regions.len());
    for region in regions {
        let sub = build_part(&part.whole, region, part.dtype, out.len(), part.share_index)?;
        if sub.total_bytes() > max_bytes {
            return Err(too_small(part, max_bytes, u128::from(sub.total_bytes())));
        }
        out.push(sub);
    }
    Ok(out)
}

/// Steps `idx` to the next index of the box `lo..hi` (per axis, row-major order); false after
/// the last one, leaving `idx` at `lo`.
fn next_index(idx: &mut [usize], lo: &[usize], hi: &[usize]) -> bool {
    for axis in (0..idx.len()).rev() {
        idx[axis] += 1;
        if idx[axis] < hi[axis] {
            return true;
        }
        idx[axis] = lo[axis];
    }
    false
}

/// The output gathered from its parts, or the parts given back when they are not contiguous.
type Gathered = std::result::Result<Vec<f32>, Vec<(PartSpec, Tensor)>>;

/// Gathers placed parts whose outputs are each one contiguous run of the output (row splits
/// of a matmul, batch splits of a conv); gives the parts back when some part's output is not
/// contiguous. The parts must already be known to cover the output. The part that starts the
/// output lends its buffer, grown in place (large buffers are remapped, not copied); only the
/// other parts are copied, in output order.
fn assemble_contiguous(
    dims: &[usize],
    parts: Vec<(PartSpec, Tensor)>,
    numel: usize,
) -> Result<Gathered> {
    let mut offsets = Vec::with_capacity(parts.len());
    for (spec, _) in &parts {
        if spec.out.len[..spec.out.rank].contains(&0) {
            offsets.push(usize::MAX);
            continue;
        }
        match single_run(dims, &spec.out) {
            Some(offset) => offsets.push(offset),
            None => return Ok(Err(parts)),
        }
    }
    let mut runs: Vec<(usize, Tensor)> = offsets
        .into_iter()
        .zip(parts)
        .filter(|(offset, _)| *offset != usize::MAX)
        .map(|(offset, (_, t))| (offset, t))
        .collect();
    runs.sort_by_key(|r| r.0);
    let mut runs = runs.into_iter();
    let Some((_, first)) = runs.next() else {
        return Ok(Ok(try_zeros_f32(numel)?));
    };
    let mut data = match first.into_data() {
        TensorData::F32(v) => v,
        other => {
            return Err(Error::shape(
                "assemble",
                format!("part output is {:?}, expected f32", other.dtype()),
            ));
        }
    };
    data.try_reserve_exact(numel.saturating_sub(data.len()))
        .map_err(|_| Error::overflow("assemble", format!("cannot allocate {numel} elements")))?;
    for (_, t) in runs {
        data.extend_from_slice(t.as_f32()?);
    }
    Ok(Ok(data))
}

/// Calls `f(offset, run)` for each contiguous run of the box `start..start + len` (per axis)
/// of a row-major array of `dims`, in row-major order; nothing for an empty box.
fn for_each_run(dims: &[usize], start: &[usize], len: &[usize], mut f: impl FnMut(usize, usize)) {
    let rank = dims.len();
    if rank == 0 {
        f(0, 1);
        return;
    }
    if len.contains(&0) {
        return;
    }
    // Trailing axes taken whole merge with the last partial one into one contiguous run.
    let mut split = rank;
    while split > 1 && start[split - 1] == 0 && len[split - 1] == dims[split - 1] {
        split -= 1;
    }
    let mut strides = [0usize; 4];
    let mut acc = 1;
    for axis in (0..rank).rev() {
        strides[axis] = acc;
        acc *= dims[axis];
    }
    let run = len[split - 1] * strides[split - 1];
    // Odometer over the axes before the run.
    let outer = split - 1;
    let (zero, mut idx) = ([0usize; 4], [0usize; 4]);
    loop {
        let offset: usize = (0..=outer).map(|a| (start[a] + idx[a]) * strides[a]).sum();
        f(offset, run);
        if !next_index(&mut idx[..outer], &zero[..outer], &len[..outer]) {
            return;
        }
    }
}

/// Copies the box `start..start + len` (per axis) of a row-major tensor of `dims` into `out`.
fn copy_box<T: Copy>(src: &[T], dims: &[usize], start: &[usize], len: &[usize], out: &mut Vec<T>) {
    for_each_run(dims, start, len, |offset, run| {
        out.extend_from_slice(&src[offset..offset + run]);
    });
}

/// The window `w` of `t` as a new tensor of the same dtype.
fn cut<T: TensorElement>(t: &Tensor, w: &Window) -> Result<Tensor> {
    let src = t.as_slice::<T>()?;
    let numel = w.shape().numel()?;
    let mut out = Vec::new();
    out.try_reserve_exact(numel)
        .map_err(|_| Error::overflow("extract", format!("cannot allocate {numel} elements")))?;
    copy_box(
        src,
        t.dims(),
        &w.start[..w.rank],
        &w.len[..w.rank],
        &mut out,
    );
    Tensor::from_vec(w.shape(), out)
}

/// The input tensors of `part`, cut out of the whole op's `inputs` (which must have the shapes
/// the part was planned for): row, column, K, batch and channel slices, and conv halo rows
/// (the part's op carries the matching padding).
pub fn extract(part: &PartSpec, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    Ok(extract_slices(part, inputs)?
        .into_iter()
        .zip(inputs)
        .map(|(slice, t)| slice.unwrap_or_else(|| (*t).clone()))
        .collect())
}

/// Like [`extract`], without copying inputs the part needs whole: those come back as `None`
/// (use the caller's tensor as it is).
pub fn extract_slices(part: &PartSpec, inputs: &[&Tensor]) -> Result<Vec<Option<Tensor>>> {
    check_planned_inputs(part, inputs)?;
    let mut out = Vec::with_capacity(inputs.len());
    for (t, w) in inputs.iter().zip(&part.windows) {
        if w.is_whole(t.dims()) {
            out.push(None);
            continue;
        }
        out.push(Some(match t.data() {
            TensorData::F32(_) => cut::<f32>(t, w)?,
            TensorData::F16(_) => cut::<half::f16>(t, w)?,
            TensorData::BF16(_) => cut::<half::bf16>(t, w)?,
        }));
    }
    Ok(out)
}

/// The part's inputs borrowed from the whole op's `inputs` when each of its slices is one
/// contiguous block of its tensor (a range of rows, images or output channels, or the whole
/// tensor); `None` when a slice is strided (columns, K ranges, halo rows), which
/// [`extract_slices`] copies instead.
pub fn input_views<'a>(
    part: &PartSpec,
    inputs: &[&'a Tensor],
) -> Result<Option<Vec<TensorView<'a>>>> {
    check_planned_inputs(part, inputs)?;
    let mut views = Vec::with_capacity(inputs.len());
    for (t, w) in inputs.iter().zip(&part.windows) {
        match single_run(t.dims(), w) {
            Some(offset) => views.push(t.view_run(w.shape(), offset)?),
            None => return Ok(None),
        }
    }
    Ok(Some(views))
}

/// The whole output's shape and where each part's output lies in it, as element ranges, when
/// every part's block is one contiguous run of it, none is a K-split partial sum and together
/// they hold as many elements as the output: then the parts can write straight into one
/// output buffer. `None` otherwise (and for no parts).
pub fn output_runs(parts: &[PartSpec]) -> Option<(Shape, Vec<Range<usize>>)> {
    let first = parts.first()?;
    let (dims, rank) = first.whole.output_dims();
    let dims = &dims[..rank];
    let mut runs = Vec::with_capacity(parts.len());
    for part in parts {
        if part.whole != first.whole || part.is_partial() {
            return None;
        }
        let start = single_run(dims, &part.out)?;
        let len = part.out.shape().numel().ok()?;
        runs.push(start..start + len);
    }
    let total: usize = runs.iter().map(|r| r.len()).sum();
    (total == dims.iter().product::<usize>()).then(|| (Shape::new(dims), runs))
}

/// Fails unless `inputs` are as many as the part's op takes and have the shapes it was
/// planned for, naming the first that differs.
fn check_planned_inputs(part: &PartSpec, inputs: &[&Tensor]) -> Result<()> {
    let count = part.whole.input_count();
    if inputs.len() != count {
        return Err(Error::Arity {
            op: part.whole.name(),
            expected: if count == 3 { "3" } else { "2" },
            got: inputs.len(),
        });
    }
    for (i, t) in inputs.iter().enumerate() {
        let expected = part.whole.input_dims(i).unwrap_or_default();
        if t.dims() != expected.as_slice() {
            return Err(Error::shape(
                "extract",
                format!(
                    "input {i} has shape {}, the part was planned for {}",
                    t.shape(),
                    Shape::new(expected)
                ),
            ));
        }
    }
    Ok(())
}

/// The element offset of window `w` of a row-major array of `dims` when the window is one
/// contiguous run of it (an empty window counts, at offset 0); `None` when it is strided.
fn single_run(dims: &[usize], w: &Window) -> Option<usize> {
    let (mut first, mut count) = (None, 0);
    for_each_run(dims, &w.start[..w.rank], &w.len[..w.rank], |offset, _| {
        first.get_or_insert(offset);
        count += 1;
    });
    match count {
        0 => Some(0),
        1 => first,
        _ => None,
    }
}

/// A box in the coverage space: the output axes, plus K for partial sums.
type CoverBox = ([usize; 5], [usize; 5]);

/// Checks that the boxes (all inside `extent`) are pairwise disjoint and fill `extent`.
fn check_cover(extent: &[usize], boxes: &[CoverBox]) -> Result<()> {
    let axes = extent.len();
    let total: u128 = extent.iter().map(|&e| e as u128).product();
    let covered: u128 = boxes
        .iter()
        .map(|(_, len)| len[..axes].iter().map(|&l| l as u128).product::<u128>())
        .sum();
    if covered != total {
        return Err(Error::shape(
            "assemble",
            format!(
                "the parts cover {covered} of the {total} output elements{}",
                if axes == 3 {
                    " (counting each K value of a partial sum)"
                } else {
                    ""
                }
            ),
        ));
    }
    // Compressed coordinates: the distinct cut points per axis.
    let cuts: Vec<Vec<usize>> = (0..axes)
        .map(|a| {
            let mut c: Vec<usize> = boxes
                .iter()
                .flat_map(|(s, l)| [s[a], s[a] + l[a]])
                .chain([0, extent[a]])
                .collect();
            c.sort_unstable();
            c.dedup();
            c
        })
        .collect();
    let cells = cuts
        .iter()
        .try_fold(1usize, |acc, c| acc.checked_mul(c.len().saturating_sub(1)));
    let overlap = |i: usize, j: usize| {
        Error::shape(
            "assemble",
            format!("parts {i} and {j} write overlapping output elements"),
        )
    };
    match cells {
        Some(cells) if cells <= COVERAGE_MAX_CELLS => {
            let mut owner = try_filled(cells, usize::MAX)?;
            for (p, (s, l)) in boxes.iter().enumerate() {
                let mut lo = [0usize; 5];
                let mut hi = [0usize; 5];
                for a in 0..axes {
                    lo[a] = cuts[a].partition_point(|&c| c < s[a]);
                    hi[a] = cuts[a].partition_point(|&c| c < s[a] + l[a]);
                }
                if (0..axes).any(|a| lo[a] >= hi[a]) {
                    continue;
                }
                let mut idx = lo;
                loop {
                    let mut flat = 0;
                    for a in 0..axes {
                        flat = flat * (cuts[a].len() - 1) + idx[a];
                    }
                    if owner[flat] != usize::MAX {
                        return Err(overlap(owner[flat], p));
                    }
                    owner[flat] = p;
                    if !next_index(&mut idx[..axes], &lo[..axes], &hi[..axes]) {
                        break;
                    }
                }
            }
        }
        _ => {
            for i in 0..boxes.len() {
                for j in i + 1..boxes.len() {
                    let (si, li) = boxes[i];
                    let (sj, lj) = boxes[j];
                    let disjoint =
                        (0..axes).any(|a| si[a] + li[a] <= sj[a] || sj[a] + lj[a] <= si[a]);
                    if !disjoint {
                        return Err(overlap(i, j));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Gathers the f32 outputs of `parts` (each with the spec it was run from) into the output of
/// `op` on inputs of `shapes`: placed blocks for row, column, grid, batch, channel and
/// output-row parts; for K-split partials the elementwise sum, added in ascending K order
/// whatever the order of `parts`, so the result is deterministic.
///
/// Errors: parts of another op or shapes, outputs of the wrong shape or dtype, partial and
/// placed parts mixed, and parts that leave gaps or overlap.
pub fn assemble(op: &Op, shapes: &[&Shape], parts: Vec<(PartSpec, Tensor)>) -> Result<Tensor> {
    let whole = Whole::new(op, shapes)?;
    let (dims, rank) = whole.output_dims();
    let dims = &dims[..rank];
    let out_shape = Shape::new(dims);
    let numel = out_shape.numel()?;
    let partial = parts.first().is_some_and(|(p, _)| p.is_partial());
    let k = match whole {
        Whole::MatMul { k, .. } => k,
        Whole::Conv { .. } => 0,
    };
    let mut boxes: Vec<CoverBox> = Vec::with_capacity(parts.len());
    for (i, (spec, t)) in parts.iter().enumerate() {
        if spec.whole != whole {
            return Err(Error::shape(
                "assemble",
                format!(
                    "part {i} was planned for another {} or other shapes",
                    spec.whole.name()
                ),
            ));
        }
        if spec.is_partial() != partial {
            return Err(Error::shape(
                "assemble",
                format!("part {i} mixes K-split partial sums with placed blocks"),
            ));
        }
        if t.dims() != &spec.out.len[..rank] || t.dtype() != DType::F32 {
            return Err(Error::shape(
                "assemble",
                format!(
                    "part {i} output is {} {}, expected f32 {}",
                    t.dtype(),
                    t.shape(),
                    spec.out.shape()
                ),
            ));
        }
        let (mut s, mut l) = ([0usize; 5], [0usize; 5]);
        s[..rank].copy_from_slice(&spec.out.start[..rank]);
        l[..rank].copy_from_slice(&spec.out.len[..rank]);
        if partial && let Region::MatMul { depth, .. } = &spec.region {
            s[rank] = depth.start;
            l[rank] = depth.len();
        }
        boxes.push((s, l));
    }
    let mut extent = dims.to_vec();
    if partial {
        extent.push(k);
    }
    if parts.is_empty() {
        if numel == 0 {
            return Tensor::zeros(out_shape, DType::F32);
        }
        return Err(Error::shape(
            "assemble",
            format!("no parts for an output of shape {out_shape}"),
        ));
    }
    check_cover(&extent, &boxes)?;
    // Placed parts that are contiguous runs (one part covering everything included) lend the
    // first one's buffer: no copy for a single part.
    let parts = if partial {
        parts
    } else {
        match assemble_contiguous(dims, parts, numel)? {
            Ok(data) => return Tensor::from_vec(out_shape, data),
            Err(parts) => parts,
        }
    };
    let mut data = try_zeros_f32(numel)?;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    if partial {
        order.sort_by_key(|&i| boxes[i].0[rank]);
    }
    for i in order {
        let (spec, t) = &parts[i];
        let src = t.as_f32()?;
        let (start, len) = (&spec.out.start[..rank], &spec.out.len[..rank]);
        let mut at = 0;
        for_each_run(dims, start, len, |offset, run| {
            let (dst, src) = (&mut data[offset..offset + run], &src[at..at + run]);
            if partial {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            } else {
                dst.copy_from_slice(src);
            }
            at += run;
        });
    }
    Tensor::from_vec(out_shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_ranges_follow_shares() {
        assert_eq!(weighted_ranges(10, &[1.0, 1.0]), [0..5, 5..10]);
        assert_eq!(weighted_ranges(7, &[1.0, 3.0, 0.5]), [0..1, 1..6, 6..7]);
        assert_eq!(weighted_ranges(9, &[1.0, 3.0, 0.5]), [0..2, 2..8, 8..9]);
        assert_eq!(weighted_ranges(5, &[0.0, 1.0, 0.0]), [0..0, 0..5, 5..5]);
        assert_eq!(weighted_ranges(3, &[0.0, 0.0]), [0..2, 2..3]);
        assert_eq!(weighted_ranges(0, &[1.0, 2.0]), [0..0, 0..0]);
        assert_eq!(weighted_ranges(2, &[1.0, 1.0, 1.0]), [0..1, 1..2, 2..2]);
        for total in [0, 1, 7, 17, 33, 129, 4096] {
            for shares in [&[1.0, 3.0, 0.5][..], &[0.1; 7], &[5.0, 0.0, 1e-9, 2.0]] {
                let r = weighted_ranges(total, shares);
                assert_eq!(r.len(), shares.len());
                assert_eq!(r[0].start, 0);
                assert_eq!(r.last().unwrap().end, total);
                for pair in r.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let sum: f64 = shares.iter().sum();
                for (range, s) in r.iter().zip(shares) {
                    let quota = total as f64 * s / sum;
                    assert!((range.len() as f64 - quota).abs() < 1.0 + 1e-9);
                }
            }
        }
    }

    #[test]
    fn halo_rows_and_pads() {
        let p = Conv2dParams {
            stride: [2, 1],
            pads: [3, 0, 1, 0],
            ..Conv2dParams::default()
        };
        // h = 10, kh = 7: padded 14, OH = (14 - 7) / 2 + 1 = 4.
        assert_eq!(halo(&p, 10, 7, &(0..1)).unwrap(), (0..4, 3, 0));
        assert_eq!(halo(&p, 10, 7, &(1..3)).unwrap(), (0..8, 1, 0));
        assert_eq!(halo(&p, 10, 7, &(3..4)).unwrap(), (3..10, 0, 0));
        let all_pad = Conv2dParams {
            pads: [5, 0, 5, 0],
            ..Conv2dParams::default()
        };
        assert_eq!(halo(&all_pad, 3, 3, &(0..2)).unwrap(), (0..0, 0, 4));
        assert!(halo(&p, 10, 7, &(2..2)).is_err());
    }

    #[test]
    fn distinct_cuts_are_minimal() {
        let cuts: Vec<_> = distinct_cuts(7).collect();
        assert_eq!(cuts, [(1, 7), (2, 4), (3, 3), (4, 2), (7, 1)]);
        assert_eq!(distinct_cuts(0).collect::<Vec<_>>(), [(1, 0)]);
        assert_eq!(distinct_cuts(1).collect::<Vec<_>>(), [(1, 1)]);
    }

    #[test]
    fn copy_box_cuts_windows() {
        let src: Vec<u32> = (0..24).collect();
        let mut out = Vec::new();
        copy_box(&src, &[2, 3, 4], &[1, 1, 1], &[1, 2, 2], &mut out);
        assert_eq!(out, [17, 18, 21, 22]);
        out.clear();
        copy_box(&src, &[2, 3, 4], &[0, 1, 0], &[2, 1, 4], &mut out);
        assert_eq!(out, [4, 5, 6, 7, 16, 17, 18, 19]);
    }

    #[test]
    fn cover_detects_gaps_and_overlaps() {
        let b = |s: [usize; 2], l: [usize; 2]| ([s[0], s[1], 0, 0, 0], [l[0], l[1], 0, 0, 0]);
        let ok = [b([0, 0], [2, 3]), b([2, 0], [1, 1]), b([2, 1], [1, 2])];
        check_cover(&[3, 3], &ok).unwrap();
        let gap = [b([0, 0], [2, 3])];
        assert!(check_cover(&[3, 3], &gap).is_err());
        let overlap = [b([0, 0], [2, 3]), b([1, 0], [1, 3]), b([2, 1], [1, 0])];
        assert!(check_cover(&[3, 3], &overlap).is_err());
    }
}
