//! Output buffers handed back by the dead values of a run and reused for its next outputs.
//!
//! A fresh output buffer comes zeroed from the allocator, and for a block it recycles, the C
//! allocator clears it with a `memset` on the calling thread while the device's other
//! threads wait: 3.2 MB for a 256-channel 56×56 activation. Inside a [`scope`], the values
//! a run no longer needs are given back ([`give_back`]) and the next output of the same
//! length takes one of them as it is ([`output_f32`]): every kernel that writes into such a
//! buffer overwrites each element, so its old values are never read. Outside a scope, on
//! any other thread, or when no buffer of that length is kept, outputs are zeroed memory.

use std::cell::RefCell;

use crate::Result;
use crate::tensor::try_zeros_f32;

/// Most buffers kept at once: a run's activations die and are born a few at a time.
const MOST_KEPT: usize = 8;

thread_local! {
    /// This thread's kept buffers, or `None` outside a [`scope`].
    static KEPT: RefCell<Option<Vec<Vec<f32>>>> = const { RefCell::new(None) };
}

/// Runs `f` with recycling on for this thread; the buffers still kept are freed at the end.
/// A nested scope shares the outer one's buffers.
pub(crate) fn scope<R>(f: impl FnOnce() -> R) -> R {
    /// Ends the scope (frees the kept buffers) even if `f` unwinds.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            KEPT.with(|k| k.borrow_mut().take());
        }
    }
    let outer = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let outer = k.is_some();
        if !outer {
            *k = Some(Vec::new());
        }
        outer
    });
    // Built only for the outermost scope: an `End` made and dropped here would end it.
    let _end = (!outer).then(|| End);
    f()
}

/// Keeps `values` for a later output of the same length, if a scope is on (else frees it).
pub(crate) fn give_back(values: Vec<f32>) {
    if values.is_empty() {
        return;
    }
    KEPT.with(|k| {
        if let Some(kept) = k.borrow_mut().as_mut() {
            if kept.len() == MOST_KEPT {
                kept.remove(0);
            }
            kept.push(values);
        }
    });
}

/// A buffer of `len` f32 values for a kernel to overwrite: a kept one of exactly that length
/// (its old values left in place), or zeroed memory.
pub(crate) fn output_f32(len: usize) -> Result<Vec<f32>> {
    let reused = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let kept = k.as_mut()?;
        let i = kept.iter().rposition(|v| v.len() == len)?;
        Some(kept.remove(i))
    });
    match reused {
        Some(values) => Ok(values),
        None => try_zeros_f32(len),
    }
}

/// How many buffers this thread keeps now (0 outside a scope).
#[cfg(test)]
fn kept_count() -> usize {
    KEPT.with(|k| k.borrow().as_ref().map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_scope_outputs_are_zeroed_and_nothing_is_kept() {
        give_back(vec![1.5; 7]);
        assert_eq!(kept_count(), 0);
        assert_eq!(output_f32(7).unwrap(), vec![0.0; 7]);
    }

    #[test]
    fn a_scope_reuses_a_buffer_of_the_same_length_only() {
        scope(|| {
            give_back(vec![2.5; 17]);
            give_back(vec![3.5; 33]);
            assert_eq!(kept_count(), 2);
            let same = output_f32(33).unwrap();
            assert_eq!(same, vec![3.5; 33], "the kept buffer, as it was");
            assert_eq!(kept_count(), 1);
            // A miss hands out zeros and keeps the rest.
            assert_eq!(output_f32(129).unwrap(), vec![0.0; 129]);
            assert_eq!(kept_count(), 1);
        });
        assert_eq!(kept_count(), 0, "the scope's end frees the rest");
    }

    #[test]
    fn the_scope_keeps_a_bounded_number_and_nests() {
        scope(|| {
            for i in 0..MOST_KEPT + 3 {
                give_back(vec![i as f32; 1 + i]);
            }
            assert_eq!(kept_count(), MOST_KEPT);
            // The oldest went first.
            assert_eq!(output_f32(1).unwrap(), vec![0.0]);
            assert_eq!(output_f32(11).unwrap(), vec![10.0; 11]);
            assert_eq!(kept_count(), MOST_KEPT - 1);
            // Of two of one length, the one given back last is taken.
            give_back(vec![9.0; 5]);
            scope(|| assert_eq!(output_f32(5).unwrap(), vec![9.0; 5]));
            assert_eq!(output_f32(5).unwrap(), vec![4.0; 5]);
            assert_eq!(
                kept_count(),
                MOST_KEPT - 2,
                "the inner scope left the outer one on"
            );
        });
    }

    #[test]
    fn empty_buffers_are_not_kept() {
        scope(|| {
            give_back(Vec::new());
            assert_eq!(kept_count(), 0);
            assert!(output_f32(0).unwrap().is_empty());
        });
    }
}
