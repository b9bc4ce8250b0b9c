"""Sampler study: official accuracy (mean and spread over seeds) and wall time per split for
DDPM 1000 steps vs DDIM and DPM-Solver++ at few steps, and for several guidance scales.

Usage:
    python -m bench.sampler_study                                   # newest checkpoint in checkpoints/
    python -m bench.sampler_study --ckpt checkpoints/model_epoch_010.pt --seeds 0 1 2 3 4
    python -m bench.sampler_study --steps 10 25 --guidances 1 2 --no-ddpm   # a quick look
    python -m bench.sampler_study --no-ddpm --samplers dpm-sde --steps 100 --guidances   # one setting, 5 seeds

One factor at a time: the step sweep (ddim, dpm and dpm-sde at --steps) uses the checkpoint's
own guidance, the guidance sweep (--guidances) its own sampler and steps (or --guidance-sampler).
--reference reuses the DDPM-1000 row of an earlier study of the same checkpoint, seeds and judge
instead of measuring it again (it is the slow one). Prints markdown tables,
writes the raw results as JSON and two plots (accuracy vs steps, accuracy vs guidance), and
names the fewest steps whose accuracy is within one label of DDPM-1000 on both splits.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from bench.common import JUDGE_HELP, ROOT, measure, split_labels
from evaluator import evaluation_model
from sampling import load_sampler
from utils import SPLITS


def row(name, result):
    cells = []
    for split in SPLITS:
        r = result[split]
        accs = torch.tensor(r["hits"], dtype=torch.float64) / r["total"]
        seconds = sum(r["seconds"]) / len(r["seconds"])
        cells.append(f"{accs.mean():.4f} ({accs.min():.4f}-{accs.max():.4f}) | {seconds:.1f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def mean_hits(result, split):
    return sum(result[split]["hits"]) / len(result[split]["hits"])


def plot(results, ddpm, path, guidance_default):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    swept = dict.fromkeys(r["sampler"] for r in results if r["sweep"] == "steps")  # in the order measured
    for key, marker in zip(swept, "os^dv"):
        points = sorted((r["steps"], acc(r)) for r in results if r["sweep"] == "steps" and r["sampler"] == key)
        if points:
            ax1.plot(*zip(*points), marker=marker, label=key)
    if ddpm:
        ax1.axhline(acc(ddpm), color="k", linestyle="--", label="ddpm 1000")
    ax1.set(xscale="log", xlabel="sampling steps", ylabel="official accuracy (both splits)",
            title=f"guidance {guidance_default}")
    ax1.legend()
    points = sorted((r["guidance"], acc(r)) for r in results if r["sweep"] == "guidance")
    if points:
        ax2.plot(*zip(*points), marker="o")
    ax2.set(xlabel="guidance scale W (1 = none)", ylabel="official accuracy (both splits)", title="guidance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def acc(result):
    hits = sum(mean_hits(result["result"], s) for s in SPLITS)
    return hits / sum(result["result"][s]["total"] for s in SPLITS)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="train.py checkpoint (default: the newest in checkpoints/).")
    p.add_argument("--judge", help=JUDGE_HELP)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Sampling seeds.")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 25, 50, 100],
                   help="Step counts for ddim, dpm and dpm-sde.")
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpm", "dpm-sde"], help="Samplers of the step sweep.")
    p.add_argument("--guidances", type=float, nargs="*", default=[1, 1.5, 2, 3, 5],
                   help="Guidance scales (none: no guidance sweep).")
    p.add_argument("--no-ddpm", action="store_true", help="Skip the (slow) 1000-step DDPM reference.")
    p.add_argument("--reference", help="JSON of an earlier study of this checkpoint: reuse its DDPM-1000 row.")
    p.add_argument("--guidance-sampler", metavar="NAME:STEPS",
                   help="Sampler and steps of the guidance sweep (default: the checkpoint's own).")
    p.add_argument("--out", default=str(ROOT / "runs" / "sampler_study"), help="Prefix of the .json and .png.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    judge = evaluation_model(args.judge, device=args.device)
    drawer = load_sampler(args.ckpt, ROOT / "checkpoints", device=judge.device)
    model, config = drawer.model, drawer.config
    labels = split_labels()
    sampler0, steps0, guidance0 = drawer.sampler, drawer.steps, drawer.guidance
    if args.guidance_sampler:
        sampler0, steps0 = args.guidance_sampler.split(":")
        steps0 = int(steps0)
    print(f"{drawer.describe()}, judge {judge.name()}, seeds {args.seeds}, "
          f"device {judge.device}, {torch.get_num_threads()} threads")
    header = "| setting | test acc (min-max) | test s | new_test acc (min-max) | new_test s |\n|---|---|---|---|---|"
    results, ddpm = [], None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every row, so that a study cut short keeps what it measured
        Path(f"{args.out}.json").write_text(json.dumps({"checkpoint": str(drawer.path), "epoch": drawer.epoch,
                                                        "seeds": args.seeds, "ddpm": ddpm, "results": results,
                                                        "judge": {"path": judge.checkpoint, "sha256": judge.sha256}},
                                                       indent=1))
    print(header)
    if args.reference:
        earlier = json.loads(Path(args.reference).read_text())
        if (earlier["epoch"], earlier["seeds"]) != (drawer.epoch, args.seeds) or not earlier["ddpm"]:
            sys.exit(f"{args.reference}: not a study of epoch {drawer.epoch} with seeds {args.seeds} and a ddpm row")
        if earlier.get("judge", {}).get("sha256", judge.sha256) != judge.sha256:  # older studies did not record it
            sys.exit(f"{args.reference}: scored by another judge ({earlier['judge']['path']}), not {judge.name()}")
        ddpm = earlier["ddpm"]
        print(row(f"ddpm 1000, guidance {ddpm['guidance']} (from {args.reference})", ddpm["result"]), flush=True)
    elif not args.no_ddpm:
        ddpm = {"sweep": "ddpm", "sampler": "ddpm", "steps": 1000, "guidance": guidance0,
                "result": measure(model, config, judge, labels, "ddpm", 1000, guidance0, args.seeds)}
        print(row(f"ddpm 1000, guidance {guidance0}", ddpm["result"]), flush=True)
        save()
    for sampler in args.samplers:
        for steps in args.steps:
            r = measure(model, config, judge, labels, sampler, steps, guidance0, args.seeds)
            results.append({"sweep": "steps", "sampler": sampler, "steps": steps, "guidance": guidance0, "result": r})
            print(row(f"{sampler} {steps}, guidance {guidance0}", r), flush=True)
            save()
    for guidance in args.guidances:
        r = measure(model, config, judge, labels, sampler0, steps0, guidance, args.seeds)
        results.append({"sweep": "guidance", "sampler": sampler0, "steps": steps0, "guidance": guidance, "result": r})
        print(row(f"{sampler0} {steps0}, guidance {guidance}", r), flush=True)
        save()
    plot(results, ddpm, f"{args.out}.png", guidance0)
    if ddpm:
        close = [r for r in results if r["sweep"] == "steps"
                 and all(mean_hits(r["result"], s) >= mean_hits(ddpm["result"], s) - 1 for s in SPLITS)]
        best = min(close, key=lambda r: (r["steps"], r["sampler"]), default=None)
        print("fewest steps within one label of ddpm 1000 on both splits: "
              + (f"{best['sampler']} {best['steps']}" if best else "none of those measured"))
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
