//! The blocked gemm loop (BLIS order): depth blocks, packed B blocks, tasks over the C grid.

use std::cell::Cell;

use rayon::prelude::*;

use super::Epilogue;
use super::blocking::{Blocking, CacheSizes};
use super::matrix::MatMut;
use super::micro::{self, MicroKernel, TileArgs};
use super::pack::{AlignedBuf, PackA, PackB};
use crate::Isa;

/// Below this many multiply-adds a call stays on the calling thread.
const PARALLEL_MIN_MACS: usize = 96 * 96 * 96;
/// Tasks per thread over the C grid of one packed block, for load balance.
const TASKS_PER_THREAD: usize = 3;
/// Micro-panels packed per parallel packing task.
const PANELS_PER_PACK_TASK: usize = 4;

thread_local! {
    /// Packing buffers kept between calls on this thread (taken while in use, so a nested
    /// call on the same thread allocates its own instead of sharing).
    static BUFFERS: Cell<Option<(AlignedBuf, AlignedBuf)>> = const { Cell::new(None) };
}

/// A C pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SharedC {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}

// SAFETY: tasks derived from one SharedC write pairwise disjoint tiles of C (the grid split in
// `compute_block`), and the owning `&mut` borrow outlives every task.
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
    let kernel = micro::for_isa(isa);
    let blocking = Blocking::for_kernel(kernel.mr, kernel.nr, CacheSizes::detect());
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && p.m.saturating_mul(p.n).saturating_mul(p.k) >= PARALLEL_MIN_MACS;

    let (mut a_buf, mut b_buf) = BUFFERS.take().unwrap_or_default();
    let row_panels = p.m.div_ceil(kernel.mr);
    for k0 in (0..p.k).step_by(blocking.kc) {
        let kc = blocking.kc.min(p.k - k0);
        let a_len = row_panels * kernel.mr * kc;
        pack_parallel(parallel, a_buf.get(a_len), kernel.mr * kc, |first, dst| {
            let m0 = first * kernel.mr;
            a.pack_a(m0, (p.m - m0).min(dst.len() / kc), k0, kc, kernel.mr, dst)
        });
        let beta = if k0 == 0 { p.beta } else { 1.0 };
        let last = k0 + kc == p.k;
        for n0 in (0..p.n).step_by(blocking.nc) {
            let nc = blocking.nc.min(p.n - n0);
            let b_len = nc.div_ceil(kernel.nr) * kernel.nr * kc;
            pack_parallel(parallel, b_buf.get(b_len), kernel.nr * kc, |first, dst| {
                let j0 = n0 + first * kernel.nr;
                b.pack_b(
                    k0,
                    kc,
                    j0,
                    (n0 + nc - j0).min(dst.len() / kc),
                    kernel.nr,
                    dst,
                )
            });
            let block = Block {
                kernel,
                kc,
                n0,
                nc,
                beta,
                last,
                a: a_buf.as_slice(),
                b: b_buf.as_slice(),
            };
            compute_block(p, &block, shared, if parallel { threads } else { 1 });
        }
    }
    BUFFERS.set(Some((a_buf, b_buf)));
}

/// Fills `buf` panel group by panel group, in parallel when asked.
fn pack_parallel<F>(parallel: bool, buf: &mut [f32], panel_len: usize, pack: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let group = panel_len * PANELS_PER_PACK_TASK;
    if parallel && buf.len() > group {
        buf.par_chunks_mut(group)
            .enumerate()
            .for_each(|(g, dst)| pack(g * PANELS_PER_PACK_TASK, dst));
    } else {
        pack(0, buf);
    }
}

/// One packed depth block × column block, ready for the microkernels.
struct Block<'a> {
    kernel: MicroKernel,
    kc: usize,
    n0: usize,
    nc: usize,
    beta: f32,
    last: bool,
    a: &'a [f32],
    b: &'a [f32],
}

/// Runs the microkernel over every tile of a block, split into a grid of tasks.
fn compute_block(p: &Problem<'_>, blk: &Block<'_>, c: SharedC, threads: usize) {
    let (mr, nr) = (blk.kernel.mr, blk.kernel.nr);
    let row_panels = p.m.div_ceil(mr);
    let col_panels = blk.nc.div_ceil(nr);
    let target = threads * TASKS_PER_THREAD;
    let row_tasks = row_panels.min(if threads > 1 { target } else { 1 });
    let col_tasks = col_panels.min(target.div_ceil(row_tasks)).max(1);
    let col_tasks = if threads > 1 { col_tasks } else { 1 };
    let rows_per_task = row_panels.div_ceil(row_tasks);
    let cols_per_task = col_panels.div_ceil(col_tasks);
    let task = |t: usize| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let rows = rt * rows_per_task..((rt + 1) * rows_per_task).min(row_panels);
        let cols = ct * cols_per_task..((ct + 1) * cols_per_task).min(col_panels);
        for ip in rows {
            for jp in cols.clone() {
                run_tile(p, blk, c, ip, jp);
            }
        }
    };
    let tasks = row_tasks * col_tasks;
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// One microkernel call on tile (ip, jp) of the block, then the epilogue on the last depth block.
#[inline]
fn run_tile(p: &Problem<'_>, blk: &Block<'_>, c: SharedC, ip: usize, jp: usize) {
    let (mr, nr, kc) = (blk.kernel.mr, blk.kernel.nr, blk.kc);
    let row = ip * mr;
    let col = blk.n0 + jp * nr;
    let args = TileArgs {
        kc,
        a: blk.a[ip * mr * kc..(ip + 1) * mr * kc].as_ptr(),
        b: blk.b[jp * nr * kc..(jp + 1) * nr * kc].as_ptr(),
        // SAFETY: (row, col) is inside C: row < m and col < n by construction of the grid.
        c: unsafe { c.ptr.add(row * c.rs + col * c.cs) },
        rs_c: c.rs,
        cs_c: c.cs,
        mr_eff: mr.min(p.m - row),
        nr_eff: nr.min(blk.n0 + blk.nc - col),
        alpha: p.alpha,
        beta: blk.beta,
    };
    // SAFETY: the packed slices above hold kc·mr and kc·nr floats; the tile is inside C and
    // this task is the only one writing it; the kernel matches the selected, available ISA.
    unsafe { (blk.kernel.run)(&args) };
    if blk.last && !p.epilogue.is_identity() {
        apply_epilogue(p.epilogue, c, row, col, args.mr_eff, args.nr_eff);
    }
}

/// Adds the biases and applies the activation to a finished tile.
fn apply_epilogue(e: &Epilogue<'_>, c: SharedC, row: usize, col: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        let row_bias = e.row_bias.map_or(0.0, |b| b[row + i]);
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
