//! Running one part of a plan on a node, and where its output goes: a tensor of its own, or
//! its block of the job's output buffer, which the parts then fill in place (no gather copy).

use std::ops::Range;
use std::time::Instant;

use accelmesh_kernels::buffer::{Chunk, ChunkedBuf};

use super::fault::FaultyDevice;
use super::partition::{self, PartSpec};
use crate::node::Device;
use crate::tensor::{Shape, Tensor, TensorData, TensorView, try_zeros_f32};
use crate::{Error, Result};

/// Where a part writes its output.
pub(super) enum PartOutput {
    /// A tensor of its own: `Some` holds an old output to overwrite (or, after a run, the
    /// result).
    Own(Option<Tensor>),
    /// Its block of the job's output buffer.
    Placed(Chunk),
}

/// Runs `part` of a job over `inputs` on `device` into `output`; returns the seconds it took
/// (or the error) and the output, which comes back even on error so its block can be lent
/// again. `whole` says the part is the whole op on the job's own inputs (only ever run into a
/// tensor of its own).
pub(super) fn run_part(
    device: &FaultyDevice,
    part: &PartSpec,
    inputs: &[Tensor],
    whole: bool,
    output: PartOutput,
) -> (Result<f64>, PartOutput) {
    let start = Instant::now();
    let seconds = || start.elapsed().as_secs_f64();
    match output {
        PartOutput::Placed(mut chunk) => {
            let result = run_placed(device, part, inputs, chunk.as_mut_slice());
            (result.map(|()| seconds()), PartOutput::Placed(chunk))
        }
        PartOutput::Own(reuse) => match run_owned(device, part, inputs, whole, reuse) {
            Ok(tensor) => (Ok(seconds()), PartOutput::Own(Some(tensor))),
            Err(e) => (Err(e), PartOutput::Own(None)),
        },
    }
}

/// The part into `out`, reading its slices of `inputs` in place where they are contiguous.
fn run_placed(
    device: &FaultyDevice,
    part: &PartSpec,
    inputs: &[Tensor],
    out: &mut [f32],
) -> Result<()> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    if let Some(views) = partition::input_views(part, &refs)? {
        return device.execute_view(&part.op, &views, out);
    }
    // A strided slice (columns, a K range, halo rows): cut copies of those.
    let cuts = partition::extract_slices(part, &refs)?;
    let views: Vec<TensorView<'_>> = with_cuts(&cuts, &refs)
        .into_iter()
        .map(Tensor::view)
        .collect();
    device.execute_view(&part.op, &views, out)
}

/// The part into a tensor of its own (`reuse` when it is the whole op and the right shape).
fn run_owned(
    device: &FaultyDevice,
    part: &PartSpec,
    inputs: &[Tensor],
    whole: bool,
    reuse: Option<Tensor>,
) -> Result<Tensor> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let cuts = if whole {
        vec![None; refs.len()]
    } else {
        partition::extract_slices(part, &refs)?
    };
    let part_inputs = with_cuts(&cuts, &refs);
    if let Some(out) = reuse
        && whole
        && out.shape() == &part.output_shape
    {
        let mut outs = [out];
        device.execute_into(&part.op, &part_inputs, &mut outs)?;
        let [out] = outs;
        return Ok(out);
    }
    let mut v = device.execute(&part.op, &part_inputs)?;
    if v.is_empty() {
        return Err(Error::device(
            device.info().id.clone(),
            "returned no output",
        ));
    }
    Ok(v.swap_remove(0))
}

/// The part's inputs: its cut copies where `extract_slices` made them, the job's own tensors
/// otherwise.
fn with_cuts<'a>(cuts: &'a [Option<Tensor>], inputs: &[&'a Tensor]) -> Vec<&'a Tensor> {
    cuts.iter()
        .zip(inputs)
        .map(|(cut, &t)| cut.as_ref().unwrap_or(t))
        .collect()
}

/// How the parts of a plan deliver their outputs.
pub(super) enum OutputPlan {
    /// Into one output buffer, each part lent its block.
    InPlace(InPlaceOutput, Vec<Chunk>),
    /// Into tensors of their own, gathered afterwards (with an old output to reuse, if any).
    Apart(Option<Tensor>),
}

impl OutputPlan {
    /// Cuts the output of `parts` into their blocks when each is one contiguous run of it,
    /// taking `reuse`'s memory when it is an f32 tensor of the output's size; `Apart` (with
    /// `reuse` back) when the blocks are strided or overlap.
    pub(super) fn for_parts(parts: &[PartSpec], reuse: Option<Tensor>) -> Result<OutputPlan> {
        let Some((shape, runs)) = partition::output_runs(parts) else {
            return Ok(OutputPlan::Apart(reuse));
        };
        let numel = shape.numel()?;
        let buffer = match reuse.map(Tensor::into_data) {
            Some(TensorData::F32(v)) if v.len() == numel => v,
            _ => try_zeros_f32(numel)?,
        };
        Ok(match ChunkedBuf::split(buffer, &runs) {
            Some((buffer, chunks)) => OutputPlan::InPlace(
                InPlaceOutput {
                    buffer,
                    shape,
                    runs,
                },
                chunks,
            ),
            None => OutputPlan::Apart(None),
        })
    }
}

/// The job's output buffer, cut into one block per part.
pub(super) struct InPlaceOutput {
    buffer: ChunkedBuf,
    shape: Shape,
    runs: Vec<Range<usize>>,
}

impl InPlaceOutput {
    /// The whole output from the parts' `outputs` (in part order: their blocks, or tensors of
    /// their own for parts moved after their block was lost with a hung node); without a copy
    /// unless a hung node still holds a block.
    pub(super) fn finish(self, outputs: Vec<PartOutput>) -> Result<Tensor> {
        let mut chunks = Vec::new();
        let mut own = Vec::new();
        for (run, output) in self.runs.iter().zip(outputs) {
            match output {
                PartOutput::Placed(chunk) => chunks.push(chunk),
                PartOutput::Own(Some(tensor)) => own.push((run.clone(), tensor)),
                PartOutput::Own(None) => {
                    return Err(Error::device("drac", "a part produced no output"));
                }
            }
        }
        let lent = chunks.len();
        let mut data = match self.buffer.join(chunks) {
            Ok(data) => data,
            Err((_, chunks)) if chunks.len() < lent => {
                return Err(Error::device(
                    "drac",
                    "the output's blocks could not be joined",
                ));
            }
            Err((_, chunks)) => {
                // A hung node still holds its block: copy the blocks out instead.
                let mut data = try_zeros_f32(self.shape.numel()?)?;
                for chunk in &chunks {
                    data[chunk.range()].copy_from_slice(chunk.as_slice());
                }
                data
            }
        };
        for (run, tensor) in own {
            let values = tensor.as_f32()?;
            if values.len() != run.len() {
                return Err(Error::shape(
                    "assemble",
                    format!(
                        "a moved part's output {} has {} elements, its block {}",
                        tensor.shape(),
                        values.len(),
                        run.len()
                    ),
                ));
            }
            data[run].copy_from_slice(values);
        }
        Tensor::from_vec(self.shape, data)
    }
}
