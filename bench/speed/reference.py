#!/usr/bin/env python3
"""PyTorch side of bench/speed.sh: the same workloads as `ovkd-speed`, printed the same way.

One JSON object on stdout: {"device", "steps", "times_ms": {"forward", "backward", "optim",
"total"}} with per-step milliseconds after the warm-up; the device is synchronised at each
phase boundary.

    python3 bench/speed/reference.py --device cpu --threads 2 smallnet --image 128 --batch 8
"""
import argparse
import json
import sys
import time

import torch
from torch import nn


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SmallNet(nn.Module):
    """Issue 8's net: 4 stages of (3x3 stride 2, 3x3 stride 1) convolutions, 3->32->64->128->256,
    ReLU, global average pooling, linear to 10 classes."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for c in (32, 64, 128, 256):
            layers += [nn.Conv2d(cin, c, 3, 2, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()]
            cin = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def smallnet(args, device):
    torch.manual_seed(0)
    model = SmallNet().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, args.image, args.image, device=device)
    y = (torch.arange(args.batch, device=device) * 7) % 10
    times = {"forward": [], "backward": [], "optim": [], "total": []}
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        sync(device)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        if step >= args.warmup:
            times["forward"].append((t1 - t0) * 1e3)
            times["backward"].append((t2 - t1) * 1e3)
            times["optim"].append((t3 - t2) * 1e3)
            times["total"].append((t3 - t0) * 1e3)
    return times


def detector(args, device):
    """torchvision's Faster R-CNN R50-FPN (weights=None), one training step on random images
    with 4 random boxes each; the row ovkd's detector student is compared against."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=args.classes,
                                    min_size=args.image, max_size=args.image).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8, weight_decay=1e-2)
    images = [torch.rand(3, args.image, args.image, device=device) for _ in range(args.batch)]
    targets = []
    for _ in range(args.batch):
        xy = torch.rand(4, 2, device=device) * args.image * 0.7
        wh = torch.rand(4, 2, device=device) * args.image * 0.25 + args.image * 0.05
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(1, args.classes, (4,), device=device)})
    return train_steps(args, device, lambda: sum(model(images, targets).values()), opt)


def teacher(args, device):
    """The CLIP ViT-B/32 image tower (transformers, random weights) embedding region crops:
    inference only, `--dtype` float32 / bfloat16 / float16."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           projection_dim=512, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(cfg).to(device, dtype).eval()
    crops = torch.randn(args.batch, 3, 224, 224, device=device, dtype=dtype)
    times = {"forward": [], "backward": [], "optim": [], "total": []}
    with torch.inference_mode():
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            emb = model(pixel_values=crops).image_embeds
            emb = emb / emb.norm(dim=-1, keepdim=True)
            sync(device)
            dt = (time.perf_counter() - t0) * 1e3
            if step >= args.warmup:
                for k, v in (("forward", dt), ("backward", 0.0), ("optim", 0.0), ("total", dt)):
                    times[k].append(v)
    return times


def train_steps(args, device, loss_fn, opt):
    times = {"forward": [], "backward": [], "optim": [], "total": []}
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn()
        sync(device)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        if step >= args.warmup:
            times["forward"].append((t1 - t0) * 1e3)
            times["backward"].append((t2 - t1) * 1e3)
            times["optim"].append((t3 - t2) * 1e3)
            times["total"].append((t3 - t0) * 1e3)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    sub = p.add_subparsers(dest="workload", required=True)
    s = sub.add_parser("smallnet")
    s.add_argument("--image", type=int, default=128)
    s.add_argument("--batch", type=int, default=8)
    d = sub.add_parser("detector")
    d.add_argument("--image", type=int, default=512)
    d.add_argument("--batch", type=int, default=2)
    d.add_argument("--classes", type=int, default=91)
    t = sub.add_parser("teacher")
    t.add_argument("--batch", type=int, default=64, help="region crops per forward")
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    times = {"smallnet": smallnet, "detector": detector, "teacher": teacher}[args.workload](
        args, device)
    print(f"reference: torch {torch.__version__} on {device}, {torch.get_num_threads()} threads",
          file=sys.stderr)
    print(json.dumps({"device": str(device), "steps": args.steps, "times_ms": times}))


if __name__ == "__main__":
    main()
