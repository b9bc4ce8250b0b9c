"""export.py's diffusers folder and pipeline.ICLEVRPipeline: generate.py's pixels, the folder's contents, the model
card, one-line refusals; grid.py --annotate."""
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

import numpy as np
import pytest
import torch
from PIL import Image

import export
import generate
import grid
import pipeline
import train
import train_autoencoder
from conftest import ROOT, one_line_error, write_json
from dataset import encode_labels, to_model_range
from evaluator import build_network, evaluation_model, official_hits
from pipeline import ICLEVRPipeline
from utils import ICLEVRError

pytestmark = pytest.mark.usefixtures("one_thread")
OBJECTS = str(ROOT / "objects.json")
LABELS = [["red sphere", "cyan cube"], ["gray cylinder"], ["blue sphere", "green cube", "yellow cylinder"]]
STEPS, GUIDANCE, SEED = 3, 3.0, 5


@pytest.fixture(scope="module")
def latent_ckpt(data_args, tiny_iclevr, tmp_path_factory):
    """A tiny_latent model trained one epoch on a tiny autoencoder (as in test_latent.py)."""
    root, labels = tiny_iclevr
    tmp = tmp_path_factory.mktemp("latent")
    autoencoder = tmp / "autoencoder.pt"
    train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(root), "--json", str(labels),
                            "--objects", OBJECTS, "--epochs", "1", "--batch-size", "4", "--heldout", "4",
                            "--heldout-root", str(tmp / "heldout"), "--out", str(autoencoder)])
    train.main([*data_args, "--preset", "tiny_latent", "--autoencoder", str(autoencoder), "--out", str(tmp / "run"),
                "--epochs", "1", "--batch-size", "4"])
    return tmp / "run" / "model_epoch_001.pt"


@pytest.fixture(scope="module", params=["tiny", "tiny_latent"])
def exported(request, tiny_ckpt, tmp_path_factory):
    """(checkpoint, its export folder) for a pixel and a latent preset."""
    ckpt = tiny_ckpt if request.param == "tiny" else request.getfixturevalue("latent_ckpt")
    out = tmp_path_factory.mktemp("export") / request.param
    export.main(["--ckpt", str(ckpt), "--out", str(out), "--objects", OBJECTS])
    return ckpt, out


def pngs(folder, n):
    return [np.asarray(Image.open(folder / f"{i}.png")) for i in range(n)]


def test_the_pipeline_draws_generate_pys_pixels(exported, tmp_path):
    ckpt, folder = exported
    pipe = ICLEVRPipeline.from_pretrained(folder)
    images = pipe(labels=LABELS, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  generator=torch.Generator().manual_seed(SEED)).images
    generate.main(["--ckpt", str(ckpt), "--json", str(write_json(tmp_path / "l.json", LABELS)), "--objects", OBJECTS,
                   "--out", str(tmp_path / "gen"), "--steps", str(STEPS), "--guidance", str(GUIDANCE),
                   "--seed", str(SEED)])
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in images)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(images, pngs(tmp_path / "gen", 3), strict=True))
    same = pipe(labels=LABELS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED, output_type="pt").images
    assert same.shape == (3, 3, 64, 64) and same.min() >= 0 and same.max() <= 1
    assert np.abs(np.stack(pngs(tmp_path / "gen", 3)) / 255 - same.permute(0, 2, 3, 1).numpy()).max() <= 0.5 / 255
    copies = pipe(labels=LABELS[0], num_images_per_prompt=2, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  seed=SEED, output_type="np").images  # one label list alone is one scene; image i uses (seed, i)
    assert copies.shape == (2, 64, 64, 3) and np.allclose(copies[0], same[0].permute(1, 2, 0).numpy())
    assert not np.allclose(copies[1], copies[0])


def test_the_shipped_generator_round_trips_through_the_pipeline(tmp_path):
    """export.py's default source, the shipped generator: the pipeline draws generate.py's pixels."""
    export.main(["--out", str(tmp_path / "shipped"), "--objects", OBJECTS])
    images = ICLEVRPipeline.from_pretrained(tmp_path / "shipped")(labels=LABELS[:2], num_inference_steps=STEPS,
                                                                   seed=SEED).images
    generate.main(["--ckpt", str(ROOT / "weights" / "generator.safetensors"), "--json",
                   str(write_json(tmp_path / "l.json", LABELS[:2])), "--objects", OBJECTS, "--out",
                   str(tmp_path / "gen"), "--steps", str(STEPS), "--seed", str(SEED)])
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(images, pngs(tmp_path / "gen", 2), strict=True))


def test_the_folder_is_a_diffusers_pipeline_without_pickles(exported):
    _, folder = exported
    latent = folder.name == "tiny_latent"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "ICLEVRPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["label_encoder"] == ["pipeline",
                                                                                                 "LabelEncoder"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler" if latent else "DPMSolverMultistepScheduler"]
    assert index["vae"] == (["diffusers", "AutoencoderKL"] if latent else [None, None])
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(export.ENTRIES) - (set() if latent else {"vae"}))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    assert (folder / "label_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((folder / "label_encoder" / "config.json").read_text())
    assert config["labels"] == sorted(json.loads((ROOT / "objects.json").read_text()), key=json.loads(
        (ROOT / "objects.json").read_text()).get) and config["preset"] == folder.name
    assert config["exported_from"]["epoch"] == 1 and config["exported_from"]["weights"] == "ema"
    assert (config["latent"] is not None) == latent and "sampler" in config["sample"]


def test_the_model_card(exported, tiny_ckpt, tmp_path):
    _, folder = exported
    card = (folder / "README.md").read_text()
    header, body = card.split("---\n")[1:3]
    assert "library_name: diffusers" in header and "license: other" in header
    assert "pipeline_tag: text-to-image" in header
    assert f"`{folder.name}` preset, epoch 1" in body and "Not measured" in body and "yellow cylinder" in body
    assert "render_iclevr.py" in body and "ICLEVRPipeline.from_pretrained" in body
    model, config = export.load_exported(folder)
    log = [{"epoch": 1, "loss": "0.5"}, {"epoch": 3, "test_acc": "0.8125", "new_test_acc": "0.7500"}]
    scored = export.model_card(model, config, export.label_names(), {"epoch": 3, "weights": "raw"}, log)
    assert "| 3 | 0.8125 | 0.7500 |" in scored and "seed-0 samples of the EMA weights" in scored
    assert "this export holds the raw weights" in scored and "Not measured" not in scored
    assert "this log does not name the file" in scored  # a log from before the judge column
    log[1]["judge"] = "weights/judge.pth (sha256 f9af741a7d50)"
    named = export.model_card(model, config, export.label_names(), {"epoch": 3, "weights": "ema"}, log)
    assert "by `weights/judge.pth (sha256 f9af741a7d50)`" in named and "does not name" not in named


def test_bad_labels_and_seeds_are_one_line_errors(exported):
    pipe = ICLEVRPipeline.from_pretrained(exported[1])
    with pytest.raises(ICLEVRError) as e:
        pipe(labels=[["red sphere"], ["pink sphere"]], num_inference_steps=1)
    assert "\n" not in str(e.value) and '"pink sphere"' in str(e.value) and "valid: gray cube, red cube" in str(e.value)
    for bad, words in [({"labels": [["red sphere", "red sphere"]]}, "twice"),
                       ({"labels": [[]]}, "empty label list"),
                       ({"labels": [["red sphere"]], "seed": 1, "generator": torch.Generator().manual_seed(2)},
                        "pass one of them"),
                       ({"labels": [["red sphere"]], "output_type": "latent"}, "output_type")]:
        with pytest.raises(ICLEVRError, match=words):
            pipe(num_inference_steps=1, **bad)
    first = pipe(labels=[["red sphere"]], num_inference_steps=1, output_type="np").images
    assert np.array_equal(first, pipe(labels=[["red sphere"]], num_inference_steps=1, seed=0, output_type="np").images)


def test_truncated_or_foreign_folders_are_refused_in_one_line(tiny_ckpt, tmp_path, capsys):
    good = tmp_path / "good"
    export.main(["--ckpt", str(tiny_ckpt), "--out", str(good), "--objects", OBJECTS])
    pipeline.main([str(good), "--labels", "red sphere", "cyan cube", "--n", "2", "--steps", "1",
                   "--out", str(tmp_path / "scene.png")])
    assert Image.open(tmp_path / "scene.png").height > 64
    cases = {}
    cases["truncated"] = shutil.copytree(good, tmp_path / "truncated")
    weights = cases["truncated"] / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    cases["no_encoder"] = shutil.copytree(good, tmp_path / "no_encoder")
    shutil.rmtree(cases["no_encoder"] / "label_encoder")
    cases["foreign"] = shutil.copytree(good, tmp_path / "foreign")
    write_json(cases["foreign"] / "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    cases["old_format"] = tmp_path / "old_format"  # what export.py wrote before: no model_index.json
    shutil.copytree(good / "unet", cases["old_format"] / "unet")
    cases["other_weights"] = shutil.copytree(good, tmp_path / "other_weights")
    encoder = cases["other_weights"] / "label_encoder" / "diffusion_pytorch_model.safetensors"
    shutil.copy(good / "unet" / "diffusion_pytorch_model.safetensors", encoder)
    words = {"truncated": "not a whole safetensors file", "no_encoder": "label_encoder: missing",
             "foreign": "StableDiffusionPipeline pipeline, not an ICLEVRPipeline", "old_format": "no model_index.json",
             "other_weights": "do not fit its config.json"}
    for name, folder in cases.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            pipeline.main([str(folder), "--labels", "red sphere", "--out", str(tmp_path / f"{name}.png")])
        assert e.value.code == 2
        one_line_error(capsys, str(folder), words[name])
        with pytest.raises(ICLEVRError, match=words[name]):
            export.load_exported(folder)
        assert not (tmp_path / f"{name}.png").exists()


def test_diffusers_loads_it_with_the_custom_pipeline_file(exported, tmp_path, monkeypatch):
    """DiffusionPipeline.from_pretrained(custom_pipeline=pipeline.py, trust_remote_code=True), offline: the same
    pixels. diffusers copies the file into HF_MODULES_CACHE: a temporary one here, and sys.path restored."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(exported[1]), custom_pipeline=str(ROOT / "pipeline.py"),
                                                 trust_remote_code=True)
        assert type(pipe).__name__ == "ICLEVRPipeline"
        a = pipe(labels=LABELS, num_inference_steps=STEPS, seed=SEED, output_type="np").images
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("diffusers_modules"):
                del sys.modules[name]
    b = ICLEVRPipeline.from_pretrained(exported[1])(labels=LABELS, num_inference_steps=STEPS, seed=SEED,
                                                      output_type="np").images
    assert np.array_equal(a, b)


# grid.py --annotate
def tiles(n, size=16):
    return torch.full((n, 3, size, size), 0.2)


def reddish(image, top):
    """How many pixels below `top` (the label text) are drawn in grid.MISS_COLOR's hue."""
    a = np.asarray(image)[top:].astype(int)
    return int(((a[..., 0] > 120) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())


def test_annotated_grid_writes_labels_and_marks_misses():
    plain = grid.grid_image(tiles(3))
    hits = [[True, False], [True], [True, True, True]]
    marked = grid.annotated_grid(tiles(3), LABELS, hits)
    assert marked.height > plain.height and marked.width >= plain.width
    top = grid.PADDING + 64
    assert reddish(marked, top) > 0
    assert reddish(grid.annotated_grid(tiles(3), LABELS, [[True] * len(x) for x in LABELS]), top) == 0
    assert reddish(grid.annotated_grid(tiles(3), LABELS), top) == 0  # no judge: labels only
    with pytest.raises(ICLEVRError, match="3 images but 2 label lists"):
        grid.annotated_grid(tiles(3), LABELS[:2])


def test_label_hits_follow_the_official_rule(label2idx):
    scores = torch.rand(3, 24, generator=torch.Generator().manual_seed(0))
    multi_hot = torch.stack([encode_labels(x, label2idx) for x in LABELS])
    scores[0, label2idx["red sphere"]] = 2.0  # found; cyan cube only when it ranks second
    hits = grid.label_hits(scores, LABELS, label2idx)
    assert hits[0][0] and sum(map(sum, hits)) == official_hits(scores, multi_hot)[0]


def test_grid_cli_annotates_with_a_judge(tmp_path, label2idx, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, color in enumerate([(200, 40, 40), (40, 200, 200), (90, 90, 220)]):
        Image.new("RGB", (64, 64), color).save(folder / f"{i}.png")
    labels = write_json(tmp_path / "labels.json", LABELS)
    net = build_network()
    with torch.no_grad():  # a judge that sees only its bias: red sphere > gray cylinder > blue sphere > the rest
        net.fc[0].weight.zero_()
        net.fc[0].bias.fill_(-5)
        for score, label in enumerate(["blue sphere", "gray cylinder", "red sphere"], 3):
            net.fc[0].bias[label2idx[label]] = score
    judge = tmp_path / "judge.pth"
    torch.save({"model": net.state_dict()}, judge)
    with pytest.raises(SystemExit):
        grid.main(["--images", str(folder), "--annotate"])
    one_line_error(capsys, "--annotate needs --json")
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    grid.main(["--images", str(folder), "--out", str(plain)])
    grid.main(["--images", str(folder), "--json", str(labels), "--objects", OBJECTS, "--annotate", "--judge",
               str(judge), "--out", str(marked)])
    images = to_model_range(torch.stack([torch.tensor(a).permute(2, 0, 1) for a in pngs(folder, 3)]))
    found = sum(map(sum, grid.label_hits(evaluation_model(judge, device="cpu").predict(images), LABELS, label2idx)))
    assert found == 2  # red sphere in image 0 (top 2), blue sphere in image 2 (top 3)
    assert f"found {found} of 6 labels" in capsys.readouterr().out
    with Image.open(plain) as a, Image.open(marked) as b:
        assert b.height > a.height
        assert reddish(b, grid.PADDING + 64) > 0
