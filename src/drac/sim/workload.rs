//! The simulator's seeded job stream: a mix of matmuls and ResNet-like convolutions at f32,
//! f16 and bf16, Poisson arrivals at a chosen fraction of the mesh's capacity, deadlines as a
//! slack factor times the best single-node time, priorities, and node crashes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::SimConfig;
use crate::drac::perf_model::OpClass;
use crate::mesh::{Endpoint, Topology};
use crate::node::sim::SimNodeSpec;
use crate::op::Op;
use crate::tensor::{DType, Shape};
use crate::{Conv2dParams, Result};

/// Smallest and largest matmul dimension (each of M, N, K is log-uniform in between).
pub(super) const MATMUL_DIMS: (f64, f64) = (256.0, 8192.0);
/// Share of matmuls in the mix (the rest are convolutions).
const MATMUL_SHARE: f64 = 0.6;
/// ResNet-50 conv layers: (input channels, input size, output channels, kernel, stride).
const CONV_LAYERS: [(usize, usize, usize, usize, usize); 13] = [
    (3, 224, 64, 7, 2),
    (64, 56, 64, 3, 1),
    (64, 56, 256, 1, 1),
    (256, 56, 64, 1, 1),
    (128, 28, 128, 3, 1),
    (512, 28, 128, 1, 1),
    (128, 28, 512, 1, 1),
    (256, 14, 256, 3, 1),
    (1024, 14, 256, 1, 1),
    (256, 14, 1024, 1, 1),
    (512, 7, 512, 3, 1),
    (2048, 7, 512, 1, 1),
    (512, 7, 2048, 1, 1),
];
/// Conv batch sizes, drawn uniformly.
const CONV_BATCHES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Stream tags mixed into the seed so that jobs, crashes and run-time noise are independent.
pub(super) const JOB_STREAM: u64 = 0x6a6f_6273;
const FAILURE_STREAM: u64 = 0x6661_696c;

/// One job of the stream.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub op: Op,
    pub shapes: Vec<Shape>,
    pub dtype: DType,
    pub class: OpClass,
    /// Submission time (seconds of virtual time).
    pub arrival_s: f64,
    /// Absolute deadline.
    pub deadline_s: f64,
    /// Higher runs first when jobs wait.
    pub priority: u8,
}

/// A node crash: when, and which node (it may already be down, then nothing happens).
#[derive(Debug, Clone, Copy)]
pub(super) struct Crash {
    pub at_s: f64,
    pub node: usize,
}

/// A uniform draw in `[lo, hi)` on a log scale.
fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// An exponential draw of rate `rate`.
pub(super) fn exponential(rng: &mut ChaCha8Rng, rate: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() / rate
}

/// A standard normal draw (Box–Muller).
pub(super) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The op, its input shapes and its dtype for one draw of the mix.
fn draw_op(rng: &mut ChaCha8Rng) -> (Op, Vec<Shape>, DType) {
    let dtype = match rng.random::<f64>() {
        x if x < 0.4 => DType::F32,
        x if x < 0.75 => DType::F16,
        _ => DType::BF16,
    };
    if rng.random::<f64>() < MATMUL_SHARE {
        let (lo, hi) = MATMUL_DIMS;
        let mut dim = || (log_uniform(rng, lo, hi) as usize).max(1);
        let (m, n, k) = (dim(), dim(), dim());
        (
            Op::matmul(),
            vec![Shape::new([m, k]), Shape::new([k, n])],
            dtype,
        )
    } else {
        let (c, hw, o, kernel, stride) = CONV_LAYERS[rng.random_range(0..CONV_LAYERS.len())];
        let batch = CONV_BATCHES[rng.random_range(0..CONV_BATCHES.len())];
        let pad = kernel / 2;
        let params = Conv2dParams {
            stride: [stride, stride],
            pads: [pad; 4],
            ..Conv2dParams::default()
        };
        (
            Op::Conv2d(params),
            vec![
                Shape::new([batch, c, hw, hw]),
                Shape::new([o, c, kernel, kernel]),
            ],
            dtype,
        )
    }
}

/// Bytes of the inputs (at `dtype`) and of the f32 output.
pub(super) fn io_bytes(op: &Op, shapes: &[&Shape], dtype: DType) -> Result<(u64, u64)> {
    let total = op.bytes(shapes, dtype)?;
    let out = op.output_shape(shapes)?.numel()? as u64 * 4;
    Ok((total.saturating_sub(out), out))
}

/// The profiles present in the mesh, each with one node index that has it.
fn distinct_profiles(profiles: &[SimNodeSpec]) -> Vec<(usize, &SimNodeSpec)> {
    let mut seen: Vec<(usize, &SimNodeSpec)> = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        if !seen.iter().any(|(_, q)| q.name == p.name && **q == *p) {
            seen.push((i, p));
        }
    }
    seen
}

/// Seconds of compute for `flops` of (class, dtype) on a node of `spec` at top speed, by its
/// declared rates (the perf model's fallbacks are not needed: profiles declare every cell).
pub(super) fn declared_seconds(
    spec: &SimNodeSpec,
    class: OpClass,
    dtype: DType,
    flops: u64,
) -> f64 {
    spec.rate(class, dtype)
        .or_else(|| spec.rate(class, DType::F32))
        .or_else(|| spec.rates.first().map(|&(_, _, r)| r))
        .map_or(f64::INFINITY, |r| r.seconds(flops))
}

/// The seeded job stream of `cfg` for a mesh whose node `i` has profile `profiles[i]`.
pub(super) fn generate(
    cfg: &SimConfig,
    profiles: &[SimNodeSpec],
    topo: &Topology,
) -> Result<Vec<Job>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ JOB_STREAM);
    let kinds = distinct_profiles(profiles);
    let counts: Vec<f64> = kinds
        .iter()
        .map(|(_, k)| profiles.iter().filter(|p| *p == *k).count() as f64)
        .collect();
    let mut jobs = Vec::with_capacity(cfg.jobs);
    let mut capacity_s = 0.0;
    for _ in 0..cfg.jobs {
        let (op, shapes, dtype) = draw_op(&mut rng);
        let refs: Vec<&Shape> = shapes.iter().collect();
        let flops = op.flops(&refs)?;
        let class = OpClass::of(&op);
        let (in_bytes, out_bytes) = io_bytes(&op, &refs, dtype)?;
        let mut best = f64::INFINITY;
        let mut aggregate_rate = 0.0;
        for (&(node, spec), &count) in kinds.iter().zip(&counts) {
            let compute = declared_seconds(spec, class, dtype, flops);
            let moves = topo.transfer_time(Endpoint::Host, Endpoint::Node(node), in_bytes)
                + topo.transfer_time(Endpoint::Node(node), Endpoint::Host, out_bytes);
            best = best.min(compute + moves);
            aggregate_rate += count / compute;
        }
        // Seconds the whole mesh would need for this job at top speed, perfectly shared.
        capacity_s += 1.0 / aggregate_rate;
        let slack = log_uniform(&mut rng, cfg.slack.0, cfg.slack.1);
        let priority = rng.random_range(0..4u8);
        jobs.push(Job {
            op,
            shapes,
            dtype,
            class,
            arrival_s: 0.0,
            deadline_s: slack * best,
            priority,
        });
    }
    // Poisson arrivals at `load` times the rate the mesh could absorb.
    let mean_capacity_s = capacity_s / cfg.jobs.max(1) as f64;
    let rate = cfg.load / mean_capacity_s.max(1e-12);
    let mut t = 0.0;
    for job in &mut jobs {
        t += exponential(&mut rng, rate);
        job.arrival_s = t;
        job.deadline_s += t;
    }
    Ok(jobs)
}

/// Seeded node crashes: `cfg.failures` of them at uniformly drawn times over the arrival
/// span, each on a uniformly drawn node, in time order.
pub(super) fn crashes(cfg: &SimConfig, nodes: usize, span_s: f64) -> Vec<Crash> {
    if span_s <= 0.0 || nodes == 0 {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ FAILURE_STREAM);
    let mut out: Vec<Crash> = (0..cfg.failures)
        .map(|_| Crash {
            at_s: rng.random::<f64>() * span_s,
            node: rng.random_range(0..nodes),
        })
        .collect();
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    out
}
