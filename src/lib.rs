//! accelmesh: a runtime that turns every compute device of a machine into an AI node of one
//! mesh, with a benchmark harness on top.
//!
//! Today: host [`Tensor`]s, [`Op`] descriptors, CPU nodes behind the [`Device`] trait, and the
//! benchmark harness of the `accelmesh` command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod drac;
pub mod error;
pub mod job;
pub mod mesh;
pub mod model;
pub mod node;
pub mod onnx;
pub mod op;
pub mod tensor;

pub use error::{Error, Result};
pub use model::{Model, ModelReport, ModelRun, RunOptions};
pub use node::{CpuDevice, Device, DeviceInfo, DeviceKind, NodeSet, NodeSpec};
pub use op::Op;
pub use tensor::{DType, Shape, Tensor, TensorData, TensorElement, TensorView, ViewData};

/// The convolution parameters of [`Op::Conv2d`], re-exported from the kernels.
pub use accelmesh_kernels::conv::Conv2dParams;
