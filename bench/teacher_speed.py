"""Reference side of bench/teacher_speed.sh: transformers' CLIPModel (random weights, the
default CLIPConfig = ViT-B/32) on the exact crops ovkd encoded (pixel_values in a safetensors
file), image features + L2 normalisation, best of R runs, in crops/s."""
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel

path, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
threads = int(sys.argv[4]) if len(sys.argv) > 4 else torch.get_num_threads()
torch.set_num_threads(threads)
torch.manual_seed(0)
model = CLIPModel(CLIPConfig()).eval()
px = load_file(path)["pixel_values"]
n = px.shape[0]


def run():
    with torch.inference_mode():
        for i in range(0, n, batch):
            f = model.get_image_features(pixel_values=px[i : i + batch])
            f = getattr(f, "pooler_output", f)
            f = f / f.norm(dim=-1, keepdim=True)


run_warm = px[: min(batch, n)]
with torch.inference_mode():
    model.get_image_features(pixel_values=run_warm)
best = float("inf")
for _ in range(reps):
    t = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t)
print(f"transformers {__import__('transformers').__version__} torch {torch.__version__} cpu ({threads} threads): {n / best:8.2f} crops/s ({n} crops, batch {batch})")
