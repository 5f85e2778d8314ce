//! Text and JSON-lines output of the command line.

use std::io::Write;

use accelmesh::bench::CaseResult;
use accelmesh::bench::peak::PeakResult;
use accelmesh::drac::perf_model::PerfModel;
use accelmesh::drac::sim::SimSummary;
use accelmesh::model::demo::DemoReport;
use accelmesh::onnx::exec::Profile;
use accelmesh::onnx::infer::InferReport;
use accelmesh::{DeviceInfo, Error, NodeSet, Result};

/// Writes one node: a line of text, or one JSON object.
pub fn device(out: &mut impl Write, info: &DeviceInfo, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", to_json(info)?)?;
        return Ok(());
    }
    let dtypes: Vec<&str> = info.dtypes.iter().map(|d| d.name()).collect();
    let threads = info
        .threads
        .map_or_else(String::new, |t| format!("  threads={t}"));
    let driver = info
        .driver
        .as_ref()
        .map_or_else(String::new, |d| format!("  driver={d}"));
    writeln!(
        out,
        "{:<6} {:<4} {}  backend={}{threads}{driver}  memory={:.1} GiB  dtypes={}",
        info.id,
        info.kind,
        info.name,
        info.backend,
        info.memory_bytes as f64 / (1u64 << 30) as f64,
        dtypes.join(",")
    )?;
    Ok(())
}

/// Writes the calibrated rates of the nodes with `keys`: a table, or one JSON object per rate.
pub fn calibration(
    out: &mut impl Write,
    model: &PerfModel,
    keys: &[String],
    json: bool,
) -> Result<()> {
    if !json {
        writeln!(
            out,
            "{:<48}  {:<7}  {:<5}  {:>10}  {:>11}",
            "node", "op", "dtype", "GFLOP/s", "overhead_us"
        )?;
    }
    for (key, class, dtype, rate, correction) in model.entries() {
        if !keys.contains(&key) {
            continue;
        }
        if json {
            let line = serde_json::json!({
                "node": key,
                "op": class.name(),
                "dtype": dtype,
                "gflops": rate.gflops,
                "overhead_s": rate.overhead_s,
                "correction": correction,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{:<48}  {:<7}  {:<5}  {:>10.1}  {:>11.1}",
                key,
                class.name(),
                dtype,
                rate.gflops,
                rate.overhead_s * 1e6
            )?;
        }
    }
    Ok(())
}

/// Writes an inference report: one line of text, or one JSON object.
pub fn inference(out: &mut impl Write, r: &InferReport, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", to_json(r)?)?;
    } else {
        writeln!(
            out,
            "latency {:.3} ms (median of {})  throughput {:.1}/s (batch {})  nodes {}  energy {:.3} J",
            r.latency_ms,
            r.reps,
            r.throughput_per_s,
            r.batch,
            r.nodes.join(","),
            r.energy_j
        )?;
    }
    Ok(())
}

/// Writes the header of the simulation table (nothing in JSON mode).
pub fn simulation_header(out: &mut impl Write, json: bool) -> Result<()> {
    if !json {
        writeln!(
            out,
            "{:<11}  {:>10}  {:>10}  {:>9}  {:>11}  {:>8}  {:>9}  {:>11}",
            "policy",
            "makespan_s",
            "energy_j",
            "deadlines",
            "utilisation",
            "replans",
            "nodes/job",
            "decisions/s"
        )?;
    }
    Ok(())
}

/// Writes one policy's simulation summary: a table row, or one JSON object (per-node
/// accounts left out).
pub fn simulation(out: &mut impl Write, s: &SimSummary, json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(s).map_err(|e| Error::Io(e.into()))?;
        if let Some(map) = value.as_object_mut() {
            map.remove("node_stats");
        }
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "{:<11}  {:>10.3}  {:>10.1}  {:>8.1}%  {:>10.1}%  {:>8}  {:>9.2}  {:>11.0}",
            s.policy.to_string(),
            s.makespan_s,
            s.energy_j,
            s.deadline_hit_rate * 100.0,
            s.mean_utilisation * 100.0,
            s.replanned_parts,
            s.mean_nodes_per_job,
            s.decisions_per_s
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Writes the header of the peak table (nothing in JSON mode).
pub fn peak_header(out: &mut impl Write, json: bool) -> Result<()> {
    if !json {
        writeln!(
            out,
            "{:<7}  {:>7}  {:>10}  {:>12}  {:>13}  {:>13}",
            "isa", "threads", "GFLOP/s", "per thread", "slowest thread", "fastest thread"
        )?;
    }
    Ok(())
}

/// Writes one thread count's multiply-add rate: a table row, or one JSON object.
pub fn peak(out: &mut impl Write, r: &PeakResult, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", to_json(r)?)?;
    } else {
        writeln!(
            out,
            "{:<7}  {:>7}  {:>10.1}  {:>12.1}  {:>14.1}  {:>14.1}",
            r.isa, r.threads, r.gflops, r.gflops_per_thread, r.thread_min, r.thread_max
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Serialises a record as one line of JSON.
fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Io(e.into()))
}

/// The benchmark table (or JSON lines), with column widths fixed before the first row.
pub struct Table {
    shape_width: usize,
    nodes_width: usize,
    check: bool,
    json: bool,
}

impl Table {
    /// A table for cases labelled `shapes`, run on `nodes`.
    pub fn new(shapes: &[String], nodes: &str, check: bool, json: bool) -> Table {
        let longest = shapes.iter().map(String::len).max().unwrap_or(0);
        Table {
            shape_width: longest.max("shape".len()),
            nodes_width: nodes.len().max("nodes".len()),
            check,
            json,
        }
    }

    /// Writes the header line (nothing in JSON mode).
    pub fn header(&self, out: &mut impl Write) -> Result<()> {
        if self.json {
            return Ok(());
        }
        let mut line = format!(
            "{:<6}  {:<sw$}  {:<5}  {:<nw$}  {:>7}  {:<7}  {:>4}  {:>10}  {:>9}",
            "op",
            "shape",
            "dtype",
            "nodes",
            "threads",
            "isa",
            "reps",
            "ms_median",
            "GFLOP/s",
            sw = self.shape_width,
            nw = self.nodes_width,
        );
        if self.check {
            line.push_str(&format!("  {:>11}", "max_rel_err"));
        }
        writeln!(out, "{line}")?;
        Ok(())
    }

    /// Writes one case and flushes, so long runs show progress.
    pub fn row(&self, out: &mut impl Write, r: &CaseResult) -> Result<()> {
        if self.json {
            writeln!(out, "{}", to_json(r)?)?;
        } else {
            let mut line = format!(
                "{:<6}  {:<sw$}  {:<5}  {:<nw$}  {:>7}  {:<7}  {:>4}  {:>10.3}  {:>9.1}",
                r.op,
                r.shape,
                r.dtype,
                r.nodes,
                r.threads,
                r.isa,
                r.reps,
                r.ms_median,
                r.gflops,
                sw = self.shape_width,
                nw = self.nodes_width,
            );
            if let Some(err) = r.max_rel_err {
                line.push_str(&format!("  {err:>11.2e}"));
            }
            if let (Some(ms), Some(rate)) = (r.kernel_ms_median, r.kernel_gflops) {
                line.push_str(&format!("  kernel {ms:.3} ms = {rate:.1} GFLOP/s"));
            }
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Writes the default main job's report: the mesh, the placement of the median run, per-node
/// time and energy, and the comparison with the best single node.
pub fn demo(
    out: &mut impl Write,
    nodes: &NodeSet,
    r: &DemoReport,
    ledger: &[(String, f64)],
) -> Result<()> {
    writeln!(
        out,
        "accelmesh main job: a ResNet-style network (seeded weights, {:.1} MFLOP per image), batch {}, median of {} runs\n",
        r.flops_per_sample as f64 / 1e6,
        r.batch,
        r.reps
    )?;
    writeln!(out, "nodes ({}):", nodes.label())?;
    for dev in nodes.devices() {
        let info = dev.info();
        let what = match (info.threads, &info.backend) {
            (Some(t), _) => format!("{t} thread(s)"),
            (None, b) => b.clone(),
        };
        writeln!(
            out,
            "  {:<6} {:<4} {:<40} {what}",
            info.id,
            info.kind.name(),
            info.name
        )?;
    }
    writeln!(
        out,
        "\nplacement ({}, predicted {:.2} ms):",
        r.mesh.strategy,
        r.mesh.predicted_s * 1e3
    )?;
    writeln!(
        out,
        "  {:<6} {:>8} {:>14} {:>12}",
        "node", "images", "predicted ms", "measured ms"
    )?;
    for p in &r.mesh.parts {
        writeln!(
            out,
            "  {:<6} {:>3}..{:<4} {:>14.2} {:>12.2}",
            p.node,
            p.first_sample,
            p.first_sample + p.samples,
            p.predicted_s * 1e3,
            p.elapsed_s * 1e3
        )?;
    }
    writeln!(out, "\nper node (median mesh run):")?;
    writeln!(out, "  {:<6} {:>10} {:>10}", "node", "busy ms", "energy J")?;
    for n in &r.mesh.nodes {
        writeln!(
            out,
            "  {:<6} {:>10.2} {:>10.4}",
            n.id,
            n.compute_s * 1e3,
            n.energy_j
        )?;
    }
    writeln!(
        out,
        "\nmesh:        {:>8.2} ms  {:>7.1} images/s  {:.4} J  on {}",
        r.mesh_s * 1e3,
        r.batch as f64 / r.mesh_s,
        r.mesh.energy_j,
        r.mesh.nodes_used.join(",")
    )?;
    writeln!(
        out,
        "best single: {:>8.2} ms  {:>7.1} images/s  {:.4} J  on {}",
        r.single_s * 1e3,
        r.batch as f64 / r.single_s,
        r.single.energy_j,
        r.single.nodes_used.join(",")
    )?;
    writeln!(
        out,
        "speed-up {:.2}x over the best single node; outputs agree to {:.1e}",
        r.speedup(),
        r.max_abs_diff
    )?;
    let total: f64 = ledger.iter().map(|(_, j)| j).sum();
    writeln!(
        out,
        "energy ledger of the whole job: {total:.3} J (modelled)"
    )?;
    Ok(())
}

/// Writes a per-step profile (the median of `runs` runs): time per operator, then the ten
/// slowest operator and shape groups (JSON: one object with both lists, the second whole).
pub fn profile(
    out: &mut impl Write,
    node: &str,
    p: &Profile,
    json: bool,
    runs: usize,
) -> Result<()> {
    let rows = |groups: Vec<(String, f64, usize)>| -> Vec<serde_json::Value> {
        groups
            .into_iter()
            .map(|(label, s, n)| serde_json::json!({"op": label, "ms": s * 1e3, "steps": n}))
            .collect()
    };
    if json {
        let v = serde_json::json!({
            "profile_node": node,
            "profile_runs": runs,
            "total_ms": p.total_seconds * 1e3,
            "by_op": rows(p.by_op()),
            "by_op_and_shape": rows(p.by_op_and_shape()),
            "steps": p.steps.iter().map(|s| serde_json::json!({
                "node": s.node, "op": s.op, "ms": s.seconds * 1e3,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", to_json(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "profile on {node} (median of {runs} runs per step): {:.3} ms, {:.3} ms in {} steps",
        p.total_seconds * 1e3,
        p.step_seconds() * 1e3,
        p.steps.len()
    )?;
    writeln!(out, "  {:<24} {:>10} {:>6} {:>6}", "op", "ms", "steps", "%")?;
    let total = p.step_seconds().max(f64::MIN_POSITIVE);
    for (label, s, n) in p.by_op() {
        writeln!(
            out,
            "  {label:<24} {:>10.3} {n:>6} {:>5.1}%",
            s * 1e3,
            100.0 * s / total
        )?;
    }
    writeln!(out, "  slowest op and input shapes:")?;
    for (label, s, n) in p.by_op_and_shape().into_iter().take(10) {
        writeln!(out, "  {:>10.3} ms {n:>4}x  {label}", s * 1e3)?;
    }
    Ok(())
}

/// Writes the comparison with the whole CPU as one node (the mesh's CPU nodes share its cores).
pub fn demo_whole_cpu(out: &mut impl Write, r: &DemoReport, whole_s: f64) -> Result<()> {
    writeln!(
        out,
        "for context, all CPU cores as one node: {:.2} ms ({:.1} images/s); the mesh runs at {:.2}x of it",
        whole_s * 1e3,
        r.batch as f64 / whole_s,
        whole_s / r.mesh_s
    )?;
    Ok(())
}

/// The default main job's one-image line: how the mesh placed a single image (a channel
/// split on several CPU nodes) against the best single node.
pub fn demo_one_image(out: &mut impl Write, r: &DemoReport) -> Result<()> {
    writeln!(
        out,
        "one image:      {:.2} ms {} on {} against {:.2} ms on {} ({:.2}x); outputs agree to {:.1e}",
        r.mesh_s * 1e3,
        r.mesh.strategy,
        r.mesh.nodes_used.join(","),
        r.single_s * 1e3,
        r.single.nodes_used.join(","),
        r.speedup(),
        r.max_abs_diff
    )?;
    Ok(())
}
