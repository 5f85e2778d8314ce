//! Conversions between ONNX `TensorProto`s and [`Value`]s, and the `.pb` tensor files of the
//! ONNX test data (`input_0.pb`, `output_0.pb`: one serialized `TensorProto` each).

use std::path::Path;

use half::{bf16, f16};
use prost::Message;

use super::model::ElemType;
use super::proto::{self, data_location, data_type};
use super::value::Value;
use crate::tensor::{Shape, Tensor, TensorData};
use crate::{Error, Result};

/// Decodes a tensor: its dims, element type and data, from `raw_data` (little-endian bytes)
/// or from the typed field of its element type (`float_data`, `int32_data` — which also holds
/// f16/bf16 bit patterns, bools and 8/16-bit integers —, `int64_data`, `double_data`,
/// `uint64_data`).
///
/// f32, f16 and bf16 become [`Value::Float`]; f64 is narrowed to f32; every integer type
/// becomes [`Value::Int64`] (a uint64 above `i64::MAX` is an error); bool becomes
/// [`Value::Bool`]. Other element types (string, complex, 8-bit floats, 4-bit integers) are a
/// [`Error::DType`]; externally stored data, segments, negative dims and data whose length does
/// not match the dims are an [`Error::Parse`] naming the tensor.
pub fn decode_tensor(t: &proto::TensorProto) -> Result<Value> {
    let name = display_name(&t.name);
    if t.data_location == data_location::EXTERNAL || !t.external_data.is_empty() {
        let location = t
            .external_data
            .iter()
            .find(|e| e.key == "location")
            .map_or("an unnamed file".to_string(), |e| format!("`{}`", e.value));
        return Err(Error::parse(
            "ONNX tensor",
            name,
            format!(
                "its data is stored externally in {location}; external data is not supported \
                 (save the model with its tensors inline)"
            ),
        ));
    }
    if t.segment.is_some() {
        return Err(Error::parse(
            "ONNX tensor",
            name,
            "segmented tensors are not supported",
        ));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| {
            Error::parse(
                "ONNX tensor",
                name.clone(),
                format!("dims {:?} hold a negative dimension", t.dims),
            )
        })?;
        dims.push(d);
    }
    let shape = Shape::new(dims);
    let n = shape.numel()?;
    let r = Reader { t, name: &name, n };

    let value = match t.data_type {
        data_type::FLOAT => {
            let v = r.raw_or(
                4,
                |b| f32::from_le_bytes(b.try_into().unwrap()),
                || r.typed("float_data", &t.float_data, |&x| x),
            )?;
            float(shape, TensorData::F32(v))?
        }
        data_type::DOUBLE => {
            let v = r.raw_or(
                8,
                |b| f64::from_le_bytes(b.try_into().unwrap()) as f32,
                || r.typed("double_data", &t.double_data, |&x| x as f32),
            )?;
            float(shape, TensorData::F32(v))?
        }
        data_type::FLOAT16 => {
            let v = r.raw_or(
                2,
                |b| f16::from_bits(u16::from_le_bytes(b.try_into().unwrap())),
                || r.typed("int32_data", &t.int32_data, |&x| f16::from_bits(x as u16)),
            )?;
            float(shape, TensorData::F16(v))?
        }
        data_type::BFLOAT16 => {
            let v = r.raw_or(
                2,
                |b| bf16::from_bits(u16::from_le_bytes(b.try_into().unwrap())),
                || r.typed("int32_data", &t.int32_data, |&x| bf16::from_bits(x as u16)),
            )?;
            float(shape, TensorData::BF16(v))?
        }
        data_type::INT64 => {
            let data = r.raw_or(
                8,
                |b| i64::from_le_bytes(b.try_into().unwrap()),
                || r.typed("int64_data", &t.int64_data, |&x| x),
            )?;
            Value::Int64 { shape, data }
        }
        data_type::INT32 => {
            let data = r.raw_or(
                4,
                |b| i64::from(i32::from_le_bytes(b.try_into().unwrap())),
                || r.int32_data(),
            )?;
            Value::Int64 { shape, data }
        }
        data_type::INT16 => {
            let data = r.raw_or(
                2,
                |b| i64::from(i16::from_le_bytes(b.try_into().unwrap())),
                || r.int32_data(),
            )?;
            Value::Int64 { shape, data }
        }
        data_type::UINT16 => {
            let data = r.raw_or(
                2,
                |b| i64::from(u16::from_le_bytes(b.try_into().unwrap())),
                || r.int32_data(),
            )?;
            Value::Int64 { shape, data }
        }
        data_type::INT8 => {
            let data = r.raw_or(1, |b| i64::from(b[0] as i8), || r.int32_data())?;
            Value::Int64 { shape, data }
        }
        data_type::UINT8 => {
            let data = r.raw_or(1, |b| i64::from(b[0]), || r.int32_data())?;
            Value::Int64 { shape, data }
        }
        data_type::UINT32 => {
            let data = r.raw_or(
                4,
                |b| i64::from(u32::from_le_bytes(b.try_into().unwrap())),
                || r.typed("uint64_data", &t.uint64_data, |&x| x as i64),
            )?;
            Value::Int64 { shape, data }
        }
        data_type::UINT64 => {
            let wide = r.raw_or(
                8,
                |b| u64::from_le_bytes(b.try_into().unwrap()),
                || r.typed("uint64_data", &t.uint64_data, |&x| x),
            )?;
            let mut data = Vec::with_capacity(wide.len());
            for x in wide {
                data.push(i64::try_from(x).map_err(|_| {
                    Error::parse(
                        "ONNX tensor",
                        name.clone(),
                        format!("uint64 element {x} does not fit in int64"),
                    )
                })?);
            }
            Value::Int64 { shape, data }
        }
        data_type::BOOL => {
            let data = r.raw_or(
                1,
                |b| b[0] != 0,
                || r.typed("int32_data", &t.int32_data, |&x| x != 0),
            )?;
            Value::Bool { shape, data }
        }
        code => {
            let what = match code {
                data_type::UNDEFINED => "UNDEFINED (data_type not set)".to_string(),
                _ => ElemType::from_code(code).name().to_string(),
            };
            return Err(Error::dtype(
                format!("ONNX tensor `{name}`"),
                format!(
                    "element type {what} is not supported (accelmesh reads float, float16, \
                     bfloat16, double, the integer types and bool)"
                ),
            ));
        }
    };
    Ok(value)
}

/// Encodes a value as a `TensorProto` named `name`, its data in `raw_data` (little endian), as
/// `onnx.numpy_helper.from_array` writes it: FLOAT, FLOAT16, BFLOAT16, INT64 or BOOL.
pub fn encode_tensor(name: &str, v: &Value) -> proto::TensorProto {
    let (code, raw) = match v {
        Value::Float(t) => match t.data() {
            TensorData::F32(d) => (data_type::FLOAT, le_bytes(d, |x| x.to_le_bytes())),
            TensorData::F16(d) => (
                data_type::FLOAT16,
                le_bytes(d, |x| x.to_bits().to_le_bytes()),
            ),
            TensorData::BF16(d) => (
                data_type::BFLOAT16,
                le_bytes(d, |x| x.to_bits().to_le_bytes()),
            ),
        },
        Value::Int64 { data, .. } => (data_type::INT64, le_bytes(data, |x| x.to_le_bytes())),
        Value::Bool { data, .. } => (data_type::BOOL, data.iter().map(|&b| u8::from(b)).collect()),
    };
    proto::TensorProto {
        dims: v.shape().dims().iter().map(|&d| d as i64).collect(),
        data_type: code,
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    }
}

/// Reads a serialized `TensorProto` file (`input_0.pb`, `output_0.pb` of the ONNX test data):
/// its name and value. Errors name the path.
pub fn read_tensor_pb(path: &Path) -> Result<(String, Value)> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        Error::parse(
            "ONNX tensor file",
            shown.clone(),
            format!("cannot read it: {e}"),
        )
    })?;
    let t = proto::TensorProto::decode(bytes.as_slice()).map_err(|e| {
        Error::parse(
            "ONNX tensor file",
            shown.clone(),
            format!("not a serialized TensorProto: {e}"),
        )
    })?;
    let value = decode_tensor(&t).map_err(|e| in_file(e, "ONNX tensor file", &shown))?;
    Ok((t.name, value))
}

/// Writes `v` as a serialized `TensorProto` named `name` (see [`encode_tensor`]); errors name
/// the path.
pub fn write_tensor_pb(path: &Path, name: &str, v: &Value) -> Result<()> {
    let bytes = encode_tensor(name, v).encode_to_vec();
    std::fs::write(path, bytes).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write tensor file {}: {e}", path.display()),
        ))
    })
}

/// Adds the file an error arose in to a parse or dtype error (other errors pass unchanged).
pub(crate) fn in_file(err: Error, what: &'static str, file: &str) -> Error {
    match err {
        Error::Parse {
            what: inner,
            value,
            reason,
        } => Error::parse(what, file, format!("{inner} `{value}`: {reason}")),
        Error::DType { context, detail } => Error::dtype(format!("{file}: {context}"), detail),
        other => other,
    }
}

fn display_name(name: &str) -> String {
    if name.is_empty() {
        "<unnamed>".to_string()
    } else {
        name.to_string()
    }
}

fn float(shape: Shape, data: TensorData) -> Result<Value> {
    Ok(Value::Float(Tensor::from_data(shape, data)?))
}

fn le_bytes<T: Copy, const N: usize>(data: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * N);
    for &x in data {
        out.extend_from_slice(&f(x));
    }
    out
}

/// Reads one tensor's elements from `raw_data` or from a typed field, checking the count.
struct Reader<'a> {
    t: &'a proto::TensorProto,
    name: &'a str,
    n: usize,
}

impl Reader<'_> {
    /// The elements from `raw_data` (`size` bytes each, converted by `from_raw`) when it is
    /// set, else from `typed`.
    fn raw_or<T>(
        &self,
        size: usize,
        from_raw: impl Fn(&[u8]) -> T,
        typed: impl FnOnce() -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let raw = &self.t.raw_data;
        if raw.is_empty() {
            return typed();
        }
        let expected = self.n.checked_mul(size).ok_or_else(|| {
            Error::overflow(
                "ONNX tensor",
                format!("byte size of tensor `{}`", self.name),
            )
        })?;
        if raw.len() != expected {
            return Err(Error::parse(
                "ONNX tensor",
                self.name,
                format!(
                    "raw_data holds {} bytes but dims {:?} of {}-byte elements need {expected}",
                    raw.len(),
                    self.t.dims,
                    size
                ),
            ));
        }
        Ok(raw.chunks_exact(size).map(from_raw).collect())
    }

    /// The elements of the typed field `field`, converted by `f`.
    fn typed<S, T>(&self, field: &str, data: &[S], f: impl Fn(&S) -> T) -> Result<Vec<T>> {
        if data.len() != self.n {
            return Err(Error::parse(
                "ONNX tensor",
                self.name,
                format!(
                    "{field} holds {} values but dims {:?} need {} (and raw_data is empty)",
                    data.len(),
                    self.t.dims,
                    self.n
                ),
            ));
        }
        Ok(data.iter().map(f).collect())
    }

    /// The elements of `int32_data`, widened to int64.
    fn int32_data(&self) -> Result<Vec<i64>> {
        self.typed("int32_data", &self.t.int32_data, |&x| i64::from(x))
    }
}
