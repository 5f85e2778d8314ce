//! Even static splitting of one op over several nodes, until the DRAC's scheduler lands:
//! matmul by output rows; conv2d by batch when N ≥ nodes, else by output channels (whole
//! groups when grouped). Parts run concurrently, one thread per node. The elementwise,
//! pooling and normalisation ops are not split: they run whole on the first node.

use std::ops::Range;
use std::sync::Arc;

use crate::node::{Device, NodeSet};
use crate::op::{Op, conv2d_dims, matmul_dims};
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// One node's share: the op it runs and the inputs it runs it on.
struct Part<'a> {
    op: Op,
    inputs: Vec<PartInput<'a>>,
}

/// An input of a part: the caller's tensor, or a slice of it copied out.
enum PartInput<'a> {
    Shared(&'a Tensor),
    Owned(Tensor),
}

impl PartInput<'_> {
    fn get(&self) -> &Tensor {
        match self {
            PartInput::Shared(t) => t,
            PartInput::Owned(t) => t,
        }
    }
}

/// `total` split into at most `parts` contiguous, non-empty ranges whose sizes differ by ≤ 1.
pub fn even_ranges(total: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.min(total).max(1);
    let (base, extra) = (total / parts, total % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// Runs `op` on `inputs` split evenly over every node of `nodes` and returns the assembled
/// (single) output; with one node it simply executes there.
pub fn execute_split(nodes: &NodeSet, op: &Op, inputs: &[&Tensor]) -> Result<Tensor> {
    let devices = nodes.devices();
    if devices.len() == 1 {
        return first_output(devices[0].as_ref(), devices[0].execute(op, inputs)?);
    }
    let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
    let (parts, dim) = match op {
        Op::MatMul { trans_a, trans_b } => {
            let d = matmul_dims(*trans_a, *trans_b, &shapes)?;
            // Output rows are rows of A, or columns of A when A is stored transposed.
            let a_dim = usize::from(*trans_a);
            let parts = even_ranges(d.m, devices.len())
                .into_iter()
                .map(|rows| {
                    Ok(Part {
                        op: op.clone(),
                        inputs: vec![
                            PartInput::Owned(inputs[0].narrow(a_dim, rows.start, rows.len())?),
                            PartInput::Shared(inputs[1]),
                        ],
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (parts, 0)
        }
        Op::Conv2d(params) => {
            let d = conv2d_dims(params, &shapes)?;
            let [n, c, _, _] = d.input;
            let o = d.weight[0];
            if n >= devices.len() {
                let parts = even_ranges(n, devices.len())
                    .into_iter()
                    .map(|batch| {
                        let mut part_inputs = vec![PartInput::Owned(inputs[0].narrow(
                            0,
                            batch.start,
                            batch.len(),
                        )?)];
                        part_inputs.extend(inputs[1..].iter().map(|t| PartInput::Shared(t)));
                        Ok(Part {
                            op: op.clone(),
                            inputs: part_inputs,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (parts, 0)
            } else {
                // Split whole groups: a part of g groups sees their input channels only.
                let groups = params.groups.max(1);
                let (units, out_per_unit, in_per_unit) = if groups == 1 {
                    (o, 1, c)
                } else {
                    (groups, o / groups, c / groups)
                };
                let parts = even_ranges(units, devices.len())
                    .into_iter()
                    .map(|u| {
                        let mut part_params = params.clone();
                        let x = if groups == 1 {
                            PartInput::Shared(inputs[0])
                        } else {
                            part_params.groups = u.len();
                            PartInput::Owned(inputs[0].narrow(
                                1,
                                u.start * in_per_unit,
                                u.len() * in_per_unit,
                            )?)
                        };
                        let (o0, olen) = (u.start * out_per_unit, u.len() * out_per_unit);
                        let mut part_inputs =
                            vec![x, PartInput::Owned(inputs[1].narrow(0, o0, olen)?)];
                        if let Some(bias) = inputs.get(2) {
                            part_inputs.push(PartInput::Owned(bias.narrow(0, o0, olen)?));
                        }
                        Ok(Part {
                            op: Op::Conv2d(part_params),
                            inputs: part_inputs,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (parts, 1)
            }
        }
        // Elementwise, pooling and normalisation ops are cheap next to their transfers:
        // splitting them is left to the DRAC; they run whole on the first node.
        _ => {
            let dev = devices[0].as_ref();
            return first_output(dev, dev.execute(op, inputs)?);
        }
    };
    let outputs = run_parts(devices, &parts)?;
    let refs: Vec<&Tensor> = outputs.iter().collect();
    Tensor::concat(&refs, dim)
}

/// Runs part i on device i, all concurrently (part 0 on the calling thread), and returns
/// their outputs in order.
fn run_parts(devices: &[Arc<dyn Device>], parts: &[Part<'_>]) -> Result<Vec<Tensor>> {
    let run = |dev: &dyn Device, part: &Part<'_>| {
        let inputs: Vec<&Tensor> = part.inputs.iter().map(PartInput::get).collect();
        first_output(dev, dev.execute(&part.op, &inputs)?)
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .zip(parts)
            .skip(1)
            .map(|(dev, part)| {
                let handle = scope.spawn(move || run(dev.as_ref(), part));
                (dev.info().id.clone(), handle)
            })
            .collect();
        let first = run(devices[0].as_ref(), &parts[0]);
        let mut outputs = vec![first?];
        for (id, handle) in handles {
            let output = handle
                .join()
                .map_err(|_| Error::device(id, "worker thread panicked while executing"))?;
            outputs.push(output?);
        }
        Ok(outputs)
    })
}

/// The single output of an op, or a device error if there is none.
fn first_output(dev: &dyn Device, outputs: Vec<Tensor>) -> Result<Tensor> {
    outputs
        .into_iter()
        .next()
        .ok_or_else(|| Error::device(&dev.info().id, "op returned no output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_evenly() {
        assert_eq!(even_ranges(7, 3), [0..3, 3..5, 5..7]);
        assert_eq!(even_ranges(2, 4), [0..1, 1..2]);
        let empty = even_ranges(0, 4);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].is_empty());
    }
}
