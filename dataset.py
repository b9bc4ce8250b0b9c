"""i-CLEVR label files and images: validation, multi-hot encoding and `ICLEVRDataset`.

    from dataset import ICLEVRDataset, encode_labels, load_objects
    train = ICLEVRDataset("iclevr", "train.json", "objects.json", image_size=64, preload=True)
    image, multi_hot = train[0]      # (3, 64, 64) float in [-1, 1], (24,) float 0/1
    test = ICLEVRDataset(None, "test.json", "objects.json")
    multi_hot = test[0]              # label-only files (test.json style) give the multi-hot alone
    encode_labels(["red sphere", "cyan cube"], load_objects("objects.json"))
    masks = load_masks("renders/iclevr_masks", train.names, "train.json")   # (n, 64, 64) uint8 object indices

Works unchanged on the course's real `iclevr/` folder (320x240 RGBA PNGs, squashed to a square
as everyone does) and on the renders of render_iclevr.py. Every problem with a user's files
raises utils.ICLEVRError with one line that names it.
"""
import difflib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF
from tqdm import tqdm

from utils import MAX_OBJECTS, ICLEVRError, atomic_write, read_json, sha256_of


def load_objects(path="objects.json"):
    """The label -> index map of objects.json, checked to be a dict onto 0..n-1."""
    mapping = read_json(path)
    if (not isinstance(mapping, dict) or not mapping
            or not all(isinstance(k, str) and type(v) is int for k, v in mapping.items())
            or sorted(mapping.values()) != list(range(len(mapping)))):
        raise ICLEVRError(f"{path}: expected a dict of label -> index 0..n-1 like the course's objects.json")
    return mapping


def check_labels(labels, label2idx, where="labels", max_objects=MAX_OBJECTS):
    """Raise ICLEVRError unless `labels` is a list of 1..max_objects distinct known labels."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ICLEVRError(f"{where}: expected a list of label strings, got {json.dumps(labels)[:60]}")
    if not labels:
        raise ICLEVRError(f"{where}: empty label list (an image holds 1 to {max_objects} objects)")
    for label in labels:
        if label not in label2idx:
            close = difflib.get_close_matches(" ".join(label.lower().split()), list(label2idx), n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise ICLEVRError(f'{where}: unknown label "{label}" ({hint}labels are "<color> <shape>" '
                              f'as in objects.json, e.g. "{next(iter(label2idx))}")')
    repeated = [x for i, x in enumerate(labels) if x in labels[:i]]
    if repeated:
        raise ICLEVRError(f'{where}: label "{repeated[0]}" appears twice (an image holds each label at most once)')
    if len(labels) > max_objects:
        raise ICLEVRError(f"{where}: {len(labels)} labels, but the model supports at most {max_objects} per image")


def encode_labels(labels, label2idx, max_objects=MAX_OBJECTS):
    """A list of labels -> float multi-hot vector of len(label2idx) (validated first)."""
    check_labels(labels, label2idx, max_objects=max_objects)
    vec = torch.zeros(len(label2idx))
    vec[[label2idx[x] for x in labels]] = 1.0
    return vec


def check_filename(name, where):
    """A file name from a label file must stay inside the image folder."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if (not name or posix.is_absolute() or windows.is_absolute() or windows.drive
            or ".." in posix.parts or ".." in windows.parts):
        raise ICLEVRError(f'{where}: file name "{name}" escapes the image folder (use a plain relative name)')


def load_label_file(path, label2idx, max_objects=MAX_OBJECTS):
    """Read a train.json-style dict or a test.json-style list.

    Returns (names, label_lists): names is None for a list file.
    """
    data = read_json(path)
    if isinstance(data, dict):
        names, label_lists = list(data), list(data.values())
        for name in names:
            check_filename(name, f"{path}")
    elif isinstance(data, list):
        names, label_lists = None, data
    else:
        raise ICLEVRError(f"{path}: expected a dict {{file name: [labels]}} or a list of label lists, "
                          f"got {type(data).__name__}")
    if not label_lists:
        raise ICLEVRError(f"{path}: holds no entries")
    for i, labels in enumerate(label_lists):
        where = f'{path} entry "{names[i]}"' if names else f"{path} entry {i}"
        check_labels(labels, label2idx, where, max_objects)
    return names, label_lists


def _hint(how_to_fix):
    return f"; {how_to_fix}" if how_to_fix else ""


def load_image(path, size=64, how_to_fix=""):
    """One PNG as a uint8 tensor (3, size, size): convert("RGB"), then Resize (squash, never crop).
    size may also be (height, width), or None for the image's own size."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):  # 16-bit gray: convert("RGB") would clip it to white
                im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            rgb = im.convert("RGB")  # the real i-CLEVR PNGs carry an alpha channel
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ICLEVRError(f"cannot read image {path} ({e}){_hint(how_to_fix)}") from None
    size = (size, size) if isinstance(size, int) else size
    if size is not None and rgb.size[::-1] != tuple(size):
        rgb = TF.resize(rgb, list(size))
    return TF.pil_to_tensor(rgb)


def load_numbered_images(folder, n, size=64, how_to_fix=""):
    """The images 0.png ... (n-1).png of a folder (one per entry of a list file), as uint8 (n, 3, size, size);
    size=None: at the size of 0.png (grid.py draws them as they are).

    Missing or extra numbered images are refused by name: the folder must match the label file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ICLEVRError(f"{folder}: no such folder{_hint(how_to_fix)}")
    numbered = {p.name for p in folder.iterdir() if re.fullmatch(r"\d+\.png", p.name)}
    expected = {f"{i}.png" for i in range(n)}
    missing = sorted(expected - numbered, key=lambda x: int(x[:-4]))
    extra = sorted(numbered - expected, key=lambda x: int(x[:-4]))
    if missing:
        raise ICLEVRError(f"{folder}: {len(missing)} of {n} images missing ({', '.join(missing[:5])}"
                          f"{', ...' if len(missing) > 5 else ''}){_hint(how_to_fix)}")
    if extra:
        raise ICLEVRError(f"{folder}: extra images {', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''} "
                          f"for a label file of {n} entries: the folder and the label file do not match")
    first = load_image(folder / "0.png", size, how_to_fix)
    return torch.stack([first, *(load_image(folder / f"{i}.png", first.shape[-2:], how_to_fix) for i in range(1, n))])


def count_numbered_images(folder):
    """n for a folder holding exactly 0.png ... n-1.png (other files are ignored); a gap is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ICLEVRError(f"{folder}: no such folder")
    names = [p.name for p in folder.iterdir() if re.fullmatch(r"\d+\.png", p.name)]
    odd = sorted(name for name in names if name != f"{int(name[:-4])}.png")
    if odd:
        raise ICLEVRError(f"{folder}: {odd[0]} is not a numbered image name (expected 0.png, 1.png, ...)")
    if not names:
        raise ICLEVRError(f"{folder}: no numbered images (0.png, 1.png, ...) in it")
    numbers = {int(name[:-4]) for name in names}
    missing = sorted(set(range(max(numbers) + 1)) - numbers)
    if missing:
        shown = ", ".join(f"{i}.png" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ICLEVRError(f"{folder}: gap in the numbered images: {shown} missing "
                          f"(found {len(numbers)} images up to {max(numbers)}.png; expected 0.png ... n-1.png)")
    return len(numbers)


def to_model_range(images_uint8):
    """uint8 (..., 3, H, W) -> float in [-1, 1]: exactly ToTensor() then Normalize(0.5, 0.5)."""
    return TF.normalize(images_uint8.float().div(255), [0.5] * 3, [0.5] * 3)


def to_uint8(images):
    """float in [-1, 1] (..., 3, H, W) -> uint8, the inverse of to_model_range (rounded, clamped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resized(images, size):
    """Images in [-1, 1] (n, 3, H, W) -> size x size (bilinear, antialiased); unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def to_64(images):
    """Images in [-1, 1] at another size -> the judge's 64x64."""
    return resized(images, 64)


class ICLEVRDataset(Dataset):
    """i-CLEVR images and/or labels.

    A dict label file (train.json) gives (image, multi_hot) pairs read from `root`; a list file
    (test.json, new_test.json) gives the multi-hot alone. Images are loaded as
    convert("RGB") -> Resize((size, size)) -> ToTensor -> Normalize((0.5,)*3, (0.5,)*3).
    With preload=True every image is decoded once into one uint8 tensor (18,009 x 3 x 64 x 64
    is 221 MB), so training is not bound by PNG decoding.
    """

    def __init__(self, root, json_path, objects_path="objects.json", image_size=64,
                 preload=False, max_objects=MAX_OBJECTS, limit=None, workers=1):
        self.label2idx = load_objects(objects_path)
        self.idx2label = {i: label for label, i in self.label2idx.items()}
        self.json_path, self.image_size = Path(json_path), image_size
        self.names, self.labels = load_label_file(json_path, self.label2idx, max_objects)
        if limit is not None:  # the first `limit` entries only: only their images need to exist
            self.names, self.labels = self.names and self.names[:limit], self.labels[:limit]
        self.multi_hot = torch.stack([encode_labels(x, self.label2idx, max_objects) for x in self.labels])
        self.root = None if root is None else Path(root)
        self.images = None
        if self.names is None:
            return
        if self.root is None:
            raise ICLEVRError(f"{json_path} names image files: pass the folder that holds them")
        present = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
        missing = [n for n in self.names if n not in present and not (self.root / n).is_file()]
        if missing:
            raise ICLEVRError(f"{self.root}: {len(missing)} of {len(self.names)} images are missing "
                              f"(first: {missing[0]}); {self._how_to_render()}")
        if preload:  # PIL decodes outside the GIL, so threads help
            with ThreadPoolExecutor(workers) as pool:
                self.images = torch.stack(list(tqdm(pool.map(self.load_image, range(len(self))), total=len(self),
                                                    desc=f"preloading {self.root}", unit="img",
                                                    disable=len(self) < 1000)))

    def _how_to_render(self):
        return (f"render them with: python render_iclevr.py --json {self.json_path} --out {self.root} "
                "(or copy the course's i-CLEVR images there)")

    def load_image(self, i):
        """Image i as a uint8 tensor (3, size, size)."""
        return load_image(self.root / self.names[i], self.image_size, self._how_to_render())

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.names is None:
            return self.multi_hot[i]
        image = self.images[i] if self.images is not None else self.load_image(i)
        return to_model_range(image), self.multi_hot[i]


# ---------------------------------------------------------------- per-object masks (render_iclevr.py --masks)
MASKS_JSON = "masks.json"  # what a mask folder was made for: label file, its sha256, render settings, count
MASK_IDENTITY_IGNORES = ("label_file", "count")  # the same labels under another path, or more of them, fit


def mask_record(folder, label_file, settings, count=None):
    """Start (count None: creates the folder) or finish (count: masks written) a mask folder's masks.json.
    A folder is only continued for the same label file contents and render settings: it never mixes renders."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ICLEVRError(f"cannot use mask folder {folder}: {e.strerror or e}") from None
    path = Path(folder) / MASKS_JSON
    record = dict(label_file=str(label_file), label_sha256=sha256_of(label_file), **settings)
    old = read_json(path) if path.is_file() else {}
    same = {k: v for k, v in record.items() if k not in MASK_IDENTITY_IGNORES}
    if not isinstance(old, dict) or old and {k: v for k, v in old.items() if k not in MASK_IDENTITY_IGNORES} != same:
        raise ICLEVRError(f"{folder} holds masks made for another label file or other settings (see {path}); "
                          "use another --masks folder")
    if count is None and old:
        return
    count = max(count or 0, old.get("count", 0))
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps({**record, "count": count}, indent=1)))


def load_masks(mask_root, names_or_count, label_file, size=64):
    """Object indices per pixel from a render_iclevr.py --masks folder, in the dataset's order: uint8 (n, size,
    size), 0 = ground, k = the k-th label of that image's list. names_or_count: a dict file's image names, or
    the length of a list file (0.png ... n-1.png). Resized nearest-neighbour (indices must never blend); size may
    be (height, width). A folder made for another label file, short, or with an index beyond its image's
    objects is refused in one line."""
    root, label_file = Path(mask_root), Path(label_file)
    how = f"make them with: python render_iclevr.py --json {label_file} --masks {root} (and its --out, --seed)"
    if not root.is_dir():
        raise ICLEVRError(f"{root}: no such mask folder; {how}")
    if not (root / MASKS_JSON).is_file():
        raise ICLEVRError(f"{root}: no {MASKS_JSON}, so not a mask folder of render_iclevr.py --masks; {how}")
    info, data = read_json(root / MASKS_JSON), read_json(label_file)
    if not isinstance(info, dict) or type(info.get("count")) is not int:
        raise ICLEVRError(f"{root / MASKS_JSON}: expected the dict render_iclevr.py --masks writes, with a count")
    if info.get("label_sha256") != sha256_of(label_file):
        raise ICLEVRError(f"{root}: masks made for {info.get('label_file')}, not for {label_file} (their sha256 "
                          f"differ); use the mask folder rendered from {label_file}, or {how}")
    names = [f"{i}.png" for i in range(names_or_count)] if isinstance(names_or_count, int) else list(names_or_count)
    if info["count"] < len(names):
        raise ICLEVRError(f"{root}: holds {info['count']} masks, fewer than the {len(names)} images (an interrupted "
                          f"or --limit render); rerun the command that made it without --limit")
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise ICLEVRError(f"{root}: {len(missing)} of {len(names)} masks are missing (first: {missing[0]}); {how}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    masks = torch.zeros((len(names), *size), dtype=torch.uint8)
    for i, name in enumerate(names):
        k = len(data) if isinstance(data, dict) or not re.fullmatch(r"\d+\.png", name) else int(name[:-4])
        labels = data.get(name) if isinstance(data, dict) else data[k] if k < len(data) else None
        if not isinstance(labels, list):
            raise ICLEVRError(f"{label_file}: no entry for {name}, so its mask cannot be checked")
        try:
            with Image.open(root / name) as im:
                mode, mask = im.mode, np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ICLEVRError(f"cannot read mask {root / name} ({e}); {how}") from None
        if mode != "L" or mask.max(initial=0) > len(labels):
            raise ICLEVRError(f"{root / name}: not a mask of this image: expected an 8-bit gray (L) PNG of values "
                              f"0..{len(labels)} (0 ground, k the k-th of its {len(labels)} labels), got mode "
                              f"{mode} with values up to {mask.max(initial=0)}")
        if mask.shape != size:
            mask = np.asarray(Image.fromarray(mask).resize(size[::-1], Image.NEAREST))
        masks[i] = torch.from_numpy(mask.copy())
    return masks



def frame_masks(frames, ground=None, threshold=20, chroma=0.5, darkest=0.5):
    """Object masks without a renderer (the course's images have none), from a scene's frames X_0, X_1, ...
    (uint8 (k, H, W, 3)) that add one object each, as train.json's `_0/_1/_2` do: uint8 (H, W) for the last
    frame, in load_masks' format. Object k is where frame k-1 differs from frame k-2 by more than `threshold`
    (the largest channel difference, 0-255), except changes that look like a shadow: every channel darker by
    one factor in linear light (spread within `chroma` of it) and at most 1/`darkest` times darker. A later
    object overwrites an earlier one (it is seen in front of it wherever it changed its pixels). The first
    object needs `ground`, the empty scene (uint8 (H, W, 3), e.g. the per-pixel median of many X_0 of a fixed
    camera); without it, it stays 0: not derivable."""
    frames = np.asarray(frames, dtype=np.float32)
    mask = np.zeros(frames.shape[1:3], dtype=np.uint8)
    before = [None if ground is None else np.asarray(ground, dtype=np.float32), *frames[:-1]]
    for k, (old, new) in enumerate(zip(before, frames), 1):
        if old is None:
            continue
        ratio = ((new / 255) ** 2.2 + 1e-3) / ((old / 255) ** 2.2 + 1e-3)  # linear light: a shadow scales it
        mean = ratio.mean(-1)
        shadow = ((ratio.max(-1) - ratio.min(-1)) < chroma * mean) & (darkest < mean) & (mean < 1)
        mask[(np.abs(new - old).max(-1) > threshold) & ~shadow] = k
    return mask
