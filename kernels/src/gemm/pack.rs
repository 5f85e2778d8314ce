//! Packing: copying blocks of the operands into the contiguous panels the microkernels read.
//!
//! Packed A: for each panel of `mr` rows, `kc` steps of `mr` values (`panel[k·mr + i]`).
//! Packed B: for each panel of `nr` columns, `kc` steps of `nr` values (`panel[k·nr + j]`).
//! Rows or columns past the edge of the matrix are zero-filled. f16 and bf16 operands are
//! widened to f32 here, so the microkernels only ever see f32.

use super::matrix::MatRef;
use crate::Element;

/// A source of the left operand (`m × k`), packed into `mr`-row panels.
pub trait PackA: Sync {
    /// Packs rows `m0..m0+mc` and depth `k0..k0+kc` into `dst` (`ceil(mc/mr)·mr·kc` values).
    fn pack_a(&self, m0: usize, mc: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]);

    /// A as f32 in place, if it is stored so: small problems then skip packing A. Returns the
    /// data (element (i, k) at `i·row_stride + k·col_stride`) and the two strides.
    fn direct(&self) -> Option<(&[f32], usize, usize)> {
        None
    }

    /// The whole operand packed ahead of time, if it is (constant weights): the driver then
    /// reads its panels instead of calling `pack_a`, when the register tile and depth blocking
    /// match.
    fn prepacked(&self) -> Option<PrepackedA<'_>> {
        None
    }
}

/// A left operand packed in the driver's layout: depth blocks of `kc` (the last one shorter),
/// block `k0` at `k0·panels·mr`, and in it row panel `p` at `p·mr·depth` (`depth` of that
/// block), each panel `depth` steps of `mr` values, rows past the edge zero.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrepackedA<'a> {
    /// The packed values of all `panels` panels.
    pub data: &'a [f32],
    /// Rows per panel (the microkernel's `mr`).
    pub mr: usize,
    /// Depth of a full block.
    pub kc: usize,
    /// Row panels in `data` (the stride between depth blocks is `panels·mr` per step).
    pub panels: usize,
    /// The panel holding row 0 of the operand this view stands for.
    pub first_panel: usize,
    /// What to ask into cache while the last panel computes: the A the caller's next product
    /// reads first (empty if none), so that a run of products over one set of weights does
    /// not start each from memory.
    pub then: &'a [f32],
}

impl<'a> PrepackedA<'a> {
    /// Panel `ip` (counted from `first_panel`) of the depth block starting at `k0`, `kc` deep.
    #[inline]
    pub fn panel(&self, k0: usize, kc: usize, ip: usize) -> &'a [f32] {
        let start = k0 * self.panels * self.mr + (self.first_panel + ip) * self.mr * kc;
        &self.data[start..start + self.mr * kc]
    }
}

/// A source of the right operand (`k × n`), packed into `nr`-column panels.
pub trait PackB: Sync {
    /// Packs depth `k0..k0+kc` and columns `n0..n0+nc` into `dst` (`ceil(nc/nr)·nr·kc` values).
    fn pack_b(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]);

    /// B as f32 rows with unit column stride, if it is stored so: small problems then skip
    /// packing B. Returns the data (element (k, j) at `k·row_stride + j`) and the row stride.
    fn direct_rows(&self) -> Option<(&[f32], usize)> {
        None
    }

    /// B as f32 columns with unit row stride (a transposed row-major matrix), if it is stored
    /// so: products with few rows then stream B in place. Returns the data (element (k, j) at
    /// `j·col_stride + k`) and the column stride.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn direct_columns(&self) -> Option<(&[f32], usize)> {
        None
    }
}

/// A block of an operand seen as `lines × depth`: line `i`, step `k` at `base + i·line_stride +
/// k·depth_stride`. A packs its rows as lines; B packs its columns (the rows of Bᵀ).
struct Block<'a, T> {
    data: &'a [T],
    base: usize,
    line_stride: usize,
    depth_stride: usize,
    lines: usize,
    depth: usize,
}

impl<T: Element> Block<'_, T> {
    #[inline(always)]
    fn at(&self, i: usize, k: usize) -> f32 {
        self.data[self.base + i * self.line_stride + k * self.depth_stride].to_f32()
    }
}

/// Packs a block into panels of `width` lines, choosing a loop suited to its strides.
fn pack_block<T: Element>(block: &Block<'_, T>, width: usize, dst: &mut [f32]) {
    match width {
        4 => pack_fixed::<T, 4>(block, dst),
        6 => pack_fixed::<T, 6>(block, dst),
        8 => pack_fixed::<T, 8>(block, dst),
        12 => pack_fixed::<T, 12>(block, dst),
        16 => pack_fixed::<T, 16>(block, dst),
        32 => pack_fixed::<T, 32>(block, dst),
        _ => pack_any(block, width, dst),
    }
}

/// `len` contiguous values of `data` from `start` as f32: borrowed when `T` is f32, otherwise
/// widened into `scratch`.
#[inline]
fn f32_run<'s, T: Element>(
    data: &'s [T],
    start: usize,
    len: usize,
    scratch: &'s mut [f32],
) -> &'s [f32] {
    let src = &data[start..start + len];
    match T::as_f32(src) {
        Some(f) => f,
        None => {
            T::widen_slice(src, &mut scratch[..len]);
            &scratch[..len]
        }
    }
}

/// Zeros read in place of the missing lines of a last panel, for depths up to the largest
/// depth block (so packing allocates nothing per call).
static ZERO_LINE: [f32; 1024] = [0.0; 1024];

/// Rows ahead that packing row by row asks for: each row of a block is a short run (2 KiB for
/// 512 columns) that the hardware prefetchers hardly follow before it ends, and a batch's
/// images come from memory. Measured on chains of pointwise layers at batch 8 (each image's
/// gemm packs its B): 56×56 0.95×, 28×28 0.94× the time; ResNet-50 0.98× at batch 8 and at
/// batch 1 (its channel pieces pack too); 4 rows ran as 8, 16 1.01×.
const ROWS_AHEAD: usize = 8;

/// Packing for a width known at compile time, so the inner copies unroll into vector moves.
fn pack_fixed<T: Element, const W: usize>(block: &Block<'_, T>, dst: &mut [f32]) {
    let depth = block.depth;
    let panels = block.lines.div_ceil(W);
    let dst = &mut dst[..panels * W * depth];
    let widen = T::as_f32(&block.data[..0]).is_none();
    if block.line_stride == 1 {
        // Lines sit side by side: each depth step is one contiguous run across all panels.
        let mut scratch = vec![0.0f32; if widen { block.lines } else { 0 }];
        for k in 0..depth {
            let start = block.base + k * block.depth_stride;
            if k + ROWS_AHEAD < depth {
                let far = start + ROWS_AHEAD * block.depth_stride;
                crate::prefetch::lines(&block.data[far..far + block.lines]);
            }
            let run = f32_run(block.data, start, block.lines, &mut scratch);
            for (p, panel) in dst.chunks_exact_mut(W * depth).enumerate() {
                let out: &mut [f32; W] = (&mut panel[k * W..(k + 1) * W]).try_into().unwrap();
                let first = p * W;
                if first + W <= block.lines {
                    *out = run[first..first + W].try_into().unwrap();
                } else {
                    let live = block.lines - first;
                    out[..live].copy_from_slice(&run[first..]);
                    out[live..].fill(0.0);
                }
            }
        }
    } else if block.depth_stride == 1 {
        // Each line is contiguous along the depth: a transpose of W lines per panel. Missing
        // lines of the last panel read from a zero line.
        let zero_line;
        let zeros: &[f32] = match ZERO_LINE.get(..depth) {
            Some(zeros) => zeros,
            None => {
                zero_line = vec![0.0f32; depth];
                &zero_line
            }
        };
        let mut wide = vec![0.0f32; if widen { W * depth } else { 0 }];
        for (p, panel) in dst.chunks_exact_mut(W * depth).enumerate() {
            let first = p * W;
            let live = W.min(block.lines - first);
            let line_start = |i: usize| block.base + (first + i) * block.line_stride;
            let rows: [&[f32]; W] = match T::as_f32(block.data) {
                Some(data) => std::array::from_fn(|i| {
                    if i < live {
                        &data[line_start(i)..line_start(i) + depth]
                    } else {
                        zeros
                    }
                }),
                None => {
                    for (i, line) in wide.chunks_exact_mut(depth).take(live).enumerate() {
                        T::widen_slice(&block.data[line_start(i)..][..depth], line);
                    }
                    let mut lines = wide.chunks_exact(depth);
                    std::array::from_fn(|i| match lines.next() {
                        Some(line) if i < live => line,
                        _ => zeros,
                    })
                }
            };
            transpose_lines(&rows, depth, panel);
        }
    } else {
        pack_any(block, W, dst);
    }
}

/// Writes `W` lines of `depth` values side by side: `panel[k·W + i] = lines[i][k]`.
#[inline(always)]
fn transpose_lines<const W: usize>(lines: &[&[f32]; W], depth: usize, panel: &mut [f32]) {
    let lines: [&[f32]; W] = std::array::from_fn(|i| &lines[i][..depth]);
    let panel = &mut panel[..W * depth];
    // On x86_64, four steps at a time as 4 × 4 blocks transposed in SSE registers: a quarter
    // of the loads and stores of the element-by-element copy.
    #[cfg(target_arch = "x86_64")]
    let done = if W.is_multiple_of(4) {
        let fours = depth / 4 * 4;
        for k in (0..fours).step_by(4) {
            for group in 0..W / 4 {
                let block = [0, 1, 2, 3].map(|i| &lines[4 * group + i][k..k + 4]);
                let out = &mut panel[k * W + 4 * group..][..3 * W + 4];
                transpose_4x4(block, out, W);
            }
        }
        fours
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for k in done..depth {
        for (i, line) in lines.iter().enumerate() {
            panel[k * W + i] = line[k];
        }
    }
}

/// Transposes four runs of four values into `out[j·stride + i] = block[i][j]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_4x4(block: [&[f32]; 4], out: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    assert!(block.iter().all(|run| run.len() >= 4) && out.len() >= 3 * stride + 4);
    // SAFETY: SSE is part of every x86_64 target; each run holds four values and `out`
    // holds four values at 0, stride, 2·stride and 3·stride (both asserted above).
    unsafe {
        let [r0, r1, r2, r3] = block.map(|run| _mm_loadu_ps(run.as_ptr()));
        let t0 = _mm_unpacklo_ps(r0, r1);
        let t1 = _mm_unpacklo_ps(r2, r3);
        let t2 = _mm_unpackhi_ps(r0, r1);
        let t3 = _mm_unpackhi_ps(r2, r3);
        let dst = out.as_mut_ptr();
        _mm_storeu_ps(dst, _mm_movelh_ps(t0, t1));
        _mm_storeu_ps(dst.add(stride), _mm_movehl_ps(t1, t0));
        _mm_storeu_ps(dst.add(2 * stride), _mm_movelh_ps(t2, t3));
        _mm_storeu_ps(dst.add(3 * stride), _mm_movehl_ps(t3, t2));
    }
}

/// Packing for any width and strides, element by element.
fn pack_any<T: Element>(block: &Block<'_, T>, width: usize, dst: &mut [f32]) {
    let depth = block.depth;
    let panels = block.lines.div_ceil(width);
    for (p, panel) in dst.chunks_exact_mut(width * depth).take(panels).enumerate() {
        for (k, out) in panel.chunks_exact_mut(width).enumerate() {
            for (i, v) in out.iter_mut().enumerate() {
                let line = p * width + i;
                *v = if line < block.lines {
                    block.at(line, k)
                } else {
                    0.0
                };
            }
        }
    }
}

impl<T: Element> PackA for MatRef<'_, T> {
    fn pack_a(&self, m0: usize, mc: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        let block = Block {
            data: self.data(),
            base: m0 * self.row_stride() + k0 * self.col_stride(),
            line_stride: self.row_stride(),
            depth_stride: self.col_stride(),
            lines: mc,
            depth: kc,
        };
        pack_block(&block, mr, dst);
    }

    fn direct(&self) -> Option<(&[f32], usize, usize)> {
        let data = T::as_f32(self.data())?;
        Some((data, self.row_stride(), self.col_stride()))
    }
}

impl<T: Element> PackB for MatRef<'_, T> {
    fn pack_b(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]) {
        let block = Block {
            data: self.data(),
            base: k0 * self.row_stride() + n0 * self.col_stride(),
            line_stride: self.col_stride(),
            depth_stride: self.row_stride(),
            lines: nc,
            depth: kc,
        };
        pack_block(&block, nr, dst);
    }

    fn direct_rows(&self) -> Option<(&[f32], usize)> {
        let rows = T::as_f32(self.data())?;
        (self.col_stride() == 1 || self.cols() <= 1).then_some((rows, self.row_stride()))
    }

    fn direct_columns(&self) -> Option<(&[f32], usize)> {
        let data = T::as_f32(self.data())?;
        (self.row_stride() == 1 || self.rows() <= 1).then_some((data, self.col_stride()))
    }
}

/// A heap buffer of f32 handing out slices aligned to a 64-byte cache line.
#[derive(Default)]
pub(crate) struct AlignedBuf {
    storage: Vec<f32>,
}

impl AlignedBuf {
    /// Returns a 64-byte aligned slice of `len` values, growing the allocation if needed.
    /// The contents are unspecified (left from earlier use).
    pub fn get(&mut self, len: usize) -> &mut [f32] {
        const ALIGN_FLOATS: usize = 16;
        if self.storage.len() < len + ALIGN_FLOATS {
            self.storage = vec![0.0; len + ALIGN_FLOATS];
        }
        let misalign = (self.storage.as_ptr() as usize / 4) % ALIGN_FLOATS;
        let offset = (ALIGN_FLOATS - misalign) % ALIGN_FLOATS;
        &mut self.storage[offset..offset + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_with_zero_padding() {
        // 3x2 matrix, mr = 2: two panels, the second half empty.
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let a = MatRef::row_major(&data, 3, 2).unwrap();
        let mut dst = vec![f32::NAN; 8];
        a.pack_a(0, 3, 0, 2, 2, &mut dst);
        assert_eq!(dst, [1.0, 3.0, 2.0, 4.0, 5.0, 0.0, 6.0, 0.0]);
    }

    #[test]
    fn every_width_and_layout_packs_the_same_values() {
        let (rows, cols) = (37, 29);
        let data: Vec<f32> = (0..rows * cols).map(|v| v as f32 * 0.5 - 7.0).collect();
        let row_major = MatRef::row_major(&data, rows, cols).unwrap();
        let col_major_data: Vec<f32> = (0..rows * cols)
            .map(|idx| row_major.at(idx % rows, idx / rows))
            .collect();
        let col_major = MatRef::new(&col_major_data, rows, cols, 1, rows).unwrap();
        let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
        let half_view = MatRef::row_major(&halves, rows, cols).unwrap();
        for width in [2, 4, 6, 8, 12, 16, 32] {
            let (m0, mc, k0, kc): (usize, usize, usize, usize) = (3, 33, 2, 25);
            let len = mc.div_ceil(width) * width * kc;
            let mut expected = vec![0.0f32; len];
            for (idx, v) in expected.iter_mut().enumerate() {
                let (p, rest) = (idx / (width * kc), idx % (width * kc));
                let (k, i) = (rest / width, rest % width);
                let row = p * width + i;
                *v = if row < mc {
                    row_major.at(m0 + row, k0 + k)
                } else {
                    0.0
                };
            }
            for view_a in [&row_major, &col_major] {
                let mut got = vec![f32::NAN; len];
                view_a.pack_a(m0, mc, k0, kc, width, &mut got);
                assert_eq!(got, expected, "pack_a width {width}");
                // B = Aᵀ packs the same panels.
                let mut got_b = vec![f32::NAN; len];
                view_a.t().pack_b(k0, kc, m0, mc, width, &mut got_b);
                assert_eq!(got_b, expected, "pack_b width {width}");
            }
            let mut got = vec![f32::NAN; len];
            half_view.pack_a(m0, mc, k0, kc, width, &mut got);
            assert_eq!(got, expected, "f16 pack_a width {width}");
        }
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut buf = AlignedBuf::default();
        for len in [1, 17, 1000] {
            assert_eq!(buf.get(len).as_ptr() as usize % 64, 0);
        }
    }
}
