"""Run bench/reference/time_cocoeval.py unchanged and also write the 12 statistics it computed.

Usage: python3 bench/eval_reference_stats.py {pycocotools|faster} GT.json DETS.json OUT_STATS.json
The reference script prints its own timing line (load, eval, total); this wrapper adds nothing
to what it times, then dumps `E.stats` as JSON for the identical-stats check in eval_speed.sh.
"""
import json
import os
import runpy
import sys

which, gt, dt, out = sys.argv[1:5]
script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "time_cocoeval.py")
sys.argv = [script, which, gt, dt]
g = runpy.run_path(script, run_name="__main__")
names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
json.dump({"stats": dict(zip(names, map(float, g["E"].stats))), "total_s": g["t2"] - g["t0"]},
          open(out, "w"), indent=1)
