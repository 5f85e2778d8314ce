//! The built-in demo network of the default main job: a small ResNet (a strided stem, three
//! stages of residual blocks with batch normalisation, global pooling and a classifier) built
//! in code with seeded weights, and the job that runs it across the mesh and on the best
//! single node.

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{Model, ModelReport, ModelRun, RunOptions};
use crate::Result;
use crate::bench::warm_up;
use crate::drac::Drac;
use crate::onnx::{Attribute, Dim, ElemType, Graph, Model as OnnxModel, Node, Value, ValueInfo};
use crate::tensor::{DType, Tensor};

/// Name of the demo network's input.
pub const INPUT: &str = "image";
/// Name of its output (class probabilities).
pub const OUTPUT: &str = "probabilities";
/// Side of the square input image.
pub const IMAGE_SIDE: usize = 64;
/// Classes of the classifier.
pub const CLASSES: usize = 10;
/// Batch of the default main job.
pub const BATCH: usize = 8;

/// Builds the graph: its weights and batch-norm statistics are seeded random.
struct Builder {
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    inits: HashMap<String, Value>,
    counter: usize,
}

impl Builder {
    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}_{}", self.counter)
    }

    fn tensor(&mut self, name: &str, dims: Vec<usize>, values: impl Fn(&mut ChaCha8Rng) -> f32) {
        let n = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| values(&mut self.rng)).collect();
        let t = Tensor::from_vec(dims, data).expect("element count matches the dims");
        self.inits.insert(name.to_string(), Value::Float(t));
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attrs: Vec<(&str, Attribute)>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(Node {
            name: out.clone(),
            op_type: op.to_string(),
            domain: String::new(),
            inputs,
            outputs: vec![out.clone()],
            attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        out
    }

    /// Conv (He-initialised, no bias) then batch normalisation, optionally ReLU.
    fn conv_bn(
        &mut self,
        x: String,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> String {
        let w = self.fresh("w");
        let scale = (2.0 / (c_in * k * k) as f32).sqrt();
        self.tensor(&w, vec![c_out, c_in, k, k], |r| {
            scale * r.random_range(-1.7f32..1.7)
        });
        let pad = (k / 2) as i64;
        let conv = self.node(
            "Conv",
            vec![x, w],
            vec![
                ("kernel_shape", Attribute::Ints(vec![k as i64, k as i64])),
                (
                    "strides",
                    Attribute::Ints(vec![stride as i64, stride as i64]),
                ),
                ("pads", Attribute::Ints(vec![pad, pad, pad, pad])),
            ],
        );
        let names: Vec<String> = ["gamma", "beta", "mean", "var"]
            .iter()
            .map(|n| self.fresh(n))
            .collect();
        self.tensor(&names[0], vec![c_out], |r| r.random_range(0.8f32..1.2));
        self.tensor(&names[1], vec![c_out], |r| r.random_range(-0.1f32..0.1));
        self.tensor(&names[2], vec![c_out], |r| r.random_range(-0.1f32..0.1));
        self.tensor(&names[3], vec![c_out], |r| r.random_range(0.5f32..1.5));
        let mut inputs = vec![conv];
        inputs.extend(names);
        let bn = self.node(
            "BatchNormalization",
            inputs,
            vec![("epsilon", Attribute::Float(1e-5))],
        );
        if relu {
            self.node("Relu", vec![bn], vec![])
        } else {
            bn
        }
    }

    /// A basic residual block: two 3×3 convolutions and the shortcut (projected by a strided
    /// 1×1 convolution when the shape changes), added, then ReLU.
    fn block(&mut self, x: String, c_in: usize, c_out: usize, stride: usize) -> String {
        let a = self.conv_bn(x.clone(), c_in, c_out, 3, stride, true);
        let b = self.conv_bn(a, c_out, c_out, 3, 1, false);
        let shortcut = if stride != 1 || c_in != c_out {
            self.conv_bn(x, c_in, c_out, 1, stride, false)
        } else {
            x
        };
        let sum = self.node("Add", vec![b, shortcut], vec![]);
        self.node("Relu", vec![sum], vec![])
    }
}

/// The demo network as an ONNX graph (opset 13), free batch dimension `N`, input
/// `[N, 3, 64, 64]`, output `[N, 10]`; the same `seed` gives the same weights.
pub fn network(seed: u64) -> OnnxModel {
    let mut b = Builder {
        rng: ChaCha8Rng::seed_from_u64(seed),
        nodes: Vec::new(),
        inits: HashMap::new(),
        counter: 0,
    };
    let mut x = b.conv_bn(INPUT.to_string(), 3, 32, 3, 2, true);
    x = b.block(x, 32, 32, 1);
    x = b.block(x, 32, 32, 1);
    x = b.block(x, 32, 64, 2);
    x = b.block(x, 64, 64, 1);
    x = b.block(x, 64, 128, 2);
    x = b.block(x, 128, 128, 1);
    let pooled = b.node("GlobalAveragePool", vec![x], vec![]);
    let flat = b.node("Flatten", vec![pooled], vec![("axis", Attribute::Int(1))]);
    let (w, bias) = (b.fresh("fc_w"), b.fresh("fc_b"));
    let scale = (1.0f32 / 128.0).sqrt();
    b.tensor(&w, vec![CLASSES, 128], |r| {
        scale * r.random_range(-1.7f32..1.7)
    });
    b.tensor(&bias, vec![CLASSES], |r| r.random_range(-0.1f32..0.1));
    let logits = b.node(
        "Gemm",
        vec![flat, w, bias],
        vec![("transB", Attribute::Int(1))],
    );
    let last = b.nodes.len();
    b.node("Softmax", vec![logits], vec![("axis", Attribute::Int(1))]);
    b.nodes[last].outputs = vec![OUTPUT.to_string()];
    OnnxModel {
        ir_version: 8,
        producer: "accelmesh demo".to_string(),
        opsets: HashMap::from([(String::new(), 13)]),
        graph: Graph {
            name: "accelmesh-demo-resnet".to_string(),
            nodes: b.nodes,
            initializers: b.inits,
            inputs: vec![ValueInfo {
                name: INPUT.to_string(),
                elem_type: ElemType::Float,
                dims: Some(vec![
                    Dim::Symbolic("N".to_string()),
                    Dim::Known(3),
                    Dim::Known(IMAGE_SIDE),
                    Dim::Known(IMAGE_SIDE),
                ]),
            }],
            outputs: vec![ValueInfo {
                name: OUTPUT.to_string(),
                elem_type: ElemType::Float,
                dims: Some(vec![Dim::Symbolic("N".to_string()), Dim::Known(CLASSES)]),
            }],
        },
    }
}

/// Seeded random images for the demo network, `[batch, 3, 64, 64]`.
pub fn images(batch: usize, seed: u64) -> Result<HashMap<String, Value>> {
    let t = Tensor::random([batch, 3, IMAGE_SIDE, IMAGE_SIDE], DType::F32, seed)?;
    Ok(HashMap::from([(INPUT.to_string(), Value::Float(t))]))
}

/// What the default main job measured: the mesh run and the best single node's run.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Samples per run.
    pub batch: usize,
    /// Timed runs of each configuration.
    pub reps: usize,
    /// Floating-point operations of one sample.
    pub flops_per_sample: u64,
    /// The mesh run closest to the median time.
    pub mesh: ModelReport,
    /// Median seconds of the mesh runs.
    pub mesh_s: f64,
    /// The best single node's run closest to the median time.
    pub single: ModelReport,
    /// Median seconds of the single-node runs.
    pub single_s: f64,
    /// Largest difference between the mesh's and the single node's outputs.
    pub max_abs_diff: f64,
}

impl DemoReport {
    /// How many times faster the mesh ran than the best single node.
    pub fn speedup(&self) -> f64 {
        self.single_s / self.mesh_s
    }
}

/// Seed of the demo network's weights.
const WEIGHT_SEED: u64 = 0xDE40;
/// Seed of its input images.
const IMAGE_SEED: u64 = 0x1A6E;

/// The run of median time among `reps` runs of `model` on `inputs` (after a warm-up).
fn median_run(
    model: &Model,
    drac: &Drac,
    inputs: &HashMap<String, Value>,
    opts: &RunOptions,
    reps: usize,
) -> Result<ModelRun> {
    let inputs = Arc::new(inputs.clone());
    warm_up(|_| model.run_shared(drac, &inputs, opts))?;
    let mut runs = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        runs.push(model.run_shared(drac, &inputs, opts)?);
    }
    runs.sort_by(|a, b| a.report.elapsed_s.total_cmp(&b.report.elapsed_s));
    Ok(runs.swap_remove(runs.len() / 2))
}

/// Median seconds of `reps` runs (after a warm-up) of the demo network, whole on the fastest
/// node of `drac` (for comparing with another node set, such as the CPU as one node).
pub fn time_whole(drac: &Drac, batch: usize, reps: usize) -> Result<f64> {
    let model = Model::from_onnx(network(WEIGHT_SEED))?;
    let inputs = images(batch, IMAGE_SEED)?;
    let opts = RunOptions {
        max_nodes: 1,
        ..RunOptions::default()
    };
    Ok(median_run(&model, drac, &inputs, &opts, reps)?
        .report
        .elapsed_s)
}

/// Runs the demo network on `drac`'s nodes, `reps` times across the mesh and `reps` times on
/// the best single node (after a warm-up of each), and compares them.
pub fn run_demo(drac: &Drac, batch: usize, reps: usize) -> Result<DemoReport> {
    let model = Model::from_onnx(network(WEIGHT_SEED))?;
    let inputs = images(batch, IMAGE_SEED)?;
    let mesh_opts = RunOptions::default();
    let single_opts = RunOptions {
        max_nodes: 1,
        ..RunOptions::default()
    };
    let single = median_run(&model, drac, &inputs, &single_opts, reps)?;
    let mesh = median_run(&model, drac, &inputs, &mesh_opts, reps)?;
    let (single_s, mesh_s) = (single.report.elapsed_s, mesh.report.elapsed_s);
    let a = mesh.output(OUTPUT)?.to_f64_vec();
    let b = single.output(OUTPUT)?.to_f64_vec();
    let max_abs_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    Ok(DemoReport {
        batch,
        reps: reps.max(1),
        flops_per_sample: model.flops_per_sample(),
        mesh: mesh.report,
        mesh_s,
        single: single.report,
        single_s,
        max_abs_diff,
    })
}
