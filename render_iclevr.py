"""Render i-CLEVR-like scenes offline (numpy + Pillow), one PNG per entry of a label file.

Usage:
    python render_iclevr.py                        # train.json -> iclevr/ (18,009 PNGs, 64x64)
    python render_iclevr.py --json test.json       # -> renders/test/0.png ... 31.png
    python render_iclevr.py --random 2000 --seed 1 --out renders/heldout   # + labels.json
    python render_iclevr.py --figure docs/renders.png   # also save a figure of the first scenes
    python render_iclevr.py --size 320x240 --limit 30   # CLEVR's own frame, first 30 entries
    python render_iclevr.py --random 2000 --randomize 1 --out renders/randomized   # domain randomization
    python render_iclevr.py --random 600 --set camera_elevation=12 --out renders/camera_high   # one shift
    python render_iclevr.py --masks renders/iclevr_masks   # + per image, the same name there: its objects' index mask

A dict file (train.json) keeps its file names; `CLEVR_train_S_0/1/2.png` are one scene built
one object at a time, as in i-CLEVR, so `_1` is `_0` plus one object. A list file (test.json)
is rendered as 0.png, 1.png, ... in order. The same --seed and label file give byte-identical
PNGs whatever --workers is. Rerunning an interrupted command continues where it stopped (each
PNG is written to a temporary name, then renamed, so none is ever left truncated).
The real i-CLEVR images were made with Blender; clevr_scene.py re-creates CLEVR's camera,
lights, palette and shapes with a numpy ray caster so the project runs with no download.

--randomize S draws each scene's camera, field of view, object sizes and shades, metal share, ground,
lights and image degradations from ranges S times the full ones (listed below and in docs/data.md),
from the scene's own generator: the same --seed still gives byte-identical images. --set NAME=LO,HI
(or NAME=V) replaces one range. Without either, the images are exactly CLEVR's fixed scene.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from clevr_scene import (
    MATERIALS,
    SIZES,
    SceneObject,
    frame,
    in_frame,
    object_mask,
    render_scene,
    visible_pixels,
)
from clevr_style import DEFAULT_STYLE, RANDOMIZABLE, draw_albedo, draw_style, randomization
from dataset import load_label_file, load_objects, mask_record
from utils import TMP_SUFFIX, ArgumentParser, ICLEVRError, atomic_write, exit_on_user_error, read_json, write_png
from utils import HelpFormatter as DefaultsShown

MIN_VISIBLE = 200 / (320 * 240)  # CLEVR: at least 200 unoccluded pixels of a 320x240 image
MIN_GAP = 0.25  # CLEVR: surface gap between objects
MAX_XY = 3.0  # CLEVR: x, y ~ U(-3, 3)


@dataclass
class Job:
    """One scene: its objects' labels in order, and the images (file name, object count) to write."""
    key: str
    labels: list
    images: list


def plan_jobs(names, label_lists):
    """Group a label file's entries into scenes (`X_0.png`, `X_1.png`, ... with growing lists)."""
    if names is None:
        return [Job(str(i), labels, [(f"{i}.png", len(labels))]) for i, labels in enumerate(label_lists)]
    groups = {}
    for name, labels in zip(names, label_lists):
        m = re.fullmatch(r"(.+)_(\d+)\.png", name)
        groups.setdefault(m.group(1) if m else name, []).append((name, labels))
    jobs = []
    for key, entries in groups.items():
        full = max((labels for _, labels in entries), key=len)
        scene = [(name, len(labels)) for name, labels in entries if labels == full[:len(labels)]]
        jobs.append(Job(key, full, scene))
        jobs += [Job(name, labels, [(name, len(labels))])  # not a step of this scene: its own
                 for name, labels in entries if labels != full[:len(labels)]]
    return jobs


def scene_rng(seed, key):
    """A generator that depends only on (seed, scene key): worker count and order do not matter."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little"))


def place_object(label, placed, rng, object_size, material, style=DEFAULT_STYLE):
    """One object at a free spot. As in GeNeVA's i-CLEVR the first object goes near the centre and
    each later one in front of, behind, left or right of an earlier one; CLEVR's spacing applies.
    object_size: large, small, mixed or a (lo, hi) range of radii; material: rubber, metal, mixed or
    the probability of metal."""
    color, shape = label.split()
    if isinstance(object_size, str):
        r = SIZES[rng.choice(list(SIZES)) if object_size == "mixed" else object_size]
    else:  # draws nothing when fixed: then the layouts are the unrandomized ones, where the camera allows
        r = float(rng.uniform(*object_size)) if object_size[0] < object_size[1] else object_size[0]
    if isinstance(material, str):
        mat = rng.choice(MATERIALS) if material == "mixed" else material
    else:
        mat = "metal" if (rng.random() < material if 0 < material < 1 else material) else "rubber"
    (cx, cy, _), (tx, ty, _) = style.camera, style.look_at
    view = math.atan2(ty - cy, tx - cx)  # horizontal direction the camera looks along
    for _ in range(50):
        if not placed:
            x, y = rng.uniform(-1.5, 1.5, size=2)
        else:
            anchor = placed[rng.integers(len(placed))]
            angle = view + rng.integers(4) * math.pi / 2 + rng.uniform(-0.4, 0.4)
            dist = rng.uniform(anchor.footprint + r + MIN_GAP, 3.2)
            x, y = anchor.x + dist * math.cos(angle), anchor.y + dist * math.sin(angle)
        if abs(x) > MAX_XY or abs(y) > MAX_XY:
            continue
        if all(math.hypot(x - o.x, y - o.y) - o.footprint - r >= MIN_GAP for o in placed):
            return SceneObject(shape, color, float(x), float(y), r, float(rng.uniform(0, 2 * math.pi)), mat)
    return None


def place_scene(labels, rng, size=(64, 64), ss=3, object_size="large", material="rubber", style=DEFAULT_STYLE):
    """Objects for `labels`, re-placing the whole scene until every object is inside the frame and
    shows at least CLEVR's minimum of unoccluded pixels (checked with all objects present, so it
    holds for every prefix of the scene too)."""
    min_pixels = MIN_VISIBLE * size[0] * size[1]
    for _ in range(1000):
        objects = []
        for label in labels:
            obj = place_object(label, objects, rng, object_size, material, style)
            if obj is None or not in_frame(obj, size, style):
                break
            objects.append(obj)
        else:
            if visible_pixels(objects, size, ss, style).min() >= min_pixels:
                return objects
    raise ICLEVRError(f"could not place {labels} in 1000 tries: the objects are too small or the camera too far "
                      "to keep CLEVR's minimum of visible pixels; use milder --set values")


def scene_setup(labels, seed, key, size=(64, 64), ss=3, object_size="large", material="rubber", ranges=None):
    """(objects, Style) of one scene. The layout comes from scene_rng(seed, key) as always; with randomization
    `ranges` (clevr_style.randomization) the style, the metal share and the colour shades come first from a
    second generator, scene_rng(seed, key + "/style"), and sizes and materials from the ranges."""
    if ranges is None:
        return place_scene(labels, scene_rng(seed, key), size, ss, object_size, material), DEFAULT_STYLE
    style_rng = scene_rng(seed, f"{key}/style")
    style, metal = draw_style(ranges, style_rng)
    objects = place_scene(labels, scene_rng(seed, key), size, ss, ranges["object_size"], metal, style)
    return [replace(o, albedo=draw_albedo(o.color, ranges, style_rng)) for o in objects], style


def settings_ranges(settings):
    """The randomization ranges a .render.json records (None: CLEVR's fixed scene)."""
    if "randomize" not in settings:
        return None
    return randomization(settings["randomize"], {k: tuple(v) for k, v in settings["set"].items()})


def render_job(job, out, seed, size, ss, object_size, material, ranges=None, masks=None):
    """Render one scene and write the images it still lacks (and, into `masks`, their object masks:
    clevr_scene.object_mask, which draws no random numbers); returns how many images it covered."""
    objects, style = scene_setup(job.labels, seed, job.key, size, ss, object_size, material, ranges)
    counts = [n for _, n in job.images]
    images, coverage = render_scene(objects, size, ss, counts, style)
    files = [(out / name, image) for (name, _), image in zip(job.images, images)
             if masks is None or not (out / name).is_file()]  # with --masks a job may lack only masks
    files += [(masks / name, object_mask(c)) for (name, _), c in zip(job.images, coverage)] if masks else []
    for path, image in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(image, path)
    return len(job.images)


def random_labels(n, seed, label2idx):
    """n random i-CLEVR label lists: 1 to 3 distinct objects each."""
    rng = scene_rng(seed, "random-labels")
    labels = list(label2idx)
    return [[str(x) for x in rng.choice(labels, rng.integers(1, 4), replace=False)] for _ in range(n)]


def parse_size(text):
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not m or not 8 <= int(m.group(1)) <= 4096 or not 8 <= int(m.group(2) or m.group(1)) <= 4096:
        raise ValueError(text)
    return int(m.group(1)), int(m.group(2) or m.group(1))


def parse_randomization(items, strength):
    """--set NAME=V or NAME=LO,HI items -> {name: (lo, hi)}, each checked against RANDOMIZABLE's bounds."""
    if not 0 <= strength <= 1:
        raise ICLEVRError(f"--randomize must be between 0 (off) and 1 (the full ranges), got {strength}")
    fixed = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in RANDOMIZABLE:
            raise ICLEVRError(f"--set {item}: unknown name {name!r}; valid: {', '.join(RANDOMIZABLE)}")
        parts = value.split(",")
        try:
            lo, hi = float(parts[0]), float(parts[-1])
        except ValueError:
            lo = hi = math.nan  # refused just below, as NaN is
        bounds, meaning = RANDOMIZABLE[name][3:]
        if len(parts) > 2 or not bounds[0] <= lo <= hi <= bounds[1]:
            raise ICLEVRError(f"--set {item}: expected {name}=V or {name}=LO,HI with {bounds[0]} <= LO <= HI <= "
                              f"{bounds[1]} ({meaning})")
        if name in fixed:
            raise ICLEVRError(f"--set {name} is given twice")
        fixed[name] = (lo, hi)
    return fixed


def check_manifest(out, settings):
    """A folder is only ever continued with the settings that started it."""
    path = out / ".render.json"
    if path.is_file():
        old = read_json(path)
        if old != settings:
            diff = ", ".join(f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in {**old, **settings}
                             if old.get(k) != settings.get(k))
            raise ICLEVRError(f"{out} was rendered with other settings: {diff}; use the same ones or another --out")
    else:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1)))


def save_figure(out, jobs, path, scenes=8):
    """A grid of the first scenes, one image per step (_0, _1, _2) side by side, labels as titles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(out / name, ", ".join(job.labels[:n]) if len(job.images) == 1 else
              (job.labels[0] if n == 1 else "+ " + job.labels[n - 1]))
             for job in jobs[:scenes] for name, n in job.images]
    cols = 6 if len(jobs[0].images) == 3 else 8
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (file, title) in zip(axes.flat, cells):
        ax.imshow(Image.open(file).convert("RGB"), interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsShown):
    """utils' formatter (defaults in --help), keeping the line breaks of the table of randomized quantities."""


def randomizable_table():
    """--help's epilog: every quantity --randomize draws and --set takes."""
    rows = [f"  {name:17} {off:<5g} {f'{off - below:g}..{off + above:g}':11} {f'{lo:g}..{hi:g}':11} {meaning}"
            for name, (off, below, above, (lo, hi), meaning) in RANDOMIZABLE.items()]
    return ("quantities drawn per scene: uniformly from the range at 1 shrunk S times towards the value off "
            "(--randomize S),\nor from --set NAME=LO,HI (within the --set bounds):\n"
            f"  {'name':17} {'off':5} {'range at 1':11} {'--set':11} meaning\n" + "\n".join(rows))


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0], epilog=randomizable_table(), formatter_class=HelpFormatter)
    p.add_argument("--json", default="train.json",
                   help="Label file to render: a train.json-style dict or a test.json-style list.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--out", help="Output folder (default: iclevr for a dict file, renders/<json stem> "
                                 "for a list file, renders/random for --random).")
    p.add_argument("--random", type=int, metavar="N",
                   help="Render N random 1-3 object scenes instead of --json and write their labels.json.")
    p.add_argument("--size", type=parse_size, default=(64, 64),
                   help="Image size: 64 (square: the 4:3 frame squashed, as users resize it) or WxH, e.g. 320x240.")
    p.add_argument("--seed", type=int, default=0,
                   help="Seed of the scene layouts: the same seed gives byte-identical images.")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="Processes to render with (default: all cores).")
    p.add_argument("--limit", type=int, metavar="N", help="Render only the first N entries of the label file.")
    p.add_argument("--supersample", type=int, default=3, help="Anti-aliasing: rays per pixel along each axis.")
    p.add_argument("--object-size", choices=["large", "small", "mixed"], default="large",
                   help="CLEVR object size (i-CLEVR uses large); with --randomize or --set: --set object_size=LO,HI.")
    p.add_argument("--material", choices=["rubber", "metal", "mixed"], default="rubber",
                   help="CLEVR material (i-CLEVR looks matte: rubber); with --randomize or --set: --set metal=P.")
    p.add_argument("--randomize", type=float, default=0.0, metavar="S",
                   help="Domain randomization, 0 to 1: each scene draws every quantity listed below from its range "
                   "at 1 shrunk S times towards CLEVR's value (0: CLEVR's fixed scene, byte-identical to earlier "
                   "renders).")
    p.add_argument("--set", action="append", metavar="NAME=V|NAME=LO,HI",
                   help="Fix one quantity listed below to V, or draw it from LO to HI, whatever --randomize is "
                   "(repeatable), e.g. --set camera_elevation=12 for a camera 12 degrees higher.")
    p.add_argument("--masks", metavar="DIR",
                   help="Also write, for every image, a mask PNG of the same name into DIR (a folder apart from "
                   "--out): 8-bit gray, 0 for the ground, k where the k-th object of the image's label list is "
                   "seen (docs/data.md); DIR/masks.json records the label file and settings they belong to.")
    p.add_argument("--figure", metavar="PNG", help="Also save a figure of the first scenes to this file.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag in ("workers", "random", "limit", "supersample"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ICLEVRError(f"--{flag} must be at least 1, got {value}")
    fixed = parse_randomization(args.set, args.randomize)
    ranges = randomization(args.randomize, fixed) if args.randomize or fixed else None
    for flag, value, default, instead in (("object-size", args.object_size, "large", "object_size=LO,HI"),
                                          ("material", args.material, "rubber", "metal=P")):
        if ranges is not None and value != default:
            raise ICLEVRError(f"--{flag} {value} does not mix with --randomize or --set: use --set {instead}")
    label2idx = load_objects(args.objects)
    if args.random:
        names, label_lists = None, random_labels(args.random, args.seed, label2idx)
        out = Path(args.out or "renders/random")
    else:
        names, label_lists = load_label_file(args.json, label2idx)
        out = Path(args.out or ("iclevr" if names else f"renders/{Path(args.json).stem}"))
    all_lists = label_lists  # labels.json of a --random set holds all of it, whatever --limit renders
    if args.limit:
        names, label_lists = (names and names[:args.limit]), label_lists[:args.limit]
    try:
        out.mkdir(parents=True, exist_ok=True)
        settings = dict(seed=args.seed, size=list(args.size), supersample=args.supersample,
                        object_size=args.object_size, material=args.material)
        if ranges is not None:  # only then: the settings of a folder rendered without stay as they were
            settings.update(randomize=args.randomize, set={k: list(v) for k, v in sorted(fixed.items())})
        check_manifest(out, settings)
        if args.random:
            labels_file = out / "labels.json"
            if labels_file.is_file() and read_json(labels_file) != all_lists:
                raise ICLEVRError(f"{labels_file} holds another random set; use another --out")
            atomic_write(labels_file, lambda tmp: tmp.write_text(json.dumps(all_lists)))
        masks, label_file = args.masks and Path(args.masks), out / "labels.json" if args.random else args.json
        if masks and masks.resolve() == out.resolve():
            raise ICLEVRError(f"--masks {masks} is the --out folder: masks need a folder of their own")
        if masks:  # creates it, or refuses one made for another label file or other settings
            mask_record(masks, label_file, settings)
        for stale in [*out.glob(f".*{TMP_SUFFIX}"), *(masks.glob(f".*{TMP_SUFFIX}") if masks else [])]:
            stale.unlink()  # left by an interrupted run
        present = set(os.listdir(out))
        have_masks = set(os.listdir(masks)) if masks else set()
    except OSError as e:
        raise ICLEVRError(f"cannot use output folder {out}: {e.strerror or e}") from None

    jobs = plan_jobs(names, label_lists)
    total = sum(len(j.images) for j in jobs)
    lacks = [(out, present)] + ([(masks, have_masks)] if masks else [])
    todo = [Job(j.key, j.labels, [im for im in j.images
                                  if any(im[0] not in seen and not (d / im[0]).is_file() for d, seen in lacks)])
            for j in jobs]
    todo = [j for j in todo if j.images]
    missing = sum(len(j.images) for j in todo)
    frame(*args.size, args.supersample)  # computed once here, inherited by the workers
    work = partial(render_job, out=out, seed=args.seed, size=args.size, ss=args.supersample,
                   object_size=args.object_size, material=args.material, ranges=ranges, masks=masks)
    start = time.time()
    try:
        with tqdm(total=total, initial=total - missing, unit="img", desc=f"rendering {out}") as bar:
            if args.workers == 1 or len(todo) < 2:
                for job in todo:
                    bar.update(work(job))
            else:
                with Pool(min(args.workers, len(todo))) as pool:
                    for n in pool.imap_unordered(work, todo, chunksize=8):
                        bar.update(n)
    except KeyboardInterrupt:
        print(f"interrupted: {out} keeps every finished image; rerun the same command to continue")
        sys.exit(130)
    seconds = time.time() - start
    print(f"{out}: {total} images ({missing} rendered now in {seconds:.1f} s"
          f"{f', {missing / seconds:.0f} img/s' if missing and seconds else ''}, {total - missing} already there)")
    if masks:
        mask_record(masks, label_file, settings, total)
        print(f"{masks}: their {total} masks, described by {masks / 'masks.json'}")
    if args.figure:
        save_figure(out, jobs, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
