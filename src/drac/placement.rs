//! Placement: how many nodes a job needs and which ones. Cost of a plan = predicted compute
//! (perf model, at a frequency level) + routed transfers (mesh model) (+ energy). For a
//! deadline: the fewest, most efficient nodes that meet it, each run at the lowest frequency
//! that still does; for minimum latency: as many nodes as still pay off. Nearby nodes are
//! preferred. The same code plans real jobs and simulated ones.

use serde::Serialize;

use super::partition::{PartSpec, Strategy, candidate_strategies, partition, split_to_fit};
use super::perf_model::{OpClass, PerfModel};
use super::power::{PowerSpec, PowerState};
use super::request::Target;
use crate::mesh::{Endpoint, Topology};
use crate::op::Op;
use crate::tensor::{DType, Shape};
use crate::{Error, Result};

/// A node the planner may use, as it stands now.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its index in the topology.
    pub node: usize,
    /// Its key in the perf model.
    pub key: String,
    /// Memory it may use, in bytes.
    pub memory_bytes: u64,
    /// Its power figures.
    pub power: PowerSpec,
    /// Its power state now.
    pub state: PowerState,
    /// When it finishes the work it already has (seconds on the planner's clock).
    pub free_at_s: f64,
}

/// What to plan.
#[derive(Debug, Clone, Copy)]
pub struct PlacementRequest<'a> {
    /// The op.
    pub op: &'a Op,
    /// Its input shapes.
    pub shapes: &'a [&'a Shape],
    /// Compute precision.
    pub dtype: DType,
    /// Performance target.
    pub target: Target,
    /// Energy budget in joules, if any.
    pub energy_budget_j: Option<f64>,
    /// The planner's clock now (deadlines count from here).
    pub now_s: f64,
}

/// Planner switches (the simulator's baseline policies turn parts off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementOptions {
    /// Run parts at lower frequency levels when the deadline allows.
    pub dvfs: bool,
    /// Most nodes one job may use.
    pub max_nodes: usize,
    /// Order candidates by energy efficiency for deadline targets (else by speed).
    pub energy_aware: bool,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        PlacementOptions {
            dvfs: true,
            max_nodes: usize::MAX,
            energy_aware: true,
        }
    }
}

/// The predicted course of one part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PartEstimate {
    /// Index of the part in [`Placement::parts`].
    pub part: usize,
    /// Index of its node in the candidate list.
    pub candidate: usize,
    /// Topology index of its node.
    pub node: usize,
    /// When its inputs have arrived and the node is ready.
    pub start_s: f64,
    /// Compute seconds at its frequency level.
    pub compute_s: f64,
    /// Seconds moving its inputs in and its output back.
    pub transfer_s: f64,
    /// When its output is back.
    pub finish_s: f64,
    /// Its frequency level.
    pub level: usize,
    /// Joules of its compute.
    pub energy_j: f64,
}

/// A plan for one job.
#[derive(Debug, Clone)]
pub struct Placement {
    /// How the work is split.
    pub strategy: Strategy,
    /// Candidate indices of the nodes used, in share order.
    pub chosen: Vec<usize>,
    /// Share of the work per chosen node.
    pub shares: Vec<f64>,
    /// The parts (their `share_index` points into `chosen`).
    pub parts: Vec<PartSpec>,
    /// Predicted course of each part.
    pub estimates: Vec<PartEstimate>,
    /// Predicted finish (planner clock).
    pub finish_s: f64,
    /// Predicted joules (compute, wake-ups and the idle power of nodes held).
    pub energy_j: f64,
    /// Whether the prediction meets the target and budget.
    pub meets_target: bool,
}

/// Seconds a candidate needs for `flops` at top speed, or `None` when the model does not
/// know it.
fn compute_time(
    perf: &PerfModel,
    c: &Candidate,
    class: OpClass,
    dtype: DType,
    flops: u64,
) -> Option<f64> {
    perf.predict_flops(&c.key, class, dtype, flops)
        .filter(|t| t.is_finite() && *t >= 0.0)
}

/// Candidates in the order the planner adds them: the anchor (fastest, or most
/// efficient for a deadline), then the rest by score with a preference for nodes near it.
fn order_candidates(
    req: &PlacementRequest<'_>,
    candidates: &[Candidate],
    perf: &PerfModel,
    topo: &Topology,
    opts: PlacementOptions,
    total_flops: u64,
) -> Vec<(usize, f64)> {
    let class = OpClass::of(req.op);
    let mut scored: Vec<(usize, f64, f64)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let t = compute_time(perf, c, class, req.dtype, total_flops.max(1))?;
            let speed = total_flops.max(1) as f64 / t.max(1e-12);
            let score = if opts.energy_aware && req.target.deadline_s().is_some() {
                // Flops per joule at top frequency, with readiness as a small tie breaker.
                speed / c.power.active_w(c.power.top_level()).max(1e-9)
            } else {
                // Effective speed counting the wait for the node to be ready.
                let ready = (c.free_at_s - req.now_s).max(0.0) + wake(c);
                total_flops as f64 / (t + ready).max(1e-12)
            };
            Some((i, score, speed))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let Some(&(anchor, ..)) = scored.first() else {
        return Vec::new();
    };
    let anchor_node = candidates[anchor].node;
    // Nearby nodes are preferred among equally good ones: a node loses 1% of its score per hop.
    let mut ordered: Vec<(usize, f64, f64)> = scored
        .iter()
        .map(|&(i, score, speed)| {
            let hops = topo.distance(anchor_node, candidates[i].node) as f64;
            (i, score * (1.0 - 0.01 * hops.min(50.0)), speed)
        })
        .collect();
    ordered.sort_by(|a, b| {
        (b.0 == anchor)
            .cmp(&(a.0 == anchor))
            .then(b.1.total_cmp(&a.1))
            .then(a.0.cmp(&b.0))
    });
    ordered
        .into_iter()
        .map(|(i, _, speed)| (i, speed))
        .collect()
}

/// Seconds until a node in its current state can start work.
fn wake(c: &Candidate) -> f64 {
    match c.state {
        PowerState::Off => c.power.wake_s,
        PowerState::Sleeping => c.power.sleep_s + c.power.wake_s,
        PowerState::Waking => c.power.wake_s,
        PowerState::Idle | PowerState::Active { .. } => 0.0,
    }
}

/// Predicts the plan of `strategy` over the first `k` ordered candidates.
fn evaluate(
    req: &PlacementRequest<'_>,
    candidates: &[Candidate],
    perf: &PerfModel,
    topo: &Topology,
    ordered: &[(usize, f64)],
    strategy: Strategy,
) -> Result<Placement> {
    let class = OpClass::of(req.op);
    let chosen: Vec<usize> = ordered.iter().map(|&(i, _)| i).collect();
    let shares: Vec<f64> = ordered.iter().map(|&(_, speed)| speed).collect();
    let raw_parts = partition(req.op, req.shapes, req.dtype, strategy, &shares)?;
    let mut parts = Vec::with_capacity(raw_parts.len());
    for p in raw_parts {
        let c = &candidates[chosen[p.share_index]];
        if p.input_bytes + p.output_bytes > c.memory_bytes {
            parts.extend(split_to_fit(&p, c.memory_bytes)?);
        } else {
            parts.push(p);
        }
    }
    for (i, p) in parts.iter_mut().enumerate() {
        p.index = i;
    }
    let mut node_ready: Vec<f64> = chosen
        .iter()
        .map(|&ci| {
            let c = &candidates[ci];
            c.free_at_s.max(req.now_s) + wake(c)
        })
        .collect();
    let mut estimates = Vec::with_capacity(parts.len());
    let mut energy = 0.0;
    let mut finish: f64 = req.now_s;
    for p in &parts {
        let slot = p.share_index;
        let ci = chosen[slot];
        let c = &candidates[ci];
        let compute = compute_time(perf, c, class, req.dtype, p.flops)
            .ok_or_else(|| Error::device(&c.key, "the perf model has no rate for this node"))?;
        let t_in = topo.transfer_time(Endpoint::Host, Endpoint::Node(c.node), p.input_bytes);
        let t_out = topo.transfer_time(Endpoint::Node(c.node), Endpoint::Host, p.output_bytes);
        let start = node_ready[slot].max(req.now_s + t_in);
        let level = c.power.top_level();
        let end = start + compute + t_out;
        node_ready[slot] = start + compute;
        energy += c.power.energy_at(level, compute);
        finish = finish.max(end);
        estimates.push(PartEstimate {
            part: p.index,
            candidate: ci,
            node: c.node,
            start_s: start,
            compute_s: compute,
            transfer_s: t_in + t_out,
            finish_s: end,
            level,
            energy_j: c.power.energy_at(level, compute),
        });
    }
    if strategy == Strategy::KSplit && chosen.len() > 1 {
        // The partial sums are reduced at the host: every partial crosses the mesh.
        let out: u64 = parts.iter().map(|p| p.output_bytes).sum();
        finish += topo.transfer_time(Endpoint::Node(topo.ingress()), Endpoint::Host, out);
    }
    for &ci in &chosen {
        let c = &candidates[ci];
        if c.state == PowerState::Off {
            energy += c.power.idle_w * c.power.wake_s;
        }
    }
    Ok(Placement {
        strategy,
        chosen,
        shares,
        parts,
        estimates,
        finish_s: finish,
        energy_j: energy,
        meets_target: true,
    })
}

/// The best plan over the first `k` ordered candidates (trying each sensible strategy).
fn best_with(
    req: &PlacementRequest<'_>,
    candidates: &[Candidate],
    perf: &PerfModel,
    topo: &Topology,
    ordered: &[(usize, f64)],
    k: usize,
) -> Result<Option<Placement>> {
    let subset = &ordered[..k];
    let mut strategies = candidate_strategies(req.op, req.shapes, k);
    if k == 1 && strategies.is_empty() {
        strategies.push(Strategy::Rows);
    }
    let mut best: Option<Placement> = None;
    let mut last_err = None;
    for s in strategies {
        match evaluate(req, candidates, perf, topo, subset, s) {
            Ok(p) => {
                let better = best.as_ref().is_none_or(|b| {
                    p.finish_s < b.finish_s * 0.999
                        || (p.finish_s <= b.finish_s * 1.001 && p.energy_j < b.energy_j)
                });
                if better {
                    best = Some(p);
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (best, last_err) {
        (Some(b), _) => Ok(Some(b)),
        (None, Some(e)) if k == 1 => Err(e),
        _ => Ok(None),
    }
}

/// Node counts worth trying: every count up to 8, then about a quarter more each step.
fn counts(max: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut k = 1;
    while k <= max {
        v.push(k);
        k = if k < 8 { k + 1 } else { k + k.div_ceil(4) };
    }
    if v.last() != Some(&max) && max > 0 {
        v.push(max);
    }
    v
}

/// Lowers each part's frequency level while the plan still finishes by `deadline`.
fn apply_dvfs(p: &mut Placement, candidates: &[Candidate], deadline: f64) {
    let slack_end = deadline;
    for e in &mut p.estimates {
        let c = &candidates[e.candidate];
        let top_compute = e.compute_s;
        let tail = e.finish_s - (e.start_s + top_compute);
        let mut chosen = e.level;
        for level in 0..=c.power.top_level() {
            let compute = top_compute / c.power.speed(level);
            if e.start_s + compute + tail <= slack_end {
                chosen = level;
                break;
            }
        }
        if chosen != e.level {
            let compute = top_compute / c.power.speed(chosen);
            e.level = chosen;
            e.compute_s = compute;
            e.finish_s = e.start_s + compute + tail;
            e.energy_j = c.power.energy_at(chosen, top_compute);
        }
    }
    p.energy_j = p.estimates.iter().map(|e| e.energy_j).sum::<f64>()
        + p.chosen
            .iter()
            .filter(|&&ci| candidates[ci].state == PowerState::Off)
            .map(|&ci| candidates[ci].power.idle_w * candidates[ci].power.wake_s)
            .sum::<f64>();
    p.finish_s = p
        .estimates
        .iter()
        .map(|e| e.finish_s)
        .fold(p.finish_s.min(deadline), f64::max);
}

/// How many nodes the job needs to meet its target (for minimum latency: how many still pay
/// off), from the free candidates.
pub fn estimate_node_requirement(
    req: &PlacementRequest<'_>,
    candidates: &[Candidate],
    perf: &PerfModel,
    topo: &Topology,
) -> Result<usize> {
    Ok(
        select_optimal_nodes(req, candidates, perf, topo, PlacementOptions::default())?
            .chosen
            .len(),
    )
}

/// Plans the job on the candidates: which nodes, how the work is split, at which frequency.
/// When no plan meets the target, returns the fastest one with `meets_target = false`.
pub fn select_optimal_nodes(
    req: &PlacementRequest<'_>,
    candidates: &[Candidate],
    perf: &PerfModel,
    topo: &Topology,
    opts: PlacementOptions,
) -> Result<Placement> {
    if candidates.is_empty() {
        return Err(Error::spec("mesh", "no node is available to plan on"));
    }
    let shapes_flops = req.op.flops(req.shapes)?;
    let ordered = order_candidates(req, candidates, perf, topo, opts, shapes_flops);
    if ordered.is_empty() {
        return Err(Error::spec(
            "mesh",
            "the perf model knows none of the candidate nodes (calibrate them first)",
        ));
    }
    let max_k = ordered.len().min(opts.max_nodes.max(1));
    let splittable = !candidate_strategies(req.op, req.shapes, 2).is_empty();
    let tries = if splittable { counts(max_k) } else { vec![1] };
    let deadline = req.target.deadline_s().map(|d| req.now_s + d);
    let mut fastest: Option<Placement> = None;
    let mut chosen: Option<Placement> = None;
    for k in tries {
        let Some(plan) = best_with(req, candidates, perf, topo, &ordered, k)? else {
            continue;
        };
        let improves = fastest.as_ref().is_none_or(|f| plan.finish_s < f.finish_s);
        if let Some(d) = deadline
            && plan.finish_s <= d
            && chosen.is_none()
        {
            chosen = Some(plan.clone());
        }
        if improves {
            let pays_off = fastest
                .as_ref()
                .is_none_or(|f| plan.finish_s < f.finish_s * 0.97);
            fastest = Some(plan);
            if deadline.is_none() && !pays_off {
                break;
            }
        } else if deadline.is_none() || chosen.is_some() {
            break;
        }
        if chosen.is_some() {
            break;
        }
    }
    let mut plan = match (chosen, fastest) {
        (Some(c), _) => c,
        (None, Some(f)) => f,
        (None, None) => return Err(Error::spec("mesh", "no strategy can split this job")),
    };
    if let Some(d) = deadline {
        // Lowering one part's level would delay the node's later parts: only plans with one
        // part per node are slowed down.
        let one_part_per_node = plan.parts.len() == plan.chosen.len();
        if opts.dvfs && one_part_per_node && plan.finish_s <= d {
            apply_dvfs(&mut plan, candidates, d);
        }
        plan.meets_target = plan.finish_s <= d;
    }
    if let Some(budget) = req.energy_budget_j
        && plan.energy_j > budget
    {
        plan.meets_target = false;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::counts;

    #[test]
    fn node_counts_grow_then_end_at_the_maximum() {
        assert_eq!(counts(1), vec![1]);
        assert_eq!(counts(5), vec![1, 2, 3, 4, 5]);
        let c = counts(64);
        assert_eq!(c.first(), Some(&1));
        assert_eq!(c.last(), Some(&64));
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(c.len() < 20);
    }
}
