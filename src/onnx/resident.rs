//! A session run on one GPU node with its values resident there: the float values the GPU
//! computes stay in device buffers from the op that writes them to the ops that read them,
//! the ops are submitted back to back without waiting, and only the graph's outputs come
//! back to the host. The constant weights are uploaded once per node and kept for the
//! session's life ([`ResidentConsts`]).
//!
//! Each step the GPU runs as device ops — convolutions (with their fused bias, ReLU,
//! residual and max pooling), Gemm and 2-D MatMul, pooling, batch normalisation, softmax,
//! activations, broadcasting arithmetic, and the copies of Concat, Flatten and Reshape — is
//! recorded on the GPU; any other step (LRN, shape arithmetic on int64 values, an attribute
//! the GPU path does not take) runs as in [`Session::run`]: its inputs come down to the host
//! and its outputs go back up when a later GPU step reads them. A profiled run awaits each
//! step before the next, so that each step's time is its own.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::exec::{Session, Step, StepProfile, in_node, no_output};
use super::ops::data::{broadcast_dims, norm_axis};
use super::ops::{self, Args, Cx, Kind, nn, shape};
use super::value::Value;
use crate::node::Device;
use crate::node::gpu::{GpuDevice, GpuShared, GpuTensor};
use crate::op::{BinaryOp, Op, Unary};
use crate::tensor::{DType, Shape};
use crate::{Error, Result};

/// Uploaded constants of one GPU node, by value id.
type NodeConsts = (Arc<GpuShared>, HashMap<usize, Arc<GpuTensor>>);

/// The constant weights a session has uploaded, per GPU node, by value id.
#[derive(Debug, Default)]
pub(super) struct ResidentConsts {
    nodes: Mutex<Vec<NodeConsts>>,
}

impl ResidentConsts {
    /// Constant `id` (`value`) on `gpu`, uploaded on first use (outside the lock, so runs
    /// on other nodes do not wait for it). The uploads of failed nodes are let go.
    fn get(&self, gpu: &GpuDevice, id: usize, value: &Value) -> Result<Arc<GpuTensor>> {
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.retain(|(shared, _)| !shared.ctx.is_failed());
            if let Some((_, cache)) = nodes.iter().find(|(s, _)| Arc::ptr_eq(s, gpu.shared()))
                && let Some(t) = cache.get(&id)
            {
                return Ok(Arc::clone(t));
            }
        }
        let t = Arc::new(gpu.upload(value.as_tensor()?)?);
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let index = match nodes.iter().position(|(s, _)| Arc::ptr_eq(s, gpu.shared())) {
            Some(i) => i,
            None => {
                nodes.push((Arc::clone(gpu.shared()), HashMap::new()));
                nodes.len() - 1
            }
        };
        Ok(Arc::clone(nodes[index].1.entry(id).or_insert(t)))
    }
}

/// A value of a resident run.
enum Slot<'a> {
    /// In a buffer of the GPU node.
    Gpu(Arc<GpuTensor>),
    /// On the host: int64 and bool values, constants, inputs, and what host steps computed.
    Host(Cow<'a, Value>),
}

/// One run's state: the session, the node and the values by id.
struct Run<'s> {
    session: &'s Session,
    gpu: &'s GpuDevice,
    env: Vec<Option<Slot<'s>>>,
    /// Host values of this run (inputs, host steps' outputs) uploaded for a GPU step, by id:
    /// a value read by several GPU steps goes up once.
    uploaded: RefCell<HashMap<usize, Arc<GpuTensor>>>,
}

impl Session {
    /// Runs the model with its values resident on `gpu` (see the module documentation);
    /// `device` (the GPU node or a wrapper around it) runs the host steps' device ops.
    ///
    /// With `profile`, each step is awaited before the next is submitted and its wall-clock
    /// time recorded (submission to completion; host steps with their transfers).
    pub(super) fn run_resident(
        &self,
        device: &dyn Device,
        gpu: &GpuDevice,
        inputs: &HashMap<String, Value>,
        mut profile: Option<&mut Vec<StepProfile>>,
    ) -> Result<HashMap<String, Value>> {
        let mut env: Vec<Option<Slot<'_>>> = self
            .consts
            .iter()
            .map(|c| c.as_ref().map(|v| Slot::Host(Cow::Borrowed(v))))
            .collect();
        for (info, &id) in self.inputs.iter().zip(&self.input_ids) {
            env[id] = inputs.get(&info.name).map(|v| Slot::Host(Cow::Borrowed(v)));
        }
        let mut run = Run {
            session: self,
            gpu,
            env,
            uploaded: RefCell::default(),
        };
        for (i, step) in self.steps.iter().enumerate() {
            let shapes_in = profile.as_ref().map(|_| run.dims_of(&step.inputs));
            let started = Instant::now();
            let outs = match run.gpu_step(step, i) {
                Some(outs) => outs,
                None => run.host_step(device, step),
            }
            .map_err(|e| in_node(e, &step.node))?;
            if let Some(profile) = profile.as_mut() {
                gpu.synchronize().map_err(|e| in_node(e, &step.node))?;
                profile.push(StepProfile {
                    node: step.node.display_name(),
                    op: step.kind.label(&step.node.op_type),
                    input_shapes: shapes_in.unwrap_or_default(),
                    output_shapes: outs.iter().map(Slot::dims).collect(),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            for (id, v) in step.outputs.iter().zip(outs) {
                if let Some(id) = id {
                    run.env[*id] = v;
                }
            }
            for &id in &self.frees[i] {
                if self.consts[id].is_none() {
                    run.env[id] = None;
                    run.uploaded.borrow_mut().remove(&id);
                }
            }
        }
        let mut out = HashMap::with_capacity(self.outputs.len());
        for (info, &id) in self.outputs.iter().zip(&self.output_ids) {
            let v = match run.env[id].take() {
                Some(Slot::Gpu(t)) => Value::Float(t.download()?),
                Some(Slot::Host(v)) => v.into_owned(),
                None => return Err(no_output(info)),
            };
            out.insert(info.name.clone(), v);
        }
        Ok(out)
    }
}

impl Slot<'_> {
    /// The value's dims (empty for an absent value).
    fn dims(slot: &Option<Slot<'_>>) -> Vec<usize> {
        match slot {
            Some(Slot::Gpu(t)) => t.dims().to_vec(),
            Some(Slot::Host(v)) => v.dims().to_vec(),
            None => Vec::new(),
        }
    }
}

impl<'s> Run<'s> {
    /// The dims of the values `ids` (empty for absent ones).
    fn dims_of(&self, ids: &[Option<usize>]) -> Vec<Vec<usize>> {
        ids.iter()
            .map(|id| id.map_or_else(Vec::new, |id| Slot::dims(&self.env[id])))
            .collect()
    }

    /// Runs `step` on the host path: its inputs brought down from the GPU where they are.
    fn host_step(&self, device: &dyn Device, step: &'s Step) -> Result<Vec<Option<Slot<'s>>>> {
        let mut vals = Vec::with_capacity(step.inputs.len());
        for id in &step.inputs {
            vals.push(match id {
                None => None,
                Some(id) => Some(match &self.env[*id] {
                    Some(Slot::Gpu(t)) => Cow::Owned(Value::Float(t.download()?)),
                    Some(Slot::Host(v)) => Cow::Borrowed(v.as_ref()),
                    None => return Err(self.session.no_value(step, *id)),
                }),
            });
        }
        let cx = Cx {
            dev: device,
            node: &step.node,
            opset: self.session.opset,
        };
        let outs = ops::eval(&step.kind, &cx, Args::new(&step.node, vals))?;
        Ok(outs
            .into_iter()
            .map(|v| v.map(|v| Slot::Host(Cow::Owned(v))))
            .collect())
    }

    /// The dims of input `k` of `step` if it is an f32 value (on either side), else `None`.
    fn float_dims(&self, step: &Step, k: usize) -> Option<Vec<usize>> {
        let id = (*step.inputs.get(k)?)?;
        match self.env[id].as_ref()? {
            Slot::Gpu(t) => (t.dtype() == DType::F32).then(|| t.dims().to_vec()),
            Slot::Host(v) => match v.as_ref() {
                Value::Float(t) if t.dtype() == DType::F32 => Some(t.dims().to_vec()),
                _ => None,
            },
        }
    }

    /// Input `k` of `step` on the GPU: where it is, a constant from the session's uploads,
    /// or another host value uploaded now.
    fn on_gpu(&self, step: &Step, k: usize) -> Result<Arc<GpuTensor>> {
        let id = step.inputs[k].ok_or_else(|| {
            Error::shape(ops::node_ctx(&step.node), format!("input {k} is absent"))
        })?;
        match &self.env[id] {
            Some(Slot::Gpu(t)) => Ok(Arc::clone(t)),
            Some(Slot::Host(v)) => match &self.session.consts[id] {
                Some(c) => self.session.resident.get(self.gpu, id, c),
                None => {
                    if let Some(t) = self.uploaded.borrow().get(&id) {
                        return Ok(Arc::clone(t));
                    }
                    let t = Arc::new(self.gpu.upload(v.as_tensor()?)?);
                    self.uploaded.borrow_mut().insert(id, Arc::clone(&t));
                    Ok(t)
                }
            },
            None => Err(self.session.no_value(step, id)),
        }
    }

    /// Input 0 of `step` (step number `i`) on the GPU viewed as `dims`: moved when this step
    /// reads it last and nothing else holds it, else copied on the device.
    fn reshaped(&mut self, step: &Step, i: usize, dims: Vec<usize>) -> Result<Arc<GpuTensor>> {
        let t = self.on_gpu(step, 0)?;
        if let Some(id) = step.inputs[0]
            && self.session.last_use[id] == Some(i)
            && self.session.consts[id].is_none()
        {
            // Read for the last time: let go of the run's references, so `t` may be the only one.
            self.env[id] = None;
            self.uploaded.borrow_mut().remove(&id);
        }
        match Arc::try_unwrap(t) {
            Ok(owned) => Ok(Arc::new(owned.reshape(dims)?)),
            Err(shared) => Ok(Arc::new(self.gpu.copy_as(&shared, Shape::new(dims))?)),
        }
    }

    /// The output dims of matrix product `op` on inputs of `dims`, when both are matrices and
    /// every operand and the output fit one buffer of the node; else `None` (the host path
    /// tiles larger products over several buffers, or reports the bad shapes).
    fn product_dims(&self, op: &Op, dims: &[Vec<usize>]) -> Option<Vec<usize>> {
        if dims[0].len() != 2 || dims[1].len() != 2 {
            return None;
        }
        let shapes = [Shape::new(dims[0].clone()), Shape::new(dims[1].clone())];
        let out = op.output_shape(&[&shapes[0], &shapes[1]]).ok()?;
        let max = self.gpu.limits().max_buffer;
        let fits = |s: &Shape| s.numel().is_ok_and(|n| (n as u64).saturating_mul(4) <= max);
        (fits(&shapes[0]) && fits(&shapes[1]) && fits(&out)).then(|| out.dims().to_vec())
    }

    /// Runs one device op on GPU inputs; submitted, not awaited.
    fn op(&self, op: &Op, inputs: &[&Arc<GpuTensor>]) -> Result<Arc<GpuTensor>> {
        let refs: Vec<&GpuTensor> = inputs.iter().map(|t| t.as_ref()).collect();
        let mut outs = self.gpu.run(op, &refs)?;
        Ok(Arc::new(outs.remove(0)))
    }

    /// Runs `step` (step number `i`) on the GPU, or `None` when the GPU path does not take
    /// it (its kind, an input that is not f32, a shape it leaves to the host path).
    fn gpu_step(&mut self, step: &'s Step, i: usize) -> Option<Result<Vec<Option<Slot<'s>>>>> {
        let wanted_extra = step.outputs.iter().skip(1).any(Option::is_some);
        if wanted_extra {
            return None;
        }
        let floats: Vec<Option<Vec<usize>>> = (0..step.inputs.len())
            .map(|k| step.inputs[k].and_then(|_| self.float_dims(step, k)))
            .collect();
        let all_float = step
            .inputs
            .iter()
            .zip(&floats)
            .all(|(id, d)| id.is_none() || d.is_some());
        let ctx = ops::node_ctx(&step.node);
        let out = match &step.kind {
            Kind::Flatten(axis) => {
                let d = floats.first()?.as_ref()?;
                let dims = shape::flatten_dims(&ctx, d, *axis).ok()?;
                self.reshaped(step, i, dims)
            }
            Kind::Reshape(a) => {
                let d = floats.first()?.as_ref()?;
                let id = (*step.inputs.get(1)?)?;
                let Some(Slot::Host(v)) = &self.env[id] else {
                    return None;
                };
                let target = v.as_ints().ok()?.to_vec();
                let dims = shape::reshape_dims(&ctx, d, &target, a.allowzero).ok()?;
                self.reshaped(step, i, dims)
            }
            _ if !all_float || step.inputs.is_empty() => return None,
            kind => {
                let dims: Vec<Vec<usize>> =
                    floats.into_iter().map(Option::unwrap_or_default).collect();
                self.compute(kind, step, &ctx, &dims)?
            }
        };
        Some(out.map(|t| vec![Some(Slot::Gpu(t))]))
    }

    /// The device ops of a compute step whose inputs are all f32 (`dims`), or `None` where
    /// the GPU path leaves the step to the host.
    fn compute(
        &self,
        kind: &Kind,
        step: &Step,
        ctx: &str,
        dims: &[Vec<usize>],
    ) -> Option<Result<Arc<GpuTensor>>> {
        let input = |k: usize| self.on_gpu(step, k);
        let present = |k: usize| step.inputs.get(k).is_some_and(Option::is_some);
        match kind {
            Kind::Conv(a) => {
                if dims[0].len() != 4 || dims[1].len() != 4 {
                    return None;
                }
                let (params, _) = nn::conv_setup(a, ctx, &dims[0], &dims[1]).ok()?;
                let out_dims = crate::op::conv2d_dims(
                    &params,
                    &[&Shape::new(dims[0].clone()), &Shape::new(dims[1].clone())],
                )
                .ok()?
                .output;
                if a.residual && dims.get(3).map(Vec::as_slice) != Some(&out_dims[..]) {
                    return None;
                }
                let pool = match &a.pool {
                    Some(p) => Some(nn::pool_setup(p, ctx, &out_dims).ok()?),
                    None => None,
                };
                Some((|| {
                    let mut ins = vec![input(0)?, input(1)?];
                    if present(2) {
                        ins.push(input(2)?);
                    }
                    let refs: Vec<&Arc<GpuTensor>> = ins.iter().collect();
                    if a.residual {
                        let relu = params.relu;
                        let plain = Op::Conv2d(crate::Conv2dParams {
                            relu: false,
                            ..params.clone()
                        });
                        let y = self.op(&plain, &refs)?;
                        let y = self.op(&Op::Binary(BinaryOp::Add), &[&y, &input(3)?])?;
                        return if relu {
                            self.op(&Op::Unary(Unary::Relu), &[&y])
                        } else {
                            Ok(y)
                        };
                    }
                    let y = self.op(&Op::Conv2d(params.clone()), &refs)?;
                    match &pool {
                        Some(p) => self.op(&Op::MaxPool(*p), &[&y]),
                        None => Ok(y),
                    }
                })())
            }
            Kind::Gemm(g) => {
                let with_c = present(2) && g.beta != 0.0;
                if g.alpha != 1.0 || (with_c && g.beta != 1.0) {
                    return None;
                }
                let op = Op::MatMul {
                    trans_a: g.trans_a,
                    trans_b: g.trans_b,
                };
                let y_dims = self.product_dims(&op, dims)?;
                // C must broadcast to the product without changing its shape (else the host
                // path's error).
                if with_c && broadcast_dims(ctx, &y_dims, &dims[2]).ok()? != y_dims {
                    return None;
                }
                Some((|| {
                    let y = self.op(&op, &[&input(0)?, &input(1)?])?;
                    if with_c {
                        self.op(&Op::Binary(BinaryOp::Add), &[&y, &input(2)?])
                    } else {
                        Ok(y)
                    }
                })())
            }
            Kind::MatMul => {
                let op = Op::MatMul {
                    trans_a: false,
                    trans_b: false,
                };
                self.product_dims(&op, dims)?;
                Some((|| self.op(&op, &[&input(0)?, &input(1)?]))())
            }
            Kind::Pool(a) if dims[0].len() == 4 => {
                let p = nn::pool_setup(a, ctx, &dims[0]).ok()?;
                let op = if a.max {
                    Op::MaxPool(p)
                } else {
                    Op::AvgPool(p)
                };
                Some(input(0).and_then(|x| self.op(&op, &[&x])))
            }
            Kind::GlobalPool { max: false } if dims[0].len() == 4 => {
                Some(input(0).and_then(|x| self.op(&Op::GlobalAvgPool, &[&x])))
            }
            Kind::BatchNorm(a) => {
                let op = Op::BatchNorm {
                    epsilon: a.epsilon,
                    relu: a.relu,
                };
                Some((|| {
                    let ins = (0..5).map(input).collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&Arc<GpuTensor>> = ins.iter().collect();
                    self.op(&op, &refs)
                })())
            }
            Kind::Softmax(a) => {
                let axis = norm_axis(ctx, a.axis, dims[0].len()).ok()?;
                if a.legacy && axis + 1 != dims[0].len() {
                    return None;
                }
                let op = Op::Softmax { axis, log: a.log };
                Some(input(0).and_then(|x| self.op(&op, &[&x])))
            }
            Kind::Unary(u) => Some(input(0).and_then(|x| self.op(&Op::Unary(*u), &[&x]))),
            Kind::Binary(b) if b.legacy_axis.is_none() => {
                let op = Op::Binary(b.op.device()?);
                Some((|| self.op(&op, &[&input(0)?, &input(1)?]))())
            }
            Kind::Concat(axis) => {
                let parts: Vec<&[usize]> = dims.iter().map(Vec::as_slice).collect();
                let (out, axis) = shape::concat_dims(ctx, &parts, *axis).ok()?;
                Some((|| {
                    let ins = (0..dims.len()).map(input).collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&GpuTensor> = ins.iter().map(|t| t.as_ref()).collect();
                    Ok(Arc::new(self.gpu.concat(&refs, axis, &out)?))
                })())
            }
            _ => None,
        }
    }
}
