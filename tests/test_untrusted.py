"""Untrusted checkpoints: a file built to run code when unpickled is refused by every script that
loads checkpoints, in one line, and the code never runs; and every torch.load in the project
passes weights_only=True."""
import ast
import os
import pickle
import subprocess
import sys

import pytest
import torch

import denoise
import evaluate_generated
import export
import generate
import train
from conftest import ROOT

OBJECTS = str(ROOT / "objects.json")


class Payload:
    """Unpickling this calls os.system: what a hostile checkpoint from a classmate could hide."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=["torch-zip", "raw-pickle"])
def hostile(request, tmp_path):
    """(checkpoint path, marker file the payload would create). Shaped like a train.py checkpoint and
    a course checkpoint at once, so only the payload can make a loader refuse it."""
    marker = tmp_path / "pwned"
    state = {"config": {"preset": "tiny"}, "epoch": 1, "step": 1, "model": {"fc.0.weight": Payload(marker)}}
    path = tmp_path / "model_epoch_001.pt"
    if request.param == "torch-zip":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path, marker


def test_the_payload_is_live(hostile):
    """Without weights_only the file really runs code: the refusals below are not vacuous."""
    path, marker = hostile
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert marker.exists()


def test_every_loader_refuses_it_and_nothing_runs(hostile, tmp_path, tiny_iclevr, capsys):
    path, marker = hostile
    root, labels = tiny_iclevr
    images = tmp_path / "images"
    images.mkdir()
    (images / "0.png").write_bytes((root / "CLEVR_train_000000_0.png").read_bytes())
    one = tmp_path / "one.json"
    one.write_text('[["red sphere"]]')
    calls = {
        "train.py --resume": lambda: train.main(["--preset", "tiny", "--data-root", str(root), "--json", str(labels),
                                                 "--objects", OBJECTS, "--epochs", "2", "--resume", str(path),
                                                 "--out", str(tmp_path / "out")]),
        "generate.py --ckpt": lambda: generate.main(["--ckpt", str(path), "--json", str(one), "--objects", OBJECTS,
                                                     "--out", str(tmp_path / "gen")]),
        "denoise.py --ckpt": lambda: denoise.main(["--ckpt", str(path), "--objects", OBJECTS,
                                                   "--out", str(tmp_path / "d.png")]),
        "export.py --ckpt": lambda: export.main(["--ckpt", str(path), "--out", str(tmp_path / "export")]),
        "evaluate_generated.py --judge": lambda: evaluate_generated.main(
            ["--judge", str(path), "--json", str(one), "--images", str(images), "--objects", OBJECTS]),
    }
    for name, call in calls.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            call()
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, (name, err)
        assert str(path) in err[0] and "not a loadable" in err[0], (name, err)
        assert not marker.exists(), f"{name} ran the payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["images", "one.json", path.name])


def test_every_torch_load_is_weights_only():
    """A static check over the project's own code: no torch.load without weights_only=True."""
    calls = []
    for file in sorted(ROOT.glob("*.py")) + sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{file.name}:{node.lineno}", safe))
    assert calls  # dataset.load_torch_file at least: the scan sees it
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]
