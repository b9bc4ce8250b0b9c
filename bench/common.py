"""What several bench tools share: the repository root, the judge flag's help, the split labels, one
sampler setting scored over seeds, the held-out judge flags, the machine's name and the test helpers
they reuse. Heavy imports (torch, diffusers) happen inside the functions, so a light tool stays light.
"""
import importlib.util
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JUDGE_HELP = "Judge checkpoint (default: ./checkpoint.pth when it exists, else the shipped weights/judge.pth)."


def split_labels():
    """{split: (n, 24) multi-hot} of test.json and new_test.json, in file order."""
    from dataset import ICLEVRDataset
    from utils import SPLITS
    return {s: ICLEVRDataset(None, ROOT / f"{s}.json", ROOT / "objects.json").multi_hot for s in SPLITS}


def measure(model, config, judge, labels, sampler, steps, guidance, seeds):
    """{split: {"hits": [...per seed], "total": n, "seconds": [...]}} for one sampler setting."""
    import time

    from evaluator import official_hits
    from model import to_64
    from sampling import sample
    out = {}
    for split, multi_hot in labels.items():
        hits, seconds = [], []
        for seed in seeds:
            start = time.perf_counter()
            images = sample(model, config, multi_hot, sampler, steps, guidance, seed)
            seconds.append(time.perf_counter() - start)
            hits.append(official_hits(judge.predict(to_64(images)), multi_hot)[0])
        out[split] = {"hits": hits, "total": int(multi_hot.sum()), "seconds": seconds}
    return out


def heldout_parser(description):
    """The flags of the tools that score a judge on held-out renders (evaluator_bench, judge_misses)."""
    import argparse
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--judge", help="Judge checkpoint to measure (default: ./checkpoint.pth when it exists, "
                   "else the shipped weights/judge.pth).")
    p.add_argument("--n", type=int, default=2000, help="Number of fresh held-out renders.")
    p.add_argument("--seed", type=int, default=2, help="Render seed of the held-out scenes (training uses 0 and 3).")
    p.add_argument("--root", default=str(ROOT / "renders" / "heldout_bench"),
                   help="Where the renders go (rendered on first use).")
    p.add_argument("--device", default="cpu", help="Device to run the judge on.")
    return p


def cpu_info():
    """(the CPU's model name, the text of /proc/cpuinfo or '')."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return (names[0] if names else platform.processor() or "unknown CPU"), info


def tests_module(name):
    """tests/NAME.py as a module (the fault and bad-input machinery the tests and bench tools share)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def training_loss(config, cond_dropout=0.1, autocast=None, channels_last=False):
    """train.py's loss for a model config, as loss(model, x0, cond, gen). autocast: a context-manager factory.

    losses.build_loss where the code has it; before losses.py existed, trainer.diffusion_loss (the same loss)."""
    try:
        from losses import build_loss
    except ImportError:
        from model import make_scheduler
        from trainer import diffusion_loss
        scheduler = make_scheduler(config)
        return lambda model, x0, cond, gen: diffusion_loss(model, scheduler, x0, cond, gen, cond_dropout,
                                                           autocast() if autocast else None, channels_last)
    return build_loss(config, cond_dropout=cond_dropout, autocast=autocast, channels_last=channels_last)
