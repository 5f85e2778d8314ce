//! Headless jobs (`accelmesh run JOB.toml`): a TOML file lists workloads — ONNX models,
//! matmul and conv2d benchmarks — with their nodes, targets and output paths; the job is
//! validated whole, run in order with a progress bar, and reported as one JSON document.
//!
//! ```toml
//! nodes = "cpu"                 # optional, as `--nodes` (default: every local device)
//! report = "out/report.json"    # optional (default: standard output)
//!
//! [[workload]]
//! name = "resnet"
//! kind = "model"
//! model = "models/resnet50.onnx" # relative to the job file's directory
//! deadline_ms = 200
//!
//! [[workload]]
//! kind = "matmul"
//! sizes = [512, 1024]
//! check = true
//! ```

mod progress;
mod report;
mod runner;
mod source;
mod spec;

pub use progress::Progress;
pub use report::{JobReport, ModelResult, Results, WorkloadReport, utc_timestamp};
pub use runner::{check, run};
pub use spec::{At, BenchSettings, DEFAULT_REPS, DEFAULT_SIZES, Job, ModelTask, Task, Workload};
