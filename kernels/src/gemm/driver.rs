//! The blocked gemm loop (BLIS-style) and its split over threads.
//!
//! One call runs in two parallel phases per super-block of columns: first every task packs a
//! share of B (all depth blocks), then every task owns a rectangle of C, packs its own rows of A
//! once per depth block and sweeps the shared packed B in L2-sized column blocks. Two phases
//! (not one per block) keep the cost of waking threads off small and mid-sized problems.
//! An A packed ahead of time (`PackA::prepacked`, pinned convolution weights) is read in
//! place on every path, each task prefetching the A panel it reads next while it runs the
//! current one (`crate::prefetch`); products of at most eight rows with B stored column by
//! column (dense layers) stream B without packing it (`gemv`).

use std::cell::Cell;

use rayon::prelude::*;

use crate::prefetch::{Ahead, Spread};

use super::Epilogue;
use super::blocking::{Blocking, CacheSizes};
use super::matrix::MatMut;
use super::micro::{self, MicroKernel, TileArgs};
use super::pack::{AlignedBuf, PackA, PackB, PrepackedA};
use crate::Isa;

/// Below this many multiply-adds a call stays on the calling thread (without AVX-512).
pub const PARALLEL_MIN_MACS: usize = 96 * 96 * 96;
/// [`PARALLEL_MIN_MACS`] with AVX-512, whose twice as wide kernel finishes the same product
/// in half the time: measured on a 2-vCPU Xeon, n = 96 and 128 ran 0.016 and 0.031–0.035 ms
/// on one thread against 0.019–0.022 and 0.036–0.038 on two, n = 160 0.056–0.061 against
/// 0.048–0.050. (On an AVX2-only EPYC, n = 128 took 122 µs on one thread, the gemm crate 73 on
/// two.) Where 512-bit multiply-adds run no faster than two 256-bit ones it holds too: on a
/// 2-vCPU EPYC (Zen 4), n = 128 took 41–43 µs on one thread with the AVX-512 kernel and
/// 45–46 µs on two.
pub const PARALLEL_MIN_MACS_AVX512: usize = 144 * 144 * 144;

/// Whether a product of `macs` multiply-adds on `isa` stays on the calling thread.
pub fn stays_single(isa: Isa, macs: usize) -> bool {
    let min = if isa == Isa::Avx512 {
        PARALLEL_MIN_MACS_AVX512
    } else {
        PARALLEL_MIN_MACS
    };
    macs < min
}
/// Whether an `m × k` by `k × n` product on `isa` may use more than the calling thread: when
/// its multiply-adds are many ([`stays_single`]), or when it has few enough rows to stream B
/// (a dense layer, `GEMV_PARALLEL_MIN_FLOATS`) and B is large. A caller that runs products
/// on a pool of its own installs them there only then.
pub fn may_split(isa: Isa, m: usize, n: usize, k: usize) -> bool {
    !stays_single(isa, m.saturating_mul(n).saturating_mul(k)) || streams_wide(m, n, k)
}

/// The instruction set whose kernel runs a product of `macs` multiply-adds on `isa` when A is
/// not packed beforehand (packed A is laid out for `isa`'s kernel): `isa`, or AVX2 for an
/// AVX-512 product that would stay on one thread there (under [`PARALLEL_MIN_MACS_AVX512`])
/// where 512-bit multiply-adds are no faster than two 256-bit ones
/// ([`crate::peak::wide_fma_pays`]). There the AVX2 kernel's 6 × 16 tiles, which also read A
/// in place, waste less on a small product's edges than 12 × 32 ones, at the same peak, and
/// from [`PARALLEL_MIN_MACS`] the product is split over threads as AVX2 products are.
/// Measured on a 2-vCPU AMD EPYC (Zen 4) by criterion, AVX2 / AVX-512 kernel time: n = 16
/// 0.73–0.81, 32 0.84–1.00, 64 0.86–0.97; n = 128 on two threads (A and B read in place) 31–38
/// µs against 41–42 on one.
pub fn product_isa(isa: Isa, macs: usize) -> Isa {
    let narrow = isa == Isa::Avx512
        && macs < PARALLEL_MIN_MACS_AVX512
        && Isa::Avx2.is_available()
        && !crate::peak::wide_fma_pays();
    if narrow { Isa::Avx2 } else { isa }
}

/// Whether a product of `m` rows streams so large a B that it splits whatever its
/// multiply-adds (when B is stored column by column; see [`GEMV_PARALLEL_MIN_FLOATS`]).
fn streams_wide(m: usize, n: usize, k: usize) -> bool {
    m <= super::gemv::MAX_ROWS && n.saturating_mul(k) >= GEMV_PARALLEL_MIN_FLOATS
}

/// Tasks per thread over the C grid, for load balance between unevenly fast cores.
const TASKS_PER_THREAD: usize = 2;
/// Micro-panels of B packed per parallel packing task.
const PANELS_PER_PACK_TASK: usize = 8;
/// Fewest floats of A packed in parallel by a product split over threads: below, one thread
/// packs it faster than a hand-over costs.
const PARALLEL_PACK_A_MIN_FLOATS: usize = 1 << 15;
/// Fewest columns per thread for the column-task split (small A, wide B).
const COLUMN_TASK_MIN_COLS: usize = 64;
/// Most floats of B packed at once; wider problems are processed in column super-blocks.
const PACKED_B_MAX: usize = 16 << 20;

thread_local! {
    /// Packing buffer kept between calls on this thread (taken while in use, so a nested call
    /// on the same thread allocates its own instead of sharing).
    static A_BUFFER: Cell<Option<AlignedBuf>> = const { Cell::new(None) };
    /// Packed-B buffer of the thread that runs a call, taken the same way.
    static B_BUFFER: Cell<Option<AlignedBuf>> = const { Cell::new(None) };
}

/// A C pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SharedC {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}

// SAFETY: tasks derived from one SharedC write pairwise disjoint tiles of C (the grid split in
// `compute`), and the owning `&mut` borrow outlives every task.
unsafe impl Send for SharedC {}
// SAFETY: as above.
unsafe impl Sync for SharedC {}

/// Problem dimensions and scalars of one call.
pub(crate) struct Problem<'e> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub epilogue: &'e Epilogue<'e>,
    /// Threads the call may use (1: stay on the calling thread).
    pub threads: usize,
}

/// Everything a task needs besides its rectangle of C.
struct Plan<'a> {
    p: &'a Problem<'a>,
    a: &'a dyn PackA,
    /// A packed ahead of time in this plan's layout, if it is.
    pre: Option<PrepackedA<'a>>,
    /// A read in place (small problems on a `direct_a` kernel, with B in place too).
    a_direct: Option<ADirect<'a>>,
    kernel: MicroKernel,
    blocking: Blocking,
    c: SharedC,
}

/// Runs `C = alpha·A·B + beta·C` (+ epilogue) with already validated shapes.
pub(crate) fn run(isa: Isa, p: &Problem<'_>, a: &dyn PackA, b: &dyn PackB, c: &mut MatMut<f32>) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let shared = SharedC {
        ptr: c.data_mut().as_mut_ptr(),
        rs: c.row_stride(),
        cs: c.col_stride(),
    };
    if p.k == 0 || p.alpha == 0.0 {
        scale_only(p, shared);
        return;
    }
    let macs = p.m.saturating_mul(p.n).saturating_mul(p.k);
    let caches = CacheSizes::detect();
    // Depth blocks as `isa`'s kernel cuts them, whichever kernel runs: each output's sum is
    // then formed in the same order as in a larger product of the same depth.
    let requested = micro::for_isa(isa);
    let (blocking, kernel_isa) = match a.prepacked() {
        Some(_) => (
            Blocking::for_kernel(requested.mr, requested.nr, caches),
            isa,
        ),
        None => (
            Blocking::for_plain_product(requested.mr, requested.nr, caches),
            product_isa(isa, macs),
        ),
    };
    let blocking = blocking.for_depth(p.k);
    let kernel = micro::for_isa(kernel_isa);
    let pre = a.prepacked().filter(|pre| {
        let row_panels = p.m.div_ceil(kernel.mr);
        pre.mr == kernel.mr
            && pre.kc == blocking.kc
            && pre.first_panel + row_panels <= pre.panels
            && pre.panels * pre.mr * p.k <= pre.data.len()
    });
    let plan = Plan {
        p,
        a,
        pre,
        a_direct: None,
        kernel,
        blocking,
        c: shared,
    };
    let threads = p.threads;
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512)
        && Isa::Avx2.is_available()
        && p.m <= super::gemv::MAX_ROWS
        && let Some((data, cs)) = b.direct_columns()
        && block_fits(data.len(), &[(p.n, cs)], p.k)
    {
        // Few rows, B column by column (a dense layer): stream B in place, never packed. The
        // stream is what takes the time, so a large B goes to every thread however few the
        // multiply-adds. It streams with the instruction set asked for (`isa`), whatever
        // `kernel_isa` says of the tiled kernel.
        let split = threads > 1 && (!stays_single(isa, macs) || streams_wide(p.m, p.n, p.k));
        run_gemv(&plan, isa, data, cs, if split { threads } else { 1 });
        return;
    }
    let parallel = threads > 1 && !stays_single(kernel_isa, macs);
    let small = p.k.saturating_mul(p.n) <= caches.l2 / 8 / 4;
    let a_direct = a
        .direct()
        .filter(|_| kernel.direct_a && plan.pre.is_none())
        .filter(|&(data, rs, ks)| block_fits(data.len(), &[(p.m, rs), (p.k, ks)], 1))
        .map(|(data, rs, ks)| ADirect { data, rs, ks });
    if small
        && (!parallel || a_direct.is_some())
        && kernel.direct_b
        && let Some((data, row_stride)) = b.direct_rows()
        && block_fits(data.len(), &[(p.k, row_stride)], p.n)
        && !(row_stride == p.n && p.m >= PACK_DENSE_B_MIN_ROWS)
    {
        // Small and cache-resident: read B in place, and A too where the kernel can
        // (otherwise pack only A). Split over threads only when nothing is packed: each
        // thread takes an even share of the column panels.
        let plan = Plan { a_direct, ..plan };
        let source = BSource::Direct { data, row_stride };
        let row_panels = p.m.div_ceil(kernel.mr);
        let col_panels = p.n.div_ceil(kernel.nr);
        let tasks = if parallel { threads.min(col_panels) } else { 1 };
        let task = |t: usize| {
            let share = even_share(col_panels, tasks, t);
            run_task(&plan, 0, p.n, source, 0..row_panels, share);
        };
        if tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            task(0);
        }
        return;
    }
    let a_floats = p.m.div_ceil(kernel.mr) * kernel.mr * p.k;
    // Packed A within half of L2; A packed beforehand (a convolution's pinned weights) within
    // all of L2 when the product is split over threads: nothing is then packed serially before
    // the tasks start, and the general path's shared im2col B would leave L2. Measured on a
    // 1 MiB L2 (alternating): 3×3/2 from 128 on 56×56 0.91×, 1×1/2 256 → 512 from 56×56 0.97×,
    // ResNet-50 0.985× (batch 8, whose products are single-threaded, 0.994×). Plain products
    // keep half: packing A first, n = 384 and 448 ran 1.14–1.17×.
    let a_bytes_max = if parallel && plan.pre.is_some() {
        caches.l2
    } else {
        caches.l2 / 2
    };
    if a_floats <= a_bytes_max / 4 && (!parallel || p.n >= COLUMN_TASK_MIN_COLS * threads) {
        // A is small and B wide (a convolution, a short-and-wide product): pack A once and
        // let each task own a range of columns whose B it packs, block by block, in its L2.
        let mut a_buf = B_BUFFER.take().unwrap_or_default();
        let packed_a = match plan.pre {
            Some(pre) => pre,
            None => {
                let packed_a = a_buf.get(a_floats);
                pack_a_all(&plan, packed_a, if parallel { threads } else { 1 });
                PrepackedA {
                    data: packed_a,
                    mr: kernel.mr,
                    kc: plan.blocking.kc,
                    panels: p.m.div_ceil(kernel.mr),
                    first_panel: 0,
                    then: &[],
                }
            }
        };
        let packed_a = &packed_a;
        if parallel {
            let unit = column_unit(p.n, kernel.nr, threads);
            let units = p.n.div_ceil(unit);
            let tasks = units.min(threads * TASKS_PER_THREAD);
            (0..tasks).into_par_iter().for_each(|t| {
                let share = even_share(units, tasks, t);
                let cols = share.start * unit..(share.end * unit).min(p.n);
                run_column_task(&plan, packed_a, b, cols);
            });
        } else {
            run_column_task(&plan, packed_a, b, 0..p.n);
        }
        B_BUFFER.set(Some(a_buf));
        return;
    }
    let nr = kernel.nr;
    let super_cols = (PACKED_B_MAX / p.k / nr * nr).max(nr);
    let mut b_buf = B_BUFFER.take().unwrap_or_default();
    for n0 in (0..p.n).step_by(super_cols) {
        let cols = super_cols.min(p.n - n0);
        let panels = cols.div_ceil(nr);
        let packed_b = b_buf.get(panels * nr * p.k);
        pack_b_all(&plan, b, n0, cols, packed_b, parallel);
        compute(
            &plan,
            n0,
            cols,
            packed_b,
            if parallel { threads } else { 1 },
        );
    }
    B_BUFFER.set(Some(b_buf));
}

/// Rows from which a small single-threaded product packs a dense B (rows one after the other)
/// rather than reading it in place: every row panel reads all of B again, and packed panels
/// read faster than strided rows. Measured on the pointwise layers of ResNet-50 at batch 8
/// (one single-threaded gemm per image and thread), packed / in place: 256 → 1024 channels on
/// 14×14 0.86–0.88× the time, 256 → 512 0.87–0.94×, 256 → 256 0.89–0.93×, 128 → 128 0.99×. The
/// Winograd path's B, whose rows lie blocks apart, stays in place (packing it measured
/// 0.97–1.07× on its 256-channel layers).
const PACK_DENSE_B_MIN_ROWS: usize = 256;

/// Columns of the units that column tasks are cut in, for `n` columns, microkernel tiles `nr`
/// wide and `threads` threads: whole tiles, or half tiles (one vector of the AVX-512 kernel)
/// when there are fewer than [`HALF_TILE_PANELS_PER_THREAD`] tiles per thread, whose cuts
/// would leave the threads uneven shares: 196 columns (a 14×14 plane) in tiles of 32 split
/// 128/68 between two threads, in units of 16 split 112/84 or, as claimed, about 100/96.
/// Measured alternating in one process, two threads: pointwise layers on 14×14 0.88–1.00× the
/// time (576 → 96 and 576 → 128: 0.88–0.89×); whole models Inception v2 0.97×, ResNet-50
/// 0.97–0.99×, DenseNet-121 0.99–1.01×, Inception v1 0.99×. On 28×28 and 56×56 (more tiles
/// per thread) half tiles ran 0.97–1.03×, so they keep whole ones.
fn column_unit(n: usize, nr: usize, threads: usize) -> usize {
    if nr >= 2 && n.div_ceil(nr) < HALF_TILE_PANELS_PER_THREAD * threads {
        nr / 2
    } else {
        nr
    }
}

/// Tiles per thread below which column tasks are cut in half tiles ([`column_unit`]).
const HALF_TILE_PANELS_PER_THREAD: usize = 4;

/// Whether `len` values hold a strided block read in place: `count` lines `stride` apart per
/// axis (counts at least 1), the last line `run` values long; false on overflow.
fn block_fits(len: usize, axes: &[(usize, usize)], run: usize) -> bool {
    axes.iter()
        .try_fold(run, |end, &(count, stride)| {
            (count - 1).checked_mul(stride)?.checked_add(end)
        })
        .is_some_and(|end| end <= len)
}

/// Floats of B from which a gemv splits over the threads whatever its multiply-adds: a
/// dense layer with one row reads its whole weight matrix for as many multiply-adds, and one
/// thread cannot keep up with the stream. Measured on a 2-vCPU Xeon, 1 × 2048 → 1000 (8 MiB,
/// weights cycling over four copies): one thread 0.31–0.32 ms, two 0.23–0.27. (Inside
/// ResNet-50, weights coming from memory, the layer takes 0.34–0.37 ms either way.)
const GEMV_PARALLEL_MIN_FLOATS: usize = 1 << 17;

/// Columns of B a gemv task runs through all depth blocks before it moves on.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const GEMV_GROUP_COLS: usize = 8;

/// `C = alpha·A·B + beta·C` (+ epilogue) for at most [`super::gemv::MAX_ROWS`] rows with B
/// read in place column by column (`data[j·cs + k]`), split over `threads` by columns.
#[cfg(target_arch = "x86_64")]
fn run_gemv(plan: &Plan<'_>, isa: Isa, data: &[f32], cs: usize, threads: usize) {
    let p = plan.p;
    let (mr, kc_max) = (plan.kernel.mr, plan.blocking.kc);
    // A's rows, depth block by depth block: block `k0` at `k0·m`, row `i` of it at `i·kc`.
    let mut rows = vec![0.0f32; p.m * p.k];
    let panels = p.m.div_ceil(mr);
    let mut panel = vec![0.0f32; panels * mr * kc_max];
    for k0 in (0..p.k).step_by(kc_max) {
        let kc = kc_max.min(p.k - k0);
        plan.a
            .pack_a(0, p.m, k0, kc, mr, &mut panel[..panels * mr * kc]);
        for i in 0..p.m {
            let (ip, ir) = (i / mr, i % mr);
            for k in 0..kc {
                rows[k0 * p.m + i * kc + k] = panel[ip * mr * kc + k * mr + ir];
            }
        }
    }
    let wide = isa == Isa::Avx512 && is_x86_feature_detected!("avx512vl");
    let rows = &rows;
    let groups = p.n.div_ceil(8);
    let tasks = groups.min(threads * TASKS_PER_THREAD).max(1);
    let c = plan.c;
    let task = |t: usize| {
        let share = even_share(groups, tasks, t);
        let cols = share.start * 8..(share.end * 8).min(p.n);
        if cols.is_empty() {
            return;
        }
        // Column groups outermost: each group's columns stream through every depth block in
        // one go, long sequential runs the prefetchers follow (blocks still add up in order).
        for group in (cols.start..cols.end).step_by(GEMV_GROUP_COLS) {
            let cols = group..(group + GEMV_GROUP_COLS).min(cols.end);
            for k0 in (0..p.k).step_by(kc_max) {
                let kc = kc_max.min(p.k - k0);
                let block = super::gemv::Block {
                    a: &rows[k0 * p.m..][..p.m * kc],
                    m: p.m,
                    kc,
                    b: &data[k0..],
                    cs,
                    alpha: p.alpha,
                    beta: if k0 == 0 { p.beta } else { 1.0 },
                    wide,
                };
                // As the microkernels store a tile that is not full: `alpha·sum + beta·C`.
                let mut store = |i: usize, j: usize, sum: f32| {
                    // SAFETY: (i, j) is inside C (i < m, j < n) and in this task's columns.
                    unsafe {
                        let dst = c.ptr.add(i * c.rs + j * c.cs);
                        let product = block.alpha * sum;
                        *dst = if block.beta == 0.0 {
                            product
                        } else {
                            product + block.beta * *dst
                        };
                    }
                };
                // SAFETY: AVX2 and FMA are available (checked by the caller); `run`
                // checked that B holds (n-1)·cs + k values, so every column of `cols` holds this
                // block's kc steps from k0.
                unsafe { super::gemv::columns(&block, cols.clone(), &mut store) };
            }
        }
        if !p.epilogue.is_identity() {
            apply_epilogue(p.epilogue, c, 0, cols.start, p.m, cols.len());
        }
    };
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// Packs columns `n0..n0+cols` of B for every depth block: block `k0` starts at `k0·panels·nr`.
fn pack_b_all(
    plan: &Plan<'_>,
    b: &dyn PackB,
    n0: usize,
    cols: usize,
    dst: &mut [f32],
    parallel: bool,
) {
    let (nr, kc, k) = (plan.kernel.nr, plan.blocking.kc, plan.p.k);
    let panels = cols.div_ceil(nr);
    let pack_depth_block = |(block, dst): (usize, &mut [f32])| {
        let k0 = block * kc;
        let depth = kc.min(k - k0);
        let group = PANELS_PER_PACK_TASK * nr * depth;
        let pack_group = |(g, dst): (usize, &mut [f32])| {
            let j0 = g * PANELS_PER_PACK_TASK * nr;
            let width = (cols - j0).min(PANELS_PER_PACK_TASK * nr);
            b.pack_b(k0, depth, n0 + j0, width, nr, dst);
        };
        if parallel {
            dst.par_chunks_mut(group).enumerate().for_each(pack_group);
        } else {
            dst.chunks_mut(group).enumerate().for_each(pack_group);
        }
    };
    let block_len = kc * panels * nr;
    if parallel {
        dst.par_chunks_mut(block_len)
            .enumerate()
            .for_each(pack_depth_block);
    } else {
        dst.chunks_mut(block_len)
            .enumerate()
            .for_each(pack_depth_block);
    }
}

/// Packs all of A, depth block by depth block: block `k0` at `k0·panels·mr`, panel `ip` of it
/// at `ip·mr·kc`. With `threads` above 1 and at least [`PARALLEL_PACK_A_MIN_FLOATS`] to pack,
/// each thread packs an even share of every block's panels, so the others do not wait while
/// one packs (n = 320 on two threads spent a fifth of its time packing A on one of them).
fn pack_a_all(plan: &Plan<'_>, dst: &mut [f32], threads: usize) {
    let (mr, kc_max, p) = (plan.kernel.mr, plan.blocking.kc, plan.p);
    let panels = p.m.div_ceil(mr);
    let shares = if panels * mr * p.k >= PARALLEL_PACK_A_MIN_FLOATS {
        threads.min(panels).max(1)
    } else {
        1
    };
    let per_share = panels.div_ceil(shares);
    // (k0, kc, first row, rows, destination) of every share of every depth block.
    let mut pieces = Vec::with_capacity(p.k.div_ceil(kc_max) * shares);
    for (block, dst) in dst.chunks_mut(kc_max * panels * mr).enumerate() {
        let k0 = block * kc_max;
        let kc = kc_max.min(p.k - k0);
        for (share, dst) in dst.chunks_mut(per_share * mr * kc).enumerate() {
            let m0 = share * per_share * mr;
            if m0 < p.m {
                pieces.push((k0, kc, m0, (per_share * mr).min(p.m - m0), dst));
            }
        }
    }
    let pack = |(k0, kc, m0, rows, dst): (usize, usize, usize, usize, &mut [f32])| {
        plan.a.pack_a(m0, rows, k0, kc, mr, dst);
    };
    if shares > 1 {
        pieces.into_par_iter().for_each(pack);
    } else {
        pieces.into_iter().for_each(pack);
    }
}

/// One column task: every row of C for columns `cols`, with A packed already (`pack_a_all`)
/// and B packed here, one L2-sized block at a time — by its own pass, or, where B is stored
/// row by row and the kernel `packs_b`, by the first row panel's tiles as they read it.
fn run_column_task(
    plan: &Plan<'_>,
    packed_a: &PrepackedA<'_>,
    b: &dyn PackB,
    cols: std::ops::Range<usize>,
) {
    let p = plan.p;
    let (mr, nr) = (plan.kernel.mr, plan.kernel.nr);
    let (kc_max, nc) = (plan.blocking.kc, plan.blocking.nc);
    let row_panels = p.m.div_ceil(mr);
    // B stored row by row, in a product split over threads: the first row panel's tiles read
    // it in place and write the packed panels the others read, instead of a packing pass of
    // its own before them. (Single-threaded products — a batch's images, one per thread or
    // lane — keep the pass: their B has mostly left the cache, and reading it in place
    // measured level at best, 0.97–1.02× with the prefetch, 1.09–1.24× without.)
    let in_place = b
        .direct_rows()
        .filter(|_| p.threads > 1 && plan.kernel.packs_b && plan.kernel.direct_b)
        .filter(|&(data, row_stride)| block_fits(data.len(), &[(p.k, row_stride)], cols.end));
    let mut b_buf = A_BUFFER.take().unwrap_or_default();
    for n0 in cols.clone().step_by(nc) {
        let width = nc.min(cols.end - n0);
        let panels = width.div_ceil(nr);
        for k0 in (0..p.k).step_by(kc_max) {
            let kc = kc_max.min(p.k - k0);
            let packed_b = b_buf.get(panels * nr * kc);
            if in_place.is_none() {
                b.pack_b(k0, kc, n0, width, nr, packed_b);
            }
            // Raw from here: the first row panel writes the panels the others read.
            let packed_b = packed_b.as_mut_ptr();
            let step = TileStep {
                kc,
                beta: if k0 == 0 { p.beta } else { 1.0 },
                last: k0 + kc == p.k,
            };
            for ip in 0..row_panels {
                let a_panel = APanel::packed(packed_a.panel(k0, kc, ip), mr);
                let next_a = Spread::new(
                    next_a_panel(packed_a, p.k, kc_max, k0, ip, 0..row_panels),
                    panels,
                );
                for jp in 0..panels {
                    // Panel jp of the block's `panels·nr·kc` floats.
                    let panel = packed_b.wrapping_add(jp * nr * kc);
                    let b_step = match in_place {
                        Some((data, row_stride)) if ip == 0 => BPanel {
                            pack_to: panel,
                            ..BSource::Direct { data, row_stride }.panel(k0, kc, n0, jp, panels, nr)
                        },
                        _ => BPanel::packed(panel, nr),
                    };
                    run_tile(
                        plan,
                        &step,
                        a_panel,
                        b_step,
                        ip * mr,
                        n0 + jp * nr,
                        n0 + width,
                        Ahead::of(next_a.piece(jp)),
                    );
                }
            }
        }
    }
    A_BUFFER.set(Some(b_buf));
}

/// Share `index` of `total` items cut into `parts` contiguous shares whose sizes differ by at
/// most one (so no thread is left with a long tail).
fn even_share(total: usize, parts: usize, index: usize) -> std::ops::Range<usize> {
    let (base, extra) = (total / parts, total % parts);
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

/// Splits the C rectangle of a super-block into tasks and runs them.
fn compute(plan: &Plan<'_>, n0: usize, cols: usize, packed_b: &[f32], threads: usize) {
    let (mr, nr) = (plan.kernel.mr, plan.kernel.nr);
    let row_panels = plan.p.m.div_ceil(mr);
    let col_panels = cols.div_ceil(nr);
    let target = if threads > 1 {
        threads * TASKS_PER_THREAD
    } else {
        1
    };
    let row_tasks = row_panels.min(target);
    let col_tasks = col_panels.min(target.div_ceil(row_tasks));
    let task = |t: usize| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let rows = even_share(row_panels, row_tasks, rt);
        let panels = even_share(col_panels, col_tasks, ct);
        if !rows.is_empty() && !panels.is_empty() {
            run_task(plan, n0, cols, BSource::Packed(packed_b), rows, panels);
        }
    };
    let tasks = row_tasks * col_tasks;
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// Where the microkernels read B from.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// Packed panels of a super-block, depth block `k0` at `k0·panels·nr`.
    Packed(&'a [f32]),
    /// B itself, row-major: element (k, j) at `k·row_stride + j`.
    Direct { data: &'a [f32], row_stride: usize },
}

/// A B micro-panel as the microkernel reads it.
#[derive(Clone, Copy)]
struct BPanel {
    /// Its first depth step.
    ptr: *const f32,
    /// Distance between its depth steps.
    stride: usize,
    /// Packed (full `nr` columns, zero-padded) or B read in place (only `nr_eff` columns).
    packed: bool,
    /// Read in place: where the kernel also writes the panel packed, or null.
    pack_to: *mut f32,
}

impl BPanel {
    /// A packed panel of `nr` columns per depth step.
    #[inline]
    fn packed(ptr: *const f32, nr: usize) -> BPanel {
        BPanel {
            ptr,
            stride: nr,
            packed: true,
            pack_to: std::ptr::null_mut(),
        }
    }
}

impl BSource<'_> {
    /// Step `k0` of column panel `jp` (of `panels` in a super-block at `n0`).
    #[inline]
    fn panel(
        &self,
        k0: usize,
        kc: usize,
        n0: usize,
        jp: usize,
        panels: usize,
        nr: usize,
    ) -> BPanel {
        match *self {
            BSource::Packed(packed) => BPanel::packed(
                packed[k0 * panels * nr + jp * nr * kc..][..nr * kc].as_ptr(),
                nr,
            ),
            BSource::Direct { data, row_stride } => BPanel {
                ptr: data[k0 * row_stride + n0 + jp * nr..].as_ptr(),
                stride: row_stride,
                packed: false,
                pack_to: std::ptr::null_mut(),
            },
        }
    }
}

/// A read in place: element (i, k) at `i·rs + k·ks` of `data` (bounds checked by `run`).
#[derive(Clone, Copy)]
struct ADirect<'a> {
    data: &'a [f32],
    rs: usize,
    ks: usize,
}

impl ADirect<'_> {
    /// The panel of rows from `row`, depth steps from `k0`.
    #[inline]
    fn panel(&self, row: usize, k0: usize) -> APanel {
        APanel {
            ptr: self.data[row * self.rs + k0 * self.ks..].as_ptr(),
            rs: self.rs,
            ks: self.ks,
            packed: false,
        }
    }
}

/// An A micro-panel as the microkernel reads it.
#[derive(Clone, Copy)]
struct APanel {
    /// Row 0 of its first depth step.
    ptr: *const f32,
    /// Distance between its rows.
    rs: usize,
    /// Distance between its depth steps.
    ks: usize,
    /// Packed (`mr` rows, zero-padded) or A read in place (only the tile's live rows).
    packed: bool,
}

impl APanel {
    /// A packed panel of `mr` rows.
    #[inline]
    fn packed(panel: &[f32], mr: usize) -> APanel {
        APanel {
            ptr: panel.as_ptr(),
            rs: 1,
            ks: mr,
            packed: true,
        }
    }
}

/// One task: row panels `rows` × column panels `panels` of the super-block at `n0`.
fn run_task(
    plan: &Plan<'_>,
    n0: usize,
    cols: usize,
    b_source: BSource<'_>,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    let p = plan.p;
    let (mr, nr) = (plan.kernel.mr, plan.kernel.nr);
    let (kc_max, nc) = (plan.blocking.kc, plan.blocking.nc);
    let col_panels = cols.div_ceil(nr);
    let first_row = rows.start * mr;
    let row_count = (rows.end * mr).min(p.m) - first_row;
    let nc_panels = (nc / nr).max(1);
    let mut a_buf = A_BUFFER.take().unwrap_or_default();
    for k0 in (0..p.k).step_by(kc_max) {
        let kc = kc_max.min(p.k - k0);
        let packed_a: &[f32] = if plan.pre.is_some() || plan.a_direct.is_some() {
            &[]
        } else {
            let packed_a = a_buf.get(rows.len() * mr * kc);
            plan.a.pack_a(first_row, row_count, k0, kc, mr, packed_a);
            packed_a
        };
        let tile = TileStep {
            kc,
            beta: if k0 == 0 { p.beta } else { 1.0 },
            last: k0 + kc == p.k,
        };
        for jc in panels.clone().step_by(nc_panels) {
            let jc_end = (jc + nc_panels).min(panels.end);
            for (ia, ip) in rows.clone().enumerate() {
                let a_panel = match (&plan.a_direct, &plan.pre) {
                    (Some(direct), _) => direct.panel(ip * mr, k0),
                    (None, Some(pre)) => APanel::packed(pre.panel(k0, kc, ip), mr),
                    (None, None) => APanel::packed(&packed_a[ia * mr * kc..][..mr * kc], mr),
                };
                // Prepacked A (pinned weights) comes from memory: the next panel is asked
                // for over this one's tiles. After the last row of a column block that is not
                // the last, the rows start over (already in cache).
                let next_a = match &plan.pre {
                    Some(pre) if jc_end == panels.end || ip + 1 < rows.end => {
                        next_a_panel(pre, p.k, kc_max, k0, ip, rows.clone())
                    }
                    _ => &[],
                };
                let next_a = Spread::new(next_a, jc_end - jc);
                for jp in jc..jc_end {
                    let b_panel = b_source.panel(k0, kc, n0, jp, col_panels, nr);
                    run_tile(
                        plan,
                        &tile,
                        a_panel,
                        b_panel,
                        ip * mr,
                        n0 + jp * nr,
                        n0 + cols,
                        Ahead::of(next_a.piece(jp - jc)),
                    );
                }
            }
        }
    }
    A_BUFFER.set(Some(a_buf));
}

/// The A panel a task walking row panels `rows` (depth block by depth block of `kc_max`, over
/// depth `k`) reads after panel `ip` of the block at `k0`: the next row panel, or the first of
/// the next block; empty after the last.
fn next_a_panel<'a>(
    a: &PrepackedA<'a>,
    k: usize,
    kc_max: usize,
    k0: usize,
    ip: usize,
    rows: std::ops::Range<usize>,
) -> &'a [f32] {
    if ip + 1 < rows.end {
        a.panel(k0, kc_max.min(k - k0), ip + 1)
    } else if k0 + kc_max < k {
        let next = k0 + kc_max;
        a.panel(next, kc_max.min(k - next), rows.start)
    } else {
        a.then
    }
}

/// What is common to the tiles of one depth block.
struct TileStep {
    kc: usize,
    beta: f32,
    last: bool,
}

/// One microkernel call on the tile at (row, col), then the epilogue after the last depth block.
#[inline]
#[allow(clippy::too_many_arguments)]
fn run_tile(
    plan: &Plan<'_>,
    step: &TileStep,
    a_panel: APanel,
    b_panel: BPanel,
    row: usize,
    col: usize,
    col_end: usize,
    ahead: Ahead,
) {
    let (p, c) = (plan.p, plan.c);
    // The kernel finishes the tile itself (row bias, ReLU) on the last depth block; a column
    // bias (dense layers) takes the separate pass.
    let finished_in_kernel = step.last && p.epilogue.col_bias.is_none();
    let mr_eff = plan.kernel.mr.min(p.m - row);
    let args = TileArgs {
        kc: step.kc,
        a: a_panel.ptr,
        a_rs: a_panel.rs,
        a_ks: a_panel.ks,
        a_packed: a_panel.packed,
        b: b_panel.ptr,
        b_stride: b_panel.stride,
        b_packed: b_panel.packed,
        pack_b: b_panel.pack_to,
        // SAFETY: (row, col) is inside C: row < m and col < n by construction of the grid.
        c: unsafe { c.ptr.add(row * c.rs + col * c.cs) },
        rs_c: c.rs,
        cs_c: c.cs,
        mr_eff,
        nr_eff: plan.kernel.nr.min(col_end - col),
        alpha: p.alpha,
        beta: step.beta,
        row_bias: match p.epilogue.row_bias {
            Some(b) if finished_in_kernel => b[row..row + mr_eff].as_ptr(),
            _ => std::ptr::null(),
        },
        relu: finished_in_kernel && p.epilogue.relu,
        ahead,
    };
    // SAFETY: the A panel holds kc·mr packed floats, or is A in place (only for direct_a
    // kernels, with `a_packed` false: they read its mr_eff rows alone; `run` checked
    // (m-1)·rs + (k-1)·ks against its length, and A in place always comes with B in place);
    // B is a packed panel of kc·nr floats (sliced by `BSource::panel`), or B in place, whose
    // rows k0..k0+kc hold nr_eff columns from `col` (`run` checked (k-1)·row_stride + n
    // against its length) and which only direct_b kernels get, reading those columns alone
    // (`b_packed` false), writing them packed to `pack_to` when set (only for packs_b
    // kernels: a block panel of kc·nr floats of this task's own buffer, which no tile reads
    // before the first row panel has written it); the row bias, when set, is a slice of
    // mr_eff values; the tile is inside C and only this task writes it; the kernel matches
    // the selected, available ISA.
    unsafe { (plan.kernel.run)(&args) };
    if step.last && !finished_in_kernel && !p.epilogue.is_identity() {
        apply_epilogue(p.epilogue, c, row, col, args.mr_eff, args.nr_eff);
    }
}

/// Adds the biases and applies the activation to a finished tile.
fn apply_epilogue(e: &Epilogue<'_>, c: SharedC, row: usize, col: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        let row_bias = e.row_bias.map_or(0.0, |b| b[row + i]);
        if c.cs == 1 {
            // SAFETY: columns col..col+cols of row row+i are inside the tile this task owns,
            // and contiguous (unit column stride).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(c.ptr.add((row + i) * c.rs + col), cols) };
            // Over slices, with the column bias decided per row, the loops vectorise.
            match e.col_bias {
                Some(b) => {
                    for (d, &cb) in dst.iter_mut().zip(&b[col..col + cols]) {
                        *d = e.activate(*d + row_bias + cb);
                    }
                }
                None => dst.iter_mut().for_each(|d| *d = e.activate(*d + row_bias)),
            }
            continue;
        }
        for j in 0..cols {
            let col_bias = e.col_bias.map_or(0.0, |b| b[col + j]);
            // SAFETY: (row+i, col+j) is inside the tile this task owns.
            unsafe {
                let dst = c.ptr.add((row + i) * c.rs + (col + j) * c.cs);
                *dst = e.activate(*dst + row_bias + col_bias);
            }
        }
    }
}

/// `C = beta·C` (+ epilogue), for an empty product (k = 0 or alpha = 0).
fn scale_only(p: &Problem<'_>, c: SharedC) {
    for i in 0..p.m {
        for j in 0..p.n {
            // SAFETY: (i, j) is inside the validated m × n view of C, owned by this call.
            unsafe {
                let dst = c.ptr.add(i * c.rs + j * c.cs);
                *dst = if p.beta == 0.0 { 0.0 } else { p.beta * *dst };
            }
        }
    }
    if !p.epilogue.is_identity() {
        apply_epilogue(p.epilogue, c, 0, 0, p.m, p.n);
    }
}

#[cfg(test)]
mod tests {
    use super::{PARALLEL_MIN_MACS_AVX512, column_unit, even_share, product_isa};
    use crate::Isa;

    #[test]
    fn only_small_avx512_products_may_take_the_avx2_kernel() {
        let wide_pays = crate::peak::wide_fma_pays();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Neon] {
            assert_eq!(product_isa(isa, 16 * 16 * 16), isa);
        }
        assert_eq!(
            product_isa(Isa::Avx512, PARALLEL_MIN_MACS_AVX512),
            Isa::Avx512
        );
        assert_eq!(product_isa(Isa::Avx512, usize::MAX), Isa::Avx512);
        let small = product_isa(Isa::Avx512, 64 * 64 * 64);
        if wide_pays || !Isa::Avx2.is_available() {
            assert_eq!(small, Isa::Avx512);
        } else {
            assert_eq!(small, Isa::Avx2);
        }
    }

    #[test]
    fn few_columns_are_cut_in_half_tiles() {
        // A 14×14 plane on two threads: 7 tiles of 32, fewer than 4 per thread.
        assert_eq!(column_unit(196, 32, 2), 16);
        // A 28×28 plane: 25 tiles, enough for whole ones.
        assert_eq!(column_unit(784, 32, 2), 32);
        assert_eq!(column_unit(196, 32, 1), 32);
        assert_eq!(column_unit(40, 1, 8), 1);
    }

    #[test]
    fn even_shares_cover_and_balance() {
        for (total, parts) in [(25, 4), (7, 3), (22, 6), (5, 5), (100, 1)] {
            let shares: Vec<_> = (0..parts).map(|i| even_share(total, parts, i)).collect();
            assert_eq!(shares[0].start, 0);
            assert_eq!(shares[parts - 1].end, total);
            for pair in shares.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len().abs_diff(pair[1].len()) <= 1);
            }
        }
    }
}
