//! Element-generic data movement for the host ops: one code path for every kind of
//! [`Value`] (f32 / f16 / bf16 floats, int64, bool).

use std::borrow::Cow;

use half::{bf16, f16};

use crate::onnx::value::Value;
use crate::tensor::{DType, Shape, Tensor, TensorData};
use crate::{Error, Result};

/// An element type the host ops move and compare.
pub(crate) trait Elem: Copy + Send + Sync + PartialOrd + 'static {
    /// The value `v` converted as a cast would (rounded for floats, truncated for integers).
    fn from_f64(v: f64) -> Self;
}

impl Elem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Elem for f16 {
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}

impl Elem for bf16 {
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

impl Elem for i64 {
    fn from_f64(v: f64) -> Self {
        // `as` saturates and maps NaN to 0, as onnxruntime's casts do on x86.
        v as i64
    }
}

impl Elem for bool {
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
}

/// A data movement generic over the element type (transpose, slice, pad, ...).
pub(crate) trait Rearrange {
    /// Builds the output elements from the input elements `src`.
    fn apply<T: Elem>(&self, src: &[T]) -> Result<Vec<T>>;
}

/// A data movement over several inputs of one element type (concat, where, ...).
pub(crate) trait RearrangeMany {
    /// Builds the output elements from the inputs' elements `srcs`.
    fn apply<T: Elem>(&self, srcs: &[&[T]]) -> Result<Vec<T>>;
}

/// Applies `r` to the elements of `v`: a value of the same kind and dtype with shape `shape`.
pub(crate) fn rearrange(v: &Value, shape: Shape, r: &impl Rearrange) -> Result<Value> {
    Ok(match v {
        Value::Float(t) => {
            let data = match t.data() {
                TensorData::F32(s) => TensorData::F32(r.apply(s)?),
                TensorData::F16(s) => TensorData::F16(r.apply(s)?),
                TensorData::BF16(s) => TensorData::BF16(r.apply(s)?),
            };
            Value::Float(Tensor::from_data(shape, data)?)
        }
        Value::Int64 { data, .. } => Value::ints(shape, r.apply(data)?)?,
        Value::Bool { data, .. } => Value::bools(shape, r.apply(data)?)?,
    })
}

/// Applies `r` to the elements of `vals`, which must be of one kind (floats of different
/// dtypes are widened to f32); the result has that kind and shape `shape`.
pub(crate) fn rearrange_many(
    context: &str,
    vals: &[&Value],
    shape: Shape,
    r: &impl RearrangeMany,
) -> Result<Value> {
    let Some(first) = vals.first() else {
        return Err(Error::shape(context, "no inputs"));
    };
    same_kind(context, vals)?;
    Ok(match first {
        Value::Float(t0) => {
            let dtype = t0.dtype();
            let same = vals
                .iter()
                .all(|v| matches!(v, Value::Float(t) if t.dtype() == dtype));
            let data = if same {
                match dtype {
                    DType::F32 => TensorData::F32(r.apply(&slices::<f32>(vals)?)?),
                    DType::F16 => TensorData::F16(r.apply(&slices::<f16>(vals)?)?),
                    DType::BF16 => TensorData::BF16(r.apply(&slices::<bf16>(vals)?)?),
                }
            } else {
                let wide: Vec<Cow<'_, [f32]>> =
                    vals.iter().map(|v| floats(v)).collect::<Result<_>>()?;
                let refs: Vec<&[f32]> = wide.iter().map(|c| c.as_ref()).collect();
                TensorData::F32(r.apply(&refs)?)
            };
            Value::Float(Tensor::from_data(shape, data)?)
        }
        Value::Int64 { .. } => {
            let s: Vec<&[i64]> = vals.iter().map(|v| v.as_ints()).collect::<Result<_>>()?;
            Value::ints(shape, r.apply(&s)?)?
        }
        Value::Bool { .. } => {
            let s: Vec<&[bool]> = vals.iter().map(|v| v.as_bools()).collect::<Result<_>>()?;
            Value::bools(shape, r.apply(&s)?)?
        }
    })
}

/// The elements of float values that all have dtype `T`.
fn slices<'a, T: crate::tensor::TensorElement>(vals: &[&'a Value]) -> Result<Vec<&'a [T]>> {
    vals.iter()
        .map(|v| v.as_tensor()?.as_slice::<T>())
        .collect()
}

/// Fails unless every value has the kind (float, int64, bool) of the first.
pub(crate) fn same_kind(context: &str, vals: &[&Value]) -> Result<()> {
    let kind = |v: &Value| std::mem::discriminant(v);
    if let Some(first) = vals.first()
        && let Some(other) = vals.iter().find(|v| kind(v) != kind(first))
    {
        return Err(Error::dtype(
            context,
            format!(
                "inputs mix {} and {} elements",
                first.elem_type_name(),
                other.elem_type_name()
            ),
        ));
    }
    Ok(())
}

/// The elements of a float value as f32 (borrowed when they are f32).
pub(crate) fn floats(v: &Value) -> Result<Cow<'_, [f32]>> {
    let t = v.as_tensor()?;
    Ok(match t.data() {
        TensorData::F32(s) => Cow::Borrowed(s),
        _ => Cow::Owned(t.to_f32_vec()),
    })
}

/// An f32 value of shape `dims`.
pub(crate) fn float_value(dims: impl Into<Shape>, data: Vec<f32>) -> Result<Value> {
    Ok(Value::Float(Tensor::from_vec(dims, data)?))
}

/// `v` with its elements unchanged under shape `shape` (same element count), without copying.
pub(crate) fn with_shape(v: Value, shape: Shape) -> Result<Value> {
    Ok(match v {
        Value::Float(t) => Value::Float(t.reshape(shape)?),
        Value::Int64 { data, .. } => Value::ints(shape, data)?,
        Value::Bool { data, .. } => Value::bools(shape, data)?,
    })
}

/// Per-axis index maps: for each output axis, the input index of each output index
/// (`None`: a fill value).
pub(crate) type IndexMaps = Vec<Vec<Option<usize>>>;

/// Row-major strides of `dims`.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// `Σ index[k]·steps[k]` for every index of `dims` in row-major order (last axis fastest),
/// walked with an odometer: where each element of a `dims` array lands when axis `k` steps
/// by `steps[k]`.
pub(crate) fn strided_offsets(dims: &[usize], steps: &[usize]) -> Vec<usize> {
    let total: usize = dims.iter().product();
    let mut offsets = Vec::with_capacity(total);
    let mut index = vec![0usize; dims.len()];
    let mut at = 0usize;
    for _ in 0..total {
        offsets.push(at);
        for k in (0..dims.len()).rev() {
            index[k] += 1;
            at += steps[k];
            if index[k] < dims[k] {
                break;
            }
            at -= steps[k] * dims[k];
            index[k] = 0;
        }
    }
    offsets
}

/// The product of `dims` (1 for none), or an overflow error.
pub(crate) fn numel(dims: &[usize]) -> Result<usize> {
    Shape::new(dims).numel()
}

/// The output built by walking an output index space axis by axis: `offsets[k][i]` is the
/// offset into `src` contributed by index `i` of output axis `k`, or `None` where the output
/// element takes `fill` (padding). The output has `offsets[k].len()` elements along axis `k`.
pub(crate) fn gather_offsets<T: Elem>(
    src: &[T],
    offsets: &[Vec<Option<usize>>],
    fill: T,
) -> Vec<T> {
    let rank = offsets.len();
    let total: usize = offsets.iter().map(Vec::len).product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    if rank == 0 {
        out.push(src[0]);
        return out;
    }
    let last = &offsets[rank - 1];
    let mut idx = vec![0usize; rank - 1];
    loop {
        let base = (0..rank - 1).try_fold(0usize, |acc, k| offsets[k][idx[k]].map(|o| acc + o));
        match base {
            None => out.extend(std::iter::repeat_n(fill, last.len())),
            Some(b) => out.extend(last.iter().map(|o| o.map_or(fill, |o| src[b + o]))),
        }
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < offsets[k].len() {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// Per-axis gather: output axis `k` takes input index `maps[k][i]` of input axis `k` (or
/// `fill` where it is `None`); `maps.len()` must equal the rank of `src_dims`.
pub(crate) fn axis_gather<T: Elem>(
    src: &[T],
    src_dims: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: T,
) -> Vec<T> {
    let st = strides(src_dims);
    let offsets: Vec<Vec<Option<usize>>> = maps
        .iter()
        .zip(&st)
        .map(|(m, &s)| m.iter().map(|o| o.map(|i| i * s)).collect())
        .collect();
    gather_offsets(src, &offsets, fill)
}

/// The numpy broadcast of shapes `a` and `b`, or a shape error naming both.
pub(crate) fn broadcast_dims(context: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    context,
                    format!("shapes {a:?} and {b:?} do not broadcast (axis {i}: {da} vs {db})"),
                ));
            }
        };
    }
    Ok(out)
}

/// The index maps that broadcast `src` dims to `out` dims (`src` right-aligned; size-1 axes
/// repeat), for [`axis_gather`] on `src` reshaped to rank `out.len()`; errors when `src`
/// does not broadcast to `out`.
pub(crate) fn broadcast_maps(
    context: &str,
    src: &[usize],
    out: &[usize],
) -> Result<(Vec<usize>, IndexMaps)> {
    if src.len() > out.len() {
        return Err(Error::shape(
            context,
            format!("shape {src:?} does not broadcast to {out:?}"),
        ));
    }
    let mut padded = vec![1usize; out.len() - src.len()];
    padded.extend_from_slice(src);
    let mut maps = Vec::with_capacity(out.len());
    for (i, (&s, &o)) in padded.iter().zip(out).enumerate() {
        if s == o {
            maps.push((0..o).map(Some).collect());
        } else if s == 1 {
            maps.push(vec![Some(0); o]);
        } else {
            return Err(Error::shape(
                context,
                format!("shape {src:?} does not broadcast to {out:?} (axis {i}: {s} vs {o})"),
            ));
        }
    }
    Ok((padded, maps))
}

/// The elements of `src` (dims `src_dims`) broadcast to `out` dims.
pub(crate) fn broadcast_to<T: Elem>(
    context: &str,
    src: &[T],
    src_dims: &[usize],
    out: &[usize],
) -> Result<Vec<T>> {
    if src_dims == out {
        return Ok(src.to_vec());
    }
    let (padded, maps) = broadcast_maps(context, src_dims, out)?;
    Ok(axis_gather(
        src,
        &padded,
        &maps,
        src.first().copied().unwrap_or_else(|| T::from_f64(0.0)),
    ))
}

/// Elementwise `f(a, b)` with numpy broadcasting over two element slices.
pub(crate) fn broadcast_zip<A: Elem, B: Elem, R>(
    context: &str,
    (a, ad): (&[A], &[usize]),
    (b, bd): (&[B], &[usize]),
    f: impl Fn(A, B) -> R,
) -> Result<(Vec<usize>, Vec<R>)> {
    let out = broadcast_dims(context, ad, bd)?;
    let a = if ad == out.as_slice() {
        Cow::Borrowed(a)
    } else {
        Cow::Owned(broadcast_to(context, a, ad, &out)?)
    };
    let b = if bd == out.as_slice() {
        Cow::Borrowed(b)
    } else {
        Cow::Owned(broadcast_to(context, b, bd, &out)?)
    };
    Ok((
        out,
        a.iter().zip(b.iter()).map(|(&x, &y)| f(x, y)).collect(),
    ))
}

/// Resolves an axis that may be negative (counted from the end) against `rank`.
pub(crate) fn norm_axis(context: &str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&a) {
        return Err(Error::shape(
            context,
            format!("axis {axis} is out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

/// The elements of an int64 value as usize dims, or an error naming `what`.
pub(crate) fn to_dims(context: &str, what: &str, v: &[i64]) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::shape(context, format!("{what} {v:?} has a negative entry")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_pads_and_broadcasts() {
        let src = [1, 2, 3, 4, 5, 6i64];
        // [2, 3] padded by one column on the left.
        let maps = vec![
            vec![Some(0), Some(1)],
            vec![None, Some(0), Some(1), Some(2)],
        ];
        assert_eq!(
            axis_gather(&src, &[2, 3], &maps, 0),
            [0, 1, 2, 3, 0, 4, 5, 6]
        );
        let b = broadcast_to("t", &[7i64, 8], &[2, 1], &[2, 3]).unwrap();
        assert_eq!(b, [7, 7, 7, 8, 8, 8]);
        assert!(broadcast_dims("t", &[2, 3], &[4]).is_err());
        assert_eq!(broadcast_dims("t", &[2, 1, 3], &[4, 1]).unwrap(), [2, 4, 3]);
    }
}
