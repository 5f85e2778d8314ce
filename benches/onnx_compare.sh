#!/usr/bin/env bash
# ONNX inference side by side, in one run on this machine: accelmesh vs onnxruntime's CPU
# provider (2 intra-op threads) vs tract, on the "light" models of the onnx package's test data.
# Usage: benches/onnx_compare.sh [--quick] [--reps R] [--rounds N] [--models resnet50,vgg19,...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benches/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check numpy onnxruntime onnx
cargo build --release --quiet --bin accelmesh
# The tract runner is its own Cargo project (own workspace, own target dir).
cargo build --release --quiet --manifest-path benches/tract-runner/Cargo.toml \
  --target-dir benches/tract-runner/target
# Same environment as benches/compare.sh: no OpenBLAS kernel override for this command.
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
  "$venv/bin/python" benches/onnx_compare.py --bin target/release/accelmesh \
  --tract-bin benches/tract-runner/target/release/tract-runner "$@"
