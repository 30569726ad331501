#!/usr/bin/env bash
# Speed table: ovkd's steps against PyTorch on the same device, same threads, same run.
#
#   bench/speed.sh --device cpu --out speed-cpu.json          # burn-flex vs PyTorch CPU
#   bench/speed.sh --device tch-cpu --out speed-tch.json      # LibTorch CPU (binary built with tch)
#   bench/speed.sh --device tch-cuda:0 --out speed-gpu.json   # LibTorch CUDA
#
# Options (after --device/--out): --threads N (default: 2 on CPU, all cores on CUDA),
# --rounds R, --steps S, --heavy-steps S (R50-FPN and the teacher on CPU; default 2),
# --rows a,b, --baseline (also ovkd with Burn's own conv, and with Burn's AdamW, on the
# smallnet rows),
# --bin PATH (default: $OVKD_SPEED_BIN, else target/release/ovkd-speed).
# Needs $PYTHON (default python3) with torch, torchvision, transformers and safetensors (the
# tch devices link against that torch's libraries), e.g. torch 2.11.0 + torchvision 0.26 +
# transformers 5.x: `pip install torch==2.11.0 torchvision==0.26.0 transformers safetensors`.
set -euo pipefail
cd "$(dirname "$0")/.."

device="" out="" threads="" bin="${OVKD_SPEED_BIN:-target/release/ovkd-speed}" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --rounds|--steps|--heavy-steps|--warmup|--rows) extra+=("$1" "$2"); shift 2 ;;
    --baseline) extra+=("$1"); shift ;;
    *) echo "speed.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$device" ] && [ -n "$out" ] || { echo "usage: bench/speed.sh --device D --out FILE.json" >&2; exit 2; }
[ -x "$bin" ] || { echo "speed.sh: no ovkd-speed binary at $bin (cargo build --release -p ovkd-speed [--features tch])" >&2; exit 2; }
if [ -z "$threads" ]; then
  case "$device" in tch-cuda*) threads="$(nproc)" ;; *) threads=2 ;; esac
fi

py="${PYTHON:-python3}"
"$py" -c 'import torch, torchvision, transformers, safetensors' 2>/dev/null || {
  echo "speed.sh: $py lacks one of torch, torchvision, transformers, safetensors (set PYTHON)" >&2; exit 2; }
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The same thread count on both sides: rayon (burn-flex), OpenMP/MKL (LibTorch and PyTorch).
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
# OpenMP threads that spin while waiting collapse (5-20x) when the cores are shared with other
# work, as on the 2-core dev machine; passive waiting yields the core instead. It applies to
# both sides that use OpenMP (PyTorch, and LibTorch for tch-*); set OMP_WAIT_POLICY to override.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

echo "speed.sh: $(date -u +%FT%TZ) $(uname -n), load $(cut -d' ' -f1-3 /proc/loadavg), device $device, $threads threads, OMP_WAIT_POLICY=$OMP_WAIT_POLICY" >&2
"$py" bench/speed/run.py --device "$device" --out "$out" --bin "$bin" --threads "$threads" "${extra[@]}"
