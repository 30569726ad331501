"""Makes teacher/tests/data/pil_bicubic.json: Pillow's bicubic resize of a small random RGB
image (down and up), the reference for `pil_resize_bicubic`. Run with Pillow installed:
    python bench/teacher_make_pil_fixture.py
"""
import json
import random

from PIL import Image

random.seed(3)
w, h = 23, 17
pixels = [tuple(random.randrange(256) for _ in range(3)) for _ in range(w * h)]
img = Image.new("RGB", (w, h))
img.putdata(pixels)
cases = []
for ow, oh in [(9, 7), (40, 31), (23, 10), (5, 17)]:
    out = img.resize((ow, oh), resample=Image.BICUBIC)
    cases.append({"width": ow, "height": oh, "rgb": [c for p in out.getdata() for c in p]})
import PIL
json.dump(
    {"pillow": PIL.__version__, "width": w, "height": h, "rgb": [c for p in pixels for c in p], "cases": cases},
    open("teacher/tests/data/pil_bicubic.json", "w"),
)
