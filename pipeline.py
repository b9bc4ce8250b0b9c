"""The diffusers pipeline of an export (export.py --out DIR): labels in, the images generate.py draws out.

    from pipeline import ICLEVRPipeline
    pipe = ICLEVRPipeline.from_pretrained("export/iclevr")                  # offline, a local folder
    images = pipe(labels=[["red sphere", "cyan cube"]], num_inference_steps=50, guidance_scale=3.0, seed=0).images
    images[0].save("scene.png")                                             # 64x64 PIL images

    python pipeline.py export/iclevr --labels "red sphere" "cyan cube" --n 8 --out scene.png   # a labelled grid

Components (model_index.json): `unet` (UNet2DConditionModel), `scheduler` (the preset's sampler),
`vae` (the latent presets' AutoencoderKL, else None) and `label_encoder` (LabelEncoder: the label
tokens, the latent statistics and the rest of the model's config, in label_encoder/config.json).
Drawing rebuilds the project's LabelUNet from these and calls sampling.sample, the one guided loop,
so for the same labels, seed, sampler, steps and guidance the pixels equal generate.py's PNGs.

The seed rule: image i (label list j's k-th copy is i = j * num_images_per_prompt + k) draws all its
noise from sampling.image_generator(seed, i), as generate.py does. `seed=S` is the reproducible way;
a `generator=torch.Generator().manual_seed(S)` is read as seed S (generator.initial_seed(), its state
is not used); neither: seed 0, generate.py's default, so a bare call repeats itself.

DiffusionPipeline.from_pretrained(DIR, custom_pipeline="path/to/pipeline.py", trust_remote_code=True)
loads the same pipeline offline where this repository's modules import (its folder on sys.path):
this file calls the project's sampler, it is not a standalone copy (docs/export.md).
"""
import copy
import sys
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ConfigMixin,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    ImagePipelineOutput,
    ModelMixin,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from safetensors import safe_open

from dataset import check_labels, encode_labels, to_64, to_uint8
from model import SAMPLERS, LabelUNet, make_scheduler
from sampling import check_interval, sample
from utils import NUM_LABELS, ArgumentParser, ICLEVRError, exit_on_user_error, read_json

if __name__ != "pipeline":  # run as a script, or loaded by diffusers as custom_pipeline code: model_index.json
    sys.modules.setdefault("pipeline", sys.modules[__name__])  # names the label encoder's module "pipeline", which
    # diffusers looks up in sys.modules (it imports no module a folder names)

# The model config entries the label encoder keeps (the UNet's and the autoencoder's are their own config.json).
MODEL_KEYS = ("preset", "image_size", "patch_size", "label_tokens", "scene_token", "self_condition", "schedule",
              "train", "sample", "overrides")
COMPONENTS = ("unet", "scheduler", "label_encoder", "vae")
OUTPUT_TYPES = ("pil", "pt", "np")


class LabelEncoder(ModelMixin, ConfigMixin):
    """What LabelUNet holds beyond the UNet: the label-token embedding (one learned token per label, a
    "none" token, the scene token), the latent shift and scale, and the model's config (preset, image
    size, patch size, schedule, sample defaults, the 24 label names in index order, its source)."""

    @register_to_config
    def __init__(self, labels=None, preset=None, image_size=64, patch_size=1, label_tokens=True, scene_token=False,
                 self_condition=False, token_dim=None, latent=None, latent_channels=None, schedule=None, train=None,
                 sample=None, overrides=None, exported_from=None):
        super().__init__()
        self.register_buffer("num_labels", torch.tensor(NUM_LABELS))  # the weights file is never empty (the seed
        # preset has no tokens and no latents), which diffusers needs to load a model
        if label_tokens:  # the same table as LabelUNet.tokens
            self.tokens = torch.nn.Embedding(NUM_LABELS + 1 + bool(scene_token), token_dim)
        if latent_channels:  # LatentCodec.mean / std: latents = (posterior mean - mean) / std
            self.register_buffer("latent_mean", torch.zeros(latent_channels, 1, 1))
            self.register_buffer("latent_std", torch.ones(latent_channels, 1, 1))

    @classmethod
    def from_label_unet(cls, model, config, labels, exported_from=None):
        """The encoder of a LabelUNet and its config (export.py), holding copies of its tensors."""
        latent = config.get("latent")
        encoder = cls(labels=list(labels), token_dim=config["unet"]["cross_attention_dim"] if model.label_tokens
                      else None, latent={k: v for k, v in latent.items() if k != "vae"} if latent else None,
                      latent_channels=model.codec.mean.shape[0] if model.codec else None,
                      exported_from=exported_from, **{k: config[k] for k in MODEL_KEYS if k in config})
        with torch.no_grad():
            if model.label_tokens:
                encoder.tokens.weight.copy_(model.tokens.weight)
            if model.codec:
                encoder.latent_mean.copy_(model.codec.mean)
                encoder.latent_std.copy_(model.codec.std)
        return encoder


def public(config):
    """A diffusers config as the keyword arguments that build it again."""
    return {k: copy.deepcopy(v) for k, v in config.items() if not k.startswith("_")}


def sampler_of(scheduler):
    """The project's sampler name (model.SAMPLERS) for the scheduler component's class."""
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        return "dpm-sde" if scheduler.config.algorithm_type == "sde-dpmsolver++" else "dpm"
    for kind, name in ((FlowMatchEulerDiscreteScheduler, "euler"), (DDIMScheduler, "ddim"), (DDPMScheduler, "ddpm")):
        if isinstance(scheduler, kind):
            return name
    raise ICLEVRError(f"scheduler {type(scheduler).__name__}: the pipeline samples with one of "
                      f"{', '.join(SAMPLERS)} (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, "
                      "FlowMatchEulerDiscreteScheduler), or pass sampler=")


def seed_of(seed=None, generator=None):
    """The run seed of the module docstring's rule: seed=S, else a torch.Generator's initial seed, else 0."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ICLEVRError("generator: pass one torch.Generator (read as its initial_seed()) or seed=S; "
                              "image i's noise always comes from (seed, i), as in generate.py")
        if seed is not None and seed != generator.initial_seed():
            raise ICLEVRError(f"seed={seed} and a generator seeded {generator.initial_seed()}: pass one of them")
        return generator.initial_seed()
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ICLEVRError(f"seed must be an integer, got {seed!r}")
    return 0 if seed is None else seed


AGAIN = "export it again with python export.py --ckpt CKPT --out DIR"


def check_folder(folder):
    """Refuse in one line what is not a whole export of export.py, before diffusers reads any of it.
    Returns {component: the tensor names of its safetensors files} for the models it holds."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ICLEVRError(f"{folder}: no such folder (an export of export.py is a folder)")
    if not (folder / "model_index.json").is_file():
        raise ICLEVRError(f"{folder}: not an export of export.py (no model_index.json); {AGAIN}")
    index = read_json(folder / "model_index.json")
    name = index.get("_class_name") if isinstance(index, dict) else None
    name = name[-1] if isinstance(name, list) and name else name
    if name != ICLEVRPipeline.__name__:
        raise ICLEVRError(f"{folder}: model_index.json describes a {name or 'foreign'} pipeline, not an "
                          f"{ICLEVRPipeline.__name__} of export.py")
    keys = {}
    for part in COMPONENTS:
        entry = index.get(part)
        if not (isinstance(entry, list) and entry and entry[0]):
            if part == "vae":
                continue
            raise ICLEVRError(f"{folder}/model_index.json: no {part} component; {AGAIN}")
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        files = sorted((folder / part).glob("*.safetensors"))
        if not (folder / part / config).is_file() or (part != "scheduler" and not files):
            raise ICLEVRError(f"{folder / part}: missing or incomplete (no {config} or no .safetensors weights: "
                              f"a truncated export?); {AGAIN}")
        if part != "scheduler":
            keys[part] = set().union(*map(tensor_names, files))
    return keys


def tensor_names(path):
    """The tensor names of a safetensors file, which must be whole (safetensors checks its header and length)."""
    try:
        with safe_open(path, framework="pt") as f:
            return set(f.keys())
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error type
        raise ICLEVRError(f"{path}: not a whole safetensors file ({str(e).splitlines()[0][:120]}); {AGAIN}") from None


class ICLEVRPipeline(DiffusionPipeline):
    """Label lists -> i-CLEVR scenes, as generate.py draws them (the module docstring)."""

    _optional_components = ["vae"]  # no model_cpu_offload_seq: the loop calls the modules through a LabelUNet

    def __init__(self, unet: UNet2DConditionModel, scheduler, label_encoder: ModelMixin,
                 vae: AutoencoderKL | None = None):  # label_encoder: a LabelEncoder (of either copy of this file)
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, label_encoder=label_encoder, vae=vae)

    @classmethod
    def from_label_unet(cls, model, config, labels, exported_from=None):
        """The pipeline of a LabelUNet (it shares the UNet and autoencoder), its scheduler the preset's sampler."""
        return cls(unet=model.unet, scheduler=make_scheduler(config, config["sample"]["sampler"]),
                   label_encoder=LabelEncoder.from_label_unet(model, config, labels, exported_from),
                   vae=model.codec.vae if model.codec else None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """An export folder (local, offline); a missing, truncated or foreign one is one ICLEVRError line."""
        folder = Path(pretrained_model_name_or_path)
        keys = check_folder(folder)
        shown, verbosity = diffusers_logging.is_progress_bar_enabled(), diffusers_logging.get_verbosity()
        diffusers_logging.disable_progress_bar()  # a bar per load is noise in the scripts' output, and what
        diffusers_logging.set_verbosity_error()  # diffusers only warns about is refused below
        try:
            pipe = super().from_pretrained(str(folder), **kwargs)
        except Exception as e:  # noqa: BLE001 -- diffusers and safetensors raise OSError, ValueError, their own...
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ICLEVRError(f"{folder}: cannot load the export ({reason})") from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
            if shown:
                diffusers_logging.enable_progress_bar()
        for part, names in keys.items():  # diffusers would only warn, and start a missing tensor from random values
            expected = set(getattr(pipe, part).state_dict())
            if names != expected:
                odd = sorted(expected - names) or sorted(names - expected)
                raise ICLEVRError(f"{folder / part}: its weights do not fit its config.json ({len(expected - names)} "
                                  f"missing, {len(names - expected)} unexpected, e.g. {odd[0]}); {AGAIN}")
        pipe.label_unet()  # the parts fit together, or one line now rather than at the first call
        return pipe

    @property
    def labels(self):
        """The 24 label names in index order (objects.json of the export)."""
        return list(self.label_encoder.config.labels)

    def model_config(self):
        """The model's config dict, as in its checkpoint (unet and autoencoder from their own configs)."""
        encoder = self.label_encoder.config
        config = {k: copy.deepcopy(encoder[k]) for k in MODEL_KEYS if encoder.get(k) is not None}
        config["unet"] = public(self.unet.config)
        if encoder.latent:
            if self.vae is None:
                raise ICLEVRError("the label encoder describes a latent model but the pipeline has no vae")
            config["latent"] = {**copy.deepcopy(encoder.latent), "vae": public(self.vae.config)}
        return config

    def label_unet(self):
        """A LabelUNet (eval mode) made of this pipeline's modules: what sampling.sample draws with."""
        config, encoder = self.model_config(), self.label_encoder
        with torch.device("meta"):  # every tensor is replaced by the pipeline's own at once
            model = LabelUNet(config)
        model.unet = self.unet
        if model.codec:
            model.codec.vae = self.vae
            model.codec.mean, model.codec.std = encoder.latent_mean, encoder.latent_std
        if model.label_tokens:
            if getattr(encoder, "tokens", None) is None or encoder.tokens.weight.shape != model.tokens.weight.shape:
                raise ICLEVRError(f"the label encoder's tokens do not fit the UNet (expected "
                                  f"{tuple(model.tokens.weight.shape)})")
            model.tokens = encoder.tokens
        if not len(self.labels) == int(encoder.num_labels) == NUM_LABELS:
            raise ICLEVRError(f"the label encoder holds {len(self.labels)} label names for {int(encoder.num_labels)} "
                              f"labels; the model knows {NUM_LABELS}")
        return model.eval()

    def encode(self, labels, copies=1):
        """(n, 24) multi-hot of a list of label lists (or one label list), each repeated `copies` times."""
        scenes = [labels] if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels) \
            else labels
        if not isinstance(scenes, (list, tuple)) or not scenes:
            raise ICLEVRError('labels: expected a list of label lists such as [["red sphere", "cyan cube"]]')
        label2idx = {name: i for i, name in enumerate(self.labels)}
        for j, scene in enumerate(scenes):
            try:
                check_labels(scene, label2idx, f"labels[{j}]")
            except ICLEVRError as e:
                unknown = isinstance(scene, list) and any(isinstance(x, str) and x not in label2idx for x in scene)
                raise ICLEVRError(f"{e}; valid: {', '.join(self.labels)}" if unknown else str(e)) from None
        if not isinstance(copies, int) or copies < 1:
            raise ICLEVRError(f"num_images_per_prompt must be at least 1, got {copies}")
        return torch.stack([encode_labels(scene, label2idx) for scene in scenes for _ in range(copies)])

    @torch.no_grad()
    def __call__(self, labels, num_inference_steps=None, guidance_scale=None, generator=None, seed=None,
                 num_images_per_prompt=1, guidance_interval=None, sampler=None, batch_size=64, output_type="pil",
                 return_dict=True, callback=None):
        """Images of label lists at 64x64, the judge's size (generate.py's PNGs, pixel for pixel).

        labels: a list of 1-3 label lists of the 24 labels, e.g. [["red sphere", "cyan cube"]] (one
        list alone is one scene). num_inference_steps, guidance_scale, guidance_interval (lo, hi) and
        sampler default to the preset's (sampler: the scheduler component's kind). Seed rule: the module
        docstring. batch_size: images per forward pass (as generate.py --batch-size). output_type: "pil"
        (uint8, as the PNGs), "pt" ((n, 3, 64, 64) float in [0, 1]) or "np" ((n, 64, 64, 3)).
        callback: sampling.sample's. Returns ImagePipelineOutput(images), or (images,) without return_dict.
        """
        if output_type not in OUTPUT_TYPES:
            raise ICLEVRError(f"output_type {output_type!r}: use one of {', '.join(OUTPUT_TYPES)}")
        multi_hot = self.encode(labels, num_images_per_prompt)
        model, config = self.label_unet(), self.model_config()
        interval = check_interval(guidance_interval or config["sample"].get("guidance_interval"))
        images = sample(model, config, multi_hot, sampler or sampler_of(self.scheduler), num_inference_steps,
                        guidance_scale, seed_of(seed, generator), batch_size, 0, callback, interval)
        images = to_64(images.float())
        if output_type == "pil":
            images = [Image.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()]
        else:
            images = (images + 1) / 2
            images = images.permute(0, 2, 3, 1).numpy() if output_type == "np" else images
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def build_parser():
    p = ArgumentParser(description="Draw a labelled grid of one scene with an export folder of export.py.")
    p.add_argument("folder", help="The export folder (python export.py --ckpt CKPT --out DIR).")
    p.add_argument("--labels", nargs="+", metavar="LABEL", required=True,
                   help='One scene of 1-3 labels such as "red sphere" "cyan cube".')
    p.add_argument("--n", type=int, default=8, help="How many images of that scene (default 8).")
    p.add_argument("--out", default="figures/scene.png", help="The grid PNG to write (default: figures/scene.png).")
    p.add_argument("--steps", type=int, help="Sampling steps (default: the preset's).")
    p.add_argument("--guidance", type=float, help="Classifier-free guidance scale W; 1 = none (default: the preset's).")
    p.add_argument("--seed", type=int, default=0, help="Seed: image i uses noise seeded by (seed, i), as generate.py.")
    return p


@exit_on_user_error
def main(argv=None):
    from grid import save_grid
    args = build_parser().parse_args(argv)
    if args.n < 1:
        raise ICLEVRError(f"--n must be at least 1, got {args.n}")
    pipe = ICLEVRPipeline.from_pretrained(args.folder)
    images = pipe(labels=[args.labels], num_images_per_prompt=args.n, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, seed=args.seed).images
    image = save_grid(images, args.out, label_lists=[args.labels] * args.n)
    print(f"wrote {args.out} ({args.n} images of {' + '.join(args.labels)}, {image.width}x{image.height})")
    return Path(args.out)


if __name__ == "__main__":
    main()
