"""Redrawing finished images (SDEdit): sample(init=, strength=), and a refiner after the first draw (--refiner)."""
import pytest
import torch

import generate
from conftest import one_line_error
from model import build_model, preset_config, save_checkpoint
from sampling import REDRAW_OFFSET, load_sampler, sample
from utils import ICLEVRError
from verifier import CANDIDATE_STRIDE

pytestmark = pytest.mark.usefixtures("one_thread")


def untrained(tmp_path_factory, name, overrides=(), seed=0):
    """An untrained tiny_latent model as a checkpoint: enough to draw, encode and redraw."""
    torch.manual_seed(seed)
    config = preset_config("tiny_latent", list(overrides))
    path = tmp_path_factory.mktemp(name) / "model_epoch_001.pt"
    save_checkpoint(path, {"config": config, "model": build_model(config).state_dict(), "epoch": 1})
    return path


@pytest.fixture(scope="module")
def flow_ckpt(tmp_path_factory):
    """A flow-matching model (the kind of the cpu presets, whose refiner is one)."""
    return untrained(tmp_path_factory, "flow", ["schedule.kind=flow", "sample.sampler=euler"])


@pytest.fixture(scope="module")
def latent_model_ckpt(tmp_path_factory):
    """A noise-prediction model (DDIM) as the first draw."""
    return untrained(tmp_path_factory, "ddim", seed=1)  # another autoencoder than the refiner's


def scenes():
    multi_hot = torch.zeros(3, 24)
    for i, labels in enumerate([[0], [3, 7], [1, 2, 20]]):
        multi_hot[i, labels] = 1
    return multi_hot


def test_a_redraw_starts_from_the_noised_sample_at_its_strength(flow_ckpt):
    drawer = load_sampler(flow_ckpt, device="cpu")
    model, config, multi_hot = drawer.model, drawer.config, scenes()
    init = drawer.draw(multi_hot, seed=1, decode=False)
    steps = drawer.steps
    seen = []
    sample(model, config, multi_hot, steps=steps, seed=2, init=init, strength=0.4,
           callback=lambda i, t, x, clean: seen.append(i), decode=False)
    assert seen[1] == steps - round(0.4 * steps) and len(seen) == 1 + round(0.4 * steps)  # the last 40% of steps
    # strength 1 starts from pure noise: exactly the plain draw of that seed
    assert torch.equal(sample(model, config, multi_hot, seed=2, init=init, strength=1.0, decode=False),
                       sample(model, config, multi_hot, seed=2, decode=False))
    # a weak redraw stays near its start, a strong one does not
    near = sample(model, config, multi_hot, seed=2, init=init, strength=0.1, decode=False)
    far = sample(model, config, multi_hot, seed=2, init=init, strength=0.9, decode=False)
    assert (near - init).abs().mean() < 0.5 * (far - init).abs().mean()


def test_a_refiner_redraws_the_first_draw_with_its_own_noise(flow_ckpt, latent_model_ckpt):
    first = load_sampler(latent_model_ckpt, device="cpu")
    both = load_sampler(latent_model_ckpt, device="cpu", refiner=flow_ckpt, strength=0.5)
    multi_hot = scenes()
    images = both(multi_hot, seed=3)
    refiner = both.refiner
    start = first(multi_hot, seed=3)
    init = refiner.model.encode(start)
    expected = refiner.model.decode(refiner.draw(multi_hot, 3, 64, REDRAW_OFFSET, decode=False, init=init))
    assert torch.allclose(images, expected, atol=1e-5) and images.shape == start.shape[:2] + (16, 16)
    assert torch.equal(images, both(multi_hot, seed=3))  # the same seed, the same images
    assert (images - both(multi_hot, seed=3, batch_size=2)).abs().max() < 1e-4  # any batch size
    assert both.settings()["refiner"]["strength"] == 0.5 and "redrawn from noise level 0.5" in both.describe()
    assert (REDRAW_OFFSET + CANDIDATE_STRIDE * torch.arange(65)).remainder(2 ** 32).unique().numel() == 65


def test_refiner_settings_are_checked_before_anything_is_drawn(flow_ckpt, latent_model_ckpt, tmp_path, capsys):
    for strength in (0, 1.5, float("nan")):
        with pytest.raises(ICLEVRError, match="--refine-strength"):
            load_sampler(latent_model_ckpt, device="cpu", refiner=flow_ckpt, strength=strength)
    with pytest.raises(ICLEVRError, match="needs --refiner"):
        load_sampler(latent_model_ckpt, device="cpu", strength=0.3)
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        generate.main(["--ckpt", str(latent_model_ckpt), "--labels", "red sphere", "--n", "1", "--refiner",
                       str(tmp_path / "none.pt"), "--out", str(out)])
    assert e.value.code == 2 and not out.exists()
    one_line_error(capsys, "none.pt")


def test_best_of_with_a_refiner_ranks_the_redrawn_images_by_the_refiners_verifier(flow_ckpt, latent_model_ckpt,
                                                                                  tiny_iclevr):
    import train_verifier
    from sampling import Cascade
    root, labels = tiny_iclevr
    verifier = flow_ckpt.parent / "verifier.safetensors"
    train_verifier.main(["--ckpt", str(flow_ckpt), "--data-root", str(root), "--json", str(labels), "--epochs", "1",
                         "--batch-size", "4", "--heldout", "0.25", "--num-workers", "1", "--out", str(verifier)])
    with pytest.raises(ICLEVRError, match="another generator's latent space"):  # not the first draw's verifier
        load_sampler(latent_model_ckpt, device="cpu", best_of=2, verifier=verifier)
    both = load_sampler(latent_model_ckpt, device="cpu", refiner=flow_ckpt, best_of=3, verifier=verifier)
    multi_hot = scenes()
    cascade = Cascade(both, both.refiner)
    candidates = [cascade.draw(multi_hot, 5, 64, j * CANDIDATE_STRIDE, decode=False) for j in range(3)]
    pick = torch.stack([both.refiner.verifier.rank_key(z, multi_hot) for z in candidates]).argmax(0)
    chosen = torch.stack([candidates[int(j)][i] for i, j in enumerate(pick)])
    assert torch.equal(both(multi_hot, seed=5), both.refiner.model.decode(chosen))
    assert "best of 3 by the verifier" in both.describe() and both.settings()["refiner"]["best_of"] == 3
