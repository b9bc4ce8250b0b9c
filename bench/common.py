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


def wrong_labels(multi_hot, generator):
    """A negative control: for each image another label set of the same size sharing no label
    with the true one. A judge worth trusting scores near zero against these."""
    import torch
    out = torch.zeros_like(multi_hot)
    for i, row in enumerate(multi_hot):
        free = (row == 0).nonzero().flatten()
        pick = free[torch.randperm(len(free), generator=generator)[: int(row.sum())]]
        out[i, pick] = 1
    return out


def rendered_layouts(folder, names, label_lists):
    """Recompute the scenes this script drew into `folder` from its .render.json and the label
    file's entries (names None for a test.json-style list or a --random set): returns the settings
    and {image name: its objects, in drawing order}, for analyses of positions and visibility.
    For a randomized folder settings["styles"] maps each image name to its scene's Style."""
    from clevr_scene import frame
    from render_iclevr import plan_jobs, scene_setup, settings_ranges
    from utils import ICLEVRError, read_json
    path = Path(folder) / ".render.json"
    if not path.is_file():
        raise ICLEVRError(f"{folder} has no .render.json: it is not a render of this project (see render_iclevr.py)")
    s = read_json(path)
    size = tuple(s["size"])
    frame(*size, s["supersample"])
    layouts, styles, ranges = {}, {}, settings_ranges(s)
    for job in plan_jobs(names, label_lists):
        objects, style = scene_setup(job.labels, s["seed"], job.key, size, s["supersample"], s["object_size"],
                                     s["material"], ranges)
        layouts.update((name, objects[:n]) for name, n in job.images)
        styles.update((name, style) for name, _ in job.images)
    if ranges is not None:
        s["styles"] = styles
    return s, layouts
