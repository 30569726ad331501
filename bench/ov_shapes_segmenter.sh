#!/usr/bin/env bash
# The segmenter experiment on OV-Shapes from nothing: data synth, teacher pre-training, the
# teacher's dense features and pseudo-labels, segmenter training, evaluation.
#
#   bench/ov_shapes_segmenter.sh RUN_DIR [--preset quick|default|large] [--set KEY=VALUE ...]
#
# Leaves RUN_DIR/eval/seg.json (`ovkd eval seg --out` format: mIoU, seen_mIoU, unseen_mIoU, hIoU),
# RUN_DIR/eval/seg_teacher.json (the teacher's zero-shot MaskCLIP floor), and the wall time of
# the whole run (build excluded) in RUN_DIR/time.txt, and prints a table. --set overrides the
# segmenter config (configs/segmenter/ov_shapes.toml; ov_shapes_quick.toml for --preset quick),
# e.g. --set distill.pseudo.enabled=false --set distill.self_train.after_step=... for ablations.
# If RUN_DIR already holds data or a teacher made with the same preset, they are reused (and
# their time is not counted again): delete RUN_DIR for a run from nothing.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
RUN=$1; shift
PRESET=default
SETS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --preset) PRESET=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
case $PRESET in
  quick) CONFIG=configs/segmenter/ov_shapes_quick.toml ;;
  default|large) CONFIG=configs/segmenter/ov_shapes.toml ;;
  *) echo "--preset must be quick, default or large" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --quiet -p ovkd
OVKD="$ROOT/target/release/ovkd"
mkdir -p "$RUN"
LOG="$RUN/bench.log"
: > "$LOG"

now() { date +%s.%N; }
T0=$(now)
stage() {  # stage NAME CMD...: runs CMD, logs it, prints its seconds
  local name=$1; shift
  local t=$(now)
  echo "+ $*" >> "$LOG"
  "$@" 2>&1 | tee -a "$LOG" | grep -v '^\s*$' | sed "s/^/[$name] /" >&2
  printf '%s %.1f\n' "$name" "$(echo "$(now) - $t" | bc)" >> "$RUN/stages.txt"
}
: > "$RUN/stages.txt"

if [[ -f "$RUN/data/meta.json" ]] && grep -q "\"preset\": \"$PRESET\"" "$RUN/data/meta.json"; then
  echo "reusing $RUN/data" >&2
else
  stage data "$OVKD" data synth --out "$RUN/data" --preset "$PRESET"
fi
if [[ -f "$RUN/teacher/model.safetensors" ]]; then
  echo "reusing $RUN/teacher" >&2
else
  stage teacher "$OVKD" teacher pretrain --data "$RUN/data" --out "$RUN/teacher" --preset "$PRESET"
fi
rm -rf "$RUN/segmenter"
stage segmenter "$OVKD" train segmenter --config "$CONFIG" --run "$RUN" --quiet "${SETS[@]}"
T1=$(now)
printf '%.1f\n' "$(echo "$T1 - $T0" | bc)" > "$RUN/time.txt"

python3 - "$RUN" "$PRESET" <<'EOF'
import json, sys, os
run, preset = sys.argv[1], sys.argv[2]
def load(name):
    with open(os.path.join(run, "eval", name)) as f:
        return json.load(f)
rows = [("teacher zero-shot (MaskCLIP)", load("seg_teacher.json")), ("student", load("seg.json"))]
pct = lambda x: "-" if x is None else f"{100 * x:.1f}"
print(f"\nOV-Shapes ({preset}), run {run}")
print(f"| model | mIoU | seen mIoU | unseen mIoU | hIoU |")
print(f"|---|---:|---:|---:|---:|")
for name, r in rows:
    print(f"| {name} | {pct(r['mIoU'])} | {pct(r.get('seen_mIoU'))} | {pct(r.get('unseen_mIoU'))} | {pct(r.get('hIoU'))} |")
with open(os.path.join(run, "segmenter", "pseudo_labels.json")) as f:
    p = json.load(f)
print(f"\npseudo-labels: train coverage {pct(p['train_coverage'])}%, "
      f"val (novel hidden) coverage {pct(p['val_coverage'])}%, precision {pct(p['val_precision'])}%")
with open(os.path.join(run, "stages.txt")) as f:
    stages = ", ".join(f"{l.split()[0]} {l.split()[1]} s" for l in f if l.strip())
with open(os.path.join(run, "time.txt")) as f:
    print(f"wall time {f.read().strip()} s ({stages})")
EOF
