//! Runtime values of an ONNX graph: float tensors, int64 tensors and bool tensors.

use crate::tensor::{DType, Shape, Tensor};
use crate::{Error, Result};

/// A value flowing through a graph: an initializer, an input, an intermediate or an output.
///
/// Floating-point tensors are [`Tensor`]s (f32, f16 or bf16; f64 data is narrowed to f32 on
/// import). Every integer type (int8 to int64, uint8 to uint64) is held as int64, and booleans
/// as `bool`, both row-major with their shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A floating-point tensor.
    Float(Tensor),
    /// An integer tensor, widened to int64.
    Int64 {
        /// Its shape.
        shape: Shape,
        /// Its elements, row-major.
        data: Vec<i64>,
    },
    /// A boolean tensor.
    Bool {
        /// Its shape.
        shape: Shape,
        /// Its elements, row-major.
        data: Vec<bool>,
    },
}

impl Value {
    /// The value's shape.
    pub fn shape(&self) -> &Shape {
        match self {
            Value::Float(t) => t.shape(),
            Value::Int64 { shape, .. } | Value::Bool { shape, .. } => shape,
        }
    }

    /// The dimensions of the value's shape.
    pub fn dims(&self) -> &[usize] {
        self.shape().dims()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match self {
            Value::Float(t) => t.numel(),
            Value::Int64 { data, .. } => data.len(),
            Value::Bool { data, .. } => data.len(),
        }
    }

    /// The float tensor, or a dtype error naming the value's element type.
    pub fn as_tensor(&self) -> Result<&Tensor> {
        match self {
            Value::Float(t) => Ok(t),
            other => Err(other.type_error("a float tensor")),
        }
    }

    /// The float tensor by value, or a dtype error naming the value's element type.
    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            Value::Float(t) => Ok(t),
            other => Err(other.type_error("a float tensor")),
        }
    }

    /// The int64 elements, or a dtype error naming the value's element type.
    pub fn as_ints(&self) -> Result<&[i64]> {
        match self {
            Value::Int64 { data, .. } => Ok(data),
            other => Err(other.type_error("an int64 tensor")),
        }
    }

    /// The bool elements, or a dtype error naming the value's element type.
    pub fn as_bools(&self) -> Result<&[bool]> {
        match self {
            Value::Bool { data, .. } => Ok(data),
            other => Err(other.type_error("a bool tensor")),
        }
    }

    /// The element type's ONNX name (as [`ElemType::name`](super::model::ElemType::name)):
    /// `float`, `float16`, `bfloat16`, `int64` or `bool`.
    pub fn elem_type_name(&self) -> &'static str {
        match self {
            Value::Float(t) => match t.dtype() {
                DType::F32 => "float",
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
            },
            Value::Int64 { .. } => "int64",
            Value::Bool { .. } => "bool",
        }
    }

    /// Wraps a float tensor.
    pub fn from_tensor(t: Tensor) -> Value {
        Value::Float(t)
    }

    /// An int64 value, checked: `data` must hold exactly as many elements as `shape`.
    pub fn ints(shape: impl Into<Shape>, data: Vec<i64>) -> Result<Value> {
        let shape = shape.into();
        check_len(&shape, data.len(), "int64")?;
        Ok(Value::Int64 { shape, data })
    }

    /// A bool value, checked: `data` must hold exactly as many elements as `shape`.
    pub fn bools(shape: impl Into<Shape>, data: Vec<bool>) -> Result<Value> {
        let shape = shape.into();
        check_len(&shape, data.len(), "bool")?;
        Ok(Value::Bool { shape, data })
    }

    /// A rank-0 int64 value.
    pub fn scalar_int(v: i64) -> Value {
        Value::Int64 {
            shape: Shape::new([]),
            data: vec![v],
        }
    }

    /// A rank-0 f32 value.
    pub fn scalar_f32(v: f32) -> Value {
        Value::Float(Tensor::from_vec(Shape::new([]), vec![v]).expect("one element"))
    }

    fn type_error(&self, expected: &str) -> Error {
        Error::dtype(
            "ONNX value",
            format!(
                "expected {expected}, found {} of shape {}",
                self.elem_type_name(),
                self.shape()
            ),
        )
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Float(t)
    }
}

fn check_len(shape: &Shape, len: usize, what: &str) -> Result<()> {
    let numel = shape.numel()?;
    if numel != len {
        return Err(Error::shape(
            "ONNX value construction",
            format!("shape {shape} has {numel} elements but {len} {what} values were given"),
        ));
    }
    Ok(())
}
