//! Elementwise operators: activations, arithmetic with broadcasting (and the legacy
//! `broadcast` / `axis` attributes of opset 6), variadic Sum / Mean / Max / Min, comparisons
//! and logic, Clip, PRelu, Where and Cast.
//!
//! Float activations and arithmetic the devices implement run there (`Op::Unary`,
//! `Op::Binary`); the others (Abs, Sqrt, Log, Pow, Max, ...) and every integer or boolean
//! computation run on the host.

use super::data::{
    self, Elem, RearrangeMany, broadcast_dims, broadcast_to, broadcast_zip, floats, with_shape,
};
use super::nn::scalar;
use super::{
    Args, Cx, Kind, Meta, Ty, check_arity, check_attrs, in_dims, in_ty, malformed, unsupported,
};
use crate::onnx::model::Node;
use crate::onnx::value::Value;
use crate::op::{BinaryOp, Op, Unary};
use crate::tensor::{DType, Shape, Tensor};
use crate::{Error, Result};

/// An elementwise function the host computes (in f64 for floats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum HostFn {
    /// `|x|`.
    Abs,
    /// `-x`.
    Neg,
    /// `√x`.
    Sqrt,
    /// `ln x`.
    Log,
    /// `1 / x`.
    Reciprocal,
    /// `⌊x⌋`.
    Floor,
    /// `⌈x⌉`.
    Ceil,
    /// Round half to even.
    Round,
    /// `ln(1 + eˣ)`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `γ·x` above 0, `γ·α·(eˣ - 1)` below.
    Selu {
        /// α.
        alpha: f32,
        /// γ.
        gamma: f32,
    },
    /// `sin x`.
    Sin,
    /// `cos x`.
    Cos,
    /// -1, 0 or 1.
    Sign,
    /// Logical not (bool).
    Not,
    /// `max(x, 0)` of integers (float Relu runs on the device).
    Relu,
}

/// Clip bounds: attributes before opset 11, optional inputs 1 and 2 after.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClipAttrs {
    /// The attribute bounds (opset < 11).
    pub attr: Option<(f32, f32)>,
}

/// A binary operator with numpy broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b` (integers truncate).
    Div,
    /// `aᵇ`.
    Pow,
    /// Larger (NaN propagates).
    Max,
    /// Smaller (NaN propagates).
    Min,
    /// `a == b`.
    Equal,
    /// `a < b`.
    Less,
    /// `a > b`.
    Greater,
    /// `a <= b`.
    LessOrEqual,
    /// `a >= b`.
    GreaterOrEqual,
    /// Logical and.
    And,
    /// Logical or.
    Or,
    /// Logical xor.
    Xor,
}

impl BinOp {
    /// True for the comparisons and logic ops, which give bools.
    fn gives_bool(self) -> bool {
        matches!(
            self,
            BinOp::Equal
                | BinOp::Less
                | BinOp::Greater
                | BinOp::LessOrEqual
                | BinOp::GreaterOrEqual
                | BinOp::And
                | BinOp::Or
                | BinOp::Xor
        )
    }

    /// The device op, for the four arithmetic operators.
    pub(crate) fn device(self) -> Option<BinaryOp> {
        match self {
            BinOp::Add => Some(BinaryOp::Add),
            BinOp::Sub => Some(BinaryOp::Sub),
            BinOp::Mul => Some(BinaryOp::Mul),
            BinOp::Div => Some(BinaryOp::Div),
            _ => None,
        }
    }
}

/// A binary operator and, before opset 7, its legacy broadcast.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BinaryAttrs {
    /// The operator.
    pub op: BinOp,
    /// Opset < 7 with `broadcast = 1`: B is aligned with A from this axis (`None`: suffix).
    pub legacy_axis: Option<Option<i64>>,
}

/// Sum / Mean / Max / Min over any number of inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VariadicAttrs {
    /// The pairwise operator (Add for Sum and Mean).
    pub op: BinOp,
    /// Divide by the input count.
    pub mean: bool,
}

/// The target of a Cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastTo {
    /// A float dtype (f64 is held as f32).
    Float(DType),
    /// An integer type: bits and signedness (held as int64, values wrapped to the type).
    Int {
        /// Width in bits.
        bits: u32,
        /// Signed.
        signed: bool,
    },
    /// Bool.
    Bool,
}

impl CastTo {
    /// The kind of the result.
    pub(crate) fn ty(self) -> Ty {
        match self {
            CastTo::Float(_) => Ty::Float,
            CastTo::Int { .. } => Ty::Int,
            CastTo::Bool => Ty::Bool,
        }
    }

    /// `v` wrapped to the integer type (as a C cast of the int64).
    fn wrap(self, v: i64) -> i64 {
        match self {
            CastTo::Int {
                bits: 8,
                signed: true,
            } => v as i8 as i64,
            CastTo::Int {
                bits: 8,
                signed: false,
            } => v as u8 as i64,
            CastTo::Int {
                bits: 16,
                signed: true,
            } => v as i16 as i64,
            CastTo::Int {
                bits: 16,
                signed: false,
            } => v as u16 as i64,
            CastTo::Int {
                bits: 32,
                signed: true,
            } => v as i32 as i64,
            CastTo::Int {
                bits: 32,
                signed: false,
            } => v as u32 as i64,
            _ => v,
        }
    }
}

/// Parses the operators of this module (`None` for other operators).
pub(crate) fn parse(node: &Node, opset: i64) -> Result<Option<Kind>> {
    let op = node.op_type.as_str();
    let unary = |attrs: &[&str]| -> Result<()> {
        check_attrs(node, opset, attrs)?;
        check_arity(node, (1, 1), (1, 1))
    };
    let dev = |u: Unary, attrs: &[&str]| -> Result<Option<Kind>> {
        unary(attrs)?;
        Ok(Some(Kind::Unary(u)))
    };
    let host = |f: HostFn, attrs: &[&str]| -> Result<Option<Kind>> {
        unary(attrs)?;
        Ok(Some(Kind::HostUnary(f)))
    };
    match op {
        "Relu" => dev(Unary::Relu, &[]),
        "Sigmoid" => dev(Unary::Sigmoid, &[]),
        "Tanh" => dev(Unary::Tanh, &[]),
        "Exp" => dev(Unary::Exp, &[]),
        "Erf" => dev(Unary::Erf, &[]),
        "HardSwish" => dev(Unary::HardSwish, &[]),
        "LeakyRelu" => {
            let alpha = finite(node, "alpha", 0.01)?;
            dev(Unary::LeakyRelu { alpha }, &["alpha"])
        }
        "Elu" => {
            let alpha = finite(node, "alpha", 1.0)?;
            dev(Unary::Elu { alpha }, &["alpha"])
        }
        "HardSigmoid" => {
            let alpha = finite(node, "alpha", 0.2)?;
            let beta = finite(node, "beta", 0.5)?;
            dev(Unary::HardSigmoid { alpha, beta }, &["alpha", "beta"])
        }
        "Gelu" => {
            let u = match node.attr_string("approximate", "none")?.as_str() {
                "none" => Unary::Gelu,
                "tanh" => Unary::GeluTanh,
                other => {
                    return Err(malformed(
                        node,
                        format!("approximate `{other}` is not defined"),
                    ));
                }
            };
            dev(u, &["approximate"])
        }
        "Abs" => host(HostFn::Abs, &[]),
        "Neg" => host(HostFn::Neg, &[]),
        "Sqrt" => host(HostFn::Sqrt, &[]),
        "Log" => host(HostFn::Log, &[]),
        "Reciprocal" => host(HostFn::Reciprocal, &[]),
        "Floor" => host(HostFn::Floor, &[]),
        "Ceil" => host(HostFn::Ceil, &[]),
        "Round" => host(HostFn::Round, &[]),
        "Softplus" => host(HostFn::Softplus, &[]),
        "Softsign" => host(HostFn::Softsign, &[]),
        "Sin" => host(HostFn::Sin, &[]),
        "Cos" => host(HostFn::Cos, &[]),
        "Sign" => host(HostFn::Sign, &[]),
        "Not" => host(HostFn::Not, &[]),
        "Selu" => {
            let alpha = finite(node, "alpha", 1.673_263_2)?;
            let gamma = finite(node, "gamma", 1.050_701)?;
            host(HostFn::Selu { alpha, gamma }, &["alpha", "gamma"])
        }
        "Clip" => {
            if opset < 11 {
                check_attrs(node, opset, &["max", "min"])?;
                check_arity(node, (1, 1), (1, 1))?;
                let min = node.attr_float("min", f32::MIN)?;
                let max = node.attr_float("max", f32::MAX)?;
                if min.is_nan() || max.is_nan() {
                    return Err(malformed(node, "min and max must not be NaN"));
                }
                Ok(Some(Kind::Clip(ClipAttrs {
                    attr: Some((min, max)),
                })))
            } else {
                check_attrs(node, opset, &[])?;
                check_arity(node, (1, 3), (1, 1))?;
                Ok(Some(Kind::Clip(ClipAttrs { attr: None })))
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "Greater" | "LessOrEqual"
        | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let bop = match op {
                "Add" => BinOp::Add,
                "Sub" => BinOp::Sub,
                "Mul" => BinOp::Mul,
                "Div" => BinOp::Div,
                "Pow" => BinOp::Pow,
                "Equal" => BinOp::Equal,
                "Less" => BinOp::Less,
                "Greater" => BinOp::Greater,
                "LessOrEqual" => BinOp::LessOrEqual,
                "GreaterOrEqual" => BinOp::GreaterOrEqual,
                "And" => BinOp::And,
                "Or" => BinOp::Or,
                _ => BinOp::Xor,
            };
            check_arity(node, (2, 2), (1, 1))?;
            let legacy_axis = if opset < 7 {
                check_attrs(node, opset, &["axis", "broadcast"])?;
                (node.attr_int("broadcast", 0)? != 0)
                    .then(|| {
                        node.has_attr("axis")
                            .then(|| node.attr_int("axis", 0))
                            .transpose()
                    })
                    .transpose()?
            } else {
                check_attrs(node, opset, &[])?;
                None
            };
            Ok(Some(Kind::Binary(BinaryAttrs {
                op: bop,
                legacy_axis,
            })))
        }
        "Sum" | "Mean" | "Max" | "Min" => {
            check_attrs(node, opset, &[])?;
            check_arity(node, (1, usize::MAX), (1, 1))?;
            if node.inputs.iter().any(String::is_empty) {
                return Err(malformed(node, "an input is unnamed"));
            }
            let (op, mean) = match op {
                "Sum" => (BinOp::Add, false),
                "Mean" => (BinOp::Add, true),
                "Max" => (BinOp::Max, false),
                _ => (BinOp::Min, false),
            };
            Ok(Some(Kind::Variadic(VariadicAttrs { op, mean })))
        }
        "PRelu" => {
            check_attrs(node, opset, &[])?;
            check_arity(node, (2, 2), (1, 1))?;
            Ok(Some(Kind::PRelu { legacy: opset < 7 }))
        }
        "Where" => {
            check_attrs(node, opset, &[])?;
            check_arity(node, (3, 3), (1, 1))?;
            Ok(Some(Kind::Where))
        }
        "Cast" => {
            check_attrs(node, opset, &["saturate", "round_mode", "to"])?;
            check_arity(node, (1, 1), (1, 1))?;
            if !node.has_attr("to") {
                return Err(malformed(node, "attribute `to` is required"));
            }
            let to = match node.attr_int("to", 0)? {
                1 | 11 => CastTo::Float(DType::F32),
                10 => CastTo::Float(DType::F16),
                16 => CastTo::Float(DType::BF16),
                2 => CastTo::Int {
                    bits: 8,
                    signed: false,
                },
                3 => CastTo::Int {
                    bits: 8,
                    signed: true,
                },
                4 => CastTo::Int {
                    bits: 16,
                    signed: false,
                },
                5 => CastTo::Int {
                    bits: 16,
                    signed: true,
                },
                6 => CastTo::Int {
                    bits: 32,
                    signed: true,
                },
                7 => CastTo::Int {
                    bits: 64,
                    signed: true,
                },
                12 => CastTo::Int {
                    bits: 32,
                    signed: false,
                },
                13 => CastTo::Int {
                    bits: 64,
                    signed: false,
                },
                9 => CastTo::Bool,
                other => {
                    return Err(unsupported(
                        node,
                        opset,
                        format!("cast to element type code {other}"),
                    ));
                }
            };
            Ok(Some(Kind::Cast(to)))
        }
        _ => Ok(None),
    }
}

/// The finite float attribute `name` (default `default`).
fn finite(node: &Node, name: &str, default: f32) -> Result<f32> {
    let v = node.attr_float(name, default)?;
    if !v.is_finite() {
        return Err(malformed(node, format!("{name} = {v} must be finite")));
    }
    Ok(v)
}

/// Runs the operators of this module.
pub(crate) fn eval(kind: &Kind, cx: &Cx<'_>, mut args: Args<'_>) -> Result<Vec<Option<Value>>> {
    let v = match kind {
        Kind::Unary(u) => {
            let x = args.req(0)?;
            match (u, x) {
                (_, Value::Float(t)) => Value::Float(cx.run(&Op::Unary(*u), &[t])?),
                (Unary::Relu, Value::Int64 { .. }) => host_unary(cx, HostFn::Relu, x)?,
                _ => return Err(type_error(cx, &args, 0, "float")),
            }
        }
        Kind::HostUnary(f) => {
            let x = args.req(0)?;
            if let (HostFn::Neg, Value::Float(t)) = (f, x) {
                Value::Float(cx.run(&Op::Binary(BinaryOp::Mul), &[t, &scalar(-1.0)])?)
            } else {
                host_unary(cx, *f, x)?
            }
        }
        Kind::Clip(c) => clip(c, cx, &args)?,
        Kind::Binary(b) => {
            let a = args.req(0)?;
            match b.legacy_axis {
                Some(axis) => {
                    let bv = legacy_broadcast(cx, a.dims(), args.req(1)?.clone(), axis)?;
                    binary(cx, b.op, a, &bv)?
                }
                None => binary(cx, b.op, a, args.req(1)?)?,
            }
        }
        Kind::Variadic(v) => {
            let vals = args.present();
            let mut acc = binary_or_copy(cx, v.op, vals[0], vals.get(1).copied())?;
            for x in vals.iter().skip(2) {
                acc = binary(cx, v.op, &acc, x)?;
            }
            if v.mean && vals.len() > 1 {
                let t = acc.as_tensor()?;
                acc = Value::Float(cx.run(
                    &Op::Binary(BinaryOp::Mul),
                    &[t, &scalar(1.0 / vals.len() as f32)],
                )?);
            }
            acc
        }
        Kind::PRelu { legacy } => prelu(cx, &args, *legacy)?,
        Kind::Where => where_(cx, &args)?,
        Kind::Cast(to) => cast(args.take(0)?, *to)?,
        _ => return Err(cx.unsupported("not an elementwise operator")),
    };
    Ok(vec![Some(v)])
}

/// A dtype error for input `i` of the wrong kind.
fn type_error(cx: &Cx<'_>, args: &Args<'_>, i: usize, expected: &str) -> Error {
    let (name, ty) = (
        args.name(i),
        args.get(i).map_or("absent", |v| v.elem_type_name()),
    );
    Error::dtype(
        cx.ctx(),
        format!("input {i} (`{name}`) is {ty}, expected {expected}"),
    )
}

/// Applies a host function elementwise.
fn host_unary(cx: &Cx<'_>, f: HostFn, x: &Value) -> Result<Value> {
    let shape = x.shape().clone();
    match x {
        Value::Float(_) => {
            let src = floats(x)?;
            let g = |v: f32| -> f32 {
                let d = f64::from(v);
                (match f {
                    HostFn::Abs => d.abs(),
                    HostFn::Neg => -d,
                    HostFn::Sqrt => d.sqrt(),
                    HostFn::Log => d.ln(),
                    HostFn::Reciprocal => 1.0 / d,
                    HostFn::Floor => d.floor(),
                    HostFn::Ceil => d.ceil(),
                    HostFn::Round => d.round_ties_even(),
                    HostFn::Softplus => {
                        if d > 0.0 {
                            d + (-d).exp().ln_1p()
                        } else {
                            d.exp().ln_1p()
                        }
                    }
                    HostFn::Softsign => d / (1.0 + d.abs()),
                    HostFn::Selu { alpha, gamma } => {
                        let (a, g) = (f64::from(alpha), f64::from(gamma));
                        if d > 0.0 { g * d } else { g * a * d.exp_m1() }
                    }
                    HostFn::Sin => d.sin(),
                    HostFn::Cos => d.cos(),
                    HostFn::Sign => {
                        if d > 0.0 {
                            1.0
                        } else if d < 0.0 {
                            -1.0
                        } else {
                            d
                        }
                    }
                    HostFn::Relu => d.max(0.0),
                    HostFn::Not => f64::NAN,
                }) as f32
            };
            if f == HostFn::Not {
                return Err(Error::dtype(cx.ctx(), "Not takes bool input, got float"));
            }
            data::float_value(shape, src.iter().map(|&v| g(v)).collect())
        }
        Value::Int64 { data, .. } => {
            let g = |v: i64| -> Option<i64> {
                Some(match f {
                    HostFn::Abs => v.wrapping_abs(),
                    HostFn::Neg => v.wrapping_neg(),
                    HostFn::Sign => v.signum(),
                    HostFn::Relu => v.max(0),
                    HostFn::Floor | HostFn::Ceil | HostFn::Round => v,
                    _ => return None,
                })
            };
            let out: Option<Vec<i64>> = data.iter().map(|&v| g(v)).collect();
            let out = out.ok_or_else(|| {
                Error::dtype(cx.ctx(), format!("{f:?} is not defined for int64 input"))
            })?;
            Value::ints(shape, out)
        }
        Value::Bool { data, .. } => {
            if f != HostFn::Not {
                return Err(Error::dtype(
                    cx.ctx(),
                    format!("{f:?} is not defined for bool input"),
                ));
            }
            Value::bools(shape, data.iter().map(|&v| !v).collect())
        }
    }
}

/// Reads the scalar bound input `i` of Clip, if present.
fn bound(args: &Args<'_>, i: usize) -> Result<Option<f64>> {
    let Some(v) = args.get(i) else {
        return Ok(None);
    };
    if v.numel() != 1 {
        return Err(Error::shape(
            args.ctx(),
            format!(
                "bound input {i} (`{}`) must hold one value, has shape {}",
                args.name(i),
                v.shape()
            ),
        ));
    }
    Ok(Some(match v {
        Value::Float(t) => f64::from(t.to_f32_vec()[0]),
        Value::Int64 { data, .. } => data[0] as f64,
        Value::Bool { .. } => {
            return Err(Error::dtype(
                args.ctx(),
                "Clip bounds must be numbers, got bool",
            ));
        }
    }))
}

fn clip(c: &ClipAttrs, cx: &Cx<'_>, args: &Args<'_>) -> Result<Value> {
    let x = args.req(0)?;
    let (lo, hi) = match c.attr {
        Some((lo, hi)) => (Some(f64::from(lo)), Some(f64::from(hi))),
        None => (bound(args, 1)?, bound(args, 2)?),
    };
    match x {
        Value::Float(t) => {
            let lo = lo.map_or(f32::NEG_INFINITY, |v| v as f32);
            let hi = hi.map_or(f32::INFINITY, |v| v as f32);
            if lo.is_nan() || hi.is_nan() {
                return Err(Error::shape(cx.ctx(), "Clip bounds must not be NaN"));
            }
            if lo > hi {
                // ONNX: every element becomes max.
                let src = t.to_f32_vec();
                let out = src
                    .iter()
                    .map(|v| if v.is_nan() { *v } else { hi })
                    .collect();
                return data::float_value(t.shape().clone(), out);
            }
            Ok(Value::Float(
                cx.run(&Op::Unary(Unary::Clip { min: lo, max: hi }), &[t])?,
            ))
        }
        Value::Int64 { shape, data } => {
            let lo = lo.map_or(i64::MIN, |v| v as i64);
            let hi = hi.map_or(i64::MAX, |v| v as i64);
            let out = data
                .iter()
                .map(|&v| if lo > hi { hi } else { v.clamp(lo, hi) })
                .collect();
            Value::ints(shape.clone(), out)
        }
        Value::Bool { .. } => Err(type_error(cx, args, 0, "a number")),
    }
}

/// Opset < 7 `broadcast = 1`: B's dims are placed at A's axes from `axis` (default: the last
/// ones), with size-1 axes around them.
fn legacy_broadcast(cx: &Cx<'_>, a: &[usize], b: Value, axis: Option<i64>) -> Result<Value> {
    let (ra, rb) = (a.len(), b.dims().len());
    if rb > ra {
        return Err(Error::shape(
            cx.ctx(),
            format!(
                "legacy broadcast: B {:?} has more axes than A {a:?}",
                b.dims()
            ),
        ));
    }
    let axis = match axis {
        None => ra - rb,
        Some(x) => data::norm_axis(&cx.ctx(), x, ra.max(1))?,
    };
    if axis + rb > ra {
        return Err(Error::shape(
            cx.ctx(),
            format!(
                "legacy broadcast: B {:?} at axis {axis} overruns A {a:?}",
                b.dims()
            ),
        ));
    }
    let mut dims = vec![1usize; axis];
    dims.extend_from_slice(b.dims());
    dims.resize(ra, 1);
    with_shape(b, Shape::new(dims))
}

/// A copy of `a` (one input) or `op(a, b)`.
fn binary_or_copy(cx: &Cx<'_>, op: BinOp, a: &Value, b: Option<&Value>) -> Result<Value> {
    match b {
        None => Ok(a.clone()),
        Some(b) => binary(cx, op, a, b),
    }
}

/// `op(a, b)` with numpy broadcasting: float arithmetic on the device, the rest on the host.
pub(crate) fn binary(cx: &Cx<'_>, op: BinOp, a: &Value, b: &Value) -> Result<Value> {
    let ctx = cx.ctx();
    let mixed = || {
        Error::dtype(
            &ctx,
            format!(
                "operands are {} {} and {} {}",
                a.elem_type_name(),
                a.shape(),
                b.elem_type_name(),
                b.shape()
            ),
        )
    };
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            if let Some(d) = op.device() {
                return Ok(Value::Float(cx.run(&Op::Binary(d), &[x, y])?));
            }
            let (xs, ys) = (floats(a)?, floats(b)?);
            if op.gives_bool() {
                let f = |p: f32, q: f32| match op {
                    BinOp::Equal => p == q,
                    BinOp::Less => p < q,
                    BinOp::Greater => p > q,
                    BinOp::LessOrEqual => p <= q,
                    BinOp::GreaterOrEqual => p >= q,
                    _ => false,
                };
                if matches!(op, BinOp::And | BinOp::Or | BinOp::Xor) {
                    return Err(mixed());
                }
                let (dims, out) = broadcast_zip(&ctx, (&xs, x.dims()), (&ys, y.dims()), f)?;
                return Value::bools(dims, out);
            }
            let f = |p: f32, q: f32| -> f32 {
                match op {
                    BinOp::Pow => f64::from(p).powf(f64::from(q)) as f32,
                    BinOp::Max => {
                        if p.is_nan() || q.is_nan() {
                            f32::NAN
                        } else {
                            p.max(q)
                        }
                    }
                    BinOp::Min => {
                        if p.is_nan() || q.is_nan() {
                            f32::NAN
                        } else {
                            p.min(q)
                        }
                    }
                    _ => f32::NAN,
                }
            };
            let (dims, out) = broadcast_zip(&ctx, (&xs, x.dims()), (&ys, y.dims()), f)?;
            data::float_value(dims, out)
        }
        (Value::Float(x), Value::Int64 { data, shape }) if op == BinOp::Pow => {
            let xs = floats(a)?;
            let f = |p: f32, q: i64| (f64::from(p).powf(q as f64)) as f32;
            let (dims, out) = broadcast_zip(&ctx, (&xs, x.dims()), (data, shape.dims()), f)?;
            data::float_value(dims, out)
        }
        (
            Value::Int64 {
                data: xs,
                shape: xd,
            },
            Value::Int64 {
                data: ys,
                shape: yd,
            },
        ) => {
            let (ad, bd) = (xd.dims(), yd.dims());
            if op.gives_bool() {
                let f = |p: i64, q: i64| match op {
                    BinOp::Equal => p == q,
                    BinOp::Less => p < q,
                    BinOp::Greater => p > q,
                    BinOp::LessOrEqual => p <= q,
                    BinOp::GreaterOrEqual => p >= q,
                    _ => false,
                };
                if matches!(op, BinOp::And | BinOp::Or | BinOp::Xor) {
                    return Err(mixed());
                }
                let (dims, out) = broadcast_zip(&ctx, (xs, ad), (ys, bd), f)?;
                return Value::bools(dims, out);
            }
            if op == BinOp::Div && ys.contains(&0) {
                return Err(Error::shape(&ctx, "integer division by zero"));
            }
            let f = |p: i64, q: i64| -> i64 {
                match op {
                    BinOp::Add => p.wrapping_add(q),
                    BinOp::Sub => p.wrapping_sub(q),
                    BinOp::Mul => p.wrapping_mul(q),
                    BinOp::Div => p.wrapping_div(q),
                    BinOp::Pow => {
                        if q < 0 {
                            0
                        } else {
                            p.wrapping_pow(u32::try_from(q).unwrap_or(u32::MAX))
                        }
                    }
                    BinOp::Max => p.max(q),
                    BinOp::Min => p.min(q),
                    _ => 0,
                }
            };
            let (dims, out) = broadcast_zip(&ctx, (xs, ad), (ys, bd), f)?;
            Value::ints(dims, out)
        }
        (
            Value::Bool {
                data: xs,
                shape: xd,
            },
            Value::Bool {
                data: ys,
                shape: yd,
            },
        ) => {
            let f = |p: bool, q: bool| match op {
                BinOp::And => Some(p && q),
                BinOp::Or => Some(p || q),
                BinOp::Xor | BinOp::Max => Some(p != q),
                BinOp::Equal => Some(p == q),
                _ => None,
            };
            let (dims, out) = broadcast_zip(&ctx, (xs, xd.dims()), (ys, yd.dims()), f)?;
            let out: Option<Vec<bool>> = out.into_iter().collect();
            Value::bools(dims, out.ok_or_else(mixed)?)
        }
        _ => Err(mixed()),
    }
}

fn prelu(cx: &Cx<'_>, args: &Args<'_>, legacy: bool) -> Result<Value> {
    let (x, s) = (args.tensor(0)?, args.tensor(1)?);
    let ctx = cx.ctx();
    let (xd, mut sd) = (x.dims().to_vec(), s.dims().to_vec());
    if legacy && sd.len() == 1 && xd.len() >= 2 && sd[0] == xd[1] && sd[0] != 1 {
        sd.resize(xd.len() - 1, 1);
    }
    let out = broadcast_dims(&ctx, &xd, &sd)?;
    if out != xd {
        return Err(Error::shape(
            &ctx,
            format!(
                "slope {:?} does not broadcast to the input {xd:?}",
                s.dims()
            ),
        ));
    }
    let xs = floats(args.req(0)?)?;
    let ss = floats(args.req(1)?)?;
    let slope = broadcast_to(&ctx, &ss, &sd, &xd)?;
    let y = xs
        .iter()
        .zip(&slope)
        .map(|(&v, &a)| if v < 0.0 { v * a } else { v })
        .collect();
    data::float_value(xd, y)
}

/// `Where`'s selection over `x` and `y` broadcast to `out`, with the broadcast condition.
struct Select<'a> {
    cond: &'a [bool],
    dims: [&'a [usize]; 2],
    out: &'a [usize],
    ctx: &'a str,
}

impl RearrangeMany for Select<'_> {
    fn apply<T: Elem>(&self, srcs: &[&[T]]) -> Result<Vec<T>> {
        let x = broadcast_to(self.ctx, srcs[0], self.dims[0], self.out)?;
        let y = broadcast_to(self.ctx, srcs[1], self.dims[1], self.out)?;
        Ok(self
            .cond
            .iter()
            .zip(x.into_iter().zip(y))
            .map(|(&c, (a, b))| if c { a } else { b })
            .collect())
    }
}

fn where_(cx: &Cx<'_>, args: &Args<'_>) -> Result<Value> {
    let ctx = cx.ctx();
    let (c, x, y) = (args.req(0)?, args.req(1)?, args.req(2)?);
    let cond = c.as_bools().map_err(|_| type_error(cx, args, 0, "bool"))?;
    let out = broadcast_dims(&ctx, c.dims(), x.dims())?;
    let out = broadcast_dims(&ctx, &out, y.dims())?;
    let cond = broadcast_to(&ctx, cond, c.dims(), &out)?;
    let sel = Select {
        cond: &cond,
        dims: [x.dims(), y.dims()],
        out: &out,
        ctx: &ctx,
    };
    data::rearrange_many(&ctx, &[x, y], Shape::new(out.clone()), &sel)
}

/// Converts `v` to the cast target.
pub(crate) fn cast(v: Value, to: CastTo) -> Result<Value> {
    let shape = v.shape().clone();
    Ok(match (v, to) {
        (Value::Float(t), CastTo::Float(d)) => Value::Float(t.to_dtype(d)),
        (Value::Float(t), CastTo::Int { .. }) => Value::ints(
            shape,
            t.to_f32_vec()
                .iter()
                .map(|&f| to.wrap(i64::from_f64(f64::from(f).trunc())))
                .collect(),
        )?,
        (Value::Float(t), CastTo::Bool) => {
            Value::bools(shape, t.to_f32_vec().iter().map(|&f| f != 0.0).collect())?
        }
        (Value::Int64 { data, .. }, CastTo::Float(d)) => {
            let f: Vec<f32> = data.iter().map(|&i| i as f32).collect();
            Value::Float(Tensor::from_f32(shape, d, &f)?)
        }
        (Value::Int64 { data, .. }, CastTo::Int { .. }) => {
            Value::ints(shape, data.into_iter().map(|i| to.wrap(i)).collect())?
        }
        (Value::Int64 { data, .. }, CastTo::Bool) => {
            Value::bools(shape, data.iter().map(|&i| i != 0).collect())?
        }
        (Value::Bool { data, .. }, CastTo::Float(d)) => {
            let f: Vec<f32> = data.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
            Value::Float(Tensor::from_f32(shape, d, &f)?)
        }
        (Value::Bool { data, .. }, CastTo::Int { .. }) => {
            Value::ints(shape, data.iter().map(|&b| i64::from(b)).collect())?
        }
        (v @ Value::Bool { .. }, CastTo::Bool) => v,
    })
}

/// Load-time shape inference for the operators of this module.
pub(crate) fn infer(kind: &Kind, node: &Node, ins: &[Option<Meta>]) -> Result<Vec<Meta>> {
    let ctx = super::node_ctx(node);
    let x = in_dims(ins, 0).map(<[usize]>::to_vec);
    let meta = |ty: Option<Ty>, dims: Option<Vec<usize>>| vec![Meta { ty, dims }];
    Ok(match kind {
        Kind::Unary(_) => meta(Some(Ty::Float), x),
        Kind::HostUnary(f) => {
            let ty = if *f == HostFn::Not {
                Some(Ty::Bool)
            } else {
                in_ty(ins, 0)
            };
            meta(ty, x)
        }
        Kind::Clip(_) | Kind::PRelu { .. } => meta(in_ty(ins, 0), x),
        Kind::Cast(to) => meta(Some(to.ty()), x),
        Kind::Binary(b) => {
            let ty = if b.op.gives_bool() {
                Some(Ty::Bool)
            } else {
                in_ty(ins, 0)
            };
            let dims = match (b.legacy_axis, x, in_dims(ins, 1)) {
                (Some(_), Some(a), Some(_)) => Some(a),
                (None, Some(a), Some(bd)) => Some(broadcast_dims(&ctx, &a, bd)?),
                _ => None,
            };
            meta(ty, dims)
        }
        Kind::Variadic(_) => {
            let mut dims = x;
            for i in 1..node.inputs.len() {
                dims = match (dims, in_dims(ins, i)) {
                    (Some(a), Some(b)) => Some(broadcast_dims(&ctx, &a, b)?),
                    _ => None,
                };
            }
            meta(in_ty(ins, 0), dims)
        }
        Kind::Where => {
            let dims = match (x, in_dims(ins, 1), in_dims(ins, 2)) {
                (Some(c), Some(a), Some(b)) => {
                    Some(broadcast_dims(&ctx, &broadcast_dims(&ctx, &c, a)?, b)?)
                }
                _ => None,
            };
            meta(in_ty(ins, 1), dims)
        }
        _ => vec![Meta::default()],
    })
}
