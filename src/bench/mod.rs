//! The benchmark harness behind `accelmesh bench`: times matmul and conv2d cases on a set of
//! nodes (split evenly over them) and optionally checks the results against float64.
//!
//! Each case runs untimed warm-ups ([`warm_up`]), then `reps` timed repetitions; a repetition's time is
//! the wall time of splitting the inputs, running the parts concurrently and assembling the
//! output (for a GPU: uploads, kernels and downloads). On a single node the repetitions run as
//! one batch of the node's work, back to back as a model's steps (`measure_on`). On a single
//! GPU node the kernels are also timed alone with the inputs resident. Inputs are seeded random
//! tensors in [-1, 1).

pub mod case;
pub mod check;
pub mod matmul_case;
pub mod peak;

use std::sync::Arc;
use std::time::{Duration, Instant};

use accelmesh_kernels::conv::WeightPin;
use serde::Serialize;

pub use case::{ConvCase, RESNET};
pub use matmul_case::MatmulCase;

use crate::drac::{Drac, JobResult, Report, WorkloadRequest};
use crate::node::NodeSet;
use crate::op::Op;
use crate::tensor::{DType, Shape, Tensor};
use crate::{Error, Result};

/// Seed of the first input of every case (the second uses the next seed, and so on).
pub const INPUT_SEED: u64 = 0xACCE_1000;
/// Seed that picks the output elements `--check` compares.
pub const CHECK_SEED: u64 = 0xC4EC_0001;

/// The measurements of one benchmark case (one JSON line of `bench --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    /// The op's name: `matmul` or `conv2d`.
    pub op: String,
    /// The problem: `MxNxK` for matmul, `N-C-H-K-R-stride-pad` for conv2d.
    pub shape: String,
    /// Input element type.
    pub dtype: DType,
    /// The node spec the case ran on.
    pub nodes: String,
    /// Number of nodes the work was split over.
    pub node_count: usize,
    /// Worker threads of all nodes together.
    pub threads: usize,
    /// The nodes' backend (the kernels' instruction set for CPU nodes).
    pub isa: String,
    /// Timed repetitions (after the warm-up of [`warm_up`]).
    pub reps: usize,
    /// Nodes the DRAC's plan used (of `node_count`).
    pub nodes_used: usize,
    /// How the DRAC split the work.
    pub strategy: String,
    /// Modelled joules of one repetition.
    pub energy_j: f64,
    /// Median wall time of a repetition, in milliseconds.
    pub ms_median: f64,
    /// Fastest repetition, in milliseconds.
    pub ms_min: f64,
    /// Floating-point operations of one repetition.
    pub flops: u64,
    /// `flops` per median repetition, in GFLOP/s.
    pub gflops: f64,
    /// On a single GPU node: median kernel time with the inputs resident on the device
    /// (timestamp queries where available), in milliseconds; `ms_median` includes transfers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_ms_median: Option<f64>,
    /// `flops` per median kernel time, in GFLOP/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_gflops: Option<f64>,
    /// With `--check`: max |out − ref| / Σ|a·b| against a float64 reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rel_err: Option<f64>,
}

/// Times `reps` matrix multiplies of `case` with `dtype` inputs on `nodes`.
pub fn run_matmul(
    nodes: &NodeSet,
    drac: &Drac,
    case: &MatmulCase,
    dtype: DType,
    reps: usize,
    check: bool,
) -> Result<CaseResult> {
    let op = Op::MatMul {
        trans_a: false,
        trans_b: case.trans_b,
    };
    let (a_shape, b_shape) = (Shape::new(case.a_dims()), Shape::new(case.b_dims()));
    check_fits(nodes, &op, &[&a_shape, &b_shape], dtype)?;
    let a = Tensor::random(a_shape, dtype, INPUT_SEED)?;
    let b = Tensor::random(b_shape, dtype, INPUT_SEED + 1)?;
    let shared = Arc::new(vec![a, b]);
    let (a, b) = (&shared[0], &shared[1]);
    let inputs = [a, b];
    let (times, out, report) = measure_on(nodes, drac, &op, &shared, reps)?;
    let kernel_times = measure_resident(nodes, &op, &inputs, reps)?;
    let max_rel_err = check
        .then(|| check::matmul_max_rel_err(a, b, (false, case.trans_b), &out, CHECK_SEED))
        .transpose()?;
    summarize(
        nodes,
        &op,
        &inputs,
        case.to_string(),
        dtype,
        Outcome {
            times: &times,
            kernel_times: kernel_times.as_deref(),
            report: &report,
            max_rel_err,
        },
    )
}

/// Times `reps` convolutions of `case` with `dtype` inputs on `nodes`.
pub fn run_conv2d(
    nodes: &NodeSet,
    drac: &Drac,
    case: &ConvCase,
    dtype: DType,
    reps: usize,
    check: bool,
) -> Result<CaseResult> {
    let params = case.params();
    let op = Op::Conv2d(params.clone());
    let (x_shape, w_shape) = (
        Shape::new(case.input_dims()),
        Shape::new(case.weight_dims()),
    );
    check_fits(nodes, &op, &[&x_shape, &w_shape], dtype)?;
    let x = Tensor::random(x_shape, dtype, INPUT_SEED)?;
    let w = Tensor::random(w_shape, dtype, INPUT_SEED + 1)?;
    let shared = Arc::new(vec![x, w]);
    let (x, w) = (&shared[0], &shared[1]);
    let inputs = [x, w];
    // The weights stay constant over the runs, as an inference session's do: pinned, CPU
    // nodes pack f32 weights into their kernels' panels once (parts that cut the weights
    // still pack theirs per run).
    let _pin = w.as_f32().ok().map(WeightPin::new);
    let (times, out, report) = measure_on(nodes, drac, &op, &shared, reps)?;
    let kernel_times = measure_resident(nodes, &op, &inputs, reps)?;
    let max_rel_err = check
        .then(|| check::conv2d_max_rel_err(x, w, None, &params, &out, CHECK_SEED))
        .transpose()?;
    summarize(
        nodes,
        &op,
        &inputs,
        case.to_string(),
        dtype,
        Outcome {
            times: &times,
            kernel_times: kernel_times.as_deref(),
            report: &report,
            max_rel_err,
        },
    )
}

/// Fails unless the inputs and output of `op` fit in the nodes' memory together.
fn check_fits(nodes: &NodeSet, op: &Op, shapes: &[&Shape], dtype: DType) -> Result<()> {
    let needed = op.bytes(shapes, dtype)?;
    let available = nodes.memory_bytes();
    if needed > available {
        return Err(Error::device(
            nodes.label(),
            format!(
                "{} of {} needs {needed} bytes of inputs and output, the nodes have {available}",
                op.name(),
                shapes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    Ok(())
}

/// [`measure`], on a single node as one batch of that node's work ([`Device::run_batch`]):
/// the repetitions follow one another as a model's steps do, with the node's workers awake
/// in between, so a repetition's time is the op's and not the hand-over of each call from
/// this thread to the node's pool (two thread wake-ups, tens of microseconds on a virtual
/// machine). Several nodes run each repetition as split parts, as before.
///
/// [`Device::run_batch`]: crate::node::Device::run_batch
fn measure_on(
    nodes: &NodeSet,
    drac: &Drac,
    op: &Op,
    inputs: &Arc<Vec<Tensor>>,
    reps: usize,
) -> Result<(Vec<f64>, Tensor, Report)> {
    let [device] = nodes.devices() else {
        return measure(drac, op, inputs, reps);
    };
    crate::node::in_batch(device.as_ref(), || measure(drac, op, inputs, reps))
}

/// Warm-up runs, then `reps` timed runs through the DRAC; returns the times in ms, the last
/// output and the last report.
fn measure(
    drac: &Drac,
    op: &Op,
    inputs: &Arc<Vec<Tensor>>,
    reps: usize,
) -> Result<(Vec<f64>, Tensor, Report)> {
    if reps == 0 {
        return Err(Error::parse("repetition count", "0", "must be at least 1"));
    }
    // Each run writes into the previous run's output where the plan allows (one node, whole
    // job), as a runtime's arena would, so the time is the op's and not the allocator's.
    let run = |out: Option<Tensor>| {
        let req = WorkloadRequest::shared(op.clone(), Arc::clone(inputs));
        match out {
            Some(out) => drac.run_into(req, out),
            None => drac.run(req),
        }
    };
    let mut last = warm_up(|prev: Option<JobResult>| run(prev.map(|r| r.output)))?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        last = run(Some(last.output))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((times, last.output, last.report))
}

/// Kernel-only times in ms on a single node that keeps inputs resident (a GPU); `None` for
/// host nodes and for several nodes.
fn measure_resident(
    nodes: &NodeSet,
    op: &Op,
    inputs: &[&Tensor],
    reps: usize,
) -> Result<Option<Vec<f64>>> {
    let [device] = nodes.devices() else {
        return Ok(None);
    };
    match device.time_resident(op, inputs, reps) {
        None => Ok(None),
        Some(times) => Ok(Some(times?.into_iter().map(|s| s * 1e3).collect())),
    }
}

/// Shortest warm-up before timed runs: on a shared or virtual machine, cores that were idle
/// need a few hundred milliseconds of load before they run at full speed (cases measured
/// after a 100 ms warm-up ran up to twice as slow as the same case run later).
pub const WARM_UP: Duration = Duration::from_millis(500);
/// Fewest warm-up runs (caches, buffers, thread pools, the perf model's online corrections).
pub const WARM_UP_RUNS: usize = 3;

/// Runs `run` untimed at least [`WARM_UP_RUNS`] times and for at least [`WARM_UP`], handing each
/// run the previous run's result (`None` first, so outputs can be reused), and returns the last.
pub fn warm_up<T>(mut run: impl FnMut(Option<T>) -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut last = run(None)?;
    let mut runs = 1;
    while runs < WARM_UP_RUNS || start.elapsed() < WARM_UP {
        last = run(Some(last))?;
        runs += 1;
    }
    Ok(last)
}

/// The median of a non-empty list (mean of the middle two for even lengths).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// What one case measured.
struct Outcome<'a> {
    /// Wall times of the repetitions, in ms.
    times: &'a [f64],
    /// Kernel-only times on a single GPU node, in ms.
    kernel_times: Option<&'a [f64]>,
    /// The DRAC's report of the last repetition.
    report: &'a Report,
    /// With `--check`, the error against float64.
    max_rel_err: Option<f64>,
}

/// Builds the result record of one case from its wall times (and kernel-only times).
fn summarize(
    nodes: &NodeSet,
    op: &Op,
    inputs: &[&Tensor],
    shape: String,
    dtype: DType,
    outcome: Outcome<'_>,
) -> Result<CaseResult> {
    let Outcome {
        times,
        kernel_times,
        report,
        max_rel_err,
    } = outcome;
    let shapes: Vec<_> = inputs.iter().map(|t| t.shape()).collect();
    let flops = op.flops(&shapes)?;
    let ms_median = median(times);
    let ms_min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let rate = |ms: f64| {
        if ms > 0.0 {
            flops as f64 / (ms * 1e6)
        } else {
            0.0
        }
    };
    let kernel_ms_median = kernel_times.map(median);
    Ok(CaseResult {
        op: op.name().to_string(),
        shape,
        dtype,
        nodes: nodes.label().to_string(),
        node_count: nodes.len(),
        threads: nodes.threads(),
        isa: nodes.backends(),
        nodes_used: report.nodes_used.len(),
        strategy: report.strategy.clone(),
        energy_j: report.energy_j,
        reps: times.len(),
        ms_median,
        ms_min,
        flops,
        gflops: rate(ms_median),
        kernel_ms_median,
        kernel_gflops: kernel_ms_median.map(rate),
        max_rel_err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
