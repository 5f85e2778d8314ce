//! Runs the simulator for every policy on one seeded job stream and prints a comparison table,
//! plus the time to plan a 4096³ matmul on the mesh.
//!
//! `cargo run --release --example simulate -- [--mesh 8x8] [--jobs 10000] [--seed 1]
//! [--policy drac] [--load 0.35] [--hold-off 0.02] [--margin 0.8] [--failures 4] [--json]`

use accelmesh::drac::sim::{Policy, SimConfig, compare_policies, time_planning};
use accelmesh::mesh::MeshSpec;
use accelmesh::{DType, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = SimConfig::default();
    let mut policies = Policy::ALL.to_vec();
    let mut json = false;
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| accelmesh::Error::parse("argument", &args[i], "needs a value"))
        };
        let num = |v: String| {
            v.parse::<f64>()
                .map_err(|_| accelmesh::Error::parse("number", v.clone(), "not a number"))
        };
        match args[i].as_str() {
            "--json" => {
                json = true;
                i += 1;
                continue;
            }
            "--mesh" => cfg.mesh = MeshSpec::parse(&value()?, false)?,
            "--jobs" => cfg.jobs = num(value()?)? as usize,
            "--seed" => cfg.seed = num(value()?)? as u64,
            "--policy" => policies = vec![value()?.parse()?],
            "--load" => cfg.load = num(value()?)?,
            "--hold-off" => cfg.hold_off_s = num(value()?)?,
            "--margin" => cfg.deadline_margin = num(value()?)?,
            "--failures" => cfg.failures = num(value()?)? as usize,
            other => return Err(accelmesh::Error::parse("argument", other, "unknown")),
        }
        i += 2;
    }
    let runs = compare_policies(&cfg, &policies)?;
    if json {
        let mut v: Vec<serde_json::Value> = Vec::new();
        for r in &runs {
            let mut r = serde_json::to_value(r)
                .map_err(|e| accelmesh::Error::parse("json", "", e.to_string()))?;
            r.as_object_mut().map(|o| o.remove("node_stats"));
            v.push(r);
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} | {} jobs | seed {} | load {} | {} crashes",
            cfg.mesh, cfg.jobs, cfg.seed, cfg.load, cfg.failures
        );
        println!(
            "| policy      | makespan s | energy kJ | deadline hits | utilisation | occupied | off   | re-planned | nodes/job | mean lat ms | decisions/s | jobs/s wall |"
        );
        println!(
            "|-------------|------------|-----------|---------------|-------------|----------|-------|------------|-----------|-------------|-------------|-------------|"
        );
        for r in &runs {
            println!(
                "| {:<11} | {:>10.3} | {:>9.2} | {:>12.1}% | {:>10.1}% | {:>7.1}% | {:>4.0}% | {:>10} | {:>9.2} | {:>11.2} | {:>11.0} | {:>11.0} |",
                r.policy.name(),
                r.makespan_s,
                r.energy_j / 1e3,
                r.deadline_hit_rate * 100.0,
                r.mean_utilisation * 100.0,
                r.mean_occupancy * 100.0,
                r.mean_off_fraction * 100.0,
                r.replanned_parts,
                r.mean_nodes_per_job,
                r.mean_latency_s * 1e3,
                r.decisions_per_s,
                r.jobs_per_wall_s,
            );
        }
        for (dtype, deadline) in [
            (DType::F32, None),
            (DType::F16, None),
            (DType::F32, Some(0.02)),
            (DType::F32, Some(0.005)),
            (DType::F32, Some(0.001)),
        ] {
            let t = time_planning(&cfg, 4096, dtype, deadline, 201)?;
            let target = deadline.map_or("min latency".to_string(), |d| {
                format!("deadline {} ms", d * 1e3)
            });
            println!(
                "plan {} on {} nodes ({target}): median {:.1} µs, min {:.1} µs, {} nodes chosen",
                t.job,
                t.nodes,
                t.median_s * 1e6,
                t.min_s * 1e6,
                t.chosen
            );
        }
    }
    Ok(())
}
