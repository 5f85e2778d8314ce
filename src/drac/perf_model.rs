//! The performance model: predicted seconds for (node, op class, dtype, flops), calibrated by
//! short micro-benchmarks per node (cached on disk) and corrected online from observed runs.
//!
//! **Rates.** Each node has one [`Rate`] per ([`OpClass`], [`DType`]): a sustained rate in
//! GFLOP/s and a fixed per-op overhead, so an op of `f` flops is predicted to take
//! `overhead_s + f / (gflops · 1e9)` seconds, times the online correction factor.
//!
//! **Fallbacks.** A missing rate is taken from the same class at f32, then the same class at
//! any dtype, then the other classes (same dtype first), scaled by the classes' typical
//! efficiency relative to a matrix multiply ([`OpClass::relative_speed`]: matmul 1, conv2d 0.8,
//! other 0.1, since elementwise ops are memory bound).
//!
//! **Online correction.** [`PerfModel::observe`] folds the ratio observed / predicted
//! (clamped to `[1/50, 50]`) into a per-(node, class, dtype) factor as a geometric
//! exponentially weighted mean of weight ½: `c ← c^½ · ratio^½`. A node that became 3× slower
//! than its calibration is predicted within 7% of its new speed after 4 jobs (`3^(15/16)`).
//! Cells never observed use the node-wide factor (the same mean over every observation of the
//! node), so a throttled node loses share for every op, not only the one that was seen.
//! Non-finite, zero or negative observations are ignored. Corrections live in memory only.
//!
//! **Transfers.** GPU nodes get a measured host↔device [`TransferRate`] (`latency_s` per tensor
//! copied plus `bytes / bytes_per_s`), taken from `execute` wall time minus kernel time; CPU
//! nodes work on host memory in place and get [`TransferRate::HOST`] (1 TB/s, no latency).
//!
//! **Cache.** `calibration.json` under the cache directory of the GPU tuner
//! ([`crate::node::gpu::tune::cache_dir`]); see [`PerfModel::save`] for the layout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::node::{Device, DeviceInfo, DeviceKind};
use crate::op::{Op, Unary};
use crate::tensor::{DType, Shape, Tensor};
use crate::{Conv2dParams, Error, Result};

/// Version of the cache file layout; a file of another version is refused as malformed.
pub const CACHE_VERSION: u32 = 1;
/// File name of the calibration cache inside the cache directory.
pub const CACHE_FILE: &str = "calibration.json";
/// Weight of the newest observation in the online correction (geometric mean).
pub const CORRECTION_WEIGHT: f64 = 0.5;
/// Largest correction factor (and largest observed / predicted ratio taken into account).
pub const MAX_CORRECTION: f64 = 50.0;

/// Number of op classes and dtypes (the sizes of a node's rate table).
const CLASSES: usize = 3;
const DTYPES: usize = 3;

/// The class of an op, as far as its speed is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpClass {
    /// Matrix multiplies (compute bound GEMM kernels).
    MatMul,
    /// 2-D convolutions (implicit GEMM kernels).
    Conv2d,
    /// Everything else: elementwise, softmax, pooling, normalisation (memory bound).
    Other,
}

impl OpClass {
    /// Every class, in table order.
    pub const ALL: [OpClass; CLASSES] = [OpClass::MatMul, OpClass::Conv2d, OpClass::Other];

    /// The class of `op`.
    pub fn of(op: &Op) -> OpClass {
        match op {
            Op::MatMul { .. } => OpClass::MatMul,
            Op::Conv2d(_) => OpClass::Conv2d,
            _ => OpClass::Other,
        }
    }

    /// The lower-case name used in reports and the cache file (`matmul`, `conv2d`, `other`).
    pub fn name(self) -> &'static str {
        match self {
            OpClass::MatMul => "matmul",
            OpClass::Conv2d => "conv2d",
            OpClass::Other => "other",
        }
    }

    /// Typical flop rate of the class relative to a matrix multiply on the same device, used
    /// to scale a rate borrowed from another class.
    pub fn relative_speed(self) -> f64 {
        match self {
            OpClass::MatMul => 1.0,
            OpClass::Conv2d => 0.8,
            OpClass::Other => 0.1,
        }
    }

    /// Position in a node's rate table.
    fn index(self) -> usize {
        match self {
            OpClass::MatMul => 0,
            OpClass::Conv2d => 1,
            OpClass::Other => 2,
        }
    }
}

impl std::fmt::Display for OpClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Position of a dtype in a node's rate table.
fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

/// A node's speed for one op class and dtype: predicted seconds are
/// `overhead_s + flops / (gflops · 1e9)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Sustained rate in GFLOP/s (finite, > 0).
    pub gflops: f64,
    /// Fixed cost of one op in seconds (finite, ≥ 0).
    pub overhead_s: f64,
}

impl Rate {
    /// A rate, or an error naming the bad value unless `gflops` is finite and positive and
    /// `overhead_s` finite and non-negative.
    pub fn new(gflops: f64, overhead_s: f64) -> Result<Rate> {
        let rate = Rate { gflops, overhead_s };
        if rate.is_valid() {
            Ok(rate)
        } else {
            Err(Error::parse(
                "rate",
                format!("{gflops} GFLOP/s + {overhead_s} s"),
                "needs a finite positive GFLOP/s and a finite non-negative overhead",
            ))
        }
    }

    /// True when `gflops` is finite and positive and `overhead_s` finite and non-negative.
    pub fn is_valid(&self) -> bool {
        self.gflops.is_finite()
            && self.gflops > 0.0
            && self.overhead_s.is_finite()
            && self.overhead_s >= 0.0
    }

    /// Predicted seconds for `flops` floating-point operations.
    pub fn seconds(&self, flops: u64) -> f64 {
        self.overhead_s + flops as f64 / (self.gflops * 1e9)
    }

    /// The same rate with its GFLOP/s multiplied by `factor`.
    fn scaled(self, factor: f64) -> Rate {
        Rate {
            gflops: self.gflops * factor,
            overhead_s: self.overhead_s,
        }
    }
}

/// Host↔device copy cost of a node: moving one tensor of `b` bytes takes
/// `latency_s + b / bytes_per_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TransferRate {
    /// Sustained copy bandwidth in bytes per second (finite, > 0).
    pub bytes_per_s: f64,
    /// Fixed cost of one copy in seconds (finite, ≥ 0).
    pub latency_s: f64,
}

impl TransferRate {
    /// The cost for a node that works on host memory in place (CPU nodes): effectively free,
    /// 1 TB/s and no latency (finite so that it survives JSON).
    pub const HOST: TransferRate = TransferRate {
        bytes_per_s: 1e12,
        latency_s: 0.0,
    };

    /// True when `bytes_per_s` is finite and positive and `latency_s` finite and non-negative.
    pub fn is_valid(&self) -> bool {
        self.bytes_per_s.is_finite()
            && self.bytes_per_s > 0.0
            && self.latency_s.is_finite()
            && self.latency_s >= 0.0
    }

    /// Predicted seconds to copy one tensor of `bytes` bytes.
    pub fn seconds(&self, bytes: u64) -> f64 {
        self.latency_s + bytes as f64 / self.bytes_per_s
    }
}

/// Everything the model knows of one node.
#[derive(Debug, Clone)]
struct NodeEntry {
    /// The node key ([`PerfModel::node_key`]).
    key: String,
    /// Rates set or calibrated, by class and dtype.
    rates: [[Option<Rate>; DTYPES]; CLASSES],
    /// `rates` with the fallbacks filled in (all `None` when `rates` is empty).
    resolved: [[Option<Rate>; DTYPES]; CLASSES],
    /// Online correction factor per class and dtype (1 when never observed).
    correction: [[f64; DTYPES]; CLASSES],
    /// Observations folded in, per class and dtype.
    samples: [[u64; DTYPES]; CLASSES],
    /// Correction over every observation of the node.
    node_correction: f64,
    /// Observations of the node in all.
    node_samples: u64,
    /// Host↔device copy cost, once known.
    transfer: Option<TransferRate>,
}

impl NodeEntry {
    fn new(key: &str) -> NodeEntry {
        NodeEntry {
            key: key.to_string(),
            rates: [[None; DTYPES]; CLASSES],
            resolved: [[None; DTYPES]; CLASSES],
            correction: [[1.0; DTYPES]; CLASSES],
            samples: [[0; DTYPES]; CLASSES],
            node_correction: 1.0,
            node_samples: 0,
            transfer: None,
        }
    }

    /// True when at least one rate is set.
    fn has_rates(&self) -> bool {
        self.rates.iter().flatten().any(Option::is_some)
    }

    /// Refills `resolved` from `rates` by the fallback rules.
    fn resolve(&mut self) {
        for class in OpClass::ALL {
            for dtype in DType::ALL {
                self.resolved[class.index()][dtype_index(dtype)] = self.lookup(class, dtype);
            }
        }
    }

    /// The rate for (class, dtype) by the fallback rules: exact, same class at f32, same
    /// class at any dtype, then the other classes (same dtype, f32, any) scaled by their
    /// relative speeds.
    fn lookup(&self, class: OpClass, dtype: DType) -> Option<Rate> {
        let row = &self.rates[class.index()];
        let same_class = row[dtype_index(dtype)]
            .or(row[dtype_index(DType::F32)])
            .or_else(|| row.iter().flatten().next().copied());
        if same_class.is_some() {
            return same_class;
        }
        OpClass::ALL
            .iter()
            .filter(|&&other| other != class)
            .find_map(|&other| {
                let row = &self.rates[other.index()];
                row[dtype_index(dtype)]
                    .or(row[dtype_index(DType::F32)])
                    .or_else(|| row.iter().flatten().next().copied())
                    .map(|r| r.scaled(class.relative_speed() / other.relative_speed()))
            })
    }

    /// The correction factor that applies to (class, dtype): the cell's own once observed,
    /// else the node-wide one.
    fn correction_for(&self, c: usize, d: usize) -> f64 {
        if self.samples[c][d] > 0 {
            self.correction[c][d]
        } else {
            self.node_correction
        }
    }
}

/// Predicted op times of every node the DRAC knows, calibrated and corrected online.
#[derive(Debug, Clone, Default)]
pub struct PerfModel {
    /// Nodes in interning order ([`PerfModel::node_index`]).
    nodes: Vec<NodeEntry>,
    /// Node key → position in `nodes`.
    index: HashMap<String, usize>,
    /// Nodes calibrated by this model (not loaded from a cache) since it was made or loaded.
    calibrations: usize,
}

impl PerfModel {
    /// An empty model: no node known.
    pub fn new() -> PerfModel {
        PerfModel::default()
    }

    /// The key of a node's hardware and configuration, stable across runs:
    /// `kind|name|backend|threads|driver` (`-` for a missing field).
    pub fn node_key(info: &DeviceInfo) -> String {
        let threads = info
            .threads
            .map_or_else(|| "-".to_string(), |t| t.to_string());
        format!(
            "{}|{}|{}|{}|{}",
            info.kind,
            info.name,
            info.backend,
            threads,
            info.driver.as_deref().unwrap_or("-")
        )
    }

    /// The index of `key` for the `*_at` fast paths, adding an empty (unknown) node if new.
    pub fn node_index(&mut self, key: &str) -> usize {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.nodes.len();
        self.nodes.push(NodeEntry::new(key));
        self.index.insert(key.to_string(), i);
        i
    }

    /// The index of `key` if it was ever interned or given a rate.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Sets the rate of `key` for (class, dtype); an invalid rate (see [`Rate::is_valid`])
    /// is ignored.
    pub fn set_rate(&mut self, key: &str, class: OpClass, dtype: DType, rate: Rate) {
        if !rate.is_valid() {
            return;
        }
        let i = self.node_index(key);
        let node = &mut self.nodes[i];
        node.rates[class.index()][dtype_index(dtype)] = Some(rate);
        node.resolve();
    }

    /// The rate of `key` for (class, dtype) after the fallback rules; `None` if the node has
    /// no rate at all.
    pub fn rate(&self, key: &str, class: OpClass, dtype: DType) -> Option<Rate> {
        let node = &self.nodes[self.index_of(key)?];
        node.resolved[class.index()][dtype_index(dtype)]
    }

    /// True when `key` has at least one rate.
    pub fn known(&self, key: &str) -> bool {
        self.index_of(key)
            .is_some_and(|i| self.nodes[i].has_rates())
    }

    /// Predicted seconds for `op` on inputs of `shapes` at `dtype` on node `key`, online
    /// correction included; an error for a bad shape or a node the model does not know.
    pub fn predict(&self, key: &str, op: &Op, shapes: &[&Shape], dtype: DType) -> Result<f64> {
        let flops = op.flops(shapes)?;
        self.predict_flops(key, OpClass::of(op), dtype, flops)
            .ok_or_else(|| {
                Error::device(
                    key,
                    "the performance model has no rate for this node: calibrate it first",
                )
            })
    }

    /// Predicted seconds for `flops` flops of `class` at `dtype` on node `key`, correction
    /// included; `None` for an unknown node. Does not allocate.
    pub fn predict_flops(
        &self,
        key: &str,
        class: OpClass,
        dtype: DType,
        flops: u64,
    ) -> Option<f64> {
        self.predict_flops_at(self.index_of(key)?, class, dtype, flops)
    }

    /// [`PerfModel::predict_flops`] for the node at `index` ([`PerfModel::node_index`]): two
    /// array lookups and a multiply-add; `None` for an unknown node or index.
    pub fn predict_flops_at(
        &self,
        index: usize,
        class: OpClass,
        dtype: DType,
        flops: u64,
    ) -> Option<f64> {
        let node = self.nodes.get(index)?;
        let (c, d) = (class.index(), dtype_index(dtype));
        let rate = node.resolved[c][d]?;
        Some(rate.seconds(flops) * node.correction_for(c, d))
    }

    /// Folds an observed run (`flops` flops of `class` at `dtype` took `seconds`) into the
    /// node's correction factors; returns whether it was used (not for an unknown node, or a
    /// non-finite, zero or negative time).
    pub fn observe(
        &mut self,
        key: &str,
        class: OpClass,
        dtype: DType,
        flops: u64,
        seconds: f64,
    ) -> bool {
        let Some(i) = self.index_of(key) else {
            return false;
        };
        let node = &mut self.nodes[i];
        let (c, d) = (class.index(), dtype_index(dtype));
        let Some(rate) = node.resolved[c][d] else {
            return false;
        };
        let predicted = rate.seconds(flops);
        if !(seconds.is_finite() && seconds > 0.0 && predicted.is_finite() && predicted > 0.0) {
            return false;
        }
        let ratio = (seconds / predicted).clamp(1.0 / MAX_CORRECTION, MAX_CORRECTION);
        let fold = |old: f64| {
            let mixed = old.powf(1.0 - CORRECTION_WEIGHT) * ratio.powf(CORRECTION_WEIGHT);
            mixed.clamp(1.0 / MAX_CORRECTION, MAX_CORRECTION)
        };
        // A cell's first observation starts from the node-wide factor it was predicted with.
        let old = node.correction_for(c, d);
        node.correction[c][d] = fold(old);
        node.samples[c][d] += 1;
        node.node_correction = fold(node.node_correction);
        node.node_samples += 1;
        true
    }

    /// The correction factor that applies to (class, dtype) on `key`; `None` if unknown.
    pub fn correction(&self, key: &str, class: OpClass, dtype: DType) -> Option<f64> {
        let node = &self.nodes[self.index_of(key)?];
        Some(node.correction_for(class.index(), dtype_index(dtype)))
    }

    /// Observations folded into (class, dtype) of `key` (0 for an unknown node).
    pub fn samples(&self, key: &str, class: OpClass, dtype: DType) -> u64 {
        self.index_of(key).map_or(0, |i| {
            self.nodes[i].samples[class.index()][dtype_index(dtype)]
        })
    }

    /// Forgets every online correction (back to the calibrated rates).
    pub fn reset_corrections(&mut self) {
        for node in &mut self.nodes {
            node.correction = [[1.0; DTYPES]; CLASSES];
            node.samples = [[0; DTYPES]; CLASSES];
            node.node_correction = 1.0;
            node.node_samples = 0;
        }
    }

    /// Sets the host↔device copy cost of `key`; an invalid one (see
    /// [`TransferRate::is_valid`]) is ignored.
    pub fn set_transfer(&mut self, key: &str, rate: TransferRate) {
        if rate.is_valid() {
            let i = self.node_index(key);
            self.nodes[i].transfer = Some(rate);
        }
    }

    /// The host↔device copy cost of `key`, once known.
    pub fn transfer(&self, key: &str) -> Option<TransferRate> {
        self.nodes[self.index_of(key)?].transfer
    }

    /// The host↔device copy cost of the node at `index`, once known.
    pub fn transfer_at(&self, index: usize) -> Option<TransferRate> {
        self.nodes.get(index)?.transfer
    }

    /// Every rate set or calibrated (no fallbacks) with its correction factor, sorted by
    /// node key, class and dtype: what `accelmesh calibrate` prints.
    pub fn entries(&self) -> Vec<(String, OpClass, DType, Rate, f64)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            for class in OpClass::ALL {
                for dtype in DType::ALL {
                    let (c, d) = (class.index(), dtype_index(dtype));
                    if let Some(rate) = node.rates[c][d] {
                        out.push((
                            node.key.clone(),
                            class,
                            dtype,
                            rate,
                            node.correction_for(c, d),
                        ));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        out
    }

    /// Keys of every node with at least one rate, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.has_rates())
            .map(|n| n.key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Nodes this model calibrated itself (rather than loaded from a cache) since it was
    /// made or loaded: 0 after a [`PerfModel::load_or_calibrate`] served from the cache.
    pub fn calibrations(&self) -> usize {
        self.calibrations
    }

    /// True when `key` has a rate of every class for every dtype of `dtypes` and a transfer
    /// cost: nothing left to calibrate.
    fn complete(&self, key: &str, dtypes: &[DType]) -> bool {
        let Some(i) = self.index_of(key) else {
            return false;
        };
        let node = &self.nodes[i];
        node.transfer.is_some()
            && dtypes.iter().all(|&d| {
                OpClass::ALL
                    .iter()
                    .all(|c| node.rates[c.index()][dtype_index(d)].is_some())
            })
    }

    /// Measures `device` by short micro-benchmarks at each of `dtypes` (every dtype of the
    /// device when empty) and sets its rates and transfer cost under its node key.
    ///
    /// Per dtype: a tiny op of each class for the overhead; matmul from 256³ (GPU 128³)
    /// doubling while one run takes under 2 ms (at most 1024³, GPU 2048³), keeping the best
    /// rate; conv2d of a ResNet-like layer (1×64×28×28, 64 3×3 filters, pad 1) doubling the
    /// batch likewise (at most 32; a GPU starts at 16 channels, then 32, 64, then batch up to
    /// 128); a sigmoid over 256×1024 elements for the other ops, doubling likewise (at most
    /// 16×, GPU 64×). Each time is the median of a few runs
    /// after a warm-up (GPU: kernel time with resident inputs from
    /// [`Device::time_resident`]). GPU transfer cost: `execute` wall time minus kernel time
    /// for a tiny matmul (latency) and a ReLU over 1 Mi f32 (bandwidth). About 0.15 s per
    /// dtype for a one-thread CPU node, 0.25 s for a software GPU. A simulated node is an
    /// error (it has declared rates).
    pub fn calibrate(&mut self, device: &dyn Device, dtypes: &[DType]) -> Result<()> {
        let info = device.info();
        if info.kind == DeviceKind::Sim {
            return Err(Error::device(
                &info.id,
                "a simulated node is not calibrated: install its declared rates instead",
            ));
        }
        let dtypes: Vec<DType> = if dtypes.is_empty() {
            info.dtypes.clone()
        } else {
            dtypes.to_vec()
        };
        if let Some(bad) = dtypes.iter().find(|d| !info.dtypes.contains(d)) {
            return Err(Error::dtype(
                format!("calibration of {}", info.id),
                format!("the node does not accept {bad} inputs"),
            ));
        }
        let bench = Bench::new(device)?;
        let mut rates = Vec::new();
        for &dtype in &dtypes {
            for class in OpClass::ALL {
                rates.push((class, dtype, bench.rate(class, dtype)?));
            }
        }
        let transfer = bench.transfer()?;
        let key = PerfModel::node_key(info);
        for (class, dtype, rate) in rates {
            self.set_rate(&key, class, dtype, rate);
        }
        self.set_transfer(&key, transfer);
        self.calibrations += 1;
        Ok(())
    }

    /// Reads a model saved by [`PerfModel::save`]; a file that does not parse, has another
    /// version or holds invalid rates is an [`Error::Parse`] naming the path.
    pub fn load(path: &Path) -> Result<PerfModel> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error(path, "cannot read", e))?;
        let malformed =
            |reason: String| Error::parse("calibration cache", path.display().to_string(), reason);
        let file: CacheFile = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        if file.version != CACHE_VERSION {
            return Err(malformed(format!(
                "version {} (expected {CACHE_VERSION})",
                file.version
            )));
        }
        let mut model = PerfModel::new();
        for (key, node) in file.nodes {
            for r in node.rates {
                let dtype =
                    DType::parse(&r.dtype).map_err(|e| malformed(format!("node `{key}`: {e}")))?;
                let rate = Rate::new(r.gflops, r.overhead_s)
                    .map_err(|e| malformed(format!("node `{key}`: {e}")))?;
                model.set_rate(&key, r.class, dtype, rate);
            }
            if let Some(t) = node.transfer {
                if !t.is_valid() {
                    return Err(malformed(format!(
                        "node `{key}`: invalid transfer rate {} B/s + {} s",
                        t.bytes_per_s, t.latency_s
                    )));
                }
                model.set_transfer(&key, t);
            }
        }
        Ok(model)
    }

    /// Writes the calibrated rates and transfer costs (not the online corrections) as JSON,
    /// creating the directory, through a temporary file renamed into place.
    ///
    /// Layout: `{"version": 1, "nodes": {"<key>": {"rates": [{"class": "matmul", "dtype":
    /// "f32", "gflops": 95.1, "overhead_s": 2e-6}, …], "transfer": {"bytes_per_s": 1e12,
    /// "latency_s": 0.0}}}}`. Numbers are written in shortest round-trip form; reading them
    /// back may differ in the last bit.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut nodes = BTreeMap::new();
        for node in &self.nodes {
            if !node.has_rates() && node.transfer.is_none() {
                continue;
            }
            let mut rates = Vec::new();
            for class in OpClass::ALL {
                for dtype in DType::ALL {
                    if let Some(r) = node.rates[class.index()][dtype_index(dtype)] {
                        rates.push(CachedRate {
                            class,
                            dtype: dtype.name().to_string(),
                            gflops: r.gflops,
                            overhead_s: r.overhead_s,
                        });
                    }
                }
            }
            nodes.insert(
                node.key.clone(),
                CachedNode {
                    rates,
                    transfer: node.transfer,
                },
            );
        }
        let file = CacheFile {
            version: CACHE_VERSION,
            nodes,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| {
            Error::parse(
                "calibration cache",
                path.display().to_string(),
                e.to_string(),
            )
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot create", e))?;
        }
        let name = path
            .file_name()
            .map_or_else(|| CACHE_FILE.into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text + "\n").map_err(|e| io_error(&tmp, "cannot write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(path, "cannot replace", e)
        })
    }

    /// `calibration.json` in the accelmesh cache directory (`$ACCELMESH_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/accelmesh`, else `~/.cache/accelmesh`; the system temporary directory's
    /// `accelmesh` when none is set).
    pub fn default_path() -> PathBuf {
        crate::node::gpu::tune::cache_dir()
            .unwrap_or_else(|| std::env::temp_dir().join("accelmesh"))
            .join(CACHE_FILE)
    }

    /// The model for `devices`: rates from the cache at `path` for nodes whose key it holds
    /// completely, micro-benchmarks for the others (for all with `refresh`), saved back when
    /// anything was calibrated. A missing or malformed cache is recalibrated and replaced;
    /// other nodes' entries in the file are kept. Identical nodes are calibrated once;
    /// simulated nodes are left out (their declared rates are installed by their owner).
    pub fn load_or_calibrate(
        devices: &[Arc<dyn Device>],
        path: &Path,
        refresh: bool,
    ) -> Result<PerfModel> {
        let loaded = PerfModel::load(path).ok();
        let cache_ok = loaded.is_some();
        let mut model = loaded.unwrap_or_default();
        if refresh {
            // Keep other machines' and configurations' entries; measure ours again.
            for device in devices {
                let key = PerfModel::node_key(device.info());
                if let Some(i) = model.index_of(&key) {
                    model.nodes[i] = NodeEntry::new(&key);
                }
            }
        }
        model.calibrations = 0;
        for device in devices {
            let info = device.info();
            let key = PerfModel::node_key(info);
            if info.kind == DeviceKind::Sim || model.complete(&key, &info.dtypes) {
                continue;
            }
            model.calibrate(device.as_ref(), &info.dtypes)?;
        }
        if model.calibrations > 0 || !cache_ok {
            model.save(path)?;
        }
        Ok(model)
    }
}

/// An i/o error that names the path, keeping the error kind.
fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

/// The cache file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    nodes: BTreeMap<String, CachedNode>,
}

/// One node of the cache file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedNode {
    rates: Vec<CachedRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transfer: Option<TransferRate>,
}

/// One rate of the cache file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedRate {
    class: OpClass,
    dtype: String,
    gflops: f64,
    overhead_s: f64,
}

/// Time one run should take before the calibration stops growing a shape.
const TARGET_S: f64 = 2e-3;
/// Time budget of the timed repetitions of one shape (after the warm-up).
const REPS_BUDGET_S: f64 = 20e-3;
/// Most timed repetitions of one shape.
const MAX_REPS: usize = 5;
/// Timed repetitions of one shape on devices with kernel timing.
const RESIDENT_REPS: usize = 3;
/// Shortest time a measurement is taken as (timer resolution).
const MIN_TIME_S: f64 = 1e-9;

/// The micro-benchmarks of one device.
struct Bench<'a> {
    device: &'a dyn Device,
    /// The device times kernels with resident inputs (a GPU).
    resident: bool,
}

impl<'a> Bench<'a> {
    /// The benchmarks of `device`, asking it with a tiny matmul whether it times kernels
    /// with resident inputs.
    fn new(device: &'a dyn Device) -> Result<Bench<'a>> {
        let a = Tensor::random([2, 2], DType::F32, 1)?;
        let resident = device.time_resident(&Op::matmul(), &[&a, &a], 1).is_some();
        Ok(Bench { device, resident })
    }

    fn id(&self) -> &str {
        &self.device.info().id
    }

    /// Median seconds of one run of `op` on `inputs`: kernel time with resident inputs where
    /// the device has it, else `execute` wall time after a warm-up.
    fn time(&self, op: &Op, inputs: &[&Tensor]) -> Result<f64> {
        if let Some(times) = self.device.time_resident(op, inputs, RESIDENT_REPS) {
            return median(times?).ok_or_else(|| self.failed(op, "no kernel time"));
        }
        self.time_execute(op, inputs)
    }

    /// Median `execute` wall seconds of `op` after a warm-up run.
    fn time_execute(&self, op: &Op, inputs: &[&Tensor]) -> Result<f64> {
        let warm = self.wall(op, inputs)?;
        let reps = ((REPS_BUDGET_S / warm) as usize).clamp(1, MAX_REPS);
        let times = (0..reps)
            .map(|_| self.wall(op, inputs))
            .collect::<Result<Vec<f64>>>()?;
        median(times).ok_or_else(|| self.failed(op, "no wall time"))
    }

    /// Wall seconds of one `execute`.
    fn wall(&self, op: &Op, inputs: &[&Tensor]) -> Result<f64> {
        let start = Instant::now();
        self.device.execute(op, inputs)?;
        Ok(start.elapsed().as_secs_f64().max(MIN_TIME_S))
    }

    fn failed(&self, op: &Op, what: &str) -> Error {
        Error::device(self.id(), format!("calibration of {}: {what}", op.name()))
    }

    /// The calibrated rate of `class` at `dtype`.
    fn rate(&self, class: OpClass, dtype: DType) -> Result<Rate> {
        let (op, tiny) = self.case(class, dtype, 0, true)?;
        let tiny_refs: Vec<&Tensor> = tiny.iter().collect();
        let overhead = self.time(&op, &tiny_refs)?;
        let mut best: Option<f64> = None;
        let steps = match (class, self.resident) {
            (OpClass::MatMul, false) => 3, // 256, 512, 1024
            (OpClass::MatMul, true) => 5,  // 128 … 2048
            (OpClass::Conv2d, false) => 6, // batch 1 … 32
            (OpClass::Conv2d, true) => 10, // 16, 32, 64 channels, then batch 2 … 128
            (OpClass::Other, false) => 5,  // 1× … 16×
            (OpClass::Other, true) => 7,   // 1× … 64×
        };
        for step in 0..steps {
            let (op, inputs) = self.case(class, dtype, step, false)?;
            let refs: Vec<&Tensor> = inputs.iter().collect();
            let shapes: Vec<&Shape> = inputs.iter().map(Tensor::shape).collect();
            let flops = op.flops(&shapes)? as f64;
            let t = self.time(&op, &refs)?;
            let compute = (t - overhead).max(t * 0.25);
            let gflops = flops / compute / 1e9;
            if gflops.is_finite() && gflops > 0.0 {
                best = Some(best.map_or(gflops, |b: f64| b.max(gflops)));
            }
            if t >= TARGET_S {
                break;
            }
        }
        let gflops =
            best.ok_or_else(|| self.failed(&op, &format!("{dtype} gave no finite rate")))?;
        Rate::new(gflops, overhead).map_err(|e| self.failed(&op, &e.to_string()))
    }

    /// The op and inputs of `class` at growth `step` (or the tiny overhead case).
    fn case(
        &self,
        class: OpClass,
        dtype: DType,
        step: usize,
        tiny: bool,
    ) -> Result<(Op, Vec<Tensor>)> {
        let seed = 0x5eed_u64 + step as u64;
        match class {
            OpClass::MatMul => {
                let n = if tiny {
                    8
                } else if self.resident {
                    128 << step
                } else {
                    256 << step
                };
                let a = Tensor::random([n, n], dtype, seed)?;
                let b = Tensor::random([n, n], dtype, seed + 1)?;
                Ok((Op::matmul(), vec![a, b]))
            }
            OpClass::Conv2d => {
                let (batch, c, hw) = if tiny {
                    (1, 4, 4)
                } else if self.resident {
                    // Small first (a software GPU runs ~0.3 GFLOP/s): 16, 32, 64 channels.
                    (1 << step.saturating_sub(2), 16 << step.min(2), 28)
                } else {
                    (1 << step, 64, 28)
                };
                let params = Conv2dParams {
                    pads: [1; 4],
                    ..Conv2dParams::default()
                };
                let x = Tensor::random([batch, c, hw, hw], dtype, seed)?;
                let w = Tensor::random([c, c, 3, 3], dtype, seed + 1)?;
                Ok((Op::Conv2d(params), vec![x, w]))
            }
            OpClass::Other => {
                let rows = if tiny { 1 } else { 256 << step };
                let cols = if tiny { 16 } else { 1024 };
                let x = Tensor::random([rows, cols], dtype, seed)?;
                Ok((Op::Unary(Unary::Sigmoid), vec![x]))
            }
        }
    }

    /// The host↔device copy cost: [`TransferRate::HOST`] for devices without resident timing.
    fn transfer(&self) -> Result<TransferRate> {
        if !self.resident {
            return Ok(TransferRate::HOST);
        }
        // Latency: a tiny matmul moves three small tensors; what its wall time adds to its
        // kernel time is three copies' fixed cost.
        let (small_op, small) = self.case(OpClass::MatMul, DType::F32, 0, true)?;
        let small_refs: Vec<&Tensor> = small.iter().collect();
        let small_kernel = self.time(&small_op, &small_refs)?;
        let small_wall = self.time_execute(&small_op, &small_refs)?;
        let latency = ((small_wall - small_kernel) / 3.0).max(0.0);
        // Bandwidth: a ReLU over 1 Mi f32 moves 4 MiB each way with little compute.
        let relu = Op::Unary(Unary::Relu);
        let x = Tensor::random([1024, 1024], DType::F32, 0x5eed)?;
        let big_kernel = self.time(&relu, &[&x])?;
        let big_wall = self.time_execute(&relu, &[&x])?;
        let shapes = [x.shape()];
        let bytes = relu.bytes(&shapes, DType::F32)? as f64;
        // Where the measurement is degenerate (kernel time as long as the whole run), take
        // the whole run as copy time: a conservative bound.
        let copy = big_wall - big_kernel - 2.0 * latency;
        let copy = if copy > big_wall * 0.05 {
            copy
        } else {
            big_wall
        };
        let rate = TransferRate {
            bytes_per_s: bytes / copy,
            latency_s: latency,
        };
        if rate.is_valid() {
            Ok(rate)
        } else {
            Err(self.failed(
                &relu,
                &format!(
                    "transfer rate {} B/s + {} s",
                    rate.bytes_per_s, rate.latency_s
                ),
            ))
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty or
/// when a value is not finite.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(m.max(MIN_TIME_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_with(
        key: &str,
        class: OpClass,
        dtype: DType,
        gflops: f64,
        overhead_s: f64,
    ) -> PerfModel {
        let mut m = PerfModel::new();
        m.set_rate(key, class, dtype, Rate { gflops, overhead_s });
        m
    }

    #[test]
    fn predictions_are_overhead_plus_flops_over_rate() {
        let m = model_with("n", OpClass::MatMul, DType::F32, 10.0, 1e-3);
        let t = m
            .predict_flops("n", OpClass::MatMul, DType::F32, 20_000_000_000)
            .unwrap();
        assert!((t - 2.001).abs() < 1e-12, "{t}");
        assert_eq!(
            m.predict_flops("other", OpClass::MatMul, DType::F32, 1),
            None
        );
    }

    #[test]
    fn fallbacks_scale_by_class_and_keep_dtype_rates() {
        let mut m = model_with("n", OpClass::MatMul, DType::F32, 100.0, 0.0);
        // Same class, other dtype: the f32 rate.
        assert_eq!(
            m.rate("n", OpClass::MatMul, DType::BF16).unwrap().gflops,
            100.0
        );
        // Other class: scaled by relative speed.
        assert!((m.rate("n", OpClass::Conv2d, DType::F32).unwrap().gflops - 80.0).abs() < 1e-9);
        assert!((m.rate("n", OpClass::Other, DType::F16).unwrap().gflops - 10.0).abs() < 1e-9);
        // An exact rate wins over the fallback; the f16 conv falls back to the f32 conv.
        m.set_rate(
            "n",
            OpClass::Conv2d,
            DType::F32,
            Rate {
                gflops: 50.0,
                overhead_s: 0.0,
            },
        );
        assert_eq!(
            m.rate("n", OpClass::Conv2d, DType::F16).unwrap().gflops,
            50.0
        );
        // A half-precision-only node lends that rate to f32.
        let h = model_with("h", OpClass::MatMul, DType::F16, 40.0, 0.0);
        assert_eq!(
            h.rate("h", OpClass::MatMul, DType::F32).unwrap().gflops,
            40.0
        );
    }

    #[test]
    fn invalid_rates_are_ignored() {
        let mut m = PerfModel::new();
        for bad in [f64::NAN, 0.0, -1.0, f64::INFINITY] {
            m.set_rate(
                "n",
                OpClass::MatMul,
                DType::F32,
                Rate {
                    gflops: bad,
                    overhead_s: 0.0,
                },
            );
            m.set_transfer(
                "n",
                TransferRate {
                    bytes_per_s: bad,
                    latency_s: 0.0,
                },
            );
        }
        assert!(!m.known("n"));
        assert_eq!(m.transfer("n"), None);
        assert!(Rate::new(1.0, -1.0).is_err());
    }

    #[test]
    fn first_observation_of_a_cell_starts_from_the_node_factor() {
        let mut m = model_with("n", OpClass::MatMul, DType::F32, 1.0, 0.0);
        assert!(m.observe("n", OpClass::MatMul, DType::F32, 1_000_000_000, 4.0));
        // The node factor now applies to unobserved cells too.
        let c = m.correction("n", OpClass::Conv2d, DType::F16).unwrap();
        assert!((c - 2.0).abs() < 1e-12, "{c}");
        assert!(m.observe(
            "n",
            OpClass::Conv2d,
            DType::F16,
            1_000_000_000,
            1.0 / 0.8 * 2.0
        ));
        let c = m.correction("n", OpClass::Conv2d, DType::F16).unwrap();
        assert!((c - 2.0).abs() < 1e-9, "{c}");
        assert_eq!(m.samples("n", OpClass::Conv2d, DType::F16), 1);
    }

    #[test]
    fn median_handles_even_counts_and_rejects_nan() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![1.0, f64::NAN]), None);
    }

    #[test]
    fn node_keys_name_hardware_and_configuration() {
        let info = DeviceInfo {
            id: "cpu3".into(),
            kind: DeviceKind::Cpu,
            name: "Some CPU".into(),
            backend: "avx2".into(),
            threads: Some(4),
            memory_bytes: 1 << 30,
            dtypes: DType::ALL.to_vec(),
            driver: None,
        };
        assert_eq!(PerfModel::node_key(&info), "cpu|Some CPU|avx2|4|-");
        let mut other = info.clone();
        other.id = "cpu0".into();
        other.memory_bytes = 1 << 20;
        assert_eq!(PerfModel::node_key(&other), PerfModel::node_key(&info));
        other.threads = Some(2);
        assert_ne!(PerfModel::node_key(&other), PerfModel::node_key(&info));
    }
}
