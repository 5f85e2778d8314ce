//! What a finished job reports: its plan, the time and energy of each node, the transfers,
//! the parts moved off failed nodes, and whether the target was met.

use serde::Serialize;

/// One node's share of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeUse {
    /// Node id.
    pub id: String,
    /// Parts it ran.
    pub parts: usize,
    /// Floating-point operations of the parts it ran.
    pub flops: u64,
    /// Seconds it computed (wall time of its parts).
    pub compute_s: f64,
    /// Seconds the planner predicted for them.
    pub predicted_s: f64,
    /// Modelled joules of its parts.
    pub energy_j: f64,
}

/// A part moved off a failed node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MovedPart {
    /// Index of the part in the plan.
    pub part: usize,
    /// The node it failed on.
    pub from: String,
    /// The node that ran it instead.
    pub to: String,
    /// What went wrong.
    pub reason: String,
}

/// The record of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Job number within the controller.
    pub job: u64,
    /// Who asked.
    pub tenant: String,
    /// The op's name.
    pub op: String,
    /// How the work was split.
    pub strategy: String,
    /// Ids of the nodes the plan used.
    pub nodes_used: Vec<String>,
    /// Per-node time and energy.
    pub nodes: Vec<NodeUse>,
    /// Bytes sent to the nodes.
    pub bytes_in: u64,
    /// Bytes returned by the nodes.
    pub bytes_out: u64,
    /// Predicted seconds of the transfers on the mesh model.
    pub transfer_s: f64,
    /// Seconds spent waiting for free nodes.
    pub queued_s: f64,
    /// Seconds the planner predicted from start to finish.
    pub predicted_s: f64,
    /// Seconds from start to finish (after the queue).
    pub elapsed_s: f64,
    /// Modelled joules of the job (compute and wake-ups).
    pub energy_j: f64,
    /// The deadline in seconds after submission, if the target had one.
    pub deadline_s: Option<f64>,
    /// Whether the deadline was met (`None` without one).
    pub deadline_met: Option<bool>,
    /// Parts re-planned onto surviving nodes.
    pub moved_parts: Vec<MovedPart>,
}
