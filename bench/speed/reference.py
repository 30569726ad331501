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
    return train_steps(args, device, lambda: loss_fn(model(x), y), opt)


M64 = 2 ** 64


def unit(i, j, k):
    """A value in [0, 1) for the integer triple (i, j, k): the same hash as ovkd-speed's
    `synth::unit`, so both sides draw the same boxes."""
    x = (i * 7919 + j * 104729 + k * 15485863 + 1) % M64
    return (((x * 2654435761) % M64) >> 7 & 0xFFFFFF) / float(1 << 24)


def targets(i, boxes, classes, size, device):
    """ovkd-speed's `detector::targets`: `boxes` boxes of image i; torchvision's labels count
    from 1 (0 is its background), ovkd's from 0."""
    b, labels = [], []
    for j in range(boxes):
        x1, y1 = unit(i, j, 0) * 0.7 * size, unit(i, j, 1) * 0.7 * size
        w, h = (0.05 + 0.25 * unit(i, j, 2)) * size, (0.05 + 0.25 * unit(i, j, 3)) * size
        b.append([x1, y1, x1 + w, y1 + h])
        labels.append((i * boxes + j) % classes + 1)
    return {"boxes": torch.tensor(b, dtype=torch.float32, device=device),
            "labels": torch.tensor(labels, dtype=torch.int64, device=device)}


class TinyResNet(nn.Module):
    """ovkd's `ResNetConfig::tiny()` in torchvision's layout: a light stem (3x3 stride-2 conv
    to 16 channels, batch norm, ReLU, 3x3 stride-2 max-pool), one BasicBlock per stage, widths
    16/32/64/128, trainable batch norm. `forward` returns C2..C5."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 16
        for n, (c, stride) in enumerate(((16, 1), (32, 2), (64, 2), (128, 2)), 1):
            down = None
            if stride != 1 or cin != c:
                down = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
            setattr(self, f"layer{n}", BasicBlock(cin, c, stride, down))
            cin = c

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for n in range(1, 5):
            x = getattr(self, f"layer{n}")(x)
            out.append(x)
        return out


def tiny_faster_rcnn(args):
    """The closest torchvision build of ovkd's `DetectorConfig::tiny`: the tiny ResNet + a
    64-channel FPN with P6 (`BackboneWithFPN`, LastLevelMaxPool), anchors 16..256 x 3 ratios,
    RPN 1000 / 500 proposals per image in training, 128 sampled RoIs, a 256-wide TwoMLPHead.
    What differs: torchvision's predictor is a linear classifier with class-specific box
    regression; ovkd's head projects to `embed_dim`, scores cosines against text embeddings
    and regresses class-agnostic boxes (a few thousand multiply-adds per RoI either way)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    backbone = BackboneWithFPN(TinyResNet(), {f"layer{n}": str(n - 1) for n in range(1, 5)},
                               [16, 32, 64, 128], 64)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(backbone, num_classes=None, min_size=args.image, max_size=args.image,
                      rpn_anchor_generator=anchors, rpn_pre_nms_top_n_train=1000,
                      rpn_post_nms_top_n_train=500, box_batch_size_per_image=128,
                      box_head=TwoMLPHead(64 * 7 * 7, 256),
                      box_predictor=FastRCNNPredictor(256, args.classes + 1))


def detector(args, device):
    """One training step of torchvision's Faster R-CNN on random images with `--boxes` boxes
    each (ovkd-speed's, box for box): `--preset resnet50_fpn` is `fasterrcnn_resnet50_fpn(
    weights=None, weights_backbone=None)` (trainable batch norm, every layer trained), `tiny`
    is `tiny_faster_rcnn`. min_size = max_size = the image side, so nothing is resized."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    if args.preset == "resnet50_fpn":
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                        num_classes=args.classes + 1, min_size=args.image,
                                        max_size=args.image)
    else:
        model = tiny_faster_rcnn(args)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8, weight_decay=1e-2)
    images = [torch.rand(3, args.image, args.image, device=device) for _ in range(args.batch)]
    tgts = [targets(i, args.boxes, args.classes, args.image, device) for i in range(args.batch)]
    return train_steps(args, device, lambda: sum(model(images, tgts).values()), opt)


class ConvBnRelu(nn.Sequential):
    def __init__(self, c):
        super().__init__(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


class Segmenter(nn.Module):
    """ovkd's segmenter student (`SegmenterConfig::default()`): the tiny ResNet; the decoder
    (1x1 lateral convs with bias, top-down bilinear upsampling added to each lateral and a
    3x3 conv + BN + ReLU after each sum, 2 refinement blocks at 1/4, a 1x1 projection to
    `embed_dim`, L2 normalisation); cosine logits against (learned background, class text
    embeddings) over temperature 0.07, upsampled bilinearly to the input."""

    def __init__(self, channels=64, refine=2, embed_dim=64, temperature=0.07):
        super().__init__()
        self.body = TinyResNet()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in (16, 32, 64, 128))
        self.fuse = nn.ModuleList(ConvBnRelu(channels) for _ in range(4))
        self.refine = nn.Sequential(*[ConvBnRelu(channels) for _ in range(refine)])
        self.project = nn.Conv2d(channels, embed_dim, 1)
        self.background = nn.Parameter(torch.randn(1, embed_dim))
        self.temperature = temperature

    def forward(self, images, class_embeds):
        feats = self.body(images)
        top = None
        for i in reversed(range(len(feats))):
            x = self.laterals[i](feats[i])
            if top is not None:
                x = x + nn.functional.interpolate(top, size=x.shape[-2:], mode="bilinear",
                                                  align_corners=False)
            top = self.fuse[i](x)
        pix = self.project(self.refine(top))
        pix = pix / pix.norm(dim=1, keepdim=True).clamp_min(1e-6)
        bg = self.background / self.background.norm(dim=1, keepdim=True).clamp_min(1e-6)
        labels = torch.cat([bg, class_embeds], 0)
        logits = torch.einsum("kd,bdhw->bkhw", labels, pix) / self.temperature
        return nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                         align_corners=False)


def segmenter(args, device):
    """One training step of `Segmenter` with LSeg's cross-entropy (ignore index 255) on random
    images and ovkd-speed's block label pattern (`segmenter::label_at`)."""
    torch.manual_seed(0)
    model = Segmenter().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=1e-2)
    b, s = args.batch, args.image
    images = torch.randn(b, 3, s, s, device=device)
    y = torch.arange(s, device=device).view(1, s, 1) // 16
    x = torch.arange(s, device=device).view(1, 1, s) // 16
    i = torch.arange(b, device=device).view(b, 1, 1)
    labels = (y * 3 + x * 5 + i) % (args.classes + 1)
    text = torch.randn(args.classes, 64, device=device)
    text = text / text.norm(dim=1, keepdim=True)
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    return train_steps(args, device, lambda: loss_fn(model(images, text), labels), opt)


def teacher(args, device):
    """transformers' CLIPModel with the default CLIPConfig (ViT-B/32, random weights):
    `get_image_features` + L2 normalisation of region crops in batches of `--batch`,
    inference only; the crops are ovkd-speed's (`--crops-file`, safetensors `pixel_values`)
    or random. `--dtype` float32 / bfloat16 / float16."""
    import transformers
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = CLIPModel(CLIPConfig()).to(device, dtype).eval()
    if args.crops_file:
        from safetensors.torch import load_file

        px = load_file(args.crops_file)["pixel_values"]
    else:
        px = torch.randn(args.crops, 3, 224, 224)
    px = px.to(device, dtype)
    print(f"reference: transformers {transformers.__version__}, {px.shape[0]} crops",
          file=sys.stderr)
    times = {"forward": [], "backward": [], "optim": [], "total": []}
    with torch.inference_mode():
        for step in range(args.warmup + args.steps):
            PROFILE.before_step(step, args.warmup)
            t0 = time.perf_counter()
            for i in range(0, px.shape[0], args.batch):
                f = model.get_image_features(pixel_values=px[i:i + args.batch])
                f = getattr(f, "pooler_output", f)
                f = f / f.norm(dim=-1, keepdim=True)
            sync(device)
            dt = (time.perf_counter() - t0) * 1e3
            if step >= args.warmup:
                for k, v in (("forward", dt), ("backward", 0.0), ("optim", 0.0), ("total", dt)):
                    times[k].append(v)
    PROFILE.finish()
    return times


class Profile:
    """`--profile PATH`: torch.profiler over the timed steps, its Chrome trace written to PATH
    (the format ovkd-speed's `--profile` writes; `bench/speed/trace_summary.py` reads both)."""

    def __init__(self):
        self.path, self.prof = "", None

    def before_step(self, step, warmup):
        if self.path and step == warmup:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=True)
            self.prof.start()

    def finish(self):
        if self.prof is not None:
            self.prof.stop()
            self.prof.export_chrome_trace(self.path)
            print(f"reference: profile written to {self.path}", file=sys.stderr)
            self.prof = None


PROFILE = Profile()


def train_steps(args, device, loss_fn, opt):
    times = {"forward": [], "backward": [], "optim": [], "total": []}
    for step in range(args.warmup + args.steps):
        PROFILE.before_step(step, args.warmup)
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
    PROFILE.finish()
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", default="", help="write torch.profiler's Chrome trace of the "
                   "timed steps here (the times then include its overhead)")
    sub = p.add_subparsers(dest="workload", required=True)
    s = sub.add_parser("smallnet")
    s.add_argument("--image", type=int, default=128)
    s.add_argument("--batch", type=int, default=8)
    d = sub.add_parser("detector")
    d.add_argument("--preset", default="tiny", choices=["tiny", "resnet50_fpn"])
    d.add_argument("--image", type=int, default=128)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--boxes", type=int, default=4)
    d.add_argument("--classes", type=int, default=10)
    # ovkd's side only (embedding size, batch norm kind): accepted so that one argument list
    # drives both sides.
    d.add_argument("--embed-dim", type=int, default=64)
    d.add_argument("--norm", default="preset")
    g = sub.add_parser("segmenter")
    g.add_argument("--image", type=int, default=128)
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--classes", type=int, default=10)
    t = sub.add_parser("teacher")
    t.add_argument("--crops", type=int, default=64, help="random crops when no --crops-file")
    t.add_argument("--batch", type=int, default=32, help="region crops per forward")
    t.add_argument("--crops-file", default="", help="safetensors with pixel_values [N,3,224,224]")
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    PROFILE.path = args.profile
    times = {"smallnet": smallnet, "detector": detector, "segmenter": segmenter,
             "teacher": teacher}[args.workload](args, device)
    print(f"reference: torch {torch.__version__} on {device}, {torch.get_num_threads()} threads",
          file=sys.stderr)
    print(json.dumps({"device": str(device), "steps": args.steps, "times_ms": times}))


if __name__ == "__main__":
    main()
