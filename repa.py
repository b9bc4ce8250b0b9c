"""Representation alignment (REPA, Yu et al. 2024, arXiv 2410.06940) for the label UNet.

    align = Alignment(net.unet, encoder_channels(encoder))   # a projector + a hook on the UNet's middle block
    targets = encoder_features(encoder, images_uint8, align.size)   # once per run, like the latents
    loss = loss_fn(model, x0, cond, gen) + weight * align(targets[idx])   # after the model's forward pass

A frozen image encoder's features of the clean training image teach the UNet's middle block,
through a small projector, to carry what the encoder sees even in a noisy input; the paper
reports diffusion transformers reaching the same FID 17.5x sooner. Here the encoder is a
course-format ResNet18 cut after layer3 (4x4x256 features of a 64x64 image, average-pooled to
the middle block's grid); it must never be the judge that scores (that would leak the metric),
so train.py refuses the judge's own file. Hand-written because no library ships REPA for
diffusers' UNet; the projector is the paper's MLP (1x1 convolutions here, one per grid cell).
Only training uses any of this: the generator's weights and sampling are unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dataset import to_64, to_model_range
from evaluator import load_network
from utils import ICLEVRError

LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")  # the ResNet18 up to layer3


def load_encoder(path, flag="--repa-encoder"):
    """The frozen feature encoder: a course-format ResNet18 file (a judge written by train_evaluator.py)
    cut after layer3. A missing, truncated or foreign file is one line naming the flag (evaluator.load_network)."""
    try:
        net, _ = load_network(path)
    except ICLEVRError as e:
        raise ICLEVRError(f"{flag}: {e}") from None
    return nn.Sequential(*[getattr(net, name) for name in LAYERS]).eval().requires_grad_(False)


def encoder_channels(encoder):
    return encoder[-1][-1].conv2.out_channels  # layer3's last block


@torch.no_grad()
def encoder_features(encoder, images, size, batch=256, show=True):
    """uint8 images (N, 3, H, W) -> the encoder's features of each (upsampled to 64x64, as the judge sees
    them), average-pooled to a size x size grid: (N, C, size, size), the alignment targets of a run."""
    return torch.cat([F.adaptive_avg_pool2d(encoder(to_64(to_model_range(chunk))), size)
                      for chunk in tqdm(images.split(batch), desc="encoder features", disable=not show,
                                        unit="batch")])


class Alignment(nn.Module):
    """The projector from the UNet's middle block to the encoder's features, and the hook that keeps the
    middle block's output of the latest forward pass for the loss (forward)."""

    def __init__(self, unet, target_channels, hidden=512):
        super().__init__()
        channels = unet.config.block_out_channels[-1]
        self.size = unet.config.sample_size // 2 ** (len(unet.config.block_out_channels) - 1)
        self.projector = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1),
                                       nn.SiLU(), nn.Conv2d(hidden, target_channels, 1))
        self.hidden = None
        unet.mid_block.register_forward_hook(self.keep)

    def keep(self, module, inputs, output):
        self.hidden = output if module.training else None  # sampling (net.eval()) keeps nothing

    def forward(self, targets):
        """The alignment loss of the latest training forward pass of the UNet: the mean negative cosine
        similarity between the projected middle block and the targets, per grid cell. (A forward, not a
        method, so that a DistributedDataParallel wrapper sees the call and syncs the projector.)"""
        if self.hidden is None:
            raise RuntimeError("Alignment needs a training forward pass of the UNet first")
        projected, self.hidden = self.projector(self.hidden.float()), None
        return -F.cosine_similarity(projected, targets.to(projected.device, projected.dtype), dim=1).mean()
