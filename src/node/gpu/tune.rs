//! Choice of GEMM tiling per adapter and shape class: a small autotuner times every
//! [`TileConfig::CANDIDATES`] tiling that fits the device on the first product of a shape
//! class, keeps the fastest in memory and caches it on disk, so later runs (and later
//! processes) on the same adapter and driver reuse it.
//!
//! **Shape classes.** Each of M, N and K falls in one of five buckets, `≤16`, `≤64`, `≤256`,
//! `≤1024` and `>1024` (roughly log₄ steps), and the operand dtype is part of the class, so
//! there are at most 5³·3 classes and products of similar shape share one choice. A class is
//! timed on a representative product: the bucket's upper bound per dimension (16, 64, 256,
//! 1024), 2048 for the top bucket of M and N, 512 for K `≤1024` and 2048 for K `>1024` (so a
//! skinny, deep product takes the same split-K path as the real one), with K lowered until
//! M·N·K is at most 2048²·512: a large GPU needs products that large to fill its cores, and
//! a tiling chosen on a smaller one underfills it. conv2d asks with its implicit-GEMM
//! dimensions and is timed as the equivalent dense product.
//!
//! **Timing.** A probe product of at most 2²² multiply-adds measures the device's speed; on
//! a slow device the representative then shrinks (largest dimension halved first, K on ties,
//! none below 16, K not below 1024 in the top K bucket) until one product should take about
//! [`PROBE_BUDGET`]. The probe then runs for about [`CLOCK_RAMP`] so that the clocks of an
//! idle GPU are up before anything counts (an H200 idles at a sixth of its clock, and the
//! candidates timed first would pay for it). Each candidate runs once to warm up (after
//! compiling its pipeline) and is dropped when that took over 4× the best warm-up so far;
//! the others are timed [`SAMPLES`] times, in rounds over the candidates so that a drift of
//! the device's speed touches all of them alike. A sample is one submission of back-to-back
//! products (as many as fill about a millisecond, at most 8), timed with GPU timestamp queries where the device has
//! them and by wall clock from submission to completion otherwise. The lowest median wins,
//! except that [`TileConfig::DEFAULT`] is kept when it is within 3% of it (noise should not
//! churn the cache). A candidate that fails is skipped; when all fail the class gets the
//! default (remembered for this tuner, not written to disk). Tuning runs on a second
//! logical device opened on the same adapter (the node's own device only gets a
//! `&GpuShared`, and this keeps a failing candidate from touching the node), which the
//! tuner keeps for later classes; [`Tuner::tile_on_node`] tunes on the node's own device.
//!
//! **Cache.** `gpu_tiles.json` in `$ACCELMESH_CACHE_DIR`, else `$XDG_CACHE_HOME/accelmesh`,
//! else `%LOCALAPPDATA%\accelmesh` (Windows), else `$HOME/.cache/accelmesh`:
//! `{"version": 2, "adapters": {"<name>|<driver>|<driver info>|<backend>": {"f32:m<=64:
//! n<=256:k>1024": {"bm": 64, "bn": 64, "bk": 16, "tm": 4, "tn": 4}, …}, …}}`. It is read
//! once per tuner, on first use; writes merge into the file as it is on disk then and
//! replace it atomically (temporary file, then rename). An unreadable or malformed file, or
//! a malformed entry, is ignored (the class is tuned again and the file rewritten); a cached
//! tiling that is not one of the candidates or does not fit the device is ignored too.
//!
//! `ACCELMESH_GPU_TUNE=0` (or `false`, `off`, `no`) turns tuning off: every product gets
//! [`TileConfig::DEFAULT`] and the cache is neither read nor written.
//! `ACCELMESH_GPU_TILE=BM,BN,BK,TM,TN` gives every product that one tiling where it fits the
//! device (an experiment's knob: each tiling timed alone, whatever the tuner would choose).

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::GpuShared;
use super::context::{GpuContext, LimitOverrides};
use super::kernels::matmul::{MatmulArgs, TileConfig, encode_matmul};
use super::kernels::{PipelineCache, Recorder};
use super::pool::BufferPool;
use super::tensor::{GpuTensor, TransferStats};
use super::timing::{CLOCK_RAMP, CLOCK_RAMP_MAX_RUNS, KernelTimer};
use crate::Result;
use crate::tensor::{DType, Shape, Tensor};

/// File name of the tiling cache inside the cache directory.
pub const CACHE_FILE: &str = "gpu_tiles.json";

/// Format version of the cache file; files of another version are ignored (2: the GEMM
/// kernel's register tile written out, and larger representatives).
pub const CACHE_VERSION: u64 = 2;

/// Timed runs per candidate after its warm-up, in rounds over the candidates; the median
/// counts.
pub const SAMPLES: usize = 5;

/// Longest one representative product should take while tuning; slower devices tune on a
/// smaller representative.
pub const PROBE_BUDGET: Duration = Duration::from_millis(4);

/// Upper bounds of the dimension buckets (the last bucket is everything above).
const BUCKET_BOUNDS: [usize; 4] = [16, 64, 256, 1024];

/// Representative M and N per bucket.
const REP_MN: [usize; 5] = [16, 64, 256, 1024, 2048];

/// Representative K per bucket.
const REP_K: [usize; 5] = [16, 64, 256, 512, 2048];

/// Most multiply-adds a representative product has before the device's speed is considered.
const REP_MAX_MACS: usize = 2048 * 2048 * 512;

/// A candidate within this factor of the fastest loses to the default tiling.
const DEFAULT_SLACK: f64 = 1.03;

/// Multiply-adds of the product that probes the device's speed (at most).
const PROBE_MACS: usize = 1 << 22;

/// Time one timed sample aims for: products shorter than this repeat within the sample.
const SAMPLE_TARGET: Duration = Duration::from_millis(1);

/// A candidate whose warm-up run takes this many times the best warm-up so far is not
/// sampled further (it cannot win).
const HOPELESS: f64 = 4.0;

/// Most products one timed sample repeats.
const MAX_REPEATS: usize = 8;

/// Bytes of freed buffers the tuning device's pool keeps.
const BENCH_POOL_BYTES: u64 = 32 << 20;

/// The bucket (0 to 4) of one GEMM dimension: `≤16`, `≤64`, `≤256`, `≤1024`, `>1024`.
pub fn dim_bucket(d: usize) -> u8 {
    BUCKET_BOUNDS.iter().take_while(|&&b| d > b).count() as u8
}

/// The label of a bucket in class keys (`<=16` … `>1024`).
fn bucket_label(b: u8) -> String {
    match BUCKET_BOUNDS.get(usize::from(b)) {
        Some(bound) => format!("<={bound}"),
        None => format!(">{}", BUCKET_BOUNDS[BUCKET_BOUNDS.len() - 1]),
    }
}

/// A class of GEMM shapes that share one tiling: a bucket per dimension and the dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShapeClass {
    /// Bucket of M (rows of C).
    pub m: u8,
    /// Bucket of N (columns of C).
    pub n: u8,
    /// Bucket of K (the reduced dimension).
    pub k: u8,
    /// Operand dtype.
    pub dtype: DType,
}

impl ShapeClass {
    /// The class of an `m × n × k` product of `dtype` operands.
    pub fn of(m: usize, n: usize, k: usize, dtype: DType) -> Self {
        ShapeClass {
            m: dim_bucket(m),
            n: dim_bucket(n),
            k: dim_bucket(k),
            dtype,
        }
    }

    /// The key the class has in the cache, e.g. `f32:m<=64:n<=256:k>1024`.
    pub fn key(&self) -> String {
        format!(
            "{}:m{}:n{}:k{}",
            self.dtype.name(),
            bucket_label(self.m),
            bucket_label(self.n),
            bucket_label(self.k)
        )
    }

    /// The `(m, n, k)` product the class is timed on (before any slow-device shrinking).
    pub fn representative(&self) -> (usize, usize, usize) {
        let pick = |table: &[usize; 5], b: u8| table[usize::from(b).min(4)];
        let m = pick(&REP_MN, self.m);
        let n = pick(&REP_MN, self.n);
        let k = pick(&REP_K, self.k).min((REP_MAX_MACS / (m * n)).max(16));
        (m, n, k)
    }

    /// The smallest `(m, n, k)` a slow device shrinks the representative to: 16 each, but
    /// K stays at 1024 in the top K bucket so a skinny product keeps its split-K path.
    pub fn floors(&self) -> (usize, usize, usize) {
        let k = if usize::from(self.k) >= BUCKET_BOUNDS.len() {
            1024
        } else {
            16
        };
        (16, 16, k)
    }
}

/// Halves the largest of `dims` that is above its floor in `floors` (K, then N, on ties)
/// until their product is at most `max_macs` or every dimension is at its floor.
fn shrink_to(
    dims: (usize, usize, usize),
    floors: (usize, usize, usize),
    max_macs: f64,
) -> (usize, usize, usize) {
    let mut d = [dims.0, dims.1, dims.2];
    let f = [
        floors.0.min(dims.0),
        floors.1.min(dims.1),
        floors.2.min(dims.2),
    ];
    while (d[0] * d[1] * d[2]) as f64 > max_macs {
        let Some(i) = (0..3).filter(|&i| d[i] > f[i]).max_by_key(|&i| d[i]) else {
            break;
        };
        d[i] = (d[i] / 2).max(f[i]);
    }
    (d[0], d[1], d[2])
}

/// Doubles the smallest of `dims` still below its size in `rep` (capped there); `dims` when
/// every dimension has reached it.
fn grow_toward(dims: (usize, usize, usize), rep: (usize, usize, usize)) -> (usize, usize, usize) {
    let mut d = [dims.0, dims.1, dims.2];
    let r = [rep.0, rep.1, rep.2];
    if let Some(i) = (0..3).filter(|&i| d[i] < r[i]).min_by_key(|&i| d[i]) {
        d[i] = (d[i] * 2).min(r[i]);
    }
    (d[0], d[1], d[2])
}

/// Whether `ACCELMESH_GPU_TUNE`'s value turns tuning on (unset or anything but `0`, `false`,
/// `off`, `no`).
fn tuning_enabled(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "false" | "off" | "no")
    )
}

/// A tiling written `BM,BN,BK,TM,TN` (`ACCELMESH_GPU_TILE`), checked to be well formed.
fn parse_tile(text: &str) -> crate::Result<TileConfig> {
    let bad = |why: &str| crate::Error::parse("ACCELMESH_GPU_TILE", text, why);
    let v = text
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| bad("expected five positive integers BM,BN,BK,TM,TN"))?;
    let [bm, bn, bk, tm, tn] = v[..] else {
        return Err(bad("expected five positive integers BM,BN,BK,TM,TN"));
    };
    let tile = TileConfig::new(bm, bn, bk, tm, tn);
    if !tile.is_well_formed() {
        return Err(bad(
            "TM and TN must be 1 to 8 and divide BM and BN; BK and BN multiples of 4 (BK >= 4)",
        ));
    }
    Ok(tile)
}

/// A directory named by environment variable `var`, if set and non-empty.
fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The user cache directory of accelmesh: `$ACCELMESH_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/accelmesh` (when absolute), else `%LOCALAPPDATA%\accelmesh` on Windows,
/// else `$HOME/.cache/accelmesh`; `None` when none of these is set.
pub fn cache_dir() -> Option<PathBuf> {
    env_dir("ACCELMESH_CACHE_DIR")
        .or_else(|| {
            env_dir("XDG_CACHE_HOME")
                .filter(|d| d.is_absolute())
                .map(|d| d.join("accelmesh"))
        })
        .or_else(|| {
            if cfg!(windows) {
                env_dir("LOCALAPPDATA").map(|d| d.join("accelmesh"))
            } else {
                None
            }
        })
        .or_else(|| env_dir("HOME").map(|d| d.join(".cache").join("accelmesh")))
}

/// The tiling cache file under [`cache_dir`].
pub fn default_cache_path() -> Option<PathBuf> {
    cache_dir().map(|d| d.join(CACHE_FILE))
}

/// Cached tilings: adapter key → class key → tiling.
type CacheEntries = BTreeMap<String, BTreeMap<String, TileConfig>>;

/// Parses cache file text, keeping every well-formed entry; a malformed file or one of
/// another version gives nothing, a malformed entry is skipped.
fn parse_cache(text: &str) -> CacheEntries {
    let mut out = CacheEntries::new();
    let Ok(root) = serde_json::from_str::<Value>(text) else {
        return out;
    };
    if root.get("version").and_then(Value::as_u64) != Some(CACHE_VERSION) {
        return out;
    }
    let Some(adapters) = root.get("adapters").and_then(Value::as_object) else {
        return out;
    };
    for (adapter, classes) in adapters {
        let Some(classes) = classes.as_object() else {
            continue;
        };
        let mut kept = BTreeMap::new();
        for (class, tile) in classes {
            if let Ok(tile) = serde_json::from_value::<TileConfig>(tile.clone()) {
                kept.insert(class.clone(), tile);
            }
        }
        out.insert(adapter.clone(), kept);
    }
    out
}

/// The cache file's entries, or nothing when it is missing, unreadable or malformed.
fn read_cache(path: &Path) -> CacheEntries {
    std::fs::read_to_string(path)
        .map(|t| parse_cache(&t))
        .unwrap_or_default()
}

/// The cached tilings of `adapter` that are tuner candidates, by class key.
fn load_choices(path: &Path, adapter: &str) -> HashMap<String, TileConfig> {
    read_cache(path)
        .remove(adapter)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, t)| TileConfig::CANDIDATES.contains(t))
        .collect()
}

/// The cache file text for `entries`.
fn render_cache(entries: &CacheEntries) -> String {
    let mut adapters = Map::new();
    for (adapter, classes) in entries {
        let mut obj = Map::new();
        for (class, tile) in classes {
            if let Ok(v) = serde_json::to_value(tile) {
                obj.insert(class.clone(), v);
            }
        }
        adapters.insert(adapter.clone(), Value::Object(obj));
    }
    let mut root = Map::new();
    root.insert("version".into(), Value::from(CACHE_VERSION));
    root.insert("adapters".into(), Value::Object(adapters));
    let mut text = serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_default();
    text.push('\n');
    text
}

/// Records `tile` for `adapter` and `class` in the cache file at `path`: merges into the
/// file as it is now and replaces it atomically (temporary file in the same directory, then
/// rename); creates the directory when missing.
fn store_choice(path: &Path, adapter: &str, class: &str, tile: TileConfig) -> std::io::Result<()> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut entries = read_cache(path);
    entries
        .entry(adapter.to_string())
        .or_default()
        .insert(class.to_string(), tile);
    let text = render_cache(&entries);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| CACHE_FILE.to_string());
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What a tuner remembers.
#[derive(Debug, Default)]
struct Memory {
    /// Whether the disk cache has been read.
    loaded: bool,
    /// Choices by class key (from disk or tuned here).
    choices: HashMap<String, TileConfig>,
}

/// Picks tilings for one adapter, tuning each shape class on first use.
#[derive(Debug)]
pub struct Tuner {
    adapter_key: String,
    enabled: bool,
    /// A tiling every product gets where it fits (`ACCELMESH_GPU_TILE`), instead of tuning.
    forced: Option<TileConfig>,
    cache: Option<PathBuf>,
    memory: Mutex<Memory>,
    /// Held while a class is tuned, so concurrent ops do not tune twice.
    tuning: Mutex<()>,
    /// The second device tuning runs on, opened on first need.
    bench: Mutex<Option<Arc<GpuShared>>>,
    runs: AtomicUsize,
}

/// Locks `m`, recovering the data of a poisoned lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tuner {
    /// A tuner for `info`'s adapter, on or off per `ACCELMESH_GPU_TUNE`, caching in
    /// [`default_cache_path`].
    /// `ACCELMESH_GPU_TILE=BM,BN,BK,TM,TN` forces one tiling wherever it fits (no tuning,
    /// no cache): a malformed value is an [`crate::Error::Parse`] naming it.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> crate::Result<Self> {
        let enabled = tuning_enabled(std::env::var("ACCELMESH_GPU_TUNE").ok().as_deref());
        let mut tuner = Tuner::with_settings(info, enabled, default_cache_path());
        if let Ok(text) = std::env::var("ACCELMESH_GPU_TILE") {
            tuner.forced = Some(parse_tile(&text)?);
        }
        Ok(tuner)
    }

    /// A tuner for `info`'s adapter that tunes when `enabled` and caches in `cache` (none:
    /// memory only).
    pub fn with_settings(info: &wgpu::AdapterInfo, enabled: bool, cache: Option<PathBuf>) -> Self {
        Tuner {
            adapter_key: adapter_key(info),
            enabled,
            forced: None,
            cache,
            memory: Mutex::new(Memory::default()),
            tuning: Mutex::new(()),
            bench: Mutex::new(None),
            runs: AtomicUsize::new(0),
        }
    }

    /// The key the adapter has in the cache: name, driver, driver info and backend.
    pub fn adapter_key(&self) -> &str {
        &self.adapter_key
    }

    /// Whether this tuner tunes (otherwise every product gets [`TileConfig::DEFAULT`]).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The cache file this tuner reads and writes, if any.
    pub fn cache_path(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// How many shape classes this tuner has timed (cache hits do not count).
    pub fn tuning_runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// The choices known so far (read from the cache or tuned), as (class key, tiling),
    /// sorted by class key.
    pub fn choices(&self) -> Vec<(String, TileConfig)> {
        let mut out: Vec<_> = lock(&self.memory)
            .choices
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The tiling for an `m × n × k` product of `dtype` operands on `shared`'s device,
    /// tuning the product's class (on a second device of the same adapter) on first use;
    /// the default for an empty product.
    pub fn tile(
        &self,
        shared: &GpuShared,
        m: usize,
        n: usize,
        k: usize,
        dtype: DType,
    ) -> TileConfig {
        if m == 0 || n == 0 || k == 0 {
            return TileConfig::DEFAULT;
        }
        self.tile_with(shared, ShapeClass::of(m, n, k, dtype), || {
            self.bench_device(shared)
        })
    }

    /// Like [`Tuner::tile`], but times the candidates on the node's own device `shared`
    /// (no second device is opened).
    pub fn tile_on_node(
        &self,
        shared: &Arc<GpuShared>,
        m: usize,
        n: usize,
        k: usize,
        dtype: DType,
    ) -> TileConfig {
        if m == 0 || n == 0 || k == 0 {
            return TileConfig::DEFAULT;
        }
        self.tile_with(shared, ShapeClass::of(m, n, k, dtype), || {
            Some(Arc::clone(shared))
        })
    }

    /// The class's known choice when it fits `target`, else the outcome of tuning it on the
    /// device `bench` gives.
    fn tile_with(
        &self,
        target: &GpuShared,
        class: ShapeClass,
        bench: impl FnOnce() -> Option<Arc<GpuShared>>,
    ) -> TileConfig {
        if let Some(tile) = self.forced
            && tile.fits(target)
        {
            return tile;
        }
        if !self.enabled {
            return TileConfig::DEFAULT;
        }
        let key = class.key();
        if let Some(t) = self.known(target, &key) {
            return t;
        }
        let _tuning = lock(&self.tuning);
        if let Some(t) = self.known(target, &key) {
            return t;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let device = bench()?;
            let tuned = tune_class(&device, target, class);
            if device.ctx.is_failed() {
                // A failed tuning device is reopened next time.
                lock(&self.bench).take();
            }
            tuned
        }));
        self.runs.fetch_add(1, Ordering::SeqCst);
        let tuned = outcome.ok().flatten();
        let tile = tuned.unwrap_or(TileConfig::DEFAULT);
        lock(&self.memory).choices.insert(key.clone(), tile);
        if tuned.is_some()
            && let Some(path) = &self.cache
        {
            let _ = store_choice(path, &self.adapter_key, &key, tile);
        }
        tile
    }

    /// The remembered choice for `key` when it fits `target` (reads the cache on first use).
    fn known(&self, target: &GpuShared, key: &str) -> Option<TileConfig> {
        let mut memory = lock(&self.memory);
        if !memory.loaded {
            memory.loaded = true;
            if let Some(path) = &self.cache {
                let mut disk = load_choices(path, &self.adapter_key);
                disk.extend(memory.choices.drain());
                memory.choices = disk;
            }
        }
        memory.choices.get(key).copied().filter(|t| t.fits(target))
    }

    /// The tuning device: a second logical device on `target`'s adapter, opened once.
    fn bench_device(&self, target: &GpuShared) -> Option<Arc<GpuShared>> {
        let mut bench = lock(&self.bench);
        if let Some(b) = bench.as_ref() {
            return Some(Arc::clone(b));
        }
        let opened = open_bench(target)?;
        *bench = Some(Arc::clone(&opened));
        Some(opened)
    }
}

/// The cache key of an adapter.
fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{}|{}|{}|{:?}",
        info.name, info.driver, info.driver_info, info.backend
    )
}

/// Opens a second device on the adapter `target` was opened on, with a tuner that is off.
fn open_bench(target: &GpuShared) -> Option<Arc<GpuShared>> {
    let info = &target.ctx.adapter_info;
    let backends = wgpu::Backends::from(info.backend);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .find(|a| a.get_info() == *info)?;
    let id = format!("{}-tuning", target.ctx.id);
    let ctx = GpuContext::open(id, &adapter, LimitOverrides::default()).ok()?;
    let tuner = Tuner::with_settings(&ctx.adapter_info, false, None);
    Some(Arc::new(GpuShared {
        ctx,
        pool: BufferPool::new(BENCH_POOL_BYTES),
        transfers: Mutex::new(TransferStats::default()),
        kernels: PipelineCache::default(),
        tuner,
    }))
}

/// Random operands and the output of one representative product.
struct Operands {
    a: GpuTensor,
    b: GpuTensor,
    c: GpuTensor,
    m: usize,
    n: usize,
    k: usize,
}

impl Operands {
    /// Uploads seeded random `m × k` and `k × n` operands of `dtype` to `bench`.
    fn new(bench: &Arc<GpuShared>, (m, n, k): (usize, usize, usize), dtype: DType) -> Result<Self> {
        let a = GpuTensor::upload_uncounted(bench, &Tensor::random([m, k], dtype, 0x7u64)?)?;
        let b = GpuTensor::upload_uncounted(bench, &Tensor::random([k, n], dtype, 0x8u64)?)?;
        let c = GpuTensor::empty(bench, Shape::new([m, n]), DType::F32)?;
        Ok(Operands { a, b, c, m, n, k })
    }

    fn args(&self) -> MatmulArgs<'_> {
        MatmulArgs {
            a: &self.a,
            b: &self.b,
            c: &self.c,
            m: self.m,
            n: self.n,
            k: self.k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            relu: false,
        }
    }
}

/// Seconds `repeats` back-to-back products with `tile` take on `bench`: GPU timestamps when
/// `timer` is given and yields them, wall clock from submission to completion otherwise.
fn time_tile(
    bench: &GpuShared,
    ops: &Operands,
    tile: TileConfig,
    repeats: usize,
    mut timer: Option<&mut KernelTimer>,
) -> Result<f64> {
    let ctx = &bench.ctx;
    let args = ops.args();
    let (start, submission) = ctx.scoped("tuning a GEMM tiling", || {
        let mut rec = Recorder::new(bench, timer.as_deref_mut());
        for _ in 0..repeats {
            encode_matmul(bench, &mut rec, &args, tile)?;
        }
        let start = Instant::now();
        Ok((start, rec.submit()))
    })?;
    let stamped = match timer {
        Some(t) => t.seconds(ctx)?,
        None => None,
    };
    ctx.wait(Some(submission))?;
    let wall = start.elapsed().as_secs_f64();
    Ok(stamped.filter(|s| *s > 0.0).unwrap_or(wall))
}

/// Seconds one product with `tile` takes on `bench` after one untimed run of it (pipeline,
/// buffers), timed by `timer` when given.
fn time_warm(
    bench: &GpuShared,
    ops: &Operands,
    tile: TileConfig,
    timer: Option<&mut KernelTimer>,
) -> Result<f64> {
    time_tile(bench, ops, tile, 1, None)?;
    time_tile(bench, ops, tile, 1, timer)
}

/// The median of `v` (sorted in place); `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The fastest candidate: lowest time, but the default when it is within [`DEFAULT_SLACK`].
fn pick(timed: &[(TileConfig, f64)]) -> Option<TileConfig> {
    let best = timed
        .iter()
        .copied()
        .filter(|(_, s)| s.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let default = timed.iter().find(|(t, _)| *t == TileConfig::DEFAULT);
    match default {
        Some(&(t, s)) if s <= best.1 * DEFAULT_SLACK => Some(t),
        _ => Some(best.0),
    }
}

/// Times every candidate that fits both `target` and `bench` on `class`'s representative
/// product on `bench`; `None` when no candidate could be timed.
fn tune_class(bench: &Arc<GpuShared>, target: &GpuShared, class: ShapeClass) -> Option<TileConfig> {
    let candidates: Vec<TileConfig> = TileConfig::CANDIDATES
        .iter()
        .copied()
        .filter(|t| t.fits(target) && t.fits(bench))
        .collect();
    let (rep, floors) = (class.representative(), class.floors());
    let macs = |d: (usize, usize, usize)| (d.0 * d.1 * d.2).max(1) as f64;
    // GPU timestamps where the device has them: a small product's wall time is mostly the
    // submission's, which would make a fast device look slow.
    let mut timer = KernelTimer::new(&bench.ctx, (MAX_REPEATS * 2 + 2) as u32);
    // Probe the device's speed on a modest product with the first candidate that runs.
    let mut dims = shrink_to(rep, floors, PROBE_MACS as f64);
    let mut ops = Operands::new(bench, dims, class.dtype).ok()?;
    let mut first = 0;
    let mut elapsed = loop {
        let tile = *candidates.get(first)?;
        match time_warm(bench, &ops, tile, timer.as_mut()) {
            Ok(s) => break s,
            Err(_) if !bench.ctx.is_failed() => first += 1,
            Err(_) => return None,
        }
    };
    if elapsed > PROBE_BUDGET.as_secs_f64() {
        // A slow device: shrink further, to what its measured rate does within the budget.
        let per_mac = elapsed / macs(dims);
        let sized = shrink_to(rep, floors, PROBE_BUDGET.as_secs_f64() / per_mac);
        if sized != dims {
            elapsed *= macs(sized) / macs(dims);
            dims = sized;
            drop(ops);
            ops = Operands::new(bench, dims, class.dtype).ok()?;
        }
    } else {
        // A fast device: grow towards the representative while a product stays well inside
        // the budget, measuring each size (a probe too small to fill the device would
        // overstate its time per multiply-add and tune on a product of the wrong shape).
        while elapsed * 2.0 <= PROBE_BUDGET.as_secs_f64() {
            let next = grow_toward(dims, rep);
            if next == dims {
                break;
            }
            let Ok(bigger) = Operands::new(bench, next, class.dtype) else {
                break;
            };
            match time_warm(bench, &bigger, candidates[first], timer.as_mut()) {
                Ok(s) if s <= PROBE_BUDGET.as_secs_f64() => {
                    (dims, ops, elapsed) = (next, bigger, s);
                }
                Ok(_) => break,
                Err(_) if bench.ctx.is_failed() => return None,
                Err(_) => break,
            }
        }
    }
    let per_product = elapsed.max(1e-9);
    let repeats = (SAMPLE_TARGET.as_secs_f64() / per_product).clamp(1.0, MAX_REPEATS as f64);
    let repeats = repeats as usize;
    // Let the clocks come up before anything counts: an idle GPU starts slow, and the
    // candidates timed first would pay for it.
    let ramp = Instant::now();
    for _ in 0..CLOCK_RAMP_MAX_RUNS {
        if ramp.elapsed() >= CLOCK_RAMP {
            break;
        }
        if time_tile(bench, &ops, candidates[first], repeats, None).is_err() {
            break;
        }
    }
    // Warm every candidate once (dropping the hopeless), then take the timed samples in
    // rounds over the candidates, so a drift of the device's speed touches them all alike.
    let mut warm = Vec::with_capacity(candidates.len());
    let mut best_warm = f64::INFINITY;
    for &tile in &candidates[first..] {
        match time_tile(bench, &ops, tile, repeats, None) {
            Ok(s) if s <= best_warm * HOPELESS => {
                best_warm = best_warm.min(s);
                warm.push(tile);
            }
            Ok(_) => {}
            Err(_) if bench.ctx.is_failed() => return None,
            Err(_) => {}
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(SAMPLES); warm.len()];
    for _ in 0..SAMPLES {
        for (tile, times) in warm.iter().zip(samples.iter_mut()) {
            match time_tile(bench, &ops, *tile, repeats, timer.as_mut()) {
                Ok(s) => times.push(s),
                Err(_) if bench.ctx.is_failed() => return None,
                Err(_) => times.push(f64::INFINITY),
            }
        }
    }
    let timed: Vec<(TileConfig, f64)> = warm
        .into_iter()
        .zip(samples)
        .filter_map(|(tile, mut times)| median(&mut times).map(|m| (tile, m)))
        .collect();
    pick(&timed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp directory.
    fn temp_dir(tag: &str) -> PathBuf {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "accelmesh-tune-{tag}-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_forced_tiling_is_parsed_and_checked() {
        assert_eq!(
            parse_tile("128, 128, 8, 8, 8").unwrap(),
            TileConfig::new(128, 128, 8, 8, 8)
        );
        for bad in [
            "",
            "64,64,16,4",
            "64,64,16,4,4,4",
            "64,x,16,4,4",
            "64,64,6,4,4",
            "60,64,16,8,4",
        ] {
            let err = parse_tile(bad).unwrap_err().to_string();
            assert!(err.contains("ACCELMESH_GPU_TILE"), "{bad}: {err}");
        }
    }

    #[test]
    fn buckets_split_at_the_documented_bounds() {
        let cases = [
            (0, 0),
            (1, 0),
            (16, 0),
            (17, 1),
            (64, 1),
            (65, 2),
            (256, 2),
            (257, 3),
            (1024, 3),
            (1025, 4),
            (1 << 20, 4),
        ];
        for (d, b) in cases {
            assert_eq!(dim_bucket(d), b, "dimension {d}");
        }
    }

    #[test]
    fn similar_shapes_share_a_class_and_dtypes_do_not() {
        let a = ShapeClass::of(300, 500, 700, DType::F32);
        let b = ShapeClass::of(1000, 300, 1024, DType::F32);
        assert_eq!(a, b);
        assert_eq!(a.key(), "f32:m<=1024:n<=1024:k<=1024");
        assert_ne!(a, ShapeClass::of(300, 500, 700, DType::F16));
        assert_ne!(a, ShapeClass::of(300, 500, 1025, DType::F32));
        assert_eq!(
            ShapeClass::of(3, 5, 4099, DType::BF16).key(),
            "bf16:m<=16:n<=16:k>1024"
        );
        assert_eq!(
            ShapeClass::of(64, 65, 1, DType::F16).key(),
            "f16:m<=64:n<=256:k<=16"
        );
    }

    #[test]
    fn representatives_are_modest_and_keep_the_class() {
        for m in 0..5u8 {
            for n in 0..5u8 {
                for k in 0..5u8 {
                    let c = ShapeClass {
                        m,
                        n,
                        k,
                        dtype: DType::F32,
                    };
                    let (rm, rn, rk) = c.representative();
                    assert!(rm <= 2048 && rn <= 2048 && rk <= 2048, "{c:?}");
                    assert!(rm * rn * rk <= REP_MAX_MACS, "{c:?}");
                    // Within the cap, the representative lies in its own class.
                    if m < 4 && n < 4 && (k < 3 || rk > 256) {
                        let again = ShapeClass::of(rm, rn, rk, DType::F32);
                        assert_eq!((again.m, again.n), (m, n), "{c:?}");
                    }
                }
            }
        }
        // A skinny, deep class keeps a deep K so it takes the split-K path.
        assert_eq!(
            ShapeClass::of(3, 5, 4099, DType::F32).representative(),
            (16, 16, 2048)
        );
        assert_eq!(
            ShapeClass::of(4096, 4096, 4096, DType::F32).representative(),
            (2048, 2048, 512)
        );
    }

    #[test]
    fn shrinking_halves_the_largest_dimension_first() {
        let f = (16, 16, 16);
        assert_eq!(shrink_to((512, 512, 512), f, 1e12), (512, 512, 512));
        assert_eq!(
            shrink_to((512, 512, 512), f, (256 * 512 * 512) as f64),
            (512, 512, 256)
        );
        assert_eq!(
            shrink_to((512, 256, 512), f, (256 * 256 * 256) as f64),
            (256, 256, 256)
        );
        assert_eq!(
            shrink_to((16, 16, 2048), f, 16.0 * 16.0 * 256.0),
            (16, 16, 256)
        );
        // Never below the floor (or the original size when smaller).
        assert_eq!(shrink_to((8, 512, 512), f, 1.0), (8, 16, 16));
        let deep = ShapeClass::of(3, 5, 4099, DType::F32);
        assert_eq!(
            shrink_to(deep.representative(), deep.floors(), 1.0),
            (16, 16, 1024)
        );
    }

    #[test]
    fn growing_doubles_the_smallest_dimension_up_to_the_representative() {
        assert_eq!(
            grow_toward((128, 256, 128), (2048, 2048, 512)),
            (256, 256, 128)
        );
        assert_eq!(
            grow_toward((2048, 2048, 256), (2048, 2048, 512)),
            (2048, 2048, 512)
        );
        assert_eq!(
            grow_toward((2048, 2048, 512), (2048, 2048, 512)),
            (2048, 2048, 512)
        );
        let mut d = shrink_to((2048, 2048, 512), (16, 16, 16), (1 << 22) as f64);
        for _ in 0..64 {
            d = grow_toward(d, (2048, 2048, 512));
        }
        assert_eq!(d, (2048, 2048, 512));
    }

    #[test]
    fn tune_env_values() {
        assert!(tuning_enabled(None));
        assert!(tuning_enabled(Some("1")));
        assert!(tuning_enabled(Some("")));
        for off in ["0", "false", "OFF", " no "] {
            assert!(!tuning_enabled(Some(off)), "{off}");
        }
    }

    #[test]
    fn picks_the_fastest_unless_the_default_is_close() {
        let other = TileConfig::CANDIDATES[1];
        let d = TileConfig::DEFAULT;
        assert_eq!(pick(&[(d, 1.0), (other, 0.5)]), Some(other));
        assert_eq!(pick(&[(d, 1.0), (other, 0.99)]), Some(d));
        assert_eq!(pick(&[(other, 2.0)]), Some(other));
        assert_eq!(pick(&[]), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    }

    #[test]
    fn cache_round_trips_and_merges_adapters() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("sub").join(CACHE_FILE);
        let (t1, t2) = (TileConfig::CANDIDATES[1], TileConfig::CANDIDATES[5]);
        store_choice(&path, "gpu A|drv|1.0|Vulkan", "f32:m<=64:n<=64:k<=64", t1).unwrap();
        store_choice(&path, "gpu B|drv|2.0|Metal", "f16:m<=16:n<=16:k>1024", t2).unwrap();
        store_choice(&path, "gpu A|drv|1.0|Vulkan", "f32:m<=16:n<=16:k<=16", t2).unwrap();
        let a = load_choices(&path, "gpu A|drv|1.0|Vulkan");
        assert_eq!(a.len(), 2);
        assert_eq!(a["f32:m<=64:n<=64:k<=64"], t1);
        assert_eq!(a["f32:m<=16:n<=16:k<=16"], t2);
        let b = load_choices(&path, "gpu B|drv|2.0|Metal");
        assert_eq!(b["f16:m<=16:n<=16:k>1024"], t2);
        assert!(load_choices(&path, "gpu C").is_empty());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CACHE_FILE)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_caches_are_ignored_and_replaced() {
        let dir = temp_dir("malformed");
        let path = dir.join(CACHE_FILE);
        let adapter = "gpu|drv||Vulkan";
        assert!(load_choices(&path, adapter).is_empty(), "missing file");
        for garbage in [
            "",
            "{",
            "not json at all",
            "[1, 2, 3]",
            "{\"version\": 1, \"adapters\": 7}",
            "{\"version\": 99, \"adapters\": {\"gpu|drv||Vulkan\": {\"x\": \
             {\"bm\": 64, \"bn\": 64, \"bk\": 16, \"tm\": 4, \"tn\": 4}}}}",
        ] {
            std::fs::write(&path, garbage).unwrap();
            assert!(load_choices(&path, adapter).is_empty(), "{garbage:?}");
        }
        // Bad entries are skipped, good ones kept; a tiling that is no candidate is dropped.
        let mixed = r#"{"version": 2, "adapters": {"gpu|drv||Vulkan": {
            "good": {"bm": 32, "bn": 32, "bk": 16, "tm": 4, "tn": 4},
            "missing": {"bm": 32},
            "negative": {"bm": -1, "bn": 32, "bk": 16, "tm": 4, "tn": 4},
            "odd": {"bm": 48, "bn": 48, "bk": 16, "tm": 4, "tn": 4},
            "string": "64x64"
        }, "other": 5}}"#;
        std::fs::write(&path, mixed).unwrap();
        let got = load_choices(&path, adapter);
        assert_eq!(got.len(), 1);
        assert_eq!(got["good"], TileConfig::new(32, 32, 16, 4, 4));
        // Storing over a malformed file replaces it with a valid one.
        std::fs::write(&path, "{{{ garbage").unwrap();
        store_choice(&path, adapter, "k", TileConfig::DEFAULT).unwrap();
        assert_eq!(load_choices(&path, adapter)["k"], TileConfig::DEFAULT);
        // A directory where the file should be cannot be read or replaced: both fail quietly.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join(CACHE_FILE)).unwrap();
        assert!(load_choices(&blocked.join(CACHE_FILE), adapter).is_empty());
        assert!(
            store_choice(&blocked.join(CACHE_FILE), adapter, "k", TileConfig::DEFAULT).is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rendered_cache_has_the_documented_layout() {
        let mut entries = CacheEntries::new();
        entries
            .entry("a|b|c|Vulkan".into())
            .or_default()
            .insert("f32:m<=16:n<=16:k<=16".into(), TileConfig::DEFAULT);
        let v: Value = serde_json::from_str(&render_cache(&entries)).unwrap();
        assert_eq!(v["version"], CACHE_VERSION);
        assert_eq!(
            v["adapters"]["a|b|c|Vulkan"]["f32:m<=16:n<=16:k<=16"]["bm"],
            64
        );
        assert_eq!(parse_cache(&render_cache(&entries)), entries);
    }
}
