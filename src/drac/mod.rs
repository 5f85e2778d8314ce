//! The DRAC (dynamic resource allocation controller): turns workload requests into plans —
//! how many nodes, which ones, how the tensors are split, how data moves — and runs them.

pub mod controller;
pub mod fault;
pub mod lease;
mod part_run;
pub mod partition;
pub mod perf_model;
pub mod placement;
pub mod power;
pub mod report;
pub mod request;
pub mod sim;

pub use controller::{Drac, DracConfig, JobHandle, JobResult};
pub use fault::{Fault, FaultKind, FaultyDevice};
pub use lease::{Lease, LeasedNode, NodeOffer};
pub use report::{MovedPart, NodeUse, Report};
pub use request::{Payload, Target, WorkloadRequest};
