"""Shared fixtures: the repository's label files and a tiny rendered i-CLEVR folder."""
import json
from pathlib import Path

import pytest
import torch

import render_iclevr
from dataset import load_objects

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def label2idx():
    return load_objects(ROOT / "objects.json")


@pytest.fixture(scope="session")
def train_head():
    """The first 3 scenes (9 entries) of train.json, in the file's own format."""
    train = json.loads((ROOT / "train.json").read_text())
    return {name: train[name] for name in sorted(train)[:9]}


@pytest.fixture(scope="session")
def tiny_iclevr(tmp_path_factory, train_head):
    """A folder rendered from train_head, and the label file it came from."""
    tmp = tmp_path_factory.mktemp("tiny")
    labels = tmp / "train_head.json"
    labels.write_text(json.dumps(train_head))
    out = tmp / "iclevr"
    render_iclevr.main(["--json", str(labels), "--objects", str(ROOT / "objects.json"), "--out", str(out),
                        "--workers", "1"])
    return out, labels


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_iclevr, tmp_path_factory):
    """A 'tiny' model trained one epoch on the tiny renders: its model_epoch_001.pt."""
    import train
    root, labels = tiny_iclevr
    out = tmp_path_factory.mktemp("tiny_run")
    train.main(["--preset", "tiny", "--data-root", str(root), "--json", str(labels), "--objects",
                str(ROOT / "objects.json"), "--num-workers", "1", "--out", str(out), "--epochs", "1",
                "--batch-size", "4"])
    return out / "model_epoch_001.pt"


@pytest.fixture(scope="session")
def feature_encoder(tmp_path_factory):
    """A course-format ResNet18 file with seeded random weights: a stand-in for a separately trained encoder
    (REPA's, the autoencoder's perceptual loss)."""
    from evaluator import build_network
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pth"
    torch.save({"model": build_network().state_dict()}, path)
    return path


def one_line_error(capsys, *words):
    """stderr holds one line, "error: ..." naming every one of `words`, and no traceback. Returns the line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def write_json(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture(scope="session")
def data_args(tiny_iclevr):
    """train.py flags for the tiny preset on the tiny folder (extra flags follow; a later flag wins)."""
    root, labels = tiny_iclevr
    return ["--preset", "tiny", "--data-root", str(root), "--json", str(labels), "--objects",
            str(ROOT / "objects.json"), "--num-workers", "1"]


@pytest.fixture(scope="module")
def run(data_args):
    """train.main in this process, on the tiny data; extra flags follow (a later flag wins)."""
    import train

    def run(out, *args):
        return train.main([*data_args, "--out", str(out), *map(str, args)])
    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from more threads, and 2 spinning threads crawl on a busy machine.
    A module opts in with: pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
