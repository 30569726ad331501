"""transformers' half-precision reference for the teacher's `min_cosine_vs_f32`.

Runs `CLIPModel.get_image_features` (default `CLIPConfig`, ViT-B/32) with the weights and crops
that `ovkd-speed teacher` wrote, in float32 and after `.to(bfloat16)` / `.to(float16)`, and
prints the lowest cosine between a crop's half-precision and float32 embedding, the number
ovkd-speed reports for its own tower:

    ovkd-speed --device tch-cpu --steps 1 --warmup 0 teacher --crops 16 --batch 8 \
        --dtype bf16 --dump crops.safetensors --dump-weights weights.safetensors
    python3 bench/teacher_half_precision.py --weights weights.safetensors --crops crops.safetensors
"""
import argparse
import copy

import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel


def embed(model, px):
    f = model.get_image_features(pixel_values=px)
    f = getattr(f, "pooler_output", f).float()
    return f / f.norm(dim=-1, keepdim=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--crops", required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = CLIPModel(CLIPConfig()).eval()
    missing, unexpected = model.load_state_dict(load_file(args.weights), strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not fit CLIPConfig(): missing {missing[:5]}, unexpected {unexpected[:5]}")
    px = load_file(args.crops)["pixel_values"]
    with torch.inference_mode():
        want = embed(model, px)
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            # `.to` converts a module in place: each precision starts from a float32 copy.
            got = embed(copy.deepcopy(model).to(dtype), px.to(dtype))
            print(f"transformers {name}: lowest cosine to float32 over {px.shape[0]} crops "
                  f"{(got * want).sum(-1).min().item():.7f}")


if __name__ == "__main__":
    main()
