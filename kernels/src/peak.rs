//! The cores' multiply-add rate: a loop of independent fused multiply-adds on registers alone,
//! the ceiling every kernel's GFLOP/s is measured against.
//!
//! A shared host can slow a virtual machine's cores by several times for minutes at a time;
//! a benchmark that measures this rate beside its kernels says what the machine could do in
//! those same minutes.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{Isa, Result};

/// Independent accumulator chains of the loop: enough to cover the multiply-add latency on
/// both FMA ports (4 cycles × 2 ports) with room to spare, and few enough to stay in registers.
const CHAINS: usize = 24;

/// Each step computes `a·MUL + ADD`: the chains stay finite and normal however long they run
/// (they approach `ADD / (1 − MUL)`).
const MUL: f32 = 0.999_999_9;
/// See [`MUL`].
const ADD: f32 = 1e-7;

/// What one thread measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThreadRate {
    /// Floating-point operations done (a multiply-add counts two).
    pub flops: u64,
    /// How long they took.
    pub elapsed: Duration,
}

impl ThreadRate {
    /// The rate in GFLOP/s (0 when nothing was timed).
    pub fn gflops(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.flops as f64 / secs / 1e9
        } else {
            0.0
        }
    }
}

/// Runs `passes` passes of `isa`'s multiply-add loop on the calling thread and returns the
/// operations done and the time taken, or an error naming an ISA this machine lacks.
pub fn fma_loop(isa: Isa, passes: u64) -> Result<ThreadRate> {
    let isa = isa.require()?;
    let start = Instant::now();
    let (flops, checksum) = run(isa, passes);
    let elapsed = start.elapsed();
    std::hint::black_box(checksum);
    Ok(ThreadRate { flops, elapsed })
}

/// Every thread of the current rayon pool runs `isa`'s loop at the same time for about
/// `duration`; one rate per thread, in thread order.
pub fn measure(isa: Isa, duration: Duration) -> Result<Vec<ThreadRate>> {
    let isa = isa.require()?;
    // Passes that take about a millisecond on this thread, so the timed run's length is set
    // by `duration`, not by a guess at the machine's speed.
    let mut passes = 1u64 << 10;
    loop {
        let rate = fma_loop(isa, passes)?;
        if rate.elapsed >= Duration::from_millis(1) || passes >= 1 << 40 {
            let per_ms = passes as f64 / rate.elapsed.as_secs_f64().max(1e-9) / 1e3;
            passes = ((per_ms * duration.as_secs_f64() * 1e3) as u64).max(1);
            break;
        }
        passes *= 4;
    }
    rayon::broadcast(|_| fma_loop(isa, passes))
        .into_iter()
        .collect()
}

/// Passes of each timed loop in [`wide_fma_pays`]: 10–20 µs on a 2.5 GHz core.
const WIDTH_PASSES: u64 = 2048;
/// Timed loops of each width in [`wide_fma_pays`]; the fastest of each counts.
const WIDTH_ROUNDS: usize = 5;

/// Whether 512-bit multiply-adds run here at least 1.5× the rate of 256-bit ones, as on cores
/// with two full-width FMA units; not on cores that split each 512-bit operation in two
/// 256-bit halves (AMD Zen 4: the same rate either way). Measured once per process (about a
/// quarter of a millisecond), unless `ACCELMESH_WIDE_FMA` is `1` (pays) or `0` (does not);
/// `false` where AVX-512 or AVX2 is missing.
pub fn wide_fma_pays() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| match std::env::var("ACCELMESH_WIDE_FMA").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => measure_width(),
    })
}

/// Most measurements [`measure_width`] makes before it settles for an unclear ratio.
const WIDTH_ATTEMPTS: usize = 4;

/// The measurement of [`wide_fma_pays`]: the two loops in turn, the fastest run of each; again
/// while the ratio is unclear (a loop slowed by another thread on the core).
fn measure_width() -> bool {
    if !(Isa::Avx512.is_available() && Isa::Avx2.is_available()) {
        return false;
    }
    // Some cores power up the upper halves of their 512-bit units on first use and run wide
    // operations slowly until then: a first, untimed loop.
    let _ = fma_loop(Isa::Avx512, 4 * WIDTH_PASSES);
    let mut best = [0.0f64; 2];
    for _ in 0..WIDTH_ATTEMPTS {
        for _ in 0..WIDTH_ROUNDS {
            for (slot, isa) in [Isa::Avx2, Isa::Avx512].into_iter().enumerate() {
                if let Ok(rate) = fma_loop(isa, WIDTH_PASSES) {
                    best[slot] = best[slot].max(rate.gflops());
                }
            }
        }
        if let Some(pays) = clearly_pays(best[0], best[1]) {
            return pays;
        }
    }
    best[1] >= 1.5 * best[0]
}

/// Whether 512-bit multiply-adds at `wide` GFLOP/s clearly pay against 256-bit ones at
/// `narrow`: yes from 1.75×, no up to 1.25× (the two kinds of cores measure about 2× and 1×),
/// `None` between or when a rate is missing.
fn clearly_pays(narrow: f64, wide: f64) -> Option<bool> {
    if !(narrow > 0.0 && wide > 0.0) {
        None
    } else if wide >= 1.75 * narrow {
        Some(true)
    } else if wide <= 1.25 * narrow {
        Some(false)
    } else {
        None
    }
}

/// The loop of `isa` (available on this machine): (flops, a value that depends on every one).
fn run(isa: Isa, passes: u64) -> (u64, f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.require()` confirmed AVX-512F before this call.
        Isa::Avx512 => unsafe { x86::avx512(passes) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.require()` confirmed AVX2 and FMA before this call.
        Isa::Avx2 => unsafe { x86::avx2(passes) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `isa.require()` confirmed NEON before this call.
        Isa::Neon => unsafe { neon(passes) },
        _ => scalar(passes),
    }
}

/// The portable loop: a multiply and an add per step (two operations), in `CHAINS` chains.
fn scalar(passes: u64) -> (u64, f32) {
    let (b, c) = std::hint::black_box((MUL, ADD));
    let mut acc: [f32; CHAINS] = std::array::from_fn(|i| i as f32);
    for _ in 0..passes {
        for a in &mut acc {
            *a = *a * b + c;
        }
    }
    (passes * CHAINS as u64 * 2, acc.iter().sum())
}

/// The NEON loop: `CHAINS` chains of 4-lane fused multiply-adds.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn neon(passes: u64) -> (u64, f32) {
    use std::arch::aarch64::*;
    let (b, c) = std::hint::black_box((MUL, ADD));
    let (b, c) = (vdupq_n_f32(b), vdupq_n_f32(c));
    let mut acc: [float32x4_t; CHAINS] = std::array::from_fn(|i| vdupq_n_f32(i as f32));
    for _ in 0..passes {
        for a in &mut acc {
            *a = vfmaq_f32(c, *a, b);
        }
    }
    let sum = acc.iter().map(|&a| vaddvq_f32(a)).sum();
    (passes * CHAINS as u64 * 4 * 2, sum)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::{ADD, CHAINS, MUL};

    /// One `vfmadd213ps` line per listed register `<kind><i>`: `reg = reg · b + c`, with `b`
    /// and `c` the two registers named in `$bc`.
    macro_rules! fma_each {
        ($kind:literal, $bc:literal; $($i:literal)*) => {
            concat!($("vfmadd213ps ", $kind, stringify!($i), ", ", $bc, "\n",)*)
        };
    }

    // The loops are written in assembly with every register named: from intrinsics, LLVM
    // keeps some of the 24 chains on the stack and rotates the others through registers each
    // pass (half the rate of the same loop in C), and its register class for assembly
    // operands stops at zmm15.

    /// `CHAINS` chains of 16-lane fused multiply-adds in zmm0–zmm23.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(passes: u64) -> (u64, f32) {
        let (b, c) = std::hint::black_box((MUL, ADD));
        let (b, c) = (_mm512_set1_ps(b), _mm512_set1_ps(c));
        let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        if passes == 0 {
            return (0, 0.0);
        }
        // SAFETY: registers only (no memory, no stack); every register written is an operand;
        // the caller confirmed AVX-512F; `n` counts down from `passes` ≥ 1 to 0.
        unsafe {
            asm!(
            "2:",
            fma_each!("zmm", "zmm24, zmm25"; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23),
            "dec {n}",
            "jnz 2b",
            n = inout(reg) passes => _,
            in("zmm24") b,
            in("zmm25") c,
            inout("zmm0") acc[0],
            inout("zmm1") acc[1],
            inout("zmm2") acc[2],
            inout("zmm3") acc[3],
            inout("zmm4") acc[4],
            inout("zmm5") acc[5],
            inout("zmm6") acc[6],
            inout("zmm7") acc[7],
            inout("zmm8") acc[8],
            inout("zmm9") acc[9],
            inout("zmm10") acc[10],
            inout("zmm11") acc[11],
            inout("zmm12") acc[12],
            inout("zmm13") acc[13],
            inout("zmm14") acc[14],
            inout("zmm15") acc[15],
            inout("zmm16") acc[16],
            inout("zmm17") acc[17],
            inout("zmm18") acc[18],
            inout("zmm19") acc[19],
            inout("zmm20") acc[20],
            inout("zmm21") acc[21],
            inout("zmm22") acc[22],
            inout("zmm23") acc[23],
            options(nomem, nostack),
            );
        }
        let sum = acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum();
        (passes * CHAINS as u64 * 16 * 2, sum)
    }

    /// Chains of 8-lane fused multiply-adds in ymm0–ymm11 (of the 16 ymm registers), each
    /// stepped twice per pass.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(passes: u64) -> (u64, f32) {
        const YMM_CHAINS: usize = 12;
        let (b, c) = std::hint::black_box((MUL, ADD));
        let (b, c) = (_mm256_set1_ps(b), _mm256_set1_ps(c));
        let mut acc: [__m256; YMM_CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        if passes == 0 {
            return (0, 0.0);
        }
        // SAFETY: registers only (no memory, no stack); every register written is an operand;
        // the caller confirmed AVX2 and FMA; `n` counts down from `passes` ≥ 1 to 0.
        unsafe {
            asm!(
            "2:",
            fma_each!("ymm", "ymm12, ymm13"; 0 1 2 3 4 5 6 7 8 9 10 11),
            fma_each!("ymm", "ymm12, ymm13"; 0 1 2 3 4 5 6 7 8 9 10 11),
            "dec {n}",
            "jnz 2b",
            n = inout(reg) passes => _,
            in("ymm12") b,
            in("ymm13") c,
            inout("ymm0") acc[0],
            inout("ymm1") acc[1],
            inout("ymm2") acc[2],
            inout("ymm3") acc[3],
            inout("ymm4") acc[4],
            inout("ymm5") acc[5],
            inout("ymm6") acc[6],
            inout("ymm7") acc[7],
            inout("ymm8") acc[8],
            inout("ymm9") acc[9],
            inout("ymm10") acc[10],
            inout("ymm11") acc[11],
            options(nomem, nostack),
            );
        }
        let mut lanes = [0f32; 8];
        let mut sum = 0.0;
        for a in acc {
            // SAFETY: `lanes` holds the 8 floats an unaligned store writes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            sum += lanes.iter().sum::<f32>();
        }
        (passes * CHAINS as u64 * 8 * 2, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_multiply_adds_pay_only_at_about_twice_the_rate() {
        assert_eq!(clearly_pays(100.0, 205.0), Some(true));
        assert_eq!(clearly_pays(100.0, 175.0), Some(true));
        assert_eq!(clearly_pays(100.0, 98.0), Some(false));
        assert_eq!(clearly_pays(100.0, 125.0), Some(false));
        assert_eq!(clearly_pays(100.0, 150.0), None);
        assert_eq!(clearly_pays(0.0, 150.0), None);
        assert_eq!(clearly_pays(100.0, f64::NAN), None);
        if !Isa::Avx512.is_available() {
            assert!(!measure_width());
        }
    }

    /// The loop's result, computed in f64 for one chain starting at `start`.
    fn chain(start: f64, passes: u64) -> f64 {
        let (b, c) = (MUL as f64, ADD as f64);
        (0..passes).fold(start, |a, _| a * b + c)
    }

    #[test]
    fn every_path_counts_its_operations_and_computes_the_chains() {
        let passes = 1001;
        for isa in Isa::available() {
            // The AVX2 loop runs 12 chains, each twice per pass.
            let (chains, steps) = match isa {
                Isa::Avx2 => (12, passes * 2),
                _ => (CHAINS, passes),
            };
            let expected: f64 = (0..chains).map(|i| chain(i as f64, steps)).sum();
            let lanes = match isa {
                Isa::Avx512 => 16,
                Isa::Avx2 => 8,
                Isa::Neon => 4,
                Isa::Scalar => 1,
            };
            let (flops, sum) = run(isa, passes);
            assert_eq!(flops, passes * CHAINS as u64 * lanes * 2, "{isa}");
            let got = sum as f64 / lanes as f64;
            assert!(
                (got - expected).abs() <= 1e-4 * expected.abs(),
                "{isa}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn measure_reports_one_positive_rate_per_thread() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let rates = pool
                .install(|| measure(Isa::selected(), Duration::from_millis(5)))
                .unwrap();
            assert_eq!(rates.len(), threads);
            assert!(rates.iter().all(|r| r.flops > 0 && r.gflops() > 0.0));
        }
    }

    #[test]
    fn a_missing_isa_is_an_error() {
        if let Some(&missing) = Isa::ALL.iter().find(|isa| !isa.is_available()) {
            assert!(fma_loop(missing, 1).is_err());
        }
    }
}
