//! The ONNX executor on small graphs built directly from the IR structs (no protobuf):
//! results against float64 references computed here on seeded random inputs, the opset
//! differences of attributes that became inputs, constant folding at load, and the typed
//! errors for unsupported operators and bad inputs.

use std::collections::HashMap;

use accelmesh::onnx::exec::{Session, supported};
use accelmesh::onnx::model::{Attribute, Dim, ElemType, Graph, Model, Node, ValueInfo};
use accelmesh::onnx::value::Value;
use accelmesh::{CpuDevice, DType, Error, Tensor};

// ---------------------------------------------------------------------------------------------
// Graph building.
// ---------------------------------------------------------------------------------------------

fn ints(v: &[i64]) -> Attribute {
    Attribute::Ints(v.to_vec())
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attribute)>) -> Node {
    Node {
        name: format!("{op}_{}", outputs.first().copied().unwrap_or("")),
        op_type: op.to_string(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

fn info(name: &str, v: &Value) -> ValueInfo {
    let elem_type = match v {
        Value::Float(_) => ElemType::Float,
        Value::Int64 { .. } => ElemType::Int64,
        Value::Bool { .. } => ElemType::Bool,
    };
    ValueInfo {
        name: name.to_string(),
        elem_type,
        dims: Some(v.dims().iter().map(|&d| Dim::Known(d)).collect()),
    }
}

fn model(
    opset: i64,
    nodes: Vec<Node>,
    inits: Vec<(&str, Value)>,
    inputs: Vec<ValueInfo>,
    outputs: &[&str],
) -> Model {
    Model {
        ir_version: 8,
        producer: "onnx_exec test".to_string(),
        opsets: HashMap::from([(String::new(), opset)]),
        graph: Graph {
            name: "test".to_string(),
            nodes,
            initializers: inits.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
            inputs,
            outputs: outputs
                .iter()
                .map(|o| ValueInfo {
                    name: o.to_string(),
                    elem_type: ElemType::Float,
                    dims: None,
                })
                .collect(),
        },
    }
}

fn dev() -> CpuDevice {
    CpuDevice::with_threads(2).expect("a CPU node")
}

fn rand(dims: &[usize], seed: u64) -> Tensor {
    Tensor::random(dims.to_vec(), DType::F32, seed).expect("random tensor")
}

fn fv(dims: &[usize], data: Vec<f32>) -> Value {
    Value::Float(Tensor::from_vec(dims.to_vec(), data).expect("tensor"))
}

fn iv(dims: &[usize], data: &[i64]) -> Value {
    Value::ints(dims.to_vec(), data.to_vec()).expect("ints")
}

fn f64s(v: &Value) -> Vec<f64> {
    match v {
        Value::Float(t) => t.to_f64_vec(),
        Value::Int64 { data, .. } => data.iter().map(|&x| x as f64).collect(),
        Value::Bool { data, .. } => data.iter().map(|&b| f64::from(u8::from(b))).collect(),
    }
}

/// Runs a one-output model whose graph inputs are `inputs` (dims declared from the values).
fn run_model(
    opset: i64,
    nodes: Vec<Node>,
    inits: Vec<(&str, Value)>,
    inputs: Vec<(&str, Value)>,
    output: &str,
) -> accelmesh::Result<Value> {
    let infos = inputs.iter().map(|(n, v)| info(n, v)).collect();
    let session = Session::new(model(opset, nodes, inits, infos, &[output]))?;
    let feed: HashMap<String, Value> = inputs
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let mut out = session.run(&dev(), &feed)?;
    Ok(out.remove(output).expect("the output"))
}

/// Runs one node with graph inputs `x0, x1, …` and output `y`.
fn run_one(opset: i64, n: Node, inputs: Vec<Value>) -> accelmesh::Result<Value> {
    let names: Vec<String> = (0..inputs.len()).map(|i| format!("x{i}")).collect();
    let ins = names.iter().map(String::as_str).zip(inputs).collect();
    run_model(opset, vec![n], vec![], ins, "y")
}

#[track_caller]
fn assert_close(got: &Value, dims: &[usize], want: &[f64], tol: f64) {
    assert_eq!(got.dims(), dims, "shape");
    let g = f64s(got);
    assert_eq!(g.len(), want.len());
    for (i, (&a, &b)) in g.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: got {a}, expected {b}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// float64 references.
// ---------------------------------------------------------------------------------------------

/// NCHW convolution; `pads` = [top, left, bottom, right].
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    b: Option<&[f64]>,
    stride: [usize; 2],
    pads: [usize; 4],
    dil: [usize; 2],
    group: usize,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wi] = xd;
    let [o, cg, kh, kw] = wd;
    let oh = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) / stride[0] + 1;
    let ow = (wi + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) / stride[1] + 1;
    let og = o / group;
    assert_eq!(cg * group, c);
    let mut y = vec![0.0; n * o * oh * ow];
    for ni in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for yh in 0..oh {
                for yw in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[oc]);
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for a in 0..kh {
                            for bb in 0..kw {
                                let ih = (yh * stride[0] + a * dil[0]) as isize - pads[0] as isize;
                                let iw = (yw * stride[1] + bb * dil[1]) as isize - pads[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wi as isize {
                                    continue;
                                }
                                s += x[((ni * c + cin) * h + ih as usize) * wi + iw as usize]
                                    * w[((oc * cg + ci) * kh + a) * kw + bb];
                            }
                        }
                    }
                    y[((ni * o + oc) * oh + yh) * ow + yw] = s;
                }
            }
        }
    }
    (y, [n, o, oh, ow])
}

/// [`conv_ref`] at unit stride and dilation, in one group.
fn plain_conv_ref(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    b: Option<&[f64]>,
    pads: [usize; 4],
) -> (Vec<f64>, [usize; 4]) {
    conv_ref(x, xd, w, wd, b, [1, 1], pads, [1, 1], 1)
}

/// NCHW pooling with ONNX semantics (ceil mode, count_include_pad).
#[allow(clippy::too_many_arguments)]
fn pool_ref(
    x: &[f64],
    xd: [usize; 4],
    k: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    max: bool,
    ceil: bool,
    include_pad: bool,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, w] = xd;
    let out_len = |len: usize, k: usize, s: usize, pb: usize, pe: usize| {
        let span = len + pb + pe - k;
        let mut o = if ceil {
            span.div_ceil(s) + 1
        } else {
            span / s + 1
        };
        if ceil && (o - 1) * s >= len + pb {
            o -= 1;
        }
        o
    };
    let oh = out_len(h, k[0], stride[0], pads[0], pads[2]);
    let ow = out_len(w, k[1], stride[1], pads[1], pads[3]);
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for p in 0..n * c {
        for yh in 0..oh {
            for yw in 0..ow {
                let (mut acc, mut cnt, mut padded) =
                    (if max { f64::NEG_INFINITY } else { 0.0 }, 0, 0);
                for a in 0..k[0] {
                    for b in 0..k[1] {
                        let ih = (yh * stride[0] + a) as isize - pads[0] as isize;
                        let iw = (yw * stride[1] + b) as isize - pads[1] as isize;
                        // The window part inside input + pads.
                        if ih < (h + pads[2]) as isize && iw < (w + pads[3]) as isize {
                            padded += 1;
                        }
                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            continue;
                        }
                        let v = x[(p * h + ih as usize) * w + iw as usize];
                        cnt += 1;
                        if max {
                            acc = acc.max(v);
                        } else {
                            acc += v;
                        }
                    }
                }
                y.push(if max {
                    acc
                } else if include_pad {
                    acc / padded as f64
                } else {
                    acc / cnt as f64
                });
            }
        }
    }
    (y, [n, c, oh, ow])
}

fn softmax_rows(x: &[f64], row: usize) -> Vec<f64> {
    x.chunks(row)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            r.iter().map(move |v| (v - m).exp() / s).collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A small network.
// ---------------------------------------------------------------------------------------------

#[test]
fn conv_bn_relu_maxpool_gemm_softmax_chain() {
    let x = rand(&[2, 3, 8, 8], 1);
    let w = rand(&[4, 3, 3, 3], 2);
    let b = rand(&[4], 3);
    let scale = rand(&[4], 4);
    let bias = rand(&[4], 5);
    let mean = rand(&[4], 6);
    let var = Tensor::from_vec([4], vec![0.5f32, 1.0, 1.5, 0.25]).unwrap();
    let w2 = rand(&[10, 64], 7);
    let c2 = rand(&[10], 8);
    let nodes = vec![
        node(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("strides", ints(&[1, 1])),
            ],
        ),
        node(
            "BatchNormalization",
            &["c", "scale", "bias", "mean", "var"],
            &["n"],
            vec![("epsilon", Attribute::Float(1e-3))],
        ),
        node("Relu", &["n"], &["r"], vec![]),
        node(
            "MaxPool",
            &["r"],
            &["p"],
            vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))],
        ),
        node("Flatten", &["p"], &["f"], vec![]),
        node(
            "Gemm",
            &["f", "w2", "c2"],
            &["g"],
            vec![
                ("transB", Attribute::Int(1)),
                ("alpha", Attribute::Float(0.5)),
            ],
        ),
        node("Softmax", &["g"], &["y"], vec![("axis", Attribute::Int(1))]),
    ];
    let inits = vec![
        ("w", Value::Float(w.clone())),
        ("b", Value::Float(b.clone())),
        ("scale", Value::Float(scale.clone())),
        ("bias", Value::Float(bias.clone())),
        ("mean", Value::Float(mean.clone())),
        ("var", Value::Float(var.clone())),
        ("w2", Value::Float(w2.clone())),
        ("c2", Value::Float(c2.clone())),
    ];
    let xv = Value::Float(x.clone());
    let session = Session::new(model(13, nodes, inits, vec![info("x", &xv)], &["y"])).unwrap();
    assert_eq!(session.input_names(), ["x"]);
    assert_eq!(session.output_names(), ["y"]);
    assert_eq!(session.inferred_shape("p").unwrap().dims(), [2, 4, 4, 4]);
    assert_eq!(session.inferred_shape("y").unwrap().dims(), [2, 10]);
    let feed = HashMap::from([("x".to_string(), xv)]);
    let got = session.run(&dev(), &feed).unwrap().remove("y").unwrap();

    let (c, cd) = plain_conv_ref(
        &x.to_f64_vec(),
        [2, 3, 8, 8],
        &w.to_f64_vec(),
        [4, 3, 3, 3],
        Some(&b.to_f64_vec()),
        [1, 1, 1, 1],
    );
    let (s, bi, m, v) = (
        scale.to_f64_vec(),
        bias.to_f64_vec(),
        mean.to_f64_vec(),
        var.to_f64_vec(),
    );
    let plane = cd[2] * cd[3];
    let r: Vec<f64> = c
        .iter()
        .enumerate()
        .map(|(i, &val)| {
            let ch = (i / plane) % 4;
            ((val - m[ch]) / (v[ch] + 1e-3f32 as f64).sqrt() * s[ch] + bi[ch]).max(0.0)
        })
        .collect();
    let (p, _) = pool_ref(&r, cd, [2, 2], [2, 2], [0; 4], true, false, false);
    let (w2, c2) = (w2.to_f64_vec(), c2.to_f64_vec());
    let g: Vec<f64> = (0..2)
        .flat_map(|n| {
            let p = &p;
            let (w2, c2) = (&w2, &c2);
            (0..10).map(move |j| {
                0.5 * (0..64).map(|k| p[n * 64 + k] * w2[j * 64 + k]).sum::<f64>() + c2[j]
            })
        })
        .collect();
    assert_close(&got, &[2, 10], &softmax_rows(&g, 10), 1e-4);
}

#[test]
fn conv_relu_is_fused_and_exact() {
    let x = rand(&[1, 4, 7, 6], 11);
    let w = rand(&[6, 2, 3, 2], 12);
    let nodes = vec![
        node(
            "Conv",
            &["x", "w"],
            &["c"],
            vec![
                ("group", Attribute::Int(2)),
                ("strides", ints(&[2, 1])),
                ("dilations", ints(&[1, 2])),
                ("auto_pad", Attribute::String("SAME_UPPER".into())),
            ],
        ),
        node("Relu", &["c"], &["y"], vec![]),
    ];
    let xv = Value::Float(x.clone());
    let m = model(
        11,
        nodes,
        vec![("w", Value::Float(w.clone()))],
        vec![info("x", &xv)],
        &["y"],
    );
    let session = Session::new(m).unwrap();
    assert_eq!(session.fused_count(), 1);
    assert_eq!(session.op_types(), ["Conv"]);
    let got = session
        .run(&dev(), &HashMap::from([("x".to_string(), xv)]))
        .unwrap()
        .remove("y")
        .unwrap();
    // SAME_UPPER: out = ceil(in / stride); total pad = (out-1)·s + (k-1)·d + 1 - in.
    // H: in 7, s 2, k 3 -> out 4, total 2 -> (1, 1). W: in 6, s 1, k 2, d 2 -> out 6, total 2.
    let (y, yd) = conv_ref(
        &x.to_f64_vec(),
        [1, 4, 7, 6],
        &w.to_f64_vec(),
        [6, 2, 3, 2],
        None,
        [2, 1],
        [1, 1, 1, 1],
        [1, 2],
        2,
    );
    let y: Vec<f64> = y.iter().map(|v| v.max(0.0)).collect();
    assert_close(&got, &yd, &y, 1e-5);
}

#[test]
fn conv_1d_and_pool_1d_run_as_2d() {
    let x = rand(&[2, 3, 10], 21);
    let w = rand(&[4, 3, 3], 22);
    let n = node("Conv", &["x0", "x1"], &["y"], vec![("pads", ints(&[1, 1]))]);
    let got = run_one(
        13,
        n,
        vec![Value::Float(x.clone()), Value::Float(w.clone())],
    )
    .unwrap();
    let (y, _) = plain_conv_ref(
        &x.to_f64_vec(),
        [2, 3, 1, 10],
        &w.to_f64_vec(),
        [4, 3, 1, 3],
        None,
        [0, 1, 0, 1],
    );
    assert_close(&got, &[2, 4, 10], &y, 1e-5);

    let n = node(
        "MaxPool",
        &["x0"],
        &["y"],
        vec![("kernel_shape", ints(&[3])), ("strides", ints(&[2]))],
    );
    let got = run_one(13, n, vec![Value::Float(x.clone())]).unwrap();
    let (y, _) = pool_ref(
        &x.to_f64_vec(),
        [2, 3, 1, 10],
        [1, 3],
        [1, 2],
        [0; 4],
        true,
        false,
        false,
    );
    assert_close(&got, &[2, 3, 4], &y, 0.0);
}

#[test]
fn average_pool_count_include_pad_and_ceil_mode() {
    let x = rand(&[1, 2, 7, 7], 31);
    for (ceil, include) in [(false, false), (false, true), (true, false), (true, true)] {
        let n = node(
            "AveragePool",
            &["x0"],
            &["y"],
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 0, 0])),
                ("ceil_mode", Attribute::Int(i64::from(ceil))),
                ("count_include_pad", Attribute::Int(i64::from(include))),
            ],
        );
        let got = run_one(13, n, vec![Value::Float(x.clone())]).unwrap();
        let (y, yd) = pool_ref(
            &x.to_f64_vec(),
            [1, 2, 7, 7],
            [3, 3],
            [2, 2],
            [1, 1, 0, 0],
            false,
            ceil,
            include,
        );
        assert_close(&got, &yd, &y, 1e-5);
    }
}

#[test]
fn global_pools_lrn_and_instance_norm() {
    let x = rand(&[2, 5, 3, 4], 41);
    let xs = x.to_f64_vec();
    let gap = run_one(
        13,
        node("GlobalAveragePool", &["x0"], &["y"], vec![]),
        vec![Value::Float(x.clone())],
    )
    .unwrap();
    let mean: Vec<f64> = xs
        .chunks(12)
        .map(|c| c.iter().sum::<f64>() / 12.0)
        .collect();
    assert_close(&gap, &[2, 5, 1, 1], &mean, 1e-5);
    let gmp = run_one(
        13,
        node("GlobalMaxPool", &["x0"], &["y"], vec![]),
        vec![Value::Float(x.clone())],
    )
    .unwrap();
    let max: Vec<f64> = xs
        .chunks(12)
        .map(|c| c.iter().cloned().fold(f64::MIN, f64::max))
        .collect();
    assert_close(&gmp, &[2, 5, 1, 1], &max, 0.0);

    let lrn = node(
        "LRN",
        &["x0"],
        &["y"],
        vec![
            ("size", Attribute::Int(3)),
            ("alpha", Attribute::Float(0.5)),
            ("beta", Attribute::Float(0.75)),
            ("bias", Attribute::Float(2.0)),
        ],
    );
    let got = run_one(13, lrn, vec![Value::Float(x.clone())]).unwrap();
    let mut want = vec![0.0; xs.len()];
    for n in 0..2 {
        for c in 0usize..5 {
            for p in 0..12 {
                let lo = c.saturating_sub(1);
                let hi = (c + 1).min(4);
                let sq: f64 = (lo..=hi).map(|cc| xs[(n * 5 + cc) * 12 + p].powi(2)).sum();
                let i = (n * 5 + c) * 12 + p;
                want[i] = xs[i] / (2.0f64 + 0.5 / 3.0 * sq).powf(0.75);
            }
        }
    }
    assert_close(&got, &[2, 5, 3, 4], &want, 1e-5);

    let scale = rand(&[5], 42);
    let bias = rand(&[5], 43);
    let n = node(
        "InstanceNormalization",
        &["x0", "x1", "x2"],
        &["y"],
        vec![("epsilon", Attribute::Float(1e-5))],
    );
    let got = run_one(
        13,
        n,
        vec![
            Value::Float(x.clone()),
            Value::Float(scale.clone()),
            Value::Float(bias.clone()),
        ],
    )
    .unwrap();
    let (s, b) = (scale.to_f64_vec(), bias.to_f64_vec());
    let want: Vec<f64> = xs
        .chunks(12)
        .enumerate()
        .flat_map(|(i, c)| {
            let m = c.iter().sum::<f64>() / 12.0;
            let v = c.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 12.0;
            let (s, b) = (s[i % 5], b[i % 5]);
            c.iter()
                .map(move |x| (x - m) / (v + 1e-5).sqrt() * s + b)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close(&got, &[2, 5, 3, 4], &want, 1e-4);
}

#[test]
fn conv_transpose_matches_scatter_reference() {
    let x = rand(&[1, 4, 3, 5], 51);
    let w = rand(&[4, 3, 3, 3], 52); // [C, O/group, kh, kw], group 2 -> O = 6
    let b = rand(&[6], 53);
    let n = node(
        "ConvTranspose",
        &["x0", "x1", "x2"],
        &["y"],
        vec![
            ("group", Attribute::Int(2)),
            ("strides", ints(&[2, 3])),
            ("pads", ints(&[1, 0, 1, 1])),
            ("output_padding", ints(&[1, 1])),
        ],
    );
    let got = run_one(
        13,
        n,
        vec![
            Value::Float(x.clone()),
            Value::Float(w.clone()),
            Value::Float(b.clone()),
        ],
    )
    .unwrap();
    let (xs, ws, bs) = (x.to_f64_vec(), w.to_f64_vec(), b.to_f64_vec());
    let (h, wd, s, p) = (3usize, 5usize, [2usize, 3usize], [1usize, 0, 1, 1]);
    let oh = s[0] * (h - 1) + 1 + 3 - p[0] - p[2];
    let ow = s[1] * (wd - 1) + 1 + 3 - p[1] - p[3];
    let mut y = vec![0.0; 6 * oh * ow];
    for c in 0..4 {
        let g = c / 2;
        for oc in 0..3 {
            let o = g * 3 + oc;
            for ih in 0..h {
                for iw in 0..wd {
                    for a in 0..3 {
                        for bb in 0..3 {
                            let yh = (ih * s[0] + a) as isize - p[0] as isize;
                            let yw = (iw * s[1] + bb) as isize - p[1] as isize;
                            if yh < 0 || yw < 0 || yh >= oh as isize || yw >= ow as isize {
                                continue;
                            }
                            y[(o * oh + yh as usize) * ow + yw as usize] +=
                                xs[(c * h + ih) * wd + iw] * ws[((c * 3 + oc) * 3 + a) * 3 + bb];
                        }
                    }
                }
            }
        }
    }
    for (i, v) in y.iter_mut().enumerate() {
        *v += bs[i / (oh * ow)];
    }
    assert_close(&got, &[1, 6, oh, ow], &y, 1e-5);
}

#[test]
fn gemm_and_matmul_forms() {
    let a = rand(&[5, 3], 61); // used transposed: A' is 3x5
    let b = rand(&[5, 4], 62);
    let c = rand(&[1, 4], 63);
    let n = node(
        "Gemm",
        &["x0", "x1", "x2"],
        &["y"],
        vec![
            ("transA", Attribute::Int(1)),
            ("alpha", Attribute::Float(2.0)),
            ("beta", Attribute::Float(-0.5)),
        ],
    );
    let got = run_one(
        13,
        n,
        vec![
            Value::Float(a.clone()),
            Value::Float(b.clone()),
            Value::Float(c.clone()),
        ],
    )
    .unwrap();
    let (av, bv, cv) = (a.to_f64_vec(), b.to_f64_vec(), c.to_f64_vec());
    let want: Vec<f64> = (0..3)
        .flat_map(|i| {
            let (av, bv, cv) = (&av, &bv, &cv);
            (0..4).map(move |j| {
                2.0 * (0..5).map(|k| av[k * 3 + i] * bv[k * 4 + j]).sum::<f64>() - 0.5 * cv[j]
            })
        })
        .collect();
    assert_close(&got, &[3, 4], &want, 1e-5);

    // Batched matmul with broadcasting: [2, 1, 3, 4] x [3, 4, 2] -> [2, 3, 3, 2].
    let a = rand(&[2, 1, 3, 4], 64);
    let b = rand(&[3, 4, 2], 65);
    let got = run_one(
        13,
        node("MatMul", &["x0", "x1"], &["y"], vec![]),
        vec![Value::Float(a.clone()), Value::Float(b.clone())],
    )
    .unwrap();
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let mut want = Vec::new();
    for i in 0..2 {
        for j in 0..3 {
            for r in 0..3 {
                for col in 0..2 {
                    want.push(
                        (0..4)
                            .map(|k| av[(i * 3 + r) * 4 + k] * bv[(j * 4 + k) * 2 + col])
                            .sum::<f64>(),
                    );
                }
            }
        }
    }
    assert_close(&got, &[2, 3, 3, 2], &want, 1e-5);
    // Vector operands: [4] x [2, 4, 3] -> [2, 3].
    let v = rand(&[4], 66);
    let m = rand(&[2, 4, 3], 67);
    let got = run_one(
        13,
        node("MatMul", &["x0", "x1"], &["y"], vec![]),
        vec![Value::Float(v.clone()), Value::Float(m.clone())],
    )
    .unwrap();
    let (vv, mv) = (v.to_f64_vec(), m.to_f64_vec());
    let want: Vec<f64> = (0..2)
        .flat_map(|bi| {
            let (vv, mv) = (&vv, &mv);
            (0..3).map(move |j| {
                (0..4)
                    .map(|k| vv[k] * mv[(bi * 4 + k) * 3 + j])
                    .sum::<f64>()
            })
        })
        .collect();
    assert_close(&got, &[2, 3], &want, 1e-5);
}

#[test]
fn elementwise_activations_and_arithmetic() {
    let x = rand(&[2, 3, 4], 71);
    let xs = x.to_f64_vec();
    type Case = (
        &'static str,
        Vec<(&'static str, Attribute)>,
        Box<dyn Fn(f64) -> f64>,
    );
    let cases: Vec<Case> = vec![
        ("Relu", vec![], Box::new(|v: f64| v.max(0.0))),
        (
            "LeakyRelu",
            vec![("alpha", Attribute::Float(0.2))],
            Box::new(|v: f64| if v < 0.0 { 0.2 * v } else { v }),
        ),
        (
            "Sigmoid",
            vec![],
            Box::new(|v: f64| 1.0 / (1.0 + (-v).exp())),
        ),
        ("Tanh", vec![], Box::new(f64::tanh)),
        (
            "Elu",
            vec![("alpha", Attribute::Float(1.5))],
            Box::new(|v: f64| if v < 0.0 { 1.5 * v.exp_m1() } else { v }),
        ),
        ("Exp", vec![], Box::new(f64::exp)),
        ("Neg", vec![], Box::new(|v: f64| -v)),
        ("Abs", vec![], Box::new(f64::abs)),
        ("Softplus", vec![], Box::new(|v: f64| v.exp().ln_1p())),
        ("Softsign", vec![], Box::new(|v: f64| v / (1.0 + v.abs()))),
        (
            "Selu",
            vec![],
            Box::new(|v: f64| 1.050_701 * if v > 0.0 { v } else { 1.673_263_2 * v.exp_m1() }),
        ),
        (
            "HardSigmoid",
            vec![],
            Box::new(|v: f64| (0.2 * v + 0.5).clamp(0.0, 1.0)),
        ),
    ];
    for (op, attrs, f) in cases {
        let got = run_one(
            13,
            node(op, &["x0"], &["y"], attrs),
            vec![Value::Float(x.clone())],
        )
        .unwrap();
        let want: Vec<f64> = xs.iter().map(|&v| f(v)).collect();
        assert_close(&got, &[2, 3, 4], &want, 1e-5);
    }
    let sq = run_one(
        13,
        node("Sqrt", &["x0"], &["y"], vec![]),
        vec![fv(&[3], vec![4.0, 2.0, 0.25])],
    )
    .unwrap();
    assert_close(&sq, &[3], &[2.0, 2f64.sqrt(), 0.5], 1e-7);

    // Broadcasting arithmetic: [2, 3, 4] op [3, 1].
    let b = rand(&[3, 1], 72);
    let bs = b.to_f64_vec();
    let bcast = |i: usize| bs[(i / 4) % 3];
    for (op, f) in [
        ("Add", (|p, q| p + q) as fn(f64, f64) -> f64),
        ("Sub", |p, q| p - q),
        ("Mul", |p, q| p * q),
        ("Div", |p, q| p / q),
        ("Max", f64::max),
        ("Min", f64::min),
    ] {
        let got = run_one(
            13,
            node(op, &["x0", "x1"], &["y"], vec![]),
            vec![Value::Float(x.clone()), Value::Float(b.clone())],
        )
        .unwrap();
        let want: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| f(v, bcast(i)))
            .collect();
        assert_close(&got, &[2, 3, 4], &want, 1e-5);
    }
    let pos = fv(&[3], vec![1.5, 2.0, 0.5]);
    let got = run_one(
        13,
        node("Pow", &["x0", "x1"], &["y"], vec![]),
        vec![pos, fv(&[], vec![3.0])],
    )
    .unwrap();
    assert_close(&got, &[3], &[3.375, 8.0, 0.125], 1e-6);

    // Sum and Mean of three inputs with broadcasting.
    let c = rand(&[4], 73);
    let cs = c.to_f64_vec();
    let ins = vec![
        Value::Float(x.clone()),
        Value::Float(b.clone()),
        Value::Float(c.clone()),
    ];
    let sum = run_one(
        13,
        node("Sum", &["x0", "x1", "x2"], &["y"], vec![]),
        ins.clone(),
    )
    .unwrap();
    let want: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| v + bcast(i) + cs[i % 4])
        .collect();
    assert_close(&sum, &[2, 3, 4], &want, 1e-5);
    let mean = run_one(13, node("Mean", &["x0", "x1", "x2"], &["y"], vec![]), ins).unwrap();
    let want: Vec<f64> = want.iter().map(|v| v / 3.0).collect();
    assert_close(&mean, &[2, 3, 4], &want, 1e-5);

    // Opset 6 legacy broadcast: B [3] aligned at axis 1 of A [2, 3, 4].
    let b3 = rand(&[3], 74);
    let b3s = b3.to_f64_vec();
    let n = node(
        "Add",
        &["x0", "x1"],
        &["y"],
        vec![
            ("broadcast", Attribute::Int(1)),
            ("axis", Attribute::Int(1)),
        ],
    );
    let got = run_one(6, n, vec![Value::Float(x.clone()), Value::Float(b3)]).unwrap();
    let want: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| v + b3s[(i / 4) % 3])
        .collect();
    assert_close(&got, &[2, 3, 4], &want, 1e-6);

    // PRelu: numpy broadcast from opset 7; a per-channel 1-D slope in opset 6.
    let slope = fv(&[3, 1], vec![0.1, 0.2, 0.3]);
    let got = run_one(
        9,
        node("PRelu", &["x0", "x1"], &["y"], vec![]),
        vec![Value::Float(x.clone()), slope],
    )
    .unwrap();
    let want: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v < 0.0 {
                v * [0.1f32, 0.2, 0.3][(i / 4) % 3] as f64
            } else {
                v
            }
        })
        .collect();
    assert_close(&got, &[2, 3, 4], &want, 1e-6);
    let slope1d = fv(&[3], vec![0.1, 0.2, 0.3]);
    let got = run_one(
        6,
        node("PRelu", &["x0", "x1"], &["y"], vec![]),
        vec![Value::Float(x.clone()), slope1d],
    )
    .unwrap();
    assert_close(&got, &[2, 3, 4], &want, 1e-6);
}

#[test]
fn integer_and_boolean_ops_run_on_the_host() {
    let a = iv(&[2, 2], &[1, -2, 3, 7]);
    let b = iv(&[2], &[3, 2]);
    let cases: [(&str, [i64; 4]); 4] = [
        ("Add", [4, 0, 6, 9]),
        ("Sub", [-2, -4, 0, 5]),
        ("Mul", [3, -4, 9, 14]),
        ("Div", [0, -1, 1, 3]),
    ];
    for (op, want) in cases {
        let got = run_one(
            13,
            node(op, &["x0", "x1"], &["y"], vec![]),
            vec![a.clone(), b.clone()],
        )
        .unwrap();
        assert_eq!(got, iv(&[2, 2], &want), "{op}");
    }
    let eq = run_one(
        13,
        node("Less", &["x0", "x1"], &["y"], vec![]),
        vec![a.clone(), b.clone()],
    )
    .unwrap();
    assert_eq!(
        eq,
        Value::bools([2, 2], vec![true, true, false, false]).unwrap()
    );
    let cond = Value::bools([2], vec![true, false]).unwrap();
    let got = run_one(
        13,
        node("Where", &["x0", "x1", "x2"], &["y"], vec![]),
        vec![cond, a.clone(), b],
    )
    .unwrap();
    assert_eq!(got, iv(&[2, 2], &[1, 2, 3, 2]));
    let cast = run_one(
        13,
        node("Cast", &["x0"], &["y"], vec![("to", Attribute::Int(1))]),
        vec![a],
    )
    .unwrap();
    assert_close(&cast, &[2, 2], &[1.0, -2.0, 3.0, 7.0], 0.0);
    let back = run_one(
        13,
        node("Cast", &["x0"], &["y"], vec![("to", Attribute::Int(7))]),
        vec![fv(&[3], vec![1.7, -2.7, 0.2])],
    )
    .unwrap();
    assert_eq!(back, iv(&[3], &[1, -2, 0]));
}

// ---------------------------------------------------------------------------------------------
// Shape ops.
// ---------------------------------------------------------------------------------------------

/// The values 0, 1, 2, … as f32 in `dims`.
fn arange(dims: &[usize]) -> Value {
    let n: usize = dims.iter().product();
    fv(dims, (0..n).map(|i| i as f32).collect())
}

fn floats_of(v: &Value) -> Vec<f64> {
    f64s(v)
}

#[test]
fn reshape_flatten_squeeze_unsqueeze() {
    let x = arange(&[2, 3, 4]);
    let all: Vec<f64> = (0..24).map(f64::from).collect();
    let got = run_one(
        13,
        node("Reshape", &["x0", "x1"], &["y"], vec![]),
        vec![x.clone(), iv(&[3], &[0, -1, 2])],
    )
    .unwrap();
    assert_close(&got, &[2, 6, 2], &all, 0.0);
    // allowzero (opset 14): a 0 is a size, not a copy.
    let empty = fv(&[0, 3], vec![]);
    let n = node(
        "Reshape",
        &["x0", "x1"],
        &["y"],
        vec![("allowzero", Attribute::Int(1))],
    );
    let got = run_one(14, n, vec![empty, iv(&[2], &[3, 0])]).unwrap();
    assert_eq!(got.dims(), [3, 0]);
    let err = run_one(
        13,
        node("Reshape", &["x0", "x1"], &["y"], vec![]),
        vec![x.clone(), iv(&[2], &[5, -1])],
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");

    for (axis, dims) in [
        (0i64, [1usize, 24]),
        (1, [2, 12]),
        (-1, [6, 4]),
        (3, [24, 1]),
    ] {
        let got = run_one(
            13,
            node(
                "Flatten",
                &["x0"],
                &["y"],
                vec![("axis", Attribute::Int(axis))],
            ),
            vec![x.clone()],
        )
        .unwrap();
        assert_close(&got, &dims, &all, 0.0);
    }

    let x1 = arange(&[2, 1, 3, 1]);
    let six: Vec<f64> = (0..6).map(f64::from).collect();
    // Squeeze: axes attribute (opset 11), axes input (opset 13), no axes (every size-1 axis).
    let got = run_one(
        11,
        node("Squeeze", &["x0"], &["y"], vec![("axes", ints(&[-1]))]),
        vec![x1.clone()],
    )
    .unwrap();
    assert_close(&got, &[2, 1, 3], &six, 0.0);
    let got = run_one(
        13,
        node("Squeeze", &["x0", "x1"], &["y"], vec![]),
        vec![x1.clone(), iv(&[1], &[1])],
    )
    .unwrap();
    assert_close(&got, &[2, 3, 1], &six, 0.0);
    let got = run_one(
        13,
        node("Squeeze", &["x0"], &["y"], vec![]),
        vec![x1.clone()],
    )
    .unwrap();
    assert_close(&got, &[2, 3], &six, 0.0);
    assert!(
        run_one(
            13,
            node("Squeeze", &["x0", "x1"], &["y"], vec![]),
            vec![x1, iv(&[1], &[0])]
        )
        .is_err()
    );
    // Unsqueeze: attribute (opset 11) vs input (opset 13), negative axes count in the output.
    let x2 = arange(&[2, 3]);
    let got = run_one(
        11,
        node("Unsqueeze", &["x0"], &["y"], vec![("axes", ints(&[0, -1]))]),
        vec![x2.clone()],
    )
    .unwrap();
    assert_close(&got, &[1, 2, 3, 1], &six, 0.0);
    let got = run_one(
        13,
        node("Unsqueeze", &["x0", "x1"], &["y"], vec![]),
        vec![x2, iv(&[1], &[1])],
    )
    .unwrap();
    assert_close(&got, &[2, 1, 3], &six, 0.0);
}

#[test]
fn transpose_concat_split_gather() {
    let x = arange(&[2, 3, 4]);
    let xs = floats_of(&x);
    // Default perm reverses the axes.
    let got = run_one(
        13,
        node("Transpose", &["x0"], &["y"], vec![]),
        vec![x.clone()],
    )
    .unwrap();
    let mut want = Vec::new();
    for k in 0..4 {
        for j in 0..3 {
            for i in 0..2 {
                want.push(xs[(i * 3 + j) * 4 + k]);
            }
        }
    }
    assert_close(&got, &[4, 3, 2], &want, 0.0);
    let got = run_one(
        13,
        node(
            "Transpose",
            &["x0"],
            &["y"],
            vec![("perm", ints(&[1, 0, 2]))],
        ),
        vec![x.clone()],
    )
    .unwrap();
    let mut want = Vec::new();
    for j in 0..3 {
        for i in 0..2 {
            for k in 0..4 {
                want.push(xs[(i * 3 + j) * 4 + k]);
            }
        }
    }
    assert_close(&got, &[3, 2, 4], &want, 0.0);

    // Concat with a negative axis.
    let a = arange(&[2, 2]);
    let b = fv(&[2, 1], vec![10.0, 11.0]);
    let got = run_one(
        13,
        node(
            "Concat",
            &["x0", "x1"],
            &["y"],
            vec![("axis", Attribute::Int(-1))],
        ),
        vec![a, b],
    )
    .unwrap();
    assert_close(&got, &[2, 3], &[0.0, 1.0, 10.0, 2.0, 3.0, 11.0], 0.0);
    let got = run_one(
        13,
        node(
            "Concat",
            &["x0", "x1"],
            &["y"],
            vec![("axis", Attribute::Int(0))],
        ),
        vec![iv(&[2], &[1, 2]), iv(&[1], &[3])],
    )
    .unwrap();
    assert_eq!(got, iv(&[3], &[1, 2, 3]));

    // Split: attribute (opset 11), input (opset 13), equal parts.
    let parts = |opset: i64, n: Node, ins: Vec<Value>| {
        let names: Vec<String> = (0..ins.len()).map(|i| format!("x{i}")).collect();
        let infos = names.iter().zip(&ins).map(|(nm, v)| info(nm, v)).collect();
        let s = Session::new(model(opset, vec![n], vec![], infos, &["p", "q"])).unwrap();
        let feed: HashMap<String, Value> = names.into_iter().zip(ins).collect();
        let mut out = s.run(&dev(), &feed).unwrap();
        (out.remove("p").unwrap(), out.remove("q").unwrap())
    };
    let (p, q) = parts(
        11,
        node(
            "Split",
            &["x0"],
            &["p", "q"],
            vec![("axis", Attribute::Int(2)), ("split", ints(&[1, 3]))],
        ),
        vec![x.clone()],
    );
    assert_eq!(
        (p.dims(), q.dims()),
        (&[2usize, 3, 1][..], &[2usize, 3, 3][..])
    );
    assert_close(
        &p,
        &[2, 3, 1],
        &xs.iter().copied().step_by(4).collect::<Vec<_>>(),
        0.0,
    );
    let (p, q) = parts(
        13,
        node(
            "Split",
            &["x0", "x1"],
            &["p", "q"],
            vec![("axis", Attribute::Int(1))],
        ),
        vec![x.clone(), iv(&[2], &[2, 1])],
    );
    assert_eq!(
        (p.dims(), q.dims()),
        (&[2usize, 2, 4][..], &[2usize, 1, 4][..])
    );
    assert_close(
        &q,
        &[2, 1, 4],
        &[8.0, 9.0, 10.0, 11.0, 20.0, 21.0, 22.0, 23.0],
        0.0,
    );
    let (p, _) = parts(
        13,
        node("Split", &["x0"], &["p", "q"], vec![]),
        vec![x.clone()],
    );
    assert_close(&p, &[1, 3, 4], &xs[..12], 0.0);

    // Gather with negative indices along axis 1, and along axis 0 of ints.
    let got = run_one(
        13,
        node(
            "Gather",
            &["x0", "x1"],
            &["y"],
            vec![("axis", Attribute::Int(1))],
        ),
        vec![x.clone(), iv(&[2], &[-1, 0])],
    )
    .unwrap();
    let mut want = Vec::new();
    for i in 0..2 {
        for j in [2usize, 0] {
            for k in 0..4 {
                want.push(xs[(i * 3 + j) * 4 + k]);
            }
        }
    }
    assert_close(&got, &[2, 2, 4], &want, 0.0);
    let got = run_one(
        13,
        node("Gather", &["x0", "x1"], &["y"], vec![]),
        vec![iv(&[3], &[7, 8, 9]), iv(&[], &[-2])],
    )
    .unwrap();
    assert_eq!(got, iv(&[], &[8]));
    assert!(
        run_one(
            13,
            node("Gather", &["x0", "x1"], &["y"], vec![]),
            vec![iv(&[3], &[7, 8, 9]), iv(&[1], &[3])]
        )
        .is_err()
    );
}

#[test]
fn slice_pad_tile_expand() {
    let x = arange(&[3, 4]);
    // Opset 9: attributes; opset 13: inputs with a negative step.
    let n = node(
        "Slice",
        &["x0"],
        &["y"],
        vec![
            ("starts", ints(&[1])),
            ("ends", ints(&[1000])),
            ("axes", ints(&[1])),
        ],
    );
    let got = run_one(9, n, vec![x.clone()]).unwrap();
    assert_close(
        &got,
        &[3, 3],
        &[1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 9.0, 10.0, 11.0],
        0.0,
    );
    let n = node("Slice", &["x0", "x1", "x2", "x3", "x4"], &["y"], vec![]);
    let got = run_one(
        13,
        n,
        vec![
            x.clone(),
            iv(&[2], &[-1, 3]),
            iv(&[2], &[i64::MIN, 0]),
            iv(&[2], &[0, 1]),
            iv(&[2], &[-2, -2]),
        ],
    )
    .unwrap();
    assert_close(&got, &[2, 2], &[11.0, 9.0, 3.0, 1.0], 0.0);

    // Pad: opset 2 attributes (constant value), opset 11+ inputs (reflect, edge).
    let n = node(
        "Pad",
        &["x0"],
        &["y"],
        vec![
            ("pads", ints(&[0, 1, 1, 0])),
            ("value", Attribute::Float(-1.0)),
        ],
    );
    let got = run_one(9, n, vec![x.clone()]).unwrap();
    #[rustfmt::skip]
    let want = [-1.0, 0.0, 1.0, 2.0, 3.0, -1.0, 4.0, 5.0, 6.0, 7.0, -1.0, 8.0, 9.0, 10.0, 11.0, -1.0, -1.0, -1.0, -1.0, -1.0];
    assert_close(&got, &[4, 5], &want, 0.0);
    let n = node(
        "Pad",
        &["x0", "x1"],
        &["y"],
        vec![("mode", Attribute::String("reflect".into()))],
    );
    let got = run_one(13, n, vec![x.clone(), iv(&[4], &[0, 2, 0, 1])]).unwrap();
    #[rustfmt::skip]
    let want = [2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 6.0, 5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 10.0, 9.0, 8.0, 9.0, 10.0, 11.0, 10.0];
    assert_close(&got, &[3, 7], &want, 0.0);
    let n = node(
        "Pad",
        &["x0", "x1", "x2"],
        &["y"],
        vec![("mode", Attribute::String("edge".into()))],
    );
    let got = run_one(
        13,
        n,
        vec![x.clone(), iv(&[4], &[1, 0, 0, 0]), fv(&[], vec![5.0])],
    )
    .unwrap();
    assert_close(
        &got,
        &[4, 4],
        &[
            0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
        ],
        0.0,
    );

    let got = run_one(
        13,
        node("Tile", &["x0", "x1"], &["y"], vec![]),
        vec![fv(&[1, 2], vec![1.0, 2.0]), iv(&[2], &[2, 2])],
    )
    .unwrap();
    assert_close(
        &got,
        &[2, 4],
        &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
        0.0,
    );
    let got = run_one(
        13,
        node("Expand", &["x0", "x1"], &["y"], vec![]),
        vec![fv(&[3, 1], vec![1.0, 2.0, 3.0]), iv(&[3], &[2, 1, 2])],
    )
    .unwrap();
    assert_close(
        &got,
        &[2, 3, 2],
        &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
        0.0,
    );
}

#[test]
fn shape_constants_identity_dropout() {
    let x = arange(&[2, 3, 4]);
    let got = run_one(13, node("Shape", &["x0"], &["y"], vec![]), vec![x.clone()]).unwrap();
    assert_eq!(got, iv(&[3], &[2, 3, 4]));
    let got = run_one(
        15,
        node(
            "Shape",
            &["x0"],
            &["y"],
            vec![("start", Attribute::Int(-2))],
        ),
        vec![x.clone()],
    )
    .unwrap();
    assert_eq!(got, iv(&[2], &[3, 4]));
    let got = run_one(13, node("Size", &["x0"], &["y"], vec![]), vec![x.clone()]).unwrap();
    assert_eq!(got, iv(&[], &[24]));
    let n = node(
        "ConstantOfShape",
        &["x0"],
        &["y"],
        vec![("value", Attribute::Tensor(iv(&[1], &[7])))],
    );
    assert_eq!(
        run_one(13, n, vec![iv(&[2], &[2, 2])]).unwrap(),
        iv(&[2, 2], &[7, 7, 7, 7])
    );
    let n = node("ConstantOfShape", &["x0"], &["y"], vec![]);
    assert_close(
        &run_one(13, n, vec![iv(&[1], &[3])]).unwrap(),
        &[3],
        &[0.0; 3],
        0.0,
    );
    let c = node("Constant", &[], &["y"], vec![("value_ints", ints(&[4, 5]))]);
    let s = Session::new(model(13, vec![c], vec![], vec![], &["y"])).unwrap();
    assert_eq!(
        s.run(&dev(), &HashMap::new()).unwrap()["y"],
        iv(&[2], &[4, 5])
    );
    let got = run_one(
        13,
        node("Identity", &["x0"], &["y"], vec![]),
        vec![x.clone()],
    )
    .unwrap();
    assert_eq!(got, x);

    // Dropout in inference: identity, mask all true (opset 12) / float ones (opset 9).
    for (opset, mask) in [
        (12, Value::bools([2, 3, 4], vec![true; 24]).unwrap()),
        (9, fv(&[2, 3, 4], vec![1.0; 24])),
    ] {
        let n = node(
            "Dropout",
            &["x0"],
            &["y", "m"],
            vec![("ratio", Attribute::Float(0.5))],
        );
        let n = if opset >= 12 {
            Node {
                attributes: HashMap::new(),
                ..n
            }
        } else {
            n
        };
        let s = Session::new(model(
            opset,
            vec![n],
            vec![],
            vec![info("x0", &x)],
            &["y", "m"],
        ))
        .unwrap();
        let out = s
            .run(&dev(), &HashMap::from([("x0".to_string(), x.clone())]))
            .unwrap();
        assert_eq!(out["y"], x);
        assert_eq!(out["m"], mask);
    }
}

#[test]
fn identity_and_inference_dropout_are_dropped_at_load() {
    let x = Value::Float(rand(&[2, 3, 5, 7], 41));
    let nodes = vec![
        node("Relu", &["x"], &["r"], vec![]),
        node("Dropout", &["r"], &["d"], vec![]),
        node("Identity", &["d"], &["i"], vec![]),
        node("Sigmoid", &["i"], &["y"], vec![]),
        // A pass-through that writes a graph output stays, so the output keeps its name.
        node("Identity", &["r"], &["z"], vec![]),
    ];
    let s = Session::new(model(13, nodes, vec![], vec![info("x", &x)], &["y", "z"])).unwrap();
    assert_eq!(
        s.node_count(),
        3,
        "Relu, Sigmoid and the output's Identity run"
    );
    let out = s
        .run(&dev(), &HashMap::from([("x".to_string(), x.clone())]))
        .unwrap();
    let relu: Vec<f64> = f64s(&x).iter().map(|&v| v.max(0.0)).collect();
    let sigmoid: Vec<f64> = relu.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
    assert_close(&out["y"], &[2, 3, 5, 7], &sigmoid, 1e-6);
    assert_close(&out["z"], &[2, 3, 5, 7], &relu, 0.0);

    // A Dropout whose mask is read runs.
    let nodes = vec![
        node("Dropout", &["x"], &["d", "m"], vec![]),
        node("Cast", &["m"], &["y"], vec![("to", Attribute::Int(1))]),
        node("Neg", &["d"], &["z"], vec![]),
    ];
    let s = Session::new(model(13, nodes, vec![], vec![info("x", &x)], &["y", "z"])).unwrap();
    assert_eq!(s.node_count(), 3);
    let out = s
        .run(&dev(), &HashMap::from([("x".to_string(), x.clone())]))
        .unwrap();
    assert_close(&out["y"], &[2, 3, 5, 7], &[1.0; 210], 0.0);
    let neg: Vec<f64> = f64s(&x).iter().map(|&v| -v).collect();
    assert_close(&out["z"], &[2, 3, 5, 7], &neg, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Opset differences.
// ---------------------------------------------------------------------------------------------

#[test]
fn clip_bounds_are_attributes_before_11_and_inputs_after() {
    let x = fv(&[5], vec![-2.0, -0.5, 0.0, 0.5, 2.0]);
    let want = [-1.0, -0.5, 0.0, 0.5, 1.0];
    let n = node(
        "Clip",
        &["x0"],
        &["y"],
        vec![
            ("min", Attribute::Float(-1.0)),
            ("max", Attribute::Float(1.0)),
        ],
    );
    assert_close(&run_one(9, n, vec![x.clone()]).unwrap(), &[5], &want, 0.0);
    let n = node("Clip", &["x0", "x1", "x2"], &["y"], vec![]);
    let b = |v: f32| fv(&[], vec![v]);
    assert_close(
        &run_one(13, n, vec![x.clone(), b(-1.0), b(1.0)]).unwrap(),
        &[5],
        &want,
        0.0,
    );
    // Only a max (the min input left out), and no bounds at all.
    let n = node("Clip", &["x0", "", "x1"], &["y"], vec![]);
    let names = vec![("x0", x.clone()), ("x1", b(0.0))];
    let got = run_model(13, vec![n], vec![], names, "y").unwrap();
    assert_close(&got, &[5], &[-2.0, -0.5, 0.0, 0.0, 0.0], 0.0);
    let n = node("Clip", &["x0"], &["y"], vec![]);
    assert_close(
        &run_one(11, n, vec![x.clone()]).unwrap(),
        &[5],
        &[-2.0, -0.5, 0.0, 0.5, 2.0],
        0.0,
    );
    // The attribute form is refused where the bounds are inputs.
    let n = node(
        "Clip",
        &["x0"],
        &["y"],
        vec![("min", Attribute::Float(-1.0))],
    );
    assert!(matches!(
        run_one(13, n, vec![x]).unwrap_err(),
        Error::Unsupported { .. }
    ));
}

#[test]
fn squeeze_axes_attribute_before_13_input_after() {
    let x = arange(&[1, 3, 1]);
    let n = node("Squeeze", &["x0"], &["y"], vec![("axes", ints(&[0]))]);
    assert_eq!(run_one(12, n, vec![x.clone()]).unwrap().dims(), [3, 1]);
    let n = node("Squeeze", &["x0", "x1"], &["y"], vec![]);
    assert_eq!(
        run_one(13, n, vec![x.clone(), iv(&[1], &[0])])
            .unwrap()
            .dims(),
        [3, 1]
    );
    // The attribute is not part of opset 13.
    let n = node("Squeeze", &["x0"], &["y"], vec![("axes", ints(&[0]))]);
    assert!(matches!(
        run_one(13, n, vec![x]).unwrap_err(),
        Error::Unsupported { .. }
    ));
}

#[test]
fn softmax_axis_semantics_changed_in_opset_13() {
    let x = rand(&[2, 3, 4], 81);
    let xs = x.to_f64_vec();
    for log in [false, true] {
        let op = if log { "LogSoftmax" } else { "Softmax" };
        let post = |v: Vec<f64>| -> Vec<f64> {
            if log {
                v.iter().map(|p| p.ln()).collect()
            } else {
                v
            }
        };
        // Opset 11: coerced to 2-D at axis 1, normalised over 3·4 = 12 values per row.
        let n = node(op, &["x0"], &["y"], vec![("axis", Attribute::Int(1))]);
        let got = run_one(11, n, vec![Value::Float(x.clone())]).unwrap();
        assert_close(&got, &[2, 3, 4], &post(softmax_rows(&xs, 12)), 1e-5);
        // Opset 13: along axis 1 only (3 values per column).
        let n = node(op, &["x0"], &["y"], vec![("axis", Attribute::Int(1))]);
        let got = run_one(13, n, vec![Value::Float(x.clone())]).unwrap();
        let mut want = vec![0.0; 24];
        for i in 0..2 {
            for k in 0..4 {
                let col: Vec<f64> = (0..3).map(|j| xs[(i * 3 + j) * 4 + k]).collect();
                for (j, v) in softmax_rows(&col, 3).into_iter().enumerate() {
                    want[(i * 3 + j) * 4 + k] = v;
                }
            }
        }
        assert_close(&got, &[2, 3, 4], &post(want), 1e-5);
        // Defaults: axis 1 before 13, -1 from 13 (the same here for a 2-D input).
        let n = node(op, &["x0"], &["y"], vec![]);
        let got = run_one(13, n, vec![Value::Float(x.clone())]).unwrap();
        assert_close(&got, &[2, 3, 4], &post(softmax_rows(&xs, 4)), 1e-5);
    }
}

// ---------------------------------------------------------------------------------------------
// Load-time work: folding, inference, errors.
// ---------------------------------------------------------------------------------------------

/// `Shape(w) → Gather(0) → Unsqueeze → Concat([.., -1]) → Reshape(target)`.
fn shape_chain(target: &str) -> Vec<Node> {
    vec![
        node("Shape", &["w"], &["s"], vec![]),
        node(
            "Gather",
            &["s", "zero"],
            &["g"],
            vec![("axis", Attribute::Int(0))],
        ),
        node("Unsqueeze", &["g", "axes"], &["u"], vec![]),
        node(
            "Concat",
            &["u", "minus_one"],
            &["c"],
            vec![("axis", Attribute::Int(0))],
        ),
        node("Reshape", &[target, "c"], &["y"], vec![]),
    ]
}

fn chain_inits(w: &Value) -> Vec<(&'static str, Value)> {
    vec![
        ("w", w.clone()),
        ("zero", iv(&[], &[0])),
        ("axes", iv(&[1], &[0])),
        ("minus_one", iv(&[1], &[-1])),
    ]
}

#[test]
fn initializer_only_chains_fold_at_load() {
    let w = arange(&[2, 3, 4]);
    let s = Session::new(model(13, shape_chain("w"), chain_inits(&w), vec![], &["y"])).unwrap();
    assert_eq!(s.node_count(), 0, "every node folds");
    assert_eq!(s.folded_count(), 5);
    assert_eq!(s.constant("y").map(Value::dims), Some(&[2usize, 12][..]));
    // Intermediate constants nothing reads any more are dropped.
    assert_eq!(s.constant("c"), None);
    let out = s.run(&dev(), &HashMap::new()).unwrap();
    assert_close(
        &out["y"],
        &[2, 12],
        &(0..24).map(f64::from).collect::<Vec<_>>(),
        0.0,
    );

    // The shape computation folds; the Reshape of the runtime input stays.
    let x = arange(&[6, 4]);
    let s = Session::new(model(
        13,
        shape_chain("x"),
        chain_inits(&w),
        vec![info("x", &x)],
        &["y"],
    ))
    .unwrap();
    assert_eq!(s.op_types(), ["Reshape"]);
    assert_eq!(s.inferred_shape("y").unwrap().dims(), [2, 12]);
    let out = s
        .run(&dev(), &HashMap::from([("x".to_string(), x)]))
        .unwrap();
    assert_eq!(out["y"].dims(), [2, 12]);
}

#[test]
fn values_used_twice_survive_their_first_use() {
    // x feeds a Relu and, later, an Add with the Relu's output: x must not be freed early.
    let x = rand(&[3, 5], 91);
    let nodes = vec![
        node("Relu", &["x"], &["r"], vec![]),
        node("Reshape", &["r", "shape"], &["r2"], vec![]),
        node("Add", &["r2", "x"], &["y"], vec![]),
    ];
    let xv = Value::Float(x.clone());
    let m = model(
        13,
        nodes,
        vec![("shape", iv(&[2], &[3, 5]))],
        vec![info("x", &xv)],
        &["y", "r"],
    );
    let s = Session::new(m).unwrap();
    let out = s
        .run(&dev(), &HashMap::from([("x".to_string(), xv)]))
        .unwrap();
    let want: Vec<f64> = x.to_f64_vec().iter().map(|&v| v.max(0.0) + v).collect();
    assert_close(&out["y"], &[3, 5], &want, 1e-6);
    assert_close(
        &out["r"],
        &[3, 5],
        &x.to_f64_vec()
            .iter()
            .map(|v| v.max(0.0))
            .collect::<Vec<_>>(),
        0.0,
    );
}

#[test]
fn unsupported_operators_fail_at_load_naming_node_op_and_opset() {
    let mut n = node("LSTM", &["x"], &["y"], vec![]);
    n.name = "my_lstm".to_string();
    let x = fv(&[1, 2], vec![0.0; 2]);
    let m = model(
        13,
        vec![node("Relu", &["x"], &["r"], vec![]), n],
        vec![],
        vec![info("x", &x)],
        &["y"],
    );
    match Session::new(m).unwrap_err() {
        Error::Unsupported {
            node, op, opset, ..
        } => {
            assert_eq!((node.as_str(), op.as_str(), opset), ("my_lstm", "LSTM", 13));
        }
        other => panic!("expected Unsupported, got {other}"),
    }
    assert!(!supported("LSTM", "", 13));
    assert!(supported("Conv", "", 13) && supported("Conv", "ai.onnx", 7));
    assert!(!supported("Conv", "com.microsoft", 13));
    assert!(!supported("Gelu", "", 19) && supported("Gelu", "", 20));

    // An unsupported attribute value: a 3-D convolution window; MaxPool's Indices output.
    let conv3d = node(
        "Conv",
        &["x", "w"],
        &["y"],
        vec![("kernel_shape", ints(&[1, 1, 1]))],
    );
    let err = Session::new(model(
        13,
        vec![conv3d],
        vec![("w", arange(&[1, 1, 1, 1, 1]))],
        vec![info("x", &x)],
        &["y"],
    ))
    .unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { op, .. } if op == "Conv"),
        "{err}"
    );
    let mp = node(
        "MaxPool",
        &["x"],
        &["y", "idx"],
        vec![("kernel_shape", ints(&[1]))],
    );
    let err = Session::new(model(13, vec![mp], vec![], vec![info("x", &x)], &["y"])).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { detail, .. } if detail.contains("Indices")),
        "{err}"
    );
    // Another domain, and an opset outside the supported range.
    let mut custom = node("Relu", &["x"], &["y"], vec![]);
    custom.domain = "com.example".to_string();
    let err =
        Session::new(model(13, vec![custom], vec![], vec![info("x", &x)], &["y"])).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let err = Session::new(model(
        5,
        vec![node("Relu", &["x"], &["y"], vec![])],
        vec![],
        vec![info("x", &x)],
        &["y"],
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported { opset: 5, .. }), "{err}");
}

#[test]
fn sessions_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Session>();
}

#[test]
fn bad_graphs_fail_at_load() {
    let x = fv(&[2, 3], vec![0.0; 6]);
    // An input nobody defines.
    let m = model(
        13,
        vec![node("Add", &["x", "ghost"], &["y"], vec![])],
        vec![],
        vec![info("x", &x)],
        &["y"],
    );
    let err = Session::new(m).unwrap_err();
    assert!(
        matches!(err, Error::Parse { .. }) && err.to_string().contains("ghost"),
        "{err}"
    );
    // A cycle.
    let nodes = vec![
        node("Relu", &["b"], &["a"], vec![]),
        node("Relu", &["a"], &["b"], vec![]),
    ];
    let err = Session::new(model(13, nodes, vec![], vec![], &["a"])).unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    // Out-of-order nodes are fine.
    let nodes = vec![
        node("Relu", &["a"], &["y"], vec![]),
        node("Neg", &["x"], &["a"], vec![]),
    ];
    let s = Session::new(model(13, nodes, vec![], vec![info("x", &x)], &["y"])).unwrap();
    assert_eq!(s.op_types(), ["Neg", "Relu"]);
    // Layers that do not fit together fail shape inference at load.
    let gemm = node("Gemm", &["x", "w"], &["y"], vec![]);
    let err = Session::new(model(
        13,
        vec![gemm],
        vec![("w", arange(&[4, 2]))],
        vec![info("x", &x)],
        &["y"],
    ))
    .unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("Gemm"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_typed_errors_naming_the_input() {
    let x = fv(&[2, 3], vec![0.0; 6]);
    let mut xi = info("x", &x);
    xi.dims = Some(vec![Dim::Symbolic("batch".into()), Dim::Known(3)]);
    let s = Session::new(model(
        13,
        vec![node("Relu", &["x"], &["y"], vec![])],
        vec![],
        vec![xi],
        &["y"],
    ))
    .unwrap();
    let d = dev();
    // Missing.
    let err = s.run(&d, &HashMap::new()).unwrap_err();
    assert!(
        matches!(&err, Error::Parse { value, .. } if value == "x"),
        "{err}"
    );
    // Wrong dims (the symbolic batch takes any size, the known 3 does not).
    assert!(
        s.run(
            &d,
            &HashMap::from([("x".to_string(), fv(&[5, 3], vec![1.0; 15]))])
        )
        .is_ok()
    );
    let err = s
        .run(
            &d,
            &HashMap::from([("x".to_string(), fv(&[2, 4], vec![0.0; 8]))]),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::Shape { context, .. } if context.contains("`x`")),
        "{err}"
    );
    let err = s
        .run(
            &d,
            &HashMap::from([("x".to_string(), fv(&[6], vec![0.0; 6]))]),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // Wrong element type.
    let err = s
        .run(
            &d,
            &HashMap::from([("x".to_string(), iv(&[2, 3], &[0; 6]))]),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::DType { context, .. } if context.contains("`x`")),
        "{err}"
    );
    // A name the model does not have.
    let feed = HashMap::from([("x".to_string(), x), ("z".to_string(), fv(&[1], vec![0.0]))]);
    let err = s.run(&d, &feed).unwrap_err();
    assert!(err.to_string().contains("z"), "{err}");
    // A runtime shape error names the node.
    let add = node("Add", &["a", "b"], &["y"], vec![]);
    let (a, b) = (fv(&[2, 3], vec![0.0; 6]), fv(&[4], vec![0.0; 4]));
    let mut ai = info("a", &a);
    ai.dims = None;
    let mut bi = info("b", &b);
    bi.dims = None;
    let s = Session::new(model(13, vec![add], vec![], vec![ai, bi], &["y"])).unwrap();
    let err = s
        .run(
            &d,
            &HashMap::from([("a".to_string(), a), ("b".to_string(), b)]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("Add_y"), "{err}");
}

#[test]
fn residual_add_and_relu_are_fused_into_the_conv() {
    // y = relu(conv(x, w1) + conv(x, w2)): the shortcut conv comes after the Add's other
    // operand in file order, so the fused conv must run at the Add's place.
    let x = rand(&[1, 5, 6, 7], 21);
    let w1 = rand(&[8, 5, 3, 3], 22);
    let w2 = rand(&[8, 5, 1, 1], 23);
    let b2 = rand(&[8], 24);
    for add in ["Add", "Sum"] {
        let nodes = vec![
            node(
                "Conv",
                &["x", "w1"],
                &["main"],
                vec![("pads", ints(&[1, 1, 1, 1]))],
            ),
            node("Conv", &["x", "w2", "b2"], &["short"], vec![]),
            node(add, &["main", "short"], &["s"], vec![]),
            node("Relu", &["s"], &["y"], vec![]),
        ];
        let xv = Value::Float(x.clone());
        let m = model(
            11,
            nodes,
            vec![
                ("w1", Value::Float(w1.clone())),
                ("w2", Value::Float(w2.clone())),
                ("b2", Value::Float(b2.clone())),
            ],
            vec![info("x", &xv)],
            &["y"],
        );
        let session = Session::new(m).unwrap();
        assert_eq!(session.fused_count(), 2, "{add}");
        assert_eq!(session.op_types(), ["Conv", "Conv"], "{add}");
        let feed = HashMap::from([("x".to_string(), xv)]);
        let got = session.run(&dev(), &feed).unwrap().remove("y").unwrap();
        let (_, profile) = session.run_profiled(&dev(), &feed).unwrap();
        let ops: Vec<&str> = profile.steps.iter().map(|s| s.op.as_str()).collect();
        assert_eq!(ops, ["Conv", "Conv+Add+Relu"], "{add}");
        let xs = x.to_f64_vec();
        let (main, yd) = plain_conv_ref(
            &xs,
            [1, 5, 6, 7],
            &w1.to_f64_vec(),
            [8, 5, 3, 3],
            None,
            [1, 1, 1, 1],
        );
        let (short, _) = plain_conv_ref(
            &xs,
            [1, 5, 6, 7],
            &w2.to_f64_vec(),
            [8, 5, 1, 1],
            Some(&b2.to_f64_vec()),
            [0; 4],
        );
        let y: Vec<f64> = main
            .iter()
            .zip(&short)
            .map(|(a, b)| (a + b).max(0.0))
            .collect();
        assert_close(&got, &yd, &y, 1e-5);
    }
}

#[test]
fn residual_is_not_fused_when_the_conv_output_is_read_twice_or_broadcast() {
    let x = rand(&[1, 4, 5, 5], 31);
    let w = rand(&[4, 4, 1, 1], 32);
    let xv = Value::Float(x.clone());
    // The conv output also feeds a second consumer: no fusion of the Add.
    let nodes = vec![
        node("Conv", &["x", "w"], &["c"], vec![]),
        node("Add", &["c", "x"], &["s"], vec![]),
        node("Mul", &["c", "s"], &["y"], vec![]),
    ];
    let m = model(
        11,
        nodes,
        vec![("w", Value::Float(w.clone()))],
        vec![info("x", &xv)],
        &["y"],
    );
    let session = Session::new(m).unwrap();
    assert_eq!(session.fused_count(), 0);
    // A broadcast operand ([1, 4, 1, 1]) is not a residual: a constant one folds into the
    // bias instead, a variable one stays an Add.
    let bias = rand(&[1, 4, 1, 1], 33);
    let nodes = vec![
        node("Conv", &["x", "w"], &["c"], vec![]),
        node("Add", &["c", "bb"], &["y"], vec![]),
    ];
    let m = model(
        11,
        nodes.clone(),
        vec![
            ("w", Value::Float(w.clone())),
            ("bb", Value::Float(bias.clone())),
        ],
        vec![info("x", &xv)],
        &["y"],
    );
    let session = Session::new(m).unwrap();
    assert_eq!(session.fused_count(), 0);
    assert_eq!(session.op_types(), ["Conv"]);
    let got = session
        .run(&dev(), &HashMap::from([("x".to_string(), xv.clone())]))
        .unwrap()
        .remove("y")
        .unwrap();
    let (want, _) = plain_conv_ref(
        &x.to_f64_vec(),
        [1, 4, 5, 5],
        &w.to_f64_vec(),
        [4, 4, 1, 1],
        Some(&bias.to_f64_vec()),
        [0; 4],
    );
    assert_close(&got, &[1, 4, 5, 5], &want, 1e-5);
    let bv = Value::Float(bias);
    let m = model(
        11,
        nodes,
        vec![("w", Value::Float(w.clone()))],
        vec![info("x", &xv), info("bb", &bv)],
        &["y"],
    );
    let session = Session::new(m).unwrap();
    assert_eq!(session.fused_count(), 0);
    assert_eq!(session.op_types(), ["Conv", "Add"]);
}

#[test]
fn residual_with_a_free_batch_is_fused_and_checked_when_it_runs() {
    let (w1, w2) = (rand(&[8, 5, 3, 3], 41), rand(&[8, 5, 1, 1], 42));
    let free = |name: &str, rest: &[usize]| ValueInfo {
        name: name.to_string(),
        elem_type: ElemType::Float,
        dims: Some(
            std::iter::once(Dim::Symbolic("N".to_string()))
                .chain(rest.iter().map(|&d| Dim::Known(d)))
                .collect(),
        ),
    };
    let conv = |x: &Tensor, w: &Tensor, wd: [usize; 4], pads: [usize; 4]| {
        plain_conv_ref(
            &x.to_f64_vec(),
            [3, 5, 6, 7],
            &w.to_f64_vec(),
            wd,
            None,
            pads,
        )
    };
    // relu(conv(x, w1) + conv(x, w2)) with a symbolic batch: fused at load, run at batch 3.
    let x = rand(&[3, 5, 6, 7], 43);
    let nodes = vec![
        node(
            "Conv",
            &["x", "w1"],
            &["main"],
            vec![("pads", ints(&[1, 1, 1, 1]))],
        ),
        node("Conv", &["x", "w2"], &["short"], vec![]),
        node("Add", &["main", "short"], &["s"], vec![]),
        node("Relu", &["s"], &["y"], vec![]),
    ];
    let inits = vec![
        ("w1", Value::Float(w1.clone())),
        ("w2", Value::Float(w2.clone())),
    ];
    let session =
        Session::new(model(11, nodes, inits, vec![free("x", &[5, 6, 7])], &["y"])).unwrap();
    assert_eq!(session.fused_count(), 2);
    let feed = HashMap::from([("x".to_string(), Value::Float(x.clone()))]);
    let got = session.run(&dev(), &feed).unwrap().remove("y").unwrap();
    let (main, yd) = conv(&x, &w1, [8, 5, 3, 3], [1; 4]);
    let (short, _) = conv(&x, &w2, [8, 5, 1, 1], [0; 4]);
    let want: Vec<f64> = main
        .iter()
        .zip(&short)
        .map(|(a, b)| (a + b).max(0.0))
        .collect();
    assert_close(&got, &yd, &want, 1e-5);
    // A residual input whose dims are open at load is fused too; fed one that broadcasts
    // ([3, 8, 1, 1]), the step adds it apart.
    let r = rand(&[3, 8, 1, 1], 44);
    let nodes = vec![
        node("Conv", &["x", "w2"], &["c"], vec![]),
        node("Add", &["c", "r"], &["s"], vec![]),
        node("Relu", &["s"], &["y"], vec![]),
    ];
    let inputs = vec![
        free("x", &[5, 6, 7]),
        ValueInfo {
            name: "r".to_string(),
            elem_type: ElemType::Float,
            dims: None,
        },
    ];
    let inits = vec![("w2", Value::Float(w2.clone()))];
    let session = Session::new(model(11, nodes, inits, inputs, &["y"])).unwrap();
    assert_eq!(session.fused_count(), 2);
    let feed = HashMap::from([
        ("x".to_string(), Value::Float(x.clone())),
        ("r".to_string(), Value::Float(r.clone())),
    ]);
    let got = session.run(&dev(), &feed).unwrap().remove("y").unwrap();
    let (c, yd) = conv(&x, &w2, [8, 5, 1, 1], [0; 4]);
    let rs = r.to_f64_vec();
    let plane = yd[2] * yd[3];
    let want: Vec<f64> = c
        .iter()
        .enumerate()
        .map(|(i, v)| (v + rs[i / plane]).max(0.0))
        .collect();
    assert_close(&got, &yd, &want, 1e-5);
}

/// `BN → Mul → Add` of per-channel constants (DenseNet's exports) folds into the convolution
/// before it, or into the BatchNormalization when no convolution precedes it; a constant that
/// varies along another axis stays a Mul.
#[test]
fn per_channel_mul_and_add_fold_into_conv_and_batch_norm() {
    let x = rand(&[2, 3, 7, 9], 61);
    let w = rand(&[5, 3, 3, 3], 62);
    let b = rand(&[5], 63);
    let (scale, shift, mean) = (rand(&[5], 64), rand(&[5], 65), rand(&[5], 66));
    let var = Tensor::from_vec([5], vec![0.5f32, 1.0, 1.5, 0.25, 2.0]).unwrap();
    let mul = rand(&[5, 1, 1], 67);
    let add = Tensor::from_vec([1, 5, 1, 1], rand(&[5], 68).to_f32_vec()).unwrap();
    let bn = |input: &str, out: &str| {
        node(
            "BatchNormalization",
            &[input, "scale", "shift", "mean", "var"],
            &[out],
            vec![("epsilon", Attribute::Float(1e-3))],
        )
    };
    let conv = node(
        "Conv",
        &["x", "w", "b"],
        &["c"],
        vec![
            ("kernel_shape", ints(&[3, 3])),
            ("pads", ints(&[1, 1, 1, 1])),
        ],
    );
    let tail = |from: &str| {
        vec![
            node("Mul", &[from, "mul"], &["m"], vec![]),
            node("Add", &["add", "m"], &["a"], vec![]),
            node("Relu", &["a"], &["y"], vec![]),
        ]
    };
    let inits = |c: usize| {
        let mut v = vec![
            ("scale", Value::Float(scale.clone())),
            ("shift", Value::Float(shift.clone())),
            ("mean", Value::Float(mean.clone())),
            ("var", Value::Float(var.clone())),
            (
                "mul",
                Value::Float(Tensor::from_vec([c, 1, 1], mul.to_f32_vec()[..c].to_vec()).unwrap()),
            ),
            (
                "add",
                Value::Float(
                    Tensor::from_vec([1, c, 1, 1], add.to_f32_vec()[..c].to_vec()).unwrap(),
                ),
            ),
        ];
        v.push(("w", Value::Float(w.clone())));
        v.push(("b", Value::Float(b.clone())));
        v
    };
    // Per channel: y = relu(((v - mean)/sqrt(var + eps)·scale + shift)·mul + add).
    let (s, sh, m, va) = (
        scale.to_f64_vec(),
        shift.to_f64_vec(),
        mean.to_f64_vec(),
        var.to_f64_vec(),
    );
    let (mu, ad) = (mul.to_f64_vec(), add.to_f64_vec());
    let affine = |v: f64, ch: usize| {
        let n = (v - m[ch]) / (va[ch] + f64::from(1e-3f32)).sqrt() * s[ch] + sh[ch];
        (n * mu[ch] + ad[ch]).max(0.0)
    };
    let xv = Value::Float(x.clone());
    let feed = HashMap::from([("x".to_string(), xv.clone())]);

    // Conv → BN → Mul → Add → Relu: one convolution.
    let mut nodes = vec![conv, bn("c", "n")];
    nodes.extend(tail("n"));
    let s1 = Session::new(model(13, nodes, inits(5), vec![info("x", &xv)], &["y"])).unwrap();
    assert_eq!(s1.op_types(), ["Conv"]);
    let got = s1.run(&dev(), &feed).unwrap().remove("y").unwrap();
    let (c, cd) = plain_conv_ref(
        &x.to_f64_vec(),
        [2, 3, 7, 9],
        &w.to_f64_vec(),
        [5, 3, 3, 3],
        Some(&b.to_f64_vec()),
        [1, 1, 1, 1],
    );
    let plane = cd[2] * cd[3];
    let want: Vec<f64> = c
        .iter()
        .enumerate()
        .map(|(i, &v)| affine(v, i / plane % 5))
        .collect();
    assert_close(&got, &[2, 5, 7, 9], &want, 1e-4);

    // BN → Mul → Add → Relu on an input: the BN takes the Mul and the Add ...
    let (scale3, shift3, mean3, var3) = (
        Tensor::from_vec([3], scale.to_f32_vec()[..3].to_vec()).unwrap(),
        Tensor::from_vec([3], shift.to_f32_vec()[..3].to_vec()).unwrap(),
        Tensor::from_vec([3], mean.to_f32_vec()[..3].to_vec()).unwrap(),
        Tensor::from_vec([3], var.to_f32_vec()[..3].to_vec()).unwrap(),
    );
    let mut inits3 = inits(3);
    for (name, t) in [
        ("scale", &scale3),
        ("shift", &shift3),
        ("mean", &mean3),
        ("var", &var3),
    ] {
        if let Some(entry) = inits3.iter_mut().find(|(n, _)| *n == name) {
            entry.1 = Value::Float(t.clone());
        }
    }
    let mut nodes = vec![bn("x", "n")];
    nodes.extend(tail("n"));
    let s2 = Session::new(model(
        13,
        nodes,
        inits3.clone(),
        vec![info("x", &xv)],
        &["y"],
    ))
    .unwrap();
    // ... and the Relu after it fuses as its ReLU flag.
    assert_eq!(s2.op_types(), ["BatchNormalization"]);
    assert_eq!(s2.fused_count(), 1);
    let got = s2.run(&dev(), &feed).unwrap().remove("y").unwrap();
    let plane = 7 * 9;
    let want: Vec<f64> = x
        .to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, &v)| affine(v, i / plane % 3))
        .collect();
    assert_close(&got, &[2, 3, 7, 9], &want, 1e-5);

    // A constant along the width does not fold (nor the Add after it).
    let mut nodes = vec![bn("x", "n")];
    nodes.extend(tail("n"));
    let mut inits_w = inits3;
    if let Some(entry) = inits_w.iter_mut().find(|(n, _)| *n == "mul") {
        entry.1 = Value::Float(rand(&[1, 1, 9], 69));
    }
    let s3 = Session::new(model(13, nodes, inits_w, vec![info("x", &xv)], &["y"])).unwrap();
    assert_eq!(s3.op_types(), ["BatchNormalization", "Mul", "Add", "Relu"]);
}

/// Transposes that keep trailing axes in place (a channel shuffle) move whole blocks: checked
/// against an element-by-element reference on odd dims.
#[test]
fn transposes_keeping_trailing_axes_match_the_reference() {
    let dims = [2usize, 3, 5, 7, 3];
    let x = arange(&dims);
    let xs = floats_of(&x);
    let src_strides = [315usize, 105, 21, 3, 1];
    for perm in [
        [0usize, 2, 1, 3, 4],
        [2, 0, 1, 3, 4],
        [1, 2, 0, 3, 4],
        [3, 1, 0, 2, 4],
        [4, 3, 2, 1, 0],
    ] {
        let perm_attr: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        let got = run_one(
            13,
            node(
                "Transpose",
                &["x0"],
                &["y"],
                vec![("perm", ints(&perm_attr))],
            ),
            vec![x.clone()],
        )
        .unwrap();
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let total: usize = dims.iter().product();
        let want: Vec<f64> = (0..total)
            .map(|flat| {
                // Output multi-index of `flat`, then the source offset it reads.
                let mut rest = flat;
                let mut from = 0;
                for axis in (0..5).rev() {
                    let i = rest % out_dims[axis];
                    rest /= out_dims[axis];
                    from += i * src_strides[perm[axis]];
                }
                xs[from]
            })
            .collect();
        assert_close(&got, &out_dims, &want, 0.0);
    }
}

/// A session's later runs reuse the buffers of its earlier runs' dead values: each run's
/// outputs are bit for bit those of a fresh session, whatever the earlier inputs were.
#[test]
fn later_runs_reusing_buffers_match_a_fresh_session() {
    let nodes = vec![
        node(
            "Conv",
            &["x", "w1"],
            &["a"],
            vec![("pads", ints(&[1, 1, 1, 1]))],
        ),
        node("Relu", &["a"], &["b"], vec![]),
        node(
            "Conv",
            &["b", "w2"],
            &["c"],
            vec![("pads", ints(&[1, 1, 1, 1]))],
        ),
        node("Add", &["c", "b"], &["d"], vec![]),
        node("Relu", &["d"], &["e"], vec![]),
        node(
            "MaxPool",
            &["e"],
            &["f"],
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2]))],
        ),
        node("Conv", &["f", "w3"], &["g"], vec![]),
        node("Sigmoid", &["g"], &["y"], vec![]),
    ];
    let inits = || {
        vec![
            ("w1", Value::Float(rand(&[17, 3, 3, 3], 71))),
            ("w2", Value::Float(rand(&[17, 17, 3, 3], 72))),
            ("w3", Value::Float(rand(&[33, 17, 1, 1], 73))),
        ]
    };
    let x = |seed| Value::Float(rand(&[2, 3, 33, 31], seed));
    let make = || {
        Session::new(model(
            13,
            nodes.clone(),
            inits(),
            vec![info("x", &x(0))],
            &["y"],
        ))
    };
    let bits = |session: &Session, seed| {
        let feed = HashMap::from([("x".to_string(), x(seed))]);
        let out = session.run(&dev(), &feed).unwrap().remove("y").unwrap();
        let Value::Float(t) = out else {
            panic!("a float output")
        };
        t.to_f32_vec()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    let reused = make().unwrap();
    for seed in [81, 82, 83, 81] {
        let fresh = make().unwrap();
        assert_eq!(bits(&reused, seed), bits(&fresh, seed), "input seed {seed}");
    }
}

#[test]
fn conv_relu_maxpool_is_one_step_and_matches_f64() {
    // A convolution output of 2·48·105·99 floats (3.8 MiB) stays under the CPU node's bound
    // for banding (run as the two ops); 2·64·131·129 (8.3 MiB) is banded. Both are one step.
    for (xd, o) in [([2, 3, 105, 99], 48), ([2, 3, 131, 129], 64)] {
        let x = rand(&xd, 21);
        let w = rand(&[o, 3, 3, 3], 22);
        let b = rand(&[o], 23);
        let nodes = vec![
            node(
                "Conv",
                &["x", "w", "b"],
                &["c"],
                vec![
                    ("kernel_shape", ints(&[3, 3])),
                    ("pads", ints(&[0, 1, 2, 1])),
                ],
            ),
            node("Relu", &["c"], &["r"], vec![]),
            node(
                "MaxPool",
                &["r"],
                &["y"],
                vec![
                    ("kernel_shape", ints(&[3, 3])),
                    ("strides", ints(&[2, 2])),
                    ("pads", ints(&[1, 1, 0, 1])),
                ],
            ),
        ];
        let xv = Value::Float(x.clone());
        let inits = vec![
            ("w", Value::Float(w.clone())),
            ("b", Value::Float(b.clone())),
        ];
        let session = Session::new(model(13, nodes, inits, vec![info("x", &xv)], &["y"])).unwrap();
        assert_eq!(session.fused_count(), 2, "Relu and MaxPool into the Conv");
        assert_eq!(session.op_types(), ["Conv"]);
        let got = session
            .run(&dev(), &HashMap::from([("x".to_string(), xv)]))
            .unwrap()
            .remove("y")
            .unwrap();
        let (c, cd) = conv_ref(
            &x.to_f64_vec(),
            xd,
            &w.to_f64_vec(),
            [o, 3, 3, 3],
            Some(&b.to_f64_vec()),
            [1, 1],
            [0, 1, 2, 1],
            [1, 1],
            1,
        );
        let r: Vec<f64> = c.iter().map(|v| v.max(0.0)).collect();
        let (y, yd) = pool_ref(&r, cd, [3, 3], [2, 2], [1, 1, 0, 1], true, false, false);
        assert_close(&got, &yd, &y, 1e-5);
    }
}

/// The first GPU adapter, or `None` (after saying why) when there is none and none is required.
fn gpu_node() -> Option<accelmesh::node::gpu::GpuDevice> {
    gpu_node_with(accelmesh::node::gpu::LimitOverrides::default())
}

/// [`gpu_node`] with its limits lowered by `overrides`.
fn gpu_node_with(
    overrides: accelmesh::node::gpu::LimitOverrides,
) -> Option<accelmesh::node::gpu::GpuDevice> {
    use accelmesh::node::gpu::GpuDevice;
    match GpuDevice::open(0, 0, overrides) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                std::env::var("ACCELMESH_REQUIRE_GPU").map_or(true, |v| v != "1"),
                "ACCELMESH_REQUIRE_GPU=1 but no GPU adapter opened: {e}"
            );
            eprintln!("skipping: no GPU adapter ({e})");
            None
        }
    }
}

#[test]
fn a_session_on_a_gpu_node_keeps_its_values_there() {
    let Some(gpu) = gpu_node() else { return };
    // Two branches of convolutions (one residual, one pooled, one through an LRN the GPU path
    // leaves to the host) joined by a Concat, reshaped by a constant shape, then a classifier.
    let conv = |inputs: &[&str], out: &str, k: i64, pad: i64| {
        node(
            "Conv",
            inputs,
            &[out],
            vec![
                ("kernel_shape", ints(&[k, k])),
                ("pads", ints(&[pad, pad, pad, pad])),
            ],
        )
    };
    let nodes = vec![
        conv(&["x", "w1", "b1"], "c1", 3, 1),
        node("Relu", &["c1"], &["r1"], vec![]),
        conv(&["r1", "w2", "b2"], "c2", 1, 0),
        node("Add", &["c2", "r1"], &["s"], vec![]),
        node("Relu", &["s"], &["rs"], vec![]),
        conv(&["x", "w3"], "c3", 3, 1),
        node("LRN", &["c3"], &["l"], vec![("size", Attribute::Int(3))]),
        node(
            "Concat",
            &["rs", "l"],
            &["cat"],
            vec![("axis", Attribute::Int(1))],
        ),
        node(
            "MaxPool",
            &["cat"],
            &["p"],
            vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))],
        ),
        node("Reshape", &["p", "shape"], &["f"], vec![]),
        node(
            "Gemm",
            &["f", "wf", "bf"],
            &["g"],
            vec![("transB", Attribute::Int(1))],
        ),
        node("Softmax", &["g"], &["y"], vec![("axis", Attribute::Int(1))]),
    ];
    let (n, c, h) = (3, 5, 9);
    let inits = vec![
        ("w1", Value::Float(rand(&[6, c, 3, 3], 11))),
        ("b1", Value::Float(rand(&[6], 12))),
        ("w2", Value::Float(rand(&[6, 6, 1, 1], 13))),
        ("b2", Value::Float(rand(&[6], 14))),
        ("w3", Value::Float(rand(&[7, c, 3, 3], 15))),
        ("shape", iv(&[2], &[n as i64, -1])),
        ("wf", Value::Float(rand(&[17, 13 * 4 * 4], 16))),
        ("bf", Value::Float(rand(&[17], 17))),
    ];
    let x = Value::Float(rand(&[n, c, h, h], 18));
    let session =
        Session::new(model(13, nodes, inits, vec![info("x", &x)], &["y"])).expect("session");
    let feed = HashMap::from([("x".to_string(), x)]);
    let want = session
        .run(&dev(), &feed)
        .expect("cpu run")
        .remove("y")
        .unwrap();
    let first = session
        .run(&gpu, &feed)
        .expect("gpu run")
        .remove("y")
        .unwrap();
    let before = gpu.transfer_stats();
    let second = session
        .run(&gpu, &feed)
        .expect("gpu run")
        .remove("y")
        .unwrap();
    let after = gpu.transfer_stats();
    assert_close(&first, &[n, 17], &f64s(&want), 1e-4);
    assert_close(&second, &[n, 17], &f64s(&want), 1e-4);
    // A repeated run uploads the input and the LRN's output, and downloads the LRN's input
    // and the result: the weights stay on the node, the rest of the values never leave it.
    assert_eq!(after.uploads - before.uploads, 2, "{before:?} -> {after:?}");
    assert_eq!(
        after.downloads - before.downloads,
        2,
        "{before:?} -> {after:?}"
    );
    // Profiled, the same steps (ops and shapes) as on the CPU node, each timed on its own.
    let (out, profile) = session.run_profiled(&gpu, &feed).expect("profiled gpu run");
    assert_close(&out["y"], &[n, 17], &f64s(&want), 1e-4);
    let (_, on_cpu) = session
        .run_profiled(&dev(), &feed)
        .expect("profiled cpu run");
    let steps = |p: &accelmesh::onnx::exec::Profile| {
        p.steps
            .iter()
            .map(|s| {
                (
                    s.op.clone(),
                    s.input_shapes.clone(),
                    s.output_shapes.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&profile), steps(&on_cpu));
    assert!(profile.steps.iter().all(|s| s.seconds > 0.0));
}

#[test]
fn a_gpu_session_takes_the_host_path_where_the_gpu_path_would_differ() {
    use accelmesh::node::gpu::LimitOverrides;
    // Buffers of 16 KiB at most: the 64×100 weight (25.6 KB) takes the host path's tiling.
    let Some(gpu) = gpu_node_with(LimitOverrides {
        max_buffer: Some(16 << 10),
        ..LimitOverrides::default()
    }) else {
        return;
    };
    let gemm = |c_dims: &[usize]| {
        let x = Value::Float(rand(&[2, 100], 21));
        let inits = vec![
            ("w", Value::Float(rand(&[64, 100], 22))),
            ("c", Value::Float(rand(c_dims, 23))),
        ];
        let nodes = vec![node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![("transB", Attribute::Int(1))],
        )];
        let session =
            Session::new(model(13, nodes, inits, vec![info("x", &x)], &["y"])).expect("session");
        let feed = HashMap::from([("x".to_string(), x)]);
        let cpu = session
            .run(&dev(), &feed)
            .map(|mut o| o.remove("y").unwrap());
        let on_gpu = session.run(&gpu, &feed).map(|mut o| o.remove("y").unwrap());
        (cpu, on_gpu)
    };
    let (cpu, on_gpu) = gemm(&[64]);
    let want = f64s(&cpu.expect("cpu run"));
    assert_close(&on_gpu.expect("gpu run"), &[2, 64], &want, 1e-4);
    // A C that would grow the product is the host path's error on both nodes.
    let (cpu, on_gpu) = gemm(&[3, 2, 64]);
    let (cpu, on_gpu) = (cpu.unwrap_err(), on_gpu.unwrap_err());
    assert!(cpu.to_string().contains("does not broadcast"), "{cpu}");
    assert_eq!(cpu.to_string(), on_gpu.to_string());
}

#[test]
fn a_session_on_a_lost_gpu_node_fails_with_a_typed_error() {
    let Some(gpu) = gpu_node() else { return };
    let x = Value::Float(rand(&[2, 3, 6, 6], 31));
    let nodes = vec![
        node(
            "Conv",
            &["x", "w"],
            &["c"],
            vec![("kernel_shape", ints(&[3, 3]))],
        ),
        node("Relu", &["c"], &["y"], vec![]),
    ];
    let inits = vec![("w", Value::Float(rand(&[4, 3, 3, 3], 32)))];
    let session =
        Session::new(model(13, nodes, inits, vec![info("x", &x)], &["y"])).expect("session");
    let feed = HashMap::from([("x".to_string(), x)]);
    session.run(&gpu, &feed).expect("a run before the loss");
    gpu.inject_device_loss();
    for _ in 0..2 {
        match session.run(&gpu, &feed) {
            Err(Error::Device { .. }) => {}
            other => panic!("expected a device error, got {other:?}"),
        }
    }
}
