"""Train the label-conditioned diffusion model, crash-safe, on CPU, one GPU or many.

Usage:
    python train.py --epochs 50 --resume          # start a run, or continue it to epoch 50
    python train.py --preset cpu --epochs 10      # the model sized for 2 CPU cores (make demo)
    python train.py --preset seed --epochs 50     # the origin report's model, the baseline
    accelerate launch --multi_gpu --num_processes 4 train.py --epochs 50 --resume
    torchrun --nproc_per_node 2 train.py --preset tiny --epochs 2    # 2 CPU processes (gloo)

Every epoch writes checkpoints/model_epoch_NNN.pt (model, EMA, optimizer, LR scheduler, epoch,
step, RNG states, config) atomically, appends a row to train_log.csv and redraws
loss_curve.png. All training randomness (the epoch's shuffle, each step's noise, timesteps and
label dropout) is drawn from generators seeded by (--seed, epoch or step, process), so a run
stopped at any moment and resumed gives, on CPU, bit for bit the weights of an uninterrupted one.
"""
import argparse
import csv
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from autoencoder import DEFAULT_FILE as DEFAULT_AUTOENCODER
from autoencoder import load_autoencoder
from dataset import ICLEVRDataset, to_model_range
from grid import plot_training_log, save_grid
from model import (
    PRESETS,
    build_model,
    checkpoint_files,
    count_parameters,
    diffusion_loss,
    ema_state_dict,
    load_checkpoint,
    make_scheduler,
    newest_checkpoint,
    preset_config,
    save_checkpoint,
    to_64,
)
from sampling import sample
from utils import (
    MAX_OBJECTS,
    SPLITS,
    TMP_SUFFIX,
    ArgumentParser,
    ICLEVRError,
    atomic_write,
    exit_on_user_error,
    rng_states,
    seed_for,
    set_rng_states,
    sha256_of,
)

# Settings that default to the preset's train section, or on --resume to the run's own (resolve_run).
RUN_SETTINGS = ("batch_size", "lr", "warmup_steps", "ema_decay", "cond_dropout", "seed", "lr_scheduler",
                "grad_clip", "snr_gamma", "limit", "object_weights")
LOG_FIELDS = ("epoch", "step", "loss", "lr", "images_per_s", "seconds", "test_acc", "new_test_acc", "eval_seconds")


def build_parser():
    p = ArgumentParser(description="Train the label-conditioned diffusion model (see the module docstring).")
    p.add_argument("--epochs", type=int, default=50, help="Train until this many epochs are done (default 50).")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="Model preset (default: 'default' with a GPU, 'cpu' without one; on --resume the run's own).")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Change one entry of a fresh run's preset config, e.g. "
                        "schedule.beta_schedule=squaredcos_cap_v2 (JSON value; repeatable; for ablations; "
                        "kept in the checkpoint).")
    p.add_argument("--batch-size", type=int, default=None, help="Global batch size, split across processes.")
    p.add_argument("--lr", type=float, default=None, help="Peak learning rate of AdamW.")
    p.add_argument("--warmup-steps", type=int, default=None, help="Linear learning-rate warm-up steps.")
    p.add_argument("--lr-scheduler", default=None, choices=[s.value for s in SchedulerType],
                   help="diffusers get_scheduler name: constant_with_warmup (default), cosine, linear, ...")
    p.add_argument("--ema-decay", type=float, default=None, help="Largest EMA decay (with warm-up); 0 turns EMA off.")
    p.add_argument("--cond-dropout", type=float, default=None,
                   help="Fraction of labels replaced by the null condition (enables classifier-free guidance).")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR loss weighting min(SNR, gamma)/SNR as in diffusers' examples (0: plain MSE).")
    p.add_argument("--resume", nargs="?", const="newest", default=None,
                   help="Continue from this checkpoint; bare: the newest in --out (none yet: start fresh).")
    p.add_argument("--out", default="checkpoints", help="Folder for checkpoints, train_log.csv and loss_curve.png.")
    p.add_argument("--data-root", default="iclevr", help="Folder with the training PNGs.")
    p.add_argument("--autoencoder", default=str(DEFAULT_AUTOENCODER),
                   help="Autoencoder file that a fresh run of a latent preset starts from (default: "
                        "weights/autoencoder.pt, which make autoencoder writes).")
    p.add_argument("--json", default="train.json", help="Training label file (file name -> labels).")
    p.add_argument("--objects", default="objects.json", help="Label -> index file.")
    p.add_argument("--limit", type=int, default=None, help="Train on the first N images only (quick checks).")
    p.add_argument("--object-weights", type=object_weights, default=None, metavar="W1,W2,W3",
                   help="Draw training images with 1, 2 and 3 objects in proportion to these weights per image "
                   "(with replacement), to spend more steps on crowded scenes (default: each image once per epoch).")
    p.add_argument("--seed", type=int, default=None, help="Seed of every random draw in training (default 0).")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                   help="Autocast precision: bf16 on recent GPUs, no on CPU (default).")
    p.add_argument("--channels-last", choices=["auto", "yes", "no"], default="auto",
                   help="channels_last memory format (auto: with --compile on CUDA, where it pays; eager, it costs).")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (faster steps after a warm-up).")
    p.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is present.")
    p.add_argument("--grad-clip", type=float, default=None, help="Clip the gradient norm here (default 1; 0: off).")
    p.add_argument("--eval-every", type=int, default=0,
                   help="Every N epochs, score EMA samples of test.json and new_test.json with the judge and save "
                   "the test.json grid as samples/test_epoch_NNN.png in --out (0: never).")
    p.add_argument("--judge", help="Judge checkpoint for --eval-every (default: ./checkpoint.pth when it exists, "
                   "else the shipped weights/judge.pth).")
    p.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none",
                   help="Also log each epoch's loss, learning rate and accuracies to this tracker through accelerate; "
                   "tensorboard writes under <out-dir>/logs (needs pip install tensorboard; default none).")
    p.add_argument("--keep-last", type=int, default=3, help="Keep only the newest N checkpoints, so a long run's "
                   "disk use stays bounded (0: keep all, as bench/cpu_budget.py needs).")
    p.add_argument("--num-workers", type=int, default=4, help="Threads that decode the PNGs when preloading.")
    return p


def object_weights(text):
    """--object-weights "1,2,3" -> [1.0, 2.0, 3.0]: one weight per object count, not negative, not all zero."""
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != MAX_OBJECTS or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise argparse.ArgumentTypeError(f"expected {MAX_OBJECTS} weights such as 1,2,3 (not negative, not all "
                                         f"zero), got {text!r}")
    return weights


def check_args(args):
    for flag, value, low in [("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--keep-last", args.keep_last, 0), ("--eval-every", args.eval_every, 0),
                             ("--num-workers", args.num_workers, 1), ("--limit", args.limit, 1),
                             ("--warmup-steps", args.warmup_steps, 0)]:
        if value is not None and value < low:
            raise ICLEVRError(f"{flag} must be at least {low}, got {value}")
    for flag, value, ok in [("--lr", args.lr, lambda v: 0 < v < 1),
                            ("--ema-decay", args.ema_decay, lambda v: 0 <= v < 1),
                            ("--cond-dropout", args.cond_dropout, lambda v: 0 <= v < 1),
                            ("--grad-clip", args.grad_clip, lambda v: v >= 0),
                            ("--snr-gamma", args.snr_gamma, lambda v: v >= 0)]:
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise ICLEVRError(f"{flag} {value} is out of range")


def find_resume(args):
    """The checkpoint to continue from (None: fresh run). A fresh run never overwrites another one."""
    out = Path(args.out)
    if args.resume is None:
        existing = newest_checkpoint(out)
        if existing:
            raise ICLEVRError(f"{out} already holds a run ({existing.name}): continue it with --resume, "
                              "or choose another --out")
        return None
    if args.resume != "newest":
        return Path(args.resume)
    newest = newest_checkpoint(out)
    if newest is None and os.environ.get("RANK", "0") == "0":  # said once, also under torchrun
        print(f"no checkpoint in {out}/ yet: starting a fresh run")
    return newest


def auto_preset(args):
    """'default' where a GPU trains it, else the 'cpu' preset (the default one needs days on a CPU)."""
    if torch.cuda.is_available() and not args.cpu:
        return "default"
    if os.environ.get("RANK", "0") == "0":
        print("no GPU: training the 'cpu' preset (flow matching on the shipped autoencoder's 8x8 latents of 32x32 "
              "images, 7.1 M parameters); --preset default forces the big one")
    return "cpu"


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


def write_log(path, rows):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def resolve_run(args):
    """(checkpoint path or None, its contents or None, config, settings). The one place a run's settings
    are decided: the preset's train section, then the resumed run's own, then the flags given."""
    path = find_resume(args)
    ckpt = load_checkpoint(path, args.preset) if path else None
    if ckpt and args.set and preset_config(ckpt["config"]["preset"], args.set) != ckpt["config"]:
        raise ICLEVRError(f"--set cannot change the config of the run in {path}: start a fresh run in another "
                          "--out")
    config = ckpt["config"] if ckpt else preset_config(args.preset or auto_preset(args), args.set)
    settings = {**config["train"], **(ckpt.get("settings", {}) if ckpt else {})}
    settings.update({k: getattr(args, k) for k in RUN_SETTINGS if getattr(args, k) is not None})
    return path, ckpt, config, {k: settings.get(k) for k in RUN_SETTINGS}  # .get: runs older than a setting


class Run:
    """Everything one training process holds: the model, its optimizer, schedules, EMA and data."""

    def __init__(self, args, resume_path, ckpt, config, settings):
        self.args, self.resume_path, self.config, self.settings = args, resume_path, config, settings
        self.epoch, self.step = (ckpt["epoch"], ckpt["step"]) if ckpt else (0, 0)
        self.log = list(ckpt.get("log") or []) if ckpt else []  # train_log.csv rows up to this epoch
        self.start_accelerator()
        data = self.load_data()
        self.build_model(ckpt)
        self.inputs = self.encode(self.net, data.images)  # what the UNet denoises: images, or their latents
        if self.device.type == "cuda":  # the whole training set lives on the GPU
            self.inputs, self.multi_hot = self.inputs.to(self.device), self.multi_hot.to(self.device)
        self.build_optimizer(ckpt)
        self.model, self.optimizer = self.accelerator.prepare(self.net, self.optimizer)
        if ckpt and ckpt.get("scaler") and self.accelerator.scaler:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        if args.compile:
            self.model = torch.compile(self.model)
        self.noise_scheduler = make_scheduler(config, "ddpm")

    def start_accelerator(self):
        args = self.args
        tracker = None if args.report_to == "none" else args.report_to
        if tracker and importlib.util.find_spec(tracker) is None:
            raise ICLEVRError(f"--report-to {tracker} needs the {tracker} package: pip install {tracker}")
        logs = ProjectConfiguration(args.out, Path(args.out) / "logs")  # where --report-to writes
        self.accelerator = acc = Accelerator(mixed_precision=args.mixed_precision, log_with=tracker,
                                             project_config=logs, cpu=args.cpu or not torch.cuda.is_available())
        self.device, self.world, self.rank = acc.device, acc.num_processes, acc.process_index
        self.main = acc.is_main_process
        self.batch = self.settings["batch_size"]
        if self.batch % self.world:
            raise ICLEVRError(f"--batch-size {self.batch} does not split over {self.world} processes")

    def load_data(self):
        args = self.args
        data = ICLEVRDataset(args.data_root, args.json, args.objects, image_size=self.config["image_size"],
                             preload=True, limit=self.settings["limit"], workers=args.num_workers)
        if data.names is None:
            raise ICLEVRError(f"{args.json} is a test.json-style list without file names: training needs a "
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
            path = Path(self.args.autoencoder)
            net.codec.load_state_dict(load_autoencoder(path, self.config["latent"]).state_dict())
            self.autoencoder = {"path": str(path), "sha256": sha256_of(path)}
        on_gpu = self.device.type == "cuda"
        self.channels_last = self.args.channels_last == "yes" or (self.args.channels_last == "auto" and on_gpu
                                                                  and self.args.compile)
        net.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def build_optimizer(self, ckpt):
        """AdamW, the LR schedule and the EMA, continued from the checkpoint with this run's settings: a --lr,
        --warmup-steps or --ema-decay given on --resume applies from the next step on."""
        s = self.settings
        self.optimizer = optimizer = torch.optim.AdamW(self.net.trainable_parameters(), lr=s["lr"], weight_decay=0.0)
        if ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            for group in optimizer.param_groups:
                group["initial_lr"] = s["lr"]  # the peak the schedule scales (torch's name for it)
        # With cosine or linear decay the schedule spans --epochs: raising it on --resume stretches the rest.
        self.lr_scheduler = get_scheduler(s["lr_scheduler"], optimizer, num_warmup_steps=s["warmup_steps"],
                                          num_training_steps=self.args.epochs * self.steps_per_epoch,
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
        return torch.cat([net.encode(to_model_range(chunk)) for chunk in
                          tqdm(images.split(batch), desc="encoding latents", disable=not self.main, unit="batch")])

    def train_epoch(self, epoch):
        """One pass over a fresh shuffle; returns (mean loss over all processes, seconds)."""
        args, acc, batch = self.args, self.accelerator, self.batch
        local = batch // self.world
        seed = self.settings["seed"]
        perm = epoch_order(self.multi_hot, self.settings["object_weights"], seed_for(seed, epoch))
        loss_sum, started = torch.zeros((), device=self.device), time.perf_counter()
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", disable=not self.main, unit="step")
        for i in bar:
            start = i * batch + self.rank * local  # this process's share of the global batch
            idx = perm[start:start + local].to(self.inputs.device)
            x0 = self.inputs[idx]
            x0 = (to_model_range(x0) if x0.dtype == torch.uint8 else x0).to(self.device)
            gen = step_generator(seed, self.step, self.rank, self.device)
            loss = diffusion_loss(self.model, self.noise_scheduler, x0, self.multi_hot[idx].to(self.device), gen,
                                  self.settings["cond_dropout"], acc.autocast(), self.channels_last,
                                  self.settings["snr_gamma"])
            acc.backward(loss)
            if self.settings["grad_clip"]:
                acc.clip_grad_norm_(self.model.parameters(), self.settings["grad_clip"])
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema:
                self.ema.step(self.net.parameters())
            self.step += 1
            loss_sum += loss.detach()
            if (i + 1) % 25 == 0 or i + 1 == self.steps_per_epoch:  # one sync every 25 steps, not every step
                mean_loss = acc.reduce(loss_sum, "mean").item() / (i + 1)
                check_finite(mean_loss, epoch, self.step, Path(args.out), bar)
                speed = (i + 1) * batch / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.0f}")
        return mean_loss, time.perf_counter() - started

    def state(self, epoch):
        """The checkpoint of the end of `epoch`: enough to rebuild the model and to continue exactly."""
        ema = self.ema
        return {"config": self.config, "settings": self.settings, "epoch": epoch, "step": self.step,
                "model": self.net.state_dict(), "ema_model": ema_state_dict(self.net, ema) if ema else None,
                "ema": {k: v for k, v in ema.state_dict().items() if k != "shadow_params"} if ema else None,
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None,
                "rng": rng_states(), "log": self.log, "autoencoder": self.autoencoder}


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    resume_path, ckpt, config, settings = resolve_run(args)
    if ckpt and ckpt["epoch"] >= args.epochs:
        print(f"{resume_path} has already trained {ckpt['epoch']} epochs (asked: {args.epochs}): nothing to do")
        return
    run = Run(args, resume_path, ckpt, config, settings)
    del ckpt  # its tensors now live in the run
    out = Path(args.out)
    judge, splits = load_judge(args, run.device) if args.eval_every and run.main else (None, {})
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        size = run.config["image_size"]
        print(f"{'resuming ' + str(run.resume_path) if run.resume_path else 'fresh run'}: preset "
              f"{run.config['preset']} ({count_parameters(run.net) / 1e6:.2f} M parameters, {size}x{size}), "
              f"{len(run.inputs)} images, batch {run.batch} on {run.world} x {run.device}, "
              f"epochs {run.epoch + 1}-{args.epochs}"
              + "".join(f", {k}={v}" for k, v in run.config.get("overrides", {}).items()))
    if args.report_to != "none":
        hparams = {k: v for k, v in run.settings.items() if v is not None}
        hparams.update(preset=run.config["preset"], epochs=args.epochs)
        run.accelerator.init_trackers("train", config=hparams)
    for stale in out.glob(f".model_epoch_*{TMP_SUFFIX}") if run.main else []:
        stale.unlink(missing_ok=True)  # the temporary file of a save that was killed midway
    for epoch in range(run.epoch + 1, args.epochs + 1):
        loss, seconds = run.train_epoch(epoch)
        if run.main:
            row = {"epoch": epoch, "step": run.step, "loss": f"{loss:.6f}",
                   "lr": f"{run.lr_scheduler.get_last_lr()[0]:.3g}", "seconds": f"{seconds:.1f}",
                   "images_per_s": f"{run.steps_per_epoch * run.batch / seconds:.1f}"}
            if judge and epoch % args.eval_every == 0:
                started = time.perf_counter()
                scores, samples = evaluate(run.net, run.ema, run.config, judge, splits, run.device)
                save_grid(samples["test"], out / "samples" / f"test_epoch_{epoch:03d}.png",
                          caption=f"test.json, epoch {epoch}: {scores['test']:.3f}")
                row.update({f"{k}_acc": f"{v:.4f}" for k, v in scores.items()},
                           eval_seconds=f"{time.perf_counter() - started:.1f}")
                tqdm.write(f"epoch {epoch}: official accuracy of EMA samples: "
                           + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({row['eval_seconds']} s)")
            run.accelerator.log({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)
            run.log.append(row)  # the log travels inside the checkpoint, so a kill never loses a row
            try:
                save_checkpoint(out / f"model_epoch_{epoch:03d}.pt", run.state(epoch))
            except ICLEVRError as e:  # a full disk or a read-only folder: the last checkpoint is whole
                raise ICLEVRError(f"{e}; training stopped in epoch {epoch}, {newest_checkpoint(out) or 'no checkpoint'}"
                                  " is intact: make room and rerun with --resume") from None
            prune(out, args.keep_last)
            write_log(out / "train_log.csv", run.log)
            plot_training_log(out / "loss_curve.png", run.log)
        run.accelerator.wait_for_everyone()
    if run.main:
        train_s = sum(float(r["seconds"]) for r in run.log)
        eval_s = sum(float(r.get("eval_seconds") or 0) for r in run.log)
        print(f"done: {out / f'model_epoch_{args.epochs:03d}.pt'}, log {out / 'train_log.csv'}, "
              f"curve {out / 'loss_curve.png'}; {train_s / 60:.1f} min training"
              + (f" + {eval_s / 60:.1f} min of --eval-every scoring" if eval_s else ""))
    run.accelerator.end_training()


def load_judge(args, device):
    """The judge and the split labels for --eval-every, or (None, {}) with a note when there is no judge."""
    from evaluator import default_judge, evaluation_model
    try:
        judge = args.judge or default_judge()  # an explicit --judge as given, else the course's or the shipped one
    except ICLEVRError as e:
        print(f"note: {e}; --eval-every is skipped")
        return None, {}
    if not Path(judge).is_file():
        print(f"note: no judge at {judge} (train one: python train_evaluator.py); --eval-every is skipped")
        return None, {}
    folder = Path(args.objects).parent  # the label files live beside objects.json
    splits = {name: ICLEVRDataset(None, folder / f"{name}.json", args.objects).multi_hot
              for name in SPLITS}
    return evaluation_model(judge, device=str(device)), splits


def check_finite(loss, epoch, step, out, bar):
    """A NaN/inf loss ends the run with one line (after the progress bar); the last checkpoint stays."""
    if not math.isfinite(loss):
        bar.close()
        last = newest_checkpoint(out)
        print(f"error: the loss became {loss} in epoch {epoch} (step {step}); training stopped, "
              f"{last or 'no checkpoint'} is intact: resume with a lower --lr or --mixed-precision no",
              file=sys.stderr)
        sys.exit(1)


def prune(out, keep_last):
    """Delete all but the newest keep_last checkpoints (0: keep all); the newest always stays."""
    if keep_last:
        for old in checkpoint_files(out)[:-keep_last]:
            old.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
