"""Export a train.py checkpoint as a diffusers pipeline folder (EMA weights when the run kept them).

Usage:
    python export.py --out export/iclevr                  # the shipped generator
    python export.py --ckpt checkpoints/model_epoch_050.pt --out export/iclevr
    python export.py --ckpt checkpoints/model_epoch_050.pt --out export/iclevr --force   # replace an export
    python export.py --ckpt checkpoints/model_epoch_050.pt --generator --out weights/generator.safetensors

Writes, under --out, pipeline.ICLEVRPipeline.save_pretrained (every tensor in safetensors, no pickle):
    model_index.json      the pipeline and its components (what DiffusionPipeline.from_pretrained reads)
    unet/                 UNet2DConditionModel: config.json + diffusion_pytorch_model.safetensors
    scheduler/            the preset's sampler (scheduler_config.json)
    vae/                  latent presets only: the autoencoder, AutoencoderKL
    label_encoder/        pipeline.LabelEncoder: the label tokens and latent statistics (safetensors), and in
                          config.json the preset, image size, schedule, sample defaults, the 24 labels, the source
    README.md             the model card: what it draws, the labels, data, training length, sampler, scores, limits

Load it (offline; the folder is refused in one line when it is truncated or not an export):
    from pipeline import ICLEVRPipeline
    pipe = ICLEVRPipeline.from_pretrained("export/iclevr")
    images = pipe(labels=[["red sphere", "cyan cube"]], seed=0).images     # generate.py's pixels, as PIL
    model, config = load_exported("export/iclevr")     # or the LabelUNet itself, for sampling.sample(...)
More in docs/export.md (DiffusionPipeline.from_pretrained with custom_pipeline, the seed rule, the card).

--generator writes one generation-only file instead (what weights/generator.safetensors is): the config,
the EMA weights (the UNet's matrices and kernels as int8 with one scale per output channel, the
rest fp16: model.compact_state), the epoch and the training log; no optimizer. Every script that
takes --ckpt reads it like a checkpoint. A name ending in .safetensors gets safetensors (the tensors
under "model/" and "int8_scales/", the rest as JSON metadata), any other torch's format; given a
generator file, --generator rewrites it in the other format (the same weights):
    python export.py --ckpt my_generator.pt --generator --out my_generator.safetensors
--decoder FILE puts another decoder into it: an autoencoder file trained with train_autoencoder.py
--decoder-only from the generator's own, whose encoder and latents are the same (refused otherwise):
    python export.py --ckpt weights/generator.safetensors --generator --decoder runs/ae_decoder.safetensors \
        --force --out weights/generator.safetensors
"""
import os
import shutil
from pathlib import Path

import torch

from autoencoder import DECODER_PARTS, load_autoencoder
from dataset import load_objects
from model import (
    GENERATOR_KIND,
    SHIPPED_GENERATOR,
    compact_state,
    count_parameters,
    load_checkpoint,
    model_from_checkpoint,
    save_generator,
    weights_of,
)
from pipeline import MODEL_KEYS, ICLEVRPipeline
from utils import (
    NUM_LABELS,
    ROOT,
    TMP_SUFFIX,
    ArgumentParser,
    ICLEVRError,
    exit_on_user_error,
    sha256_of,
    shared_file_mode,
)

ENTRIES = ("model_index.json", "unet", "scheduler", "vae", "label_encoder", "README.md")  # what an export holds
OLD_ENTRIES = ("label_encoder.pt", "iclevr_config.json")  # the format before the pipeline, removed by --force
KNOWN_CONFIG = {*MODEL_KEYS, "unet", "latent"}  # what the pipeline stores of a model config


def label_names(objects=ROOT / "objects.json"):
    """The 24 label names of objects.json in index order."""
    label2idx = load_objects(objects)
    if len(label2idx) != NUM_LABELS:
        raise ICLEVRError(f"{objects}: {len(label2idx)} labels, but the model knows {NUM_LABELS}")
    return sorted(label2idx, key=label2idx.get)


def write_export(model, config, folder, source=None, labels=None, log=None, name="DIR"):
    """Write the entries of an export into an existing empty folder; `name`: the folder in the card's snippet."""
    unknown = sorted(set(config) - KNOWN_CONFIG)
    if unknown:
        raise ICLEVRError(f"the model config has entries the export does not store: {', '.join(unknown)}")
    labels = labels or label_names()
    pipe = ICLEVRPipeline.from_label_unet(model, config, labels, source or {})
    pipe.save_pretrained(folder, safe_serialization=True)
    (Path(folder) / "README.md").write_text(model_card(model, config, labels, source or {}, log or [], name))
    for path in Path(folder).rglob("*"):  # safetensors writes its files 0600: an export is meant to be shared
        if path.is_file():
            path.chmod(shared_file_mode())


def model_card(model, config, labels, source, log, name="DIR"):
    """README.md of an export: the Hub's YAML header (text-to-image: the input is words, if only 24 of them;
    unconditional-image-generation would hide that), then what the model draws and how it was made."""
    size, sample, schedule = config["image_size"], config["sample"], config["schedule"]
    flow = schedule.get("kind") == "flow"
    epoch, step, weights = source.get("epoch"), source.get("step"), source.get("weights", "ema")
    shown = "at 64x64" if size >= 64 else f"at {size}x{size}, upsampled (bilinear, antialiased) to 64x64"
    latent = (f" on the {'x'.join(map(str, model.codec.latent_shape))} latents of a frozen "
              f"{count_parameters(model.codec) / 1e6:.2f} M-parameter autoencoder (`vae/`, AutoencoderKL)"
              if model.codec else "")
    if config["label_tokens"]:
        how = ("each label present is one learned token (`label_encoder/`) for cross-attention"
               + (", and the multi-hot of the labels is added to the time embedding"
                  if config["unet"].get("class_embed_type") == "projection" else ""))
    else:
        how = "the multi-hot of the labels is the one cross-attention token"
    objective = (f"rectified flow (flow matching), {schedule['num_train_timesteps']} training timesteps" if flow else
                 f"DDPM, {schedule['num_train_timesteps']} timesteps, {schedule.get('beta_schedule', 'linear')} betas, "
                 f"predicting {schedule.get('prediction_type', 'epsilon')}")
    interval = sample.get("guidance_interval")
    drop = (config.get("train") or {}).get("cond_dropout")
    dropout = (f"labels dropped {drop:.0%} of the time to learn classifier-free guidance" if drop else
               "labels never dropped (no classifier-free guidance: sample with guidance 1)" if drop == 0 else
               "label dropout not recorded")
    rows = [r for r in log if r.get("test_acc") or r.get("new_test_acc")]
    table = ["| index | label " * 3 + "|", "|---|---" * 3 + "|"]
    table += ["| " + " | ".join(f"{i} | {labels[i]}" for i in range(r, len(labels), 8)) + " |" for r in range(8)]
    if rows:
        scores = ("Official accuracy (per image the judge's top-k classes, k = its label count; hits over all labels) "
                  "of seed-0 samples of the EMA weights with the preset's sampler, drawn and scored by "
                  "`train.py --eval-every` as it trained, by "
                  + (", ".join(sorted({f"`{r['judge']}`" for r in rows if r.get("judge")}))
                     + " (the judge that run was given; `weights/judge.pth` is this codebase's, trained on its renders)"
                     if all(r.get("judge") for r in rows) else
                     "that run's `--judge` (by default `./checkpoint.pth` when it existed, else this codebase's "
                     "`weights/judge.pth`, trained on its renders; this log does not name the file)")
                  + ". Another judge may score the same weights otherwise. "
                  "Measured on this codebase's renders and judge: not comparable with the course's official numbers."
                  + (" These are the EMA weights' scores; this export holds the raw weights." if weights == "raw"
                     else "") + "\n\n| epoch | test.json | new_test.json |\n|---|---|---|\n"
                  + "".join(f"| {r['epoch']} | {r.get('test_acc') or '-'} | {r.get('new_test_acc') or '-'} |\n"
                            for r in rows))
    else:
        scores = ("Not measured: the training log holds no scores (`train.py --eval-every N` records them). Score "
                  "images with `python generate.py` and `python evaluate_generated.py` in the codebase.\n")
    return f"""---
library_name: diffusers
license: other
pipeline_tag: text-to-image
tags:
- diffusers
- label-conditioned
- class-conditional
- classifier-free-guidance
- {'flow-matching' if flow else 'ddpm'}
- i-clevr
- clevr
---

# i-CLEVR scenes from labels (`{config.get('preset')}` preset, epoch {epoch})

A diffusion model that draws CLEVR-like scenes of 1 to 3 objects from a list of labels such as
`["red sphere", "cyan cube"]`: RGB images {shown}. It knows exactly the 24 labels below (8 colors x 3
shapes) and nothing else; it reads no free text. Written by `export.py` of the i-CLEVR conditional
diffusion codebase, whose `pipeline.py` (`ICLEVRPipeline`) draws with it.

## Labels

The index of each label in the model's multi-hot (the course's `objects.json`):

{chr(10).join(table)}

## Training data

`train.py`'s training set: this codebase's own renders (`render_iclevr.py`, a numpy CLEVR-like ray caster)
of the scenes of the course's `train.json`, 18,009 images; not the course's i-CLEVR images (Blender). The
checkpoint does not record its image folder: if it was trained on other images, correct this paragraph.

## Model and training

- A {count_parameters(model.unet) / 1e6:.2f} M-parameter UNet2DConditionModel (`unet/`){latent}; {how}.
- Objective: {objective}; {dropout}.
- Trained {epoch} epochs ({step if step is not None else 'unknown'} optimizer steps); this export holds the
  {'EMA' if weights == 'ema' else 'raw'} weights of `{source.get('checkpoint', 'unknown')}`
  {f"(sha256 {source['sha256'][:12]})" if source.get('sha256') else ''}.

## Sampling

Defaults: {sample['sampler']}, {sample['steps']} steps, classifier-free guidance {sample['guidance']:g}
{f"(at noise levels {interval[0]:g}-{interval[1]:g} only)" if interval else "at every step"}. Image i draws all its
noise from the seed (S, i), as the codebase's `generate.py`: `pipe(..., seed=S)` gives its PNGs pixel for pixel;
a `generator=torch.Generator().manual_seed(S)` counts as seed S; without either the seed is 0.

## Scores

{scores}
## Limits

- Scenes of 1 to 3 objects, each label at most once; nothing about positions, sizes or materials.
- The look of `render_iclevr.py`'s renders (its camera, floor, light), not the Blender i-CLEVR images;
  judges trained on other images read these less well.
- Small images: {size}x{size} inside the model, 64x64 out.
- No license has been chosen for the codebase or these weights yet (`license: other`): ask its authors.

## How to load

Offline, in a checkout of the codebase (`pipeline.py` calls its sampler, so the two stay one loop):

```python
from pipeline import ICLEVRPipeline
from grid import save_grid
pipe = ICLEVRPipeline.from_pretrained("{name}")
labels = [["red sphere", "cyan cube"]] * 8
save_grid(pipe(labels=labels, seed=0).images, "grid.png", label_lists=labels)
```

With diffusers' own loader (the codebase's folder on `sys.path`):
`DiffusionPipeline.from_pretrained("{name}", custom_pipeline="path/to/pipeline.py", trust_remote_code=True)`.
"""


def export(model, config, out, force=False, source=None, labels=None, log=None):
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
        write_export(model, config, tmp, source, labels, log, str(out))
        if out.is_dir() and any(out.iterdir()):
            for name in ENTRIES + OLD_ENTRIES:
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
    """(LabelUNet in eval mode, config) rebuilt from an export folder alone (ICLEVRPipeline.from_pretrained)."""
    pipe = ICLEVRPipeline.from_pretrained(folder)
    return pipe.label_unet(), pipe.model_config()


def swap_decoder(state, path, config, ckpt_name):
    """`state` (a model state_dict) with the decoder of the autoencoder file `path`, whose encoder, quant_conv and
    latent statistics must equal the state's to fp16 (what generator files keep): the latents stay the same."""
    if not config.get("latent"):
        raise ICLEVRError(f"--decoder: {ckpt_name} is a pixel model, it has no autoencoder")
    new = load_autoencoder(path, config["latent"]).state_dict()
    if any(not k.startswith(DECODER_PARTS) and not torch.equal(state[f"codec.{k}"].half(), v.half())
           for k, v in new.items()):
        raise ICLEVRError(f"{path}: its encoder or latent statistics differ from {ckpt_name}'s, so its decoder does "
                          "not fit the generator's latents (train one with train_autoencoder.py --init "
                          "<the generator's autoencoder> --decoder-only)")
    return {**state, **{f"codec.{k}": v.to(state[f"codec.{k}"].dtype) for k, v in new.items()
                        if k.startswith(DECODER_PARTS)}}


def generator_of(ckpt, ema=True, source=None):
    """The generation-only form of a train.py checkpoint (what a generator file holds)."""
    weights = weights_of(ckpt, ema)
    state, scales = compact_state(ckpt["ema_model"] if weights == "EMA" else ckpt["model"])
    return {"kind": GENERATOR_KIND, "config": ckpt["config"], "model": state, "int8_scales": scales,
            "epoch": ckpt["epoch"], "step": ckpt.get("step"), "log": ckpt.get("log", []), "weights": weights,
            "source": source or {}}


def write_generator(ckpt, path, ema=True, source=None):
    """The generation-only file of a checkpoint, written atomically."""
    save_generator(path, generator_of(ckpt, ema, source))


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=None, help="train.py checkpoint or generator file to export (default: the "
                   "shipped weights/generator.safetensors).")
    p.add_argument("--out", required=True, help="Folder to write the export to (must be empty or missing); "
                   "with --generator, the file to write (.safetensors: safetensors, else torch's format).")
    p.add_argument("--generator", action="store_true", help="Write one generation-only file (config, EMA weights "
                   "in int8/fp16, no optimizer) instead of a diffusers folder.")
    p.add_argument("--force", action="store_true", help="Replace the export in a non-empty --out folder (or the "
                   "--generator file).")
    p.add_argument("--decoder", default=None, help="With --generator: replace the autoencoder's decoder with this "
                   "autoencoder file's (train_autoencoder.py --decoder-only); refused when its encoder or latent "
                   "statistics differ from the generator's, whose latents would then no longer match.")
    p.add_argument("--no-ema", action="store_true", help="Export the raw weights even when the checkpoint has EMA.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices, stored in the export.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.ckpt is None:
        args.ckpt = str(SHIPPED_GENERATOR)
        print(f"no --ckpt: exporting the shipped generator {SHIPPED_GENERATOR.relative_to(ROOT)}")
    out = Path(args.out)
    if args.generator:
        return main_generator(args, out)
    if out.is_dir() and any(out.iterdir()) and not args.force:  # refuse before the slow part
        raise ICLEVRError(f"{out}: folder is not empty (pass --force to replace the export in it, "
                          "or choose another --out)")
    state = load_checkpoint(args.ckpt)
    model, config = model_from_checkpoint(state, ema=not args.no_ema)
    ema = weights_of(state, not args.no_ema) == "EMA"
    labels = label_names(args.objects)
    source = {"checkpoint": str(args.ckpt), "sha256": sha256_of(args.ckpt), "epoch": state["epoch"],
              "step": state.get("step"), "weights": "ema" if ema else "raw"}
    export(model, config, out, args.force, source, labels, state.get("log"))
    print(f"wrote {out}/ ({config.get('preset')} preset, epoch {state['epoch']}, {source['weights']} weights"
          f"{'' if ema or args.no_ema else ': the checkpoint has no EMA'}; load it with "
          f"ICLEVRPipeline.from_pretrained({str(out)!r}), see {out / 'README.md'})")
    return out


def main_generator(args, out):
    if out.is_dir() or (out.exists() and not args.force):
        raise ICLEVRError(f"{out}: exists (pass --force to replace the file, or choose another --out)")
    ckpt = load_checkpoint(args.ckpt, expand=False)
    if args.decoder:
        return main_decoder(args, out, ckpt)
    if ckpt.get("kind") == GENERATOR_KIND:  # a generator file: the same contents in --out's format
        if Path(args.ckpt).suffix == out.suffix:
            raise ICLEVRError(f"{args.ckpt}: already a generator file in that format: pass a train.py "
                              "checkpoint, or an --out of the other format (.safetensors or .pt)")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_generator(out, ckpt)
        kind = "safetensors" if out.suffix == ".safetensors" else "torch"
        print(f"wrote {out} (the generator file {args.ckpt} in {kind} format, {out.stat().st_size / 1e6:.1f} MB)")
        return out
    ema = weights_of(ckpt, not args.no_ema) == "EMA"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_generator(ckpt, out, ema, {"checkpoint": str(args.ckpt), "sha256": sha256_of(args.ckpt)})
    print(f"wrote {out} ({ckpt['config'].get('preset')} preset, epoch {ckpt['epoch']}, "
          f"{'EMA' if ema else 'raw'} weights, {out.stat().st_size / 1e6:.1f} MB)")
    return out


def main_decoder(args, out, ckpt):
    """--generator --decoder: the generator file of a checkpoint or generator file, with the new decoder."""
    if ckpt.get("kind") != GENERATOR_KIND:  # a train.py checkpoint: its generation-only form first
        ckpt = generator_of(ckpt, not args.no_ema, {"checkpoint": str(args.ckpt), "sha256": sha256_of(args.ckpt)})
    ckpt["model"] = swap_decoder(ckpt["model"], args.decoder, ckpt["config"], args.ckpt)
    ckpt["source"] = {**ckpt.get("source", {}), "decoder": str(args.decoder), "decoder_sha256": sha256_of(args.decoder)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_generator(out, ckpt)
    print(f"wrote {out} ({args.ckpt} with the decoder of {args.decoder}, {out.stat().st_size / 1e6:.1f} MB)")
    return out


if __name__ == "__main__":
    main()
