//! Running a placed request: each part on its leased node in a thread of its own (inputs cut
//! along the batch axis, fixed-batch models run chunk by chunk), bounded by a time-out; a part
//! whose node errors or hangs moves to another node; the outputs are joined in sample order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::batch::{self, BatchLayout};
use super::plan::{self, PlanInput, PlannedPart, Strategy};
use super::report::{ModelReport, PartReport};
use super::split::ChannelSplit;
use super::{Model, ModelRun, RunOptions};
use crate::drac::power::PowerState;
use crate::drac::{Drac, Lease, MovedPart, NodeUse};
use crate::node::Device;
use crate::onnx::Value;
use crate::onnx::exec::{Profile, Session};
use crate::{Error, Result};

/// Least operations of one lane's share for a batch to run in lanes ([`Device::lanes`]):
/// each run starts a thread per lane, and a share this small finishes in about a millisecond.
const LANE_MIN_FLOPS: u64 = 1 << 27;

/// Runs `inputs` on `device`: as given, or chunk by chunk for a fixed-batch model; a batch of
/// several samples in shares side by side on the device's lanes where it has them and each
/// share holds at least [`LANE_MIN_FLOPS`] of a model of `flops_per_sample`.
pub(super) fn run_on_device(
    session: &Session,
    device: &dyn Device,
    inputs: &HashMap<String, Value>,
    layout: Option<BatchLayout>,
    flops_per_sample: u64,
) -> Result<HashMap<String, Value>> {
    let lanes = device.lanes();
    if let Some(shares) = lane_shares(layout, lanes.len(), flops_per_sample) {
        return run_in_lanes(session, &lanes, inputs, layout, &shares);
    }
    let pieces = each_chunk(inputs, layout, |chunk| session.run(device, chunk))?;
    joined(pieces)
}

/// The sample ranges of `lanes` lanes for a request of `layout`: whole units (chunks of a
/// fixed-batch model) in even contiguous shares, one per lane, if there are two or more and
/// each share is worth it.
fn lane_shares(
    layout: Option<BatchLayout>,
    lanes: usize,
    flops_per_sample: u64,
) -> Option<Vec<std::ops::Range<usize>>> {
    let l = layout?;
    let (units, unit) = (l.units(), l.unit());
    let count = lanes.min(units);
    if count < 2 || flops_per_sample.saturating_mul((l.samples / count) as u64) < LANE_MIN_FLOPS {
        return None;
    }
    Some(
        (0..count)
            .map(|i| units * i / count * unit..units * (i + 1) / count * unit)
            .collect(),
    )
}

/// Runs the sample `shares` of `inputs` side by side, share `i` on `lanes[i]` (its own thread
/// handing it over; the last share from this one), and joins the outputs in sample order.
fn run_in_lanes(
    session: &Session,
    lanes: &[&dyn Device],
    inputs: &HashMap<String, Value>,
    layout: Option<BatchLayout>,
    shares: &[std::ops::Range<usize>],
) -> Result<HashMap<String, Value>> {
    let run_share = |lane: &dyn Device, share: &std::ops::Range<usize>| {
        let part = batch::slice_inputs(inputs, share.clone())?;
        let part_layout = layout.map(|l| BatchLayout {
            samples: share.len(),
            ..l
        });
        joined(each_chunk(&part, part_layout, |chunk| {
            session.run(lane, chunk)
        })?)
    };
    let (last, others) = shares.split_last().expect("two or more shares");
    let results: Vec<Result<HashMap<String, Value>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter()
            .zip(lanes)
            .map(|(share, &lane)| scope.spawn(move || run_share(lane, share)))
            .collect();
        let mine = run_share(lanes[others.len()], last);
        let mut results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::device("model", "a lane's thread panicked")))
            })
            .collect();
        results.push(mine);
        results
    });
    let outputs = results.into_iter().collect::<Result<Vec<_>>>()?;
    batch::join_outputs(outputs)
}

/// [`run_on_device`], timing every step; a run in chunks sums their profiles.
pub(super) fn run_profiled_on_device(
    session: &Session,
    device: &dyn Device,
    inputs: &HashMap<String, Value>,
    layout: Option<BatchLayout>,
) -> Result<(HashMap<String, Value>, Profile)> {
    let pieces = each_chunk(inputs, layout, |chunk| session.run_profiled(device, chunk))?;
    let (outputs, profiles): (Vec<_>, Vec<_>) = pieces.into_iter().unzip();
    Ok((joined(outputs)?, Profile::chained(&profiles)?))
}

/// `run` on `inputs` as given (one result), or on each chunk of a fixed-batch model's
/// samples in order.
fn each_chunk<T>(
    inputs: &HashMap<String, Value>,
    layout: Option<BatchLayout>,
    mut run: impl FnMut(&HashMap<String, Value>) -> Result<T>,
) -> Result<Vec<T>> {
    match layout {
        Some(l) if !l.is_single_run() => (0..l.samples)
            .step_by(l.unit())
            .map(|start| run(&batch::slice_inputs(inputs, start..start + l.unit())?))
            .collect(),
        _ => Ok(vec![run(inputs)?]),
    }
}

/// The outputs of one run as they are, or those of several chunks joined in sample order.
fn joined(mut pieces: Vec<HashMap<String, Value>>) -> Result<HashMap<String, Value>> {
    if pieces.len() == 1 {
        return Ok(pieces.remove(0));
    }
    batch::join_outputs(pieces)
}

/// What a part thread sends back: its launch number, and the outputs and seconds.
struct PartDone {
    seq: usize,
    out: Result<(HashMap<String, Value>, f64)>,
}

/// A part launched on a leased node (the lead of a split) and not answered yet.
struct Launched {
    part: usize,
    node: usize,
    /// Launch number: a late answer of a launch given up on is told from its successor's.
    seq: usize,
    since: Instant,
}

impl Launched {
    fn new(part: usize, node: usize, seq: usize) -> Launched {
        Launched {
            part,
            node,
            seq,
            since: Instant::now(),
        }
    }
}

/// Places `inputs` on the DRAC's free nodes, runs them and reports.
pub(super) fn run(
    model: &Model,
    drac: &Drac,
    inputs: &Arc<HashMap<String, Value>>,
    options: &RunOptions,
) -> Result<ModelRun> {
    let layout = model.layout(inputs);
    let samples = layout.map_or(1, |l| l.samples);
    let input_bytes: u64 = inputs.values().map(value_bytes).sum();
    let corrections = model.corrections();
    let plan_input = PlanInput {
        flops_per_sample: model.flops_per_sample,
        bytes_per_sample: input_bytes / samples.max(1) as u64,
        layout,
        samples,
        max_nodes: options.max_nodes,
        split_flops_per_sample: model.split_flops_per_sample,
        split_convs: model.split_convs,
        corrections: &corrections,
    };
    let asked = Instant::now();
    let mut planned = None;
    let mut lease = drac.lease(options.priority, |offers, perf| {
        let p = plan::plan(&plan_input, offers, perf)?;
        let chosen = p.nodes();
        planned = Some(p);
        Ok(chosen)
    })?;
    let plan = planned.ok_or_else(|| Error::refused("the model was not placed"))?;
    let queued_s = asked.elapsed().as_secs_f64();
    let start = Instant::now();
    let config = drac.config().clone();
    let timeout_for = |predicted: f64| {
        let t = if predicted.is_finite() {
            predicted * config.timeout_factor
        } else {
            0.0
        };
        Duration::from_secs_f64(t.max(config.min_timeout_s))
    };

    let parts: Vec<PlannedPart> = plan.parts.clone();
    let whole = parts.len() == 1;
    // A channel split's members as (leased node, share), the lead first; the split device of
    // its current run.
    let mut members: Vec<(usize, f64)> = plan
        .members
        .iter()
        .enumerate()
        .map(|(k, m)| (k, m.1))
        .collect();
    let mut split: Option<Arc<ChannelSplit>> = None;
    let (tx, rx) = mpsc::channel::<PartDone>();
    // Runs part `part` on leased node `node`, or across `members` when they are two or more
    // (then `node` is their lead), as launch number `seq`; returns the split device of such a
    // run.
    let launch = |part: usize,
                  node: usize,
                  seq: usize,
                  members: &[(usize, f64)],
                  lease: &Lease|
     -> Result<Option<Arc<ChannelSplit>>> {
        let range = parts[part].samples.clone();
        let part_inputs = if whole {
            Arc::clone(inputs)
        } else {
            Arc::new(batch::slice_inputs(inputs, range.clone())?)
        };
        let part_layout = layout.map(|l| BatchLayout {
            samples: range.len(),
            ..l
        });
        let session = Arc::clone(&model.session);
        let flops = model.flops_per_sample;
        let mut split = None;
        let device: Arc<dyn Device> = if members.len() >= 2 {
            let s = Arc::new(ChannelSplit::new(
                members
                    .iter()
                    .map(|&(k, _)| Arc::clone(&lease.nodes()[k].device))
                    .collect(),
                members.iter().map(|m| m.1).collect(),
            )?);
            split = Some(Arc::clone(&s));
            s
        } else {
            Arc::clone(&lease.nodes()[node].device)
        };
        let tx = tx.clone();
        let runner = Arc::clone(&device);
        device
            .launch(Box::new(move || {
                let t = Instant::now();
                let out =
                    run_on_device(&session, runner.as_ref(), &part_inputs, part_layout, flops)
                        .map(|o| (o, t.elapsed().as_secs_f64()));
                let _ = tx.send(PartDone { seq, out });
            }))
            .map_err(|e| Error::device("model", format!("cannot start part {part}: {e}")))?;
        Ok(split)
    };

    let mut done: Vec<Option<HashMap<String, Value>>> = vec![None; parts.len()];
    let mut ran_on: Vec<usize> = (0..parts.len()).collect();
    let mut elapsed: Vec<f64> = vec![0.0; parts.len()];
    let mut busy_s: Vec<f64> = vec![0.0; lease.nodes().len()];
    let mut moved = Vec::new();
    let mut waiting: Vec<Launched> = Vec::new();
    let mut launches = 0;
    for (p, _) in parts.iter().enumerate() {
        split = launch(p, p, launches, &members, &lease)?;
        waiting.push(Launched::new(p, p, launches));
        launches += 1;
    }
    while !waiting.is_empty() {
        let next_deadline = waiting
            .iter()
            .map(|w| w.since + timeout_for(parts[w.part].predicted_s))
            .min()
            .unwrap_or_else(Instant::now);
        let wait = next_deadline.saturating_duration_since(Instant::now());
        // Launches given up on: why, and whether their time ran out.
        let mut lost: Vec<(Launched, String, bool)> = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(PartDone { seq, out }) => {
                let Some(at) = waiting.iter().position(|w| w.seq == seq) else {
                    continue; // a late answer from a launch already given up on
                };
                let w = waiting.swap_remove(at);
                let (p, node) = (w.part, w.node);
                match out {
                    Ok((o, secs)) => {
                        busy_s[node] += secs;
                        elapsed[p] = secs;
                        ran_on[p] = node;
                        done[p] = Some(o);
                        idle_if_done(&lease, &waiting, node);
                        if let Some(s) = &split {
                            settle_split(s, &members, p, &mut lease, &mut moved, &mut busy_s);
                        }
                    }
                    Err(e @ Error::Device { .. }) => lost.push((w, e.to_string(), false)),
                    Err(e) => return Err(e),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let (late, on_time): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|w| {
                    now.duration_since(w.since) >= timeout_for(parts[w.part].predicted_s)
                });
                waiting = on_time;
                for w in late {
                    let limit = timeout_for(parts[w.part].predicted_s).as_secs_f64();
                    lost.push((w, format!("no answer within {limit:.3} s"), true));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::device(
                    "model",
                    "every part thread ended without an answer",
                ));
            }
        }
        for (w, reason, timed_out) in lost {
            let p = w.part;
            busy_s[w.node] += w.since.elapsed().as_secs_f64();
            // In a channel split, the member whose error ended the run, or the one still on a
            // part when time ran out (else the lead), is dropped with any member dropped
            // along the way, and the remaining members run the part again.
            let from = match split.take() {
                Some(s) => {
                    settle_split(&s, &members, p, &mut lease, &mut moved, &mut busy_s);
                    let culprit = if timed_out {
                        s.stuck_member()
                    } else {
                        s.failed_member()
                    };
                    members[culprit.unwrap_or(0)].0
                }
                None => w.node,
            };
            let newly_failed = !lease.is_failed(from);
            if newly_failed {
                lease.mark_failed(from, reason.clone());
            }
            members.retain(|m| !lease.is_failed(m.0));
            let to = match members.first() {
                Some(m) => m.0,
                None => replacement(&mut lease, &waiting, &busy_s).ok_or_else(|| {
                    Error::refused(format!(
                        "part {p} of the model failed on {} ({reason}) and no working node is left",
                        lease.nodes()[from].id
                    ))
                })?,
            };
            if busy_s.len() < lease.nodes().len() {
                busy_s.resize(lease.nodes().len(), 0.0);
            }
            if newly_failed {
                moved.push(moved_part(&lease, p, from, to, reason));
            }
            split = launch(p, to, launches, &members, &lease)?;
            waiting.push(Launched::new(p, to, launches));
            launches += 1;
        }
    }
    let pieces: Vec<HashMap<String, Value>> = done
        .into_iter()
        .map(|d| d.ok_or_else(|| Error::device("model", "a part produced no output")))
        .collect::<Result<_>>()?;
    let outputs = batch::join_outputs(pieces)?;
    let elapsed_s = start.elapsed().as_secs_f64();

    if plan.strategy == Strategy::ChannelSplit {
        // A split that lost no member: its own correction (the nodes' come from runs alone).
        if moved.is_empty() {
            let keys = (0..plan.members.len()).map(|k| lease.nodes()[k].key.as_str());
            let part = &parts[0];
            model.learn_split(
                &plan::split_key(keys),
                elapsed[0] / part.samples.len().max(1) as f64,
                part.base_per_sample_s,
            );
        }
    } else {
        learn_node_rates(model, &lease, &parts, &ran_on, &elapsed);
    }
    let report = report(
        model, &lease, &plan, &parts, &ran_on, &elapsed, &busy_s, moved, queued_s, elapsed_s,
        samples,
    );
    lease.release();
    Ok(ModelRun { outputs, report })
}

/// Folds each part's measured time into its node's correction, for parts that finished on
/// the node they were planned for (a moved part's prediction was for another node).
fn learn_node_rates(
    model: &Model,
    lease: &Lease,
    parts: &[PlannedPart],
    ran_on: &[usize],
    elapsed: &[f64],
) {
    for (p, part) in parts.iter().enumerate() {
        if ran_on[p] == p {
            let samples = part.samples.len().max(1) as f64;
            model.learn(
                &lease.nodes()[p].key,
                elapsed[p] / samples,
                part.base_per_sample_s,
            );
        }
    }
}

/// After a run of the split `s` over `members` (leased node, share) ends: each member it
/// dropped is marked failed and reported as having moved part `part` to the lead, and the
/// members' busy time is booked to their nodes.
fn settle_split(
    s: &ChannelSplit,
    members: &[(usize, f64)],
    part: usize,
    lease: &mut Lease,
    moved: &mut Vec<MovedPart>,
    busy_s: &mut [f64],
) {
    let lead = members[0].0;
    for d in s.dropped() {
        let from = members[d.member].0;
        if !lease.is_failed(from) {
            lease.mark_failed(from, d.reason.clone());
            moved.push(moved_part(lease, part, from, lead, d.reason));
        }
    }
    for (m, b) in s.busy_s().into_iter().enumerate().skip(1) {
        busy_s[members[m].0] += b;
    }
}

/// The record of part `part` moved from leased node `from` to `to` for `reason`.
fn moved_part(lease: &Lease, part: usize, from: usize, to: usize, reason: String) -> MovedPart {
    MovedPart {
        part,
        from: lease.nodes()[from].id.clone(),
        to: lease.nodes()[to].id.clone(),
        reason,
    }
}

/// Puts leased node `node` to Idle when no part waits on it any more.
fn idle_if_done(lease: &Lease, waiting: &[Launched], node: usize) {
    if !waiting.iter().any(|w| w.node == node) {
        lease.set_state(node, PowerState::Idle);
    }
}

/// A node to move a failed part to: a free node borrowed from the mesh, else the leased
/// working node with the least work so far that no part is waiting on, else any working one.
fn replacement(lease: &mut Lease, waiting: &[Launched], busy_s: &[f64]) -> Option<usize> {
    if let Some(k) = lease.borrow_more() {
        return Some(k);
    }
    let working: Vec<usize> = (0..lease.nodes().len())
        .filter(|&k| !lease.is_failed(k))
        .collect();
    let least = |ks: &mut dyn Iterator<Item = usize>| {
        ks.min_by(|&a, &b| {
            let ba = busy_s.get(a).copied().unwrap_or(0.0);
            let bb = busy_s.get(b).copied().unwrap_or(0.0);
            ba.total_cmp(&bb)
        })
    };
    least(
        &mut working
            .iter()
            .copied()
            .filter(|&k| !waiting.iter().any(|w| w.node == k)),
    )
    .or_else(|| least(&mut working.iter().copied()))
}

/// Bytes of a value's elements.
fn value_bytes(v: &Value) -> u64 {
    match v {
        Value::Float(t) => t.size_bytes() as u64,
        Value::Int64 { data, .. } => 8 * data.len() as u64,
        Value::Bool { data, .. } => data.len() as u64,
    }
}

/// The run's report: parts, per-node time and energy (active while computing, idle while
/// leased and waiting).
#[allow(clippy::too_many_arguments)]
fn report(
    model: &Model,
    lease: &Lease,
    plan: &super::ModelPlan,
    parts: &[PlannedPart],
    ran_on: &[usize],
    elapsed: &[f64],
    busy_s: &[f64],
    moved_parts: Vec<MovedPart>,
    queued_s: f64,
    elapsed_s: f64,
    samples: usize,
) -> ModelReport {
    let per_sample_flops = model.flops_per_sample;
    let mut nodes = Vec::new();
    let mut energy_j = 0.0;
    for (k, node) in lease.nodes().iter().enumerate() {
        let mine: Vec<usize> = (0..parts.len()).filter(|&p| ran_on[p] == k).collect();
        let compute_s = busy_s.get(k).copied().unwrap_or(0.0).min(elapsed_s);
        let top = node.power.top_level();
        let joules = node.power.active_w(top) * compute_s
            + node.power.watts(PowerState::Idle) * (elapsed_s - compute_s).max(0.0);
        energy_j += joules;
        nodes.push(NodeUse {
            id: node.id.clone(),
            parts: mine.len(),
            flops: mine
                .iter()
                .map(|&p| per_sample_flops * parts[p].samples.len() as u64)
                .sum(),
            compute_s,
            predicted_s: mine.iter().map(|&p| parts[p].predicted_s).sum(),
            energy_j: joules,
        });
    }
    let part_reports: Vec<PartReport> = parts
        .iter()
        .enumerate()
        .map(|(p, part)| PartReport {
            node: lease.nodes()[ran_on[p]].id.clone(),
            first_sample: part.samples.start,
            samples: part.samples.len(),
            predicted_s: part.predicted_s,
            elapsed_s: elapsed[p],
        })
        .collect();
    let mut nodes_used: Vec<String> = if plan.strategy == Strategy::ChannelSplit {
        // Every member that took a share, the lead first.
        nodes
            .iter()
            .filter(|n| n.compute_s > 0.0)
            .map(|n| n.id.clone())
            .collect()
    } else {
        part_reports.iter().map(|p| p.node.clone()).collect()
    };
    nodes_used.dedup();
    ModelReport {
        job: lease.job(),
        model: model.name.clone(),
        strategy: plan.strategy,
        samples,
        nodes_used,
        parts: part_reports,
        nodes: nodes
            .into_iter()
            .filter(|n| n.parts > 0 || n.compute_s > 0.0)
            .collect(),
        queued_s,
        predicted_s: plan.predicted_s,
        elapsed_s,
        energy_j,
        moved_parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_shares_are_whole_units_and_only_for_enough_work() {
        let free = |samples| Some(BatchLayout { samples, chunk: 0 });
        let big = LANE_MIN_FLOPS;
        assert_eq!(lane_shares(free(8), 2, big), Some(vec![0..4, 4..8]));
        assert_eq!(lane_shares(free(5), 2, big), Some(vec![0..2, 2..5]));
        assert_eq!(lane_shares(free(3), 4, big), Some(vec![0..1, 1..2, 2..3]));
        // Chunks of two samples of a fixed-batch model stay whole.
        let fixed = Some(BatchLayout {
            samples: 6,
            chunk: 2,
        });
        assert_eq!(lane_shares(fixed, 2, big), Some(vec![0..2, 2..6]));
        // One sample, one lane, no layout or too little work: no lanes.
        assert_eq!(lane_shares(free(1), 2, big), None);
        assert_eq!(lane_shares(free(8), 1, big), None);
        assert_eq!(lane_shares(None, 2, big), None);
        assert_eq!(lane_shares(free(8), 2, big / 8), None);
    }
}
