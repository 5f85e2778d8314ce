//! Job files (`accelmesh run`): parsing and validation of a good file, errors that name the
//! line and the field of malformed ones, a small job run end to end (a checked matmul bench
//! and an ONNX model built here, with its report and output files), and the command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use accelmesh::job::{self, Job, Progress, Results, Task};
use accelmesh::onnx::proto::{
    self, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TypeProto,
    ValueInfoProto, data_type,
};
use accelmesh::onnx::{Value, encode_tensor, read_tensor_pb, write_tensor_pb};
use accelmesh::{DType, Error, Tensor};
use serde_json::Value as Json;

/// Nodes of every test job: one small CPU node, so no GPU is brought up.
const NODES: &str = "cpu:1x2";

/// A fresh directory under the system temp dir for one test, removed when dropped.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("accelmesh-job-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Writes `text` as `dir/job.toml` and returns its path.
fn write_job(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// A tiny model: y = relu(x · w + b), x of 2×4, w of 4×3, b of 3, seeded non-zero weights.
// ---------------------------------------------------------------------------------------------

fn tensor_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension::Value as D};
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: data_type::FLOAT,
                    shape: Some(proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(D::DimValue(d)),
                                denotation: String::new(),
                            })
                            .collect(),
                    }),
                },
            )),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: format!("{op}_{output}"),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

fn weights() -> (Tensor, Tensor) {
    let w = Tensor::random([4, 3], DType::F32, 11).unwrap();
    let b = Tensor::random([3], DType::F32, 12).unwrap();
    (w, b)
}

/// The model's bytes.
fn tiny_model() -> Vec<u8> {
    let (w, b) = weights();
    let graph = GraphProto {
        name: "tiny".into(),
        node: vec![
            node("MatMul", &["x", "w"], "xw"),
            node("Add", &["xw", "b"], "z"),
            node("Relu", &["z"], "y"),
        ],
        initializer: vec![
            encode_tensor("w", &Value::Float(w)),
            encode_tensor("b", &Value::Float(b)),
        ],
        input: vec![tensor_info("x", &[2, 4])],
        output: vec![tensor_info("y", &[2, 3])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "job.rs".into(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The float64 reference of the model on `x`.
fn tiny_reference(x: &Tensor) -> Vec<f64> {
    let (w, b) = weights();
    let (x, w, b) = (x.to_f64_vec(), w.to_f64_vec(), b.to_f64_vec());
    let mut y = Vec::new();
    for i in 0..2 {
        for j in 0..3 {
            let dot: f64 = (0..4).map(|k| x[i * 4 + k] * w[k * 3 + j]).sum();
            y.push((dot + b[j]).max(0.0));
        }
    }
    y
}

/// Writes the model and an input file into `dir`; returns the input.
fn write_model(dir: &Path) -> Tensor {
    std::fs::write(dir.join("tiny.onnx"), tiny_model()).unwrap();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let x = Tensor::random([2, 4], DType::F32, 13).unwrap();
    write_tensor_pb(&dir.join("in/x.pb"), "x", &Value::Float(x.clone())).unwrap();
    x
}

// ---------------------------------------------------------------------------------------------
// Parsing.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_good_job_parses_with_paths_resolved_and_defaults_filled() {
    let tmp = temp_dir("parse");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("models/m.onnx"), b"not read while parsing").unwrap();
    std::fs::write(dir.join("x.pb"), b"").unwrap();
    let text = r#"
nodes = "cpu:2x1"
report = "out/report.json"

[[workload]]
name = "resnet"
kind = "model"
model = "models/m.onnx"
batch = 2
reps = 3
inputs = { data_0 = "x.pb" }
output_dir = "out/resnet"
deadline_ms = 200

[[workload]]
kind = "matmul"
sizes = [512, 1024]
dtype = "bf16"
check = true

[[workload]]
kind = "conv2d"
shapes = ["1-64-56-64-3-1-1"]
nodes = "cpu"
deadline_ms = 50.5
"#;
    let path = write_job(dir, text);
    let job = Job::parse(&path, text).expect("a good job");
    assert_eq!(job.path, path);
    assert_eq!(
        job.nodes.as_ref().map(|n| n.value.as_str()),
        Some("cpu:2x1")
    );
    assert_eq!(job.nodes.as_ref().map(|n| n.line), Some(2));
    assert_eq!(job.report, Some(dir.join("out/report.json")));
    assert_eq!(job.workloads.len(), 3);

    let w = &job.workloads[0];
    assert_eq!((w.index, w.name.as_str(), w.line), (0, "resnet", 5));
    assert_eq!(w.deadline_ms, Some(200.0));
    let Task::Model(m) = &w.task else {
        panic!("workload 1 is a model: {:?}", w.task)
    };
    assert_eq!(m.model.value, dir.join("models/m.onnx"));
    assert_eq!(m.model.line, 8);
    assert_eq!((m.batch, m.reps), (2, 3));
    assert_eq!(m.inputs.len(), 1);
    assert_eq!(m.inputs[0].0, "data_0");
    assert_eq!(m.inputs[0].1.value, dir.join("x.pb"));
    assert_eq!(m.output_dir, Some(dir.join("out/resnet")));

    let w = &job.workloads[1];
    assert_eq!(w.name, "matmul-2");
    assert!(w.nodes.is_none());
    match &w.task {
        Task::Matmul { sizes, bench } => {
            assert_eq!(sizes, &[512, 1024]);
            assert_eq!(bench.dtype, DType::BF16);
            assert_eq!(bench.reps, job::DEFAULT_REPS);
            assert!(bench.check);
        }
        other => panic!("workload 2 is a matmul: {other:?}"),
    }

    let w = &job.workloads[2];
    assert_eq!(w.name, "conv2d-3");
    assert_eq!(w.nodes.as_ref().map(|n| n.value.as_str()), Some("cpu"));
    assert_eq!(w.deadline_ms, Some(50.5));
    match &w.task {
        Task::Conv2d { cases, bench } => {
            assert_eq!(cases.len(), 1);
            assert_eq!(cases[0].to_string(), "1-64-56-64-3-1-1");
            assert_eq!(bench.dtype, DType::F32);
            assert!(!bench.check);
        }
        other => panic!("workload 3 is a conv2d: {other:?}"),
    }
}

#[test]
fn conv2d_defaults_to_the_resnet_preset_and_matmul_to_the_bench_sizes() {
    let tmp = temp_dir("defaults");
    let dir = tmp.path();
    let text = "[[workload]]\nkind = \"conv2d\"\n\n[[workload]]\nkind = \"MatMul\"\n";
    let job = Job::parse(&write_job(dir, text), text).expect("valid");
    match &job.workloads[0].task {
        Task::Conv2d { cases, .. } => assert_eq!(cases.len(), accelmesh::bench::RESNET.len()),
        other => panic!("{other:?}"),
    }
    match &job.workloads[1].task {
        Task::Matmul { sizes, .. } => assert_eq!(sizes, &job::DEFAULT_SIZES),
        other => panic!("{other:?}"),
    }
    assert!(job.nodes.is_none() && job.report.is_none());
}

/// A job whose workload 2 (named `mm`) starts at line 6, with `extra` as its line 9.
fn with_mm_line(extra: &str) -> String {
    format!(
        "nodes = \"cpu\"\n\n[[workload]]\nkind = \"matmul\"\n\n[[workload]]\nname = \"mm\"\nkind = \"matmul\"\n{extra}\n"
    )
}

#[test]
fn malformed_jobs_name_the_line_and_the_field() {
    let tmp = temp_dir("malformed");
    let dir = tmp.path();
    std::fs::write(dir.join("present.onnx"), b"x").unwrap();
    // (file text, line, words the field description must contain, words of the detail)
    let cases: Vec<(String, usize, &[&str], &str)> = vec![
        (with_mm_line("reps = = 5"), 9, &["reps"], ""),
        (with_mm_line("sizes = [17, 33"), 9, &["sizes"], ""),
        (with_mm_line("repz = 5"), 9, &["workload 2 (mm)", "repz"], "unknown field"),
        (with_mm_line("reps = \"five\""), 9, &["workload 2 (mm)", "reps"], "expected an integer"),
        (with_mm_line("check = 1"), 9, &["workload 2 (mm)", "check"], "invalid type"),
        (with_mm_line("sizes = [17, \"x\"]"), 9, &["workload 2 (mm)", "sizes"], "invalid type"),
        (with_mm_line("reps = 0"), 9, &["workload 2 (mm)", "reps"], "positive"),
        (with_mm_line("sizes = [17, -3]"), 9, &["workload 2 (mm)", "sizes"], "`-3`"),
        (with_mm_line("sizes = []"), 9, &["workload 2 (mm)", "sizes"], "empty"),
        (with_mm_line("dtype = \"f8\""), 9, &["workload 2 (mm)", "dtype"], "unknown dtype `f8`"),
        (with_mm_line("nodes = \"tpu\""), 9, &["workload 2 (mm)", "nodes"], "tpu"),
        (with_mm_line("deadline_ms = -1"), 9, &["workload 2 (mm)", "deadline_ms"], "positive"),
        (with_mm_line("model = \"present.onnx\""), 9, &["workload 2 (mm)", "model"], "does not apply to kind `matmul`"),
        (with_mm_line("name = \"again\""), 9, &["name"], "duplicate key"),
        (
            "[[workload]]\nkind = \"fft\"\n".to_string(),
            2,
            &["workload 1", "kind"],
            "unknown kind `fft`",
        ),
        (
            "\n[[workload]]\nname = \"r\"\nkind = \"model\"\nmodel = \"missing.onnx\"\n".to_string(),
            5,
            &["workload 1 (r)", "model"],
            "missing.onnx` not found",
        ),
        (
            "[[workload]]\nkind = \"model\"\nmodel = \"present.onnx\"\ninputs = { x = \"nope.pb\" }\n"
                .to_string(),
            4,
            &["workload 1", "inputs.x"],
            "nope.pb` not found",
        ),
        (
            "[[workload]]\nkind = \"model\"\n".to_string(),
            1,
            &["workload 1", "model"],
            "missing",
        ),
        (
            "\n\n[[workload]]\nname = \"k\"\nreps = 2\n".to_string(),
            3,
            &["workload 1 (k)", "kind"],
            "missing",
        ),
        (
            "[[workload]]\nkind = \"conv2d\"\nshapes = [\"1-64-56-64-3-1-1\",\n  \"1-2-3\"]\n".to_string(),
            4,
            &["workload 1", "shapes"],
            "7 fields",
        ),
        (
            "[[workload]]\nkind = \"conv2d\"\npreset = \"vgg\"\n".to_string(),
            3,
            &["workload 1", "preset"],
            "expected resnet",
        ),
        (
            "[[workload]]\nname = \"a\"\nkind = \"matmul\"\n[[workload]]\nname = \"a\"\nkind = \"matmul\"\n"
                .to_string(),
            5,
            &["workload 2 (a)", "name"],
            "already used by workload 1",
        ),
        (
            "nodes = \"cpu\"\nreport = 3\n[[workload]]\nkind = \"matmul\"\n".to_string(),
            2,
            &["report"],
            "invalid type",
        ),
        (
            "nodes = \"cpu:0x1\"\n[[workload]]\nkind = \"matmul\"\n".to_string(),
            1,
            &["field `nodes`"],
            "cpu:0x1",
        ),
        (
            "node = \"cpu\"\n[[workload]]\nkind = \"matmul\"\n".to_string(),
            1,
            &["node"],
            "unknown field `node`",
        ),
        ("nodes = \"cpu\"\n".to_string(), 1, &["workload"], "no workloads"),
        (
            "[[workload]]\nkind = \"matmul\"\nsizes = 5\n".to_string(),
            3,
            &["workload 1", "sizes"],
            "invalid type",
        ),
    ];
    for (text, line, field_words, detail_word) in &cases {
        let path = write_job(dir, text);
        let err = Job::parse(&path, text).expect_err(text);
        let message = err.to_string();
        let Error::Job {
            path: p,
            line: l,
            field,
            detail,
        } = &err
        else {
            panic!("{text:?}: not a job error: {err:?}");
        };
        assert_eq!(p, &path.display().to_string(), "{text:?}: {message}");
        assert_eq!(l, line, "{text:?}: {message}");
        for word in *field_words {
            assert!(
                field.contains(word),
                "{text:?}: field {field:?} lacks {word:?}"
            );
        }
        assert!(detail.contains(detail_word), "{text:?}: {message}");
        assert!(message.contains(&format!("job.toml:{line}:")), "{message}");
        // The same error through the file reader.
        let again = Job::load(&path).expect_err(text).to_string();
        assert_eq!(again, message);
    }
}

#[test]
fn a_missing_job_file_is_a_clean_error() {
    let tmp = temp_dir("missing");
    let dir = tmp.path();
    let err = Job::load(&dir.join("absent.toml")).unwrap_err();
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Running.
// ---------------------------------------------------------------------------------------------

/// A job with a checked matmul bench and the tiny model with its input file.
fn small_job(report: Option<&str>) -> String {
    let report = report.map_or_else(String::new, |r| format!("report = \"{r}\"\n"));
    format!(
        r#"nodes = "{NODES}"
{report}
[[workload]]
name = "mm"
kind = "matmul"
sizes = [17, 33]
reps = 2
check = true

[[workload]]
name = "tiny"
kind = "model"
model = "tiny.onnx"
reps = 2
inputs = {{ x = "in/x.pb" }}
output_dir = "out/tiny"
deadline_ms = 60000
"#
    )
}

/// Checks a report (as JSON) of [`small_job`] run in `dir`, and the output file.
fn check_small_report(report: &Json, dir: &Path, job_path: &Path, x: &Tensor) {
    assert_eq!(report["job"], job_path.display().to_string());
    let date = report["date"].as_str().expect("date");
    assert!(date.len() == 20 && date.ends_with('Z'), "{date}");
    assert_eq!(report["nodes"], NODES);
    assert!(report["wall_s"].as_f64().unwrap() > 0.0);
    let workloads = report["workloads"].as_array().expect("workloads");
    assert_eq!(workloads.len(), 2);

    let mm = &workloads[0];
    assert_eq!(
        (mm["name"].as_str(), mm["kind"].as_str()),
        (Some("mm"), Some("matmul"))
    );
    assert_eq!(mm["nodes"], NODES);
    assert!(mm.get("deadline_met").is_none());
    let cases = mm["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2);
    for (case, shape) in cases.iter().zip(["17x17x17", "33x33x33"]) {
        assert_eq!(case["op"], "matmul");
        assert_eq!(case["shape"], shape);
        assert_eq!(case["dtype"], "f32");
        assert_eq!(case["reps"], 2);
        assert!(case["ms_median"].as_f64().unwrap() > 0.0);
        assert!(case["gflops"].as_f64().unwrap() > 0.0);
        let err = case["max_rel_err"].as_f64().expect("checked");
        assert!(err < 1e-5, "{shape}: max_rel_err {err}");
    }

    let tiny = &workloads[1];
    assert_eq!(
        (tiny["name"].as_str(), tiny["kind"].as_str()),
        (Some("tiny"), Some("model"))
    );
    assert_eq!(tiny["deadline_ms"], 60000.0);
    assert_eq!(tiny["deadline_met"], true);
    let result = &tiny["result"];
    for key in ["latency_ms", "throughput_per_s", "energy_j"] {
        assert!(result[key].as_f64().unwrap() > 0.0, "{key}: {result}");
    }
    assert!(result["nodes_used"].as_u64().unwrap() >= 1);
    assert_eq!(result["reps"], 2);
    assert_eq!(result["batch"], 2);
    let out_file = dir.join("out/tiny/y.pb");
    assert_eq!(
        result["outputs"],
        serde_json::json!([out_file.display().to_string()])
    );
    assert_eq!(result["model"], dir.join("tiny.onnx").display().to_string());

    let (name, y) = read_tensor_pb(&out_file).expect("the output file");
    assert_eq!(name, "y");
    let y = y.as_tensor().unwrap();
    assert_eq!(y.dims(), &[2, 3]);
    let reference = tiny_reference(x);
    assert!(
        reference.iter().any(|&v| v > 0.0),
        "the reference is not all zero"
    );
    for (i, (&got, &want)) in y.to_f64_vec().iter().zip(&reference).enumerate() {
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "y[{i}] = {got}, want {want}"
        );
    }
}

#[test]
fn a_small_job_runs_end_to_end() {
    let tmp = temp_dir("run");
    let dir = tmp.path();
    let x = write_model(dir);
    let path = write_job(dir, &small_job(None));
    let job = Job::load(&path).expect("valid");
    job::check(&job).expect("nodes come up and the model loads");
    let report = job::run(&job, &Progress::hidden()).expect("the job runs");
    assert_eq!(report.workloads.len(), 2);
    match &report.workloads[1].results {
        Results::Model(m) => assert_eq!(m.run.batch, 2),
        other => panic!("{other:?}"),
    }
    let json: Json = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    check_small_report(&json, dir, &path, &x);

    // Written to a file: the same document.
    let file = dir.join("r/report.json");
    report.write(&file).unwrap();
    let back: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(back, json);
}

#[test]
fn model_inputs_are_checked_before_anything_runs() {
    let tmp = temp_dir("inputs");
    let dir = tmp.path();
    write_model(dir);
    let text = format!(
        "nodes = \"{NODES}\"\n[[workload]]\nkind = \"matmul\"\nsizes = [8]\n\
         [[workload]]\nkind = \"model\"\nmodel = \"tiny.onnx\"\ninputs = {{ data = \"in/x.pb\" }}\n"
    );
    let job = Job::parse(&write_job(dir, &text), &text).expect("the file validates");
    let err = job::run(&job, &Progress::hidden()).expect_err("no input `data`");
    let message = err.to_string();
    assert!(matches!(err, Error::Job { line: 8, .. }), "{message}");
    assert!(
        message.contains("inputs.data") && message.contains("no input `data`"),
        "{message}"
    );

    // A model file that does not decode names the model field.
    std::fs::write(dir.join("bad.onnx"), b"\xff\xff\xff not a model").unwrap();
    let text =
        format!("nodes = \"{NODES}\"\n[[workload]]\nkind = \"model\"\nmodel = \"bad.onnx\"\n");
    let job = Job::parse(&write_job(dir, &text), &text).expect("the file validates");
    let err = job::check(&job).expect_err("the model does not decode");
    assert!(matches!(err, Error::Job { line: 4, .. }), "{err}");
    assert!(err.to_string().contains("field `model`"), "{err}");
}

#[test]
fn a_missed_deadline_is_reported() {
    let tmp = temp_dir("deadline");
    let dir = tmp.path();
    let text = format!(
        "nodes = \"{NODES}\"\n[[workload]]\nkind = \"matmul\"\nsizes = [40]\nreps = 1\ndeadline_ms = 1e-9\n"
    );
    let job = Job::parse(&write_job(dir, &text), &text).unwrap();
    let report = job::run(&job, &Progress::hidden()).unwrap();
    assert_eq!(report.workloads[0].deadline_met, Some(false));
}

// ---------------------------------------------------------------------------------------------
// The command line.
// ---------------------------------------------------------------------------------------------

fn accelmesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_accelmesh"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn the_run_command_writes_the_report() {
    let tmp = temp_dir("cli");
    let dir = tmp.path();
    let x = write_model(dir);
    let path = write_job(dir, &small_job(Some("out/report.json")));
    let out = accelmesh(&["run", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report_path = dir.join("out/report.json");
    assert!(
        stdout.contains(&report_path.display().to_string()),
        "{stdout}"
    );
    assert!(
        stderr.is_empty(),
        "no progress bar off a terminal: {stderr}"
    );
    let report: Json =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    check_small_report(&report, dir, &path, &x);

    // `--report -` prints the report instead.
    let out = accelmesh(&["run", path.to_str().unwrap(), "--report", "-"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Json = serde_json::from_slice(&out.stdout).expect("one JSON document");
    check_small_report(&printed, dir, &path, &x);

    // `--dry-run` validates only.
    let out = accelmesh(&["run", path.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 workloads, valid"));
}

#[test]
fn the_run_command_rejects_a_malformed_job_cleanly() {
    let tmp = temp_dir("cli-bad");
    let dir = tmp.path();
    let path = write_job(dir, &with_mm_line("dtype = \"f64\""));
    let out = accelmesh(&["run", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(stderr.contains("job.toml:9:"), "{stderr}");
    assert!(stderr.contains("field `dtype`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_example_jobs_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/jobs") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Job::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0, "no example job in {}", dir.display());
}
