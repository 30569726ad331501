#!/usr/bin/env bash
# The GPU session's one command (the `device` tool's machine: H100/H200, PyTorch 2.11.0+cu130
# installed there, nothing built there). Prepare here, on the CPU machine:
#
#   LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
#     cargo build --release -p ovkd-speed --features tch
#   mkdir -p target/speed-gpu && strip -o target/speed-gpu/ovkd-speed target/release/ovkd-speed
#   # optional: the backbone's and the detector's unit tests, whose CUDA variants (batch norm,
#   # convolution, AdamW, linear, sparse product; RoIAlign's device taps against the host plan)
#   # run where LibTorch sees a GPU; `--no-run` prints the test binaries' paths:
#   LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 cargo test --release \
#     -p ovkd-backbone -p ovkd-detector --features ovkd-backbone/tch,ovkd-detector/tch --lib --no-run
#   strip -o target/speed-gpu/ovkd-backbone-tests target/release/deps/ovkd_backbone-<hash>
#   strip -o target/speed-gpu/ovkd-detector-tests target/release/deps/ovkd_detector-<hash>
#
# then run it there with the device tool:
#
#   run(command="bash bench/speed-gpu.sh", carry=["target/speed-gpu"], timeout_s=540)
#
# Mind the device tool's 10 minutes a call: each teacher row-round writes the 1,024 crops (616 MB)
# for the reference and builds the model on both sides; in session 13 the fp32 and bf16 teacher
# rows of two rounds took more than 160 s together. Split with --rows (and --rounds 1) when time
# is short.
#
# It prints the GPU, runs the carried test binaries, checks that `--device auto`
# resolves to tch-cuda:0, then writes
# $OUT/speed-gpu.json (the same rows as bench/speed.sh --device tch-cuda:0: smallnet 128/256/512 px,
# detector tiny 128 px and R50-FPN 512/800 px batch 8, segmenter, teacher 1024 crops in fp32, bf16
# and fp16, the last two with their lowest cosine to fp32) and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/speed-gpu/ovkd-speed
out="${OUT:-.}/speed-gpu.json"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for tests in target/speed-gpu/ovkd-*-tests; do
  [ -x "$tests" ] || continue
  echo "$tests:"
  "$tests" 2>&1 | grep -E "FAILED|panicked|test result|cuda" || true
done
# `--device auto` must pick the GPU (the `ovkd` binary's own rule, compiled into ovkd-speed).
"$bin" --device auto --steps 1 --warmup 0 smallnet --image 64 --batch 2 | grep -q '"device":"tch-cuda:0"' \
  && echo "auto -> tch-cuda:0" || { echo "auto did not resolve to tch-cuda:0" >&2; exit 1; }
OVKD_SPEED_BIN="$bin" bench/speed.sh --device tch-cuda:0 --out "$out" --rounds 2 --steps 10 --warmup 3 "$@"
