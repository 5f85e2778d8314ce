//! The event loop of the simulator: virtual time, a heap of events (arrivals, part starts and
//! completions, output arrivals, wake-ups, hold-off expiries, power-offs, crashes, repairs),
//! the nodes' power and queues, and the policies' planning calls.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::workload::{self, Crash, Job};
use super::{Policy, SimConfig, SimNodeSummary, SimSummary};
use crate::drac::partition::{PartSpec, Strategy};
use crate::drac::perf_model::PerfModel;
use crate::drac::placement::{
    Candidate, Placement, PlacementOptions, PlacementRequest, select_optimal_nodes,
};
use crate::drac::power::{NodePower, PowerState};
use crate::drac::request::Target;
use crate::mesh::{Endpoint, LinkSchedule, Topology};
use crate::node::sim::SimNodeSpec;
use crate::op::Op;
use crate::tensor::{DType, Shape};
use crate::{Error, Result};

/// Seed tag of the run-time noise stream (node biases, part times).
const NOISE_STREAM: u64 = 0x6e6f_6973;

/// What happens at an instant.
#[derive(Debug, Clone, Copy)]
enum Ev {
    /// Job `j` is submitted.
    Arrival(usize),
    /// Part `p` starts computing.
    Start(usize),
    /// Part `p` finishes computing (its output starts back).
    ComputeEnd(usize),
    /// Part `p`'s output has reached the host.
    Done(usize),
    /// A node finished waking (valid for its power epoch).
    WakeDone(usize, u64),
    /// A node's hold-off expired (valid for its idle epoch).
    HoldOff(usize, u64),
    /// A node finished powering off (valid for its power epoch).
    SleepDone(usize, u64),
    /// A node crashes.
    Crash(usize),
    /// A crashed node is back.
    Repair(usize),
}

/// An event in the heap: earliest first, then in the order pushed.
#[derive(Debug, Clone, Copy)]
struct Event {
    at: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the earliest (then first pushed) pops first.
        other.at.total_cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

/// Work waiting to be planned: a whole job, or a part re-planned after a crash.
#[derive(Debug, Clone, Copy)]
struct Task {
    job: usize,
    part: Option<usize>,
    priority: u8,
    /// Queue order within a priority: the deadline (drac) or the arrival (others).
    key: f64,
    seq: u64,
}

impl PartialEq for Task {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Task {}
impl PartialOrd for Task {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Task {
    fn cmp(&self, other: &Self) -> Ordering {
        // Re-planned parts first (their jobs are running), then higher priority, then the
        // smaller key, then first queued.
        self.part
            .is_some()
            .cmp(&other.part.is_some())
            .then(self.priority.cmp(&other.priority))
            .then(other.key.total_cmp(&self.key))
            .then(other.seq.cmp(&self.seq))
    }
}

/// One simulated node as it runs.
#[derive(Debug)]
struct Node {
    /// Its perf-model key (`sim<i>`).
    key: String,
    spec: SimNodeSpec,
    /// Actual compute time / declared compute time.
    bias: f64,
    power: NodePower,
    up: bool,
    /// End of the last committed compute.
    free_at: f64,
    /// Earliest time it can compute (after a wake-up).
    ready_at: f64,
    /// When the power-off under way completes.
    sleep_end: f64,
    /// Committed parts not yet computed, in start order.
    queue: VecDeque<usize>,
    /// The part computing now.
    running: Option<usize>,
    /// Outputs still crossing back to the host (the node counts as busy until they are out).
    draining: usize,
    /// When the last output reserved so far reaches the host.
    drain_end: f64,
    /// Invalidates wake/sleep events (bumped at a crash).
    epoch: u64,
    /// Invalidates hold-off events (bumped whenever work arrives).
    idle_epoch: u64,
    off_since: f64,
    off_s: f64,
    /// Since when it has had work (queued, computing or draining), if it has.
    occupied_since: Option<f64>,
    occupied_s: f64,
    parts_done: u64,
    crashes: u64,
}

impl Node {
    fn free(&self) -> bool {
        self.up && self.queue.is_empty() && self.draining == 0
    }

    /// Keeps the occupied time: call after every change of its queue or outputs.
    fn track(&mut self, now: f64) {
        let busy = !self.queue.is_empty() || self.draining > 0;
        match (busy, self.occupied_since) {
            (true, None) => self.occupied_since = Some(now),
            (false, Some(t)) => {
                self.occupied_s += now - t;
                self.occupied_since = None;
            }
            _ => {}
        }
    }

    /// When it could start new work: after its queue and its outputs, or now for a node
    /// that is off or powering off (the planner adds the wake-up).
    fn busy_until(&self, now: f64) -> f64 {
        match self.power.state() {
            PowerState::Off | PowerState::Sleeping => now,
            _ => self.free_at.max(self.ready_at).max(self.drain_end).max(now),
        }
    }

    fn awake(&self) -> bool {
        matches!(
            self.power.state(),
            PowerState::Idle | PowerState::Active { .. }
        )
    }
}

/// One part as it runs.
#[derive(Debug)]
struct PartRun {
    job: usize,
    node: usize,
    spec: PartSpec,
    level: usize,
    start: f64,
    /// Actual compute seconds at its level.
    dur: f64,
    cancelled: bool,
}

/// One job's progress.
#[derive(Debug, Default, Clone)]
struct JobState {
    /// Parts (and re-planned parts waiting for a plan) not yet back.
    outstanding: usize,
    finish: Option<f64>,
    energy_j: f64,
    nodes: usize,
    reduce_s: f64,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    policy: Policy,
    topo: Topology,
    links: LinkSchedule,
    perf: PerfModel,
    nodes: Vec<Node>,
    /// One candidate per node, reordered so the ones offered to the planner come first.
    cands: Vec<Candidate>,
    jobs: Vec<Job>,
    states: Vec<JobState>,
    parts: Vec<PartRun>,
    events: BinaryHeap<Event>,
    waiting: BinaryHeap<Task>,
    seq: u64,
    rng: ChaCha8Rng,
    rr_next: usize,
    decisions: u64,
    plan_time: Duration,
    replanned: u64,
    crashes: u64,
    power_offs: u64,
    wakeups: u64,
    completed: usize,
    makespan: f64,
}

/// Runs a validated configuration.
pub(super) fn run(cfg: &SimConfig) -> Result<SimSummary> {
    let wall = Instant::now();
    let mut sim = Sim::new(cfg)?;
    sim.run()?;
    Ok(sim.summary(wall.elapsed().as_secs_f64()))
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig) -> Result<Sim<'a>> {
        let profiles = cfg.node_profiles()?;
        let mut topo = Topology::new(cfg.mesh.clone())?;
        for (i, p) in profiles.iter().enumerate() {
            if let Some(link) = p.host_link {
                topo.set_host_link(i, link);
            }
        }
        let jobs = workload::generate(cfg, &profiles, &topo)?;
        let span = jobs.last().map_or(0.0, |j| j.arrival_s);
        let crashes = workload::crashes(cfg, profiles.len(), span);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ NOISE_STREAM);
        let mut perf = PerfModel::new();
        let start_state = if cfg.policy.powers_off() {
            PowerState::Off
        } else {
            PowerState::Idle
        };
        let mut nodes = Vec::with_capacity(profiles.len());
        let mut cands = Vec::with_capacity(profiles.len());
        for (i, spec) in profiles.into_iter().enumerate() {
            let key = format!("sim{i}");
            spec.install(&mut perf, &key);
            let bias = 1.0 + cfg.node_spread * (2.0 * rng.random::<f64>() - 1.0);
            cands.push(Candidate {
                node: i,
                key: key.clone(),
                memory_bytes: spec.memory_bytes,
                power: spec.power.clone(),
                state: start_state,
                free_at_s: 0.0,
            });
            nodes.push(Node {
                key,
                power: NodePower::new(spec.power.clone(), start_state, 0.0),
                spec,
                bias,
                up: true,
                free_at: 0.0,
                ready_at: 0.0,
                sleep_end: 0.0,
                queue: VecDeque::new(),
                running: None,
                draining: 0,
                drain_end: 0.0,
                epoch: 0,
                idle_epoch: 0,
                off_since: 0.0,
                off_s: 0.0,
                occupied_since: None,
                occupied_s: 0.0,
                parts_done: 0,
                crashes: 0,
            });
        }
        let mut sim = Sim {
            cfg,
            policy: cfg.policy,
            links: LinkSchedule::new(&topo),
            topo,
            perf,
            nodes,
            cands,
            states: vec![JobState::default(); jobs.len()],
            jobs,
            parts: Vec::new(),
            events: BinaryHeap::new(),
            waiting: BinaryHeap::new(),
            seq: 0,
            rng,
            rr_next: 0,
            decisions: 0,
            plan_time: Duration::ZERO,
            replanned: 0,
            crashes: 0,
            power_offs: 0,
            wakeups: 0,
            completed: 0,
            makespan: 0.0,
        };
        if let Some(first) = sim.jobs.first() {
            let at = first.arrival_s;
            sim.push(at, Ev::Arrival(0));
        }
        for Crash { at_s, node } in crashes {
            sim.push(at_s, Ev::Crash(node));
        }
        Ok(sim)
    }

    fn push(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Moves node `n` to `state` at `t`, keeping the off-time and wake-up counts.
    fn set_power(&mut self, n: usize, state: PowerState, t: f64) {
        let node = &mut self.nodes[n];
        let was = node.power.state();
        if was == PowerState::Off && state != PowerState::Off {
            node.off_s += t - node.off_since;
        }
        if state == PowerState::Off && was != PowerState::Off {
            node.off_since = t;
        }
        if state == PowerState::Waking && was != PowerState::Waking {
            self.wakeups += 1;
        }
        node.power.set(state, t);
    }

    fn run(&mut self) -> Result<()> {
        while self.completed < self.jobs.len() {
            let Some(Event { at: now, ev, .. }) = self.events.pop() else {
                return Err(Error::device(
                    "simulator",
                    format!(
                        "stalled with {} of {} jobs done",
                        self.completed,
                        self.jobs.len()
                    ),
                ));
            };
            match ev {
                Ev::Arrival(j) => self.arrival(j, now)?,
                Ev::Start(p) => self.start(p, now),
                Ev::ComputeEnd(p) => self.compute_end(p, now)?,
                Ev::Done(p) => self.done(p, now)?,
                Ev::WakeDone(n, e) => {
                    let node = &self.nodes[n];
                    if e == node.epoch && node.up && node.power.state() == PowerState::Waking {
                        self.set_power(n, PowerState::Idle, now);
                        if self.nodes[n].free() {
                            // Woke with nothing to do (back from a repair): it may power off again.
                            if self.policy.powers_off() {
                                let node = &mut self.nodes[n];
                                node.idle_epoch += 1;
                                let (at, e) = (now + self.cfg.hold_off_s, node.idle_epoch);
                                self.push(at, Ev::HoldOff(n, e));
                            }
                            self.dispatch(now)?;
                        }
                    }
                }
                Ev::HoldOff(n, e) => {
                    let node = &mut self.nodes[n];
                    if e == node.idle_epoch && node.free() && node.power.state() == PowerState::Idle
                    {
                        node.sleep_end = now + node.spec.power.sleep_s;
                        let (at, epoch) = (node.sleep_end, node.epoch);
                        self.set_power(n, PowerState::Sleeping, now);
                        self.push(at, Ev::SleepDone(n, epoch));
                    }
                }
                Ev::SleepDone(n, e) => {
                    let node = &self.nodes[n];
                    if e != node.epoch || node.power.state() != PowerState::Sleeping {
                        continue;
                    }
                    if node.queue.is_empty() {
                        self.set_power(n, PowerState::Off, now);
                        self.power_offs += 1;
                    } else {
                        // Work arrived while it was powering off: wake straight back up.
                        let at = now + node.spec.power.wake_s;
                        self.set_power(n, PowerState::Waking, now);
                        self.push(at, Ev::WakeDone(n, e));
                    }
                }
                Ev::Crash(n) => self.crash(n, now)?,
                Ev::Repair(n) => self.repair(n, now)?,
            }
        }
        Ok(())
    }

    fn arrival(&mut self, j: usize, now: f64) -> Result<()> {
        if let Some(next) = self.jobs.get(j + 1) {
            let at = next.arrival_s;
            self.push(at, Ev::Arrival(j + 1));
        }
        let job = &self.jobs[j];
        let key = if self.policy == Policy::Drac {
            job.deadline_s
        } else {
            job.arrival_s
        };
        self.seq += 1;
        let task = Task {
            job: j,
            part: None,
            priority: job.priority,
            key,
            seq: self.seq,
        };
        self.waiting.push(task);
        self.dispatch(now)
    }

    /// Whether a task could be planned now: a free node for the waiting policies, a live one
    /// for the queueing ones.
    fn can_place(&self) -> bool {
        if self.policy.waits_for_free_nodes() {
            self.nodes.iter().any(Node::free)
        } else {
            self.nodes.iter().any(|n| n.up)
        }
    }

    /// Plans waiting tasks, best first, while nodes can take them.
    fn dispatch(&mut self, now: f64) -> Result<()> {
        while !self.waiting.is_empty() && self.can_place() {
            let Some(task) = self.waiting.pop() else {
                break;
            };
            let t = Instant::now();
            let plan = self.plan(task, now)?;
            self.plan_time += t.elapsed();
            self.decisions += 1;
            self.commit(task, plan, now);
        }
        Ok(())
    }

    /// Moves the nodes `pick` accepts to the front of the candidate list (in node order),
    /// refreshes their state, and returns how many there are.
    fn offer(&mut self, now: f64, queued: bool, pick: impl Fn(usize, &Node) -> bool) -> usize {
        let mut k = 0;
        for i in 0..self.cands.len() {
            let n = self.cands[i].node;
            if pick(n, &self.nodes[n]) {
                self.cands.swap(k, i);
                k += 1;
            }
        }
        self.cands[..k].sort_unstable_by_key(|c| c.node);
        for c in &mut self.cands[..k] {
            let node = &self.nodes[c.node];
            c.state = node.power.state();
            c.free_at_s = if queued { node.busy_until(now) } else { now };
        }
        k
    }

    /// Plans a task under the policy.
    fn plan(&mut self, task: Task, now: f64) -> Result<Placement> {
        let job = &self.jobs[task.job];
        let (dtype, deadline) = (job.dtype, job.deadline_s);
        let min_latency = |max_nodes| PlacementOptions {
            dvfs: false,
            max_nodes,
            energy_aware: false,
        };
        match self.policy {
            Policy::Drac => {
                let remaining = deadline - now;
                if remaining <= 0.0 {
                    // Already late: as soon as possible, on awake nodes if any are free.
                    let mut k = self.offer(now, false, |_, n| n.free() && n.awake());
                    if k == 0 {
                        k = self.offer(now, false, |_, n| n.free());
                    }
                    let opts = min_latency(usize::MAX);
                    return self.plan_on(task, k, Target::MinLatency, dtype, now, opts);
                }
                let target = Target::Deadline(remaining * self.cfg.deadline_margin);
                // Slowing a job down keeps its nodes longer: not while other work waits.
                let opts = PlacementOptions {
                    dvfs: self.waiting.is_empty(),
                    ..PlacementOptions::default()
                };
                // Free awake nodes first; nodes that must be woken only when those fall short.
                let awake = self.offer(now, false, |_, n| n.free() && n.awake());
                let mut fallback: Option<Placement> = None;
                if awake > 0 {
                    let p = self.plan_on(task, awake, target, dtype, now, opts)?;
                    if p.meets_target {
                        return Ok(p);
                    }
                    fallback = Some(p);
                }
                let all = self.offer(now, false, |_, n| n.free());
                if all > awake {
                    let p = self.plan_on(task, all, target, dtype, now, opts)?;
                    if p.meets_target || fallback.as_ref().is_none_or(|f| p.finish_s < f.finish_s) {
                        return Ok(p);
                    }
                }
                // No plan meets the deadline: the one that finishes first.
                fallback.ok_or_else(|| Error::spec("mesh", "no free node to plan on"))
            }
            Policy::AlwaysOn => {
                let k = self.offer(now, false, |_, n| n.free());
                self.plan_on(
                    task,
                    k,
                    Target::MinLatency,
                    dtype,
                    now,
                    min_latency(usize::MAX),
                )
            }
            Policy::Eft => {
                let k = self.offer(now, true, |_, n| n.up);
                self.plan_on(task, k, Target::MinLatency, dtype, now, min_latency(1))
            }
            Policy::RoundRobin => {
                let count = self.nodes.len();
                let next = (0..count)
                    .map(|s| (self.rr_next + s) % count)
                    .find(|&n| self.nodes[n].up)
                    .ok_or_else(|| Error::spec("mesh", "no live node"))?;
                self.rr_next = (next + 1) % count;
                let k = self.offer(now, true, |n, _| n == next);
                self.plan_on(task, k, Target::MinLatency, dtype, now, min_latency(1))
            }
        }
    }

    /// One `select_optimal_nodes` call on the first `k` candidates.
    fn plan_on(
        &self,
        task: Task,
        k: usize,
        target: Target,
        dtype: DType,
        now: f64,
        opts: PlacementOptions,
    ) -> Result<Placement> {
        let (op, shapes): (&Op, &[Shape]) = match task.part {
            Some(p) => (&self.parts[p].spec.op, &self.parts[p].spec.input_shapes),
            None => (&self.jobs[task.job].op, &self.jobs[task.job].shapes),
        };
        let refs: Vec<&Shape> = shapes.iter().collect();
        let req = PlacementRequest {
            op,
            shapes: &refs,
            dtype,
            target,
            energy_budget_j: None,
            now_s: now,
        };
        select_optimal_nodes(&req, &self.cands[..k], &self.perf, &self.topo, opts)
    }

    /// Puts a plan's parts on their nodes: wakes nodes, reserves input transfers, draws the
    /// actual compute times and schedules the parts.
    fn commit(&mut self, task: Task, plan: Placement, now: f64) {
        let j = task.job;
        let (class, dtype) = (self.jobs[j].class, self.jobs[j].dtype);
        let state = &mut self.states[j];
        if task.part.is_some() {
            // The re-planned part's place is taken by its new parts.
            state.outstanding += plan.parts.len();
            state.outstanding -= 1;
        } else {
            state.outstanding = plan.parts.len();
            state.nodes = plan.chosen.len();
            if plan.strategy == Strategy::KSplit && plan.chosen.len() > 1 {
                let out: u64 = plan.parts.iter().map(|p| p.output_bytes).sum();
                let ingress = Endpoint::Node(self.topo.ingress());
                state.reduce_s = self.topo.transfer_time(ingress, Endpoint::Host, out);
            }
        }
        let mut specs: Vec<Option<PartSpec>> = plan.parts.into_iter().map(Some).collect();
        for est in &plan.estimates {
            let Some(spec) = specs.get_mut(est.part).and_then(Option::take) else {
                continue;
            };
            let n = est.node;
            match self.nodes[n].power.state() {
                PowerState::Off => {
                    let wake = self.nodes[n].spec.power.wake_s;
                    let epoch = self.nodes[n].epoch;
                    self.nodes[n].ready_at = now + wake;
                    self.set_power(n, PowerState::Waking, now);
                    self.push(now + wake, Ev::WakeDone(n, epoch));
                }
                PowerState::Sleeping => {
                    let node = &mut self.nodes[n];
                    node.ready_at = node.sleep_end + node.spec.power.wake_s;
                }
                _ => {}
            }
            let (_, arrive) = self.links.reserve(
                &self.topo,
                Endpoint::Host,
                Endpoint::Node(n),
                spec.input_bytes,
                now,
            );
            let node = &mut self.nodes[n];
            node.idle_epoch += 1;
            let declared = workload::declared_seconds(&node.spec, class, dtype, spec.flops);
            let sigma = self.cfg.noise;
            let noise = (sigma * workload::normal(&mut self.rng) - 0.5 * sigma * sigma).exp();
            let level = est.level;
            let dur = declared * node.bias * noise / node.spec.power.speed(level);
            let start = node.free_at.max(node.ready_at).max(arrive).max(now);
            node.free_at = start + dur;
            self.states[j].energy_j += node.spec.power.active_w(level) * dur;
            let p = self.parts.len();
            node.queue.push_back(p);
            node.track(now);
            self.parts.push(PartRun {
                job: j,
                node: n,
                spec,
                level,
                start,
                dur,
                cancelled: false,
            });
            self.push(start, Ev::Start(p));
            self.push(start + dur, Ev::ComputeEnd(p));
        }
    }

    fn start(&mut self, p: usize, now: f64) {
        let part = &self.parts[p];
        if part.cancelled {
            return;
        }
        let (n, level) = (part.node, part.level);
        self.nodes[n].running = Some(p);
        self.set_power(n, PowerState::Active { level }, now);
    }

    fn compute_end(&mut self, p: usize, now: f64) -> Result<()> {
        if self.parts[p].cancelled {
            return Ok(());
        }
        let n = self.parts[p].node;
        let node = &mut self.nodes[n];
        if node.queue.front() == Some(&p) {
            node.queue.pop_front();
        } else if let Some(pos) = node.queue.iter().position(|&q| q == p) {
            node.queue.remove(pos);
        }
        node.parts_done += 1;
        if node.running == Some(p) {
            node.running = None;
            self.set_power(n, PowerState::Idle, now);
        }
        let part = &self.parts[p];
        let job = &self.jobs[part.job];
        let (class, dtype, flops) = (job.class, job.dtype, part.spec.flops);
        let top_s = part.dur * self.nodes[n].spec.power.speed(part.level);
        self.perf
            .observe(&self.nodes[n].key, class, dtype, flops, top_s);
        let (_, back) = self.links.reserve(
            &self.topo,
            Endpoint::Node(n),
            Endpoint::Host,
            part.spec.output_bytes,
            now,
        );
        self.push(back, Ev::Done(p));
        self.nodes[n].draining += 1;
        self.nodes[n].track(now);
        self.nodes[n].drain_end = self.nodes[n].drain_end.max(back);
        Ok(())
    }

    fn done(&mut self, p: usize, now: f64) -> Result<()> {
        let n = self.parts[p].node;
        let node = &mut self.nodes[n];
        node.draining -= 1;
        node.track(now);
        if node.free() {
            if self.policy.powers_off() {
                node.idle_epoch += 1;
                let (at, e) = (now + self.cfg.hold_off_s, node.idle_epoch);
                self.push(at, Ev::HoldOff(n, e));
            }
            self.dispatch(now)?;
        }
        let j = self.parts[p].job;
        let state = &mut self.states[j];
        state.outstanding -= 1;
        if state.outstanding == 0 && state.finish.is_none() {
            let finish = now + state.reduce_s;
            state.finish = Some(finish);
            self.completed += 1;
            self.makespan = self.makespan.max(finish);
        }
        Ok(())
    }

    fn crash(&mut self, n: usize, now: f64) -> Result<()> {
        if !self.nodes[n].up {
            return Ok(());
        }
        self.crashes += 1;
        let node = &mut self.nodes[n];
        node.crashes += 1;
        node.up = false;
        node.epoch += 1;
        node.idle_epoch += 1;
        node.running = None;
        node.free_at = now;
        node.ready_at = now;
        let lost: Vec<usize> = node.queue.drain(..).collect();
        node.track(now);
        self.set_power(n, PowerState::Off, now);
        for p in lost {
            let part = &mut self.parts[p];
            part.cancelled = true;
            let j = part.job;
            // The job pays for what ran, not for what was planned.
            let w = self.nodes[n].spec.power.active_w(part.level);
            let ran = (now - part.start).clamp(0.0, part.dur);
            self.states[j].energy_j += w * (ran - part.dur);
            self.replanned += 1;
            let job = &self.jobs[j];
            self.seq += 1;
            self.waiting.push(Task {
                job: j,
                part: Some(p),
                priority: job.priority,
                key: job.deadline_s,
                seq: self.seq,
            });
        }
        self.push(now + self.cfg.repair_s, Ev::Repair(n));
        self.dispatch(now)
    }

    fn repair(&mut self, n: usize, now: f64) -> Result<()> {
        let node = &mut self.nodes[n];
        node.up = true;
        node.free_at = now;
        node.ready_at = now;
        if !self.policy.powers_off() {
            // Always-on policies power it straight back on.
            node.ready_at = now + node.spec.power.wake_s;
            let (at, epoch) = (node.ready_at, node.epoch);
            self.set_power(n, PowerState::Waking, now);
            self.push(at, Ev::WakeDone(n, epoch));
        }
        self.dispatch(now)
    }

    fn summary(&mut self, wall_s: f64) -> SimSummary {
        let end = self.makespan;
        let count = self.nodes.len();
        let mut node_stats = Vec::with_capacity(count);
        let (mut energy, mut active, mut off, mut occupied) = (0.0, 0.0, 0.0, 0.0);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.power.advance(end);
            if node.power.state() == PowerState::Off {
                node.off_s += (end - node.off_since).max(0.0);
                node.off_since = end;
            }
            if let Some(t) = node.occupied_since {
                node.occupied_s += end - t;
                node.occupied_since = Some(end);
            }
            occupied += node.occupied_s;
            energy += node.power.energy_j();
            active += node.power.active_s();
            off += node.off_s;
            node_stats.push(SimNodeSummary {
                id: format!("sim{i}"),
                profile: node.spec.name.clone(),
                energy_j: node.power.energy_j(),
                active_s: node.power.active_s(),
                off_s: node.off_s,
                parts: node.parts_done,
                crashes: node.crashes,
            });
        }
        let jobs = self.jobs.len();
        let mut latencies: Vec<f64> = Vec::with_capacity(jobs);
        let mut hits = 0;
        let (mut job_energy, mut nodes_used) = (0.0, 0usize);
        for (job, st) in self.jobs.iter().zip(&self.states) {
            if let Some(f) = st.finish {
                latencies.push(f - job.arrival_s);
                if f <= job.deadline_s {
                    hits += 1;
                }
            }
            job_energy += st.energy_j;
            nodes_used += st.nodes;
        }
        latencies.sort_by(f64::total_cmp);
        let mean = |v: f64, n: usize| if n == 0 { 0.0 } else { v / n as f64 };
        let span = end.max(1e-12) * count as f64;
        let wall = wall_s.max(1e-9);
        SimSummary {
            policy: self.policy,
            mesh: self.cfg.mesh.to_string(),
            nodes: count,
            seed: self.cfg.seed,
            jobs,
            completed: self.completed,
            makespan_s: end,
            energy_j: energy,
            mean_job_energy_j: mean(job_energy, jobs),
            deadline_hits: hits,
            deadline_hit_rate: mean(hits as f64, jobs),
            mean_utilisation: active / span,
            mean_off_fraction: off / span,
            mean_occupancy: occupied / span,
            replanned_parts: self.replanned,
            crashes: self.crashes,
            decisions: self.decisions,
            decisions_per_s: self.decisions as f64 / wall,
            plan_us_mean: mean(self.plan_time.as_secs_f64() * 1e6, self.decisions as usize),
            wall_s,
            jobs_per_wall_s: jobs as f64 / wall,
            mean_nodes_per_job: mean(nodes_used as f64, jobs),
            mean_latency_s: mean(latencies.iter().sum(), latencies.len()),
            p95_latency_s: latencies
                .get((latencies.len() * 95 / 100).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0),
            power_offs: self.power_offs,
            wakeups: self.wakeups,
            node_stats,
        }
    }
}
