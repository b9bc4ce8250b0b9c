"""model.py's presets: the 32x32 CPU networks see the sizes they were designed for."""
from types import SimpleNamespace

import pytest
import torch

from model import build_model, preset_config


@pytest.mark.parametrize("preset, unet_sees", [("cpu_pixel", (2, 12, 16, 16)), ("cpu_long", (2, 3, 32, 32))])
def test_cpu_presets_patch_and_unpatch_losslessly(preset, unet_sees):
    model = build_model(preset_config(preset)).eval()
    seen = []

    def identity_unet(x, t, **kwargs):
        seen.append(tuple(x.shape))
        return SimpleNamespace(sample=x)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eps = model(x, torch.tensor(7), torch.zeros(2, 24))
        model.unet.forward = identity_unet
        same = model(x, torch.tensor(7), torch.zeros(2, 24))
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert seen == [unet_sees]
    assert torch.equal(same, x)  # pixel_unshuffle and pixel_shuffle undo each other


def test_latent_preset_denoises_8x8_latents_and_keeps_its_codec_frozen():
    model = build_model(preset_config("cpu")).eval()
    assert model.sample_shape == (8, 8, 8)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.codec.parameters())  # the optimizer never sees the codec
    assert any(id(p) in trainable for p in model.unet.parameters())
    with torch.no_grad():
        z = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
        assert z.shape == (2, 8, 8, 8)
        assert model(z, torch.tensor(7), torch.zeros(2, 24)).shape == z.shape
        assert model.decode(z).shape == (2, 3, 32, 32)
