"""Shared pieces of the detector diagnostics (bench/det_*_targets.py): the OV-Shapes vocabulary,
the train split's full labels and the teacher's class text embeddings, computed with
transformers' CLIPModel on ovkd's checkpoint (so the diagnosis does not trust ovkd's own code).
"""
import json, tomllib
import numpy as np, torch
from transformers import CLIPModel
from tokenizers import Tokenizer


def vocabulary(data):
    """(names, novel mask, category id -> index) from DATA/vocab.toml."""
    voc = tomllib.load(open(data + '/vocab.toml', 'rb'))['class']
    names = [c['name'] for c in voc]
    novel = np.array([c['split'] == 'novel' for c in voc])
    return voc, names, novel, {c['id']: i for i, c in enumerate(voc)}


def class_text_embeds(teacher, voc, templates=("a photo of a {}.",)):
    """[C, D]: the templates filled with a class's name and each synonym, every text's
    embedding normalised, averaged, renormalised (ovkd's prompt ensemble)."""
    m = CLIPModel.from_pretrained(teacher).eval()
    tok = Tokenizer.from_file(teacher + '/tokenizer.json')

    def one(ns):
        toks = [tok.encode(t.format(n)).ids for n in ns for t in templates]
        L = max(map(len, toks)); pad = toks[0][-1]
        x = torch.tensor([t + [pad] * (L - len(t)) for t in toks])
        with torch.no_grad():
            e = torch.nn.functional.normalize(
                m.text_projection(m.text_model(input_ids=x).pooler_output), dim=-1)
        e = e.mean(0)
        return (e / e.norm()).numpy()

    return np.stack([one([c['name']] + c.get('synonyms', [])) for c in voc])


def full_train_labels(data, cid):
    """image id -> [([x1, y1, x2, y2], class index)] from train/instances_full.json."""
    gt = json.load(open(data + '/train/instances_full.json'))
    by = {}
    for a in gt['annotations']:
        x, y, w, h = a['bbox']
        by.setdefault(a['image_id'], []).append(([x, y, x + w, y + h], cid[a['category_id']]))
    return by


def iou(b, g):
    ix1, iy1 = max(b[0], g[0]), max(b[1], g[1]); ix2, iy2 = min(b[2], g[2]), min(b[3], g[3])
    inter = max(0, ix2 - ix1) * max(0, iy2 - iy1)
    u = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / u if u > 0 else 0
