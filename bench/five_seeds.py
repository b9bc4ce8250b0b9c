"""The issue protocol for a generator: official accuracy over 5 sampling seeds, by judge, label file and object count.

Usage:
    python -m bench.five_seeds --ckpt weights/generator.safetensors --judge weights/judge.pth runs/judge_seed1.pth
    python -m bench.five_seeds --ckpt A.pt B.pt --json test.json new_test.json three_objects.json \
        --guidance-interval 0.2 0.8 --out docs/notes/five_seeds.json

Each checkpoint draws every label file with seeds 0-4 exactly as generate.py does (its preset's
sampler, steps and guidance unless given; images resized to 64x64 and rounded to uint8 as the PNGs
are), and each judge scores them with the official metric. Prints, per checkpoint and label file,
the mean (min-max) over seeds for every judge, the first judge's accuracy by objects in the scene,
and the images' detail: the mean gradient magnitude of their grayscale against that of renders of
the same labels (render_iclevr.py, rendered into renders/<label file stem> on first use); 1.0 is as
sharp as the renders, a 32x32 image upsampled gives about 0.8. --out keeps every number as JSON.
--cache DIR keeps every draw (uint8, one file per checkpoint, settings, label file and seed) and
reuses it, so a judge trained later scores the very same images without drawing them again.
"""
import argparse
import hashlib
import json
from pathlib import Path

import torch

import render_iclevr
from bench.common import ROOT
from dataset import ICLEVRDataset, load_numbered_images, to_64, to_model_range, to_uint8
from evaluator import evaluation_model, official_hits
from sampling import load_sampler
from utils import atomic_write, exit_on_user_error, load_torch_file, save_torch, sha256_of


def detail(images_uint8):
    """Mean gradient magnitude (forward differences) of the grayscale of uint8 images, in [0, 1] units."""
    gray = (images_uint8.float() / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    dx, dy = gray[:, :-1, 1:] - gray[:, :-1, :-1], gray[:, 1:, :-1] - gray[:, :-1, :-1]
    return (dx ** 2 + dy ** 2).sqrt().mean().item()


def renders_of(json_path, objects):
    """Renders of a list-style label file (the reference for detail), rendered on first use."""
    folder = ROOT / "renders" / Path(json_path).stem
    n = len(json.loads(Path(json_path).read_text()))
    if not (folder / f"{n - 1}.png").is_file():
        render_iclevr.main(["--json", str(json_path), "--out", str(folder), "--objects", str(objects)])
    return load_numbered_images(folder, n)


def cached_draw(drawer, multi_hot, seed, json_path, cache):
    """The uint8 64x64 images generate.py would write, from --cache when drawn before with the same everything."""
    if cache is None:
        return to_uint8(to_64(drawer(multi_hot, seed=seed)))
    files = [drawer.path] + ([drawer.refiner.path] if drawer.refiner is not None else [])
    key = json.dumps([drawer.settings(), [sha256_of(f) for f in files], Path(json_path).read_text(), seed],
                     sort_keys=True)
    path = Path(cache) / f"{Path(json_path).stem}_seed{seed}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        return load_torch_file(path, "cached draw")
    images = to_uint8(to_64(drawer(multi_hot, seed=seed)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(path, images)
    return images


def mean_range(values):
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():.3f} ({t.min():.3f}-{t.max():.3f})"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="train.py checkpoints or generator files.")
    p.add_argument("--judge", nargs="+", default=[None], help="Judges; the first one splits by object count.")
    p.add_argument("--json", nargs="+", default=["test.json", "new_test.json"], help="List-style label files.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Sampling seeds.")
    p.add_argument("--guidance", type=float, help="Guidance scale (default: the preset's).")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"), help="As generate.py's.")
    p.add_argument("--steps", type=int, help="Sampling steps (default: the preset's).")
    p.add_argument("--best-of", type=int, default=1, help="As generate.py's: K candidates per image, the verifier's "
                   "pick.")
    p.add_argument("--verifier", help="As generate.py's (default: weights/verifier_PRESET.safetensors).")
    p.add_argument("--refiner", help="As generate.py's: a model that redraws the finished images.")
    p.add_argument("--refine-strength", type=float, help="As generate.py's (default: 0.3).")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--cache", help="Keep the drawn images in this folder and reuse them when drawn with the same "
                   "files, settings, labels and seed (to score them with another judge later).")
    p.add_argument("--out", help="Also write the results as JSON here.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    judges = [evaluation_model(j) for j in args.judge]
    results = []
    for ckpt in args.ckpt:
        drawer = load_sampler(ckpt, steps=args.steps, guidance=args.guidance, interval=args.guidance_interval,
                              best_of=args.best_of, verifier=args.verifier, refiner=args.refiner,
                              strength=args.refine_strength)
        print(f"\n{drawer.describe()}\n")
        print("| label file | " + " | ".join(f"judge {i + 1}" for i in range(len(judges)))
              + " | 1 object | 2 objects | 3 objects | detail vs renders |")
        print("|---" * (len(judges) + 5) + "|")
        for json_path in args.json:
            multi_hot = ICLEVRDataset(None, json_path, args.objects).multi_hot
            counts = multi_hot.sum(1).long()
            accs, by_count, sharp = [[] for _ in judges], {k: [] for k in (1, 2, 3)}, []
            for seed in args.seeds:
                images = cached_draw(drawer, multi_hot, seed, json_path, args.cache)  # what generate.py writes
                sharp.append(detail(images))
                for i, judge in enumerate(judges):
                    scores = judge.predict(to_model_range(images))
                    hits, total = official_hits(scores, multi_hot)
                    accs[i].append(hits / total)
                    if i == 0:
                        for k in by_count:
                            if (counts == k).any():
                                h, n = official_hits(scores[counts == k], multi_hot[counts == k])
                                by_count[k].append(h / n)
            reference = detail(renders_of(json_path, args.objects))
            ratio = sum(sharp) / len(sharp) / reference
            print(f"| {Path(json_path).name} | " + " | ".join(mean_range(a) for a in accs) + " | "
                  + " | ".join(mean_range(v) if v else "-" for v in by_count.values()) + f" | {ratio:.3f} |",
                  flush=True)
            results.append(dict(ckpt=str(ckpt), settings=drawer.settings(), json=str(json_path), seeds=args.seeds,
                                judges=[j.name() for j in judges], accuracy=accs, by_objects=by_count,
                                detail=sharp, render_detail=reference))
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))


if __name__ == "__main__":
    main()
