//! The performance model: predictions, fallbacks, online correction, calibration of real
//! nodes (a one-thread CPU node; the first GPU adapter when one opens, skipped with a message
//! otherwise unless `ACCELMESH_REQUIRE_GPU=1`) and the on-disk cache.

use std::sync::Arc;
use std::time::Instant;

use accelmesh::drac::perf_model::{OpClass, PerfModel, Rate, TransferRate};
use accelmesh::node::gpu::GpuDevice;
use accelmesh::{CpuDevice, DType, Device, DeviceInfo, Error, Op, Shape, Tensor};

/// A fresh directory under the system temp dir for one test, removed when dropped.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("accelmesh-perf-model-{tag}-"))
        .tempdir()
        .unwrap()
}

fn rate(gflops: f64, overhead_s: f64) -> Rate {
    Rate { gflops, overhead_s }
}

#[test]
fn predict_is_overhead_plus_flops_over_rate() {
    let mut m = PerfModel::new();
    m.set_rate("n", OpClass::MatMul, DType::F32, rate(50.0, 1e-4));
    let (a, b) = (Shape::new([64, 128]), Shape::new([128, 32]));
    let flops = 2 * 64 * 128 * 32;
    let t = m
        .predict("n", &Op::matmul(), &[&a, &b], DType::F32)
        .unwrap();
    let want = 1e-4 + flops as f64 / 50e9;
    assert!((t - want).abs() < 1e-15, "{t} vs {want}");
    assert_eq!(
        m.predict_flops("n", OpClass::MatMul, DType::F32, flops),
        Some(t)
    );
    let i = m.node_index("n");
    assert_eq!(
        m.predict_flops_at(i, OpClass::MatMul, DType::F32, flops),
        Some(t)
    );
    assert_eq!(
        m.predict_flops_at(i + 7, OpClass::MatMul, DType::F32, flops),
        None
    );
    // Bad shapes are the op's error; an unknown node is an error naming it.
    assert!(matches!(
        m.predict("n", &Op::matmul(), &[&a, &a], DType::F32),
        Err(Error::Shape { .. })
    ));
    let err = m
        .predict("ghost-node", &Op::matmul(), &[&a, &b], DType::F32)
        .unwrap_err();
    assert!(err.to_string().contains("ghost-node"), "{err}");
    // Interning a key does not make the node known.
    let g = m.node_index("ghost-node");
    assert!(!m.known("ghost-node"));
    assert_eq!(m.predict_flops_at(g, OpClass::MatMul, DType::F32, 1), None);
}

#[test]
fn fallback_rules() {
    let mut m = PerfModel::new();
    assert_eq!(m.rate("n", OpClass::MatMul, DType::F32), None);
    m.set_rate("n", OpClass::MatMul, DType::F32, rate(100.0, 1e-5));
    m.set_rate("n", OpClass::MatMul, DType::F16, rate(60.0, 2e-5));
    // Exact.
    assert_eq!(
        m.rate("n", OpClass::MatMul, DType::F16),
        Some(rate(60.0, 2e-5))
    );
    // Same class: the f32 rate.
    assert_eq!(
        m.rate("n", OpClass::MatMul, DType::BF16),
        Some(rate(100.0, 1e-5))
    );
    // Other class, same dtype first, scaled by relative speed; overhead kept.
    let conv = m.rate("n", OpClass::Conv2d, DType::F16).unwrap();
    assert!((conv.gflops - 60.0 * 0.8).abs() < 1e-9 && conv.overhead_s == 2e-5);
    let other = m.rate("n", OpClass::Other, DType::BF16).unwrap();
    assert!((other.gflops - 100.0 * 0.1).abs() < 1e-9);
    // The fast path follows the same rules.
    let t = m
        .predict_flops("n", OpClass::Conv2d, DType::F16, 48_000_000_000)
        .unwrap();
    assert!((t - (2e-5 + 1.0)).abs() < 1e-9, "{t}");
    // Entries list only what was set.
    let e = m.entries();
    assert_eq!(e.len(), 2);
    assert!(
        e.iter()
            .all(|(k, c, _, _, corr)| k == "n" && *c == OpClass::MatMul && *corr == 1.0)
    );
    assert_eq!(OpClass::of(&Op::matmul()), OpClass::MatMul);
    assert_eq!(
        OpClass::of(&Op::Conv2d(Default::default())),
        OpClass::Conv2d
    );
    assert_eq!(OpClass::of(&Op::GlobalAvgPool), OpClass::Other);
}

#[test]
fn a_slow_node_is_corrected_within_four_jobs_and_a_normal_one_stays() {
    let mut m = PerfModel::new();
    for key in ["slow", "normal"] {
        m.set_rate(key, OpClass::MatMul, DType::F32, rate(20.0, 1e-4));
    }
    let flops = 2 * 512u64.pow(3);
    let predicted = m
        .predict_flops("slow", OpClass::MatMul, DType::F32, flops)
        .unwrap();
    let truth = 3.0 * predicted;
    let mut jobs = 0;
    for n in 1..=4 {
        assert!(m.observe("slow", OpClass::MatMul, DType::F32, flops, truth));
        // A normal node's observations match, within noise.
        let noise = if n % 2 == 0 { 1.05 } else { 0.95 };
        assert!(m.observe(
            "normal",
            OpClass::MatMul,
            DType::F32,
            flops,
            predicted * noise
        ));
        let now = m
            .predict_flops("slow", OpClass::MatMul, DType::F32, flops)
            .unwrap();
        if (now - truth).abs() <= 0.1 * truth {
            jobs = n;
            break;
        }
    }
    assert!(jobs > 0 && jobs <= 4, "not within 10% after 4 observations");
    let normal = m
        .predict_flops("normal", OpClass::MatMul, DType::F32, flops)
        .unwrap();
    assert!(
        (normal / predicted - 1.0).abs() < 0.05,
        "{normal} vs {predicted}"
    );
    assert_eq!(m.samples("slow", OpClass::MatMul, DType::F32), jobs as u64);
    // The slow node's other ops lose share too (node-wide factor for unobserved cells).
    assert!(m.correction("slow", OpClass::Conv2d, DType::F16).unwrap() > 2.0);
    // It shows in the entries; a reset forgets it.
    let corr = m
        .entries()
        .into_iter()
        .find(|e| e.0 == "slow")
        .map(|e| e.4)
        .unwrap();
    assert!(corr > 2.7);
    m.reset_corrections();
    assert_eq!(
        m.predict_flops("slow", OpClass::MatMul, DType::F32, flops),
        Some(predicted)
    );
}

#[test]
fn garbage_observations_are_ignored() {
    let mut m = PerfModel::new();
    m.set_rate("n", OpClass::MatMul, DType::F32, rate(10.0, 0.0));
    let before = m.predict_flops("n", OpClass::MatMul, DType::F32, 1_000_000);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0, -0.0] {
        assert!(!m.observe("n", OpClass::MatMul, DType::F32, 1_000_000, bad));
    }
    // No flops and no overhead: nothing to compare against.
    assert!(!m.observe("n", OpClass::MatMul, DType::F32, 0, 1.0));
    // Unknown node.
    assert!(!m.observe("x", OpClass::MatMul, DType::F32, 1_000_000, 1.0));
    assert_eq!(
        m.predict_flops("n", OpClass::MatMul, DType::F32, 1_000_000),
        before
    );
    assert_eq!(m.samples("n", OpClass::MatMul, DType::F32), 0);
    // Absurd ratios are clamped to 50.
    for _ in 0..40 {
        m.observe("n", OpClass::MatMul, DType::F32, 1_000_000, 1e9);
    }
    let c = m.correction("n", OpClass::MatMul, DType::F32).unwrap();
    assert!(c <= 50.0 && c > 49.0, "{c}");
}

/// Median wall seconds of `reps` runs of `op` after a warm-up.
/// Serialises the tests that calibrate or time a device: run side by side (the GPU's software
/// driver spreads over every core), they would slow each other down and skew what they measure.
fn timing_alone() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn measured(dev: &dyn Device, op: &Op, inputs: &[&Tensor], reps: usize) -> f64 {
    dev.execute(op, inputs).unwrap();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            dev.execute(op, inputs).unwrap();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn assert_rates(m: &PerfModel, key: &str, dtypes: &[DType]) {
    for &dtype in dtypes {
        for class in OpClass::ALL {
            let e = m
                .entries()
                .into_iter()
                .find(|e| e.0 == key && e.1 == class && e.2 == dtype)
                .unwrap_or_else(|| panic!("no {class} {dtype} rate for {key}"));
            let r = e.3;
            assert!(
                r.gflops.is_finite() && r.gflops > 0.0,
                "{class} {dtype}: {r:?}"
            );
            assert!(
                r.overhead_s.is_finite() && r.overhead_s >= 0.0,
                "{class} {dtype}: {r:?}"
            );
        }
    }
}

#[test]
fn calibrating_a_cpu_node_gives_the_right_order_of_magnitude() {
    let _alone = timing_alone();
    let dev = CpuDevice::with_threads(1).unwrap();
    let key = PerfModel::node_key(dev.info());
    let mut m = PerfModel::new();
    let start = Instant::now();
    m.calibrate(&dev, &DType::ALL).unwrap();
    let took = start.elapsed().as_secs_f64();
    eprintln!("calibrated {key} in {took:.3} s");
    assert_rates(&m, &key, &DType::ALL);
    for (k, c, d, r, _) in m.entries() {
        eprintln!(
            "  {k} {c} {d}: {:.2} GFLOP/s + {:.1} us",
            r.gflops,
            r.overhead_s * 1e6
        );
    }
    assert_eq!(m.transfer(&key), Some(TransferRate::HOST));
    assert_eq!(m.calibrations(), 1);

    let a = Tensor::random([256, 256], DType::F32, 1).unwrap();
    let b = Tensor::random([256, 256], DType::F32, 2).unwrap();
    let predicted = m
        .predict(&key, &Op::matmul(), &[a.shape(), b.shape()], DType::F32)
        .unwrap();
    let actual = measured(&dev, &Op::matmul(), &[&a, &b], 5);
    let ratio = predicted / actual;
    eprintln!("256^3 matmul: predicted {predicted:.6} s, measured {actual:.6} s");
    assert!(
        (1.0 / 3.0..=3.0).contains(&ratio),
        "predicted {predicted} s, measured {actual} s"
    );
}

/// A CPU node that reports only f32 inputs.
struct F32Only {
    inner: CpuDevice,
    info: DeviceInfo,
}

impl Device for F32Only {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn execute(&self, op: &Op, inputs: &[&Tensor]) -> accelmesh::Result<Vec<Tensor>> {
        self.inner.execute(op, inputs)
    }
}

#[test]
fn calibrating_a_dtype_the_node_refuses_is_a_dtype_error() {
    let _alone = timing_alone();
    let inner = CpuDevice::with_threads(1).unwrap();
    let mut info = inner.info().clone();
    info.dtypes = vec![DType::F32];
    let dev = F32Only { inner, info };
    let mut m = PerfModel::new();
    let err = m.calibrate(&dev, &[DType::F32, DType::BF16]).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    assert!(err.to_string().contains("bf16"), "{err}");
    assert!(!m.known(&PerfModel::node_key(dev.info())));
}

#[test]
fn save_and_load_round_trip() {
    let tmp = temp_dir("roundtrip");
    let dir = tmp.path();
    let path = dir.join("nested").join("calibration.json");
    let mut m = PerfModel::new();
    m.set_rate("a|x", OpClass::MatMul, DType::F32, rate(123.456, 1.5e-6));
    m.set_rate("a|x", OpClass::Conv2d, DType::BF16, rate(7.25, 0.0));
    m.set_rate("b|y", OpClass::Other, DType::F16, rate(0.5, 3e-3));
    m.set_transfer(
        "b|y",
        TransferRate {
            bytes_per_s: 2.5e9,
            latency_s: 4e-5,
        },
    );
    m.observe("a|x", OpClass::MatMul, DType::F32, 1_000_000, 1.0);
    m.save(&path).unwrap();
    let back = PerfModel::load(&path).unwrap();
    // Rates and transfers survive; corrections are per process.
    let strip = |m: &PerfModel| {
        m.entries()
            .into_iter()
            .map(|e| (e.0, e.1, e.2, e.3))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&back), strip(&m));
    assert!(back.entries().iter().all(|e| e.4 == 1.0));
    assert_eq!(back.transfer("b|y"), m.transfer("b|y"));
    assert_eq!(back.transfer("a|x"), None);
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("calibration.json")]);
    assert!(
        PerfModel::default_path().ends_with("calibration.json"),
        "{:?}",
        PerfModel::default_path()
    );
}

#[test]
fn malformed_files_are_parse_errors_naming_the_path() {
    let tmp = temp_dir("malformed");
    let dir = tmp.path();
    for (i, text) in [
        "not json",
        "{\"version\": 1}",
        "{\"version\": 99, \"nodes\": {}}",
        "{\"version\": 1, \"nodes\": {\"n\": {\"rates\": [{\"class\": \"matmul\", \"dtype\": \"f64\", \"gflops\": 1.0, \"overhead_s\": 0.0}]}}}",
        "{\"version\": 1, \"nodes\": {\"n\": {\"rates\": [{\"class\": \"gemm\", \"dtype\": \"f32\", \"gflops\": 1.0, \"overhead_s\": 0.0}]}}}",
        "{\"version\": 1, \"nodes\": {\"n\": {\"rates\": [{\"class\": \"matmul\", \"dtype\": \"f32\", \"gflops\": -1.0, \"overhead_s\": 0.0}]}}}",
        "{\"version\": 1, \"nodes\": {\"n\": {\"rates\": [], \"transfer\": {\"bytes_per_s\": 0.0, \"latency_s\": 0.0}}}}",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.join(format!("bad{i}.json"));
        std::fs::write(&path, text).unwrap();
        let err = PerfModel::load(&path).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{text}: {err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{text}: {err}"
        );
    }
    // A missing file is an i/o error naming the path.
    let missing = dir.join("missing.json");
    let err = PerfModel::load(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(err.to_string().contains("missing.json"), "{err}");
}

#[test]
fn load_or_calibrate_uses_the_cache() {
    let _alone = timing_alone();
    let tmp = temp_dir("cache");
    let dir = tmp.path();
    let path = dir.join("calibration.json");
    // Two identical nodes share a key and are calibrated once.
    let devices: Vec<Arc<dyn Device>> = vec![
        Arc::new(CpuDevice::new(0, 1, 1 << 30).unwrap()),
        Arc::new(CpuDevice::new(1, 1, 1 << 30).unwrap()),
    ];
    let key = PerfModel::node_key(devices[0].info());
    // A malformed cache is recalibrated and replaced.
    std::fs::write(&path, "{ garbage").unwrap();
    let first = PerfModel::load_or_calibrate(&devices, &path, false).unwrap();
    assert_eq!(first.calibrations(), 1);
    assert!(first.known(&key));
    assert_rates(&first, &key, &DType::ALL);
    // Other configurations' entries survive in the file.
    let mut with_other = PerfModel::load(&path).unwrap();
    with_other.set_rate("elsewhere", OpClass::MatMul, DType::F32, rate(1.0, 0.0));
    with_other.save(&path).unwrap();

    let second = PerfModel::load_or_calibrate(&devices, &path, false).unwrap();
    assert_eq!(second.calibrations(), 0, "the second call recalibrated");
    // The cached rates, not new measurements (JSON keeps them to within an ulp).
    let (a, b) = (
        second.rate(&key, OpClass::MatMul, DType::F32).unwrap(),
        first.rate(&key, OpClass::MatMul, DType::F32).unwrap(),
    );
    assert!((a.gflops / b.gflops - 1.0).abs() < 1e-12, "{a:?} vs {b:?}");
    assert!(
        (a.overhead_s - b.overhead_s).abs() <= 1e-12 * b.overhead_s,
        "{a:?} vs {b:?}"
    );
    assert!(second.known("elsewhere"));

    let refreshed = PerfModel::load_or_calibrate(&devices, &path, true).unwrap();
    assert_eq!(refreshed.calibrations(), 1);
    assert!(refreshed.known("elsewhere"));
    assert!(PerfModel::load(&path).unwrap().known("elsewhere"));
}

#[test]
fn calibrating_a_gpu_node_measures_its_transfers() {
    let _alone = timing_alone();
    let dev = match GpuDevice::open(0, 0, Default::default()) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var("ACCELMESH_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ACCELMESH_REQUIRE_GPU=1 but no GPU adapter opened: {e}");
            }
            eprintln!("skipped: no GPU adapter ({e})");
            return;
        }
    };
    let key = PerfModel::node_key(dev.info());
    let dtypes = dev.info().dtypes.clone();
    let mut m = PerfModel::new();
    let start = Instant::now();
    m.calibrate(&dev, &dtypes).unwrap();
    eprintln!(
        "calibrated {key} ({}) in {:.3} s",
        dtypes
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(","),
        start.elapsed().as_secs_f64()
    );
    assert_rates(&m, &key, &dtypes);
    for (k, c, d, r, _) in m.entries() {
        eprintln!(
            "  {k} {c} {d}: {:.3} GFLOP/s + {:.1} us",
            r.gflops,
            r.overhead_s * 1e6
        );
    }
    let t = m.transfer(&key).expect("a GPU node has a transfer rate");
    eprintln!(
        "  transfer: {:.3} GB/s + {:.1} us",
        t.bytes_per_s / 1e9,
        t.latency_s * 1e6
    );
    assert!(t.bytes_per_s.is_finite() && t.bytes_per_s > 0.0, "{t:?}");
    assert!(t.latency_s.is_finite() && t.latency_s >= 0.0, "{t:?}");
    assert!(t.bytes_per_s < TransferRate::HOST.bytes_per_s, "{t:?}");
}
