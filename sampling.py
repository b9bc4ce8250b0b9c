"""Sampling: the guided denoising loop, and a checkpoint turned into a ready sampler.

    from sampling import load_sampler
    drawer = load_sampler(checkpoints_dir="checkpoints")   # the newest checkpoint, else the shipped generator
    print(drawer.describe())                                # which file, epoch, weights, device and settings
    images = drawer(multi_hot, seed=0)                      # (n, 3, H, W) in [-1, 1] at the model's size

`load_sampler` is the one way scripts (generate, denoise, app, bench) get a model to draw with:
it finds and loads the checkpoint, picks the EMA weights and the device, and resolves the sampler,
steps and guidance from the flags and the preset's defaults once (`resolve_settings`).
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dataset import resized
from model import find_checkpoint, load_checkpoint, make_scheduler, model_from_checkpoint, schedule_kind, weights_of
from utils import ICLEVRError, pick_device, seed_for, sha256_of

# A redraw's noise for image i comes from index i + REDRAW_OFFSET: over 25 million indices away, modulo the 2^32
# the CPU generator keeps, from every best-of candidate (verifier.CANDIDATE_STRIDE) of the first draw.
REDRAW_OFFSET = 500_000_003
REFINE_STRENGTH = 0.3  # the noise level a refiner redraws from: detail its own, layout and objects the first draw's


@dataclass
class Sampler:
    """A model ready to draw, with its sampler settings; call it on a (n, 24) multi-hot."""
    model: torch.nn.Module
    config: dict
    path: Path
    epoch: int
    weights: str  # "EMA" or "raw"
    device: torch.device
    sampler: str
    steps: int
    guidance: float
    interval: tuple = None  # noise levels (lo, hi) where guidance applies; None: every step
    best_of: int = 1  # > 1: draw that many candidates per image and keep the verifier's pick (verifier.py)
    verifier: torch.nn.Module = None
    verifier_path: Path = None
    refiner: "Sampler" = None  # a model that redraws the finished images from noise level refiner.strength
    strength: float = 1.0  # as a refiner: the noise level (0 clean - 1 pure noise) its redraws start from

    def __call__(self, multi_hot, seed=0, batch_size=64, first_index=0, callback=None, decode=True):
        """Images in [-1, 1] (decode=False: what the model denoises) for a (n, 24) multi-hot. With a refiner, each
        candidate is this model's draw redrawn by the refiner, and best of K ranks the redrawn ones."""
        drawer = self if self.refiner is None else Cascade(self, self.refiner)
        if self.best_of > 1 and decode:
            if callback:
                raise ICLEVRError("--best-of draws several candidates per image: it has no single denoising path "
                                  "to show")
            from verifier import best_of
            return best_of(drawer, drawer.verifier, multi_hot, self.best_of, seed, batch_size, first_index)
        return drawer.draw(multi_hot, seed, batch_size, first_index, callback, decode)

    def draw(self, multi_hot, seed=0, batch_size=64, first_index=0, callback=None, decode=True, init=None):
        """One draw per image (from `init`, latents to redraw, when given): sample() with this sampler's settings."""
        return sample(self.model, self.config, multi_hot, self.sampler, self.steps, self.guidance, seed, batch_size,
                      first_index, callback, self.interval, decode, init, self.strength)

    def settings(self):
        """What the images depend on (generate.py's manifest), but the seed."""
        settings = {"checkpoint": str(self.path.resolve()), "epoch": self.epoch, "ema": self.weights == "EMA",
                    "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance}
        if self.interval:
            settings["guidance_interval"] = list(self.interval)
        if self.verifier is not None:
            settings.update(best_of=self.best_of, verifier=str(Path(self.verifier_path).resolve()),
                            verifier_sha256=sha256_of(self.verifier_path))
        if self.refiner is not None:
            settings["refiner"] = {**self.refiner.settings(), "strength": self.refiner.strength}
        return settings

    def describe(self):
        where = f" at noise levels {self.interval[0]:g}-{self.interval[1]:g}" if self.interval else ""
        where += f", best of {self.best_of} by the verifier {self.verifier_path}" if self.verifier is not None else ""
        if self.refiner is not None:
            where += f"; then redrawn from noise level {self.refiner.strength:g} by {self.refiner.describe()}"
        return (f"{self.path} (epoch {self.epoch}, preset {self.config.get('preset')}, {self.weights} weights) on "
                f"{self.device}: {self.sampler}, {self.steps} steps, guidance {self.guidance:g}{where}")


@dataclass
class Cascade:
    """A first draw redrawn by a refiner (SDEdit): its objects and layout kept, the refiner's detail. Drawn as
    one sampler, so that best of K ranks the finished images with the refiner's verifier."""
    first: Sampler
    refiner: Sampler

    def __getattr__(self, name):  # model, device, verifier: the refiner's, whose samples come out
        return getattr(self.refiner, name)

    def draw(self, multi_hot, seed=0, batch_size=64, first_index=0, callback=None, decode=True):
        if callback:
            raise ICLEVRError("--refiner draws twice: there is no single denoising path to show")
        images = self.first.draw(multi_hot, seed, batch_size, first_index)
        size, device = self.refiner.config["image_size"], self.refiner.device
        init = torch.cat([self.refiner.model.encode(resized(chunk, size).to(device)).cpu()
                          for chunk in images.split(batch_size)])
        return self.refiner.draw(multi_hot, seed, batch_size, first_index + REDRAW_OFFSET, None, decode, init)


def add_checkpoint_args(parser):
    """--ckpt and --checkpoints-dir, the flags every drawing script passes to load_sampler."""
    parser.add_argument("--ckpt", help="train.py checkpoint or generator file (default: the newest in "
                        "--checkpoints-dir, else the shipped weights/generator.safetensors).")
    parser.add_argument("--checkpoints-dir", default="checkpoints", help="Where to look for the newest checkpoint.")


def load_sampler(ckpt=None, checkpoints_dir="checkpoints", ema=True, device="auto", sampler=None, steps=None,
                 guidance=None, interval=None, best_of=1, verifier=None, refiner=None, strength=None):
    """--ckpt, else the newest checkpoint of checkpoints_dir, else the shipped generator, as a Sampler.
    best_of > 1 loads `verifier` (default: the preset's weights/verifier_PRESET.safetensors). refiner: a model
    file that redraws each drawn image from noise level `strength` (default REFINE_STRENGTH) with its preset's
    sampler, steps and guidance; best of K then ranks the redrawn images with the refiner's verifier."""
    path = find_checkpoint(ckpt, checkpoints_dir)
    state = load_checkpoint(path)
    model, config = model_from_checkpoint(state, ema=ema)
    sampler, steps, guidance = resolve_settings(config, sampler, steps, guidance)
    interval = check_interval(interval or config["sample"].get("guidance_interval"))
    device = pick_device(device)
    if not 1 <= best_of <= 64:
        raise ICLEVRError(f"--best-of {best_of}: give a number of candidates from 1 (a plain draw) to 64")
    checker = None
    if best_of > 1 and refiner is None:  # with a refiner, its verifier ranks the finished images
        from verifier import default_file, load_verifier
        verifier = Path(verifier) if verifier else default_file(config.get("preset"))
        checker = load_verifier(verifier, model)
    if strength is not None and refiner is None:
        raise ICLEVRError("--refine-strength needs --refiner FILE, the model that redraws the images")
    if refiner is not None:
        strength = REFINE_STRENGTH if strength is None else strength
        if not 0 < strength <= 1:
            raise ICLEVRError(f"--refine-strength {strength:g}: give a noise level above 0 (no change) up to 1 "
                              "(a new draw)")
        refiner = load_sampler(refiner, ema=ema, device=device, best_of=best_of, verifier=verifier)
        refiner.strength = strength
    return Sampler(model.to(device), config, Path(path), state["epoch"], weights_of(state, ema), device, sampler,
                   steps, guidance, interval, best_of, checker, verifier if checker else None, refiner)


def resolve_settings(config, sampler=None, steps=None, guidance=None):
    """(sampler, steps, guidance): the given ones, else the preset's defaults; checked."""
    defaults = config["sample"]
    sampler = sampler or defaults["sampler"]
    if schedule_kind(config) == "flow" and sampler != "euler":  # make_scheduler's ddpm is the training one
        raise ICLEVRError(f"sampler {sampler!r} does not fit a flow-matching model; use euler")
    steps = defaults["steps"] if steps is None else steps
    guidance = defaults["guidance"] if guidance is None else guidance
    check_steps(config, steps)
    check_guidance(guidance)
    return sampler, steps, guidance


def image_generator(seed, index):
    """The CPU generator of image `index`: its noise does not depend on the batch it is drawn in."""
    return torch.Generator().manual_seed(seed_for(seed, index))


def check_guidance(guidance):
    """The guidance scale W users may pass: a number from 0 to 100 (1 = none); None means the preset's."""
    if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= 100):
        raise ICLEVRError(f"--guidance must be a number from 0 to 100 (1 = no guidance), got {guidance}")


def check_interval(interval):
    """--guidance-interval LO HI: noise levels from 0 (clean) to 1 (pure noise), LO < HI; None: guide every step."""
    if interval is None:
        return None
    lo, hi = interval
    if not (0 <= lo < hi <= 1):
        raise ICLEVRError(f"--guidance-interval {lo:g} {hi:g}: give two noise levels 0 <= LO < HI <= 1")
    return (float(lo), float(hi))


def noise_level(scheduler, config, i, t):
    """How noisy the sample is at step i, from 0 (clean) to 1 (pure noise): a flow model's sigma, else t / T."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return float(scheduler.sigmas[i])
    return float(t) / config["schedule"]["num_train_timesteps"]


def check_steps(config, steps):
    """Sampling steps must lie between 1 and the timesteps the model was trained with."""
    train_steps = config["schedule"]["num_train_timesteps"]
    if not 1 <= steps <= train_steps:
        raise ICLEVRError(f"--steps {steps}: the model was trained with {train_steps} timesteps, use 1 to that")


@torch.no_grad()
def sample(model, config, multi_hot, sampler=None, steps=None, guidance=None, seed=0, batch_size=64,
           first_index=0, callback=None, interval=None, decode=True, init=None, strength=1.0):
    """Images in [-1, 1] at the model's resolution for a (n, 24) multi-hot.

    Classifier-free guidance: out = out_null + guidance * (out_cond - out_null) on the model's outputs
    (the noise, or a flow model's velocity), both halves in one batched forward pass (guidance 1 is
    the plain conditional model, one pass). Image i uses image_generator(seed, first_index + i) for
    all its noise, so it is the same whatever the batch size. callback(step_index, timestep, x, clean)
    sees the starting noise (step -1, timestep None, clean None), then every intermediate batch and
    the model's estimate of the finished images at that step, as images (a latent model's latents
    decoded).
    interval (lo, hi): guide only at noise levels in [lo, hi] (Kynkaanniemi et al. 2024, arXiv 2404.07724),
    one conditional pass elsewhere; None guides every step. decode=False returns what the model denoises
    (a latent model's latents) instead of images.
    init: samples (as the model denoises them) to redraw (SDEdit, arXiv 2108.01073): each is noised to the level
    of the first of the last `strength` x steps steps and denoised from there, keeping its layout; None draws
    from pure noise.
    """
    sampler, steps, guidance = resolve_settings(config, sampler, steps, guidance)
    device = next(model.parameters()).device
    images = []
    for start in range(0, len(multi_hot), batch_size):
        cond = multi_hot[start:start + batch_size].to(device)
        gens = [image_generator(seed, first_index + start + i) for i in range(len(cond))]
        x = torch.stack([torch.randn(*model.sample_shape, generator=g) for g in gens]).to(device)
        scheduler = make_scheduler(config, sampler)
        scheduler.set_timesteps(steps)
        first = 0 if init is None else steps - max(1, round(strength * steps))
        if init is None:
            x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        else:
            x = noised(scheduler, init[start:start + batch_size].to(device), x, first)
        if callback:
            callback(-1, None, model.decode(x), None)
        self_condition, estimate = getattr(model, "self_condition", False), []  # estimate: [] or [clean sample]
        for i, t in enumerate(scheduler.timesteps[first:], start=first):
            inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            guided = guidance != 1 and (interval is None
                                        or interval[0] <= noise_level(scheduler, config, i, t) <= interval[1])
            if not guided:
                out = model(inp, t.to(device), cond, *estimate)
            else:
                both = [torch.cat(estimate * 2)] if estimate else []  # the same estimate for both halves
                out_null, out_cond = model(torch.cat([inp, inp]), t.to(device),
                                           torch.cat([torch.zeros_like(cond), cond]), *both).float().chunk(2)
                out = out_null + guidance * (out_cond - out_null)
            if self_condition or callback:  # the clean sample this step predicts (guided): fed back in, or shown
                clean = predicted_clean(scheduler, config, x, t, i, out.float())
                estimate = [clean] if self_condition else []
                clean = model.decode(clean) if callback else None
            x = scheduler.step(out.float(), t, x, generator=gens).prev_sample
            if callback:
                callback(i, t, model.decode(x), clean)
        images.append(model.decode(x).cpu() if decode else x.cpu())
    return torch.cat(images)


def noised(scheduler, clean, noise, i):
    """`clean` samples noised to the level the scheduler expects before step i (where a redraw starts)."""
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(i)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigma = scheduler.sigmas[i]
        return (1 - sigma) * clean + sigma * noise
    return scheduler.add_noise(clean, noise, scheduler.timesteps[i:i + 1].repeat(len(clean)))


def predicted_clean(scheduler, config, x, t, i, out):
    """The model's estimate of the finished sample at step i, from its output `out` at x (for figures)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return x - scheduler.sigmas[i] * out  # x_s = (1 - s) x0 + s noise and out = noise - x0
    a = scheduler.alphas_cumprod[int(t)].to(x.device)
    kind = config["schedule"].get("prediction_type", "epsilon")
    if kind == "sample":
        return out
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    return (x - (1 - a).sqrt() * out) / a.sqrt()
