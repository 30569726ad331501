#!/usr/bin/env python3
"""Where a CLIP teacher puts image and text embeddings of OV-Shapes val objects (diagnostic).

    python3 bench/teacher_modality_gap.py TEACHER_DIR OV_SHAPES_DIR

Loads the checkpoint with transformers (CLIPModel, the Hugging Face layout ovkd writes), embeds
the first 400 val ground-truth boxes (cropped, bicubic to the tower size, CLIP-normalised) and
"a photo of a {class}." for every class, and prints zero-shot top-1, the mean cosine of images
with their own and other texts, how tight the image cluster is, and which class texts lie nearest
the image centroid: a student trained towards the teacher's image embeddings (ViLD-image) drifts
to the classes whose texts are nearest that centroid. Needs torch, transformers, tokenizers, PIL.
"""
import sys, json, torch, numpy as np
from PIL import Image
from transformers import CLIPModel
from tokenizers import Tokenizer
d, data = sys.argv[1], sys.argv[2]
m = CLIPModel.from_pretrained(d).eval()
tok = Tokenizer.from_file(d + '/tokenizer.json')
gt = json.load(open(data + '/val/instances.json'))
cats = {c['id']: c['name'] for c in gt['categories']}
names = [cats[k] for k in sorted(cats)]
ids = [tok.encode(f"a photo of a {n}.").ids for n in names]
L = max(map(len, ids)); pad = ids[0][-1]
x = torch.tensor([i + [pad] * (L - len(i)) for i in ids])
S = m.config.vision_config.image_size
mean = np.array([0.48145466, 0.4578275, 0.40821073]); std = np.array([0.26862954, 0.26130258, 0.27577711])
imgs = {i['id']: i['file_name'] for i in gt['images']}
crops, labels = [], []
for a in gt['annotations'][:400]:
    im = Image.open(f"{data}/val/images/{imgs[a['image_id']]}").convert('RGB')
    x0, y0, w, h = a['bbox']
    c = im.crop((int(x0), int(y0), int(np.ceil(x0 + w)), int(np.ceil(y0 + h)))).resize((S, S), Image.BICUBIC)
    crops.append(((np.asarray(c) / 255.0 - mean) / std).transpose(2, 0, 1)); labels.append(sorted(cats).index(a['category_id']))
px = torch.tensor(np.stack(crops), dtype=torch.float32)
with torch.no_grad():
    t = torch.nn.functional.normalize(m.text_projection(m.text_model(input_ids=x).pooler_output), dim=-1)
    v = torch.nn.functional.normalize(m.visual_projection(m.vision_model(pixel_values=px).pooler_output), dim=-1)
lab = torch.tensor(labels)
sim = v @ t.T
print('top-1 %.3f' % (sim.argmax(1) == lab).float().mean())
print('cos(image, own text) %.3f  cos(image, other texts) %.3f' % (sim[torch.arange(len(lab)), lab].mean(), (sim.sum() - sim[torch.arange(len(lab)), lab].sum()) / (sim.numel() - len(lab))))
vv = v @ v.T
print('cos(image, image) mean %.3f' % ((vv.sum() - len(v)) / (len(v) ** 2 - len(v))))
tt = t @ t.T
print('cos(text, text) mean %.3f' % ((tt.sum() - len(t)) / (len(t) ** 2 - len(t))))
cen = torch.nn.functional.normalize(v.mean(0), dim=0)
print('|mean image| %.3f, |mean text| %.3f, cos(mean image, mean text) %.3f' % (v.mean(0).norm(), t.mean(0).norm(), torch.nn.functional.cosine_similarity(v.mean(0), t.mean(0), dim=0)))
print('cos(image centroid, each text):', ', '.join('%s %.2f' % (n, c) for n, c in zip(names, (t @ cen).tolist())))
