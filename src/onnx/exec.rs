//! Executes an ONNX [`Model`] on a [`Device`].
//!
//! [`Session::new`] does everything that does not depend on the inputs, once:
//! 1. parses every node ([`ops`]): an operator, attribute, attribute value or opset the
//!    executor does not implement is an [`Error::Unsupported`] naming the node, the operator
//!    and the opset — at load, not halfway through a run;
//! 2. orders the nodes topologically (an input nobody produces, a value produced twice, or a
//!    cycle is an [`Error::Parse`] naming it);
//! 3. folds every node whose inputs are all constants (initializers, `Constant`s, earlier
//!    folds) into a constant — the `Shape → Gather → Unsqueeze → Concat → Reshape` chains of
//!    exported models and the `ConstantOfShape` weights of the ONNX "light" models;
//! 4. infers shapes from the declared input dims, so that a model whose layers do not fit
//!    together fails at load;
//! 5. folds an inference BatchNormalization into the convolution before it (constant
//!    weights, the BN its only consumer), and a Mul or Add of a per-channel constant into
//!    the convolution or BatchNormalization before it (DenseNet's `BN → Mul → Add`); fuses
//!    a two-input Add or Sum of a convolution's output (its only consumer) and a value of
//!    the same dims into the convolution as a residual input; then fuses a convolution or
//!    BatchNormalization followed by its only consumer, a Relu, into one device op (the
//!    conv's ReLU epilogue, the BN's ReLU flag) — a ResNet block's `Conv → Add → Relu` is
//!    one op; and a 2-D convolution followed by its only consumer, a MaxPool, into one step
//!    (`Device::conv_max_pool`: the CPU node convolves band by band into cache and pools from
//!    there when the convolution's output is too large for the caches);
//! 6. records each value's last use, so a run drops intermediates as soon as they are dead
//!    (and moves a value into the op that reads it last: reshapes do not copy);
//! 7. pins the constant convolution weights (`accelmesh_kernels::conv::WeightPin`), so the
//!    CPU kernels pack them into gemm panels once per instruction set and reuse them.
//!
//! [`Session::run`] checks the inputs against the declared types and dims, then runs the
//! nodes in order: float compute on the device (`crate::op::Op`), shape and index ops on the
//! host. [`Session::run_profiled`] does the same and returns the time of each step.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use accelmesh_kernels::conv::WeightPin;

use crate::node::recycle::Recycler;
use crate::node::{CpuDevice, Device};
use crate::onnx::model::{Dim, Model, Node, ValueInfo};
use crate::onnx::ops::{self, Args, Cx, Kind, Meta, Ty};
use crate::onnx::resident::ResidentConsts;
use crate::onnx::value::Value;
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// Whether the executor runs operator `op_type` of `domain` (`""` / `ai.onnx`) at `opset`.
pub fn supported(op_type: &str, domain: &str, opset: i64) -> bool {
    ops::is_supported(op_type, domain, opset)
}

/// The operators the executor implements (default domain), in alphabetical order.
pub fn supported_operators() -> Vec<&'static str> {
    ops::operator_names().collect()
}

/// The time of one step of a [`Session::run_profiled`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    /// The node's name (or its first output's, when it has none).
    pub node: String,
    /// The operator as run, with what was fused into it at load (`Conv+Relu`, `Conv+Add+Relu`).
    pub op: String,
    /// The dims of each input (empty for an absent optional input).
    pub input_shapes: Vec<Vec<usize>>,
    /// The dims of each output (empty for an output left out).
    pub output_shapes: Vec<Vec<usize>>,
    /// Wall-clock seconds of the step, from its inputs' hand-over to its outputs' return.
    pub seconds: f64,
}

/// Per-step times of one run ([`Session::run_profiled`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Every step in run order.
    pub steps: Vec<StepProfile>,
    /// Wall-clock seconds of the whole run, input checks and executor overhead included.
    pub total_seconds: f64,
}

impl Profile {
    /// Seconds spent in the steps (the rest of `total_seconds` is the executor's own work).
    pub fn step_seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.seconds).sum()
    }

    /// Total seconds and step count per operator label, slowest first.
    pub fn by_op(&self) -> Vec<(String, f64, usize)> {
        self.group(|s| s.op.clone())
    }

    /// Total seconds and step count per operator label and input shapes (e.g. each
    /// convolution geometry), slowest first.
    pub fn by_op_and_shape(&self) -> Vec<(String, f64, usize)> {
        self.group(|s| {
            let shapes: Vec<String> = s.input_shapes.iter().map(|d| format!("{d:?}")).collect();
            format!("{} {}", s.op, shapes.join(" "))
        })
    }

    /// The step-by-step median of several profiles of one session's runs: each step's
    /// seconds and the total are the medians over `runs`. Errors when `runs` is empty or the
    /// runs' steps differ (another session, or a step that ran elsewhere), naming the first
    /// step that differs.
    pub fn median(runs: &[Profile]) -> Result<Profile> {
        let median = |xs: Vec<f64>| crate::bench::median(&xs);
        Self::combine("profile median", runs, median)
    }

    /// The profile of one request that ran as consecutive runs of a session (a fixed-batch
    /// model fed its samples chunk by chunk): each step's seconds and the total are summed
    /// over `runs`. Errors as [`Profile::median`] does.
    pub fn chained(runs: &[Profile]) -> Result<Profile> {
        Self::combine("chained profile", runs, |xs| xs.iter().sum())
    }

    /// Profiles with the same steps, each step's seconds and the total combined by `how`.
    fn combine(what: &str, runs: &[Profile], how: impl Fn(Vec<f64>) -> f64) -> Result<Profile> {
        let first = runs
            .first()
            .ok_or_else(|| Error::shape(what, "no runs to combine"))?;
        for (r, run) in runs.iter().enumerate().skip(1) {
            if run.steps.len() != first.steps.len() {
                return Err(Error::shape(
                    what,
                    format!(
                        "run {r} has {} steps, run 0 has {}",
                        run.steps.len(),
                        first.steps.len()
                    ),
                ));
            }
            if let Some((i, s)) = run
                .steps
                .iter()
                .enumerate()
                .find(|(i, s)| s.node != first.steps[*i].node)
            {
                return Err(Error::shape(
                    what,
                    format!(
                        "step {i} of run {r} is `{}`, of run 0 `{}`",
                        s.node, first.steps[i].node
                    ),
                ));
            }
        }
        let steps = first
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepProfile {
                seconds: how(runs.iter().map(|r| r.steps[i].seconds).collect()),
                ..s.clone()
            })
            .collect();
        Ok(Profile {
            steps,
            total_seconds: how(runs.iter().map(|r| r.total_seconds).collect()),
        })
    }

    fn group(&self, key: impl Fn(&StepProfile) -> String) -> Vec<(String, f64, usize)> {
        let mut groups: HashMap<String, (f64, usize)> = HashMap::new();
        for s in &self.steps {
            let g = groups.entry(key(s)).or_default();
            g.0 += s.seconds;
            g.1 += 1;
        }
        let mut out: Vec<_> = groups.into_iter().map(|(k, (t, n))| (k, t, n)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// One node to run: its operator, and its inputs and outputs as value ids.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) node: Node,
    pub(super) kind: Kind,
    pub(super) inputs: Vec<Option<usize>>,
    pub(super) outputs: Vec<Option<usize>>,
}

/// A model prepared to run: nodes parsed, ordered, folded and shape-checked.
#[derive(Debug)]
pub struct Session {
    /// The convolution weights declared constant to the kernels, which then pack them once
    /// (declared first: dropped before the constants they point into).
    pins: Vec<WeightPin>,
    pub(super) opset: i64,
    pub(super) inputs: Vec<ValueInfo>,
    pub(super) outputs: Vec<ValueInfo>,
    pub(super) input_ids: Vec<usize>,
    pub(super) output_ids: Vec<usize>,
    names: Vec<String>,
    ids: HashMap<String, usize>,
    pub(super) consts: Vec<Option<Value>>,
    metas: Vec<Meta>,
    pub(super) steps: Vec<Step>,
    pub(super) frees: Vec<Vec<usize>>,
    pub(super) last_use: Vec<Option<usize>>,
    folded: usize,
    fused: usize,
    /// Dead values' buffers, reused for outputs of the same size in this and later runs.
    recycler: Recycler,
    /// The constants uploaded to GPU nodes by resident runs, kept for the session's life.
    pub(super) resident: ResidentConsts,
}

/// An [`Error::Parse`] about the graph.
fn graph_error(graph: &str, detail: impl Into<String>) -> Error {
    let name = if graph.is_empty() {
        "<unnamed graph>"
    } else {
        graph
    };
    Error::parse("ONNX graph", name, detail)
}

/// Puts the node into the context of a shape or dtype error that does not name it yet.
pub(super) fn in_node(e: Error, node: &Node) -> Error {
    let ctx = ops::node_ctx(node);
    match e {
        Error::Shape { context, detail } if !context.contains(&ctx) => Error::Shape {
            context: format!("{ctx}: {context}"),
            detail,
        },
        Error::DType { context, detail } if !context.contains(&ctx) => Error::DType {
            context: format!("{ctx}: {context}"),
            detail,
        },
        other => other,
    }
}

/// The error for graph output `info` that no node produced (an optional output left out).
pub(super) fn no_output(info: &ValueInfo) -> Error {
    Error::shape(
        format!("ONNX graph output `{}`", info.name),
        "no node produced it (an optional output left out)",
    )
}

impl Session {
    /// Prepares `model` to run (see the module documentation for what is checked and done).
    pub fn new(model: Model) -> Result<Session> {
        let opset = model.opset();
        let graph = model.graph;
        let gname = graph.name.clone();
        let mut names: Vec<String> = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut consts: Vec<Option<Value>> = Vec::new();
        let mut producer: Vec<Option<usize>> = Vec::new();
        let mut define = |name: &str, value: Option<Value>, by: Option<usize>| -> Result<usize> {
            if ids.contains_key(name) {
                return Err(graph_error(
                    &gname,
                    format!("value `{name}` is defined twice (initializer, input or node output)"),
                ));
            }
            let id = names.len();
            ids.insert(name.to_string(), id);
            names.push(name.to_string());
            consts.push(value);
            producer.push(by);
            Ok(id)
        };
        let mut inits: Vec<(String, Value)> = graph.initializers.into_iter().collect();
        inits.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, v) in inits {
            define(&name, Some(v), None)?;
        }
        let mut input_ids = Vec::new();
        for info in &graph.inputs {
            input_ids.push(define(&info.name, None, None)?);
        }
        // Parse every node first: unsupported operators are reported before graph errors.
        let mut kinds = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            kinds.push(ops::parse(node, opset)?);
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            for out in node.outputs.iter().filter(|o| !o.is_empty()) {
                define(out, None, Some(i))?;
            }
        }
        let resolve = |name: &String| -> Result<Option<usize>> {
            if name.is_empty() {
                return Ok(None);
            }
            ids.get(name).copied().map(Some).ok_or_else(|| {
                graph_error(&gname, format!("value `{name}` is used but never defined"))
            })
        };
        let mut pending: Vec<Option<Step>> = Vec::with_capacity(graph.nodes.len());
        for (node, kind) in graph.nodes.into_iter().zip(kinds) {
            let inputs = node
                .inputs
                .iter()
                .map(resolve)
                .collect::<Result<Vec<_>>>()?;
            let outputs = node
                .outputs
                .iter()
                .map(resolve)
                .collect::<Result<Vec<_>>>()?;
            pending.push(Some(Step {
                node,
                kind,
                inputs,
                outputs,
            }));
        }
        let output_ids = graph
            .outputs
            .iter()
            .map(|o| {
                ids.get(&o.name).copied().ok_or_else(|| {
                    graph_error(
                        &gname,
                        format!("graph output `{}` is never defined", o.name),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;

        // Kahn's algorithm over node indices, keeping the file order among ready nodes.
        let n_nodes = pending.len();
        let mut waiting = vec![0usize; n_nodes];
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        for (i, s) in pending.iter().enumerate() {
            let s = s.as_ref().expect("all pending");
            for &id in s.inputs.iter().flatten() {
                if producer[id].is_some() {
                    waiting[i] += 1;
                    consumers[id].push(i);
                }
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n_nodes).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(n_nodes);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            let s = pending[i].as_ref().expect("not yet ordered");
            for &id in s.outputs.iter().flatten() {
                for &c in &consumers[id] {
                    waiting[c] -= 1;
                    if waiting[c] == 0 {
                        ready.insert(c);
                    }
                }
            }
        }
        if order.len() != n_nodes {
            let stuck: Vec<String> = (0..n_nodes)
                .filter(|&i| waiting[i] > 0)
                .take(5)
                .map(|i| pending[i].as_ref().expect("pending").node.display_name())
                .collect();
            return Err(graph_error(
                &gname,
                format!("the nodes form a cycle (involving {})", stuck.join(", ")),
            ));
        }

        let mut session = Session {
            pins: Vec::new(),
            opset,
            inputs: graph.inputs,
            outputs: graph.outputs,
            input_ids,
            output_ids,
            names,
            ids,
            consts,
            metas: Vec::new(),
            steps: Vec::with_capacity(n_nodes),
            frees: Vec::new(),
            last_use: Vec::new(),
            folded: 0,
            fused: 0,
            recycler: Recycler::default(),
            resident: ResidentConsts::default(),
        };
        let ordered: Vec<Step> = order
            .into_iter()
            .map(|i| pending[i].take().expect("each node once"))
            .collect();
        session.fold(ordered)?;
        session.infer()?;
        session.drop_pass_throughs();
        session.fold_batch_norms()?;
        session.fold_channel_affines()?;
        session.fuse_residuals();
        session.fuse();
        session.fuse_max_pools();
        session.plan();
        session.pin_weights();
        Ok(session)
    }

    /// Evaluates the nodes whose inputs are all constants; keeps the others as steps.
    fn fold(&mut self, ordered: Vec<Step>) -> Result<()> {
        let mut dev: Option<CpuDevice> = None;
        for step in ordered {
            let constant = step.kind.foldable()
                && step
                    .inputs
                    .iter()
                    .flatten()
                    .all(|&id| self.consts[id].is_some());
            if !constant {
                self.steps.push(step);
                continue;
            }
            if dev.is_none() {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
                dev = Some(CpuDevice::with_threads(threads)?);
            }
            let device = dev.as_ref().expect("just made");
            let vals = step
                .inputs
                .iter()
                .map(|i| i.map(|id| Cow::Borrowed(self.consts[id].as_ref().expect("constant"))))
                .collect();
            let cx = Cx {
                dev: device,
                node: &step.node,
                opset: self.opset,
            };
            let outs = ops::eval(&step.kind, &cx, Args::new(&step.node, vals))
                .map_err(|e| in_node(e, &step.node))?;
            for (id, v) in step.outputs.iter().zip(outs) {
                if let (Some(id), Some(v)) = (id, v) {
                    self.consts[*id] = Some(v);
                }
            }
            self.folded += 1;
        }
        Ok(())
    }

    /// Shape inference from the declared input dims and the constants.
    fn infer(&mut self) -> Result<()> {
        let mut metas = vec![Meta::default(); self.names.len()];
        for (id, c) in self.consts.iter().enumerate() {
            if let Some(v) = c {
                metas[id] = Meta::of_value(v);
            }
        }
        for (info, &id) in self.inputs.iter().zip(&self.input_ids) {
            metas[id] = Meta {
                ty: Ty::of_elem(info.elem_type),
                dims: info.known_shape().map(|s| s.dims().to_vec()),
            };
        }
        for step in &self.steps {
            let ins: Vec<Option<Meta>> = step
                .inputs
                .iter()
                .map(|i| i.map(|id| metas[id].clone()))
                .collect();
            let consts: Vec<Option<&Value>> = step
                .inputs
                .iter()
                .map(|i| i.and_then(|id| self.consts[id].as_ref()))
                .collect();
            let out = ops::infer(&step.kind, &step.node, self.opset, &ins, &consts)
                .map_err(|e| in_node(e, &step.node))?;
            for (id, m) in step.outputs.iter().zip(out) {
                if let Some(id) = id {
                    metas[*id] = m;
                }
            }
        }
        self.metas = metas;
        Ok(())
    }

    /// How many steps read each value (graph outputs count as a use).
    fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0usize; self.names.len()];
        for step in &self.steps {
            for &id in step.inputs.iter().flatten() {
                uses[id] += 1;
            }
        }
        for &id in &self.output_ids {
            uses[id] += 1;
        }
        uses
    }

    /// Adds a constant value under a fresh name derived from `base`; returns its id.
    fn add_constant(&mut self, base: &str, v: Value) -> usize {
        let mut name = format!("{base}::folded");
        while self.ids.contains_key(&name) {
            name.push('_');
        }
        let id = self.names.len();
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        self.metas.push(Meta::of_value(&v));
        self.consts.push(Some(v));
        id
    }

    /// The step that writes each value, by value id (`None`: an input or a constant).
    fn producers(&self) -> Vec<Option<usize>> {
        let mut producer = vec![None; self.names.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for &id in step.outputs.iter().flatten() {
                producer[id] = Some(i);
            }
        }
        producer
    }

    /// Drops Identity steps and inference Dropout steps (no mask read, no training_mode
    /// input): their readers read the step's input instead, so no step copies or hands it on.
    /// A step whose output is a graph output stays, so that the output keeps its own name.
    fn drop_pass_throughs(&mut self) {
        let uses = self.use_counts();
        // The value each value id is read as from now on.
        let mut read_as: Vec<usize> = (0..self.names.len()).collect();
        let mut remove = vec![false; self.steps.len()];
        for (step, removed) in self.steps.iter().zip(remove.iter_mut()) {
            let passes = match step.kind {
                Kind::Identity => true,
                Kind::Dropout { .. } => {
                    let training_input = step.inputs.get(2).copied().flatten().is_some();
                    let mask_read = step
                        .outputs
                        .get(1)
                        .copied()
                        .flatten()
                        .is_some_and(|m| uses[m] > 0);
                    !training_input && !mask_read
                }
                _ => false,
            };
            let (Some(&Some(src)), Some(&Some(dst))) = (step.inputs.first(), step.outputs.first())
            else {
                continue;
            };
            if passes && !self.output_ids.contains(&dst) {
                read_as[dst] = read_as[src];
                *removed = true;
                self.folded += 1;
            }
        }
        for step in &mut self.steps {
            for id in step.inputs.iter_mut().flatten() {
                *id = read_as[*id];
            }
        }
        self.drop_steps(&remove);
    }

    /// Removes the steps whose flag in `remove` is set, keeping the others in order.
    fn drop_steps(&mut self, remove: &[bool]) {
        let mut k = 0;
        self.steps.retain(|_| {
            k += 1;
            !remove[k - 1]
        });
    }

    /// Folds each inference BatchNormalization that follows a convolution with constant
    /// weights (and is its only consumer) into the convolution's weights and bias.
    fn fold_batch_norms(&mut self) -> Result<()> {
        let uses = self.use_counts();
        let producer = self.producers();
        let mut remove = vec![false; self.steps.len()];
        for i in 0..self.steps.len() {
            let Kind::BatchNorm(bn) = &self.steps[i].kind else {
                continue;
            };
            let epsilon = f64::from(bn.epsilon);
            let step = &self.steps[i];
            let extra_outputs = step
                .outputs
                .iter()
                .skip(1)
                .flatten()
                .any(|&id| uses[id] > 0);
            let Some(Some(x)) = step.inputs.first().copied() else {
                continue;
            };
            let params: Option<Vec<&Value>> = step.inputs[1..]
                .iter()
                .map(|id| id.and_then(|id| self.consts[id].as_ref()))
                .collect();
            let (Some(params), Some(p), false) = (params, producer[x], extra_outputs) else {
                continue;
            };
            if uses[x] != 1 || remove[p] {
                continue;
            }
            let conv = &self.steps[p];
            let Kind::Conv(attrs) = &conv.kind else {
                continue;
            };
            if attrs.relu {
                continue;
            }
            let w = conv.inputs.get(1).copied().flatten();
            let b = conv.inputs.get(2).copied().flatten();
            let Some(Value::Float(wt)) = w.and_then(|id| self.consts[id].as_ref()) else {
                continue;
            };
            let bias = match b {
                None => None,
                Some(id) => match &self.consts[id] {
                    Some(Value::Float(t)) => Some(t.to_f64_vec()),
                    _ => continue,
                },
            };
            let o = wt.dims().first().copied().unwrap_or(0);
            let [scale, shift, mean, var] = [0, 1, 2, 3].map(|k| match params[k] {
                Value::Float(t) => t.to_f64_vec(),
                _ => Vec::new(),
            });
            if [&scale, &shift, &mean, &var].iter().any(|v| v.len() != o)
                || bias.as_ref().is_some_and(|b| b.len() != o)
                || o == 0
            {
                continue;
            }
            let factor: Vec<f64> = (0..o)
                .map(|c| scale[c] / (var[c] + epsilon).sqrt())
                .collect();
            let w_value = scaled_by_output_channel(wt, &factor)?;
            let new_b: Vec<f32> = (0..o)
                .map(|c| {
                    let b0 = bias.as_ref().map_or(0.0, |b| b[c]);
                    ((b0 - mean[c]) * factor[c] + shift[c]) as f32
                })
                .collect();
            let b_value = Value::Float(Tensor::from_vec([o], new_b)?);
            let (w_name, conv_name) = (
                self.names[w.expect("const weight")].clone(),
                conv.node.display_name(),
            );
            let bn_out = step.outputs[0];
            let bn_out_name = step.node.outputs[0].clone();
            let w_id = self.add_constant(&w_name, w_value);
            let b_id = self.add_constant(&format!("{conv_name}::bias"), b_value);
            self.set_conv_params(p, w_id, b_id);
            let conv = &mut self.steps[p];
            conv.outputs = vec![bn_out];
            conv.node.outputs = vec![bn_out_name];
            remove[i] = true;
            self.folded += 1;
        }
        self.drop_steps(&remove);
        self.drop_unread_constants();
        Ok(())
    }

    /// Folds each Mul or Add of a per-channel constant (dims `[C, 1, 1]` or `[1, C, 1, 1]`
    /// against a 4-D value, or a single value) into the step that writes the other operand,
    /// when this is that value's only reader: a Conv with constant weights and no fused ReLU
    /// (a Mul scales its weights and bias, an Add shifts its bias) or an inference
    /// BatchNormalization with constant parameters (a Mul scales its scale and shift, an Add
    /// shifts its shift). A BatchNormalization written out as `BN → Mul → Add` (DenseNet's
    /// exports) becomes one step, and a convolution's one more.
    fn fold_channel_affines(&mut self) -> Result<()> {
        let uses = self.use_counts();
        let mut producer = self.producers();
        let mut remove = vec![false; self.steps.len()];
        for i in 0..self.steps.len() {
            let Kind::Binary(b) = &self.steps[i].kind else {
                continue;
            };
            let scales = match b.op {
                ops::elementwise::BinOp::Mul if b.legacy_axis.is_none() => true,
                ops::elementwise::BinOp::Add if b.legacy_axis.is_none() => false,
                _ => continue,
            };
            let (Some(Some(lhs)), Some(Some(rhs))) = (
                self.steps[i].inputs.first().copied(),
                self.steps[i].inputs.get(1).copied(),
            ) else {
                continue;
            };
            // The variable operand and the constant one, in either order.
            let (x, c) = match (&self.consts[lhs], &self.consts[rhs]) {
                (None, Some(_)) => (lhs, rhs),
                (Some(_), None) => (rhs, lhs),
                _ => continue,
            };
            let (Some(p), Some(Value::Float(constant))) = (producer[x], &self.consts[c]) else {
                continue;
            };
            let four_d = self.metas[x].dims.as_ref().is_some_and(|d| d.len() == 4);
            if uses[x] != 1 || remove[p] || !four_d || self.metas[x].ty != Some(Ty::Float) {
                continue;
            }
            let Some(channels) = self.affine_channels(p) else {
                continue;
            };
            let Some(values) = per_channel(constant, channels) else {
                continue;
            };
            let name = self.steps[p].node.display_name();
            let folded = match &self.steps[p].kind {
                Kind::Conv(_) => self.scale_conv(p, &values, scales, &name)?,
                Kind::BatchNorm(_) => self.scale_batch_norm(p, &values, scales, &name)?,
                _ => false,
            };
            if !folded {
                continue;
            }
            let (out, out_name) = (
                self.steps[i].outputs.clone(),
                self.steps[i].node.outputs.clone(),
            );
            for &id in out.iter().flatten() {
                producer[id] = Some(p);
            }
            let step = &mut self.steps[p];
            step.outputs = out;
            step.node.outputs = out_name;
            remove[i] = true;
            self.folded += 1;
        }
        self.drop_steps(&remove);
        self.drop_unread_constants();
        Ok(())
    }

    /// The output channels of step `p` if a per-channel affine can fold into it: a Conv with
    /// constant 4-D weights, a constant bias or none, no residual and no fused ReLU, or a
    /// BatchNormalization with constant parameters whose extra outputs nobody reads.
    fn affine_channels(&self, p: usize) -> Option<usize> {
        let step = &self.steps[p];
        let float_const = |k: usize| match step.inputs.get(k).copied().flatten() {
            Some(id) => match &self.consts[id] {
                Some(Value::Float(t)) => Some(Some(t)),
                _ => None,
            },
            None => Some(None),
        };
        match &step.kind {
            Kind::Conv(a) if !a.relu && step.inputs.len() <= 3 => {
                let w = float_const(1)??;
                float_const(2)?;
                (w.dims().len() == 4).then(|| w.dims()[0])
            }
            Kind::BatchNorm(_) if step.outputs.len() == 1 && step.inputs.len() == 5 => {
                let params: Option<Vec<&Tensor>> =
                    (1..5).map(|k| float_const(k).flatten()).collect();
                let params = params?;
                let channels = params[0].numel();
                params
                    .iter()
                    .all(|t| t.numel() == channels)
                    .then_some(channels)
            }
            _ => None,
        }
    }

    /// Conv step `p` followed by `· values[o]` (`scales`) or `+ values[o]` per output
    /// channel `o`: its weights and bias replaced by folded constants.
    fn scale_conv(&mut self, p: usize, values: &[f64], scales: bool, name: &str) -> Result<bool> {
        let step = &self.steps[p];
        let (Some(w_id), b_id) = (
            step.inputs.get(1).copied().flatten(),
            step.inputs.get(2).copied().flatten(),
        ) else {
            return Ok(false);
        };
        let Some(Value::Float(wt)) = &self.consts[w_id] else {
            return Ok(false);
        };
        let o = values.len();
        let mut bias = match b_id.map(|id| &self.consts[id]) {
            Some(Some(Value::Float(t))) => t.to_f64_vec(),
            Some(_) => return Ok(false),
            None => vec![0.0; o],
        };
        let mut w_id = w_id;
        if scales {
            let w_value = scaled_by_output_channel(wt, values)?;
            let w_name = self.names[w_id].clone();
            w_id = self.add_constant(&w_name, w_value);
            bias.iter_mut().zip(values).for_each(|(b, f)| *b *= f);
        } else {
            bias.iter_mut().zip(values).for_each(|(b, d)| *b += d);
        }
        let bias: Vec<f32> = bias.into_iter().map(|v| v as f32).collect();
        let b_id = self.add_constant(
            &format!("{name}::bias"),
            Value::Float(Tensor::from_vec([o], bias)?),
        );
        self.set_conv_params(p, w_id, b_id);
        Ok(true)
    }

    /// Makes the constants `w_id` and `b_id` the weights and bias of Conv step `p`.
    fn set_conv_params(&mut self, p: usize, w_id: usize, b_id: usize) {
        let (w_name, b_name) = (self.names[w_id].clone(), self.names[b_id].clone());
        let conv = &mut self.steps[p];
        conv.inputs.resize(3, None);
        conv.inputs[1] = Some(w_id);
        conv.inputs[2] = Some(b_id);
        conv.node.inputs.resize(3, String::new());
        conv.node.inputs[1] = w_name;
        conv.node.inputs[2] = b_name;
    }

    /// BatchNormalization step `p` followed by `· values[c]` (`scales`) or `+ values[c]` per
    /// channel: its scale and shift replaced by folded constants.
    fn scale_batch_norm(
        &mut self,
        p: usize,
        values: &[f64],
        scales: bool,
        name: &str,
    ) -> Result<bool> {
        let step = &self.steps[p];
        let (Some(scale_id), Some(shift_id)) = (step.inputs[1], step.inputs[2]) else {
            return Ok(false);
        };
        let (Some(Value::Float(scale)), Some(Value::Float(shift))) =
            (&self.consts[scale_id], &self.consts[shift_id])
        else {
            return Ok(false);
        };
        let (mut scale, mut shift) = (scale.to_f64_vec(), shift.to_f64_vec());
        if scales {
            scale.iter_mut().zip(values).for_each(|(s, f)| *s *= f);
            shift.iter_mut().zip(values).for_each(|(s, f)| *s *= f);
        } else {
            shift.iter_mut().zip(values).for_each(|(s, d)| *s += d);
        }
        let to_value = |v: Vec<f64>| -> Result<Value> {
            let n = v.len();
            Ok(Value::Float(Tensor::from_vec(
                [n],
                v.into_iter().map(|x| x as f32).collect(),
            )?))
        };
        let scale_id = self.add_constant(&format!("{name}::scale"), to_value(scale)?);
        let shift_id = self.add_constant(&format!("{name}::shift"), to_value(shift)?);
        let step = &mut self.steps[p];
        step.inputs[1] = Some(scale_id);
        step.inputs[2] = Some(shift_id);
        step.node.inputs[1] = self.names[scale_id].clone();
        step.node.inputs[2] = self.names[shift_id].clone();
        Ok(true)
    }

    /// Drops the constants nothing reads any more (weights before a fold), keeping inputs.
    fn drop_unread_constants(&mut self) {
        let uses = self.use_counts();
        for (id, c) in self.consts.iter_mut().enumerate() {
            if c.is_some() && uses[id] == 0 && !self.input_ids.contains(&id) {
                *c = None;
            }
        }
    }

    /// Fuses each Conv or BatchNormalization whose (normalised) output only a Relu reads
    /// into that step (its `relu` flag).
    fn fuse(&mut self) {
        let uses = self.use_counts();
        let producer = self.producers();
        let mut remove = vec![false; self.steps.len()];
        for (i, removed) in remove.iter_mut().enumerate() {
            let is_relu = matches!(self.steps[i].kind, Kind::Unary(crate::op::Unary::Relu));
            let Some(Some(src)) = self.steps[i].inputs.first().copied() else {
                continue;
            };
            if !is_relu || uses[src] != 1 || self.metas[src].ty != Some(Ty::Float) {
                continue;
            }
            let Some(p) = producer[src] else {
                continue;
            };
            if let Kind::Conv(a) = &self.steps[p].kind
                && !a.relu
            {
                let out = self.steps[i].outputs.clone();
                let relu_name = self.steps[i].node.outputs.clone();
                if let Kind::Conv(a) = &mut self.steps[p].kind {
                    a.relu = true;
                }
                let conv = &mut self.steps[p];
                conv.outputs = out;
                conv.node.outputs = relu_name;
                *removed = true;
                self.fused += 1;
            } else if let Kind::BatchNorm(a) = &self.steps[p].kind
                && !a.relu
                && self.steps[p].outputs.first() == Some(&Some(src))
            {
                // Only the normalised output changes; the statistics outputs stay.
                let (out, relu_name) = (
                    self.steps[i].outputs.first().copied().flatten(),
                    self.steps[i]
                        .node
                        .outputs
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                );
                if let Kind::BatchNorm(a) = &mut self.steps[p].kind {
                    a.relu = true;
                }
                let bn = &mut self.steps[p];
                bn.outputs[0] = out;
                bn.node.outputs[0] = relu_name;
                *removed = true;
                self.fused += 1;
            }
        }
        self.drop_steps(&remove);
    }

    /// Fuses each MaxPool (its Indices output unused) whose input only it reads, a 2-D
    /// convolution's output without a residual, into that convolution (`ConvAttrs::pool`):
    /// the CPU node then convolves band by band into cache and pools from there, so the
    /// convolution's output — an image network's largest activation, after its first layer —
    /// is never written out whole.
    fn fuse_max_pools(&mut self) {
        let uses = self.use_counts();
        let producer = self.producers();
        let mut remove = vec![false; self.steps.len()];
        for (i, removed) in remove.iter_mut().enumerate() {
            let Kind::Pool(pool) = &self.steps[i].kind else {
                continue;
            };
            let step = &self.steps[i];
            let Some(Some(src)) = step.inputs.first().copied() else {
                continue;
            };
            let Some(p) = producer[src] else {
                continue;
            };
            // A 4-D weight: a 2-D convolution (its input and output are 4-D too).
            let four_d = self.steps[p]
                .inputs
                .get(1)
                .copied()
                .flatten()
                .is_some_and(|w| self.metas[w].dims.as_ref().is_some_and(|d| d.len() == 4));
            if !pool.max
                || step.outputs.iter().skip(1).any(Option::is_some)
                || uses[src] != 1
                || self.metas[src].ty != Some(Ty::Float)
                || !four_d
            {
                continue;
            }
            if !matches!(&self.steps[p].kind, Kind::Conv(a) if !a.residual && a.pool.is_none()) {
                continue;
            }
            let pool = pool.clone();
            let (out, name) = (
                step.outputs[0],
                step.node.outputs.first().cloned().unwrap_or_default(),
            );
            let conv = &mut self.steps[p];
            if let Kind::Conv(a) = &mut conv.kind {
                a.pool = Some(pool);
            }
            conv.outputs = vec![out];
            conv.node.outputs = vec![name];
            *removed = true;
            self.fused += 1;
        }
        self.drop_steps(&remove);
    }

    /// Fuses each two-input Add or Sum fed by a convolution (its only consumer, Float, no
    /// fused ReLU yet) into that convolution as a residual: the convolution gets the other
    /// operand as a fourth input (a zero bias is added when it has none) and moves to the
    /// Add's place, where that operand is ready. Only for a 4-D weight, and when both
    /// operands' dims are known, only when they match (no broadcasting); open dims are
    /// compared when the step runs.
    fn fuse_residuals(&mut self) {
        let uses = self.use_counts();
        let producer = self.producers();
        let mut remove = vec![false; self.steps.len()];
        for i in 0..self.steps.len() {
            let is_add = match &self.steps[i].kind {
                Kind::Binary(b) => b.op == ops::elementwise::BinOp::Add && b.legacy_axis.is_none(),
                Kind::Variadic(v) => v.op == ops::elementwise::BinOp::Add && !v.mean,
                _ => false,
            };
            let inputs = &self.steps[i].inputs;
            if !is_add || inputs.len() != 2 || self.steps[i].outputs.len() != 1 {
                continue;
            }
            let (Some(a), Some(b)) = (inputs[0], inputs[1]) else {
                continue;
            };
            let float = |id: usize| self.metas[id].ty == Some(Ty::Float);
            if !float(a) || !float(b) || a == b {
                continue;
            }
            // Dims known at load must match; dims left open (a free batch) are compared when
            // the step runs, which adds apart when they differ.
            if let (Some(da), Some(db)) = (&self.metas[a].dims, &self.metas[b].dims)
                && (da != db || da.len() != 4)
            {
                continue;
            }
            // The convolution's output channels, from its 4-D weight.
            let channels_of = |p: usize| {
                let w = self.steps[p].inputs.get(1).copied().flatten()?;
                let dims = self.metas[w].dims.as_ref()?;
                (dims.len() == 4).then_some(dims[0])
            };
            // The operand made by a plain convolution read only here; the other is the residual.
            let conv_of = |id: usize| {
                let p = producer[id]?;
                let step = &self.steps[p];
                match &step.kind {
                    Kind::Conv(c)
                        if !c.relu
                            && !c.residual
                            && uses[id] == 1
                            && !remove[p]
                            && step.outputs.len() == 1
                            && step.inputs.len() >= 2
                            && step.inputs.len() <= 3
                            && self.consts[id].is_none() =>
                    {
                        Some(p)
                    }
                    _ => None,
                }
            };
            let Some((p, residual)) = conv_of(a)
                .map(|p| (p, b))
                .or_else(|| conv_of(b).map(|p| (p, a)))
            else {
                continue;
            };
            let Some(out_channels) = channels_of(p) else {
                continue;
            };
            let bias = self.steps[p].inputs.get(2).copied().flatten();
            let bias = match bias {
                Some(id) => id,
                None => {
                    let Ok(zeros) = Tensor::from_vec([out_channels], vec![0.0f32; out_channels])
                    else {
                        continue;
                    };
                    let name = format!("{}::bias", self.steps[p].node.display_name());
                    self.add_constant(&name, Value::Float(zeros))
                }
            };
            let placeholder = self.steps[i].node.clone();
            let mut conv = std::mem::replace(
                &mut self.steps[p],
                Step {
                    node: placeholder,
                    kind: Kind::Unary(crate::op::Unary::Relu),
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                },
            );
            let add = &self.steps[i];
            if let Kind::Conv(c) = &mut conv.kind {
                c.residual = true;
            }
            conv.inputs.resize(2, None);
            conv.inputs.push(Some(bias));
            conv.inputs.push(Some(residual));
            conv.node.inputs.resize(2, String::new());
            conv.node.inputs.push(self.names[bias].clone());
            conv.node.inputs.push(self.names[residual].clone());
            conv.outputs = add.outputs.clone();
            conv.node.outputs = add.node.outputs.clone();
            self.steps[i] = conv;
            remove[p] = true;
            self.fused += 1;
        }
        self.drop_steps(&remove);
    }

    /// Pins the constant f32 weights of every convolution (see [`WeightPin`]): they are never
    /// changed or freed while the session lives, so the kernels may pack them once.
    fn pin_weights(&mut self) {
        for step in &self.steps {
            if !matches!(step.kind, Kind::Conv(_)) {
                continue;
            }
            let Some(Some(id)) = step.inputs.get(1) else {
                continue;
            };
            if let Some(Value::Float(t)) = &self.consts[*id]
                && let Ok(w) = t.as_slice::<f32>()
            {
                self.pins.push(WeightPin::new(w));
            }
        }
    }

    /// Records the last step that reads each value, and what each step frees.
    fn plan(&mut self) {
        let mut last = vec![None; self.names.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for &id in step.inputs.iter().flatten() {
                last[id] = Some(i);
            }
        }
        for &id in &self.output_ids {
            last[id] = None;
        }
        let mut frees = vec![Vec::new(); self.steps.len()];
        for (id, l) in last.iter().enumerate() {
            if let Some(i) = l {
                frees[*i].push(id);
            }
        }
        // A step's output that nobody reads is dropped right away.
        for (i, step) in self.steps.iter().enumerate() {
            for &id in step.outputs.iter().flatten() {
                if last[id].is_none() && !self.output_ids.contains(&id) {
                    frees[i].push(id);
                }
            }
        }
        self.last_use = last;
        self.frees = frees;
    }

    /// The names of the inputs the caller feeds, in declaration order.
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.name.clone()).collect()
    }

    /// The names of the graph outputs, in declaration order.
    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// The graph inputs the caller feeds (initializers excluded), with declared types and dims.
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.inputs
    }

    /// The declared graph outputs.
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.outputs
    }

    /// The default-domain opset of the model.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Number of nodes left to run after folding and fusion.
    pub fn node_count(&self) -> usize {
        self.steps.len()
    }

    /// Number of nodes folded away at load: into constants, into a convolution's weights and
    /// bias, or dropped as pass-throughs (Identity, inference Dropout).
    pub fn folded_count(&self) -> usize {
        self.folded
    }

    /// Number of fusions made at load: Conv + Relu pairs, residual Adds (or Sums) fused into
    /// the convolution before them, and MaxPools fused into the convolution before them.
    pub fn fused_count(&self) -> usize {
        self.fused
    }

    /// The operators of the nodes left to run, in run order.
    pub fn op_types(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.node.op_type.as_str()).collect()
    }

    /// The value of `name` when it is a constant (an initializer or a folded node output).
    pub fn constant(&self, name: &str) -> Option<&Value> {
        self.consts[*self.ids.get(name)?].as_ref()
    }

    /// The shape inferred at load for value `name`, when every dim is known.
    pub fn inferred_shape(&self, name: &str) -> Option<Shape> {
        let m = &self.metas[*self.ids.get(name)?];
        m.dims.as_ref().map(|d| Shape::new(d.clone()))
    }

    /// Checks the caller's inputs against the declared inputs.
    /// The error for input `id` of `step` that has no value when the step runs.
    pub(super) fn no_value(&self, step: &Step, id: usize) -> Error {
        Error::shape(
            ops::node_ctx(&step.node),
            format!("input `{}` has no value", self.names[id]),
        )
    }

    fn check_inputs(&self, inputs: &HashMap<String, Value>) -> Result<()> {
        let context = |name: &str| format!("ONNX model input `{name}`");
        let expected = || self.input_names().join(", ");
        if let Some(name) = inputs
            .keys()
            .find(|n| !self.inputs.iter().any(|i| &&i.name == n))
        {
            return Err(Error::parse(
                "ONNX model input",
                name.clone(),
                format!("the model has no such input (its inputs: {})", expected()),
            ));
        }
        let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
        for info in &self.inputs {
            let Some(v) = inputs.get(&info.name) else {
                return Err(Error::parse(
                    "ONNX model input",
                    info.name.clone(),
                    format!("not given (the model's inputs: {})", expected()),
                ));
            };
            if let Some(ty) = Ty::of_elem(info.elem_type)
                && ty != Ty::of(v)
            {
                return Err(Error::dtype(
                    context(&info.name),
                    format!("declared {}, given {}", info.elem_type, v.elem_type_name()),
                ));
            }
            let Some(dims) = &info.dims else {
                continue;
            };
            let got = v.dims();
            let declared = dims
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let mismatch = || {
                Error::shape(
                    context(&info.name),
                    format!("declared [{declared}], given {}", v.shape()),
                )
            };
            if got.len() != dims.len() {
                return Err(mismatch());
            }
            for (d, &g) in dims.iter().zip(got) {
                match d {
                    Dim::Known(n) if *n != g => return Err(mismatch()),
                    Dim::Symbolic(s) => match symbols.get(s.as_str()) {
                        Some(&(n, other)) if n != g => {
                            return Err(Error::shape(
                                context(&info.name),
                                format!(
                                    "dim `{s}` is {g} here but {n} in input `{other}` \
                                     (declared [{declared}], given {})",
                                    v.shape()
                                ),
                            ));
                        }
                        _ => {
                            symbols.insert(s, (g, &info.name));
                        }
                    },
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Runs the model on `device`: `inputs` by name, every declared input given; returns the
    /// graph outputs by name.
    pub fn run(
        &self,
        device: &dyn Device,
        inputs: &HashMap<String, Value>,
    ) -> Result<HashMap<String, Value>> {
        self.run_with(device, inputs, None)
    }

    /// [`Session::run`], timing every step: returns the outputs and a [`Profile`] with the
    /// wall-clock seconds of each node in run order (fused nodes count as one step). The
    /// timing costs two clock reads per step; the run is otherwise the same.
    pub fn run_profiled(
        &self,
        device: &dyn Device,
        inputs: &HashMap<String, Value>,
    ) -> Result<(HashMap<String, Value>, Profile)> {
        let start = Instant::now();
        let mut steps = Vec::with_capacity(self.steps.len());
        let outputs = self.run_with(device, inputs, Some(&mut steps))?;
        let profile = Profile {
            steps,
            total_seconds: start.elapsed().as_secs_f64(),
        };
        Ok((outputs, profile))
    }

    /// The body of [`Session::run`]; records each step's time into `profile` when given.
    fn run_with(
        &self,
        device: &dyn Device,
        inputs: &HashMap<String, Value>,
        profile: Option<&mut Vec<StepProfile>>,
    ) -> Result<HashMap<String, Value>> {
        self.check_inputs(inputs)?;
        if let Some(gpu) = device.gpu() {
            return self.run_resident(device, gpu, inputs, profile);
        }
        crate::node::in_batch(device, || {
            self.recycler
                .scope(|| self.run_steps(device, inputs, profile))
        })
    }

    /// The steps of [`Session::run_with`], on the thread the device chose.
    fn run_steps(
        &self,
        device: &dyn Device,
        inputs: &HashMap<String, Value>,
        mut profile: Option<&mut Vec<StepProfile>>,
    ) -> Result<HashMap<String, Value>> {
        let mut env: Vec<Option<Cow<'_, Value>>> = self
            .consts
            .iter()
            .map(|c| c.as_ref().map(Cow::Borrowed))
            .collect();
        for (info, &id) in self.inputs.iter().zip(&self.input_ids) {
            env[id] = inputs.get(&info.name).map(Cow::Borrowed);
        }
        for (i, step) in self.steps.iter().enumerate() {
            // Inputs read for the last time, once, and owned here are moved into the op.
            let mut moved: Vec<Option<Value>> = step
                .inputs
                .iter()
                .map(|&id| {
                    let id = id?;
                    let once = step.inputs.iter().filter(|&&x| x == Some(id)).count() == 1;
                    if self.last_use[id] == Some(i)
                        && once
                        && matches!(env[id], Some(Cow::Owned(_)))
                    {
                        env[id].take().map(Cow::into_owned)
                    } else {
                        None
                    }
                })
                .collect();
            let mut vals = Vec::with_capacity(step.inputs.len());
            for (k, id) in step.inputs.iter().enumerate() {
                vals.push(match (moved[k].take(), id) {
                    (Some(v), _) => Some(Cow::Owned(v)),
                    (None, Some(id)) => {
                        let v = env[*id]
                            .as_deref()
                            .ok_or_else(|| self.no_value(step, *id))?;
                        Some(Cow::Borrowed(v))
                    }
                    (None, None) => None,
                });
            }
            let cx = Cx {
                dev: device,
                node: &step.node,
                opset: self.opset,
            };
            let shapes_in = profile.as_ref().map(|_| {
                vals.iter()
                    .map(|v| v.as_ref().map_or_else(Vec::new, |v| v.dims().to_vec()))
                    .collect::<Vec<_>>()
            });
            let started = Instant::now();
            let outs = ops::eval(&step.kind, &cx, Args::new(&step.node, vals))
                .map_err(|e| in_node(e, &step.node))?;
            if let Some(profile) = profile.as_mut() {
                profile.push(StepProfile {
                    node: step.node.display_name(),
                    op: step.kind.label(&step.node.op_type),
                    input_shapes: shapes_in.unwrap_or_default(),
                    output_shapes: outs
                        .iter()
                        .map(|v| v.as_ref().map_or_else(Vec::new, |v| v.dims().to_vec()))
                        .collect(),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            for (id, v) in step.outputs.iter().zip(outs) {
                if let Some(id) = id {
                    env[*id] = v.map(Cow::Owned);
                }
            }
            for &id in &self.frees[i] {
                if self.consts[id].is_none() {
                    ops::recycle(env[id].take());
                }
            }
        }
        let mut out = HashMap::with_capacity(self.outputs.len());
        for (info, &id) in self.outputs.iter().zip(&self.output_ids) {
            let v = match (env[id].take(), &self.consts[id]) {
                (Some(v), _) => v.into_owned(),
                (None, Some(c)) => c.clone(),
                (None, None) => return Err(no_output(info)),
            };
            out.insert(info.name.clone(), v);
        }
        Ok(out)
    }
}

/// Convolution weights `wt` (output channels first) with output channel `o`'s values scaled
/// by `factors[o]`, in `wt`'s dtype.
fn scaled_by_output_channel(wt: &Tensor, factors: &[f64]) -> Result<Value> {
    let per = wt.numel() / factors.len().max(1);
    let mut new_w = wt.to_f32_vec();
    for (chunk, &f) in new_w.chunks_mut(per.max(1)).zip(factors) {
        chunk
            .iter_mut()
            .for_each(|v| *v = (f64::from(*v) * f) as f32);
    }
    Ok(Value::Float(Tensor::from_f32(
        wt.shape().clone(),
        wt.dtype(),
        &new_w,
    )?))
}

/// The per-channel values of a constant broadcast against a 4-D `[N, C, H, W]` value of
/// `channels` channels: `[C, 1, 1]` or `[1, C, 1, 1]`, or one value for every channel (any
/// rank up to 4, every dim 1). `None` for any other shape.
fn per_channel(t: &Tensor, channels: usize) -> Option<Vec<f64>> {
    let dims = t.dims();
    let values = t.to_f64_vec();
    if dims.len() <= 4 && dims.iter().all(|&d| d == 1) {
        return Some(vec![values[0]; channels]);
    }
    let by_channel = matches!(dims, [c, 1, 1] | [1, c, 1, 1] if *c == channels);
    by_channel.then_some(values)
}
