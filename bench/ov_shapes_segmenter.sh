#!/usr/bin/env bash
# The segmenter experiment on OV-Shapes from nothing: data synth, teacher pre-training, segmenter
# training (LSeg + MaskCLIP+ pseudo-labels, optionally self-training), prediction, evaluation, and
# the ablation the issue asks for.
#
#   bench/ov_shapes_segmenter.sh RUN_DIR [--preset quick|default|large] [--set KEY=VALUE ...]
#                                [--no-ablation | --ablation-only] [--data DIR] [--teacher DIR]
#
# --data / --teacher (or the DATA / TEACHER environment variables) link an existing OV-Shapes
# folder of the same preset / an existing teacher checkpoint into RUN_DIR instead of making them
# (their stages are then skipped and not in the wall time; say so next to the number).
#
# Stages, each an `ovkd` command a user would type:
#   ovkd data synth --preset P                       -> RUN/data (reused if the preset matches)
#   ovkd teacher pretrain --preset P                 -> RUN/teacher (the teacher CLI's own preset,
#                                                       no overrides; reused if present)
#   ovkd train segmenter --config C --no-eval        -> RUN/segmenter, RUN/eval/seg_teacher.json
#   ovkd predict --task seg --classes <vocabulary>   -> RUN/eval/seg_pred/*.png
#   ovkd eval seg --vocab RUN/data/vocab.toml        -> RUN/eval/seg.json (seen/unseen mIoU, hIoU)
# then the same train/predict/eval for the ablation rows under RUN/ablation/ (sharing RUN/cache):
# lseg = LSeg alone (no pseudo-labels, no self-training), and the self-training row the main run
# is not: when the config self-trains (distill.self_train.after_step set and enabled), the main
# run is "+ self-training" and ablation/pseudo is "+ teacher pseudo-labels" without it; when it
# does not (configs/segmenter/ov_shapes.toml since session 5), the main run is "+ pseudo-labels"
# and ablation/self_train switches self-training on. --ablation-only runs just those rows
# against an existing main run (for a timed main run with --no-ablation first). The table goes
# to stdout and RUN/eval/ablation.md. RUN/time.txt holds the wall time of the main experiment
# (data to RUN/eval/seg.json, build excluded, ablation excluded); RUN/stages.txt each stage's
# seconds (appended to by --ablation-only).
# C is configs/segmenter/ov_shapes.toml (ov_shapes_quick.toml for --preset quick); --set
# overrides it for every row. Delete RUN_DIR for a run from nothing. OVKD=path runs that binary
# instead of building this checkout's.
set -euo pipefail

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
RUN=$1; shift
PRESET=default
SETS=()
ABLATION=1
DATA_IN=${DATA:-}
TEACHER_IN=${TEACHER:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --preset) PRESET=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    --no-ablation) ABLATION=0; shift ;;
    --ablation-only) ABLATION=2; shift ;;
    --data) DATA_IN=$2; shift 2 ;;
    --teacher) TEACHER_IN=$2; shift 2 ;;
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
# OVKD=path runs that binary instead of building this checkout's (a copy taken right after a
# build is safe from other worktrees sharing the build directory).
if [[ -z ${OVKD:-} ]]; then
  cargo build --release --quiet -p ovkd
  OVKD="$ROOT/target/release/ovkd"
fi
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
LOG="$RUN/bench.log"
if [[ $ABLATION != 2 ]]; then
  : > "$LOG"
  : > "$RUN/stages.txt"
fi

now() { date +%s.%N; }
stage() {  # stage NAME CMD...: runs CMD, logs it, records its seconds
  local name=$1; shift
  local t
  t=$(now)
  echo "+ $*" >> "$LOG"
  "$@" 2>&1 | tee -a "$LOG" | grep -v '^\s*$' | sed "s/^/[$name] /" >&2
  printf '%s %.1f\n' "$name" "$(echo "$(now) - $t" | bc)" >> "$RUN/stages.txt"
}

for pair in "data:$DATA_IN" "teacher:$TEACHER_IN"; do
  name=${pair%%:*} src=${pair#*:}
  if [[ -n $src ]]; then
    [[ -d $src ]] || { echo "--$name $src: not a folder" >&2; exit 2; }
    rm -rf "${RUN:?}/$name"
    ln -sfn "$(cd "$src" && pwd)" "$RUN/$name"
    echo "using $src as $RUN/$name" >&2
  fi
done

T0=$(now)
if [[ -f "$RUN/data/meta.json" ]] && grep -q "\"preset\": *\"$PRESET\"" "$RUN/data/meta.json"; then
  echo "reusing $RUN/data" >&2
else
  rm -rf "$RUN/data"
  stage data "$OVKD" data synth --out "$RUN/data" --preset "$PRESET"
fi
if [[ -f "$RUN/teacher/model.safetensors" ]]; then
  echo "reusing $RUN/teacher" >&2
else
  stage teacher "$OVKD" teacher pretrain --data "$RUN/data" --out "$RUN/teacher" --preset "$PRESET"
fi

# The segmenter embeds into the teacher's joint space; the class list comes from the
# vocabulary, in id order (label k = the k-th class), synonyms joined by '|' unless the run's
# resolved config says `teacher.synonyms = false` (prediction embeds the names training did).
read -r EMBED_DIM < <(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["projection_dim"])' "$RUN/teacher/config.json")
class_list() {  # class_list RUN_CONFIG: prints the number of labels and the --classes argument
  python3 - "$RUN/data/vocab.toml" "$1" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    classes = sorted(tomllib.load(f)["class"], key=lambda c: c["id"])
with open(sys.argv[2], "rb") as f:
    synonyms = tomllib.load(f).get("teacher", {}).get("synonyms", True)
ids = [c["id"] for c in classes]
if ids != list(range(1, len(ids) + 1)):
    sys.exit(f"{sys.argv[1]}: class ids must be 1..K for label PNGs, got {ids}")
names = [[c["name"], *(c.get("synonyms", []) if synonyms else [])] for c in classes]
print(len(ids) + 1, ",".join("|".join(n) for n in names))
EOF
}
COMMON=(--set "segmenter.embed_dim=$EMBED_DIM" --set "data.root=$RUN/data" --set "teacher.path=$RUN/teacher")

# experiment NAME DIR [--set ...]: train into DIR/segmenter, predict the val images, score them.
experiment() {
  local name=$1 dir=$2; shift 2
  mkdir -p "$dir/eval"
  [[ "$dir" == "$RUN" ]] || ln -sfn "$RUN/cache" "$dir/cache"
  rm -rf "$dir/segmenter" "$dir/eval/seg_pred"
  stage "train-$name" "$OVKD" train segmenter --config "$CONFIG" --run "$dir" --quiet --no-eval \
    "${COMMON[@]}" "${SETS[@]}" "$@"
  local num_classes classes
  read -r num_classes classes < <(class_list "$dir/segmenter/config.toml")
  stage "predict-$name" "$OVKD" predict --task seg --classes "$classes" --checkpoint "$dir" \
    --out "$dir/eval/seg_pred" "$RUN"/data/val/images/*.png
  stage "eval-$name" "$OVKD" eval seg --gt "$RUN/data/val/semantic" --pred "$dir/eval/seg_pred" \
    --num-classes "$num_classes" --vocab "$RUN/data/vocab.toml" --out "$dir/eval/seg.json"
}

mkdir -p "$RUN/cache"
if [[ $ABLATION != 2 ]]; then
  experiment full "$RUN"
  printf '%.1f\n' "$(echo "$(now) - $T0" | bc)" > "$RUN/time.txt"
fi
[[ -f "$RUN/segmenter/config.toml" ]] || { echo "$RUN: no main run to compare with" >&2; exit 2; }
# Whether the main run self-trained (its resolved config).
SELF_TRAINS=$(python3 - "$RUN/segmenter/config.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    st = tomllib.load(f).get("distill", {}).get("self_train", {})
print(int(st.get("enabled", True) and st.get("after_step") is not None))
EOF
)
if [[ $ABLATION != 0 ]]; then
  T1=$(now)
  experiment lseg "$RUN/ablation/lseg" \
    --set distill.pseudo.enabled=false --set distill.self_train.enabled=false
  if [[ $SELF_TRAINS == 1 ]]; then
    experiment pseudo "$RUN/ablation/pseudo" --set distill.self_train.enabled=false
  else
    experiment self_train "$RUN/ablation/self_train" --set distill.self_train.enabled=true
  fi
  printf '%.1f\n' "$(echo "$(now) - $T1" | bc)" > "$RUN/ablation/time.txt"
fi

python3 - "$RUN" "$PRESET" "$SELF_TRAINS" <<'EOF' | tee "$RUN/eval/ablation.md"
import json, sys, os
run, preset, self_trains = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def load(*parts):
    p = os.path.join(run, *parts)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)
rows = [
    ("teacher zero-shot (MaskCLIP, no training)", load("eval", "seg_teacher.json")),
    ("LSeg alone", load("ablation", "lseg", "eval", "seg.json")),
    ("+ teacher pseudo-labels (distill.pseudo.from)",
     load("ablation", "pseudo", "eval", "seg.json") if self_trains else load("eval", "seg.json")),
    ("+ self-training",
     load("eval", "seg.json") if self_trains else load("ablation", "self_train", "eval", "seg.json")),
]
print(f"(main run: {'+ self-training' if self_trains else '+ teacher pseudo-labels'})\n")
pct = lambda x: "-" if x is None else f"{100 * x:.1f}"
print(f"OV-Shapes ({preset}), run {run}\n")
print("| model | mIoU | seen mIoU | unseen mIoU | hIoU |")
print("|---|---:|---:|---:|---:|")
for name, r in rows:
    if r is not None:
        print(f"| {name} | {pct(r['mIoU'])} | {pct(r.get('seen_mIoU'))} | "
              f"{pct(r.get('unseen_mIoU'))} | {pct(r.get('hIoU'))} |")
p = load("segmenter", "pseudo_labels.json")
if p:
    print(f"\npseudo-labels: train coverage {pct(p['train_coverage'])}%, "
          f"val (novel hidden) coverage {pct(p['val_coverage'])}%, "
          f"precision {pct(p['val_precision'])}%")
with open(os.path.join(run, "stages.txt")) as f:
    stages = ", ".join(f"{l.split()[0]} {l.split()[1]} s" for l in f if l.strip())
with open(os.path.join(run, "time.txt")) as f:
    print(f"\nwall time of the main experiment {f.read().strip()} s; stages: {stages}")
EOF
