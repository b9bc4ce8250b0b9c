"""Time render_iclevr.py on the whole of train.json, as a user runs it, and print a table.

Usage:
    python -m bench.render_speed                 # all 18,009 images at 64x64, all cores
    python -m bench.render_speed --limit 3000 --workers 1 2

Each run renders into a fresh temporary folder (nothing is reused), timing the full command
from start to exit: Python start-up, scene placement, ray casting and PNG writing.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, cpu_info


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=str(ROOT / "train.json"), help="Label file to render.")
    p.add_argument("--limit", type=int, help="Render only the first N entries (default: all).")
    p.add_argument("--size", default="64", help="Image size passed to render_iclevr.py.")
    p.add_argument("--workers", type=int, nargs="+", default=[len(os.sched_getaffinity(0))],
                   help="Worker counts to time, one run each.")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(ROOT / "render_iclevr.py"), "--json", args.json, "--out", tmp,
                   "--size", args.size, "--workers", str(workers)]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            images = sum(1 for f in os.scandir(tmp) if f.name.endswith(".png"))
        rows.append((workers, images, seconds))
    print(f"machine: {cpu_info()[0]}, {os.cpu_count()} cores; size {args.size}")
    print("| workers | images | seconds | images/s |")
    print("|---|---|---|---|")
    for workers, images, seconds in rows:
        print(f"| {workers} | {images} | {seconds:.1f} | {images / seconds:.0f} |")


if __name__ == "__main__":
    main()
