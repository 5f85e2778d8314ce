//! AArch64 NEON microkernel: an 8 × 8 tile in sixteen q-register accumulators.

use std::arch::aarch64::*;

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 8;
const NR: usize = 8;

/// The NEON kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    direct_b: false,
    direct_a: false,
    packs_b: false,
    run: entry,
};

unsafe fn entry(args: &TileArgs) {
    // SAFETY: the driver only selects this kernel when NEON is detected.
    unsafe { kernel(args) }
}

#[target_feature(enable = "neon")]
unsafe fn kernel(args: &TileArgs) {
    debug_assert!(
        args.b_packed && args.b_stride == NR,
        "this kernel reads packed B only"
    );
    debug_assert!(
        args.a_packed && args.a_rs == 1 && args.a_ks == MR,
        "this kernel reads packed A only"
    );
    let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
    let (mut a, mut b) = (args.a, args.b);
    for _ in 0..args.kc {
        // SAFETY: each step reads NR floats of B and MR of A, inside the packed panels.
        unsafe {
            let b0 = vld1q_f32(b);
            let b1 = vld1q_f32(b.add(4));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = *a.add(i);
                row[0] = vfmaq_n_f32(row[0], b0, ai);
                row[1] = vfmaq_n_f32(row[1], b1, ai);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let mut tile = [0.0f32; MR * NR];
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: `tile` has room for MR rows of NR floats.
        unsafe {
            vst1q_f32(tile.as_mut_ptr().add(i * NR), row[0]);
            vst1q_f32(tile.as_mut_ptr().add(i * NR + 4), row[1]);
        }
    }
    // SAFETY: the caller owns the C tile.
    unsafe { store_tile_scalar(&tile, NR, args) };
}
