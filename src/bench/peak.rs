//! `accelmesh bench peak`: the cores' multiply-add rate, measured with the kernels' own
//! instruction set, alone and with every thread busy at once.
//!
//! The rate of a register-only loop of independent fused multiply-adds is the ceiling of every
//! kernel; on a shared host it moves from minute to minute, so comparison scripts measure it
//! beside their tables.

use std::time::Duration;

use accelmesh_kernels::Isa;
use accelmesh_kernels::peak;
use serde::Serialize;

use super::median;
use crate::{Error, Result};

/// How long each thread runs the loop per repetition.
pub const PEAK_RUN: Duration = Duration::from_millis(50);

/// The multiply-add rate with `threads` threads busy at once (one JSON line of `bench peak`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeakResult {
    /// Always `peak`.
    pub op: String,
    /// The instruction set of the loop (the kernels' own; `ACCELMESH_ISA` forces it).
    pub isa: String,
    /// Threads running the loop at once.
    pub threads: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Median over the repetitions of all threads' rates together, in GFLOP/s.
    pub gflops: f64,
    /// `gflops` divided by `threads`.
    pub gflops_per_thread: f64,
    /// The slowest thread's median rate, in GFLOP/s.
    pub thread_min: f64,
    /// The fastest thread's median rate, in GFLOP/s.
    pub thread_max: f64,
}

/// Measures the loop on `threads` threads at once, `reps` times.
pub fn run_peak(threads: usize, reps: usize) -> Result<PeakResult> {
    if threads == 0 {
        return Err(Error::parse("thread count", "0", "must be at least 1"));
    }
    if reps == 0 {
        return Err(Error::parse("repetitions", "0", "must be at least 1"));
    }
    let isa = Isa::selected();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("peak-worker{i}"))
        .build()
        .map_err(|e| Error::device("cpu", format!("cannot start {threads} threads: {e}")))?;
    let mut totals = Vec::with_capacity(reps);
    let mut per_thread = vec![Vec::with_capacity(reps); threads];
    for _ in 0..reps {
        let rates = pool.install(|| peak::measure(isa, PEAK_RUN))?;
        totals.push(rates.iter().map(peak::ThreadRate::gflops).sum());
        for (all, rate) in per_thread.iter_mut().zip(&rates) {
            all.push(rate.gflops());
        }
    }
    let medians: Vec<f64> = per_thread.iter().map(|rates| median(rates)).collect();
    let gflops = median(&totals);
    Ok(PeakResult {
        op: "peak".into(),
        isa: isa.name().into(),
        threads,
        reps,
        gflops,
        gflops_per_thread: gflops / threads as f64,
        thread_min: medians.iter().copied().fold(f64::INFINITY, f64::min),
        thread_max: medians.iter().copied().fold(0.0, f64::max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_thread_and_a_consistent_total() {
        let r = run_peak(2, 3).unwrap();
        assert_eq!((r.op.as_str(), r.threads, r.reps), ("peak", 2, 3));
        assert!(r.thread_min > 0.0 && r.thread_min <= r.thread_max);
        assert!((r.gflops_per_thread * 2.0 - r.gflops).abs() < 1e-9 * r.gflops);
    }

    #[test]
    fn zero_threads_or_reps_is_an_error_naming_them() {
        let e = run_peak(0, 3).unwrap_err().to_string();
        assert!(e.contains("thread count") && e.contains('0'), "{e}");
        let e = run_peak(1, 0).unwrap_err().to_string();
        assert!(e.contains("repetitions"), "{e}");
    }
}
