"""How much shape information is in the crops the built-in teacher sees? (issue 3 diagnosis)

Trains a small supervised CNN on single-object crops made exactly as ovkd makes them
(`teacher/src/preprocess.rs::resample_box`: area average where the box shrinks, bilinear where
it grows, box stretched to S x S) and reports its top-1 on OV-Shapes' val objects per class.
If a supervised classifier cannot separate hexagon / circle / pentagon at side S, no
contrastive recipe at that side will.

    python3 bench/teacher_ceiling.py DATA --size 48 [--source pretrain|train] [--epochs N]

`--source pretrain` trains on the pretrain split's objects located by colour (what the
teacher trains on; `pretrain_batch.rs::colour_box`), `train` on the train split's full labels
(val-like scenes; an upper bound, novel labels included). Prints the size statistics of the
val objects, then per-class accuracy. CPU, one thread by default.
"""
import argparse, json, os, time
import numpy as np
import torch
from PIL import Image

COLOURS = {
    'red': (215, 38, 38), 'orange': (245, 135, 20), 'yellow': (242, 222, 35),
    'green': (40, 165, 55), 'cyan': (40, 205, 215), 'blue': (35, 70, 215),
    'purple': (135, 55, 190), 'pink': (248, 125, 195), 'brown': (125, 75, 35),
    'white': (248, 248, 248), 'black': (25, 25, 25),
}


def axis_weights(lo, hi, out, n_in):
    """ovkd's preprocess.rs axis_weights as a dense [out, n_in] matrix: the area average of
    each output pixel's interval where the box shrinks, bilinear at its centre where it grows,
    indices beyond the source clamped to its edge."""
    m = np.zeros((out, n_in), np.float32)
    step = (hi - lo) / out
    o = np.arange(out)
    if step > 1.0:
        a = lo + o * step
        b = a + step
        i = np.arange(int(np.floor(lo)), int(np.ceil(hi)) + 1)
        w = np.clip(np.minimum(b[:, None], i[None] + 1.0) - np.maximum(a[:, None], i[None]), 0, None)
        ic = np.clip(i, 0, n_in - 1)
        np.add.at(m, (np.repeat(o, len(i)), np.tile(ic, out)), (w / step).ravel())
    else:
        v = np.clip(lo + (o + 0.5) * step - 0.5, 0.0, n_in - 1)
        i0 = np.floor(v).astype(int)
        f = (v - i0).astype(np.float32)
        np.add.at(m, (o, np.minimum(i0, n_in - 1)), 1 - f)
        np.add.at(m, (o, np.minimum(i0 + 1, n_in - 1)), f)
    return m


def crop(img, b, s):
    """[3, s, s] float 0..255 of box b = [x1, y1, x2, y2] of the HxWx3 uint8 image."""
    h, w, _ = img.shape
    wx = axis_weights(b[0], b[2], s, w)
    wy = axis_weights(b[1], b[3], s, h)
    x = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)  # [3, H, W]
    return wy @ x @ wx.T


def colour_box(img, rgb, tol=40.0, min_pixels=12):
    d2 = ((img.astype(np.float64) - np.array(rgb)) ** 2).sum(-1)
    mask = d2 <= tol * tol
    n = int(mask.sum())
    if n < min_pixels:
        return None
    trim = n // 200
    col, row = mask.sum(0), mask.sum(1)

    def lo(h):
        acc = np.cumsum(h); return int(np.argmax(acc > trim))

    def hi(h):
        acc = np.cumsum(h[::-1]); return len(h) - 1 - int(np.argmax(acc > trim))

    x1, x2, y1, y2 = lo(col), hi(col), lo(row), hi(row)
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 + 1, y2 + 1]


def load(path):
    return np.asarray(Image.open(path).convert('RGB'))


def coco_objects(split_dir, ann, names):
    d = json.load(open(os.path.join(split_dir, ann)))
    cid = {c['id']: names.index(c['name']) for c in d['categories'] if c['name'] in names}
    imgs = {i['id']: i['file_name'] for i in d['images']}
    out = []
    cache = {}
    for a in d['annotations']:
        if a.get('iscrowd', 0) or a['category_id'] not in cid:
            continue
        x, y, w, h = a['bbox']
        f = imgs[a['image_id']]
        if f not in cache:
            cache[f] = load(os.path.join(split_dir, 'images', f))
        out.append((cache[f], [x, y, x + w, y + h], cid[a['category_id']]))
    return out


def pretrain_objects(data, names, limit):
    out = []
    for k, line in enumerate(open(os.path.join(data, 'pretrain/captions.jsonl'))):
        if k >= limit:
            break
        r = json.loads(line)
        objs = r['objects']
        img = None
        for o in objs:
            if sum(p.get('colour') == o.get('colour') for p in objs) > 1:
                continue
            if o.get('class') not in names or o.get('colour') not in COLOURS:
                continue
            if img is None:
                img = load(os.path.join(data, 'pretrain/images', r['file_name']))
            b = colour_box(img, COLOURS[o['colour']])
            if b is not None:
                out.append((img, b, names.index(o['class'])))
    return out


def jitter(b, rng, j=0.08, ctx=1.0, W=128, H=128):
    w, h = b[2] - b[0], b[3] - b[1]
    c = [b[0] + rng.uniform(-j, j) * w, b[1] + rng.uniform(-j, j) * h,
         b[2] + rng.uniform(-j, j) * w, b[3] + rng.uniform(-j, j) * h]
    f = rng.uniform(1.0, ctx)
    cx, cy, hw, hh = (c[0] + c[2]) / 2, (c[1] + c[3]) / 2, (c[2] - c[0]) / 2 * f, (c[3] - c[1]) / 2 * f
    out = [max(cx - hw, 0), max(cy - hh, 0), min(cx + hw, W), min(cy + hh, H)]
    out[2] = max(out[2], out[0] + 1); out[3] = max(out[3], out[1] + 1)
    return out


def net(s, k):
    """A small CNN (about 17 M multiply-adds per 48 px crop): one full-resolution layer, then
    two stages at 1/2 and 1/4."""
    c = torch.nn
    return c.Sequential(
        c.Conv2d(3, 16, 3, padding=1), c.BatchNorm2d(16), c.ReLU(), c.MaxPool2d(2),
        c.Conv2d(16, 32, 3, padding=1), c.BatchNorm2d(32), c.ReLU(),
        c.Conv2d(32, 32, 3, padding=1), c.BatchNorm2d(32), c.ReLU(), c.MaxPool2d(2),
        c.Conv2d(32, 64, 3, padding=1), c.BatchNorm2d(64), c.ReLU(),
        c.Conv2d(64, 64, 3, padding=1), c.BatchNorm2d(64), c.ReLU(),
        c.AdaptiveAvgPool2d(1), c.Flatten(), c.Linear(64, k))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('data')
    ap.add_argument('--size', type=int, default=48)
    ap.add_argument('--source', default='pretrain', choices=['pretrain', 'train'])
    ap.add_argument('--pretrain-images', type=int, default=10000)
    ap.add_argument('--epochs', type=int, default=8)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--teacher', help='instead of the CNN: a linear probe on this checkpoint\'s '
                    'image features (transformers CLIPModel), against its zero-shot top-1')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    import tomllib
    voc = tomllib.load(open(a.data + '/vocab.toml', 'rb'))['class']
    names = [c['name'] for c in voc]
    novel = [c['split'] == 'novel' for c in voc]
    val = coco_objects(a.data + '/val', 'instances.json', names)
    spans = np.array([max(b[2] - b[0], b[3] - b[1]) for _, b, _ in val])
    print(f'val objects {len(val)}; box long side px: p10 {np.percentile(spans, 10):.0f} '
          f'p25 {np.percentile(spans, 25):.0f} median {np.median(spans):.0f} '
          f'p75 {np.percentile(spans, 75):.0f} p90 {np.percentile(spans, 90):.0f}; '
          f'shrunk to {a.size}: {(spans > a.size).mean():.0%}')
    if a.source == 'train':
        tr = coco_objects(a.data + '/train', 'instances_full.json', names)
    else:
        tr = pretrain_objects(a.data, names, a.pretrain_images)
    tspans = np.array([max(b[2] - b[0], b[3] - b[1]) for _, b, _ in tr])
    print(f'{a.source} objects {len(tr)}; long side median {np.median(tspans):.0f} '
          f'p10 {np.percentile(tspans, 10):.0f} p90 {np.percentile(tspans, 90):.0f}')
    mean = np.array([0.481, 0.458, 0.408], np.float32)[:, None, None] * 255
    std = np.array([0.269, 0.261, 0.276], np.float32)[:, None, None] * 255
    s = a.size
    xv = torch.tensor(np.stack([(crop(im, b, s) - mean) / std for im, b, _ in val]))
    yv = torch.tensor([c for _, _, c in val])
    if a.teacher:
        return probe_teacher(a, tr, val, xv, yv, names, novel, mean, std, spans, rng)
    model = net(s, len(names))
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    bs = 64
    steps = a.epochs * len(tr) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    t0 = time.time()
    for step in range(steps):
        idx = rng.integers(0, len(tr), bs)
        xs = []
        for i in idx:
            im, b, _ = tr[i]
            x = crop(im, jitter(b, rng, ctx=1.0 if a.source == 'train' else 1.6), s)
            if rng.random() < 0.5:
                x = x[:, :, ::-1]
            xs.append((x - mean) / std)
        x = torch.tensor(np.stack(xs))
        y = torch.tensor([tr[i][2] for i in idx])
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if (step + 1) % 200 == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad():
                p = torch.cat([model(xv[i:i + 256]).argmax(1) for i in range(0, len(xv), 256)])
            acc = (p == yv).float().mean().item()
            print(f'step {step + 1}/{steps} loss {loss.item():.3f} val {acc:.1%} '
                  f'({time.time() - t0:.0f} s)', flush=True)
    ok = (p == yv).numpy()
    yvn = yv.numpy()
    print(f'| class | crops | top-1 (supervised CNN, {a.size} px, trained on {a.source}) |')
    for k, n in enumerate(names):
        m = yvn == k
        print(f'| {n} | {m.sum()} | {ok[m].mean():.1%} |')
    nov = np.array(novel)[yvn]
    small = spans <= 20
    print(f'| all | {len(ok)} | {ok.mean():.1%} |  base {ok[~nov].mean():.1%}  novel '
          f'{ok[nov].mean():.1%}  objects <= 20 px {ok[small].mean():.1%} (n={small.sum()})')


def probe_teacher(a, tr, val, xv, yv, names, novel, mean, std, spans, rng):
    """Logistic regression on the teacher's pooled image features (1x crops; train crops with
    jitter, 3 draws each), beside its zero-shot top-1 on the same 1x val crops."""
    from transformers import CLIPModel
    from tokenizers import Tokenizer
    m = CLIPModel.from_pretrained(a.teacher).eval()
    tok = Tokenizer.from_file(a.teacher + '/tokenizer.json')
    s = m.config.vision_config.image_size

    def feats(x):
        with torch.no_grad():
            out = []
            for i in range(0, len(x), 256):
                o = m.vision_model(pixel_values=x[i:i + 256])
                out.append(torch.cat([o.pooler_output, m.visual_projection(o.pooler_output)], 1))
            return torch.cat(out)

    xs = []
    ys = []
    for _ in range(3):
        for im, b, c in tr:
            x = crop(im, jitter(b, rng), s)
            if rng.random() < 0.5:
                x = x[:, :, ::-1]
            xs.append((x - mean) / std); ys.append(c)
    ft = feats(torch.tensor(np.stack(xs)))
    fv = feats(xv)
    yt = torch.tensor(ys)
    d = m.config.vision_config.hidden_size
    toks = [tok.encode(f'a photo of a {n}.').ids for n in names]
    L = max(map(len, toks)); pad = toks[0][-1]
    ids = torch.tensor([t + [pad] * (L - len(t)) for t in toks])
    with torch.no_grad():
        te = torch.nn.functional.normalize(m.text_projection(m.text_model(input_ids=ids).pooler_output), dim=-1)
        zs = (torch.nn.functional.normalize(fv[:, d:], dim=-1) @ te.T).argmax(1)
    yvn = yv.numpy()
    nov = np.array(novel)[yvn]
    rows = {'zero-shot (1x)': (zs == yv).numpy()}
    for name, sl in [('pooled', slice(0, d)), ('image_embeds', slice(d, None))]:
        f = ft[:, sl]; mu, sd = f.mean(0), f.std(0) + 1e-6
        w = torch.nn.Linear(f.shape[1], len(names))
        opt = torch.optim.LBFGS(w.parameters(), max_iter=500, line_search_fn='strong_wolfe')

        def closure():
            opt.zero_grad()
            l = torch.nn.functional.cross_entropy(w((f - mu) / sd), yt) + 1e-4 * w.weight.pow(2).sum()
            l.backward(); return l
        opt.step(closure)
        with torch.no_grad():
            rows[f'linear probe on {name}'] = (w((fv[:, sl] - mu) / sd).argmax(1) == yv).numpy()
    print('| class | crops | ' + ' | '.join(rows) + ' |')
    for k, n in enumerate(names):
        mk = yvn == k
        print(f'| {n} | {mk.sum()} | ' + ' | '.join(f'{r[mk].mean():.1%}' for r in rows.values()) + ' |')
    print('| all | | ' + ' | '.join(f'{r.mean():.1%}' for r in rows.values()) + ' |')
    print('| base / novel | | ' + ' | '.join(f'{r[~nov].mean():.1%} / {r[nov].mean():.1%}' for r in rows.values()) + ' |')


if __name__ == '__main__':
    main()
