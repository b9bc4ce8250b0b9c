"""The one config of a training run: train.py's flags, the preset and a resumed run's own settings, merged once.

    config, ckpt = resolve(args)        # train.py's parsed flags -> TrainConfig (reads a --resume file, no images)
    print(config.dumps())               # what train.py prints at the start and --dry-run shows
    config.write("checkpoints/config.json")

Precedence, lowest first: the preset's row (presets.py), a resumed run's own settings (its
checkpoint's "settings", "repa", "masks"), the flags given. trainer.Run reads nothing but this
object. Its fields, commented below, are config.json's keys: the schema.
"""
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from autoencoder import default_file
from losses import describe_loss
from model import build_model, load_checkpoint, newest_checkpoint, preset_config
from presets import ALIASES, schedule_kind
from utils import ICLEVRError, atomic_write, pick_device

# The training recipe: the preset's train section, then a resumed run's own, then the flags of the same names.
SETTINGS = ("batch_size", "lr", "warmup_steps", "ema_decay", "cond_dropout", "seed", "lr_scheduler", "grad_clip",
            "snr_gamma", "limit", "object_weights", "repa_weight", "grounding_weight")
AUTO_PRESET = "cpu"  # what a run without --preset trains, on a CPU and a GPU alike (presets.NOTES: the shipped one)
REPA_WEIGHT, GROUNDING_WEIGHT = 0.5, 0.1  # the auxiliary losses' weights when the flags name none (REPA: the paper's)


@dataclass
class TrainConfig:
    """A training run, resolved. None (null in config.json) means: off, or none."""
    # what to train
    model: dict  # the preset's config with its --set changes (presets.preset_config): the checkpoints' "config"
    settings: dict  # the training recipe, the SETTINGS: the checkpoints' "settings", resumed with the run
    loss: str  # what the logged loss is (losses.describe_loss), e.g. "flow matching: MSE on the velocity"
    epochs: int  # train until this many epochs are done
    resume: str  # the checkpoint this run continues (None: a fresh run)
    # data
    data_root: str  # the training images (the course's iclevr/ folder, or renders)
    json: str  # their train.json-style label file
    objects: str  # objects.json: label -> index
    num_workers: int  # threads that decode the PNGs
    autoencoder: str  # latent presets: the file a fresh run copies in (a resumed run carries its own, from here)
    # auxiliary losses (trainer.Run), weighted by settings' repa_weight and grounding_weight
    repa_encoder: str  # REPA's frozen encoder (repa.py)
    masks: str  # per-object masks of the training images (grounding.py)
    # evaluation and logging
    out: str  # the run folder: checkpoints, config.json, train_log.csv, loss_curve.png
    eval_every: int  # score EMA samples every N epochs (0: never)
    judge: str  # the judge of that scoring
    keep_last: int  # checkpoints kept (0: all)
    report_to: str  # none, tensorboard or wandb
    # devices
    device: str  # cpu, cuda or cuda:N (--device auto resolved)
    mixed_precision: str  # no, fp16, bf16 (autocast)
    compile: bool  # torch.compile the UNet
    channels_last: bool  # channels_last memory format (--channels-last auto resolved)

    def dumps(self):
        return dumps(dataclasses.asdict(self))

    def write(self, path):
        """config.json beside the checkpoints, atomically (rewritten on every --resume)."""
        atomic_write(path, lambda tmp: Path(tmp).write_text(self.dumps() + "\n"))


def dumps(value, indent=""):
    """JSON with one line per dict entry and every list on one line."""
    if isinstance(value, dict) and value:
        inner = indent + "  "
        return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in value.items()) + \
            f"\n{indent}}}"
    return json.dumps(value)


def is_main_process():
    return os.environ.get("RANK", "0") == "0"  # said once, also under torchrun and accelerate launch


def find_resume(resume, out):
    """The checkpoint to continue from (None: fresh run). A fresh run never overwrites another one."""
    out = Path(out)
    if resume is None:
        existing = newest_checkpoint(out)
        if existing:
            raise ICLEVRError(f"{out} already holds a run ({existing.name}): continue it with --resume, "
                              "or choose another --out")
        return None
    if resume != "newest":
        return Path(resume)
    newest = newest_checkpoint(out)
    if newest is None and is_main_process():
        print(f"no checkpoint in {out}/ yet: starting a fresh run")
    return newest


def model_size(config):
    """'7.09 M parameters trained (+ 0.64 M of the frozen autoencoder)', counted on a model built without memory."""
    with torch.device("meta"):
        net = build_model(config)
    trained = sum(p.numel() for p in net.trainable_parameters())
    frozen = sum(p.numel() for p in net.parameters()) - trained
    return f"{trained / 1e6:.2f} M parameters trained" + (f" (+ {frozen / 1e6:.2f} M of the frozen autoencoder)"
                                                           if frozen else "")


def what_it_is(config):
    """'flow matching on 8x8x8 latents of 32x32 images': a config in a few words."""
    size = config["image_size"]
    how = "flow matching" if schedule_kind(config) == "flow" else "noise prediction (DDPM)"
    latent = config.get("latent")
    if latent:
        p, vae = latent["patch_size"], latent["vae"]
        side = size // p // 2 ** (len(vae["block_out_channels"]) - 1)
        return f"{how} on {side}x{side}x{vae['latent_channels']} latents of {size}x{size} images"
    return f"{how} on {size}x{size} pixels"


def auto_preset():
    """AUTO_PRESET, said with its size (a run without --preset)."""
    config = preset_config(AUTO_PRESET)
    if is_main_process():
        print(f"no --preset: training the {AUTO_PRESET!r} preset ({what_it_is(config)}, {model_size(config)}); "
              "--preset NAME trains another (python train.py --help lists them)")
    return AUTO_PRESET


def resolve(args):
    """(TrainConfig, the resumed checkpoint's contents or None) from train.py's parsed and checked flags."""
    if args.preset in ALIASES and is_main_process():
        print(f"note: {args.preset!r} is the old name of the {ALIASES[args.preset]!r} preset")
    path = find_resume(args.resume, args.out)
    ckpt = load_checkpoint(path, args.preset) if path else None
    if ckpt and args.set and preset_config(ckpt["config"]["preset"], args.set) != ckpt["config"]:
        raise ICLEVRError(f"--set cannot change the config of the run in {path}: start a fresh run in another --out")
    model = ckpt["config"] if ckpt else preset_config(args.preset or auto_preset(), args.set)
    settings = {**model["train"], **((ckpt.get("settings") or {}) if ckpt else {})}
    settings.update({k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None})
    kept_repa, kept_masks = (ckpt.get("repa"), ckpt.get("masks")) if ckpt else (None, None)
    for flag, given, kept in [("--repa-encoder", args.repa_encoder, kept_repa), ("--masks", args.masks, kept_masks)]:
        if ckpt and given and not kept:
            what = "alignment" if flag == "--repa-encoder" else "grounding"
            raise ICLEVRError(f"{path} was trained without {flag}: {what} cannot start on --resume; start a fresh "
                              "run in another --out")
    repa_encoder, masks = args.repa_encoder or (kept_repa or {}).get("encoder"), args.masks or kept_masks
    if repa_encoder and masks:
        raise ICLEVRError("--masks and --repa-encoder train one auxiliary loss each: use one of them at a time")
    if settings.get("repa_weight") is None and repa_encoder:
        settings["repa_weight"] = REPA_WEIGHT
    if settings.get("grounding_weight") is None and masks:
        settings["grounding_weight"] = GROUNDING_WEIGHT
    settings = {k: settings.get(k) for k in SETTINGS}  # .get: runs older than a setting
    if ckpt:
        check_schedule(ckpt, settings, args.epochs, path)
    autoencoder = None
    if model.get("latent"):
        kept = (ckpt.get("autoencoder") or {}).get("path") if ckpt else None
        autoencoder = kept if ckpt else str(args.autoencoder or default_file(model["preset"]))
    device = pick_device(args.device)
    if device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ICLEVRError(f"--device {device} names one GPU, but {os.environ['WORLD_SIZE']} processes share the "
                          "run: each takes its own GPU with --device auto or cuda")
    return TrainConfig(
        model=model, settings=settings, loss=describe_loss(model, settings["snr_gamma"]), epochs=args.epochs,
        resume=None if path is None else str(path), data_root=args.data_root, json=args.json, objects=args.objects,
        num_workers=args.num_workers, autoencoder=autoencoder, repa_encoder=repa_encoder, masks=masks, out=args.out,
        eval_every=args.eval_every, judge=judge_of(args), keep_last=args.keep_last, report_to=args.report_to,
        device=str(device), mixed_precision=args.mixed_precision, compile=args.compile,
        channels_last=args.channels_last == "yes" or (args.channels_last == "auto" and device.type == "cuda"
                                                      and args.compile)), ckpt


def lr_at(settings, step, total_steps):
    """The learning rate a run's schedule gives at `step` when it spans total_steps (as trainer.Run builds it)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings["lr"])
    schedule = get_scheduler(settings["lr_scheduler"], optimizer, num_warmup_steps=settings["warmup_steps"],
                             num_training_steps=total_steps)
    lambdas = getattr(schedule, "lr_lambdas", None)  # every diffusers schedule is a LambdaLR today
    return settings["lr"] * lambdas[0](step) if lambdas else None


def check_schedule(ckpt, settings, epochs, path):
    """Refuse a --resume whose --epochs stretches a decaying schedule enough to raise the rate at once: a cpu64
    run at the end of its 18-epoch cosine, resumed to 50, went from 0 to 1.4e-3 and diverged (loss 0.43 -> 1.87)."""
    before = ((ckpt.get("lr_scheduler") or {}).get("_last_lr") or [None])[0]
    if before is None or not ckpt.get("step") or not ckpt.get("epoch"):
        return
    after = lr_at(settings, ckpt["step"], epochs * (ckpt["step"] // ckpt["epoch"]))
    if after is not None and after > before + 0.1 * settings["lr"]:
        planned = ckpt.get("schedule_epochs") or (ckpt["epoch"] if before == 0 else None)  # 0: a finished run
        planned = f"--epochs {planned}" if planned else "its planned --epochs"
        raise ICLEVRError(f"{path}: its {settings['lr_scheduler']} learning rate has decayed to {before:.2g}, and "
                          f"--epochs {epochs} would stretch the schedule and raise it to {after:.2g} at once (a run "
                          f"resumed so diverged): resume with {planned}, or train a fresh run with --epochs {epochs} "
                          "in another --out")


def judge_of(args):
    """The judge of --eval-every: --judge, else ./checkpoint.pth or the shipped one; None when there is none."""
    if not args.eval_every or args.judge:
        return None if args.judge is None else str(args.judge)
    from evaluator import default_judge
    try:
        return str(default_judge())
    except ICLEVRError:
        return None  # train.load_judge says so and skips the scoring
