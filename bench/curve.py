"""Accuracy against training minutes from bench.five_seeds results: the curve of one recipe.

Usage:
    python -m bench.five_seeds --ckpt runs/c64/model_epoch_006.pt --judge weights/judge.pth runs/judge_seed1.pth \
        --json test.json new_test.json three_objects.json --out runs/five_c64_6.json     # one per checkpoint
    python -m bench.curve runs/five_c64_*.json --minutes-per-epoch 3.0 --out runs/curve_c64

Each JSON file holds one or more checkpoints' 5-seed scores (bench.five_seeds --out). A checkpoint sits at
its epoch times --minutes-per-epoch (the step cost measured alone, bench.train_speed: runs trained side by
side on a shared CPU log inflated seconds), or, without it, at the training seconds its own log records.
Prints a markdown table (mean (min-max) of the seeds, per judge and label file) and plots the first
judge's mean with its seed range, and the second judge's mean dashed, one panel per label file.
"""
import argparse
import json
from pathlib import Path

from bench.common import ROOT
from model import load_checkpoint


def points(files, minutes_per_epoch=None):
    """{label file: [(minutes, epoch, accuracy per judge per seed)]}, sorted by minutes."""
    curves, minutes_of = {}, {}
    for path in files:
        for entry in json.loads(Path(path).read_text()):
            epoch = entry["settings"]["epoch"]
            if minutes_per_epoch:
                minutes = epoch * minutes_per_epoch
            else:  # the seconds the run's own log had spent by this checkpoint
                ckpt = entry["settings"]["checkpoint"]
                if ckpt not in minutes_of:
                    log = load_checkpoint(ckpt).get("log", [])
                    minutes_of[ckpt] = sum(float(r["seconds"]) for r in log if int(r["epoch"]) <= epoch) / 60
                minutes = minutes_of[ckpt]
            curves.setdefault(entry["json"], []).append((minutes, epoch, entry["accuracy"], entry["judges"]))
    return {name: sorted(rows) for name, rows in curves.items()}


def mean_range(values):
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def table(curves):
    lines = []
    for name, rows in curves.items():
        judges = rows[0][3]
        header = " | ".join(f"judge {i + 1}" for i in range(len(judges)))
        lines += [f"\n{name}\n", f"| minutes | epoch | {header} |", "|---|---|" + "---|" * len(judges)]
        lines += [f"| {m:.0f} | {e} | " + " | ".join(mean_range(a) for a in acc) + " |" for m, e, acc, _ in rows]
        lines += [f"judge {i + 1}: {j}" for i, j in enumerate(judges)]
    return "\n".join(lines)


def plot(curves, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), sharey=True, squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
        x = [m for m, *_ in rows]
        first = [acc[0] for _, _, acc, _ in rows]
        ax.fill_between(x, [min(a) for a in first], [max(a) for a in first], alpha=0.2, label="judge 1, seed range")
        ax.plot(x, [sum(a) / len(a) for a in first], "o-", label="judge 1, mean of seeds")
        if len(rows[0][2]) > 1:
            ax.plot(x, [sum(acc[1]) / len(acc[1]) for _, _, acc, _ in rows], "s--", label="judge 2, mean")
        ax.set_title(name)
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("official accuracy")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="bench.five_seeds --out JSON files, one or more checkpoints each.")
    p.add_argument("--minutes-per-epoch", type=float, help="Place each checkpoint at epoch x this (default: the "
                   "training seconds in its checkpoint's log).")
    p.add_argument("--title", default="accuracy against training minutes", help="The figure's title.")
    p.add_argument("--out", default=str(ROOT / "runs" / "curve"), help="Prefix of the .md table and .png plot.")
    args = p.parse_args(argv)
    curves = points(args.files, args.minutes_per_epoch)
    text = table(curves)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text + "\n")
    plot(curves, f"{args.out}.png", args.title)
    print(f"wrote {args.out}.md and {args.out}.png")


if __name__ == "__main__":
    main()
