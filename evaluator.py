"""The judge: a drop-in for the course's `evaluator.py`, on CPU or GPU.

    from evaluator import evaluation_model
    judge = evaluation_model()                   # default_judge(); CUDA when available, else CPU
    judge = evaluation_model("checkpoint.pth", device="cpu")
    accuracy = judge.eval(images, labels)        # images (B, 3, 64, 64) in [-1, 1]; labels (B, 24) multi-hot

Same network and checkpoint format as the course's (torchvision `resnet18()` whose `fc` is
`Sequential(Linear(512, 24), Sigmoid())`, weights under the key "model"), so the course's real
`checkpoint.pth` loads unchanged and gives the official numbers. Unlike the course file it takes
the checkpoint path and device, loads with `weights_only=True` (a checkpoint cannot run code),
scores large inputs in batches, and works on CPU. Nothing is resized inside: images must already
be 64x64 (evaluate_generated.py resizes a folder for you).

Which judge scores when none is named (default_judge): ./checkpoint.pth, the course's, when it
exists in the working directory, else the project's shipped judge weights/judge.pth (stored in
fp16 by half_state, loaded as fp32; reproduced by `make judge`). `judge.checkpoint` and
`judge.sha256` name the file that scored.

The official metric, hand-written because it is the course's own definition: for each image with
k true labels take the k highest-scoring classes; accuracy = total hits / total true labels over
all images passed in (not a mean of per-image or per-batch accuracies, which is more generous).
"""
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from utils import NUM_LABELS, ICLEVRError, load_torch_file, pick_device, sha256_of

COURSE_JUDGE = Path("checkpoint.pth")  # the course's judge, looked for in the working directory
SHIPPED_JUDGE = Path(__file__).resolve().parent / "weights" / "judge.pth"  # this project's, in the repository
REBUILD = "make judge retrains it"  # how to get weights/judge.pth back


def shown(path):
    """A path as a user would type it from here: relative when under the working directory."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def default_judge():
    """The judge that scores when the user names none: ./checkpoint.pth (the course's, relative to the
    working directory) when it exists, else the shipped weights/judge.pth; neither: one line."""
    if COURSE_JUDGE.is_file():
        return COURSE_JUDGE
    if SHIPPED_JUDGE.is_file():
        return SHIPPED_JUDGE
    raise ICLEVRError(f"no judge: neither ./{COURSE_JUDGE} nor {shown(SHIPPED_JUDGE)} exists; {REBUILD}")


def refuse_judge(path, flag, judge=None, sha=None):
    """No network used in training may be the judge that scores (it would leak the metric): a file whose
    sha256 is that of the course's ./checkpoint.pth, the shipped judge or `judge` (a run's --judge) is refused
    in one line naming the flag. Returns the file's sha256 (`sha` when the caller has it already)."""
    sha = sha or sha256_of(path)
    for candidate in filter(None, (judge, COURSE_JUDGE, SHIPPED_JUDGE)):
        if Path(candidate).is_file() and sha256_of(candidate) == sha:
            raise ICLEVRError(f"{flag} {path} is the judge that scores ({candidate}): an encoder used in training "
                              "must be another network (python train_evaluator.py --seed 2 --out FILE)")
    return sha


def half_state(ckpt):
    """A course-format checkpoint with the floating-point tensors of ckpt["model"] in fp16 (half the
    size; scores within a label of fp32) and meta["dtype"] = "float16". Works on any fp32 checkpoint:
    save_torch(out, half_state(load_judge_checkpoint(path))). A value fp16 cannot hold is refused."""
    model = {}
    for key, value in ckpt["model"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            half = value.half()
            if not torch.isfinite(half).all() and torch.isfinite(value).all():
                raise ICLEVRError(f"{key}: values beyond fp16's range (max {value.abs().max():.3g}); keep it in fp32")
            value = half
        model[key] = value
    return {**ckpt, "model": model, "meta": {**ckpt.get("meta", {}), "dtype": "float16"}}


def build_network(sigmoid=True):
    """The course's classifier: an untrained ResNet18 with a 24-way sigmoid head.

    sigmoid=False ends in the logits instead (to train with the numerically stable
    BCEWithLogits); the state dict is the same, since the Sigmoid holds no weights.
    """
    net = resnet18()
    net.fc = nn.Sequential(nn.Linear(512, NUM_LABELS), nn.Sigmoid() if sigmoid else nn.Identity())
    return net


def label_hits(scores, multi_hot):
    """(n, 24) bool: the true labels that are among their image's top-k classes, k = its label count (ties in
    a stable order): the official metric, label by label."""
    scores, multi_hot = scores.float().cpu(), multi_hot.float().cpu()
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))
    return (multi_hot > 0) & (rank < multi_hot.sum(1, keepdim=True).long())


def official_hits(scores, multi_hot):
    """(hits, total) of the official metric: per image the top-k classes, k = its label count."""
    return int(label_hits(scores, multi_hot).sum()), int(multi_hot.float().sum())


def load_judge_checkpoint(path):
    """A course-format checkpoint ({"model": state dict, ...}) with its floating-point tensors in fp32
    (the shipped judge is stored in fp16), refusing anything else in one line that names the file."""
    path = Path(path)
    valid = ("a judge is a course-format checkpoint: the course's checkpoint.pth, the shipped weights/judge.pth "
             "or one written by python train_evaluator.py")
    shipped = os.path.abspath(path) == os.path.abspath(SHIPPED_JUDGE)
    if not path.is_file():
        raise ICLEVRError(f"{path}: no such evaluator checkpoint; " + (REBUILD if shipped else valid))
    try:
        ckpt = load_torch_file(path, "evaluator checkpoint")
    except ICLEVRError as e:
        raise ICLEVRError(f"{e}; " + (REBUILD if shipped else valid)) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "fc.0.weight" not in ckpt["model"]:
        raise ICLEVRError(f"{path}: not an evaluator checkpoint (expected {{'model': ResNet18 state dict "
                          "with a 24-way fc.0 head}, as written by train_evaluator.py or the course)"
                          + (f"; {REBUILD}" if shipped else ""))
    model = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
             for k, v in ckpt["model"].items()}  # fp16 (the shipped judge) is stored, fp32 scores
    return {**ckpt, "model": model}


def load_network(path):
    """(the course's ResNet18 with the weights of a judge file, the file's meta), in fp32."""
    state = load_judge_checkpoint(path)
    net = build_network()
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ICLEVRError(f"{path}: weights do not fit the course's ResNet18 "
                          f"({str(e).splitlines()[0][:120]})") from None
    return net, state.get("meta", {})


class evaluation_model:  # noqa: N801 -- the course's class name, kept for drop-in use
    def __init__(self, ckpt=None, device=None, batch_size=256):
        """ckpt: the judge file; None: default_judge() (./checkpoint.pth, else weights/judge.pth)."""
        ckpt = default_judge() if ckpt is None else ckpt
        self.resnet18, self.meta = load_network(ckpt)
        self.checkpoint = str(ckpt)
        self.sha256 = sha256_of(ckpt)  # names the judge behind every score
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.resnet18 = self.resnet18.to(self.device).eval()
        self.classnum = NUM_LABELS

    def name(self):
        """The judge in a few words for a score line: its path and the first 12 hex digits of its sha256."""
        return f"{shown(self.checkpoint)} (sha256 {self.sha256[:12]})"

    def compute_acc(self, out, onehot_labels):
        """The course's function: official accuracy of scores `out` against multi-hot labels."""
        hits, total = official_hits(out, onehot_labels)
        return hits / total

    @torch.no_grad()
    def predict(self, images):
        """Sigmoid scores (B, 24) for images (B, 3, 64, 64) in [-1, 1], in batches."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, 64, 64):
            raise ICLEVRError(f"the evaluator takes images of shape (B, 3, 64, 64), got {tuple(images.shape)}")
        return torch.cat([self.resnet18(batch.to(self.device, torch.float32)).float().cpu()
                          for batch in images.split(self.batch_size)])

    def eval(self, images, labels):
        """Official accuracy of `images` against multi-hot `labels`, over all of them at once."""
        return self.compute_acc(self.predict(images), labels)
