//! The per-step profile of a run ([`Session::run_profiled`]): it covers every step, and on a
//! real model (`ACCELMESH_PROFILE_MODEL=path.onnx`, ignored by default) prints where the time
//! goes, per operator and per operator and shape.

use std::collections::HashMap;

use accelmesh::CpuDevice;
use accelmesh::onnx::exec::{Profile, Session, StepProfile};
use accelmesh::onnx::infer::random_inputs;
use accelmesh::onnx::model::Model;

#[test]
fn profile_covers_every_step() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(path) = light_model(dir, "light_squeezenet.onnx") else {
        eprintln!("no ONNX light models found; skipping");
        return;
    };
    let session = Session::new(Model::load(&path).unwrap()).unwrap();
    let dev = CpuDevice::with_threads(2).unwrap();
    let inputs = random_inputs(&session, 1).unwrap();
    let (profiled, profile) = session.run_profiled(&dev, &inputs).unwrap();
    let plain = session.run(&dev, &inputs).unwrap();
    assert_eq!(profile.steps.len(), session.node_count());
    assert!(profile.step_seconds() <= profile.total_seconds);
    assert!(
        profile
            .steps
            .iter()
            .all(|s| s.seconds >= 0.0 && !s.op.is_empty())
    );
    let by_op = profile.by_op();
    assert_eq!(
        by_op.iter().map(|g| g.2).sum::<usize>(),
        profile.steps.len()
    );
    assert!(by_op.windows(2).all(|w| w[0].1 >= w[1].1));
    for (name, value) in &plain {
        assert_eq!(value, &profiled[name], "output {name}");
    }
}

#[test]
fn a_fixed_batch_model_profiles_its_chunks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(path) = light_model(dir, "light_squeezenet.onnx") else {
        eprintln!("no ONNX light models found; skipping");
        return;
    };
    // SqueezeNet declares a batch of 1: three samples run as three chunks.
    let model = accelmesh::Model::load(&path).unwrap();
    let dev = CpuDevice::with_threads(2).unwrap();
    let inputs = random_inputs(model.session(), 3).unwrap();
    let (profiled, profile) = model.run_profiled_on(&dev, &inputs).unwrap();
    let plain = model.run_on(&dev, &inputs).unwrap();
    assert_eq!(profile.steps.len(), model.session().node_count());
    assert!(profile.step_seconds() <= profile.total_seconds);
    for (name, value) in &plain {
        assert_eq!(value, &profiled[name], "output {name}");
        assert_eq!(value.dims()[0], 3);
    }
}

/// Each step's node and seconds, in run order.
fn seconds_by_node(p: &Profile) -> Vec<(&str, f64)> {
    p.steps
        .iter()
        .map(|s| (s.node.as_str(), s.seconds))
        .collect()
}

/// A profile of made-up steps `(node, seconds)` and total seconds.
fn made_up(steps: &[(&str, f64)], total: f64) -> Profile {
    Profile {
        steps: steps
            .iter()
            .map(|&(node, seconds)| StepProfile {
                node: node.to_string(),
                op: "Conv".to_string(),
                input_shapes: vec![vec![1, 3, 7, 7]],
                output_shapes: vec![vec![1, 5, 7, 7]],
                seconds,
            })
            .collect(),
        total_seconds: total,
    }
}

#[test]
fn median_profile_takes_each_steps_median() {
    let runs = [
        made_up(&[("a", 3.0), ("b", 0.5)], 4.0),
        made_up(&[("a", 1.0), ("b", 0.7)], 2.0),
        made_up(&[("a", 2.0), ("b", 9.0)], 11.5),
    ];
    let m = Profile::median(&runs).unwrap();
    assert_eq!(seconds_by_node(&m), [("a", 2.0), ("b", 0.7)]);
    assert_eq!(m.total_seconds, 4.0);
    assert_eq!(m.steps[0].input_shapes, runs[0].steps[0].input_shapes);
    // An even count takes the mean of the middle two.
    assert_eq!(Profile::median(&runs[..2]).unwrap().steps[1].seconds, 0.6);
}

#[test]
fn chained_profile_sums_each_step() {
    let chunks = [
        made_up(&[("a", 3.0), ("b", 0.5)], 4.0),
        made_up(&[("a", 1.0), ("b", 0.25)], 1.5),
    ];
    let c = Profile::chained(&chunks).unwrap();
    assert_eq!(seconds_by_node(&c), [("a", 4.0), ("b", 0.75)]);
    assert_eq!(c.total_seconds, 5.5);
    let err = Profile::chained(&[chunks[0].clone(), made_up(&[("a", 1.0)], 1.0)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("run 1 has 1 steps"), "{err}");
}

#[test]
fn median_profile_rejects_runs_that_differ() {
    let err = Profile::median(&[]).unwrap_err().to_string();
    assert!(err.contains("no runs"), "{err}");
    let a = made_up(&[("a", 1.0), ("b", 1.0)], 2.0);
    let shorter = made_up(&[("a", 1.0)], 1.0);
    let err = Profile::median(&[a.clone(), shorter])
        .unwrap_err()
        .to_string();
    assert!(err.contains("run 1 has 1 steps"), "{err}");
    let renamed = made_up(&[("a", 1.0), ("c", 1.0)], 2.0);
    let err = Profile::median(&[a, renamed]).unwrap_err().to_string();
    assert!(err.contains("step 1 of run 1 is `c`"), "{err}");
}

/// `name` in the `onnx` package's light models, if the package is installed.
fn light_model(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .args([
            "-c",
            "import onnx, os; print(os.path.dirname(onnx.__file__))",
        ])
        .output()
        .ok()?;
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let path = dir.join("backend/test/data/light").join(name);
    path.is_file().then_some(path)
}

#[test]
#[ignore = "a measurement: ACCELMESH_PROFILE_MODEL=model.onnx [ACCELMESH_PROFILE_REPS=n]"]
fn profile_model() {
    let path = std::env::var("ACCELMESH_PROFILE_MODEL").expect("ACCELMESH_PROFILE_MODEL");
    let reps: usize = std::env::var("ACCELMESH_PROFILE_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let threads: usize = std::env::var("ACCELMESH_PROFILE_THREADS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let session = Session::new(Model::load(std::path::Path::new(&path)).unwrap()).unwrap();
    let dev = CpuDevice::with_threads(threads).unwrap();
    let inputs = random_inputs(&session, 1).unwrap();
    session.run(&dev, &inputs).unwrap();
    let profiles: Vec<_> = (0..reps)
        .map(|_| session.run_profiled(&dev, &inputs).unwrap().1)
        .collect();
    let totals: Vec<f64> = profiles.iter().map(|p| p.total_seconds * 1e3).collect();
    let p = &Profile::median(&profiles).unwrap();
    println!("runs (ms): {totals:.1?}");
    println!(
        "medians: run {:.2} ms, steps {:.2} ms, {} steps",
        p.total_seconds * 1e3,
        p.step_seconds() * 1e3,
        p.steps.len()
    );
    println!("-- by op --");
    for (op, s, n) in p.by_op() {
        println!("{:9.3} ms {n:4}  {op}", s * 1e3);
    }
    println!("-- by op and shape --");
    let mut flops: HashMap<String, f64> = HashMap::new();
    for s in &p.steps {
        if s.op.starts_with("Conv") && s.input_shapes.len() >= 2 {
            let w = &s.input_shapes[1];
            let o: f64 = s.output_shapes[0].iter().product::<usize>() as f64;
            let per: f64 = w[1..].iter().product::<usize>() as f64;
            let shapes: Vec<String> = s.input_shapes.iter().map(|d| format!("{d:?}")).collect();
            *flops
                .entry(format!("{} {}", s.op, shapes.join(" ")))
                .or_default() += 2.0 * o * per;
        }
    }
    for (key, s, n) in p.by_op_and_shape().into_iter().take(40) {
        let rate = flops
            .get(&key)
            .map_or(String::new(), |f| format!("{:6.1} GF/s", f / s / 1e9));
        println!("{:9.3} ms {n:4} {rate:>12}  {key}", s * 1e3);
    }
}
