"""Short judge-training proxies: which change to train_evaluator.py's recipe learns more per step?

Usage:
    python -m bench.judge_proxy --name base
    python -m bench.judge_proxy --name softmax --loss softmax
    python -m bench.judge_proxy --name aux3 --aux layer3        # object-centre maps from the renderer
    python -m bench.judge_proxy --name dense3 --extra-root renders/dense3   # a test.json-style list render

Each run trains the course's ResNet18 for --steps steps of --batch-size (one-cycle AdamW, the
same augmentation as train_evaluator.py) on train.json's renders plus the judge's extra random
scenes, then prints one JSON line (also appended to --log): official held-out accuracy on
train_evaluator.py's validation renders, clean and after a 32x32 down/up-sample, for the raw
weights and for an EMA of them, and the training seconds. --aux adds a 1x1-conv head on layer2
(8x8) or layer3 (4x4) trained to mark, per class, the cell holding each object's centre; the
centres are recomputed from the renderer's seeded layouts (each folder's .render.json), so the
folders must be this project's renders. The head is only a training signal: the judge stays the
course's network.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bench.common import rendered_layouts
from clevr_scene import project
from dataset import ICLEVRDataset, load_objects, read_json
from evaluator import build_network
from train_evaluator import accuracy, augment, random_renders

AUX = {"layer2": (128, 8), "layer3": (256, 4)}  # channels and grid of each layer's output at 64x64


def render_settings(folder):
    """The settings render_iclevr.py rendered `folder` with (its .render.json); exits if there is none."""
    path = Path(folder) / ".render.json"
    if not path.is_file():
        print(f"{folder} is not a render of this project: run make demo (or render_iclevr.py) first", file=sys.stderr)
        sys.exit(2)
    return read_json(path)


def centres(folder, names, label_lists, label2idx):
    """(N, 3, 3) tensor of (class, column / width, row / height) per object, -1 where a scene has fewer."""
    s, layouts = rendered_layouts(folder, names, label_lists)
    width, height = s["size"]
    out = torch.full((len(label_lists), 3, 3), -1.0)
    for i, name in enumerate(names or [f"{i}.png" for i in range(len(label_lists))]):
        for m, o in enumerate(layouts[name]):
            col, row = project(o.center, width, height)
            out[i, m] = torch.tensor([label2idx[f"{o.color} {o.shape}"], col / width, row / height])
    return out


def centre_maps(pos, flipped, grid):
    """Per-class (grid x grid) targets: 1 in the cell holding an object's centre (mirrored for flipped images)."""
    maps = torch.zeros(len(pos), 24, grid, grid)
    for i, objs in enumerate(pos.tolist()):
        for c, col, row in objs:
            if c >= 0:
                col = 1 - col if flipped[i] else col
                maps[i, int(c), min(int(row * grid), grid - 1), min(int(col * grid), grid - 1)] = 1
    return maps


def forward(net, x, aux_layer):
    """The ResNet18 forward pass, also returning the output of `aux_layer` (or None)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    feature = None
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
        feature = x if name == aux_layer else feature
    return net.fc(torch.flatten(net.avgpool(x), 1)), feature


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="Name of this run in the printed line and the log.")
    p.add_argument("--data-root", default="iclevr", help="Folder of train.json's renders.")
    p.add_argument("--json", default="train.json", help="Training label file.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--extra-root", default="renders/judge_extra",
                   help="Extra scenes: a --random render or a list-file render with its labels.json beside.")
    p.add_argument("--val-root", default="renders/heldout_val", help="Held-out --random renders (1,000).")
    p.add_argument("--steps", type=int, default=620, help="Optimizer steps of batch 32.")
    p.add_argument("--batch-size", type=int, default=32, help="Images per step.")
    p.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate of the one-cycle AdamW schedule.")
    p.add_argument("--loss", choices=["bce", "softmax"], default="bce",
                   help="bce: train_evaluator.py's loss; softmax: cross-entropy against the labels spread evenly.")
    p.add_argument("--augment-prob", type=float, default=0.5, help="Fraction of images degraded (as train_evaluator).")
    p.add_argument("--ema", type=float, default=0.995, help="Decay of the EMA also scored.")
    p.add_argument("--aux", choices=sorted(AUX), help="Add the object-centre head on this layer.")
    p.add_argument("--aux-weight", type=float, default=1.0, help="Weight of the object-centre loss.")
    p.add_argument("--seed", type=int, default=0, help="Seed of initialisation, order and augmentation.")
    p.add_argument("--log", help="Also append the result line to this file.")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)

    seeds = {folder: render_settings(folder)["seed"] for folder in (a.data_root, a.extra_root, a.val_root)}
    torch.manual_seed(a.seed)
    train = ICLEVRDataset(a.data_root, a.json, a.objects, image_size=64, preload=True)
    extra_lists = read_json(Path(a.extra_root) / "labels.json")
    extra_images, extra_labels = random_renders(a.extra_root, len(extra_lists), seeds[a.extra_root], a.objects)
    images, multi_hot = torch.cat([train.images, extra_images]), torch.cat([train.multi_hot, extra_labels])
    val_images, val_labels = random_renders(a.val_root, 1000, seeds[a.val_root], a.objects)
    net = build_network(sigmoid=False)
    params = list(net.parameters())
    if a.aux:
        label2idx = load_objects(a.objects)
        pos = torch.cat([centres(a.data_root, train.names, train.labels, label2idx),
                         centres(a.extra_root, None, extra_lists, label2idx)])
        channels, grid = AUX[a.aux]
        head = nn.Conv2d(channels, 24, 1)
        params += list(head.parameters())
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(a.ema), use_buffers=True)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(a.seed)
    start, step = time.time(), 0
    while step < a.steps:
        for idx in torch.randperm(len(images), generator=gen).split(a.batch_size):
            if len(idx) < a.batch_size or step >= a.steps:
                break
            if a.aux:
                peek = torch.Generator()
                peek.set_state(gen.get_state())
                flipped = torch.rand(len(idx), generator=peek) < 0.5  # augment()'s first draw: its flips
            logits, feature = forward(net, augment(images[idx], gen, a.augment_prob), a.aux)
            y = multi_hot[idx]
            if a.loss == "bce":
                loss = F.binary_cross_entropy_with_logits(logits, y)
            else:
                loss = -(y / y.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
            if a.aux:
                target = centre_maps(pos[idx], flipped, grid)
                loss = loss + a.aux_weight * F.binary_cross_entropy_with_logits(
                    head(feature), target, reduction="sum") / (len(idx) * 24)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(net)
            step += 1
    seconds = time.time() - start
    result = dict(name=a.name, steps=a.steps, batch_size=a.batch_size, lr=a.lr, loss=a.loss,
                  augment_prob=a.augment_prob, aux=a.aux, aux_weight=a.aux_weight, extra_root=a.extra_root,
                  seed=a.seed, train_s=round(seconds, 1),
                  raw=accuracy(net, val_images, val_labels, "cpu"),
                  raw_32=accuracy(net, val_images, val_labels, "cpu", degrade_to=32),
                  ema=accuracy(ema.module, val_images, val_labels, "cpu"),
                  ema_32=accuracy(ema.module, val_images, val_labels, "cpu", degrade_to=32))
    print(json.dumps(result))
    if a.log:
        with open(a.log, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
