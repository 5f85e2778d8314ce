//! Strided matrix views: the operands of `gemm`, checked once at construction.

use crate::{KernelError, Result};

/// Number of elements a `rows × cols` view with these strides addresses, if it fits in `usize`.
fn addressed_len(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    let last_row = (rows - 1).checked_mul(row_stride)?;
    let last_col = (cols - 1).checked_mul(col_stride)?;
    last_row.checked_add(last_col)?.checked_add(1)
}

fn check_len(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Result<()> {
    let needed = addressed_len(rows, cols, row_stride, col_stride).ok_or_else(|| {
        KernelError::SizeOverflow {
            what,
            detail: format!(
                "{rows}x{cols} with strides ({row_stride}, {col_stride}) exceeds usize"
            ),
        }
    })?;
    if needed > len {
        return Err(KernelError::BufferTooSmall {
            what,
            needed,
            actual: len,
        });
    }
    Ok(())
}

/// A read-only `rows × cols` matrix inside a slice, element (i, j) at `i·row_stride + j·col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A view with arbitrary strides; fails if the slice is too short for them.
    pub fn new(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        check_len("matrix", data.len(), rows, cols, row_stride, col_stride)?;
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// A dense row-major view (`row_stride = cols`).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A row-major view whose rows are `ld` elements apart (BLAS's leading dimension).
    pub fn with_ld(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        if ld < cols && rows > 1 {
            return Err(KernelError::InvalidArgument {
                name: "leading dimension",
                value: ld.to_string(),
                reason: "must be at least the number of columns",
            });
        }
        Self::new(data, rows, cols, ld, 1)
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance in elements between consecutive rows.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Distance in elements between consecutive columns.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }

    /// Element (i, j); panics only if out of the validated shape (an internal bug).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> T {
        debug_assert!(i < self.rows && j < self.cols);
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A mutable `rows × cols` matrix inside a slice; distinct elements never share memory.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Copy> MatMut<'a, T> {
    /// A view with arbitrary strides; fails if the slice is too short or two elements overlap.
    pub fn new(
        data: &'a mut [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        check_len(
            "output matrix",
            data.len(),
            rows,
            cols,
            row_stride,
            col_stride,
        )?;
        if !strides_are_disjoint(rows, cols, row_stride, col_stride) {
            return Err(KernelError::InvalidArgument {
                name: "output strides",
                value: format!("({row_stride}, {col_stride}) for {rows}x{cols}"),
                reason: "distinct output elements would share memory",
            });
        }
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// A dense row-major view.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A row-major view whose rows are `ld` elements apart.
    pub fn with_ld(data: &'a mut [T], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        Self::new(data, rows, cols, ld, 1)
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance in elements between consecutive rows.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Distance in elements between consecutive columns.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// The underlying slice, for the driver that splits it into disjoint tiles.
    pub(crate) fn data_mut(&mut self) -> &mut [T] {
        self.data
    }
}

/// True when `(i, j) -> i·rs + j·cs` is injective on the shape (a sufficient, cheap test).
fn strides_are_disjoint(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    match (rows > 1, cols > 1) {
        (false, false) => true,
        (true, false) => rs > 0,
        (false, true) => cs > 0,
        (true, true) => {
            let ((small, small_extent), big) = if rs <= cs {
                ((rs, rows), cs)
            } else {
                ((cs, cols), rs)
            };
            small > 0
                && small_extent
                    .checked_mul(small)
                    .is_some_and(|span| big >= span)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffer_is_refused_with_sizes() {
        let data = [1.0f32; 10];
        let err = MatRef::row_major(&data, 3, 4).unwrap_err();
        assert_eq!(
            err,
            KernelError::BufferTooSmall {
                what: "matrix",
                needed: 12,
                actual: 10
            }
        );
    }

    #[test]
    fn overflowing_strides_are_refused() {
        let data = [1.0f32; 4];
        assert!(matches!(
            MatRef::new(&data, 2, 2, usize::MAX, 1),
            Err(KernelError::SizeOverflow { .. })
        ));
    }

    #[test]
    fn overlapping_outputs_are_refused() {
        let mut data = [1.0f32; 16];
        assert!(MatMut::new(&mut data, 3, 3, 1, 1).is_err());
        assert!(MatMut::new(&mut data, 3, 3, 3, 1).is_ok());
        assert!(MatMut::new(&mut data, 3, 3, 1, 3).is_ok());
        assert!(MatMut::new(&mut data, 1, 16, 0, 1).is_ok());
    }

    #[test]
    fn transpose_swaps_shape_and_strides() {
        let data: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let a = MatRef::row_major(&data, 2, 3).unwrap();
        let t = a.t();
        assert_eq!((t.rows(), t.cols()), (3, 2));
        assert_eq!(t.at(2, 1), a.at(1, 2));
    }
}
