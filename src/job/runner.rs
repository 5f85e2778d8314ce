//! Running a validated job: every node set brought up and every model loaded (with its
//! inputs) first, then the workloads in file order, then the report.

use std::collections::HashMap;
use std::time::Instant;

use super::progress::Progress;
use super::report::{JobReport, ModelResult, Results, WorkloadReport, utc_now};
use super::spec::{At, BenchSettings, Job, ModelTask, Task, Workload};
use crate::bench::{self, CaseResult};
use crate::drac::{Drac, DracConfig};
use crate::model::Model;
use crate::onnx::{Value, infer, read_tensor_pb};
use crate::{Error, NodeSet, NodeSpec, Result};

/// A node set and the controller over it.
struct Mesh {
    /// The spec as written (`None`: every local device).
    spec: Option<String>,
    /// The nodes.
    nodes: NodeSet,
    /// The DRAC over them.
    drac: Drac,
}

/// A model loaded with its inputs.
struct LoadedModel {
    /// The prepared model.
    model: Model,
    /// Every input: from its file, or seeded random.
    inputs: HashMap<String, Value>,
}

/// A workload ready to run.
struct Ready<'j> {
    /// The workload.
    workload: &'j Workload,
    /// Index of its mesh.
    mesh: usize,
    /// Its model, for a model workload.
    model: Option<LoadedModel>,
}

/// Everything a job needs, brought up before anything runs.
struct Prepared<'j> {
    meshes: Vec<Mesh>,
    ready: Vec<Ready<'j>>,
}

/// Brings up the nodes and loads the models of `job` without running anything: an error
/// here names the workload and the field at fault.
pub fn check(job: &Job) -> Result<()> {
    prepare(job).map(|_| ())
}

/// Runs `job`: prepares everything, then runs the workloads in order, counting cases on
/// `progress`, and returns the report.
pub fn run(job: &Job, progress: &Progress) -> Result<JobReport> {
    let start = Instant::now();
    let date = utc_now();
    let prepared = prepare(job)?;
    let cases: usize = job.workloads.iter().map(case_count).sum();
    progress.start(cases as u64);
    let mut workloads = Vec::with_capacity(prepared.ready.len());
    for ready in &prepared.ready {
        let mesh = &prepared.meshes[ready.mesh];
        let w = ready.workload;
        let report = run_workload(ready, mesh, progress)
            .map_err(|e| job.error(w.line, workload_field(w), e.to_string()))?;
        workloads.push(report);
    }
    progress.finish();
    let nodes = match prepared.meshes.iter().find(|m| m.spec == default_key(job)) {
        Some(mesh) => mesh.nodes.label().to_string(),
        None => job
            .nodes
            .as_ref()
            .map_or_else(|| NodeSpec::local().to_string(), |n| n.value.to_string()),
    };
    Ok(JobReport {
        job: job.path.display().to_string(),
        date,
        nodes,
        workloads,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// The cases a workload counts on the progress bar.
fn case_count(w: &Workload) -> usize {
    match &w.task {
        Task::Model(_) => 1,
        Task::Matmul { sizes, .. } => sizes.len(),
        Task::Conv2d { cases, .. } => cases.len(),
    }
}

/// How run-time errors name a workload: ``workload 2 (resnet)``.
fn workload_field(w: &Workload) -> String {
    super::source::workload_label(w.index, Some(&w.name))
}

/// The mesh key of the job-level nodes.
fn default_key(job: &Job) -> Option<String> {
    job.nodes.as_ref().map(|n| n.value.as_str().to_string())
}

/// Brings up every node set the workloads use and loads every model.
fn prepare(job: &Job) -> Result<Prepared<'_>> {
    let mut meshes: Vec<Mesh> = Vec::new();
    let mut ready = Vec::with_capacity(job.workloads.len());
    for w in &job.workloads {
        let (spec, field) = match &w.nodes {
            Some(n) => (Some(n), w.field("nodes")),
            None => (job.nodes.as_ref(), "field `nodes`".to_string()),
        };
        let key = spec.map(|s| s.value.as_str().to_string());
        let mesh = match meshes.iter().position(|m| m.spec == key) {
            Some(i) => i,
            None => {
                meshes.push(bring_up(job, spec, &field)?);
                meshes.len() - 1
            }
        };
        let model = match &w.task {
            Task::Model(task) => Some(load_model(job, w, task)?),
            _ => None,
        };
        ready.push(Ready {
            workload: w,
            mesh,
            model,
        });
    }
    Ok(Prepared { meshes, ready })
}

/// Brings up the nodes of `spec` (every local device without one) and the DRAC over them.
fn bring_up(job: &Job, spec: Option<&At<NodeSpec>>, field: &str) -> Result<Mesh> {
    let attempt = || -> Result<(NodeSet, Drac)> {
        let nodes = spec.map(|s| s.value.clone()).unwrap_or_default().build()?;
        let drac = Drac::calibrated(&nodes, DracConfig::default())?;
        Ok((nodes, drac))
    };
    let (nodes, drac) = match (attempt(), spec) {
        (Ok(mesh), _) => mesh,
        (Err(e), Some(s)) => return Err(job.error(s.line, field, e.to_string())),
        (Err(e), None) => return Err(e),
    };
    Ok(Mesh {
        spec: spec.map(|s| s.value.as_str().to_string()),
        nodes,
        drac,
    })
}

/// Loads a model workload's model and its inputs (given files, the rest seeded random).
fn load_model(job: &Job, w: &Workload, task: &ModelTask) -> Result<LoadedModel> {
    let at_model = |e: Error| job.error(task.model.line, w.field("model"), e.to_string());
    let model = Model::load(&task.model.value).map_err(at_model)?;
    let mut inputs = infer::random_inputs(model.session(), task.batch).map_err(at_model)?;
    let names = model.session().input_names();
    for (name, file) in &task.inputs {
        let field = w.field(&format!("inputs.{name}"));
        if !names.iter().any(|n| n == name) {
            return Err(job.error(
                file.line,
                field,
                format!("the model has no input `{name}` (it has {names:?})"),
            ));
        }
        let (_, value) = read_tensor_pb(&file.value)
            .map_err(|e| job.error(file.line, field.clone(), e.to_string()))?;
        inputs.insert(name.clone(), value);
    }
    Ok(LoadedModel { model, inputs })
}

/// Runs one workload and reports it.
fn run_workload(ready: &Ready<'_>, mesh: &Mesh, progress: &Progress) -> Result<WorkloadReport> {
    let w = ready.workload;
    let start = Instant::now();
    let (results, deadline_met) = match (&w.task, &ready.model) {
        (Task::Model(task), Some(loaded)) => {
            progress.case(format!("{}: model {}", w.name, task.model.value.display()));
            let result = run_model(loaded, &mesh.drac, task)?;
            progress.done();
            let met = w.deadline_ms.map(|d| result.run.latency_ms <= d);
            (Results::Model(result), met)
        }
        (Task::Matmul { sizes, bench }, _) => {
            let cases = run_bench(w, sizes, progress, |n| {
                bench::run_matmul(
                    &mesh.nodes,
                    &mesh.drac,
                    &bench::MatmulCase::square(*n),
                    bench.dtype,
                    bench.reps,
                    bench.check,
                )
            })?;
            bench_results(w, cases)
        }
        (Task::Conv2d { cases, bench }, _) => {
            let BenchSettings { dtype, reps, check } = *bench;
            let cases = run_bench(w, cases, progress, |c| {
                bench::run_conv2d(&mesh.nodes, &mesh.drac, c, dtype, reps, check)
            })?;
            bench_results(w, cases)
        }
        (Task::Model(_), None) => {
            return Err(Error::shape("job", "a model workload was not loaded"));
        }
    };
    Ok(WorkloadReport {
        name: w.name.clone(),
        kind: w.task.kind().to_string(),
        nodes: mesh.nodes.label().to_string(),
        deadline_ms: w.deadline_ms,
        deadline_met,
        wall_s: start.elapsed().as_secs_f64(),
        results,
    })
}

/// Runs a model workload's timed runs and writes its outputs: the one place that calls the
/// model API.
fn run_model(loaded: &LoadedModel, drac: &Drac, task: &ModelTask) -> Result<ModelResult> {
    let (outputs, run) = infer::infer(&loaded.model, drac, &loaded.inputs, task.reps)?;
    let mut files = Vec::new();
    if let Some(dir) = &task.output_dir {
        let session = loaded.model.session();
        infer::write_outputs(dir, session, &outputs)?;
        files = session
            .output_names()
            .iter()
            .map(|n| dir.join(infer::output_file_name(n)).display().to_string())
            .collect();
    }
    Ok(ModelResult {
        model: task.model.value.display().to_string(),
        run,
        outputs: files,
    })
}

/// Runs one benchmark case per item, showing each on the progress bar.
fn run_bench<T: std::fmt::Display>(
    w: &Workload,
    items: &[T],
    progress: &Progress,
    mut case: impl FnMut(&T) -> Result<CaseResult>,
) -> Result<Vec<CaseResult>> {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        progress.case(format!("{}: {} {item}", w.name, w.task.kind()));
        results.push(case(item)?);
        progress.done();
    }
    Ok(results)
}

/// A benchmark's results, with whether every case's median met the deadline.
fn bench_results(w: &Workload, cases: Vec<CaseResult>) -> (Results, Option<bool>) {
    let met = w
        .deadline_ms
        .map(|d| cases.iter().all(|c| c.ms_median <= d));
    (Results::Bench(cases), met)
}
