"""A grid figure of a folder of numbered images (0.png ... n-1.png), 8 per row.

Usage:
    python grid.py --images generated/test                  # -> generated/test/grid.png
    python grid.py --images generated/test --caption "dpm, 25 steps, guidance 2" --out figures/test.png
    python grid.py --images generated/new_test --json new_test.json   # the folder must match the file

Tiles smaller than 64x64 (a model that draws 16x16 or 32x32 images) are upscaled to the judge's
64x64 as generate.py does (bilinear, antialiased); larger ones keep their size. The numbered
images must run 0.png ... n-1.png without a gap. The PNG is written atomically.

    from grid import save_grid
    save_grid(images, "generated/test/grid.png", caption="test.json")   # (n, 3, H, W) in [-1, 1] or uint8
"""
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.transforms import functional as TF
from torchvision.utils import make_grid

from dataset import (
    count_numbered_images,
    load_label_file,
    load_numbered_images,
    load_objects,
    to_64,
    to_model_range,
    to_uint8,
)
from utils import ArgumentParser, ICLEVRError, atomic_write, exit_on_user_error

TILE = 64  # the evaluator's image size: smaller tiles are upscaled to it
PADDING = 2  # make_grid's padding between tiles and around the grid
PAD_VALUE = 255  # white
CAPTION_MARGIN = 4  # pixels around the caption text


def as_uint8(images):
    """(n, 3, H, W) uint8 as it is, or float in [-1, 1] -> uint8 (dataset.to_uint8)."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ICLEVRError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    return to_uint8(images)


def upscale(images_uint8, tile=TILE):
    """Upscale tiles smaller than tile x tile to 64x64 with dataset.to_64; larger ones are kept."""
    h, w = images_uint8.shape[-2:]
    if h >= tile and w >= tile:
        return images_uint8
    return to_uint8(to_64(to_model_range(images_uint8)))


def add_caption(image, caption):
    """A white strip above `image` (PIL) holding the caption, wrapped to the image's width."""
    draw = ImageDraw.Draw(image)
    char_w = max(1.0, draw.textlength("abcdefghijklmnopqrstuvwxyz") / 26)
    width = max(1, int((image.width - 2 * CAPTION_MARGIN) // char_w))
    lines = [line for para in caption.splitlines() for line in textwrap.wrap(para, width) or [""]] or [""]
    top, bottom = draw.textbbox((0, 0), "Ag")[1::2]
    line_h = bottom - min(top, 0) + 2
    strip_h = len(lines) * line_h + 2 * CAPTION_MARGIN
    out = Image.new("RGB", (image.width, image.height + strip_h), "white")
    text = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        text.text((CAPTION_MARGIN, CAPTION_MARGIN + i * line_h - min(top, 0)), line, fill="black")
    out.paste(image, (0, strip_h))
    return out


def grid_image(images, nrow=8, caption=None):
    """The grid as a PIL image: make_grid of the (upscaled) tiles, nrow per row, caption strip on top."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or not len(images):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ICLEVRError(f"expected a batch of RGB images (n, 3, H, W), got {shape}")
    if nrow < 1:
        raise ICLEVRError(f"nrow must be at least 1, got {nrow}")
    tiles = upscale(as_uint8(images.detach().cpu()))
    grid = make_grid(tiles, nrow=nrow, padding=PADDING, pad_value=PAD_VALUE)
    image = TF.to_pil_image(grid)
    return add_caption(image, caption) if caption else image


def save_grid(images, path, nrow=8, caption=None):
    """Write the grid of `images` ((n, 3, H, W) float in [-1, 1] or uint8) to a PNG, atomically."""
    image = grid_image(images, nrow, caption)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ICLEVRError(f"cannot write {path}: {e.strerror or e}") from None
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return image


def plot_training_log(path, rows):
    """train.py's loss_curve.png: the loss per epoch, and the accuracies of --eval-every when there are any."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [float(r["loss"]) for r in rows], marker=".")
    ax1.set(xlabel="epoch", ylabel="training loss (MSE on noise)", yscale="log", title="loss")
    for key, label in [("test_acc", "test.json"), ("new_test_acc", "new_test.json")]:
        points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key)]
        if points:
            ax2.plot(*zip(*points), marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="official accuracy (judge)", ylim=(0, 1), title="EMA samples")
    if ax2.lines:
        ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="Folder of numbered images 0.png ... n-1.png.")
    p.add_argument("--out", help="Where to write the grid PNG (default: <images>/grid.png).")
    p.add_argument("--nrow", type=int, default=8, help="Images per row (default 8).")
    p.add_argument("--caption", help="Text drawn in a strip above the grid.")
    p.add_argument("--json", help="Label file (test.json style) the images were made from: the folder must "
                                  "hold exactly one image per entry.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices (for --json).")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.nrow < 1:
        raise ICLEVRError(f"--nrow must be at least 1, got {args.nrow}")
    folder = Path(args.images)
    n = count_numbered_images(folder)
    if args.json:
        names, label_lists = load_label_file(args.json, load_objects(args.objects))
        if names is not None:
            raise ICLEVRError(f"{args.json} is a train.json-style dict; numbered folders go with list files "
                              "like test.json")
        if n != len(label_lists):
            raise ICLEVRError(f"{folder} holds {n} numbered images but {args.json} has {len(label_lists)} entries: "
                              "the folder and the label file do not match")
    out = Path(args.out) if args.out else folder / "grid.png"
    image = save_grid(load_numbered_images(folder, n, size=None), out, args.nrow, args.caption)
    print(f"wrote {out} ({n} images, {image.width}x{image.height})")
    return out


if __name__ == "__main__":
    main()
