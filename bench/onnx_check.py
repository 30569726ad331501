#!/usr/bin/env python3
"""Runs an ovkd ONNX export in onnxruntime and compares every output with ovkd's own.

    python3 bench/onnx_check.py MODEL.onnx INPUTS.safetensors EXPECTED.safetensors [--json OUT]

INPUTS holds one tensor per graph input (by name), EXPECTED one per graph output that ovkd
computed with its Burn model for the same inputs (`ovkd export onnx ... --check-inputs`
writes both next to the .onnx). Prints, per output, the shape, the largest absolute
difference, the largest |expected| and the difference relative to it; float outputs pass when
max|diff| <= ATOL + RTOL * max|expected| (float32 through two different kernel libraries),
int64 outputs (label maps) when at most MAX_INT_MISMATCH of the entries differ (an argmax can
flip where two logits tie to float precision). Exits 1 when an output fails, 2 on a setup
problem.
"""

import argparse
import json
import sys

ATOL = 1e-4
RTOL = 1e-4
MAX_INT_MISMATCH = 1e-3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("expected")
    ap.add_argument("--json", help="also write the per-output numbers here")
    args = ap.parse_args()
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - environment
        print(f"onnx_check: missing Python package: {e}", file=sys.stderr)
        return 2

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    inputs = load_file(args.inputs)
    expected = load_file(args.expected)
    feed = {}
    for i in sess.get_inputs():
        if i.name not in inputs:
            print(f"onnx_check: {args.inputs} has no tensor `{i.name}`", file=sys.stderr)
            return 2
        feed[i.name] = inputs[i.name]
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, feed)))
    missing = [n for n in expected if n not in got]
    if missing:
        print(f"onnx_check: the graph has no output(s) {missing}", file=sys.stderr)
        return 2

    rows = []
    ok = True
    print(f"{'output':<22} {'shape':<22} {'max|diff|':>11} {'max|ref|':>10} {'rel':>10}  ok")
    for name in names:
        if name not in expected:
            continue
        a, b = got[name], expected[name]
        if a.shape != b.shape:
            print(f"{name:<22} shape {a.shape} vs expected {b.shape}")
            ok = False
            rows.append({"output": name, "ok": False, "error": "shape"})
            continue
        if np.issubdtype(b.dtype, np.integer):
            mism = float(np.mean(a != b)) if b.size else 0.0
            good = mism <= MAX_INT_MISMATCH
            print(f"{name:<22} {str(list(b.shape)):<22} {'mismatch':>11} {mism:>10.2e} {'':>10}  {'yes' if good else 'NO'}")
            rows.append({"output": name, "shape": list(b.shape), "mismatch": mism, "ok": good})
        else:
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if b.size else 0.0
            ref = float(np.max(np.abs(b))) if b.size else 0.0
            rel = diff / max(ref, 1e-30)
            good = bool(np.isfinite(a).all()) and diff <= ATOL + RTOL * ref
            print(f"{name:<22} {str(list(b.shape)):<22} {diff:>11.3e} {ref:>10.3e} {rel:>10.2e}  {'yes' if good else 'NO'}")
            rows.append({"output": name, "shape": list(b.shape), "max_abs_diff": diff,
                         "max_abs_ref": ref, "rel": rel, "ok": good})
        ok &= good
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}: {'PASS' if ok else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ok": ok, "outputs": rows, "onnxruntime": ort.__version__}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
