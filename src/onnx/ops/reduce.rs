//! The Reduce* operators over float values, on the host with f64 accumulation. The axes are
//! an attribute before opset 13 (ReduceSum) or 18 (the others), an optional input after.

use super::data::{self, floats, norm_axis, numel};
use super::{Args, Cx, Kind, Meta, Ty, check_arity, check_attrs, in_dims, malformed};
use crate::onnx::model::Node;
use crate::onnx::value::Value;
use crate::{Error, Result};

/// The reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReduceOp {
    /// Σ x.
    Sum,
    /// Σ x / n.
    Mean,
    /// max x.
    Max,
    /// min x.
    Min,
    /// Π x.
    Prod,
    /// Σ x².
    SumSquare,
    /// Σ |x|.
    L1,
    /// √Σ x².
    L2,
    /// ln Σ x.
    LogSum,
    /// ln Σ eˣ.
    LogSumExp,
}

/// Reduce attributes.
#[derive(Debug, Clone)]
pub(crate) struct ReduceAttrs {
    /// The reduction.
    pub op: ReduceOp,
    /// Axes from the attribute (when the opset has it).
    pub axes: Option<Vec<i64>>,
    /// Keep reduced axes as size 1.
    pub keepdims: bool,
    /// With no axes, return the input unchanged (instead of reducing every axis).
    pub noop_with_empty_axes: bool,
}

/// Parses the operators of this module (`None` for other operators).
pub(crate) fn parse(node: &Node, opset: i64) -> Result<Option<Kind>> {
    let op = match node.op_type.as_str() {
        "ReduceSum" => ReduceOp::Sum,
        "ReduceMean" => ReduceOp::Mean,
        "ReduceMax" => ReduceOp::Max,
        "ReduceMin" => ReduceOp::Min,
        "ReduceProd" => ReduceOp::Prod,
        "ReduceSumSquare" => ReduceOp::SumSquare,
        "ReduceL1" => ReduceOp::L1,
        "ReduceL2" => ReduceOp::L2,
        "ReduceLogSum" => ReduceOp::LogSum,
        "ReduceLogSumExp" => ReduceOp::LogSumExp,
        _ => return Ok(None),
    };
    let axes_input = opset >= if op == ReduceOp::Sum { 13 } else { 18 };
    if axes_input {
        check_attrs(node, opset, &["keepdims", "noop_with_empty_axes"])?;
        check_arity(node, (1, 2), (1, 1))?;
    } else {
        check_attrs(node, opset, &["axes", "keepdims"])?;
        check_arity(node, (1, 1), (1, 1))?;
    }
    let keepdims = node.attr_int("keepdims", 1)?;
    if !(0..=1).contains(&keepdims) {
        return Err(malformed(
            node,
            format!("keepdims = {keepdims} must be 0 or 1"),
        ));
    }
    Ok(Some(Kind::Reduce(ReduceAttrs {
        op,
        axes: node.attr_ints("axes")?,
        keepdims: keepdims == 1,
        noop_with_empty_axes: node.attr_int("noop_with_empty_axes", 0)? != 0,
    })))
}

/// The reduced axes (sorted, deduplicated), or `None` for "return the input".
fn reduced_axes(
    ctx: &str,
    a: &ReduceAttrs,
    rank: usize,
    axes: Option<&[i64]>,
) -> Result<Option<Vec<bool>>> {
    let axes = axes.or(a.axes.as_deref()).filter(|x| !x.is_empty());
    let mut mask = vec![false; rank];
    match axes {
        None if a.noop_with_empty_axes => return Ok(None),
        None => mask.iter_mut().for_each(|m| *m = true),
        Some(list) => {
            for &x in list {
                mask[norm_axis(ctx, x, rank)?] = true;
            }
        }
    }
    Ok(Some(mask))
}

/// The output dims for reduced-axis mask `mask`.
fn out_dims(d: &[usize], mask: &[bool], keepdims: bool) -> Vec<usize> {
    d.iter()
        .zip(mask)
        .filter_map(|(&n, &m)| match (m, keepdims) {
            (false, _) => Some(n),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// Runs the operators of this module.
pub(crate) fn eval(kind: &Kind, cx: &Cx<'_>, mut args: Args<'_>) -> Result<Vec<Option<Value>>> {
    let Kind::Reduce(a) = kind else {
        return Err(cx.unsupported("not a reduction"));
    };
    let ctx = cx.ctx();
    let axes = args.opt_ints(1)?.map(<[i64]>::to_vec);
    let x = args.req(0)?;
    if !matches!(x, Value::Float(_)) {
        return Err(cx.unsupported(format!("{} input (float only)", x.elem_type_name())));
    }
    let d = x.dims().to_vec();
    let Some(mask) = reduced_axes(&ctx, a, d.len(), axes.as_deref())? else {
        return Ok(vec![Some(args.take(0)?)]);
    };
    let src = floats(x)?;
    let od = out_dims(&d, &mask, a.keepdims);
    let n_out = numel(&od)?;
    let count = d
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m)
        .map(|(&n, _)| n)
        .product::<usize>();
    // The output index of each input element, walked with an odometer.
    let st = data::strides(&out_dims(&d, &mask, true));
    let ostride: Vec<usize> = st
        .iter()
        .zip(&mask)
        .map(|(&s, &m)| if m { 0 } else { s })
        .collect();
    let targets = data::strided_offsets(&d, &ostride);
    let init = match a.op {
        ReduceOp::Max | ReduceOp::LogSumExp => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
        ReduceOp::Prod => 1.0,
        _ => 0.0,
    };
    let mut acc = vec![init; n_out];
    let mut shift = vec![0.0f64; n_out];
    if a.op == ReduceOp::LogSumExp {
        for (&t, &v) in targets.iter().zip(src.iter()) {
            acc[t] = acc[t].max(f64::from(v));
        }
        shift.clone_from(&acc);
        shift.iter_mut().for_each(|s| {
            if !s.is_finite() {
                *s = 0.0;
            }
        });
        acc.iter_mut().for_each(|v| *v = 0.0);
    }
    for (&t, &v) in targets.iter().zip(src.iter()) {
        let v = f64::from(v);
        let s = &mut acc[t];
        match a.op {
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::LogSum => *s += v,
            ReduceOp::Max => *s = if v.is_nan() || v > *s { v } else { *s },
            ReduceOp::Min => *s = if v.is_nan() || v < *s { v } else { *s },
            ReduceOp::Prod => *s *= v,
            ReduceOp::SumSquare | ReduceOp::L2 => *s += v * v,
            ReduceOp::L1 => *s += v.abs(),
            ReduceOp::LogSumExp => *s += (v - shift[t]).exp(),
        }
    }
    let out: Vec<f32> = acc
        .iter()
        .zip(&shift)
        .map(|(&s, &sh)| {
            (match a.op {
                ReduceOp::Mean => s / count as f64,
                ReduceOp::L2 => s.sqrt(),
                ReduceOp::LogSum => s.ln(),
                ReduceOp::LogSumExp => s.ln() + sh,
                _ => s,
            }) as f32
        })
        .collect();
    if n_out == 0 && !src.is_empty() {
        return Err(Error::shape(&ctx, "reduction to an empty output"));
    }
    Ok(vec![Some(data::float_value(od, out)?)])
}

/// Load-time shape inference for the operators of this module.
pub(crate) fn infer(
    kind: &Kind,
    node: &Node,
    ins: &[Option<Meta>],
    consts: &[Option<&Value>],
) -> Result<Vec<Meta>> {
    let Kind::Reduce(a) = kind else {
        return Ok(vec![Meta::default()]);
    };
    let ctx = super::node_ctx(node);
    let axes = consts
        .get(1)
        .copied()
        .flatten()
        .and_then(|v| v.as_ints().ok());
    let known = node.input(1).is_none() || axes.is_some();
    let dims = match in_dims(ins, 0) {
        Some(d) if known => Some(match reduced_axes(&ctx, a, d.len(), axes)? {
            None => d.to_vec(),
            Some(mask) => out_dims(d, &mask, a.keepdims),
        }),
        _ => None,
    };
    Ok(vec![Meta {
        ty: Some(Ty::Float),
        dims,
    }])
}
