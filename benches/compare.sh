#!/usr/bin/env bash
# Side-by-side comparison, in one run on this machine: accelmesh vs numpy/OpenBLAS sgemm and
# vs onnxruntime's CPU provider (2 intra-op threads) on the resnet conv preset.
# Usage: benches/compare.sh [--quick] [--rounds R] [--markdown]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benches/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check numpy onnxruntime onnx
cargo build --release --quiet --bin accelmesh
# OpenBLAS picks its kernel from the CPU: clear any override for this command only.
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
  "$venv/bin/python" benches/compare.py --bin target/release/accelmesh "$@"
