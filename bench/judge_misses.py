"""Where does the judge miss? Misses on fresh renders by each object's visible pixels and by object count.

Usage:
    python -m bench.judge_misses                               # the default judge, 2,000 renders of seed 2
    python -m bench.judge_misses --judge /tmp/judge.pth --root renders/heldout_val --n 1000 --seed 1

Scores --n random renders (rendered into --root on first use, as python -m bench.evaluator_bench does)
with the official metric, then recomputes every scene's layout from the renderer's seed to count
how many pixels of each object the camera sees (CLEVR's rule keeps at least about 11 of 4,096
at 64x64). A true label missing from an image's top k is a miss of that object. Prints markdown
tables: misses by visible pixels, by objects in the scene, and the commonest swaps (true label ->
the wrong label that took its place, paired in order when an image has several misses), and with
--figure draws the missed scenes (each miss listed in the printed line after the tables). This
tells apart a judge short of training (misses on objects in plain view) from scenes the renderer
makes hard (misses on barely visible objects).
"""
import collections
from pathlib import Path

from bench.common import ROOT, heldout_parser, rendered_layouts
from clevr_scene import visible_pixels
from dataset import load_objects, to_model_range
from evaluator import evaluation_model
from grid import save_grid
from train_evaluator import random_renders
from utils import read_json

BUCKETS = [(0, 20), (20, 30), (30, 50), (50, 100), (100, 4096)]
Row = collections.namedtuple("Row", "pixels objects hit label taken image")  # one object of a scene


def object_rows(scores, truth, layouts, settings, idx2label):
    """One Row per object of scenes 0.png, 1.png, ...: its visible pixels, the objects in its scene,
    whether it is hit, its label, the wrong label that took its place (None when hit), the image."""
    rows = []
    for i in range(len(scores)):
        objects = layouts[f"{i}.png"]
        visible = visible_pixels(objects, tuple(settings["size"]), settings["supersample"])
        top_k = scores[i].topk(len(objects)).indices.tolist()  # the official metric's k best classes
        top = [idx2label[c] for c in top_k]
        wrong = iter(idx2label[c] for c in top_k if not truth[i, c])  # the labels that took the misses' places
        for o, pixels in zip(objects, visible):
            label = f"{o.color} {o.shape}"
            hit = label in top
            rows.append(Row(float(pixels), len(objects), hit, label, None if hit else next(wrong), i))
    return rows


def build_parser():
    p = heldout_parser(__doc__.split("\n")[0])
    p.add_argument("--top", type=int, default=10, help="How many of the commonest swaps to list.")
    p.add_argument("--figure", help="Also draw up to 32 of the missed scenes into this PNG (in render order).")
    p.add_argument("--hflip", action="store_true", help="Average each image's scores with its mirror image's "
                   "(test-time augmentation: not what evaluator.py or the course's judge does).")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    judge = evaluation_model(args.judge, device=args.device)
    images, truth = random_renders(args.root, args.n, args.seed, ROOT / "objects.json")
    label2idx = load_objects(ROOT / "objects.json")
    settings, layouts = rendered_layouts(args.root, None, read_json(Path(args.root) / "labels.json"))
    x = to_model_range(images)
    scores = judge.predict(x)
    if args.hflip:
        scores = (scores + judge.predict(x.flip(-1))) / 2
    rows = object_rows(scores, truth, layouts, settings, {i: label for label, i in label2idx.items()})
    missed_rows = [r for r in rows if not r.hit]
    misses = len(missed_rows)
    print(f"checkpoint: {judge.name()}; {args.n} renders of seed {settings['seed']}: {len(rows) - misses}/{len(rows)} "
          f"labels hit ({1 - misses / len(rows):.4f}), {misses} misses{' (mirror-averaged scores)' * args.hflip}\n")
    print("| visible pixels | objects | misses | miss rate | share of all misses |\n|---|---|---|---|---|")
    for lo, hi in BUCKETS:
        part = [r for r in rows if lo <= r.pixels < hi]
        lost = sum(not r.hit for r in part)
        rate, share = lost / max(1, len(part)), lost / max(1, misses)
        print(f"| {lo}-{hi - 1} | {len(part)} | {lost} | {rate:.3f} | {share:.2f} |")
    print("\n| objects in the scene | labels | misses | accuracy |\n|---|---|---|---|")
    for k in (1, 2, 3):
        part = [r for r in rows if r.objects == k]
        lost = sum(not r.hit for r in part)
        print(f"| {k} | {len(part)} | {lost} | {1 - lost / max(1, len(part)):.4f} |")
    swaps = collections.Counter((r.label, r.taken) for r in missed_rows)
    print("\n| true label | taken by | times |\n|---|---|---|")
    for (true, taken), times in swaps.most_common(args.top):
        print(f"| {true} | {taken} | {times} |")
    if args.figure and misses:
        missed = sorted({r.image for r in missed_rows})[:32]
        save_grid(images[missed], args.figure, caption=f"{judge.checkpoint}: scenes with a miss (render seed "
                  f"{settings['seed']}), left to right")
        print(f"\n{args.figure}: " + "; ".join(
            f"{r.image}.png {r.label} ({r.pixels:.0f} px) -> {r.taken}" for r in missed_rows if r.image in missed))


if __name__ == "__main__":
    main()
