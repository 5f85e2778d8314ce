//! The `infer` command's library side: inputs from `.pb` files or seeded random tensors of the
//! declared shapes, timed runs of a [`Model`] on the DRAC's nodes, and outputs written as
//! TensorProto files; the run reports latency, throughput, the nodes used and the energy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::exec::Session;
use super::model::{Dim, ElemType, ValueInfo};
use super::value::Value;
use crate::bench::warm_up;
use crate::drac::Drac;
use crate::model::{Model, RunOptions};
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
    /// How the DRAC placed the runs (`whole` or `data-parallel`).
    pub strategy: String,
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

/// Runs `model` on `drac`'s nodes `reps` times (after the warm-up of [`warm_up`]) and returns the
/// last run's outputs with the report of the run of median time; the DRAC places each run
/// (whole on the fastest node, or the batch split across nodes).
pub fn infer(
    model: &Model,
    drac: &Drac,
    inputs: &HashMap<String, Value>,
    reps: usize,
) -> Result<(HashMap<String, Value>, InferReport)> {
    infer_paced(model, drac, inputs, reps, || Ok(0), |_| Ok(()))
}

/// [`infer`] with `before` called ahead of each timed run (it may block until the run is to
/// start, and returns how many untimed runs go first) and `after` with each timed run's
/// seconds: lets a benchmark alternate this engine with another one run by run, so that both
/// meet the same phases of a shared machine, each timed run following runs of its own engine.
pub fn infer_paced(
    model: &Model,
    drac: &Drac,
    inputs: &HashMap<String, Value>,
    reps: usize,
    mut before: impl FnMut() -> Result<usize>,
    mut after: impl FnMut(f64) -> Result<()>,
) -> Result<(HashMap<String, Value>, InferReport)> {
    if reps == 0 {
        return Err(Error::parse("repetition count", "0", "must be at least 1"));
    }
    let options = RunOptions::default();
    let inputs = Arc::new(inputs.clone());
    warm_up(|_| model.run_shared(drac, &inputs, &options))?;
    // Each run's time and report; only the latest outputs are kept (every run computes them
    // from the same inputs), so a large output does not pile up over the repetitions, and
    // the next run can take the memory of the one before.
    let mut runs = Vec::with_capacity(reps);
    let mut outputs = HashMap::new();
    for _ in 0..reps {
        for _ in 0..before()? {
            model.run_shared(drac, &inputs, &options)?;
        }
        drop(std::mem::take(&mut outputs));
        let start = Instant::now();
        let run = model.run_shared(drac, &inputs, &options)?;
        let seconds = start.elapsed().as_secs_f64();
        after(seconds)?;
        runs.push((seconds, run.report));
        outputs = run.outputs;
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (latency, median) = runs.swap_remove(runs.len() / 2);
    let batch = median.samples;
    let report = InferReport {
        latency_ms: latency * 1e3,
        throughput_per_s: if latency > 0.0 {
            batch as f64 / latency
        } else {
            0.0
        },
        nodes_used: median.nodes_used.len(),
        nodes: median.nodes_used,
        strategy: median.strategy.to_string(),
        energy_j: median.energy_j,
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
