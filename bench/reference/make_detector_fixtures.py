#!/usr/bin/env python3
"""Reference numbers for ovkd-detector's tests, made with torchvision on CPU.

Writes into students/detector/tests/fixtures/:
  anchors.json          torchvision.models.detection.anchor_utils.AnchorGenerator
  box_coder.json        torchvision.models.detection._utils.BoxCoder encode / decode
  matcher.json          torchvision.models.detection._utils.Matcher
  nms.json              torchvision.ops.nms / batched_nms
  ../../backbone/tests/fixtures/torchvision_keys.json
                        state-dict names and shapes of torchvision's resnet18 and of
                        fasterrcnn_resnet50_fpn's backbone (body + fpn)
  multiscale_roi_align.safetensors
                        torchvision.ops.MultiScaleRoIAlign (levels P2..P5, float64 math,
                        stored float32) and the input gradients of sum(output * grad_output)

Usage (a scratch venv; torch from PyPI or the CPU index):
  python -m venv /tmp/venv && /tmp/venv/bin/pip install torch torchvision safetensors numpy
  /tmp/venv/bin/python bench/reference/make_detector_fixtures.py
"""
import json
import math
import os
from collections import OrderedDict

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, nms

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "students", "detector", "tests", "fixtures")
g = torch.Generator().manual_seed(20240607)


def rand(*shape, lo=0.0, hi=1.0, dtype=torch.float32):
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def random_boxes(n, size=100.0, min_wh=1.0, max_wh=60.0):
    xy = rand(n, 2, lo=-5.0, hi=size)
    wh = rand(n, 2, lo=min_wh, hi=max_wh)
    return torch.cat([xy, xy + wh], 1)


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)
    print("wrote", path)


def anchors():
    cases = []
    for sizes, ratios, image, grids in [
        (((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5, (128, 128),
         [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]),
        # Odd P5 (3x5): P6 by max-pool is 2x3, and torchvision's stride is 96 // 2 = 48.
        (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5, (96, 160),
         [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]),
        # Several sizes per level, ratios that round at .5.
        (((25, 32, 45),), ((0.5, 1.0, 1.7),), (64, 48), [(16, 12)]),
    ]:
        gen = AnchorGenerator(sizes, ratios)
        images = ImageList(torch.zeros(1, 3, *image), [image])
        feats = [torch.zeros(1, 1, *gs) for gs in grids]
        a = gen(images, feats)[0]
        cases.append({
            "sizes": [list(map(float, s)) for s in sizes],
            "aspect_ratios": [list(r) for r in ratios],
            "image_size": list(image),
            "grid_sizes": [list(gs) for gs in grids],
            "anchors": a.tolist(),
        })
    dump("anchors.json", cases)


def box_coder():
    cases = []
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        refs = random_boxes(40)
        gts = random_boxes(40)
        enc = coder.encode_single(gts, refs)
        deltas = rand(40, 4, lo=-2.0, hi=2.0) * torch.tensor(weights)
        deltas[:4, 2:] = torch.tensor([[9.0, 0.0], [0.0, 30.0], [-9.0, 6.0], [25.0, 25.0]]) * weights[2]
        dec = coder.decode_single(deltas, refs)
        cases.append({
            "weights": list(weights),
            "references": refs.tolist(),
            "targets": gts.tolist(),
            "encoded": enc.tolist(),
            "deltas": deltas.tolist(),
            "decoded": dec.tolist(),
        })
    dump("box_coder.json", cases)


def matcher():
    cases = []
    for high, low, allow in [(0.7, 0.3, True), (0.5, 0.5, False), (0.7, 0.3, False)]:
        gts = random_boxes(6, max_wh=50.0)
        gts[3] = gts[1]  # duplicate ground truth: ties between rows
        preds = random_boxes(300, max_wh=60.0)
        preds[10] = gts[0]
        preds[11] = gts[0]  # two predictions tie for gt 0's best
        q = box_iou(gts, preds)
        m = Matcher(high, low, allow)(q.clone())
        cases.append({
            "high": high, "low": low, "allow_low_quality_matches": allow,
            "gt_boxes": gts.tolist(), "pred_boxes": preds.tolist(),
            "matches": m.tolist(),
        })
    dump("matcher.json", cases)


def nms_cases():
    cases = []
    for n, thr in [(200, 0.5), (300, 0.7), (150, 0.3)]:
        boxes = random_boxes(n, size=80.0, max_wh=40.0)
        scores = rand(n)
        scores[5:15] = scores[4]  # ties: visited in input order (stable sort)
        idxs = torch.randint(0, 4, (n,), generator=g)
        cases.append({
            "iou_threshold": thr,
            "boxes": boxes.tolist(), "scores": scores.tolist(), "idxs": idxs.tolist(),
            "keep": nms(boxes, scores, thr).tolist(),
            "batched_keep": batched_nms(boxes, scores, idxs, thr).tolist(),
        })
    dump("nms.json", cases)


def multiscale_roi_align():
    # Levels P2..P5 of a 256x224 padded batch of 2 images; boxes of every size so every level
    # gets some. torchvision's MultiScaleRoIAlign: aligned=False, sampling_ratio=2, 7x7.
    image_sizes = [(256, 224), (200, 180)]
    feats = OrderedDict()
    for i, s in enumerate([4, 8, 16, 32]):
        feats[str(i)] = rand(2, 3, 256 // s, 224 // s, lo=-1.0, hi=1.0, dtype=torch.float64).requires_grad_()
    boxes = [random_boxes(12, size=200.0, min_wh=2.0, max_wh=220.0).double(),
             random_boxes(9, size=160.0, min_wh=2.0, max_wh=120.0).double()]
    # Large boxes (partly outside the image, as RoIs may be) reach levels 4 and 5.
    boxes[0][:3] = torch.tensor([[10.0, 10.0, 240.0, 221.0], [-150.0, -120.0, 350.0, 330.0],
                                 [0.5, 3.25, 250.0, 245.0]], dtype=torch.float64)
    pooler = MultiScaleRoIAlign(list(feats.keys()), 7, 2)
    out = pooler(feats, boxes, image_sizes)
    grad_out = rand(*out.shape, lo=-1.0, hi=1.0, dtype=torch.float64)
    (out * grad_out).sum().backward()
    levels = pooler.map_levels(boxes)
    t = {
        "boxes0": boxes[0].float(), "boxes1": boxes[1].float(),
        "output": out.detach().float(), "grad_output": grad_out.float(),
        "levels": levels.to(torch.int64).float(),
    }
    for k, v in feats.items():
        t[f"p{int(k) + 2}"] = v.detach().float()
        t[f"grad_p{int(k) + 2}"] = v.grad.float()
    path = os.path.join(OUT, "multiscale_roi_align.safetensors")
    save_file({k: v.contiguous() for k, v in t.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    print("wrote", path)


def torchvision_backbone_keys():
    # State-dict names and shapes of torchvision's backbones, for the name mapping of
    # ovkd-backbone (students/backbone/tests/fixtures/torchvision_keys.json).
    from torchvision.models import resnet18
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    def keys(sd, drop=()):
        return {k: list(v.shape) for k, v in sd.items()
                if not k.endswith("num_batches_tracked") and not k.startswith(drop)}

    out = {
        "resnet18": keys(resnet18().state_dict(), drop=("fc.",)),
        "resnet50_fpn": keys(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.state_dict()),
    }
    path = os.path.join(OUT, "..", "..", "..", "backbone", "tests", "fixtures", "torchvision_keys.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    print("torch", torch.__version__, "torchvision", torchvision.__version__)
    anchors()
    box_coder()
    matcher()
    nms_cases()
    multiscale_roi_align()
    torchvision_backbone_keys()
