//! The GEMM autotuner on a real adapter (Mesa's software Vulkan driver in CI): tuning on first
//! use of a shape class, correct results with the chosen tiling, the on-disk cache and its
//! reuse by later devices and processes, `ACCELMESH_GPU_TUNE=0`, and tolerance of a malformed
//! cache. Each scenario runs in a child process of this test binary, so the cache directory
//! and the switch are set through the environment without touching this process's. Skips with
//! a message when there is no adapter, unless `ACCELMESH_REQUIRE_GPU=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use accelmesh::node::gpu::tune::{CACHE_FILE, CACHE_VERSION, ShapeClass, Tuner};
use accelmesh::node::gpu::{GpuDevice, LimitOverrides, TileConfig, discover};
use accelmesh::{Conv2dParams, DType, Device, Op, Tensor};
use common::{assert_close_tol, conv_ref, matmul_ref};
use serde_json::Value;

/// Names the scenario a child process runs.
const CHILD: &str = "ACCELMESH_TUNE_CHILD";

/// Whether a GPU adapter is there (panics when one is required and missing).
fn have_gpu() -> bool {
    if !discover().is_empty() {
        return true;
    }
    if std::env::var("ACCELMESH_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("ACCELMESH_REQUIRE_GPU=1 but wgpu found no GPU adapter");
    }
    eprintln!(
        "skipping GPU tuning test: no GPU adapter. On Debian, `apt-get install \
         mesa-vulkan-drivers libvulkan1` provides a software Vulkan adapter."
    );
    false
}

/// A fresh, empty directory under the system temp directory, removed when dropped.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("accelmesh-gpu-tune-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Runs scenario `mode` in a child process with the cache in `dir` and `ACCELMESH_GPU_TUNE`
/// set to `tune`; fails with the child's output when it fails.
fn run_child(mode: &str, dir: &Path, tune: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "tuner_child_process", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD, mode)
        .env("ACCELMESH_CACHE_DIR", dir)
        .env("ACCELMESH_GPU_TUNE", tune)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {mode} failed:\n{text}");
    for line in text.lines().filter(|l| l.contains("tuning:")) {
        eprintln!("{mode}: {line}");
    }
}

/// The cache file's entry for `adapter` and `class`, if any.
fn cached(dir: &Path, adapter: &str, class: &str) -> Option<TileConfig> {
    let text = std::fs::read_to_string(dir.join(CACHE_FILE)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(v["adapters"][adapter][class].clone()).ok()
}

/// The adapter key of adapter 0, as the tuner spells it.
fn adapter0_key() -> String {
    let info = &discover()[0].info;
    Tuner::with_settings(info, false, None)
        .adapter_key()
        .to_string()
}

#[test]
fn tuning_is_cached_per_adapter_and_reused_by_later_processes() {
    if !have_gpu() {
        return;
    }
    let tmp = temp_dir("reuse");
    let dir = tmp.path();
    run_child("tune", dir, "1");
    let class = ShapeClass::of(200, 300, 150, DType::F32).key();
    let tile = cached(dir, &adapter0_key(), &class).expect("the choice is cached");
    assert!(TileConfig::CANDIDATES.contains(&tile));
    run_child("reuse", dir, "1");
}

#[test]
fn disabled_tuning_uses_the_default_and_writes_nothing() {
    if !have_gpu() {
        return;
    }
    let tmp = temp_dir("off");
    let dir = tmp.path();
    run_child("off", dir, "0");
    assert!(!dir.join(CACHE_FILE).exists());
}

#[test]
fn malformed_or_foreign_cache_entries_are_ignored() {
    if !have_gpu() {
        return;
    }
    let tmp = temp_dir("malformed");
    let dir = tmp.path();
    std::fs::write(dir.join(CACHE_FILE), "{ this is not json").unwrap();
    run_child("retune", dir, "1");
    let class = ShapeClass::of(200, 300, 150, DType::F32).key();
    assert!(cached(dir, &adapter0_key(), &class).is_some());
    // A tiling that is no candidate is ignored (and retuned); a valid one is used as is.
    let key = adapter0_key();
    let small = ShapeClass::of(40, 40, 40, DType::F32).key();
    let seeded = serde_json::json!({
        "version": CACHE_VERSION,
        "adapters": {
            (key.clone()): {
                (class.clone()): {"bm": 48, "bn": 48, "bk": 16, "tm": 4, "tn": 4},
                (small): {"bm": 32, "bn": 32, "bk": 16, "tm": 4, "tn": 4},
            }
        }
    });
    std::fs::write(dir.join(CACHE_FILE), seeded.to_string()).unwrap();
    run_child("seeded", dir, "1");
    let retuned = cached(dir, &key, &class).unwrap();
    assert!(TileConfig::CANDIDATES.contains(&retuned));
}

/// One scenario, run only inside a child process started by the tests above.
#[test]
fn tuner_child_process() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("ACCELMESH_CACHE_DIR").unwrap());
    let dev = GpuDevice::open(0, 0, LimitOverrides::default()).expect("adapter 0 opens");
    let tuner = &dev.shared().tuner;
    assert_eq!(tuner.cache_path(), Some(dir.join(CACHE_FILE).as_path()));
    match mode.as_str() {
        "tune" => child_tune(&dev, &dir),
        "reuse" => child_reuse(&dev),
        "off" => child_off(&dev),
        "retune" => {
            matmul_checked(&dev, 200, 300, 150, DType::F32, 3);
            assert_eq!(dev.shared().tuner.tuning_runs(), 1);
        }
        "seeded" => {
            let t = &dev.shared().tuner;
            let seeded = t.tile(dev.shared(), 40, 40, 40, DType::F32);
            assert_eq!(seeded, TileConfig::new(32, 32, 16, 4, 4));
            assert_eq!(t.tuning_runs(), 0, "a valid cached choice is used as is");
            matmul_checked(&dev, 40, 40, 40, DType::F32, 4);
            matmul_checked(&dev, 200, 300, 150, DType::F32, 5);
            assert_eq!(
                t.tuning_runs(),
                1,
                "a cached tiling that is no candidate is retuned"
            );
        }
        other => panic!("unknown child scenario {other}"),
    }
}

/// Runs an `m × n × k` matmul on `dev`, checks it against float64 and returns the seconds
/// the call took.
fn matmul_checked(dev: &GpuDevice, m: usize, n: usize, k: usize, dtype: DType, seed: u64) -> f64 {
    let a = Tensor::random([m, k], dtype, seed).unwrap();
    let b = Tensor::random([k, n], dtype, seed + 1).unwrap();
    let start = Instant::now();
    let out = dev.execute(&Op::matmul(), &[&a, &b]).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let tol = if dtype == DType::F32 { 2e-5 } else { 5e-5 };
    assert_close_tol(
        &format!("{m}x{n}x{k} {dtype}"),
        &out[0],
        &matmul_ref(&a, &b, false, false),
        tol,
    );
    secs
}

/// First use: tunes, stays correct, caches, and a second device reads the cache.
fn child_tune(dev: &GpuDevice, dir: &Path) {
    let tuner = &dev.shared().tuner;
    assert!(tuner.enabled());
    assert_eq!(tuner.tuning_runs(), 0);
    let class = ShapeClass::of(200, 300, 150, DType::F32).key();

    let first = matmul_checked(dev, 200, 300, 150, DType::F32, 1);
    assert_eq!(tuner.tuning_runs(), 1);
    let again = matmul_checked(dev, 200, 300, 150, DType::F32, 1);
    println!("tuning: {class}: {:.3} s", first - again);
    // A similar shape shares the class: no second tuning.
    matmul_checked(dev, 190, 280, 140, DType::F32, 2);
    assert_eq!(tuner.tuning_runs(), 1);
    let choices = tuner.choices();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0].0, class);
    let tile = choices[0].1;
    assert!(tile.fits(dev.shared()));

    let path = dir.join(CACHE_FILE);
    let text = std::fs::read_to_string(&path).expect("the cache file is written");
    let v: Value = serde_json::from_str(&text).expect("the cache file is JSON");
    assert_eq!(v["version"], CACHE_VERSION);
    let on_disk: TileConfig =
        serde_json::from_value(v["adapters"][tuner.adapter_key()][&class].clone())
            .expect("the cache holds the adapter's choice");
    assert_eq!(on_disk, tile);

    // Other dtypes and a conv (as implicit GEMM) tune their own classes, stay correct.
    for dtype in [DType::F16, DType::BF16] {
        let runs = tuner.tuning_runs();
        let first = matmul_checked(dev, 70, 90, 50, dtype, 3);
        let again = matmul_checked(dev, 70, 90, 50, dtype, 3);
        assert_eq!(tuner.tuning_runs(), runs + 1);
        let key = ShapeClass::of(70, 90, 50, dtype).key();
        println!("tuning: {key}: {:.3} s", first - again);
    }
    let x = Tensor::random([2, 8, 12, 12], DType::F32, 7).unwrap();
    let w = Tensor::random([16, 8, 3, 3], DType::F32, 8).unwrap();
    let p = Conv2dParams {
        pads: [1, 1, 1, 1],
        ..Conv2dParams::default()
    };
    let runs = tuner.tuning_runs();
    let out = dev.execute(&Op::Conv2d(p.clone()), &[&x, &w]).unwrap();
    assert_eq!(tuner.tuning_runs(), runs + 1);
    assert_close_tol("conv", &out[0], &conv_ref(&x, &w, None, &p), 2e-5);

    // Tuning on the node's own device; a skinny, deep product (split-K) of that class then
    // reuses the choice and stays correct.
    let runs = tuner.tuning_runs();
    let start = Instant::now();
    let own = tuner.tile_on_node(dev.shared(), 3, 5, 4099, DType::F32);
    let key = ShapeClass::of(3, 5, 4099, DType::F32).key();
    println!(
        "tuning: {key} (on the node's device): {:.3} s",
        start.elapsed().as_secs_f64()
    );
    assert!(own.fits(dev.shared()));
    assert_eq!(tuner.tuning_runs(), runs + 1);
    matmul_checked(dev, 3, 5, 4099, DType::F32, 9);
    assert_eq!(tuner.tuning_runs(), runs + 1);

    // A second device opened later reads the choices instead of tuning again.
    let dev2 = GpuDevice::open(0, 1, LimitOverrides::default()).unwrap();
    let tuner2 = &dev2.shared().tuner;
    matmul_checked(&dev2, 250, 260, 200, DType::F32, 10);
    assert_eq!(tuner2.tuning_runs(), 0);
    assert_eq!(
        tuner2.tile(dev2.shared(), 200, 300, 150, DType::F32),
        tile,
        "the second device uses the cached choice"
    );
    assert_eq!(tuner2.choices().len(), tuner.choices().len());
}

/// A later process: reads the cached choice, does not tune.
fn child_reuse(dev: &GpuDevice) {
    let tuner = &dev.shared().tuner;
    matmul_checked(dev, 200, 300, 150, DType::F32, 11);
    assert_eq!(tuner.tuning_runs(), 0, "the cached choice is used");
    let class = ShapeClass::of(200, 300, 150, DType::F32).key();
    assert!(tuner.choices().iter().any(|(k, _)| *k == class));
}

/// `ACCELMESH_GPU_TUNE=0`: always the default tiling, nothing timed or written.
fn child_off(dev: &GpuDevice) {
    let tuner = &dev.shared().tuner;
    assert!(!tuner.enabled());
    for (m, n, k) in [(200, 300, 150), (3, 5, 4099), (1, 1, 1)] {
        assert_eq!(
            tuner.tile(dev.shared(), m, n, k, DType::F32),
            TileConfig::DEFAULT
        );
    }
    matmul_checked(dev, 200, 300, 150, DType::F32, 12);
    assert_eq!(tuner.tuning_runs(), 0);
    assert!(tuner.choices().is_empty());
}
