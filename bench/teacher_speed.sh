#!/usr/bin/env bash
# Region-embedding throughput (crops/s) of a ViT-B/32-sized CLIP with random weights:
# ovkd on `cpu` (burn-flex) beside transformers' CLIPModel on the same crops, same run.
#
#   bench/teacher_speed.sh [CROPS] [BATCH] [REPS]
#
# Needs Python with torch (CPU is enough), transformers and safetensors:
#   python -m venv .venv && .venv/bin/pip install torch transformers safetensors
# and PYTHON pointing at it (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
CROPS=${1:-64}
BATCH=${2:-32}
REPS=${3:-2}
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cargo build --release -q -p ovkd-teacher --example region_speed
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "command: bench/teacher_speed.sh $CROPS $BATCH $REPS"
nice target/release/examples/region_speed --crops "$CROPS" --batch "$BATCH" --reps "$REPS" --dump "$TMP/crops.safetensors"
nice "$PYTHON" bench/teacher_speed.py "$TMP/crops.safetensors" "$BATCH" "$REPS" "$(nproc)"
