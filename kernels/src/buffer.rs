//! Output buffers: zero-filled vectors taken straight from the allocator's zeroed memory, and
//! one buffer cut into disjoint chunks that several owners fill at once.

use std::alloc::{Layout, alloc_zeroed};
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::Arc;

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

/// Largest block glibc may be told to take from its heap instead of mapping it apart.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of glibc's heap kept for later allocations instead of returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;
/// Heap grown ahead of need and advised to use huge pages ([`retain_freed_memory`]): below
/// [`TRIM_THRESHOLD`], so freeing it does not hand it back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_HEAP_BYTES: libc::c_int = 512 << 20;
/// glibc's own padding of each heap extension (`M_TOP_PAD`), restored after the growth.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_TOP_PAD: libc::c_int = 128 << 10;
/// The block whose allocation makes the heap grow by [`HUGE_HEAP_BYTES`] (more than any
/// free space a new process's heap holds, less than [`MMAP_THRESHOLD`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GROWTH_SEED_BYTES: usize = 16 << 20;

/// Asks the C allocator to keep the memory a process frees for its next allocations: blocks
/// up to 32 MiB come from one heap shared by all threads, which is not trimmed below 1 GiB
/// of free space. An inference frees and allocates activations of the same sizes every run;
/// fresh pages from the system cost a fault and a zero-fill each. Measured with ResNet-50:
/// batch 8 about 8 % faster, peak memory 224 MiB instead of 240 at batch 1 and 323 instead
/// of 328 at batch 8 (with one heap per thread, as glibc would otherwise make, freed blocks
/// of one thread's heap do not serve another's and the peak grew to 333 and 507 MiB).
///
/// It also grows that heap by 512 MiB of address space at once and advises it to use
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`, before any of it is touched): where the
/// system hands them out on request (`transparent_hugepage/enabled` set to `madvise`, the
/// usual default), the activations, packed weights and packing buffers allocated there sit
/// on 2 MiB pages, and the kernels' strided reads (a tile's rows a plane apart) need a
/// fraction of the TLB entries. Untouched pages cost no memory. Measured on a 2-vCPU AMD
/// EPYC, alternating: ResNet-50 0.977× the latency at batch 1 (batch 8 0.989×),
/// DenseNet-121 0.958×, peak memory unchanged (glibc's own switch for the same,
/// `glibc.malloc.hugetlb`, which a running program cannot set for itself, measured 0.985×).
///
/// Process-wide, so it is for programs (the `accelmesh` binary) to call, not libraries;
/// returns whether the allocator took the settings (glibc on Linux only; the huge-page
/// advice is a hint, and the heap keeps small pages where it is refused or where the heap
/// cannot grow: [`huge_heap_range`] says which).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets glibc's allocation thresholds, with values inside the
        // ranges it accepts; it is thread-safe and affects no memory already allocated.
        let taken = unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if taken {
            HUGE_HEAP.get_or_init(grow_heap_on_huge_pages);
        }
        taken
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The heap range [`retain_freed_memory`] grew and advised, once per process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static HUGE_HEAP: std::sync::OnceLock<Option<Range<usize>>> = std::sync::OnceLock::new();

/// The addresses of the heap growth [`retain_freed_memory`] advised to use huge pages: `None`
/// before its first call, where the heap could not grow or the system refused the advice
/// (no transparent huge pages), or without glibc.
pub fn huge_heap_range() -> Option<Range<usize>> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        HUGE_HEAP.get().cloned().flatten()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Grows glibc's heap by [`HUGE_HEAP_BYTES`] and advises the new pages to use transparent
/// huge pages (see [`retain_freed_memory`], which calls it once per process); returns the
/// advised range, or `None` where the heap cannot grow or the advice is refused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn grow_heap_on_huge_pages() -> Option<Range<usize>> {
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)?;
    // SAFETY: sbrk(0) only reads the current end of the heap. The padding is one of glibc's
    // own settings, raised for one allocation and restored; the seed block is allocated and
    // freed through glibc like any other (its memory is never read or written here), and with
    // the trim threshold above the growth the heap keeps the freed space. The advised range
    // is whole pages between the heap's old and new ends, which this process owns;
    // MADV_HUGEPAGE only sets how later faults fill them and never changes their contents, so
    // a refusal (huge pages configured off) leaves the heap as it was.
    unsafe {
        let before = libc::sbrk(0) as usize;
        if before == usize::MAX {
            return None;
        }
        libc::mallopt(libc::M_TOP_PAD, HUGE_HEAP_BYTES);
        // Kept opaque: a compiler may otherwise drop an allocation that is freed unused.
        let seed = std::hint::black_box(libc::malloc(GROWTH_SEED_BYTES));
        libc::mallopt(libc::M_TOP_PAD, DEFAULT_TOP_PAD);
        let after = libc::sbrk(0) as usize;
        libc::free(seed);
        if after == usize::MAX || after <= before {
            return None;
        }
        let start = before.next_multiple_of(page);
        let end = after / page * page;
        let advised = end > start
            && libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) == 0;
        advised.then_some(start..end)
    }
}

/// The allocation of a `Vec<f32>` shared by the chunks cut out of it.
struct Allocation {
    ptr: *mut f32,
    len: usize,
    capacity: usize,
}

// SAFETY: the allocation is plain memory owned like a Vec<f32>'s; its elements are only
// reached through `Chunk`s, whose ranges `ChunkedBuf::split` checks to be pairwise disjoint,
// each borrowed mutably only through `&mut Chunk`.
unsafe impl Send for Allocation {}
// SAFETY: as above: shared references to the allocation give access to no element.
unsafe impl Sync for Allocation {}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: ptr, len and capacity come from a Vec<f32> that was given up in `split` and
        // is rebuilt exactly once: here, or in `into_vec`, which skips this drop.
        drop(unsafe { Vec::from_raw_parts(self.ptr, self.len, self.capacity) });
    }
}

/// One f32 buffer cut into disjoint [`Chunk`]s that separate owners (threads) fill at once,
/// then taken back as the whole vector without a copy once every chunk is dropped.
pub struct ChunkedBuf {
    allocation: Arc<Allocation>,
}

/// A disjoint range of a [`ChunkedBuf`], owned: it may move to another thread and outlive the
/// code that cut it (a chunk held by a hung worker keeps the memory alive, nothing more).
pub struct Chunk {
    allocation: Arc<Allocation>,
    range: Range<usize>,
}

impl ChunkedBuf {
    /// Cuts `buffer` into one chunk per range, in the order given; `None` when a range runs
    /// past the end or two ranges overlap (empty ranges never overlap).
    pub fn split(buffer: Vec<f32>, ranges: &[Range<usize>]) -> Option<(ChunkedBuf, Vec<Chunk>)> {
        let in_bounds = ranges
            .iter()
            .all(|r| r.start <= r.end && r.end <= buffer.len());
        let mut sorted: Vec<&Range<usize>> = ranges.iter().filter(|r| !r.is_empty()).collect();
        sorted.sort_by_key(|r| r.start);
        let disjoint = sorted.windows(2).all(|w| w[0].end <= w[1].start);
        if !(in_bounds && disjoint) {
            return None;
        }
        let mut buffer = ManuallyDrop::new(buffer);
        let allocation = Arc::new(Allocation {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
            capacity: buffer.capacity(),
        });
        let chunks = ranges
            .iter()
            .map(|r| Chunk {
                allocation: Arc::clone(&allocation),
                range: r.clone(),
            })
            .collect();
        Some((ChunkedBuf { allocation }, chunks))
    }

    /// The whole vector back when `chunks` are every chunk of this buffer still alive (they
    /// are dropped); otherwise both are handed back, for the caller to copy out of the chunks.
    #[allow(clippy::result_large_err)]
    pub fn join(self, chunks: Vec<Chunk>) -> Result<Vec<f32>, (ChunkedBuf, Vec<Chunk>)> {
        let ours = chunks
            .iter()
            .all(|c| Arc::ptr_eq(&c.allocation, &self.allocation));
        // Chunks cannot be cloned, so a count that matches cannot grow behind our back.
        if !ours || Arc::strong_count(&self.allocation) != chunks.len() + 1 {
            return Err((self, chunks));
        }
        drop(chunks);
        self.into_vec().map_err(|buffer| (buffer, Vec::new()))
    }

    /// The whole vector back, once every chunk is dropped; otherwise `self` again.
    pub fn into_vec(self) -> Result<Vec<f32>, ChunkedBuf> {
        match Arc::try_unwrap(self.allocation) {
            Ok(allocation) => {
                let allocation = ManuallyDrop::new(allocation);
                // SAFETY: no chunk is left (the Arc was unique), so nothing else reaches the
                // memory; the parts are those of the Vec given up in `split`, and
                // ManuallyDrop keeps `Allocation::drop` from freeing it a second time.
                Ok(unsafe {
                    Vec::from_raw_parts(allocation.ptr, allocation.len, allocation.capacity)
                })
            }
            Err(allocation) => Err(ChunkedBuf { allocation }),
        }
    }
}

impl Chunk {
    /// Where the chunk lies in the whole buffer.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The chunk's elements.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: the range lies inside the allocation (checked in `split`) and no other
        // chunk overlaps it; `&self` excludes a concurrent `as_mut_slice` on this chunk.
        unsafe {
            std::slice::from_raw_parts(self.allocation.ptr.add(self.range.start), self.range.len())
        }
    }

    /// The chunk's elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only live borrow of the range.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.allocation.ptr.add(self.range.start),
                self.range.len(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc takes the settings, and memory freed afterwards serves later allocations.
    #[test]
    fn freed_memory_is_retained_where_glibc_allows() {
        let taken = retain_freed_memory();
        assert_eq!(taken, cfg!(all(target_os = "linux", target_env = "gnu")));
        for len in [1usize << 20, 3 << 20, 1 << 20] {
            let v = try_zeroed_f32(len).expect("allocation");
            assert!(v.iter().step_by(4096).all(|&x| x == 0.0));
        }
    }

    #[test]
    fn chunks_fill_one_buffer_from_several_threads() {
        let buffer: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let ptr = buffer.as_ptr();
        let ranges = [0..300, 700..1000, 300..700, 5..5];
        let (whole, chunks) = ChunkedBuf::split(buffer, &ranges).unwrap();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || {
                    let start = c.range().start;
                    for (i, v) in c.as_mut_slice().iter_mut().enumerate() {
                        *v = -((start + i) as f32) - 0.5;
                    }
                    c
                })
            })
            .collect();
        let chunks: Vec<Chunk> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(chunks[1].as_slice()[0], -700.5);
        let whole = match whole.into_vec() {
            Ok(_) => panic!("chunks are still alive"),
            Err(whole) => whole,
        };
        let mut chunks = chunks;
        let last = chunks.pop().unwrap();
        let (whole, mut chunks) = match whole.join(chunks) {
            Ok(_) => panic!("a chunk was left out"),
            Err(back) => back,
        };
        chunks.push(last);
        let v = whole.join(chunks).ok().unwrap();
        assert_eq!(v.as_ptr(), ptr, "joined without a copy");
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, -(i as f32) - 0.5);
        }
    }

    #[test]
    fn overlapping_or_outside_ranges_are_refused() {
        let v = || vec![1.5f32; 10];
        assert!(ChunkedBuf::split(v(), &[0..5, 4..10]).is_none());
        assert!(ChunkedBuf::split(v(), std::slice::from_ref(&(0..11))).is_none());
        assert!(ChunkedBuf::split(v(), std::slice::from_ref(&(20..20))).is_none());
        assert!(ChunkedBuf::split(v(), &[0..0, 0..10, 10..10]).is_some());
    }

    #[test]
    fn a_chunk_left_behind_keeps_the_memory_alive() {
        let (whole, mut chunks) = ChunkedBuf::split(vec![2.5f32; 64], &[0..32, 32..64]).unwrap();
        let kept = chunks.pop().unwrap();
        drop(chunks);
        drop(whole);
        assert_eq!(kept.as_slice(), &[2.5f32; 32][..]);
    }

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
