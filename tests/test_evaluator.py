"""The judge: the official metric, the course's checkpoint format, refusals and the training script."""
import argparse
import hashlib
import importlib
import json
import pickle
from pathlib import Path

import pytest
import torch

import evaluate_generated
import evaluator
import render_iclevr
import train_evaluator
from bench.common import rendered_layouts, wrong_labels
from conftest import ROOT, write_json
from dataset import encode_labels, to_model_range
from evaluator import build_network, default_judge, evaluation_model, half_state, official_hits
from utils import ICLEVRError, sha256_of

OBJECTS = str(ROOT / "objects.json")


def course_compute_acc(out, onehot_labels):
    """The course evaluator's loop, verbatim in spirit: the reference our vectorised metric must match."""
    acc = total = 0
    for i in range(out.size(0)):
        k = int(onehot_labels[i].sum().item())
        total += k
        _, outi = out[i].topk(k)
        _, li = onehot_labels[i].topk(k)
        acc += sum(1 for j in outi if j in li)
    return acc / total


def multi_hot(*rows):
    m = torch.zeros(len(rows), 24)
    for i, row in enumerate(rows):
        m[i, list(row)] = 1
    return m


def test_metric_by_hand():
    truth = multi_hot([3], [1, 2], [4, 5, 6])
    scores = torch.zeros(3, 24)
    scores[0, 3] = 0.9  # k=1: hit
    scores[1, [1, 7]] = 0.8  # k=2: one of two
    scores[2, [4, 5, 6]] = 0.7  # k=3: all three
    assert official_hits(scores, truth) == (1 + 1 + 3, 6)
    scores[0, 9] = 1.0  # now the k=1 image misses
    assert official_hits(scores, truth) == (4, 6)


def test_metric_is_over_all_labels_not_a_mean_per_image():
    truth = multi_hot([0], [1, 2, 3])
    scores = torch.zeros(2, 24)
    scores[0, 5] = 1  # 0/1
    scores[1, [1, 2, 3]] = 1  # 3/3
    hits, total = official_hits(scores, truth)
    assert hits / total == 0.75  # the per-image mean would be 0.5
    assert course_compute_acc(scores, truth) == 0.75


def test_metric_matches_the_course_loop_on_random_cases():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        truth = torch.zeros(n, 24)
        for i in range(n):
            truth[i, torch.randperm(24, generator=gen)[: int(torch.randint(1, 4, (1,), generator=gen))]] = 1
        scores = torch.rand(n, 24, generator=gen)
        hits, total = official_hits(scores, truth)
        assert hits / total == pytest.approx(course_compute_acc(scores, truth))


@pytest.fixture(scope="module")
def course_ckpt(tmp_path_factory):
    """A checkpoint in the course's format: {"model": resnet18 state dict with fc.0.* keys}."""
    torch.manual_seed(0)
    net = build_network().eval()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save({"model": net.state_dict()}, path)
    return path, net


def test_course_format_checkpoint_loads_on_cpu(course_ckpt):
    path, net = course_ckpt
    assert {"fc.0.weight", "fc.0.bias"} <= set(torch.load(path, weights_only=True)["model"])
    judge = evaluation_model(path, device="cpu", batch_size=3)
    images = torch.rand(7, 3, 64, 64) * 2 - 1
    scores = judge.predict(images)
    with torch.no_grad():
        assert torch.allclose(scores, net(images), atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()
    labels = multi_hot([0], [1, 2], [3, 4, 5], [6], [7], [8], [9])
    assert judge.eval(images, labels) == course_compute_acc(scores, labels)
    with pytest.raises(ICLEVRError, match=r"\(B, 3, 64, 64\)"):
        judge.predict(torch.zeros(2, 3, 32, 32))


class RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_PATH'], 'w').write('ran')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, course_ckpt, monkeypatch):
    good, _ = course_ckpt
    cases = {"missing.pth": None, "truncated.pth": good.read_bytes()[:5000], "text.pt": b"hello, not a checkpoint\n"}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    torch.save({"state": {}}, tmp_path / "other_tool.pth")
    torch.save({"model": {k: v for k, v in build_network().state_dict().items() if not k.startswith("fc")}},
               tmp_path / "no_head.pth")
    small = build_network()
    small.fc[0] = torch.nn.Linear(512, 10)
    torch.save({"model": small.state_dict()}, tmp_path / "ten_classes.pth")
    monkeypatch.setenv("PWNED_PATH", str(tmp_path / "pwned"))
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": RunsCode()}, f)
    expected = {"missing.pth": "train_evaluator.py", "truncated.pth": "not a loadable", "text.pt": "not a loadable",
                "other_tool.pth": "not an evaluator checkpoint", "no_head.pth": "not an evaluator checkpoint",
                "ten_classes.pth": "do not fit", "evil.pth": "not a loadable"}
    for name, words in expected.items():
        with pytest.raises(ICLEVRError, match=words) as e:
            evaluation_model(tmp_path / name, device="cpu")
        assert "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists(), "loading must never run code from a checkpoint"


def test_negative_control_sets_and_what_they_catch():
    gen = torch.Generator().manual_seed(0)
    truth = torch.zeros(300, 24)
    for i in range(300):
        truth[i, torch.randperm(24, generator=gen)[: i % 3 + 1]] = 1
    wrong = wrong_labels(truth, gen)
    assert torch.equal(wrong.sum(1), truth.sum(1)) and not (wrong * truth).any()
    oracle = truth + 0.01 * torch.rand(truth.shape, generator=gen)  # a judge that reads images perfectly
    assert official_hits(oracle, truth) == (int(truth.sum()),) * 2
    assert official_hits(oracle, wrong)[0] == 0
    blind = torch.linspace(1, 0, 24).expand(300, 24)  # a judge that ignores its input
    hits, total = official_hits(blind, truth)
    assert hits / total <= 0.15, "a judge that ignores the image must score near chance"


def test_train_evaluator_tiny_run_is_deterministic(tmp_path, tiny_iclevr):
    root, labels = tiny_iclevr
    common = ["--data-root", str(root), "--json", str(labels), "--objects", OBJECTS, "--val-root",
              str(tmp_path / "val"), "--val-size", "4", "--extra-random", "3", "--extra-root", str(tmp_path / "extra"),
              "--epochs", "1", "--batch-size", "4", "--evals", "1", "--device", "cpu"]
    train_evaluator.main(common + ["--out", str(tmp_path / "a.pth")])
    train_evaluator.main(common + ["--out", str(tmp_path / "b.pth")])
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pth", "b.pth"))
    assert a["model"].keys() == b["model"].keys() and "fc.0.weight" in a["model"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["heldout_seed"] == 1 and 0 <= a["meta"]["heldout_accuracy"] <= 1
    assert a["meta"]["style_augment"] == 0
    assert a["meta"]["train_images"] == 9 + 3 and a["meta"]["step"] == 3  # 12 images, batch 4, one epoch
    assert json.loads((tmp_path / "val" / "labels.json").read_text()).__len__() == 4
    evaluation_model(tmp_path / "a.pth", device="cpu")  # loads as a course-format judge
    mixed = [str(tmp_path / "extra_r") if a == str(tmp_path / "extra") else a for a in common]
    mixed += ["--extra-randomize", "0.5"]
    train_evaluator.main(mixed + ["--out", str(tmp_path / "c.pth")])  # the extra scenes domain-randomized
    assert json.loads((tmp_path / "extra_r" / ".render.json").read_text())["randomize"] == 0.5
    assert torch.load(tmp_path / "c.pth", weights_only=True)["meta"]["extra_randomize"] == [0.5]
    both = [*common[:12], "--extra-root", str(tmp_path / "extra"), str(tmp_path / "extra_r"), *common[14:]]
    train_evaluator.main(both + ["--extra-randomize", "0", "0.5", "--out", str(tmp_path / "m.pth")])
    meta = torch.load(tmp_path / "m.pth", weights_only=True)["meta"]  # standard and randomized scenes, 3 of each
    assert meta["train_images"] == 9 + 3 + 3 and meta["extra_randomize"] == [0, 0.5] and meta["step"] == 3
    with pytest.raises(SystemExit) as refused:  # two strengths, one folder: refused before anything is rendered
        train_evaluator.main(common + ["--extra-randomize", "0", "0.5", "--out", str(tmp_path / "n.pth")])
    assert refused.value.code == 2 and not (tmp_path / "n.pth").exists()
    train_evaluator.main([*common, "--init", str(tmp_path / "a.pth"), "--lr", "1e-12",
                          "--out", str(tmp_path / "d.pth")])
    d = torch.load(tmp_path / "d.pth", weights_only=True)  # fine-tuned at a vanishing rate: a's weights
    assert all(torch.allclose(d["model"][k].float(), a["model"][k].float(), atol=1e-6) for k in a["model"]
               if "running" not in k and "num_batches" not in k)  # (BatchNorm statistics move whatever the rate)
    assert d["meta"]["init"] == str(tmp_path / "a.pth") and d["meta"]["init_sha256"] == sha256_of(tmp_path / "a.pth")
    with pytest.raises(SystemExit) as refused:  # a label file as --init: refused before anything is rendered
        train_evaluator.main([*common[:6], "--val-root", str(tmp_path / "val2"), *common[8:], "--init", str(labels),
                              "--out", str(tmp_path / "e.pth")])
    assert refused.value.code == 2 and not (tmp_path / "val2").exists() and not (tmp_path / "e.pth").exists()


def test_augment_keeps_range_and_is_seeded(tiny_iclevr):
    from dataset import ICLEVRDataset
    root, labels = tiny_iclevr
    images = ICLEVRDataset(root, labels, OBJECTS, preload=True).images
    a = train_evaluator.augment(images, torch.Generator().manual_seed(3))
    b = train_evaluator.augment(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == images.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, to_model_range(images))
    assert (a - to_model_range(images)).abs().mean() < 0.15, "degradations stay mild"



def test_style_augment_zooms_out_relights_and_is_seeded():
    x = -torch.ones(4, 3, 32, 32)
    x[:, :, 12:20, 12:20] = 1  # a white square on black, centered
    assert torch.equal(train_evaluator.style_augment(x, torch.Generator().manual_seed(0), 0.0), x)
    a = train_evaluator.style_augment(x, torch.Generator().manual_seed(1), 1.0)
    b = train_evaluator.style_augment(x, torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    mid = (a.amin((1, 2, 3), keepdim=True) + a.amax((1, 2, 3), keepdim=True)) / 2
    lit = (a > mid)[:, 0].sum((1, 2))  # pixels of the square, after the change
    assert (lit <= 64).all() and (lit < 64).any(), "objects are drawn smaller (zoom <= 1), never larger"
    assert torch.allclose(a[..., 0, 0], a[..., 5, 5], atol=1e-5), "the frame's edge is continued, not zeros"
    half = train_evaluator.style_augment(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(2), 0.5)
    changed = (half != x.repeat(50, 1, 1, 1)).flatten(1).any(1).float().mean()
    assert 0.3 < changed < 0.7, "about half the images are changed"


@pytest.fixture()
def generated(tmp_path, course_ckpt):
    labels = write_json(tmp_path / "mini.json", [["red sphere"], ["cyan cube", "gray cylinder"],
                                                 ["blue sphere", "green cube", "yellow cylinder"]])
    render_iclevr.main(["--json", str(labels), "--out", str(tmp_path / "gen"), "--objects", OBJECTS])
    return labels, tmp_path / "gen", course_ckpt[0]


def run_eval(*args):
    return evaluate_generated.main([*map(str, args), "--objects", OBJECTS, "--device", "cpu"])


def test_evaluate_generated_writes_eval_json(generated, capsys):
    labels, folder, ckpt = generated
    (record,) = run_eval("--json", labels, "--images", folder, "--judge", ckpt)
    saved = json.loads((folder / "eval.json").read_text())
    assert saved["total"] == 6 and saved["accuracy"] == saved["hits"] / 6 == record["accuracy"]
    assert sum(v["total"] for v in saved["by_objects"].values()) == 6 and len(saved["per_image"]) == 3
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert saved["judge"] == {"path": str(ckpt), "sha256": digest} == record["judge"]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"judge: {ckpt} (sha256 {digest[:12]})" and out[1].startswith("mini: accuracy"), out


def test_evaluate_generated_resizes_and_finds_splits(generated, tmp_path, monkeypatch, capsys):
    labels, folder, ckpt = generated
    split = tmp_path / "work" / "generated" / "mini"
    split.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.open(folder / f"{i}.png").resize((32, 32)).save(split / f"{i}.png")
    (tmp_path / "work" / "mini.json").write_text(labels.read_text())
    monkeypatch.chdir(tmp_path / "work")
    run_eval("--judge", ckpt)  # no split named: scores every folder under generated/
    out = capsys.readouterr().out
    assert "mini: accuracy" in out and "resized to 64x64" in out and (split / "eval.json").is_file()


@pytest.mark.parametrize("damage, words", [
    (lambda f: (f / "1.png").unlink(), "1 of 3 images missing (1.png)"),
    (lambda f: (f / "7.png").write_bytes((f / "0.png").read_bytes()), "extra images 7.png"),
    (lambda f: (f / "2.png").write_bytes(b"\x89PNG garbage"), "cannot read image"),
])
def test_evaluate_generated_refuses_bad_folders(generated, damage, words, capsys):
    labels, folder, ckpt = generated
    damage(folder)
    with pytest.raises(SystemExit) as e:
        run_eval("--json", labels, "--images", folder, "--judge", ckpt)
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (folder / "eval.json").exists()


def test_evaluate_generated_messages(generated, tmp_path, capsys):
    labels, folder, _ = generated
    with pytest.raises(SystemExit):
        run_eval("--json", labels, "--images", folder, "--judge", tmp_path / "none.pth")
    assert "none.pth: no such evaluator checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_eval("--json", labels, "--images", tmp_path / "nowhere", "--judge", generated[2])
    assert "nowhere: no such folder; generate them with: python generate.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_eval("--json", ROOT / "train.json", "--images", folder, "--judge", generated[2])
    assert "train.json-style dict" in capsys.readouterr().err


def test_judge_misses_counts_the_official_hits_per_object(tmp_path, label2idx):
    """bench/judge_misses.py's per-object rows: hits agree with the official metric, a miss names the
    label that took its place, and every object's visible pixels respect CLEVR's minimum."""
    judge_misses = importlib.import_module("bench.judge_misses")
    images, truth = train_evaluator.random_renders(tmp_path / "r", 6, 5, OBJECTS)
    lists = json.loads((tmp_path / "r" / "labels.json").read_text())
    settings, layouts = rendered_layouts(tmp_path / "r", None, lists)
    idx2label = {i: label for label, i in label2idx.items()}
    scores = truth + 0.01 * torch.arange(24)  # every true label ranks first: no miss
    rows = judge_misses.object_rows(scores, truth, layouts, settings, idx2label)
    assert len(rows) == truth.sum() and all(r[2] for r in rows)
    assert min(r[0] for r in rows) >= render_iclevr.MIN_VISIBLE * 64 * 64
    k = int(truth[0].sum())
    first = lists[0][0]
    scores[0, label2idx[first]] = -1  # the first object of scene 0 drops out of its top k ...
    intruder = next(c for c in range(23, -1, -1) if not truth[0, c])  # ... and the best wrong class takes its place
    rows = judge_misses.object_rows(scores, truth, layouts, settings, idx2label)
    hits, total = official_hits(scores, truth)
    assert (hits, total) == (sum(r[2] for r in rows), len(rows)) == (total - 1, total)
    assert [(r[3], r[4], r[1], r[5]) for r in rows if not r[2]] == [(first, idx2label[intruder], k, 0)]


def test_judge_agreement_splits_the_official_hits_label_by_label(label2idx):
    """bench/judge_agreement.py: each judge's right labels add up to its official hits, and a label only
    one judge ranks in its top k is counted for that judge alone."""
    judge_agreement = importlib.import_module("bench.judge_agreement")
    lists = [["red sphere"], ["blue cube", "cyan cylinder"], ["gray sphere", "green cube", "purple cylinder"]]
    truth = torch.stack([encode_labels(labels, label2idx) for labels in lists])
    a = truth + 0.01 * torch.arange(24)  # every true label in the top k
    b = a.clone()
    b[1, label2idx["cyan cylinder"]] = -1  # B drops one label of scene 1 out of its top 2
    rows = judge_agreement.label_agreement(a, b, lists, label2idx)
    assert len(rows) == 6 and [r[:2] for r in rows][1:3] == [("blue cube", 2), ("cyan cylinder", 2)]
    assert sum(r[2] for r in rows) == official_hits(a, truth)[0] == 6
    assert sum(r[3] for r in rows) == official_hits(b, truth)[0] == 5
    assert [r[0] for r in rows if r[2] and not r[3]] == ["cyan cylinder"]


# ---- the shipped judge: fp16 storage, which judge scores, every score names it ------------

def test_half_state_round_trip_scores_like_fp32(tmp_path, course_ckpt):
    full, _ = course_ckpt
    ckpt = torch.load(full, weights_only=True)
    half = half_state({**ckpt, "meta": {"seed": 0}})
    assert half["meta"] == {"seed": 0, "dtype": "float16"}
    assert all(v.dtype == (torch.float16 if ckpt["model"][k].is_floating_point() else ckpt["model"][k].dtype)
               for k, v in half["model"].items())
    assert half["model"]["bn1.num_batches_tracked"].dtype == torch.int64
    torch.save(half, tmp_path / "half.pth")
    assert (tmp_path / "half.pth").stat().st_size < 0.55 * full.stat().st_size
    judge16, judge32 = evaluation_model(tmp_path / "half.pth", device="cpu"), evaluation_model(full, device="cpu")
    assert all(p.dtype == torch.float32 for p in judge16.resnet18.state_dict().values() if p.is_floating_point())
    assert judge16.meta["dtype"] == "float16"
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert (judge16.predict(images) - judge32.predict(images)).abs().max() < 1e-2


def test_half_state_refuses_values_beyond_fp16(course_ckpt):
    ckpt = torch.load(course_ckpt[0], weights_only=True)
    ckpt["model"]["fc.0.bias"] = ckpt["model"]["fc.0.bias"] + 1e6
    with pytest.raises(ICLEVRError, match="fc.0.bias: values beyond fp16's range"):
        half_state(ckpt)


def test_train_evaluator_half_writes_fp16(tmp_path):
    out = tmp_path / "weights" / "judge.pth"  # weights/ does not exist yet: make judge's case
    args = train_evaluator.build_parser().parse_args(["--half", "--out", str(out)])
    best = dict(state=build_network().state_dict(), clean=0.5, degraded=0.4, step=3, epoch=1.0)
    train_evaluator.save(best, args, 1.0, 12)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model"]["fc.0.weight"].dtype == torch.float16 and ckpt["meta"]["dtype"] == "float16"
    assert ckpt["meta"]["heldout_accuracy"] == 0.5
    assert not train_evaluator.build_parser().parse_args([]).half


@pytest.fixture()
def judges(tmp_path, monkeypatch, course_ckpt):
    """A working directory without checkpoint.pth and a shipped judge at tmp_path/repo/weights/judge.pth."""
    shipped = tmp_path / "repo" / "weights" / "judge.pth"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(course_ckpt[0].read_bytes())
    monkeypatch.setattr(evaluator, "SHIPPED_JUDGE", shipped)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return shipped


def test_default_judge_course_checkpoint_wins_over_the_shipped_one(judges, course_ckpt):
    assert default_judge() == judges  # no ./checkpoint.pth: the shipped judge
    assert evaluation_model(device="cpu").checkpoint == str(judges)
    Path("checkpoint.pth").write_bytes(course_ckpt[0].read_bytes())
    assert default_judge() == Path("checkpoint.pth")  # the course's judge, relative to the working directory
    judge = evaluation_model(device="cpu")
    assert judge.checkpoint == "checkpoint.pth"
    assert judge.sha256 == hashlib.sha256(Path("checkpoint.pth").read_bytes()).hexdigest()
    assert evaluation_model(judges, device="cpu").checkpoint == str(judges)  # an explicit path is used as given


def test_default_judge_missing_or_broken_is_one_line(judges, generated, capsys):
    labels, folder, _ = generated
    judges.unlink()
    with pytest.raises(ICLEVRError, match=r"^no judge: neither \./checkpoint\.pth nor .*judge\.pth exists; "
                       "make judge retrains it$"):
        default_judge()
    for content, words in [(None, "no judge: neither ./checkpoint.pth nor"),
                           (b"PK\x03\x04" + b"0" * 100, "judge.pth: not a loadable evaluator checkpoint"),
                           ("foreign", "judge.pth: not an evaluator checkpoint")]:
        if content == "foreign":
            torch.save({"state": {}}, judges)
        elif content is not None:
            judges.write_bytes(content)
        with pytest.raises(SystemExit) as e:
            run_eval("--json", labels, "--images", folder)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and words in err[0] and "make judge retrains it" in err[0], err
        assert "Traceback" not in err[0] and not (folder / "eval.json").exists()


def test_train_judge_default_is_resolved(judges, monkeypatch, capsys):
    import train
    monkeypatch.setattr(evaluator, "SHIPPED_JUDGE", judges.parent / "none.pth")
    args = argparse.Namespace(judge=None, objects=OBJECTS)
    assert train.load_judge(args, "cpu") == (None, {})
    assert "no judge: neither ./checkpoint.pth nor" in capsys.readouterr().out
    monkeypatch.setattr(evaluator, "SHIPPED_JUDGE", judges)
    judge, splits = train.load_judge(args, "cpu")
    assert judge.checkpoint == str(judges) and set(splits) == {"test", "new_test"}
