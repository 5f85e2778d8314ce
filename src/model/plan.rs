//! Placing a model request on the free nodes: the whole request on the node predicted fastest,
//! its batch split across nodes (data parallel), or — for requests that run one sample at a
//! time — its large convolutions split by output channels across host nodes (the graph cut
//! inside each layer), in shares that follow predicted speed.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::Serialize;

use super::batch::BatchLayout;
use crate::drac::NodeOffer;
use crate::drac::perf_model::{OpClass, PerfModel};
use crate::drac::power::PowerState;
use crate::node::DeviceKind;
use crate::tensor::DType;
use crate::{Error, Result};

/// Seconds a part costs beyond its compute (a thread, slicing the inputs, joining outputs).
const PART_OVERHEAD_S: f64 = 2e-4;
/// A split must beat the best single node by this factor to be chosen.
const SPLIT_GAIN: f64 = 0.97;
/// Seconds one convolution split across nodes costs beyond its share of the work (starting
/// and joining a thread per member, the members' caches warming to the shared input).
const CHANNEL_SPLIT_STEP_S: f64 = 4e-5;
/// Prefix of the correction keys learned for channel-split runs (measured over predicted).
pub const SPLIT_KEY_PREFIX: &str = "channel-split:";

/// How a request was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The whole request on one node.
    Whole,
    /// The batch split across nodes, each running the whole graph on its samples.
    DataParallel,
    /// Every sample on a lead node, each large convolution split by output channels across
    /// the lead and the other nodes (host nodes only).
    ChannelSplit,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Whole => "whole",
            Strategy::DataParallel => "data-parallel",
            Strategy::ChannelSplit => "channel-split",
        })
    }
}

/// One node's share of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPart {
    /// Index of the node among the offers.
    pub node: usize,
    /// The samples it runs.
    pub samples: Range<usize>,
    /// Seconds predicted for them.
    pub predicted_s: f64,
    /// Seconds per sample the perf model alone predicts on the node (before the corrections
    /// learned from earlier runs).
    pub base_per_sample_s: f64,
}

/// A placement of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    /// Whole or split.
    pub strategy: Strategy,
    /// The parts, in sample order.
    pub parts: Vec<PlannedPart>,
    /// Predicted seconds of the slowest part.
    pub predicted_s: f64,
    /// For a channel split: each node (index among the offers, the lead first) and its
    /// share of every split convolution's output channels; empty otherwise.
    pub members: Vec<(usize, f64)>,
}

impl ModelPlan {
    /// The offers the plan uses, in lease order: the members of a channel split, else the
    /// nodes of the parts.
    pub fn nodes(&self) -> Vec<usize> {
        if self.members.is_empty() {
            self.parts.iter().map(|p| p.node).collect()
        } else {
            self.members.iter().map(|m| m.0).collect()
        }
    }
}

/// What the planner needs to know of a request.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Floating-point operations of one sample through the graph.
    pub flops_per_sample: u64,
    /// Bytes of one sample's inputs and outputs (moved to and from the node).
    pub bytes_per_sample: u64,
    /// How the batch divides, or `None` when the request cannot be split.
    pub layout: Option<BatchLayout>,
    /// Samples in the request (1 when it cannot be split).
    pub samples: usize,
    /// Most nodes the request may use.
    pub max_nodes: usize,
    /// Operations of one sample in convolutions large enough to split by output channels.
    pub split_flops_per_sample: u64,
    /// How many such convolutions one sample runs.
    pub split_convs: usize,
    /// Measured over predicted time of earlier runs, by perf-model key; nodes not measured
    /// yet take the geometric mean of the others (so measured and unmeasured nodes compare).
    pub corrections: &'a HashMap<String, f64>,
}

/// The correction for node `key`: its own, else the geometric mean of the nodes' known ones
/// (channel-split corrections left out), else 1.
fn correction(corrections: &HashMap<String, f64>, key: &str) -> f64 {
    if let Some(&c) = corrections.get(key) {
        return c;
    }
    let logs: Vec<f64> = corrections
        .iter()
        .filter(|(k, _)| !k.starts_with(SPLIT_KEY_PREFIX))
        .map(|(_, c)| c)
        .filter(|c| c.is_finite() && **c > 0.0)
        .map(|c| c.ln())
        .collect();
    if logs.is_empty() {
        1.0
    } else {
        (logs.iter().sum::<f64>() / logs.len() as f64).exp()
    }
}

/// A node's cost: predicted seconds per sample (corrected), its fixed start cost, and the
/// uncorrected prediction per sample.
#[derive(Debug, Clone, Copy)]
struct Cost {
    node: usize,
    per_sample: f64,
    fixed: f64,
    base: f64,
}

/// The cost of running samples on `offer`.
fn node_cost(
    input: &PlanInput<'_>,
    node: usize,
    offer: &NodeOffer,
    perf: &PerfModel,
) -> Option<Cost> {
    let transfer = perf
        .transfer(&offer.key)
        .map_or(0.0, |t| t.seconds(input.bytes_per_sample));
    let base = perf.predict_flops(
        &offer.key,
        OpClass::Conv2d,
        DType::F32,
        input.flops_per_sample,
    )? + transfer;
    let per_sample = base * correction(input.corrections, &offer.key);
    let wake = if offer.state == PowerState::Off {
        offer.power.wake_s
    } else {
        0.0
    };
    (per_sample.is_finite() && per_sample > 0.0).then_some(Cost {
        node,
        per_sample,
        fixed: wake + PART_OVERHEAD_S,
        base,
    })
}

/// Places a request on `offers` (the free working nodes).
pub fn plan(input: &PlanInput<'_>, offers: &[NodeOffer], perf: &PerfModel) -> Result<ModelPlan> {
    if offers.is_empty() {
        return Err(Error::refused("no free node to run the model on"));
    }
    let mut costed: Vec<Cost> = offers
        .iter()
        .enumerate()
        .filter_map(|(i, o)| node_cost(input, i, o, perf))
        .collect();
    if costed.is_empty() {
        // No node has a rate for this work: the first one runs it.
        return Ok(ModelPlan {
            strategy: Strategy::Whole,
            parts: vec![PlannedPart {
                node: 0,
                samples: 0..input.samples,
                predicted_s: f64::NAN,
                base_per_sample_s: f64::NAN,
            }],
            predicted_s: f64::NAN,
            members: Vec::new(),
        });
    }
    let n = input.samples as f64;
    costed.sort_by(|a, b| (a.per_sample * n + a.fixed).total_cmp(&(b.per_sample * n + b.fixed)));
    let best = costed[0];
    let whole_s = best.per_sample * n + best.fixed;
    let whole = ModelPlan {
        strategy: Strategy::Whole,
        parts: vec![PlannedPart {
            node: best.node,
            samples: 0..input.samples,
            predicted_s: whole_s,
            base_per_sample_s: best.base,
        }],
        predicted_s: whole_s,
        members: Vec::new(),
    };
    let mut best_plan = whole;
    if let Some(layout) = input.layout {
        let units = layout.units();
        let most = costed.len().min(units).min(input.max_nodes.max(1));
        for k in 2..=most {
            let split = split_units(&costed[..k], units, layout.unit());
            if split.predicted_s < best_plan.predicted_s * SPLIT_GAIN {
                best_plan = split;
            }
        }
    }
    if let Some(split) = channel_split(input, &costed, offers)
        && split.predicted_s < best_plan.predicted_s * SPLIT_GAIN
    {
        best_plan = split;
    }
    Ok(best_plan)
}

/// The key of the correction learned for a channel split over the nodes of `keys`.
pub fn split_key<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = keys.into_iter().collect();
    format!("{SPLIT_KEY_PREFIX}{}", keys.join("+"))
}

/// The best channel split of the request over the fastest host nodes of `costed` (sorted
/// fastest first), if the request runs one sample at a time and has convolutions to split:
/// per sample, the lead runs the rest of the graph and each split convolution's channels are
/// shared in proportion to the nodes' speeds.
fn channel_split(
    input: &PlanInput<'_>,
    costed: &[Cost],
    offers: &[NodeOffer],
) -> Option<ModelPlan> {
    let one_at_a_time = match input.layout {
        Some(l) if l.chunk == 0 => l.samples == 1,
        Some(l) => l.chunk == 1,
        None => input.samples == 1,
    };
    if !one_at_a_time || input.split_flops_per_sample == 0 || input.flops_per_sample == 0 {
        return None;
    }
    let hosts: Vec<Cost> = costed
        .iter()
        .copied()
        .filter(|c| offers[c.node].kind == DeviceKind::Cpu)
        .collect();
    let frac = (input.split_flops_per_sample as f64 / input.flops_per_sample as f64).min(1.0);
    let n = input.samples.max(1) as f64;
    let mut best: Option<ModelPlan> = None;
    for k in 2..=hosts.len().min(input.max_nodes) {
        let nodes = &hosts[..k];
        let lead = nodes[0];
        // Per sample: the lead runs what is not split, the split convolutions go at the
        // members' summed speed, each paying its step cost. `raw` from the calibrated rates
        // alone, `corrected` with each node's correction for this model.
        let estimate = |t: fn(&Cost) -> f64| {
            let speed: f64 = nodes.iter().map(|c| 1.0 / t(c)).sum();
            t(&lead) * (1.0 - frac) + frac / speed + CHANNEL_SPLIT_STEP_S * input.split_convs as f64
        };
        let raw = estimate(|c| c.base);
        let corrected = estimate(|c| c.per_sample);
        // Once a split over these nodes has been measured, its own measured-over-raw ratio
        // replaces the nodes' corrections.
        let keys = nodes.iter().map(|c| offers[c.node].key.as_str());
        let per_sample = match input.corrections.get(&split_key(keys)) {
            Some(&c) if c.is_finite() && c > 0.0 => raw * c,
            _ => corrected,
        };
        let speed: f64 = nodes.iter().map(|c| 1.0 / c.per_sample).sum();
        let fixed = nodes.iter().map(|c| c.fixed).fold(0.0, f64::max);
        let predicted_s = per_sample * n + fixed;
        if best.as_ref().is_some_and(|b| b.predicted_s <= predicted_s) {
            continue;
        }
        best = Some(ModelPlan {
            strategy: Strategy::ChannelSplit,
            parts: vec![PlannedPart {
                node: lead.node,
                samples: 0..input.samples,
                predicted_s,
                base_per_sample_s: raw,
            }],
            predicted_s,
            members: nodes
                .iter()
                .map(|c| (c.node, 1.0 / c.per_sample / speed))
                .collect(),
        });
    }
    best
}

/// Shares `units` among `nodes` to minimise the
/// slowest finish: proportional to speed, then units moved off the slowest part while that
/// helps; parts with no units are dropped.
fn split_units(nodes: &[Cost], units: usize, unit: usize) -> ModelPlan {
    let per_unit: Vec<f64> = nodes.iter().map(|n| n.per_sample * unit as f64).collect();
    let speed: f64 = per_unit.iter().map(|t| 1.0 / t).sum();
    let mut counts: Vec<usize> = per_unit
        .iter()
        .map(|t| ((units as f64) * (1.0 / t) / speed).floor() as usize)
        .collect();
    let finish = |k: usize, c: usize| {
        if c == 0 {
            0.0
        } else {
            per_unit[k] * c as f64 + nodes[k].fixed
        }
    };
    let mut left = units - counts.iter().sum::<usize>();
    while left > 0 {
        let k = (0..nodes.len())
            .min_by(|&a, &b| finish(a, counts[a] + 1).total_cmp(&finish(b, counts[b] + 1)))
            .unwrap_or(0);
        counts[k] += 1;
        left -= 1;
    }
    loop {
        let slow = (0..nodes.len())
            .max_by(|&a, &b| finish(a, counts[a]).total_cmp(&finish(b, counts[b])))
            .unwrap_or(0);
        let fast = (0..nodes.len())
            .filter(|&k| k != slow)
            .min_by(|&a, &b| finish(a, counts[a] + 1).total_cmp(&finish(b, counts[b] + 1)));
        let Some(fast) = fast else { break };
        if counts[slow] == 0 || finish(fast, counts[fast] + 1) >= finish(slow, counts[slow]) {
            break;
        }
        counts[slow] -= 1;
        counts[fast] += 1;
    }
    let mut parts = Vec::new();
    let mut at = 0;
    for (k, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let samples = at..at + c * unit;
        at = samples.end;
        parts.push(PlannedPart {
            node: nodes[k].node,
            samples,
            predicted_s: finish(k, c),
            base_per_sample_s: nodes[k].base,
        });
    }
    let predicted_s = parts.iter().map(|p| p.predicted_s).fold(0.0, f64::max);
    let strategy = if parts.len() > 1 {
        Strategy::DataParallel
    } else {
        Strategy::Whole
    };
    ModelPlan {
        strategy,
        parts,
        predicted_s,
        members: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(node: usize, per_sample: f64) -> Cost {
        Cost {
            node,
            per_sample,
            fixed: 0.0,
            base: per_sample,
        }
    }

    #[test]
    fn unmeasured_nodes_take_the_mean_correction() {
        let c = HashMap::from([("a".to_string(), 4.0), ("b".to_string(), 1.0)]);
        assert_eq!(correction(&c, "a"), 4.0);
        assert!((correction(&c, "z") - 2.0).abs() < 1e-12);
        assert_eq!(correction(&HashMap::new(), "z"), 1.0);
    }

    #[test]
    fn shares_follow_speed_and_cover_every_unit() {
        // Node 0 twice as fast as node 1; 9 units of 1 sample.
        let plan = split_units(&[cost(0, 1.0), cost(1, 2.0)], 9, 1);
        assert_eq!(plan.strategy, Strategy::DataParallel);
        assert_eq!(plan.parts[0].samples, 0..6);
        assert_eq!(plan.parts[1].samples, 6..9);
        assert!((plan.predicted_s - 6.0).abs() < 1e-12);
    }

    /// Offers of `kinds`, keyed `n0`, `n1`, …, each with conv rate `gflops`.
    fn offers(kinds: &[DeviceKind], gflops: f64) -> (Vec<NodeOffer>, PerfModel) {
        use crate::drac::perf_model::Rate;
        let mut perf = PerfModel::new();
        let offers = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let key = format!("n{i}");
                perf.set_rate(
                    &key,
                    OpClass::Conv2d,
                    DType::F32,
                    Rate::new(gflops, 0.0).unwrap(),
                );
                NodeOffer {
                    id: key.clone(),
                    key,
                    kind,
                    memory_bytes: 1 << 30,
                    power: crate::drac::power::PowerSpec::cpu(1),
                    state: PowerState::Idle,
                }
            })
            .collect();
        (offers, perf)
    }

    fn request(samples: usize, chunk: usize, corrections: &HashMap<String, f64>) -> PlanInput<'_> {
        PlanInput {
            flops_per_sample: 1_000_000_000,
            bytes_per_sample: 0,
            layout: Some(BatchLayout { samples, chunk }),
            samples,
            max_nodes: 8,
            split_flops_per_sample: 900_000_000,
            split_convs: 10,
            corrections,
        }
    }

    #[test]
    fn one_sample_splits_its_convolutions_over_the_host_nodes() {
        let none = HashMap::new();
        let (cpus, perf) = offers(&[DeviceKind::Cpu; 3], 10.0);
        let p = plan(&request(1, 0, &none), &cpus, &perf).unwrap();
        assert_eq!(p.strategy, Strategy::ChannelSplit);
        assert_eq!(p.nodes(), [0, 1, 2]);
        assert!(p.members.iter().all(|m| (m.1 - 1.0 / 3.0).abs() < 1e-12));
        // 0.1 s per sample whole: 0.01 on the lead, 0.09 / 3 split, 10 × 40 µs of steps.
        assert!((p.predicted_s - (0.01 + 0.03 + 4e-4 + PART_OVERHEAD_S)).abs() < 1e-9);
        // A fixed batch of one run chunk by chunk splits too; a free batch shares samples.
        // Four chunks on three nodes: 0.2 s data parallel, 4 × 0.0404 split.
        let chunks = plan(&request(4, 1, &none), &cpus, &perf).unwrap();
        assert_eq!(chunks.strategy, Strategy::ChannelSplit);
        let chunks = plan(&request(6, 1, &none), &cpus, &perf).unwrap();
        assert_eq!(
            chunks.strategy,
            Strategy::DataParallel,
            "0.2 s against 0.24"
        );
        let free = plan(&request(2, 0, &none), &cpus, &perf).unwrap();
        assert_eq!(free.strategy, Strategy::DataParallel);
        // GPUs and simulated nodes keep their models whole.
        let (gpus, perf) = offers(&[DeviceKind::Gpu, DeviceKind::Sim], 10.0);
        assert_eq!(
            plan(&request(1, 0, &none), &gpus, &perf).unwrap().strategy,
            Strategy::Whole
        );
    }

    #[test]
    fn a_measured_split_follows_its_own_correction() {
        let (cpus, perf) = offers(&[DeviceKind::Cpu; 2], 10.0);
        let key = split_key(["n0", "n1"]);
        // Measured 3× slower than modelled: 0.01 + 0.045 + 0.0004 → × 3 > 0.1 whole.
        let slow = HashMap::from([(key.clone(), 3.0)]);
        let p = plan(&request(1, 0, &slow), &cpus, &perf).unwrap();
        assert_eq!(p.strategy, Strategy::Whole);
        // Node corrections do not count the split's: the mean of n0 and n1's is 1.
        let c = HashMap::from([(key, 9.0), ("n0".to_string(), 1.0)]);
        assert_eq!(correction(&c, "n1"), 1.0);
    }

    #[test]
    fn a_very_slow_node_gets_nothing() {
        let plan = split_units(&[cost(3, 1.0), cost(5, 100.0)], 4, 2);
        assert_eq!(plan.strategy, Strategy::Whole);
        assert_eq!(plan.parts.len(), 1);
        assert_eq!(plan.parts[0].node, 3);
        assert_eq!(plan.parts[0].samples, 0..8);
    }
}
