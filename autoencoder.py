"""The small autoencoder of the latent presets: 32x32 images <-> 8x8 latents, and its file.

    from autoencoder import LatentCodec, load_autoencoder
    codec = load_autoencoder("weights/autoencoder.safetensors", config["latent"])   # checked, frozen
    z = codec.encode(images)        # (n, 3, 32, 32) in [-1, 1] -> (n, 8, 8, 8), about unit variance
    x = codec.decode(z)             # back to images in [-1, 1]

The network is diffusers' AutoencoderKL on 2x2 patches (pixel_unshuffle: a 16x16 grid of 12
channels, one more down-sampling to 8x8), trained by train_autoencoder.py on the training renders.
Latents are the posterior means, shifted and scaled per channel to zero mean and unit variance
(as Stable Diffusion scales its latents), so the diffusion schedule sees the spread it expects.
The diffusion model copies the codec's weights into every checkpoint, so a checkpoint still
rebuilds alone; the file is read only when a latent run starts (docs/latent.md).
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from utils import ICLEVRError, load_safetensors, load_torch_file, save_safetensors, save_torch

KIND = "iclevr-autoencoder"  # marks the files train_autoencoder.py writes
# A LatentCodec's decoder side (state_dict prefixes); the rest (encoder, quant_conv, mean, std) is its latent space.
DECODER_PARTS = ("vae.decoder.", "vae.post_quant_conv.")
WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_FILE = WEIGHTS / "autoencoder.safetensors"  # the cpu preset's; make autoencoder writes it


def default_file(preset):
    """The shipped autoencoder of a latent preset: weights/autoencoder.safetensors (cpu, the first one), else
    weights/autoencoder_NAME.safetensors."""
    return DEFAULT_FILE if preset == "cpu" else WEIGHTS / f"autoencoder_{preset}.safetensors"


def save_autoencoder(path, config, state, meta):
    """An autoencoder file, atomically: safetensors (its kind, config and meta as JSON metadata) when the name
    ends in .safetensors, else torch.save's format (read with weights_only=True)."""
    if str(path).endswith(".safetensors"):
        save_safetensors(path, state, {"kind": KIND, "config": config, "meta": meta})
    else:
        save_torch(path, {"kind": KIND, "config": config, "model": state, "meta": meta})


def read_autoencoder_file(path):
    """{"kind", "config", "model", "meta"} of a .safetensors or torch autoencoder file; a truncated or foreign
    one is refused in one line."""
    if not str(path).endswith(".safetensors"):
        return load_torch_file(path, "autoencoder file")
    model, text = load_safetensors(path, "autoencoder file")
    if "config" not in text:
        raise ICLEVRError(f"{path}: not an autoencoder file written by train_autoencoder.py (no config)")
    return {"kind": text.get("kind"), "config": text["config"], "model": model, "meta": text.get("meta", {})}


class LatentCodec(nn.Module):
    """AutoencoderKL on patches plus the per-channel latent normalisation (buffers, so they are saved)."""

    def __init__(self, config):
        super().__init__()
        self.patch = config["patch_size"]
        self.image_size = config["image_size"]
        try:
            self.vae = AutoencoderKL(**config["vae"])
        except (ValueError, TypeError) as e:
            raise ICLEVRError(f"the config's autoencoder does not build: {str(e).splitlines()[0]}") from None
        channels = config["vae"]["latent_channels"]
        self.register_buffer("mean", torch.zeros(channels, 1, 1))
        self.register_buffer("std", torch.ones(channels, 1, 1))
        down = 2 ** (len(config["vae"]["block_out_channels"]) - 1)
        self.latent_shape = (channels, self.image_size // self.patch // down, self.image_size // self.patch // down)

    def posterior(self, x):
        """The autoencoder's latent distribution of images in [-1, 1] (unnormalised)."""
        return self.vae.encode(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x).latent_dist

    def decode_raw(self, z):
        """Unnormalised latents -> images (not clamped)."""
        x = self.vae.decode(z).sample
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x

    def encode_raw(self, x):
        """Posterior mean of the autoencoder, unnormalised (what the statistics are taken of)."""
        return self.posterior(x).mode()

    def encode(self, x):
        return (self.encode_raw(x) - self.mean) / self.std

    def decode(self, z):
        return self.decode_raw(z * self.std + self.mean)


def load_autoencoder(path, config):
    """The codec of an autoencoder file, refusing a missing, truncated, foreign or mismatched one in one line.

    config: the preset's "latent" entry; the file must have been trained for exactly that network.
    """
    path = Path(path)
    if not path.is_file():
        raise ICLEVRError(f"{path}: no autoencoder file (the latent presets need one: train it with "
                          "make autoencoder, i.e. python train_autoencoder.py)")
    ckpt = read_autoencoder_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND or not {"config", "model"} <= set(ckpt):
        raise ICLEVRError(f"{path}: not an autoencoder file written by train_autoencoder.py")
    if json.loads(json.dumps(ckpt["config"])) != json.loads(json.dumps(config)):  # tuples and lists alike
        raise ICLEVRError(f"{path} was trained for another autoencoder config than this preset's "
                          f"({describe(ckpt['config'])} vs {describe(config)}): train one with "
                          "python train_autoencoder.py --preset NAME --out FILE")
    codec = LatentCodec(config)
    try:
        codec.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    except RuntimeError as e:
        raise ICLEVRError(f"{path}: its weights do not fit its config ({str(e).splitlines()[0][:120]})") from None
    return codec.eval().requires_grad_(False)


def describe(config):
    vae = config.get("vae", {}) if isinstance(config, dict) else {}
    return (f"{config.get('image_size')}px, patch {config.get('patch_size')}, channels "
            f"{tuple(vae.get('block_out_channels', ()))}, {vae.get('latent_channels')} latent channels")
