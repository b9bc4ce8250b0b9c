"""Accuracy against training minutes: which design learns most in a CPU budget such as make demo's.

Usage:
    python -m bench.cpu_budget --runs patch2=runs/patch2 wide=runs/patch2w
    python -m bench.cpu_budget --runs patch2=runs/patch2 --logged unpatched=runs/gpu2/runs/cpu_long:6.8

Each --runs folder is a train.py --out trained with --keep-last 0: every checkpoint in it is scored like train.py
--eval-every but with one fixed protocol for every run (EMA weights, 50 steps of DDIM, or of
Euler for flow-matching runs, guidance 2, sampling seed 0: --steps, --guidance, --seeds change
it; official accuracy of test.json and new_test.json) and placed at the training minutes its
train_log.csv says the run had spent by then, or, with --rate NAME=IMAGES_PER_S, at its steps
times batch over that rate (runs trained side by side on a shared CPU). Scores are cached in the
folder (cpu_budget.json, per judge and protocol), so a rerun only scores new checkpoints.
--logged NAME=DIR:MIN adds a run whose train_log.csv already holds these accuracies (train.py
--eval-every 1), placed at MIN minutes per epoch: e.g. a run trained on a GPU drawn at this CPU's
measured epoch time. Prints a markdown table and plots it.
"""
import argparse
import csv
import json
from pathlib import Path

from bench.common import JUDGE_HELP, ROOT, split_labels
from evaluator import evaluation_model
from model import checkpoint_files, load_checkpoint, model_from_checkpoint, to_64
from sampling import sample

# Fixed for every run: 50 steps of the run's own kind of sampler (DDIM, or Euler for flow matching) at one guidance.
PROTOCOL = dict(steps=50, guidance=2.0, seeds=(0,))


def protocol_sampler(config):
    return "euler" if config["schedule"].get("kind") == "flow" else "ddim"


def log_rows(folder):
    with open(Path(folder) / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def score_run(folder, judge, labels, rate=None):
    """{epoch: {"minutes", "test", "new_test"}} for every checkpoint of a run (cached in the folder per
    judge and protocol). rate (images/s): place epochs at step * batch / rate instead of the logged time."""
    cache = Path(folder) / "cpu_budget.json"
    key = f"{judge.sha256[:12]} steps {PROTOCOL['steps']} guidance {PROTOCOL['guidance']} seeds {PROTOCOL['seeds']}"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    cached = cached if all(isinstance(v, dict) and "minutes" not in v for v in cached.values()) else {}
    scores = {int(k): v for k, v in cached.get(key, {}).items()}
    minutes, total = {}, 0.0
    batch = batch_of(folder) if rate else None  # one checkpoint read, not one per row
    for row in log_rows(folder):
        total += float(row["seconds"]) / 60
        minutes[int(row["epoch"])] = int(row["step"]) * batch / rate / 60 if rate else total
    for path in checkpoint_files(folder):
        ckpt = load_checkpoint(path)
        epoch = ckpt["epoch"]
        if epoch in scores or epoch not in minutes:
            continue
        net, config = model_from_checkpoint(ckpt)
        net.to(judge.device)
        row = {"minutes": round(minutes[epoch], 2), "step": ckpt["step"]}
        settings = (protocol_sampler(config), PROTOCOL["steps"], PROTOCOL["guidance"])
        for split, multi_hot in labels.items():
            row[split] = sum(judge.eval(to_64(sample(net, config, multi_hot, *settings, seed)), multi_hot)
                             for seed in PROTOCOL["seeds"]) / len(PROTOCOL["seeds"])
        scores[epoch] = row
        cache.write_text(json.dumps({**cached, key: scores}, indent=1))
        print(f"  {folder} epoch {epoch}: {row}", flush=True)
    return dict(sorted(scores.items()))


def batch_of(folder):
    files = checkpoint_files(folder)
    return load_checkpoint(files[-1])["settings"]["batch_size"] if files else 0


def logged_run(spec):
    folder, _, per_epoch = spec.rpartition(":")
    return {int(r["epoch"]): {"minutes": int(r["epoch"]) * float(per_epoch), "test": float(r["test_acc"]),
                              "new_test": float(r["new_test_acc"])}
            for r in log_rows(folder) if r.get("test_acc") and r.get("new_test_acc")}


def plot(curves, budget, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, scores in curves.items():
        points = [(s["minutes"], (s["test"] + s["new_test"]) / 2) for s in scores.values()]
        ax.plot(*zip(*points), marker=".", label=name)
    if budget:
        ax.axvline(budget, color="gray", linestyle=":", label=f"make demo's training ({budget:g} min)")
    ax.set(xlabel="training minutes on this CPU", ylabel="official accuracy (mean of test and new_test)",
           title=f"EMA samples, {PROTOCOL['steps']} steps, guidance {PROTOCOL['guidance']:g}, "
                 f"seeds {','.join(map(str, PROTOCOL['seeds']))}", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="*", default=[], metavar="NAME=DIR", help="train.py runs to score, by name.")
    p.add_argument("--logged", nargs="*", default=[], metavar="NAME=DIR:MIN",
                   help="Runs whose train_log.csv holds the accuracies, drawn at MIN minutes per epoch.")
    p.add_argument("--budget", type=float, default=12.2, help="Minutes to mark on the plot (make demo's training).")
    p.add_argument("--judge", help=JUDGE_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    p.add_argument("--out", default=str(ROOT / "runs" / "cpu_budget"), help="Prefix of the .json and .png.")
    p.add_argument("--guidance", type=float, default=PROTOCOL["guidance"], help="Guidance scale for every run.")
    p.add_argument("--steps", type=int, default=PROTOCOL["steps"], help="Sampler steps for every run.")
    p.add_argument("--seeds", type=int, nargs="+", default=list(PROTOCOL["seeds"]),
                   help="Sampling seeds; each checkpoint's score is their mean.")
    p.add_argument("--rate", nargs="*", default=[], metavar="NAME=IMAGES_PER_S",
                   help="Place run NAME at steps * batch / IMAGES_PER_S minutes instead of its logged time (for runs "
                        "trained on a shared CPU; the rate measured alone, e.g. by python -m bench.train_speed).")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    PROTOCOL.update(guidance=args.guidance, steps=args.steps, seeds=tuple(args.seeds))
    rates = {name: float(r) for name, r in (x.split("=", 1) for x in args.rate)}
    judge = evaluation_model(args.judge, device=args.device)
    print(f"judge: {judge.name()}; scores are cached per run, judge and protocol")
    labels = split_labels()
    curves = {name: score_run(folder, judge, labels, rates.get(name)) for name, folder in
              (r.split("=", 1) for r in args.runs)}
    curves.update({name: logged_run(spec) for name, spec in (r.split("=", 1) for r in args.logged)})
    print("| run | epoch | training min | test | new_test |\n|---|---|---|---|---|")
    for name, scores in curves.items():
        for epoch, s in scores.items():
            print(f"| {name} | {epoch} | {s['minutes']:.1f} | {s['test']:.4f} | {s['new_test']:.4f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(curves, indent=1))
    plot(curves, args.budget, f"{args.out}.png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
