"""Fault injection shared by tests/test_crash.py and bench/reliability.py.

`kill_cycle` starts a command again and again, SIGKILLs it (its whole process group, as an
out-of-memory killer or a lost machine would) at a random moment each time, and after every
kill checks what the command left in its output folder with a validator. The moments:

    start   any time from launch to the end of the first unit of work (imports, data loading,
            the first epoch or image)
    work    a random time after the command has finished something new (a checkpoint, a PNG)
    write   the instant a temporary file of an atomic write appears: mid-write

A validator maps a final (non-temporary) file to None (whole) or the reason it is damaged.
"Bytes lost" counts the finished files that were whole before a kill and missing or damaged
after it: the figure a crash-safe tool keeps at 0.
"""
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

MOMENTS = ("start", "work", "write")
TMP_SUFFIX = ".tmp"  # atomic_write's temporary files: ".<name>.<pid>.tmp"


@dataclass
class Report:
    tool: str
    kills: int = 0           # processes that were running when SIGKILL came
    mid_write: int = 0       # ... of them with a temporary file on disk at that moment
    ended_first: int = 0     # attempts where the command finished before the kill
    damaged: list = field(default_factory=list)  # "file: reason" after some kill
    bytes_lost: int = 0
    final_equal: bool = False  # the finished output equals an uninterrupted run's, byte for byte

    @property
    def survived(self):
        return self.kills if not self.damaged and self.final_equal else 0

    def row(self):
        return (f"| {self.tool} | {self.kills} | {self.mid_write} | {self.survived} | {len(self.damaged)} | "
                f"{self.bytes_lost} | {'yes' if self.final_equal else 'NO'} |")


HEADER = ("| tool | kills | of them mid-write | survived | damaged files | bytes lost | output = uninterrupted |\n"
          "|---|---|---|---|---|---|---|")


def is_temp(path):
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def final_files(folder):
    """{path: size} of every non-temporary file under folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and not is_temp(p)}


def has_temp(folder):
    """A temporary file in the folder (the tools write flat folders): cheap enough to spin on."""
    try:
        return any(e.name.startswith(".") and e.name.endswith(TMP_SUFFIX) for e in os.scandir(folder))
    except FileNotFoundError:
        return False


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_png(path):
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 -- any failure to decode is damage
        return f"unreadable PNG ({type(e).__name__})"
    return None


def check_checkpoint(path):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        return f"unloadable checkpoint ({type(e).__name__})"
    if path.name != f"model_epoch_{ckpt.get('epoch', -1):03d}.pt":
        return f"holds epoch {ckpt.get('epoch')}"
    return None


def check_train_file(path):
    """A train.py output folder: checkpoints, train_log.csv (a whole CSV), loss_curve.png."""
    if path.suffix == ".pt":
        return check_checkpoint(path)
    if path.suffix == ".png":
        return check_png(path)
    if path.name == "config.json":  # the run's resolved config (train_config.py), written atomically
        try:
            return None if isinstance(json.loads(path.read_text()), dict) else "bad config.json"
        except ValueError:
            return "bad config.json"
    if path.name == "train_log.csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
        return None if epochs == list(range(1, len(epochs) + 1)) and all(r["loss"] for r in rows) else "bad log"
    return f"unexpected file {path.name}"


def check_image_file(path):
    """A render_iclevr.py or generate.py folder: PNGs and the JSON manifests."""
    if path.suffix == ".png":
        return check_png(path)
    if path.suffix == ".json":
        try:
            import json
            json.loads(path.read_text())
        except ValueError:
            return "malformed JSON"
        return None
    return f"unexpected file {path.name}"


def wait_for(condition, proc, deadline):
    """Spin until condition() or the process ends or the deadline passes; True when condition() held."""
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    return False


def run_and_kill(cmd, cwd, folder, moment, rng, first_unit_s, log, timeout=300):
    """Run cmd once and SIGKILL its process group at `moment`. Returns (killed, mid_write)."""
    before = set(final_files(folder))
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    try:
        if moment == "start":
            wait_for(lambda: False, proc, min(deadline, time.monotonic() + rng.uniform(0, first_unit_s)))
        elif moment == "work":
            if wait_for(lambda: set(final_files(folder)) - before, proc, deadline):
                wait_for(lambda: False, proc, time.monotonic() + rng.uniform(0, 0.5))
        else:
            wait_for(lambda: has_temp(folder), proc, deadline)
        if proc.poll() is not None:
            return False, False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        time.sleep(0.05)  # let the kernel reap the group before looking at the folder
        return True, has_temp(folder)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def timed_run(cmd, cwd, folder, log, timeout=600):
    """Run cmd to the end (the uninterrupted reference); returns seconds until its first output file."""
    start = time.monotonic()
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = None
    while proc.poll() is None:
        if first is None and final_files(folder):
            first = time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{cmd} ran over {timeout} s"
        time.sleep(0.01)
    assert proc.returncode == 0, Path(log).read_text()[-2000:]
    return first or time.monotonic() - start


def kill_cycle(tool, cmd, cwd, folder, validate, kills, rng, first_unit_s, log, reference=None):
    """Kill `cmd` `kills` times at random moments, validate after each, then let it finish.

    reference: a folder holding the uninterrupted run's output; the finished folder must hold
    the same final files with the same bytes (the checkpoints compared tensor by tensor).
    """
    report = Report(tool)
    attempts = 0
    while report.kills < kills and attempts < 3 * kills:
        moment = MOMENTS[attempts % len(MOMENTS)]
        attempts += 1
        whole_before = {p: n for p, n in final_files(folder).items() if validate(p) is None}
        killed, mid_write = run_and_kill(cmd, cwd, folder, moment, rng, first_unit_s, log)
        report.kills += killed
        report.mid_write += mid_write
        report.ended_first += not killed
        after = final_files(folder)
        for path in after:
            reason = validate(path)
            if reason:
                report.damaged.append(f"{path.name}: {reason} (after a kill at '{moment}')")
        report.bytes_lost += sum(n for p, n in whole_before.items() if p not in after or validate(p))
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        report.damaged.append(f"the final run failed: {done.stderr.strip()[-500:]}")
    elif reference is not None:
        report.final_equal = same_output(folder, reference)
    return report


def same_output(folder, reference):
    """Same final file names; PNGs and checkpoints equal (checkpoint tensors bitwise)."""
    mine = {p.relative_to(folder) for p in final_files(folder)}
    theirs = {p.relative_to(reference) for p in final_files(reference)}
    if mine != theirs:
        return False
    for rel in mine:
        a, b = Path(folder) / rel, Path(reference) / rel
        if a.suffix == ".pt":
            x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
            if not all(equal_state(x[k], y[k]) for k in ("model", "ema_model", "optimizer", "epoch", "step")):
                return False
        elif a.suffix == ".png" and a.name != "loss_curve.png" and sha(a) != sha(b):
            return False
    return True


def equal_state(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(equal_state, a, b))
    return a == b


# The three tools as the tests and bench/reliability.py kill them: each command ends with its
# output flag, so the reference run and the killed run differ only in the folder.
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def train_command(data_args, epochs):
    # --keep-last 0: pruning old checkpoints is a deliberate deletion (tested in test_train), not a loss; with it,
    # a kill that lands an epoch or two after the look at the folder counted a pruned file as bytes lost
    return ([PY, str(ROOT / "train.py"), *data_args, "--epochs", str(epochs), "--batch-size", "1", "--resume",
             "--keep-last", "0", "--out"], check_train_file)


def render_command(n):
    return ([PY, str(ROOT / "render_iclevr.py"), "--random", str(n), "--size", "96", "--objects",
             str(ROOT / "objects.json"), "--workers", "2", "--seed", "3", "--out"], check_image_file)


def generate_command(ckpt, labels):
    return ([PY, str(ROOT / "generate.py"), "--ckpt", str(ckpt), "--json", str(labels), "--objects",
             str(ROOT / "objects.json"), "--batch-size", "1", "--sampler", "ddim", "--steps", "10", "--out"],
            check_image_file)


def run_cycle(tool, command, workdir, kills, seed=0):
    """The uninterrupted reference run, then the killed-and-resumed one, in workdir/<tool>."""
    cmd, validate = command
    base = Path(workdir) / tool
    base.mkdir(parents=True)
    log = base / "stderr.log"
    first = timed_run([*cmd, str(base / "straight")], base, base / "straight", log)
    return kill_cycle(tool, [*cmd, str(base / "killed")], base, base / "killed", validate, kills,
                      random.Random(seed), first, log, reference=base / "straight")
