"""The shipped weights are pinned: a changed or re-trained file must come with a new sha256 here.

weights/judge.pth is reproduced by `make judge` (the default recipe of train_evaluator.py, then one pass
fine-tuned on standard and randomized renders: docs/evaluator.md, "The shipped judge");
weights/autoencoder.safetensors, the cpu preset's autoencoder, by `make autoencoder` (its recipe: docs/latent.md);
weights/autoencoder_cpu64.safetensors, the cpu64 preset's, by `make autoencoder-cpu64` (bf16 on an AMX CPU: the
bytes repeat only there; docs/latent.md);
weights/generator.safetensors, the shipped generator: the cpu64 preset trained 50 epochs, by `make generator`
(its decoder that of the cpu64 autoencoder, put in by export.py --decoder), and its verifier
weights/verifier_cpu64.safetensors (generate.py --best-of K), by `make verifier`;
weights/generator_cpu.safetensors, the 32x32 cpu preset trained 50 epochs, by the commands in docs/latent.md ("The
32x32 generator"), and its verifier weights/verifier_cpu.safetensors, by `make verifier` (floating-point sums
differ by CPU: a retrained file repeats the bytes only on the machine kind that made it). After retraining one, put the
new file's sha256 (`sha256sum weights/...`) below. These are the only tests that read the real weights.
"""
import hashlib

import torch

from autoencoder import DEFAULT_FILE as SHIPPED_AUTOENCODER
from autoencoder import default_file, load_autoencoder
from conftest import ROOT
from dataset import ICLEVRDataset, to_model_range
from evaluator import SHIPPED_JUDGE, load_judge_checkpoint
from model import GENERATOR_KIND, SHIPPED_GENERATOR, load_checkpoint, preset_config

AUTOENCODER_CPU64_SHA256 = "40283602f42ad697eddcfeea7e1bacc8a78352979f0d9d1b78cd717454150274"
AUTOENCODER_SHA256 = "9b24c4bd475011bf5fa2eaf36e90dea3ac09d52f949bd812ce2cc40ce326a647"
GENERATOR_SHA256 = "698607669130e0720757e92a0a3ae84c068c3645990f89c0c3d7b3ed042cfd3a"
VERIFIER_SHA256 = "2c41f7a625a19436681f26d6b136b78570fd255fa196baa533969bef9039cc83"
GENERATOR_CPU_SHA256 = "2e49d66980be56dbf0a53f463cb557e3f5cc3b0f2e0bc5811f8a3aa37343818b"
VERIFIER_CPU_SHA256 = "a1741c22cdea9a33cd8fe6d2894d0b565f239feca27aa8ddea2de36df115938a"
JUDGE_SHA256 = "f9af741a7d502f3911f02e3678fafab972b1463670635a378dc25ba370f88b0e"


def test_shipped_judge_is_pinned():
    assert SHIPPED_JUDGE == ROOT / "weights" / "judge.pth"
    assert SHIPPED_JUDGE.is_file(), "weights/judge.pth is missing: make judge retrains it"
    assert hashlib.sha256(SHIPPED_JUDGE.read_bytes()).hexdigest() == JUDGE_SHA256
    ckpt = torch.load(SHIPPED_JUDGE, map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"model", "meta"} and "fc.0.weight" in ckpt["model"], "not a course-format checkpoint"
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats), "the shipped judge is stored in fp16"
    assert ckpt["meta"]["dtype"] == "float16"
    assert load_judge_checkpoint(SHIPPED_JUDGE)["model"]["fc.0.weight"].dtype == torch.float32  # scored in fp32


def test_shipped_autoencoder_is_pinned_and_fits_the_cpu_preset(tiny_iclevr):
    assert SHIPPED_AUTOENCODER == ROOT / "weights" / "autoencoder.safetensors"
    assert SHIPPED_AUTOENCODER.is_file(), "weights/autoencoder.safetensors is missing: make autoencoder retrains it"
    assert hashlib.sha256(SHIPPED_AUTOENCODER.read_bytes()).hexdigest() == AUTOENCODER_SHA256
    codec = load_autoencoder(SHIPPED_AUTOENCODER, preset_config("cpu")["latent"])  # the preset make demo trains
    assert codec.std.min() > 0 and not torch.equal(codec.std, torch.ones_like(codec.std))  # statistics were taken
    root, labels = tiny_iclevr  # renders it never saw come back close (held-out MSE: docs/latent.md)
    x = to_model_range(ICLEVRDataset(root, labels, ROOT / "objects.json", image_size=32, preload=True).images)
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(codec.decode(codec.encode(x)), x) < 1e-3


def test_shipped_cpu64_autoencoder_is_pinned_and_reconstructs_64x64(tiny_iclevr):
    path = default_file("cpu64")
    assert path == ROOT / "weights" / "autoencoder_cpu64.safetensors"
    assert path.is_file(), "weights/autoencoder_cpu64.safetensors is missing: make autoencoder-cpu64 retrains it"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == AUTOENCODER_CPU64_SHA256
    codec = load_autoencoder(path, preset_config("cpu64")["latent"])
    assert codec.latent_shape == (8, 16, 16) and codec.std.min() > 0
    root, labels = tiny_iclevr  # renders it never saw come back close, at their own 64x64
    x = to_model_range(ICLEVRDataset(root, labels, ROOT / "objects.json", image_size=64, preload=True).images)
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(codec.decode(codec.encode(x)), x) < 5e-4


def test_shipped_generator_is_pinned_small_native_64x64_and_the_fallback(tmp_path, monkeypatch, capsys):
    import generate
    assert SHIPPED_GENERATOR == ROOT / "weights" / "generator.safetensors"
    assert SHIPPED_GENERATOR.is_file(), "weights/generator.safetensors is missing: make generator retrains it"
    assert SHIPPED_GENERATOR.stat().st_size <= 10_000_000  # issue 21: at most 10 MB
    assert hashlib.sha256(SHIPPED_GENERATOR.read_bytes()).hexdigest() == GENERATOR_SHA256
    ckpt = load_checkpoint(SHIPPED_GENERATOR)
    assert ckpt["kind"] == GENERATOR_KIND and ckpt["config"]["preset"] == "cpu64" and "optimizer" not in ckpt
    assert ckpt["epoch"] == 50 and ckpt["config"]["image_size"] == 64  # native 64x64
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: generate.py falls back to the shipped generator, and says so
    generate.main(["--labels", "red sphere", "cyan cube", "--n", "2", "--steps", "4", "--out", "mine",
                   "--objects", str(ROOT / "objects.json")])
    assert "using the shipped generator weights/generator.safetensors" in capsys.readouterr().out
    assert (tmp_path / "mine" / "1.png").is_file() and (tmp_path / "mine" / "grid.png").is_file()


def test_shipped_generator_decodes_with_the_shipped_cpu64_autoencoder():
    """Its codec is weights/autoencoder_cpu64.safetensors to fp16, the decoder tuned after it was trained included
    (export.py --decoder): a retrained autoencoder must reach the generator file too."""
    gen = load_checkpoint(SHIPPED_GENERATOR, expand=False)["model"]
    codec = load_autoencoder(default_file("cpu64"), preset_config("cpu64")["latent"]).state_dict()
    assert any(k.startswith("vae.decoder.") for k in codec)
    for name, value in codec.items():
        assert torch.equal(gen[f"codec.{name}"], value.half()), name


def test_shipped_verifier_is_pinned_made_for_the_shipped_generator_and_both_are_small():
    from verifier import default_file
    path = default_file("cpu64")
    assert path == ROOT / "weights" / "verifier_cpu64.safetensors"
    assert path.is_file(), "weights/verifier_cpu64.safetensors is missing: make verifier retrains it"
    # issue 35: the generator and the verifier its best-of-K needs, at most 15 MB together
    assert SHIPPED_GENERATOR.stat().st_size + path.stat().st_size <= 15_000_000
    assert_verifier_pinned_for(path, VERIFIER_SHA256, load_checkpoint(SHIPPED_GENERATOR), GENERATOR_SHA256)


def assert_verifier_pinned_for(path, sha, generator_ckpt, generator_sha):
    """The verifier file is the pinned one and loads for the generator it was made from."""
    from model import model_from_checkpoint
    from verifier import load_verifier
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    model, _ = model_from_checkpoint(generator_ckpt)
    verifier = load_verifier(path, model)  # refused were it made for another autoencoder
    assert verifier.meta["generator_sha256"] == generator_sha and verifier.meta["heldout_accuracy"] > 0.9


def test_the_32x32_generator_and_its_verifier_are_pinned_and_draw_best_of_k(tmp_path):
    from PIL import Image

    import generate
    from verifier import default_file
    generator, verifier_file = ROOT / "weights" / "generator_cpu.safetensors", default_file("cpu")
    assert verifier_file == ROOT / "weights" / "verifier_cpu.safetensors"
    for path in (generator, verifier_file):
        assert path.is_file(), f"{path.name} is missing: docs/latent.md and make verifier say how it was made"
    assert hashlib.sha256(generator.read_bytes()).hexdigest() == GENERATOR_CPU_SHA256
    ckpt = load_checkpoint(generator)
    assert ckpt["kind"] == GENERATOR_KIND and ckpt["config"]["preset"] == "cpu" and "optimizer" not in ckpt
    assert ckpt["epoch"] == 50 and ckpt["config"]["image_size"] == 32
    assert_verifier_pinned_for(verifier_file, VERIFIER_CPU_SHA256, ckpt, GENERATOR_CPU_SHA256)
    generate.main(["--ckpt", str(generator), "--labels", "red sphere", "--n", "2", "--steps", "2", "--best-of", "2",
                   "--out", str(tmp_path / "mine"), "--objects", str(ROOT / "objects.json")])
    assert Image.open(tmp_path / "mine" / "1.png").size == (64, 64)  # 32x32 drawn, written at the course's 64x64
