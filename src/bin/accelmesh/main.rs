//! The `accelmesh` command line: parses arguments, calls the library, prints the results.

#![forbid(unsafe_code)]

mod print;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use accelmesh::bench::{self, ConvCase, MatmulCase};
use accelmesh::drac::perf_model::PerfModel;
use accelmesh::drac::sim::{Policy, SimConfig, parse_mix, run_simulation};
use accelmesh::drac::{Drac, DracConfig};
use accelmesh::mesh::MeshSpec;
use accelmesh::model::Strategy;
use accelmesh::model::demo;
use accelmesh::model::split::ChannelSplit;
use accelmesh::onnx::{infer, read_tensor_pb};
use accelmesh::{DType, Device, Error, NodeSet, NodeSpec, Result};
use clap::{Args, Parser, Subcommand};

/// Exit status of every failed run (bad arguments or a failed command).
const EXIT_FAILURE: u8 = 2;

/// accelmesh: every compute device of this machine as one mesh of AI nodes.
#[derive(Debug, Parser)]
#[command(name = "accelmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// List the nodes a spec brings up (default: every local device).
    Devices {
        /// Print one JSON object per node instead of one line of text.
        #[arg(long)]
        json: bool,
        /// Which nodes: `cpu` (one node, all cores), `cpu:NxT` (N nodes of T threads), `gpu`
        /// (every GPU adapter), `gpu:N`, or a comma-separated list of these.
        #[arg(long, value_name = "SPEC")]
        nodes: Option<NodeSpec>,
    },
    /// Measure the nodes' speed per op and dtype (the DRAC's perf model) and cache it.
    Calibrate {
        /// Which nodes (see `devices --help`).
        #[arg(long, value_name = "SPEC")]
        nodes: Option<NodeSpec>,
        /// Print one JSON object per rate instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run an ONNX model: inputs from TensorProto files or seeded random, outputs to files.
    Infer {
        /// The `.onnx` model.
        model: PathBuf,
        /// An input as NAME=FILE.pb (repeatable); inputs not given are seeded random.
        #[arg(long = "input", value_name = "NAME=FILE.pb")]
        inputs: Vec<String>,
        /// Write every output to DIR/<output name>.pb.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Batch size of generated inputs (the first unknown or unit dimension).
        #[arg(long, default_value_t = 1, value_parser = parse_batch)]
        batch: usize,
        /// Which nodes (see `devices --help`).
        #[arg(long, value_name = "SPEC")]
        nodes: Option<NodeSpec>,
        /// Timed runs, after a warm-up (at least 3 runs and 0.5 s).
        #[arg(long, default_value_t = 5, value_parser = parse_reps)]
        reps: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// After the timed runs, profile `--reps` more runs on the node the median run used
        /// first (a channel split on the nodes it used, with even shares) and print the time
        /// per operator and per operator and shape (each step's median over those runs).
        #[arg(long)]
        profile: bool,
        /// Before each timed run, print `ready` and wait for a line on standard input: empty,
        /// or the number of untimed runs to make first; after the timed run, print `run MS`
        /// (its milliseconds). For benchmark scripts that alternate engines run by run.
        #[arg(long)]
        paced: bool,
    },
    /// Run a job file: ONNX models and matmul/conv2d benchmarks on the nodes, one JSON report.
    Run {
        /// The job file (TOML; paths in it are relative to its directory).
        job: PathBuf,
        /// Write the JSON report to FILE instead of the job's `report` (`-`: standard output).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Validate the job, bring up its nodes and load its models, then stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a seeded stream of jobs through the planner on a simulated mesh, per policy.
    Simulate {
        /// Mesh dimensions, e.g. `8x8` or `4x4x2`.
        #[arg(long, default_value = "8x8")]
        mesh: String,
        /// Wrap every dimension around (a torus).
        #[arg(long)]
        torus: bool,
        /// Jobs in the stream.
        #[arg(long, default_value_t = 10_000, value_parser = parse_jobs)]
        jobs: usize,
        /// Policies, comma-separated: drac, eft, always-on, round-robin, or `all`.
        #[arg(long, default_value = "all")]
        policy: String,
        /// Seed of the job stream, the failures and the noise.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Offered load, a fraction of what the mesh could absorb at top speed.
        #[arg(long)]
        load: Option<f64>,
        /// Node profiles interleaved over the mesh, e.g. `sim:1:accel,sim:1:lite`.
        #[arg(long, value_name = "SIM,...")]
        mix: Option<String>,
        /// Node crashes over the run.
        #[arg(long)]
        failures: Option<usize>,
        /// Print one JSON object per policy instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time kernels on the nodes, planned and split by the DRAC.
    Bench {
        #[command(subcommand)]
        kind: BenchCommand,
    },
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Matrix multiplies: square sizes M = N = K, and any MxNxK shapes.
    ///
    /// On a single node a case's runs follow one another as a model's steps do (one batch of
    /// the node's work): the time is the product's, not the hand-over of each call to the
    /// node's threads.
    Matmul {
        /// Square sizes, comma-separated (default 256,512,1024 when no --shapes are given).
        #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = parse_size)]
        sizes: Vec<usize>,
        /// Custom cases MxNxK, comma-separated; a trailing `t` stores B as [N, K] (a dense
        /// layer's weight), e.g. 1x4096x25088t.
        #[arg(long, value_name = "MxNxK[t],...", value_delimiter = ',')]
        shapes: Vec<MatmulCase>,
        #[command(flatten)]
        flags: BenchFlags,
    },
    /// 2-D convolutions (NCHW, f32 output).
    ///
    /// The weights stay the same over a case's runs, as an inference session's do: CPU nodes
    /// pack f32 weights into their kernels' panels once per case, not per run. On a single
    /// node the runs follow one another as a model's steps do (one batch of the node's work).
    Conv2d {
        /// A named set of cases (the default when no --shapes are given).
        #[arg(long, value_parser = ["resnet"])]
        preset: Option<String>,
        /// Custom cases N-C-H-K-R-stride-pad (H = W, R×R kernel), comma-separated.
        #[arg(long, value_name = "N-C-H-K-R-S-P,...", value_delimiter = ',')]
        shapes: Vec<ConvCase>,
        #[command(flatten)]
        flags: BenchFlags,
    },
    /// The cores' multiply-add rate: a register-only loop of fused multiply-adds in the
    /// kernels' instruction set, on each thread count at once (the ceiling of every kernel;
    /// a shared host moves it from minute to minute).
    Peak {
        /// Thread counts, comma-separated (default: 1 and every core).
        #[arg(long, value_name = "T,...", value_delimiter = ',', value_parser = parse_threads)]
        threads: Vec<usize>,
        /// Timed repetitions per thread count (50 ms each).
        #[arg(long, default_value_t = 5, value_parser = parse_reps)]
        reps: usize,
        /// Print one JSON object per thread count instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Flags every benchmark takes.
#[derive(Debug, Args)]
struct BenchFlags {
    /// Input element type: f32, f16 or bf16 (outputs are f32).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// Which nodes to split the work over (see `devices --help`).
    #[arg(long, value_name = "SPEC")]
    nodes: Option<NodeSpec>,
    /// Timed repetitions per case, after a warm-up (at least 3 runs and 0.5 s).
    #[arg(long, default_value_t = 5, value_parser = parse_reps)]
    reps: usize,
    /// Compare against a float64 reference and report max_rel_err.
    #[arg(long)]
    check: bool,
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses a positive integer.
fn parse_positive(what: &'static str, text: &str) -> Result<usize> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err(Error::parse(what, text, "must be at least 1")),
        Ok(v) => Ok(v),
        Err(_) => Err(Error::parse(what, text, "not a positive integer")),
    }
}

/// Parses one matrix size of `--sizes`.
fn parse_size(text: &str) -> Result<usize> {
    parse_positive("matrix size", text)
}

/// Parses one thread count of `bench peak --threads`.
fn parse_threads(text: &str) -> Result<usize> {
    parse_positive("thread count", text)
}

/// Parses `--batch`.
fn parse_batch(text: &str) -> Result<usize> {
    parse_positive("batch size", text)
}

/// Parses `--jobs`.
fn parse_jobs(text: &str) -> Result<usize> {
    parse_positive("job count", text)
}

/// Parses `--reps`.
fn parse_reps(text: &str) -> Result<usize> {
    parse_positive("repetition count", text)
}

fn main() -> ExitCode {
    // Activations are freed and allocated again every run: keep their memory in the process.
    accelmesh_kernels::buffer::retain_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs one parsed command line.
fn run(cli: Cli) -> Result<()> {
    let mut out = io::stdout().lock();
    match cli.command {
        None => {
            let nodes = NodeSpec::main_job().build()?;
            let drac = Drac::calibrated(&nodes, DracConfig::default())?;
            let report = demo::run_demo(&drac, demo::BATCH, 5)?;
            print::demo(&mut out, &nodes, &report, &drac.node_energy())?;
            // One image: no batch to share, so several CPU nodes split its layers.
            let one = demo::run_demo(&drac, 1, 9)?;
            print::demo_one_image(&mut out, &one)?;
            // The same cores as one node, for context: the mesh's CPU nodes share them.
            if nodes.len() > 1 {
                let whole = NodeSpec::parse("cpu")?.build()?;
                let whole_drac = Drac::calibrated(&whole, DracConfig::default())?;
                let s = demo::time_whole(&whole_drac, demo::BATCH, 5)?;
                print::demo_whole_cpu(&mut out, &report, s)?;
            }
            writeln!(
                out,
                "\nMore: `accelmesh --help` (devices, bench, infer, run, simulate, calibrate)."
            )?;
        }
        Some(Command::Devices { json, nodes }) => {
            let nodes = nodes.unwrap_or_default().build()?;
            for dev in nodes.devices() {
                print::device(&mut out, dev.info(), json)?;
            }
        }
        Some(Command::Calibrate { nodes, json }) => {
            let nodes = nodes.unwrap_or_default().build()?;
            let path = PerfModel::default_path();
            let model = PerfModel::load_or_calibrate(nodes.devices(), &path, true)?;
            let keys: Vec<String> = nodes
                .devices()
                .iter()
                .map(|d| PerfModel::node_key(d.info()))
                .collect();
            print::calibration(&mut out, &model, &keys, json)?;
            if !json {
                writeln!(out, "saved to {}", path.display())?;
            }
        }
        Some(Command::Infer {
            model,
            inputs,
            output_dir,
            batch,
            nodes,
            reps,
            json,
            profile,
            paced,
        }) => {
            let model = accelmesh::Model::load(&model)?;
            let session = model.session();
            let mut values = infer::random_inputs(session, batch)?;
            for spec in &inputs {
                let (name, file) = spec
                    .split_once('=')
                    .ok_or_else(|| Error::parse("input", spec.as_str(), "expected NAME=FILE.pb"))?;
                if !session.input_names().iter().any(|n| n == name) {
                    return Err(Error::parse(
                        "input",
                        spec.as_str(),
                        format!(
                            "the model has no input `{name}` (it has {:?})",
                            session.input_names()
                        ),
                    ));
                }
                let (_, value) = read_tensor_pb(Path::new(file))?;
                values.insert(name.to_string(), value);
            }
            let nodes = nodes.unwrap_or_default().build()?;
            let drac = Drac::calibrated(&nodes, DracConfig::default())?;
            let (outputs, report) = if paced {
                let mut run = 0;
                infer::infer_paced(
                    &model,
                    &drac,
                    &values,
                    reps,
                    || {
                        run += 1;
                        let mut stdout = io::stdout().lock();
                        writeln!(stdout, "ready")?;
                        stdout.flush()?;
                        let mut line = String::new();
                        if io::stdin().read_line(&mut line)? == 0 {
                            return Err(Error::parse(
                                "paced input",
                                "end of input",
                                format!("standard input closed before timed run {run} of {reps}"),
                            ));
                        }
                        let line = line.trim();
                        if line.is_empty() {
                            return Ok(0);
                        }
                        line.parse().map_err(|_| {
                            Error::parse(
                                "paced input",
                                line,
                                format!(
                                    "expected an empty line or a count of untimed runs before \
                                     timed run {run}"
                                ),
                            )
                        })
                    },
                    |seconds| {
                        let mut stdout = io::stdout().lock();
                        writeln!(stdout, "run {:.4}", seconds * 1e3)?;
                        stdout.flush()?;
                        Ok(())
                    },
                )?
            } else {
                infer::infer(&model, &drac, &values, reps)?
            };
            if let Some(dir) = &output_dir {
                infer::write_outputs(dir, session, &outputs)?;
            }
            print::inference(&mut out, &report, json)?;
            if profile {
                let used = report
                    .nodes
                    .iter()
                    .map(|id| nodes.devices().iter().find(|d| &d.info().id == id).cloned())
                    .collect::<Option<Vec<_>>>()
                    .filter(|used| !used.is_empty())
                    .ok_or_else(|| Error::spec(nodes.label(), "no node ran the model"))?;
                // A channel split is profiled as one (even shares over the nodes it used), any
                // other run on the first node it used.
                let (device, label): (Arc<dyn Device>, String) =
                    if report.strategy == Strategy::ChannelSplit.to_string() && used.len() > 1 {
                        let shares = vec![1.0; used.len()];
                        let label = format!("{} (channel split)", report.nodes.join("+"));
                        (Arc::new(ChannelSplit::new(used, shares)?), label)
                    } else {
                        let first = Arc::clone(&used[0]);
                        let label = first.info().id.clone();
                        (first, label)
                    };
                let runs = (0..reps)
                    .map(|_| {
                        let (_, run) = model.run_profiled_on(device.as_ref(), &values)?;
                        Ok(run)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let steps = accelmesh::onnx::exec::Profile::median(&runs)?;
                print::profile(&mut out, &label, &steps, json, reps)?;
            }
        }
        Some(Command::Run {
            job,
            report,
            dry_run,
        }) => {
            let job = accelmesh::job::Job::load(&job)?;
            if dry_run {
                accelmesh::job::check(&job)?;
                writeln!(
                    out,
                    "{}: {} workloads, valid",
                    job.path.display(),
                    job.workloads.len()
                )?;
            } else {
                let result = accelmesh::job::run(&job, &accelmesh::job::Progress::stderr())?;
                match report.or(job.report).filter(|p| p.as_os_str() != "-") {
                    Some(path) => {
                        result.write(&path)?;
                        writeln!(out, "report written to {}", path.display())?;
                    }
                    None => writeln!(out, "{}", result.to_json()?)?,
                }
            }
        }
        Some(Command::Simulate {
            mesh,
            torus,
            jobs,
            policy,
            seed,
            load,
            mix,
            failures,
            json,
        }) => {
            let policies: Vec<Policy> = if policy.trim().eq_ignore_ascii_case("all") {
                Policy::ALL.to_vec()
            } else {
                policy
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<Policy>>>()?
            };
            let mut cfg = SimConfig::new(MeshSpec::parse(&mesh, torus)?, jobs, Policy::Drac, seed);
            if let Some(load) = load {
                cfg.load = load;
            }
            if let Some(mix) = mix {
                cfg.mix = parse_mix(&mix)?;
            }
            if let Some(f) = failures {
                cfg.failures = f;
            }
            print::simulation_header(&mut out, json)?;
            for p in policies {
                let summary = run_simulation(&cfg.with_policy(p))?;
                print::simulation(&mut out, &summary, json)?;
            }
        }
        Some(Command::Bench { kind }) => match kind {
            BenchCommand::Matmul {
                mut sizes,
                shapes,
                flags,
            } => {
                if sizes.is_empty() && shapes.is_empty() {
                    sizes = vec![256, 512, 1024];
                }
                let cases: Vec<MatmulCase> = sizes
                    .into_iter()
                    .map(MatmulCase::square)
                    .chain(shapes)
                    .collect();
                bench_cases(&mut out, &flags, &cases, bench::run_matmul)?;
            }
            BenchCommand::Conv2d {
                preset,
                shapes,
                flags,
            } => {
                let mut cases = match (&preset, shapes.is_empty()) {
                    (Some(name), _) => ConvCase::preset(name)?,
                    (None, true) => ConvCase::resnet(),
                    (None, false) => Vec::new(),
                };
                cases.extend(shapes);
                bench_cases(&mut out, &flags, &cases, bench::run_conv2d)?;
            }
            BenchCommand::Peak {
                mut threads,
                reps,
                json,
            } => {
                if threads.is_empty() {
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    threads = if cores > 1 { vec![1, cores] } else { vec![1] };
                }
                print::peak_header(&mut out, json)?;
                for t in threads {
                    print::peak(&mut out, &bench::peak::run_peak(t, reps)?, json)?;
                }
            }
        },
    }
    out.flush()?;
    Ok(())
}

/// Runs each of `cases` with `run` on the nodes `flags` names, one table row (or JSON line)
/// per case.
fn bench_cases<C: ToString>(
    out: &mut impl Write,
    flags: &BenchFlags,
    cases: &[C],
    run: fn(&NodeSet, &Drac, &C, DType, usize, bool) -> Result<bench::CaseResult>,
) -> Result<()> {
    let nodes = build(flags)?;
    let drac = Drac::calibrated(&nodes, DracConfig::default())?;
    let labels: Vec<String> = cases.iter().map(ToString::to_string).collect();
    let table = print::Table::new(&labels, nodes.label(), flags.check, flags.json);
    table.header(out)?;
    for case in cases {
        let result = run(&nodes, &drac, case, flags.dtype, flags.reps, flags.check)?;
        table.row(out, &result)?;
    }
    Ok(())
}

/// Brings up the nodes of `--nodes` (default: every local device).
fn build(flags: &BenchFlags) -> Result<NodeSet> {
    flags.nodes.clone().unwrap_or_default().build()
}
