//! What a model run reports: where its samples ran, each node's time and energy, the parts
//! moved off failed nodes, and the predicted against the measured time.

use serde::Serialize;

use super::plan::Strategy;
use crate::drac::{MovedPart, NodeUse};

/// One part of a run: a node and the samples it ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartReport {
    /// The node that ran it (after any move).
    pub node: String,
    /// First sample.
    pub first_sample: usize,
    /// Samples it held.
    pub samples: usize,
    /// Seconds the planner predicted.
    pub predicted_s: f64,
    /// Seconds it took on the node that finished it.
    pub elapsed_s: f64,
}

/// The record of one model run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    /// Job number within the controller.
    pub job: u64,
    /// The model's name.
    pub model: String,
    /// Whole, data parallel or channel split.
    pub strategy: Strategy,
    /// Samples in the request.
    pub samples: usize,
    /// Ids of the nodes that ran parts.
    pub nodes_used: Vec<String>,
    /// The parts in sample order.
    pub parts: Vec<PartReport>,
    /// Per-node time and energy.
    pub nodes: Vec<NodeUse>,
    /// Seconds waiting for free nodes.
    pub queued_s: f64,
    /// Seconds the plan predicted.
    pub predicted_s: f64,
    /// Seconds from the nodes' lease to the joined outputs.
    pub elapsed_s: f64,
    /// Modelled joules of the leased nodes over the run.
    pub energy_j: f64,
    /// Parts moved off failed nodes.
    pub moved_parts: Vec<MovedPart>,
}
