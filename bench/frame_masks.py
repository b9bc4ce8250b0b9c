"""Masks derived from train.json's frames (X_1 is X_0 plus one object) against the renderer's own masks.

Usage:
    python -m bench.frame_masks                           # 300 scenes of train.json from its 1001st, 64x64
    python -m bench.frame_masks --scenes 100 --start 0 --threshold 24

The course's real images come without masks, but each train.json scene `X_0, X_1, X_2` adds one object per
frame, so object k's mask can be read off where frame k differs from frame k-1 (dataset.frame_masks: a
colour-difference threshold that leaves out shadows). This renders --scenes whole scenes with
render_iclevr.py --masks (once, into --root) and scores the derived masks against the renderer's: per object
position, the mean IoU over scenes and the pixel precision and recall (pooled over all pixels), in the frame
that adds the object and in the last frame (where later objects hide parts of earlier ones). The first object
has no earlier frame: it is derived against a ground estimate, the per-pixel median of all the X_0 frames
(the camera is fixed, the objects move), and reported as not derivable without one. The first 200 scenes
tuned dataset.frame_masks' defaults; the default --start keeps them out. Prints markdown tables.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import render_iclevr
from bench.common import ROOT
from dataset import frame_masks, load_masks
from utils import exit_on_user_error


def pick_scenes(train, start, n):
    """{name: labels} of n whole scenes (X_0, X_1, X_2, each the one before plus one label) from the start-th."""
    scenes = {}
    for name, labels in train.items():
        scenes.setdefault(name.rsplit("_", 1)[0], {})[name] = labels
    whole = [s for s, entries in scenes.items()
             if [len(entries.get(f"{s}_{k}.png", [])) for k in range(3)] == [1, 2, 3]
             and all(entries[f"{s}_{k}.png"] == entries[f"{s}_2.png"][:k + 1] for k in range(3))]
    return {f"{s}_{k}.png": scenes[s][f"{s}_{k}.png"] for s in whole[start:start + n] for k in range(3)}


def scores(pairs):
    """(mean IoU over scenes, pooled precision, pooled recall) of (derived, true) boolean masks."""
    tp = sum(int((d & t).sum()) for d, t in pairs)
    found, true = sum(int(d.sum()) for d, _ in pairs), sum(int(t.sum()) for _, t in pairs)
    iou = np.mean([(d & t).sum() / max((d | t).sum(), 1) for d, t in pairs])
    return iou, tp / max(found, 1), tp / max(true, 1)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=300, help="Whole scenes (3 images each) to score.")
    p.add_argument("--start", type=int, default=1000, help="Index of the first scene in train.json.")
    p.add_argument("--seed", type=int, default=0, help="render_iclevr.py --seed.")
    p.add_argument("--threshold", type=float, default=20, help="dataset.frame_masks' colour-difference threshold.")
    p.add_argument("--root", default=str(ROOT / "renders" / "frame_masks"), help="Cache folder of the renders.")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    entries = pick_scenes(json.loads((ROOT / "train.json").read_text()), args.start, args.scenes)
    root = Path(args.root) / f"start{args.start}_n{args.scenes}_seed{args.seed}"
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "labels.json"
    labels.write_text(json.dumps(entries))
    render_iclevr.main(["--json", str(labels), "--out", str(root / "images"), "--masks", str(root / "masks"),
                        "--seed", str(args.seed), "--workers", "1", "--objects", str(ROOT / "objects.json")])
    names = list(entries)
    images = np.stack([np.asarray(Image.open(root / "images" / name).convert("RGB")) for name in names])
    true = load_masks(root / "masks", names, labels).numpy()
    images, true = images.reshape(-1, 3, *images.shape[1:]), true.reshape(-1, 3, *true.shape[1:])
    ground = np.median(images[:, 0], axis=0).round().astype(np.uint8)  # the objects move, the ground stays

    derived = {(g, k): np.stack([frame_masks(s[:k + 1], ground if g else None, args.threshold) for s in images])
               for g in (True, False) for k in range(3)}  # derived[ground?, frame] (scenes, H, W)
    median, unused = "median of the _0 frames", "not needed"
    rows = [("1st", "_0", median, 0, 0, True), ("2nd", "_1", unused, 1, 1, True), ("3rd", "_2", unused, 2, 2, True),
            ("1st", "_2", median, 0, 2, True), ("2nd", "_2", unused, 1, 2, True), ("1st", "_0", "none", 0, 0, False)]
    print(f"\n{len(images)} scenes of train.json from scene {args.start}, {images.shape[2]}x{images.shape[3]}, "
          f"seed {args.seed}, threshold {args.threshold:g}\n")
    print("| object | frame | ground estimate | mean IoU | precision | recall |\n|---|---|---|---|---|---|")
    for position, frame, ground_text, k, f, with_ground in rows:
        pairs = [(d == k + 1, t == k + 1) for d, t in zip(derived[with_ground, f], true[:, f])]
        if not any(d.any() for d, _ in pairs):
            print(f"| {position} | {frame} | {ground_text} | not derivable | - | - |")
            continue
        iou, precision, recall = scores(pairs)
        print(f"| {position} | {frame} | {ground_text} | {iou:.3f} | {precision:.3f} | {recall:.3f} |")
    print("\nThe added object (2nd and 3rd, in the frame that adds it) by colour:\n")
    print("| colour | objects | mean IoU | precision | recall |\n|---|---|---|---|---|")
    added = [(entries[names[3 * i + k]][k].split()[0], derived[True, k][i] == k + 1, true[i, k] == k + 1)
             for i in range(len(images)) for k in (1, 2)]
    for colour in sorted({c for c, _, _ in added}):
        pairs = [(d, t) for c, d, t in added if c == colour]
        print(f"| {colour} | {len(pairs)} | " + " | ".join(f"{x:.3f}" for x in scores(pairs)) + " |")


if __name__ == "__main__":
    exit_on_user_error(main)()
