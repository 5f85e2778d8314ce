//! ONNX import: models built here as protos (and one written by the official `onnx` Python
//! package, embedded as bytes), attributes of every type with their defaults, initializers,
//! inputs and outputs, TensorProto round trips, and the typed errors of bad files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use accelmesh::onnx::model::{Attribute, Dim, ElemType, LATEST_OPSET, MIN_OPSET, Model, Node};
use accelmesh::onnx::proto::{
    self, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto, attribute_type, data_type,
};
use accelmesh::onnx::tensor_proto::{
    decode_tensor, encode_tensor, read_tensor_pb, write_tensor_pb,
};
use accelmesh::onnx::value::Value;
use accelmesh::{DType, Error, Shape, Tensor};
use half::{bf16, f16};

/// A model written by `onnx` 1.23 (`helper.make_model`, IR version 14): node `all_attrs`
/// (op `Custom`) with attributes alpha=0.5, count=-3, mode="edge", value=[[1.5,-2],[3.25,4]]
/// (f32), scales=[1,2.5], pads=[0,1,2,3], names=["a","bc"], body=(graph `body`: Identity x->y);
/// an unnamed Relu Y->Z; initializers W (int64 [2,3] = 0..6, raw_data) and H (float16 [3] =
/// [1,-2,0.5] in int32_data); inputs X float ["N",3,?], W, B bool (no shape); output Z float
/// ["N",3,4]; opsets ai.onnx 13 and com.example 2; producer gen.py 1.0.
const PYTHON_MODEL: &[u8] = &[
    0x08, 0x0e, 0x12, 0x06, 0x67, 0x65, 0x6e, 0x2e, 0x70, 0x79, 0x1a, 0x03, 0x31, 0x2e, 0x30, 0x3a,
    0xc2, 0x03, 0x0a, 0x8a, 0x02, 0x0a, 0x01, 0x58, 0x0a, 0x01, 0x57, 0x0a, 0x00, 0x12, 0x01, 0x59,
    0x1a, 0x09, 0x61, 0x6c, 0x6c, 0x5f, 0x61, 0x74, 0x74, 0x72, 0x73, 0x22, 0x06, 0x43, 0x75, 0x73,
    0x74, 0x6f, 0x6d, 0x2a, 0x0f, 0x0a, 0x05, 0x61, 0x6c, 0x70, 0x68, 0x61, 0x15, 0x00, 0x00, 0x00,
    0x3f, 0xa0, 0x01, 0x01, 0x2a, 0x4c, 0x0a, 0x04, 0x62, 0x6f, 0x64, 0x79, 0x32, 0x41, 0x0a, 0x17,
    0x0a, 0x01, 0x78, 0x12, 0x01, 0x79, 0x1a, 0x05, 0x69, 0x6e, 0x6e, 0x65, 0x72, 0x22, 0x08, 0x49,
    0x64, 0x65, 0x6e, 0x74, 0x69, 0x74, 0x79, 0x12, 0x04, 0x62, 0x6f, 0x64, 0x79, 0x5a, 0x0f, 0x0a,
    0x01, 0x78, 0x12, 0x0a, 0x0a, 0x08, 0x08, 0x01, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x02, 0x62, 0x0f,
    0x0a, 0x01, 0x79, 0x12, 0x0a, 0x0a, 0x08, 0x08, 0x01, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x02, 0xa0,
    0x01, 0x05, 0x2a, 0x15, 0x0a, 0x05, 0x63, 0x6f, 0x75, 0x6e, 0x74, 0x18, 0xfd, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0xa0, 0x01, 0x02, 0x2a, 0x0f, 0x0a, 0x04, 0x6d, 0x6f, 0x64,
    0x65, 0x22, 0x04, 0x65, 0x64, 0x67, 0x65, 0xa0, 0x01, 0x03, 0x2a, 0x11, 0x0a, 0x05, 0x6e, 0x61,
    0x6d, 0x65, 0x73, 0x4a, 0x01, 0x61, 0x4a, 0x02, 0x62, 0x63, 0xa0, 0x01, 0x08, 0x2a, 0x11, 0x0a,
    0x04, 0x70, 0x61, 0x64, 0x73, 0x40, 0x00, 0x40, 0x01, 0x40, 0x02, 0x40, 0x03, 0xa0, 0x01, 0x07,
    0x2a, 0x15, 0x0a, 0x06, 0x73, 0x63, 0x61, 0x6c, 0x65, 0x73, 0x3d, 0x00, 0x00, 0x80, 0x3f, 0x3d,
    0x00, 0x00, 0x20, 0x40, 0xa0, 0x01, 0x06, 0x2a, 0x24, 0x0a, 0x05, 0x76, 0x61, 0x6c, 0x75, 0x65,
    0x2a, 0x18, 0x08, 0x02, 0x08, 0x02, 0x10, 0x01, 0x4a, 0x10, 0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00,
    0x00, 0xc0, 0x00, 0x00, 0x50, 0x40, 0x00, 0x00, 0x80, 0x40, 0xa0, 0x01, 0x04, 0x3a, 0x00, 0x0a,
    0x0c, 0x0a, 0x01, 0x59, 0x12, 0x01, 0x5a, 0x22, 0x04, 0x52, 0x65, 0x6c, 0x75, 0x12, 0x04, 0x6d,
    0x61, 0x69, 0x6e, 0x2a, 0x3b, 0x08, 0x02, 0x08, 0x03, 0x10, 0x07, 0x42, 0x01, 0x57, 0x4a, 0x30,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x2a, 0x10, 0x08, 0x03, 0x10, 0x0a, 0x2a, 0x07, 0x80, 0x78, 0x80, 0x80, 0x03, 0x80, 0x70, 0x42,
    0x01, 0x48, 0x5a, 0x16, 0x0a, 0x01, 0x58, 0x12, 0x11, 0x0a, 0x0f, 0x08, 0x01, 0x12, 0x0b, 0x0a,
    0x03, 0x12, 0x01, 0x4e, 0x0a, 0x02, 0x08, 0x03, 0x0a, 0x00, 0x5a, 0x13, 0x0a, 0x01, 0x57, 0x12,
    0x0e, 0x0a, 0x0c, 0x08, 0x07, 0x12, 0x08, 0x0a, 0x02, 0x08, 0x02, 0x0a, 0x02, 0x08, 0x03, 0x5a,
    0x09, 0x0a, 0x01, 0x42, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x09, 0x62, 0x18, 0x0a, 0x01, 0x5a, 0x12,
    0x13, 0x0a, 0x11, 0x08, 0x01, 0x12, 0x0d, 0x0a, 0x03, 0x12, 0x01, 0x4e, 0x0a, 0x02, 0x08, 0x03,
    0x0a, 0x02, 0x08, 0x04, 0x42, 0x04, 0x0a, 0x00, 0x10, 0x0d, 0x42, 0x0f, 0x0a, 0x0b, 0x63, 0x6f,
    0x6d, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x10, 0x02,
];

// ---------------------------------------------------------------- proto builders

fn opset(domain: &str, version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: domain.into(),
        version,
    }
}

fn model_proto(graph: GraphProto, opsets: Vec<OperatorSetIdProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: opsets,
        producer_name: "onnx_model.rs".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

fn model_bytes(graph: GraphProto, opset_version: i64) -> Vec<u8> {
    model_proto(graph, vec![opset("", opset_version)]).encode_to_vec()
}

fn graph(nodes: Vec<NodeProto>) -> GraphProto {
    GraphProto {
        node: nodes,
        name: "g".into(),
        ..Default::default()
    }
}

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn attr(name: &str, ty: i32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ty,
        ..Default::default()
    }
}

fn tensor_info(name: &str, elem: i32, dims: Option<Vec<Dim>>) -> ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension::Value as D};
    let shape = dims.map(|dims| proto::TensorShapeProto {
        dim: dims
            .into_iter()
            .map(|d| Dimension {
                value: match d {
                    Dim::Known(n) => Some(D::DimValue(n as i64)),
                    Dim::Symbolic(s) => Some(D::DimParam(s)),
                    Dim::Unknown => None,
                },
                denotation: String::new(),
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: elem,
                    shape,
                },
            )),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

fn load(bytes: &[u8]) -> Model {
    Model::from_bytes(bytes).expect("model loads")
}

fn only_node(model: &Model) -> &Node {
    assert_eq!(model.graph.nodes.len(), 1);
    &model.graph.nodes[0]
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx_model");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn f32_value(dims: &[usize], data: &[f32]) -> Value {
    Value::Float(Tensor::from_vec(dims, data.to_vec()).unwrap())
}

fn raw_tensor(code: i32, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: code,
        name: "t".into(),
        raw_data: raw,
        ..Default::default()
    }
}

fn typed_tensor(code: i32, dims: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: code,
        name: "t".into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- a model from the onnx package

#[test]
fn loads_a_model_written_by_the_onnx_python_package() {
    let m = load(PYTHON_MODEL);
    assert_eq!(m.ir_version, 14);
    assert_eq!(m.producer, "gen.py 1.0");
    assert_eq!(m.opset(), 13);
    assert_eq!(m.opset_of("ai.onnx"), Some(13));
    assert_eq!(m.opset_of("com.example"), Some(2));
    assert_eq!(m.opsets.len(), 2);
    m.check_opset().unwrap();

    let g = &m.graph;
    assert_eq!(g.name, "main");
    // Initializers decoded (raw int64, typed float16) and dropped from the inputs.
    assert_eq!(g.initializers.len(), 2);
    assert_eq!(
        g.initializers["W"],
        Value::ints([2, 3], vec![0, 1, 2, 3, 4, 5]).unwrap()
    );
    let h = g.initializers["H"].as_tensor().unwrap();
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(h.to_f32_vec(), vec![1.0, -2.0, 0.5]);
    let inputs: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["X", "B"]);
    assert_eq!(g.inputs[0].elem_type, ElemType::Float);
    assert_eq!(
        g.inputs[0].dims,
        Some(vec![Dim::Symbolic("N".into()), Dim::Known(3), Dim::Unknown])
    );
    assert_eq!(g.inputs[1].elem_type, ElemType::Bool);
    assert_eq!(g.inputs[1].dims, None);
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(g.outputs[0].name, "Z");
    assert_eq!(
        g.outputs[0].dims,
        Some(vec![
            Dim::Symbolic("N".into()),
            Dim::Known(3),
            Dim::Known(4)
        ])
    );

    // Every attribute type.
    let n = &g.nodes[0];
    assert_eq!(n.name, "all_attrs");
    assert_eq!(n.op_type, "Custom");
    assert_eq!(n.domain, "");
    assert_eq!(n.inputs, ["X", "W", ""]);
    assert_eq!(n.outputs, ["Y"]);
    assert_eq!(n.attributes.len(), 8);
    assert_eq!(n.attr_float("alpha", 9.0).unwrap(), 0.5);
    assert_eq!(n.attr_int("count", 9).unwrap(), -3);
    assert_eq!(n.attr_string("mode", "constant").unwrap(), "edge");
    assert_eq!(
        n.attr_tensor("value").unwrap(),
        Some(f32_value(&[2, 2], &[1.5, -2.0, 3.25, 4.0]))
    );
    assert_eq!(n.attr_floats("scales").unwrap(), Some(vec![1.0, 2.5]));
    assert_eq!(n.attr_ints("pads").unwrap(), Some(vec![0, 1, 2, 3]));
    assert_eq!(
        n.attr_strings("names").unwrap(),
        Some(vec!["a".to_string(), "bc".to_string()])
    );
    let body = n.attr_graph("body").unwrap().expect("body");
    assert_eq!(body.name, "body");
    assert_eq!(body.nodes[0].op_type, "Identity");
    assert_eq!(body.inputs[0].dims, Some(vec![Dim::Known(2)]));

    // The unnamed node gets a stand-in name.
    let relu = &g.nodes[1];
    assert_eq!(relu.name, "");
    assert_eq!(relu.display_name(), "Relu -> Z");
    assert_eq!(
        g.op_types(),
        vec![
            ("".to_string(), "Custom".to_string()),
            ("".to_string(), "Identity".to_string()),
            ("".to_string(), "Relu".to_string())
        ]
    );
}

// ---------------------------------------------------------------- attributes

fn every_attribute_node() -> NodeProto {
    let mut n = node("n0", "Conv", &["x", "w"], &["y"]);
    let mut a = attr("alpha", attribute_type::FLOAT);
    a.f = Some(0.25);
    n.attribute.push(a);
    let mut a = attr("group", attribute_type::INT);
    a.i = Some(2);
    n.attribute.push(a);
    let mut a = attr("auto_pad", attribute_type::STRING);
    a.s = Some(b"SAME_UPPER".to_vec());
    n.attribute.push(a);
    let mut a = attr("value", attribute_type::TENSOR);
    a.t = Some(encode_tensor("", &Value::ints([3], vec![7, 8, 9]).unwrap()));
    n.attribute.push(a);
    let mut a = attr("scales", attribute_type::FLOATS);
    a.floats = vec![0.5, 2.0];
    n.attribute.push(a);
    let mut a = attr("strides", attribute_type::INTS);
    a.ints = vec![1, 2];
    n.attribute.push(a);
    let mut a = attr("names", attribute_type::STRINGS);
    a.strings = vec![b"x".to_vec(), b"y".to_vec()];
    n.attribute.push(a);
    let mut a = attr("then_branch", attribute_type::GRAPH);
    let mut sub = graph(vec![node("", "Identity", &["c"], &["out"])]);
    sub.name = "then".into();
    sub.initializer
        .push(encode_tensor("c", &f32_value(&[1], &[3.0])));
    sub.output.push(tensor_info(
        "out",
        data_type::FLOAT,
        Some(vec![Dim::Known(1)]),
    ));
    a.g = Some(sub);
    n.attribute.push(a);
    // Zero values are still set (proto2 presence).
    let mut a = attr("zero", attribute_type::INT);
    a.i = Some(0);
    n.attribute.push(a);
    let mut a = attr("empty", attribute_type::INTS);
    a.ints = vec![];
    n.attribute.push(a);
    n
}

#[test]
fn attributes_of_every_type_and_their_defaults() {
    let m = load(&model_bytes(graph(vec![every_attribute_node()]), 17));
    let n = only_node(&m);
    assert_eq!(n.attr_float("alpha", 1.0).unwrap(), 0.25);
    assert_eq!(n.attr_int("group", 1).unwrap(), 2);
    assert_eq!(n.attr_string("auto_pad", "NOTSET").unwrap(), "SAME_UPPER");
    assert_eq!(
        n.attr_tensor("value").unwrap(),
        Some(Value::ints([3], vec![7, 8, 9]).unwrap())
    );
    assert_eq!(n.attr_floats("scales").unwrap(), Some(vec![0.5, 2.0]));
    assert_eq!(n.attr_ints("strides").unwrap(), Some(vec![1, 2]));
    assert_eq!(
        n.attr_strings("names").unwrap(),
        Some(vec!["x".to_string(), "y".to_string()])
    );
    let sub = n.attr_graph("then_branch").unwrap().unwrap();
    assert_eq!(sub.name, "then");
    assert_eq!(sub.initializers["c"], f32_value(&[1], &[3.0]));
    assert_eq!(sub.nodes[0].display_name(), "Identity -> out");
    assert_eq!(n.attr_int("zero", 5).unwrap(), 0);
    assert_eq!(n.attr_ints("empty").unwrap(), Some(vec![]));
    assert!(n.has_attr("alpha"));
    assert!(!n.has_attr("beta"));
    assert!(matches!(n.attributes["strides"], Attribute::Ints(_)));
    assert_eq!(n.attributes["then_branch"].type_name(), "GRAPH");

    // Defaults when absent.
    assert_eq!(n.attr_int("axis", -1).unwrap(), -1);
    assert_eq!(n.attr_float("epsilon", 1e-5).unwrap(), 1e-5);
    assert_eq!(n.attr_string("mode", "constant").unwrap(), "constant");
    assert_eq!(n.attr_ints("pads").unwrap(), None);
    assert_eq!(n.attr_floats("alphas").unwrap(), None);
    assert_eq!(n.attr_strings("activations").unwrap(), None);
    assert_eq!(n.attr_tensor("sparse_value").unwrap(), None);
    assert!(n.attr_graph("else_branch").unwrap().is_none());

    // An int reads as a float; nothing else converts.
    assert_eq!(n.attr_float("group", 0.0).unwrap(), 2.0);

    // Type errors name the node, the op and the attribute.
    for err in [
        n.attr_int("alpha", 0).unwrap_err(),
        n.attr_ints("alpha").map(|_| ()).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, Error::DType { .. }), "{err:?}");
        for part in ["n0", "Conv", "alpha", "FLOAT"] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
    }
    let err = n.attr_string("strides", "").unwrap_err().to_string();
    assert!(
        err.contains("strides") && err.contains("expected STRING, found INTS"),
        "{err}"
    );
    let err = n.attr_tensor("group").unwrap_err().to_string();
    assert!(err.contains("group") && err.contains("TENSOR"), "{err}");
    assert!(n.attr_floats("names").is_err());
    assert!(n.attr_graph("value").is_err());
}

#[test]
fn attributes_without_a_type_field_are_inferred() {
    // Files older than AttributeProto.type (IR version 1) only set the value field.
    let mut n = node("old", "Pad", &["x"], &["y"]);
    let mut a = attr("value", 0);
    a.f = Some(0.0);
    n.attribute.push(a);
    let mut a = attr("axis", 0);
    a.i = Some(1);
    n.attribute.push(a);
    let mut a = attr("mode", 0);
    a.s = Some(b"reflect".to_vec());
    n.attribute.push(a);
    let mut a = attr("pads", 0);
    a.ints = vec![1, 1];
    n.attribute.push(a);
    let mut a = attr("scales", 0);
    a.floats = vec![1.5];
    n.attribute.push(a);
    let mut a = attr("names", 0);
    a.strings = vec![b"s".to_vec()];
    n.attribute.push(a);
    let mut a = attr("t", 0);
    a.t = Some(encode_tensor("", &Value::scalar_f32(2.0)));
    n.attribute.push(a);
    n.attribute.push(attr("nothing", 0));
    let mut g = graph(vec![n]);
    g.name = String::new();
    let bytes = ModelProto {
        ir_version: 1,
        graph: Some(g),
        ..Default::default()
    }
    .encode_to_vec();
    let m = load(&bytes);
    assert_eq!(m.opset(), 1, "no opset import reads as opset 1");
    assert!(m.check_opset().is_err());
    let n = only_node(&m);
    assert_eq!(n.attributes["value"], Attribute::Float(0.0));
    assert_eq!(n.attributes["axis"], Attribute::Int(1));
    assert_eq!(n.attr_string("mode", "").unwrap(), "reflect");
    assert_eq!(n.attr_ints("pads").unwrap(), Some(vec![1, 1]));
    assert_eq!(n.attr_floats("scales").unwrap(), Some(vec![1.5]));
    assert_eq!(
        n.attr_strings("names").unwrap(),
        Some(vec!["s".to_string()])
    );
    assert_eq!(n.attr_tensor("t").unwrap(), Some(Value::scalar_f32(2.0)));
    // An empty list reads as a list of any type.
    assert_eq!(n.attr_ints("nothing").unwrap(), Some(vec![]));
    assert_eq!(n.attr_floats("nothing").unwrap(), Some(vec![]));
}

#[test]
fn unsupported_attribute_types_name_the_node_op_and_opset_at_load_time() {
    let cases: Vec<(AttributeProto, &str)> = vec![
        (
            {
                let mut a = attr("sparse_value", attribute_type::SPARSE_TENSOR);
                a.sparse_tensor = Some(Default::default());
                a
            },
            "SPARSE_TENSOR",
        ),
        (
            {
                let mut a = attr("tensors", attribute_type::TENSORS);
                a.tensors = vec![encode_tensor("", &Value::scalar_int(1))];
                a
            },
            "TENSORS",
        ),
        (
            {
                let mut a = attr("branches", attribute_type::GRAPHS);
                a.graphs = vec![graph(vec![])];
                a
            },
            "GRAPHS",
        ),
        (attr("tp", attribute_type::TYPE_PROTO), "TYPE_PROTO"),
        (
            {
                let mut a = attr("alpha", attribute_type::FLOAT);
                a.ref_attr_name = "outer_alpha".into();
                a
            },
            "outer_alpha",
        ),
        (attr("weird", 99), "type 99"),
    ];
    for (a, what) in cases {
        let mut n = node("bad_node", "Gemm", &["a", "b"], &["c"]);
        n.attribute.push(a);
        let err = Model::from_bytes(&model_bytes(graph(vec![n]), 11)).unwrap_err();
        match &err {
            Error::Unsupported {
                node,
                op,
                opset,
                detail,
            } => {
                assert_eq!(node, "bad_node");
                assert_eq!(op, "Gemm");
                assert_eq!(*opset, 11);
                assert!(detail.contains(what), "{detail} lacks {what}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("node `bad_node`: operator Gemm (opset 11) is not supported"),
            "{msg}"
        );
    }

    // A tensor attribute of an element type accelmesh does not hold, on an unnamed node of a
    // custom domain: the opset is that domain's.
    let mut n = node("", "Constant", &[], &["s"]);
    n.domain = "com.example".into();
    let mut a = attr("value", attribute_type::TENSOR);
    let mut t = typed_tensor(data_type::STRING, &[1]);
    t.string_data = vec![b"hello".to_vec()];
    a.t = Some(t);
    n.attribute.push(a);
    let bytes =
        model_proto(graph(vec![n]), vec![opset("", 18), opset("com.example", 3)]).encode_to_vec();
    match Model::from_bytes(&bytes).unwrap_err() {
        Error::Unsupported {
            node,
            op,
            opset,
            detail,
        } => {
            assert_eq!(node, "Constant -> s");
            assert_eq!(op, "Constant");
            assert_eq!(opset, 3);
            assert!(
                detail.contains("value") && detail.contains("string"),
                "{detail}"
            );
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }

    // An initializer of an element type accelmesh does not hold: unsupported by its reader.
    let mut g = graph(vec![node("lookup", "Gather", &["labels", "idx"], &["y"])]);
    let mut t = typed_tensor(data_type::STRING, &[1]);
    t.name = "labels".into();
    t.string_data = vec![b"cat".to_vec()];
    g.initializer.push(t.clone());
    let err = Model::from_bytes(&model_bytes(g, 13)).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { node, op, opset: 13, detail } if node == "lookup" && op == "Gather" && detail.contains("`labels`") && detail.contains("string")),
        "{err:?}"
    );
    // ... and a dtype error naming it when nothing reads it.
    let mut g = graph(vec![]);
    g.initializer.push(t);
    let err = Model::from_bytes(&model_bytes(g, 13)).unwrap_err();
    assert!(matches!(&err, Error::DType { .. }), "{err:?}");
    assert!(err.to_string().contains("`labels`"), "{err}");

    // An unsupported attribute inside a subgraph names the inner node.
    let mut inner = node("inner", "Shrink", &["x"], &["y"]);
    inner
        .attribute
        .push(attr("tp", attribute_type::TYPE_PROTOS));
    let mut outer = node("if0", "If", &["cond"], &["y"]);
    let mut a = attr("then_branch", attribute_type::GRAPH);
    a.g = Some(graph(vec![inner]));
    outer.attribute.push(a);
    let err = Model::from_bytes(&model_bytes(graph(vec![outer]), 16)).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { node, op, opset: 16, .. } if node == "inner" && op == "Shrink"),
        "{err:?}"
    );
}

#[test]
fn model_local_functions_are_unsupported_at_load_time() {
    let mut p = model_proto(
        graph(vec![{
            let mut n = node("call", "MyFn", &["x"], &["y"]);
            n.domain = "local".into();
            n
        }]),
        vec![opset("", 15), opset("local", 1)],
    );
    p.functions.push(proto::FunctionProto {
        name: "MyFn".into(),
        domain: "local".into(),
        ..Default::default()
    });
    let err = Model::from_bytes(&p.encode_to_vec()).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { node, op, opset: 1, detail } if node == "call" && op == "MyFn" && detail.contains("function")),
        "{err:?}"
    );
}

#[test]
fn duplicate_attributes_and_missing_values_are_parse_errors() {
    let mut n = node("dup", "Relu", &["x"], &["y"]);
    let mut a = attr("alpha", attribute_type::FLOAT);
    a.f = Some(1.0);
    n.attribute.push(a.clone());
    n.attribute.push(a);
    let err = Model::from_bytes(&model_bytes(graph(vec![n]), 13)).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("alpha") && err.to_string().contains("dup"));

    let mut n = node("c", "Constant", &[], &["y"]);
    n.attribute.push(attr("value", attribute_type::TENSOR));
    let err = Model::from_bytes(&model_bytes(graph(vec![n]), 13)).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("no value"), "{err}");
}

// ---------------------------------------------------------------- graph, inputs, opsets

#[test]
fn initializers_are_removed_from_graph_inputs() {
    let mut g = graph(vec![node("mm", "MatMul", &["x", "w"], &["y"])]);
    g.initializer.push(encode_tensor(
        "w",
        &f32_value(&[2, 2], &[1.0, 2.0, 3.0, 4.0]),
    ));
    g.initializer.push(encode_tensor(
        "unused_b",
        &Value::bools([2], vec![true, false]).unwrap(),
    ));
    // Old exporters list the weights among the inputs too.
    g.input.push(tensor_info(
        "x",
        data_type::FLOAT,
        Some(vec![Dim::Symbolic("batch".into()), Dim::Known(2)]),
    ));
    g.input.push(tensor_info(
        "w",
        data_type::FLOAT,
        Some(vec![Dim::Known(2), Dim::Known(2)]),
    ));
    g.input
        .push(tensor_info("scalar", data_type::INT32, Some(vec![])));
    g.output.push(tensor_info("y", data_type::FLOAT16, None));
    g.output.push(ValueInfoProto {
        name: "untyped".into(),
        ..Default::default()
    });
    let m = load(&model_bytes(g, 9));
    let g = &m.graph;
    assert_eq!(g.initializers.len(), 2);
    assert_eq!(g.initializers["unused_b"].elem_type_name(), "bool");
    assert_eq!(g.inputs.len(), 2);
    assert_eq!(g.inputs[0].name, "x");
    assert_eq!(g.inputs[0].known_shape(), None);
    assert_eq!(g.inputs[1].name, "scalar");
    assert_eq!(g.inputs[1].elem_type, ElemType::Int32);
    assert_eq!(g.inputs[1].dims, Some(vec![]));
    assert_eq!(g.inputs[1].known_shape(), Some(Shape::new([])));
    assert_eq!(g.outputs[0].elem_type, ElemType::Float16);
    assert_eq!(g.outputs[0].dims, None);
    assert_eq!(g.outputs[1].elem_type, ElemType::Other(0));
    assert_eq!(g.nodes[0].input(1), Some("w"));
    assert_eq!(g.nodes[0].input(2), None);
}

#[test]
fn opsets_domains_and_producer() {
    let mut n = node("n", "Gelu", &["x"], &["y"]);
    n.domain = "ai.onnx".into();
    let mut p = model_proto(
        graph(vec![n]),
        vec![opset("ai.onnx", MIN_OPSET), opset("com.microsoft", 1)],
    );
    p.producer_name = "pytorch".into();
    p.producer_version = "2.1".into();
    let m = load(&p.encode_to_vec());
    assert_eq!(m.opset(), MIN_OPSET);
    assert_eq!(m.opsets[""], MIN_OPSET);
    assert_eq!(m.opsets["com.microsoft"], 1);
    assert_eq!(m.opset_of("com.unknown"), None);
    assert_eq!(m.graph.nodes[0].domain, "", "ai.onnx is the default domain");
    assert_eq!(m.producer, "pytorch 2.1");
    m.check_opset().unwrap();

    let too_old = load(&model_bytes(graph(vec![]), MIN_OPSET - 1));
    let err = too_old.check_opset().unwrap_err().to_string();
    assert!(err.contains(&format!("ai.onnx {}", MIN_OPSET - 1)), "{err}");
    let too_new = load(&model_bytes(graph(vec![]), LATEST_OPSET + 1));
    assert!(too_new.check_opset().is_err());
}

#[test]
fn sparse_initializers_are_densified() {
    let mut g = graph(vec![]);
    let mut values = encode_tensor("sp", &f32_value(&[2], &[5.0, 6.0]));
    values.name = "sp".into();
    g.sparse_initializer.push(proto::SparseTensorProto {
        values: Some(values),
        indices: Some(encode_tensor(
            "",
            &Value::ints([2, 2], vec![0, 1, 1, 2]).unwrap(),
        )),
        dims: vec![2, 3],
    });
    g.sparse_initializer.push(proto::SparseTensorProto {
        values: Some(encode_tensor("lin", &Value::ints([1], vec![9]).unwrap())),
        indices: Some(encode_tensor("", &Value::ints([1], vec![3]).unwrap())),
        dims: vec![4],
    });
    let m = load(&model_bytes(g, 13));
    assert_eq!(
        m.graph.initializers["sp"],
        f32_value(&[2, 3], &[0.0, 5.0, 0.0, 0.0, 0.0, 6.0])
    );
    assert_eq!(
        m.graph.initializers["lin"],
        Value::ints([4], vec![0, 0, 0, 9]).unwrap()
    );
}

#[test]
fn graph_errors() {
    // Duplicate initializer.
    let mut g = graph(vec![]);
    g.initializer
        .push(encode_tensor("w", &Value::scalar_int(1)));
    g.initializer
        .push(encode_tensor("w", &Value::scalar_int(2)));
    let err = Model::from_bytes(&model_bytes(g, 13)).unwrap_err();
    assert!(err.to_string().contains("`w` is defined twice"), "{err}");

    // No graph, no IR version.
    let mut p = model_proto(graph(vec![]), vec![opset("", 13)]);
    p.graph = None;
    let err = Model::from_bytes(&p.encode_to_vec()).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }) && err.to_string().contains("no graph"));
    let err = Model::from_bytes(&[]).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("ir_version"), "{err}");

    // An initializer whose data does not match its dims, in a file: the error names the file.
    let mut g = graph(vec![]);
    let mut t = encode_tensor("w", &f32_value(&[2], &[1.0, 2.0]));
    t.dims = vec![3];
    g.initializer.push(t);
    let path = tmp("bad_initializer.onnx");
    std::fs::write(&path, model_bytes(g, 13)).unwrap();
    match Model::load(&path).unwrap_err() {
        Error::Parse { value, reason, .. } => {
            assert_eq!(value, path.display().to_string());
            assert!(
                reason.contains("`w`") && reason.contains("raw_data"),
                "{reason}"
            );
        }
        other => panic!("expected Parse, got {other:?}"),
    }
}

// ---------------------------------------------------------------- malformed files

#[test]
fn malformed_and_missing_model_files_are_parse_errors_naming_the_path() {
    let path = tmp("garbage.onnx");
    std::fs::write(&path, b"\xff\xff\xff\xff this is not a protobuf").unwrap();
    let err = Model::load(&path).unwrap_err();
    match &err {
        Error::Parse {
            what,
            value,
            reason,
        } => {
            assert_eq!(*what, "ONNX model file");
            assert_eq!(*value, path.display().to_string());
            assert!(reason.contains("ModelProto"), "{reason}");
        }
        other => panic!("expected Parse, got {other:?}"),
    }
    assert!(err.to_string().contains("garbage.onnx"));

    // Truncated: a valid model cut in the middle.
    let truncated = &PYTHON_MODEL[..PYTHON_MODEL.len() / 2];
    let path = tmp("truncated.onnx");
    std::fs::write(&path, truncated).unwrap();
    let err = Model::load(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, .. } if *value == path.display().to_string()),
        "{err:?}"
    );

    let missing = tmp("does_not_exist.onnx");
    let err = Model::load(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, reason, .. } if *value == missing.display().to_string() && reason.contains("cannot read")),
        "{err:?}"
    );

    let empty = tmp("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let err = Model::load(&empty).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, .. } if *value == empty.display().to_string()),
        "{err:?}"
    );
}

#[test]
fn malformed_tensor_files_are_parse_errors_naming_the_path() {
    let path = tmp("garbage.pb");
    std::fs::write(&path, b"\x0a\xff\xff\xff").unwrap();
    let err = read_tensor_pb(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, reason, .. } if *value == path.display().to_string() && reason.contains("TensorProto")),
        "{err:?}"
    );
    let missing = tmp("missing.pb");
    let err = read_tensor_pb(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, .. } if *value == missing.display().to_string()),
        "{err:?}"
    );
    // Decodes as a proto but the data does not fit the dims.
    let path = tmp("short.pb");
    let mut t = encode_tensor("x", &f32_value(&[3], &[1.0, 2.0, 3.0]));
    t.raw_data.pop();
    std::fs::write(&path, t.encode_to_vec()).unwrap();
    let err = read_tensor_pb(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, reason, .. } if *value == path.display().to_string() && reason.contains("11 bytes")),
        "{err:?}"
    );
    // Writing into a missing directory is an i/o error naming the path.
    let bad = tmp("no_such_dir").join("x.pb");
    let err = write_tensor_pb(&bad, "x", &Value::scalar_int(1)).unwrap_err();
    assert!(err.to_string().contains("no_such_dir"), "{err}");
}

// ---------------------------------------------------------------- TensorProto

fn round_trip(v: &Value, file: &str) {
    let t = encode_tensor("x", v);
    assert_eq!(t.name, "x");
    assert!(!t.raw_data.is_empty() || v.numel() == 0);
    assert_eq!(&decode_tensor(&t).unwrap(), v);
    let bytes = t.encode_to_vec();
    assert_eq!(
        &decode_tensor(&TensorProto::decode(bytes.as_slice()).unwrap()).unwrap(),
        v
    );
    let path = tmp(file);
    write_tensor_pb(&path, "input_0", v).unwrap();
    let (name, back) = read_tensor_pb(&path).unwrap();
    assert_eq!(name, "input_0");
    assert_eq!(&back, v);
}

#[test]
fn tensor_round_trips_through_raw_data() {
    let f = [1.0f32, -2.5, 0.0, 3.75, 1e-3, -7.0];
    round_trip(&f32_value(&[2, 3], &f), "f32.pb");
    round_trip(
        &Value::Float(Tensor::from_f32([3, 2], DType::F16, &f).unwrap()),
        "f16.pb",
    );
    round_trip(
        &Value::Float(Tensor::from_f32([6], DType::BF16, &f).unwrap()),
        "bf16.pb",
    );
    round_trip(
        &Value::ints([2, 2], vec![i64::MIN, -1, 0, i64::MAX]).unwrap(),
        "i64.pb",
    );
    round_trip(
        &Value::bools([1, 3], vec![true, false, true]).unwrap(),
        "bool.pb",
    );
    // Rank 0 and empty tensors.
    round_trip(&Value::scalar_f32(4.5), "scalar.pb");
    round_trip(&Value::scalar_int(-9), "scalar_int.pb");
    round_trip(&f32_value(&[2, 0, 3], &[]), "empty.pb");
    round_trip(&Value::ints([0], vec![]).unwrap(), "empty_int.pb");

    // The exact bytes: little endian, ONNX type codes.
    let t = encode_tensor(
        "h",
        &Value::Float(Tensor::from_vec([1], vec![f16::ONE]).unwrap()),
    );
    assert_eq!(t.data_type, data_type::FLOAT16);
    assert_eq!(t.raw_data, vec![0x00, 0x3c]);
    let t = encode_tensor("i", &Value::ints([1], vec![258]).unwrap());
    assert_eq!(t.data_type, data_type::INT64);
    assert_eq!(t.raw_data, vec![2, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(t.dims, vec![1]);
    let t = encode_tensor("b", &Value::bools([2], vec![false, true]).unwrap());
    assert_eq!((t.data_type, t.raw_data), (data_type::BOOL, vec![0, 1]));
    let t = encode_tensor(
        "bf",
        &Value::Float(Tensor::from_vec([1], vec![bf16::ONE]).unwrap()),
    );
    assert_eq!(
        (t.data_type, t.raw_data),
        (data_type::BFLOAT16, vec![0x80, 0x3f])
    );
}

#[test]
fn tensors_decode_from_typed_fields() {
    // float_data
    let mut t = typed_tensor(data_type::FLOAT, &[2, 2]);
    t.float_data = vec![1.0, 2.0, 3.0, 4.0];
    assert_eq!(
        decode_tensor(&t).unwrap(),
        f32_value(&[2, 2], &[1.0, 2.0, 3.0, 4.0])
    );
    // f16 and bf16 bit patterns in int32_data
    let mut t = typed_tensor(data_type::FLOAT16, &[2]);
    t.int32_data = vec![
        f16::from_f32(1.5).to_bits() as i32,
        f16::from_f32(-0.25).to_bits() as i32,
    ];
    let v = decode_tensor(&t).unwrap();
    assert_eq!(v.as_tensor().unwrap().dtype(), DType::F16);
    assert_eq!(v.as_tensor().unwrap().to_f32_vec(), vec![1.5, -0.25]);
    let mut t = typed_tensor(data_type::BFLOAT16, &[2]);
    t.int32_data = vec![
        bf16::from_f32(2.0).to_bits() as i32,
        bf16::from_f32(-3.0).to_bits() as i32,
    ];
    let v = decode_tensor(&t).unwrap();
    assert_eq!(v.as_tensor().unwrap().dtype(), DType::BF16);
    assert_eq!(v.as_tensor().unwrap().to_f32_vec(), vec![2.0, -3.0]);
    // int64_data
    let mut t = typed_tensor(data_type::INT64, &[3]);
    t.int64_data = vec![-5, 0, 1 << 40];
    assert_eq!(
        decode_tensor(&t).unwrap(),
        Value::ints([3], vec![-5, 0, 1 << 40]).unwrap()
    );
    // bool and small integers in int32_data
    let mut t = typed_tensor(data_type::BOOL, &[3]);
    t.int32_data = vec![1, 0, 1];
    assert_eq!(
        decode_tensor(&t).unwrap(),
        Value::bools([3], vec![true, false, true]).unwrap()
    );
    for code in [
        data_type::INT32,
        data_type::INT16,
        data_type::INT8,
        data_type::UINT16,
        data_type::UINT8,
    ] {
        let mut t = typed_tensor(code, &[2]);
        t.int32_data = vec![3, 100];
        assert_eq!(
            decode_tensor(&t).unwrap(),
            Value::ints([2], vec![3, 100]).unwrap()
        );
    }
    // double_data narrows to f32
    let mut t = typed_tensor(data_type::DOUBLE, &[2]);
    t.double_data = vec![0.5, -1e10];
    let v = decode_tensor(&t).unwrap();
    assert_eq!(v, f32_value(&[2], &[0.5, -1e10]));
    assert_eq!(v.elem_type_name(), "float");
    // uint64_data
    for code in [data_type::UINT32, data_type::UINT64] {
        let mut t = typed_tensor(code, &[2]);
        t.uint64_data = vec![7, 4_000_000_000];
        assert_eq!(
            decode_tensor(&t).unwrap(),
            Value::ints([2], vec![7, 4_000_000_000]).unwrap()
        );
    }
    // A scalar with one typed value.
    let mut t = typed_tensor(data_type::INT64, &[]);
    t.int64_data = vec![42];
    assert_eq!(decode_tensor(&t).unwrap(), Value::scalar_int(42));
}

#[test]
fn tensors_decode_from_raw_data_of_every_integer_width() {
    let le = |v: &[i64], w: usize| -> Vec<u8> {
        v.iter()
            .flat_map(|x| x.to_le_bytes()[..w].to_vec())
            .collect()
    };
    let cases: [(i32, usize, Vec<i64>); 7] = [
        (data_type::INT32, 4, vec![-2, 70000]),
        (data_type::INT16, 2, vec![-2, 3000]),
        (data_type::UINT16, 2, vec![2, 65535]),
        (data_type::INT8, 1, vec![-128, 127]),
        (data_type::UINT8, 1, vec![0, 255]),
        (data_type::UINT32, 4, vec![1, 4_000_000_000]),
        (data_type::UINT64, 8, vec![1, i64::MAX]),
    ];
    for (code, width, values) in cases {
        let t = raw_tensor(code, &[2], le(&values, width));
        assert_eq!(
            decode_tensor(&t).unwrap(),
            Value::ints([2], values.clone()).unwrap(),
            "code {code}"
        );
    }
    let t = raw_tensor(
        data_type::DOUBLE,
        &[2],
        [1.25f64, -3.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    );
    assert_eq!(decode_tensor(&t).unwrap(), f32_value(&[2], &[1.25, -3.5]));
    let t = raw_tensor(data_type::BOOL, &[3], vec![0, 2, 1]);
    assert_eq!(
        decode_tensor(&t).unwrap(),
        Value::bools([3], vec![false, true, true]).unwrap()
    );
    // raw_data takes precedence over a typed field.
    let mut t = raw_tensor(data_type::FLOAT, &[1], 2.0f32.to_le_bytes().to_vec());
    t.float_data = vec![9.0];
    assert_eq!(decode_tensor(&t).unwrap(), f32_value(&[1], &[2.0]));
}

#[test]
fn bad_tensors_are_typed_errors() {
    // External data.
    let mut t = typed_tensor(data_type::FLOAT, &[4]);
    t.data_location = proto::data_location::EXTERNAL;
    t.external_data = vec![
        StringStringEntryProto {
            key: "location".into(),
            value: "weights.bin".into(),
        },
        StringStringEntryProto {
            key: "offset".into(),
            value: "0".into(),
        },
    ];
    let err = decode_tensor(&t).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("external") && msg.contains("weights.bin"),
        "{msg}"
    );
    // ... also as an initializer of a model.
    let mut g = graph(vec![]);
    let mut t = t.clone();
    t.name = "big_weight".into();
    g.initializer.push(t);
    let err = Model::from_bytes(&model_bytes(g, 13)).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("big_weight") && err.to_string().contains("external"));

    // Element types accelmesh does not hold: a dtype error naming the tensor and the type.
    for (code, name) in [
        (data_type::STRING, "string"),
        (data_type::COMPLEX64, "complex64"),
        (data_type::FLOAT8E4M3FN, "float8e4m3fn"),
        (data_type::INT4, "int4"),
        (data_type::UNDEFINED, "UNDEFINED"),
    ] {
        let mut t = raw_tensor(code, &[1], vec![0; 8]);
        t.name = "odd".into();
        let err = decode_tensor(&t).unwrap_err();
        assert!(matches!(err, Error::DType { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("odd") && msg.contains(name), "{msg}");
    }

    // Counts that do not match the dims.
    let mut t = typed_tensor(data_type::FLOAT, &[3]);
    t.float_data = vec![1.0, 2.0];
    let msg = decode_tensor(&t).unwrap_err().to_string();
    assert!(
        msg.contains("float_data holds 2 values") && msg.contains("need 3"),
        "{msg}"
    );
    let t = typed_tensor(data_type::INT64, &[2]);
    assert!(decode_tensor(&t).is_err(), "no data at all");
    let t = raw_tensor(data_type::INT64, &[2], vec![0; 15]);
    assert!(matches!(decode_tensor(&t), Err(Error::Parse { .. })));
    // Negative dims, segments, out-of-range uint64.
    let mut t = typed_tensor(data_type::FLOAT, &[-1]);
    t.float_data = vec![1.0];
    assert!(
        decode_tensor(&t)
            .unwrap_err()
            .to_string()
            .contains("negative")
    );
    let mut t = typed_tensor(data_type::FLOAT, &[1]);
    t.float_data = vec![1.0];
    t.segment = Some(proto::tensor_proto::Segment { begin: 0, end: 1 });
    assert!(
        decode_tensor(&t)
            .unwrap_err()
            .to_string()
            .contains("segment")
    );
    let mut t = typed_tensor(data_type::UINT64, &[1]);
    t.uint64_data = vec![u64::MAX];
    assert!(decode_tensor(&t).unwrap_err().to_string().contains("int64"));
}

// ---------------------------------------------------------------- Value

#[test]
fn value_accessors() {
    let f = f32_value(&[2], &[1.0, 2.0]);
    assert_eq!(f.shape(), &Shape::new([2]));
    assert_eq!(f.elem_type_name(), "float");
    assert_eq!(f.as_tensor().unwrap().as_f32().unwrap(), &[1.0, 2.0]);
    assert!(matches!(f.as_ints(), Err(Error::DType { .. })));
    let i = Value::ints([3], vec![1, 2, 3]).unwrap();
    assert_eq!(i.as_ints().unwrap(), &[1, 2, 3]);
    assert_eq!(i.elem_type_name(), "int64");
    let err = i.as_tensor().unwrap_err().to_string();
    assert!(err.contains("int64") && err.contains("[3]"), "{err}");
    assert!(i.clone().into_tensor().is_err());
    assert!(matches!(
        Value::ints([2], vec![1]),
        Err(Error::Shape { .. })
    ));
    assert!(Value::bools([2], vec![true]).is_err());
    let b = Value::bools([], vec![true]).unwrap();
    assert_eq!(b.as_bools().unwrap(), &[true]);
    assert_eq!(b.shape().rank(), 0);
    let t = Tensor::from_f32([2], DType::BF16, &[1.0, 2.0]).unwrap();
    let v = Value::from_tensor(t.clone());
    assert_eq!(v.elem_type_name(), "bfloat16");
    assert_eq!(v.into_tensor().unwrap(), t);
    assert_eq!(
        Value::from(Tensor::from_f32([1], DType::F16, &[1.0]).unwrap()).elem_type_name(),
        "float16"
    );
}

#[test]
fn elem_type_codes() {
    for code in 0..=30 {
        assert_eq!(ElemType::from_code(code).code(), code);
    }
    assert_eq!(ElemType::from_code(1), ElemType::Float);
    assert_eq!(ElemType::from_code(16), ElemType::BFloat16);
    assert_eq!(ElemType::from_code(12), ElemType::Other(12));
    assert_eq!(ElemType::Other(12).name(), "uint32");
    assert_eq!(ElemType::Double.to_string(), "double");
    assert!(ElemType::Float16.is_float() && !ElemType::Int8.is_float());
}

// ---------------------------------------------------------------- the ONNX backend test data

/// Loads every model of the ONNX backend test data, and every `.pb` of their first data set,
/// when `ACCELMESH_ONNX_TEST_DATA` names `onnx/backend/test/data` (of a pip-installed `onnx`);
/// prints what loaded and passes without it.
#[test]
fn onnx_backend_test_data_models_load() {
    let Some(root) = std::env::var_os("ACCELMESH_ONNX_TEST_DATA") else {
        eprintln!("ACCELMESH_ONNX_TEST_DATA not set: skipping the ONNX test-data models");
        return;
    };
    let root = PathBuf::from(root);
    let mut models = Vec::new();
    for dir in ["pytorch-converted", "pytorch-operator", "simple", "node"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                models.push(e.path().join("model.onnx"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("light")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "onnx") {
                models.push(e.path());
            }
        }
    }
    models.sort();
    let mut by_kind: HashMap<String, (usize, usize)> = HashMap::new();
    let mut failures = Vec::new();
    let (mut pbs, mut pbs_ok) = (0, 0);
    let mut pb_failures = Vec::new();
    for path in &models {
        let kind = path
            .strip_prefix(&root)
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let entry = by_kind.entry(kind).or_default();
        entry.0 += 1;
        match Model::load(path) {
            Ok(_) => entry.1 += 1,
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
        let data = path.parent().unwrap().join("test_data_set_0");
        if let Ok(entries) = std::fs::read_dir(&data) {
            for e in entries.flatten() {
                pbs += 1;
                match read_tensor_pb(&e.path()) {
                    Ok(_) => pbs_ok += 1,
                    Err(err) => pb_failures.push(err.to_string()),
                }
            }
        }
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    for (kind, (n, ok)) in &kinds {
        eprintln!("{kind}: {ok} of {n} models loaded");
    }
    eprintln!("test_data_set_0 tensors: {pbs_ok} of {pbs} read");
    for f in failures.iter().take(40) {
        eprintln!("  model: {f}");
    }
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for f in &pb_failures {
        let key = f.split(": ").last().unwrap_or(f).chars().take(90).collect();
        *reasons.entry(key).or_default() += 1;
    }
    for (r, n) in reasons {
        eprintln!("  tensor ×{n}: {r}");
    }
}
