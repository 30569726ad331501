#!/usr/bin/env bash
# The detector experiment on OV-Shapes from nothing:
#   data synth -> teacher pretrain -> proposals (class-agnostic RPN on base boxes, then the
#   teacher embeds them: the ViLD-image region cache) -> train detector (ViLD-text + ViLD-image)
#   -> predict the val split -> ovkd eval det --vocab (base / novel AP50)
# plus the ablations: text only (no ViLD-image), and the main run's text / image / plain-ensemble scores.
#
# Usage: bench/ov_shapes_detector.sh RUN_DIR [--preset quick|default|large] [--set K=V ...]
#   --set goes to the detector config (proposals and train detector), e.g.
#   --set train.steps=200 --set proposals.train.steps=100
#   --set distill.method=baron (BARON; also text | vild) --set distill.pseudo_boxes=true
# Environment: OVKD (binary; default target/release/ovkd, built unless NO_BUILD=1),
#   CONFIG (default configs/detector/ov_shapes.toml), DEVICE (default cpu),
#   TEACHER (an existing teacher checkpoint to use instead of pre-training one),
#   TEACHER_PRESET (`ovkd teacher pretrain --preset`, default: the data preset).
# Leaves RUN_DIR/eval/det.json (the evaluator's format), RUN_DIR/time.txt and
# RUN_DIR/summary.md (the table printed at the end).
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n 2,15p "$0"
    exit 2
fi
RUN=$1
shift
PRESET=default
USER_SETS=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) PRESET=$2; shift 2 ;;
        --set) USER_SETS+=(--set "$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# Shorter schedules for the quick preset (64 training images): a smoke-sized run.
SETS=()
if [ "$PRESET" = quick ]; then
    SETS=(--set proposals.train.steps=200 --set proposals.train.batch_size=4
          --set train.steps=400 --set train.batch_size=4 --set train.checkpoint_every=200
          --set train.schedule.warmup_steps=20)
fi
SETS+=("${USER_SETS[@]}")
TEACHER_PRESET=${TEACHER_PRESET:-$PRESET}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${CONFIG:-$ROOT/configs/detector/ov_shapes.toml}
DEVICE=${DEVICE:-cpu}
OVKD=${OVKD:-$ROOT/target/release/ovkd}
if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p ovkd)
fi
O() { "$OVKD" --device "$DEVICE" "$@"; }

mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
T0=$(date +%s.%N)
stamp() { python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$T0"; }
declare -A TIMES
step_time() { local t0=$1; python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0"; }

echo "== data synth ($PRESET)"
t=$(date +%s.%N)
O data synth --out "$RUN/data" --preset "$PRESET"
TIMES[data]=$(step_time "$t")

echo "== teacher"
t=$(date +%s.%N)
if [ -n "${TEACHER:-}" ]; then
    rm -rf "$RUN/teacher"
    ln -s "$(cd "$TEACHER" && pwd)" "$RUN/teacher"
else
    O teacher pretrain --data "$RUN/data" --out "$RUN/teacher" --preset "$TEACHER_PRESET"
fi
TIMES[teacher]=$(step_time "$t")

echo "== proposals (+ the teacher's region embeddings of them: the ViLD-image cache)"
t=$(date +%s.%N)
O proposals --config "$CONFIG" --run "$RUN" --quiet "${SETS[@]}"
TIMES[proposals]=$(step_time "$t")

echo "== train detector (ViLD-text + ViLD-image)"
t=$(date +%s.%N)
O train detector --config "$CONFIG" --run "$RUN" --quiet --no-eval "${SETS[@]}"
TIMES[train]=$(step_time "$t")

echo "== predict val + ovkd eval det"
t=$(date +%s.%N)
# The main number: the config's eval.inference (ViLD's single head: text scores).
O train detector --config "$CONFIG" --run "$RUN" --quiet --eval-only --eval-name det_internal "${SETS[@]}"
O eval det --gt "$RUN/data/val/instances.json" --dets "$RUN/eval/det_internal.detections.json" \
    --vocab "$RUN/data/vocab.toml" --out "$RUN/eval/det.json"
TIMES[eval]=$(step_time "$t")
TOTAL=$(stamp)

{
    echo "preset $PRESET (teacher ${TEACHER:-pretrained, preset $TEACHER_PRESET}), sets: ${SETS[*]}"
    echo "device $DEVICE, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
    for k in data teacher proposals train eval; do echo "$k ${TIMES[$k]}"; done
    echo "total $TOTAL"
    echo "proposals+cache+train+eval $(python3 -c "import sys; print(f'{sum(map(float, sys.argv[1:])):.1f}')" \
        "${TIMES[proposals]}" "${TIMES[train]}" "${TIMES[eval]}")"
} > "$RUN/time.txt"

# Ablations (not part of the timed experiment), on the same data, teacher and cache.
SHARED=(--set data.root="\"$RUN/data\"" --set teacher.path="\"$RUN/teacher\""
        --set cache.regions="\"$RUN/cache/regions\"")
echo "== ablation: text only (distill.method = text)"
t=$(date +%s.%N)
O train detector --config "$CONFIG" --run "$RUN/text_only" --quiet "${SETS[@]}" "${SHARED[@]}" \
    --set distill.method=text --set distill.pseudo_boxes=false --set eval.inference.scores=text
TIMES[ablation_text_only]=$(step_time "$t")
echo "== ablation: the scores of the main run's heads (text head, image head, ViLD's plain ensemble)"
t=$(date +%s.%N)
if [ -d "$RUN/cache/regions" ]; then
    O train detector --config "$CONFIG" --run "$RUN" --quiet --eval-only --eval-name det_text \
        "${SETS[@]}" --set eval.inference.scores=text
    O train detector --config "$CONFIG" --run "$RUN" --quiet --eval-only --eval-name det_image \
        "${SETS[@]}" --set eval.inference.scores=image
    O train detector --config "$CONFIG" --run "$RUN" --quiet --eval-only --eval-name det_plain_ensemble \
        "${SETS[@]}" --set eval.inference.scores=ensemble --set eval.inference.background_from_text=false
else
    echo "(no region cache in this run: distill.method made none; ablation skipped)"
fi
TIMES[ablation_ensemble]=$(step_time "$t")

{
    echo "ablation_text_only ${TIMES[ablation_text_only]}"
    echo "ablation_ensemble ${TIMES[ablation_ensemble]}"
} >> "$RUN/time.txt"

python3 - "$RUN" <<'PY' | tee "$RUN/summary.md"
import json, sys, os
run = sys.argv[1]
def splits(path):
    r = json.load(open(path))
    s = r["splits"]
    return [100 * s[k]["AP50"] for k in ("base", "novel", "all")]
rows = [
    ("the config's method (default: ViLD-ensemble, background from the text head, novel classes from the image head with the objectness of eval.inference.novel_objectness; ovkd eval det)", f"{run}/eval/det.json"),
    ("ViLD-text only (no ViLD-image), text scores", f"{run}/text_only/eval/det.json"),
    ("same model as the first row: text head only", f"{run}/eval/det_text.json"),
    ("same model: image head only", f"{run}/eval/det_image.json"),
    ("same model: ViLD's plain ensemble (both heads' softmax with background)", f"{run}/eval/det_plain_ensemble.json"),
]
print("| model | base AP50 | novel AP50 | all AP50 |")
print("| --- | ---: | ---: | ---: |")
for name, p in rows:
    if os.path.exists(p):
        b, n, a = splits(p)
        print(f"| {name} | {b:.1f} | {n:.1f} | {a:.1f} |")
    else:
        print(f"| {name} | missing | | |")
rec = f"{run}/proposals/recall.json"
if os.path.exists(rec):
    r = json.load(open(rec))
    k = max(r, key=lambda s: int(s[3:]))
    print(f"\nproposal recall@0.5 ({k}): base {100*r[k]['base']['recall_50']:.1f}, novel {100*r[k]['novel']['recall_50']:.1f}")
print()
print(open(f"{run}/time.txt").read())
PY
