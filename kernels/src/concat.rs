//! Concatenation of blocks into a new vector, copied by several threads where it is large.
//!
//! ONNX `Concat` along an axis is, per index of the axes before it, each input's block in
//! turn. A network's concatenations move megabytes of activations (DenseNet joins every
//! layer's features to all before it); one thread copies at one core's memory bandwidth,
//! while the output can be cut into ranges that the current rayon pool's threads fill at
//! once, straight into the new vector (no zero-fill first).

use rayon::prelude::*;

use crate::{KernelError, Result};

/// Values below which (or blocks smaller than which, on average) one thread copies.
const PARALLEL_MIN: usize = 1 << 16;
/// Ranges of the output per thread.
const PIECES_PER_THREAD: usize = 2;

/// The output pointer shared by the threads that fill disjoint ranges of it.
#[derive(Clone, Copy)]
struct Dst<T>(*mut T);

impl<T> Dst<T> {
    /// The address of element `i` (the caller keeps `i` inside the allocation).
    fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

// SAFETY: the threads given a `Dst` write pairwise disjoint ranges of the allocation it points
// into, which outlives them (they are joined before `concat` returns).
unsafe impl<T: Send> Send for Dst<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Dst<T> {}

/// Per outer index `o` (`0..outer`), each source's block `srcs[i][o·chunks[i]..][..chunks[i]]`
/// in turn: `outer · Σ chunks` values. A source shorter than its blocks, or a size that
/// overflows, is an error.
pub fn concat<T: Copy + Send + Sync>(
    srcs: &[&[T]],
    chunks: &[usize],
    outer: usize,
) -> Result<Vec<T>> {
    if srcs.len() != chunks.len() {
        return Err(KernelError::ShapeMismatch {
            op: "concat",
            detail: format!("{} sources, {} block sizes", srcs.len(), chunks.len()),
        });
    }
    let overflow = || KernelError::ShapeMismatch {
        op: "concat",
        detail: format!("{outer} × {chunks:?} values overflow"),
    };
    for (i, (src, &chunk)) in srcs.iter().zip(chunks).enumerate() {
        let needed = chunk.checked_mul(outer).ok_or_else(overflow)?;
        if src.len() < needed {
            return Err(KernelError::BufferTooSmall {
                what: if i == 0 {
                    "concat source 0"
                } else {
                    "concat source"
                },
                needed,
                actual: src.len(),
            });
        }
    }
    let row = chunks
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(overflow)?;
    let total = row.checked_mul(outer).ok_or_else(overflow)?;
    let blocks = outer * srcs.len();
    let threads = rayon::current_num_threads();
    if total < PARALLEL_MIN || threads < 2 || total / blocks.max(1) < PARALLEL_MIN / 16 {
        let mut out = Vec::with_capacity(total);
        for o in 0..outer {
            for (src, &c) in srcs.iter().zip(chunks) {
                out.extend_from_slice(&src[o * c..(o + 1) * c]);
            }
        }
        return Ok(out);
    }
    let mut out: Vec<T> = Vec::with_capacity(total);
    let dst = Dst(out.as_mut_ptr());
    let pieces = threads * PIECES_PER_THREAD;
    (0..pieces).into_par_iter().for_each(|p| {
        let range = total * p / pieces..total * (p + 1) / pieces;
        // Walk the blocks in output order, copying the part of each inside `range`.
        let mut at = (range.start / row) * row;
        for o in range.start / row..outer {
            for (src, &c) in srcs.iter().zip(chunks) {
                let (start, end) = (at.max(range.start), (at + c).min(range.end));
                if start < end {
                    let from = &src[o * c + (start - at)..][..end - start];
                    // SAFETY: `start..end` lies inside `range`, a piece of `0..total` that no
                    // other piece overlaps, and inside the vector's capacity of `total`;
                    // `from` is a slice of another allocation (a source), so they do not
                    // overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(from.as_ptr(), dst.at(start), from.len());
                    }
                }
                at += c;
            }
            if at >= range.end {
                break;
            }
        }
    });
    // SAFETY: the pieces cover `0..total` and every block of every row has been copied into
    // its place, so all `total` values are initialised (and `total` is the capacity).
    unsafe { out.set_len(total) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(srcs: &[&[u32]], chunks: &[usize], outer: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for o in 0..outer {
            for (s, &c) in srcs.iter().zip(chunks) {
                out.extend_from_slice(&s[o * c..(o + 1) * c]);
            }
        }
        out
    }

    #[test]
    fn matches_the_serial_copy_at_every_size() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let data: Vec<u32> = (0..3_000_000).collect();
        // Batch-1 channel joins (one row, few large blocks), several rows, odd sizes, an
        // empty block, and a split that lands in the middle of blocks.
        let cases: &[(usize, &[usize])] = &[
            (1, &[1_000_000, 32 * 3136]),
            (1, &[64 * 3025, 128 * 3025, 32 * 3025, 32 * 3025]),
            (3, &[100_003, 7, 0, 65_537]),
            (17, &[1, 2, 3]),
            (1, &[5]),
            (2, &[]),
        ];
        for &(outer, chunks) in cases {
            let srcs: Vec<&[u32]> = chunks
                .iter()
                .enumerate()
                .map(|(i, &c)| &data[i * 7..i * 7 + c * outer])
                .collect();
            let want = reference(&srcs, chunks, outer);
            let got = pool.install(|| concat(&srcs, chunks, outer)).unwrap();
            assert_eq!(got, want, "outer {outer} chunks {chunks:?}");
        }
    }

    #[test]
    fn short_sources_and_overflow_are_errors() {
        let a = [1.0f32; 10];
        let e = concat(&[&a[..], &a[..]], &[5, 6], 2).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::BufferTooSmall {
                    needed: 12,
                    actual: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = concat(&[&a[..]], &[usize::MAX], 2).unwrap_err();
        assert!(matches!(e, KernelError::ShapeMismatch { .. }), "{e:?}");
        let e = concat(&[&a[..]], &[1, 2], 1).unwrap_err();
        assert!(matches!(e, KernelError::ShapeMismatch { .. }), "{e:?}");
    }
}
