//! The JSON report of a job: what ran where, per workload its results, and the wall time.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::bench::CaseResult;
use crate::onnx::infer::InferReport;
use crate::{Error, Result};

/// The report of one job run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    /// The job file as given.
    pub job: String,
    /// When the job started, UTC (`2026-05-01T12:00:00Z`).
    pub date: String,
    /// The job's node set (the nodes of workloads that name none).
    pub nodes: String,
    /// One entry per workload, in file order.
    pub workloads: Vec<WorkloadReport>,
    /// Wall seconds of the whole job (preparation included).
    pub wall_s: f64,
}

/// The report of one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadReport {
    /// The workload's name.
    pub name: String,
    /// `model`, `matmul` or `conv2d`.
    pub kind: String,
    /// The node set it ran on.
    pub nodes: String,
    /// Its target, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<f64>,
    /// Whether the target was met (model: median latency; bench: every case's median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_met: Option<bool>,
    /// Wall seconds of the workload (warm-ups and checks included).
    pub wall_s: f64,
    /// Its results.
    #[serde(flatten)]
    pub results: Results,
}

/// The results of a workload: one model run, or the benchmark's cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Results {
    /// A model's timed runs, under `result`.
    #[serde(rename = "result")]
    Model(ModelResult),
    /// The benchmark's cases as `bench --json` prints them, under `cases`.
    #[serde(rename = "cases")]
    Bench(Vec<CaseResult>),
}

/// What a model workload measured and wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelResult {
    /// The model file.
    pub model: String,
    /// Latency, throughput, nodes and energy of the timed runs.
    #[serde(flatten)]
    pub run: InferReport,
    /// The output files written (empty without `output_dir`).
    pub outputs: Vec<String>,
}

impl JobReport {
    /// The report as indented JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Io(e.into()))
    }

    /// Writes the report as JSON to `path`, creating its directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = self.to_json()?;
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(())
    }
}

/// The current time as an ISO 8601 UTC timestamp, to the second.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_timestamp(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_timestamp;

    #[test]
    fn timestamps_are_civil_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
