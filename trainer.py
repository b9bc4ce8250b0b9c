"""One training process of train.py: the model, optimizer, LR schedule, EMA, data and the training step.

    run = Run(config, ckpt)                                # train_config.resolve's TrainConfig, the resumed file
    loss, align_loss, seconds = run.train_epoch(epoch)     # one pass over the epoch's order
    save_checkpoint(path, run.state(epoch))                # everything needed to continue exactly

train.py owns the command line, the run folder and the epoch loop; this module owns what one
step does: the loss (losses.py: rectified flow or noise prediction, built once from the config)
plus the auxiliary losses (REPA, grounding). All training randomness is drawn from generators
seeded by (seed, epoch or step, process), which is what makes a resumed run bit for bit an
uninterrupted one on CPU. Run reads its TrainConfig and the checkpoint, nothing else.
"""
import contextlib
import importlib.util
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from autoencoder import load_autoencoder
from dataset import ICLEVRDataset, load_masks, to_model_range
from evaluator import refuse_judge
from grounding import Grounding
from losses import build_loss
from model import build_model, ema_state_dict, newest_checkpoint, to_64
from repa import Alignment, encoder_channels, encoder_features, load_encoder
from sampling import sample
from utils import MAX_OBJECTS, ICLEVRError, rng_states, seed_for, set_rng_states, sha256_of


def epoch_order(multi_hot, weights, seed):
    """The order of one epoch's images: a permutation, or with --object-weights as many draws (with
    replacement) of images in proportion to the weight of their object count."""
    gen = torch.Generator().manual_seed(seed)
    if not weights:
        return torch.randperm(len(multi_hot), generator=gen)
    per_image = torch.tensor(weights, dtype=torch.float)[multi_hot.sum(1).long().clamp(1, MAX_OBJECTS) - 1]
    return torch.multinomial(per_image, len(multi_hot), replacement=True, generator=gen)


def step_generator(seed, step, rank, device):
    """Noise, timesteps and label dropout of one step of one process depend on nothing else."""
    return torch.Generator(device).manual_seed(seed_for(seed, step) * 64 + rank)


@torch.no_grad()
def evaluate(net, ema, config, judge, splits, device):
    """Official accuracy of EMA samples of each split (the config's sampler; seed 0), and the samples."""
    if ema:
        ema.store(net.parameters())
        ema.copy_to(net.parameters())
    net.eval()
    scores, samples = {}, {}
    for name, multi_hot in splits.items():
        samples[name] = to_64(sample(net, config, multi_hot.to(device), seed=0)).cpu()
        scores[name] = judge.eval(samples[name], multi_hot)
    net.train()
    if ema:
        ema.restore(net.parameters())
    return scores, samples


class Run:
    """Everything one training process holds: the model, its optimizer, schedules, EMA and data."""

    def __init__(self, run_config, ckpt):
        self.cfg, self.config, self.settings = run_config, run_config.model, run_config.settings
        self.epoch, self.step = (ckpt["epoch"], ckpt["step"]) if ckpt else (0, 0)
        self.log = list(ckpt.get("log") or []) if ckpt else []  # train_log.csv rows up to this epoch
        self.start_accelerator()
        data = self.load_data()
        self.build_model(ckpt)
        self.inputs = self.encode(self.net, data.images)  # what the UNet denoises: images, or their latents
        self.build_alignment(ckpt, data.images)
        self.build_grounding(ckpt, data)
        if self.device.type == "cuda":  # the whole training set lives on the GPU
            self.inputs, self.multi_hot = self.inputs.to(self.device), self.multi_hot.to(self.device)
            self.targets = self.targets.to(self.device) if self.align else None
        self.build_optimizer(ckpt)
        prepared = self.accelerator.prepare(self.net, self.optimizer, *([self.align] if self.align else []))
        self.model, self.optimizer, self.align_model = (*prepared, None)[:3]
        if ckpt and ckpt.get("scaler") and self.accelerator.scaler:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.loss_fn = build_loss(self.config, cond_dropout=self.settings["cond_dropout"],  # losses.py, built once
                                  autocast=self.accelerator.autocast, channels_last=self.channels_last,
                                  snr_gamma=self.settings["snr_gamma"])

    def start_accelerator(self):
        cfg = self.cfg
        tracker = None if cfg.report_to == "none" else cfg.report_to
        if tracker and importlib.util.find_spec(tracker) is None:
            raise ICLEVRError(f"--report-to {tracker} needs the {tracker} package: pip install {tracker}")
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # --device cuda:N (one process): accelerate then uses that GPU
        logs = ProjectConfiguration(cfg.out, Path(cfg.out) / "logs")  # where --report-to writes
        self.accelerator = acc = Accelerator(mixed_precision=cfg.mixed_precision, log_with=tracker,
                                             project_config=logs, cpu=device.type == "cpu")
        self.device, self.world, self.rank = acc.device, acc.num_processes, acc.process_index
        self.is_main = acc.is_main_process
        self.batch = self.settings["batch_size"]
        if self.batch % self.world:
            raise ICLEVRError(f"--batch-size {self.batch} does not split over {self.world} processes")

    def load_data(self):
        cfg = self.cfg
        data = ICLEVRDataset(cfg.data_root, cfg.json, cfg.objects, image_size=self.config["image_size"],
                             preload=True, limit=self.settings["limit"], workers=cfg.num_workers)
        if data.names is None:
            raise ICLEVRError(f"{cfg.json} is a test.json-style list without file names: training needs a "
                              "train.json-style dict of file name -> labels")
        if self.batch > len(data):
            raise ICLEVRError(f"--batch-size {self.batch} is larger than the {len(data)} training images")
        self.multi_hot = data.multi_hot
        self.steps_per_epoch = len(data) // self.batch
        return data

    def build_model(self, ckpt):
        """The network: seeded fresh weights (a latent run copies in the autoencoder), or the run's own."""
        torch.manual_seed(self.settings["seed"])
        self.net = net = build_model(self.config)
        self.autoencoder = ckpt.get("autoencoder") if ckpt else None
        if ckpt:
            net.load_state_dict(ckpt["model"])
            set_rng_states(ckpt["rng"])
        elif net.codec:  # copied into the model, and so into every checkpoint
            path = Path(self.cfg.autoencoder)
            net.codec.load_state_dict(load_autoencoder(path, self.config["latent"]).state_dict())
            self.autoencoder = {"path": str(path), "sha256": sha256_of(path)}
        self.channels_last = self.cfg.channels_last
        net.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def build_alignment(self, ckpt, images):
        """REPA (repa.py) when the run has an encoder: the projector, and the encoder's features of every
        training image, computed once. On --resume the encoder is the run's own, checked by its sha256."""
        kept = ckpt.get("repa") if ckpt else None
        path = self.cfg.repa_encoder  # the flag, else the run's own (train_config.resolve)
        self.align = self.repa = None
        if not path:
            return
        encoder = load_encoder(path)  # a missing, truncated or foreign file: one line
        sha = sha256_of(path)
        if kept and sha != kept["sha256"]:
            raise ICLEVRError(f"--repa-encoder {path} is not the encoder this run was trained with "
                              f"({kept['encoder']}, sha256 {kept['sha256'][:12]})")
        refuse_judge(path, "--repa-encoder", self.cfg.judge, sha)
        torch.manual_seed(seed_for(self.settings["seed"], -1))
        self.align = Alignment(self.net.unet, encoder_channels(encoder)).to(self.device)
        if kept:
            self.align.load_state_dict(kept["projector"])
        self.targets = encoder_features(encoder, images, self.align.size, show=self.is_main)
        self.repa = {"encoder": str(path), "sha256": sha}

    def build_grounding(self, ckpt, data):
        """The grounding loss (grounding.py) when the run has masks; a resumed run keeps its own folder."""
        folder = self.cfg.masks  # the flag, else the run's own (train_config.resolve)
        self.grounding = None
        if not folder:
            return
        masks = load_masks(folder, data.names, self.cfg.json, size=self.config["image_size"])
        self.grounding = Grounding(self.net, masks, data.labels, data.label2idx)
        self.masks = str(folder)

    def build_optimizer(self, ckpt):
        """AdamW, the LR schedule and the EMA, continued from the checkpoint with this run's settings: a --lr,
        --warmup-steps or --ema-decay given on --resume applies from the next step on."""
        s = self.settings
        self.params = self.net.trainable_parameters() + (list(self.align.parameters()) if self.align else [])
        self.optimizer = optimizer = torch.optim.AdamW(self.params, lr=s["lr"], weight_decay=0.0)
        if ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            for group in optimizer.param_groups:
                group["initial_lr"] = s["lr"]  # the peak the schedule scales (torch's name for it)
        # With cosine or linear decay the schedule spans --epochs: raising it on --resume stretches the rest
        # (refused where that would raise the rate at once: train_config.check_schedule).
        self.lr_scheduler = get_scheduler(s["lr_scheduler"], optimizer, num_warmup_steps=s["warmup_steps"],
                                          num_training_steps=self.cfg.epochs * self.steps_per_epoch,
                                          last_epoch=self.step - 1)
        self.ema = None
        if s["ema_decay"] > 0:
            self.ema = EMAModel(self.net.parameters(), decay=s["ema_decay"], use_ema_warmup=True, power=3 / 4)
            if ckpt and ckpt.get("ema_model"):
                shadow = [ckpt["ema_model"][name] for name, _ in self.net.named_parameters()]
                self.ema.load_state_dict({**ckpt["ema"], "shadow_params": shadow, "decay": s["ema_decay"]})
            self.ema.to(self.device)

    @torch.no_grad()
    def encode(self, net, images, batch=512):
        """uint8 images -> the float tensor training draws from: the images in [-1, 1], or the latents
        of a latent model, encoded once here (deterministic: the autoencoder's posterior means)."""
        if not net.codec:
            return images  # kept as uint8 (4x less memory); converted per batch
        return net.encode_images(images, self.device, batch, progress=self.is_main)

    def train_epoch(self, epoch):
        """One pass over a fresh shuffle; returns (mean loss over all processes, seconds)."""
        acc, batch = self.accelerator, self.batch
        local = batch // self.world
        seed = self.settings["seed"]
        perm = epoch_order(self.multi_hot, self.settings["object_weights"], seed_for(seed, epoch))
        loss_sum, align_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        started = time.perf_counter()
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch}/{self.cfg.epochs}", disable=not self.is_main,
                   unit="step")
        for i in bar:
            start = i * batch + self.rank * local  # this process's share of the global batch
            idx = perm[start:start + local].to(self.inputs.device)
            x0 = self.inputs[idx]
            x0 = (to_model_range(x0) if x0.dtype == torch.uint8 else x0).to(self.device)
            gen = step_generator(seed, self.step, self.rank, self.device)
            with self.grounding.recording(idx) if self.grounding else contextlib.nullcontext():
                loss = self.loss_fn(self.model, x0, self.multi_hot[idx].to(self.device), gen)
            total = loss
            if self.grounding:  # where each label token attends, against its object's mask
                ground_loss = self.grounding.loss()
                total = total + self.settings["grounding_weight"] * ground_loss
                align_sum += ground_loss.detach()
            if self.align:  # REPA: the middle block of the forward pass above against the clean image's features
                align_loss = self.align_model(self.targets[idx].to(self.device))
                total = total + self.settings["repa_weight"] * align_loss
                align_sum += align_loss.detach()  # summed on the device: no sync per step
            acc.backward(total)
            if self.settings["grad_clip"]:
                acc.clip_grad_norm_(self.params, self.settings["grad_clip"])
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema:
                self.ema.step(self.net.parameters())
            self.step += 1
            loss_sum += loss.detach()
            if (i + 1) % 25 == 0 or i + 1 == self.steps_per_epoch:  # one sync every 25 steps, not every step
                mean_loss = acc.reduce(loss_sum, "mean").item() / (i + 1)
                check_finite(mean_loss, epoch, self.step, Path(self.cfg.out), bar)
                speed = (i + 1) * batch / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.0f}")
        aux = self.align or self.grounding
        mean_align = acc.reduce(align_sum, "mean").item() / self.steps_per_epoch if aux else None
        return mean_loss, mean_align, time.perf_counter() - started

    def state(self, epoch):
        """The checkpoint of the end of `epoch`: enough to rebuild the model and to continue exactly."""
        ema = self.ema
        return {"config": self.config, "settings": self.settings, "epoch": epoch, "step": self.step,
                "schedule_epochs": self.cfg.epochs,  # the --epochs the lr schedule spans (train_config.check_schedule)
                "model": self.net.state_dict(), "ema_model": ema_state_dict(self.net, ema) if ema else None,
                "ema": {k: v for k, v in ema.state_dict().items() if k != "shadow_params"} if ema else None,
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None,
                "rng": rng_states(), "log": self.log, "autoencoder": self.autoencoder,
                "repa": {**self.repa, "projector": self.align.state_dict()} if self.align else None,
                "masks": self.masks if self.grounding else None}


def check_finite(loss, epoch, step, out, bar):
    """A NaN/inf loss ends the run with one line (after the progress bar); the last checkpoint stays."""
    if not math.isfinite(loss):
        bar.close()
        last = newest_checkpoint(out)
        print(f"error: the loss became {loss} in epoch {epoch} (step {step}); training stopped, "
              f"{last or 'no checkpoint'} is intact: resume with a lower --lr or --mixed-precision no",
              file=sys.stderr)
        sys.exit(1)
