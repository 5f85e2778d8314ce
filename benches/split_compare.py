#!/usr/bin/env python3
"""One image at a time on the ONNX light models: accelmesh on one one-thread CPU node
(`cpu:1x1`, whole), on two one-thread nodes (`cpu:2x1`, where the DRAC splits each large
convolution by output channels) and on one node of both threads (`cpu`), against onnxruntime's
CPU provider (2 intra-op threads), in interleaved rounds in one run. Prints medians and ratios.

Usage: benches/.venv/bin/python benches/split_compare.py [--bin target/release/accelmesh]
       [--models resnet50,vgg19,...] [--rounds 3] [--reps 7]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

SPECS = ["cpu:1x1", "cpu:2x1", "cpu"]


def light_dir():
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def accelmesh_ms(binary, model, spec, reps):
    """Median latency and strategy of `accelmesh infer` (seeded input, batch 1)."""
    out = subprocess.run(
        [binary, "infer", model, "--nodes", spec, "--reps", str(reps), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return report["latency_ms"], report.get("strategy", "?")


def ort_ms(model, reps, threads=2):
    """Median latency of onnxruntime on a seeded input of the declared shape."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = {}
    rng = np.random.default_rng(7)
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    for _ in range(2):
        sess.run(None, feeds)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="target/release/accelmesh")
    parser.add_argument("--models", default="resnet50,vgg19,inception_v1,squeezenet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    rows = {}
    for name in args.models.split(","):
        path = os.path.join(light_dir(), f"light_{name}.onnx")
        if not os.path.exists(path):
            sys.exit(f"no model {path}")
        runs = {spec: [] for spec in SPECS + ["ort"]}
        strategy = {}
        for r in range(args.rounds):
            for spec in SPECS:
                ms, strategy[spec] = accelmesh_ms(args.bin, path, spec, args.reps)
                runs[spec].append(ms)
            runs["ort"].append(ort_ms(path, args.reps))
            print(f"{name} round {r + 1}: " + ", ".join(
                f"{k} {v[-1]:.2f}" for k, v in runs.items()), file=sys.stderr)
        rows[name] = ({k: statistics.median(v) for k, v in runs.items()}, runs, strategy)
    print("| model | cpu:1x1 ms | cpu:2x1 ms (strategy) | cpu ms | onnxruntime ms |"
          " 1x1 / 2x1 | ort / 2x1 | ort / cpu |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (med, _, strategy) in rows.items():
        print(f"| {name} | {med['cpu:1x1']:.2f} | {med['cpu:2x1']:.2f} ({strategy['cpu:2x1']}) "
              f"| {med['cpu']:.2f} | {med['ort']:.2f} | {med['cpu:1x1'] / med['cpu:2x1']:.2f} "
              f"| {med['ort'] / med['cpu:2x1']:.2f} | {med['ort'] / med['cpu']:.2f} |")
    print()
    for name, (_, runs, _) in rows.items():
        print(f"{name} rounds (ms): " + "; ".join(
            f"{k} " + " / ".join(f"{v:.2f}" for v in vals) for k, vals in runs.items()))


if __name__ == "__main__":
    main()
