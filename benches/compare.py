"""accelmesh vs numpy/OpenBLAS (sgemm) and onnxruntime (conv2d), interleaved in one run.

Run through benches/compare.sh, which prepares the venv and the release binary. Each case is
measured alternately for accelmesh and the peer, `--rounds` times; the table shows medians and
the ratio peer_time / accelmesh_time (above 1.0 means accelmesh is faster). Every side writes
into a preallocated output (numpy `out=`, onnxruntime I/O binding, accelmesh's single-node
bench), so the times are the kernels', not the allocators'.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine_peak  # noqa: E402

RESNET = [
    "1-64-56-64-3-1-1",
    "1-128-28-128-3-1-1",
    "1-256-14-256-3-1-1",
    "8-64-56-64-3-1-1",
    "1-3-224-64-7-2-3",
    "1-256-56-64-1-1-0",
]


def accelmesh(binary, args):
    """Runs the accelmesh CLI with --json and returns its JSON lines."""
    out = subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]


def settle():
    """Waits for the peer's worker threads to stop spinning (OpenBLAS and onnxruntime busy-wait
    after a call), so they do not steal cores from the next accelmesh run."""
    time.sleep(0.5)


def median_time(fn, reps):
    """Median wall time of `fn` over `reps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_sgemm_ms(n, reps):
    rng = np.random.default_rng(n)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    out = np.empty((n, n), dtype=np.float32)
    return median_time(lambda: np.matmul(a, b, out=out), reps) * 1e3


def conv_dims(shape):
    n, c, h, k, r, stride, pad = (int(v) for v in shape.split("-"))
    out = (h + 2 * pad - r) // stride + 1
    flops = 2 * n * k * out * out * c * r * r
    return n, c, h, k, r, stride, pad, flops


def onnxruntime_conv_ms(shape, reps, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, c, h, k, r, stride, pad, _ = conv_dims(shape)
    rng = np.random.default_rng(7)
    weight = rng.uniform(-1, 1, (k, c, r, r)).astype(np.float32)
    bias = rng.uniform(-1, 1, (k,)).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], strides=[stride, stride], pads=[pad] * 4,
        kernel_shape=[r, r],
    )
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.flatten()),
            helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    x = rng.uniform(-1, 1, (n, c, h, h)).astype(np.float32)
    out_hw = (h + 2 * pad - r) // stride + 1
    y = np.empty((n, k, out_hw, out_hw), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, np.float32, y.shape, y.ctypes.data)
    ms = median_time(lambda: session.run_with_iobinding(binding), reps) * 1e3
    del session
    return ms


def row(cells, widths):
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"


def table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n### {title}\n")
    print(row(header, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(row(r, widths))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and reps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["sgemm", "dtypes", "conv2d"], help="run one table")
    parser.add_argument("--conv-shapes", help="conv2d cases N-C-H-K-R-stride-pad, comma-separated "
                        "(default: the resnet preset)")
    machine_peak.add_cpus_option(parser)
    args = parser.parse_args()
    sizes = [256, 512, 1024] if args.quick else [128, 256, 512, 1024, 2048, 4096]
    nodes = f"cpu:1x{args.threads}"
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, threads: {args.threads}")
    machine_peak.apply_cpus_option(args)
    print(f"at the start: {machine_peak.describe(machine_peak.measure(args.bin))}", flush=True)

    run = lambda table_name: args.only in (None, table_name)  # noqa: E731
    rows = []
    for n in sizes if run("sgemm") else []:
        reps = max(10, min(200, int(4e9 / (2 * n**3))))
        ours, theirs = [], []
        for _ in range(args.rounds):
            line = accelmesh(args.bin, ["bench", "matmul", "--sizes", str(n), "--reps", str(reps),
                                        "--nodes", nodes])[0]
            ours.append(line["ms_median"])
            theirs.append(numpy_sgemm_ms(n, reps))
            settle()
        a, b = statistics.median(ours), statistics.median(theirs)
        flops = 2 * n**3
        rows.append([n, f"{a:.3f}", f"{flops / a / 1e6:.1f}", f"{b:.3f}", f"{flops / b / 1e6:.1f}",
                     f"{b / a:.2f}"])

    if rows:
        table("sgemm f32, square n (ms median; GFLOP/s)",
              ["n", "accelmesh ms", "GFLOP/s", "numpy ms", "GFLOP/s", "numpy/accelmesh"], rows)
    rows = []
    for dtype in ["f32", "f16", "bf16"] if run("dtypes") else []:
        line = accelmesh(args.bin, ["bench", "matmul", "--sizes", "1024", "--reps", "10",
                                    "--dtype", dtype, "--nodes", nodes])[0]
        rows.append([dtype, f"{line['ms_median']:.3f}", f"{line['gflops']:.1f}"])
    if rows:
        before = machine_peak.measure(args.bin, [1]).get(1)
        line = accelmesh(args.bin, ["bench", "matmul", "--sizes", "1024", "--reps", "5",
                                    "--nodes", "cpu:1x1"])[0]
        after = machine_peak.measure(args.bin, [1]).get(1)
        rows.append(["f32, 1 thread", f"{line['ms_median']:.3f}", f"{line['gflops']:.1f}"])
        table("matmul n=1024 by operand dtype (accelmesh)", ["dtype", "ms", "GFLOP/s"], rows)
        if before and after:
            peak = (before["gflops"] + after["gflops"]) / 2
            print(f"\none thread: {line['gflops']:.1f} GFLOP/s = {100 * line['gflops'] / peak:.0f} % "
                  f"of the one-thread FMA peak measured just before and after "
                  f"({before['gflops']:.0f} and {after['gflops']:.0f} GFLOP/s)")

    rows = []
    if args.conv_shapes:
        shapes = [s.strip() for s in args.conv_shapes.split(",") if s.strip()]
    else:
        shapes = RESNET[:3] if args.quick else RESNET
    for shape in shapes if run("conv2d") else []:
        flops = conv_dims(shape)[-1]
        reps = max(10, min(100, int(4e9 / flops)))
        ours, theirs = [], []
        for _ in range(args.rounds):
            line = accelmesh(args.bin, ["bench", "conv2d", "--shapes", shape, "--reps", str(reps),
                                        "--nodes", nodes])[0]
            ours.append(line["ms_median"])
            theirs.append(onnxruntime_conv_ms(shape, reps, args.threads))
            settle()
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append([shape, f"{a:.3f}", f"{flops / a / 1e6:.1f}", f"{b:.3f}",
                     f"{flops / b / 1e6:.1f}", f"{b / a:.2f}"])
    if rows:
        which = "custom cases" if args.conv_shapes else "resnet preset"
        table(f"conv2d f32, {which} N-C-H-K-R-stride-pad (ms median; GFLOP/s)",
              ["layer", "accelmesh ms", "GFLOP/s", "onnxruntime ms", "GFLOP/s", "ort/accelmesh"],
              rows)
    print(f"\nat the end: {machine_peak.describe(machine_peak.measure(args.bin))}")


if __name__ == "__main__":
    main()
