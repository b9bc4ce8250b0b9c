"""Export a train.py checkpoint in diffusers format (EMA weights when the run kept them).

Usage:
    python export.py --ckpt checkpoints/model_epoch_050.pt --out export/iclevr
    python export.py --ckpt checkpoints/model_epoch_050.pt --out export/iclevr --force   # replace an export
    python export.py --ckpt checkpoints/model_epoch_050.pt --generator --out weights/generator.pt

Writes, under --out:
    unet/                 UNet2DConditionModel.save_pretrained (config.json + safetensors)
    scheduler/            the sampling scheduler of the checkpoint's config, save_pretrained
    label_encoder.pt      {"weight": tensor}: the label-token nn.Embedding (presets with label tokens)
    vae/                  latent presets: the autoencoder, AutoencoderKL.save_pretrained (its latent
                          shift and scale are under "latent_stats" in iclevr_config.json)
    iclevr_config.json    the model config (preset, image_size, label_tokens, schedule, sample defaults, ...)

--generator writes one generation-only file instead (what weights/generator.pt is): the config,
the EMA weights (the UNet's matrices and kernels as int8 with one scale per output channel, the
rest fp16: model.compact_state), the epoch and the training log; no optimizer. Every script that
takes --ckpt reads it like a checkpoint.

Load it back without train.py's checkpoint:
    from export import load_exported
    model, config = load_exported("export/iclevr")      # a LabelUNet, ready for model.sample(...)
"""
import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from model import (
    GENERATOR_KIND,
    LabelUNet,
    compact_state,
    load_checkpoint,
    make_scheduler,
    weights_of,
)
from sampling import load_sampler
from utils import (
    TMP_SUFFIX,
    ArgumentParser,
    ICLEVRError,
    exit_on_user_error,
    load_torch_file,
    read_json,
    save_torch,
    sha256_of,
)

ENTRIES = ("unet", "scheduler", "label_encoder.pt", "vae", "iclevr_config.json")  # what an export holds
CONFIG_FILE, ENCODER_FILE = "iclevr_config.json", "label_encoder.pt"


def write_export(model, config, folder, source=None):
    """Write the entries of an export into an existing empty folder."""
    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet")
    make_scheduler(config, config["sample"]["sampler"]).save_pretrained(folder / "scheduler")
    if config["label_tokens"]:
        torch.save({"weight": model.tokens.weight.detach().cpu().clone()}, folder / ENCODER_FILE)
    record = dict(config, exported_from=source or {})
    if model.codec:
        model.codec.vae.save_pretrained(folder / "vae")
        record["latent_stats"] = {k: getattr(model.codec, k).flatten().tolist() for k in ("mean", "std")}
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=1) + "\n")


def export(model, config, out, force=False, source=None):
    """Export into `out`, built in a hidden folder beside it first: a crash never leaves half an export.

    An existing non-empty `out` is refused unless force; with force only the entries of an
    export are replaced there, any other file is left alone.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ICLEVRError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ICLEVRError(f"{out}: folder is not empty (pass --force to replace the export in it, "
                          "or choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}{TMP_SUFFIX}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_export(model, config, tmp, source)
        if out.is_dir() and any(out.iterdir()):
            for name in ENTRIES:
                old = out / name
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink(missing_ok=True)
            for entry in tmp.iterdir():
                os.replace(entry, out / entry.name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)  # a missing or empty folder: one rename
    except OSError as e:
        raise ICLEVRError(f"cannot write the export to {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_exported(folder):
    """(LabelUNet in eval mode, config) rebuilt from an export folder alone."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / "unet" / "config.json").is_file():
        raise ICLEVRError(f"{folder}: not an export of export.py (no {CONFIG_FILE} or unet/config.json)")
    config = read_json(folder / CONFIG_FILE)
    config.pop("exported_from", None)
    stats = config.pop("latent_stats", None)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    except (OSError, ValueError, RuntimeError) as e:
        raise ICLEVRError(f"{folder / 'unet'}: cannot load the UNet ({str(e).strip().splitlines()[0][:160]})") from None
    config.setdefault("unet", {k: v for k, v in unet.config.items() if not k.startswith("_")})
    with torch.device("meta"):  # the UNet is replaced at once: skip initialising a second one
        model = LabelUNet(config)
    model.unet = unet
    if model.codec:
        try:
            model.codec.vae = AutoencoderKL.from_pretrained(folder / "vae")
        except (OSError, ValueError, RuntimeError) as e:
            raise ICLEVRError(f"{folder / 'vae'}: cannot load the autoencoder ({str(e).strip().splitlines()[0][:160]})"
                              ) from None
        shape = model.codec.mean.shape
        model.codec.mean, model.codec.std = (torch.tensor(stats[k]).reshape(shape) for k in ("mean", "std"))
    if config["label_tokens"]:
        weight = load_torch_file(folder / ENCODER_FILE, "label encoder")
        if not isinstance(weight, dict) or not isinstance(weight.get("weight"), torch.Tensor):
            raise ICLEVRError(f"{folder / ENCODER_FILE}: not a label encoder (expected {{'weight': tensor}})")
        weight = weight["weight"]
        if weight.shape != model.tokens.weight.shape:
            raise ICLEVRError(f"{folder / ENCODER_FILE}: weight of shape {tuple(weight.shape)}, "
                              f"expected {tuple(model.tokens.weight.shape)}")
        model.tokens = torch.nn.Embedding.from_pretrained(weight, freeze=False)
    return model.eval(), config


def write_generator(ckpt, path, ema=True, source=None):
    """The generation-only file of a checkpoint, written atomically."""
    weights = weights_of(ckpt, ema)
    state, scales = compact_state(ckpt["ema_model"] if weights == "EMA" else ckpt["model"])
    save_torch(path, {"kind": GENERATOR_KIND, "config": ckpt["config"], "model": state, "int8_scales": scales,
                      "epoch": ckpt["epoch"], "step": ckpt.get("step"), "log": ckpt.get("log", []),
                      "weights": weights, "source": source or {}})


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="train.py checkpoint to export.")
    p.add_argument("--out", required=True, help="Folder to write the export to (must be empty or missing); "
                   "with --generator, the file to write.")
    p.add_argument("--generator", action="store_true", help="Write one generation-only file (config, EMA weights "
                   "in int8/fp16, no optimizer) instead of a diffusers folder.")
    p.add_argument("--force", action="store_true", help="Replace the export in a non-empty --out folder (or the "
                   "--generator file).")
    p.add_argument("--no-ema", action="store_true", help="Export the raw weights even when the checkpoint has EMA.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.generator:
        return main_generator(args, out)
    if out.is_dir() and any(out.iterdir()) and not args.force:  # refuse before the slow part
        raise ICLEVRError(f"{out}: folder is not empty (pass --force to replace the export in it, "
                          "or choose another --out)")
    drawer = load_sampler(args.ckpt, ema=not args.no_ema, device="cpu")
    ema = drawer.weights == "EMA"
    source = {"checkpoint": str(args.ckpt), "epoch": drawer.epoch, "weights": "ema" if ema else "raw"}
    export(drawer.model, drawer.config, out, args.force, source)
    print(f"wrote {out}/ ({drawer.config.get('preset')} preset, epoch {drawer.epoch}, {source['weights']} weights"
          f"{'' if ema or args.no_ema else ': the checkpoint has no EMA'})")
    return out


def main_generator(args, out):
    if out.is_dir() or (out.exists() and not args.force):
        raise ICLEVRError(f"{out}: exists (pass --force to replace the file, or choose another --out)")
    ckpt = load_checkpoint(args.ckpt)
    if ckpt.get("kind") == GENERATOR_KIND:
        raise ICLEVRError(f"{args.ckpt}: already a generation-only file: pass a train.py checkpoint")
    ema = weights_of(ckpt, not args.no_ema) == "EMA"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_generator(ckpt, out, ema, {"checkpoint": str(args.ckpt), "sha256": sha256_of(args.ckpt)})
    print(f"wrote {out} ({ckpt['config'].get('preset')} preset, epoch {ckpt['epoch']}, "
          f"{'EMA' if ema else 'raw'} weights, {out.stat().st_size / 1e6:.1f} MB)")
    return out


if __name__ == "__main__":
    main()
