//! Models on the mesh: an ONNX model loaded once ([`Model::load`]), run on the DRAC's nodes
//! ([`Model::run`]) — whole on the node predicted fastest, or with its batch split across
//! nodes — with a [`ModelReport`] of the placement, per-node time and energy, and a stream of
//! requests spread over the free nodes ([`Model::run_stream`]).

mod batch;
pub mod demo;
mod exec;
pub mod plan;
mod report;
pub mod split;
mod stream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use batch::BatchLayout;
pub use plan::{ModelPlan, PlannedPart, Strategy};
pub use report::{ModelReport, PartReport};

use crate::drac::Drac;
use crate::node::Device;
use crate::onnx::exec::{Profile, Session};
use crate::onnx::{Attribute, Dim, Model as OnnxModel, Value, ValueInfo};
use crate::tensor::{Shape, Tensor};
use crate::{Error, Result};

/// Operations assumed per sample when the graph's shapes do not give a count.
const UNKNOWN_FLOPS: u64 = 1 << 30;

/// A model ready to run: its graph prepared once (constants folded, kernels fused).
pub struct Model {
    name: String,
    session: Arc<Session>,
    flops_per_sample: u64,
    /// Of those, the operations in convolutions and matrix products large enough to split
    /// across nodes ([`split::SPLIT_MIN_FLOPS`]).
    split_flops_per_sample: u64,
    /// How many such convolutions one run has.
    split_convs: usize,
    /// Measured over predicted seconds per sample on each node (by perf-model key), refined
    /// run by run: the model's own efficiency on each node beyond the calibrated kernel rates.
    corrections: Mutex<HashMap<String, f64>>,
    /// The channel splits run so far (by correction key), whose first runs are not learned.
    split_runs: Mutex<std::collections::HashSet<String>>,
}

/// Options of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Priority in the DRAC's queue (higher first).
    pub priority: u8,
    /// Most nodes the run may use (1 keeps it whole on one node).
    pub max_nodes: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            priority: 0,
            max_nodes: usize::MAX,
        }
    }
}

/// The result of one run: the graph outputs by name, and what happened.
#[derive(Debug, Clone)]
pub struct ModelRun {
    /// Outputs by name.
    pub outputs: HashMap<String, Value>,
    /// Placement, times and energy.
    pub report: ModelReport,
}

impl ModelRun {
    /// The float output `name` as a tensor.
    pub fn output(&self, name: &str) -> Result<&Tensor> {
        self.outputs
            .get(name)
            .ok_or_else(|| {
                Error::shape("model output", format!("the model has no output `{name}`"))
            })?
            .as_tensor()
    }
}

impl Model {
    /// Loads an `.onnx` file and prepares it (see [`Model::from_onnx`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let onnx = OnnxModel::load(path)?;
        let mut model = Model::from_onnx(onnx)?;
        if model.name.is_empty()
            && let Some(stem) = path.file_stem()
        {
            model.name = stem.to_string_lossy().into_owned();
        }
        Ok(model)
    }

    /// Prepares a decoded ONNX model; unsupported operators are refused here, naming the
    /// node, the operator and the opset.
    pub fn from_onnx(onnx: OnnxModel) -> Result<Model> {
        let heavy = heavy_nodes(&onnx);
        let name = onnx.graph.name.clone();
        // Shapes with a free dimension are not inferred at load: count the work on a copy
        // whose free input dimensions are 1 (one sample).
        let probe = has_free_dims(&onnx).then(|| with_unit_dims(&onnx));
        let session = Session::new(onnx)?;
        let count = |s: &Session| -> Vec<(bool, u64)> {
            heavy
                .iter()
                .map(|h| (h.splits_in_place(s), h.flops(s)))
                .collect()
        };
        let mut counts = count(&session);
        if counts.iter().all(|c| c.1 == 0)
            && let Some(probe) = probe
            && let Ok(unit) = Session::new(probe)
        {
            counts = count(&unit);
        }
        let counted: u64 = counts.iter().map(|c| c.1).sum();
        let splittable: Vec<u64> = counts
            .iter()
            .filter(|&&(splits, f)| splits && f >= split::SPLIT_MIN_FLOPS)
            .map(|c| c.1)
            .collect();
        Ok(Model {
            name,
            session: Arc::new(session),
            flops_per_sample: if counted > 0 { counted } else { UNKNOWN_FLOPS },
            split_flops_per_sample: splittable.iter().sum(),
            split_convs: splittable.len(),
            corrections: Mutex::new(HashMap::new()),
            split_runs: Mutex::default(),
        })
    }

    /// The graph's name (or the file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared inputs the caller feeds.
    pub fn inputs(&self) -> &[ValueInfo] {
        self.session.inputs()
    }

    /// The declared outputs.
    pub fn outputs(&self) -> &[ValueInfo] {
        self.session.outputs()
    }

    /// The prepared graph.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Floating-point operations of one run at the declared shapes (convolutions and matrix
    /// products), the planner's measure of work.
    pub fn flops_per_sample(&self) -> u64 {
        self.flops_per_sample
    }

    /// Runs float `inputs` (by name) on the DRAC's nodes.
    pub fn run(&self, drac: &Drac, inputs: &HashMap<String, Tensor>) -> Result<ModelRun> {
        let values = inputs
            .iter()
            .map(|(k, t)| (k.clone(), Value::Float(t.clone())))
            .collect();
        self.run_values(drac, &values, &RunOptions::default())
    }

    /// Runs `inputs` of any element type on the DRAC's nodes with `options` (a copy of them
    /// goes to the node; [`Model::run_shared`] shares them instead).
    pub fn run_values(
        &self,
        drac: &Drac,
        inputs: &HashMap<String, Value>,
        options: &RunOptions,
    ) -> Result<ModelRun> {
        exec::run(self, drac, &Arc::new(inputs.clone()), options)
    }

    /// [`Model::run_values`] on inputs shared with the node that runs them whole, without a
    /// copy per run (a 224×224 image batch of 8 is 4.8 MB).
    pub fn run_shared(
        &self,
        drac: &Drac,
        inputs: &Arc<HashMap<String, Value>>,
        options: &RunOptions,
    ) -> Result<ModelRun> {
        exec::run(self, drac, inputs, options)
    }

    /// Runs `inputs` on one device directly, outside any mesh.
    pub fn run_on(
        &self,
        device: &dyn Device,
        inputs: &HashMap<String, Value>,
    ) -> Result<HashMap<String, Value>> {
        exec::run_on_device(
            &self.session,
            device,
            inputs,
            self.layout(inputs),
            self.flops_per_sample,
        )
    }

    /// [`Model::run_on`], timing every step: a fixed-batch model fed several chunks reports
    /// each step's time summed over the chunks ([`Profile::chained`]).
    pub fn run_profiled_on(
        &self,
        device: &dyn Device,
        inputs: &HashMap<String, Value>,
    ) -> Result<(HashMap<String, Value>, Profile)> {
        exec::run_profiled_on_device(&self.session, device, inputs, self.layout(inputs))
    }

    /// How `inputs` divide along the batch axis (`None`: they run whole, as given).
    pub fn layout(&self, inputs: &HashMap<String, Value>) -> Option<BatchLayout> {
        batch::layout(self.session.inputs(), inputs)
    }

    /// Measured over predicted time per sample on each node so far, by perf-model key.
    pub fn corrections(&self) -> HashMap<String, f64> {
        self.corrections
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Folds one observation of a channel split into its correction `key`, except the first
    /// over those nodes: that run packs the parts' weights and faults their buffers in (on
    /// ResNet-50, 65 ms against 37 from the second run on), and a first ratio that large
    /// would keep the split from being chosen again.
    fn learn_split(&self, key: &str, measured_s: f64, predicted_s: f64) {
        let first = self
            .split_runs
            .lock()
            .map(|mut seen| seen.insert(key.to_string()))
            .unwrap_or(false);
        if !first {
            self.learn(key, measured_s, predicted_s);
        }
    }

    /// Folds one observation into node `key`'s correction (geometric moving average).
    fn learn(&self, key: &str, measured_s: f64, predicted_s: f64) {
        let ratio = measured_s / predicted_s;
        if !(ratio.is_finite() && ratio > 0.0) {
            return;
        }
        if let Ok(mut l) = self.corrections.lock() {
            l.entry(key.to_string())
                .and_modify(|old| *old = (old.ln() * 0.5 + ratio.ln() * 0.5).exp())
                .or_insert(ratio);
        }
    }
}

/// Whether a graph input declares a dimension that is not a fixed size.
fn has_free_dims(onnx: &OnnxModel) -> bool {
    onnx.graph.inputs.iter().any(|i| {
        i.dims
            .as_ref()
            .is_some_and(|d| d.iter().any(|x| !matches!(x, Dim::Known(_))))
    })
}

/// A copy of `onnx` whose inputs' free dimensions are 1.
fn with_unit_dims(onnx: &OnnxModel) -> OnnxModel {
    let mut copy = onnx.clone();
    for input in &mut copy.graph.inputs {
        if let Some(dims) = &mut input.dims {
            for d in dims.iter_mut() {
                if !matches!(d, Dim::Known(_)) {
                    *d = Dim::Known(1);
                }
            }
        }
    }
    copy
}

/// A convolution or matrix product of the graph, with what its work count needs.
struct Heavy {
    op: String,
    weight: Option<Vec<usize>>,
    input: String,
    output: String,
    /// A Gemm whose B is stored transposed (`transB`).
    trans_b: bool,
}

/// The graph's convolutions and matrix products (read before the graph is prepared, while
/// the weights are still the file's).
fn heavy_nodes(onnx: &OnnxModel) -> Vec<Heavy> {
    let g = &onnx.graph;
    g.nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op_type.as_str(),
                "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
            )
        })
        .filter_map(|n| {
            let output = n.outputs.first()?.clone();
            let input = n.inputs.first()?.clone();
            let weight = n
                .inputs
                .get(1)
                .and_then(|w| g.initializers.get(w))
                .map(|v| v.dims().to_vec());
            Some(Heavy {
                op: n.op_type.clone(),
                weight,
                input,
                output,
                trans_b: matches!(n.attributes.get("transB"), Some(Attribute::Int(1))),
            })
        })
        .collect()
}

impl Heavy {
    /// Whether a channel split cuts the node into blocks it writes in place
    /// ([`split::ChannelSplit`]): a convolution, a product of several rows, or a Gemm of one
    /// row whose B is stored transposed (columns cut as contiguous rows of B).
    fn splits_in_place(&self, session: &Session) -> bool {
        let rows = session
            .inferred_shape(&self.output)
            .filter(|s| s.dims().len() == 2)
            .map(|s| s.dims()[0]);
        match self.op.as_str() {
            "Conv" => true,
            "Gemm" | "MatMul" => rows.is_some_and(|r| r >= 2) || self.trans_b,
            _ => false,
        }
    }

    /// Multiply-adds ×2 of the node at the shapes inferred at load (0 when unknown).
    fn flops(&self, session: &Session) -> u64 {
        let numel = |s: Shape| s.numel().unwrap_or(0) as u64;
        let Some(out) = session.inferred_shape(&self.output) else {
            return 0;
        };
        let out_n = numel(out.clone());
        let depth = match (self.op.as_str(), &self.weight) {
            ("Conv", Some(w)) if !w.is_empty() && w[0] > 0 => {
                w.iter().product::<usize>() as u64 / w[0] as u64
            }
            ("ConvTranspose", Some(w)) if w.len() > 1 => {
                // Each input element scatters into C_out/g · kH · kW outputs.
                let per_in: u64 = w[1..].iter().product::<usize>() as u64;
                let in_n = session.inferred_shape(&self.input).map_or(0, numel);
                return 2 * in_n * per_in;
            }
            _ => session
                .inferred_shape(&self.input)
                .and_then(|s| s.dims().last().copied())
                .unwrap_or(0) as u64,
        };
        2 * out_n * depth
    }
}
