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
}

/// A source of the right operand (`k × n`), packed into `nr`-column panels.
pub trait PackB: Sync {
    /// Packs depth `k0..k0+kc` and columns `n0..n0+nc` into `dst` (`ceil(nc/nr)·nr·kc` values).
    fn pack_b(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]);
}

/// Copies a `rows × depth` block of `src` into panels of `width` rows, depth-major.
///
/// This is the one packing routine: A packs its rows, B packs its columns (as the rows of Bᵀ).
fn pack_panels<T: Element>(
    src: &MatRef<'_, T>,
    row0: usize,
    rows: usize,
    depth0: usize,
    depth: usize,
    width: usize,
    transposed: bool,
    dst: &mut [f32],
) {
    // (i, k) of the block lives at src.at(row0+i, depth0+k), or at src.at(depth0+k, row0+i)
    // when `transposed` (packing B, whose panels run across its columns).
    let (row_stride, depth_stride) = if transposed {
        (src.col_stride(), src.row_stride())
    } else {
        (src.row_stride(), src.col_stride())
    };
    let base = if transposed {
        depth0 * src.row_stride() + row0 * src.col_stride()
    } else {
        row0 * src.row_stride() + depth0 * src.col_stride()
    };
    let data = src.data();
    let mut line = vec![0.0f32; if depth_stride == 1 { depth } else { 0 }];
    for (p, panel) in dst.chunks_exact_mut(width * depth).enumerate() {
        let first = p * width;
        if first >= rows {
            break;
        }
        let live = width.min(rows - first);
        if row_stride == 1 {
            // The panel's rows sit side by side: each depth step is one contiguous run.
            for k in 0..depth {
                let start = base + first + k * depth_stride;
                let out = &mut panel[k * width..(k + 1) * width];
                T::widen_slice(&data[start..start + live], &mut out[..live]);
                out[live..].fill(0.0);
            }
        } else if depth_stride == 1 {
            // Each row is contiguous along the depth: widen it once, scatter across the panel.
            for i in 0..width {
                if i < live {
                    let start = base + (first + i) * row_stride;
                    T::widen_slice(&data[start..start + depth], &mut line[..depth]);
                    for (k, v) in line[..depth].iter().enumerate() {
                        panel[k * width + i] = *v;
                    }
                } else {
                    for k in 0..depth {
                        panel[k * width + i] = 0.0;
                    }
                }
            }
        } else {
            for k in 0..depth {
                for i in 0..width {
                    panel[k * width + i] = if i < live {
                        data[base + (first + i) * row_stride + k * depth_stride].to_f32()
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

impl<T: Element> PackA for MatRef<'_, T> {
    fn pack_a(&self, m0: usize, mc: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        pack_panels(self, m0, mc, k0, kc, mr, false, dst);
    }
}

impl<T: Element> PackB for MatRef<'_, T> {
    fn pack_b(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]) {
        pack_panels(self, n0, nc, k0, kc, nr, true, dst);
    }
}

/// A heap buffer of f32 whose start is aligned to a 64-byte cache line.
pub struct AlignedBuf {
    storage: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self {
            storage: Vec::new(),
            offset: 0,
            len: 0,
        }
    }

    /// Returns a 64-byte aligned slice of `len` values, growing the allocation if needed.
    /// The contents are unspecified (left from earlier use).
    pub fn get(&mut self, len: usize) -> &mut [f32] {
        const ALIGN_FLOATS: usize = 16;
        if self.storage.len() < len + ALIGN_FLOATS {
            self.storage = vec![0.0; len + ALIGN_FLOATS];
        }
        let misalign = (self.storage.as_ptr() as usize / 4) % ALIGN_FLOATS;
        self.offset = (ALIGN_FLOATS - misalign) % ALIGN_FLOATS;
        self.len = len;
        &mut self.storage[self.offset..self.offset + len]
    }

    /// The slice handed out by the last `get`.
    pub fn as_slice(&self) -> &[f32] {
        &self.storage[self.offset..self.offset + self.len]
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
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
        let mut dst_t = vec![f32::NAN; 8];
        a.t().t().pack_a(0, 3, 0, 2, 2, &mut dst_t);
        assert_eq!(dst, dst_t);
    }

    #[test]
    fn packs_b_from_any_layout() {
        // B is 2x3; nr = 2.
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = MatRef::row_major(&data, 2, 3).unwrap();
        let mut dst = vec![f32::NAN; 8];
        b.pack_b(0, 2, 0, 3, 2, &mut dst);
        assert_eq!(dst, [1.0, 2.0, 4.0, 5.0, 3.0, 0.0, 6.0, 0.0]);
        // The same matrix stored column-major.
        let col = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0];
        let bt = MatRef::new(&col, 2, 3, 1, 2).unwrap();
        let mut dst_t = vec![f32::NAN; 8];
        bt.pack_b(0, 2, 0, 3, 2, &mut dst_t);
        assert_eq!(dst, dst_t);
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut buf = AlignedBuf::new();
        for len in [1, 17, 1000] {
            assert_eq!(buf.get(len).as_ptr() as usize % 64, 0);
        }
    }
}
