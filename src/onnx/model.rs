//! An ONNX model in memory: the graph's nodes with their attributes, initializers decoded to
//! [`Value`]s, typed inputs and outputs, and the operator-set versions it imports.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use prost::Message;

use super::proto::{self, attribute_type, data_type};
use super::tensor_proto::{decode_tensor, in_file};
use super::value::Value;
use crate::tensor::Shape;
use crate::{Error, Result};

/// The oldest default-domain (`ai.onnx`) operator set accelmesh executes.
pub const MIN_OPSET: i64 = 7;

/// The newest default-domain operator set the importer knows (onnx 1.23).
pub const LATEST_OPSET: i64 = 28;

/// The element type of a tensor, from the `TensorProto.DataType` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// 32-bit float (code 1).
    Float,
    /// Half precision (code 10).
    Float16,
    /// bfloat16 (code 16).
    BFloat16,
    /// 64-bit float (code 11).
    Double,
    /// 64-bit integer (code 7).
    Int64,
    /// 32-bit integer (code 6).
    Int32,
    /// 8-bit integer (code 3).
    Int8,
    /// 8-bit unsigned integer (code 2).
    UInt8,
    /// 16-bit integer (code 5).
    Int16,
    /// 16-bit unsigned integer (code 4).
    UInt16,
    /// Boolean (code 9).
    Bool,
    /// String (code 8).
    String,
    /// Any other code (uint32, uint64, complex, 8-bit floats, 4-bit integers...); 0 also
    /// stands for a value whose type is not a tensor (sequence, map, optional) or is not given.
    Other(i32),
}

impl ElemType {
    /// The element type of a `TensorProto.DataType` code.
    pub fn from_code(code: i32) -> ElemType {
        match code {
            data_type::FLOAT => ElemType::Float,
            data_type::FLOAT16 => ElemType::Float16,
            data_type::BFLOAT16 => ElemType::BFloat16,
            data_type::DOUBLE => ElemType::Double,
            data_type::INT64 => ElemType::Int64,
            data_type::INT32 => ElemType::Int32,
            data_type::INT8 => ElemType::Int8,
            data_type::UINT8 => ElemType::UInt8,
            data_type::INT16 => ElemType::Int16,
            data_type::UINT16 => ElemType::UInt16,
            data_type::BOOL => ElemType::Bool,
            data_type::STRING => ElemType::String,
            other => ElemType::Other(other),
        }
    }

    /// The `TensorProto.DataType` code.
    pub fn code(self) -> i32 {
        match self {
            ElemType::Float => data_type::FLOAT,
            ElemType::Float16 => data_type::FLOAT16,
            ElemType::BFloat16 => data_type::BFLOAT16,
            ElemType::Double => data_type::DOUBLE,
            ElemType::Int64 => data_type::INT64,
            ElemType::Int32 => data_type::INT32,
            ElemType::Int8 => data_type::INT8,
            ElemType::UInt8 => data_type::UINT8,
            ElemType::Int16 => data_type::INT16,
            ElemType::UInt16 => data_type::UINT16,
            ElemType::Bool => data_type::BOOL,
            ElemType::String => data_type::STRING,
            ElemType::Other(code) => code,
        }
    }

    /// The ONNX name in lower case (`float`, `float16`, `int64`, `uint32`, ...; `undefined`
    /// for 0 and `unknown` for a code the schema does not define).
    pub fn name(self) -> &'static str {
        match self.code() {
            data_type::UNDEFINED => "undefined",
            data_type::FLOAT => "float",
            data_type::UINT8 => "uint8",
            data_type::INT8 => "int8",
            data_type::UINT16 => "uint16",
            data_type::INT16 => "int16",
            data_type::INT32 => "int32",
            data_type::INT64 => "int64",
            data_type::STRING => "string",
            data_type::BOOL => "bool",
            data_type::FLOAT16 => "float16",
            data_type::DOUBLE => "double",
            data_type::UINT32 => "uint32",
            data_type::UINT64 => "uint64",
            data_type::COMPLEX64 => "complex64",
            data_type::COMPLEX128 => "complex128",
            data_type::BFLOAT16 => "bfloat16",
            data_type::FLOAT8E4M3FN => "float8e4m3fn",
            data_type::FLOAT8E4M3FNUZ => "float8e4m3fnuz",
            data_type::FLOAT8E5M2 => "float8e5m2",
            data_type::FLOAT8E5M2FNUZ => "float8e5m2fnuz",
            data_type::UINT4 => "uint4",
            data_type::INT4 => "int4",
            data_type::FLOAT4E2M1 => "float4e2m1",
            data_type::FLOAT8E8M0 => "float8e8m0",
            data_type::UINT2 => "uint2",
            data_type::INT2 => "int2",
            data_type::FLOAT6E2M3 => "float6e2m3",
            data_type::FLOAT6E3M2 => "float6e3m2",
            _ => "unknown",
        }
    }

    /// True for the types held as [`Value::Float`] (float, float16, bfloat16, double).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElemType::Float | ElemType::Float16 | ElemType::BFloat16 | ElemType::Double
        )
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Known(usize),
    /// A named size (`batch`, `N`), the same wherever the name appears.
    Symbolic(String),
    /// Any size.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(d) => write!(f, "{d}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// The declared name, element type and shape of a graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// The value's name.
    pub name: String,
    /// Its element type ([`ElemType::Other`]`(0)` when the type is not a tensor or not given).
    pub elem_type: ElemType,
    /// Its dimensions, or `None` when the rank is not declared.
    pub dims: Option<Vec<Dim>>,
}

impl ValueInfo {
    /// The shape, when every dimension is known.
    pub fn known_shape(&self) -> Option<Shape> {
        let dims = self.dims.as_ref()?;
        let known = dims
            .iter()
            .map(|d| match d {
                Dim::Known(n) => Some(*n),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>()?;
        Some(Shape::new(known))
    }
}

/// A decoded attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attribute {
    /// One float.
    Float(f32),
    /// One integer.
    Int(i64),
    /// One string.
    String(String),
    /// One tensor.
    Tensor(Value),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of strings.
    Strings(Vec<String>),
    /// A subgraph (the branches of `If`, the body of `Loop` and `Scan`).
    Graph(Box<Graph>),
}

impl Attribute {
    /// The schema's name of the attribute's type (`INT`, `FLOATS`, `GRAPH`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Attribute::Float(_) => "FLOAT",
            Attribute::Int(_) => "INT",
            Attribute::String(_) => "STRING",
            Attribute::Tensor(_) => "TENSOR",
            Attribute::Floats(_) => "FLOATS",
            Attribute::Ints(_) => "INTS",
            Attribute::Strings(_) => "STRINGS",
            Attribute::Graph(_) => "GRAPH",
        }
    }

    /// True for an empty list (whose element type old files cannot tell apart).
    fn is_empty_list(&self) -> bool {
        match self {
            Attribute::Floats(v) => v.is_empty(),
            Attribute::Ints(v) => v.is_empty(),
            Attribute::Strings(v) => v.is_empty(),
            _ => false,
        }
    }
}

/// One operator application of a graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's name as written (may be empty; see [`Node::display_name`]).
    pub name: String,
    /// The operator (`Conv`, `MatMul`, ...).
    pub op_type: String,
    /// The operator's domain; `""` is the default domain (`ai.onnx` is normalised to `""`).
    pub domain: String,
    /// Input value names in order; `""` is an absent optional input.
    pub inputs: Vec<String>,
    /// Output value names in order; `""` is an absent optional output.
    pub outputs: Vec<String>,
    /// The attributes the node sets, by name (absent ones take the operator's defaults).
    pub attributes: HashMap<String, Attribute>,
}

impl Node {
    /// The integer attribute `name`, or `default` when the node does not set it.
    pub fn attr_int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attributes.get(name) {
            None => Ok(default),
            Some(Attribute::Int(v)) => Ok(*v),
            Some(other) => Err(self.attr_type_error(name, "INT", other)),
        }
    }

    /// The float attribute `name` (an INT one is converted), or `default` when not set.
    pub fn attr_float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attributes.get(name) {
            None => Ok(default),
            Some(Attribute::Float(v)) => Ok(*v),
            Some(Attribute::Int(v)) => Ok(*v as f32),
            Some(other) => Err(self.attr_type_error(name, "FLOAT", other)),
        }
    }

    /// The string attribute `name`, or `default` when the node does not set it.
    pub fn attr_string(&self, name: &str, default: &str) -> Result<String> {
        match self.attributes.get(name) {
            None => Ok(default.to_string()),
            Some(Attribute::String(v)) => Ok(v.clone()),
            Some(other) => Err(self.attr_type_error(name, "STRING", other)),
        }
    }

    /// The integer-list attribute `name`, or `None` when the node does not set it.
    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attributes.get(name) {
            None => Ok(None),
            Some(Attribute::Ints(v)) => Ok(Some(v.clone())),
            Some(a) if a.is_empty_list() => Ok(Some(Vec::new())),
            Some(other) => Err(self.attr_type_error(name, "INTS", other)),
        }
    }

    /// The float-list attribute `name`, or `None` when the node does not set it.
    pub fn attr_floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.attributes.get(name) {
            None => Ok(None),
            Some(Attribute::Floats(v)) => Ok(Some(v.clone())),
            Some(a) if a.is_empty_list() => Ok(Some(Vec::new())),
            Some(other) => Err(self.attr_type_error(name, "FLOATS", other)),
        }
    }

    /// The string-list attribute `name`, or `None` when the node does not set it.
    pub fn attr_strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.attributes.get(name) {
            None => Ok(None),
            Some(Attribute::Strings(v)) => Ok(Some(v.clone())),
            Some(a) if a.is_empty_list() => Ok(Some(Vec::new())),
            Some(other) => Err(self.attr_type_error(name, "STRINGS", other)),
        }
    }

    /// The tensor attribute `name`, or `None` when the node does not set it.
    pub fn attr_tensor(&self, name: &str) -> Result<Option<Value>> {
        match self.attributes.get(name) {
            None => Ok(None),
            Some(Attribute::Tensor(v)) => Ok(Some(v.clone())),
            Some(other) => Err(self.attr_type_error(name, "TENSOR", other)),
        }
    }

    /// The graph attribute `name`, or `None` when the node does not set it.
    pub fn attr_graph(&self, name: &str) -> Result<Option<&Graph>> {
        match self.attributes.get(name) {
            None => Ok(None),
            Some(Attribute::Graph(g)) => Ok(Some(g)),
            Some(other) => Err(self.attr_type_error(name, "GRAPH", other)),
        }
    }

    /// True when the node sets attribute `name`.
    pub fn has_attr(&self, name: &str) -> bool {
        self.attributes.contains_key(name)
    }

    /// The node's name, or for an unnamed node `<op_type> -> <first output>` (outputs are
    /// unique in a graph), or `<op_type> (unnamed)` when it has no output either.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        match self.outputs.iter().find(|o| !o.is_empty()) {
            Some(out) => format!("{} -> {out}", self.op_type),
            None => format!("{} (unnamed)", self.op_type),
        }
    }

    /// The input at `index`, or `None` when it is absent (past the end or named `""`).
    pub fn input(&self, index: usize) -> Option<&str> {
        self.inputs
            .get(index)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn attr_type_error(&self, name: &str, expected: &str, found: &Attribute) -> Error {
        Error::dtype(
            format!(
                "node `{}` ({}), attribute `{name}`",
                self.display_name(),
                self.op_type
            ),
            format!("expected {expected}, found {}", found.type_name()),
        )
    }
}

/// A graph: nodes in topological order, initializers, inputs and outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// The graph's name.
    pub name: String,
    /// The nodes, in the order of the file (topological for a valid model).
    pub nodes: Vec<Node>,
    /// Constant tensors (weights) by name.
    pub initializers: HashMap<String, Value>,
    /// The inputs the caller feeds: the declared inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    /// The declared outputs.
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    /// The distinct operators of the graph (and of its subgraphs), as `(domain, op_type)`.
    pub fn op_types(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.collect_op_types(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_op_types(&self, out: &mut Vec<(String, String)>) {
        for node in &self.nodes {
            out.push((node.domain.clone(), node.op_type.clone()));
            for a in node.attributes.values() {
                if let Attribute::Graph(g) = a {
                    g.collect_op_types(out);
                }
            }
        }
    }
}

/// A loaded model: its IR version, producer, operator-set versions and main graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// IR version of the file.
    pub ir_version: i64,
    /// The tool that wrote it: producer name, then version when given (`pytorch 2.1`).
    pub producer: String,
    /// Imported operator-set versions by domain (`""` is the default domain, `ai.onnx`).
    pub opsets: HashMap<String, i64>,
    /// The main graph.
    pub graph: Graph,
}

impl Model {
    /// Reads and decodes a `.onnx` file; an unreadable or malformed file is an
    /// [`Error::Parse`] naming the path. See [`Model::from_proto`] for what is checked.
    pub fn load(path: &Path) -> Result<Model> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| {
            Error::parse(
                "ONNX model file",
                shown.clone(),
                format!("cannot read it: {e}"),
            )
        })?;
        Model::decode_from(&bytes, &shown)
    }

    /// Decodes a serialized `ModelProto` (the bytes of a `.onnx` file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Model::decode_from(bytes, "<in-memory model>")
    }

    /// Converts a decoded `ModelProto`: decodes initializers and attributes, drops initializers
    /// from the graph inputs, normalises the domain `ai.onnx` to `""`.
    ///
    /// Errors: a model without a graph or IR version and an initializer that does not decode
    /// ([`decode_tensor`]) are [`Error::Parse`]; a node that calls a model-local function, sets
    /// an attribute of a type accelmesh does not read (sparse tensor, type proto, list of
    /// tensors or graphs, a function-attribute reference), or reads an initializer or tensor
    /// attribute of an element type accelmesh does not hold (string, complex, 8-bit float) is
    /// an [`Error::Unsupported`] naming the node, the operator and the opset.
    pub fn from_proto(p: &proto::ModelProto) -> Result<Model> {
        if p.ir_version <= 0 {
            return Err(Error::parse(
                "ONNX model",
                "ir_version",
                format!("ir_version is {}, not a valid ONNX model", p.ir_version),
            ));
        }
        let graph = p
            .graph
            .as_ref()
            .ok_or_else(|| Error::parse("ONNX model", "graph", "the model has no graph"))?;
        let mut opsets = HashMap::new();
        for o in &p.opset_import {
            opsets.insert(normalise_domain(&o.domain).to_string(), o.version);
        }
        let functions: Vec<(String, String)> = p
            .functions
            .iter()
            .map(|f| (normalise_domain(&f.domain).to_string(), f.name.clone()))
            .collect();
        let ctx = Ctx {
            opsets: &opsets,
            functions: &functions,
        };
        let graph = ctx.graph(graph)?;
        let producer = match (p.producer_name.trim(), p.producer_version.trim()) {
            (name, "") => name.to_string(),
            ("", version) => version.to_string(),
            (name, version) => format!("{name} {version}"),
        };
        Ok(Model {
            ir_version: p.ir_version,
            producer,
            opsets,
            graph,
        })
    }

    /// The default-domain (`ai.onnx`) operator-set version, 1 when the model imports none.
    pub fn opset(&self) -> i64 {
        self.opsets.get("").copied().unwrap_or(1)
    }

    /// The operator-set version of `domain` (`""` or `ai.onnx` for the default one), if imported.
    pub fn opset_of(&self, domain: &str) -> Option<i64> {
        self.opsets.get(normalise_domain(domain)).copied()
    }

    /// Checks that the default-domain opset is one accelmesh executes ([`MIN_OPSET`] to
    /// [`LATEST_OPSET`]); an [`Error::Parse`] naming the version otherwise.
    pub fn check_opset(&self) -> Result<()> {
        let v = self.opset();
        if (MIN_OPSET..=LATEST_OPSET).contains(&v) {
            return Ok(());
        }
        Err(Error::parse(
            "ONNX opset",
            format!("ai.onnx {v}"),
            format!("accelmesh supports ai.onnx opsets {MIN_OPSET} to {LATEST_OPSET}"),
        ))
    }

    fn decode_from(bytes: &[u8], origin: &str) -> Result<Model> {
        let p = proto::ModelProto::decode(bytes).map_err(|e| {
            Error::parse(
                "ONNX model file",
                origin,
                format!("not a serialized ONNX ModelProto: {e}"),
            )
        })?;
        Model::from_proto(&p).map_err(|e| in_file(e, "ONNX model file", origin))
    }
}

/// `ai.onnx` and `""` both name the default domain; this returns `""` for either.
fn normalise_domain(domain: &str) -> &str {
    if domain == "ai.onnx" { "" } else { domain }
}

/// What converting a graph needs from the model.
struct Ctx<'a> {
    opsets: &'a HashMap<String, i64>,
    functions: &'a [(String, String)],
}

impl Ctx<'_> {
    fn opset(&self, domain: &str) -> i64 {
        self.opsets.get(domain).copied().unwrap_or(match domain {
            "" => 1,
            _ => 0,
        })
    }

    fn graph(&self, g: &proto::GraphProto) -> Result<Graph> {
        let graph_name = if g.name.is_empty() {
            "<unnamed graph>"
        } else {
            &g.name
        };
        let mut initializers = HashMap::with_capacity(g.initializer.len());
        for t in &g.initializer {
            if t.name.is_empty() {
                return Err(Error::parse(
                    "ONNX graph",
                    graph_name,
                    "an initializer has no name",
                ));
            }
            let v = decode_tensor(t).map_err(|e| self.initializer_error(g, &t.name, e))?;
            if initializers.insert(t.name.clone(), v).is_some() {
                return Err(Error::parse(
                    "ONNX graph",
                    graph_name,
                    format!("initializer `{}` is defined twice", t.name),
                ));
            }
        }
        for s in &g.sparse_initializer {
            let name = s.values.as_ref().map_or("", |v| v.name.as_str());
            let v = densify(s)?;
            if initializers.insert(name.to_string(), v).is_some() {
                return Err(Error::parse(
                    "ONNX graph",
                    graph_name,
                    format!("initializer `{name}` is defined twice"),
                ));
            }
        }
        let inputs = g
            .input
            .iter()
            .filter(|i| !initializers.contains_key(&i.name))
            .map(value_info)
            .collect();
        let outputs = g.output.iter().map(value_info).collect();
        let nodes = g
            .node
            .iter()
            .map(|n| self.node(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Graph {
            name: g.name.clone(),
            nodes,
            initializers,
            inputs,
            outputs,
        })
    }

    /// An initializer of an element type accelmesh does not hold is unsupported by the first
    /// node that reads it; other errors pass unchanged.
    fn initializer_error(&self, g: &proto::GraphProto, name: &str, err: Error) -> Error {
        let Error::DType { detail, .. } = &err else {
            return err;
        };
        match g.node.iter().find(|n| n.input.iter().any(|i| i == name)) {
            Some(n) => {
                let domain = normalise_domain(&n.domain);
                let shown = Node {
                    name: n.name.clone(),
                    op_type: n.op_type.clone(),
                    domain: domain.to_string(),
                    inputs: Vec::new(),
                    outputs: n.output.clone(),
                    attributes: HashMap::new(),
                };
                Error::unsupported(
                    shown.display_name(),
                    &n.op_type,
                    self.opset(domain),
                    format!("initializer `{name}`: {detail}"),
                )
            }
            None => err,
        }
    }

    fn node(&self, p: &proto::NodeProto) -> Result<Node> {
        let mut node = Node {
            name: p.name.clone(),
            op_type: p.op_type.clone(),
            domain: normalise_domain(&p.domain).to_string(),
            inputs: p.input.clone(),
            outputs: p.output.clone(),
            attributes: HashMap::with_capacity(p.attribute.len()),
        };
        let opset = self.opset(&node.domain);
        if self
            .functions
            .iter()
            .any(|(d, n)| *d == node.domain && *n == node.op_type)
        {
            return Err(Error::unsupported(
                node.display_name(),
                &node.op_type,
                opset,
                "it calls a model-local function, and functions are not supported",
            ));
        }
        for a in &p.attribute {
            let value = self.attribute(&node, opset, a)?;
            if node.attributes.insert(a.name.clone(), value).is_some() {
                return Err(Error::parse(
                    "ONNX node",
                    node.display_name(),
                    format!("attribute `{}` is set twice", a.name),
                ));
            }
        }
        Ok(node)
    }

    /// Decodes one attribute of `node`; a type accelmesh does not read is an
    /// [`Error::Unsupported`] naming the node.
    fn attribute(&self, node: &Node, opset: i64, a: &proto::AttributeProto) -> Result<Attribute> {
        let name = &a.name;
        let unsupported =
            |detail: String| Error::unsupported(node.display_name(), &node.op_type, opset, detail);
        if !a.ref_attr_name.is_empty() {
            return Err(unsupported(format!(
                "attribute `{name}` refers to function attribute `{}`; functions are not supported",
                a.ref_attr_name
            )));
        }
        let ty = if a.r#type == attribute_type::UNDEFINED {
            infer_attribute_type(a)
        } else {
            a.r#type
        };
        let string = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let missing = || {
            Error::parse(
                "ONNX node",
                node.display_name(),
                format!(
                    "attribute `{name}` of type {} has no value",
                    attribute_type::name(ty)
                ),
            )
        };
        Ok(match ty {
            attribute_type::FLOAT => Attribute::Float(a.f.unwrap_or(0.0)),
            attribute_type::INT => Attribute::Int(a.i.unwrap_or(0)),
            attribute_type::STRING => Attribute::String(string(a.s.as_deref().unwrap_or(&[]))),
            attribute_type::FLOATS => Attribute::Floats(a.floats.clone()),
            attribute_type::INTS => Attribute::Ints(a.ints.clone()),
            attribute_type::STRINGS => {
                Attribute::Strings(a.strings.iter().map(|s| string(s)).collect())
            }
            attribute_type::TENSOR => {
                let t = a.t.as_ref().ok_or_else(missing)?;
                Attribute::Tensor(decode_tensor(t).map_err(|e| match e {
                    Error::DType { detail, .. } => {
                        unsupported(format!("tensor attribute `{name}`: {detail}"))
                    }
                    other => Error::parse(
                        "ONNX node",
                        node.display_name(),
                        format!("tensor attribute `{name}`: {other}"),
                    ),
                })?)
            }
            attribute_type::GRAPH => {
                let g = a.g.as_ref().ok_or_else(missing)?;
                Attribute::Graph(Box::new(self.graph(g)?))
            }
            other => {
                return Err(unsupported(format!(
                    "attribute `{name}` has type {}, which accelmesh does not read",
                    attribute_type::name(other)
                )));
            }
        })
    }
}

/// The type of an attribute from files older than `AttributeProto.type`: the field that is set.
fn infer_attribute_type(a: &proto::AttributeProto) -> i32 {
    if a.f.is_some() {
        attribute_type::FLOAT
    } else if a.i.is_some() {
        attribute_type::INT
    } else if a.s.is_some() {
        attribute_type::STRING
    } else if a.t.is_some() {
        attribute_type::TENSOR
    } else if a.g.is_some() {
        attribute_type::GRAPH
    } else if !a.floats.is_empty() {
        attribute_type::FLOATS
    } else if !a.strings.is_empty() {
        attribute_type::STRINGS
    } else if !a.tensors.is_empty() {
        attribute_type::TENSORS
    } else if !a.graphs.is_empty() {
        attribute_type::GRAPHS
    } else if a.sparse_tensor.is_some() {
        attribute_type::SPARSE_TENSOR
    } else if a.tp.is_some() {
        attribute_type::TYPE_PROTO
    } else {
        // An int list, possibly empty (an empty list of any type reads the same).
        attribute_type::INTS
    }
}

fn value_info(p: &proto::ValueInfoProto) -> ValueInfo {
    let tensor = match p.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(proto::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    let elem_type = ElemType::from_code(tensor.map_or(0, |t| t.elem_type));
    let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| {
                use proto::tensor_shape_proto::dimension::Value as D;
                match &d.value {
                    Some(D::DimValue(v)) if *v >= 0 => Dim::Known(*v as usize),
                    Some(D::DimParam(s)) if !s.is_empty() => Dim::Symbolic(s.clone()),
                    _ => Dim::Unknown,
                }
            })
            .collect()
    });
    ValueInfo {
        name: p.name.clone(),
        elem_type,
        dims,
    }
}

/// The dense value of a sparse initializer (indices either linear `[nnz]` or `[nnz, rank]`).
fn densify(s: &proto::SparseTensorProto) -> Result<Value> {
    let name = s.values.as_ref().map_or("<unnamed>", |v| v.name.as_str());
    let bad = |reason: String| Error::parse("ONNX sparse initializer", name, reason);
    let values = decode_tensor(s.values.as_ref().ok_or_else(|| bad("no values".into()))?)?;
    let indices = decode_tensor(s.indices.as_ref().ok_or_else(|| bad("no indices".into()))?)?;
    let indices = indices.as_ints().map_err(|e| bad(e.to_string()))?;
    let dims = s
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dims {:?}", s.dims))))
        .collect::<Result<Vec<usize>>>()?;
    let shape = Shape::new(dims.clone());
    let n = shape.numel()?;
    let nnz = values.numel();
    let linear: Vec<usize> = if indices.len() == nnz {
        indices
            .iter()
            .map(|&i| usize::try_from(i).unwrap_or(usize::MAX))
            .collect()
    } else if indices.len() == nnz * dims.len() {
        indices
            .chunks(dims.len().max(1))
            .map(|c| {
                c.iter().zip(&dims).fold(0usize, |acc, (&i, &d)| {
                    acc.saturating_mul(d)
                        .saturating_add(usize::try_from(i).unwrap_or(usize::MAX))
                })
            })
            .collect()
    } else {
        return Err(bad(format!(
            "{} indices for {nnz} values of rank {}",
            indices.len(),
            dims.len()
        )));
    };
    if let Some(&i) = linear.iter().find(|&&i| i >= n) {
        return Err(bad(format!("index {i} is outside shape {shape}")));
    }
    Ok(match values {
        Value::Float(t) => {
            let src = t.to_f32_vec();
            let mut dense = vec![0.0f32; n];
            for (&i, &v) in linear.iter().zip(&src) {
                dense[i] = v;
            }
            Value::Float(crate::tensor::Tensor::from_f32(shape, t.dtype(), &dense)?)
        }
        Value::Int64 { data, .. } => {
            let mut dense = vec![0i64; n];
            for (&i, &v) in linear.iter().zip(&data) {
                dense[i] = v;
            }
            Value::Int64 { shape, data: dense }
        }
        Value::Bool { data, .. } => {
            let mut dense = vec![false; n];
            for (&i, &v) in linear.iter().zip(&data) {
                dense[i] = v;
            }
            Value::Bool { shape, data: dense }
        }
    })
}
