"""Every bad input gets one clear line: ICLEVRError from the library, exit code 2 from scripts."""
import argparse
import subprocess
import sys

import pytest

from conftest import ROOT, write_json
from dataset import ICLEVRDataset, encode_labels, load_label_file, load_objects
from utils import ICLEVRError

BAD_LABEL_FILES = [  # (file content, words the message must contain)
    ([["red spher"]], ['unknown label "red spher"', 'did you mean "red sphere"']),
    ([["Red Sphere"]], ['unknown label "Red Sphere"', 'did you mean "red sphere"']),
    ([["pink sphere"]], ['unknown label "pink sphere"', "<color> <shape>"]),
    ([[]], ["entry 0", "empty label list"]),
    ([["red sphere"], ["cyan cube", "cyan cube"]], ["entry 1", '"cyan cube" appears twice']),
    ([["red sphere", "cyan cube", "gray cube", "blue cube"]], ["4 labels", "at most 3"]),
    ([["red sphere", 3]], ["expected a list of label strings"]),
    (["red sphere"], ["expected a list of label strings"]),
    ({"a.png": "red sphere"}, ['entry "a.png"', "expected a list of label strings"]),
    ("\"red sphere\"", ["expected a dict", "got str"]),
    ("42", ["expected a dict", "got int"]),
    ("[]", ["holds no entries"]),
    ('[["red sphere"]', ["malformed JSON at line 1"]),
    ("", ["empty"]),
    ({"../x.png": ["red sphere"]}, ['"../x.png" escapes the image folder']),
    ({"/etc/x.png": ["red sphere"]}, ['"/etc/x.png" escapes the image folder']),
    ({"C:\\x.png": ["red sphere"]}, ["escapes the image folder"]),
    ({"a/../../x.png": ["red sphere"]}, ["escapes the image folder"]),
]


@pytest.mark.parametrize("content, words", BAD_LABEL_FILES)
def test_bad_label_file(tmp_path, label2idx, content, words):
    path = write_json(tmp_path / "bad.json", content)
    with pytest.raises(ICLEVRError) as e:
        load_label_file(path, label2idx)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert isinstance(e.value, ValueError)


def test_binary_and_missing_files(tmp_path, label2idx):
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    with pytest.raises(ICLEVRError, match="not a text file"):
        load_label_file(tmp_path / "bin.json", label2idx)
    with pytest.raises(ICLEVRError, match="nope.json: no such file"):
        load_label_file(tmp_path / "nope.json", label2idx)
    with pytest.raises(ICLEVRError, match="is a folder"):
        load_label_file(tmp_path, label2idx)
    with pytest.raises(ICLEVRError, match="dict of label -> index"):
        load_objects(write_json(tmp_path / "o.json", {"red sphere": 0, "blue cube": 5}))


def test_encode_labels_validates(label2idx):
    with pytest.raises(ICLEVRError, match="at most 2"):
        encode_labels(["red sphere", "cyan cube", "gray cube"], label2idx, max_objects=2)
    with pytest.raises(ICLEVRError, match='did you mean "cyan cube"'):
        encode_labels(["cyan cub"], label2idx)


def test_missing_and_unreadable_images(tmp_path, tiny_iclevr, train_head):
    root, labels = tiny_iclevr
    with pytest.raises(ICLEVRError) as e:
        ICLEVRDataset(tmp_path / "empty", labels, ROOT / "objects.json")
    assert "9 of 9 images are missing" in str(e.value) and "python render_iclevr.py --json" in str(e.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in train_head:
        (broken / name).write_bytes((root / name).read_bytes())
    (broken / "CLEVR_train_000001_2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = ICLEVRDataset(broken, labels, ROOT / "objects.json")
    ds[0]
    with pytest.raises(ICLEVRError, match="cannot read image .*CLEVR_train_000001_2.png"):
        ds[5]
    with pytest.raises(ICLEVRError, match="CLEVR_train_000001_2.png"):
        ICLEVRDataset(broken, labels, ROOT / "objects.json", preload=True)


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content, args, words", [
    ([["red spher"]], [], 'unknown label "red spher"'),
    ("[[", [], "malformed JSON"),
    ([["red sphere"]], ["--workers", "0"], "--workers must be at least 1"),
    ([["red sphere"]], ["--size", "big"], "argument --size"),
])
def test_render_cli_errors_are_one_line_exit_2(tmp_path, content, args, words):
    path = write_json(tmp_path / "bad.json", content)
    out = tmp_path / "out"
    result = run_script("render_iclevr.py", "--json", str(path), "--out", str(out), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not out.exists() or not any(out.glob("*.png"))


SCRIPTS = ["app", "denoise", "evaluate_generated", "export", "generate", "grid", "render_iclevr", "train",
           "train_autoencoder", "train_evaluator"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_help_has_a_sentence_per_flag_and_shows_its_default(name):
    import importlib
    parser = importlib.import_module(name).build_parser()
    assert parser.format_help().startswith("usage:")
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        flag, shown = action.option_strings[0], formatter._get_help_string(action)
        assert action.help and action.help.rstrip(")").endswith("."), f"{name} {flag}: no help sentence"
        if action.default not in (None, False, []):
            assert "default" in shown, f"{name} {flag}: the default {action.default!r} is not shown"
