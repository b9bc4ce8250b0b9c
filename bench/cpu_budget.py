"""Accuracy against training minutes: which design learns most in a CPU budget such as make demo's.

Usage:
    python bench/cpu_budget.py --runs patch2=runs/patch2 wide=runs/patch2w
    python bench/cpu_budget.py --runs patch2=runs/patch2 --logged unpatched=runs/gpu2/runs/cpu_long:6.8

Each --runs folder is a train.py --out-dir: every checkpoint in it is scored like train.py
--eval-every but with one fixed sampler for every run (EMA weights, DDIM 50, guidance 2,
sampling seed 0, official accuracy of test.json and new_test.json) and placed at the training
minutes its train_log.csv says the run had spent by then. Scores are cached in the folder
(cpu_budget.json), so a rerun only scores new checkpoints. --logged NAME=DIR:MIN adds a run
whose train_log.csv already holds these accuracies (train.py --eval-every 1), placed at MIN
minutes per epoch: e.g. a run trained on a GPU drawn at this CPU's measured epoch time. Prints a
markdown table and plots it.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sampler_study import SPLITS  # noqa: E402

from dataset import ICLEVRDataset  # noqa: E402
from evaluator import evaluation_model  # noqa: E402
from model import checkpoint_files, load_checkpoint, model_from_checkpoint, sample, to_64  # noqa: E402

PROTOCOL = dict(sampler="ddim", steps=50, guidance=2.0, seed=0)  # fixed, whatever each run's preset samples with


def log_rows(folder):
    with open(Path(folder) / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def score_run(folder, judge, labels):
    """{epoch: {"minutes", "test", "new_test"}} for every checkpoint of a run (cached in the folder)."""
    cache = Path(folder) / "cpu_budget.json"
    scores = {int(k): v for k, v in json.loads(cache.read_text()).items()} if cache.is_file() else {}
    minutes, total = {}, 0.0
    for row in log_rows(folder):
        total += float(row["seconds"]) / 60
        minutes[int(row["epoch"])] = total
    for path in checkpoint_files(folder):
        ckpt = load_checkpoint(path)
        epoch = ckpt["epoch"]
        if epoch in scores or epoch not in minutes:
            continue
        net, config = model_from_checkpoint(ckpt)
        net.to(judge.device)
        row = {"minutes": round(minutes[epoch], 2)}
        for split, multi_hot in labels.items():
            images = sample(net, config, multi_hot, **PROTOCOL)
            row[split] = judge.eval(to_64(images), multi_hot)
        scores[epoch] = row
        cache.write_text(json.dumps(scores, indent=1))
        print(f"  {folder} epoch {epoch}: {row}", flush=True)
    return dict(sorted(scores.items()))


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
           title="EMA samples, DDIM 50, guidance 2, seed 0", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="*", default=[], metavar="NAME=DIR", help="train.py runs to score, by name.")
    p.add_argument("--logged", nargs="*", default=[], metavar="NAME=DIR:MIN",
                   help="Runs whose train_log.csv holds the accuracies, drawn at MIN minutes per epoch.")
    p.add_argument("--budget", type=float, default=12.2, help="Minutes to mark on the plot (make demo's training).")
    p.add_argument("--judge", default=str(ROOT / "checkpoint.pth"), help="Evaluator checkpoint.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    p.add_argument("--out", default=str(ROOT / "docs" / "cpu_budget"), help="Prefix of the .json and .png.")
    args = p.parse_args()
    judge = evaluation_model(args.judge, device=args.device)
    labels = {s: ICLEVRDataset(None, ROOT / f"{s}.json", ROOT / "objects.json").multi_hot for s in SPLITS}
    curves = {name: score_run(folder, judge, labels) for name, folder in (r.split("=", 1) for r in args.runs)}
    curves.update({name: logged_run(spec) for name, spec in (r.split("=", 1) for r in args.logged)})
    print("| run | epoch | training min | test | new_test |\n|---|---|---|---|---|")
    for name, scores in curves.items():
        for epoch, s in scores.items():
            print(f"| {name} | {epoch} | {s['minutes']:.1f} | {s['test']:.4f} | {s['new_test']:.4f} |")
    Path(f"{args.out}.json").write_text(json.dumps(curves, indent=1))
    plot(curves, args.budget, f"{args.out}.png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
