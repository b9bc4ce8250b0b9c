"""Does a better decoder lift a latent generator? Train another decoder on the frozen encoder's latents, compare.

Usage:
    python -m bench.decoder_study --ckpt runs/cos2e3/model_epoch_018.pt --channels 64,128 --epochs 6
    python -m bench.decoder_study --ckpt CKPT --channels 32,64 --epochs 1 --limit 256 --seeds 1   # a quick look

The generator's own autoencoder stays frozen: its encoder (and the latent statistics) define the
latents the diffusion model learned, so any decoder trained on them can replace the old one without
retraining the generator. A new decoder (diffusers AutoencoderKL's, with --channels and
--layers-per-block) is trained from scratch on the posterior samples of the training renders (and
their mirror images) with train_autoencoder.py's object-weighted squared error. Then, with the
old and the new decoder: the judge on the reconstructions of held-out renders (seed 1), and the
official accuracy of the checkpoint's samples of test.json and new_test.json (EMA, its preset's
sampler, one latent per sampling seed, decoded by each). The judge only scores. Prints a table.
"""
import argparse
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from dataset import ICLEVRDataset, to_64, to_model_range
from evaluator import evaluation_model
from sampling import load_sampler
from train_autoencoder import weighted_mse
from train_evaluator import random_renders
from utils import SPLITS, ICLEVRError, exit_on_user_error


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="Latent train.py checkpoint whose samples are decoded both ways.")
    p.add_argument("--data-root", default="iclevr", help="Folder of the training renders.")
    p.add_argument("--channels", default="64,128", help="The new decoder's block_out_channels, comma-separated.")
    p.add_argument("--layers-per-block", type=int, default=1, help="The new decoder's layers per block.")
    p.add_argument("--epochs", type=float, default=6, help="Passes over the training renders (and their mirrors).")
    p.add_argument("--lr", type=float, default=2e-3, help="Peak learning rate of the one-cycle schedule (AdamW).")
    p.add_argument("--object-weight", type=float, default=200, help="train_autoencoder.py --object-weight.")
    p.add_argument("--limit", type=int, default=None, help="Use only the first N training renders (quick looks).")
    p.add_argument("--heldout", type=int, default=1000, help="Held-out renders (seed 1) to reconstruct.")
    p.add_argument("--heldout-root", default="renders/heldout_val", help="Their folder (rendered on first use).")
    p.add_argument("--seeds", type=int, default=5, help="Sampling seeds 0..N-1 of each split.")
    p.add_argument("--judge", default=None, help="Judge (default: ./checkpoint.pth, else weights/judge.pth).")
    p.add_argument("--out", default=None, help="Also save the new decoder's weights here.")
    return p


def train_decoder(codec, images, args):
    """A fresh decoder (AutoencoderKL's post_quant_conv + decoder) fitted to the frozen encoder's latents."""
    channels = tuple(int(c) for c in args.channels.split(","))
    torch.manual_seed(0)
    vae = AutoencoderKL(**dict(codec.vae.config, block_out_channels=channels, layers_per_block=args.layers_per_block))
    vae.encoder = vae.quant_conv = None  # only the decoding half is trained and used
    images = torch.cat([images, images.flip(-1)])
    with torch.no_grad():
        posts = [codec.posterior(to_model_range(chunk)) for chunk in images.split(500)]
    mean, std = torch.cat([p.mean for p in posts]), torch.cat([p.std for p in posts])
    decode_raw = lambda z: F.pixel_shuffle(vae.decode(z).sample, codec.patch)  # noqa: E731
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    steps = max(1, round(args.epochs * len(images) / 2 / 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in (bar := tqdm(range(steps), desc="training the decoder", unit="step")):
        idx = torch.randint(len(images), (64,), generator=gen)
        z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        loss = weighted_mse(decode_raw(z), to_model_range(images[idx]), args.object_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.5f}")
    vae.eval().requires_grad_(False)
    return vae, lambda z: decode_raw(z * codec.std + codec.mean)


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    drawer = load_sampler(ckpt=args.ckpt, device="cpu")
    codec = drawer.model.codec
    if codec is None:
        raise ICLEVRError(f"{args.ckpt} is not a latent model: it has no decoder to replace")
    judge = evaluation_model(args.judge)
    size = codec.image_size
    data = ICLEVRDataset(args.data_root, "train.json", "objects.json", image_size=size, preload=True, limit=args.limit)
    start = time.time()
    vae, new_decode = train_decoder(codec, data.images, args)
    minutes = (time.time() - start) / 60
    if args.out:
        torch.save({"decoder": vae.state_dict(), "args": vars(args)}, args.out)
    decoders = {"the checkpoint's decoder": codec.decode, f"new decoder {args.channels}": new_decode}
    images, labels = random_renders(args.heldout_root, args.heldout, 1, "objects.json")
    x = F.interpolate(to_model_range(images), size=size, mode="bilinear", antialias=True, align_corners=False)
    latents = {}
    drawer.model.decode = lambda z: z  # the sampler then returns latents, decoded below both ways
    for split in SPLITS:
        multi_hot = ICLEVRDataset(None, f"{split}.json", "objects.json").multi_hot
        latents[split] = (multi_hot, [drawer(multi_hot, seed=k) for k in range(args.seeds)])
    print(f"\njudge {judge.checkpoint}; new decoder trained {minutes:.1f} min; {args.ckpt}, {args.seeds} seeds\n")
    print("| decoder | held-out MSE | judge on reconstructions | test | new_test |\n|---|---|---|---|---|")
    with torch.no_grad():
        for name, decode in decoders.items():
            y = torch.cat([decode(codec.encode(chunk)).clamp(-1, 1) for chunk in x.split(250)])
            cells = [f"{F.mse_loss(y, x).item():.5f}", f"{judge.eval(to_64(y), labels):.4f}"]
            for multi_hot, zs in latents.values():
                accs = [judge.eval(to_64(decode(z).clamp(-1, 1)), multi_hot) for z in zs]
                cells.append(f"{sum(accs) / len(accs):.3f} ({min(accs):.3f}-{max(accs):.3f})")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
