"""The shipped weights are pinned: a changed or re-trained file must come with a new sha256 here.

weights/judge.pth is reproduced by `make judge` (render_iclevr.py --json train.json --out iclevr,
then train_evaluator.py --half --out weights/judge.pth); after retraining it, put the new file's
sha256 (`sha256sum weights/judge.pth`) below. This is the one test that reads the real weights.
"""
import hashlib

import torch

from conftest import ROOT
from evaluator import SHIPPED_JUDGE, load_checkpoint

JUDGE_SHA256 = "ac079c501c93e76980ed53dbe22a308a81557eedb0d5c22871a80ac7534e6260"


def test_shipped_judge_is_pinned():
    assert SHIPPED_JUDGE == ROOT / "weights" / "judge.pth"
    assert SHIPPED_JUDGE.is_file(), "weights/judge.pth is missing: make judge retrains it"
    assert hashlib.sha256(SHIPPED_JUDGE.read_bytes()).hexdigest() == JUDGE_SHA256
    ckpt = torch.load(SHIPPED_JUDGE, map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"model", "meta"} and "fc.0.weight" in ckpt["model"], "not a course-format checkpoint"
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats), "the shipped judge is stored in fp16"
    assert ckpt["meta"]["dtype"] == "float16"
    assert load_checkpoint(SHIPPED_JUDGE)["model"]["fc.0.weight"].dtype == torch.float32  # scored in fp32
