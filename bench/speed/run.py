#!/usr/bin/env python3
"""Driver of bench/speed.sh: runs each workload in ovkd (`ovkd-speed`) and in PyTorch
(`reference.py`) alternately, round after round, on the same device with the same thread
count, takes the median step time of each side over all rounds, and writes

    [{"name", "unit", "ours", "reference", "ratio", "target", "ours_ms", "reference_ms"}]

(ratio = ours / reference, higher is better; `*_ms` are the medians of each phase) and prints
the table. Interleaving the two sides spreads the noise of a shared machine over both.

A row whose command fails is kept as `{"name", "unit", "error"}` and the suite goes on to the
next row (the exit status is then 1); the JSON is rewritten after every row, so a run that is
killed part-way (a device session's time limit) still leaves the rows it finished.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# name, workload args, units per step, unit, heavy (fewer steps), devices ("cpu": cpu and
# tch-cpu, "gpu": tch-cuda, "all").
ROWS = [
    ("smallnet_128px_bs8", ["smallnet", "--image", "128", "--batch", "8"], 8, "img/s", False, "all"),
    ("smallnet_256px_bs8", ["smallnet", "--image", "256", "--batch", "8"], 8, "img/s", False, "all"),
    ("smallnet_512px_bs32", ["smallnet", "--image", "512", "--batch", "32"], 32, "img/s", False, "gpu"),
    # OV-Shapes' default: 128 px images, batch 8, 10 classes, the 64-d built-in teacher.
    ("detector_tiny_128px_bs8", ["detector", "--preset", "tiny", "--image", "128", "--batch", "8",
                                 "--boxes", "4", "--classes", "10", "--embed-dim", "64"],
     8, "img/s", False, "all"),
    # torchvision's weights=None builds trainable batch norm: ours the same (--norm batch).
    ("detector_r50fpn_512px_bs2", ["detector", "--preset", "resnet50_fpn", "--image", "512",
                                   "--batch", "2", "--boxes", "4", "--classes", "90",
                                   "--embed-dim", "512", "--norm", "batch"],
     2, "img/s", True, "cpu"),
    ("detector_r50fpn_512px_bs8", ["detector", "--preset", "resnet50_fpn", "--image", "512",
                                   "--batch", "8", "--boxes", "4", "--classes", "90",
                                   "--embed-dim", "512", "--norm", "batch"],
     8, "img/s", False, "gpu"),
    ("detector_r50fpn_800px_bs8", ["detector", "--preset", "resnet50_fpn", "--image", "800",
                                   "--batch", "8", "--boxes", "4", "--classes", "90",
                                   "--embed-dim", "512", "--norm", "batch"],
     8, "img/s", False, "gpu"),
    # OV-Shapes' default segmenter batch (16) at 128 px.
    ("segmenter_128px_bs16", ["segmenter", "--image", "128", "--batch", "16", "--classes", "10"],
     16, "img/s", False, "all"),
    # 64 crops (32 boxes x the 1x and 1.5x views), 32 per forward; the GPU row 1024 x 256.
    ("teacher_vitb32_regions", ["teacher", "--crops", "64", "--batch", "32"], 64, "crops/s",
     True, "cpu"),
    ("teacher_vitb32_regions", ["teacher", "--crops", "1024", "--batch", "256"], 1024, "crops/s",
     False, "gpu"),
    # The same in half precision on both sides (transformers: `.to(torch.bfloat16)`); ovkd also
    # reports the lowest cosine of a crop's embedding to its float32 model's (> 0.999 asked).
    # On CPU only bfloat16 (float16 matmuls there are two orders of magnitude slower).
    ("teacher_vitb32_regions_bf16", ["teacher", "--crops", "64", "--batch", "32",
                                     "--dtype", "bf16"], 64, "crops/s", True, "cpu"),
    ("teacher_vitb32_regions_bf16", ["teacher", "--crops", "1024", "--batch", "256",
                                     "--dtype", "bf16"], 1024, "crops/s", False, "gpu"),
    ("teacher_vitb32_regions_fp16", ["teacher", "--crops", "1024", "--batch", "256",
                                     "--dtype", "fp16"], 1024, "crops/s", False, "gpu"),
]

# Issue 8's targets: ratio to PyTorch on the same device, keyed by (device kind, row name) where
# the issue names sizes (on the GPU: the small net at 512 px, the detector at 512 and 800 px),
# else by (device kind, workload). None for the detector, segmenter or teacher on burn-flex.
TARGETS = {
    ("cpu", "smallnet"): 0.5,
    ("tch-cpu", "smallnet"): 1.0,
    ("tch-cpu", "detector"): 0.8,
    ("tch-cuda", "smallnet_512px_bs32"): 0.9,
    ("tch-cuda", "detector_r50fpn_512px_bs8"): 0.8,
    ("tch-cuda", "detector_r50fpn_800px_bs8"): 0.8,
    ("tch-cuda", "teacher"): 1.0,
}


def target(device, row, workload):
    """The issue's target ratio for this row on this device, if it sets one."""
    k = kind(device)
    return TARGETS.get((k, row), TARGETS.get((k, workload)))


def kind(device):
    return "tch-cuda" if device.startswith("tch-cuda") else device


def torch_device(device):
    if device.startswith("tch-cuda"):
        return "cuda:" + (device.split(":", 1)[1] if ":" in device else "0")
    return "cpu"


class RowFailed(Exception):
    """One command of a row exited non-zero or printed no JSON."""


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stderr)
        tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RowFailed(f"exit {out.returncode}: {os.path.basename(cmd[0])} "
                        f"{' '.join(cmd[1:])}: {tail[0]}")
    return json.loads(lines[-1])


def write_json(results, path):
    """Writes `results` to `path` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def median_phases(samples):
    return {k: round(statistics.median(v), 3) for k, v in samples.items() if v}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", required=True, help="cpu, tch-cpu or tch-cuda:N")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--bin", required=True, help="the ovkd-speed binary")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--heavy-steps", type=int, default=2,
                   help="timed steps of the heavy rows (R50-FPN, teacher on CPU), warm-up 1")
    p.add_argument("--rows", default="", help="comma-separated row names (default: all for the device)")
    p.add_argument("--baseline", action="store_true",
                   help="also time ovkd with Burn's own convolution (rows *_burnconv) and "
                        "with Burn's AdamW (rows *_burnadamw)")
    args = p.parse_args()

    gpu = args.device.startswith("tch-cuda")
    rows = [r for r in ROWS if r[5] == "all" or r[5] == ("gpu" if gpu else "cpu")]
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [r for r in rows if r[0] in wanted]

    env = dict(os.environ)
    scratch = tempfile.mkdtemp(prefix="ovkd-speed-")
    results = []
    for name, workload, per_step, unit, heavy, _ in rows:
        steps, warmup = (args.heavy_steps, min(args.warmup, 1)) if heavy else (args.steps, args.warmup)
        common = ["--steps", str(steps), "--warmup", str(warmup)]
        # The teacher's reference encodes the very crops ovkd encoded.
        crops = os.path.join(scratch, "crops.safetensors")
        ours_extra, ref_extra = ([], [])
        if workload[0] == "teacher":
            ours_extra, ref_extra = ["--dump", crops], ["--crops-file", crops]
        # (ovkd-speed's global options, the workload's options, row name, whether the issue's
        # target applies): the baseline rows swap in Burn's convolution or Burn's AdamW.
        variants = [([], [], name, True)]
        if args.baseline and workload[0] == "smallnet":
            variants.append(([], ["--conv", "burn"], name + "_burnconv", False))
            variants.append((["--adamw", "burn"], [], name + "_burnadamw", False))
        for glob, local, row_name, targeted in variants:
            ours = {"forward": [], "backward": [], "optim": [], "total": []}
            ref = {"forward": [], "backward": [], "optim": [], "total": []}
            cosines = []
            try:
                for _ in range(args.rounds):
                    o = run_json([args.bin, "--device", args.device] + common + glob + workload
                                 + local + ours_extra, env)
                    r = run_json([sys.executable, os.path.join(HERE, "reference.py"),
                                  "--device", torch_device(args.device), "--threads",
                                  str(args.threads)] + common + workload + ref_extra, env)
                    if "min_cosine_vs_f32" in o:
                        cosines.append(o["min_cosine_vs_f32"])
                    for k in ours:
                        ours[k] += o["times_ms"][k]
                        ref[k] += r["times_ms"][k]
            except RowFailed as e:
                results.append({"name": row_name, "unit": unit, "error": str(e)})
                write_json(results, args.out)
                print(f"  {row_name}: FAILED {e}", file=sys.stderr, flush=True)
                continue
            ours_ms, ref_ms = median_phases(ours), median_phases(ref)
            ours_v = per_step * 1e3 / ours_ms["total"]
            ref_v = per_step * 1e3 / ref_ms["total"]
            results.append({
                "name": row_name,
                "unit": unit,
                "ours": round(ours_v, 2),
                "reference": round(ref_v, 2),
                "ratio": round(ours_v / ref_v, 3),
                # The *_burnconv / *_burnadamw rows are "before" measurements: no target.
                "target": target(args.device, name, workload[0]) if targeted else None,
                "ours_ms": ours_ms,
                "reference_ms": ref_ms,
            })
            if cosines:
                results[-1]["min_cosine_vs_f32"] = round(min(cosines), 6)
            write_json(results, args.out)
            print(f"  {row_name}: ours {ours_ms} | reference {ref_ms}", file=sys.stderr, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    write_json(results, args.out)

    print(f"device {args.device}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps "
          f"({args.heavy_steps} for the heavy rows)")
    print("| name | unit | ours | reference | ratio | target | fwd/bwd/opt ms ours | ... reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | {r['unit']} | | | | FAILED: {r['error']} | | |")
            continue
        t = r["target"]
        status = "(before)" if r["name"].endswith(("_burnconv", "_burnadamw")) else "" if t is None else (f"{t}x met" if r["ratio"] >= t
                                       else f"{t}x missed by {t - r['ratio']:.2f}")
        ph = lambda m: f"{m['forward']:.1f} / {m['backward']:.1f} / {m['optim']:.1f}"
        if "min_cosine_vs_f32" in r:
            status += f" (cosine to fp32 >= {r['min_cosine_vs_f32']:.5f})"
        print(f"| {r['name']} | {r['unit']} | {r['ours']:.3g} | {r['reference']:.3g} | "
              f"{r['ratio']:.2f}x | {status} | {ph(r['ours_ms'])} | {ph(r['reference_ms'])} |")
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
