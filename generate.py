"""Draw the images of a label file with a trained model: 0.png ... n-1.png at 64x64, plus grid.png.

Usage:
    python generate.py                                  # test.json and new_test.json, newest checkpoint
    python generate.py --split test                     # -> generated/test/
    python generate.py --json my_labels.json --out out/mine
    python generate.py --labels "red sphere" "cyan cube" --n 8   # -> generated/red_sphere+cyan_cube/
    python generate.py --split new_test --ckpt checkpoints/model_epoch_050.pt --sampler dpm --steps 25 --guidance 2
    python generate.py --split test --sampler ddpm --steps 1000 --guidance 1    # the seed report's sampler
    python generate.py --best-of 4                     # each image the best of 4 draws by the verifier
    python generate.py --best-of 4 --refiner runs/cpu64/model_epoch_018.pt   # redrawn at native 64x64 detail

Image i of a label file depends only on (--seed, i) and the settings: any --batch-size gives
the same images, and a rerun with the same settings only draws the images still missing (an
interrupted run continues). Sampler, steps and guidance default to the checkpoint's preset.
Score the result with: python evaluate_generated.py
"""
import json
from pathlib import Path

import torch
from tqdm import tqdm

from dataset import check_labels, encode_labels, load_label_file, load_numbered_images, load_objects, to_uint8
from grid import save_grid
from model import SAMPLERS, to_64
from sampling import add_checkpoint_args, check_guidance, load_sampler
from utils import SPLITS, ArgumentParser, ICLEVRError, atomic_write, exit_on_user_error, write_png

MANIFEST = ".generate.json"  # the settings a folder's images were drawn with


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=SPLITS, help="Label file <split>.json (default: both splits).")
    p.add_argument("--json", help="Any list-style label file (test.json format) instead of a split.")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help='One scene of 1-3 labels such as "red sphere" "cyan cube", drawn --n times (no label file).')
    p.add_argument("--n", type=int, default=8, help="With --labels: how many images of that scene (default 8).")
    add_checkpoint_args(p)
    p.add_argument("--out", help="Output folder (default: generated/<split or json stem>).")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="euler for flow-matching models (cpu, cpu64); ddpm, ddim, dpm (DPM-Solver++) or dpm-sde "
                   "(SDE-DPM-Solver++) for noise-prediction ones; one that does not fit the model is refused "
                   "(default: the preset's).")
    p.add_argument("--steps", type=int, help="Sampling steps (default: the preset's).")
    p.add_argument("--guidance", type=float, help="Classifier-free guidance scale W; 1 = none (default: the preset's).")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="Guide only at noise levels from LO to HI (0 clean, 1 pure noise), one plain pass elsewhere "
                   "(default: every step, or the preset's).")
    p.add_argument("--best-of", type=int, default=1, help="Draw K candidates per image and keep the one the "
                   "verifier reads best (K times the sampling time; candidate 1 is the plain draw; default 1: off).")
    p.add_argument("--verifier", help="With --best-of: the verifier file (train_verifier.py; with --refiner, the "
                   "refiner's; default: weights/verifier_PRESET.safetensors of that model's preset).")
    p.add_argument("--refiner", help="A 64x64 model file (the cpu64 preset's) that redraws the finished images from "
                   "noise level --refine-strength: their objects and layout kept, their detail native 64x64 "
                   "(SDEdit; with --best-of K, K redraws picked by its preset's verifier; default: none).")
    p.add_argument("--refine-strength", type=float, help="With --refiner: the noise level its redraws start from, "
                   "0 (no change) to 1 (a new image) (default: 0.3).")
    p.add_argument("--seed", type=int, default=0, help="Seed: image i uses noise seeded by (seed, i).")
    p.add_argument("--batch-size", type=int, default=64, help="Images per forward pass (does not change the images).")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    p.add_argument("--no-ema", action="store_true", help="Use the raw weights instead of the EMA ones.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    return p


def check_args(args):
    if args.steps is not None and args.steps < 1:
        raise ICLEVRError(f"--steps must be at least 1, got {args.steps}")
    if args.batch_size < 1:
        raise ICLEVRError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_guidance(args.guidance)
    if sum(x is not None for x in (args.json, args.split, args.labels)) > 1:
        raise ICLEVRError("give one of --split, --json and --labels")
    if args.out and not (args.json or args.split or args.labels):
        raise ICLEVRError("--out needs --split, --json or --labels (one label file per folder)")
    if args.n < 1:
        raise ICLEVRError(f"--n must be at least 1, got {args.n}")


def jobs_of(args, label2idx):
    """(label file, output folder, multi-hot rows) triples; --labels writes its own labels.json."""
    if args.labels:
        check_labels(args.labels, label2idx, "--labels")
        out = Path(args.out or Path("generated") / "+".join(x.replace(" ", "_") for x in args.labels))
        return [(out / "labels.json", out, encode_labels(args.labels, label2idx).repeat(args.n, 1))]
    if args.json:
        pairs = [(Path(args.json), Path(args.out or Path("generated") / Path(args.json).stem))]
    else:
        splits = [args.split] if args.split else list(SPLITS)
        pairs = [(Path(f"{s}.json"), Path(args.out or Path("generated") / s)) for s in splits]
    jobs = []
    for json_path, out in pairs:
        names, label_lists = load_label_file(json_path, label2idx)
        if names is not None:
            raise ICLEVRError(f"{json_path} is a train.json-style dict; generate.py takes list files like test.json")
        jobs.append((json_path, out, torch.stack([encode_labels(x, label2idx) for x in label_lists])))
    return jobs


def contiguous_batches(indices, batch_size):
    """[0, 1, 2, 5, 6] -> (0, 3), (5, 7): index ranges of at most batch_size, without gaps."""
    start = prev = None
    for i in indices:
        if start is not None and (i != prev + 1 or i - start == batch_size):
            yield start, prev + 1
            start = None
        start = i if start is None else start
        prev = i
    if start is not None:
        yield start, prev + 1


def generate(drawer, multi_hot, out, seed, batch_size):
    """Write the images of `out` that are missing or were drawn for other labels (all of them when the
    settings changed). The manifest records the settings and each image's label indices."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    settings = {**drawer.settings(), "seed": seed}
    labels = [m.nonzero().flatten().tolist() for m in multi_hot]
    old = json.loads(manifest.read_text()) if manifest.is_file() else {}
    old_labels = old.pop("labels", [])
    same = old == settings
    if not same and any(out.glob("*.png")):
        print(f"{out}: drawn with other settings before: drawing every image again")
    todo = [i for i in range(len(labels)) if not (same and labels[i:i + 1] == old_labels[i:i + 1]
                                                  and (out / f"{i}.png").is_file())]
    if todo or not same or len(old_labels) != len(labels):
        for i in todo:  # a stale image must not survive a kill under a manifest that claims the new labels
            (out / f"{i}.png").unlink(missing_ok=True)
        atomic_write(manifest, lambda tmp: tmp.write_text(json.dumps({**settings, "labels": labels})))
    with tqdm(total=len(todo), desc=f"generating {out}", unit="img") as bar:
        for a, b in contiguous_batches(todo, batch_size):
            images = drawer(multi_hot[a:b], seed, batch_size=batch_size, first_index=a)
            for i, image in zip(range(a, b), to_uint8(to_64(images))):
                write_png(image, out / f"{i}.png")
            bar.update(b - a)
    return len(todo)


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    label2idx = load_objects(args.objects)
    jobs = jobs_of(args, label2idx)
    drawer = load_sampler(args.ckpt, args.checkpoints_dir, not args.no_ema, args.device, args.sampler, args.steps,
                          args.guidance, args.guidance_interval, args.best_of, args.verifier, args.refiner,
                          args.refine_strength)  # checks the settings before any folder changes
    print(f"{drawer.describe()}, seed {args.seed}")
    for json_path, out, multi_hot in jobs:
        if args.labels:  # its own label file, so that evaluate_generated.py can score the folder
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps([args.labels] * args.n)))
        drawn = generate(drawer, multi_hot, out, args.seed, args.batch_size)
        save_grid(load_numbered_images(out, len(multi_hot)), out / "grid.png")
        print(f"{out}: {len(multi_hot)} images ({drawn} drawn now) and grid.png; score them with: "
              f"python evaluate_generated.py --json {json_path} --images {out}")


if __name__ == "__main__":
    main()
