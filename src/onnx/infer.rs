//! Running a model on the mesh: the DRAC's perf model picks the node (today the whole model
//! runs on the node predicted fastest for its convolutions and matrix products), inputs come
//! from `.pb` files or are seeded random tensors of the declared shapes, and the run reports
//! latency, throughput, the node used and the modelled energy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::exec::Session;
use super::model::{Dim, ElemType, ValueInfo};
use super::value::Value;
use crate::drac::perf_model::{OpClass, PerfModel};
use crate::drac::power::PowerSpec;
use crate::node::{Device, DeviceKind, NodeSet};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Seed of the random inputs `infer` makes when none are given.
pub const INPUT_SEED: u64 = 0x0A11_0001;

/// What one `infer` run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferReport {
    /// Median seconds of one run, in milliseconds.
    pub latency_ms: f64,
    /// Samples per second (batch / latency).
    pub throughput_per_s: f64,
    /// Nodes the model ran on.
    pub nodes_used: usize,
    /// Their ids.
    pub nodes: Vec<String>,
    /// Modelled joules of one run.
    pub energy_j: f64,
    /// Timed runs.
    pub reps: usize,
    /// The batch size.
    pub batch: usize,
}

/// The input shape a declared input takes: known dims as they are, the first unknown or
/// symbolic dim is the batch, other unknown dims 1.
pub fn input_shape(info: &ValueInfo, batch: usize) -> Vec<usize> {
    let dims = info.dims.clone().unwrap_or_default();
    let mut batch_used = false;
    dims.iter()
        .enumerate()
        .map(|(i, d)| match d {
            // A declared batch of 1 is scaled to the batch asked for.
            Dim::Known(1) if i == 0 && batch > 1 => {
                batch_used = true;
                batch
            }
            Dim::Known(n) => *n,
            _ if !batch_used => {
                batch_used = true;
                batch
            }
            _ => 1,
        })
        .collect()
}

/// Seeded random values for every graph input of `session` (floats in [-1, 1), integer
/// inputs zero).
pub fn random_inputs(session: &Session, batch: usize) -> Result<HashMap<String, Value>> {
    let mut inputs = HashMap::new();
    for (i, info) in session.inputs().iter().enumerate() {
        let shape = input_shape(info, batch);
        let value = match info.elem_type {
            ElemType::Float | ElemType::Double => {
                Value::Float(Tensor::random(shape, DType::F32, INPUT_SEED + i as u64)?)
            }
            ElemType::Float16 => {
                Value::Float(Tensor::random(shape, DType::F16, INPUT_SEED + i as u64)?)
            }
            ElemType::BFloat16 => {
                Value::Float(Tensor::random(shape, DType::BF16, INPUT_SEED + i as u64)?)
            }
            ElemType::Int64 | ElemType::Int32 => {
                let n = shape.iter().product();
                Value::ints(shape, vec![0; n])?
            }
            other => {
                return Err(Error::dtype(
                    "infer",
                    format!(
                        "input `{}` has element type {other:?}, which cannot be generated",
                        info.name
                    ),
                ));
            }
        };
        inputs.insert(info.name.clone(), value);
    }
    Ok(inputs)
}

/// The node predicted fastest for the model's heavy ops (GPUs need a calibrated rate; nodes
/// the model does not know rank last).
pub fn best_node(nodes: &NodeSet, perf: &PerfModel) -> Result<Arc<dyn Device>> {
    let flops = 1u64 << 30;
    nodes
        .devices()
        .iter()
        .filter(|d| d.info().kind != DeviceKind::Sim)
        .min_by(|a, b| {
            let t = |d: &Arc<dyn Device>| {
                perf.predict_flops(
                    &PerfModel::node_key(d.info()),
                    OpClass::Conv2d,
                    DType::F32,
                    flops,
                )
                .unwrap_or(f64::INFINITY)
            };
            t(a).total_cmp(&t(b))
        })
        .cloned()
        .ok_or_else(|| {
            Error::spec(
                nodes.label(),
                "no node can run a model (simulated nodes only)",
            )
        })
}

/// Runs `session` `reps` times on the best node of `nodes` (after one warm-up run) and
/// returns the last outputs with the report.
pub fn infer(
    session: &Session,
    nodes: &NodeSet,
    perf: &PerfModel,
    inputs: &HashMap<String, Value>,
    batch: usize,
    reps: usize,
) -> Result<(HashMap<String, Value>, InferReport)> {
    if reps == 0 {
        return Err(Error::parse("repetition count", "0", "must be at least 1"));
    }
    let device = best_node(nodes, perf)?;
    let mut outputs = session.run(device.as_ref(), inputs)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        outputs = session.run(device.as_ref(), inputs)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let latency = crate::bench::median(&times);
    let info = device.info();
    let power = match info.kind {
        DeviceKind::Gpu => PowerSpec::gpu(),
        _ => PowerSpec::cpu(info.threads.unwrap_or(1)),
    };
    let report = InferReport {
        latency_ms: latency * 1e3,
        throughput_per_s: if latency > 0.0 {
            batch as f64 / latency
        } else {
            0.0
        },
        nodes_used: 1,
        nodes: vec![info.id.clone()],
        energy_j: power.active_w(power.top_level()) * latency,
        reps,
        batch,
    };
    Ok((outputs, report))
}

/// A file name for an output: the output's name with every character other than letters,
/// digits, `_`, `-` and `.` replaced by `_`, and `.pb` appended.
pub fn output_file_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}.pb")
}

/// Writes every output to `dir/<output name>.pb` (see [`output_file_name`]).
pub fn write_outputs(
    dir: &Path,
    session: &Session,
    outputs: &HashMap<String, Value>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in session.output_names() {
        let value = outputs.get(&name).ok_or_else(|| {
            Error::shape("infer", format!("the model produced no output `{name}`"))
        })?;
        super::tensor_proto::write_tensor_pb(&dir.join(output_file_name(&name)), &name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::output_file_name;

    #[test]
    fn output_names_become_safe_file_names() {
        assert_eq!(output_file_name("prob_1"), "prob_1.pb");
        assert_eq!(output_file_name("out:0/x y"), "out_0_x_y.pb");
        assert_eq!(output_file_name("a.b-c"), "a.b-c.pb");
    }
}
