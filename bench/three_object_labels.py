"""Draw label sets of three objects that no training image holds: the held-out three_objects.json.

Usage:
    python -m bench.three_object_labels                       # 64 sets, seed 35 -> three_objects.json
    python -m bench.three_object_labels --n 128 --seed 1 --out other.json

Three distinct labels of the 24 per set, drawn uniformly with numpy's generator of --seed; a set is
kept only when no train.json entry holds the same three labels (in any order) and it is not drawn
twice, and it is written in test.json's list format, so generate.py --json and
evaluate_generated.py --json read it as they read a split.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from dataset import load_label_file, load_objects
from utils import atomic_write, exit_on_user_error


def held_out_sets(n, seed, label2idx, train_lists):
    """n three-label lists, none equal as a set to a training entry or to each other."""
    seen = {frozenset(labels) for labels in train_lists if len(labels) == 3}
    rng, names, out = np.random.default_rng(seed), sorted(label2idx, key=label2idx.get), []
    while len(out) < n:
        labels = [names[i] for i in rng.choice(len(names), 3, replace=False)]
        if frozenset(labels) not in seen:
            seen.add(frozenset(labels))
            out.append(labels)
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="How many label sets.")
    p.add_argument("--seed", type=int, default=35, help="Seed of the draw.")
    p.add_argument("--json", default="train.json", help="Training label file whose sets are left out.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--out", default="three_objects.json", help="Where to write the list.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    label2idx = load_objects(args.objects)
    _, train_lists = load_label_file(args.json, label2idx)
    sets = held_out_sets(args.n, args.seed, label2idx, train_lists)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(sets) + "\n"))
    print(f"{args.out}: {len(sets)} three-object label sets (seed {args.seed}), none in {args.json}")


if __name__ == "__main__":
    main()
