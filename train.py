"""Train the label-conditioned diffusion model, crash-safe, on CPU, one GPU or many.

Usage:
    python train.py --epochs 50 --resume          # start a run (the cpu preset), or continue it to epoch 50
    python train.py --preset cpu64 --epochs 10    # another preset (--help lists them, with what each scored)
    python train.py --data-root /path/to/course/iclevr --epochs 50 --resume   # the course's images, where they are
    python train.py --dry-run                     # the resolved config, without training
    accelerate launch --multi_gpu --num_processes 4 train.py --epochs 50 --resume
    torchrun --nproc_per_node 2 train.py --preset tiny --epochs 2    # 2 CPU processes (gloo)

The flags, the preset and a resumed run's own settings are merged once into a TrainConfig
(train_config.py), printed at the start and written as OUT/config.json. Every epoch writes
OUT/model_epoch_NNN.pt (model, EMA, optimizer, LR scheduler, epoch, step, RNG states, config)
atomically, appends a row to train_log.csv and redraws loss_curve.png. All training randomness
(the epoch's shuffle, each step's noise, timesteps and label dropout) is drawn from generators
seeded by (--seed, epoch or step, process), so a run stopped at any moment and resumed gives, on
CPU, bit for bit the weights of an uninterrupted one. This file is the command line, the run
folder and the epoch loop; trainer.py is the training step, losses.py its loss.
"""
import argparse
import csv
import math
import time
from pathlib import Path

from diffusers.optimization import SchedulerType
from tqdm import tqdm

from dataset import ICLEVRDataset
from grid import plot_training_log, save_grid
from model import checkpoint_files, count_parameters, newest_checkpoint, save_checkpoint
from presets import ALIASES, CURRENT, LEGACY, NOTES, PRESETS, by_value
from train_config import AUTO_PRESET, model_size, resolve, what_it_is
from trainer import Run, evaluate
from utils import MAX_OBJECTS, SPLITS, TMP_SUFFIX, ArgumentParser, ICLEVRError, atomic_write, exit_on_user_error

LOG_FIELDS = ("epoch", "step", "loss", "loss_type", "align_loss", "lr", "images_per_s", "seconds", "test_acc",
              "new_test_acc", "eval_seconds", "judge")
RESUMED = "; on --resume the run's own"


def preset_default(key):
    """'(default: the preset's: 0.002 for cpu, ...; on --resume the run's own)': a setting's default in help."""
    return f"(default: the preset's: {by_value(key)}{RESUMED})"


def preset_help():
    listed = lambda names: "; ".join(f"{name}: {NOTES[name]}" for name in names)  # noqa: E731
    return (f"Model preset (default: {AUTO_PRESET!r}, on a CPU and a GPU alike{RESUMED}). In use: {listed(CURRENT)}. "
            f"Legacy, kept so that their checkpoints load: {listed(LEGACY)}. 'seed' is the old name of 'report'.")


def build_parser():
    p = ArgumentParser(description="Train the label-conditioned diffusion model (see the module docstring).")
    g = p.add_argument_group("what to train")
    g.add_argument("--preset", choices=[*PRESETS, *ALIASES], default=None, help=preset_help())
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Change one entry of a fresh run's preset config, e.g. "
                   "schedule.beta_schedule=squaredcos_cap_v2 (JSON value; repeatable; for ablations; kept in the "
                   "checkpoint; default: none).")
    g.add_argument("--epochs", type=int, default=50, help="Train until this many epochs are done.")
    g.add_argument("--resume", nargs="?", const="newest", default=None,
                   help="Continue from this checkpoint; bare: the newest in --out (none yet: start fresh).")
    g.add_argument("--out", default="checkpoints",
                   help="The run folder: checkpoints, config.json, train_log.csv and loss_curve.png.")
    g.add_argument("--dry-run", action="store_true", help="Print the run's resolved config (the preset, the "
                   "settings, the paths and devices) and exit: no image is read and nothing is written.")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="iclevr", help="Folder with the training PNGs: the renders of "
                   "render_iclevr.py, or the course's iclevr/ folder where it is (no need to copy it).")
    g.add_argument("--json", default="train.json", help="Training label file (file name -> labels).")
    g.add_argument("--objects", default="objects.json", help="Label -> index file.")
    g.add_argument("--limit", type=int, default=None,
                   help=f"Train on the first N images only, for quick checks (default: all of them{RESUMED}).")
    g.add_argument("--object-weights", type=object_weights, default=None, metavar="W1,W2,W3",
                   help="Draw training images with 1, 2 and 3 objects in proportion to these weights per image "
                   "(with replacement), to spend more steps on crowded scenes (default: each image once per "
                   f"epoch{RESUMED}).")
    g.add_argument("--autoencoder", default=None,
                   help="Autoencoder file that a fresh run of a latent preset starts from (default: the preset's "
                   "shipped one, weights/autoencoder.safetensors for cpu, weights/autoencoder_PRESET.safetensors "
                   f"for the others{RESUMED}).")
    g.add_argument("--num-workers", type=int, default=4, help="Threads that decode the PNGs when preloading.")
    g = p.add_argument_group("schedule and optimiser (each defaults to the preset's; on --resume to the run's own)")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"Global batch size, split across processes {preset_default('batch_size')}.")
    g.add_argument("--lr", type=float, default=None, help=f"Peak learning rate of AdamW {preset_default('lr')}.")
    g.add_argument("--lr-scheduler", default=None, choices=[s.value for s in SchedulerType],
                   help=f"diffusers get_scheduler name {preset_default('lr_scheduler')}.")
    g.add_argument("--warmup-steps", type=int, default=None,
                   help=f"Linear learning-rate warm-up steps {preset_default('warmup_steps')}.")
    g.add_argument("--grad-clip", type=float, default=None,
                   help=f"Clip the gradient norm here; 0: off (default: 1, every preset's{RESUMED}).")
    g.add_argument("--ema-decay", type=float, default=None,
                   help=f"Largest EMA decay (with warm-up); 0 turns EMA off {preset_default('ema_decay')}.")
    g.add_argument("--cond-dropout", type=float, default=None, help="Fraction of labels replaced by the null "
                   f"condition, for classifier-free guidance {preset_default('cond_dropout')}.")
    g.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR weighting min(SNR, gamma)/SNR of "
                   "noise-prediction losses, as in diffusers' examples; 0: plain MSE; flow presets take none "
                   f"{preset_default('snr_gamma')}.")
    g.add_argument("--seed", type=int, default=None,
                   help=f"Seed of every random draw in training (default: 0, every preset's{RESUMED}).")
    g = p.add_argument_group("auxiliary losses (one at a time; on --resume the run's own)")
    g.add_argument("--repa-encoder", default=None, metavar="FILE",
                   help="Align the UNet's middle block with this frozen encoder's features of the clean image (REPA; "
                   "a course-format ResNet18 that is not the scoring judge; default: off).")
    g.add_argument("--repa-weight", type=float, default=None,
                   help=f"Weight of the alignment loss beside the diffusion loss (default: 0.5, the REPA paper's, "
                   f"with --repa-encoder{RESUMED}).")
    g.add_argument("--masks", default=None, metavar="DIR", help="Per-object masks of the training images "
                   "(render_iclevr.py --masks DIR): each label token's cross-attention is pulled onto its object "
                   "(grounding.py; presets with a scene token: cpu64; default: off).")
    g.add_argument("--grounding-weight", type=float, default=None,
                   help=f"Weight of that grounding loss beside the diffusion loss (default: 0.1 with "
                   f"--masks{RESUMED}).")
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-every", type=int, default=0,
                   help="Every N epochs, score EMA samples of test.json and new_test.json with the judge and save "
                   "the test.json grid as samples/test_epoch_NNN.png in --out (0: never).")
    g.add_argument("--judge", help="Judge checkpoint for --eval-every (default: ./checkpoint.pth when it exists, "
                   "else the shipped weights/judge.pth).")
    g.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none",
                   help="Also log each epoch's loss, learning rate and accuracies to this tracker through accelerate; "
                   "tensorboard writes under OUT/logs, OUT being --out (needs pip install tensorboard).")
    g.add_argument("--keep-last", type=int, default=3, help="Keep only the newest N checkpoints, so a long run's "
                   "disk use stays bounded (0: keep all, as bench/cpu_budget.py needs).")
    g = p.add_argument_group("devices")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]; under "
                   "accelerate launch or torchrun each process takes its own GPU.")
    g.add_argument("--cpu", dest="device", action="store_const", const="cpu", help=argparse.SUPPRESS)  # old spelling
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                   help="Autocast precision: bf16 on recent GPUs, no on CPU.")
    g.add_argument("--channels-last", choices=["auto", "yes", "no"], default="auto",
                   help="channels_last memory format (auto: with --compile on CUDA, where it pays; eager, it costs).")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet (faster steps after a warm-up).")
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


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    config, ckpt = resolve(args)
    out = Path(config.out)
    if args.dry_run:
        model = config.model
        print(f"dry run: preset {model['preset']} ({what_it_is(model)}, {model_size(model)}); the config a run "
              f"would use and write as {out / 'config.json'}:\n{config.dumps()}")
        return config
    if ckpt and ckpt["epoch"] >= config.epochs:
        print(f"{config.resume} has already trained {ckpt['epoch']} epochs (asked: {config.epochs}): nothing to do")
        return config
    run = Run(config, ckpt)
    del ckpt  # its tensors now live in the run
    judge, splits = load_judge(config, run.device) if config.eval_every and run.is_main else (None, {})
    if run.is_main:
        out.mkdir(parents=True, exist_ok=True)
        size = run.config["image_size"]
        print(f"config ({out / 'config.json'}):\n{config.dumps()}")
        print(f"{'resuming ' + config.resume if config.resume else 'fresh run'}: preset "
              f"{run.config['preset']} ({count_parameters(run.net) / 1e6:.2f} M parameters, {size}x{size}), "
              f"{len(run.inputs)} images, batch {run.batch} on {run.world} x {run.device}, "
              f"epochs {run.epoch + 1}-{config.epochs}, loss: {config.loss}"
              + "".join(f", {k}={v}" for k, v in run.config.get("overrides", {}).items()))
    if config.report_to != "none":
        hparams = {k: v for k, v in run.settings.items() if v is not None}
        hparams.update(preset=run.config["preset"], epochs=config.epochs)
        run.accelerator.init_trackers("train", config=hparams)
    for stale in out.glob(f".model_epoch_*{TMP_SUFFIX}") if run.is_main else []:
        stale.unlink(missing_ok=True)  # the temporary file of a save that was killed midway
    for epoch in range(run.epoch + 1, config.epochs + 1):
        loss, align_loss, seconds = run.train_epoch(epoch)
        if run.is_main:
            row = {"epoch": epoch, "step": run.step, "loss": f"{loss:.6f}", "loss_type": config.loss,
                   "align_loss": "" if align_loss is None else f"{align_loss:.6f}",
                   "lr": f"{run.lr_scheduler.get_last_lr()[0]:.3g}", "seconds": f"{seconds:.1f}",
                   "images_per_s": f"{run.steps_per_epoch * run.batch / seconds:.1f}"}
            if judge and epoch % config.eval_every == 0:
                started = time.perf_counter()
                scores, samples = evaluate(run.net, run.ema, run.config, judge, splits, run.device)
                save_grid(samples["test"], out / "samples" / f"test_epoch_{epoch:03d}.png",
                          caption=f"test.json, epoch {epoch}: {scores['test']:.3f}")
                row.update({f"{k}_acc": f"{v:.4f}" for k, v in scores.items()},
                           eval_seconds=f"{time.perf_counter() - started:.1f}", judge=judge.name())
                tqdm.write(f"epoch {epoch}: official accuracy of EMA samples: "
                           + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" ({row['eval_seconds']} s)")
            run.accelerator.log({k: float(v) for k, v in row.items() if k not in ("epoch", "loss_type", "judge")
                                 and v != ""},
                                step=epoch)
            run.log.append(row)  # the log travels inside the checkpoint, so a kill never loses a row
            try:
                save_checkpoint(out / f"model_epoch_{epoch:03d}.pt", run.state(epoch))
            except ICLEVRError as e:  # a full disk or a read-only folder: the last checkpoint is whole
                raise ICLEVRError(f"{e}; training stopped in epoch {epoch}, {newest_checkpoint(out) or 'no checkpoint'}"
                                  " is intact: make room and rerun with --resume") from None
            if epoch == run.epoch + 1:  # with this invocation's first checkpoint: a run that fails writes nothing
                config.write(out / "config.json")
            prune(out, config.keep_last)
            write_log(out / "train_log.csv", run.log, config.loss)
            plot_training_log(out / "loss_curve.png", run.log, loss_label=config.loss)
        run.accelerator.wait_for_everyone()
    if run.is_main:
        train_s = sum(float(r["seconds"]) for r in run.log)
        eval_s = sum(float(r.get("eval_seconds") or 0) for r in run.log)
        print(f"done: {out / f'model_epoch_{config.epochs:03d}.pt'}, log {out / 'train_log.csv'}, "
              f"curve {out / 'loss_curve.png'}; {train_s / 60:.1f} min training"
              + (f" + {eval_s / 60:.1f} min of --eval-every scoring" if eval_s else ""))
    run.accelerator.end_training()
    return config


def load_judge(config, device):
    """The judge and the split labels for --eval-every, or (None, {}) with a note when there is no judge.
    config: a TrainConfig (or anything with .judge and .objects)."""
    from evaluator import default_judge, evaluation_model
    try:
        judge = config.judge or default_judge()  # an explicit --judge as given, else the course's or the shipped one
    except ICLEVRError as e:
        print(f"note: {e}; --eval-every is skipped")
        return None, {}
    if not Path(judge).is_file():
        print(f"note: no judge at {judge} (train one: python train_evaluator.py); --eval-every is skipped")
        return None, {}
    folder = Path(config.objects).parent  # the label files live beside objects.json
    splits = {name: ICLEVRDataset(None, folder / f"{name}.json", config.objects).multi_hot
              for name in SPLITS}
    return evaluation_model(judge, device=str(device)), splits


def write_log(path, rows, loss_type=""):
    """train_log.csv; loss_type says what the loss column is (rows of runs older than that column get it too)."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows({"loss_type": loss_type, **row} for row in rows)
    atomic_write(path, write)


def prune(out, keep_last):
    """Delete all but the newest keep_last checkpoints (0: keep all); the newest always stays."""
    if keep_last:
        for old in checkpoint_files(out)[:-keep_last]:
            old.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
