#!/usr/bin/env bash
# Speed of `ovkd eval det` against pycocotools and faster-coco-eval, side by side in one run.
#
# The case: 5,000 images, 80 classes, ~500,000 detections, made with
#   python3 bench/reference/make_coco_case.py OUT 3 --big
# Each tool reads the two JSON files and computes the 12 COCO statistics. ovkd is timed end to
# end as a process (start, JSON in, summary out, exit) with /usr/bin/time -v, best of RUNS runs;
# the Python tools by bench/reference/time_cocoeval.py (load + evaluate, which leaves out the
# interpreter's start and imports) and by /usr/bin/time for the whole process. The statistics of
# all three must be identical (checked to 1e-12; bit-identity is reported).
#
# Targets (issue 9): ovkd <= 1/3 of faster-coco-eval's time, <= 1/20 of pycocotools', peak RSS
# < 1.5 GiB.
#
# Usage: bench/eval_speed.sh            (OUT=target/eval_bench RUNS=3 by default; NO_BUILD=1)
# Needs: pip install pycocotools faster-coco-eval numpy
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/eval_bench}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
CASE="$OUT/big"
if [ ! -f "$CASE/dets.json" ]; then
    echo "making the case in $CASE ..."
    python3 bench/reference/make_coco_case.py "$OUT" 3 --big
fi
# NO_BUILD=1 reuses an existing release binary (the shared build directory may be busy).
if [ -z "${NO_BUILD:-}" ] || [ ! -x target/release/ovkd ]; then
    cargo build --release -p ovkd
fi
BIN=target/release/ovkd

# wall seconds and peak RSS (MiB) from a /usr/bin/time -v log
wall_s() {
    awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$1"
}
rss_mib() { awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$1"; }

best_wall=""
best_rss=0
for i in $(seq 1 "$RUNS"); do
    /usr/bin/time -v "$BIN" eval det --gt "$CASE/gt.json" --dets "$CASE/dets.json" \
        --out "$OUT/ovkd.json" >"$OUT/ovkd_stdout.txt" 2>"$OUT/time_ovkd_$i.txt"
    w=$(wall_s "$OUT/time_ovkd_$i.txt")
    r=$(rss_mib "$OUT/time_ovkd_$i.txt")
    echo "ovkd run $i: ${w}s, peak RSS ${r} MiB"
    if [ -z "$best_wall" ] || awk "BEGIN { exit !($w < $best_wall) }"; then best_wall=$w; fi
    if [ "$r" -gt "$best_rss" ]; then best_rss=$r; fi
done

declare -A ref_total ref_wall ref_rss
for tool in faster pycocotools; do
    echo "running $tool ..."
    /usr/bin/time -v python3 bench/eval_reference_stats.py "$tool" "$CASE/gt.json" \
        "$CASE/dets.json" "$OUT/$tool.json" 2>"$OUT/time_$tool.txt" | tee "$OUT/${tool}_stdout.txt"
    ref_total[$tool]=$(python3 -c "import json; print('%.2f' % json.load(open('$OUT/$tool.json'))['total_s'])")
    ref_wall[$tool]=$(wall_s "$OUT/time_$tool.txt")
    ref_rss[$tool]=$(rss_mib "$OUT/time_$tool.txt")
done

echo
echo "identical statistics (reference: pycocotools):"
python3 bench/eval_compare_stats.py "$OUT/pycocotools.json" "$OUT/faster.json" "$OUT/ovkd.json"

echo
echo "case: $(python3 -c "import json; g = json.load(open('$CASE/gt.json')); print(len(g['images']), 'images,', len(g['categories']), 'categories,', len(g['annotations']), 'annotations')"), $(python3 -c "import json; print(len(json.load(open('$CASE/dets.json'))))") detections"
echo "machine: $(nproc) cores, $(lscpu | awk -F': *' '/Model name/ {print $2; exit}'), $(date -u +%Y-%m-%d)"
echo
printf '| tool | time (s) | process wall (s) | peak RSS (MiB) | ovkd speed-up |\n'
printf '|---|---:|---:|---:|---:|\n'
printf '| ovkd eval det (best of %s) | %.2f | %.2f | %s | 1 |\n' "$RUNS" "$best_wall" "$best_wall" "$best_rss"
for tool in faster pycocotools; do
    name=$([ "$tool" = faster ] && echo "faster-coco-eval" || echo "pycocotools")
    ratio=$(awk "BEGIN { printf \"%.1fx\", ${ref_total[$tool]} / $best_wall }")
    printf '| %s | %s | %.2f | %s | %s |\n' "$name" "${ref_total[$tool]}" "${ref_wall[$tool]}" \
        "${ref_rss[$tool]}" "$ratio"
done
echo
echo "time (s): ovkd = whole process; Python tools = time_cocoeval.py's load + eval total"
echo "targets: >= 3x faster-coco-eval, >= 20x pycocotools, peak RSS < 1536 MiB"
awk "BEGIN {
    ok = ($best_wall * 3 <= ${ref_total[faster]}) && ($best_wall * 20 <= ${ref_total[pycocotools]}) && ($best_rss < 1536);
    print (ok ? \"targets: met\" : \"targets: NOT met\"); exit !ok }"
