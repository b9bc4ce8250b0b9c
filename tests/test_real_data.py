"""The course's real data where it lies: its iclevr/ folder (320x240 RGBA PNGs named as in train.json) used in place
by --data-root, whether or not ./iclevr exists, and its checkpoint.pth judge used when it is in the working folder."""
import json
import shutil
import subprocess

import pytest
import torch
from PIL import Image, ImageDraw

import evaluate_generated
import generate
import train
from conftest import ROOT
from evaluator import build_network

pytestmark = pytest.mark.usefixtures("one_thread")
N = 8  # the first N entries of train.json


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A fake course folder: iclevr/ with the first N training images as 320x240 RGBA PNGs, and checkpoint.pth, a
    course-format judge ({"model": ResNet18 state dict with fc.0.* keys})."""
    folder = tmp_path_factory.mktemp("course")
    names = list(json.loads((ROOT / "train.json").read_text()))[:N]
    (folder / "iclevr").mkdir()
    for i, name in enumerate(names):
        image = Image.new("RGBA", (320, 240), (120, 120, 118, 255))
        ImageDraw.Draw(image).ellipse([40 + 20 * i, 80, 120 + 20 * i, 160], fill=(200, 30 + 20 * i, 40, 255))
        image.save(folder / "iclevr" / name)
    torch.manual_seed(0)
    torch.save({"model": build_network().state_dict()}, folder / "checkpoint.pth")
    return folder


@pytest.fixture()
def workdir(course, tmp_path, monkeypatch):
    """A checkout's working folder: the label files, the course's judge copied in, and an iclevr/ of renders already
    there (make demo's), which --data-root leaves alone."""
    for name in ("train.json", "test.json", "objects.json"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(course / "checkpoint.pth", tmp_path / "checkpoint.pth")
    (tmp_path / "iclevr").mkdir()
    (tmp_path / "iclevr" / "CLEVR_train_000000_0.png").write_bytes(b"a render of make demo")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_course_folder_trains_in_place_and_its_judge_scores(course, workdir, capsys):
    data = str(course / "iclevr")
    train.main(["--data-root", data, "--limit", str(N), "--preset", "tiny", "--epochs", "1", "--batch-size", "4",
                "--num-workers", "1"])
    config = json.loads((workdir / "checkpoints" / "config.json").read_text())
    assert config["data_root"] == data and config["settings"]["limit"] == N
    assert (workdir / "checkpoints" / "model_epoch_001.pt").is_file()
    assert (workdir / "iclevr" / "CLEVR_train_000000_0.png").read_bytes() == b"a render of make demo"  # untouched
    generate.main(["--split", "test", "--device", "cpu"])  # the newest checkpoint of checkpoints/
    capsys.readouterr()
    [record] = evaluate_generated.main(["--device", "cpu"])  # every split under generated/, the course's judge
    assert record["judge"]["path"] == "checkpoint.pth" and record["total"] == 72
    assert "checkpoint.pth" in capsys.readouterr().out
    dry = train.main(["--data-root", data, "--eval-every", "1", "--out", "other", "--dry-run"])
    assert dry.judge == "checkpoint.pth" and dry.data_root == data  # --eval-every scores with it too


@pytest.mark.skipif(shutil.which("cp") is None, reason="needs cp")
@pytest.mark.parametrize("exists", [False, True])
def test_copying_the_course_folder_never_nests_it(course, tmp_path, exists):
    """The copy recipe for users who want the images in ./iclevr: cp -r COURSE/iclevr/. iclevr (the folder's
    contents, into iclevr/ whether or not it exists; cp -r COURSE/iclevr iclevr would nest iclevr/iclevr)."""
    if exists:
        (tmp_path / "iclevr").mkdir()
    subprocess.run(["cp", "-r", f"{course / 'iclevr'}/.", "iclevr"], cwd=tmp_path, check=True)
    copied = sorted(p.name for p in (tmp_path / "iclevr").iterdir())
    assert copied == sorted(p.name for p in (course / "iclevr").iterdir()) and "iclevr" not in copied
