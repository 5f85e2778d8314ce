//! The ONNX operators: each node is parsed once at load into a `Kind` (attributes checked
//! against the opset, anything not implemented refused as [`Error::Unsupported`]), then
//! evaluated per run by `eval`. Float compute (convolution, products, elementwise, pooling,
//! softmax, batch norm) goes through the node's [`Device`]; shape and index ops run on the host.
//!
//! - `nn`: Conv, ConvTranspose, Gemm, MatMul, pooling, normalisations, Softmax.
//! - `elementwise`: activations, arithmetic, comparisons, Clip, PRelu, Where, Cast.
//! - `shape`: Reshape, Transpose, Concat, Split, Gather, Slice, Pad, constants, ...
//! - `reduce`: the Reduce* family.
//! - `data`: element-generic data movement shared by the host ops.

pub(crate) mod data;
pub(crate) mod elementwise;
pub(crate) mod nn;
pub(crate) mod reduce;
pub(crate) mod shape;

use std::borrow::Cow;

use crate::node::Device;
use crate::onnx::model::{ElemType, Node};
use crate::onnx::value::Value;
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};

/// The oldest default-domain opset the executor accepts (6: the pytorch-converted test data;
/// the legacy `broadcast`/`axis` and `is_test` attributes are honoured).
pub const MIN_OPSET: i64 = 6;
/// The newest default-domain opset the executor knows (onnx 1.23).
pub const MAX_OPSET: i64 = 28;

/// The element kind of a value, as far as the executor distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// f32, f16, bf16 (and f64 narrowed on import).
    Float,
    /// Every integer type (held as int64).
    Int,
    /// Booleans.
    Bool,
}

impl Ty {
    /// The kind a declared element type is held as, if the executor holds it at all.
    pub fn of_elem(e: ElemType) -> Option<Ty> {
        match e {
            ElemType::Float | ElemType::Float16 | ElemType::BFloat16 | ElemType::Double => {
                Some(Ty::Float)
            }
            ElemType::Int64
            | ElemType::Int32
            | ElemType::Int8
            | ElemType::UInt8
            | ElemType::Int16
            | ElemType::UInt16 => Some(Ty::Int),
            ElemType::Bool => Some(Ty::Bool),
            ElemType::String | ElemType::Other(_) => None,
        }
    }

    /// The kind of a runtime value.
    pub fn of(v: &Value) -> Ty {
        match v {
            Value::Float(_) => Ty::Float,
            Value::Int64 { .. } => Ty::Int,
            Value::Bool { .. } => Ty::Bool,
        }
    }
}

/// What load-time shape inference knows about a value: its kind and (fully known) dims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// The element kind, if known.
    pub ty: Option<Ty>,
    /// The dims, if all are known.
    pub dims: Option<Vec<usize>>,
}

impl Meta {
    /// A value of kind `ty` with dims `dims`.
    pub fn new(ty: Ty, dims: Vec<usize>) -> Meta {
        Meta {
            ty: Some(ty),
            dims: Some(dims),
        }
    }

    /// A value of kind `ty`, dims unknown.
    pub fn of_ty(ty: Option<Ty>) -> Meta {
        Meta { ty, dims: None }
    }

    /// The meta of a concrete value.
    pub fn of_value(v: &Value) -> Meta {
        Meta::new(Ty::of(v), v.dims().to_vec())
    }
}

/// One node's parsed operator.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// Convolution (1-D and 2-D).
    Conv(nn::ConvAttrs),
    /// Transposed convolution (2-D).
    ConvTranspose(nn::ConvTransposeAttrs),
    /// `alpha·op(A)·op(B) + beta·C`.
    Gemm(nn::GemmAttrs),
    /// numpy matmul.
    MatMul,
    /// MaxPool / AveragePool (1-D and 2-D).
    Pool(nn::PoolAttrs),
    /// GlobalAveragePool / GlobalMaxPool.
    GlobalPool {
        /// Max instead of mean.
        max: bool,
    },
    /// BatchNormalization in inference form.
    BatchNorm(nn::BatchNormAttrs),
    /// InstanceNormalization.
    InstanceNorm {
        /// Added to the variance.
        epsilon: f32,
    },
    /// Local response normalisation.
    Lrn(accelmesh_kernels::norm::Lrn),
    /// Softmax / LogSoftmax.
    Softmax(nn::SoftmaxAttrs),
    /// An activation the devices run.
    Unary(crate::op::Unary),
    /// An elementwise function run on the host.
    HostUnary(elementwise::HostFn),
    /// Clip with attribute or input bounds.
    Clip(elementwise::ClipAttrs),
    /// A broadcasting binary operator.
    Binary(elementwise::BinaryAttrs),
    /// Sum / Mean / Max / Min of any number of inputs.
    Variadic(elementwise::VariadicAttrs),
    /// Parametric ReLU.
    PRelu {
        /// Opset < 7: a 1-D slope of length C applies per channel.
        legacy: bool,
    },
    /// `cond ? x : y`.
    Where,
    /// Element type conversion.
    Cast(elementwise::CastTo),
    /// Flatten to 2-D at `axis`.
    Flatten(i64),
    /// Reshape.
    Reshape(shape::ReshapeAttrs),
    /// Transpose (default: reversed axes).
    Transpose(Option<Vec<i64>>),
    /// Squeeze with attribute axes (`None`: from input 1, or every size-1 axis).
    Squeeze(Option<Vec<i64>>),
    /// Unsqueeze with attribute axes (`None`: from input 1).
    Unsqueeze(Option<Vec<i64>>),
    /// Concat along an axis.
    Concat(i64),
    /// Split along an axis.
    Split(shape::SplitAttrs),
    /// Gather along an axis.
    Gather(i64),
    /// Slice (attributes before opset 10, inputs after).
    Slice(shape::SliceAttrs),
    /// Pad (attributes before opset 11, inputs after).
    Pad(shape::PadAttrs),
    /// Tile.
    Tile,
    /// Expand.
    Expand,
    /// Shape, with optional start / end.
    Shape {
        /// First axis (may be negative).
        start: i64,
        /// One past the last axis (may be negative), `None` for the rank.
        end: Option<i64>,
    },
    /// Size.
    Size,
    /// ConstantOfShape with its one-element value.
    ConstantOfShape(Value),
    /// Constant.
    Constant(Value),
    /// Range.
    Range,
    /// Identity.
    Identity,
    /// Dropout in inference: identity, optional all-true mask.
    Dropout {
        /// Opset < 10: the mask has the input's float type, not bool.
        float_mask: bool,
    },
    /// ReduceSum, ReduceMean, ...
    Reduce(reduce::ReduceAttrs),
}

impl Kind {
    /// Whether the node may be computed at load when all its inputs are constants (true for
    /// every supported operator: all are deterministic in inference).
    pub(crate) fn foldable(&self) -> bool {
        true
    }

    /// The operator `op_type` as run, with what was fused into it at load (`Conv+Relu`).
    pub(crate) fn label(&self, op_type: &str) -> String {
        match self {
            Kind::Conv(a) => {
                let mut label = op_type.to_string();
                if a.residual {
                    label.push_str("+Add");
                }
                if a.relu {
                    label.push_str("+Relu");
                }
                if a.pool.is_some() {
                    label.push_str("+MaxPool");
                }
                label
            }
            Kind::BatchNorm(a) if a.relu => format!("{op_type}+Relu"),
            _ => op_type.to_string(),
        }
    }
}

/// The supported operators of the default domain and the first opset each is available in.
const OPERATORS: &[(&str, i64)] = &[
    ("Abs", 6),
    ("Add", 6),
    ("And", 7),
    ("AveragePool", 6),
    ("BatchNormalization", 6),
    ("Cast", 6),
    ("Ceil", 6),
    ("Clip", 6),
    ("Concat", 6),
    ("Constant", 6),
    ("ConstantOfShape", 9),
    ("Conv", 6),
    ("ConvTranspose", 6),
    ("Cos", 7),
    ("Div", 6),
    ("Dropout", 6),
    ("Elu", 6),
    ("Equal", 7),
    ("Erf", 9),
    ("Exp", 6),
    ("Expand", 8),
    ("Flatten", 6),
    ("Floor", 6),
    ("Gather", 6),
    ("Gelu", 20),
    ("Gemm", 6),
    ("GlobalAveragePool", 6),
    ("GlobalMaxPool", 6),
    ("Greater", 7),
    ("GreaterOrEqual", 12),
    ("HardSigmoid", 6),
    ("HardSwish", 14),
    ("Identity", 6),
    ("InstanceNormalization", 6),
    ("LRN", 6),
    ("LeakyRelu", 6),
    ("Less", 7),
    ("LessOrEqual", 12),
    ("Log", 6),
    ("LogSoftmax", 6),
    ("MatMul", 6),
    ("Max", 6),
    ("MaxPool", 6),
    ("Mean", 6),
    ("Min", 6),
    ("Mul", 6),
    ("Neg", 6),
    ("Not", 6),
    ("Or", 7),
    ("PRelu", 6),
    ("Pad", 6),
    ("Pow", 6),
    ("Range", 11),
    ("Reciprocal", 6),
    ("ReduceL1", 6),
    ("ReduceL2", 6),
    ("ReduceLogSum", 6),
    ("ReduceLogSumExp", 6),
    ("ReduceMax", 6),
    ("ReduceMean", 6),
    ("ReduceMin", 6),
    ("ReduceProd", 6),
    ("ReduceSum", 6),
    ("ReduceSumSquare", 6),
    ("Relu", 6),
    ("Reshape", 6),
    ("Round", 11),
    ("Selu", 6),
    ("Shape", 6),
    ("Sigmoid", 6),
    ("Sign", 9),
    ("Sin", 7),
    ("Size", 6),
    ("Slice", 6),
    ("Softmax", 6),
    ("Softplus", 6),
    ("Softsign", 6),
    ("Split", 6),
    ("Sqrt", 6),
    ("Squeeze", 6),
    ("Sub", 6),
    ("Sum", 6),
    ("Tanh", 6),
    ("Tile", 6),
    ("Transpose", 6),
    ("Unsqueeze", 6),
    ("Where", 9),
    ("Xor", 7),
];

/// Whether `op_type` of `domain` (`""` or `ai.onnx`) runs at `opset`.
pub(crate) fn is_supported(op_type: &str, domain: &str, opset: i64) -> bool {
    (domain.is_empty() || domain == "ai.onnx")
        && (MIN_OPSET..=MAX_OPSET).contains(&opset)
        && OPERATORS
            .iter()
            .any(|&(name, since)| name == op_type && opset >= since)
}

/// The operator names the executor supports (default domain), for messages and docs.
pub(crate) fn operator_names() -> impl Iterator<Item = &'static str> {
    OPERATORS.iter().map(|&(name, _)| name)
}

/// What an operator needs while it runs: the device, and the node for error messages.
pub(crate) struct Cx<'a> {
    /// The device the float compute runs on.
    pub dev: &'a dyn Device,
    /// The node being run.
    pub node: &'a Node,
    /// The default-domain opset of the model.
    pub opset: i64,
}

impl Cx<'_> {
    /// An [`Error::Unsupported`] naming this node.
    pub fn unsupported(&self, detail: impl Into<String>) -> Error {
        Error::unsupported(
            self.node.display_name(),
            &self.node.op_type,
            self.opset,
            detail,
        )
    }

    /// `node `name` (Op)`: the context of this node's errors.
    pub fn ctx(&self) -> String {
        node_ctx(self.node)
    }

    /// Runs `op` on the device and returns its single output.
    pub fn run(&self, op: &Op, inputs: &[&Tensor]) -> Result<Tensor> {
        let mut out = self.dev.execute(op, inputs)?;
        if out.len() != 1 {
            return Err(Error::device(
                self.dev.info().id.clone(),
                format!("{} returned {} outputs, expected 1", op.name(), out.len()),
            ));
        }
        Ok(out.remove(0))
    }

    /// Whether output `i` of the node is used (named).
    pub fn wants(&self, i: usize) -> bool {
        self.node.outputs.get(i).is_some_and(|o| !o.is_empty())
    }
}

/// `node `name` (Op)`: the context of a node's errors.
pub(crate) fn node_ctx(node: &Node) -> String {
    format!("node `{}` ({})", node.display_name(), node.op_type)
}

/// The inputs of one node as it runs: present or absent; values whose last use this is may
/// be owned, so that reshapes and identities move them instead of copying.
pub(crate) struct Args<'a> {
    vals: Vec<Option<Cow<'a, Value>>>,
    ctx: String,
    names: &'a [String],
}

/// Gives a value the run owned (read for the last time) back for recycling if it is an f32
/// tensor, so the next output of the same size reuses its memory; drops anything else.
pub(crate) fn recycle(value: Option<Cow<'_, Value>>) {
    if let Some(Cow::Owned(Value::Float(t))) = value
        && let TensorData::F32(values) = t.into_data()
    {
        crate::node::recycle::give_back(values);
    }
}

/// Hands a tensor an op computed and no longer needs (an intermediate of its own) to the
/// recycler, as [`recycle`] does with a dead value.
pub(crate) fn recycle_tensor(t: Tensor) {
    recycle(Some(Cow::Owned(Value::Float(t))));
}

impl Drop for Args<'_> {
    /// Recycles the inputs the op was handed to own and did not keep.
    fn drop(&mut self) {
        self.vals.drain(..).for_each(recycle);
    }
}

impl<'a> Args<'a> {
    /// Wraps the inputs of `node`.
    pub fn new(node: &'a Node, vals: Vec<Option<Cow<'a, Value>>>) -> Args<'a> {
        Args {
            vals,
            ctx: node_ctx(node),
            names: &node.inputs,
        }
    }

    /// Input `i`, if present.
    pub fn get(&self, i: usize) -> Option<&Value> {
        self.vals.get(i).and_then(|v| v.as_deref())
    }

    /// Input `i`, or an error naming it when absent.
    pub fn req(&self, i: usize) -> Result<&Value> {
        self.get(i).ok_or_else(|| self.missing(i))
    }

    /// Input `i` as a float tensor.
    pub fn tensor(&self, i: usize) -> Result<&Tensor> {
        let v = self.req(i)?;
        v.as_tensor().map_err(|_| {
            Error::dtype(
                &self.ctx,
                format!(
                    "input {i} (`{}`) is {} of shape {}, expected a float tensor",
                    self.name(i),
                    v.elem_type_name(),
                    v.shape()
                ),
            )
        })
    }

    /// Input `i` as int64 elements.
    pub fn ints(&self, i: usize) -> Result<&[i64]> {
        let v = self.req(i)?;
        v.as_ints().map_err(|_| {
            Error::dtype(
                &self.ctx,
                format!(
                    "input {i} (`{}`) is {} of shape {}, expected int64",
                    self.name(i),
                    v.elem_type_name(),
                    v.shape()
                ),
            )
        })
    }

    /// Input `i` as int64 elements, `None` when absent.
    pub fn opt_ints(&self, i: usize) -> Result<Option<&[i64]>> {
        if self.get(i).is_none() {
            return Ok(None);
        }
        self.ints(i).map(Some)
    }

    /// Takes input `i` by value (a copy unless it is owned here).
    pub fn take(&mut self, i: usize) -> Result<Value> {
        let missing = self.missing(i);
        let v = self.vals.get_mut(i).and_then(Option::take).ok_or(missing)?;
        Ok(v.into_owned())
    }

    /// Takes input `i` if it is an f32 tensor owned here (read for the last time), leaving
    /// every other input where it is.
    pub fn take_owned_f32(&mut self, i: usize) -> Option<Tensor> {
        let slot = self.vals.get_mut(i)?;
        if !matches!(slot, Some(Cow::Owned(Value::Float(t))) if t.dtype() == crate::tensor::DType::F32)
        {
            return None;
        }
        slot.take()?.into_owned().into_tensor().ok()
    }

    /// The present inputs, in order.
    pub fn present(&self) -> Vec<&Value> {
        self.vals.iter().filter_map(|v| v.as_deref()).collect()
    }

    /// The name of input `i`.
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("", String::as_str)
    }

    /// The error context (`node `x` (Op)`).
    pub fn ctx(&self) -> &str {
        &self.ctx
    }

    fn missing(&self, i: usize) -> Error {
        Error::shape(
            &self.ctx,
            format!("required input {i} (`{}`) is missing", self.name(i)),
        )
    }
}

/// Fails with an [`Error::Unsupported`] for the first attribute of `node` not in `allowed`.
pub(crate) fn check_attrs(node: &Node, opset: i64, allowed: &[&str]) -> Result<()> {
    let mut names: Vec<&String> = node.attributes.keys().collect();
    names.sort();
    for name in names {
        if !allowed.contains(&name.as_str()) {
            return Err(Error::unsupported(
                node.display_name(),
                &node.op_type,
                opset,
                format!(
                    "attribute `{name}` is not supported (known: {})",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// An [`Error::Unsupported`] for `node`.
pub(crate) fn unsupported(node: &Node, opset: i64, detail: impl Into<String>) -> Error {
    Error::unsupported(node.display_name(), &node.op_type, opset, detail)
}

/// An error for a malformed node (wrong input or output count, contradictory attributes).
pub(crate) fn malformed(node: &Node, detail: impl Into<String>) -> Error {
    Error::parse("ONNX node", node_ctx(node), detail)
}

/// Checks the number of inputs (counting absent trailing ones) and outputs of `node`.
pub(crate) fn check_arity(
    node: &Node,
    inputs: (usize, usize),
    outputs: (usize, usize),
) -> Result<()> {
    let n_in = node.inputs.len();
    let n_out = node.outputs.len();
    let required_present = (0..inputs.0).all(|i| node.input(i).is_some());
    if n_in < inputs.0 || n_in > inputs.1 || !required_present {
        return Err(malformed(
            node,
            format!(
                "has inputs {:?}; the operator takes {}",
                node.inputs,
                range_text(inputs)
            ),
        ));
    }
    if n_out < outputs.0 || n_out > outputs.1 {
        return Err(malformed(
            node,
            format!(
                "has outputs {:?}; the operator gives {}",
                node.outputs,
                range_text(outputs)
            ),
        ));
    }
    Ok(())
}

fn range_text((lo, hi): (usize, usize)) -> String {
    if lo == hi {
        lo.to_string()
    } else if hi == usize::MAX {
        format!("{lo} or more")
    } else {
        format!("{lo} to {hi}")
    }
}

/// Parses `node` at `opset` into a [`Kind`]: every attribute checked, every operator, attribute
/// and value the executor does not implement an [`Error::Unsupported`].
pub(crate) fn parse(node: &Node, opset: i64) -> Result<Kind> {
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Err(unsupported(
            node,
            opset,
            format!(
                "domain `{}` is not supported (only the default domain)",
                node.domain
            ),
        ));
    }
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(unsupported(
            node,
            opset,
            format!("opset {opset} is outside the supported range {MIN_OPSET} to {MAX_OPSET}"),
        ));
    }
    let Some(&(_, since)) = OPERATORS.iter().find(|(n, _)| *n == node.op_type) else {
        return Err(unsupported(node, opset, "the operator is not implemented"));
    };
    if opset < since {
        return Err(unsupported(
            node,
            opset,
            format!("the operator does not exist before opset {since}"),
        ));
    }
    let op = node.op_type.as_str();
    if let Some(k) = nn::parse(node, opset)? {
        return Ok(k);
    }
    if let Some(k) = elementwise::parse(node, opset)? {
        return Ok(k);
    }
    if let Some(k) = shape::parse(node, opset)? {
        return Ok(k);
    }
    if let Some(k) = reduce::parse(node, opset)? {
        return Ok(k);
    }
    Err(unsupported(node, opset, format!("no parser for {op}")))
}

/// Runs one node: one entry per node output (`None` for the unnamed ones an op skips).
pub(crate) fn eval(kind: &Kind, cx: &Cx<'_>, args: Args<'_>) -> Result<Vec<Option<Value>>> {
    let n_out = cx.node.outputs.len();
    let mut out = match kind {
        Kind::Conv(_)
        | Kind::ConvTranspose(_)
        | Kind::Gemm(_)
        | Kind::MatMul
        | Kind::Pool(_)
        | Kind::GlobalPool { .. }
        | Kind::BatchNorm(_)
        | Kind::InstanceNorm { .. }
        | Kind::Lrn(_)
        | Kind::Softmax(_) => nn::eval(kind, cx, args)?,
        Kind::Unary(_)
        | Kind::HostUnary(_)
        | Kind::Clip(_)
        | Kind::Binary(_)
        | Kind::Variadic(_)
        | Kind::PRelu { .. }
        | Kind::Where
        | Kind::Cast(_) => elementwise::eval(kind, cx, args)?,
        Kind::Reduce(_) => reduce::eval(kind, cx, args)?,
        _ => shape::eval(kind, cx, args)?,
    };
    out.resize_with(n_out, || None);
    Ok(out)
}

/// Load-time shape inference for one node: a [`Meta`] per output (unknown where it cannot
/// tell); `consts` holds the inputs whose values are known (initializers, folded nodes).
pub(crate) fn infer(
    kind: &Kind,
    node: &Node,
    opset: i64,
    ins: &[Option<Meta>],
    consts: &[Option<&Value>],
) -> Result<Vec<Meta>> {
    let mut out = match kind {
        Kind::Conv(_)
        | Kind::ConvTranspose(_)
        | Kind::Gemm(_)
        | Kind::MatMul
        | Kind::Pool(_)
        | Kind::GlobalPool { .. }
        | Kind::BatchNorm(_)
        | Kind::InstanceNorm { .. }
        | Kind::Lrn(_)
        | Kind::Softmax(_) => nn::infer(kind, node, opset, ins, consts)?,
        Kind::Unary(_)
        | Kind::HostUnary(_)
        | Kind::Clip(_)
        | Kind::Binary(_)
        | Kind::Variadic(_)
        | Kind::PRelu { .. }
        | Kind::Where
        | Kind::Cast(_) => elementwise::infer(kind, node, ins)?,
        Kind::Reduce(_) => reduce::infer(kind, node, ins, consts)?,
        _ => shape::infer(kind, node, ins, consts)?,
    };
    out.resize_with(node.outputs.len(), Meta::default);
    Ok(out)
}

/// The dims of input `i` when known.
pub(crate) fn in_dims(ins: &[Option<Meta>], i: usize) -> Option<&[usize]> {
    ins.get(i)?.as_ref()?.dims.as_deref()
}

/// The kind of input `i` when known.
pub(crate) fn in_ty(ins: &[Option<Meta>], i: usize) -> Option<Ty> {
    ins.get(i)?.as_ref()?.ty
}
