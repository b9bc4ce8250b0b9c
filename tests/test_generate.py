"""generate.py on a tiny trained model: batch-independent images, gap filling, the round trip
through evaluate_generated.py, and one-line refusals."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate_generated
import generate
import train
from conftest import ROOT, write_json
from evaluator import build_network

OBJECTS = str(ROOT / "objects.json")
LABELS = [["red sphere"], ["cyan cube", "gray cylinder"], ["blue sphere", "green cube", "yellow cylinder"],
          ["purple cube"], ["brown sphere", "red cylinder"]]


@pytest.fixture(scope="module")
def ckpt_dir(tiny_iclevr, tmp_path_factory):
    root, labels = tiny_iclevr
    out = tmp_path_factory.mktemp("ckpts")
    train.main(["--preset", "tiny", "--data-root", str(root), "--json", str(labels), "--objects", OBJECTS,
                "--epochs", "1", "--batch-size", "4", "--num-workers", "1", "--out", str(out)])
    return out


@pytest.fixture()
def labels_json(tmp_path):
    return write_json(tmp_path / "mine.json", LABELS)


def gen(ckpt_dir, *args):
    return generate.main(["--checkpoints-dir", str(ckpt_dir), "--objects", OBJECTS, *map(str, args)])


def pixels(folder, n):
    return np.stack([np.asarray(Image.open(folder / f"{i}.png")) for i in range(n)]).astype(int)


def test_images_do_not_depend_on_the_batch_size(ckpt_dir, labels_json, tmp_path):
    gen(ckpt_dir, "--json", labels_json, "--out", tmp_path / "b1", "--batch-size", 1)
    gen(ckpt_dir, "--json", labels_json, "--out", tmp_path / "b5", "--batch-size", 5)
    gen(ckpt_dir, "--json", labels_json, "--out", tmp_path / "s1", "--seed", 1)
    one, five = pixels(tmp_path / "b1", 5), pixels(tmp_path / "b5", 5)
    assert one.shape == (5, 64, 64, 3)  # the tiny model draws 16x16: resized to the judge's 64x64
    assert np.abs(one - five).max() <= 1  # equal up to float rounding in batched convolutions
    assert np.abs(one - pixels(tmp_path / "s1", 5)).mean() > 5  # another seed, other images
    grid = Image.open(tmp_path / "b1" / "grid.png")
    assert grid.size[0] > 5 * 64 and grid.size[1] >= 64


def test_rerun_fills_gaps_and_redraws_after_a_change(ckpt_dir, labels_json, tmp_path, capsys):
    out = tmp_path / "gen"
    gen(ckpt_dir, "--json", labels_json, "--out", out)
    before = pixels(out, 5)
    (out / "2.png").unlink()
    capsys.readouterr()
    gen(ckpt_dir, "--json", labels_json, "--out", out)
    assert "(1 drawn now)" in capsys.readouterr().out
    assert np.array_equal(pixels(out, 5), before)
    write_json(labels_json, [LABELS[0], ["purple sphere"], *LABELS[2:]])  # the label file changed in one entry
    gen(ckpt_dir, "--json", labels_json, "--out", out)
    assert "(1 drawn now)" in capsys.readouterr().out
    after = pixels(out, 5)
    assert np.abs(after[1] - before[1]).mean() > 1 and np.array_equal(np.delete(after, 1, 0), np.delete(before, 1, 0))
    gen(ckpt_dir, "--json", labels_json, "--out", out, "--guidance", 1)
    assert "(5 drawn now)" in capsys.readouterr().out
    assert json.loads((out / generate.MANIFEST).read_text())["guidance"] == 1


def test_generate_then_evaluate_round_trip(ckpt_dir, labels_json, tmp_path, capsys):
    torch.manual_seed(0)
    judge = tmp_path / "checkpoint.pth"
    torch.save({"model": build_network().state_dict()}, judge)
    out = tmp_path / "gen"
    gen(ckpt_dir, "--json", labels_json, "--out", out, "--sampler", "ddim", "--steps", 3)
    [record] = evaluate_generated.main(["--json", str(labels_json), "--images", str(out), "--judge", str(judge),
                                        "--objects", OBJECTS, "--device", "cpu"])
    assert record["total"] == sum(len(x) for x in LABELS) and 0 <= record["hits"] <= record["total"]
    assert json.loads((out / "eval.json").read_text())["accuracy"] == record["accuracy"]


def test_evaluate_sets_two_generated_folders_side_by_side(ckpt_dir, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    torch.save({"model": build_network().state_dict()}, tmp_path / "judge.pth")
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "test.json", LABELS)
    for root, seed in [("shipped", 0), ("generated", 1)]:
        gen(ckpt_dir, "--json", "test.json", "--out", f"{root}/test", "--seed", seed, "--steps", 3)
    capsys.readouterr()
    records = evaluate_generated.main(["--generated-root", "shipped", "generated", "--judge", "judge.pth",
                                       "--objects", OBJECTS, "--device", "cpu"])
    table = capsys.readouterr().out.splitlines()[-2:]
    assert table[0].split() == ["split", "shipped", "generated"]
    assert table[1].split() == ["test", *(f"{r['accuracy']:.4f}" for r in records)]


def test_second_judges_score_beside_the_first_and_are_kept_in_eval_json(ckpt_dir, labels_json, tmp_path, capsys):
    judges = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        judges.append(tmp_path / f"judge{seed}.pth")
        torch.save({"model": build_network().state_dict()}, judges[-1])
    out = tmp_path / "gen"
    gen(ckpt_dir, "--json", labels_json, "--out", out, "--sampler", "ddim", "--steps", 3)
    capsys.readouterr()
    [record] = evaluate_generated.main(["--json", str(labels_json), "--images", str(out), "--judge", *map(str, judges),
                                        "--objects", OBJECTS, "--device", "cpu"])
    [alone] = evaluate_generated.main(["--json", str(labels_json), "--images", str(out), "--judge", str(judges[1]),
                                       "--objects", OBJECTS, "--device", "cpu"])
    [other] = record["other_judges"]
    assert record["judge"]["path"] == str(judges[0]) and other["path"] == str(judges[1])
    assert other["accuracy"] == alone["accuracy"] and other["hits"] == alone["hits"]  # the same score as on its own
    assert other["hits"] != record["hits"]  # two different judges (seeds 0 and 1) disagree here
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {out} |")][0]
    spread = 100 * abs(record["accuracy"] - other["accuracy"])
    assert row.split("|")[2:5] == [f" {record['accuracy']:.4f} ", f" {other['accuracy']:.4f} ", f" {spread:.1f} "]
    assert json.loads((out / "eval.json").read_text())["judge"]["path"] == str(judges[1])  # the last run's judge


@pytest.mark.parametrize("args, words", [
    (["--steps", 0], "--steps must be at least 1"),
    (["--guidance", "nan"], "--guidance must be a number"),
    (["--batch-size", 0], "--batch-size must be at least 1"),
    (["--ckpt", "nowhere.pt"], "no such checkpoint"),
    (["--split", "test"], "give one of --split, --json and --labels"),
    (["--n", 0], "--n must be at least 1"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
])
def test_refusals(ckpt_dir, labels_json, tmp_path, args, words, capsys):
    with pytest.raises(SystemExit) as e:
        gen(ckpt_dir, "--json", labels_json, "--out", tmp_path / "o", *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_labels_draws_n_images_of_one_scene_that_evaluate_scores(ckpt_dir, tmp_path):
    out = tmp_path / "mine"
    gen(ckpt_dir, "--labels", "red sphere", "cyan cube", "--n", 3, "--out", out, "--sampler", "ddim", "--steps", 2)
    assert json.loads((out / "labels.json").read_text()) == [["red sphere", "cyan cube"]] * 3
    assert (out / "grid.png").is_file() and not (out / "3.png").exists()
    images = pixels(out, 3)
    assert not (images[0] == images[1]).all()  # each image its own noise
    torch.save({"model": build_network().state_dict()}, tmp_path / "judge.pth")
    [record] = evaluate_generated.main(["--json", str(out / "labels.json"), "--images", str(out), "--judge",
                                        str(tmp_path / "judge.pth"), "--objects", OBJECTS, "--device", "cpu"])
    assert record["total"] == 6


@pytest.mark.parametrize("labels, words", [
    (["red sphere", "red sphere"], '"red sphere" appears twice'),
    (["magenta cube"], 'unknown label "magenta cube"'),
    (["red sphere", "red cube", "red cylinder", "blue cube"], "at most 3"),
])
def test_labels_refusals_write_nothing(ckpt_dir, tmp_path, labels, words, capsys):
    with pytest.raises(SystemExit) as e:
        gen(ckpt_dir, "--labels", *labels, "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and words in err[0] and err[0].startswith("error: --labels"), err
    assert not (tmp_path / "o").exists()


def test_refuses_bad_labels_and_missing_checkpoints(ckpt_dir, tmp_path, capsys):
    bad = write_json(tmp_path / "bad.json", [["red sphere"], ["magenta cube"]])
    with pytest.raises(SystemExit):
        gen(ckpt_dir, "--json", bad)
    assert "magenta cube" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        generate.main(["--checkpoints-dir", str(tmp_path / "empty"), "--json", str(bad.with_name("none.json"))])
    assert e.value.code == 2


def test_full_disk_is_one_line_and_keeps_what_was_written(ckpt_dir, labels_json, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen"
    gen(ckpt_dir, "--json", labels_json, "--out", out)
    before = pixels(out, 5)
    (out / "3.png").unlink()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        gen(ckpt_dir, "--json", labels_json, "--out", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: cannot write") and "No space left" in err[-1]
    assert not (out / "3.png").exists()
    for i in (0, 1, 2, 4):  # what was there is untouched
        assert np.array_equal(np.asarray(Image.open(out / f"{i}.png")), before[i])
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


class NoisyOracle(torch.nn.Module):
    """The exact noise prediction for data that is one fixed image, plus a small error, bounded
    like a network's output: every sampler must land near that image. (An unclipped DPM-Solver
    at the cosine schedule's last timestep multiplies the error by sigma/alpha ~ 1e4, leaves the
    range a network can correct, and ends in saturated noise.)"""

    def __init__(self, target, alphas_cumprod):
        super().__init__()
        self.target, self.abar = target, alphas_cumprod
        self.w = torch.nn.Parameter(torch.zeros(()))  # sample() looks up the device through a parameter
        self.sample_shape = tuple(target.shape)  # what sample() draws noise of, and (a pixel model) decodes as is

    def decode(self, x):
        return x.clamp(-1, 1)

    def forward(self, x, t, multi_hot):
        abar = self.abar[t.long()].view(-1, 1, 1, 1) if t.dim() else self.abar[t.long()]
        eps = (x - abar.sqrt() * self.target) / (1 - abar).sqrt()
        error = 0.05 * torch.randn(eps.shape, generator=torch.Generator().manual_seed(int(t.max())))
        return eps.clamp(-4, 4) + error


@pytest.mark.parametrize("sampler, steps", [("ddpm", 100), ("ddim", 10), ("dpm", 10), ("dpm", 25),
                                           ("dpm-sde", 10), ("dpm-sde", 25)])
def test_every_sampler_lands_on_the_data(sampler, steps):
    from model import make_scheduler, preset_config
    from sampling import sample
    config = preset_config("cpu_pixel")  # the linear schedule over 1000 steps (32x32 images)
    abar = make_scheduler(config).alphas_cumprod
    target = torch.linspace(-0.8, 0.8, 32).expand(3, 32, 32)
    images = sample(NoisyOracle(target, abar), config, torch.zeros(2, 24), sampler, steps, guidance=1.0)
    assert (images - target).abs().mean() < 0.1, (images - target).abs().mean()


def test_guidance_interval_guides_only_inside_it(ckpt_dir, labels_json, tmp_path, capsys):
    """The whole range is plain guidance; a range no step falls in draws what guidance 1 draws; a bad range is one
    line and writes nothing."""
    def draw(name, *args):
        gen(ckpt_dir, "--json", labels_json, "--out", tmp_path / name, "--steps", 5, *args)
        return pixels(tmp_path / name, 5)
    guided, plain = draw("g3", "--guidance", 3), draw("g1", "--guidance", 1)
    assert np.abs(guided - plain).mean() > 1  # guidance changes the images
    assert np.array_equal(draw("all", "--guidance", 3, "--guidance-interval", 0, 1), guided)
    assert np.array_equal(draw("none", "--guidance", 3, "--guidance-interval", 0, 1e-6), plain)
    middle = draw("mid", "--guidance", 3, "--guidance-interval", 0.2, 0.8)
    assert not np.array_equal(middle, guided) and not np.array_equal(middle, plain)
    manifest = json.loads((tmp_path / "mid" / ".generate.json").read_text())
    assert manifest["guidance_interval"] == [0.2, 0.8], manifest
    with pytest.raises(SystemExit) as e:
        draw("bad", "--guidance-interval", 0.8, 0.2)
    assert e.value.code == 2 and "--guidance-interval" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
