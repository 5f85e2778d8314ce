//! AI nodes: the [`Device`] trait (how to run an op on one device), what a device reports
//! about itself, and the `--nodes` spec that says which nodes to bring up.

mod awake;
mod cpu;
pub mod gpu;
mod pin;
pub(crate) mod recycle;
pub mod sim;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

pub use cpu::{CpuDevice, host_cpu_name, host_memory_bytes, host_threads};

use crate::op::Op;
use crate::tensor::{DType, Tensor, TensorView};
use crate::{Error, Result};

/// Most nodes one spec may bring up (each CPU node owns a thread pool).
pub const MAX_NODES: usize = 256;
/// Most threads one CPU node may own.
pub const MAX_THREADS_PER_NODE: usize = 1024;

/// One compute device that runs ops on host tensors.
pub trait Device: Send + Sync {
    /// What the device is and what it can do.
    fn info(&self) -> &DeviceInfo;

    /// Runs `op` on `inputs` and returns its outputs, or a typed error for bad inputs.
    fn execute(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>>;

    /// Runs `op` into `outputs` allocated beforehand (shapes and dtypes as `execute` returns
    /// them), so repeated runs reuse memory. The default runs `execute` and moves the results
    /// in after checking them.
    fn execute_into(&self, op: &Op, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<()> {
        let results = self.execute(op, inputs)?;
        check_outputs(op, outputs, &results)?;
        for (dst, src) in outputs.iter_mut().zip(results) {
            *dst = src;
        }
        Ok(())
    }

    /// Runs a single-output op on borrowed inputs, writing its f32 output (row-major) into
    /// `out`, which must hold exactly as many elements. A part of a split job reads its slices
    /// of the job's inputs in place and writes straight into its block of the job's output.
    /// The default copies the views, runs `execute` and copies the result in.
    fn execute_view(&self, op: &Op, inputs: &[TensorView<'_>], out: &mut [f32]) -> Result<()> {
        execute_view_by_copy(self, op, inputs, out)
    }

    /// Runs a convolution `[x, w, bias?]` adding into `output`, which already holds its
    /// residual (f32, the output's shape): `output = relu?(conv + bias + output)`, without the
    /// copy a residual input costs. `None` for devices (or ops) without that path.
    fn conv_accumulate(
        &self,
        _op: &Op,
        _inputs: &[&Tensor],
        _output: &mut Tensor,
    ) -> Option<Result<()>> {
        None
    }

    /// [`Device::conv_accumulate`] on borrowed inputs into `out` (f32, the output's shape,
    /// already holding its residual): a part of a convolution split by output channels adds
    /// into its block of a larger output in place. `None` for devices without that path.
    fn conv_accumulate_view(
        &self,
        _op: &Op,
        _inputs: &[TensorView<'_>],
        _out: &mut [f32],
    ) -> Option<Result<()>> {
        None
    }

    /// Runs a convolution `[x, w, bias?]` (`conv`, an `Op::Conv2d`) followed by the max
    /// pooling `pool`, without storing the convolution's whole output. `None` for devices
    /// (or ops) without that path: the caller then runs the two ops.
    fn conv_max_pool(
        &self,
        _conv: &Op,
        _pool: &crate::op::Pool2dParams,
        _inputs: &[&Tensor],
    ) -> Option<Result<Tensor>> {
        None
    }

    /// Kernel-only times in seconds of `reps` runs of `op` with the inputs already resident
    /// on the device (after one warm-up run), for devices where that differs from `execute`'s
    /// time (GPUs). `None` for host devices, whose `execute` is already kernel time.
    fn time_resident(&self, op: &Op, inputs: &[&Tensor], reps: usize) -> Option<Result<Vec<f64>>> {
        let _ = (op, inputs, reps);
        None
    }

    /// Runs `body`, a sequence of this device's ops, where they follow one another cheapest:
    /// a CPU node runs it on a worker of its own pool while its other workers poll for the
    /// work the ops split off, so each op starts on a thread of the pool instead of being
    /// handed over from the caller's, and no worker sleeps between ops. The default runs it on
    /// the calling thread.
    fn run_batch(&self, body: &mut (dyn FnMut() + Send)) {
        body()
    }

    /// Runs `body` (on the calling thread) while this device's workers poll for work instead
    /// of sleeping, so that the parts [`Device::run_beside`] hands them meanwhile start at
    /// once. The default just runs `body`.
    fn keep_awake(&self, body: &mut (dyn FnMut() + Send)) {
        body()
    }

    /// Runs `work` on this device's own threads while the calling thread runs `here`, and
    /// returns when both are done: a part of a split op handed to a member without a thread
    /// of its own in between (a new thread would inherit the caller's CPU pinning and wait
    /// for the caller's CPU to start). The default runs `work` on a new thread.
    fn run_beside(&self, work: &mut (dyn FnMut() + Send), here: &mut (dyn FnMut() + Send)) {
        std::thread::scope(|scope| {
            scope.spawn(work);
            here();
        });
    }

    /// Starts `work` (a whole run of ops on this device, such as one part of a model run) off
    /// the calling thread and returns at once; `work` reports its own end. A CPU node queues
    /// it on its own pool, where a polling worker takes it up (a new thread costs about 0.1 ms
    /// to start on a virtual machine, then hands each run over to the pool). The default
    /// starts a new thread.
    fn launch(&self, work: Box<dyn FnOnce() + Send + 'static>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("{}-run", self.info().id))
            .spawn(work)
            .map(drop)
    }

    /// Single-threaded nodes standing for this node's workers, one per worker and on its
    /// core: a batch of several samples runs faster as independent shares side by side on
    /// them than with each op split over the workers, which then exchange every activation
    /// between their cores and wait for one another at every op. Empty for devices without
    /// them (GPUs, single-threaded nodes).
    fn lanes(&self) -> Vec<&dyn Device> {
        Vec::new()
    }

    /// The GPU node behind this device, for runs that keep their values resident on it
    /// between ops (a model session); `None` for host devices, and for wrappers that must
    /// see every op (a fault wrapper with a fault scheduled).
    fn gpu(&self) -> Option<&gpu::GpuDevice> {
        None
    }

    /// Fault injection: makes the device fail as if lost (GPUs destroy their device; host
    /// devices have nothing to lose and ignore it).
    fn inject_device_loss(&self) {}
}

/// Runs `f` as one batch of `device`'s work ([`Device::run_batch`]) and returns what it
/// returns (running it here if the device did not).
pub fn in_batch<R: Send>(device: &dyn Device, f: impl FnOnce() -> R + Send) -> R {
    let mut f = Some(f);
    let mut result = None;
    device.run_batch(&mut || {
        if let Some(f) = f.take() {
            result = Some(f());
        }
    });
    match (result, f) {
        (Some(result), _) => result,
        (None, Some(f)) => f(),
        (None, None) => unreachable!("the body ran but left no result"),
    }
}

/// [`Device::execute_view`] through owned copies: the views become tensors, `execute` runs,
/// and its one f32 output is copied into `out` after its size is checked.
pub fn execute_view_by_copy<D: Device + ?Sized>(
    device: &D,
    op: &Op,
    inputs: &[TensorView<'_>],
    out: &mut [f32],
) -> Result<()> {
    let owned = inputs
        .iter()
        .map(TensorView::to_tensor)
        .collect::<Result<Vec<Tensor>>>()?;
    let refs: Vec<&Tensor> = owned.iter().collect();
    let results = device.execute(op, &refs)?;
    let [result] = results.as_slice() else {
        return Err(Error::shape(
            op.name(),
            format!("{} outputs, a view run takes exactly 1", results.len()),
        ));
    };
    let values = result.as_f32()?;
    if values.len() != out.len() {
        return Err(Error::shape(
            op.name(),
            format!(
                "output {} has {} elements, the buffer given holds {}",
                result.shape(),
                values.len(),
                out.len()
            ),
        ));
    }
    out.copy_from_slice(values);
    Ok(())
}

/// Fails unless `outputs` match `expected` in count, shape and dtype, naming the first mismatch.
pub fn check_outputs(op: &Op, outputs: &[Tensor], expected: &[Tensor]) -> Result<()> {
    if outputs.len() != expected.len() {
        return Err(Error::shape(
            op.name(),
            format!(
                "{} outputs given, the op has {}",
                outputs.len(),
                expected.len()
            ),
        ));
    }
    for (i, (out, want)) in outputs.iter().zip(expected).enumerate() {
        if out.shape() != want.shape() || out.dtype() != want.dtype() {
            return Err(Error::shape(
                op.name(),
                format!(
                    "output {i} is {} {}, expected {} {}",
                    out.dtype(),
                    out.shape(),
                    want.dtype(),
                    want.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// The kind of device behind a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A share of the host CPU's cores.
    Cpu,
    /// A GPU (not available yet).
    Gpu,
    /// A modelled device of the simulator.
    Sim,
}

impl DeviceKind {
    /// The lower-case name used in specs and reports.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
            DeviceKind::Sim => "sim",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What a device reports about itself (serialised as one JSON object by `devices --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Unique id within the process, e.g. `cpu0`.
    pub id: String,
    /// The kind of device.
    pub kind: DeviceKind,
    /// Human-readable hardware name, e.g. the CPU model.
    pub name: String,
    /// The code path that runs the ops, e.g. the kernels' instruction set (`avx512`).
    pub backend: String,
    /// Worker threads, for devices that have them.
    pub threads: Option<usize>,
    /// Memory the device may use, in bytes.
    pub memory_bytes: u64,
    /// Element types the device accepts as inputs.
    pub dtypes: Vec<DType>,
    /// Driver name and version, for devices that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// One entry of a node spec.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SpecEntry {
    /// `nodes` CPU nodes of `threads` threads each (`None`: every core of the host).
    Cpu {
        /// Number of nodes.
        nodes: usize,
        /// Threads per node.
        threads: Option<usize>,
    },
    /// GPU adapter `index` of discovery order (`None`: every adapter).
    Gpu {
        /// The adapter's index (`gpu:N`).
        index: Option<usize>,
    },
    /// Every hardware GPU (software adapters such as llvmpipe left out); the default spec's
    /// second entry.
    LocalGpus,
    /// Simulated nodes (`sim:N`, `sim:N:PROFILE`, …): they model time and compute nothing.
    Sim(sim::SimSpec),
}

/// Which nodes to bring up: `cpu` (one node, all cores), `cpu:NxT` (N nodes of T threads),
/// `gpu` (every GPU adapter), `gpu:N` (adapter N), `sim:N[:PROFILE]` (simulated nodes), or a
/// comma-separated list of these.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    text: String,
    entries: Vec<SpecEntry>,
}

impl NodeSpec {
    /// Parses a spec, or returns an error naming the entry at fault.
    pub fn parse(text: &str) -> Result<NodeSpec> {
        let normalized = text.trim().to_ascii_lowercase();
        if normalized.is_empty() {
            return Err(Error::spec(text, "empty spec: expected cpu or cpu:NxT"));
        }
        let mut entries = Vec::new();
        let mut total_nodes = 0usize;
        let mut words = Vec::new();
        for raw in normalized.split(',') {
            let word = raw.trim();
            if word.is_empty() {
                return Err(Error::spec(
                    text.trim(),
                    "empty entry between commas: expected cpu or cpu:NxT",
                ));
            }
            let entry = parse_entry(word)?;
            let nodes = match &entry {
                SpecEntry::Cpu { nodes, .. } => *nodes,
                SpecEntry::Sim(spec) => spec.count,
                SpecEntry::Gpu { .. } | SpecEntry::LocalGpus => 1,
            };
            total_nodes = total_nodes.saturating_add(nodes);
            if total_nodes > MAX_NODES {
                return Err(Error::spec(
                    text.trim(),
                    format!("asks for {total_nodes} nodes or more, at most {MAX_NODES} allowed"),
                ));
            }
            entries.push(entry);
            words.push(word);
        }
        Ok(NodeSpec {
            text: words.join(","),
            entries,
        })
    }

    /// Every local device: one CPU node with all cores, and one node per hardware GPU.
    pub fn local() -> NodeSpec {
        NodeSpec {
            text: "cpu".to_string(),
            entries: vec![
                SpecEntry::Cpu {
                    nodes: 1,
                    threads: None,
                },
                SpecEntry::LocalGpus,
            ],
        }
    }

    /// The default main job's mesh: the CPU cut into two nodes of half the cores each (one
    /// node on a single-core host), and one node per hardware GPU.
    pub fn main_job() -> NodeSpec {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let nodes = if cores >= 2 { 2 } else { 1 };
        let threads = (cores / nodes).max(1);
        NodeSpec {
            text: format!("cpu:{nodes}x{threads}"),
            entries: vec![
                SpecEntry::Cpu {
                    nodes,
                    threads: Some(threads),
                },
                SpecEntry::LocalGpus,
            ],
        }
    }

    /// The spec as text, normalised (lower case, no blanks).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed entries, in order.
    pub fn entries(&self) -> &[SpecEntry] {
        &self.entries
    }

    /// Brings up the nodes the spec names.
    pub fn build(&self) -> Result<NodeSet> {
        let cpu_nodes: usize = self
            .entries
            .iter()
            .map(|e| match e {
                SpecEntry::Cpu { nodes, .. } => *nodes,
                SpecEntry::Gpu { .. } | SpecEntry::LocalGpus | SpecEntry::Sim(_) => 0,
            })
            .sum();
        let memory = cpu::node_memory_bytes(cpu_nodes);
        let mut devices: Vec<Arc<dyn Device>> = Vec::new();
        let mut label = self.text.clone();
        let mut gpu_adapters: Option<Vec<gpu::AdapterEntry>> = None;
        let mut opened_gpus: Vec<usize> = Vec::new();
        let mut cpu_index = 0;
        // Workers of the CPU nodes brought up so far: the next node's first CPU.
        let mut cpu_first = 0;
        let mut sim_index = 0;
        for entry in &self.entries {
            match *entry {
                SpecEntry::Sim(ref spec) => {
                    for dev in spec.devices(sim_index) {
                        devices.push(Arc::new(dev));
                    }
                    sim_index += spec.count;
                }
                SpecEntry::Cpu { nodes, threads } => {
                    let threads = threads.unwrap_or_else(host_threads);
                    for _ in 0..nodes {
                        devices.push(Arc::new(CpuDevice::of_mesh(
                            cpu_index, cpu_first, threads, cpu_nodes, memory,
                        )?));
                        cpu_index += 1;
                        cpu_first = cpu_first.saturating_add(threads);
                    }
                }
                SpecEntry::Gpu { index } => {
                    let adapters = gpu_adapters.get_or_insert_with(gpu::discover);
                    let wanted: Vec<usize> = match index {
                        Some(i) if i < adapters.len() => vec![i],
                        Some(i) => {
                            return Err(Error::spec(
                                format!("gpu:{i}"),
                                format!(
                                    "no GPU adapter number {i}: found {} ({})",
                                    adapters.len(),
                                    gpu_hint(adapters)
                                ),
                            ));
                        }
                        None if adapters.is_empty() => {
                            return Err(Error::spec("gpu", gpu_hint(adapters)));
                        }
                        None => (0..adapters.len()).collect(),
                    };
                    for i in wanted {
                        if opened_gpus.contains(&i) {
                            return Err(Error::spec(
                                self.text.clone(),
                                format!("GPU adapter {i} is named twice"),
                            ));
                        }
                        let dev = gpu::GpuDevice::open(i, i, gpu::LimitOverrides::default())?;
                        devices.push(Arc::new(dev));
                        opened_gpus.push(i);
                    }
                }
                SpecEntry::LocalGpus => {
                    let adapters = gpu_adapters.get_or_insert_with(gpu::discover);
                    for a in adapters.iter() {
                        let hardware = a.info.device_type != wgpu::DeviceType::Cpu;
                        if !hardware || opened_gpus.contains(&a.index) {
                            continue;
                        }
                        // A GPU that fails to open is left out of the default set.
                        if let Ok(dev) = gpu::GpuDevice::open(a.index, a.index, Default::default())
                        {
                            devices.push(Arc::new(dev));
                            opened_gpus.push(a.index);
                            label.push_str(&format!(",gpu:{}", a.index));
                        }
                    }
                }
            }
        }
        NodeSet::new(label, devices)
    }
}

/// What to say when no GPU adapter was found or the one named does not exist.
fn gpu_hint(adapters: &[gpu::AdapterEntry]) -> String {
    if adapters.is_empty() {
        "no GPU adapter found; on Debian, `apt-get install mesa-vulkan-drivers libvulkan1` \
         provides a software Vulkan adapter"
            .to_string()
    } else {
        adapters
            .iter()
            .map(|a| format!("gpu:{} = {} ({:?})", a.index, a.info.name, a.info.backend))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec::local()
    }
}

impl fmt::Display for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for NodeSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<NodeSpec> {
        NodeSpec::parse(s)
    }
}

/// Parses one comma-separated entry of a spec (already trimmed and lower-cased).
fn parse_entry(word: &str) -> Result<SpecEntry> {
    let (kind, arg) = match word.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (word, None),
    };
    match kind {
        "cpu" => {
            let Some(arg) = arg else {
                return Ok(SpecEntry::Cpu {
                    nodes: 1,
                    threads: None,
                });
            };
            let Some((n, t)) = arg.split_once('x') else {
                return Err(Error::spec(
                    word,
                    "expected cpu:NxT (N nodes of T threads each), e.g. cpu:2x4",
                ));
            };
            let nodes = parse_count(word, "node count", n, MAX_NODES)?;
            let threads = parse_count(word, "thread count", t, MAX_THREADS_PER_NODE)?;
            Ok(SpecEntry::Cpu {
                nodes,
                threads: Some(threads),
            })
        }
        "gpu" => match arg {
            None => Ok(SpecEntry::Gpu { index: None }),
            Some(n) => Ok(SpecEntry::Gpu {
                index: Some(n.parse().map_err(|_| {
                    Error::spec(
                        word,
                        format!("adapter `{n}` is not a number (expected gpu:N)"),
                    )
                })?),
            }),
        },
        "sim" => Ok(SpecEntry::Sim(sim::SimSpec::parse(word)?)),
        other => Err(Error::spec(
            word,
            format!("unknown node kind `{other}`: expected cpu, cpu:NxT, gpu, gpu:N or sim:N"),
        )),
    }
}

/// Parses a positive count no larger than `max`.
fn parse_count(word: &str, what: &str, text: &str, max: usize) -> Result<usize> {
    let value: usize = text.parse().map_err(|_| {
        Error::spec(
            word,
            format!("{what} `{text}` is not a positive integer (expected cpu:NxT, e.g. cpu:2x4)"),
        )
    })?;
    if value == 0 {
        return Err(Error::spec(word, format!("{what} must be at least 1")));
    }
    if value > max {
        return Err(Error::spec(
            word,
            format!("{what} {value} exceeds the limit of {max}"),
        ));
    }
    Ok(value)
}

/// The devices brought up from one spec, with the spec's text as their label.
#[derive(Clone)]
pub struct NodeSet {
    label: String,
    devices: Vec<Arc<dyn Device>>,
}

impl NodeSet {
    /// A set of devices under a label (the spec text); fails if `devices` is empty.
    pub fn new(label: impl Into<String>, devices: Vec<Arc<dyn Device>>) -> Result<NodeSet> {
        let label = label.into();
        if devices.is_empty() {
            return Err(Error::spec(label, "brings up no nodes"));
        }
        Ok(NodeSet { label, devices })
    }

    /// Parses `spec` and brings up its nodes.
    pub fn from_spec(spec: &NodeSpec) -> Result<NodeSet> {
        spec.build()
    }

    /// The spec text the set was built from.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The devices, in spec order.
    pub fn devices(&self) -> &[Arc<dyn Device>] {
        &self.devices
    }

    /// Memory of all nodes together, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.info().memory_bytes)
            .fold(0, u64::saturating_add)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when there are no nodes (never, for a set built by [`NodeSet::new`]).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Total worker threads of the nodes that have them.
    pub fn threads(&self) -> usize {
        self.devices.iter().filter_map(|d| d.info().threads).sum()
    }

    /// The distinct backends of the nodes, joined with `+` (e.g. `avx512`).
    pub fn backends(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for d in &self.devices {
            let b = d.info().backend.as_str();
            if !names.contains(&b) {
                names.push(b);
            }
        }
        names.join("+")
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSet")
            .field("label", &self.label)
            .field(
                "devices",
                &self.devices.iter().map(|d| d.info()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let spec = NodeSpec::parse(" CPU:2x3 , cpu ").unwrap();
        assert_eq!(spec.as_str(), "cpu:2x3,cpu");
        assert_eq!(
            spec.entries(),
            &[
                SpecEntry::Cpu {
                    nodes: 2,
                    threads: Some(3)
                },
                SpecEntry::Cpu {
                    nodes: 1,
                    threads: None
                }
            ]
        );
        assert_eq!(NodeSpec::default().as_str(), "cpu");
    }

    #[test]
    fn bad_specs_name_the_entry() {
        for (bad, named) in [
            ("cpu:0x2", "cpu:0x2"),
            ("cpu:2x0", "cpu:2x0"),
            ("cpu:2x", "cpu:2x"),
            ("cpu:axb", "cpu:axb"),
            ("cpu:x2", "cpu:x2"),
            ("cpu:3", "cpu:3"),
            ("cpu,,cpu", "`cpu,,cpu`: empty entry"),
            ("cpu,", "`cpu,`: empty entry"),
            ("", "empty spec"),
            ("tpu", "tpu"),
            ("cpu:1x99999", "99999"),
            ("cpu:300x1", "300"),
            ("cpu:200x1,cpu:200x1", "cpu:200x1,cpu:200x1"),
        ] {
            let err = NodeSpec::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Spec { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn sim_specs_bring_up_simulated_nodes() {
        let set = NodeSpec::parse("sim:3:lite,sim").unwrap().build().unwrap();
        let ids: Vec<&str> = set.devices().iter().map(|d| d.info().id.as_str()).collect();
        assert_eq!(ids, ["sim0", "sim1", "sim2", "sim3"]);
        assert!(
            set.devices()
                .iter()
                .all(|d| d.info().kind == DeviceKind::Sim)
        );
        let err = NodeSpec::parse("sim:2:warp").unwrap_err();
        assert!(err.to_string().contains("warp"), "{err}");
    }

    #[test]
    fn build_gives_numbered_cpu_nodes() {
        let set = NodeSpec::parse("cpu:2x1,cpu:1x2").unwrap().build().unwrap();
        let ids: Vec<&str> = set.devices().iter().map(|d| d.info().id.as_str()).collect();
        assert_eq!(ids, ["cpu0", "cpu1", "cpu2"]);
        assert_eq!(set.threads(), 4);
        assert_eq!(set.label(), "cpu:2x1,cpu:1x2");
    }
}
