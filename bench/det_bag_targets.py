#!/usr/bin/env python3
"""What BARON distils (diagnostic): the teacher's cached embeddings of each bag's enclosing crop
(`RUN/cache/bags.parquet`), against the classes of the objects the crop holds
(train/instances_full.json: every object, novel ones included), beside the same teacher's ViLD
embedding of the bag's centre region.

    python3 bench/det_bag_targets.py TEACHER_DIR OV_SHAPES_DIR BAGS_PARQUET

An object counts as in a bag when at least half its box lies inside the enclosing crop. For each
bag the script asks whether the teacher's best class text is one of the classes in the crop,
against the rate a random guess would reach (|classes in the crop| / C), and how alike the bag
embeddings of different images are. Needs torch, transformers, tokenizers, pyarrow.
"""
import sys, numpy as np, pyarrow.parquet as pq
from ovshapes_teacher import vocabulary, class_text_embeds, full_train_labels, iou

teacher, data, bags = sys.argv[1], sys.argv[2], sys.argv[3]
voc, names, novel, cid = vocabulary(data)
T = class_text_embeds(teacher, voc)
C, D = T.shape
t = pq.read_table(bags).to_pydict()
n = len(t['image_id'])
Eb = np.stack([np.array(t[f't{k}'], np.float32) for k in range(D)], 1)
Ec = np.stack([np.array(t[f's{k}'], np.float32) for k in range(D)], 1)
by = full_train_labels(data, cid)


def spanned(center, cells, overlap):
    w, h = center[2] - center[0], center[3] - center[1]
    bs = []
    for c in range(9):
        if cells >> c & 1:
            dx, dy = c % 3 - 1, c // 3 - 1
            sx, sy = dx * (1 - overlap) * w, dy * (1 - overlap) * h
            bs.append([center[0] + sx, center[1] + sy, center[2] + sx, center[3] + sy])
    bs = np.array(bs)
    return [bs[:, 0].min(), bs[:, 1].min(), bs[:, 2].max(), bs[:, 3].max()]


def inside(g, s):
    ix = max(0, min(g[2], s[2]) - max(g[0], s[0])) * max(0, min(g[3], s[3]) - max(g[1], s[1]))
    return ix >= 0.5 * (g[2] - g[0]) * (g[3] - g[1])


hit = []; chance = []; nobj = []; has_novel = []; novel_hit = []; centre = []
for i in range(n):
    c = [t[k][i] for k in ('cx1', 'cy1', 'cx2', 'cy2')]
    s = spanned(c, t['cells'][i], t['overlap'][i])
    objs = by.get(int(t['image_id'][i]), [])
    cls = {k for g, k in objs if inside(g, s)}
    nobj.append(sum(inside(g, s) for g, _ in objs))
    top = int(np.argmax(T @ Eb[i]))
    if cls:
        hit.append(top in cls); chance.append(len(cls) / C)
    nv = {k for k in cls if novel[k]}
    has_novel.append(bool(nv))
    if nv:
        novel_hit.append(top in nv)
    best, lab = 0.0, -1
    for g, k in objs:
        v = iou(c, g)
        if v > best: best, lab = v, k
    if best >= 0.5:
        centre.append((lab, int(np.argmax(T @ Ec[i])), top))
nobj = np.array(nobj)
print(f"bags {n} in {len(set(t['image_id']))} images, D {D}, C {C}")
print(f"objects per enclosing crop: mean {nobj.mean():.2f}; share with 0 / 1 / 2 / 3+ objects: "
      + ' / '.join(f"{v:.2f}" for v in [(nobj == 0).mean(), (nobj == 1).mean(), (nobj == 2).mean(), (nobj >= 3).mean()]))
print(f"bag embedding's top-1 class is in the crop: {np.mean(hit):.3f} (a random class: {np.mean(chance):.3f}; {len(hit)} bags with an object)")
print(f"bags holding a novel object: {np.mean(has_novel):.3f}; of those, top-1 is a novel class in the crop: {np.mean(novel_hit):.3f}")
if centre:
    a = np.array(centre)
    for nv, tag in [(False, 'base'), (True, 'novel')]:
        sel = novel[a[:, 0]] == nv
        if sel.any():
            print(f"centre region on a {tag} object (IoU >= .5, n={sel.sum()}): ViLD embedding top-1 right {np.mean(a[sel, 1] == a[sel, 0]):.3f}, "
                  f"bag embedding top-1 = the centre's class {np.mean(a[sel, 2] == a[sel, 0]):.3f}")
mu = Eb.mean(0)
print(f"|mean bag embedding| {np.linalg.norm(mu):.3f}; mean cosine of two random bags "
      f"{np.mean(np.sum(Eb[np.random.default_rng(0).permutation(n)] * Eb, 1)):.3f}")
