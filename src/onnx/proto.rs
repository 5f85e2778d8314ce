//! The ONNX protobuf messages accelmesh reads and writes, as `prost` structs.
//!
//! Written by hand after the official schema (`onnx/onnx.proto`, onnx 1.23, IR version 14): the
//! field numbers and wire types are the official ones, so files written by any ONNX producer
//! decode here and files written here load everywhere. Only the messages a model's graph needs
//! are declared; fields not declared (training info, sharding, quantization annotations) are
//! skipped on decode. The schema is proto2: fields whose presence matters (the value fields of
//! an [`AttributeProto`]) are `Option`s, the others decode to their defaults when absent.
//! Repeated scalars that the schema does not mark `packed` are written unpacked, as protobuf
//! does for proto2; both encodings are accepted on decode.

/// The protobuf message trait (`encode_to_vec`, `decode`), re-exported for building protos.
pub use prost::Message;

/// `TensorProto.DataType` codes (the element types of tensors and of typed values).
pub mod data_type {
    /// Not set.
    pub const UNDEFINED: i32 = 0;
    /// 32-bit float.
    pub const FLOAT: i32 = 1;
    /// 8-bit unsigned integer.
    pub const UINT8: i32 = 2;
    /// 8-bit signed integer.
    pub const INT8: i32 = 3;
    /// 16-bit unsigned integer.
    pub const UINT16: i32 = 4;
    /// 16-bit signed integer.
    pub const INT16: i32 = 5;
    /// 32-bit signed integer.
    pub const INT32: i32 = 6;
    /// 64-bit signed integer.
    pub const INT64: i32 = 7;
    /// UTF-8 string.
    pub const STRING: i32 = 8;
    /// Boolean.
    pub const BOOL: i32 = 9;
    /// IEEE 754 half precision.
    pub const FLOAT16: i32 = 10;
    /// 64-bit float.
    pub const DOUBLE: i32 = 11;
    /// 32-bit unsigned integer.
    pub const UINT32: i32 = 12;
    /// 64-bit unsigned integer.
    pub const UINT64: i32 = 13;
    /// Complex of two 32-bit floats.
    pub const COMPLEX64: i32 = 14;
    /// Complex of two 64-bit floats.
    pub const COMPLEX128: i32 = 15;
    /// bfloat16.
    pub const BFLOAT16: i32 = 16;
    /// 8-bit float, 4 exponent bits, finite and NaN only.
    pub const FLOAT8E4M3FN: i32 = 17;
    /// 8-bit float, 4 exponent bits, no negative zero.
    pub const FLOAT8E4M3FNUZ: i32 = 18;
    /// 8-bit float, 5 exponent bits.
    pub const FLOAT8E5M2: i32 = 19;
    /// 8-bit float, 5 exponent bits, no negative zero.
    pub const FLOAT8E5M2FNUZ: i32 = 20;
    /// 4-bit unsigned integer.
    pub const UINT4: i32 = 21;
    /// 4-bit signed integer.
    pub const INT4: i32 = 22;
    /// 4-bit float (2 exponent bits, 1 mantissa bit).
    pub const FLOAT4E2M1: i32 = 23;
    /// 8-bit exponent-only float.
    pub const FLOAT8E8M0: i32 = 24;
    /// 2-bit unsigned integer.
    pub const UINT2: i32 = 25;
    /// 2-bit signed integer.
    pub const INT2: i32 = 26;
    /// 6-bit float, 2 exponent bits.
    pub const FLOAT6E2M3: i32 = 27;
    /// 6-bit float, 3 exponent bits.
    pub const FLOAT6E3M2: i32 = 28;
}

/// `AttributeProto.AttributeType` codes.
pub mod attribute_type {
    /// Not set (old files): the type is inferred from the field that is set.
    pub const UNDEFINED: i32 = 0;
    /// One float (`f`).
    pub const FLOAT: i32 = 1;
    /// One int64 (`i`).
    pub const INT: i32 = 2;
    /// One byte string (`s`).
    pub const STRING: i32 = 3;
    /// One tensor (`t`).
    pub const TENSOR: i32 = 4;
    /// One graph (`g`).
    pub const GRAPH: i32 = 5;
    /// A list of floats.
    pub const FLOATS: i32 = 6;
    /// A list of int64.
    pub const INTS: i32 = 7;
    /// A list of byte strings.
    pub const STRINGS: i32 = 8;
    /// A list of tensors.
    pub const TENSORS: i32 = 9;
    /// A list of graphs.
    pub const GRAPHS: i32 = 10;
    /// One sparse tensor.
    pub const SPARSE_TENSOR: i32 = 11;
    /// A list of sparse tensors.
    pub const SPARSE_TENSORS: i32 = 12;
    /// One type proto.
    pub const TYPE_PROTO: i32 = 13;
    /// A list of type protos.
    pub const TYPE_PROTOS: i32 = 14;

    /// The schema's name of an attribute type code (`INTS`), or `type <code>` for an unknown one.
    pub fn name(code: i32) -> String {
        let name = match code {
            UNDEFINED => "UNDEFINED",
            FLOAT => "FLOAT",
            INT => "INT",
            STRING => "STRING",
            TENSOR => "TENSOR",
            GRAPH => "GRAPH",
            FLOATS => "FLOATS",
            INTS => "INTS",
            STRINGS => "STRINGS",
            TENSORS => "TENSORS",
            GRAPHS => "GRAPHS",
            SPARSE_TENSOR => "SPARSE_TENSOR",
            SPARSE_TENSORS => "SPARSE_TENSORS",
            TYPE_PROTO => "TYPE_PROTO",
            TYPE_PROTOS => "TYPE_PROTOS",
            other => return format!("type {other}"),
        };
        name.to_string()
    }
}

/// `TensorProto.DataLocation`: where a tensor's bytes live.
pub mod data_location {
    /// In the tensor's own fields.
    pub const DEFAULT: i32 = 0;
    /// In a file next to the model, described by `external_data`.
    pub const EXTERNAL: i32 = 1;
}

/// A whole model: metadata, operator-set imports and the main graph.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// IR version of the file format.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Operator sets the model uses, one per domain.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// The tool that wrote the model.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// The version of that tool.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Reverse-DNS namespace of the model.
    #[prost(string, tag = "4")]
    pub domain: String,
    /// The model's own version.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Human-readable documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The main graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
    /// Model-local functions.
    #[prost(message, repeated, tag = "25")]
    pub functions: Vec<FunctionProto>,
}

/// An operator set import: a domain (`""` or `ai.onnx` for the default one) and its version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// The domain; empty means `ai.onnx`.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// The operator set version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A key/value pair of strings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A graph: nodes in topological order, initializers, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// The nodes, topologically sorted.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// The graph's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights); their names may also appear among the inputs.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Sparse constant tensors.
    #[prost(message, repeated, tag = "15")]
    pub sparse_initializer: Vec<SparseTensorProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// The graph's inputs (in old IR versions, initializers too).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// The graph's outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types and shapes of intermediate values, when known.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names; an empty name is an absent optional input.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names; an empty name is an absent optional output.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// The node's name (optional, for diagnostics).
    #[prost(string, tag = "3")]
    pub name: String,
    /// The operator (`Conv`, `MatMul`, ...).
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// The operator's attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The operator's domain; empty means `ai.onnx`.
    #[prost(string, tag = "7")]
    pub domain: String,
    /// Overload of a model-local function.
    #[prost(string, tag = "8")]
    pub overload: String,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "9")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// A named attribute of a node; `type` says which value field is used.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// The attribute's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Inside a function body: the name of the function attribute this one refers to.
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    /// Human-readable documentation.
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// An [`attribute_type`] code (0 in files older than the field).
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    /// A float value.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// An int value.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// A string value (UTF-8 bytes).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// A tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// A graph value (the body of `If`, `Loop`, `Scan`).
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    /// A sparse tensor value.
    #[prost(message, optional, tag = "22")]
    pub sparse_tensor: Option<SparseTensorProto>,
    /// A type value.
    #[prost(message, optional, tag = "14")]
    pub tp: Option<TypeProto>,
    /// A list of floats.
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// A list of ints.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// A list of strings (UTF-8 bytes).
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// A list of tensors.
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    /// A list of graphs.
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
    /// A list of sparse tensors.
    #[prost(message, repeated, tag = "23")]
    pub sparse_tensors: Vec<SparseTensorProto>,
    /// A list of types.
    #[prost(message, repeated, tag = "15")]
    pub type_protos: Vec<TypeProto>,
}

/// The name and type of a graph input, output or intermediate value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// The value's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type (element type and shape for tensors).
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "3")]
    pub doc_string: String,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "4")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// A tensor: dims, element type and data in one of several fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// The dimensions, outermost first.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// A [`data_type`] code.
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Which slice of a larger tensor this chunk holds (unsupported when set).
    #[prost(message, optional, tag = "3")]
    pub segment: Option<tensor_proto::Segment>,
    /// FLOAT and COMPLEX64 data.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// INT32, INT16, INT8, UINT16, UINT8, BOOL, FLOAT16 and BFLOAT16 data (one element each).
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// STRING data.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    /// INT64 data.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// The tensor's name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Human-readable documentation.
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// All elements as little-endian bytes (takes precedence over the typed fields).
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Location of externally stored data (`location`, `offset`, `length`, `checksum`).
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// A [`data_location`] code.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
    /// DOUBLE and COMPLEX128 data.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// UINT32 and UINT64 data.
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// Nested messages of [`TensorProto`].
pub mod tensor_proto {
    /// A slice `[begin, end)` of a tensor split across several protos.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Segment {
        /// First element.
        #[prost(int64, tag = "1")]
        pub begin: i64,
        /// One past the last element.
        #[prost(int64, tag = "2")]
        pub end: i64,
    }
}

/// A sparse tensor: values at indices in a dense shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SparseTensorProto {
    /// The non-zero values.
    #[prost(message, optional, tag = "1")]
    pub values: Option<TensorProto>,
    /// Their indices.
    #[prost(message, optional, tag = "2")]
    pub indices: Option<TensorProto>,
    /// The dense shape.
    #[prost(int64, repeated, packed = "false", tag = "3")]
    pub dims: Vec<i64>,
}

/// The shape of a tensor type: one entry per dimension.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One dimension: a number, a symbol, or nothing (unknown).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// The size, if given.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        /// Semantic name of the dimension (`DATA_BATCH`, ...).
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// A dimension's size.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// A known size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// A symbolic size (`batch`, `N`).
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// The type of a value: a tensor, sequence, map, optional, sparse tensor or opaque type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// Which type it is.
    #[prost(oneof = "type_proto::Value", tags = "1, 4, 5, 9, 8, 7")]
    pub value: Option<type_proto::Value>,
    /// Semantic name of the type (`IMAGE`, ...).
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    use super::{TensorShapeProto, TypeProto};

    /// A dense tensor type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// A [`data_type`](super::data_type) code.
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        /// The shape, when known (absent: any rank).
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// A sequence type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sequence {
        /// The type of the elements.
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: Option<Box<TypeProto>>,
    }

    /// A map type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Map {
        /// A [`data_type`](super::data_type) code of the keys.
        #[prost(int32, tag = "1")]
        pub key_type: i32,
        /// The type of the values.
        #[prost(message, optional, boxed, tag = "2")]
        pub value_type: Option<Box<TypeProto>>,
    }

    /// An optional type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Optional {
        /// The type of the value, when present.
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: Option<Box<TypeProto>>,
    }

    /// A sparse tensor type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SparseTensor {
        /// A [`data_type`](super::data_type) code.
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        /// The shape, when known.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// An opaque type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Opaque {
        /// Its domain.
        #[prost(string, tag = "1")]
        pub domain: String,
        /// Its name.
        #[prost(string, tag = "2")]
        pub name: String,
    }

    /// The kinds of type.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// A dense tensor.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
        /// A sequence.
        #[prost(message, tag = "4")]
        SequenceType(Sequence),
        /// A map.
        #[prost(message, tag = "5")]
        MapType(Map),
        /// An optional.
        #[prost(message, tag = "9")]
        OptionalType(Optional),
        /// A sparse tensor.
        #[prost(message, tag = "8")]
        SparseTensorType(SparseTensor),
        /// An opaque type.
        #[prost(message, tag = "7")]
        OpaqueType(Opaque),
    }
}

/// A model-local function: a named subgraph that nodes can call as an operator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FunctionProto {
    /// The function's name (the `op_type` that calls it).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Formal input names.
    #[prost(string, repeated, tag = "4")]
    pub input: Vec<String>,
    /// Formal output names.
    #[prost(string, repeated, tag = "5")]
    pub output: Vec<String>,
    /// Names of attributes without defaults.
    #[prost(string, repeated, tag = "6")]
    pub attribute: Vec<String>,
    /// Attributes with defaults.
    #[prost(message, repeated, tag = "11")]
    pub attribute_proto: Vec<AttributeProto>,
    /// The body.
    #[prost(message, repeated, tag = "7")]
    pub node: Vec<NodeProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "8")]
    pub doc_string: String,
    /// Operator sets the body uses.
    #[prost(message, repeated, tag = "9")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// The function's domain (the `domain` of the nodes that call it).
    #[prost(string, tag = "10")]
    pub domain: String,
    /// Overload name.
    #[prost(string, tag = "13")]
    pub overload: String,
    /// Types of the body's values.
    #[prost(message, repeated, tag = "12")]
    pub value_info: Vec<ValueInfoProto>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}
