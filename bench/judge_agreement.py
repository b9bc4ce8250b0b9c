"""Where do two judges disagree? Label by label, on folders of generated (or rendered) images.

Usage:
    python -m bench.judge_agreement --judge weights/judge.pth judge_seed1.pth --images generated/test generated/new_test
    python -m bench.judge_agreement --judge A.pth B.pth --images out/s0/test out/s1/test --json test.json

Each true label of each image is read right (in the image's top k, the official metric) by both
judges, by the first only, by the second only, or by neither. Two accuracies can be close while
the judges disagree on many labels, or apart because of a handful of ambiguous objects; this
tells which. Prints a markdown table per label file (summed over its folders), then the labels
only one judge reads right, by shape and by the number of objects in the scene.
"""
import collections
from pathlib import Path

from bench.common import ROOT
from dataset import load_numbered_images, load_objects, to_model_range
from evaluate_generated import list_labels
from evaluator import evaluation_model
from utils import ArgumentParser, exit_on_user_error


def label_agreement(scores_a, scores_b, label_lists, label2idx):
    """One (label, objects in the scene, read right by A, read right by B) per true label, in order."""
    rows = []
    for labels, a, b in zip(label_lists, scores_a, scores_b):
        k = len(labels)
        top_a, top_b = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
        rows += [(label, k, label2idx[label] in top_a, label2idx[label] in top_b) for label in labels]
    return rows


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--judge", nargs=2, required=True, metavar="FILE", help="The two judge checkpoints to compare "
                   "(course format).")
    p.add_argument("--images", nargs="+", required=True, metavar="DIR", help="Folders of 0.png ... n-1.png.")
    p.add_argument("--json", help="The label file of every folder (default: <folder name>.json in the repository, "
                   "so generated/test reads test.json).")
    p.add_argument("--objects", default=str(ROOT / "objects.json"), help="The 24 labels and their indices.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    label2idx = load_objects(args.objects)
    judges = [evaluation_model(path, device=args.device) for path in args.judge]
    counts, only = collections.defaultdict(collections.Counter), collections.Counter()
    for folder in map(Path, args.images):
        json_path = Path(args.json) if args.json else ROOT / f"{folder.name}.json"
        label_lists = list_labels(json_path, label2idx)
        x = to_model_range(load_numbered_images(folder, len(label_lists), size=64,
                                                how_to_fix="generate them with generate.py --out DIR"))
        rows = label_agreement(*(judge.predict(x) for judge in judges), label_lists, label2idx)
        for label, k, a, b in rows:
            counts[json_path.stem][(a, b)] += 1
            if a != b:
                only[(json_path.stem, "first" if a else "second", label.split()[-1], k)] += 1
    first, second = (judge.name() for judge in judges)
    print(f"first: {first}\nsecond: {second}\n")
    print("| label file | labels | both right | first only | second only | neither | first / second accuracy |")
    print("|---|---|---|---|---|---|---|")
    for stem, c in counts.items():
        n = sum(c.values())
        acc_a, acc_b = (c[(True, True)] + c[(True, False)]) / n, (c[(True, True)] + c[(False, True)]) / n
        print(f"| {stem} | {n} | {c[(True, True)]} | {c[(True, False)]} | {c[(False, True)]} | {c[(False, False)]} "
              f"| {acc_a:.4f} / {acc_b:.4f} |")
    print("\n| label file | read right by | shape | objects in the scene | labels |\n|---|---|---|---|---|")
    for (stem, who, shape, k), n in sorted(only.items()):
        print(f"| {stem} | {who} only | {shape} | {k} | {n} |")


if __name__ == "__main__":
    main()
