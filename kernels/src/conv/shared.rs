//! An output shared by pieces of one convolution that each write their own disjoint elements.

use std::marker::PhantomData;

/// The output, written by pieces that own pairwise disjoint elements of it.
#[derive(Clone, Copy)]
pub(super) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl<'a> SharedOut<'a> {
    /// Shares `output` between pieces.
    pub(super) fn new(output: &'a mut [f32]) -> Self {
        Self {
            ptr: output.as_mut_ptr(),
            len: output.len(),
            _borrow: PhantomData,
        }
    }

    /// The elements `start..start + len` as a slice.
    ///
    /// # Safety
    /// The range must be inside the output and no other live slice or write may touch it.
    pub(super) unsafe fn slice(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.len, "piece outside the output");
        // SAFETY: in bounds (checked); exclusive by the caller's contract; the output's `&mut`
        // borrow lasts for 'a and is used through this SharedOut only.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(target_arch = "x86_64")]
impl SharedOut<'_> {
    /// A raw pointer to element `start`, for a piece that writes only elements it owns
    /// through it, all inside `start..start + len`.
    ///
    /// # Safety
    /// The range must be inside the output, and the elements the caller writes through the
    /// pointer must be written by no other piece while it runs.
    pub(super) unsafe fn element(self, start: usize, len: usize) -> *mut f32 {
        assert!(start + len <= self.len, "piece outside the output");
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.add(start) }
    }
}

// SAFETY: pieces sharing one SharedOut write pairwise disjoint elements (their `run` cuts them),
// and the `&mut` borrow it comes from outlives them all.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedOut<'_> {}
