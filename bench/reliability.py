"""The kill figures of docs/reliability.md: SIGKILL train.py, render_iclevr.py and generate.py at
random moments (while starting, while working, in the middle of an atomic write), check what
each kill left behind, let the tool finish, and compare with an uninterrupted run.

Usage:
    python -m bench.reliability                # 20 kills per tool
    python -m bench.reliability --kills 5 --seed 1

The kill machinery is tests/faults.py, shared with tests/test_crash.py (make test runs 3 kills
per tool, make test-long 18). Tiny sizes: the `tiny` preset on 9 rendered training images.
"""
import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import render_iclevr
import train
from bench.common import ROOT, tests_module

faults = tests_module("faults")  # the kill machinery of tests/test_crash.py


def tiny_setup(work):
    """9 rendered training images and a 1-epoch tiny checkpoint: what the kill cycles run on."""
    head = work / "head.json"
    labels = json.loads((ROOT / "train.json").read_text())
    head.write_text(json.dumps({k: labels[k] for k in sorted(labels)[:9]}))
    objects = str(ROOT / "objects.json")
    render_iclevr.main(["--json", str(head), "--objects", objects, "--out", str(work / "iclevr"), "--workers", "1"])
    data_args = ["--preset", "tiny", "--data-root", str(work / "iclevr"), "--json", str(head), "--objects", objects,
                 "--num-workers", "1"]
    train.main([*data_args, "--epochs", "1", "--batch-size", "4", "--out", str(work / "ckpt")])
    return data_args, work / "ckpt" / "model_epoch_001.pt"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="How many SIGKILLs each tool gets.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random kill moments.")
    p.add_argument("--keep", metavar="DIR", help="Keep the work folder here (default: a temporary one, removed).")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table
            data_args, ckpt = tiny_setup(work)
        commands = {"train.py": faults.train_command(data_args, 2 * args.kills + 10),
                    "render_iclevr.py": faults.render_command(40 * args.kills),
                    "generate.py": faults.generate_command(ckpt, ROOT / "new_test.json")}
        reports = []
        for tool, command in commands.items():
            start = time.time()
            reports.append(faults.run_cycle(tool, command, work / "cycles", args.kills, args.seed))
            print(f"{tool}: {time.time() - start:.0f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(faults.HEADER)
    for r in reports:
        print(r.row())
    for r in reports:
        for line in r.damaged:
            print(f"- {r.tool}: {line}")
    print(f"\n{sum(r.kills for r in reports)} kills ({sum(r.mid_write for r in reports)} in the middle of a write), "
          f"{sum(r.ended_first for r in reports)} runs that ended before their kill came; "
          f"bytes lost: {sum(r.bytes_lost for r in reports)}")
    return 0 if all(r.survived == r.kills for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
