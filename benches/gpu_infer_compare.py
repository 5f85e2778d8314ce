#!/usr/bin/env python3
"""ONNX inference on one GPU, side by side in one run: `accelmesh infer --nodes gpu:N` on the
light models of the onnx package's test data vs PyTorch (fp32, TF32 off, eval, no_grad) on
torchvision's build of the same architecture.

Usage: python benches/gpu_infer_compare.py --bin target/release/accelmesh [--reps 10]
       [--node gpu:0] [--batch 1,8] [--models resnet50,vgg19,...] [--markdown]

Both sides are timed host to host: accelmesh's `latency_ms` (median of `--reps` runs after its
warm-up) covers the input upload, every kernel and the output download; PyTorch's time covers
`model(x.cuda()).cpu()` on a host input (median of `--reps` after three warm-ups). Batch 8
runs on a copy of the model whose batch dimension is symbolic (benches/onnx_compare.py's
`batched_copy`), so both engines run one batch-8 inference.

The torchvision counterparts are the same architectures as far as torchvision has them:
ResNet-50 (v1.5 there: the stride sits on the 3x3, 4.1 vs 3.9 GFLOP), VGG-19, GoogLeNet for
Inception v1 (no LRN there), SqueezeNet 1.0, DenseNet-121, AlexNet (single-tower, no LRN);
ShuffleNet v1, Inception v2 and ZFNet-512 have no torchvision build and run on accelmesh only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TORCH_PEERS = {
    "resnet50": ("resnet50", {}),
    "vgg19": ("vgg19", {}),
    "inception_v1": ("googlenet", {"aux_logits": False, "init_weights": False}),
    "squeezenet": ("squeezenet1_0", {}),
    "densenet121": ("densenet121", {}),
    "bvlc_alexnet": ("alexnet", {}),
}
DEFAULT_MODELS = "resnet50,vgg19,inception_v1,squeezenet,densenet121,bvlc_alexnet,shufflenet"


def light_dir():
    if os.environ.get("ACCELMESH_ONNX_DATA"):
        return os.path.join(os.environ["ACCELMESH_ONNX_DATA"], "light")
    import onnx
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def ours(binary, model_path, node, batch, reps):
    cmd = [binary, "infer", model_path, "--nodes", node, "--reps", str(reps), "--json"]
    if batch > 1:
        cmd += ["--batch", str(batch)]
    started = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1])
    out["wall_s"] = wall
    return out


def torch_ms(name, batch, reps):
    import torch
    import torchvision
    ctor, kwargs = TORCH_PEERS[name]
    model = getattr(torchvision.models, ctor)(weights=None, **kwargs).eval().cuda()
    x = torch.rand(batch, 3, 224, 224)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(x.cuda()).cpu()
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x.cuda()).cpu()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--node", default="gpu:0")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        has_torch = torch.cuda.is_available()
        device = torch.cuda.get_device_name() if has_torch else "no CUDA device"
        version = torch.__version__
    except ImportError:
        has_torch, device, version = False, "no torch", "-"
    from onnx_compare import batched_copy

    light = light_dir()
    tmp = tempfile.mkdtemp(prefix="gpu_infer_")
    print(f"# {device}, torch {version}, node {a.node}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    head = ("model", "batch", "accelmesh ms", "torch ms", "torch/accelmesh")
    sep = " | " if a.markdown else "  "
    print(("| " if a.markdown else "") + sep.join(head) + (" |" if a.markdown else ""))
    if a.markdown:
        print("|" + "---|" * len(head))
    for name in a.models.split(","):
        path = os.path.join(light, f"light_{name}.onnx")
        for batch in [int(b) for b in a.batch.split(",")]:
            model_path = path if batch == 1 else batched_copy(path, tmp)
            r = ours(a.bin, model_path, a.node, batch, a.reps)
            ours_ms = r.get("latency_ms")
            peer = None
            if has_torch and name in TORCH_PEERS:
                try:
                    peer = torch_ms(name, batch, a.reps)
                except Exception as e:  # a torchvision build that refuses the arguments
                    print(f"# torch {name}: {e}", file=sys.stderr)
            cells = (
                name,
                str(batch),
                f"{ours_ms:.2f}" if ours_ms else r.get("error", "-")[:60],
                f"{peer:.2f}" if peer else "-",
                f"{peer / ours_ms:.2f}" if (peer and ours_ms) else "-",
            )
            print(("| " if a.markdown else "") + sep.join(cells) + (" |" if a.markdown else ""),
                  flush=True)


if __name__ == "__main__":
    main()
