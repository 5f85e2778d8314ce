//! Validation against data we did not write: the ONNX project's own backend test data
//! (`onnx/backend/test/data/` of the `onnx` Python package): every 2-D case of
//! `pytorch-converted` and `pytorch-operator`, and the nine `light` models, compared with the
//! tolerances of ONNX's own runner. Cases the runtime cannot run yet are listed, with the
//! reason, in `tests/onnx_skips.txt`; the test fails when that list is stale either way.
//!
//! The data comes from the `onnx` package: `ACCELMESH_ONNX_DATA` names the directory, or the
//! test asks `.venv/bin/python` (made by `.ci/run`) or `python3` where `onnx` is installed.
//! Without it the test says how to get it and passes, unless `ACCELMESH_REQUIRE_ONNX_DATA=1`.
//!
//! The cases run twice: on a two-thread CPU node, and on the first GPU adapter (Mesa's
//! software Vulkan driver in CI; skipped with a message when there is none, unless
//! `ACCELMESH_REQUIRE_GPU=1`). `ACCELMESH_ONNX_TEST_NODE` names another node for the second
//! run as a node spec (`gpu:1`, say).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use accelmesh::onnx::exec::Session;
use accelmesh::onnx::model::{Dim, Model};
use accelmesh::onnx::tensor_proto::read_tensor_pb;
use accelmesh::onnx::value::Value;
use accelmesh::{CpuDevice, DType, Device, Error, NodeSpec, Tensor};

/// Where the backend test data lives, if the `onnx` package can be found.
fn data_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("ACCELMESH_ONNX_DATA") {
        return Some(PathBuf::from(dir));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv/bin/python");
    let pythons = [venv.to_string_lossy().into_owned(), "python3".to_string()];
    for python in pythons {
        let out = Command::new(&python)
            .args([
                "-c",
                "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend', 'test', 'data'))",
            ])
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.is_dir() {
                return Some(dir);
            }
        }
    }
    None
}

/// The node of the second run: the first node of `ACCELMESH_ONNX_TEST_NODE`'s spec, or the
/// first GPU adapter; `None` (after saying why) when there is no adapter and none is required.
fn gpu_node() -> Option<Arc<dyn Device>> {
    let spec = std::env::var("ACCELMESH_ONNX_TEST_NODE").unwrap_or_else(|_| "gpu:0".into());
    match NodeSpec::parse(&spec).and_then(|s| s.build()) {
        Ok(nodes) => Some(nodes.devices()[0].clone()),
        Err(e) => {
            if std::env::var("ACCELMESH_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ACCELMESH_REQUIRE_GPU=1 but node `{spec}` did not open: {e}");
            }
            eprintln!("skipping the ONNX test data on `{spec}`: {e}");
            None
        }
    }
}

/// The expected skips: `case<TAB>reason` lines (`#` comments allowed).
fn expected_skips() -> BTreeMap<String, String> {
    let text = include_str!("onnx_skips.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (case, reason) = l.split_once('\t').unwrap_or((l, ""));
            (case.trim().to_string(), reason.trim().to_string())
        })
        .collect()
}

/// Whether a pytorch case is 2-D (the others — 1-D and 3-D layers — are out of scope).
fn is_2d(case: &str) -> bool {
    let lower = case.to_ascii_lowercase();
    !(lower.contains("1d") || lower.contains("3d"))
}

/// `numpy.testing.assert_allclose(expected, got, rtol, atol)`, as a message on failure.
fn compare(name: &str, expected: &Value, got: &Value, rtol: f64, atol: f64) -> Result<(), String> {
    if expected.shape().dims() != got.shape().dims() {
        return Err(format!(
            "{name}: shape {:?}, expected {:?}",
            got.shape().dims(),
            expected.shape().dims()
        ));
    }
    let (e, g) = match (expected, got) {
        (Value::Float(e), Value::Float(g)) => (e.to_f64_vec(), g.to_f64_vec()),
        (Value::Int64 { data: e, .. }, Value::Int64 { data: g, .. }) => (
            e.iter().map(|&v| v as f64).collect(),
            g.iter().map(|&v| v as f64).collect(),
        ),
        _ => {
            return Err(format!(
                "{name}: {} output, expected {}",
                got.elem_type_name(),
                expected.elem_type_name()
            ));
        }
    };
    let mut worst: Option<(usize, f64, f64)> = None;
    let mut bad = 0;
    for (i, (&x, &y)) in e.iter().zip(&g).enumerate() {
        let ok = if x.is_nan() {
            y.is_nan()
        } else {
            x == y || (x - y).abs() <= atol + rtol * x.abs()
        };
        if !ok {
            bad += 1;
            if worst.is_none_or(|(_, wx, wy)| (x - y).abs() > (wx - wy).abs()) {
                worst = Some((i, x, y));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, x, y)) => Err(format!(
            "{name}: {bad} of {} elements off; worst at {i}: {y}, expected {x}",
            e.len()
        )),
    }
}

/// The outcome of one case.
enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

/// Loads and runs one case directory (`model.onnx` + `test_data_set_*`).
fn run_case(dir: &Path, dev: &dyn Device, rtol: f64, atol: f64) -> Outcome {
    let model = match Model::load(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return Outcome::Skipped(format!("load: {e}")),
    };
    let session = match Session::new(model) {
        Ok(s) => s,
        Err(e @ Error::Unsupported { .. }) => return Outcome::Skipped(e.to_string()),
        Err(e) => return Outcome::Failed(format!("session: {e}")),
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    for set in sets {
        let mut inputs = HashMap::new();
        let names = session.input_names();
        for (i, name) in names.iter().enumerate() {
            let path = set.join(format!("input_{i}.pb"));
            match read_tensor_pb(&path) {
                Ok((_, v)) => {
                    inputs.insert(name.clone(), v);
                }
                Err(e) => return Outcome::Failed(format!("{}: {e}", path.display())),
            }
        }
        let outputs = match session.run(dev, &inputs) {
            Ok(o) => o,
            Err(e @ Error::Unsupported { .. }) => return Outcome::Skipped(e.to_string()),
            Err(e) => return Outcome::Failed(format!("run: {e}")),
        };
        for (i, name) in session.output_names().iter().enumerate() {
            let path = set.join(format!("output_{i}.pb"));
            let Ok((_, expected)) = read_tensor_pb(&path) else {
                return Outcome::Failed(format!("cannot read {}", path.display()));
            };
            let Some(got) = outputs.get(name) else {
                return Outcome::Failed(format!("no output {name}"));
            };
            if let Err(msg) = compare(name, &expected, got, rtol, atol) {
                return Outcome::Failed(msg);
            }
        }
    }
    Outcome::Passed
}

/// The ONNX runner's dummy input for a light model: `arange(n) / n` as f32, unknown dims 1.
fn dummy_input(dims: &[Dim]) -> Value {
    let shape: Vec<usize> = dims
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            _ => 1,
        })
        .collect();
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
    Value::Float(Tensor::from_f32(shape, DType::F32, &data).expect("dummy input"))
}

fn run_light(path: &Path, dev: &dyn Device, rtol: f64) -> Outcome {
    let model = match Model::load(path) {
        Ok(m) => m,
        Err(e) => return Outcome::Skipped(format!("load: {e}")),
    };
    let session = match Session::new(model) {
        Ok(s) => s,
        Err(e @ Error::Unsupported { .. }) => return Outcome::Skipped(e.to_string()),
        Err(e) => return Outcome::Failed(format!("session: {e}")),
    };
    let mut inputs = HashMap::new();
    for info in session.inputs() {
        let dims = info.dims.clone().unwrap_or_default();
        inputs.insert(info.name.clone(), dummy_input(&dims));
    }
    let outputs = match session.run(dev, &inputs) {
        Ok(o) => o,
        Err(e @ Error::Unsupported { .. }) => return Outcome::Skipped(e.to_string()),
        Err(e) => return Outcome::Failed(format!("run: {e}")),
    };
    let stem = path.with_extension("");
    for (i, name) in session.output_names().iter().enumerate() {
        let expected_path = PathBuf::from(format!("{}_output_{i}.pb", stem.display()));
        let Ok((_, expected)) = read_tensor_pb(&expected_path) else {
            return Outcome::Failed(format!("cannot read {}", expected_path.display()));
        };
        let Some(got) = outputs.get(name) else {
            return Outcome::Failed(format!("no output {name}"));
        };
        if let Err(msg) = compare(name, &expected, got, rtol, 1e-7) {
            return Outcome::Failed(msg);
        }
    }
    Outcome::Passed
}

#[test]
fn onnx_backend_test_data() {
    run_all(&CpuDevice::with_threads(2).expect("a CPU node"));
}

#[test]
fn onnx_backend_test_data_on_a_gpu_node() {
    if let Some(node) = gpu_node() {
        run_all(node.as_ref());
    }
}

/// Runs every case on `dev` and checks the outcomes against `tests/onnx_skips.txt`.
fn run_all(dev: &dyn Device) {
    let Some(data) = data_dir() else {
        assert!(
            std::env::var("ACCELMESH_REQUIRE_ONNX_DATA").map_or(true, |v| v != "1"),
            "ACCELMESH_REQUIRE_ONNX_DATA=1 but the onnx package's test data was not found"
        );
        eprintln!(
            "skipping: the onnx package's backend test data was not found; `python3 -m venv \
             .venv && .venv/bin/pip install onnx` (what .ci/run does) or set ACCELMESH_ONNX_DATA"
        );
        return;
    };
    eprintln!("running on node {} ({})", dev.info().id, dev.info().name);
    let mut skipped = BTreeMap::new();
    let mut failed = Vec::new();
    let mut passed = Vec::new();
    for group in ["pytorch-converted", "pytorch-operator"] {
        let mut cases: Vec<PathBuf> = std::fs::read_dir(data.join(group))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        cases.sort();
        for dir in cases {
            let case = format!(
                "{group}/{}",
                dir.file_name().unwrap_or_default().to_string_lossy()
            );
            if !is_2d(&case) {
                continue;
            }
            match run_case(&dir, dev, 1e-3, 1e-7) {
                Outcome::Passed => passed.push(case),
                Outcome::Skipped(why) => {
                    skipped.insert(case, why);
                }
                Outcome::Failed(why) => failed.push(format!("{case}: {why}")),
            }
        }
    }
    let light = [
        ("bvlc_alexnet", 1e-3),
        ("densenet121", 2e-3),
        ("inception_v1", 1e-3),
        ("inception_v2", 1e-3),
        ("resnet50", 1e-3),
        ("shufflenet", 1e-3),
        ("squeezenet", 1e-3),
        ("vgg19", 1e-3),
        ("zfnet512", 1e-3),
    ];
    for (name, rtol) in light {
        let case = format!("light/{name}");
        let path = data.join("light").join(format!("light_{name}.onnx"));
        match run_light(&path, dev, rtol) {
            Outcome::Passed => passed.push(case),
            Outcome::Skipped(why) => {
                skipped.insert(case, why);
            }
            Outcome::Failed(why) => failed.push(format!("{case}: {why}")),
        }
    }
    eprintln!(
        "{}: {} cases passed: {}",
        dev.info().id,
        passed.len(),
        passed.join(", ")
    );
    for (case, why) in &skipped {
        eprintln!("skipped {case}: {why}");
    }
    let expected = expected_skips();
    let new_skips: Vec<&String> = skipped
        .keys()
        .filter(|c| !expected.contains_key(*c))
        .collect();
    let now_passing: Vec<&String> = expected.keys().filter(|c| passed.contains(c)).collect();
    assert!(
        failed.is_empty(),
        "cases that ran and failed on {}:\n{}",
        dev.info().id,
        failed.join("\n")
    );
    assert!(
        new_skips.is_empty(),
        "cases skipped that tests/onnx_skips.txt does not list: {new_skips:?}"
    );
    assert!(
        now_passing.is_empty(),
        "cases listed in tests/onnx_skips.txt that now pass (remove them): {now_passing:?}"
    );
}
