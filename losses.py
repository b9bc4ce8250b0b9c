"""The training losses, built once from a model config and called per batch: loss = loss_fn(model, x0, cond, gen).

    loss_fn = build_loss(config, cond_dropout=0.1, autocast=accelerator.autocast)   # FlowLoss or NoiseLoss
    loss = loss_fn(model, x0, multi_hot, gen)     # every random draw of the batch comes from gen
    loss_fn.describe                              # "flow matching: MSE on the velocity", for logs and plots

The config's schedule chooses the class (schedule.kind flow: FlowLoss, else NoiseLoss); what a
run changes (label dropout, autocast, channels_last, Min-SNR, self-conditioning) is set at
construction. Both replace a fraction cond_dropout of the label sets by the null condition (all
zeros), which teaches the model the unconditional prediction that classifier-free guidance
needs. Auxiliary losses (REPA, grounding) are added by trainer.Run after the call.
"""
import contextlib

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_snr

from model import make_scheduler, schedule_kind
from utils import ICLEVRError

TARGETS = {"epsilon": "the noise", "v_prediction": "the v-prediction velocity", "sample": "the clean image"}


class NoiseLoss:
    """The DDPM loss: x_t = add_noise(x0, noise, t) with t uniform, MSE against the target the schedule's
    prediction_type names: the noise ("epsilon", the default), the velocity ("v_prediction") or the clean image
    ("sample"). snr_gamma > 0 weights each image's MSE by min(SNR, gamma) / SNR (Min-SNR, Hang et al. 2023),
    the same way diffusers' training examples do."""

    def __init__(self, config, cond_dropout=0.0, autocast=None, channels_last=False, snr_gamma=0.0):
        self.scheduler = make_scheduler(config, "ddpm")  # the training noise schedule
        self.kind = self.scheduler.config.prediction_type
        if self.kind not in TARGETS:
            raise ICLEVRError(f"prediction_type {self.kind!r} is not trained here; valid: {', '.join(TARGETS)}")
        self.cond_dropout, self.channels_last, self.snr_gamma = cond_dropout, channels_last, snr_gamma
        self.autocast = autocast or contextlib.nullcontext  # a factory: accelerate's autocast() enters only once
        self.describe = describe_loss(config, snr_gamma)

    def __call__(self, model, x0, cond, gen):
        n, device, sched = len(x0), x0.device, self.scheduler
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen, device=device)
        keep = torch.rand(n, generator=gen, device=device) >= self.cond_dropout
        xt = sched.add_noise(x0, noise, t)
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            pred = model(xt, t, cond * keep[:, None])
        target = {"epsilon": noise, "sample": x0}.get(self.kind)
        if self.kind == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        if not self.snr_gamma:
            return F.mse_loss(pred.float(), target)
        snr = compute_snr(sched, t)
        weight = snr.clamp(max=self.snr_gamma) / {"epsilon": snr, "v_prediction": snr + 1, "sample": 1}[self.kind]
        return (F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()


class FlowLoss:
    """Rectified flow (SD3, arXiv 2403.03206): x_t = (1 - s) x0 + s noise with s drawn logit-normal, MSE of the
    model's output against the velocity noise - x0; the timestep the model sees is s * num_train_timesteps.
    With self_condition, half the batches first predict without an estimate and then learn with that
    prediction's clean sample as the estimate (no gradient through the first pass)."""

    describe = "flow matching: MSE on the velocity"

    def __init__(self, config, cond_dropout=0.0, autocast=None, channels_last=False, self_condition=False):
        self.timesteps = config["schedule"]["num_train_timesteps"]
        self.cond_dropout, self.channels_last, self.self_condition = cond_dropout, channels_last, self_condition
        self.autocast = autocast or contextlib.nullcontext

    def __call__(self, model, x0, cond, gen):
        n, device = len(x0), x0.device
        noise = torch.randn(x0.shape, generator=gen, device=device)
        s = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=0.0, logit_std=1.0, device=device,
                                                  generator=gen)
        keep = torch.rand(n, generator=gen, device=device) >= self.cond_dropout
        s4 = s[:, None, None, None]
        xt = (1 - s4) * x0 + s4 * noise
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        t, cond = s * self.timesteps, cond * keep[:, None]
        estimate = None
        with self.autocast():  # one context: accelerate's autocast() can be entered only once
            if self.self_condition and torch.rand((), generator=gen, device=device) < 0.5:
                with torch.no_grad():  # half the steps: a first guess without gradient becomes the estimate
                    estimate = xt - s4 * model(xt, t, cond).float()
            pred = model(xt, t, cond, *([] if estimate is None else [estimate]))
        return F.mse_loss(pred.float(), noise - x0)


def build_loss(config, cond_dropout=0.0, autocast=None, channels_last=False, snr_gamma=0.0):
    """The loss of a model config: FlowLoss for schedule.kind flow, else NoiseLoss. Self-conditioning follows
    the config (self_condition); snr_gamma weights noise-prediction losses only."""
    if schedule_kind(config) == "flow":
        if snr_gamma:
            raise ICLEVRError(f"--snr-gamma {snr_gamma:g} weights noise-prediction losses; the flow-matching preset "
                              f"{config.get('preset')!r} has none: pass --snr-gamma 0")
        return FlowLoss(config, cond_dropout, autocast, channels_last, bool(config.get("self_condition")))
    return NoiseLoss(config, cond_dropout, autocast, channels_last, snr_gamma)


def describe_loss(config, snr_gamma=0.0):
    """What a config's training loss is, e.g. "flow matching: MSE on the velocity" or "MSE on the noise"."""
    if schedule_kind(config) == "flow":
        return FlowLoss.describe
    kind = config["schedule"].get("prediction_type", "epsilon")
    return f"{f'Min-SNR-{snr_gamma:g} weighted ' if snr_gamma else ''}MSE on {TARGETS.get(kind, kind)}"
