//! Portable microkernel: plain Rust over a 4 × 8 tile, left to the compiler to vectorise.

use super::{MicroKernel, TileArgs, store_tile_scalar};

const MR: usize = 4;
const NR: usize = 8;

/// The portable kernel.
pub(crate) const KERNEL: MicroKernel = MicroKernel {
    mr: MR,
    nr: NR,
    direct_b: false,
    direct_a: false,
    packs_b: false,
    run: kernel,
};

unsafe fn kernel(args: &TileArgs) {
    debug_assert!(
        args.b_packed && args.b_stride == NR,
        "this kernel reads packed B only"
    );
    debug_assert!(
        args.a_packed && args.a_rs == 1 && args.a_ks == MR,
        "this kernel reads packed A only"
    );
    let mut acc = [0.0f32; MR * NR];
    // SAFETY: the caller guarantees kc·MR floats at `a` and kc·NR floats at `b`.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(args.a, args.kc * MR),
            std::slice::from_raw_parts(args.b, args.kc * NR),
        )
    };
    for (a_step, b_step) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            for j in 0..NR {
                // Not `mul_add`: without FMA in the target, that is a slow library call.
                acc[i * NR + j] += a_step[i] * b_step[j];
            }
        }
    }
    // SAFETY: the caller owns the C tile.
    unsafe { store_tile_scalar(&acc, NR, args) };
}
