"""How much of what the judges see survives an autoencoder: judges on held-out renders and their reconstructions.

Usage:
    python -m bench.autoencoder_scores --autoencoder weights/autoencoder_cpu64.pt --preset cpu64 \
        --judge weights/judge.pth runs/judge_seed1.pth

The held-out renders are train_autoencoder.py's (1,000 random scenes of render seed 1, never trained
on). For each judge: the official accuracy on the originals and on the reconstructions, overall and
by objects in the scene; then, label by label, how often two judges agree on the reconstructions.
The judges only score. Prints a markdown table.
"""
import argparse

import torch

from autoencoder import default_file, load_autoencoder
from dataset import to_64
from evaluator import evaluation_model, label_hits, official_hits
from model import preset_config
from train_autoencoder import reconstruct
from train_evaluator import random_renders
from utils import exit_on_user_error


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu64", help="Latent preset the autoencoder belongs to.")
    p.add_argument("--autoencoder", help="Autoencoder file (default: the preset's shipped one).")
    p.add_argument("--judge", nargs="+", default=[None], help="Judge files (default: the shipped judge).")
    p.add_argument("--heldout", type=int, default=1000, help="Held-out renders (seed 1).")
    p.add_argument("--heldout-root", default="renders/heldout_val", help="Their folder (rendered on first use).")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    return p


def hits_by_count(scores, multi_hot):
    """{objects in the scene: (hits, labels)} under the official top-k rule."""
    counts = multi_hot.sum(1).long()
    return {int(k): official_hits(scores[counts == k], multi_hot[counts == k]) for k in counts.unique()}


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    config = preset_config(args.preset)["latent"]
    path = args.autoencoder or default_file(args.preset)
    codec = load_autoencoder(path, config)
    images, multi_hot = random_renders(args.heldout_root, args.heldout, 1, args.objects)
    x, y = reconstruct(codec, images)
    print(f"{path} ({args.preset}), {len(images)} held-out renders; reconstruction MSE "
          f"{torch.mean((x - y) ** 2).item():.5f}\n")
    print("| judge | originals | reconstructions | 1 object | 2 objects | 3 objects |")
    print("|---|---|---|---|---|---|")
    picks = []
    for file in args.judge:
        judge = evaluation_model(file)
        recon = judge.predict(to_64(y))
        by = hits_by_count(recon, multi_hot)
        cells = [f"{h / n:.4f}" for h, n in (by.get(k, (0, 1)) for k in (1, 2, 3))]
        print(f"| {judge.name()} | {judge.eval(to_64(x), multi_hot):.4f} | {judge.eval(to_64(y), multi_hot):.4f} | "
              + " | ".join(cells) + " |")
        picks.append(label_hits(recon, multi_hot)[multi_hot > 0])
    for i in range(1, len(picks)):
        agree = (picks[0] == picks[i]).float().mean().item()
        print(f"\njudge 1 and judge {i + 1} agree on {agree:.4f} of the labels of the reconstructions "
              f"(hit or miss alike)")


if __name__ == "__main__":
    main()
