//! General matrix multiply: `C = alpha·A·B + beta·C`, BLIS-style.
//!
//! Operands are strided views ([`MatRef`], [`MatMut`]), so transposes are free (`a.t()`) and any
//! row and column strides work. A and B may be f32, f16 or bf16 (widened while packing);
//! C and the accumulation are f32. Work is split with rayon on the current pool.

mod blocking;
mod driver;
mod gemv;
mod matrix;
mod micro;
mod pack;

pub(crate) use blocking::Blocking;
pub use blocking::CacheSizes;
pub use driver::{PARALLEL_MIN_MACS, PARALLEL_MIN_MACS_AVX512, may_split, stays_single};
pub use matrix::{MatMut, MatRef};
pub(crate) use micro::for_isa as micro_kernel;
#[cfg(target_arch = "x86_64")]
pub(crate) use micro::lane_mask;
pub(crate) use pack::{PackA, PackB, PrepackedA};

use crate::{Element, Isa, KernelError, Result};

/// What happens to each output after the product: per-row and per-column bias, then an activation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to every element of row i (length m), e.g. a convolution's per-channel bias.
    pub row_bias: Option<&'a [f32]>,
    /// Added to every element of column j (length n), e.g. a dense layer's bias.
    pub col_bias: Option<&'a [f32]>,
    /// Clamp negatives to zero (NaN stays NaN).
    pub relu: bool,
}

impl Epilogue<'_> {
    /// The epilogue that changes nothing.
    pub const NONE: Epilogue<'static> = Epilogue {
        row_bias: None,
        col_bias: None,
        relu: false,
    };

    /// True when the epilogue leaves the product as it is.
    pub fn is_identity(&self) -> bool {
        self.row_bias.is_none() && self.col_bias.is_none() && !self.relu
    }

    /// The activation applied to one biased value.
    #[inline(always)]
    pub fn activate(&self, value: f32) -> f32 {
        if self.relu && value < 0.0 { 0.0 } else { value }
    }

    fn check(&self, m: usize, n: usize) -> Result<()> {
        let check = |name: &'static str, bias: Option<&[f32]>, len: usize| match bias {
            Some(b) if b.len() != len => Err(KernelError::ShapeMismatch {
                op: "gemm epilogue",
                detail: format!("{name} has {} values, expected {len}", b.len()),
            }),
            _ => Ok(()),
        };
        check("row bias", self.row_bias, m)?;
        check("column bias", self.col_bias, n)
    }
}

/// Whether one gemm call may split its work across threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Threading {
    /// Split across rayon's current pool when the problem is large enough.
    #[default]
    CurrentPool,
    /// Stay on the calling thread (the caller already runs calls in parallel).
    Single,
}

/// `C = alpha·A·B + beta·C` in f32 on the selected instruction set ([`Isa::selected`]).
///
/// `beta = 0` overwrites C without reading it, as BLAS does.
pub fn sgemm(
    alpha: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    beta: f32,
    c: MatMut<'_, f32>,
) -> Result<()> {
    gemm(Isa::selected(), alpha, a, b, beta, c, &Epilogue::NONE)
}

/// `C = epilogue(alpha·A·B + beta·C)` with A, B of any [`Element`] type, on instruction set `isa`.
pub fn gemm<TA: Element, TB: Element>(
    isa: Isa,
    alpha: f32,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    beta: f32,
    c: MatMut<'_, f32>,
    epilogue: &Epilogue<'_>,
) -> Result<()> {
    if a.cols() != b.rows() || a.rows() != c.rows() || b.cols() != c.cols() {
        return Err(KernelError::ShapeMismatch {
            op: "gemm",
            detail: format!(
                "A is {}x{}, B is {}x{}, C is {}x{}",
                a.rows(),
                a.cols(),
                b.rows(),
                b.cols(),
                c.rows(),
                c.cols()
            ),
        });
    }
    let k = a.cols();
    gemm_packed(
        isa,
        Threading::CurrentPool,
        k,
        alpha,
        &a,
        &b,
        beta,
        c,
        epilogue,
    )
}

/// The gemm core over custom packers: `C[m×n] = epilogue(alpha·A·B + beta·C)` with depth `k`,
/// where A and B are produced on the fly by `a` and `b` (e.g. im2col for a convolution).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    isa: Isa,
    threading: Threading,
    k: usize,
    alpha: f32,
    a: &dyn PackA,
    b: &dyn PackB,
    beta: f32,
    mut c: MatMut<'_, f32>,
    epilogue: &Epilogue<'_>,
) -> Result<()> {
    let isa = isa.require()?;
    let (m, n) = (c.rows(), c.cols());
    epilogue.check(m, n)?;
    // Packed panels round m and n up to the register tile (at most 32): those sizes must fit too.
    let fits = |x: usize| x.checked_add(32).and_then(|padded| padded.checked_mul(k));
    if m.checked_mul(n).and_then(|mn| mn.checked_mul(k)).is_none()
        || fits(m).is_none()
        || fits(n).is_none()
    {
        return Err(KernelError::SizeOverflow {
            what: "gemm",
            detail: format!("m·n·k = {m}·{n}·{k} exceeds usize"),
        });
    }
    let problem = driver::Problem {
        m,
        n,
        k,
        alpha,
        beta,
        epilogue,
        threads: match threading {
            Threading::CurrentPool => rayon::current_num_threads(),
            Threading::Single => 1,
        },
    };
    driver::run(isa, &problem, a, b, &mut c);
    Ok(())
}
