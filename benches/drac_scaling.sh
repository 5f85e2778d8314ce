#!/usr/bin/env bash
# The DRAC on real nodes, side by side in one run (rounds interleaved): two one-thread CPU
# nodes against one, and the CPU with the GPU adapters against the CPU alone.
# Usage: benches/drac_scaling.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --quiet --bin accelmesh
bin=target/release/accelmesh
# Calibrate every configuration first (cached), so no timed run pays for it.
for spec in cpu:1x1 cpu:2x1 cpu cpu,gpu; do
  "$bin" calibrate --nodes "$spec" >/dev/null 2>&1 || true
done
summary='import sys, json
for line in sys.stdin:
    d = json.loads(line)
    print("%-10s %-7s %-18s nodes_used=%d %-12s %9.2f ms %7.1f GFLOP/s" % (sys.argv[1], d["op"],
          d["shape"], d["nodes_used"], d["strategy"], d["ms_median"], d["gflops"]))'
for round in $(seq "$rounds"); do
  echo "# round $round"
  for spec in cpu:1x1 cpu:2x1; do
    "$bin" bench matmul --sizes 2048,4096 --nodes "$spec" --reps 3 --json 2>/dev/null | python3 -c "$summary" "$spec"
  done
  for spec in cpu cpu,gpu; do
    "$bin" bench matmul --sizes 512,1024,2048 --nodes "$spec" --reps 5 --json 2>/dev/null | python3 -c "$summary" "$spec"
    "$bin" bench conv2d --preset resnet --nodes "$spec" --reps 5 --json 2>/dev/null | python3 -c "$summary" "$spec"
  done
done
