#!/usr/bin/env bash
# Region-embedding throughput (crops/s) of a ViT-B/32-sized CLIP with random weights: ovkd on
# `cpu` (burn-flex) beside transformers' CLIPModel.get_image_features on the same crops, same
# run. A thin wrapper: this is the `teacher_vitb32_regions` row of the speed suite
# (`ovkd-speed teacher`, `bench/speed/reference.py teacher`), driven by bench/speed.sh.
#
#   bench/teacher_speed.sh [--out FILE.json] [any other bench/speed.sh option]
#
# Needs the ovkd-speed binary (cargo build --release -p ovkd-speed) and $PYTHON (default
# python3) with torch, torchvision, transformers and safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
out="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
tmp=""
if [ -z "$out" ]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT; out="$tmp/teacher-speed.json"
fi
bench/speed.sh --device cpu --out "$out" --rows teacher_vitb32_regions "${args[@]}"
