//! Output buffers handed back by the dead values of a run and reused for the next outputs.
//!
//! A fresh output buffer comes zeroed from the allocator, and for a block it recycles, the C
//! allocator clears it with a `memset` on the calling thread while the device's other
//! threads wait: 3.2 MB for a 256-channel 56×56 activation, 26 MB for the first layer's
//! output at batch 8. Inside a [`Recycler::scope`], the values a run no longer needs are given
//! back ([`give_back`]) and the next output of the same length takes one of them as it is
//! ([`output_f32`]): every kernel that writes into such a buffer overwrites each element, so
//! its old values are never read. What is still kept when the run ends stays with its
//! [`Recycler`] (one per ONNX session) for the next run, whose outputs come in the same
//! sizes. Outside a scope, on any other thread, or when no buffer of that length is kept,
//! outputs are zeroed memory.

use std::cell::RefCell;
use std::sync::Mutex;

use crate::Result;
use crate::tensor::try_zeros_f32;

/// Most buffers kept at once: a network's activations come in a few dozen sizes, and a run
/// that keeps them all allocates nothing after its first run (SqueezeNet: 16 kept left a
/// `memset` at 3.4 % of a run's samples, 64 at 0.5 %).
const MOST_KEPT: usize = 64;
/// Most values kept at once in all (256 MiB of f32).
const MOST_KEPT_VALUES: usize = 1 << 26;
/// Most buffers of one length kept: a value and the one computed from it, alive together.
const MOST_PER_LENGTH: usize = 2;

thread_local! {
    /// This thread's kept buffers, oldest first, or `None` outside a scope.
    static KEPT: RefCell<Option<Vec<Vec<f32>>>> = const { RefCell::new(None) };
}

/// Buffers kept between the runs of one owner (an ONNX session).
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    kept: Mutex<Vec<Vec<f32>>>,
}

impl Recycler {
    /// Runs `f` with recycling on for this thread, starting from the buffers the last scope
    /// left; what is kept at the end stays here. Within another scope on this thread, `f`
    /// shares that one's buffers. Two scopes on different threads split what is kept.
    pub(crate) fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Moves the thread's buffers back to the recycler even if `f` unwinds.
        struct End<'a>(&'a Recycler);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                let left = KEPT.with(|k| k.borrow_mut().take()).unwrap_or_default();
                // A poisoned lock only means another run panicked while holding it; the
                // list it guards is still a list of whole buffers.
                let mut kept = self.0.kept.lock().unwrap_or_else(|e| e.into_inner());
                for values in left {
                    keep(&mut kept, values);
                }
            }
        }
        let nested = KEPT.with(|k| k.borrow().is_some());
        if nested {
            return f();
        }
        let start = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        KEPT.with(|k| *k.borrow_mut() = Some(start));
        let _end = End(self);
        f()
    }

    /// How many buffers are kept for the next scope.
    #[cfg(test)]
    fn kept_count(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }
}

/// Adds `values` to `kept`, dropping the oldest of its length beyond [`MOST_PER_LENGTH`] and
/// the oldest of all beyond [`MOST_KEPT`] buffers or [`MOST_KEPT_VALUES`] values.
fn keep(kept: &mut Vec<Vec<f32>>, values: Vec<f32>) {
    keep_within(kept, values, MOST_KEPT_VALUES);
}

/// [`keep`] with `most_values` in place of [`MOST_KEPT_VALUES`].
fn keep_within(kept: &mut Vec<Vec<f32>>, values: Vec<f32>, most_values: usize) {
    if values.is_empty() {
        return;
    }
    let len = values.len();
    if kept.iter().filter(|v| v.len() == len).count() >= MOST_PER_LENGTH
        && let Some(oldest) = kept.iter().position(|v| v.len() == len)
    {
        kept.remove(oldest);
    }
    if kept.len() >= MOST_KEPT {
        kept.remove(0);
    }
    kept.push(values);
    while kept.iter().map(Vec::len).sum::<usize>() > most_values {
        kept.remove(0);
    }
}

/// Keeps `values` for a later output of the same length if a scope is on (else frees it).
pub(crate) fn give_back(values: Vec<f32>) {
    KEPT.with(|k| {
        if let Some(kept) = k.borrow_mut().as_mut() {
            keep(kept, values);
        }
    });
}

/// A buffer of `len` f32 values for a kernel to overwrite: the kept one of exactly that
/// length given back last (its old values left in place), or zeroed memory.
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
        let recycler = Recycler::default();
        recycler.scope(|| {
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
        assert_eq!(kept_count(), 0, "the thread keeps nothing after the scope");
        assert_eq!(recycler.kept_count(), 1, "the recycler keeps the rest");
        // The next scope starts from what the last one left.
        recycler.scope(|| assert_eq!(output_f32(17).unwrap(), vec![2.5; 17]));
        assert_eq!(recycler.kept_count(), 0);
    }

    #[test]
    fn the_kept_buffers_are_bounded_in_all_and_per_length() {
        let recycler = Recycler::default();
        recycler.scope(|| {
            for i in 0..MOST_KEPT + 3 {
                give_back(vec![i as f32; 1 + i]);
            }
            assert_eq!(kept_count(), MOST_KEPT);
            // The oldest went first.
            assert_eq!(output_f32(1).unwrap(), vec![0.0]);
            assert_eq!(output_f32(4).unwrap(), vec![3.0; 4]);
            // A third buffer of one length pushes out the oldest of that length.
            give_back(vec![7.0; 5]);
            give_back(vec![8.0; 5]);
            assert_eq!(output_f32(5).unwrap(), vec![8.0; 5]);
            assert_eq!(output_f32(5).unwrap(), vec![7.0; 5]);
            assert_eq!(output_f32(5).unwrap(), vec![0.0; 5]);
        });
    }

    #[test]
    fn the_kept_values_are_bounded() {
        let mut kept = Vec::new();
        for len in [7, 17, 33] {
            keep_within(&mut kept, vec![1.0; len], 50);
        }
        // 7 + 17 + 33 > 50: the oldest went.
        let lens: Vec<usize> = kept.iter().map(Vec::len).collect();
        assert_eq!(lens, [17, 33]);
        keep_within(&mut kept, vec![1.0; 129], 50);
        assert!(
            kept.is_empty(),
            "a buffer over the bound is not kept either"
        );
    }

    #[test]
    fn a_nested_scope_shares_the_outer_one() {
        let (outer, inner) = (Recycler::default(), Recycler::default());
        outer.scope(|| {
            give_back(vec![9.0; 5]);
            inner.scope(|| assert_eq!(output_f32(5).unwrap(), vec![9.0; 5]));
            give_back(vec![4.0; 3]);
            assert_eq!(kept_count(), 1, "the inner scope left the outer one on");
        });
        assert_eq!((outer.kept_count(), inner.kept_count()), (1, 0));
    }

    #[test]
    fn empty_buffers_are_not_kept() {
        Recycler::default().scope(|| {
            give_back(Vec::new());
            assert_eq!(kept_count(), 0);
            assert!(output_f32(0).unwrap().is_empty());
        });
    }
}
