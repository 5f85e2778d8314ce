//! The job file format (TOML) and its validation: every field is checked, and every path
//! resolved against the job file's directory, before anything runs. Errors name the file, the
//! line, the workload and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use super::source::{Source, workload_label};
use crate::bench::ConvCase;
use crate::{DType, Error, NodeSpec, Result};

/// Timed repetitions when a workload gives no `reps`.
pub const DEFAULT_REPS: usize = 5;
/// Matrix sizes of a matmul workload without `sizes` (those of `bench matmul`).
pub const DEFAULT_SIZES: [usize; 3] = [256, 512, 1024];

/// A value of the job file with the line it was written on.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    /// The value, validated.
    pub value: T,
    /// Its 1-based line in the job file.
    pub line: usize,
}

/// A validated job: what to run, on which nodes, and where the report goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job file as given.
    pub path: PathBuf,
    /// The nodes of every workload that names none (`None`: every local device).
    pub nodes: Option<At<NodeSpec>>,
    /// Where the JSON report goes, resolved (`None`: standard output).
    pub report: Option<PathBuf>,
    /// The workloads, in file order.
    pub workloads: Vec<Workload>,
}

/// One `[[workload]]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Its position in the file (0-based).
    pub index: usize,
    /// Its name (default `KIND-N`, N counted from 1).
    pub name: String,
    /// The line of its `[[workload]]` header.
    pub line: usize,
    /// Nodes for this workload only, instead of the job's.
    pub nodes: Option<At<NodeSpec>>,
    /// Target: a model run's median latency, or every bench case's median, within this.
    pub deadline_ms: Option<f64>,
    /// What it runs.
    pub task: Task,
}

/// What a workload runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// An ONNX model.
    Model(ModelTask),
    /// Square matrix multiplies of these sizes (`bench matmul`).
    Matmul {
        /// Matrix sizes N (M = N = K).
        sizes: Vec<usize>,
        /// Dtype, repetitions and checking.
        bench: BenchSettings,
    },
    /// 2-D convolutions (`bench conv2d`).
    Conv2d {
        /// The cases: the preset's, then the custom shapes.
        cases: Vec<ConvCase>,
        /// Dtype, repetitions and checking.
        bench: BenchSettings,
    },
}

impl Task {
    /// The kind as written in the job file: `model`, `matmul` or `conv2d`.
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Model(_) => "model",
            Task::Matmul { .. } => "matmul",
            Task::Conv2d { .. } => "conv2d",
        }
    }
}

/// A model workload.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTask {
    /// The `.onnx` file, resolved.
    pub model: At<PathBuf>,
    /// Batch size of generated inputs.
    pub batch: usize,
    /// Timed runs, after a warm-up (at least 3 runs and 0.5 s).
    pub reps: usize,
    /// Input files by input name (resolved); other inputs are seeded random.
    pub inputs: Vec<(String, At<PathBuf>)>,
    /// Where every output is written as `<output name>.pb`, resolved.
    pub output_dir: Option<PathBuf>,
}

/// The settings every benchmark workload takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchSettings {
    /// Input element type.
    pub dtype: DType,
    /// Timed repetitions per case.
    pub reps: usize,
    /// Compare against a float64 reference.
    pub check: bool,
}

impl Job {
    /// Reads and validates the job file at `path`.
    pub fn load(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::parse("job file", path.display().to_string(), e.to_string()))?;
        Job::parse(path, &text)
    }

    /// Validates `text`, the job file at `path` (relative paths in it are resolved against
    /// the directory of `path`; nothing is read but the files it names are checked to exist).
    pub fn parse(path: &Path, text: &str) -> Result<Job> {
        let src = Source { path, text };
        let doc = DeTable::parse(text).map_err(|e| src.toml_error(&e, None))?;
        let raw: RawJob =
            toml::from_str(text).map_err(|e| src.toml_error(&e, Some(doc.get_ref())))?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let v = Validator { src: &src, dir };
        v.job(raw)
    }

    /// An [`Error::Job`] for this job file.
    pub fn error(&self, line: usize, field: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Job {
            path: self.path.display().to_string(),
            line,
            field: field.into(),
            detail: detail.into(),
        }
    }
}

impl Workload {
    /// How messages name a field of this workload: ``workload 2 (resnet), field `model` ``.
    pub fn field(&self, field: &str) -> String {
        format!(
            "{}, field `{field}`",
            workload_label(self.index, Some(&self.name))
        )
    }
}

/// The top level of a job file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    nodes: Option<Spanned<String>>,
    report: Option<Spanned<String>>,
    workload: Option<Spanned<Vec<Spanned<RawWorkload>>>>,
}

/// A `[[workload]]` table as written: every field of every kind, checked against the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    nodes: Option<Spanned<String>>,
    reps: Option<Spanned<i64>>,
    deadline_ms: Option<Spanned<f64>>,
    model: Option<Spanned<String>>,
    batch: Option<Spanned<i64>>,
    inputs: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    output_dir: Option<Spanned<String>>,
    sizes: Option<Spanned<Vec<Spanned<i64>>>>,
    dtype: Option<Spanned<String>>,
    check: Option<Spanned<bool>>,
    preset: Option<Spanned<String>>,
    shapes: Option<Spanned<Vec<Spanned<String>>>>,
}

/// The fields only some kinds take, with the kinds that take them.
const KIND_FIELDS: [(&str, &[&str]); 9] = [
    ("model", &["model"]),
    ("batch", &["model"]),
    ("inputs", &["model"]),
    ("output_dir", &["model"]),
    ("sizes", &["matmul"]),
    ("dtype", &["matmul", "conv2d"]),
    ("check", &["matmul", "conv2d"]),
    ("preset", &["conv2d"]),
    ("shapes", &["conv2d"]),
];

/// Validation state: the source for messages and the directory paths are relative to.
struct Validator<'a> {
    src: &'a Source<'a>,
    dir: PathBuf,
}

impl Validator<'_> {
    /// Validates the whole job.
    fn job(&self, raw: RawJob) -> Result<Job> {
        let nodes = raw
            .nodes
            .map(|s| self.node_spec(&s, "field `nodes`".to_string()))
            .transpose()?;
        let report = match raw.report {
            Some(r) => Some(self.path(&r, "field `report`".to_string())?),
            None => None,
        };
        let at = raw
            .workload
            .as_ref()
            .map_or_else(|| self.src.text.trim_end().len(), |w| w.span().start);
        let Some(list) = raw.workload.filter(|w| !w.get_ref().is_empty()) else {
            return Err(self.src.error(
                at,
                "field `workload`",
                "the job lists no workloads: add a [[workload]] table",
            ));
        };
        let mut workloads: Vec<Workload> = Vec::new();
        for (index, raw) in list.into_inner().into_iter().enumerate() {
            let offset = raw.span().start;
            let name_at = raw
                .get_ref()
                .name
                .as_ref()
                .map_or(offset, |n| n.span().start);
            let w = self.workload(index, offset, raw.into_inner())?;
            if let Some(other) = workloads.iter().find(|o| o.name == w.name) {
                return Err(self.src.error(
                    name_at,
                    w.field("name"),
                    format!(
                        "the name `{}` is already used by workload {}",
                        w.name,
                        other.index + 1
                    ),
                ));
            }
            workloads.push(w);
        }
        Ok(Job {
            path: self.src.path.to_path_buf(),
            nodes,
            report,
            workloads,
        })
    }

    /// Validates one workload table that starts at byte `offset`.
    fn workload(&self, index: usize, offset: usize, raw: RawWorkload) -> Result<Workload> {
        let name = raw.name.as_ref().map(|n| n.get_ref().trim().to_string());
        let label = workload_label(index, name.as_deref());
        let field = |f: &str| format!("{label}, field `{f}`");
        let err = |at: usize, f: &str, detail: String| self.src.error(at, field(f), detail);
        let Some(kind) = &raw.kind else {
            return Err(err(
                offset,
                "kind",
                "missing: expected `model`, `matmul` or `conv2d`".to_string(),
            ));
        };
        let kind_name = kind.get_ref().trim().to_ascii_lowercase();
        if !["model", "matmul", "conv2d"].contains(&kind_name.as_str()) {
            return Err(err(
                kind.span().start,
                "kind",
                format!(
                    "unknown kind `{}`: expected `model`, `matmul` or `conv2d`",
                    kind.get_ref()
                ),
            ));
        }
        for (f, at) in raw.kind_specific() {
            let takers = KIND_FIELDS
                .iter()
                .find(|(n, _)| *n == f)
                .map_or(&[][..], |(_, k)| *k);
            if !takers.contains(&kind_name.as_str()) {
                return Err(err(
                    at,
                    f,
                    format!(
                        "does not apply to kind `{kind_name}` (only to {})",
                        takers.join(", ")
                    ),
                ));
            }
        }
        if let Some(n) = &raw.name
            && n.get_ref().trim().is_empty()
        {
            return Err(err(n.span().start, "name", "must not be empty".to_string()));
        }
        let name = name.unwrap_or_else(|| format!("{kind_name}-{}", index + 1));
        let label = workload_label(index, Some(&name));
        let field = |f: &str| format!("{label}, field `{f}`");
        let nodes = raw
            .nodes
            .as_ref()
            .map(|s| self.node_spec(s, field("nodes")))
            .transpose()?;
        let reps = match &raw.reps {
            Some(r) => self.positive(r, field("reps"))?,
            None => DEFAULT_REPS,
        };
        let deadline_ms = match &raw.deadline_ms {
            Some(d) if !(d.get_ref().is_finite() && *d.get_ref() > 0.0) => {
                return Err(self.src.error(
                    d.span().start,
                    field("deadline_ms"),
                    format!("`{}` is not a positive number of milliseconds", d.get_ref()),
                ));
            }
            Some(d) => Some(*d.get_ref()),
            None => None,
        };
        let task = match kind_name.as_str() {
            "model" => Task::Model(self.model_task(&raw, offset, reps, &field)?),
            "matmul" => {
                let sizes = match &raw.sizes {
                    Some(list) if list.get_ref().is_empty() => {
                        return Err(self.src.error(
                            list.span().start,
                            field("sizes"),
                            "the list is empty",
                        ));
                    }
                    Some(list) => list
                        .get_ref()
                        .iter()
                        .map(|s| self.positive(s, field("sizes")))
                        .collect::<Result<Vec<usize>>>()?,
                    None => DEFAULT_SIZES.to_vec(),
                };
                Task::Matmul {
                    sizes,
                    bench: self.bench(&raw, reps, &field)?,
                }
            }
            _ => Task::Conv2d {
                cases: self.conv_cases(&raw, &field)?,
                bench: self.bench(&raw, reps, &field)?,
            },
        };
        Ok(Workload {
            index,
            name,
            line: self.src.line(offset),
            nodes,
            deadline_ms,
            task,
        })
    }

    /// The fields of a model workload.
    fn model_task(
        &self,
        raw: &RawWorkload,
        offset: usize,
        reps: usize,
        field: &dyn Fn(&str) -> String,
    ) -> Result<ModelTask> {
        let Some(model) = &raw.model else {
            return Err(self.src.error(
                offset,
                field("model"),
                "missing: a model workload names its `.onnx` file",
            ));
        };
        let model = self.existing_file(model, field("model"))?;
        let batch = match &raw.batch {
            Some(b) => self.positive(b, field("batch"))?,
            None => 1,
        };
        let mut inputs = Vec::new();
        if let Some(map) = &raw.inputs {
            for (name, file) in map.get_ref() {
                let at = self.existing_file(file, field(&format!("inputs.{name}")))?;
                inputs.push((name.clone(), at));
            }
        }
        let output_dir = match &raw.output_dir {
            Some(d) => Some(self.path(d, field("output_dir"))?),
            None => None,
        };
        Ok(ModelTask {
            model,
            batch,
            reps,
            inputs,
            output_dir,
        })
    }

    /// The cases of a conv2d workload: the preset's (the ResNet layers when neither a preset
    /// nor shapes are given), then the shapes.
    fn conv_cases(
        &self,
        raw: &RawWorkload,
        field: &dyn Fn(&str) -> String,
    ) -> Result<Vec<ConvCase>> {
        let mut cases = match (&raw.preset, &raw.shapes) {
            (Some(p), _) => ConvCase::preset(p.get_ref()).map_err(|e| {
                self.src
                    .error(p.span().start, field("preset"), e.to_string())
            })?,
            (None, None) => ConvCase::resnet(),
            (None, Some(_)) => Vec::new(),
        };
        if let Some(shapes) = &raw.shapes {
            if shapes.get_ref().is_empty() && raw.preset.is_none() {
                return Err(self.src.error(
                    shapes.span().start,
                    field("shapes"),
                    "the list is empty",
                ));
            }
            for s in shapes.get_ref() {
                let case = ConvCase::parse(s.get_ref()).map_err(|e| {
                    self.src
                        .error(s.span().start, field("shapes"), e.to_string())
                })?;
                cases.push(case);
            }
        }
        Ok(cases)
    }

    /// Dtype, repetitions and checking of a benchmark workload.
    fn bench(
        &self,
        raw: &RawWorkload,
        reps: usize,
        field: &dyn Fn(&str) -> String,
    ) -> Result<BenchSettings> {
        let dtype = match &raw.dtype {
            Some(d) => DType::parse(d.get_ref()).map_err(|e| {
                self.src
                    .error(d.span().start, field("dtype"), e.to_string())
            })?,
            None => DType::F32,
        };
        Ok(BenchSettings {
            dtype,
            reps,
            check: raw.check.as_ref().is_some_and(|c| *c.get_ref()),
        })
    }

    /// A node spec, or an error naming `field`.
    fn node_spec(&self, s: &Spanned<String>, field: String) -> Result<At<NodeSpec>> {
        let at = s.span().start;
        let spec =
            NodeSpec::parse(s.get_ref()).map_err(|e| self.src.error(at, field, e.to_string()))?;
        Ok(At {
            value: spec,
            line: self.src.line(at),
        })
    }

    /// An integer of at least 1.
    fn positive(&self, n: &Spanned<i64>, field: String) -> Result<usize> {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(self.src.error(
                n.span().start,
                field,
                format!("`{}` is not a positive integer", n.get_ref()),
            )),
        }
    }

    /// A non-empty path, resolved against the job file's directory.
    fn path(&self, p: &Spanned<String>, field: String) -> Result<PathBuf> {
        if p.get_ref().trim().is_empty() {
            return Err(self.src.error(p.span().start, field, "the path is empty"));
        }
        Ok(self.dir.join(p.get_ref()))
    }

    /// A path that must name an existing file.
    fn existing_file(&self, p: &Spanned<String>, field: String) -> Result<At<PathBuf>> {
        let at = p.span().start;
        let path = self.path(p, field.clone())?;
        if !path.is_file() {
            let detail = if path.exists() {
                format!("`{}` is not a file", path.display())
            } else {
                format!("file `{}` not found", path.display())
            };
            return Err(self.src.error(at, field, detail));
        }
        Ok(At {
            value: path,
            line: self.src.line(at),
        })
    }
}

impl RawWorkload {
    /// The kind-specific fields present, with the offsets they were written at.
    fn kind_specific(&self) -> Vec<(&'static str, usize)> {
        let at = |s: Option<std::ops::Range<usize>>| s.map(|r| r.start);
        [
            ("model", at(self.model.as_ref().map(Spanned::span))),
            ("batch", at(self.batch.as_ref().map(Spanned::span))),
            ("inputs", at(self.inputs.as_ref().map(Spanned::span))),
            (
                "output_dir",
                at(self.output_dir.as_ref().map(Spanned::span)),
            ),
            ("sizes", at(self.sizes.as_ref().map(Spanned::span))),
            ("dtype", at(self.dtype.as_ref().map(Spanned::span))),
            ("check", at(self.check.as_ref().map(Spanned::span))),
            ("preset", at(self.preset.as_ref().map(Spanned::span))),
            ("shapes", at(self.shapes.as_ref().map(Spanned::span))),
        ]
        .into_iter()
        .filter_map(|(f, at)| at.map(|a| (f, a)))
        .collect()
    }
}
