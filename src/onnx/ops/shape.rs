//! Shape and index operators, run on the host for every element kind: Flatten, Reshape,
//! Transpose, Squeeze, Unsqueeze, Concat, Split, Gather, Slice, Pad, Tile, Expand, Shape, Size,
//! ConstantOfShape, Constant, Range, Identity and Dropout (inference).
//!
//! Each operator's output dims come from one function used both when it runs and by load-time
//! shape inference.

use super::data::{
    self, Elem, IndexMaps, Rearrange, RearrangeMany, axis_gather, broadcast_dims, broadcast_maps,
    norm_axis, numel, strides, to_dims, with_shape,
};
use super::{Args, Cx, Kind, Meta, Ty, check_arity, check_attrs, in_dims, malformed, unsupported};
use crate::onnx::model::Node;
use crate::onnx::value::Value;
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// Reshape attributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReshapeAttrs {
    /// A 0 in the shape means size 0 (opset 14), not "copy the input's size".
    pub allowzero: bool,
}

/// Split attributes.
#[derive(Debug, Clone)]
pub(crate) struct SplitAttrs {
    /// The axis (may be negative).
    pub axis: i64,
    /// Sizes from the `split` attribute (opset < 13).
    pub split: Option<Vec<i64>>,
    /// Opset 18 `num_outputs`: equal parts, the last one smaller.
    pub num_outputs: Option<usize>,
}

/// Slice parameters.
#[derive(Debug, Clone)]
pub(crate) struct SliceParams {
    /// First index per axis.
    pub starts: Vec<i64>,
    /// One past the last index per axis.
    pub ends: Vec<i64>,
    /// The axes (default: the first ones).
    pub axes: Option<Vec<i64>>,
    /// Steps (default 1).
    pub steps: Option<Vec<i64>>,
}

/// Slice attributes before opset 10 (`None` after: inputs).
#[derive(Debug, Clone)]
pub(crate) struct SliceAttrs {
    /// The parameters from attributes.
    pub legacy: Option<SliceParams>,
}

/// Pad modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PadMode {
    /// A constant value.
    Constant,
    /// Mirror without repeating the edge.
    Reflect,
    /// Repeat the edge.
    Edge,
    /// Wrap around.
    Wrap,
}

/// Pad attributes.
#[derive(Debug, Clone)]
pub(crate) struct PadAttrs {
    /// The mode.
    pub mode: PadMode,
    /// `(pads, value)` from attributes before opset 11 (`None` after: inputs).
    pub legacy: Option<(Vec<i64>, f32)>,
}

/// Parses the operators of this module (`None` for other operators).
pub(crate) fn parse(node: &Node, opset: i64) -> Result<Option<Kind>> {
    let op = node.op_type.as_str();
    let attrs = |a: &[&str]| check_attrs(node, opset, a);
    Ok(Some(match op {
        "Flatten" => {
            attrs(&["axis"])?;
            check_arity(node, (1, 1), (1, 1))?;
            Kind::Flatten(node.attr_int("axis", 1)?)
        }
        "Reshape" => {
            attrs(if opset >= 14 { &["allowzero"] } else { &[] })?;
            check_arity(node, (2, 2), (1, 1))?;
            Kind::Reshape(ReshapeAttrs {
                allowzero: node.attr_int("allowzero", 0)? != 0,
            })
        }
        "Transpose" => {
            attrs(&["perm"])?;
            check_arity(node, (1, 1), (1, 1))?;
            Kind::Transpose(node.attr_ints("perm")?)
        }
        "Squeeze" | "Unsqueeze" => {
            let axes = if opset < 13 {
                attrs(&["axes"])?;
                check_arity(node, (1, 1), (1, 1))?;
                let axes = node.attr_ints("axes")?;
                if op == "Unsqueeze" && axes.is_none() {
                    return Err(malformed(node, "attribute axes is required"));
                }
                axes
            } else {
                attrs(&[])?;
                let min = if op == "Unsqueeze" { 2 } else { 1 };
                check_arity(node, (min, 2), (1, 1))?;
                None
            };
            if op == "Squeeze" {
                Kind::Squeeze(axes)
            } else {
                Kind::Unsqueeze(axes)
            }
        }
        "Concat" => {
            attrs(&["axis"])?;
            check_arity(node, (1, usize::MAX), (1, 1))?;
            if !node.has_attr("axis") {
                return Err(malformed(node, "attribute axis is required"));
            }
            if node.inputs.iter().any(String::is_empty) {
                return Err(malformed(node, "an input is unnamed"));
            }
            Kind::Concat(node.attr_int("axis", 0)?)
        }
        "Split" => {
            let mut allowed = vec!["axis"];
            if opset < 13 {
                allowed.push("split");
            }
            if opset >= 18 {
                allowed.push("num_outputs");
            }
            attrs(&allowed)?;
            check_arity(node, (1, if opset >= 13 { 2 } else { 1 }), (1, usize::MAX))?;
            let num_outputs = if node.has_attr("num_outputs") {
                let n = node.attr_int("num_outputs", 0)?;
                if n < 1 || n as usize != node.outputs.len() {
                    return Err(malformed(
                        node,
                        format!(
                            "num_outputs {n} differs from its {} outputs",
                            node.outputs.len()
                        ),
                    ));
                }
                Some(n as usize)
            } else {
                None
            };
            Kind::Split(SplitAttrs {
                axis: node.attr_int("axis", 0)?,
                split: node.attr_ints("split")?,
                num_outputs,
            })
        }
        "Gather" => {
            attrs(&["axis"])?;
            check_arity(node, (2, 2), (1, 1))?;
            Kind::Gather(node.attr_int("axis", 0)?)
        }
        "Slice" => {
            if opset < 10 {
                attrs(&["axes", "ends", "starts"])?;
                check_arity(node, (1, 1), (1, 1))?;
                let (Some(starts), Some(ends)) =
                    (node.attr_ints("starts")?, node.attr_ints("ends")?)
                else {
                    return Err(malformed(node, "attributes starts and ends are required"));
                };
                Kind::Slice(SliceAttrs {
                    legacy: Some(SliceParams {
                        starts,
                        ends,
                        axes: node.attr_ints("axes")?,
                        steps: None,
                    }),
                })
            } else {
                attrs(&[])?;
                check_arity(node, (3, 5), (1, 1))?;
                Kind::Slice(SliceAttrs { legacy: None })
            }
        }
        "Pad" => {
            let mode = match node.attr_string("mode", "constant")?.as_str() {
                "constant" => PadMode::Constant,
                "reflect" => PadMode::Reflect,
                "edge" => PadMode::Edge,
                "wrap" if opset >= 19 => PadMode::Wrap,
                other => {
                    return Err(unsupported(node, opset, format!("pad mode `{other}`")));
                }
            };
            if opset < 11 {
                attrs(&["mode", "pads", "value"])?;
                check_arity(node, (1, 1), (1, 1))?;
                let Some(pads) = node.attr_ints("pads")? else {
                    return Err(malformed(node, "attribute pads is required"));
                };
                Kind::Pad(PadAttrs {
                    mode,
                    legacy: Some((pads, node.attr_float("value", 0.0)?)),
                })
            } else {
                attrs(&["mode"])?;
                check_arity(node, (2, if opset >= 18 { 4 } else { 3 }), (1, 1))?;
                Kind::Pad(PadAttrs { mode, legacy: None })
            }
        }
        "Tile" | "Expand" => {
            attrs(&[])?;
            check_arity(node, (2, 2), (1, 1))?;
            if op == "Tile" {
                Kind::Tile
            } else {
                Kind::Expand
            }
        }
        "Shape" => {
            attrs(if opset >= 15 { &["end", "start"] } else { &[] })?;
            check_arity(node, (1, 1), (1, 1))?;
            Kind::Shape {
                start: node.attr_int("start", 0)?,
                end: node
                    .has_attr("end")
                    .then(|| node.attr_int("end", 0))
                    .transpose()?,
            }
        }
        "Size" => {
            attrs(&[])?;
            check_arity(node, (1, 1), (1, 1))?;
            Kind::Size
        }
        "ConstantOfShape" => {
            attrs(&["value"])?;
            check_arity(node, (1, 1), (1, 1))?;
            let value = match node.attr_tensor("value")? {
                Some(v) if v.numel() == 1 => v,
                Some(v) => {
                    return Err(malformed(
                        node,
                        format!("value must hold one element, has shape {}", v.shape()),
                    ));
                }
                None => Value::scalar_f32(0.0),
            };
            Kind::ConstantOfShape(value)
        }
        "Constant" => {
            check_arity(node, (0, 0), (1, 1))?;
            let set: Vec<&String> = node.attributes.keys().collect();
            if set.len() != 1 {
                return Err(malformed(
                    node,
                    format!("exactly one value attribute must be set, found {set:?}"),
                ));
            }
            let v = match set[0].as_str() {
                "value" => node
                    .attr_tensor("value")?
                    .unwrap_or_else(|| Value::scalar_f32(0.0)),
                "value_float" => Value::scalar_f32(node.attr_float("value_float", 0.0)?),
                "value_int" => Value::scalar_int(node.attr_int("value_int", 0)?),
                "value_floats" => {
                    let f = node.attr_floats("value_floats")?.unwrap_or_default();
                    data::float_value([f.len()], f)?
                }
                "value_ints" => {
                    let i = node.attr_ints("value_ints")?.unwrap_or_default();
                    Value::ints([i.len()], i)?
                }
                other => {
                    return Err(unsupported(node, opset, format!("attribute `{other}`")));
                }
            };
            Kind::Constant(v)
        }
        "Range" => {
            attrs(&[])?;
            check_arity(node, (3, 3), (1, 1))?;
            Kind::Range
        }
        "Identity" => {
            attrs(&[])?;
            check_arity(node, (1, 1), (1, 1))?;
            Kind::Identity
        }
        "Dropout" => {
            if opset < 7 {
                attrs(&["is_test", "ratio"])?;
            } else if opset < 12 {
                attrs(&["ratio"])?;
            } else {
                attrs(&["seed"])?;
            }
            check_arity(node, (1, if opset >= 12 { 3 } else { 1 }), (1, 2))?;
            Kind::Dropout {
                float_mask: opset < 10,
            }
        }
        _ => return Ok(None),
    }))
}

/// A gather of per-axis index maps (see [`axis_gather`]), `fill` where a map has `None`.
struct Maps<'a> {
    dims: &'a [usize],
    maps: &'a [Vec<Option<usize>>],
    fill: f64,
}

impl Rearrange for Maps<'_> {
    fn apply<T: Elem>(&self, src: &[T]) -> Result<Vec<T>> {
        Ok(axis_gather(
            src,
            self.dims,
            self.maps,
            T::from_f64(self.fill),
        ))
    }
}

/// Applies index maps to `v`.
fn gather_maps(v: &Value, maps: &[Vec<Option<usize>>], fill: f64) -> Result<Value> {
    let out: Vec<usize> = maps.iter().map(Vec::len).collect();
    let r = Maps {
        dims: v.dims(),
        maps,
        fill,
    };
    data::rearrange(v, Shape::new(out), &r)
}

/// A transpose: output axis `i` is input axis `perm[i]`.
struct Permute<'a> {
    dims: &'a [usize],
    perm: &'a [usize],
}

impl Rearrange for Permute<'_> {
    fn apply<T: Elem>(&self, src: &[T]) -> Result<Vec<T>> {
        // The trailing axes the permutation leaves in place move as contiguous blocks (a
        // channel shuffle `[N, G, C/G, H, W] → [N, C/G, G, H, W]` copies whole planes).
        let rank = self.perm.len();
        let kept = (0..rank).rev().take_while(|&i| self.perm[i] == i).count();
        if kept > 0 && kept < rank {
            let outer = rank - kept;
            let inner: usize = self.dims[outer..].iter().product();
            return Ok(permute_blocks(
                src,
                &self.dims[..outer],
                &self.perm[..outer],
                inner,
            ));
        }
        let st = strides(self.dims);
        let offsets: Vec<Vec<Option<usize>>> = self
            .perm
            .iter()
            .map(|&p| (0..self.dims[p]).map(|j| Some(j * st[p])).collect())
            .collect();
        Ok(data::gather_offsets(src, &offsets, T::from_f64(0.0)))
    }
}

/// `src` as blocks of `inner` values indexed by `dims`, the blocks permuted by `perm`.
fn permute_blocks<T: Elem>(src: &[T], dims: &[usize], perm: &[usize], inner: usize) -> Vec<T> {
    let st = strides(dims);
    // Per output axis: its length and the source stride (in blocks) it steps by.
    let (out_dims, steps): (Vec<usize>, Vec<usize>) =
        perm.iter().map(|&p| (dims[p], st[p])).unzip();
    let froms = data::strided_offsets(&out_dims, &steps);
    let mut out = Vec::with_capacity(froms.len() * inner);
    for from in froms {
        out.extend_from_slice(&src[from * inner..][..inner]);
    }
    out
}

/// Concatenation of blocks: per outer index, each input's `chunk[i]` elements in turn.
struct Join {
    outer: usize,
    chunks: Vec<usize>,
}

impl RearrangeMany for Join {
    fn apply<T: Elem>(&self, srcs: &[&[T]]) -> Result<Vec<T>> {
        // Large joins are copied by the threads of the current pool (the node's).
        Ok(accelmesh_kernels::concat::concat(
            srcs,
            &self.chunks,
            self.outer,
        )?)
    }
}

/// A range along one axis: `len` of `dim` indices from `start`, with `inner` elements each.
struct Narrow {
    outer: usize,
    dim: usize,
    inner: usize,
    start: usize,
    len: usize,
}

impl Rearrange for Narrow {
    fn apply<T: Elem>(&self, src: &[T]) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.outer * self.len * self.inner);
        for o in 0..self.outer {
            let base = (o * self.dim + self.start) * self.inner;
            out.extend_from_slice(&src[base..base + self.len * self.inner]);
        }
        Ok(out)
    }
}

/// Gather of whole `inner` blocks along one axis by index.
struct Take<'a> {
    outer: usize,
    dim: usize,
    inner: usize,
    idx: &'a [usize],
}

impl Rearrange for Take<'_> {
    fn apply<T: Elem>(&self, src: &[T]) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.outer * self.idx.len() * self.inner);
        for o in 0..self.outer {
            for &i in self.idx {
                let base = (o * self.dim + i) * self.inner;
                out.extend_from_slice(&src[base..base + self.inner]);
            }
        }
        Ok(out)
    }
}

/// Runs the operators of this module.
pub(crate) fn eval(kind: &Kind, cx: &Cx<'_>, mut args: Args<'_>) -> Result<Vec<Option<Value>>> {
    let ctx = cx.ctx();
    let one = |v: Value| Ok(vec![Some(v)]);
    match kind {
        Kind::Flatten(axis) => {
            let x = args.take(0)?;
            let d = flatten_dims(&ctx, x.dims(), *axis)?;
            one(with_shape(x, Shape::new(d))?)
        }
        Kind::Reshape(a) => {
            let shape = args.ints(1)?.to_vec();
            let x = args.take(0)?;
            let d = reshape_dims(&ctx, x.dims(), &shape, a.allowzero)?;
            one(with_shape(x, Shape::new(d))?)
        }
        Kind::Transpose(perm) => {
            let x = args.req(0)?;
            let perm = transpose_perm(&ctx, x.dims().len(), perm.as_deref())?;
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                return one(args.take(0)?);
            }
            let out: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
            let r = Permute {
                dims: x.dims(),
                perm: &perm,
            };
            one(data::rearrange(x, Shape::new(out), &r)?)
        }
        Kind::Squeeze(attr) => {
            let axes = match attr {
                Some(a) => Some(a.clone()),
                None => args.opt_ints(1)?.map(<[i64]>::to_vec),
            };
            let x = args.take(0)?;
            let d = squeeze_dims(&ctx, x.dims(), axes.as_deref())?;
            one(with_shape(x, Shape::new(d))?)
        }
        Kind::Unsqueeze(attr) => {
            let axes = match attr {
                Some(a) => a.clone(),
                None => args.ints(1)?.to_vec(),
            };
            let x = args.take(0)?;
            let d = unsqueeze_dims(&ctx, x.dims(), &axes)?;
            one(with_shape(x, Shape::new(d))?)
        }
        Kind::Concat(axis) => {
            let vals = args.present();
            let dims: Vec<&[usize]> = vals.iter().map(|v| v.dims()).collect();
            let (out, axis) = concat_dims(&ctx, &dims, *axis)?;
            if vals.len() == 1 {
                return one(args.take(0)?);
            }
            let outer = numel(&out[..axis])?;
            let inner = numel(&out[axis + 1..])?;
            let chunks = dims.iter().map(|d| d[axis] * inner).collect();
            let r = Join { outer, chunks };
            one(data::rearrange_many(&ctx, &vals, Shape::new(out), &r)?)
        }
        Kind::Split(a) => {
            let x = args.req(0)?;
            let split = match &a.split {
                Some(s) => Some(s.clone()),
                None => args.opt_ints(1)?.map(<[i64]>::to_vec),
            };
            let n = cx.node.outputs.len();
            let (axis, sizes) = split_sizes(&ctx, x.dims(), a, split.as_deref(), n)?;
            let d = x.dims();
            let (outer, inner) = (numel(&d[..axis])?, numel(&d[axis + 1..])?);
            let mut start = 0;
            let mut out = Vec::with_capacity(n);
            for (i, &len) in sizes.iter().enumerate() {
                if cx.wants(i) {
                    let mut od = d.to_vec();
                    od[axis] = len;
                    let r = Narrow {
                        outer,
                        dim: d[axis],
                        inner,
                        start,
                        len,
                    };
                    out.push(Some(data::rearrange(x, Shape::new(od), &r)?));
                } else {
                    out.push(None);
                }
                start += len;
            }
            Ok(out)
        }
        Kind::Gather(axis) => {
            let x = args.req(0)?;
            let idx_v = args.req(1)?;
            let raw = args.ints(1)?;
            let d = x.dims();
            let axis = norm_axis(&ctx, *axis, d.len())?;
            let idx = gather_indices(&ctx, raw, d[axis])?;
            let out = gather_dims(d, axis, idx_v.dims());
            let r = Take {
                outer: numel(&d[..axis])?,
                dim: d[axis],
                inner: numel(&d[axis + 1..])?,
                idx: &idx,
            };
            one(data::rearrange(x, Shape::new(out), &r)?)
        }
        Kind::Slice(a) => {
            let x = args.req(0)?;
            let p = match &a.legacy {
                Some(p) => p.clone(),
                None => SliceParams {
                    starts: args.ints(1)?.to_vec(),
                    ends: args.ints(2)?.to_vec(),
                    axes: args.opt_ints(3)?.map(<[i64]>::to_vec),
                    steps: args.opt_ints(4)?.map(<[i64]>::to_vec),
                },
            };
            let maps = slice_maps(&ctx, x.dims(), &p)?;
            one(gather_maps(x, &maps, 0.0)?)
        }
        Kind::Pad(a) => {
            let x = args.req(0)?;
            let (pads, value) = match &a.legacy {
                Some((p, v)) => (p.clone(), f64::from(*v)),
                None => {
                    let pads = args.ints(1)?.to_vec();
                    let value = match args.get(2) {
                        None => 0.0,
                        Some(Value::Float(t)) if t.numel() == 1 => f64::from(t.to_f32_vec()[0]),
                        Some(Value::Int64 { data, .. }) if data.len() == 1 => data[0] as f64,
                        Some(Value::Bool { data, .. }) if data.len() == 1 => {
                            f64::from(u8::from(data[0]))
                        }
                        Some(v) => {
                            return Err(Error::shape(
                                &ctx,
                                format!(
                                    "constant_value must hold one value, has shape {}",
                                    v.shape()
                                ),
                            ));
                        }
                    };
                    let axes = args.opt_ints(3)?.map(<[i64]>::to_vec);
                    (
                        expand_pads(&ctx, x.dims().len(), &pads, axes.as_deref())?,
                        value,
                    )
                }
            };
            let maps = pad_maps(&ctx, x.dims(), &pads, a.mode)?;
            one(gather_maps(x, &maps, value)?)
        }
        Kind::Tile => {
            let x = args.req(0)?;
            let maps = tile_maps(&ctx, x.dims(), args.ints(1)?)?;
            one(gather_maps(x, &maps, 0.0)?)
        }
        Kind::Expand => {
            let x = args.req(0)?;
            let shape = to_dims(&ctx, "shape", args.ints(1)?)?;
            let out = broadcast_dims(&ctx, x.dims(), &shape)?;
            let (padded, maps) = broadcast_maps(&ctx, x.dims(), &out)?;
            let x = with_shape(x.clone(), Shape::new(padded))?;
            one(gather_maps(&x, &maps, 0.0)?)
        }
        Kind::Shape { start, end } => {
            let d = args.req(0)?.dims();
            let (s, e) = shape_range(d.len(), *start, *end);
            let v: Vec<i64> = d[s..e].iter().map(|&x| x as i64).collect();
            one(Value::ints([v.len()], v)?)
        }
        Kind::Size => one(Value::scalar_int(args.req(0)?.numel() as i64)),
        Kind::ConstantOfShape(value) => {
            let dims = to_dims(&ctx, "shape", args.ints(0)?)?;
            one(constant_of_shape(value, dims)?)
        }
        Kind::Constant(v) => one(v.clone()),
        Kind::Range => one(range(&ctx, &args)?),
        Kind::Identity => one(args.take(0)?),
        Kind::Dropout { float_mask } => {
            if let Some(t) = args.get(2) {
                let training = match t {
                    Value::Bool { data, .. } => data.first().copied().unwrap_or(false),
                    Value::Int64 { data, .. } => data.first().is_some_and(|&v| v != 0),
                    Value::Float(t) => t.to_f32_vec().first().is_some_and(|&v| v != 0.0),
                };
                if training {
                    return Err(cx.unsupported("training_mode = true (random dropout)"));
                }
            }
            let x = args.take(0)?;
            let mask = if cx.wants(1) {
                let shape = x.shape().clone();
                let n = x.numel();
                Some(if *float_mask {
                    data::float_value(shape, vec![1.0; n])?
                } else {
                    Value::bools(shape, vec![true; n])?
                })
            } else {
                None
            };
            Ok(vec![Some(x), mask])
        }
        _ => Err(cx.unsupported("not a shape operator")),
    }
}

/// `value` (one element) repeated to `dims`.
fn constant_of_shape(value: &Value, dims: Vec<usize>) -> Result<Value> {
    let n = numel(&dims)?;
    Ok(match value {
        Value::Float(t) => {
            let v = t.to_f32_vec()[0];
            Value::Float(Tensor::full(dims, t.dtype(), v)?)
        }
        Value::Int64 { data, .. } => Value::ints(dims, vec![data[0]; n])?,
        Value::Bool { data, .. } => Value::bools(dims, vec![data[0]; n])?,
    })
}

fn range(ctx: &str, args: &Args<'_>) -> Result<Value> {
    let (s, l, d) = (args.req(0)?, args.req(1)?, args.req(2)?);
    for (i, v) in [s, l, d].iter().enumerate() {
        if v.numel() != 1 {
            return Err(Error::shape(
                ctx,
                format!("input {i} must be a scalar, has shape {}", v.shape()),
            ));
        }
    }
    match (s, l, d) {
        (
            Value::Int64 { data: a, .. },
            Value::Int64 { data: b, .. },
            Value::Int64 { data: c, .. },
        ) => {
            let (a, b, c) = (a[0], b[0], c[0]);
            if c == 0 {
                return Err(Error::shape(ctx, "delta is 0"));
            }
            let n = ((b - a) as f64 / c as f64).ceil().max(0.0) as usize;
            Value::ints([n], (0..n as i64).map(|i| a + i * c).collect())
        }
        (Value::Float(a), Value::Float(b), Value::Float(c)) => {
            let (a, b, c) = (a.to_f32_vec()[0], b.to_f32_vec()[0], c.to_f32_vec()[0]);
            if c == 0.0 {
                return Err(Error::shape(ctx, "delta is 0"));
            }
            let n = ((f64::from(b) - f64::from(a)) / f64::from(c))
                .ceil()
                .max(0.0) as usize;
            data::float_value([n], (0..n).map(|i| a + i as f32 * c).collect())
        }
        _ => Err(Error::dtype(
            ctx,
            "start, limit and delta must be all float or all int",
        )),
    }
}

/// `(start, end)` of Shape's slice, clamped to `[0, rank]`.
fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let r = rank as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let s = clamp(start);
    let e = end.map_or(rank, clamp);
    (s, e.max(s))
}

/// Flatten's output dims.
pub(crate) fn flatten_dims(ctx: &str, d: &[usize], axis: i64) -> Result<Vec<usize>> {
    let r = d.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&a) {
        return Err(Error::shape(
            ctx,
            format!("axis {axis} is out of range for rank {r}"),
        ));
    }
    let a = a as usize;
    Ok(vec![numel(&d[..a])?, numel(&d[a..])?])
}

/// Reshape's output dims (`0` copies the input size unless `allowzero`, `-1` is inferred).
pub(crate) fn reshape_dims(
    ctx: &str,
    d: &[usize],
    shape: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>> {
    let total = numel(d)?;
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 => {
                if infer.replace(i).is_some() {
                    return Err(Error::shape(
                        ctx,
                        format!("shape {shape:?} has more than one -1"),
                    ));
                }
                out.push(1);
            }
            0 if !allowzero => {
                let Some(&v) = d.get(i) else {
                    return Err(Error::shape(
                        ctx,
                        format!("shape {shape:?} copies axis {i}, which input {d:?} lacks"),
                    ));
                };
                out.push(v);
            }
            s if s < 0 => {
                return Err(Error::shape(ctx, format!("shape {shape:?} has entry {s}")));
            }
            s => out.push(s as usize),
        }
    }
    let known = numel(&out)?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(Error::shape(
                ctx,
                format!("cannot reshape {d:?} ({total} elements) to {shape:?}"),
            ));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::shape(
            ctx,
            format!("cannot reshape {d:?} ({total} elements) to {shape:?} ({known} elements)"),
        ));
    }
    Ok(out)
}

/// Transpose's permutation (default: reversed), validated.
fn transpose_perm(ctx: &str, rank: usize, perm: Option<&[i64]>) -> Result<Vec<usize>> {
    let Some(perm) = perm else {
        return Ok((0..rank).rev().collect());
    };
    let p: Vec<usize> = perm
        .iter()
        .map(|&a| norm_axis(ctx, a, rank))
        .collect::<Result<_>>()?;
    let mut seen = vec![false; rank];
    for &a in &p {
        seen[a] = true;
    }
    if p.len() != rank || seen.contains(&false) {
        return Err(Error::shape(
            ctx,
            format!("perm {perm:?} is not a permutation of {rank} axes"),
        ));
    }
    Ok(p)
}

/// Squeeze's output dims (no axes: every size-1 axis).
fn squeeze_dims(ctx: &str, d: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>> {
    let Some(axes) = axes.filter(|a| !a.is_empty()) else {
        return Ok(d.iter().copied().filter(|&x| x != 1).collect());
    };
    let mut drop = vec![false; d.len()];
    for &a in axes {
        let i = norm_axis(ctx, a, d.len())?;
        if d[i] != 1 {
            return Err(Error::shape(
                ctx,
                format!(
                    "cannot squeeze axis {a} of shape {d:?}: its size is {}",
                    d[i]
                ),
            ));
        }
        drop[i] = true;
    }
    Ok(d.iter()
        .zip(&drop)
        .filter(|&(_, &x)| !x)
        .map(|(&v, _)| v)
        .collect())
}

/// Unsqueeze's output dims (axes refer to the output).
fn unsqueeze_dims(ctx: &str, d: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    let r = d.len() + axes.len();
    let mut new = vec![false; r];
    for &a in axes {
        let i = norm_axis(ctx, a, r)?;
        if std::mem::replace(&mut new[i], true) {
            return Err(Error::shape(ctx, format!("axes {axes:?} repeat axis {i}")));
        }
    }
    let mut src = d.iter();
    Ok(new
        .iter()
        .map(|&n| if n { 1 } else { *src.next().unwrap_or(&1) })
        .collect())
}

/// Concat's output dims and the resolved axis.
pub(crate) fn concat_dims(ctx: &str, dims: &[&[usize]], axis: i64) -> Result<(Vec<usize>, usize)> {
    let first = dims[0];
    let axis = norm_axis(ctx, axis, first.len())?;
    let mut out = first.to_vec();
    out[axis] = 0;
    for d in dims {
        let same = d.len() == first.len()
            && d.iter()
                .zip(first)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same {
            return Err(Error::shape(
                ctx,
                format!("inputs {first:?} and {d:?} differ outside axis {axis}"),
            ));
        }
        out[axis] += d[axis];
    }
    Ok((out, axis))
}

/// Split's resolved axis and part sizes.
fn split_sizes(
    ctx: &str,
    d: &[usize],
    a: &SplitAttrs,
    split: Option<&[i64]>,
    outputs: usize,
) -> Result<(usize, Vec<usize>)> {
    let axis = norm_axis(ctx, a.axis, d.len())?;
    let dim = d[axis];
    let sizes = match split {
        Some(s) => {
            let s = to_dims(ctx, "split", s)?;
            if s.len() != outputs || s.iter().sum::<usize>() != dim {
                return Err(Error::shape(
                    ctx,
                    format!("split {s:?} does not cut axis {axis} ({dim}) into {outputs} parts"),
                ));
            }
            s
        }
        None => {
            let n = a.num_outputs.unwrap_or(outputs).max(1);
            if a.num_outputs.is_some() {
                let chunk = dim.div_ceil(n);
                (0..n)
                    .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                    .collect()
            } else {
                if !dim.is_multiple_of(n) {
                    return Err(Error::shape(
                        ctx,
                        format!("axis {axis} ({dim}) does not split evenly into {n} parts"),
                    ));
                }
                vec![dim / n; n]
            }
        }
    };
    Ok((axis, sizes))
}

/// Gather's indices resolved against an axis of size `dim` (negative ones count from the end).
fn gather_indices(ctx: &str, raw: &[i64], dim: usize) -> Result<Vec<usize>> {
    raw.iter()
        .map(|&i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            if (0..dim as i64).contains(&j) {
                Ok(j as usize)
            } else {
                Err(Error::shape(
                    ctx,
                    format!("index {i} is out of range for an axis of size {dim}"),
                ))
            }
        })
        .collect()
}

/// Gather's output dims.
fn gather_dims(d: &[usize], axis: usize, idx: &[usize]) -> Vec<usize> {
    let mut out = d[..axis].to_vec();
    out.extend_from_slice(idx);
    out.extend_from_slice(&d[axis + 1..]);
    out
}

/// Slice's per-axis index maps (ONNX clamping, negative steps).
fn slice_maps(ctx: &str, d: &[usize], p: &SliceParams) -> Result<IndexMaps> {
    let (starts, ends) = (&p.starts, &p.ends);
    let n = starts.len();
    let axes: Vec<i64> = p.axes.clone().unwrap_or_else(|| (0..n as i64).collect());
    let steps: Vec<i64> = p.steps.clone().unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(Error::shape(
            ctx,
            format!(
                "starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"
            ),
        ));
    }
    let mut maps: IndexMaps = d.iter().map(|&x| (0..x).map(Some).collect()).collect();
    let mut seen = vec![false; d.len()];
    for i in 0..n {
        let axis = norm_axis(ctx, axes[i], d.len())?;
        if std::mem::replace(&mut seen[axis], true) {
            return Err(Error::shape(
                ctx,
                format!("axes {axes:?} repeat axis {axis}"),
            ));
        }
        let dim = d[axis] as i128;
        let step = steps[i] as i128;
        if step == 0 {
            return Err(Error::shape(ctx, "a step is 0"));
        }
        let fix = |v: i64| {
            let v = v as i128;
            if v < 0 { v + dim } else { v }
        };
        let (mut s, mut e) = (fix(starts[i]), fix(ends[i]));
        if step > 0 {
            s = s.clamp(0, dim);
            e = e.clamp(0, dim);
        } else {
            s = s.clamp(0, (dim - 1).max(0));
            e = e.clamp(-1, dim - 1);
        }
        let count = if step > 0 {
            ((e - s).max(0) + step - 1) / step
        } else {
            ((s - e).max(0) + (-step) - 1) / (-step)
        };
        maps[axis] = (0..count).map(|k| Some((s + k * step) as usize)).collect();
    }
    Ok(maps)
}

/// Pads for every axis from pads over `axes` (opset 18), or checked as given.
fn expand_pads(ctx: &str, rank: usize, pads: &[i64], axes: Option<&[i64]>) -> Result<Vec<i64>> {
    let Some(axes) = axes else {
        return Ok(pads.to_vec());
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(Error::shape(
            ctx,
            format!("pads {pads:?} do not fit axes {axes:?}"),
        ));
    }
    let mut full = vec![0i64; 2 * rank];
    for (k, &a) in axes.iter().enumerate() {
        let i = norm_axis(ctx, a, rank)?;
        full[i] = pads[k];
        full[rank + i] = pads[n + k];
    }
    Ok(full)
}

/// Pad's per-axis index maps (`None`: the constant).
fn pad_maps(ctx: &str, d: &[usize], pads: &[i64], mode: PadMode) -> Result<IndexMaps> {
    let r = d.len();
    if pads.len() != 2 * r {
        return Err(Error::shape(
            ctx,
            format!("pads {pads:?} must have 2 × {r} entries for input {d:?}"),
        ));
    }
    let mut maps = Vec::with_capacity(r);
    for (k, &len) in d.iter().enumerate() {
        let (b, e) = (pads[k], pads[r + k]);
        let n = len as i64;
        let out = n + b + e;
        if out < 0 {
            return Err(Error::shape(
                ctx,
                format!("pads {pads:?} remove more than axis {k} holds"),
            ));
        }
        if out > 0 && n == 0 && mode != PadMode::Constant {
            return Err(Error::shape(
                ctx,
                format!("cannot {mode:?}-pad the empty axis {k}"),
            ));
        }
        let map = (0..out)
            .map(|o| {
                let i = o - b;
                if (0..n).contains(&i) {
                    return Some(i as usize);
                }
                Some(match mode {
                    PadMode::Constant => return None,
                    PadMode::Edge => i.clamp(0, n - 1),
                    PadMode::Wrap => i.rem_euclid(n),
                    PadMode::Reflect => {
                        if n == 1 {
                            0
                        } else {
                            let period = 2 * (n - 1);
                            let m = i.rem_euclid(period);
                            if m >= n { period - m } else { m }
                        }
                    }
                } as usize)
            })
            .collect();
        maps.push(map);
    }
    Ok(maps)
}

/// Tile's per-axis index maps.
fn tile_maps(ctx: &str, d: &[usize], repeats: &[i64]) -> Result<IndexMaps> {
    if repeats.len() != d.len() {
        return Err(Error::shape(
            ctx,
            format!("repeats {repeats:?} must have one entry per axis of {d:?}"),
        ));
    }
    let reps = to_dims(ctx, "repeats", repeats)?;
    Ok(d.iter()
        .zip(&reps)
        .map(|(&n, &r)| (0..n * r).map(|o| Some(o % n)).collect())
        .collect())
}

/// The int64 elements of a known input, if it is an int64 value.
fn const_ints<'a>(consts: &[Option<&'a Value>], i: usize) -> Option<&'a [i64]> {
    consts
        .get(i)
        .copied()
        .flatten()
        .and_then(|v| v.as_ints().ok())
}

/// Load-time shape inference for the operators of this module.
pub(crate) fn infer(
    kind: &Kind,
    node: &Node,
    ins: &[Option<Meta>],
    consts: &[Option<&Value>],
) -> Result<Vec<Meta>> {
    let ctx = super::node_ctx(node);
    let ty = super::in_ty(ins, 0);
    let x = in_dims(ins, 0);
    let same = |dims: Option<Vec<usize>>| vec![Meta { ty, dims }];
    let lens = |maps: IndexMaps| Some(maps.iter().map(Vec::len).collect());
    Ok(match kind {
        Kind::Flatten(axis) => same(x.map(|d| flatten_dims(&ctx, d, *axis)).transpose()?),
        Kind::Reshape(a) => {
            let dims = match (x, const_ints(consts, 1)) {
                (Some(d), Some(s)) => Some(reshape_dims(&ctx, d, s, a.allowzero)?),
                (None, Some(s)) if s.iter().all(|&v| v > 0 || (a.allowzero && v == 0)) => {
                    Some(s.iter().map(|&v| v as usize).collect())
                }
                _ => None,
            };
            same(dims)
        }
        Kind::Transpose(perm) => same(
            x.map(|d| {
                transpose_perm(&ctx, d.len(), perm.as_deref())
                    .map(|p| p.iter().map(|&i| d[i]).collect())
            })
            .transpose()?,
        ),
        Kind::Squeeze(attr) => {
            let axes = attr.as_deref().or_else(|| const_ints(consts, 1));
            let given = attr.is_some() || node.input(1).is_none() || axes.is_some();
            same(match x {
                Some(d) if given => Some(squeeze_dims(&ctx, d, axes)?),
                _ => None,
            })
        }
        Kind::Unsqueeze(attr) => {
            let axes = attr.as_deref().or_else(|| const_ints(consts, 1));
            same(match (x, axes) {
                (Some(d), Some(a)) => Some(unsqueeze_dims(&ctx, d, a)?),
                _ => None,
            })
        }
        Kind::Concat(axis) => {
            let dims: Option<Vec<&[usize]>> =
                (0..node.inputs.len()).map(|i| in_dims(ins, i)).collect();
            same(
                dims.map(|d| concat_dims(&ctx, &d, *axis).map(|(o, _)| o))
                    .transpose()?,
            )
        }
        Kind::Split(a) => {
            let split = a.split.as_deref().or_else(|| const_ints(consts, 1));
            let known = a.split.is_some() || node.input(1).is_none() || split.is_some();
            match x {
                Some(d) if known => {
                    let (axis, sizes) = split_sizes(&ctx, d, a, split, node.outputs.len())?;
                    sizes
                        .iter()
                        .map(|&s| {
                            let mut o = d.to_vec();
                            o[axis] = s;
                            Meta { ty, dims: Some(o) }
                        })
                        .collect()
                }
                _ => vec![Meta::of_ty(ty); node.outputs.len()],
            }
        }
        Kind::Gather(axis) => same(match (x, in_dims(ins, 1)) {
            (Some(d), Some(i)) => Some(gather_dims(d, norm_axis(&ctx, *axis, d.len())?, i)),
            _ => None,
        }),
        Kind::Slice(a) => {
            let params = match &a.legacy {
                Some(p) => Some(p.clone()),
                None => match (const_ints(consts, 1), const_ints(consts, 2)) {
                    (Some(s), Some(e))
                        if (node.input(3).is_none() || const_ints(consts, 3).is_some())
                            && (node.input(4).is_none() || const_ints(consts, 4).is_some()) =>
                    {
                        Some(SliceParams {
                            starts: s.to_vec(),
                            ends: e.to_vec(),
                            axes: const_ints(consts, 3).map(<[i64]>::to_vec),
                            steps: const_ints(consts, 4).map(<[i64]>::to_vec),
                        })
                    }
                    _ => None,
                },
            };
            same(match (x, params) {
                (Some(d), Some(p)) => lens(slice_maps(&ctx, d, &p)?),
                _ => None,
            })
        }
        Kind::Pad(a) => {
            let pads = match &a.legacy {
                Some((p, _)) => Some(p.clone()),
                None if node.input(3).is_none() => const_ints(consts, 1).map(<[i64]>::to_vec),
                None => None,
            };
            same(match (x, pads) {
                (Some(d), Some(p)) => lens(pad_maps(&ctx, d, &p, a.mode)?),
                _ => None,
            })
        }
        Kind::Tile => same(match (x, const_ints(consts, 1)) {
            (Some(d), Some(r)) => lens(tile_maps(&ctx, d, r)?),
            _ => None,
        }),
        Kind::Expand => same(match (x, const_ints(consts, 1)) {
            (Some(d), Some(s)) => Some(broadcast_dims(&ctx, d, &to_dims(&ctx, "shape", s)?)?),
            _ => None,
        }),
        Kind::Shape { start, end } => {
            let dims = x.map(|d| {
                let (s, e) = shape_range(d.len(), *start, *end);
                vec![e - s]
            });
            vec![Meta {
                ty: Some(Ty::Int),
                dims,
            }]
        }
        Kind::Size => vec![Meta::new(Ty::Int, vec![])],
        Kind::ConstantOfShape(v) => {
            let dims = const_ints(consts, 0)
                .map(|s| to_dims(&ctx, "shape", s))
                .transpose()?;
            vec![Meta {
                ty: Some(Ty::of(v)),
                dims,
            }]
        }
        Kind::Constant(v) => vec![Meta::of_value(v)],
        Kind::Range => vec![Meta::of_ty(ty)],
        Kind::Identity => same(x.map(<[usize]>::to_vec)),
        Kind::Dropout { float_mask } => {
            let d = x.map(<[usize]>::to_vec);
            let mask_ty = if *float_mask { Ty::Float } else { Ty::Bool };
            vec![
                Meta {
                    ty,
                    dims: d.clone(),
                },
                Meta {
                    ty: Some(mask_ty),
                    dims: d,
                },
            ]
        }
        _ => vec![Meta::default()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape_dims("t", &[2, 3, 4], &[0, -1], false).unwrap(),
            [2, 12]
        );
        assert_eq!(reshape_dims("t", &[0, 3], &[0, 3], true).unwrap(), [0, 3]);
        assert!(reshape_dims("t", &[2, 3], &[-1, -1], false).is_err());
        assert!(reshape_dims("t", &[2, 3], &[4], false).is_err());
    }

    #[test]
    fn slice_clamps_like_onnx() {
        let p = |s: i64, e: i64, step: i64| SliceParams {
            starts: vec![s],
            ends: vec![e],
            axes: None,
            steps: Some(vec![step]),
        };
        let m = slice_maps("t", &[5], &p(-1, i64::MIN, -2)).unwrap();
        assert_eq!(m[0], [Some(4), Some(2), Some(0)]);
        let m = slice_maps("t", &[5], &p(1, i64::MAX, 1)).unwrap();
        assert_eq!(m[0].len(), 4);
    }

    #[test]
    fn pad_modes() {
        let m = pad_maps("t", &[3], &[2, 2], PadMode::Reflect).unwrap();
        let idx: Vec<usize> = m[0].iter().map(|v| v.unwrap()).collect();
        assert_eq!(idx, [2, 1, 0, 1, 2, 1, 0]);
        let m = pad_maps("t", &[3], &[1, 1], PadMode::Edge).unwrap();
        assert_eq!(m[0], [Some(0), Some(0), Some(1), Some(2), Some(2)]);
        let m = pad_maps("t", &[3], &[1, -1], PadMode::Constant).unwrap();
        assert_eq!(m[0], [None, Some(0), Some(1)]);
    }
}
