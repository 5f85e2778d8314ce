//! The `accelmesh` binary: JSON output, checked benchmarks, and clean errors.

use std::process::{Command, Output};

use serde_json::Value;

fn accelmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accelmesh"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs a command that must succeed and parses every stdout line as a JSON object.
fn json_lines(args: &[&str]) -> Vec<serde_json::Map<String, Value>> {
    let out = accelmesh(args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let lines: Vec<_> = stdout
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(map)) => map,
            other => panic!("{args:?}: line {line:?} is not a JSON object: {other:?}"),
        })
        .collect();
    assert!(!lines.is_empty(), "{args:?} printed nothing");
    lines
}

/// Asserts the command fails with exit code 2, `error:` and `needle` on stderr, and no panic.
fn assert_clean_failure(args: &[&str], needle: &str) {
    let out = accelmesh(args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn devices_json_has_the_required_keys() {
    for args in [
        &["devices", "--json"][..],
        &["devices", "--json", "--nodes", "cpu:2x1,cpu:1x2"][..],
    ] {
        let lines = json_lines(args);
        for (i, dev) in lines.iter().enumerate() {
            for key in [
                "id",
                "kind",
                "name",
                "backend",
                "threads",
                "memory_bytes",
                "dtypes",
            ] {
                assert!(dev.contains_key(key), "{args:?}: {key} missing in {dev:?}");
            }
            assert_eq!(dev["id"], format!("cpu{i}"));
            assert_eq!(dev["kind"], "cpu");
            assert!(dev["memory_bytes"].as_u64().unwrap() > 0);
            assert!(dev["threads"].as_u64().unwrap() >= 1);
            let dtypes: Vec<&str> = dev["dtypes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            assert_eq!(dtypes, ["f32", "f16", "bf16"]);
        }
        if args.len() > 2 {
            assert_eq!(lines.len(), 3);
            assert_eq!(lines[2]["threads"], 2);
        }
    }
    let text = accelmesh(&["devices"]);
    assert!(text.status.success());
    assert!(String::from_utf8(text.stdout).unwrap().starts_with("cpu0"));
}

/// Checks the keys every benchmark line has, and a small error.
fn assert_bench_line(line: &serde_json::Map<String, Value>, op: &str, nodes: &str) {
    for key in [
        "op",
        "shape",
        "dtype",
        "nodes",
        "ms_median",
        "gflops",
        "max_rel_err",
        "reps",
        "threads",
        "isa",
    ] {
        assert!(line.contains_key(key), "{key} missing in {line:?}");
    }
    assert_eq!(line["op"], op);
    assert_eq!(line["nodes"], nodes);
    assert!(line["ms_median"].as_f64().unwrap() > 0.0);
    assert!(line["gflops"].as_f64().unwrap() > 0.0);
    let err = line["max_rel_err"]
        .as_f64()
        .expect("max_rel_err is a number");
    assert!(err < 1e-5, "max_rel_err {err} in {line:?}");
}

#[test]
fn bench_matmul_json_with_check_on_two_nodes() {
    let lines = json_lines(&[
        "bench", "matmul", "--sizes", "33,64", "--reps", "2", "--check", "--json", "--nodes",
        "cpu:2x1",
    ]);
    assert_eq!(lines.len(), 2);
    for (line, shape) in lines.iter().zip(["33x33x33", "64x64x64"]) {
        assert_bench_line(line, "matmul", "cpu:2x1");
        assert_eq!(line["shape"], shape);
        assert_eq!(line["dtype"], "f32");
        assert_eq!(line["reps"], 2);
        assert_eq!(line["threads"], 2);
    }
    let lines = json_lines(&[
        "bench", "matmul", "--sizes", "48", "--reps", "1", "--check", "--json", "--dtype", "bf16",
    ]);
    assert_bench_line(&lines[0], "matmul", "cpu");
    assert_eq!(lines[0]["dtype"], "bf16");
    // Products of any shape, B stored either way, checked against float64.
    let lines = json_lines(&[
        "bench",
        "matmul",
        "--shapes",
        "1x129x257t,7x17x33",
        "--reps",
        "1",
        "--check",
        "--json",
    ]);
    assert_eq!(lines.len(), 2);
    for (line, shape) in lines.iter().zip(["1x129x257t", "7x17x33"]) {
        assert_bench_line(line, "matmul", "cpu");
        assert_eq!(line["shape"], shape);
    }
}

#[test]
fn bench_conv2d_json_with_check() {
    let lines = json_lines(&[
        "bench",
        "conv2d",
        "--shapes",
        "1-8-17-16-3-1-1",
        "--check",
        "--json",
        "--reps",
        "2",
    ]);
    assert_eq!(lines.len(), 1);
    assert_bench_line(&lines[0], "conv2d", "cpu");
    assert_eq!(lines[0]["shape"], "1-8-17-16-3-1-1");
    let lines = json_lines(&[
        "bench",
        "conv2d",
        "--shapes",
        "2-3-15-8-3-2-1,1-4-9-6-1-1-0",
        "--check",
        "--json",
        "--reps",
        "1",
        "--nodes",
        "cpu:2x1",
        "--dtype",
        "f16",
    ]);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_bench_line(line, "conv2d", "cpu:2x1");
    }
}

#[test]
fn bench_peak_reports_each_thread_count() {
    let lines = json_lines(&["bench", "peak", "--threads", "1,2", "--reps", "1", "--json"]);
    assert_eq!(lines.len(), 2);
    for (line, threads) in lines.iter().zip([1, 2]) {
        assert_eq!(line["op"], "peak");
        assert_eq!(line["threads"], threads);
        let gflops = line["gflops"].as_f64().unwrap();
        let (slowest, fastest) = (
            line["thread_min"].as_f64().unwrap(),
            line["thread_max"].as_f64().unwrap(),
        );
        assert!(
            gflops > 0.0 && 0.0 < slowest && slowest <= fastest,
            "{line:?}"
        );
        assert!(["scalar", "avx2", "avx512", "neon"].contains(&line["isa"].as_str().unwrap()));
    }
}

#[test]
fn bench_table_is_aligned() {
    let out = accelmesh(&[
        "bench", "matmul", "--sizes", "8,100", "--reps", "1", "--check",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("op") && lines[0].contains("max_rel_err"));
    let width = lines[0].len();
    assert!(lines.iter().all(|l| l.len() == width), "{stdout}");
}

#[test]
fn bad_arguments_fail_cleanly() {
    assert_clean_failure(&["devices", "--nodes", "cpu:0x1"], "cpu:0x1");
    assert_clean_failure(
        &["bench", "matmul", "--sizes", "8", "--nodes", "cpu:0x1"],
        "cpu:0x1",
    );
    assert_clean_failure(
        &["bench", "matmul", "--sizes", "8", "--dtype", "f64"],
        "f64",
    );
    assert_clean_failure(
        &["bench", "matmul", "--sizes", "8", "--nodes", "sim:2"],
        "accelmesh simulate",
    );
    assert_clean_failure(&["devices", "--nodes", "sim:2:warp"], "warp");
    assert_clean_failure(&["devices", "--nodes", "gpu:x"], "gpu:x");
    assert_clean_failure(&["devices", "--nodes", "gpu:99"], "gpu:99");
    assert_clean_failure(&["bench", "matmul", "--sizes", "0"], "matrix size");
    assert_clean_failure(
        &["bench", "matmul", "--shapes", "4x0x3"],
        "N must be at least 1",
    );
    assert_clean_failure(&["bench", "matmul", "--shapes", "4x5"], "4x5");
    assert_clean_failure(
        &["bench", "conv2d", "--shapes", "1-8-17-16-3-1"],
        "1-8-17-16-3-1",
    );
    assert_clean_failure(&["bench", "matmul", "--reps", "0"], "repetition count");
    assert_clean_failure(&["bench", "peak", "--threads", "1,0"], "thread count");
    assert_clean_failure(&["bench", "peak", "--threads", "x"], "thread count");
    assert_clean_failure(&["frobnicate"], "frobnicate");
}

#[test]
fn no_subcommand_runs_the_main_job_across_the_mesh() {
    let out = accelmesh(&[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "main job",
        "placement",
        "per node",
        "best single",
        "speed-up",
        "cpu0",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    // The mesh and the single node computed the same probabilities.
    let agree = stdout
        .lines()
        .find(|l| l.contains("outputs agree to"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the agreement line");
    assert!(agree <= 1e-5, "{stdout}");
}

/// A light model of the onnx package's test data, when the package is installed.
fn light_model(name: &str) -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import onnx, os; print(os.path.dirname(onnx.__file__))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let path = std::path::Path::new(dir.trim())
        .join("backend/test/data/light")
        .join(name);
    path.exists().then_some(path)
}

/// [`light_model`], or `None` after saying the test is skipped; with
/// `ACCELMESH_REQUIRE_ONNX_DATA=1` a missing model fails the test instead.
fn light_model_or_skip(name: &str) -> Option<std::path::PathBuf> {
    let model = light_model(name);
    if model.is_none() {
        assert!(
            std::env::var("ACCELMESH_REQUIRE_ONNX_DATA").map_or(true, |v| v != "1"),
            "ACCELMESH_REQUIRE_ONNX_DATA=1 but the onnx package is not in .venv"
        );
        eprintln!("skipping: no .venv with the onnx package (what .ci/run makes)");
    }
    model
}

#[test]
fn infer_splits_a_batch_over_two_nodes_and_writes_outputs() {
    let Some(model) = light_model_or_skip("light_squeezenet.onnx") else {
        return;
    };
    let tmp = tempfile::Builder::new()
        .prefix("accelmesh-cli-infer-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let model = model.to_string_lossy().into_owned();
    let lines = json_lines(&[
        "infer",
        &model,
        "--batch",
        "4",
        "--nodes",
        "cpu:2x1",
        "--reps",
        "1",
        "--json",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(lines.len(), 1);
    let r = &lines[0];
    for key in ["latency_ms", "throughput_per_s", "nodes_used", "energy_j"] {
        assert!(r.contains_key(key), "{key} missing: {r:?}");
    }
    assert_eq!(r["nodes_used"], 2, "{r:?}");
    // Both ways of using the two nodes for a fixed-batch-1 model fed four samples are open to
    // the planner, which picks by the nodes' measured speeds (its choice between them is
    // tested on fixed figures in the planner's unit tests).
    let strategy = r["strategy"].as_str().unwrap_or_default();
    assert!(
        ["data-parallel", "channel-split"].contains(&strategy),
        "{r:?}"
    );
    assert_eq!(r["batch"], 4);
    let written: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, ["softmaxout_1.pb"]);
    let (_, value) = accelmesh::onnx::read_tensor_pb(&dir.join("softmaxout_1.pb")).unwrap();
    assert_eq!(value.dims()[0], 4);

    // --profile adds the time per operator of one run.
    let lines = json_lines(&["infer", &model, "--reps", "1", "--profile", "--json"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let by_op = lines[1]["by_op"].as_array().expect("by_op");
    assert!(
        by_op
            .iter()
            .any(|r| r["op"].as_str().unwrap().starts_with("Conv"))
    );
    let step_ms: f64 = by_op.iter().map(|r| r["ms"].as_f64().unwrap()).sum();
    assert!(step_ms > 0.0 && step_ms <= lines[1]["total_ms"].as_f64().unwrap() * 1.0001);
    // Every step in run order, whose times add up to the groups'.
    let steps = lines[1]["steps"].as_array().expect("steps");
    let counted: u64 = by_op.iter().map(|r| r["steps"].as_u64().unwrap()).sum();
    assert_eq!(steps.len() as u64, counted);
    assert!(
        steps
            .iter()
            .all(|s| s["node"].is_string() && s["op"].is_string())
    );
    let listed_ms: f64 = steps.iter().map(|s| s["ms"].as_f64().unwrap()).sum();
    assert!(
        (listed_ms - step_ms).abs() <= 1e-6 * step_ms.max(1.0),
        "{listed_ms} vs {step_ms}"
    );

    // A batch above the model's fixed batch of 1 profiles the chunks it runs as.
    let lines = json_lines(&[
        "infer",
        &model,
        "--batch",
        "2",
        "--reps",
        "1",
        "--profile",
        "--json",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["batch"], 2);
    assert!(!lines[1]["by_op"].as_array().expect("by_op").is_empty());
}

#[test]
fn paced_infer_waits_for_each_run_and_reports_it() {
    use std::io::Write;
    use std::process::Stdio;

    let Some(model) = light_model_or_skip("light_squeezenet.onnx") else {
        return;
    };
    let paced = |go: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_accelmesh"))
            .args([
                "infer",
                model.to_str().unwrap(),
                "--reps",
                "2",
                "--paced",
                "--json",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(go.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    // Two lines: two timed runs (the second after three untimed ones), each announced and
    // reported, then the JSON report.
    let out = paced("\n3\n");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for pair in lines[..4].chunks(2) {
        assert_eq!(pair[0], "ready");
        let ms: f64 = pair[1]
            .strip_prefix("run ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(ms > 0.0, "{stdout}");
    }
    let report: Value = serde_json::from_str(lines[4]).unwrap();
    assert_eq!(report["reps"], 2);
    // Input that ends early is a clean error naming the run it stopped before.
    let out = paced("\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("standard input closed before timed run 2 of 2"),
        "{stderr}"
    );
    // A line that is neither empty nor a count is an error naming it.
    let out = paced("\nmany\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("many"), "{stderr}");
}

#[test]
fn simulate_prints_one_summary_per_policy() {
    let lines = json_lines(&[
        "simulate", "--mesh", "4x4", "--jobs", "300", "--seed", "7", "--json",
    ]);
    let policies: Vec<&str> = lines
        .iter()
        .map(|l| l["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["drac", "eft", "always-on", "round-robin"]);
    for l in &lines {
        for key in [
            "makespan_s",
            "energy_j",
            "deadline_hit_rate",
            "mean_utilisation",
            "replanned_parts",
            "decisions_per_s",
        ] {
            assert!(l.contains_key(key), "missing {key}: {l:?}");
        }
        assert_eq!(l["completed"], 300);
    }
    assert_clean_failure(&["simulate", "--mesh", "8x0"], "8x0");
    assert_clean_failure(&["simulate", "--policy", "greedy"], "greedy");
}

#[test]
fn bench_json_reports_the_drac_plan() {
    let lines = json_lines(&[
        "bench", "matmul", "--sizes", "96", "--reps", "1", "--json", "--nodes", "cpu:2x1",
    ]);
    let l = &lines[0];
    assert!(l["nodes_used"].as_u64().unwrap() >= 1);
    assert!(l["energy_j"].as_f64().unwrap() > 0.0);
    assert!(l["strategy"].is_string());
}
