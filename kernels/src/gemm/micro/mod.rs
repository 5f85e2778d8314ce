//! Register-blocked microkernels: `C[mr×nr] = alpha·A_panel·B_panel + beta·C` over a packed depth,
//! then, on a product's last depth block, a per-row bias and a ReLU.
//!
//! One kernel per instruction set; the driver picks one with [`for_isa`] and never looks inside.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;

use crate::Isa;
use crate::prefetch::Ahead;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::lane_mask;

/// Arguments of one microkernel call.
pub(crate) struct TileArgs {
    /// Depth of the packed panels.
    pub kc: usize,
    /// A micro-panel: packed, `kc` steps of `mr` values (`a_rs` 1, `a_ks` mr); or, for kernels
    /// with `direct_a`, A read in place, row `i` of step `k` at `i·a_rs + k·a_ks`.
    pub a: *const f32,
    /// Distance between rows of A (1 when packed).
    pub a_rs: usize,
    /// Distance between depth steps of A (`mr` when packed).
    pub a_ks: usize,
    /// Whether A is a packed panel (`kc` steps of `mr` values, rows past the edge zero) rather
    /// than A read in place, whose rows past `mr_eff` must not be touched.
    pub a_packed: bool,
    /// B micro-panel: `kc` steps of `nr` values, `b_stride` apart.
    pub b: *const f32,
    /// Distance between depth steps of B: `nr` for a packed panel, the row stride of an
    /// unpacked row-major B (only for kernels with `direct_b`, which mask the columns past
    /// `nr_eff`).
    pub b_stride: usize,
    /// Whether B is a packed panel (`b_stride == nr`, zero-padded columns) rather than B read
    /// in place, whose columns past `nr_eff` must not be touched.
    pub b_packed: bool,
    /// With B read in place, where a kernel with `packs_b` also writes the steps it reads as
    /// a packed panel (`kc` steps of `nr` values, columns past `nr_eff` zero), for the tiles
    /// below to read packed; null for none.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub pack_b: *mut f32,
    /// Top-left element of the C tile.
    pub c: *mut f32,
    /// Distance between rows of C.
    pub rs_c: usize,
    /// Distance between columns of C.
    pub cs_c: usize,
    /// Rows of the tile that exist in C (`<= mr`).
    pub mr_eff: usize,
    /// Columns of the tile that exist in C (`<= nr`).
    pub nr_eff: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C; exactly 0 means C is not read (NaN in C does not leak).
    pub beta: f32,
    /// The tile's rows of a per-row bias added after the product (`mr_eff` values), or null:
    /// set on the last depth block, when the kernel finishes the tile itself.
    pub row_bias: *const f32,
    /// Clamp negatives to zero after the bias (NaN and -0.0 stay), on the last depth block.
    pub relu: bool,
    /// Lines of A the task reads next, for the kernel to prefetch over its depth steps (the
    /// AVX-512 kernel does; the others ignore it).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub ahead: Ahead,
}

impl TileArgs {
    /// Row `i`'s bias (0 without one).
    ///
    /// # Safety
    /// `i < mr_eff`; `row_bias`, when not null, points to `mr_eff` readable floats.
    #[inline(always)]
    pub(crate) unsafe fn bias(&self, i: usize) -> f32 {
        if self.row_bias.is_null() {
            0.0
        } else {
            // SAFETY: as the caller promises.
            unsafe { *self.row_bias.add(i) }
        }
    }
}

/// A microkernel and its register tile.
#[derive(Clone, Copy)]
pub(crate) struct MicroKernel {
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// Whether the kernel can read B unpacked (row-major, any row stride, partial width).
    pub direct_b: bool,
    /// Whether the kernel can read A unpacked (any strides, only `mr_eff` rows), together with
    /// an unpacked B; other kernels only ever get packed A.
    pub direct_a: bool,
    /// Whether the kernel, reading B in place, can write it out packed as well (`pack_b`).
    pub packs_b: bool,
    /// The kernel.
    ///
    /// # Safety
    /// `a` must point to `kc·mr` readable packed floats (or, for `direct_a` kernels with
    /// `a_packed` false, to `mr_eff` rows of `kc` steps at strides `a_rs`, `a_ks`) and `b` to
    /// `kc` steps of `nr` readable floats `b_stride` apart (only `nr_eff` of them for
    /// `direct_b` kernels with `b_packed` false); `pack_b`, when not null (only for `packs_b`
    /// kernels with `b_packed` false), to `kc·nr` writable floats nobody else accesses; the
    /// `mr_eff × nr_eff`
    /// tile of C at `c` with strides `rs_c`, `cs_c` must be valid and written by nobody else;
    /// `row_bias`, when not null, must point to `mr_eff` readable floats;
    /// the instruction set of the kernel must be available.
    pub run: unsafe fn(&TileArgs),
}

/// The microkernel of an instruction set (the scalar one for a set this build lacks).
pub(crate) fn for_isa(isa: Isa) -> MicroKernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::KERNEL,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::KERNEL,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::KERNEL,
        _ => scalar::KERNEL,
    }
}

/// Writes a finished `mr × nr` accumulator tile (row-major in `tile`) into C, element by
/// element, with the row bias and the ReLU of `args`.
///
/// # Safety
/// Same contract on `args.c` as [`MicroKernel::run`]; `tile` holds at least `mr_eff` rows of `nr`.
#[inline]
pub(crate) unsafe fn store_tile_scalar(tile: &[f32], nr: usize, args: &TileArgs) {
    for i in 0..args.mr_eff {
        for j in 0..args.nr_eff {
            let product = args.alpha * tile[i * nr + j];
            // SAFETY: (i, j) is inside the mr_eff × nr_eff tile the caller owns, and i < mr_eff
            // rows of the bias.
            unsafe {
                let dst = args.c.add(i * args.rs_c + j * args.cs_c);
                let sum = if args.beta == 0.0 {
                    product
                } else {
                    product + args.beta * *dst
                } + args.bias(i);
                *dst = if args.relu && sum < 0.0 { 0.0 } else { sum };
            }
        }
    }
}
