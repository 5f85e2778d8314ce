//! Convolution, transposed convolution, Gemm, MatMul, pooling, batch / instance / local
//! response normalisation and softmax.
//!
//! 1-D convolutions and poolings run as 2-D ones over a height of 1; 3-D ones are refused as
//! [`Error::Unsupported`].

use accelmesh_kernels::conv::{Conv2dParams, conv2d_output_dims};
use accelmesh_kernels::norm::{self, Lrn};

use super::data::{broadcast_dims, floats, norm_axis, numel};
use super::{Args, Cx, Kind, Meta, Ty, check_arity, check_attrs, in_dims, malformed, unsupported};
use crate::onnx::model::Node;
use crate::onnx::value::Value;
use crate::op::{BinaryOp, Op, Pool2dParams};
use crate::tensor::{DType, Shape, Tensor};
use crate::{Error, Result};

/// The `auto_pad` attribute of convolutions and poolings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    /// Output `ceil(in / stride)`, the odd pad at the end.
    SameUpper,
    /// Output `ceil(in / stride)`, the odd pad at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// The window attributes shared by convolutions and poolings (validated at load).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Window size per spatial axis (`kernel_shape`), if given.
    pub kernel: Option<Vec<usize>>,
    /// Strides per spatial axis.
    pub strides: Option<Vec<usize>>,
    /// Dilations per spatial axis.
    pub dilations: Option<Vec<usize>>,
    /// Pads `[begin…, end…]`.
    pub pads: Option<Vec<usize>>,
    /// Automatic padding.
    pub auto_pad: AutoPad,
}

/// The resolved 2-D geometry of a 1-D or 2-D window (1-D as height 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Vertical and horizontal dilation.
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
}

impl Window {
    /// Parses and checks the window attributes of `node` (spatial rank from `kernel_shape`
    /// or the other lists); 3-D and larger windows are unsupported.
    fn parse(node: &Node, opset: i64) -> Result<Window> {
        let list = |name: &str, min: i64| -> Result<Option<Vec<usize>>> {
            let Some(v) = node.attr_ints(name)? else {
                return Ok(None);
            };
            if let Some(bad) = v.iter().find(|&&x| x < min) {
                return Err(malformed(
                    node,
                    format!("attribute {name} = {v:?} has entry {bad}, below {min}"),
                ));
            }
            Ok(Some(v.iter().map(|&x| x as usize).collect()))
        };
        let auto_pad = match node.attr_string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            other => {
                return Err(malformed(
                    node,
                    format!("auto_pad `{other}` is not defined"),
                ));
            }
        };
        let w = Window {
            kernel: list("kernel_shape", 1)?,
            strides: list("strides", 1)?,
            dilations: list("dilations", 1)?,
            pads: list("pads", 0)?,
            auto_pad,
        };
        let mut ranks = Vec::new();
        for (name, v, per) in [
            ("kernel_shape", &w.kernel, 1),
            ("strides", &w.strides, 1),
            ("dilations", &w.dilations, 1),
            ("pads", &w.pads, 2),
        ] {
            if let Some(v) = v {
                if v.len() % per != 0 {
                    return Err(malformed(node, format!("{name} {v:?} has an odd length")));
                }
                ranks.push((name, v.len() / per));
            }
        }
        if let Some(&(name, r)) = ranks.iter().find(|(_, r)| *r != ranks[0].1) {
            return Err(malformed(
                node,
                format!(
                    "{name} has {r} spatial axes but {} has {}",
                    ranks[0].0, ranks[0].1
                ),
            ));
        }
        if let Some(&(_, r)) = ranks.first()
            && r > 2
        {
            return Err(unsupported(
                node,
                opset,
                format!("{r}-D windows are not supported (1-D and 2-D only)"),
            ));
        }
        Ok(w)
    }

    /// The 2-D geometry for spatial input `input` and window `kernel` (both of length 1 or 2).
    fn resolve(&self, ctx: &str, input: &[usize], kernel: &[usize]) -> Result<Geom> {
        let r = input.len();
        let check = |name: &str, v: &Option<Vec<usize>>, len: usize| -> Result<()> {
            match v {
                Some(v) if v.len() != len => Err(Error::shape(
                    ctx,
                    format!("{name} {v:?} does not fit {r} spatial axes"),
                )),
                _ => Ok(()),
            }
        };
        check("strides", &self.strides, r)?;
        check("dilations", &self.dilations, r)?;
        check("pads", &self.pads, 2 * r)?;
        let stride = self.strides.clone().unwrap_or_else(|| vec![1; r]);
        let dilation = self.dilations.clone().unwrap_or_else(|| vec![1; r]);
        let mut pads = match self.auto_pad {
            AutoPad::NotSet => self.pads.clone().unwrap_or_else(|| vec![0; 2 * r]),
            AutoPad::Valid => vec![0; 2 * r],
            AutoPad::SameUpper | AutoPad::SameLower => {
                let mut p = vec![0; 2 * r];
                for i in 0..r {
                    let out = input[i].div_ceil(stride[i]);
                    let extent = (kernel[i] - 1) * dilation[i] + 1;
                    let total = ((out.max(1) - 1) * stride[i] + extent).saturating_sub(input[i]);
                    let (b, e) = if self.auto_pad == AutoPad::SameUpper {
                        (total / 2, total - total / 2)
                    } else {
                        (total - total / 2, total / 2)
                    };
                    p[i] = b;
                    p[r + i] = e;
                }
                p
            }
        };
        Ok(if r == 1 {
            Geom {
                stride: [1, stride[0]],
                dilation: [1, dilation[0]],
                pads: [0, pads[0], 0, pads[1]],
            }
        } else {
            let p = std::mem::take(&mut pads);
            Geom {
                stride: [stride[0], stride[1]],
                dilation: [dilation[0], dilation[1]],
                pads: [p[0], p[1], p[2], p[3]],
            }
        })
    }
}

/// Convolution attributes.
#[derive(Debug, Clone)]
pub(crate) struct ConvAttrs {
    /// The window.
    pub window: Window,
    /// Channel groups.
    pub group: usize,
    /// A ReLU fused in at load (the node's output feeds only a Relu).
    pub relu: bool,
    /// A residual Add fused in at load: the node has a fourth input, added to the biased
    /// output before the ReLU.
    pub residual: bool,
    /// A MaxPool fused in at load (the node's output feeds only it): the node outputs the
    /// pooled value, and a device that can (the CPU node) never stores the convolution's.
    pub pool: Option<PoolAttrs>,
}

/// Transposed-convolution attributes.
#[derive(Debug, Clone)]
pub(crate) struct ConvTransposeAttrs {
    /// The window.
    pub window: Window,
    /// Channel groups.
    pub group: usize,
    /// Extra size at the end of each output axis.
    pub output_padding: Option<Vec<usize>>,
    /// The requested output spatial shape.
    pub output_shape: Option<Vec<usize>>,
}

/// Gemm attributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmAttrs {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// A is stored transposed.
    pub trans_a: bool,
    /// B is stored transposed.
    pub trans_b: bool,
}

/// Pooling attributes.
#[derive(Debug, Clone)]
pub(crate) struct PoolAttrs {
    /// Max pooling (else average).
    pub max: bool,
    /// The window (kernel_shape required).
    pub window: Window,
    /// Round output sizes up.
    pub ceil_mode: bool,
    /// Average over the padded window.
    pub count_include_pad: bool,
}

/// BatchNormalization attributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchNormAttrs {
    /// Added to the variance.
    pub epsilon: f32,
    /// A ReLU fused after it (never in a model; set when the session fuses one).
    pub relu: bool,
}

/// Softmax / LogSoftmax attributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxAttrs {
    /// The axis (may be negative).
    pub axis: i64,
    /// Log-softmax.
    pub log: bool,
    /// Opset < 13: the input is coerced to 2-D at `axis` (normalised over all later axes).
    pub legacy: bool,
}

/// Parses the operators of this module (`None` for other operators).
pub(crate) fn parse(node: &Node, opset: i64) -> Result<Option<Kind>> {
    let op = node.op_type.as_str();
    Ok(Some(match op {
        "Conv" => {
            check_attrs(
                node,
                opset,
                &[
                    "auto_pad",
                    "dilations",
                    "group",
                    "kernel_shape",
                    "pads",
                    "strides",
                ],
            )?;
            check_arity(node, (2, 3), (1, 1))?;
            Kind::Conv(ConvAttrs {
                window: Window::parse(node, opset)?,
                group: positive(node, "group")?,
                relu: false,
                residual: false,
                pool: None,
            })
        }
        "ConvTranspose" => {
            check_attrs(
                node,
                opset,
                &[
                    "auto_pad",
                    "dilations",
                    "group",
                    "kernel_shape",
                    "output_padding",
                    "output_shape",
                    "pads",
                    "strides",
                ],
            )?;
            check_arity(node, (2, 3), (1, 1))?;
            let nonneg = |name: &str| -> Result<Option<Vec<usize>>> {
                node.attr_ints(name)?
                    .map(|v| {
                        v.iter()
                            .map(|&x| {
                                usize::try_from(x).map_err(|_| {
                                    malformed(node, format!("{name} {v:?} has a negative entry"))
                                })
                            })
                            .collect()
                    })
                    .transpose()
            };
            Kind::ConvTranspose(ConvTransposeAttrs {
                window: Window::parse(node, opset)?,
                group: positive(node, "group")?,
                output_padding: nonneg("output_padding")?,
                output_shape: nonneg("output_shape")?,
            })
        }
        "Gemm" => {
            let mut allowed = vec!["alpha", "beta", "transA", "transB"];
            if opset < 7 {
                allowed.push("broadcast");
            }
            check_attrs(node, opset, &allowed)?;
            check_arity(node, (2, 3), (1, 1))?;
            Kind::Gemm(GemmAttrs {
                alpha: node.attr_float("alpha", 1.0)?,
                beta: node.attr_float("beta", 1.0)?,
                trans_a: node.attr_int("transA", 0)? != 0,
                trans_b: node.attr_int("transB", 0)? != 0,
            })
        }
        "MatMul" => {
            check_attrs(node, opset, &[])?;
            check_arity(node, (2, 2), (1, 1))?;
            Kind::MatMul
        }
        "MaxPool" | "AveragePool" => {
            let max = op == "MaxPool";
            let mut allowed = vec![
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ];
            allowed.push(if max {
                "storage_order"
            } else {
                "count_include_pad"
            });
            check_attrs(node, opset, &allowed)?;
            check_arity(node, (1, 1), (1, 2))?;
            if max && node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
                return Err(unsupported(
                    node,
                    opset,
                    "the Indices output is not supported",
                ));
            }
            let window = Window::parse(node, opset)?;
            if window.kernel.is_none() {
                return Err(malformed(node, "kernel_shape is required"));
            }
            Kind::Pool(PoolAttrs {
                max,
                window,
                ceil_mode: node.attr_int("ceil_mode", 0)? != 0,
                count_include_pad: node.attr_int("count_include_pad", 0)? != 0,
            })
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            check_attrs(node, opset, &[])?;
            check_arity(node, (1, 1), (1, 1))?;
            Kind::GlobalPool {
                max: op == "GlobalMaxPool",
            }
        }
        "BatchNormalization" => {
            let mut allowed = vec!["epsilon", "momentum"];
            if opset < 9 {
                allowed.push("spatial");
            }
            if opset < 7 {
                allowed.push("is_test");
            }
            if opset >= 14 {
                allowed.push("training_mode");
            }
            check_attrs(node, opset, &allowed)?;
            check_arity(node, (5, 5), (1, 5))?;
            if node.attr_int("spatial", 1)? != 1 {
                return Err(unsupported(
                    node,
                    opset,
                    "spatial = 0 (per-activation statistics)",
                ));
            }
            if opset < 7 && node.attr_int("is_test", 0)? == 0 {
                return Err(unsupported(
                    node,
                    opset,
                    "is_test = 0 (training mode, batch statistics)",
                ));
            }
            if node.attr_int("training_mode", 0)? != 0 {
                return Err(unsupported(node, opset, "training_mode = 1"));
            }
            if node.outputs.iter().skip(3).any(|o| !o.is_empty()) {
                return Err(unsupported(
                    node,
                    opset,
                    "the saved mean / variance outputs are training outputs",
                ));
            }
            Kind::BatchNorm(BatchNormAttrs {
                epsilon: node.attr_float("epsilon", 1e-5)?,
                relu: false,
            })
        }
        "InstanceNormalization" => {
            check_attrs(node, opset, &["epsilon"])?;
            check_arity(node, (3, 3), (1, 1))?;
            Kind::InstanceNorm {
                epsilon: node.attr_float("epsilon", 1e-5)?,
            }
        }
        "LRN" => {
            check_attrs(node, opset, &["alpha", "beta", "bias", "size"])?;
            check_arity(node, (1, 1), (1, 1))?;
            if !node.has_attr("size") {
                return Err(malformed(node, "attribute size is required"));
            }
            let size = positive(node, "size")?;
            let p = Lrn {
                size,
                alpha: node.attr_float("alpha", 1e-4)?,
                beta: node.attr_float("beta", 0.75)?,
                bias: node.attr_float("bias", 1.0)?,
            };
            if ![p.alpha, p.beta, p.bias].iter().all(|v| v.is_finite()) {
                return Err(malformed(node, "alpha, beta and bias must be finite"));
            }
            Kind::Lrn(p)
        }
        "Softmax" | "LogSoftmax" => {
            check_attrs(node, opset, &["axis"])?;
            check_arity(node, (1, 1), (1, 1))?;
            let legacy = opset < 13;
            Kind::Softmax(SoftmaxAttrs {
                axis: node.attr_int("axis", if legacy { 1 } else { -1 })?,
                log: op == "LogSoftmax",
                legacy,
            })
        }
        _ => return Ok(None),
    }))
}

/// The positive integer attribute `name` (default 1).
fn positive(node: &Node, name: &str) -> Result<usize> {
    let v = node.attr_int(name, 1)?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| malformed(node, format!("{name} = {v} must be at least 1")))
}

/// Runs the operators of this module.
pub(crate) fn eval(kind: &Kind, cx: &Cx<'_>, mut args: Args<'_>) -> Result<Vec<Option<Value>>> {
    let one = |t: Tensor| Ok(vec![Some(Value::Float(t))]);
    match kind {
        Kind::Conv(a) => one(conv(a, cx, &mut args)?),
        Kind::ConvTranspose(a) => one(conv_transpose(a, cx, &args)?),
        Kind::Gemm(a) => one(gemm(a, cx, &args)?),
        Kind::MatMul => one(matmul(cx, &args)?),
        Kind::Pool(a) => one(pool(a, cx, &mut args)?),
        Kind::GlobalPool { max } => {
            let x = args.tensor(0)?;
            if x.rank() < 3 {
                return Err(Error::shape(
                    cx.ctx(),
                    format!("input must be [N, C, D1, …], got shape {}", x.shape()),
                ));
            }
            if *max {
                one(global_max_pool(cx, x)?)
            } else {
                one(cx.run(&Op::GlobalAvgPool, &[x])?)
            }
        }
        Kind::BatchNorm(a) => {
            let x = args.tensor(0)?;
            let p: Vec<&Tensor> = (1..5).map(|i| args.tensor(i)).collect::<Result<_>>()?;
            let y = cx.run(
                &Op::BatchNorm {
                    epsilon: a.epsilon,
                    relu: a.relu,
                },
                &[x, p[0], p[1], p[2], p[3]],
            )?;
            let mut out = vec![Some(Value::Float(y))];
            // Inference: the running statistics come out unchanged.
            for i in [1, 2] {
                out.push(cx.wants(i).then(|| args.req(i + 2).cloned()).transpose()?);
            }
            Ok(out)
        }
        Kind::InstanceNorm { epsilon } => one(instance_norm(cx, &args, *epsilon)?),
        Kind::Lrn(p) => {
            let x = args.tensor(0)?;
            let d = x.dims();
            if d.len() < 2 {
                return Err(Error::shape(
                    cx.ctx(),
                    format!("input must be [N, C, …], got shape {}", x.shape()),
                ));
            }
            let plane = numel(&d[2..])?;
            let src = floats(args.req(0)?)?;
            let mut y = vec![0.0f32; src.len()];
            norm::lrn(&src, [d[0], d[1], plane, 1], p, &mut y)?;
            one(Tensor::from_vec(x.shape().clone(), y)?)
        }
        Kind::Softmax(a) => {
            let dims = args.tensor(0)?.dims().to_vec();
            if dims.is_empty() {
                return Err(Error::shape(cx.ctx(), "softmax of a rank-0 input"));
            }
            let axis = norm_axis(&cx.ctx(), a.axis, dims.len())?;
            let y = if a.legacy && axis + 1 != dims.len() {
                // Before opset 13: normalised over every axis from `axis` on.
                let outer = numel(&dims[..axis])?;
                let inner = numel(&dims[axis..])?;
                let x2 = args.take(0)?.into_tensor()?.reshape([outer, inner])?;
                let op = Op::Softmax {
                    axis: 1,
                    log: a.log,
                };
                cx.run(&op, &[&x2])?.reshape(dims)?
            } else {
                cx.run(&Op::Softmax { axis, log: a.log }, &[args.tensor(0)?])?
            };
            one(y)
        }
        _ => Err(cx.unsupported("not an nn operator")),
    }
}

/// A rank-0 f32 tensor.
pub(crate) fn scalar(v: f32) -> Tensor {
    Tensor::from_vec(Shape::new([]), vec![v]).expect("one element")
}

/// `t` with dtype `dtype` (borrowed when it already has it).
fn as_dtype(t: &Tensor, dtype: DType) -> std::borrow::Cow<'_, Tensor> {
    if t.dtype() == dtype {
        std::borrow::Cow::Borrowed(t)
    } else {
        std::borrow::Cow::Owned(t.to_dtype(dtype))
    }
}

/// The 2-D convolution parameters, the spatial rank and the output dims of a convolution of
/// input dims `x` with weight dims `w`.
pub(crate) fn conv_setup(
    a: &ConvAttrs,
    ctx: &str,
    x: &[usize],
    w: &[usize],
) -> Result<(Conv2dParams, usize)> {
    if x.len() != w.len() || x.len() < 3 {
        return Err(Error::shape(
            ctx,
            format!("input {x:?} and weight {w:?} must both be [N, C, spatial…] of one rank"),
        ));
    }
    let r = x.len() - 2;
    if let Some(k) = &a.window.kernel
        && k.as_slice() != &w[2..]
    {
        return Err(Error::shape(
            ctx,
            format!(
                "kernel_shape {k:?} differs from the weight's window {:?}",
                &w[2..]
            ),
        ));
    }
    let g = a.window.resolve(ctx, &x[2..], &w[2..])?;
    Ok((
        Conv2dParams {
            stride: g.stride,
            dilation: g.dilation,
            pads: g.pads,
            groups: a.group,
            relu: a.relu,
        },
        r,
    ))
}

/// `dims` as a 4-D NCHW shape (a 1-D layout gets a height of 1).
fn as_4d(dims: &[usize]) -> [usize; 4] {
    if dims.len() == 3 {
        [dims[0], dims[1], 1, dims[2]]
    } else {
        [dims[0], dims[1], dims[2], dims[3]]
    }
}

fn conv(a: &ConvAttrs, cx: &Cx<'_>, args: &mut Args<'_>) -> Result<Tensor> {
    let ctx = cx.ctx();
    let (xd, wd) = (
        args.tensor(0)?.dims().to_vec(),
        args.tensor(1)?.dims().to_vec(),
    );
    if xd.len() > 4 || wd.len() > 4 {
        return Err(cx.unsupported(format!(
            "{}-D convolution (input {xd:?}); only 1-D and 2-D are supported",
            xd.len().saturating_sub(2)
        )));
    }
    let (params, r) = conv_setup(a, &ctx, &xd, &wd)?;
    if a.residual {
        return conv_residual(params, cx, args);
    }
    if let Some(pool) = &a.pool {
        if r != 2 {
            // Fused at load only behind a 4-D weight, which makes the convolution 2-D.
            return Err(cx.unsupported(format!(
                "a MaxPool fused into a {}-D convolution",
                xd.len().saturating_sub(2)
            )));
        }
        return conv_max_pool(params, pool, cx, args);
    }
    let op = Op::Conv2d(params);
    let bias = args.get(2).map(|_| args.tensor(2)).transpose()?;
    if r == 2 {
        let x = args.tensor(0)?;
        let w = as_dtype(args.tensor(1)?, x.dtype());
        let mut ins = vec![x, w.as_ref()];
        ins.extend(bias);
        return cx.run(&op, &ins);
    }
    let x = args.tensor(0)?.clone().reshape(as_4d(&xd))?;
    let w = args.tensor(1)?.to_dtype(x.dtype()).reshape(as_4d(&wd))?;
    let mut ins = vec![&x, &w];
    ins.extend(bias);
    let y = cx.run(&op, &ins)?;
    let d = y.dims().to_vec();
    y.reshape([d[0], d[1], d[3]])
}

/// A 2-D convolution with a MaxPool fused in at load: the device's fused path where it has
/// one (`Device::conv_max_pool`), else the convolution and then the pooling.
fn conv_max_pool(
    params: Conv2dParams,
    pool: &PoolAttrs,
    cx: &Cx<'_>,
    args: &mut Args<'_>,
) -> Result<Tensor> {
    let x = args.tensor(0)?;
    let w = as_dtype(args.tensor(1)?, x.dtype());
    let mut ins = vec![x, w.as_ref()];
    if args.get(2).is_some() {
        ins.push(args.tensor(2)?);
    }
    let conv_out = conv2d_output_dims(as_4d(x.dims()), as_4d(w.dims()), &params)?;
    let p = pool_setup(pool, &cx.ctx(), &conv_out)?;
    let conv = Op::Conv2d(params);
    if let Some(result) = cx.dev.conv_max_pool(&conv, &p, &ins) {
        return result;
    }
    let y = cx.run(&conv, &ins)?;
    let pooled = cx.run(&Op::MaxPool(p), &[&y]);
    // The convolution's output is an intermediate of this step alone: handed back, the next
    // run's takes its buffer (a fresh one would be page-faulted in, about 0.25 ms for a stem's
    // 3.2 MB).
    super::recycle_tensor(y);
    pooled
}

/// A 2-D convolution with a residual fused in at load (inputs `[x, w, bias, residual]`):
/// `relu?(conv(x, w) + bias + residual)`. A residual read for the last time becomes the
/// output, the sum formed in place where the device can (`Device::conv_accumulate`);
/// otherwise the CPU node takes the residual as a fourth input and adds it in the gemm, and
/// other devices run the convolution, the Add and the ReLU apart.
fn conv_residual(params: Conv2dParams, cx: &Cx<'_>, args: &mut Args<'_>) -> Result<Tensor> {
    let op = Op::Conv2d(params.clone());
    // Fused at load with dims left open: a residual that turns out not to match the
    // convolution's output is broadcast by a separate Add.
    let (xd, wd) = (args.tensor(0)?.dims(), args.tensor(1)?.dims());
    let out = conv2d_output_dims(as_4d(xd), as_4d(wd), &params)?;
    let fits = xd.len() == 4 && args.tensor(3)?.dims() == out;
    let owned = if fits { args.take_owned_f32(3) } else { None };
    let x = args.tensor(0)?;
    let w = as_dtype(args.tensor(1)?, x.dtype());
    let inputs = [x, w.as_ref(), args.tensor(2)?];
    if !fits {
        return conv_residual_apart(params, cx, &inputs, args.tensor(3)?);
    }
    if let Some(mut residual) = owned {
        return match cx.dev.conv_accumulate(&op, &inputs, &mut residual) {
            Some(result) => result.map(|()| residual),
            None => conv_residual_apart(params, cx, &inputs, &residual),
        };
    }
    let residual = args.tensor(3)?;
    if cx.dev.info().kind == crate::node::DeviceKind::Cpu {
        return cx.run(&op, &[x, w.as_ref(), inputs[2], residual]);
    }
    conv_residual_apart(params, cx, &inputs, residual)
}

/// The residual convolution as three ops: the convolution, the Add, then the ReLU.
fn conv_residual_apart(
    params: Conv2dParams,
    cx: &Cx<'_>,
    inputs: &[&Tensor; 3],
    residual: &Tensor,
) -> Result<Tensor> {
    let relu = params.relu;
    let plain = Op::Conv2d(Conv2dParams {
        relu: false,
        ..params
    });
    let y = cx.run(&plain, inputs)?;
    let y = cx.run(&Op::Binary(BinaryOp::Add), &[&y, residual])?;
    if relu {
        cx.run(&Op::Unary(crate::op::Unary::Relu), &[&y])
    } else {
        Ok(y)
    }
}

/// The output spatial dims and the 2-D geometry of a transposed convolution.
fn conv_transpose_setup(
    a: &ConvTransposeAttrs,
    ctx: &str,
    x: &[usize],
    w: &[usize],
) -> Result<(Geom, [usize; 2], [usize; 4])> {
    if x.len() != w.len() || !(3..=4).contains(&x.len()) {
        return Err(Error::shape(
            ctx,
            format!("input {x:?} and weight {w:?} must both be [N, C, spatial…] of rank 3 or 4"),
        ));
    }
    let r = x.len() - 2;
    if w[0] != x[1] {
        return Err(Error::shape(
            ctx,
            format!(
                "weight {w:?} must have {} input channels (input {x:?})",
                x[1]
            ),
        ));
    }
    if !x[1].is_multiple_of(a.group) {
        return Err(Error::shape(
            ctx,
            format!("{} channels do not split into {} groups", x[1], a.group),
        ));
    }
    let kernel = &w[2..];
    if let Some(k) = &a.window.kernel
        && k.as_slice() != kernel
    {
        return Err(Error::shape(
            ctx,
            format!("kernel_shape {k:?} differs from the weight's window {kernel:?}"),
        ));
    }
    let stride = a.window.strides.clone().unwrap_or_else(|| vec![1; r]);
    let dil = a.window.dilations.clone().unwrap_or_else(|| vec![1; r]);
    let outpad = a.output_padding.clone().unwrap_or_else(|| vec![0; r]);
    for (name, v) in [
        ("strides", &stride),
        ("dilations", &dil),
        ("output_padding", &outpad),
    ] {
        if v.len() != r {
            return Err(Error::shape(
                ctx,
                format!("{name} {v:?} does not fit {r} spatial axes"),
            ));
        }
    }
    let sp = &x[2..];
    let full: Vec<usize> = (0..r)
        .map(|i| stride[i] * sp[i].saturating_sub(1) + outpad[i] + (kernel[i] - 1) * dil[i] + 1)
        .collect();
    let mut pads = vec![0usize; 2 * r];
    let mut out = vec![0usize; r];
    let target = match (&a.output_shape, a.window.auto_pad) {
        (Some(s), _) => Some(s[s.len().saturating_sub(r)..].to_vec()),
        (None, AutoPad::SameUpper | AutoPad::SameLower) => {
            Some((0..r).map(|i| sp[i] * stride[i]).collect())
        }
        _ => None,
    };
    match target {
        Some(t) => {
            if t.len() != r {
                return Err(Error::shape(
                    ctx,
                    format!("output_shape {t:?} does not fit {r} axes"),
                ));
            }
            for i in 0..r {
                let total = full[i].checked_sub(t[i]).ok_or_else(|| {
                    Error::shape(
                        ctx,
                        format!("output size {} exceeds the full size {}", t[i], full[i]),
                    )
                })?;
                let (b, e) = if a.window.auto_pad == AutoPad::SameUpper {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                pads[i] = b;
                pads[r + i] = e;
                out[i] = t[i];
            }
        }
        None => {
            if a.window.auto_pad == AutoPad::NotSet
                && let Some(p) = &a.window.pads
            {
                if p.len() != 2 * r {
                    return Err(Error::shape(
                        ctx,
                        format!("pads {p:?} does not fit {r} axes"),
                    ));
                }
                pads.clone_from(p);
            }
            for i in 0..r {
                out[i] = full[i].checked_sub(pads[i] + pads[r + i]).ok_or_else(|| {
                    Error::shape(
                        ctx,
                        format!("pads {pads:?} exceed the output size {}", full[i]),
                    )
                })?;
            }
        }
    }
    let o = w[1] * a.group;
    let (geom, out2) = if r == 1 {
        (
            Geom {
                stride: [1, stride[0]],
                dilation: [1, dil[0]],
                pads: [0, pads[0], 0, pads[1]],
            },
            [1, out[0]],
        )
    } else {
        (
            Geom {
                stride: [stride[0], stride[1]],
                dilation: [dil[0], dil[1]],
                pads: [pads[0], pads[1], pads[2], pads[3]],
            },
            [out[0], out[1]],
        )
    };
    Ok((geom, out2, [x[0], o, out2[0], out2[1]]))
}

fn conv_transpose(a: &ConvTransposeAttrs, cx: &Cx<'_>, args: &Args<'_>) -> Result<Tensor> {
    let ctx = cx.ctx();
    let (xt, wt) = (args.tensor(0)?, args.tensor(1)?);
    let (xd, wd) = (xt.dims().to_vec(), wt.dims().to_vec());
    if xd.len() > 4 {
        return Err(cx.unsupported(format!(
            "{}-D transposed convolution; only 1-D and 2-D are supported",
            xd.len() - 2
        )));
    }
    let (g, [oh, ow], out_dims) = conv_transpose_setup(a, &ctx, &xd, &wd)?;
    let [n, c, h, w] = as_4d(&xd);
    let [_, og, kh, kw] = as_4d(&wd);
    let groups = a.group;
    let cg = c / groups;
    let o = og * groups;
    let (xs, ws) = (floats(args.req(0)?)?, floats(args.req(1)?)?);
    let hw = h * w;
    let rows = og * kh * kw;
    let mut y = vec![0.0f32; n * o * oh * ow];
    for gi in 0..groups {
        let a_mat = Tensor::from_vec(
            [cg, rows],
            ws[gi * cg * rows..(gi + 1) * cg * rows].to_vec(),
        )?;
        for ni in 0..n {
            let start = (ni * c + gi * cg) * hw;
            let b_mat = Tensor::from_vec([cg, hw], xs[start..start + cg * hw].to_vec())?;
            let op = Op::MatMul {
                trans_a: true,
                trans_b: false,
            };
            let cols = cx.run(&op, &[&a_mat, &b_mat])?;
            let cols = cols.as_f32()?;
            for oc in 0..og {
                let plane = ((ni * o) + gi * og + oc) * oh * ow;
                for ki in 0..kh {
                    for kj in 0..kw {
                        let row = &cols[((oc * kh + ki) * kw + kj) * hw..][..hw];
                        for ih in 0..h {
                            let yh = (ih * g.stride[0] + ki * g.dilation[0]) as isize
                                - g.pads[0] as isize;
                            if yh < 0 || yh >= oh as isize {
                                continue;
                            }
                            let yrow = plane + yh as usize * ow;
                            for iw in 0..w {
                                let yw = (iw * g.stride[1] + kj * g.dilation[1]) as isize
                                    - g.pads[1] as isize;
                                if yw >= 0 && yw < ow as isize {
                                    y[yrow + yw as usize] += row[ih * w + iw];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if args.get(2).is_some() {
        let b = floats(args.req(2)?)?;
        if b.len() != o {
            return Err(Error::shape(
                &ctx,
                format!(
                    "bias has {} values, expected {o} (one per output channel)",
                    b.len()
                ),
            ));
        }
        for (i, plane) in y.chunks_mut(oh * ow).enumerate() {
            let bv = b[i % o];
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    let dims = if xd.len() == 3 {
        vec![out_dims[0], out_dims[1], out_dims[3]]
    } else {
        out_dims.to_vec()
    };
    Tensor::from_vec(dims, y)
}

fn gemm(a: &GemmAttrs, cx: &Cx<'_>, args: &Args<'_>) -> Result<Tensor> {
    let (at, bt) = (args.tensor(0)?, args.tensor(1)?);
    for (name, t) in [("A", at), ("B", bt)] {
        if t.rank() != 2 {
            return Err(Error::shape(
                cx.ctx(),
                format!("{name} must be a matrix (rank 2), got shape {}", t.shape()),
            ));
        }
    }
    let bt = as_dtype(bt, at.dtype());
    let op = Op::MatMul {
        trans_a: a.trans_a,
        trans_b: a.trans_b,
    };
    let mut y = cx.run(&op, &[at, bt.as_ref()])?;
    if a.alpha != 1.0 {
        y = cx.run(&Op::Binary(BinaryOp::Mul), &[&y, &scalar(a.alpha)])?;
    }
    if a.beta != 0.0 && args.get(2).is_some() {
        let c = args.tensor(2)?;
        let out = broadcast_dims(&cx.ctx(), y.dims(), c.dims())?;
        if out != y.dims() {
            return Err(Error::shape(
                cx.ctx(),
                format!(
                    "C of shape {} does not broadcast to the product {}",
                    c.shape(),
                    y.shape()
                ),
            ));
        }
        let scaled;
        let c = if a.beta != 1.0 {
            scaled = cx.run(&Op::Binary(BinaryOp::Mul), &[c, &scalar(a.beta)])?;
            &scaled
        } else {
            c
        };
        y = cx.run(&Op::Binary(BinaryOp::Add), &[&y, c])?;
    }
    Ok(y)
}

/// The output dims of numpy matmul of `a` and `b`.
fn matmul_dims(ctx: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::shape(ctx, "matmul of a rank-0 operand"));
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(Error::shape(
            ctx,
            format!("inner dimensions differ: A {a:?}, B {b:?}"),
        ));
    }
    let mut out = broadcast_dims(ctx, &a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

fn matmul(cx: &Cx<'_>, args: &Args<'_>) -> Result<Tensor> {
    let ctx = cx.ctx();
    let (av, bv) = (args.req(0)?, args.req(1)?);
    if Ty::of(av) != Ty::Float || Ty::of(bv) != Ty::Float {
        return Err(cx.unsupported(format!(
            "MatMul of {} and {} (float only)",
            av.elem_type_name(),
            bv.elem_type_name()
        )));
    }
    let (a, b) = (args.tensor(0)?, args.tensor(1)?);
    let out_dims = matmul_dims(&ctx, a.dims(), b.dims())?;
    let a2: Vec<usize> = if a.rank() == 1 {
        vec![1, a.dims()[0]]
    } else {
        a.dims().to_vec()
    };
    let b2: Vec<usize> = if b.rank() == 1 {
        vec![b.dims()[0], 1]
    } else {
        b.dims().to_vec()
    };
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let op = Op::matmul();
    if b2.len() == 2 {
        // Every batch of A against one B: a single product of the stacked rows.
        let rows = numel(&a2[..a2.len() - 1])?;
        let a_flat;
        let a_ref = if a.rank() == 2 {
            a
        } else {
            a_flat = a.clone().reshape([rows, k])?;
            &a_flat
        };
        let b_flat;
        let b_ref = if b.rank() == 2 {
            as_dtype(b, a.dtype())
        } else {
            b_flat = b.to_dtype(a.dtype()).reshape([k, n])?;
            std::borrow::Cow::Borrowed(&b_flat)
        };
        return cx.run(&op, &[a_ref, b_ref.as_ref()])?.reshape(out_dims);
    }
    let batch = broadcast_dims(&ctx, &a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let nb = numel(&batch)?;
    let (xs, ys) = (floats(av)?, floats(bv)?);
    let index = |dims: &[usize], flat: usize| -> usize {
        // The batch index of an operand with batch dims `dims` (broadcast against `batch`).
        let pad = batch.len() - dims.len();
        let mut rem = flat;
        let mut idx = 0;
        let mut stride = 1;
        for i in (0..batch.len()).rev() {
            let coord = rem % batch[i];
            rem /= batch[i];
            if i >= pad {
                let d = dims[i - pad];
                idx += if d == 1 { 0 } else { coord } * stride;
                stride *= d;
            }
        }
        idx
    };
    let mut out = Vec::with_capacity(nb * m * n);
    for bi in 0..nb {
        let ia = index(&a2[..a2.len() - 2], bi);
        let ib = index(&b2[..b2.len() - 2], bi);
        let at = Tensor::from_vec([m, k], xs[ia * m * k..(ia + 1) * m * k].to_vec())?;
        let bt = Tensor::from_vec([k, n], ys[ib * k * n..(ib + 1) * k * n].to_vec())?;
        out.extend_from_slice(cx.run(&op, &[&at, &bt])?.as_f32()?);
    }
    Tensor::from_vec(out_dims, out)
}

/// The 2-D pooling parameters of a pooling of input dims `x`.
pub(crate) fn pool_setup(a: &PoolAttrs, ctx: &str, x: &[usize]) -> Result<Pool2dParams> {
    let kernel = a.window.kernel.clone().unwrap_or_default();
    if x.len() != kernel.len() + 2 {
        return Err(Error::shape(
            ctx,
            format!("input {x:?} does not fit kernel_shape {kernel:?}"),
        ));
    }
    let g = a.window.resolve(ctx, &x[2..], &kernel)?;
    let k2 = if kernel.len() == 1 {
        [1, kernel[0]]
    } else {
        [kernel[0], kernel[1]]
    };
    Ok(Pool2dParams::new(k2)
        .with_stride(g.stride)
        .with_pads(g.pads)
        .with_dilation(g.dilation)
        .with_ceil_mode(a.ceil_mode && a.window.auto_pad == AutoPad::NotSet)
        .with_count_include_pad(a.count_include_pad))
}

fn pool(a: &PoolAttrs, cx: &Cx<'_>, args: &mut Args<'_>) -> Result<Tensor> {
    let ctx = cx.ctx();
    let xd = args.tensor(0)?.dims().to_vec();
    if xd.len() > 4 {
        return Err(cx.unsupported(format!(
            "{}-D pooling (input {xd:?}); only 1-D and 2-D are supported",
            xd.len() - 2
        )));
    }
    let p = pool_setup(a, &ctx, &xd)?;
    let op = if a.max {
        Op::MaxPool(p)
    } else {
        Op::AvgPool(p)
    };
    if xd.len() == 4 {
        return cx.run(&op, &[args.tensor(0)?]);
    }
    let x = args.take(0)?.into_tensor()?.reshape(as_4d(&xd))?;
    let y = cx.run(&op, &[&x])?;
    let d = y.dims().to_vec();
    y.reshape([d[0], d[1], d[3]])
}

fn global_max_pool(cx: &Cx<'_>, x: &Tensor) -> Result<Tensor> {
    let d = x.dims();
    let plane = numel(&d[2..])?;
    if plane == 0 {
        return Err(Error::shape(
            cx.ctx(),
            format!("input {} has no spatial extent", x.shape()),
        ));
    }
    let src = x.to_f32_vec();
    let out: Vec<f32> = src
        .chunks(plane)
        .map(|c| {
            c.iter().copied().fold(
                f32::NEG_INFINITY,
                |m, v| if v > m || v.is_nan() { v } else { m },
            )
        })
        .collect();
    let mut dims = vec![d[0], d[1]];
    dims.resize(d.len(), 1);
    Tensor::from_vec(dims, out)
}

fn instance_norm(cx: &Cx<'_>, args: &Args<'_>, epsilon: f32) -> Result<Tensor> {
    let x = args.tensor(0)?;
    let d = x.dims();
    if d.len() < 3 {
        return Err(Error::shape(
            cx.ctx(),
            format!("input must be [N, C, D1, …], got shape {}", x.shape()),
        ));
    }
    let c = d[1];
    let (scale, bias) = (floats(args.req(1)?)?, floats(args.req(2)?)?);
    if scale.len() != c || bias.len() != c {
        return Err(Error::shape(
            cx.ctx(),
            format!(
                "scale and bias must have {c} values (one per channel), got {} and {}",
                scale.len(),
                bias.len()
            ),
        ));
    }
    let plane = numel(&d[2..])?;
    let mut y = x.to_f32_vec();
    if plane > 0 {
        for (i, p) in y.chunks_mut(plane).enumerate() {
            let mean = p.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
            let var = p
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / plane as f64;
            let inv = 1.0 / (var + f64::from(epsilon)).sqrt();
            let (s, b) = (f64::from(scale[i % c]), f64::from(bias[i % c]));
            for v in p.iter_mut() {
                *v = ((f64::from(*v) - mean) * inv * s + b) as f32;
            }
        }
    }
    Tensor::from_vec(x.shape().clone(), y)
}

/// Load-time shape inference for the operators of this module.
pub(crate) fn infer(
    kind: &Kind,
    node: &Node,
    _opset: i64,
    ins: &[Option<Meta>],
    _consts: &[Option<&Value>],
) -> Result<Vec<Meta>> {
    let ctx = super::node_ctx(node);
    let float = |dims: Option<Vec<usize>>| Meta {
        ty: Some(Ty::Float),
        dims,
    };
    let x = in_dims(ins, 0);
    Ok(match kind {
        Kind::Conv(a) => {
            let dims = match (x, in_dims(ins, 1)) {
                (Some(x), Some(w)) if x.len() <= 4 && w.len() <= 4 => {
                    let (params, r) = conv_setup(a, &ctx, x, w)?;
                    let mut s = Op::Conv2d(params)
                        .output_shape(&[&Shape::new(as_4d(x)), &Shape::new(as_4d(w))])?;
                    if let Some(pool) = a.pool.as_ref().filter(|_| r == 2) {
                        let p = pool_setup(pool, &ctx, s.dims())?;
                        s = Op::MaxPool(p).output_shape(&[&s])?;
                    }
                    let d = s.dims();
                    Some(if r == 1 {
                        vec![d[0], d[1], d[3]]
                    } else {
                        d.to_vec()
                    })
                }
                _ => None,
            };
            vec![float(dims)]
        }
        Kind::ConvTranspose(a) => {
            let dims = match (x, in_dims(ins, 1)) {
                (Some(x), Some(w)) if x.len() <= 4 => {
                    let (_, _, o) = conv_transpose_setup(a, &ctx, x, w)?;
                    Some(if x.len() == 3 {
                        vec![o[0], o[1], o[3]]
                    } else {
                        o.to_vec()
                    })
                }
                _ => None,
            };
            vec![float(dims)]
        }
        Kind::Gemm(a) => {
            let dims = match (x, in_dims(ins, 1)) {
                (Some(x), Some(w)) if x.len() == 2 && w.len() == 2 => {
                    let (m, k) = if a.trans_a {
                        (x[1], x[0])
                    } else {
                        (x[0], x[1])
                    };
                    let (kb, n) = if a.trans_b {
                        (w[1], w[0])
                    } else {
                        (w[0], w[1])
                    };
                    if k != kb {
                        return Err(Error::shape(
                            ctx,
                            format!("inner dimensions differ: A {x:?}, B {w:?}"),
                        ));
                    }
                    Some(vec![m, n])
                }
                _ => None,
            };
            vec![float(dims)]
        }
        Kind::MatMul => {
            let dims = match (x, in_dims(ins, 1)) {
                (Some(x), Some(w)) => Some(matmul_dims(&ctx, x, w)?),
                _ => None,
            };
            vec![float(dims)]
        }
        Kind::Pool(a) => {
            let dims = match x {
                Some(x) if (3..=4).contains(&x.len()) => {
                    let p = pool_setup(a, &ctx, x)?;
                    let s = Op::MaxPool(p).output_shape(&[&Shape::new(as_4d(x))])?;
                    let d = s.dims();
                    Some(if x.len() == 3 {
                        vec![d[0], d[1], d[3]]
                    } else {
                        d.to_vec()
                    })
                }
                _ => None,
            };
            vec![float(dims)]
        }
        Kind::GlobalPool { .. } => {
            let dims = x.filter(|x| x.len() >= 3).map(|x| {
                let mut d = vec![x[0], x[1]];
                d.resize(x.len(), 1);
                d
            });
            vec![float(dims)]
        }
        Kind::BatchNorm(_) => {
            let stat = in_dims(ins, 3).map(<[usize]>::to_vec);
            vec![
                float(x.map(<[usize]>::to_vec)),
                float(stat.clone()),
                float(stat),
            ]
        }
        _ => vec![float(x.map(<[usize]>::to_vec))],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_splits_like_onnx() {
        let w = Window {
            kernel: Some(vec![3, 3]),
            strides: Some(vec![2, 2]),
            dilations: None,
            pads: None,
            auto_pad: AutoPad::SameUpper,
        };
        // in 6, stride 2 -> out 3, total pad (3-1)*2+3-6 = 1: upper puts it at the end.
        let g = w.resolve("t", &[6, 6], &[3, 3]).unwrap();
        assert_eq!(g.pads, [0, 0, 1, 1]);
        let lower = Window {
            auto_pad: AutoPad::SameLower,
            ..w
        };
        assert_eq!(
            lower.resolve("t", &[6, 6], &[3, 3]).unwrap().pads,
            [1, 1, 0, 0]
        );
    }

    #[test]
    fn matmul_shapes_broadcast() {
        assert_eq!(matmul_dims("t", &[2, 3, 4], &[4, 5]).unwrap(), [2, 3, 5]);
        assert_eq!(matmul_dims("t", &[4], &[2, 4, 5]).unwrap(), [2, 5]);
        assert_eq!(matmul_dims("t", &[3, 4], &[4]).unwrap(), [3]);
        assert!(matmul_dims("t", &[3, 4], &[5, 6]).is_err());
    }
}
