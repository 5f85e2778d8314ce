#!/usr/bin/env python3
"""Side by side on one GPU, in one run: accelmesh's WGSL kernels (`bench --nodes gpu`) vs
PyTorch fp32 with TF32 disabled (cuBLAS SGEMM, cuDNN conv2d) on the same shapes.

Usage: python benches/gpu_compare.py --bin target/release/accelmesh [--sizes 4096,8192]
       [--shapes 1x4096x25088t,...] [--reps 10] [--markdown]
Kernel times are compared (inputs resident on the device for both); accelmesh's time with
transfers is shown too. Needs torch with CUDA; exits with a message otherwise.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

RESNET = [  # N, C, H, K, R, stride, pad (the `resnet` preset of `accelmesh bench conv2d`)
    (1, 64, 56, 64, 3, 1, 1),
    (1, 128, 28, 128, 3, 1, 1),
    (1, 256, 14, 256, 3, 1, 1),
    (8, 64, 56, 64, 3, 1, 1),
    (1, 3, 224, 64, 7, 2, 3),
    (1, 256, 56, 64, 1, 1, 0),
]


def ours(binary, args):
    out = subprocess.run([binary, "bench", *args, "--nodes", "gpu:0", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def torch_time(fn, reps):
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sizes", default="1024,4096,8192")
    ap.add_argument("--shapes", default="1x4096x25088t,1x4096x4096t,8x4096x25088t,1x1000x2048t,8x1000x2048t",
                    help="MxNxK products of few rows (t: B stored [N, K], as a dense layer's weight); "
                         "empty for none")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("torch is not installed: pip install torch")
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    rows = []
    for dtype, tdtype in (("f32", torch.float32), ("f16", torch.float16)):
        for r in ours(a.bin, ["matmul", "--sizes", a.sizes, "--reps", str(a.reps), "--dtype", dtype]):
            n = int(r["shape"].split("x")[0])
            x = torch.randn(n, n, device=dev, dtype=tdtype)
            y = torch.randn(n, n, device=dev, dtype=tdtype)
            out = torch.empty(n, n, device=dev, dtype=tdtype)
            ms = torch_time(lambda: torch.mm(x, y, out=out), a.reps)
            rows.append(("matmul", r["shape"], dtype, r, ms))
    if a.shapes:
        for r in ours(a.bin, ["matmul", "--shapes", a.shapes, "--reps", str(a.reps)]):
            text = r["shape"]
            trans = text.endswith("t")
            m, n, k = map(int, text.rstrip("t").split("x"))
            x = torch.randn(m, k, device=dev)
            w = torch.randn(n, k, device=dev) if trans else torch.randn(k, n, device=dev)
            out = torch.empty(m, n, device=dev)
            op = (lambda: torch.mm(x, w.t(), out=out)) if trans else (lambda: torch.mm(x, w, out=out))
            rows.append(("matmul", text, "f32", r, torch_time(op, a.reps)))
    for r in ours(a.bin, ["conv2d", "--preset", "resnet", "--reps", str(a.reps)]):
        n, c, h, k, kk, s, p = map(int, r["shape"].split("-"))
        x = torch.randn(n, c, h, h, device=dev)
        w = torch.randn(k, c, kk, kk, device=dev)
        ms = torch_time(lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p), a.reps)
        rows.append(("conv2d", r["shape"], "f32", r, ms))
    name = torch.cuda.get_device_name()
    print(f"# {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{time.strftime('%Y-%m-%d')}")
    head = ("op", "shape", "dtype", "ours kernel ms", "ours GFLOP/s", "ours ms with transfers",
            "torch ms", "torch GFLOP/s", "ours/torch rate")
    fmt = "| " + " | ".join(["{}"] * len(head)) + " |" if a.markdown else "  ".join(["{:>14}"] * len(head))
    print(fmt.format(*head))
    if a.markdown:
        print("|" + "---|" * len(head))
    for op, shape, dtype, r, ms in rows:
        kms = r.get("kernel_ms_median") or r["ms_median"]
        rate_ours = r["flops"] / (kms * 1e6)
        rate_torch = r["flops"] / (ms * 1e6)
        print(fmt.format(op, shape, dtype, f"{kms:.3f}", f"{rate_ours:.0f}", f"{r['ms_median']:.3f}",
                         f"{ms:.3f}", f"{rate_torch:.0f}", f"{rate_ours / rate_torch:.2f}"))


if __name__ == "__main__":
    main()
