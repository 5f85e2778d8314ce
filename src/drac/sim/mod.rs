//! The discrete-event simulator: a seeded stream of mixed jobs run through the same planner
//! ([`select_optimal_nodes`]) on simulated nodes, in virtual time, under one of four policies.
//!
//! **Model.** Every mesh node is a simulated node ([`SimNodeSpec`]) of a profile mix (by
//! default `accel` and `lite` in turn), with its own host link. A part's inputs cross from the
//! host to its node and its output back over a [`LinkSchedule`](crate::mesh::LinkSchedule),
//! so transfers that share links serialise; a part's compute time is the declared rate's time
//! times a per-node bias (the node is up to `node_spread` slower or faster than declared)
//! times a per-part lognormal factor (`noise`), divided by the relative speed of its frequency
//! level. The planner sees only the declared rates and corrects them online with
//! [`PerfModel::observe`](super::perf_model::PerfModel::observe) after every part. Every
//! node's [`NodePower`](super::power::NodePower) integrates its energy over the whole
//! makespan, idle, waking, sleeping and off power included; a job is charged the active
//! energy of its parts. A crashed node draws off power until it is repaired; its unfinished
//! parts are re-planned onto the surviving nodes (each one a planning decision of its own)
//! and go first in the queue.
//!
//! **Jobs.** 60% matmuls with M, N, K log-uniform in 256..8192, 40% ResNet-50 conv layers
//! with batch 1..64; 40% f32, 35% f16, 25% bf16; priorities 0..3; Poisson arrivals at `load`
//! times what the mesh could absorb at top speed with perfect sharing; deadline = a slack
//! factor, log-uniform in `slack` (0.5..10 by default, so about 23% of the jobs cannot be met
//! by any single node), times the job's predicted time alone on the best node at top speed.
//!
//! **Policies.** All of them plan through the same placement code; they differ in options and
//! in the candidates they offer it:
//! - `drac`: a deadline target of `deadline_margin` times the time left (the rest absorbs
//!   noise), energy-aware node order, the fewest nodes that meet it, DVFS (only while no other
//!   job waits: slowing down holds nodes longer). Awake free nodes are offered first, nodes
//!   that must be woken (paying `wake_s`) only when those cannot meet the deadline; when no
//!   plan meets it, the one that finishes first. Nodes start off and power off after
//!   `hold_off_s` idle. Jobs wait for free nodes in a queue ordered by priority, then
//!   earliest deadline (late binding).
//! - `always-on`: every node on at top frequency at all times; each job is planned for
//!   minimum latency over the free nodes; jobs wait in a priority, then FIFO, queue.
//! - `eft`: each job goes whole to the single node with the earliest predicted finish, counting
//!   the work already queued on every node (the HEFT / StarPU-dmda rule); nodes queue work,
//!   are always on, at top frequency.
//! - `round-robin`: each job goes whole to the next live node in turn, queued there.
//!
//! A node with work (queued, computing, or still sending outputs back) is not free: the
//! waiting policies (`drac`, `always-on`) only plan on free nodes, so their predictions hold;
//! the queueing ones (`eft`, `round-robin`) stack parts on busy nodes and overlap a part's
//! compute with the previous part's output transfer.
//!
//! The jobs, their arrivals and the crash times depend on the seed only, so every policy sees
//! the same stream; the run-time noise is seeded too, so a run is deterministic for a seed
//! (apart from the wall-clock fields of the summary).

mod engine;
mod workload;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;

use super::perf_model::PerfModel;
use super::placement::{Candidate, PlacementOptions, PlacementRequest, select_optimal_nodes};
use super::power::PowerState;
use super::request::Target;
use crate::mesh::{MeshSpec, Topology};
use crate::node::sim::{SimNodeSpec, SimSpec};
use crate::op::Op;
use crate::tensor::{DType, Shape};
use crate::{Error, Result};

/// Most jobs one simulation may run.
pub const MAX_SIM_JOBS: usize = 10_000_000;

/// How the simulator decides who runs what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The DRAC: deadline-driven, energy-aware, DVFS, nodes powered off after a hold-off.
    Drac,
    /// Whole jobs to nodes in turn.
    RoundRobin,
    /// Every node on at top frequency; minimum-latency plans over the free nodes.
    AlwaysOn,
    /// Whole jobs to the node with the earliest predicted finish (HEFT / StarPU-dmda).
    Eft,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 4] = [
        Policy::Drac,
        Policy::Eft,
        Policy::AlwaysOn,
        Policy::RoundRobin,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Drac => "drac",
            Policy::RoundRobin => "round-robin",
            Policy::AlwaysOn => "always-on",
            Policy::Eft => "eft",
        }
    }

    /// Whether the policy powers idle nodes off (and starts with them off).
    pub fn powers_off(self) -> bool {
        self == Policy::Drac
    }

    /// Whether jobs wait for free nodes (else they are queued on nodes at once).
    fn waits_for_free_nodes(self) -> bool {
        matches!(self, Policy::Drac | Policy::AlwaysOn)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Policy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Policy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "drac" => Ok(Policy::Drac),
            "round-robin" | "roundrobin" | "rr" => Ok(Policy::RoundRobin),
            "always-on" | "alwayson" => Ok(Policy::AlwaysOn),
            "eft" | "heft" | "dmda" => Ok(Policy::Eft),
            _ => Err(Error::parse(
                "policy",
                s,
                "expected drac, round-robin, always-on or eft",
            )),
        }
    }
}

/// Everything one simulation run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The mesh (dimensions, torus, links).
    pub mesh: MeshSpec,
    /// Number of jobs in the stream.
    pub jobs: usize,
    /// Who decides.
    pub policy: Policy,
    /// Seed of the job stream, the crashes and the run-time noise.
    pub seed: u64,
    /// Offered load: arrivals per second as a fraction of what the whole mesh could absorb
    /// at top speed with perfect sharing (0.3 by default: `always-on` nodes then have work
    /// about half the time, computing a quarter of it, the rest moving data).
    pub load: f64,
    /// Node profiles; the counts are weights, the profiles are interleaved over the mesh in
    /// proportion (by default `sim:1:accel` and `sim:1:lite`, every other node).
    pub mix: Vec<SimSpec>,
    /// Node crashes over the arrival span (4 by default).
    pub failures: usize,
    /// Seconds a crashed node stays down (0.1 by default).
    pub repair_s: f64,
    /// `drac`: seconds a node stays idle before it is powered off (0.02 by default).
    pub hold_off_s: f64,
    /// `drac`: fraction of the time left before a deadline that plans may use (0.9 by
    /// default; the rest absorbs noise and misprediction).
    pub deadline_margin: f64,
    /// Standard deviation of the lognormal factor on every part's compute time (0.1).
    pub noise: f64,
    /// Nodes run up to this fraction slower or faster than declared (seeded per node; 0.1).
    pub node_spread: f64,
    /// Deadlines are a slack factor, log-uniform in this range, times the job's predicted time
    /// alone on the best node at top speed.
    pub slack: (f64, f64),
}

impl SimConfig {
    /// A configuration with the default load, mix, failures and tuning.
    pub fn new(mesh: MeshSpec, jobs: usize, policy: Policy, seed: u64) -> SimConfig {
        SimConfig {
            mesh,
            jobs,
            policy,
            seed,
            load: 0.3,
            mix: default_mix(),
            failures: 4,
            repair_s: 0.1,
            hold_off_s: 0.02,
            deadline_margin: 0.9,
            noise: 0.1,
            node_spread: 0.1,
            slack: (0.5, 10.0),
        }
    }

    /// The same configuration under another policy.
    pub fn with_policy(&self, policy: Policy) -> SimConfig {
        SimConfig {
            policy,
            ..self.clone()
        }
    }

    /// Fails with a typed error naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        self.mesh.validate()?;
        if self.jobs == 0 || self.jobs > MAX_SIM_JOBS {
            return Err(Error::parse(
                "job count",
                self.jobs.to_string(),
                format!("must be between 1 and {MAX_SIM_JOBS}"),
            ));
        }
        let positive = |what: &'static str, v: f64, max: f64| {
            if v.is_finite() && v > 0.0 && v <= max {
                Ok(())
            } else {
                Err(Error::parse(
                    what,
                    v.to_string(),
                    format!("must be positive, finite and at most {max}"),
                ))
            }
        };
        positive("load", self.load, 4.0)?;
        positive("repair time", self.repair_s, 1e6)?;
        positive("deadline margin", self.deadline_margin, 1.0)?;
        if !(self.hold_off_s.is_finite() && self.hold_off_s >= 0.0) {
            return Err(Error::parse(
                "hold-off",
                self.hold_off_s.to_string(),
                "must be finite and not negative",
            ));
        }
        for (what, v) in [("noise", self.noise), ("node spread", self.node_spread)] {
            if !(v.is_finite() && (0.0..0.9).contains(&v)) {
                return Err(Error::parse(what, v.to_string(), "must be in [0, 0.9)"));
            }
        }
        let (lo, hi) = self.slack;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(Error::parse(
                "deadline slack",
                format!("{lo}..{hi}"),
                "needs 0 < low <= high, both finite",
            ));
        }
        if self.mix.is_empty() {
            return Err(Error::spec("", "the node mix is empty"));
        }
        for s in &self.mix {
            s.node.validate()?;
        }
        Ok(())
    }

    /// The profile of every mesh node: the mix's profiles interleaved in proportion to their
    /// counts.
    pub fn node_profiles(&self) -> Result<Vec<SimNodeSpec>> {
        let n = self.mesh.node_count()?;
        let total: usize = self.mix.iter().map(|s| s.count).sum();
        if total == 0 {
            return Err(Error::spec("", "the node mix is empty"));
        }
        // Smooth weighted round robin: each node goes to the profile furthest behind its share.
        let mut given = vec![0usize; self.mix.len()];
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let target = |k: usize| (i + 1) as f64 * self.mix[k].count as f64 / total as f64;
            let k = (0..self.mix.len())
                .max_by(|&a, &b| {
                    (target(a) - given[a] as f64)
                        .total_cmp(&(target(b) - given[b] as f64))
                        .then(b.cmp(&a))
                })
                .unwrap_or(0);
            given[k] += 1;
            out.push(self.mix[k].node.clone());
        }
        Ok(out)
    }
}

impl Default for SimConfig {
    /// An 8×8 mesh, 10,000 jobs, `drac`, seed 1.
    fn default() -> Self {
        SimConfig::new(
            MeshSpec::parse("8x8", false).expect("8x8 is a valid mesh"),
            10_000,
            Policy::Drac,
            1,
        )
    }
}

/// The default profile mix: `accel` and `lite` nodes, one each in turn.
pub fn default_mix() -> Vec<SimSpec> {
    vec![
        SimSpec {
            count: 1,
            node: SimNodeSpec::accel(),
        },
        SimSpec {
            count: 1,
            node: SimNodeSpec::lite(),
        },
    ]
}

/// Parses a profile mix such as `sim:1:accel,sim:1:lite` (counts are weights); errors name
/// the bad entry.
pub fn parse_mix(text: &str) -> Result<Vec<SimSpec>> {
    let mut out = Vec::new();
    for entry in text.split(',') {
        if entry.trim().is_empty() {
            return Err(Error::spec(text, "empty entry in the node mix"));
        }
        out.push(SimSpec::parse(entry)?);
    }
    Ok(out)
}

/// One node's account at the end of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimNodeSummary {
    /// The node's id (`sim<i>`, its mesh index).
    pub id: String,
    /// Its profile.
    pub profile: String,
    /// Joules over the makespan.
    pub energy_j: f64,
    /// Seconds computing.
    pub active_s: f64,
    /// Seconds powered off (or down after a crash).
    pub off_s: f64,
    /// Parts it completed.
    pub parts: u64,
    /// Times it crashed.
    pub crashes: u64,
}

/// What one simulation run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimSummary {
    /// The policy.
    pub policy: Policy,
    /// The mesh, e.g. `8x8 mesh`.
    pub mesh: String,
    /// Number of nodes.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs completed (all of them, unless the run was cut short).
    pub completed: usize,
    /// Virtual seconds from the start to the last job's completion.
    pub makespan_s: f64,
    /// Joules of every node over the makespan (idle, waking, sleeping and off included).
    pub energy_j: f64,
    /// Mean joules of compute per job (the parts' active energy).
    pub mean_job_energy_j: f64,
    /// Jobs that finished by their deadline.
    pub deadline_hits: usize,
    /// `deadline_hits / jobs`.
    pub deadline_hit_rate: f64,
    /// Mean over nodes of the fraction of the makespan spent computing.
    pub mean_utilisation: f64,
    /// Mean over nodes of the fraction of the makespan they had work: computing, waiting for
    /// inputs, or sending outputs back (a node takes no new work until its outputs are out).
    pub mean_occupancy: f64,
    /// Mean over nodes of the fraction of the makespan spent off (or down).
    pub mean_off_fraction: f64,
    /// Parts re-planned after a node crashed under them.
    pub replanned_parts: u64,
    /// Node crashes that struck a live node.
    pub crashes: u64,
    /// Planning decisions made (one per job, one per re-planned part).
    pub decisions: u64,
    /// Planning decisions per second of wall time (whole simulation).
    pub decisions_per_s: f64,
    /// Mean wall microseconds inside the planner per decision.
    pub plan_us_mean: f64,
    /// Wall seconds the run took.
    pub wall_s: f64,
    /// Jobs simulated per second of wall time.
    pub jobs_per_wall_s: f64,
    /// Mean distinct nodes per job's plan.
    pub mean_nodes_per_job: f64,
    /// Mean seconds from arrival to completion.
    pub mean_latency_s: f64,
    /// 95th percentile of the latency.
    pub p95_latency_s: f64,
    /// Node power-offs (transitions to off, crashes excluded).
    pub power_offs: u64,
    /// Node wake-ups.
    pub wakeups: u64,
    /// Per-node accounts, in mesh order.
    pub node_stats: Vec<SimNodeSummary>,
}

impl SimSummary {
    /// The summary with its wall-clock fields zeroed (what a seed determines).
    pub fn without_timing(&self) -> SimSummary {
        SimSummary {
            decisions_per_s: 0.0,
            plan_us_mean: 0.0,
            wall_s: 0.0,
            jobs_per_wall_s: 0.0,
            ..self.clone()
        }
    }
}

/// Runs the simulation `cfg` describes and summarises it.
pub fn run_simulation(cfg: &SimConfig) -> Result<SimSummary> {
    cfg.validate()?;
    engine::run(cfg)
}

/// Runs `cfg` once per policy (same seed, so the same jobs) and returns the summaries in order.
pub fn compare_policies(cfg: &SimConfig, policies: &[Policy]) -> Result<Vec<SimSummary>> {
    policies
        .iter()
        .map(|&p| run_simulation(&cfg.with_policy(p)))
        .collect()
}

/// Timing of the planner on one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanTiming {
    /// What was planned, e.g. `matmul 4096x4096x4096 f32`.
    pub job: String,
    /// Candidate nodes offered.
    pub nodes: usize,
    /// Nodes the plan uses.
    pub chosen: usize,
    /// Median wall seconds of one `select_optimal_nodes` call.
    pub median_s: f64,
    /// Fastest call.
    pub min_s: f64,
}

/// Times planning an `n`³ matmul at `dtype` on every node of `cfg`'s mesh (all idle, as
/// simulated nodes): the median of `reps` calls of `select_optimal_nodes`, for minimum
/// latency with the `always-on` options when `deadline_s` is `None`, else for that deadline
/// with the `drac` options.
pub fn time_planning(
    cfg: &SimConfig,
    n: usize,
    dtype: DType,
    deadline_s: Option<f64>,
    reps: usize,
) -> Result<PlanTiming> {
    cfg.validate()?;
    let profiles = cfg.node_profiles()?;
    let mut topo = Topology::new(cfg.mesh.clone())?;
    let mut perf = PerfModel::new();
    let candidates: Vec<Candidate> = profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let key = format!("sim{i}");
            p.install(&mut perf, &key);
            if let Some(link) = p.host_link {
                topo.set_host_link(i, link);
            }
            Candidate {
                node: i,
                key,
                memory_bytes: p.memory_bytes,
                power: p.power.clone(),
                state: PowerState::Idle,
                free_at_s: 0.0,
            }
        })
        .collect();
    let op = Op::matmul();
    let shapes = [Shape::new([n, n]), Shape::new([n, n])];
    let refs: Vec<&Shape> = shapes.iter().collect();
    let (target, opts) = match deadline_s {
        None => (
            Target::MinLatency,
            PlacementOptions {
                dvfs: false,
                max_nodes: usize::MAX,
                energy_aware: false,
            },
        ),
        Some(d) => (Target::Deadline(d), PlacementOptions::default()),
    };
    let req = PlacementRequest {
        op: &op,
        shapes: &refs,
        dtype,
        target,
        energy_budget_j: None,
        now_s: 0.0,
    };
    let mut times = Vec::with_capacity(reps.max(1));
    let mut chosen = 0;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let plan = select_optimal_nodes(&req, &candidates, &perf, &topo, opts)?;
        times.push(t.elapsed().as_secs_f64());
        chosen = plan.chosen.len();
    }
    times.sort_by(f64::total_cmp);
    Ok(PlanTiming {
        job: format!("matmul {n}x{n}x{n} {dtype}"),
        nodes: candidates.len(),
        chosen,
        median_s: times[times.len() / 2],
        min_s: times[0],
    })
}
