#!/usr/bin/env python3
"""What the detector's heads say about the val regions, and what the scoring can make of it
(diagnostic). Reads the dump of

    ovkd train detector --config RUN/detector.toml --run RUN --eval-only --eval-name dump \
        --dump-regions RUN/eval/regions.jsonl

and prints (1) per-region statistics of the heads, split by what each region covers (a base or
a novel object at IoU >= 0.5 with the val ground truth, or background at IoU < 0.3), and (2) box
AP50 (pycocotools) per split under the run's scoring and variants of it, each rebuilt from the
dump with ovkd's post-processing (score > 0.05, per-class NMS at 0.5, 100 per image).

    python3 bench/det_scoring.py DATA_DIR REGIONS.jsonl [IMAGE_TEMPERATURE]

DATA_DIR: the run's OV-Shapes directory (vocab.toml, val/instances.json). IMAGE_TEMPERATURE:
the run's `eval.inference.image_temperature` (default 0.067). Needs numpy, torch,
torchvision, pycocotools.
"""
import contextlib
import io
import json
import sys
import tomllib

import numpy as np
import torch
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

data, dump = sys.argv[1], sys.argv[2]
T_IMG = float(sys.argv[3]) if len(sys.argv) > 3 else 0.067
LAMBDA = 2 / 3
gt_path = f'{data}/val/instances.json'
voc = tomllib.load(open(f'{data}/vocab.toml', 'rb'))['class']
ids = [c['id'] for c in voc]
novel = np.array([c['split'] == 'novel' for c in voc])
base = np.where(~novel)[0]
novel_ids = np.where(novel)[0]
gt = json.load(open(gt_path))
truth = {}
for a in gt['annotations']:
    x, y, w, h = a['bbox']
    truth.setdefault(a['image_id'], []).append((x, y, x + w, y + h, ids.index(a['category_id'])))

regions = []
for line in open(dump):
    r = json.loads(line)
    if not r['boxes']:
        continue
    if r['image_cosines'] is None:
        sys.exit('the detector has no image branch: nothing to study here')
    regions.append(dict(image_id=r['image_id'], boxes=np.array(r['boxes'], dtype=np.float64),
                        rpn=np.array(r['proposal_scores']), text=np.array(r['text_logits']),
                        image=np.array(r['image_cosines'])))


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def heads(r, t_img=T_IMG):
    """(text head over background + base classes, background dropped; p_obj; image head)."""
    tx = softmax(r['text'][:, [0] + list(base + 1)])[:, 1:]
    return tx, tx.sum(1, keepdims=True), softmax(r['image'] / t_img)


def ovkd_rule(r, t_img=T_IMG, obj_power=1.0, text_only_base=False, novel_obj='text'):
    """eval.inference.scores = ensemble with background_from_text (infer.rs), generalised:
    novel `obj^obj_power * image` with obj the text head's p_obj or the RPN's objectness
    (`novel_objectness`); base `p_obj * (text/p_obj)^λ * image^(1-λ)`."""
    tx, p_obj, im = heads(r, t_img)
    obj = p_obj if novel_obj == 'text' else r['rpn'][:, None]
    s = np.zeros_like(im)
    s[:, novel] = im[:, novel] * obj ** obj_power
    lam = 1.0 if text_only_base else LAMBDA
    s[:, base] = (tx / np.maximum(p_obj, 1e-12)) ** lam * im[:, base] ** (1 - lam) * p_obj
    return s


def ap50(rule, **kw):
    dets = []
    for r in regions:
        s = rule(r, **kw)
        b = r['boxes']
        keep_size = ((b[:, 2] - b[:, 0]) > 1e-2) & ((b[:, 3] - b[:, 1]) > 1e-2)
        ii, cc = np.nonzero((s > 0.05) & keep_size[:, None])
        if len(ii) == 0:
            continue
        keep = torchvision.ops.batched_nms(torch.tensor(b[ii], dtype=torch.float32),
                                           torch.tensor(s[ii, cc], dtype=torch.float32),
                                           torch.tensor(cc), 0.5)[:100].numpy()
        for k in keep:
            x1, y1, x2, y2 = b[ii[k]]
            dets.append(dict(image_id=r['image_id'], category_id=ids[cc[k]],
                             bbox=[x1, y1, x2 - x1, y2 - y1], score=float(s[ii[k], cc[k]])))
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(gt_path)
        e = COCOeval(g, g.loadRes(dets), 'bbox')
        e.evaluate()
        e.accumulate()
    p = e.eval['precision'][0, :, :, 0, 2]  # IoU 0.5, all areas, 100 detections: [R, K]
    ap = np.array([p[:, k][p[:, k] > -1].mean() for k in range(p.shape[1])])
    nov = np.array([novel[ids.index(c)] for c in e.params.catIds])
    return 100 * ap[~nov].mean(), 100 * ap[nov].mean(), 100 * ap.mean()


def iou_matrix(b, g):
    ix = np.clip(np.minimum(b[:, None, 2], g[None, :, 2]) - np.maximum(b[:, None, 0], g[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(b[:, None, 3], g[None, :, 3]) - np.maximum(b[:, None, 1], g[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(b)[:, None] + area(g)[None] - inter, 1e-9)


stats = {'base object': [], 'novel object': [], 'background': []}
for r in regions:
    g = np.array(truth.get(r['image_id'], []), dtype=np.float64).reshape(-1, 5)
    m = iou_matrix(r['boxes'], g[:, :4]) if len(g) else np.zeros((len(r['boxes']), 0))
    best = m.argmax(1) if len(g) else np.zeros(len(r['boxes']), dtype=int)
    best_iou = m.max(1) if len(g) else np.zeros(len(r['boxes']))
    tx, p_obj, im = heads(r)
    text_all = softmax(r['text'])[:, 1:]  # the text head over all classes, novel ones included
    for n in range(len(best_iou)):
        if best_iou[n] >= 0.5:
            k = int(g[best[n], 4])
            kind = 'novel object' if novel[k] else 'base object'
        elif best_iou[n] < 0.3:
            k, kind = -1, 'background'
        else:
            continue
        stats[kind].append((r['rpn'][n], p_obj[n, 0], tx[n].max() / max(p_obj[n, 0], 1e-12),
                            im[n, novel].sum(), float(im[n].argmax() == k),
                            float(novel_ids[im[n, novel].argmax()] == k),
                            text_all[n, novel].sum()))

print('Per region (means; regions of every val image, before scoring):\n')
print('| region | count | RPN objectness | p_obj (text head) | text: best base / p_obj '
      '| image head: mass on novel | image head top-1 right | among the novel classes '
      '| text head over all classes: mass on novel |')
print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
for kind, rows in stats.items():
    a = np.array(rows)
    among = '%.3f' % a[:, 5].mean() if kind == 'novel object' else ''
    print(f'| {kind} | {len(a)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} '
          f'| {a[:, 3].mean():.3f} | {a[:, 4].mean():.3f} | {among} | {a[:, 6].mean():.3f} |')

print('\nAP50 rebuilt from the dump:\n')
print('| scoring | base | novel | all |')
print('| --- | ---: | ---: | ---: |')
for name, kw in [
    (f'ensemble, background from the text head, image temperature {T_IMG}', {}),
    ('same, novel objectness from the RPN (novel_objectness = "rpn")', dict(novel_obj='rpn')),
    ('novel: p_obj^0.5 x image', dict(obj_power=0.5)),
    ('novel: p_obj^2 x image', dict(obj_power=2.0)),
    ('image temperature 0.03', dict(t_img=0.03)),
    ('image temperature 0.15', dict(t_img=0.15)),
    ('base from the text head alone (λ = 1)', dict(text_only_base=True)),
]:
    b, n, a = ap50(ovkd_rule, **kw)
    print(f'| {name} | {b:.1f} | {n:.1f} | {a:.1f} |', flush=True)
