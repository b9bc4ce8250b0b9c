"""Train the autoencoder of a latent preset on the training renders; write weights/autoencoder.safetensors.

Usage:
    python train_autoencoder.py                        # the cpu preset's codec -> weights/autoencoder.safetensors
    python train_autoencoder.py --preset cpu64 --epochs 40 --resume   # 64x64 -> weights/autoencoder_cpu64.safetensors
    python train_autoencoder.py --preset tiny_latent --epochs 2 --out tiny_autoencoder.pt
    python train_autoencoder.py --preset cpu64 --init weights/autoencoder_cpu64.safetensors --decoder-only \
        --epochs 24 --lr 5e-4 --object-weight 200 --out runs/ae_decoder.safetensors   # same latents, sharper decoder
    python train_autoencoder.py --help

The network is the preset's "latent" entry (diffusers AutoencoderKL on 2x2 patches); the loss is
the mean squared reconstruction error plus a very small KL term that keeps the latents smooth.
Afterwards the latents of the training images give the per-channel shift and scale stored with
the weights, and the reconstructions of held-out renders (render seed 1, never trained on) are
measured: their error, and, when a judge is found, the judge's accuracy on them beside its
accuracy on the originals. The judge only scores here; it takes no part in training.
The file is written once, at the end, atomically; the training state is saved after every epoch
beside it (OUT.resume.pt), so an interrupted run continues with --resume exactly where it stopped.
On a CPU with AMX-BF16 (and on GPUs) --precision auto trains under bf16 autocast: 2.2-2.5x faster
per step on an AMX Xeon (docs/latent.md); the statistics and the held-out report stay fp32.
"""
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from autoencoder import DECODER_PARTS, KIND, LatentCodec, default_file, load_autoencoder, save_autoencoder
from dataset import ICLEVRDataset, to_64, to_model_range
from evaluator import refuse_judge
from model import PRESETS, preset_config
from repa import LAYERS, load_encoder
from utils import (
    ArgumentParser,
    ICLEVRError,
    autocast,
    exit_on_user_error,
    load_torch_file,
    pick_device,
    resolve_precision,
    rng_states,
    save_torch,
    set_rng_states,
)


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    latent = [name for name, preset in PRESETS.items() if preset.get("latent")]
    p.add_argument("--preset", choices=latent, default="cpu", help="Latent preset whose autoencoder to train.")
    p.add_argument("--data-root", default="iclevr", help="Folder of training images (rendered or the course's).")
    p.add_argument("--json", default="train.json", help="Training label file (train.json style).")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--out", default=None, help="Where to write the autoencoder file (default: the preset's shipped "
                   "file, weights/autoencoder.safetensors for cpu, weights/autoencoder_PRESET.safetensors for the "
                   "others; a name ending in .safetensors is written as safetensors, any other in torch's format).")
    p.add_argument("--epochs", type=int, default=24, help="Passes over the training images.")
    p.add_argument("--batch-size", type=int, default=64, help="Images per optimizer step.")
    p.add_argument("--lr", type=float, default=2e-3, help="Peak learning rate of the one-cycle schedule (AdamW).")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="Weight of the KL term against the squared error.")
    p.add_argument("--object-weight", type=float, default=0.0, help="Extra weight of pixels that stand out from "
                   "their surroundings (objects, edges) in the squared error; 0 weighs every pixel alike.")
    p.add_argument("--perceptual", default=None, metavar="FILE", help="Add a perceptual loss: the distance of the "
                   "reconstructions' features from the originals' under this course-format ResNet18 (train it with "
                   "python train_evaluator.py --seed 2; a judge that scores is refused).")
    p.add_argument("--perceptual-weight", type=float, default=0.01, help="Weight of the perceptual loss against "
                   "the squared error (with --perceptual; 0.01 gives the two about equal gradients on the cpu64 "
                   "decoder).")
    p.add_argument("--init", default=None, help="Start from this autoencoder file's weights (to train one further) "
                   "instead of a random initialisation.")
    p.add_argument("--decoder-only", action="store_true", help="With --init: train only the decoder; the encoder "
                   "and the latent statistics stay the init's, so the latents, and every generator and verifier "
                   "trained on them, stay valid (export.py --decoder puts the new decoder into a generator file).")
    p.add_argument("--heldout", type=int, default=1000, help="Held-out renders (seed 1) to measure reconstructions on.")
    p.add_argument("--heldout-root", default="renders/heldout_val", help="Folder of those renders (rendered on first "
                   "use; the judge's validation renders).")
    p.add_argument("--judge", default=None, help="Judge that scores the reconstructions (default: ./checkpoint.pth, "
                   "else the shipped weights/judge.pth; neither: not scored).")
    p.add_argument("--seed", type=int, default=0, help="Seed of initialisation, shuffling and flips.")
    p.add_argument("--resume", action="store_true", help="Continue the run saved in OUT.resume.pt (written after "
                   "every epoch) with the same flags; without that file, start fresh.")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="Autocast precision of "
                   "the training steps; auto: bf16 on a GPU or a CPU with AMX-BF16, where it is faster, else fp32.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    return p


def resume_path(out):
    return Path(out).with_name(Path(out).name + ".resume.pt")


RESUME_KEYS = ("preset", "json", "epochs", "batch_size", "lr", "kl_weight", "object_weight", "perceptual",
               "perceptual_weight", "init", "decoder_only", "seed")
# flags added later: what a state saved before them ran with
RESUME_DEFAULTS = {"decoder_only": False, "perceptual": None, "perceptual_weight": 0.01}


def load_resume_state(args, config):
    """The saved training state of this run, or None when there is none; another run's state is refused."""
    path = resume_path(args.out)
    if not (args.resume and path.is_file()):
        if args.resume:
            print(f"--resume: no {path} yet, starting a fresh run")
        return None
    state = load_torch_file(path, "autoencoder training state")
    if not isinstance(state, dict) or state.get("kind") != KIND + "-state":
        raise ICLEVRError(f"{path}: not a training state written by train_autoencoder.py")
    saved = state["flags"]
    changed = [k for k in RESUME_KEYS if saved.get(k, RESUME_DEFAULTS.get(k)) != getattr(args, k)]
    if changed or state["config"] != config:
        what = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in changed) or "the preset's config"
        raise ICLEVRError(f"{path} is a run with other settings ({what}): resume with those, or pass another --out")
    return state


def weighted_mse(y, x, object_weight):
    """Squared error with pixels weighted 1 + object_weight * (how far they stand out from a 7x7 blur of the image).

    The ground fills most of a CLEVR scene, so a plain mean spends the loss on it; the judge reads the
    objects' outlines and shading, which is where this puts the weight (no masks needed: works on any image).
    """
    stand_out = (x - F.avg_pool2d(x, 7, stride=1, padding=3, count_include_pad=False)).abs().mean(1, keepdim=True)
    weight = 1 + object_weight * stand_out
    return ((y - x) ** 2 * weight).mean() / weight.mean()


class PerceptualLoss(torch.nn.Module):
    """Feature distance under a frozen course-format ResNet18 (LPIPS's form, Zhang et al. 2018, without its
    learned channel weights): the features after layer1, layer2 and layer3 (16x16, 8x8, 4x4 of the 64x64
    image), each unit-normalised over channels per position; the squared differences, summed over channels,
    averaged over positions and summed over the three layers (0 to 12).

    Hand-written because the lpips package's networks are ImageNet downloads; here the encoder is one
    trained by train_evaluator.py with another seed, refused when it is a judge that scores (evaluator.refuse_judge).
    """
    TAPS = ("layer1", "layer2", "layer3")

    def __init__(self, path, judge=None):
        super().__init__()
        self.encoder = load_encoder(path, "--perceptual")  # a missing or foreign file: one line
        self.sha256 = refuse_judge(path, "--perceptual", judge)

    def forward(self, y, x):
        """The distance of reconstructions y from originals x (images in [-1, 1], read at 64x64)."""
        loss, y, x = 0.0, to_64(y), to_64(x)
        for name, layer in zip(LAYERS, self.encoder):
            y = layer(y)
            with torch.no_grad():
                x = layer(x)
            if name in self.TAPS:
                loss = loss + (F.normalize(y.float(), dim=1) - F.normalize(x.float(), dim=1)).pow(2).sum(1).mean()
        return loss


def reconstruct(codec, images, batch=500):
    """uint8 images -> reconstructions in [-1, 1] at the codec's resolution (and the originals there)."""
    with torch.no_grad():
        x = F.interpolate(to_model_range(images), size=codec.image_size, mode="bilinear", antialias=True,
                          align_corners=False)
        return x, torch.cat([codec.decode(codec.encode(chunk)).clamp(-1, 1) for chunk in x.split(batch)])


def heldout_report(codec, args):
    """Reconstruction error on held-out renders and, when a judge exists, its accuracy before and after."""
    from evaluator import evaluation_model
    from train_evaluator import random_renders
    images, multi_hot = random_renders(args.heldout_root, args.heldout, 1, args.objects)
    x, y = reconstruct(codec, images)
    report = {"heldout_mse": F.mse_loss(y, x).item()}
    try:
        judge = evaluation_model(args.judge)  # None: ./checkpoint.pth, else the shipped judge
    except ICLEVRError as e:
        if args.judge:
            raise
        print(f"note: {e}: reconstructions not scored")
        return report
    report.update(judge=judge.checkpoint, judge_sha256=judge.sha256, judge_on_originals=judge.eval(to_64(x), multi_hot),
                  judge_on_reconstructions=judge.eval(to_64(y), multi_hot))
    return report


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.out = args.out or str(default_file(args.preset))
    if not (args.epochs > 0 and args.batch_size > 0 and args.lr > 0 and args.heldout > 0
            and args.kl_weight >= 0 and args.perceptual_weight >= 0):
        raise ICLEVRError("--epochs, --batch-size, --lr and --heldout must be positive, --kl-weight and "
                          "--perceptual-weight at least 0")
    if args.decoder_only and not args.init:
        raise ICLEVRError("--decoder-only trains the decoder of an existing autoencoder: pass its file with --init")
    config = preset_config(args.preset)["latent"]
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after the training
    state = load_resume_state(args, config)
    perceptual = PerceptualLoss(args.perceptual, args.judge).to(device) if args.perceptual else None
    torch.manual_seed(args.seed)
    data = ICLEVRDataset(args.data_root, args.json, args.objects, image_size=config["image_size"], preload=True)
    if data.names is None:
        raise ICLEVRError(f"{args.json} is a test.json-style list: training needs a train.json-style dict")
    codec = load_autoencoder(args.init, config).train().requires_grad_(True) if args.init else LatentCodec(config)
    if args.decoder_only:  # the latent space is the init's: all but the decoder frozen (the statistics are buffers)
        for name, param in codec.named_parameters():
            param.requires_grad_(name.startswith(DECODER_PARTS))
    codec.to(device)
    opt = torch.optim.AdamW([p for p in codec.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    steps = max(1, round(args.epochs * len(data) / args.batch_size))
    per_epoch = -(-len(data) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen, first, before = torch.Generator().manual_seed(args.seed), 0, 0.0
    if state:  # continue exactly: weights, optimizer, schedule, the batch generator and the global RNGs
        codec.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        set_rng_states(state["rng"])
        first, before = state["step"], state["seconds"]
        print(f"resuming {resume_path(args.out)} at step {first} of {steps}")
    start = time.time()
    print(f"training on {device} in {precision}")
    bar = tqdm(range(first, steps), initial=first, total=steps, desc="training the autoencoder", unit="step")
    for step in bar:
        x = to_model_range(data.images[torch.randint(len(data), (args.batch_size,), generator=gen)])
        flip = torch.rand(len(x), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        noise = torch.randn((len(x), *codec.latent_shape), generator=gen)
        x, noise = x.to(device), noise.to(device)
        with autocast(precision, device), torch.set_grad_enabled(not args.decoder_only):
            posterior = codec.posterior(x)
            z = posterior.mean + posterior.std * noise
        with autocast(precision, device):
            y = codec.decode_raw(z).float()
        mse = F.mse_loss(y, x)
        rec = weighted_mse(y, x, args.object_weight) if args.object_weight else mse
        if perceptual:
            with autocast(precision, device):
                perc = perceptual(y, x)
            rec = rec + args.perceptual_weight * perc
        loss = rec if args.decoder_only else rec + args.kl_weight * posterior.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{mse.item():.5f}", **({"perceptual": f"{perc.item():.4f}"} if perceptual else {}))
        if (step + 1) % per_epoch == 0 and step + 1 < steps:  # nothing lost on a crash but this epoch
            save_torch(resume_path(args.out), {
                "kind": KIND + "-state", "config": config, "flags": {k: getattr(args, k) for k in RESUME_KEYS},
                "model": codec.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "rng": rng_states(), "step": step + 1,
                "seconds": before + time.time() - start})
    codec.eval().cpu()
    if not args.decoder_only:  # a decoder-only run keeps the init's latent statistics
        with torch.no_grad():  # the per-channel statistics of the training latents
            raw = torch.cat([codec.encode_raw(to_model_range(chunk)) for chunk in data.images.split(500)])
            codec.mean.copy_(raw.mean((0, 2, 3))[:, None, None])
            codec.std.copy_(raw.std((0, 2, 3))[:, None, None])
    seconds = before + time.time() - start
    report = heldout_report(codec, args)
    meta = dict(preset=args.preset, data_root=str(args.data_root), json=str(args.json), train_images=len(data),
                epochs=args.epochs, steps=steps, batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight,
                object_weight=args.object_weight, perceptual=args.perceptual,
                perceptual_sha256=perceptual.sha256 if perceptual else None,
                perceptual_weight=args.perceptual_weight if args.perceptual else None, init=args.init,
                decoder_only=args.decoder_only, precision=precision, seed=args.seed,
                train_seconds=round(seconds, 1), **report)
    save_autoencoder(args.out, config, codec.state_dict(), meta)
    resume_path(args.out).unlink(missing_ok=True)
    print(f"{args.out}: trained in {seconds / 60:.1f} min; held-out reconstruction MSE {report['heldout_mse']:.5f}"
          + (f"; judge {report['judge_on_reconstructions']:.4f} on reconstructions, "
             f"{report['judge_on_originals']:.4f} on the originals at {config['image_size']}x{config['image_size']}"
             if "judge" in report else "; no judge found, reconstructions not scored"))


if __name__ == "__main__":
    main()
