"""Compare the 12 COCO statistics of several JSON files ({"stats": {...}}).

Usage: python3 bench/eval_compare_stats.py REF.json OTHER.json [OTHER.json ...]
Prints, per file, the largest absolute difference from REF and whether every statistic is
bit-identical; exits 1 if any differs by more than 1e-12.
"""
import json
import sys

names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
ref = json.load(open(sys.argv[1]))["stats"]
bad = False
for path in sys.argv[2:]:
    s = json.load(open(path))["stats"]
    diffs = [abs(s[n] - ref[n]) for n in names]
    same = all(s[n] == ref[n] for n in names)
    print("%-40s max |diff| %.3g  %s" % (path, max(diffs), "identical" if same else "differs"))
    bad |= max(diffs) > 1e-12
print("reference stats:", " ".join("%s=%.6f" % (n, ref[n]) for n in names))
sys.exit(1 if bad else 0)
