//! Runs one ONNX model with tract and prints one JSON line.
//!
//! Usage: tract-runner MODEL [--batch N] [--reps R] [--threads T]
//!
//! The first input's first dimension is set to N (the other dimensions are taken from the
//! model), the model is optimised for that concrete shape, run once as warm-up and then R timed
//! times. Printed: `{"engine":"tract","latency_ms":<median>,"throughput_per_s":..,...}`, or
//! `{"engine":"tract","error":"...","stage":"..."}` (exit status 1) when the model cannot be
//! loaded, typed, optimised or run.

use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

struct Args {
    model: String,
    batch: usize,
    reps: usize,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut model = None;
    let (mut batch, mut reps, mut threads) = (1usize, 5usize, 1usize);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&v: &usize| v > 0)
                .ok_or_else(|| format!("{name} needs a positive integer"))
        };
        match a.as_str() {
            "--batch" => batch = num("--batch")?,
            "--reps" => reps = num("--reps")?,
            "--threads" => threads = num("--threads")?,
            "-h" | "--help" => {
                return Err(
                    "usage: tract-runner MODEL [--batch N] [--reps R] [--threads T]".into(),
                );
            }
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => model = Some(a),
        }
    }
    let model = model.ok_or("missing MODEL")?;
    Ok(Args {
        model,
        batch,
        reps,
        threads,
    })
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fail(args: &Args, stage: &str, err: &dyn std::fmt::Debug) -> ! {
    // `{:?}` of a tract error prints its whole context chain; keep it to one line.
    let msg = format!("{err:?}").replace('\n', " | ");
    println!(
        "{{\"engine\":\"tract\",\"model\":{},\"batch\":{},\"threads\":{},\"stage\":{},\"error\":{}}}",
        json_str(&args.model),
        args.batch,
        args.threads,
        json_str(stage),
        json_str(&msg)
    );
    std::process::exit(1)
}

/// Deterministic pseudo-random input in [0, 1).
fn input_tensor(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    tract_ndarray::ArrayD::from_shape_vec(shape, data)
        .unwrap()
        .into()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    };
    if args.threads > 1 {
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::multithread(args.threads),
        );
    }

    let t0 = Instant::now();
    let model = onnx()
        .model_for_path(&args.model)
        .unwrap_or_else(|e| fail(&args, "load", &e));
    let fact = model
        .input_fact(0)
        .unwrap_or_else(|e| fail(&args, "input", &e))
        .clone();
    let dims: Option<Vec<usize>> = fact
        .shape
        .concretize()
        .map(|d| d.iter().map(|x| x.to_usize().unwrap_or(1)).collect());
    let mut shape = dims.unwrap_or_else(|| fail(&args, "input", &"input shape is not fully known"));
    if shape.is_empty() {
        fail(&args, "input", &"scalar input");
    }
    shape[0] = args.batch;
    let mut model = model
        .with_input_fact(0, f32::fact(&shape).into())
        .unwrap_or_else(|e| fail(&args, "input", &e));
    // Declared output shapes carry the model's own batch: let tract infer them instead.
    let outputs = model.output_outlets().map(|o| o.len()).unwrap_or(0);
    for ix in 0..outputs {
        model
            .set_output_fact(ix, InferenceFact::default())
            .unwrap_or_else(|e| fail(&args, "input", &e));
    }
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let model = model
        .into_optimized()
        .unwrap_or_else(|e| fail(&args, "optimize", &e));
    let plan = model
        .into_runnable()
        .unwrap_or_else(|e| fail(&args, "optimize", &e));
    let optimize_ms = t1.elapsed().as_secs_f64() * 1e3;

    let input: TValue = input_tensor(&shape).into();
    plan.run(tvec!(input.clone()))
        .unwrap_or_else(|e| fail(&args, "run", &e));
    let mut times = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let t = Instant::now();
        let out = plan
            .run(tvec!(input.clone()))
            .unwrap_or_else(|e| fail(&args, "run", &e));
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    };
    let shape_s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    println!(
        "{{\"engine\":\"tract\",\"model\":{},\"batch\":{},\"shape\":[{}],\"threads\":{},\"reps\":{},\
         \"latency_ms\":{:.4},\"min_ms\":{:.4},\"throughput_per_s\":{:.3},\"load_ms\":{:.1},\
         \"optimize_ms\":{:.1}}}",
        json_str(&args.model),
        args.batch,
        shape_s.join(","),
        args.threads,
        n,
        median,
        times[0],
        args.batch as f64 * 1e3 / median,
        load_ms,
        optimize_ms
    );
}
