//! Software prefetch of the weights a kernel reads next.
//!
//! A model's layers each read their own weights once per run, so none is in cache when its
//! layer starts, and the hardware prefetchers follow a stream only within a 4 KiB page and
//! only after a few misses: measured alone with cold weights (cycling 24 copies), the 7×7
//! layers of ResNet-50 ran 1.35–1.45× their time with the weights in cache. So a task asks
//! for the panel of weights it reads after the current one while the current one computes:
//! [`Spread`] cuts that panel into one piece per kernel call over the current panel, and each
//! call prefetches its piece through [`Ahead`], a line every few depth steps (a burst would
//! stall the core itself once its line-fill buffers are taken).

/// Floats per cache line.
const LINE_FLOATS: usize = 16;

/// `data` cut into `parts` even pieces of whole cache lines, one to prefetch per call.
pub struct Spread<'a> {
    data: &'a [f32],
    parts: usize,
}

impl<'a> Spread<'a> {
    /// `data` to prefetch over `parts` calls (at least 1).
    pub fn new(data: &'a [f32], parts: usize) -> Spread<'a> {
        Spread {
            data,
            parts: parts.max(1),
        }
    }

    /// Piece `index` (of [`Spread::new`]'s `parts`): whole cache lines of the slice in even
    /// shares; pieces past the last are empty.
    pub fn piece(&self, index: usize) -> &'a [f32] {
        &self.data[self.range(index)]
    }

    /// The floats of piece `index`.
    fn range(&self, index: usize) -> std::ops::Range<usize> {
        let lines = self.data.len().div_ceil(LINE_FLOATS);
        let first = (lines * index / self.parts).min(lines);
        let end = (lines * (index + 1) / self.parts).min(lines);
        (first * LINE_FLOATS).min(self.data.len())..(end * LINE_FLOATS).min(self.data.len())
    }
}

/// Asks for the cache lines of `values` to be brought into L2 (a hint: nothing is read or
/// waited for): the row a loop reads a few steps from now.
pub(crate) fn lines<T>(values: &[T]) {
    let step = (LINE_FLOATS * std::mem::size_of::<f32>() / std::mem::size_of::<T>().max(1)).max(1);
    for line in values.chunks(step) {
        line_into_l2(line.as_ptr().cast());
    }
}

/// Asks for the cache line holding `at` to be brought into L2; nothing off x86_64. Any
/// address may be named.
#[inline(always)]
fn line_into_l2(at: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint never faults and changes no memory, whatever the address; SSE
    // is part of every x86_64 target.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T1>(at);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Cache lines a kernel asks to be brought into L2 while it runs, spread evenly over its depth
/// steps: the weights its task reads next, so that their loads overlap this
/// kernel's multiply-adds instead of stalling a later call. (A burst of prefetches would stall the
/// core itself once its line-fill buffers are taken.) Any address may be named: a prefetch
/// never faults.
#[derive(Clone, Copy, Debug)]
// Only the x86_64 kernels walk it; elsewhere it is carried and ignored.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Ahead {
    /// The first line.
    pub(crate) start: *const f32,
    /// Lines from `start` on.
    pub(crate) lines: usize,
}

impl Ahead {
    /// The lines of `data` (whole cache lines from its start).
    pub(crate) fn of(data: &[f32]) -> Ahead {
        Ahead {
            start: data.as_ptr(),
            lines: data.len().div_ceil(LINE_FLOATS),
        }
    }

    /// The walk over the lines for a kernel of `kc` depth steps.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn walk(self, kc: usize) -> AheadWalk {
        let per = self.lines.div_ceil(kc.max(1)).max(1);
        AheadWalk {
            at: self.start,
            left: self.lines.div_ceil(per),
            per,
            every: (kc * per / self.lines.max(1)).max(1),
            countdown: 1,
        }
    }
}

/// Where a tile's prefetches stand: `per` lines every `every` depth steps, `left` times more.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct AheadWalk {
    at: *const f32,
    left: usize,
    per: usize,
    every: usize,
    countdown: usize,
}

impl AheadWalk {
    /// Called once per depth step: prefetches the next lines when their step has come.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn step(&mut self) {
        if self.left == 0 {
            return;
        }
        self.countdown -= 1;
        if self.countdown == 0 {
            for _ in 0..self.per {
                line_into_l2(self.at.cast());
                self.at = self.at.wrapping_add(LINE_FLOATS);
            }
            self.left -= 1;
            self.countdown = self.every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line is asked for, all within the kernel's depth steps, at most two per step
    /// where there are no more lines than twice the steps.
    #[test]
    fn walks_ask_for_every_line_within_the_steps() {
        let data = vec![1.5f32; 512 * LINE_FLOATS];
        for (lines, kc) in [
            (1, 1),
            (1, 256),
            (7, 3),
            (73, 256),
            (256, 256),
            (288, 144),
            (512, 7),
        ] {
            let ahead = Ahead::of(&data[..lines * LINE_FLOATS]);
            let mut walk = ahead.walk(kc);
            let mut asked = 0;
            for _ in 0..kc {
                let before = walk.left;
                walk.step();
                asked += (before - walk.left) * walk.per;
            }
            assert!(
                asked >= lines,
                "{lines} lines over {kc} steps: {asked} asked for"
            );
            assert!(
                asked < lines + walk.per,
                "{lines} lines over {kc} steps: {asked}"
            );
            if lines <= 2 * kc {
                assert!(
                    walk.per <= 2,
                    "{lines} lines over {kc} steps: {} a step",
                    walk.per
                );
            }
        }
    }

    #[test]
    fn pieces_cover_the_data_once_in_even_shares() {
        let data: Vec<f32> = (0..1000).map(|i| i as f32 + 0.5).collect();
        for parts in [1, 3, 7, 63, 64, 100] {
            let spread = Spread::new(&data, parts);
            let pieces: Vec<_> = (0..parts + 2).map(|i| spread.range(i)).collect();
            let mut next = 0;
            for piece in &pieces[..parts] {
                assert_eq!(piece.start, next, "{parts} parts: gap or overlap");
                assert!(piece.len() <= 1000_usize.div_ceil(parts).next_multiple_of(16) + 16);
                next = piece.end;
            }
            assert_eq!(next, data.len(), "{parts} parts leave data out");
            assert!(pieces[parts..].iter().all(|p| p.is_empty()));
        }
        assert!(Spread::new(&[], 5).piece(0).is_empty());
        // 63 lines (the last one partial): 31 in the first half, 32 in the second.
        assert_eq!(Spread::new(&data, 2).piece(1).len(), 1000 - 31 * 16);
    }
}
