"""The verifier: a small classifier of what a generator denoises (its latents), for best-of-K sampling.

    from verifier import load_verifier, best_of
    verifier = load_verifier("weights/verifier_cpu.safetensors", model)   # refused if made for another codec
    images = best_of(drawer, verifier, multi_hot, k=4, seed=0)            # (n, 3, H, W), one of k draws each

Best-of-K draws K candidates per label set (candidate 0 is exactly the image a plain draw gives) and
keeps the one the verifier reads best: first the most asked labels among its top-k classes (the official
rule, k = the labels asked), then the highest log-likelihood of exactly the asked set. The verifier is
trained by train_verifier.py on the generator's own latents of the training renders; it is never the
judge that scores (a separate network, on latents, not images), so a gain it brings is confirmed by the
judges. Hand-written: no library ships a latent multi-label classifier for reranking.
"""
import hashlib
from pathlib import Path

import torch
from torch import nn

from evaluator import label_hits
from utils import NUM_LABELS, ROOT, ICLEVRError, load_safetensors, save_safetensors

KIND = "iclevr-verifier"
# Candidate j of image i draws the noise of index i + j * stride (j = 0: the plain draw). The CPU generator keeps
# only a seed's low 32 bits, and for j <= 64 this stride stays over 50 million away from them modulo 2^32.
CANDIDATE_STRIDE = 1_000_000_007


def default_file(preset):
    return ROOT / "weights" / f"verifier_{preset}.safetensors"


def codec_fingerprint(model):
    """sha256 of the network that maps images to the generator's latents, its weights rounded to fp16 (the
    precision generator files keep, so a model trained here and a generator file on the same autoencoder
    agree), or "pixels" for a pixel model."""
    if not model.codec:
        return "pixels"
    digest = hashlib.sha256()
    for name, value in sorted(model.codec.vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().half().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def latent_stats(model):
    """The per-channel mean and std that scale the codec's latents (measured on the training images)."""
    return {"mean": model.codec.mean.flatten().tolist(), "std": model.codec.std.flatten().tolist()} \
        if model.codec else {}


def same_scaling(stats, model, tolerance=0.01):
    """True when `model` scales its latents as `stats` do, within 1% of a channel's std: the statistics are
    measured by each training run, so two runs on the same renders differ in their last digits."""
    if not model.codec:
        return stats == {}
    if not stats:
        return False
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    own_mean, own_std = model.codec.mean.flatten().float().cpu(), model.codec.std.flatten().float().cpu()
    return (mean.shape == own_mean.shape and bool(((mean - own_mean).abs() <= tolerance * own_std).all())
            and bool(((std / own_std - 1).abs() <= tolerance).all()))


class LatentVerifier(nn.Module):
    """Convolutions on a (C, S, S) sample, halving the grid down to 4x4, then 24 logits."""

    def __init__(self, shape, width=64):
        super().__init__()
        self.shape, self.width = tuple(shape), width
        channels, size = self.shape[0], self.shape[1]
        layers, c = [], channels
        while True:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            c = width
            if size <= 4:
                break
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)]
            c, width, size = 2 * width, 2 * width, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, NUM_LABELS)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    @torch.no_grad()
    def rank_key(self, x, multi_hot):
        """One score per sample, higher is better: the asked labels among its top-k logits (the official rule)
        first, then the log-likelihood of exactly the asked set (clamped, so it never outweighs one label)."""
        logits = self(x).float().cpu()
        multi_hot = multi_hot.float().cpu()
        hits = label_hits(logits, multi_hot).sum(1).float()
        loglik = (nn.functional.logsigmoid(logits) * multi_hot + nn.functional.logsigmoid(-logits) * (1 - multi_hot))
        return hits * 1e4 + loglik.sum(1).clamp(-1e3, 0)


def round_to_fp16(verifier):
    """Round the weights to fp16 in place (they stay fp32 tensors): what a file saved with fp16=True holds."""
    with torch.no_grad():
        for value in verifier.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half())
    return verifier


def save_verifier(path, verifier, meta, fp16=False):
    """fp16=True stores the weights at half precision (half the bytes; loaded back into fp32)."""
    state = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in verifier.state_dict().items()}
    save_safetensors(path, state, {"kind": KIND, "shape": list(verifier.shape), "width": verifier.width,
                                   "meta": meta})


def load_verifier(path, model):
    """The verifier file for `model` (a LabelUNet); a missing, foreign or other-codec file is one line."""
    path = Path(path)
    if not path.is_file():
        raise ICLEVRError(f"{path}: no verifier file (train one for this generator with: python train_verifier.py "
                          "--ckpt FILE --out FILE)")
    state, text = load_safetensors(path, "verifier file")
    if text.get("kind") != KIND:
        raise ICLEVRError(f"{path}: not a verifier file written by train_verifier.py")
    meta = text["meta"]
    if (meta.get("codec") != codec_fingerprint(model) or not same_scaling(meta.get("latent_stats"), model)
            or tuple(text["shape"]) != tuple(model.sample_shape)):
        raise ICLEVRError(f"{path} was trained on another generator's latent space (its autoencoder differs): train "
                          "one for this generator with python train_verifier.py --ckpt FILE")
    verifier = LatentVerifier(text["shape"], text["width"])
    try:
        verifier.load_state_dict(state)
    except RuntimeError as e:
        raise ICLEVRError(f"{path}: its weights do not fit its config ({str(e).splitlines()[0][:120]})") from None
    verifier.meta = meta
    return verifier.eval().requires_grad_(False)


@torch.no_grad()
def best_of(drawer, verifier, multi_hot, k, seed=0, batch_size=64, first_index=0):
    """Images in [-1, 1]: for each label set the best of k candidates by the verifier (ties: the first);
    drawer.draw draws the candidates (a sampling.Sampler or Cascade)."""
    best = key = None
    for j in range(k):  # the samples come back on the CPU, where the verifier lives
        x = drawer.draw(multi_hot, seed, batch_size, first_index + j * CANDIDATE_STRIDE, decode=False)
        score = verifier.rank_key(x, multi_hot)
        if best is None:
            best, key = x, score
        else:  # strictly better only: ties keep the earlier candidate
            better = score > key
            best, key = torch.where(better.view(-1, 1, 1, 1), x, best), torch.maximum(score, key)
    # decoded in sample()'s batches, so that k = 1 gives a plain draw's bytes
    return torch.cat([drawer.model.decode(chunk.to(drawer.device)).cpu() for chunk in best.split(batch_size)])
