//! What a user asks the DRAC for: the work (an op and its data, or only its shapes for the
//! simulator), the precision, a performance target, an energy budget, a priority, a tenant.

use std::sync::Arc;

use serde::Serialize;

use crate::op::Op;
use crate::tensor::{DType, Shape, Tensor};
use crate::{Conv2dParams, Error, Result};

/// The performance a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Finish within this many seconds of submission, with the fewest, most efficient nodes.
    Deadline(f64),
    /// Finish as soon as possible, with as many nodes as still pay off.
    MinLatency,
    /// Sustain this many jobs per second (planned as a deadline of one period).
    Throughput(f64),
}

impl Target {
    /// The deadline in seconds after submission this target implies, if any.
    pub fn deadline_s(&self) -> Option<f64> {
        match *self {
            Target::Deadline(s) => Some(s),
            Target::Throughput(rate) => Some(1.0 / rate),
            Target::MinLatency => None,
        }
    }
}

/// The data of a request: real tensors, or only shapes (simulated runs).
#[derive(Debug, Clone)]
pub enum Payload {
    /// Input tensors, in the op's input order (shared, so repeated requests do not copy).
    Data(Arc<Vec<Tensor>>),
    /// Input shapes only; the job is modelled, not computed.
    Shapes(Vec<Shape>),
}

/// One job for the DRAC.
#[derive(Debug, Clone)]
pub struct WorkloadRequest {
    /// The operation.
    pub op: Op,
    /// Its inputs.
    pub payload: Payload,
    /// Element type the inputs are computed in (inputs of another dtype are converted).
    pub precision: DType,
    /// The performance target.
    pub target: Target,
    /// Most joules the job may use, if bounded.
    pub energy_budget_j: Option<f64>,
    /// Higher runs first when jobs wait for nodes.
    pub priority: u8,
    /// Who asked (for accounting).
    pub tenant: String,
}

impl WorkloadRequest {
    /// A request for `op` on `inputs`, minimum latency, priority 0, tenant `default`.
    pub fn new(op: Op, inputs: Vec<Tensor>) -> WorkloadRequest {
        let precision = inputs.first().map_or(DType::F32, Tensor::dtype);
        WorkloadRequest {
            op,
            payload: Payload::Data(Arc::new(inputs)),
            precision,
            target: Target::MinLatency,
            energy_budget_j: None,
            priority: 0,
            tenant: "default".to_string(),
        }
    }

    /// A modelled request: `op` on inputs of `shapes`, not computed.
    pub fn modelled(op: Op, shapes: Vec<Shape>, precision: DType) -> WorkloadRequest {
        WorkloadRequest {
            op,
            payload: Payload::Shapes(shapes),
            precision,
            target: Target::MinLatency,
            energy_budget_j: None,
            priority: 0,
            tenant: "default".to_string(),
        }
    }

    /// `A·B` (no transposes).
    pub fn matmul(a: Tensor, b: Tensor) -> WorkloadRequest {
        WorkloadRequest::new(Op::matmul(), vec![a, b])
    }

    /// A convolution of `x` (NCHW) with `w` (OIHW) and an optional bias.
    pub fn conv2d(
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        params: Conv2dParams,
    ) -> WorkloadRequest {
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        WorkloadRequest::new(Op::Conv2d(params), inputs)
    }

    /// A request for `op` on shared inputs (no copy).
    pub fn shared(op: Op, inputs: Arc<Vec<Tensor>>) -> WorkloadRequest {
        let mut req = WorkloadRequest::new(op, Vec::new());
        req.precision = inputs.first().map_or(DType::F32, Tensor::dtype);
        req.payload = Payload::Data(inputs);
        req
    }

    /// Sets the target.
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Sets the precision.
    pub fn with_precision(mut self, precision: DType) -> Self {
        self.precision = precision;
        self
    }

    /// Sets the energy budget in joules.
    pub fn with_energy_budget(mut self, joules: f64) -> Self {
        self.energy_budget_j = Some(joules);
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// The input shapes.
    pub fn shapes(&self) -> Vec<&Shape> {
        match &self.payload {
            Payload::Data(t) => t.iter().map(Tensor::shape).collect(),
            Payload::Shapes(s) => s.iter().collect(),
        }
    }

    /// Checks the request: shapes valid for the op, target and budget positive and finite.
    pub fn validate(&self) -> Result<()> {
        self.op.output_shape(&self.shapes())?;
        let bad = |what: &'static str, v: f64| {
            Err(Error::parse(
                what,
                v.to_string(),
                "must be positive and finite",
            ))
        };
        match self.target {
            Target::Deadline(s) if !(s.is_finite() && s > 0.0) => return bad("deadline", s),
            Target::Throughput(r) if !(r.is_finite() && r > 0.0) => return bad("throughput", r),
            _ => {}
        }
        if let Some(e) = self.energy_budget_j
            && !(e.is_finite() && e > 0.0)
        {
            return bad("energy budget", e);
        }
        Ok(())
    }
}
