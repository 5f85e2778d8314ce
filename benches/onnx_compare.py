"""ONNX inference side by side: accelmesh vs onnxruntime (CPU provider) vs tract, in one run.

Run through benches/onnx_compare.sh, which prepares the venv, the accelmesh release binary and
the tract runner (benches/tract-runner). The models are the "light" models shipped in the onnx
package's test data (`onnx/backend/test/data/light/light_<name>.onnx`: the real architectures
with constant-filled weights), all with a 1x3x224x224 input.

Every measurement runs in its own child process (accelmesh's `infer` command, a child python
that loads onnxruntime, the tract runner), one after the other, so the engines never share the
cores, and the child's peak RSS is read from wait4() on that child alone. Each child does one
warm-up run and then `--reps` timed runs and reports the median. accelmesh and onnxruntime
run side by side in `--paced` mode: both children load and warm up, then the parent lets them
take turns (the order reversed every other turn, 0.2 s apart so that idle threads stop
spinning), each turn about 100 ms of untimed runs and then the timed one (`--lead-in-ms`:
both engines are timed as back-to-back runs find them; 0 times the first run after the
pause), and the ratio is the median of the per-pair ratios. The machine's
speed moves between phases of seconds; one measurement per engine could land them in
different phases, whereas each pair shares one. tract, far behind, runs on its own. Ratios
are peer time / accelmesh time: above 1.0 means accelmesh is faster.

Batch 8: the light models fix the batch at 1 (input, output, and the shape constant of the
Reshape before the classifier), so every engine gets a copy of the model whose batch dimension
is symbolic and whose Reshape shape constants copy the batch from their input (a leading 1
becomes 0), and runs one batch-8 inference. (On the fixed-batch model, accelmesh's `--batch 8`
would run 8 chunks of 1.) Without the copy, accelmesh runs the original model that way.
"""

import argparse
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine_peak  # noqa: E402

LIGHT_MODELS = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]
QUICK_MODELS = ["resnet50", "squeezenet", "shufflenet"]
# Batch-1 latency targets against onnxruntime (accelmesh at least as fast).
LATENCY_TARGETS = ["resnet50", "vgg19", "inception_v1"]
MEMORY_TARGET = 1.5  # accelmesh peak RSS / onnxruntime's on ResNet-50, batch 1
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Child process: onnxruntime worker.


def ort_worker(args):
    """Loads onnxruntime, runs the model and prints one JSON line (the `--ort-worker` mode)."""
    out = {"engine": "onnxruntime", "model": args.ort_worker, "batch": args.batch}
    try:
        import numpy as np
        import onnxruntime as ort

        out["version"] = ort.__version__
        if args.baseline:
            out["baseline"] = True
            print(json.dumps(out), flush=True)
            return
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # graph_optimization_level left at its default (ORT_ENABLE_ALL).
        t0 = time.perf_counter()
        session = ort.InferenceSession(args.ort_worker, options,
                                       providers=["CPUExecutionProvider"])
        out["load_ms"] = (time.perf_counter() - t0) * 1e3
        inp = session.get_inputs()[0]
        shape = [args.batch if i == 0 else d for i, d in enumerate(inp.shape)]
        if not all(isinstance(d, int) for d in shape):
            raise ValueError(f"input {inp.name} has an unknown dimension: {inp.shape}")
        x = np.random.default_rng(7).uniform(0, 1, shape).astype(np.float32)
        feeds = {inp.name: x}
        session.run(None, feeds)
        times = []
        for i in range(args.reps):
            if args.paced:
                print("ready", flush=True)
                line = sys.stdin.readline()
                if not line:
                    raise EOFError(f"standard input closed before timed run {i + 1}")
                for _ in range(int(line.strip() or 0)):
                    session.run(None, feeds)
            t = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - t) * 1e3)
            if args.paced:
                print(f"run {times[-1]:.4f}", flush=True)
        ms = statistics.median(times)
        out.update(shape=shape, threads=args.threads, reps=args.reps, latency_ms=ms,
                   min_ms=min(times), throughput_per_s=args.batch * 1e3 / ms)
    except Exception as e:  # noqa: BLE001 - any failure becomes the error cell
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------
# Parent: running children.


# A forked child's ru_maxrss starts at its parent's resident size (Linux keeps the high-water mark
# of the image it replaces at exec), and this script's own process holds onnx and onnxruntime.
# So each child is started by a small launcher (python without site-packages, a few MiB), which
# posix_spawns the command, waits on it and writes that child's ru_maxrss (KiB) to a file.
LAUNCHER = (
    "import os, sys\n"
    "pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) & 255)\n"
)


def run_child(cmd, timeout):
    """Runs `cmd` through the launcher and returns (returncode, stdout, stderr, peak RSS of
    the command alone in bytes). stderr goes to a file, so a full pipe cannot stall the child."""
    with tempfile.TemporaryFile(mode="w+") as err, \
            tempfile.NamedTemporaryFile(mode="r", suffix=".rss") as rss_file:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, rss_file.name, *cmd],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            stdout, _ = proc.communicate()
        finally:
            timer.cancel()
        err.seek(0)
        stderr = err.read()
        rss = rss_bytes(rss_file)
    return proc.returncode, stdout, stderr, rss


def rss_bytes(rss_file):
    """The peak RSS in bytes that the launcher wrote (KiB) to `rss_file`, 0 if it wrote none."""
    text = rss_file.read().strip()
    return int(text) * 1024 if text.isdigit() else 0


def last_json(stdout):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


def stderr_reason(stderr):
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and "XDG_RUNTIME_DIR" not in ln]
    return lines[-1] if lines else ""


def measure(engine, cmd, timeout):
    """Runs one measurement child; returns its JSON result with `rss` (bytes) and, when the
    child failed, `error`."""
    start = time.perf_counter()
    code, stdout, stderr, rss = run_child(cmd, timeout)
    res = child_result(engine, stdout, code, stderr, rss, time.perf_counter() - start, timeout)
    time.sleep(0.5)  # let the child's cores go quiet before the next one starts
    return res


def child_result(engine, stdout, code, stderr, rss, wall, timeout):
    """A measurement child's JSON result with `engine`, `rss` (bytes) and `wall_s`, and, when
    it failed, `error`: its own, a time-out, or the last line of its stderr."""
    res = last_json(stdout) or {}
    res["rss"] = rss
    res["wall_s"] = wall
    if code != 0 or "latency_ms" not in res:
        if "error" not in res:
            if code != 0 and wall >= timeout:
                res["error"] = f"timed out after {timeout:.0f} s"
            else:
                res["error"] = stderr_reason(stderr) or f"exit status {code}"
        if "stage" in res:
            res["error"] = f"{res['stage']}: {res['error']}"
    res["engine"] = engine
    return res


def measure_paced(engines, reps, timeout, lead_in_ms=100.0):
    """Runs each engine of `engines` ({name: cmd}, each asked for `reps + 1` runs) as one
    child in `--paced` mode and alternates their turns one by one (the order reversed every
    other turn), so that each run of one engine meets the same phase of the machine as the
    other's run beside it. A turn is untimed runs for about `lead_in_ms` (at least one; their
    count from the engine's previous run) and then the timed one: after the pause between
    turns an engine's threads may take a while to be back at work (unpinned rayon workers
    shared one core for 30-60 ms here), and the timed run is to measure the engine at work;
    `lead_in_ms` 0 measures the first run after the pause instead. One first run per engine
    sets the count and is not kept. Returns {name: result} as `measure` does, with `runs_ms` (each
    timed run, in order) and `latency_ms` their median."""
    names = list(engines)
    children = {}
    for name in names:
        err = tempfile.TemporaryFile(mode="w+")
        rss = tempfile.NamedTemporaryFile(mode="r", suffix=".rss")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, rss.name, *engines[name], "--paced"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            start_new_session=True)
        children[name] = (proc, err, rss)
    start = time.perf_counter()
    timer = threading.Timer(timeout, lambda: [os.killpg(p.pid, signal.SIGKILL)
                                              for p, _, _ in children.values()
                                              if p.poll() is None])
    timer.start()
    runs = {name: [] for name in names}
    lost = set()
    try:
        # Both children loaded and warmed up before the first turn.
        for name in names:
            line = children[name][0].stdout.readline()
            while line and line.strip() != "ready":
                line = children[name][0].stdout.readline()
            if not line:
                lost.add(name)
        last_ms = {}
        for i in range(-1, reps):
            for name in (names if i % 2 == 0 else names[::-1]):
                if name in lost:
                    continue
                proc = children[name][0]
                lead_in = 0 if i < 0 or lead_in_ms <= 0 else min(
                    max(1, math.ceil(lead_in_ms / max(last_ms[name], 0.01))), 1000)
                try:
                    proc.stdin.write(f"{lead_in}\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    while line and not line.startswith("run "):
                        line = proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if not line:
                    lost.add(name)
                    continue
                last_ms[name] = float(line.split()[1])
                if i >= 0:
                    runs[name].append(last_ms[name])
                # Let the engine's idle threads stop spinning before the other one runs.
                time.sleep(0.2)
        results = {}
        for name in names:
            proc, err, rss = children[name]
            try:
                proc.stdin.close()
            except OSError:
                pass
            stdout = proc.stdout.read()
            code = proc.wait()
            err.seek(0)
            res = child_result(name, stdout, code, err.read(), rss_bytes(rss),
                               time.perf_counter() - start, timeout)
            res["runs_ms"] = runs[name]
            if "latency_ms" in res and runs[name]:
                res["latency_ms"] = statistics.median(runs[name])
            results[name] = res
    finally:
        timer.cancel()
        for proc, err, rss in children.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            err.close()
            rss.close()
    time.sleep(0.5)
    return results


def paired_ratio(peer, ours):
    """The median over paired runs of peer ms / accelmesh ms, or None without pairs."""
    a, p = ours.get("runs_ms") or [], peer.get("runs_ms") or []
    if "latency_ms" not in ours or "latency_ms" not in peer or not a or len(a) != len(p):
        return None
    return statistics.median(pm / am for am, pm in zip(a, p))


def accelmesh_cmd(args, model, batch, reps):
    return [args.bin, "infer", model, "--nodes", args.nodes, "--reps", str(reps),
            "--batch", str(batch), "--json"]


def ort_cmd(args, model, batch, reps):
    return [sys.executable, os.path.abspath(__file__), "--ort-worker", model, "--batch",
            str(batch), "--reps", str(reps), "--threads", str(args.threads)]


def tract_cmd(args, model, batch, reps):
    return [args.tract_bin, model, "--batch", str(batch), "--reps", str(reps), "--threads",
            str(args.tract_threads)]


# --------------------------------------------------------------------------------------------
# Models.


def light_dir():
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def batched_copy(path, out_dir):
    """Writes a copy of `path` whose first input's batch dimension and outputs' first dimension
    are symbolic and whose Reshape shape constants copy the batch (a leading 1 becomes 0)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in inits)
    first.type.tensor_type.shape.dim[0].dim_param = "N"
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "N"
    del graph.value_info[:]
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            init = inits[node.input[1]]
            shape = numpy_helper.to_array(init).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                init.CopyFrom(numpy_helper.from_array(shape, init.name))
    dest = os.path.join(out_dir, "batchN_" + os.path.basename(path))
    onnx.save(model, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Report.


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        isa = []
        if flags:
            fl = set(flags.group(1).split())
            isa = [x for x in ("avx512f", "avx2", "fma", "f16c") if x in fl]
        return (name.group(1) if name else platform.processor()), isa
    except OSError:
        return platform.processor() or platform.machine(), []


def tract_version(lock):
    try:
        with open(lock) as f:
            m = re.search(r'name = "tract-onnx"\nversion = "([^"]+)"', f.read())
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def short_error(msg, width=60):
    msg = " ".join(str(msg).split())
    return "failed: " + (msg if len(msg) <= width else msg[: width - 3] + "...")


def ms_cell(res):
    return f"{res['latency_ms']:.2f}" if "latency_ms" in res else short_error(res["error"])


def ratio_cell(peer, ours):
    paired = paired_ratio(peer, ours)
    if paired is not None:
        return f"{paired:.2f}"
    if "latency_ms" in peer and "latency_ms" in ours:
        return f"{peer['latency_ms'] / ours['latency_ms']:.2f}"
    return "-"


def tput_cell(res):
    return f"{res['throughput_per_s']:.2f}" if "latency_ms" in res else short_error(res["error"])


def tput_ratio(ours, peer):
    paired = paired_ratio(peer, ours)  # same batch: peer ms / ours ms is ours/peer samples/s
    if paired is not None:
        return f"{paired:.2f}"
    if "latency_ms" in peer and "latency_ms" in ours:
        return f"{ours['throughput_per_s'] / peer['throughput_per_s']:.2f}"
    return "-"


def row(cells, widths):
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(row(header, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(row(r, widths))


def mib(res):
    return res["rss"] / MIB


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="target/release/accelmesh")
    parser.add_argument("--tract-bin", default="benches/tract-runner/target/release/tract-runner")
    parser.add_argument("--quick", action="store_true",
                        help="fewer reps; only " + ", ".join(QUICK_MODELS))
    parser.add_argument("--reps", type=int, help="timed runs per measurement (5; --quick: 3)")
    parser.add_argument("--models", help="comma-separated light model names")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--tract-threads", type=int, default=2)
    parser.add_argument("--nodes", default="cpu", help="accelmesh --nodes")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per measurement")
    parser.add_argument("--no-batch8", action="store_true", help="skip the ResNet-50 batch 8 row")
    machine_peak.add_cpus_option(parser)
    # Child mode.
    parser.add_argument("--ort-worker", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lead-in-ms", type=float, default=100.0,
                        help="untimed runs for about this long before each timed run of a turn "
                             "(100; 0: the timed run follows the 0.2 s pause, a cold start)")
    args = parser.parse_args()

    if args.ort_worker:
        args.reps = args.reps or 5
        ort_worker(args)
        return

    reps = args.reps or (3 if args.quick else 9)
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        models = QUICK_MODELS if args.quick else LIGHT_MODELS
    unknown = [m for m in models if m not in LIGHT_MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(LIGHT_MODELS)}")
    data = light_dir()

    import onnxruntime

    here = os.path.dirname(os.path.abspath(__file__))
    tv = tract_version(os.path.join(here, "tract-runner", "Cargo.lock"))
    cpu, isa = cpu_model()
    print(f"machine: {cpu} ({', '.join(isa)}), {os.cpu_count()} cores, {platform.system()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"onnxruntime {onnxruntime.__version__} (CPU provider, {args.threads} intra-op threads, "
          f"1 inter-op, sequential, default graph optimisations); tract-onnx {tv} "
          f"({args.tract_threads} threads: multi-threaded matmuls, the rest on one thread); "
          f"accelmesh --nodes {args.nodes}")
    print(f"models: {data}/light_<name>.onnx, input 1x3x224x224 f32; "
          f"accelmesh and onnxruntime: {reps} runs each after their warm-ups, alternating run by "
          f"run; tract: median of {reps} runs after 1 warm-up", flush=True)
    machine_peak.apply_cpus_option(args)
    print(f"at the start: {machine_peak.describe(machine_peak.measure(args.bin))}", flush=True)

    results = {}
    errors = []
    for name in models:
        path = os.path.join(data, f"light_{name}.onnx")
        res = measure_paced({"accelmesh": accelmesh_cmd(args, path, 1, reps + 1),
                             "onnxruntime": ort_cmd(args, path, 1, reps + 1)}, reps,
                            args.timeout, args.lead_in_ms)
        res["tract"] = measure("tract", tract_cmd(args, path, 1, reps), args.timeout)
        results[name] = res
        status = ", ".join(f"{e} {r['latency_ms']:.1f} ms" if "latency_ms" in r else f"{e} failed"
                           for e, r in res.items())
        print(f"  {name}: {status}", file=sys.stderr, flush=True)
        for engine, r in res.items():
            if "error" in r:
                errors.append(f"{name}, {engine}: {r['error']}")

    batch8 = None
    if "resnet50" in models and not args.no_batch8:
        path = os.path.join(data, "light_resnet50.onnx")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                copy = batched_copy(path, tmp)
            except Exception as e:  # noqa: BLE001
                copy = None
                copy_error = f"could not make the batch-N copy: {e}"
            b8_reps = max(2, reps // 2) if args.quick else reps
            if copy:
                batch8 = measure_paced({"accelmesh": accelmesh_cmd(args, copy, 8, b8_reps + 1),
                                        "onnxruntime": ort_cmd(args, copy, 8, b8_reps + 1)},
                                       b8_reps, args.timeout, args.lead_in_ms)
                batch8["tract"] = measure("tract", tract_cmd(args, copy, 8, b8_reps),
                                          args.timeout)
            else:
                batch8 = {"accelmesh": measure("accelmesh", accelmesh_cmd(args, path, 8, b8_reps),
                                               args.timeout)}
                for engine in ("onnxruntime", "tract"):
                    batch8[engine] = {"engine": engine, "error": copy_error}
        for engine, r in batch8.items():
            if "error" in r:
                errors.append(f"resnet50 batch 8, {engine}: {r['error']}")

    baseline = measure("onnxruntime", ort_cmd(args, "-", 1, 1) + ["--baseline"], 120)
    floor = measure("true", ["true"], 60)

    print(f"at the end: {machine_peak.describe(machine_peak.measure(args.bin))}")

    # ---- tables
    print()
    header = ["model", "accelmesh ms", "onnxruntime ms", "ort/accelmesh", "tract ms",
              "tract/accelmesh"]
    rows = []
    for name, res in results.items():
        a, o, t = res["accelmesh"], res["onnxruntime"], res["tract"]
        rows.append([name, ms_cell(a), ms_cell(o), ratio_cell(o, a), ms_cell(t),
                     ratio_cell(t, a)])
    if batch8:
        a, o, t = batch8["accelmesh"], batch8["onnxruntime"], batch8["tract"]
        rows.append(["resnet50 batch 8, samples/s", tput_cell(a), tput_cell(o), tput_ratio(a, o),
                     tput_cell(t), tput_ratio(a, t)])
    table(header, rows)
    print("\n(batch 1: ms per inference, median; ratios = peer ms / accelmesh ms. Batch 8 row: "
          "samples/s; ratios = accelmesh samples/s / peer samples/s. Above 1 = accelmesh faster.)")
    print("(accelmesh and onnxruntime ran alternately, run by run, each timed run after about "
          f"{args.lead_in_ms:g} ms of untimed runs of its engine: their ratio is the median of the "
          "per-pair ratios, the ms the medians of each engine's timed runs.)")

    print("\nPeak RSS of each measurement's process (MiB):\n")
    rows = [[name, f"{mib(r['accelmesh']):.0f}", f"{mib(r['onnxruntime']):.0f}",
             f"{mib(r['tract']):.0f}"] for name, r in results.items()]
    table(["model", "accelmesh", "onnxruntime", "tract"], rows)
    print(f"\n(onnxruntime's process is python + numpy + onnxruntime: "
          f"{mib(baseline):.0f} MiB before any model is loaded. Each figure is the process's own "
          f"peak, read with wait4 by a launcher whose {mib(floor):.0f} MiB is a floor for all.)")

    if "resnet50" in results:
        r = results["resnet50"]
        am, om, tm = mib(r["accelmesh"]), mib(r["onnxruntime"]), mib(r["tract"])
        print(f"\npeak memory, ResNet-50 batch 1: accelmesh {am:.0f} MiB, onnxruntime {om:.0f} MiB, "
              f"tract {tm:.0f} MiB; accelmesh/onnxruntime = {am / om:.2f}")

    # ---- targets
    print("\nTargets:")
    for name in LATENCY_TARGETS:
        if name in results:
            a, o = results[name]["accelmesh"], results[name]["onnxruntime"]
            if "latency_ms" in a and "latency_ms" in o:
                ratio = paired_ratio(o, a) or o["latency_ms"] / a["latency_ms"]
                verdict = "met" if ratio >= 1.0 else "NOT met"
                print(f"- {name} batch-1 latency >= 1.0x onnxruntime: {ratio:.2f}x, {verdict}")
            else:
                print(f"- {name} batch-1 latency >= 1.0x onnxruntime: not measured (failure)")
    both = [(n, r) for n, r in results.items()
            if "latency_ms" in r["accelmesh"] and "latency_ms" in r["tract"]]
    behind = [n for n, r in both if r["tract"]["latency_ms"] < r["accelmesh"]["latency_ms"]]
    if not both:
        verdict = "not measured (no model ran on both)"
    elif behind:
        verdict = f"NOT met (behind on {', '.join(behind)})"
    else:
        verdict = "met"
    print(f"- ahead of tract on every model both run ({len(both)}): {verdict}")
    if batch8:
        a, o = batch8["accelmesh"], batch8["onnxruntime"]
        if "latency_ms" in a and "latency_ms" in o:
            ratio = paired_ratio(o, a) or a["throughput_per_s"] / o["throughput_per_s"]
            verdict = "met" if ratio >= 1.0 else "NOT met"
            print(f"- resnet50 batch-8 throughput >= 1.0x onnxruntime: {ratio:.2f}x, {verdict}")
    if "resnet50" in results:
        r = results["resnet50"]
        ratio = r["accelmesh"]["rss"] / r["onnxruntime"]["rss"]
        verdict = "met" if ratio <= MEMORY_TARGET else "NOT met"
        print(f"- resnet50 peak memory <= {MEMORY_TARGET}x onnxruntime: {ratio:.2f}x, {verdict}")

    if errors:
        print("\nFailures:")
        for e in errors:
            print(f"- {e}")


if __name__ == "__main__":
    main()
