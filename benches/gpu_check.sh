#!/usr/bin/env bash
# One pass over a machine with a CUDA GPU and PyTorch: correctness of the GPU node on the ONNX
# test data, the kernels against cuBLAS/cuDNN, the light models against PyTorch, and a
# resident profile of ResNet-50 and VGG-19, and each GEMM tiling timed alone. Built for short leases of a GPU machine: every
# part has its own time limit, so a slow part cannot starve the later ones.
#
# Usage: benches/gpu_check.sh BIN TEST_BIN [OUT_DIR]
#   BIN       the accelmesh binary (target/release/accelmesh)
#   TEST_BIN  the onnx_backend test binary (target/release/deps/onnx_backend-*)
#   OUT_DIR   where the tables go (default: the current directory)
# Environment: ACCELMESH_ONNX_DATA (the onnx package's backend test data; found through
# python3's onnx otherwise), MODELS (comma list, default resnet50,vgg19,inception_v1,
# squeezenet,densenet121), SIZES (matmul sizes, default 1024,4096,8192), REPS (default 10),
# TILE_SIZES (the sizes each tiling is timed alone on, default 2048,4096).
set -uo pipefail
BIN=${1:?usage: gpu_check.sh BIN TEST_BIN [OUT_DIR]}
TEST_BIN=${2:?usage: gpu_check.sh BIN TEST_BIN [OUT_DIR]}
OUT_DIR=${3:-.}
HERE="$(cd "$(dirname "$0")" && pwd)"
MODELS=${MODELS:-resnet50,vgg19,inception_v1,squeezenet,densenet121}
SIZES=${SIZES:-1024,4096,8192}
REPS=${REPS:-10}
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
if [ -z "${ACCELMESH_ONNX_DATA:-}" ]; then
  ACCELMESH_ONNX_DATA=$(python3 -c "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend', 'test', 'data'))")
  export ACCELMESH_ONNX_DATA
fi
mkdir -p "$OUT_DIR"

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
date -u
echo "== the ONNX test data on gpu:0"
ACCELMESH_REQUIRE_GPU=1 timeout 120 "$TEST_BIN" onnx_backend_test_data_on_a_gpu_node --nocapture 2>&1 \
  | grep -E "cases passed|^test |failed|skipped" | cut -c1-300
echo "== models against PyTorch"
timeout 300 python3 "$HERE/gpu_infer_compare.py" --bin "$BIN" --reps "$REPS" --markdown \
  --models "$MODELS" | tee "$OUT_DIR/gpu_models.md"
echo "== resident profiles"
for m in resnet50 vgg19; do
  timeout 60 "$BIN" infer "$ACCELMESH_ONNX_DATA/light/light_$m.onnx" --nodes gpu:0 --reps 5 \
    --profile 2>&1 | grep -v XDG_RUNTIME | head -24 | tee "$OUT_DIR/gpu_profile_$m.txt"
done
echo "== kernels against cuBLAS / cuDNN"
timeout 240 python3 "$HERE/gpu_compare.py" --bin "$BIN" --sizes "$SIZES" --reps "$REPS" --markdown \
  | tee "$OUT_DIR/gpu_kernels.md"
echo "== each tiling alone (ACCELMESH_GPU_TILE), f32 matmul at ${TILE_SIZES:=2048,4096}"
for t in 64,64,16,4,4 128,128,8,8,8 128,64,16,8,4 64,128,8,4,8 64,64,8,8,8 32,32,16,4,4 16,16,16,2,2; do
  ACCELMESH_GPU_TILE=$t timeout 60 "$BIN" bench matmul --sizes "$TILE_SIZES" --nodes gpu:0 --reps 5 \
    --json 2>/dev/null | python3 -c "import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        r = json.loads(l)
        print('$t', r['shape'], round(r.get('kernel_gflops') or r['gflops']), 'GFLOP/s')"
done | tee "$OUT_DIR/gpu_tiles.txt"
date -u
