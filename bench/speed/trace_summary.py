#!/usr/bin/env python3
"""Summarise a Chrome trace of PyTorch's profiler: ovkd-speed's `--profile` or
bench/speed/reference.py's `--profile`, one or several side by side.

    python3 bench/speed/trace_summary.py --steps 5 ours.json reference.json

For each trace, per timed step: the wall span, the time the GPU was busy (the union of kernels,
copies and fills) and idle, kernel launches, host-device copies by direction, the CUDA calls
that wait for the device (synchronisations and blocking copies), then the kernels and the host
operators that take the most time. Where the GPU is idle, the host is the bottleneck.
"""

import argparse
import collections
import json


def load(path):
    with open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def union(intervals):
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def short(name, n=90):
    return name if len(name) <= n else name[: n - 3] + "..."


def summarise(path, steps, top):
    ev = load(path)
    if not ev:
        print(f"{path}: no complete events")
        return
    t0 = min(e["ts"] for e in ev)
    t1 = max(e["ts"] + e["dur"] for e in ev)
    span = (t1 - t0) / 1e3
    gpu = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    kernels = [e for e in ev if e.get("cat") == "kernel"]
    copies = [e for e in ev if e.get("cat") == "gpu_memcpy"]
    runtime = [e for e in ev if e.get("cat") == "cuda_runtime"]
    ops = [e for e in ev if e.get("cat") == "cpu_op"]
    busy = union([(e["ts"], e["ts"] + e["dur"]) for e in gpu]) / 1e3
    per = 1.0 / steps
    print(f"== {path}: per step of {steps}")
    print(f"  wall span {span * per:9.2f} ms   GPU busy {busy * per:9.2f} ms   "
          f"GPU idle {(span - busy) * per:9.2f} ms")
    print(f"  kernels {len(kernels) * per:8.0f}   kernel time {sum(e['dur'] for e in kernels) / 1e3 * per:9.2f} ms   "
          f"host operators {len(ops) * per:8.0f}")
    by_dir = collections.defaultdict(lambda: [0, 0.0, 0])
    for e in copies:
        kind = e.get("name", "").replace("Memcpy ", "")
        b = by_dir[kind]
        b[0] += 1
        b[1] += e["dur"] / 1e3
        b[2] += int(e.get("args", {}).get("bytes", 0))
    for kind, (n, t, nb) in sorted(by_dir.items()):
        print(f"  copies {kind:10s} {n * per:7.1f} x  {t * per:8.2f} ms  {nb * per / 1e6:9.2f} MB")
    waits = collections.defaultdict(lambda: [0, 0.0])
    for e in runtime:
        name = e.get("name", "")
        if "Synchronize" in name or name in ("cudaMemcpy", "cudaMemcpyAsync", "cuMemcpyDtoH_v2",
                                             "cudaStreamWaitEvent", "cudaEventSynchronize"):
            w = waits[name]
            w[0] += 1
            w[1] += e["dur"] / 1e3
    for name, (n, t) in sorted(waits.items(), key=lambda kv: -kv[1][1]):
        print(f"  host waits {name:28s} {n * per:7.1f} x  {t * per:8.2f} ms")
    agg = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        a = agg[e["name"]]
        a[0] += 1
        a[1] += e["dur"] / 1e3
    ranges = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for e in ev:
        if e.get("cat") == "user_annotation":
            r = ranges[e["name"]]
            r[0] += 1
            r[1] += e["dur"] / 1e3
            # GPU time inside the range: what the device did while the host was there.
            r[2] += union([(max(s, e["ts"]), min(t, e["ts"] + e["dur"]))
                           for s, t in ((g["ts"], g["ts"] + g["dur"]) for g in gpu)
                           if s < e["ts"] + e["dur"] and t > e["ts"]]) / 1e3
    if ranges:
        print("  named host ranges (ms a step, of which GPU busy, count a step):")
        for name, (n, t, b) in sorted(ranges.items(), key=lambda kv: -kv[1][1]):
            print(f"    {t * per:8.2f} {b * per:8.2f} {n * per:6.1f}  {name}")
    print(f"  top kernels (ms a step, count a step):")
    for name, (n, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"    {t * per:8.2f} {n * per:6.1f}  {short(name)}")
    # Host operators by self time: an operator's time minus that of the operators nested in it
    # (same thread), which is where the host itself spends time.
    by_tid = collections.defaultdict(list)
    for e in ops:
        by_tid[(e.get("pid"), e.get("tid"))].append(e)
    self_t = collections.defaultdict(lambda: [0, 0.0])
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                stack[-1]["_child"] = stack[-1].get("_child", 0.0) + e["dur"]
            stack.append(e)
        for e in evs:
            s = self_t[e["name"]]
            s[0] += 1
            s[1] += (e["dur"] - e.get("_child", 0.0)) / 1e3
    print(f"  top host operators by self time (ms a step, count a step):")
    for name, (n, t) in sorted(self_t.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"    {t * per:8.2f} {n * per:6.1f}  {short(name)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("traces", nargs="+")
    p.add_argument("--steps", type=int, default=1, help="timed steps the traces hold")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    for path in args.traces:
        summarise(path, args.steps, args.top)


if __name__ == "__main__":
    main()
