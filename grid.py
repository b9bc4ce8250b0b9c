"""A grid figure of a folder of numbered images (0.png ... n-1.png), 8 per row.

Usage:
    python grid.py --images generated/test                  # -> generated/test/grid.png
    python grid.py --images generated/test --caption "dpm, 25 steps, guidance 2" --out figures/test.png
    python grid.py --images generated/new_test --json new_test.json   # the folder must match the file
    python grid.py --images generated/test --json test.json --annotate  # each cell's labels, misses in red

--annotate writes each cell's labels under it; where a judge can score the images (--judge, default:
./checkpoint.pth, else the shipped weights/judge.pth) the labels it misses by the official rule (per
image its top-k classes, k = the label count) are drawn in red with a leading "x", hits in black.

Tiles smaller than 64x64 (a model that draws 16x16 or 32x32 images) are upscaled to the judge's
64x64 as generate.py does (bilinear, antialiased); larger ones keep their size. The numbered
images must run 0.png ... n-1.png without a gap. The PNG is written atomically.

    from grid import save_grid
    save_grid(images, "generated/test/grid.png", caption="test.json")   # (n, 3, H, W) in [-1, 1] or uint8
    save_grid(pipe(labels=labels).images, "grid.png", label_lists=labels)   # PIL images too; labelled cells
"""
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms import functional as TF
from torchvision.utils import make_grid

from dataset import (
    count_numbered_images,
    encode_labels,
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
LABEL_MARGIN = 2  # pixels around a cell's label text
HIT_COLOR, MISS_COLOR, MISS_MARK = (0, 0, 0), (200, 0, 0), "x "  # --annotate: a label the judge found, or missed


def as_uint8(images):
    """(n, 3, H, W) uint8 as it is, float in [-1, 1] -> uint8 (dataset.to_uint8), or a list of RGB PIL images."""
    if isinstance(images, (list, tuple)) and images and all(isinstance(x, Image.Image) for x in images):
        return torch.from_numpy(np.stack([np.asarray(x.convert("RGB")) for x in images])).permute(0, 3, 1, 2)
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


def tiles_of(images, nrow):
    """The (upscaled) uint8 tiles of a batch, checked."""
    images = as_uint8(images) if isinstance(images, (list, tuple)) else images
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or not len(images):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ICLEVRError(f"expected a batch of RGB images (n, 3, H, W), got {shape}")
    if nrow < 1:
        raise ICLEVRError(f"nrow must be at least 1, got {nrow}")
    return upscale(as_uint8(images.detach().cpu()))


def grid_image(images, nrow=8, caption=None):
    """The grid as a PIL image: make_grid of the (upscaled) tiles, nrow per row, caption strip on top."""
    grid = make_grid(tiles_of(images, nrow), nrow=nrow, padding=PADDING, pad_value=PAD_VALUE)
    image = TF.to_pil_image(grid)
    return add_caption(image, caption) if caption else image


def label_hits(scores, label_lists, label2idx):
    """Per image, per label: is it among the image's top-k classes, k = its label count (the official rule
    of evaluator.official_hits, its stable order included)? scores: the judge's (n, 24) predict()."""
    from evaluator import label_hits as hits_of  # here: train.py imports grid.py, not the judge
    hits = hits_of(scores, torch.stack([encode_labels(labels, label2idx) for labels in label_lists]))
    return [[bool(hits[i, label2idx[x]]) for x in labels] for i, labels in enumerate(label_lists)]


def annotated_grid(images, label_lists, hits=None, nrow=8, caption=None):
    """The grid with each cell's labels under its tile; with hits (per image, per label: True when the
    judge found it) a missed label is drawn in MISS_COLOR behind MISS_MARK. Columns widen to the text."""
    tiles = tiles_of(images, nrow)
    if len(label_lists) != len(tiles) or (hits is not None and [len(h) for h in hits] != list(map(len, label_lists))):
        raise ICLEVRError(f"{len(tiles)} images but {len(label_lists)} label lists"
                          + ("" if len(label_lists) != len(tiles) else " (hits do not match the label lists)"))
    font = ImageFont.load_default()
    mark = MISS_MARK if hits is not None else ""
    text_w = max(font.getlength(mark + x) for labels in label_lists for x in labels) if any(label_lists) else 0
    top, bottom = font.getbbox("Ag")[1::2]
    line_h = bottom - min(top, 0) + 1
    tile_h, tile_w = tiles.shape[-2:]
    cell_w, cell_h = max(tile_w, int(text_w) + 2 * LABEL_MARGIN), tile_h + max(map(len, label_lists)) * line_h
    ncol, nrows = min(nrow, len(tiles)), -(-len(tiles) // nrow)
    out = Image.new("RGB", (ncol * (cell_w + PADDING) + PADDING, nrows * (cell_h + LABEL_MARGIN + PADDING)
                            + PADDING), (PAD_VALUE,) * 3)
    draw = ImageDraw.Draw(out)
    for i, tile in enumerate(tiles):
        x, y = PADDING + (i % nrow) * (cell_w + PADDING), PADDING + (i // nrow) * (cell_h + LABEL_MARGIN + PADDING)
        out.paste(TF.to_pil_image(tile), (x, y))
        for j, label in enumerate(label_lists[i]):
            missed = hits is not None and not hits[i][j]
            draw.text((x + LABEL_MARGIN, y + tile_h + j * line_h - min(top, 0)), (mark if missed else "") + label,
                      fill=MISS_COLOR if missed else HIT_COLOR, font=font)
    return add_caption(out, caption) if caption else out


def save_grid(images, path, nrow=8, caption=None, label_lists=None, hits=None):
    """Write the grid of `images` ((n, 3, H, W) float in [-1, 1] or uint8, or PIL images) to a PNG, atomically;
    with label_lists, each cell's labels under it (annotated_grid)."""
    image = (annotated_grid(images, label_lists, hits, nrow, caption) if label_lists is not None
             else grid_image(images, nrow, caption))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ICLEVRError(f"cannot write {path}: {e.strerror or e}") from None
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return image


def plot_training_log(path, rows, loss_label="training loss"):
    """train.py's loss_curve.png: the loss per epoch (titled loss_label, e.g. "flow matching: MSE on the velocity"),
    and the accuracies of --eval-every when there are any."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [float(r["loss"]) for r in rows], marker=".")
    ax1.set(xlabel="epoch", ylabel="training loss", yscale="log", title=loss_label)
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
    p.add_argument("--annotate", action="store_true", help="Write each cell's labels under it (needs --json), the "
                   "ones the judge misses in red.")
    p.add_argument("--judge", help="Judge checkpoint that marks the missed labels with --annotate (default: "
                   "./checkpoint.pth when it exists, else the shipped weights/judge.pth; neither: no marks).")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.nrow < 1:
        raise ICLEVRError(f"--nrow must be at least 1, got {args.nrow}")
    if args.annotate and not args.json:
        raise ICLEVRError("--annotate needs --json: the label file the images were drawn from")
    folder = Path(args.images)
    n = count_numbered_images(folder)
    label2idx, label_lists, hits, scored = None, None, None, ""
    if args.json:
        label2idx = load_objects(args.objects)
        names, label_lists = load_label_file(args.json, label2idx)
        if names is not None:
            raise ICLEVRError(f"{args.json} is a train.json-style dict; numbered folders go with list files "
                              "like test.json")
        if n != len(label_lists):
            raise ICLEVRError(f"{folder} holds {n} numbered images but {args.json} has {len(label_lists)} entries: "
                              "the folder and the label file do not match")
    if args.annotate:
        hits, judge = judge_hits(args.judge, folder, label_lists, label2idx)
        if hits is not None:
            found, total = sum(map(sum, hits)), sum(map(len, hits))
            scored = f"; judge {judge} found {found} of {total} labels" + (", misses in red" if found < total else "")
    out = Path(args.out) if args.out else folder / "grid.png"
    image = save_grid(load_numbered_images(folder, n, size=None), out, args.nrow, args.caption,
                      label_lists if args.annotate else None, hits)
    print(f"wrote {out} ({n} images, {image.width}x{image.height}{scored})")
    return out


def judge_hits(judge_path, folder, label_lists, label2idx):
    """(label_hits of the folder's images, read at 64x64 as evaluate_generated.py reads them, the judge's name);
    (None, None) with a note when no --judge is given and no default judge exists."""
    from evaluator import default_judge, evaluation_model
    if judge_path is None:
        try:
            judge_path = default_judge()
        except ICLEVRError as e:
            print(f"note: {e}: labels drawn without marks")
            return None, None
    judge = evaluation_model(judge_path)
    images = to_model_range(load_numbered_images(folder, len(label_lists), size=64))
    return label_hits(judge.predict(images), label_lists, label2idx), judge.name()


if __name__ == "__main__":
    main()
