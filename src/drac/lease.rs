//! Leases: nodes held by a multi-step job (a model's whole graph) rather than by one op.
//!
//! A model job cannot be cut into the controller's op parts, so it takes its nodes on lease:
//! it waits its turn in the same priority queue as op jobs, a chooser it supplies picks among
//! the free working nodes (with the perf model at hand), the nodes go Active and busy for the
//! lease's life, and they return to Idle (or stay failed) when the lease ends. Energy is the
//! controller's own power accounting, so model jobs and op jobs share one ledger.

use std::sync::Arc;

use super::controller::{Drac, settle};
use super::perf_model::PerfModel;
use super::power::{PowerSpec, PowerState};
use crate::node::{Device, DeviceKind};
use crate::{Error, Result};

/// A free working node, as a lease's chooser sees it.
#[derive(Debug, Clone)]
pub struct NodeOffer {
    /// Node id.
    pub id: String,
    /// Its key in the perf model.
    pub key: String,
    /// Its kind.
    pub kind: DeviceKind,
    /// Its memory in bytes.
    pub memory_bytes: u64,
    /// Its power figures.
    pub power: PowerSpec,
    /// Its power state now (Off nodes pay a wake-up).
    pub state: PowerState,
}

/// A node held by a lease.
#[derive(Clone)]
pub struct LeasedNode {
    /// Node id.
    pub id: String,
    /// Its key in the perf model.
    pub key: String,
    /// The device (with the controller's fault injection in front of it).
    pub device: Arc<dyn Device>,
    /// Its power figures.
    pub power: PowerSpec,
}

/// Nodes held for one job until the lease is dropped or released.
pub struct Lease {
    drac: Drac,
    job: u64,
    slots: Vec<usize>,
    nodes: Vec<LeasedNode>,
    failed: Vec<Option<String>>,
    released: bool,
}

impl Drac {
    /// The controller's settings (time-outs, hold-off).
    pub fn config(&self) -> &super::DracConfig {
        &self.core.config
    }

    /// Waits, in priority order with the op jobs, until working nodes are free, then leases
    /// the ones `choose` picks (indices into the offers it is given; at least one). A chooser
    /// error ends the wait with that error; a mesh with no working node is refused.
    pub fn lease<F>(&self, priority: u8, mut choose: F) -> Result<Lease>
    where
        F: FnMut(&[NodeOffer], &PerfModel) -> Result<Vec<usize>>,
    {
        let mut st = self.lock();
        let job = st.next_job;
        st.next_job += 1;
        st.queue.push((priority, job));
        loop {
            let head = st.queue_head();
            let alive = st.slots.iter().any(|s| !s.removed && s.failed.is_none());
            if !alive {
                st.queue.retain(|&(_, j)| j != job);
                self.core.changed.notify_all();
                return Err(Error::refused(
                    "every node of the mesh has failed or been removed (or the mesh is empty)",
                ));
            }
            let free = st.free_slots();
            if head == Some(job) && !free.is_empty() {
                let now = self.now();
                let hold_off = self.core.config.hold_off_s;
                for &i in &free {
                    settle(&mut st.slots[i].power, now, hold_off, false);
                }
                let offers: Vec<NodeOffer> = free
                    .iter()
                    .map(|&i| {
                        let s = &st.slots[i];
                        NodeOffer {
                            id: s.id.clone(),
                            key: s.key.clone(),
                            kind: s.device.info().kind,
                            memory_bytes: s.memory,
                            power: s.power.spec.clone(),
                            state: s.power.state(),
                        }
                    })
                    .collect();
                st.queue.retain(|&(_, j)| j != job);
                let chosen = match choose(&offers, &st.perf) {
                    Ok(c) => c,
                    Err(e) => {
                        self.core.changed.notify_all();
                        return Err(e);
                    }
                };
                if chosen.is_empty() || chosen.iter().any(|&c| c >= offers.len()) {
                    self.core.changed.notify_all();
                    return Err(Error::refused(format!(
                        "the lease chooser picked {chosen:?} among {} free nodes",
                        offers.len()
                    )));
                }
                let mut slots = Vec::new();
                let mut nodes = Vec::new();
                for &c in &chosen {
                    let i = free[c];
                    if slots.contains(&i) {
                        continue;
                    }
                    let slot = &mut st.slots[i];
                    slot.take(now);
                    slots.push(i);
                    nodes.push(LeasedNode {
                        id: slot.id.clone(),
                        key: slot.key.clone(),
                        device: Arc::clone(&slot.device) as Arc<dyn Device>,
                        power: slot.power.spec.clone(),
                    });
                }
                self.core.changed.notify_all();
                let failed = vec![None; nodes.len()];
                return Ok(Lease {
                    drac: self.clone(),
                    job,
                    slots,
                    nodes,
                    failed,
                    released: false,
                });
            }
            st = self
                .core
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Lease {
    /// The job number the lease holds its nodes for.
    pub fn job(&self) -> u64 {
        self.job
    }

    /// The leased nodes, in the chooser's order.
    pub fn nodes(&self) -> &[LeasedNode] {
        &self.nodes
    }

    /// Marks leased node `index` failed: it leaves the mesh's working set when the lease ends.
    pub fn mark_failed(&mut self, index: usize, reason: impl Into<String>) {
        if let Some(f) = self.failed.get_mut(index) {
            f.get_or_insert_with(|| reason.into());
        }
    }

    /// Whether leased node `index` was marked failed.
    pub fn is_failed(&self, index: usize) -> bool {
        self.failed.get(index).is_some_and(Option::is_some)
    }

    /// Sets leased node `index`'s power state (Idle once its work is done, so the ledger
    /// charges idle power while it waits for the rest of the job).
    pub fn set_state(&self, index: usize, state: PowerState) {
        let Some(&i) = self.slots.get(index) else {
            return;
        };
        let now = self.drac.now();
        let mut st = self.drac.lock();
        st.slots[i].power.set(state, now);
    }

    /// Takes one more free working node into the lease (to move work off a failed one);
    /// returns its index among the leased nodes, or `None` when no node is free.
    pub fn borrow_more(&mut self) -> Option<usize> {
        let now = self.drac.now();
        let mut st = self.drac.lock();
        let i = st
            .free_slots()
            .into_iter()
            .find(|i| !self.slots.contains(i))?;
        let slot = &mut st.slots[i];
        slot.take(now);
        self.slots.push(i);
        self.nodes.push(LeasedNode {
            id: slot.id.clone(),
            key: slot.key.clone(),
            device: Arc::clone(&slot.device) as Arc<dyn Device>,
            power: slot.power.spec.clone(),
        });
        self.failed.push(None);
        Some(self.nodes.len() - 1)
    }

    /// Ends the lease: the nodes go Idle (failed ones Off and out of the working set) and
    /// the queue wakes.
    pub fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let now = self.drac.now();
        let mut st = self.drac.lock();
        for (k, &i) in self.slots.iter().enumerate() {
            let slot = &mut st.slots[i];
            slot.busy = false;
            slot.power.set(PowerState::Idle, now);
            if let Some(reason) = &self.failed[k] {
                slot.failed.get_or_insert_with(|| reason.clone());
                slot.power.set(PowerState::Off, now);
            }
        }
        self.drac.core.changed.notify_all();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.finish();
    }
}
