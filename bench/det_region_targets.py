#!/usr/bin/env python3
"""What ViLD-image distils (diagnostic): the teacher's cached region embeddings of the
proposals, split by what each proposal covers (a base object or a novel object at IoU >= 0.5
with train/instances_full.json, or background at IoU < 0.3), against the class texts, raw and
with the mean region embedding removed (distill.center_teacher).

    python3 bench/det_region_targets.py TEACHER_DIR OV_SHAPES_DIR CACHE_DIR [TOP_K] \
        [--no-synonyms] [--templates FILE]

TOP_K: use only each image's best K cached proposals (distill.image_top_k; 0 = all). Text
embeddings: each template ("a photo of a {}." unless --templates, a prompt file such as
configs/prompts/shapes.txt) filled with a class's name and, unless --no-synonyms
(teacher.synonyms = false), its synonyms, averaged (transformers' CLIPModel on ovkd's
checkpoint). Needs torch, transformers, tokenizers, pyarrow.
"""
import sys, os, glob, numpy as np, pyarrow.parquet as pq
from ovshapes_teacher import vocabulary, class_text_embeds, full_train_labels, iou
args = sys.argv[1:]
no_syn = '--no-synonyms' in args
templates = ("a photo of a {}.",)
if '--templates' in args:
    f = args[args.index('--templates') + 1]
    templates = tuple(l.strip() for l in open(f) if l.strip() and not l.startswith('#'))
    args.remove('--templates'); args.remove(f)
args = [a for a in args if a != '--no-synonyms']
teacher, data, cache = args[0], args[1], args[2]
TOPK = int(args[3]) if len(args) > 3 else 0
voc, names, novel, cid = vocabulary(data)
if no_syn:
    voc = [dict(c, synonyms=[]) for c in voc]
T = class_text_embeds(teacher, voc, templates)  # [C, D]
D = T.shape[1]
print(f"class texts: {len(templates)} template(s), {'names only' if no_syn else 'names + synonyms'}; "
      f"mean pairwise cosine {((T @ T.T).sum() - len(T)) / (len(T) * (len(T) - 1)):.3f}")
if os.path.exists(cache + '/index.parquet'):
    ix = pq.read_table(cache + '/index.parquet').to_pydict()
else:
    parts = [pq.read_table(p).to_pydict() for p in sorted(glob.glob(cache + '/index-*/part-*.parquet'))]
    ix = {k: sum((p[k] for p in parts), []) for k in parts[0]}
shards = {}
def shard(s):
    if s not in shards:
        shards[s] = np.fromfile(os.path.join(cache, s), dtype=np.float16).reshape(-1, D).astype(np.float32)
    return shards[s]
n = len(ix['image_id'])
E = np.stack([shard(ix['shard'][i])[ix['offset'][i]] for i in range(n)])
B = np.stack([ix[k] for k in ('x1', 'y1', 'x2', 'y2')], 1)
img = np.array(ix['image_id'])
# rank of each region within its image (rows are best first within an image, by offset)
order = np.lexsort((np.array(ix['offset']), img))
rank = np.zeros(n, int); last = None; r = 0
for j in order:
    if img[j] != last: last = img[j]; r = 0
    rank[j] = r; r += 1
by = full_train_labels(data, cid)
best = np.zeros(n); lab = -np.ones(n, int)
for i in range(n):
    for g, c in by.get(int(img[i]), []):
        v = iou(B[i], g)
        if v > best[i]: best[i], lab[i] = v, c
keep = np.ones(n, bool) if TOPK == 0 else rank < TOPK
print(f"regions {n} (used: {keep.sum()}, top-k {TOPK or 'all'}), D {D}")
cat = np.where(best >= 0.5, np.where(novel[np.maximum(lab, 0)], 1, 0), np.where(best < 0.3, 2, 3))
names_cat = ['base obj (IoU>=.5)', 'novel obj (IoU>=.5)', 'background (IoU<.3)']
for c in range(3): print(f"  {names_cat[c]}: {(keep & (cat == c)).sum()}")
mu_all = E[keep].mean(0)
print(f"|mean region embed| {np.linalg.norm(mu_all):.3f}; nearest texts of the mean:",
      ', '.join(f"{names[k]}{'*' if novel[k] else ''} {v:.2f}" for k, v in sorted(enumerate(T @ (mu_all / np.linalg.norm(mu_all))), key=lambda kv: -kv[1])[:5]))
def report(X, tag):
    S = X @ T.T
    print(f"\n== {tag}")
    for c in range(3):
        sel = keep & (cat == c)
        s = S[sel]
        line = f"  {names_cat[c]:22s} max cos base texts {s[:, ~novel].max(1).mean():.3f}, max cos novel texts {s[:, novel].max(1).mean():.3f}"
        if c < 2:
            own = s[np.arange(len(s)), lab[sel]]; line += f", own text {own.mean():.3f}"
            am = s.argmax(1)
            line += f"; zero-shot top-1 (all classes) {(am == lab[sel]).mean():.3f}"
            if c == 1:
                sn = s[:, novel]; line += f", among novel only {(np.array(np.where(novel)[0])[sn.argmax(1)] == lab[sel]).mean():.3f}"
        else:
            am = s.argmax(1)
            line += f"; argmax is novel for {novel[am].mean():.3f}"
        print(line)
        if c == 2:
            cnt = np.bincount(s.argmax(1), minlength=len(names))
            print('    background argmax histogram:', ', '.join(f"{names[k]}{'*' if novel[k] else ''} {cnt[k]}" for k in np.argsort(-cnt)[:5]))
report(E, 'raw teacher region embeds')
C = E - mu_all; C /= np.linalg.norm(C, axis=1, keepdims=True)
report(C, 'centred (minus the mean of the used regions), renormalised')
print("\nzero-shot top-1 (all classes) by IoU with the best GT, raw / centred:")
for lo, hi in [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)]:
    for nv, tag in [(False, 'base'), (True, 'novel')]:
        sel = keep & (best >= lo) & (best < hi) & (lab >= 0) & (novel[np.maximum(lab, 0)] == nv)
        if sel.sum() == 0: continue
        a = ((E[sel] @ T.T).argmax(1) == lab[sel]).mean(); b = ((C[sel] @ T.T).argmax(1) == lab[sel]).mean()
        print(f"  IoU [{lo:.1f}, {hi:.1f}) {tag:5s} n={sel.sum():5d}: {a:.3f} / {b:.3f}")
