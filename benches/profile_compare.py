"""accelmesh's and onnxruntime's time per operator and input shapes on one model, side by side.

Runs `accelmesh infer MODEL --profile --json` (each step's median over `--reps` profiled runs)
and then onnxruntime with its profiler (benches/ort_profile.py: each node's median over as
many runs), one after the other, and joins the two by input shapes: accelmesh's fused steps
(`Conv+Add+Relu`) and onnxruntime's fused nodes (`Conv` with a summed input) list the same
shapes. Rows are sorted by the time accelmesh loses (ours - ort); the ratio is ours / ort
(above 1: onnxruntime faster); `n` counts the steps behind a row on each side. Both engines
run on the same cores in the same minute, so the ratios hold on a noisy machine better than
times taken apart. With `--rounds R` the two engines take turns R times (accelmesh first in
even rounds, onnxruntime in odd ones), each time profiling `--reps` runs: each row then shows
the medians over the rounds, and its ratio is the median of the per-round ratios, so a slow
minute of the VM weighs on both engines alike instead of on whichever ran in it.

With `--batch` above 1 on a model that fixes its batch (the light models declare 1), both
engines profile one batch-B inference of the batch-N copy that onnx_compare.py makes (batch
dimension symbolic, Reshape shapes copying it), not B runs of one sample.

    benches/.venv/bin/python benches/profile_compare.py MODEL.onnx [--batch 8] [--reps 10]
        [--threads 2] [--nodes cpu] [--bin target/release/accelmesh] [--cpus 1] [--rounds 1]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine_peak  # noqa: E402
import onnx_compare  # noqa: E402
import ort_profile  # noqa: E402


def fixes_batch(path):
    """Whether the model's first graph input declares a fixed batch dimension."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value")


def ours(args):
    """{input shapes: (ms, steps, label)} from accelmesh's profile, and its step total."""
    cmd = [args.bin, "infer", args.model, "--profile", "--json", "--reps", str(args.reps),
           "--batch", str(args.batch), "--nodes", args.nodes]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    prof = next(json.loads(line) for line in out.splitlines()
                if line.startswith("{") and "by_op_and_shape" in line)
    rows = {}
    for r in prof["by_op_and_shape"]:
        op, _, shapes = r["op"].partition(" ")
        rows[shapes] = (r["ms"], r["steps"], op)
    return rows, sum(r["ms"] for r in prof["by_op"])


def theirs(args):
    """{input shapes: (ms, nodes, op)} from onnxruntime's profile, and its node total."""
    nodes = ort_profile.profile(args)
    rows = {}
    for ms, op, types in nodes.values():
        key = ort_profile.shapes(types)
        old = rows.get(key, (0.0, 0, op))
        rows[key] = (old[0] + ms, old[1] + 1, op)
    return rows, sum(ms for ms, _, _ in nodes.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--bin", default="target/release/accelmesh")
    parser.add_argument("--reps", type=int, default=10, help="profiled runs of each engine")
    parser.add_argument("--warmup", type=int, default=3, help="onnxruntime warm-up runs")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--nodes", default="cpu", help="accelmesh --nodes")
    parser.add_argument("--batch", type=int, default=1, help="batch of a symbolic first dim")
    parser.add_argument("--top", type=int, default=30, help="rows to print")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times the engines take turns (medians over the rounds)")
    machine_peak.add_cpus_option(parser)
    args = parser.parse_args()
    machine_peak.apply_cpus_option(args)

    with tempfile.TemporaryDirectory() as tmp:
        if args.batch > 1 and fixes_batch(args.model):
            args.model = onnx_compare.batched_copy(args.model, tmp)
            print(f"(the model fixes its batch: both engines run {os.path.basename(args.model)})")
        rounds = []
        for r in range(max(args.rounds, 1)):
            if r % 2 == 0:
                a, a_total = ours(args)
                o, o_total = theirs(args)
            else:
                o, o_total = theirs(args)
                a, a_total = ours(args)
            rounds.append((a, a_total, o, o_total))
    med = statistics.median
    a_total = med([r[1] for r in rounds])
    o_total = med([r[3] for r in rounds])
    print(f"{os.path.basename(args.model)}, batch {args.batch}: accelmesh {a_total:.2f} ms in "
          f"steps (--nodes {args.nodes}), onnxruntime {o_total:.2f} ms in nodes "
          f"({args.threads} threads); medians of {args.reps} profiled runs each"
          + (f", medians over {len(rounds)} alternating rounds (total ratio by round: "
             f"{med([r[1] / r[3] for r in rounds]):.3f})" if len(rounds) > 1 else ""))
    rows = []
    keys = set().union(*(set(r[0]) | set(r[2]) for r in rounds))
    for key in keys:
        ours_ms = [r[0].get(key, (0.0, 0, "-")) for r in rounds]
        ort_ms = [r[2].get(key, (0.0, 0, "-")) for r in rounds]
        ams, oms = med([x[0] for x in ours_ms]), med([x[0] for x in ort_ms])
        per_round = [x[0] / y[0] for x, y in zip(ours_ms, ort_ms) if x[0] > 0 and y[0] > 0]
        ratio = med(per_round) if per_round else None
        n = f"{ours_ms[0][1]}/{ort_ms[0][1]}"
        rows.append((ams - oms, ams, oms, ratio, n, ours_ms[0][2], ort_ms[0][2], key))
    rows.sort(key=lambda r: -r[0])
    print(f"  {'ours-ort':>9} {'ours ms':>9} {'ort ms':>9} {'ratio':>6} {'n':>5}  op (ours / ort) "
          "and input shapes")
    for lost, ams, oms, ratio, n, aop, oop, key in rows[: args.top]:
        ratio = f"{ratio:6.2f}" if ratio is not None else "     -"
        shapes = re.sub(r"\s+", " ", key)
        print(f"  {lost:>9.3f} {ams:>9.3f} {oms:>9.3f} {ratio} {n:>5}  {aop} / {oop}  {shapes}")


if __name__ == "__main__":
    main()
