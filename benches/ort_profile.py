"""onnxruntime's time per operator on one model, as the peer of `accelmesh infer --profile`.

Runs the model on onnxruntime's CPU provider (default graph optimisations, sequential, the given
intra-op threads) with its profiler on: a few warm-up runs, then `--reps` profiled runs. Each
node's kernel time is the median over those runs; the report sums them by operator type and by
operator and input shapes, the same grouping `accelmesh infer --profile` prints. Fused nodes
keep onnxruntime's names (FusedConv, NCHWc convolutions after its layout transform, ...).

    benches/.venv/bin/python benches/ort_profile.py MODEL.onnx [--reps 10] [--threads 2]
        [--batch 1] [--nodes]
"""

import argparse
import collections
import json
import os
import statistics
import tempfile


def profile(args):
    """Per-node median kernel time (ms) and the node's op type and input shapes."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in session.get_inputs():
            shape = [args.batch if i == 0 and not isinstance(d, int) else d
                     for i, d in enumerate(inp.shape)]
            feeds[inp.name] = np.random.default_rng(7).uniform(0, 1, shape).astype(np.float32)
        for _ in range(args.warmup):
            session.run(None, feeds)
        for _ in range(args.reps):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs = collections.defaultdict(list)
    info = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        runs[node].append(ev["dur"] / 1e3)
        a = ev.get("args", {})
        info[node] = (a.get("op_name", "?"), a.get("input_type_shape", []))
    # The first `warmup` occurrences of each node are the warm-up runs.
    return {n: (statistics.median(t[args.warmup:] or t), *info[n]) for n, t in runs.items()}


def shapes(types):
    return " ".join(str(next(iter(t.values()))) for t in types)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--reps", type=int, default=10, help="profiled runs")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--batch", type=int, default=1, help="batch of a symbolic first dim")
    parser.add_argument("--nodes", action="store_true", help="also print every node")
    parser.add_argument("--top", type=int, default=20, help="op-and-shape rows to print")
    args = parser.parse_args()

    nodes = profile(args)
    total = sum(ms for ms, _, _ in nodes.values())
    by_op = collections.defaultdict(lambda: [0.0, 0])
    by_shape = collections.defaultdict(lambda: [0.0, 0])
    for ms, op, types in nodes.values():
        by_op[op][0] += ms
        by_op[op][1] += 1
        key = f"{op} {shapes(types)}"
        by_shape[key][0] += ms
        by_shape[key][1] += 1
    print(f"onnxruntime profile (median of {args.reps} runs per node, {args.threads} threads): "
          f"{total:.3f} ms in {len(nodes)} nodes")
    print(f"  {'op':<28} {'ms':>10} {'nodes':>6} {'%':>6}")
    for op, (ms, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0]):
        print(f"  {op:<28} {ms:>10.3f} {n:>6} {100 * ms / total:>5.1f}%")
    print("  slowest op and input shapes:")
    for key, (ms, n) in sorted(by_shape.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {ms:>10.3f} ms {n:>4}x  {key}")
    if args.nodes:
        print("  every node:")
        for name, (ms, op, types) in nodes.items():
            print(f"  {ms:>10.3f} ms  {op:<16} {name}  {shapes(types)}")


if __name__ == "__main__":
    main()
