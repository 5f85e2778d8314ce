//! The controller on real nodes: `Drac::submit` queues a job by priority, plans it on the
//! free nodes (placement + partition), runs the parts concurrently, moves the parts of a node
//! that crashes or misses its time-out to surviving nodes, assembles the output, learns from
//! the observed times, and powers nodes down after a hold-off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use accelmesh_kernels::buffer::Chunk;

use super::fault::{Fault, FaultyDevice};
use super::part_run::{OutputPlan, PartOutput, run_part};
use super::partition::{self, PartSpec};
use super::perf_model::{OpClass, PerfModel, TransferRate};
use super::placement::{Candidate, PlacementOptions, PlacementRequest, select_optimal_nodes};
use super::power::{NodePower, PowerSpec, PowerState};
use super::report::{MovedPart, NodeUse, Report};
use super::request::{Payload, WorkloadRequest};
use crate::mesh::{LinkSpec, MeshSpec, Topology};
use crate::node::{Device, DeviceKind, NodeSet};
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// Controller settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DracConfig {
    /// Seconds an idle node stays on before it is powered off.
    pub hold_off_s: f64,
    /// A part may take this many times its predicted time before its node counts as hung.
    pub timeout_factor: f64,
    /// A part may always take at least this long.
    pub min_timeout_s: f64,
}

impl Default for DracConfig {
    fn default() -> Self {
        DracConfig {
            hold_off_s: 5.0,
            timeout_factor: 20.0,
            min_timeout_s: 10.0,
        }
    }
}

/// A finished job: its output and report.
#[derive(Debug)]
pub struct JobResult {
    /// The output tensor.
    pub output: Tensor,
    /// What happened.
    pub report: Report,
}

/// A submitted job; `wait` yields its result.
pub struct JobHandle {
    job: u64,
    thread: std::thread::JoinHandle<Result<JobResult>>,
}

impl JobHandle {
    /// The job number.
    pub fn job(&self) -> u64 {
        self.job
    }

    /// Waits for the job to finish.
    pub fn wait(self) -> Result<JobResult> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Error::device("drac", "a job thread panicked")))
    }
}

/// One node as the controller tracks it.
pub(super) struct Slot {
    pub(super) id: String,
    pub(super) device: Arc<FaultyDevice>,
    pub(super) key: String,
    pub(super) memory: u64,
    pub(super) power: NodePower,
    pub(super) busy: bool,
    pub(super) failed: Option<String>,
    pub(super) removed: bool,
}

/// Everything behind the controller's lock.
pub(super) struct State {
    pub(super) slots: Vec<Slot>,
    pub(super) topo: Topology,
    pub(super) perf: PerfModel,
    pub(super) queue: Vec<(u8, u64)>,
    pub(super) next_job: u64,
}

impl Slot {
    /// Marks the slot busy and Active at its top level from `now`.
    pub(super) fn take(&mut self, now: f64) {
        self.busy = true;
        let top = self.power.spec.top_level();
        self.power.set(PowerState::Active { level: top }, now);
    }
}

impl State {
    /// The job first in line: highest priority, then the earliest.
    pub(super) fn queue_head(&self) -> Option<u64> {
        self.queue
            .iter()
            .copied()
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, j)| j)
    }

    /// The slots that are free, present and working.
    pub(super) fn free_slots(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                !s.busy && !s.removed && s.failed.is_none()
            })
            .collect()
    }
}

/// The shared core of a [`Drac`].
pub(super) struct Core {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    pub(super) start: Instant,
    pub(super) config: DracConfig,
    pub(super) cancel: Arc<AtomicBool>,
}

/// The dynamic resource allocation controller over a set of real nodes.
#[derive(Clone)]
pub struct Drac {
    pub(super) core: Arc<Core>,
}

impl Drop for Core {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// Power figures for a node of `kind`.
fn power_for(kind: DeviceKind, threads: Option<usize>) -> PowerSpec {
    match kind {
        DeviceKind::Gpu => PowerSpec::gpu(),
        DeviceKind::Cpu => PowerSpec::cpu(threads.unwrap_or(1)),
        DeviceKind::Sim => PowerSpec::accelerator(),
    }
}

impl Drac {
    /// A controller over `nodes` with the rates of `perf` (calibrate first, see
    /// [`PerfModel::load_or_calibrate`]).
    pub fn new(nodes: &NodeSet, mut perf: PerfModel, config: DracConfig) -> Result<Drac> {
        let cancel = Arc::new(AtomicBool::new(false));
        let mut slots = Vec::new();
        for dev in nodes.devices() {
            slots.push(make_slot(dev, &mut perf, &cancel)?);
        }
        let topo = line_topology(&slots, &perf)?;
        Ok(Drac {
            core: Arc::new(Core {
                state: Mutex::new(State {
                    slots,
                    topo,
                    perf,
                    queue: Vec::new(),
                    next_job: 0,
                }),
                changed: Condvar::new(),
                start: Instant::now(),
                config,
                cancel,
            }),
        })
    }

    /// A controller over `nodes`, calibrating them (or reading the cached calibration).
    pub fn calibrated(nodes: &NodeSet, config: DracConfig) -> Result<Drac> {
        let perf =
            PerfModel::load_or_calibrate(nodes.devices(), &PerfModel::default_path(), false)?;
        Drac::new(nodes, perf, config)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.core.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn now(&self) -> f64 {
        self.core.start.elapsed().as_secs_f64()
    }

    /// Adds a node while the controller runs (calibrating it if the model does not know it).
    pub fn add_node(&self, device: Arc<dyn Device>) -> Result<()> {
        let mut st = self.lock();
        if st
            .slots
            .iter()
            .any(|s| !s.removed && s.id == device.info().id)
        {
            return Err(Error::spec(
                &device.info().id,
                "a node with this id is already in the mesh",
            ));
        }
        if !st.perf.known(&PerfModel::node_key(device.info())) {
            st.perf
                .calibrate(device.as_ref(), &device.info().dtypes.clone())?;
        }
        let slot = make_slot(&device, &mut st.perf, &self.core.cancel)?;
        st.slots.push(slot);
        st.topo = line_topology(&st.slots, &st.perf)?;
        self.core.changed.notify_all();
        Ok(())
    }

    /// Removes a node: it takes no new work (work it runs now finishes).
    pub fn remove_node(&self, id: &str) -> Result<()> {
        let mut st = self.lock();
        let slot = st
            .slots
            .iter_mut()
            .find(|s| !s.removed && s.id == id)
            .ok_or_else(|| Error::spec(id, "no such node in the mesh"))?;
        slot.removed = true;
        Ok(())
    }

    /// Schedules a fault on node `id` (fault-injection API for tests and experiments).
    pub fn inject_fault(&self, id: &str, fault: Fault) -> Result<()> {
        let st = self.lock();
        let slot = st
            .slots
            .iter()
            .find(|s| !s.removed && s.id == id)
            .ok_or_else(|| Error::spec(id, "no such node in the mesh"))?;
        slot.device.inject(fault);
        Ok(())
    }

    /// `f` of every node present, after applying the hold-off and accounting energy to now.
    fn settled<T>(&self, f: impl Fn(&Slot) -> T) -> Vec<T> {
        let now = self.now();
        let hold_off = self.core.config.hold_off_s;
        let mut st = self.lock();
        st.slots
            .iter_mut()
            .filter(|s| !s.removed)
            .map(|s| {
                settle(&mut s.power, now, hold_off, s.busy);
                s.power.advance(now);
                f(s)
            })
            .collect()
    }

    /// Node ids with their power state and failure, after applying the hold-off.
    pub fn node_states(&self) -> Vec<(String, PowerState, Option<String>)> {
        self.settled(|s| (s.id.clone(), s.power.state(), s.failed.clone()))
    }

    /// Joules each node has used so far (modelled), after applying the hold-off.
    pub fn node_energy(&self) -> Vec<(String, f64)> {
        self.settled(|s| (s.id.clone(), s.power.energy_j()))
    }

    /// A copy of the current performance model (with the online corrections).
    pub fn perf_model(&self) -> PerfModel {
        self.lock().perf.clone()
    }

    /// Queues `req` and runs it on a thread of its own; `wait` on the handle for the result.
    /// Requests that can never run (bad shapes, empty mesh, larger than the mesh's memory,
    /// impossible deadline) are refused here with a typed error.
    pub fn submit(&self, req: WorkloadRequest) -> Result<JobHandle> {
        let (job, req) = self.admit(req)?;
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("drac-job-{job}"))
            .spawn(move || me.run_admitted(job, req, None))
            .map_err(|e| Error::device("drac", format!("cannot start a job thread: {e}")))?;
        Ok(JobHandle { job, thread })
    }

    /// Runs `req` on the calling thread and returns its result.
    pub fn run(&self, req: WorkloadRequest) -> Result<JobResult> {
        let (job, req) = self.admit(req)?;
        self.run_admitted(job, req, None)
    }

    /// Like [`Drac::run`], writing into `output` (shape and dtype of the op's output) when the
    /// plan runs the job whole on one node or its parts' output blocks are contiguous (rows
    /// of a matmul, images or channels of a convolution), so repeated jobs reuse its memory;
    /// the result's output is then that tensor.
    pub fn run_into(&self, req: WorkloadRequest, output: Tensor) -> Result<JobResult> {
        let (job, req) = self.admit(req)?;
        self.run_admitted(job, req, Some(output))
    }

    /// Validates `req`, refuses what can never run, and takes a place in the queue.
    fn admit(&self, mut req: WorkloadRequest) -> Result<(u64, WorkloadRequest)> {
        req.validate()?;
        let Payload::Data(inputs) = &mut req.payload else {
            return Err(Error::refused(
                "a modelled request (shapes only) runs in the simulator, not on real nodes",
            ));
        };
        if inputs.iter().any(|t| t.dtype() != req.precision) {
            let converted: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(req.precision)).collect();
            *inputs = Arc::new(converted);
        }
        let shapes: Vec<Shape> = req.shapes().into_iter().cloned().collect();
        let shape_refs: Vec<&Shape> = shapes.iter().collect();
        let needed = req.op.bytes(&shape_refs, req.precision)?;
        let now = self.now();
        let mut st = self.lock();
        let alive: Vec<usize> = (0..st.slots.len())
            .filter(|&i| !st.slots[i].removed && st.slots[i].failed.is_none())
            .collect();
        if alive.is_empty() {
            return Err(Error::refused("the mesh has no working node (empty mesh)"));
        }
        let memory: u64 = alive
            .iter()
            .map(|&i| st.slots[i].memory)
            .fold(0, u64::saturating_add);
        if needed > memory {
            return Err(Error::refused(format!(
                "{} needs {needed} bytes, more than the whole mesh's memory ({memory} bytes)",
                req.op.name()
            )));
        }
        if let Some(deadline) = req.target.deadline_s() {
            // With every working node free and on: the best any plan can do.
            let candidates: Vec<Candidate> = alive
                .iter()
                .map(|&i| candidate(&st.slots[i], i, now, true))
                .collect();
            let preq = PlacementRequest {
                op: &req.op,
                shapes: &shape_refs,
                dtype: req.precision,
                target: crate::drac::request::Target::MinLatency,
                energy_budget_j: None,
                now_s: now,
            };
            let best =
                select_optimal_nodes(&preq, &candidates, &st.perf, &st.topo, real_options())?;
            let need = best.finish_s - now;
            if need > deadline {
                return Err(Error::refused(format!(
                    "a deadline of {deadline:.6} s is impossible: the fastest plan on every node \
                     needs {need:.6} s"
                )));
            }
        }
        let job = st.next_job;
        st.next_job += 1;
        st.queue.push((req.priority, job));
        Ok((job, req))
    }

    fn run_admitted(
        &self,
        job: u64,
        req: WorkloadRequest,
        reuse: Option<Tensor>,
    ) -> Result<JobResult> {
        let result = self.run_job(job, &req, reuse);
        if result.is_err() {
            // A job that fails before it is planned must leave the queue.
            let mut st = self.lock();
            st.queue.retain(|&(_, j)| j != job);
            self.core.changed.notify_all();
        }
        result
    }

    fn run_job(&self, job: u64, req: &WorkloadRequest, reuse: Option<Tensor>) -> Result<JobResult> {
        let submitted = self.now();
        let Payload::Data(data) = &req.payload else {
            return Err(Error::refused("modelled requests run in the simulator"));
        };
        let shapes: Vec<&Shape> = data.iter().map(Tensor::shape).collect();
        let (plan, slots_of, started) = self.plan_when_free(job, req, &shapes)?;
        let class = OpClass::of(&req.op);
        // Per chosen slot: its id, device and key.
        let mut slots_of = slots_of;
        let mut nodes = {
            let st = self.lock();
            let nodes: Vec<(String, Arc<FaultyDevice>, String)> = slots_of
                .iter()
                .map(|&i| {
                    (
                        st.slots[i].id.clone(),
                        Arc::clone(&st.slots[i].device),
                        st.slots[i].key.clone(),
                    )
                })
                .collect();
            nodes
        };
        let whole = plan.parts.len() == 1
            && plan.parts[0].op == req.op
            && plan.parts[0]
                .input_shapes
                .iter()
                .zip(&shapes)
                .all(|(a, b)| a == *b);
        let inputs: Arc<Vec<Tensor>> = Arc::clone(data);
        // Parts whose output blocks are contiguous write straight into the job's output.
        let output_plan = match whole {
            true => OutputPlan::Apart(reuse),
            false => match OutputPlan::for_parts(&plan.parts, reuse) {
                Ok(output_plan) => output_plan,
                Err(e) => {
                    // Nothing runs yet: hand the nodes back before failing.
                    self.release(&slots_of, &vec![None; slots_of.len()], self.now());
                    return Err(e);
                }
            },
        };
        let (in_place, mut lendable, reuse) = match output_plan {
            OutputPlan::InPlace(buffer, chunks) => {
                (Some(buffer), chunks.into_iter().map(Some).collect(), None)
            }
            OutputPlan::Apart(reuse) => (None, Vec::new(), reuse),
        };
        let (tx, rx) = mpsc::channel::<(usize, usize, Result<f64>, PartOutput)>();
        let mut pending: Vec<Option<(usize, Instant, Duration)>> = vec![None; plan.parts.len()];
        let mut outputs: Vec<Option<PartOutput>> = (0..plan.parts.len()).map(|_| None).collect();
        let mut failed_slots: Vec<Option<String>> = vec![None; nodes.len()];
        let mut moved = Vec::new();
        let mut compute = vec![0.0f64; nodes.len()];
        let mut parts_run = vec![0usize; nodes.len()];
        let mut flops_run = vec![0u64; nodes.len()];
        let predicted: Vec<f64> = plan.estimates.iter().map(|e| e.compute_s).collect();
        let launch = |part: &PartSpec,
                      slot: usize,
                      device: Arc<FaultyDevice>,
                      output: PartOutput,
                      tx: &mpsc::Sender<_>|
         -> Result<()> {
            let part = part.clone();
            let all = Arc::clone(&inputs);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("drac-part-{}", part.index))
                .spawn(move || {
                    let (result, output) = run_part(&device, &part, &all, whole, output);
                    let _ = tx.send((part.index, slot, result, output));
                })
                .map_err(|e| Error::device("drac", format!("cannot start a part thread: {e}")))?;
            Ok(())
        };
        let output_for = |lendable: &mut Vec<Option<Chunk>>, part: usize| match lendable
            .get_mut(part)
            .and_then(Option::take)
        {
            Some(chunk) => PartOutput::Placed(chunk),
            None => PartOutput::Own(None),
        };
        let timeout_for = |part: usize| {
            let p = predicted.get(part).copied().unwrap_or(0.0);
            Duration::from_secs_f64(
                (p * self.core.config.timeout_factor).max(self.core.config.min_timeout_s),
            )
        };
        if let ([part], true) = (plan.parts.as_slice(), whole)
            && !nodes[part.share_index].1.is_armed()
        {
            // One whole part on a node with no fault scheduled: run it on this thread (a
            // part thread costs more than a small product); an error still fails over below.
            let slot = part.share_index;
            pending[0] = Some((slot, Instant::now(), timeout_for(0)));
            let (result, output) =
                run_part(&nodes[slot].1, part, &inputs, whole, PartOutput::Own(reuse));
            let _ = tx.send((0, slot, result, output));
        } else {
            for (i, part) in plan.parts.iter().enumerate() {
                let slot = part.share_index;
                let output = output_for(&mut lendable, i);
                if let Err(e) = launch(part, slot, Arc::clone(&nodes[slot].1), output, &tx) {
                    // Parts already started finish on their own; their results are dropped.
                    self.release(&slots_of, &failed_slots, self.now());
                    return Err(e);
                }
                pending[i] = Some((slot, Instant::now(), timeout_for(i)));
            }
        }
        let mut remaining = plan.parts.len();
        let mut failure: Option<Error> = None;
        while remaining > 0 {
            let next_deadline = pending
                .iter()
                .flatten()
                .map(|&(_, start, limit)| (start + limit).saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(1));
            let event = rx.recv_timeout(next_deadline);
            let mut lost: Vec<(usize, usize, String)> = Vec::new();
            match event {
                Ok((part, slot, Ok(secs), output)) => {
                    if pending[part].is_some_and(|(s, ..)| s == slot) {
                        pending[part] = None;
                        outputs[part] = Some(output);
                        remaining -= 1;
                        compute[slot] += secs;
                        parts_run[slot] += 1;
                        let flops = plan.parts[part].flops;
                        flops_run[slot] += flops;
                        self.lock()
                            .perf
                            .observe(&nodes[slot].2, class, req.precision, flops, secs);
                    }
                }
                Ok((part, slot, Err(e), output)) => {
                    if pending[part].is_some_and(|(s, ..)| s == slot) {
                        lost.push((part, slot, e.to_string()));
                        // The block comes back with the error: lend it to the part's next run.
                        if let (PartOutput::Placed(chunk), Some(free)) =
                            (output, lendable.get_mut(part))
                        {
                            *free = Some(chunk);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    for (part, p) in pending.iter().enumerate() {
                        if let Some((slot, start, limit)) = *p
                            && now >= start + limit
                        {
                            lost.push((
                                part,
                                slot,
                                format!("missed its time-out of {:.3} s", limit.as_secs_f64()),
                            ));
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    failure = Some(Error::device("drac", "part threads ended without results"));
                    break;
                }
            }
            for (part, slot, reason) in lost {
                failed_slots[slot].get_or_insert_with(|| reason.clone());
                // Move the part to the surviving node of the plan predicted to finish first.
                let survivor = (0..nodes.len())
                    .filter(|&s| failed_slots[s].is_none())
                    .min_by(|&a, &b| {
                        let pa = self.lock().perf.predict_flops(
                            &nodes[a].2,
                            class,
                            req.precision,
                            plan.parts[part].flops,
                        );
                        let pb = self.lock().perf.predict_flops(
                            &nodes[b].2,
                            class,
                            req.precision,
                            plan.parts[part].flops,
                        );
                        pa.unwrap_or(f64::INFINITY)
                            .total_cmp(&pb.unwrap_or(f64::INFINITY))
                    });
                let to = match survivor {
                    Some(to) => to,
                    None => match self.borrow_free_node(&slots_of) {
                        // Every node of the plan failed: take a free node of the mesh.
                        Some((i, id, device, key)) => {
                            slots_of.push(i);
                            nodes.push((id, device, key));
                            failed_slots.push(None);
                            compute.push(0.0);
                            parts_run.push(0);
                            flops_run.push(0);
                            nodes.len() - 1
                        }
                        None => {
                            failure = Some(Error::device(
                                nodes[slot].0.clone(),
                                format!(
                                    "every node of the plan failed and no other node is free; \
                                     last: {reason}"
                                ),
                            ));
                            pending[part] = None;
                            break;
                        }
                    },
                };
                moved.push(MovedPart {
                    part,
                    from: nodes[slot].0.clone(),
                    to: nodes[to].0.clone(),
                    reason,
                });
                let output = output_for(&mut lendable, part);
                if let Err(e) = launch(&plan.parts[part], to, Arc::clone(&nodes[to].1), output, &tx)
                {
                    failure = Some(e);
                    break;
                }
                pending[part] = Some((to, Instant::now(), timeout_for(part)));
            }
            if failure.is_some() {
                break;
            }
        }
        let finished = self.now();
        self.release(&slots_of, &failed_slots, finished);
        if let Some(e) = failure {
            return Err(e);
        }
        let outputs = outputs
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::device("drac", "a part produced no output")))
            .collect::<Result<Vec<PartOutput>>>()?;
        let output = match in_place {
            Some(buffer) => {
                // Blocks of late or failed runs are dropped: `finish` copies only when a hung
                // node still holds one.
                drop(lendable);
                buffer.finish(outputs)?
            }
            None => {
                let mut tensors = outputs.into_iter().map(|o| match o {
                    PartOutput::Own(Some(t)) => Ok(t),
                    _ => Err(Error::device("drac", "a part produced no output")),
                });
                if whole {
                    tensors
                        .next()
                        .unwrap_or_else(|| Err(Error::device("drac", "the plan has no part")))?
                } else {
                    let pairs = plan
                        .parts
                        .iter()
                        .cloned()
                        .zip(tensors)
                        .map(|(p, t)| t.map(|t| (p, t)))
                        .collect::<Result<Vec<(PartSpec, Tensor)>>>()?;
                    partition::assemble(&req.op, &shapes, pairs)?
                }
            }
        };
        let mut node_use: Vec<NodeUse> = nodes
            .iter()
            .enumerate()
            .map(|(s, (id, ..))| NodeUse {
                id: id.clone(),
                parts: parts_run[s],
                flops: flops_run[s],
                compute_s: compute[s],
                predicted_s: plan
                    .estimates
                    .iter()
                    .filter(|e| plan.parts[e.part].share_index == s)
                    .map(|e| e.compute_s)
                    .sum(),
                energy_j: 0.0,
            })
            .collect();
        let st = self.lock();
        for (s, u) in node_use.iter_mut().enumerate() {
            let spec = &st.slots[slots_of[s]].power.spec;
            u.energy_j = spec.active_w(spec.top_level()) * compute[s];
        }
        drop(st);
        let bytes_in: u64 = plan.parts.iter().map(|p| p.input_bytes).sum();
        let bytes_out: u64 = plan.parts.iter().map(|p| p.output_bytes).sum();
        let transfer_s = plan
            .estimates
            .iter()
            .map(|e| e.transfer_s)
            .fold(0.0, f64::max);
        let deadline_s = req.target.deadline_s();
        let total = finished - submitted;
        let report = Report {
            job,
            tenant: req.tenant.clone(),
            op: req.op.name().to_string(),
            strategy: plan.strategy.to_string(),
            nodes_used: nodes.iter().map(|n| n.0.clone()).collect(),
            energy_j: node_use.iter().map(|u| u.energy_j).sum(),
            nodes: node_use,
            bytes_in,
            bytes_out,
            transfer_s,
            queued_s: started - submitted,
            predicted_s: plan.finish_s - started,
            elapsed_s: finished - started,
            deadline_s,
            deadline_met: deadline_s.map(|d| total <= d),
            moved_parts: moved,
        };
        Ok(JobResult { output, report })
    }

    /// Waits until the job is first in the queue and nodes are free, plans it on the free
    /// nodes, marks them busy and returns the plan, the slots it uses and the start time.
    fn plan_when_free(
        &self,
        job: u64,
        req: &WorkloadRequest,
        shapes: &[&Shape],
    ) -> Result<(super::placement::Placement, Vec<usize>, f64)> {
        let mut st = self.lock();
        loop {
            let head = st.queue_head();
            let free = st.free_slots();
            let alive = st.slots.iter().any(|s| !s.removed && s.failed.is_none());
            if !alive {
                st.queue.retain(|&(_, j)| j != job);
                self.core.changed.notify_all();
                return Err(Error::refused(
                    "every node of the mesh has failed or been removed",
                ));
            }
            if head == Some(job) && !free.is_empty() {
                let now = self.now();
                let hold_off = self.core.config.hold_off_s;
                for &i in &free {
                    settle(&mut st.slots[i].power, now, hold_off, false);
                }
                let candidates: Vec<Candidate> = free
                    .iter()
                    .map(|&i| candidate(&st.slots[i], i, now, false))
                    .collect();
                let preq = PlacementRequest {
                    op: &req.op,
                    shapes,
                    dtype: req.precision,
                    target: req.target,
                    energy_budget_j: req.energy_budget_j,
                    now_s: now,
                };
                let plan =
                    select_optimal_nodes(&preq, &candidates, &st.perf, &st.topo, real_options());
                st.queue.retain(|&(_, j)| j != job);
                let plan = match plan {
                    Ok(p) => p,
                    Err(e) => {
                        self.core.changed.notify_all();
                        return Err(e);
                    }
                };
                let slots_of: Vec<usize> = plan.chosen.iter().map(|&c| free[c]).collect();
                for &i in &slots_of {
                    st.slots[i].take(now);
                }
                self.core.changed.notify_all();
                return Ok((plan, slots_of, now));
            }
            st = self
                .core
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Takes a free working node outside `exclude` for a job whose plan lost all its nodes:
    /// marks it busy and returns its slot, id, device and key.
    fn borrow_free_node(
        &self,
        exclude: &[usize],
    ) -> Option<(usize, String, Arc<FaultyDevice>, String)> {
        let now = self.now();
        let mut st = self.lock();
        let i = st.free_slots().into_iter().find(|i| !exclude.contains(i))?;
        let slot = &mut st.slots[i];
        slot.take(now);
        Some((
            i,
            slot.id.clone(),
            Arc::clone(&slot.device),
            slot.key.clone(),
        ))
    }

    /// Frees the job's nodes, marks the failed ones, and wakes the queue.
    fn release(&self, slots_of: &[usize], failed: &[Option<String>], now: f64) {
        let mut st = self.lock();
        for (s, &i) in slots_of.iter().enumerate() {
            let slot = &mut st.slots[i];
            slot.busy = false;
            slot.power.set(PowerState::Idle, now);
            if let Some(reason) = &failed[s] {
                slot.failed.get_or_insert_with(|| reason.clone());
                slot.power.set(PowerState::Off, now);
            }
        }
        self.core.changed.notify_all();
    }
}

/// The planner options on real nodes: their clocks cannot be set, so no DVFS.
fn real_options() -> PlacementOptions {
    PlacementOptions {
        dvfs: false,
        ..PlacementOptions::default()
    }
}

/// Applies the hold-off: a node idle for longer than `hold_off` has been off since then.
pub(super) fn settle(power: &mut NodePower, now: f64, hold_off: f64, busy: bool) {
    if !busy && power.state() == PowerState::Idle && now - power.since() >= hold_off {
        let off_at = power.since() + hold_off;
        power.set(PowerState::Off, off_at);
    }
}

/// The planner's view of slot `i`.
fn candidate(slot: &Slot, i: usize, now: f64, assume_on: bool) -> Candidate {
    Candidate {
        node: i,
        key: slot.key.clone(),
        memory_bytes: slot.memory,
        power: slot.power.spec.clone(),
        state: if assume_on {
            PowerState::Idle
        } else {
            slot.power.state()
        },
        free_at_s: now,
    }
}

/// Registers node `info` in the model under a key of its own, starting from the calibrated
/// rates of its hardware (several nodes of one kind share a calibration, but each learns its
/// own corrections), and returns that key.
fn instance_key(info: &crate::node::DeviceInfo, perf: &mut PerfModel) -> Result<String> {
    let hardware = PerfModel::node_key(info);
    if !perf.known(&hardware) {
        return Err(Error::spec(
            &info.id,
            "the perf model has no rates for this node (calibrate it first)",
        ));
    }
    let key = format!("{hardware}#{}", info.id);
    if !perf.known(&key) {
        for (k, class, dtype, rate, _) in perf.entries() {
            if k == hardware {
                perf.set_rate(&key, class, dtype, rate);
            }
        }
        if let Some(t) = perf.transfer(&hardware) {
            perf.set_transfer(&key, t);
        }
    }
    Ok(key)
}

fn make_slot(
    dev: &Arc<dyn Device>,
    perf: &mut PerfModel,
    cancel: &Arc<AtomicBool>,
) -> Result<Slot> {
    let info = dev.info();
    if info.kind == DeviceKind::Sim {
        return Err(Error::spec(
            &info.id,
            "simulated nodes model time and compute nothing: run them with `accelmesh simulate`",
        ));
    }
    let key = instance_key(info, perf)?;
    Ok(Slot {
        id: info.id.clone(),
        device: Arc::new(FaultyDevice::new(Arc::clone(dev), Arc::clone(cancel))),
        key,
        memory: info.memory_bytes,
        power: NodePower::new(power_for(info.kind, info.threads), PowerState::Idle, 0.0),
        busy: false,
        failed: None,
        removed: false,
    })
}

/// A line of the slots, each with its measured host link.
fn line_topology(slots: &[Slot], perf: &PerfModel) -> Result<Topology> {
    let mut topo = Topology::new(MeshSpec::line(slots.len().max(1)))?;
    for (i, s) in slots.iter().enumerate() {
        if let Some(TransferRate {
            bytes_per_s,
            latency_s,
        }) = perf.transfer(&s.key)
        {
            topo.set_host_link(
                i,
                LinkSpec {
                    bandwidth_bytes_per_s: bytes_per_s,
                    latency_s,
                },
            );
        }
    }
    Ok(topo)
}
