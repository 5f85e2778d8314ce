//! ONNX import: `.onnx` models decoded into a [`Model`] (graph, attributes with their defaults,
//! initializers as [`Value`]s), and the `.pb` tensor files of the ONNX test data.
//!
//! The protobuf messages are `prost` structs written after the official schema ([`proto`]);
//! no `protoc` is needed. Operators run in [`exec`] with the kernels of [`ops`]; anything a
//! model needs that accelmesh does not implement is an [`crate::Error::Unsupported`] naming the
//! node, the operator and the opset.

pub mod exec;
pub mod infer;
pub mod model;
pub mod ops;
pub mod proto;
mod resident;
pub mod tensor_proto;
pub mod value;

pub use model::{Attribute, Dim, ElemType, Graph, Model, Node, ValueInfo};
pub use tensor_proto::{decode_tensor, encode_tensor, read_tensor_pb, write_tensor_pb};
pub use value::Value;
