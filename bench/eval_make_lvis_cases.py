"""Make LVIS-style detection cases and the numbers the `lvis` package (LVISEval, bbox) gives.

Usage: python3 bench/eval_make_lvis_cases.py OUT_DIR [SEED]
Needs: pip install lvis numpy   (lvis 0.5.3 uses `np.float`, removed in numpy 1.24; it is
restored below before evaluating.)

Each case folder gets gt.json (LVIS fields: images with neg_category_ids and
not_exhaustive_category_ids, categories with frequency), dets.json (COCO results format) and
expected.json: the 13 statistics LVISEval.results holds, and per category AP@[.5:.95] and AP50
over all areas (mean of the valid entries of eval["precision"][:, :, k, 0], -1 without GT).

The cases exercise what the federated rules do: more than 300 detections on an image (with
tied scores at the cut), detections of categories neither annotated nor negative on an image
(dropped), unmatched detections of not-exhaustive categories (ignored), annotations and
detections with zero area (dropped), annotations with `ignore`, and empty frequency bins.
"""
import contextlib
import io
import json
import os
import sys

import numpy as np

if not hasattr(np, "float"):
    np.float = float  # lvis 0.5.3 predates numpy 1.24

from lvis import LVIS, LVISEval  # noqa: E402


def r3(x):
    return float(round(float(x), 3))


def make_case(rng, n_img, n_cat, gt_per_img, det_per_img, freqs="rcf", ignore_p=0.0,
              zero_area_p=0.03, heavy_imgs=0, heavy_dets=0):
    cat_ids = sorted(int(c) for c in rng.choice(np.arange(1, 4 * n_cat + 1), n_cat, replace=False))
    cats = [{"id": c, "name": f"c{c}", "frequency": str(rng.choice(list(freqs)))} for c in cat_ids]
    images, anns, dets = [], [], []
    aid = 1
    for i in range(n_img):
        W, H = int(rng.integers(64, 640)), int(rng.integers(64, 640))
        iid = int(i * 5 + 2)
        gts = []
        present = set()
        for _ in range(int(rng.poisson(gt_per_img))):
            s = float(np.exp(rng.uniform(np.log(4), np.log(min(W, H)))))
            w = max(1.0, s * rng.uniform(0.5, 1.5))
            h = max(1.0, s * rng.uniform(0.5, 1.5))
            x = rng.uniform(0, max(1, W - w))
            y = rng.uniform(0, max(1, H - h))
            c = int(rng.choice(cat_ids))
            area = 0.0 if rng.random() < zero_area_p else r3(w * h * rng.uniform(0.6, 1.0))
            ann = {"id": aid, "image_id": iid, "category_id": c,
                   "bbox": [r3(x), r3(y), r3(w), r3(h)], "area": area}
            if ignore_p and rng.random() < ignore_p:
                ann["ignore"] = 1
            anns.append(ann)
            gts.append((r3(x), r3(y), r3(w), r3(h), c))
            present.add(c)
            aid += 1
        absent = [c for c in cat_ids if c not in present]
        neg = sorted(int(c) for c in rng.choice(absent, min(len(absent), int(rng.integers(0, 5))), replace=False)) if absent else []
        nel = sorted(c for c in present if rng.random() < 0.3)
        images.append({"id": iid, "width": W, "height": H, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": nel})
        nd = heavy_dets if i < heavy_imgs else int(rng.poisson(det_per_img))
        for _ in range(nd):
            if gts and rng.random() < 0.55:
                x, y, w, h, c = gts[int(rng.integers(len(gts)))]
                j = rng.normal(0, 0.12, 4)
                x, y = x + j[0] * w, y + j[1] * h
                w, h = max(0.5, w * (1 + j[2])), max(0.5, h * (1 + j[3]))
                if rng.random() < 0.15:
                    c = int(rng.choice(cat_ids))
            else:
                w, h = rng.uniform(2, W / 2), rng.uniform(2, H / 2)
                x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
                # Mostly categories the image says something about, some it does not.
                pool = sorted(present) + neg
                c = int(rng.choice(pool)) if pool and rng.random() < 0.7 else int(rng.choice(cat_ids))
            if rng.random() < 0.02:
                w = 0.0  # zero area: dropped by the federated rules
            score = r3(rng.integers(0, 20) / 20) if rng.random() < 0.3 else r3(rng.random())
            dets.append({"image_id": iid, "category_id": c,
                         "bbox": [r3(x), r3(y), r3(w), r3(h)], "score": score})
    perm = rng.permutation(len(dets))  # results files are not grouped by image
    dets = [dets[k] for k in perm]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def evaluate(gt_path, dets_path):
    with contextlib.redirect_stdout(io.StringIO()):
        E = LVISEval(LVIS(gt_path), dets_path, iou_type="bbox")
        E.run()
    p = E.eval["precision"]  # T, R, K, A
    per_cat = {}
    for k, cid in enumerate(E.params.cat_ids):
        pk = p[:, :, k, 0]
        v = pk[pk > -1]
        p50 = p[0, :, k, 0]
        v50 = p50[p50 > -1]
        per_cat[str(cid)] = {"ap": float(v.mean()) if v.size else -1.0,
                             "ap50": float(v50.mean()) if v50.size else -1.0}
    return {"stats": {k: float(v) for k, v in E.results.items()}, "per_category": per_cat}


CASES = {
    # name: (images, categories, GT per image, detections per image, options)
    "federated": (40, 15, 5, 25, {}),
    "top300": (6, 6, 8, 0, {"heavy_imgs": 6, "heavy_dets": 340}),
    "ignore_no_rare": (25, 8, 4, 12, {"freqs": "cf", "ignore_p": 0.15}),
}

if __name__ == "__main__":
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    rng = np.random.default_rng(seed)
    for name, (n, k, g, d, opts) in CASES.items():
        gt, dets = make_case(rng, n, k, g, d, **opts)
        path = os.path.join(out, name)
        os.makedirs(path, exist_ok=True)
        json.dump(gt, open(os.path.join(path, "gt.json"), "w"))
        json.dump(dets, open(os.path.join(path, "dets.json"), "w"))
        exp = evaluate(os.path.join(path, "gt.json"), os.path.join(path, "dets.json"))
        json.dump(exp, open(os.path.join(path, "expected.json"), "w"), indent=1)
        print(name, len(gt["images"]), len(gt["annotations"]), len(dets),
              "AP %.4f APr %.4f" % (exp["stats"]["AP"], exp["stats"]["APr"]))
