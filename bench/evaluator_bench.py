"""Measure the judge: held-out accuracy (clean and degraded), negative controls, CPU throughput.

Usage:
    python -m bench.evaluator_bench                          # the default judge, 2,000 fresh renders
    python -m bench.evaluator_bench --judge checkpoint.pth --n 2000 --seed 2

The held-out scenes are rendered with --seed 2 (training uses 0, train_evaluator.py's model
selection uses 1), so nothing here was seen or selected on. Every accuracy is the official one.
Negative controls: the same renders paired with wrong labels (same size, no label shared),
uniform noise, flat gray, and the empty ground, each scored against the held-out label sets.
"""
import time

import torch

from bench.common import ROOT, heldout_parser, wrong_labels
from clevr_scene import render_scene
from dataset import to_model_range
from evaluator import evaluation_model, official_hits
from train_evaluator import down_up, random_renders


def build_parser():
    return heldout_parser(__doc__.split("\n")[0])


def main(argv=None):
    args = build_parser().parse_args(argv)
    judge = evaluation_model(args.judge, device=args.device)
    images, truth = random_renders(args.root, args.n, args.seed, ROOT / "objects.json")
    x = to_model_range(images)
    gen = torch.Generator().manual_seed(0)
    blank = torch.from_numpy(render_scene([], counts=[0])[0][0]).permute(2, 0, 1)
    cases = [
        ("fresh renders, 64x64", x, truth, ">= 0.995"),
        ("after a 48x48 down/up-sample", down_up(x, 48), truth, ""),
        ("after a 32x32 down/up-sample", down_up(x, 32), truth, ">= 0.99"),
        ("renders with wrong labels", x, wrong_labels(truth, gen), "<= 0.15"),
        ("uniform noise", torch.rand(x.shape, generator=gen) * 2 - 1, truth, "<= 0.15"),
        ("flat gray", torch.zeros_like(x), truth, "<= 0.15"),
        ("empty ground (no objects)", to_model_range(blank).expand_as(x), truth, "<= 0.15"),
    ]
    print(f"checkpoint: {judge.name()}; {judge.meta or 'no metadata'}")
    print(f"| input ({args.n} images) | official accuracy | hits/total | target |")
    print("|---|---|---|---|")
    for name, inputs, labels, target in cases:
        hits, total = official_hits(judge.predict(inputs), labels)
        print(f"| {name} | {hits / total:.4f} | {hits}/{total} | {target} |")
    judge.predict(x[:256])  # warm-up
    start = time.perf_counter()
    judge.predict(x[:1024])
    seconds = time.perf_counter() - start
    print(f"\nthroughput on {judge.device} ({torch.get_num_threads()} threads, batch {judge.batch_size}): "
          f"{1024 / seconds:.0f} images/s")
    print(f"training time (from the checkpoint): {judge.meta.get('train_seconds', float('nan')) / 60:.1f} min")


if __name__ == "__main__":
    main()
