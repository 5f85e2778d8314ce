//! Output buffers: zero-filled vectors taken straight from the allocator's zeroed memory.

use std::alloc::{Layout, alloc_zeroed};

/// `len` zeros as a vector, or `None` when the allocation fails (instead of aborting).
///
/// The memory comes zeroed from the allocator (for large buffers, fresh pages the system
/// zeroes on first touch), so there is no separate fill pass before a kernel overwrites it.
pub fn try_zeroed_f32(len: usize) -> Option<Vec<f32>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = Layout::array::<f32>(len).ok()?;
    // SAFETY: the layout has a non-zero size (len > 0). On success the block holds `len` f32s
    // whose bytes are all zero, which is the value 0.0; it comes from the global allocator
    // with exactly the layout of a `Vec<f32>` of capacity `len`, so the Vec may own and free it.
    unsafe {
        let ptr = alloc_zeroed(layout).cast::<f32>();
        if ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, len, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_hold_zeros_and_refuse_impossible_sizes() {
        for len in [0, 1, 7, 1 << 20] {
            let v = try_zeroed_f32(len).unwrap();
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x.to_bits() == 0));
        }
        assert!(try_zeroed_f32(usize::MAX / 2).is_none());
    }
}
