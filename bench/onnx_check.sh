#!/usr/bin/env bash
# ONNX export parity on a real run: exports each student the run has (segmenter/, detector/)
# with `ovkd export onnx --check-inputs` on one of the run's val images, runs the ONNX files in
# onnxruntime (bench/onnx_check.py) and prints one Markdown table of every output's largest
# difference from ovkd's own outputs.
#
#   bench/onnx_check.sh RUN [--seg-size HxW] [--det-size HxW] [--classes NAMES]
#
# Writes RUN/onnx/{seg,det}.onnx, their check files, RUN/onnx/{seg,det}.json and
# RUN/onnx/parity.md. Python packages (onnx, onnxruntime, numpy, safetensors) go into their
# own venv, $OVKD_ONNX_VENV (default /tmp/ovkd-onnx-venv), made on first use. The ovkd binary
# is target/release/ovkd (built here) unless $OVKD names another.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
RUN=$1; shift
SEG_SIZE=128x128
DET_SIZE=128x128
CLASSES=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --seg-size) SEG_SIZE=$2; shift 2 ;;
    --det-size) DET_SIZE=$2; shift 2 ;;
    --classes) CLASSES=(--classes "$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${OVKD_ONNX_VENV:-/tmp/ovkd-onnx-venv}
if ! "$VENV/bin/python" -c "import onnx, onnxruntime, numpy, safetensors" 2>/dev/null; then
  echo "making the Python venv $VENV (onnx, onnxruntime, numpy, safetensors)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet onnx onnxruntime numpy safetensors
fi
if [[ -z ${OVKD:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet -p ovkd)
  OVKD="$ROOT/target/release/ovkd"
fi
OUT="$RUN/onnx"
mkdir -p "$OUT"
IMAGE=$(find "$RUN/data/val/images" -maxdepth 1 -type f \( -name '*.png' -o -name '*.jpg' \) 2>/dev/null | sort | head -1 || true)
IMG_ARGS=()
[[ -n $IMAGE ]] && IMG_ARGS=(--check-image "$IMAGE")

ROWS=()
STATUS=0
for task in seg det; do
  dir=$([[ $task == seg ]] && echo segmenter || echo detector)
  size=$([[ $task == seg ]] && echo "$SEG_SIZE" || echo "$DET_SIZE")
  if ! ls -d "$RUN/$dir"/ckpt-* >/dev/null 2>&1; then
    echo "no $dir checkpoints in $RUN; skipping $task" >&2
    continue
  fi
  t0=$(date +%s.%N)
  "$OVKD" --device cpu export onnx --checkpoint "$RUN" --task "$task" --size "$size" \
    --out "$OUT/$task.onnx" --check-inputs "${IMG_ARGS[@]}" "${CLASSES[@]}" >&2
  t1=$(date +%s.%N)
  set +e
  "$VENV/bin/python" "$ROOT/bench/onnx_check.py" "$OUT/$task.onnx" \
    "$OUT/$task.inputs.safetensors" "$OUT/$task.expected.safetensors" --json "$OUT/$task.json" >&2
  rc=$?
  set -e
  [[ $rc -ne 0 ]] && STATUS=1
  ROWS+=("$("$VENV/bin/python" - "$OUT/$task.json" "$task" "$size" "$(echo "$t1 - $t0" | bc)" "$(stat -c %s "$OUT/$task.onnx")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
task, size, secs, nbytes = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
for o in r["outputs"]:
    if "mismatch" in o:
        num = f"mismatch {o['mismatch']:.1e}"
        ref = rel = ""
    else:
        num, ref, rel = f"{o['max_abs_diff']:.2e}", f"{o['max_abs_ref']:.2e}", f"{o['rel']:.1e}"
    print(f"| {task} | {size} | {o['output']} | {'x'.join(map(str, o['shape']))} | {num} | {ref} | {rel} | {'yes' if o['ok'] else 'NO'} |")
print(f"| {task} | {size} | (file: {nbytes / 1e6:.1f} MB, export + reference {secs:.1f} s, onnxruntime {r['onnxruntime']}) | | | | | |")
PY
)")
done

{
  echo "| student | size | output | shape | max abs diff | max abs ref | rel | ok |"
  echo "|---|---|---|---|---|---|---|---|"
  for r in "${ROWS[@]}"; do echo "$r"; done
} | tee "$OUT/parity.md"
exit $STATUS
