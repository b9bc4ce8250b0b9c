"""Best-of-K sampling: train_verifier.py, the verifier file and its checks, and the pick itself."""
import pytest
import torch

import generate
import train_verifier
from conftest import ROOT, one_line_error
from dataset import ICLEVRDataset
from model import build_model, preset_config, save_checkpoint
from sampling import load_sampler
from utils import ICLEVRError
from verifier import CANDIDATE_STRIDE, best_of, load_verifier

pytestmark = pytest.mark.usefixtures("one_thread")
OBJECTS = str(ROOT / "objects.json")


@pytest.fixture(scope="module")
def latent_ckpt(tmp_path_factory):
    """An untrained tiny_latent model as a checkpoint: enough to draw, encode and verify."""
    torch.manual_seed(0)
    config = preset_config("tiny_latent")
    path = tmp_path_factory.mktemp("latent") / "model_epoch_001.pt"
    save_checkpoint(path, {"config": config, "model": build_model(config).state_dict(), "epoch": 1})
    return path


@pytest.fixture(scope="module")
def verifier_file(latent_ckpt, tiny_iclevr):
    root, labels = tiny_iclevr
    out = latent_ckpt.parent / "verifier.safetensors"
    train_verifier.main(["--ckpt", str(latent_ckpt), "--data-root", str(root), "--json", str(labels), "--objects",
                         OBJECTS, "--epochs", "2", "--batch-size", "4", "--heldout", "0.25", "--num-workers", "1",
                         "--out", str(out)])
    return out


def test_the_verifier_file_records_its_training_and_is_safetensors(verifier_file, latent_ckpt, tiny_iclevr):
    assert verifier_file.read_bytes()[8:9] == b"{"
    drawer = load_sampler(latent_ckpt, device="cpu", best_of=2, verifier=verifier_file)
    meta = drawer.verifier.meta
    n = len(ICLEVRDataset(*tiny_iclevr, OBJECTS).multi_hot)
    assert meta["train_images"] + meta["heldout_images"] == n and 0 <= meta["heldout_accuracy"] <= 1
    assert drawer.settings()["best_of"] == 2 and "best of 2 by the verifier" in drawer.describe()


def test_best_of_keeps_for_each_image_the_candidate_the_verifier_ranks_first(verifier_file, latent_ckpt):
    drawer = load_sampler(latent_ckpt, device="cpu", best_of=3, verifier=verifier_file)
    multi_hot = torch.zeros(5, 24)
    for i, labels in enumerate([[0], [3, 7], [1, 2, 20], [5], [9, 10]]):
        multi_hot[i, labels] = 1
    plain = load_sampler(latent_ckpt, device="cpu")
    latents = [plain(multi_hot, seed=4, first_index=j * CANDIDATE_STRIDE, decode=False) for j in range(3)]
    assert not torch.equal(latents[0], latents[1])  # candidates differ
    pick = torch.stack([drawer.verifier.rank_key(z, multi_hot) for z in latents]).argmax(0)  # first of equal keys
    chosen = torch.stack([latents[int(j)][i] for i, j in enumerate(pick)])
    images = drawer(multi_hot, seed=4)
    assert torch.equal(images, plain.model.decode(chosen))
    assert (images - drawer(multi_hot, seed=4, batch_size=2)).abs().max() < 1e-4  # any batch: up to rounding
    assert torch.equal(best_of(drawer, drawer.verifier, multi_hot, 1, seed=4), plain(multi_hot, seed=4))  # K=1: plain


def test_a_verifier_for_another_generator_and_bad_counts_are_refused(verifier_file, tiny_ckpt, latent_ckpt):
    with pytest.raises(ICLEVRError, match="another generator's latent space"):
        load_sampler(tiny_ckpt, device="cpu", best_of=2, verifier=verifier_file)  # a pixel model
    from model import load_checkpoint, model_from_checkpoint
    model, _ = model_from_checkpoint(load_checkpoint(latent_ckpt))
    with torch.no_grad():
        model.codec.std.mul_(2)  # the same network, another latent scaling: another space
    with pytest.raises(ICLEVRError, match="another generator's latent space"):
        load_verifier(verifier_file, model)
    for k in (0, 65):
        with pytest.raises(ICLEVRError, match="--best-of"):
            load_sampler(latent_ckpt, device="cpu", best_of=k, verifier=verifier_file)


def test_the_same_autoencoder_kept_at_fp16_or_scaled_by_another_run_is_accepted(verifier_file, latent_ckpt):
    from model import load_checkpoint, model_from_checkpoint
    model, _ = model_from_checkpoint(load_checkpoint(latent_ckpt))
    with torch.no_grad():
        for p in model.codec.vae.parameters():
            p.copy_(p.half().float())  # what a generator file (export.py) keeps of the autoencoder
        model.codec.mean.add_(0.004 * model.codec.std)  # statistics measured by another training run
        model.codec.std.mul_(1.004)
    assert load_verifier(verifier_file, model).meta["latent_stats"]
    with torch.no_grad():
        model.codec.vae.encoder.conv_in.weight.add_(0.01)  # another autoencoder
    with pytest.raises(ICLEVRError, match="another generator's latent space"):
        load_verifier(verifier_file, model)


def test_generate_best_of_without_a_verifier_is_one_line_and_writes_nothing(latent_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        generate.main(["--ckpt", str(latent_ckpt), "--labels", "red sphere", "--n", "1", "--best-of", "2",
                       "--verifier", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o"),
                       "--objects", OBJECTS])
    assert e.value.code == 2
    one_line_error(capsys, "none.safetensors: no verifier file", "train_verifier.py")
    assert not (tmp_path / "o").exists()


def test_fp16_stores_the_same_training_rounded_and_scores_the_rounded_weights(verifier_file, latent_ckpt,
                                                                               tiny_iclevr, capsys):
    from model import load_checkpoint, model_from_checkpoint
    from verifier import round_to_fp16
    root, labels = tiny_iclevr
    out = verifier_file.parent / "verifier_fp16.safetensors"
    train_verifier.main(["--ckpt", str(latent_ckpt), "--data-root", str(root), "--json", str(labels), "--objects",
                         OBJECTS, "--epochs", "2", "--batch-size", "4", "--heldout", "0.25", "--num-workers", "1",
                         "--fp16", "--out", str(out)])
    assert "rounded to fp16: held-out official accuracy" in capsys.readouterr().out
    from safetensors import safe_open
    with safe_open(str(out), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    assert out.stat().st_size < 0.6 * verifier_file.stat().st_size
    model, _ = model_from_checkpoint(load_checkpoint(latent_ckpt))
    full, half = load_verifier(verifier_file, model), load_verifier(out, model)
    rounded = round_to_fp16(full).state_dict()
    assert all(torch.equal(v, rounded[k]) and v.dtype == torch.float32 for k, v in half.state_dict().items())
