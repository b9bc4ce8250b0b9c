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
This file is the command line, the run folder and the epoch loop; trainer.py is the training step.
"""
import argparse
import csv
import math
import os
import time
from pathlib import Path

import torch
from diffusers.optimization import SchedulerType
from tqdm import tqdm

from dataset import ICLEVRDataset
from grid import plot_training_log, save_grid
from model import (
    PRESETS,
    checkpoint_files,
    count_parameters,
    load_checkpoint,
    newest_checkpoint,
    preset_config,
    save_checkpoint,
)
from trainer import Run, evaluate
from utils import (
    MAX_OBJECTS,
    SPLITS,
    TMP_SUFFIX,
    ArgumentParser,
    ICLEVRError,
    atomic_write,
    exit_on_user_error,
)

# Settings that default to the preset's train section, or on --resume to the run's own (resolve_run).
RUN_SETTINGS = ("batch_size", "lr", "warmup_steps", "ema_decay", "cond_dropout", "seed", "lr_scheduler",
                "grad_clip", "snr_gamma", "limit", "object_weights", "repa_weight", "grounding_weight")
LOG_FIELDS = ("epoch", "step", "loss", "align_loss", "lr", "images_per_s", "seconds", "test_acc", "new_test_acc",
              "eval_seconds")


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
                   help="diffusers get_scheduler name, e.g. constant_with_warmup, cosine, linear (default: the "
                   "preset's: cosine for cpu and cpu64, constant_with_warmup for the others).")
    p.add_argument("--ema-decay", type=float, default=None, help="Largest EMA decay (with warm-up); 0 turns EMA off.")
    p.add_argument("--cond-dropout", type=float, default=None,
                   help="Fraction of labels replaced by the null condition (enables classifier-free guidance).")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR loss weighting min(SNR, gamma)/SNR as in diffusers' examples (0: plain MSE).")
    p.add_argument("--resume", nargs="?", const="newest", default=None,
                   help="Continue from this checkpoint; bare: the newest in --out (none yet: start fresh).")
    p.add_argument("--out", default="checkpoints", help="Folder for checkpoints, train_log.csv and loss_curve.png.")
    p.add_argument("--data-root", default="iclevr", help="Folder with the training PNGs.")
    p.add_argument("--autoencoder", default=None,
                   help="Autoencoder file that a fresh run of a latent preset starts from (default: the preset's "
                        "shipped one, weights/autoencoder.pt for cpu, weights/autoencoder_PRESET.safetensors for the "
                        "others).")
    p.add_argument("--json", default="train.json", help="Training label file (file name -> labels).")
    p.add_argument("--objects", default="objects.json", help="Label -> index file.")
    p.add_argument("--limit", type=int, default=None, help="Train on the first N images only (quick checks).")
    p.add_argument("--object-weights", type=object_weights, default=None, metavar="W1,W2,W3",
                   help="Draw training images with 1, 2 and 3 objects in proportion to these weights per image "
                   "(with replacement), to spend more steps on crowded scenes (default: each image once per epoch).")
    p.add_argument("--repa-encoder", default=None, metavar="FILE",
                   help="Align the UNet's middle block with this frozen encoder's features of the clean image (REPA; "
                   "a course-format ResNet18 that is not the scoring judge; on --resume the run's own; default off).")
    p.add_argument("--repa-weight", type=float, default=None,
                   help="Weight of the alignment loss beside the diffusion loss (default 0.5, the REPA paper's).")
    p.add_argument("--masks", default=None, metavar="DIR", help="Per-object masks of the training images "
                   "(render_iclevr.py --masks DIR): each label token's cross-attention is pulled onto its object "
                   "(grounding.py; presets with a scene token; on --resume the run's own; default off).")
    p.add_argument("--grounding-weight", type=float, default=None,
                   help="Weight of that grounding loss beside the diffusion loss (default 0.1 with --masks).")
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
                   "tensorboard writes under OUT/logs, OUT being --out (needs pip install tensorboard; default none).")
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
                            ("--snr-gamma", args.snr_gamma, lambda v: v >= 0),
                            ("--repa-weight", args.repa_weight, lambda v: v >= 0),
                            ("--grounding-weight", args.grounding_weight, lambda v: v >= 0)]:
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
    if settings.get("repa_weight") is None and (args.repa_encoder or (ckpt or {}).get("repa")):
        settings["repa_weight"] = 0.5  # the REPA paper's
    if settings.get("grounding_weight") is None and (args.masks or (ckpt or {}).get("masks")):
        settings["grounding_weight"] = 0.1
    return path, ckpt, config, {k: settings.get(k) for k in RUN_SETTINGS}  # .get: runs older than a setting


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
        loss, align_loss, seconds = run.train_epoch(epoch)
        if run.main:
            row = {"epoch": epoch, "step": run.step, "loss": f"{loss:.6f}",
                   "align_loss": "" if align_loss is None else f"{align_loss:.6f}",
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
            run.accelerator.log({k: float(v) for k, v in row.items() if k != "epoch" and v != ""}, step=epoch)
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


def write_log(path, rows):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def prune(out, keep_last):
    """Delete all but the newest keep_last checkpoints (0: keep all); the newest always stays."""
    if keep_last:
        for old in checkpoint_files(out)[:-keep_last]:
            old.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
