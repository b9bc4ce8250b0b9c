"""The label-conditioned UNet, its schedulers and checkpoints (the presets: presets.py).

    from model import build_model, preset_config, load_checkpoint, model_from_checkpoint
    config = preset_config("cpu")            # a plain dict, stored inside every checkpoint
    model = build_model(config)              # LabelUNet: prediction = model(x_t, t, multi_hot)
    ckpt = load_checkpoint("checkpoints/model_epoch_010.pt")
    model, config = model_from_checkpoint(ckpt)              # EMA weights when the run kept them
    images = sampling.sample(model, config, multi_hot, steps=50, guidance=3.0, seed=0)

Everything is diffusers: `UNet2DConditionModel` for the network, its schedulers for training
noise and sampling. The only hand-written part here is the label encoder (a multi-hot of 24
labels turned into the UNet's conditioning); the classifier-free guidance loop, which diffusers
ships only inside text-to-image pipelines, is sampling.py, and the training losses losses.py.
"""
import inspect
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
)
from torch import nn
from tqdm import tqdm

from autoencoder import LatentCodec
from dataset import to_64, to_model_range  # noqa: F401 -- to_64 is part of this module's API
from presets import ALIASES, PRESETS, SAMPLERS, preset_config, schedule_kind  # noqa: F401 -- this module's API too
from utils import (
    MAX_OBJECTS,
    NUM_LABELS,
    ROOT,
    ICLEVRError,
    load_safetensors,
    load_torch_file,
    repo_path,
    save_safetensors,
    save_torch,
)

CHECKPOINT_RE = re.compile(r"model_epoch_(\d+)\.pt")
SHIPPED_GENERATOR = ROOT / "weights" / "generator.safetensors"  # export.py --generator writes such files
GENERATOR_KIND = "iclevr-generator"  # marks a generation-only file
GENERATOR_TENSORS = ("model", "int8_scales")  # a generator file's tensors; the rest of it is plain data


class LabelUNet(nn.Module):
    """diffusers' UNet2DConditionModel plus a label encoder: prediction = model(x_t, t, multi_hot), the noise
    or the velocity (flow presets) or what the schedule's prediction_type names.

    With label_tokens, each object present becomes one learned token (padding to 3 with a
    learned "none" token) for cross-attention, and the multi-hot itself is the input of the
    UNet's class projection (added to the time embedding). Without it (the report preset) the
    multi-hot is the single cross-attention token, as in the origin report. An all-zero
    multi-hot is the null condition of classifier-free guidance. With scene_token, a fourth learned
    token is always appended: where the ground's pixels attend (grounding.py).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        try:
            self.unet = UNet2DConditionModel(**config["unet"])
        except (ValueError, TypeError) as e:  # e.g. a --set that diffusers cannot build
            raise ICLEVRError(f"the config's unet does not build: {str(e).splitlines()[0]}") from None
        self.patch = config.get("patch_size", 1)  # checkpoints from before patching have none
        unet = self.unet.config
        self.codec = LatentCodec(config["latent"]).requires_grad_(False) if config.get("latent") else None
        if self.codec:  # the UNet works on an autoencoder's latents (frozen; train.py loads it)
            self.sample_shape = self.codec.latent_shape
            channels, size, what = self.sample_shape[0], self.sample_shape[1], f"latents of shape {self.sample_shape}"
        else:
            self.sample_shape = (3, config["image_size"], config["image_size"])
            channels, size = 3 * self.patch ** 2, config["image_size"] // self.patch
            what = f"patch_size {self.patch} of {config['image_size']}x{config['image_size']} images"
        # self-conditioning (Chen et al. 2022, arXiv 2208.04202): the input also holds the model's last clean estimate
        self.self_condition = bool(config.get("self_condition"))
        if schedule_kind(config) != "flow" and self.self_condition:
            raise ICLEVRError("self_condition is built for flow-matching presets (schedule.kind=flow) only")
        inputs = channels * (2 if self.self_condition else 1)
        if not (unet.in_channels == inputs and unet.out_channels == channels) or unet.sample_size != size:
            ins = f"in_channels = {inputs} (with self_condition), " if self.self_condition else "in_channels = "
            raise ICLEVRError(f"{what} needs unet.{ins}out_channels = {channels} and unet.sample_size = {size}")
        self.label_tokens = config["label_tokens"]
        self.scene_token = bool(config.get("scene_token"))  # one more token, always there (grounding.py)
        if self.label_tokens:
            self.tokens = nn.Embedding(NUM_LABELS + 1 + self.scene_token, config["unet"]["cross_attention_dim"])
        elif self.scene_token:
            raise ICLEVRError("scene_token needs label_tokens")

    def condition(self, multi_hot):
        """(encoder_hidden_states, class_labels) for a batch of multi-hots."""
        if not self.label_tokens:
            return multi_hot[:, None, :], None
        ids = torch.arange(NUM_LABELS, device=multi_hot.device).expand_as(multi_hot)
        ids = torch.where(multi_hot > 0, ids, NUM_LABELS).sort(dim=1).values[:, :MAX_OBJECTS]
        if self.scene_token:
            ids = torch.cat([ids, torch.full_like(ids[:, :1], NUM_LABELS + 1)], dim=1)
        return self.tokens(ids), multi_hot

    def encode(self, images):
        """Images in [-1, 1] -> what the UNet denoises (the images themselves, or their latents)."""
        return self.codec.encode(images) if self.codec else images

    @torch.no_grad()
    def encode_images(self, images, device, batch=512, progress=True):
        """uint8 images -> what the UNet denoises, in batches on `device` with a progress bar (a latent
        model's latents: the autoencoder's posterior means, deterministic)."""
        return torch.cat([self.encode(to_model_range(chunk.to(device))) for chunk in
                          tqdm(images.split(batch), desc="encoding latents", disable=not progress, unit="batch")])

    def decode(self, x):
        """The UNet's denoised output -> images in [-1, 1] at the config's image_size."""
        return (self.codec.decode(x) if self.codec else x).clamp(-1, 1)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x, t, multi_hot, estimate=None):
        """estimate: the clean sample the model last predicted (self-conditioning; None: zeros)."""
        states, class_labels = self.condition(multi_hot.to(x.dtype))
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if self.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if estimate is None else estimate.to(x.dtype)], dim=1)
        x = F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x
        out = self.unet(x, t, encoder_hidden_states=states, class_labels=class_labels).sample
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


def build_model(config):
    return LabelUNet(config)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def make_scheduler(config, sampler="ddpm"):
    """The training noise schedule as the named diffusers sampler: ddpm, ddim, dpm (DPM-Solver++)
    or dpm-sde (its stochastic form, SDE-DPM-Solver++). Pixel models clip their x0 estimate to
    [-1, 1]; latent models must not (schedule.clip_sample=false: latents have no such range)."""
    schedule = dict(config["schedule"])
    clip = schedule.pop("clip_sample", True)
    if schedule.pop("kind", "ddpm") == "flow":  # rectified flow (SD3): one sampler, also the training schedule
        if sampler not in ("ddpm", "euler"):
            raise ICLEVRError(f"sampler {sampler!r} does not fit a flow-matching model; use euler")
        known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
        return FlowMatchEulerDiscreteScheduler(**{k: v for k, v in schedule.items() if k in known})
    if sampler == "euler":
        raise ICLEVRError("sampler 'euler' samples flow-matching models only; valid here: ddpm, ddim, dpm, dpm-sde")
    if sampler == "ddpm":
        return DDPMScheduler(**schedule, clip_sample=clip)
    if sampler == "ddim":
        return DDIMScheduler(**schedule, clip_sample=clip, timestep_spacing="trailing")
    if sampler in ("dpm", "dpm-sde"):  # x0 clipped to [-1, 1] (thresholding), as DDPM/DDIM clip_sample
        # "dpm-sde" (SDE-DPM-Solver++) adds fresh noise at every step like DDPM: on an under-trained
        # model it corrects the errors that the deterministic solvers carry to the end
        # (docs/notes/2026-11-27-sampler-study.md).
        algorithm = "sde-dpmsolver++" if sampler == "dpm-sde" else "dpmsolver++"
        return DPMSolverMultistepScheduler(**schedule, algorithm_type=algorithm, solver_order=2,
                                           timestep_spacing="trailing", thresholding=clip, sample_max_value=1.0,
                                           lambda_min_clipped=-5.1)
    raise ICLEVRError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")


def save_checkpoint(path, state):
    """torch.save to a temporary file, fsync, rename: a crash never leaves a truncated checkpoint."""
    save_torch(path, state)


def save_generator(path, gen):
    """A generation-only file (export.py --generator): safetensors when the name ends in .safetensors
    (the tensors under "model/" and "int8_scales/", the rest as JSON metadata), else torch.save's format."""
    if not str(path).endswith(".safetensors"):
        save_torch(path, gen)
        return
    tensors = {f"{part}/{name}": value for part in GENERATOR_TENSORS for name, value in gen[part].items()}
    save_safetensors(path, tensors, {k: v for k, v in gen.items() if k not in GENERATOR_TENSORS})


def read_generator_file(path):
    """The checkpoint dict of a .safetensors generator file, as save_generator got it."""
    tensors, meta = load_safetensors(path, "generator file")
    if meta.get("kind") != GENERATOR_KIND:
        raise ICLEVRError(f"{path}: not a generator file (it holds {meta.get('kind') or 'something else'!r}; "
                          "export.py --generator writes generator files)")
    parts = {part: {} for part in GENERATOR_TENSORS}
    for key, value in tensors.items():
        part, _, name = key.partition("/")
        parts.setdefault(part, {})[name] = value
    return {**meta, **parts}


def load_checkpoint(path, preset=None, expand=True):
    """A train.py checkpoint or a generator file (torch's format read with weights_only=True, or safetensors:
    nothing in the file can run code). One-line refusals. expand=False leaves a generator file's int8
    weights as stored (to rewrite the file in another format)."""
    path = Path(path)
    if not path.is_file():
        raise ICLEVRError(f"{path}: no such checkpoint (train one with: python train.py --epochs 50 --resume)")
    ckpt = read_generator_file(path) if path.suffix == ".safetensors" else load_torch_file(path, "train.py checkpoint")
    if not isinstance(ckpt, dict) or not {"config", "model", "epoch"} <= set(ckpt):
        raise ICLEVRError(f"{path}: not a train.py checkpoint (no config/model/epoch entries)")
    if expand and ckpt.get("int8_scales") is not None:  # a generation-only file (export.py --generator)
        ckpt["model"] = expand_state(ckpt["model"], ckpt["int8_scales"])
    config = ckpt["config"]
    if isinstance(config, dict) and config.get("preset") in ALIASES:  # an old name: the preset as it is called now
        ckpt["config"] = {**config, "preset": ALIASES[config["preset"]]}
    if preset is not None and ckpt["config"].get("preset") != ALIASES.get(preset, preset):
        raise ICLEVRError(f"{path} holds a {ckpt['config'].get('preset')!r} model, not the requested "
                          f"preset {preset!r}: pass --preset {ckpt['config'].get('preset')} or another checkpoint")
    return ckpt


def compact_state(state):
    """Weights for a generation-only file: the UNet's matrices and kernels as int8 with one scale per
    output channel (symmetric), everything else fp16. Returns (state, scales); expand_state undoes it."""
    out, scales = {}, {}
    for name, value in state.items():
        value = value.float()
        if name.startswith("unet.") and value.dim() >= 2 and value.numel() >= 1024:
            scale = value.flatten(1).abs().amax(1).clamp_min(1e-12) / 127
            out[name] = (value / scale.view(-1, *[1] * (value.dim() - 1))).round().to(torch.int8)
            scales[name] = scale.half()
        else:
            out[name] = value.half() if value.is_floating_point() else value
    return out, scales


def expand_state(state, scales):
    """fp32 weights of a compact_state."""
    return {name: value.float() * scales[name].float().view(-1, *[1] * (value.dim() - 1)) if name in scales
            else value.float() if value.is_floating_point() else value for name, value in state.items()}


def ema_state_dict(net, ema):
    """The model's state_dict holding the EMA weights: what generate.py and export load."""
    state = net.state_dict()
    for (name, _), shadow in zip(net.named_parameters(), ema.shadow_params):
        state[name] = shadow.detach().clone()
    return state


def weights_of(ckpt, ema=True):
    """'EMA' or 'raw': the weights model_from_checkpoint(ckpt, ema) loads (a generator file holds one kind)."""
    if ckpt.get("kind") == GENERATOR_KIND:
        return ckpt.get("weights", "EMA")
    return "EMA" if ema and ckpt.get("ema_model") else "raw"


def model_from_checkpoint(ckpt, ema=True):
    """(model, config) rebuilt from a checkpoint alone, with its EMA weights when it has them."""
    config = ckpt["config"]
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["ema_model"] if ema and ckpt.get("ema_model") else ckpt["model"])
    except RuntimeError as e:
        raise ICLEVRError(f"checkpoint weights do not fit its {config.get('preset')!r} config: "
                          f"{str(e).splitlines()[0]}") from None
    return model.eval(), config


def checkpoint_files(folder):
    """model_epoch_NNN.pt files in a folder, oldest epoch first."""
    folder = Path(folder)
    found = [p for p in folder.glob("model_epoch_*.pt") if CHECKPOINT_RE.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.fullmatch(p.name).group(1)))


def newest_checkpoint(folder):
    files = checkpoint_files(folder)
    return files[-1] if files else None


def find_checkpoint(ckpt, folder):
    """--ckpt, or else the newest model_epoch_NNN.pt of `folder`, or else (for the default folder) the
    shipped generator; none at all is a one-line error."""
    if ckpt:
        return Path(ckpt)
    newest = newest_checkpoint(folder)
    if newest is None and Path(folder) == Path("checkpoints") and SHIPPED_GENERATOR.is_file():
        print(f"no checkpoint in {folder}/: using the shipped generator {repo_path(SHIPPED_GENERATOR)}")
        return SHIPPED_GENERATOR
    if newest is None:
        out = "" if Path(folder) == Path("checkpoints") else f" --out {folder}"
        raise ICLEVRError(f"no checkpoint in {folder}/ (train one with: python train.py --epochs 50 --resume{out}, "
                          "or pass --ckpt FILE)")
    return newest
