"""Train the course-format ResNet18 judge on rendered i-CLEVR images; write checkpoint.pth.

Usage:
    python train_evaluator.py                          # iclevr/ + train.json -> checkpoint.pth
    python train_evaluator.py --out runs/judge_base.pth        # the default recipe, standard renders only
    python train_evaluator.py --init runs/judge_base.pth --epochs 1 --lr 3e-4 --extra-random 36000 \
        --extra-randomize 0 1 --half --out weights/judge.pth   # the shipped judge (make judge)
    python train_evaluator.py --extra-random 18000 --extra-root renders/judge_extra --epochs 2     # quick
    python train_evaluator.py --epochs 4 --out checkpoint.pth --seed 0
    python train_evaluator.py --help

The checkpoint is the course's format ({"model": state dict, head at fc.0.*}) plus "meta"
(data, epochs, held-out accuracy), so evaluator.py and the course's own evaluator.py load it.
--half stores the weights in fp16 (evaluator.half_state: half the size; evaluator.py loads them
as fp32), as the shipped weights/judge.pth is.
Validation uses freshly rendered held-out scenes (render_iclevr.py --random with another seed,
rendered on first use), never training images; the best evaluation is kept. Training images are
degraded the way generated ones are (a 32x32 or 48x48 down- and up-sample, as the course's judge
was trained on upsampled 32x32 images; mild blur and noise; small color jitter that stays far
from the neighbouring palette colors) so that the judge is fair to generators.

The default recipe: 3 passes over train.json's renders plus 72,000 random scenes, batch 32, AdamW
one-cycle at 1e-3. Its time and accuracy: docs/evaluator.md; the quick recipe's: docs/notes/2026-11-25-judge.md.
"""
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF
from tqdm import tqdm

import render_iclevr
from dataset import ICLEVRDataset, encode_labels, load_label_file, load_numbered_images, load_objects, to_model_range
from evaluator import build_network, half_state, load_judge_checkpoint, official_hits
from utils import (
    ArgumentParser,
    ICLEVRError,
    autocast,
    exit_on_user_error,
    pick_device,
    resolve_precision,
    save_torch,
    sha256_of,
)


def down_up(x, size):
    """Lose resolution like a generator at `size` x `size` does: down-sample, then up to 64."""
    small = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def augment(images, gen, p=1.0):
    """A training batch (uint8) -> float in [-1, 1]: random flips, and for a fraction p of the
    images random degradations like those of generated images."""
    x = to_model_range(images)
    n = len(x)
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    flip = rand(n) < 0.5
    x[flip] = x[flip].flip(-1)
    degrade = rand(n) < p
    res = torch.randint(3, (n,), generator=gen) * degrade  # 0: as rendered, 1: via 48x48, 2: via 32x32
    for code, size in ((1, 48), (2, 32)):
        if (res == code).any():
            x[res == code] = down_up(x[res == code], size)
    blur = (rand(n) < 0.25) & degrade
    if blur.any():
        x[blur] = TF.gaussian_blur(x[blur], 5, float(0.3 + 0.7 * rand(1)))
    jitter = lambda amount: 1 + amount * (rand(n, 1, 1, 1) - 0.5) * degrade[:, None, None, None]  # noqa: E731
    brightness, contrast, saturation = jitter(0.16), jitter(0.16), jitter(0.2)
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = (x + 1) * brightness - 1
    noisy = (rand(n, 1, 1, 1) < 0.5) & degrade[:, None, None, None]
    x = x + torch.randn(x.shape, generator=gen) * 0.06 * rand(n, 1, 1, 1) * noisy
    return x.clamp(-1, 1)


# Ranges of --style-augment, image-level changes of the whole frame that no renderer setting makes:
# objects drawn up to 1/0.7 times smaller and moved a few pixels, and the frame's light changed (a gain,
# a gamma, a contrast). Each changes an image as a person still reads it; hue is left alone, so every
# color keeps its name (docs/notes/2026-12-01-judges-randomized.md, "Style augmentation").
ZOOM, SHIFT = (0.7, 1.0), 0.08  # zoom factor (< 1: zoom out), shift as a fraction of the frame
GAIN, GAMMA, CONTRAST = (0.55, 1.35), (0.7, 1.5), (0.7, 1.3)  # gain and gamma on [0, 1]; contrast about the mean


def style_augment(x, gen, p):
    """Images in [-1, 1] -> the same, a fraction p of them zoomed out, shifted and relit within the ranges above."""
    n = len(x)
    pick = torch.rand(n, generator=gen) < p
    if not pick.any():
        return x
    u = lambda lo_hi: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(int(pick.sum()), generator=gen)  # noqa: E731
    zoom, shift = u(ZOOM), SHIFT * 2 * (torch.rand(int(pick.sum()), 2, generator=gen) - 0.5)
    theta = torch.zeros(len(zoom), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom  # the output samples a wider area: everything drawn smaller
    theta[:, :, 2] = shift
    y = x[pick]
    grid = F.affine_grid(theta.to(y), list(y.shape), align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)  # edges: ground
    y = ((y + 1) / 2).clamp(0, 1) ** u(GAMMA).view(-1, 1, 1, 1).to(y) * u(GAIN).view(-1, 1, 1, 1).to(y)
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * u(CONTRAST).view(-1, 1, 1, 1).to(y) + mean
    x = x.clone()
    x[pick] = (y * 2 - 1).clamp(-1, 1)
    return x


def random_renders(root, n, seed, objects, randomize=0.0):
    """n random scenes rendered with `seed` (rendered now if the folder lacks them), styles randomized with
    strength `randomize` (render_iclevr.py --randomize): uint8 images, multi-hot."""
    root = Path(root)
    label2idx = load_objects(objects)
    if not (root / "labels.json").is_file() or not (root / f"{n - 1}.png").is_file():
        render_iclevr.main(["--random", str(n), "--seed", str(seed), "--out", str(root), "--objects", str(objects),
                            *(["--randomize", str(randomize)] if randomize else [])])
    _, label_lists = load_label_file(root / "labels.json", label2idx)
    if len(label_lists) != n:
        raise ICLEVRError(f"{root} holds {len(label_lists)} random scenes, not {n}: use another folder")
    multi_hot = torch.stack([encode_labels(labels, label2idx) for labels in label_lists])
    return load_numbered_images(root, n), multi_hot


@torch.no_grad()
def accuracy(net, images, multi_hot, device, degrade_to=None, batch_size=256):
    """Official accuracy of a (logit-headed) network on uint8 images, optionally degraded first."""
    net.eval()
    scores = []
    for batch in images.split(batch_size):
        x = to_model_range(batch)
        if degrade_to:
            x = down_up(x, degrade_to)
        scores.append(net(x.to(device)).float().cpu())
    net.train()
    hits, total = official_hits(torch.cat(scores), multi_hot)
    return hits / total


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="iclevr", help="Folder of training images (rendered or the course's).")
    p.add_argument("--json", default="train.json", help="Training label file (train.json style).")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--out", default="checkpoint.pth", help="Where to write the course-format checkpoint.")
    p.add_argument("--half", action="store_true",
                   help="Store the weights in fp16: half the size, scores within a label of fp32.")
    p.add_argument("--val-root", default="renders/heldout_val", help="Folder of held-out renders for validation.")
    p.add_argument("--val-size", type=int, default=1000, help="Number of held-out scenes to validate on.")
    p.add_argument("--val-seed", type=int, default=1, help="Render seed of the held-out scenes (training uses 0).")
    p.add_argument("--extra-random", type=int, default=72000,
                   help="Also train on this many random scenes (rendered on first use): fresh scenes instead of "
                   "repeats make a better judge.")
    p.add_argument("--extra-root", nargs="+", help="Folder of the extra random scenes, one per --extra-randomize "
                   "strength (default: renders/judge_extra_N, plus _rS for strength S > 0; N the number of scenes).")
    p.add_argument("--extra-seed", type=int, default=3, help="Render seed of the extra scenes.")
    p.add_argument("--extra-randomize", type=float, nargs="+", default=[0.0],
                   help="Render the extra scenes with this domain-randomization strength (render_iclevr.py "
                   "--randomize, 0 to 1), so the judge learns objects rather than one renderer's look; several "
                   "strengths (e.g. 0 1) train on --extra-random scenes of each.")
    p.add_argument("--epochs", type=int, default=3, help="Passes over the training set (train.json's images plus "
                   "the extra scenes; docs/evaluator.md has the default's time and accuracy).")
    p.add_argument("--batch-size", type=int, default=32, help="Images per optimizer step.")
    p.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate of the one-cycle schedule (AdamW).")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay.")
    p.add_argument("--evals", type=int, default=5, help="Validations spread over the run; the best is kept.")
    p.add_argument("--augment-prob", type=float, default=0.5,
                   help="Fraction of training images degraded like generated ones (0: none; the rest stay clean).")
    p.add_argument("--style-augment", type=float, default=0.0,
                   help="Fraction of training images also zoomed out, shifted and relit (train_evaluator.ZOOM, "
                   "GAIN, GAMMA, CONTRAST), so the judge keys less on the renderer's object size and light "
                   "(0: off, the shipped judge's recipe).")
    p.add_argument("--init", default=None, help="Start from this judge's weights (course format), e.g. to fine-tune "
                   "a judge on randomized renders, instead of a random initialisation.")
    p.add_argument("--seed", type=int, default=0, help="Seed of initialisation, shuffling and augmentation.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="Autocast precision of the "
                   "training steps (bf16 also uses channels_last); auto: bf16 on a GPU or a CPU with AMX-BF16, where a "
                   "step was measured 1.47x faster, else fp32. Held-out accuracy is always measured in fp32.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    strengths = args.extra_randomize
    args.extra_root = extra_roots(args)
    if len(args.extra_root) != len(strengths):
        raise ICLEVRError(f"--extra-root names {len(args.extra_root)} folders for {len(strengths)} "
                          "--extra-randomize strengths: give one folder per strength")
    if min(args.epochs, args.batch_size, args.val_size, args.evals) < 1:
        raise ICLEVRError(f"--epochs, --batch-size, --val-size and --evals must be positive, got "
                          f"{args.epochs}, {args.batch_size}, {args.val_size}, {args.evals}")
    if args.extra_random < 0:
        raise ICLEVRError(f"--extra-random must be 0 or more, got {args.extra_random}")
    if not all(0 <= s <= 1 for s in strengths):
        raise ICLEVRError(f"--extra-randomize must be between 0 and 1, got {' '.join(map(str, strengths))}")
    for flag, value in (("--augment-prob", args.augment_prob), ("--style-augment", args.style_augment)):
        if not 0 <= value <= 1:
            raise ICLEVRError(f"{flag} must be between 0 and 1, got {value}")
    init = load_judge_checkpoint(args.init)["model"] if args.init else None  # refused now, before any rendering
    torch.manual_seed(args.seed)
    train = ICLEVRDataset(args.data_root, args.json, args.objects, image_size=64, preload=True)
    if train.names is None:
        raise ICLEVRError(f"{args.json} is a test.json-style list without file names: training needs a "
                          "train.json-style dict of file name -> labels")
    n_train = len(train) + args.extra_random * len(strengths)
    if args.batch_size > n_train:  # checked before any rendering
        raise ICLEVRError(f"--batch-size {args.batch_size} is larger than the {n_train} training images")
    val_images, val_labels = random_renders(args.val_root, args.val_size, args.val_seed, args.objects)
    # fresh layouts and label sets beyond train.json's 6,003 scenes, one folder per strength
    extras = [random_renders(root, args.extra_random, args.extra_seed, args.objects, strength)
              for root, strength in zip(args.extra_root, strengths)] if args.extra_random else []
    images = torch.cat([train.images, *(x for x, _ in extras)])  # one copy of the whole set, not one per folder
    multi_hot = torch.cat([train.multi_hot, *(y for _, y in extras)])
    net = build_network(sigmoid=False)
    if init:  # the same state dict: the sigmoid holds no weights
        net.load_state_dict(init)
    precision = resolve_precision(args.precision, device)
    layout = torch.channels_last if precision == "bf16" else torch.contiguous_format
    net = net.to(device, memory_format=layout)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(images) // args.batch_size
    total_steps = max(1, round(args.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total_steps, pct_start=0.15)
    eval_at = {round(total_steps * (i + 1) / args.evals) for i in range(args.evals)}
    gen = torch.Generator().manual_seed(args.seed)
    best, start, step = None, time.time(), 0
    bar = tqdm(total=total_steps, unit="step", desc=f"training the judge ({precision})")
    while step < total_steps:
        order = torch.randperm(len(images), generator=gen)
        for idx in order[: steps_per_epoch * args.batch_size].split(args.batch_size):
            x = style_augment(augment(images[idx], gen, args.augment_prob), gen, args.style_augment)
            with autocast(precision, device):
                logits = net(x.to(device, memory_format=layout)).float()
            loss = F.binary_cross_entropy_with_logits(logits, multi_hot[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step in eval_at:
                clean = accuracy(net, val_images, val_labels, device)
                degraded = accuracy(net, val_images, val_labels, device, degrade_to=32)
                tqdm.write(f"step {step}/{total_steps} (epoch {step / steps_per_epoch:.2f}): "
                           f"held-out accuracy {clean:.4f}, after 32x32 down/up {degraded:.4f}")
                if best is None or (clean, degraded) > (best["clean"], best["degraded"]):
                    best = dict(clean=clean, degraded=degraded, step=step, epoch=step / steps_per_epoch,
                                state=copy.deepcopy({k: v.cpu() for k, v in net.state_dict().items()}))
            if step >= total_steps:
                break
    bar.close()
    # Written once, at the end: an interrupted run leaves no half-trained judge behind to be reused.
    save(best, args, time.time() - start, len(images), precision)
    print(f"{args.out}: best held-out accuracy {best['clean']:.4f} (32x32 down/up {best['degraded']:.4f}) "
          f"at step {best['step']}; trained in {(time.time() - start) / 60:.1f} min on {device}")


def extra_roots(args):
    """The folders of the extra scenes: --extra-root, or one default folder per --extra-randomize strength."""
    return args.extra_root or [f"renders/judge_extra_{args.extra_random}" + (f"_r{s:g}" if s else "")
                               for s in args.extra_randomize]


def save(best, args, seconds, n_train, precision="fp32"):
    meta = dict(precision=precision, data_root=str(args.data_root), json=str(args.json), train_images=n_train,
                epochs=args.epochs,
                best_epoch=round(best["epoch"], 3), step=best["step"], seed=args.seed,
                extra_random=args.extra_random, extra_root=[str(r) for r in extra_roots(args)],
                extra_seed=args.extra_seed, extra_randomize=args.extra_randomize, style_augment=args.style_augment,
                init=args.init,
                init_sha256=sha256_of(args.init) if args.init else None,
                heldout_root=str(args.val_root), heldout_seed=args.val_seed,
                heldout_accuracy=best["clean"], heldout_accuracy_32x32=best["degraded"],
                train_seconds=round(seconds, 1))
    ckpt = {"model": best["state"], "meta": meta}
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. weights/ for make judge
    except OSError as e:
        raise ICLEVRError(f"cannot write {args.out}: {e.strerror or e}") from None
    save_torch(args.out, half_state(ckpt) if args.half else ckpt)


if __name__ == "__main__":
    main()
