"""Shared fixtures: the repository's label files and a tiny rendered i-CLEVR folder."""
import json
from pathlib import Path

import pytest

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


def write_json(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path
