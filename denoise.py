"""A figure of the denoising process: one row from pure noise to the finished image.

Usage:
    python denoise.py                                   # newest checkpoint in checkpoints/ -> figures/denoise.png
    python denoise.py --labels "red sphere" "cyan cube" --frames 12 --gif    # also figures/denoise.gif
    python denoise.py --ckpt checkpoints/model_epoch_050.pt --sampler ddpm --steps 1000 --seed 3

The top row is the sample itself: frame 0 is the starting noise, the next --frames frames are the
sampler's intermediate images, evenly spaced over its steps and ending with the final image.
Under each, the bottom row shows what the model expects the finished image to be at that step
(its prediction of the clean image), so the scene can be seen forming while the sample is
still mostly noise. Frames are upscaled to --size pixels (clamped to [-1, 1] for display).
--gif plays the top row, with a progress bar under it. The image is the same one generate.py
draws for these labels with the same sampler, steps, guidance and seed (image index 0).
"""
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dataset import check_labels, encode_labels, load_objects
from grid import as_uint8, save_grid
from model import SAMPLERS, to_64
from sampling import add_checkpoint_args, check_guidance, load_sampler
from utils import NUM_LABELS, ArgumentParser, ICLEVRError, atomic_write, exit_on_user_error

DEFAULT_LABELS = ["red sphere", "cyan cylinder", "cyan cube"]
DEFAULT_FRAMES = 10
GIF_FRAME_MS, GIF_LAST_MS, GIF_BAR = 300, 1500, 4  # ms per frame, ms on the last one, bar height


def frame_steps(steps, frames):
    """The 0-based step indices of `frames` frames evenly spaced over `steps`, the last one last."""
    return [-(-k * steps // frames) - 1 for k in range(1, frames + 1)]  # ceil(k * steps / frames) - 1


def denoising_frames(drawer, multi_hot, seed):
    """Two (drawer.steps + 1, 3, size, size) stacks in [-1, 1]: the starting noise of image 0 then each step's
    image, and under each the model's prediction of the finished image (gray under the noise)."""
    kept, clean = {}, {}

    def keep(i, t, x, x0):
        kept[i] = x[0].float().cpu()
        clean[i] = x0[0].float().cpu() if x0 is not None else torch.zeros_like(kept[i])
    drawer(multi_hot[None], seed, batch_size=1, callback=keep)
    order = range(-1, drawer.steps)
    return torch.stack([kept[i] for i in order]).clamp(-1, 1), torch.stack([clean[i] for i in order]).clamp(-1, 1)


def resize(images, size):
    """Frames at `size` pixels: the judge's 64x64 view first (as generate.py writes them), then nearest-neighbour."""
    images = to_64(images)
    return images if size == 64 else torch.nn.functional.interpolate(images, size=size, mode="nearest")


def write_gif(path, frames_uint8):
    """The frames as a looping GIF, a progress bar under each (so that no two frames are merged)."""
    n, (h, w) = len(frames_uint8), frames_uint8.shape[-2:]
    images = []
    for k, frame in enumerate(frames_uint8):
        image = Image.new("RGB", (w, h + GIF_BAR), "white")
        image.paste(Image.fromarray(frame.permute(1, 2, 0).numpy()), (0, 0))
        filled = round(w * k / max(1, n - 1))
        if filled:
            ImageDraw.Draw(image).rectangle((0, h + 1, filled - 1, h + GIF_BAR - 1), fill=(60, 60, 60))
        images.append(image)
    durations = [GIF_FRAME_MS] * (n - 1) + [GIF_LAST_MS]
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=durations, loop=0))


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    add_checkpoint_args(p)
    p.add_argument("--labels", nargs="+", default=DEFAULT_LABELS,
                   help='1 to 3 labels of objects.json (default: "red sphere" "cyan cylinder" "cyan cube").')
    p.add_argument("--frames", type=int, default=None,
                   help=f"Frames after the starting noise, evenly spaced over the steps (default {DEFAULT_FRAMES}, "
                        "or every step when the sampler takes fewer).")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="Sampler: euler for flow-matching models; ddpm, ddim, dpm or dpm-sde for noise-prediction "
                   "ones; one that does not fit the model is refused (default: the checkpoint's own).")
    p.add_argument("--steps", type=int, help="Sampler steps (default: the checkpoint's).")
    p.add_argument("--guidance", type=float, help="Classifier-free guidance scale (default: the checkpoint's).")
    p.add_argument("--seed", type=int, default=0, help="Noise seed (the same as generate.py's --seed).")
    p.add_argument("--size", type=int, default=128, help="Pixels per frame in the figure (default 128).")
    p.add_argument("--out", default="figures/denoise.png", help="Where to write the PNG.")
    p.add_argument("--gif", action="store_true", help="Also write the frames as an animated GIF beside the PNG.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--no-ema", action="store_true", help="Use the raw weights even when the checkpoint has EMA.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.steps is not None and args.steps < 1:
        raise ICLEVRError(f"--steps must be at least 1, got {args.steps}")
    check_guidance(args.guidance)
    if not 16 <= args.size <= 512:
        raise ICLEVRError(f"--size must be between 16 and 512 pixels, got {args.size}")
    if args.frames is not None and args.frames < 2:
        raise ICLEVRError(f"--frames must be at least 2 (the row also holds the starting noise), got {args.frames}")
    label2idx = load_objects(args.objects)
    if len(label2idx) != NUM_LABELS:
        raise ICLEVRError(f"{args.objects}: {len(label2idx)} labels, but the model knows {NUM_LABELS}")
    check_labels(args.labels, label2idx, where="--labels")
    multi_hot = encode_labels(args.labels, label2idx)
    drawer = load_sampler(args.ckpt, args.checkpoints_dir, not args.no_ema, args.device, args.sampler, args.steps,
                          args.guidance)
    sampler, steps, guidance = drawer.sampler, drawer.steps, drawer.guidance
    frames = min(DEFAULT_FRAMES, steps) if args.frames is None else args.frames
    if frames > steps:
        raise ICLEVRError(f"--frames {frames} is more than the {steps} sampler steps (the row can hold at most "
                          f"steps + 1 = {steps + 1} images): pass fewer frames or more --steps")
    print(f"using {drawer.describe()}")
    every, clean = denoising_frames(drawer, multi_hot, args.seed)
    picked = [0] + [i + 1 for i in frame_steps(steps, frames)]
    row = resize(every[picked], args.size)
    out = Path(args.out)
    labels = ", ".join(args.labels)
    caption = (f"{labels} | {sampler}, {steps} steps, guidance {guidance:g}, seed {args.seed} | top: noise -> image; "
               "bottom: the model's guess of the finished image at that step")
    save_grid(torch.cat([row, resize(clean[picked], args.size)]), out, nrow=len(row), caption=caption)
    print(f"wrote {out} ({len(row)} frames: the starting noise, then steps "
          f"{', '.join(str(i + 1) for i in frame_steps(steps, frames))} of {steps})")
    if args.gif:
        gif = out.with_suffix(".gif")
        write_gif(gif, as_uint8(row))
        print(f"wrote {gif}")
    return out


if __name__ == "__main__":
    main()
