"""Ablations: the official accuracy of several training runs (one design choice changed each) at
the same epoch, mean and spread over sampling seeds, plus their accuracy-vs-epoch curves.

Usage:
    python -m bench.ablation --runs base=runs/base linear=runs/linear           # newest common epoch
    python -m bench.ablation --runs base=runs/base seed=runs/seed --epoch 8 --seeds 0 1 2
    python -m bench.ablation --runs a=logs/a b=logs/b --curves-only --out docs/curves   # plot only

Each run folder is a train.py --out. Every run is scored at the same epoch (default: the
newest one all runs have) with the same sampler (--sampler/--steps) at guidance 1 and
--guidance, with its EMA weights and, where the run kept EMA, its raw weights too (so one run
also answers "does EMA help"). Prints a markdown table and writes <--out>.json and a plot of
the runs' train_log.csv accuracies (train.py --eval-every) vs epoch as <--out>.png.
"""
import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

from bench.common import JUDGE_HELP, ROOT, measure, split_labels
from evaluator import evaluation_model
from model import (
    CHECKPOINT_RE,
    checkpoint_files,
    load_checkpoint,
    model_from_checkpoint,
)
from utils import SPLITS


def describe(ckpt):
    """What a run changed: its preset, --set overrides and the settings that differ from the preset."""
    config, settings = ckpt["config"], ckpt.get("settings", {})
    parts = [config["preset"]] + [f"{k}={v}" for k, v in config.get("overrides", {}).items()]
    defaults = config["train"]  # the preset's recipe as the run stored it
    parts += [f"{k}={v}" for k, v in settings.items() if k in defaults and k != "limit" and v != defaults[k]]
    return ", ".join(parts)


def cells(result):
    out = []
    for split in SPLITS:
        accs = torch.tensor(result[split]["hits"], dtype=torch.float64) / result[split]["total"]
        out.append(f"{accs.mean():.3f} ({accs.min():.3f}-{accs.max():.3f})")
    return out


def plot_curves(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, folder in runs.items():
        log = Path(folder) / "train_log.csv"
        with log.open(newline="") if log.is_file() else open(os.devnull) as f:
            rows = list(csv.DictReader(f))
        points = [(int(r["epoch"]), (float(r["test_acc"]) + float(r["new_test_acc"])) / 2)
                  for r in rows if r.get("test_acc") and r.get("new_test_acc")]
        if points:
            ax.plot(*zip(*points), marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="official accuracy (mean of the two splits, seed 0)", ylim=(0, 1),
           title="EMA samples during training (train.py --eval-every)")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=DIR", help="Run names and their --out.")
    p.add_argument("--epoch", type=int, help="Epoch to compare (default: the newest one every run has).")
    p.add_argument("--sampler", default="dpm", help="Sampler used for every run: ddpm, ddim, dpm or dpm-sde.")
    p.add_argument("--steps", type=int, default=25, help="Sampling steps used for every run.")
    p.add_argument("--guidance", type=float, default=2.0, help="Guidance scale scored beside guidance 1.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Sampling seeds.")
    p.add_argument("--quick", action="store_true",
                   help="Score only the EMA weights at --guidance (no raw-weight or guidance-1 rows).")
    p.add_argument("--curves-only", action="store_true",
                   help="Only draw <--out>.png from the runs' train_log.csv (folders without checkpoints are fine).")
    p.add_argument("--judge", help=JUDGE_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    p.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="Prefix of the .json and .png.")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.runs)
    if args.curves_only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        plot_curves(runs, f"{args.out}.png")
        print(f"wrote {args.out}.png")
        return
    epochs = {name: {int(CHECKPOINT_RE.fullmatch(f.name).group(1)) for f in checkpoint_files(folder)}
              for name, folder in runs.items()}
    common = set.intersection(*epochs.values())
    epoch = args.epoch or max(common, default=None)
    if epoch is None or epoch not in common:
        sys.exit(f"error: no common epoch {args.epoch or ''} in every run: {epochs}")
    judge = evaluation_model(args.judge, device=args.device)
    labels = split_labels()
    print(f"epoch {epoch}, {args.sampler} {args.steps} steps, seeds {args.seeds}, device {judge.device}, "
          f"judge {judge.name()}")
    print("| run | what it changes | weights | guidance | test acc (min-max) | new_test acc (min-max) |")
    print("|---|---|---|---|---|---|")
    results = []
    for name, folder in runs.items():
        ckpt = load_checkpoint(Path(folder) / f"model_epoch_{epoch:03d}.pt")
        changes = describe(ckpt)
        for ema in ([True, False][:1 if args.quick else 2] if ckpt.get("ema_model") else [False]):
            model, config = model_from_checkpoint(ckpt, ema=ema)
            model.to(judge.device)
            for guidance in [args.guidance] if args.quick else sorted({1.0, args.guidance}):
                r = measure(model, config, judge, labels, args.sampler, args.steps, guidance, args.seeds)
                weights = "EMA" if ema else "raw"
                results.append({"run": name, "changes": changes, "epoch": epoch, "step": ckpt["step"],
                                "weights": weights, "guidance": guidance, "result": r})
                print(f"| {name} | {changes} | {weights} | {guidance:g} | " + " | ".join(cells(r)) + " |",
                      flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"epoch": epoch, "sampler": args.sampler, "steps": args.steps,
                                                    "seeds": args.seeds, "results": results,
                                                    "judge": {"path": judge.checkpoint, "sha256": judge.sha256}},
                                                   indent=1))
    plot_curves(runs, f"{args.out}.png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
