//! Models on the mesh: `Model::run` through the DRAC — whole on one node or the batch split
//! across nodes — against a float64 reference and against one device; fixed-batch models run
//! in chunks; failover when a node crashes or hangs mid-model; streams of requests; bad inputs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{cpu_nodes, set_all_rates};

use accelmesh::drac::perf_model::PerfModel;
use accelmesh::drac::{Drac, DracConfig, Fault};
use accelmesh::model::demo;
use accelmesh::model::{RunOptions, Strategy};
use accelmesh::onnx::{
    Attribute, Dim, ElemType, Graph, Model as OnnxModel, Node, Value, ValueInfo,
};
use accelmesh::{CpuDevice, DType, Device, Error, Model, NodeSet, Tensor};

/// Rates per node: the hardware's (shared by same-kind nodes) and each node's own instance.
fn perf_for(devices: &[Arc<dyn Device>], gflops: &[f64]) -> PerfModel {
    let mut perf = PerfModel::new();
    for (d, &g) in devices.iter().zip(gflops) {
        let hardware = PerfModel::node_key(d.info());
        let instance = format!("{hardware}#{}", d.info().id);
        for key in [hardware, instance] {
            set_all_rates(&mut perf, &key, g);
        }
    }
    perf
}

fn drac_with(n: usize, gflops: &[f64], config: DracConfig) -> Drac {
    let devices = cpu_nodes(n);
    let perf = perf_for(&devices, gflops);
    Drac::new(&NodeSet::new("test", devices).unwrap(), perf, config).unwrap()
}

fn quick_timeouts() -> DracConfig {
    DracConfig {
        hold_off_s: 60.0,
        timeout_factor: 20.0,
        min_timeout_s: 1.0,
    }
}

/// `y = relu(x · Wᵀ + b)` then a second dense layer, batch dimension `batch_dim`.
fn mlp(batch_dim: Dim, w1: &Tensor, b1: &Tensor, w2: &Tensor) -> OnnxModel {
    let node = |op: &str, inputs: &[&str], out: &str, attrs: Vec<(&str, Attribute)>| Node {
        name: out.to_string(),
        op_type: op.to_string(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![out.to_string()],
        attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    let features = w1.dims()[1];
    OnnxModel {
        ir_version: 8,
        producer: "model test".to_string(),
        opsets: HashMap::from([(String::new(), 13)]),
        graph: Graph {
            name: "mlp".to_string(),
            nodes: vec![
                node(
                    "Gemm",
                    &["x", "w1", "b1"],
                    "h",
                    vec![("transB", Attribute::Int(1))],
                ),
                node("Relu", &["h"], "r", vec![]),
                node("MatMul", &["r", "w2"], "y", vec![]),
            ],
            initializers: HashMap::from([
                ("w1".to_string(), Value::Float(w1.clone())),
                ("b1".to_string(), Value::Float(b1.clone())),
                ("w2".to_string(), Value::Float(w2.clone())),
            ]),
            inputs: vec![ValueInfo {
                name: "x".to_string(),
                elem_type: ElemType::Float,
                dims: Some(vec![batch_dim, Dim::Known(features)]),
            }],
            outputs: vec![ValueInfo {
                name: "y".to_string(),
                elem_type: ElemType::Float,
                dims: Some(vec![Dim::Unknown, Dim::Known(w2.dims()[1])]),
            }],
        },
    }
}

/// The MLP in float64.
fn mlp_reference(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor) -> Vec<f64> {
    let (n, f) = (x.dims()[0], x.dims()[1]);
    let (h, o) = (w1.dims()[0], w2.dims()[1]);
    let (x, w1, b1, w2) = (
        x.to_f64_vec(),
        w1.to_f64_vec(),
        b1.to_f64_vec(),
        w2.to_f64_vec(),
    );
    let mut y = vec![0.0; n * o];
    for i in 0..n {
        let hidden: Vec<f64> = (0..h)
            .map(|j| {
                let s: f64 = (0..f).map(|k| x[i * f + k] * w1[j * f + k]).sum::<f64>() + b1[j];
                s.max(0.0)
            })
            .collect();
        for c in 0..o {
            y[i * o + c] = (0..h).map(|j| hidden[j] * w2[j * o + c]).sum();
        }
    }
    y
}

fn weights() -> (Tensor, Tensor, Tensor) {
    (
        Tensor::random([33, 17], DType::F32, 11).unwrap(),
        Tensor::random([33], DType::F32, 12).unwrap(),
        Tensor::random([33, 7], DType::F32, 13).unwrap(),
    )
}

/// The ids of the nodes the DRAC has marked failed.
fn failed_nodes(drac: &Drac) -> Vec<String> {
    drac.node_states()
        .into_iter()
        .filter(|s| s.2.is_some())
        .map(|s| s.0)
        .collect()
}

fn feed(x: &Tensor) -> HashMap<String, Tensor> {
    HashMap::from([("x".to_string(), x.clone())])
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn a_split_batch_matches_the_float64_reference_and_uses_every_node() {
    let (w1, b1, w2) = weights();
    // Slow modelled rates: splitting pays off even for this small model.
    let drac = drac_with(3, &[1e-4, 1e-4, 1e-4], DracConfig::default());
    for batch in [1usize, 7, 17, 33] {
        // A fresh model each time: no corrections learned from earlier (fast, real) runs,
        // so the plan follows the modelled rates alone.
        let model = Model::from_onnx(mlp(Dim::Symbolic("N".into()), &w1, &b1, &w2)).unwrap();
        let x = Tensor::random([batch, 17], DType::F32, batch as u64).unwrap();
        let run = model.run(&drac, &feed(&x)).unwrap();
        let got = run.output("y").unwrap();
        assert_eq!(got.dims(), [batch, 7]);
        assert_close(&got.to_f32_vec(), &mlp_reference(&x, &w1, &b1, &w2));
        let r = &run.report;
        assert_eq!(r.samples, batch);
        let covered: usize = r.parts.iter().map(|p| p.samples).sum();
        assert_eq!(covered, batch, "{r:?}");
        if batch >= 3 {
            assert_eq!(r.strategy, Strategy::DataParallel, "{r:?}");
            assert_eq!(r.nodes_used.len(), 3, "{r:?}");
        } else {
            assert_eq!(r.strategy, Strategy::Whole, "{r:?}");
        }
        assert!(r.energy_j > 0.0 && r.elapsed_s > 0.0);
    }
}

#[test]
fn shares_follow_node_speed_and_one_node_keeps_it_whole() {
    let (w1, b1, w2) = weights();
    let model = Model::from_onnx(mlp(Dim::Symbolic("N".into()), &w1, &b1, &w2)).unwrap();
    let drac = drac_with(2, &[3e-4, 1e-4], DracConfig::default());
    let x = Tensor::random([16, 17], DType::F32, 5).unwrap();
    let r = model.run(&drac, &feed(&x)).unwrap().report;
    assert_eq!(r.parts.len(), 2, "{r:?}");
    assert_eq!(r.parts[0].node, "cpu0");
    assert_eq!(
        r.parts[0].samples, 12,
        "three times the speed, three times the share"
    );
    // A fresh model: its plan follows the modelled rates, not the first run's measurements.
    let model = Model::from_onnx(mlp(Dim::Symbolic("N".into()), &w1, &b1, &w2)).unwrap();
    let whole = model
        .run_values(
            &drac,
            &HashMap::from([("x".to_string(), Value::Float(x))]),
            &RunOptions {
                max_nodes: 1,
                ..RunOptions::default()
            },
        )
        .unwrap()
        .report;
    assert_eq!(whole.strategy, Strategy::Whole);
    assert_eq!(whole.nodes_used, ["cpu0"]);
}

#[test]
fn a_fixed_batch_model_runs_a_larger_batch_in_chunks() {
    let (w1, b1, w2) = weights();
    let model = Model::from_onnx(mlp(Dim::Known(1), &w1, &b1, &w2)).unwrap();
    let drac = drac_with(2, &[1e-4, 1e-4], DracConfig::default());
    let x = Tensor::random([5, 17], DType::F32, 21).unwrap();
    let run = model.run(&drac, &feed(&x)).unwrap();
    assert_eq!(run.output("y").unwrap().dims(), [5, 7]);
    assert_close(
        &run.output("y").unwrap().to_f32_vec(),
        &mlp_reference(&x, &w1, &b1, &w2),
    );
    // A batch of two declared, three given: no whole number of runs.
    let model2 = Model::from_onnx(mlp(Dim::Known(2), &w1, &b1, &w2)).unwrap();
    let x3 = Tensor::random([3, 17], DType::F32, 22).unwrap();
    let err = model2.run(&drac, &feed(&x3)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

#[test]
fn the_demo_network_splits_and_agrees_with_one_device() {
    let model = Model::from_onnx(demo::network(7)).unwrap();
    assert!(
        (100e6..400e6).contains(&(model.flops_per_sample() as f64)),
        "{}",
        model.flops_per_sample()
    );
    let inputs = demo::images(3, 9).unwrap();
    let alone = model
        .run_on(&CpuDevice::with_threads(1).unwrap(), &inputs)
        .unwrap();
    let drac = drac_with(2, &[1.0, 1.0], DracConfig::default());
    let run = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    assert_eq!(run.report.strategy, Strategy::DataParallel);
    let a = run.output(demo::OUTPUT).unwrap().to_f32_vec();
    let b = alone[demo::OUTPUT].as_tensor().unwrap().to_f32_vec();
    assert_eq!(a.len(), 3 * demo::CLASSES);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "{x} vs {y}");
    }
    // Probabilities: every row sums to one and is not degenerate.
    for row in a.chunks(demo::CLASSES) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-4, "{row:?}");
        assert!(row.iter().all(|&p| p < 0.999), "{row:?}");
    }
}

#[test]
fn a_node_that_crashes_mid_model_loses_its_part_and_the_result_is_right() {
    let (w1, b1, w2) = weights();
    let model = Model::from_onnx(mlp(Dim::Symbolic("N".into()), &w1, &b1, &w2)).unwrap();
    let drac = drac_with(2, &[1e-4, 1e-4], quick_timeouts());
    // The second op call on cpu1 fails: inside the graph, after the first layer.
    drac.inject_fault("cpu1", Fault::crash().after(1)).unwrap();
    let x = Tensor::random([9, 17], DType::F32, 31).unwrap();
    let run = model.run(&drac, &feed(&x)).unwrap();
    assert_close(
        &run.output("y").unwrap().to_f32_vec(),
        &mlp_reference(&x, &w1, &b1, &w2),
    );
    let moved = &run.report.moved_parts;
    assert_eq!(moved.len(), 1, "{:?}", run.report);
    assert_eq!(
        (moved[0].from.as_str(), moved[0].to.as_str()),
        ("cpu1", "cpu0")
    );
    assert_eq!(failed_nodes(&drac), ["cpu1"]);
    // The next run plans on the survivor alone.
    let again = model.run(&drac, &feed(&x)).unwrap();
    assert_eq!(again.report.nodes_used, ["cpu0"]);
}

#[test]
fn a_hung_node_is_detected_by_its_time_out() {
    let (w1, b1, w2) = weights();
    let model = Model::from_onnx(mlp(Dim::Symbolic("N".into()), &w1, &b1, &w2)).unwrap();
    let drac = drac_with(3, &[1e-4, 1e-4, 1e-4], quick_timeouts());
    drac.inject_fault("cpu2", Fault::hang()).unwrap();
    let x = Tensor::random([6, 17], DType::F32, 41).unwrap();
    let started = std::time::Instant::now();
    let run = model.run(&drac, &feed(&x)).unwrap();
    assert!(started.elapsed().as_secs_f64() < 30.0);
    assert_close(
        &run.output("y").unwrap().to_f32_vec(),
        &mlp_reference(&x, &w1, &b1, &w2),
    );
    let moved = &run.report.moved_parts;
    assert_eq!(moved.len(), 1, "{:?}", run.report);
    assert_eq!(moved[0].from, "cpu2");
    assert!(moved[0].reason.contains("no answer"), "{}", moved[0].reason);
}

#[test]
fn a_stream_of_requests_overlaps_on_the_nodes_and_keeps_its_order() {
    // The demo network: each request takes milliseconds, so two are in flight at once.
    let model = Model::from_onnx(demo::network(3)).unwrap();
    let drac = drac_with(2, &[1.0, 1.0], DracConfig::default());
    let requests: Vec<HashMap<String, Value>> =
        (0..6).map(|i| demo::images(1, 200 + i).unwrap()).collect();
    let cpu = CpuDevice::with_threads(1).unwrap();
    let expected: Vec<Vec<f32>> = requests
        .iter()
        .map(|r| {
            let out = model.run_on(&cpu, r).unwrap();
            out[demo::OUTPUT].as_tensor().unwrap().to_f32_vec()
        })
        .collect();
    let results = model.run_stream(&drac, requests, 2);
    assert_eq!(results.len(), 6);
    let mut used = std::collections::BTreeSet::new();
    for (want, r) in expected.iter().zip(results) {
        let r = r.unwrap();
        assert_eq!(r.report.strategy, Strategy::Whole);
        used.extend(r.report.nodes_used.clone());
        let got = r.output(demo::OUTPUT).unwrap().to_f32_vec();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5, "{g} vs {w}");
        }
    }
    assert_eq!(used.len(), 2, "both nodes served the stream: {used:?}");
}

#[test]
fn bad_inputs_are_typed_errors_and_leave_the_mesh_free() {
    let (w1, b1, w2) = weights();
    let model = Model::from_onnx(mlp(Dim::Symbolic("N".into()), &w1, &b1, &w2)).unwrap();
    let drac = drac_with(2, &[1e-4, 1e-4], DracConfig::default());
    let x = Tensor::random([4, 17], DType::F32, 51).unwrap();
    let wrong_name = HashMap::from([("input".to_string(), x.clone())]);
    let err = model.run(&drac, &wrong_name).unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
    let wrong_width = HashMap::from([(
        "x".to_string(),
        Tensor::random([4, 16], DType::F32, 52).unwrap(),
    )]);
    let err = model.run(&drac, &wrong_width).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("16"), "{err}");
    // Nothing stuck: the nodes are free and working.
    assert!(drac.node_states().iter().all(|s| s.2.is_none()));
    let ok = model.run(&drac, &feed(&x)).unwrap();
    assert_eq!(ok.output("y").unwrap().dims(), [4, 7]);
    // A missing file is a parse error naming the path.
    let err = Model::load("/nonexistent/model.onnx").err().unwrap();
    assert!(err.to_string().contains("/nonexistent/model.onnx"), "{err}");
}

#[test]
fn a_batch_runs_in_the_lanes_of_a_two_thread_node_and_agrees_with_one_thread() {
    let node = CpuDevice::with_threads(2).unwrap();
    let lanes = node.lanes();
    assert_eq!(lanes.len(), 2);
    assert!(lanes.iter().all(|l| l.info().threads == Some(1)));
    assert!(lanes.iter().all(|l| l.lanes().is_empty()));
    assert!(CpuDevice::with_threads(1).unwrap().lanes().is_empty());

    let model = Model::from_onnx(demo::network(5)).unwrap();
    let one = CpuDevice::with_threads(1).unwrap();
    for batch in [1usize, 2, 3, 5] {
        let inputs = demo::images(batch, 40 + batch as u64).unwrap();
        let got = model.run_on(&node, &inputs).unwrap();
        let want = model.run_on(&one, &inputs).unwrap();
        let (a, b) = (
            got[demo::OUTPUT].as_tensor().unwrap(),
            want[demo::OUTPUT].as_tensor().unwrap(),
        );
        assert_eq!(a.dims(), [batch, demo::CLASSES]);
        for (x, y) in a.to_f32_vec().iter().zip(b.to_f32_vec()) {
            assert!((x - y).abs() <= 1e-5, "batch {batch}: {x} vs {y}");
        }
    }
}

#[test]
fn a_fault_strikes_the_lanes_of_a_node_too() {
    let model = Model::from_onnx(demo::network(5)).unwrap();
    let node: Arc<dyn Device> = Arc::new(CpuDevice::new(0, 2, 1 << 30).unwrap());
    let perf = perf_for(std::slice::from_ref(&node), &[1.0]);
    let drac = Drac::new(
        &NodeSet::new("test", vec![node]).unwrap(),
        perf,
        quick_timeouts(),
    )
    .unwrap();
    let inputs = demo::images(4, 3).unwrap();
    let fine = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    assert_eq!(
        fine.output(demo::OUTPUT).unwrap().dims(),
        [4, demo::CLASSES]
    );
    // A crash after a few ops: the batch runs in the node's lanes, which must fail with it.
    drac.inject_fault("cpu0", Fault::crash().after(3)).unwrap();
    let err = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("crashed"), "{err}");
}

/// The demo network's output for one image, run on one device.
fn demo_alone(model: &Model, inputs: &HashMap<String, Value>) -> Vec<f32> {
    let out = model
        .run_on(&CpuDevice::with_threads(1).unwrap(), inputs)
        .unwrap();
    out[demo::OUTPUT].as_tensor().unwrap().to_f32_vec()
}

#[track_caller]
fn assert_same_probabilities(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        // Winograd tiles round by where an output sits: a split agrees to float rounding.
        assert!((g - w).abs() <= 1e-4, "{g} vs {w}");
    }
}

#[test]
fn one_image_splits_its_convolutions_across_the_nodes() {
    let model = Model::from_onnx(demo::network(5)).unwrap();
    let inputs = demo::images(1, 61).unwrap();
    let want = demo_alone(&model, &inputs);
    let drac = drac_with(3, &[1.0, 1.0, 1.0], DracConfig::default());
    let run = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    let r = &run.report;
    assert_eq!(r.strategy, Strategy::ChannelSplit, "{r:?}");
    assert_eq!(r.nodes_used.len(), 3, "{r:?}");
    assert!(r.nodes.iter().all(|n| n.compute_s > 0.0), "{r:?}");
    assert_same_probabilities(&run.output(demo::OUTPUT).unwrap().to_f32_vec(), &want);
    // At most one node, or a batch the nodes can share by samples: no channel split.
    let one = model
        .run_values(
            &drac,
            &inputs,
            &RunOptions {
                max_nodes: 1,
                ..RunOptions::default()
            },
        )
        .unwrap();
    assert_eq!(one.report.strategy, Strategy::Whole);
    let batch = model
        .run_values(&drac, &demo::images(6, 62).unwrap(), &RunOptions::default())
        .unwrap();
    assert_eq!(batch.report.strategy, Strategy::DataParallel);
}

#[test]
fn a_split_member_that_crashes_is_dropped_and_the_result_is_right() {
    let model = Model::from_onnx(demo::network(5)).unwrap();
    let inputs = demo::images(1, 71).unwrap();
    let want = demo_alone(&model, &inputs);
    let drac = drac_with(2, &[1.0, 1.0], quick_timeouts());
    drac.inject_fault("cpu1", Fault::crash().after(2)).unwrap();
    let run = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    assert_eq!(run.report.strategy, Strategy::ChannelSplit);
    assert_same_probabilities(&run.output(demo::OUTPUT).unwrap().to_f32_vec(), &want);
    let moved = &run.report.moved_parts;
    assert_eq!(moved.len(), 1, "{:?}", run.report);
    assert_eq!(
        (moved[0].from.as_str(), moved[0].to.as_str()),
        ("cpu1", "cpu0")
    );
    assert!(moved[0].reason.contains("crashed"), "{}", moved[0].reason);
    assert_eq!(failed_nodes(&drac), ["cpu1"]);
    let again = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    assert_eq!(again.report.strategy, Strategy::Whole);
    assert_eq!(again.report.nodes_used, ["cpu0"]);
}

#[test]
fn a_split_member_that_hangs_is_found_by_the_time_out() {
    let model = Model::from_onnx(demo::network(5)).unwrap();
    let inputs = demo::images(1, 81).unwrap();
    let want = demo_alone(&model, &inputs);
    let drac = drac_with(3, &[1.0, 1.0, 1.0], quick_timeouts());
    drac.inject_fault("cpu2", Fault::hang().after(1)).unwrap();
    let started = std::time::Instant::now();
    let run = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    assert!(started.elapsed().as_secs_f64() < 30.0);
    assert_same_probabilities(&run.output(demo::OUTPUT).unwrap().to_f32_vec(), &want);
    let moved = &run.report.moved_parts;
    assert_eq!(moved.len(), 1, "{:?}", run.report);
    assert_eq!(moved[0].from, "cpu2");
    assert!(moved[0].reason.contains("no answer"), "{}", moved[0].reason);
}

#[test]
fn a_crash_and_then_a_hang_in_a_split_mark_exactly_those_nodes() {
    let model = Model::from_onnx(demo::network(5)).unwrap();
    let inputs = demo::images(1, 91).unwrap();
    let want = demo_alone(&model, &inputs);
    let drac = drac_with(3, &[1.0, 1.0, 1.0], quick_timeouts());
    // cpu1 fails its first part (its block moves to the lead); cpu2 hangs on its fourth.
    drac.inject_fault("cpu1", Fault::crash()).unwrap();
    drac.inject_fault("cpu2", Fault::hang().after(3)).unwrap();
    let run = model
        .run_values(&drac, &inputs, &RunOptions::default())
        .unwrap();
    assert_same_probabilities(&run.output(demo::OUTPUT).unwrap().to_f32_vec(), &want);
    let moved: Vec<(&str, &str)> = run
        .report
        .moved_parts
        .iter()
        .map(|m| (m.from.as_str(), m.to.as_str()))
        .collect();
    assert_eq!(
        moved,
        [("cpu1", "cpu0"), ("cpu2", "cpu0")],
        "{:?}",
        run.report
    );
    assert_eq!(failed_nodes(&drac), ["cpu1", "cpu2"]);
}

#[test]
fn a_stream_with_one_request_in_flight_splits_each_image_across_the_nodes() {
    let model = Model::from_onnx(demo::network(3)).unwrap();
    let drac = drac_with(2, &[1.0, 1.0], DracConfig::default());
    let requests: Vec<HashMap<String, Value>> =
        (0..3).map(|i| demo::images(1, 300 + i).unwrap()).collect();
    let expected: Vec<Vec<f32>> = requests.iter().map(|r| demo_alone(&model, r)).collect();
    for (want, r) in expected.iter().zip(model.run_stream(&drac, requests, 1)) {
        let r = r.unwrap();
        assert_eq!(r.report.strategy, Strategy::ChannelSplit, "{:?}", r.report);
        assert_same_probabilities(&r.output(demo::OUTPUT).unwrap().to_f32_vec(), want);
    }
}
