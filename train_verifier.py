"""Train a generator's verifier (verifier.py), the latent classifier behind generate.py --best-of K.

Usage:
    python train_verifier.py --fp16               # for the shipped generator -> weights/verifier_cpu64.safetensors
    python train_verifier.py --ckpt checkpoints/model_epoch_050.pt --out my_verifier.safetensors
    python generate.py --best-of 8                # then: each image the best of 8 draws by the verifier

It encodes the training renders with the generator's own autoencoder (the posterior means, as train.py
does), holds out a seeded 5% of them, trains on the rest with a little Gaussian noise on the latents
(a generated latent is not quite an encoded one), and prints the official accuracy of the held-out
part after every epoch. The judge takes no part: the verifier is its own network on latents, so what
best-of-K gains is measured by judges that never saw it. The file is written once, at the end,
atomically, and records the generator's autoencoder, so it is refused for any other generator.
"""
import time

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from tqdm import tqdm

from dataset import ICLEVRDataset
from evaluator import official_hits
from model import find_checkpoint, load_checkpoint, model_from_checkpoint
from utils import ArgumentParser, ICLEVRError, exit_on_user_error, pick_device, repo_path, sha256_of
from verifier import LatentVerifier, codec_fingerprint, default_file, latent_stats, round_to_fp16, save_verifier


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="The generator (train.py checkpoint or generator file) whose latents it reads "
                   "(default: the newest in checkpoints/, else the shipped generator).")
    p.add_argument("--data-root", default="iclevr", help="Folder of training images (rendered or the course's).")
    p.add_argument("--json", default="train.json", help="Training label file (train.json style).")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--out", help="The verifier file to write (default: weights/verifier_PRESET.safetensors).")
    p.add_argument("--epochs", type=int, default=16, help="Passes over the training latents.")
    p.add_argument("--batch-size", type=int, default=128, help="Latents per optimizer step.")
    p.add_argument("--lr", type=float, default=2e-3, help="Peak learning rate (AdamW, cosine decay after warm-up).")
    p.add_argument("--width", type=int, default=64, help="Channels of the first level (doubling per level).")
    p.add_argument("--noise", type=float, default=0.2, help="Largest standard deviation of the Gaussian noise "
                   "added to a training latent (drawn uniformly up to it per latent).")
    p.add_argument("--heldout", type=float, default=0.05, help="Share of the images held out to measure it.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the split, the initialization and the batches.")
    p.add_argument("--fp16", action="store_true", help="Store the weights at fp16: half the file; the held-out "
                   "accuracy it records is measured on the rounded weights.")
    p.add_argument("--limit", type=int, help="Use only the first N training images (quick checks).")
    p.add_argument("--num-workers", type=int, default=4, help="Threads that decode the PNGs when preloading.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    return p


@torch.no_grad()
def heldout_accuracy(verifier, x, multi_hot, device):
    hits, total = official_hits(torch.cat([verifier(c.to(device)).cpu() for c in x.split(512)]), multi_hot)
    return hits / total


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.heldout < 1:
        raise ICLEVRError("--epochs and --batch-size must be at least 1, --heldout between 0 and 1")
    path = find_checkpoint(args.ckpt, "checkpoints")
    ckpt = load_checkpoint(path)
    model, config = model_from_checkpoint(ckpt)
    device = pick_device(args.device)
    model = model.to(device)
    out = args.out or default_file(config.get("preset"))
    data = ICLEVRDataset(args.data_root, args.json, args.objects, image_size=config["image_size"], preload=True,
                         limit=args.limit, workers=args.num_workers)
    x, y = model.encode_images(data.images, device, batch=256).cpu(), data.multi_hot.float()  # its sample space
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(x), generator=gen)
    n_held = max(1, int(len(x) * args.heldout))
    held, train = order[:n_held], order[n_held:]
    if len(train) < args.batch_size:
        raise ICLEVRError(f"--batch-size {args.batch_size} is larger than the {len(train)} training latents")
    torch.manual_seed(args.seed)
    verifier = LatentVerifier(model.sample_shape, args.width).to(device)
    steps_per_epoch = len(train) // args.batch_size
    opt = torch.optim.AdamW(verifier.parameters(), lr=args.lr, weight_decay=0.01)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(100, steps_per_epoch),
                          num_training_steps=args.epochs * steps_per_epoch)
    print(f"verifier for {path} (preset {config.get('preset')}, samples {tuple(model.sample_shape)}): "
          f"{sum(p.numel() for p in verifier.parameters()) / 1e6:.2f} M parameters, {len(train)} training and "
          f"{n_held} held-out images")
    started, accuracy = time.perf_counter(), None
    for epoch in range(1, args.epochs + 1):
        verifier.train()
        perm = train[torch.randperm(len(train), generator=gen)]
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", unit="step")
        for i in bar:
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            sigma = torch.rand(len(idx), 1, 1, 1, generator=gen) * args.noise
            inputs = x[idx] + sigma * torch.randn(x[idx].shape, generator=gen)
            loss = F.binary_cross_entropy_with_logits(verifier(inputs.to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        verifier.eval()
        accuracy = heldout_accuracy(verifier, x[held], y[held], device)
        tqdm.write(f"epoch {epoch}: held-out official accuracy {accuracy:.4f}")
    minutes = (time.perf_counter() - started) / 60
    if args.fp16:  # the file holds the rounded weights: score those
        accuracy = heldout_accuracy(round_to_fp16(verifier), x[held], y[held], device)
        print(f"rounded to fp16: held-out official accuracy {accuracy:.4f}")
    meta = {"codec": codec_fingerprint(model), "latent_stats": latent_stats(model), "generator": repo_path(path),
            "generator_sha256": sha256_of(path),
            "preset": config.get("preset"), "epochs": args.epochs, "seed": args.seed, "noise": args.noise,
            "train_images": len(train), "heldout_images": n_held,
            "heldout_accuracy": accuracy}  # no timing in it: the bytes repeat
    save_verifier(out, verifier.cpu(), meta, fp16=args.fp16)
    print(f"wrote {out}: held-out official accuracy {accuracy:.4f}, {minutes:.1f} min training; use it with "
          f"python generate.py --ckpt {path} --best-of 4" + ("" if args.out is None else f" --verifier {out}"))
    return out


if __name__ == "__main__":
    main()
