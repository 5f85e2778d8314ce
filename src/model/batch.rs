//! The batch axis of a model's inputs and outputs: how many samples a request holds, how many
//! the model takes per run, and cutting inputs into sample ranges and joining outputs back.

use std::collections::HashMap;
use std::ops::Range;

use crate::onnx::{Dim, Value, ValueInfo};
use crate::tensor::Shape;
use crate::{Error, Result};

/// How a request's inputs divide along their first axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLayout {
    /// Samples in the request (the inputs' common first dimension).
    pub samples: usize,
    /// Samples one run of the model takes: the declared batch of a fixed-batch model (the
    /// request runs in chunks of it), or 0 when the batch dimension is free (any count).
    pub chunk: usize,
}

impl BatchLayout {
    /// The smallest number of samples a part may hold.
    pub fn unit(&self) -> usize {
        self.chunk.max(1)
    }

    /// Units (chunks, or samples for a free batch) in the request.
    pub fn units(&self) -> usize {
        self.samples / self.unit()
    }

    /// Whether the request runs as a single run of the model with the inputs as given.
    pub fn is_single_run(&self) -> bool {
        self.chunk == 0 || self.samples == self.chunk
    }
}

/// The batch layout of `inputs` for a model declaring `declared`: `None` when the inputs do
/// not share a first dimension the model lets vary (then they run whole, as given).
pub fn layout(declared: &[ValueInfo], inputs: &HashMap<String, Value>) -> Option<BatchLayout> {
    let mut samples = None;
    let mut chunk = None;
    for info in declared {
        let value = inputs.get(&info.name)?;
        let n = *value.dims().first()?;
        if *samples.get_or_insert(n) != n {
            return None;
        }
        let c = match info.dims.as_ref().and_then(|d| d.first()) {
            Some(Dim::Known(k)) => *k,
            _ => 0,
        };
        if *chunk.get_or_insert(c) != c {
            return None;
        }
    }
    let layout = BatchLayout {
        samples: samples?,
        chunk: chunk?,
    };
    let fits =
        layout.samples > 0 && (layout.chunk == 0 || layout.samples.is_multiple_of(layout.chunk));
    fits.then_some(layout)
}

/// The samples `range` of every input (a copy along the first axis).
pub fn slice_inputs(
    inputs: &HashMap<String, Value>,
    range: Range<usize>,
) -> Result<HashMap<String, Value>> {
    inputs
        .iter()
        .map(|(name, v)| Ok((name.clone(), slice_rows(v, range.clone())?)))
        .collect()
}

/// Rows `range` of `v` along its first axis.
pub fn slice_rows(v: &Value, range: Range<usize>) -> Result<Value> {
    let len = range.end.saturating_sub(range.start);
    match v {
        Value::Float(t) => Ok(Value::Float(t.narrow(0, range.start, len)?)),
        Value::Int64 { shape, data } => {
            let (dims, rows) = sliced(shape, range.clone(), data.len())?;
            Value::ints(dims, data[rows].to_vec())
        }
        Value::Bool { shape, data } => {
            let (dims, rows) = sliced(shape, range.clone(), data.len())?;
            Value::bools(dims, data[rows].to_vec())
        }
    }
}

/// The shape and element range of rows `range` of a row-major tensor of `shape`.
fn sliced(shape: &Shape, range: Range<usize>, len: usize) -> Result<(Vec<usize>, Range<usize>)> {
    let dims = shape.dims();
    let Some(&rows) = dims.first() else {
        return Err(Error::shape("batch slice", "a scalar has no batch axis"));
    };
    if range.start > range.end || range.end > rows {
        return Err(Error::shape(
            "batch slice",
            format!("rows {range:?} are outside shape {shape}"),
        ));
    }
    let inner = len.checked_div(rows).unwrap_or(0);
    let mut out = dims.to_vec();
    out[0] = range.end - range.start;
    Ok((out, range.start * inner..range.end * inner))
}

/// Joins the outputs of consecutive sample ranges along the first axis, output by output.
pub fn join_outputs(parts: Vec<HashMap<String, Value>>) -> Result<HashMap<String, Value>> {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return Err(Error::shape("batch join", "no parts to join"));
    };
    let rest: Vec<HashMap<String, Value>> = parts.collect();
    if rest.is_empty() {
        return Ok(first);
    }
    let mut joined = HashMap::with_capacity(first.len());
    for (name, head) in first {
        let mut pieces = vec![head];
        for part in &rest {
            let piece = part.get(&name).ok_or_else(|| {
                Error::shape("batch join", format!("a part produced no output `{name}`"))
            })?;
            pieces.push(piece.clone());
        }
        joined.insert(name.clone(), join_rows(&name, &pieces)?);
    }
    Ok(joined)
}

/// `pieces` joined along their first axis.
fn join_rows(name: &str, pieces: &[Value]) -> Result<Value> {
    let context = || format!("output `{name}` of a batch split");
    if pieces.iter().any(|p| p.dims().is_empty()) {
        return Err(Error::shape(
            context(),
            "a scalar output has no batch axis to join along",
        ));
    }
    match &pieces[0] {
        Value::Float(_) => {
            let tensors = pieces
                .iter()
                .map(Value::as_tensor)
                .collect::<Result<Vec<_>>>()?;
            Ok(Value::Float(crate::tensor::Tensor::concat(&tensors, 0)?))
        }
        Value::Int64 { shape, .. } => {
            let mut data = Vec::new();
            let mut rows = 0;
            for p in pieces {
                check_rest(name, shape, p.shape())?;
                rows += p.dims()[0];
                data.extend_from_slice(p.as_ints()?);
            }
            let mut dims = shape.dims().to_vec();
            dims[0] = rows;
            Value::ints(dims, data)
        }
        Value::Bool { shape, .. } => {
            let mut data = Vec::new();
            let mut rows = 0;
            for p in pieces {
                check_rest(name, shape, p.shape())?;
                rows += p.dims()[0];
                data.extend_from_slice(p.as_bools()?);
            }
            let mut dims = shape.dims().to_vec();
            dims[0] = rows;
            Value::bools(dims, data)
        }
    }
}

/// Two pieces of one output must agree outside the first axis.
fn check_rest(name: &str, a: &Shape, b: &Shape) -> Result<()> {
    if a.dims()[1..] != b.dims()[1..] {
        return Err(Error::shape(
            format!("output `{name}` of a batch split"),
            format!("pieces of shapes {a} and {b} cannot be joined along the batch axis"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DType, Tensor};

    fn info(name: &str, dims: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            elem_type: crate::onnx::ElemType::Float,
            dims: Some(dims),
        }
    }

    #[test]
    fn layouts_follow_the_declared_batch() {
        let x = Value::Float(Tensor::random([6, 3], DType::F32, 1).unwrap());
        let inputs = HashMap::from([("x".to_string(), x)]);
        let fixed = [info("x", vec![Dim::Known(1), Dim::Known(3)])];
        let free = [info("x", vec![Dim::Symbolic("n".into()), Dim::Known(3)])];
        let two = [info("x", vec![Dim::Known(4), Dim::Known(3)])];
        assert_eq!(
            layout(&fixed, &inputs),
            Some(BatchLayout {
                samples: 6,
                chunk: 1
            })
        );
        assert_eq!(layout(&free, &inputs).unwrap().chunk, 0);
        assert_eq!(layout(&two, &inputs), None, "6 samples in runs of 4");
    }

    #[test]
    fn slices_join_back_to_the_whole() {
        let t = Tensor::random([7, 2, 3], DType::F32, 3).unwrap();
        let ints = Value::ints([7, 2], (0..14).collect()).unwrap();
        let parts: Vec<HashMap<String, Value>> = [0..3, 3..4, 4..7]
            .into_iter()
            .map(|r| {
                HashMap::from([
                    (
                        "t".to_string(),
                        slice_rows(&Value::Float(t.clone()), r.clone()).unwrap(),
                    ),
                    ("i".to_string(), slice_rows(&ints, r).unwrap()),
                ])
            })
            .collect();
        let joined = join_outputs(parts).unwrap();
        assert_eq!(joined["t"], Value::Float(t));
        assert_eq!(joined["i"], ints);
    }
}
