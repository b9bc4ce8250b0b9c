"""ICLEVRDataset on rendered folders and on images shaped like the course's real ones."""
import json

import numpy as np
import torch
from PIL import Image

from conftest import ROOT, write_json
from dataset import ICLEVRDataset, encode_labels, to_model_range

OBJECTS = ROOT / "objects.json"


def test_train_style_items(tiny_iclevr, train_head, label2idx):
    root, labels = tiny_iclevr
    ds = ICLEVRDataset(root, labels, OBJECTS)
    assert len(ds) == 9 and ds.idx2label[label2idx["red sphere"]] == "red sphere"
    for i, name in enumerate(train_head):
        image, multi_hot = ds[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert -1 <= image.min() < image.max() <= 1
        assert multi_hot.shape == (24,) and multi_hot.sum() == len(train_head[name])
        assert {ds.idx2label[j] for j in multi_hot.nonzero().flatten().tolist()} == set(train_head[name])
        pixels = np.asarray(Image.open(root / name), dtype=np.float32)
        assert torch.allclose(image, torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1, atol=1e-6)


def test_preload_gives_exactly_the_lazy_items(tiny_iclevr):
    root, labels = tiny_iclevr
    lazy, pre = ICLEVRDataset(root, labels, OBJECTS), ICLEVRDataset(root, labels, OBJECTS, preload=True)
    assert pre.images.dtype == torch.uint8 and pre.images.shape == (9, 3, 64, 64)
    for i in range(len(lazy)):
        assert torch.equal(lazy[i][0], pre[i][0]) and torch.equal(lazy[i][1], pre[i][1])


def test_smaller_image_size(tiny_iclevr):
    root, labels = tiny_iclevr
    assert ICLEVRDataset(root, labels, OBJECTS, image_size=32)[0][0].shape == (3, 32, 32)


def test_test_style_file_gives_multi_hot_only(tmp_path, label2idx):
    path = write_json(tmp_path / "t.json", [["red sphere"], ["cyan cube", "gray cylinder", "blue sphere"]])
    ds = ICLEVRDataset(None, path, OBJECTS)
    assert len(ds) == 2 and torch.equal(ds[1], encode_labels(["cyan cube", "gray cylinder", "blue sphere"], label2idx))
    assert ds[0][label2idx["red sphere"]] == 1 and ds[0].sum() == 1


def test_real_course_images_rgba_320x240(tmp_path):
    """The real i-CLEVR PNGs are 320x240 RGBA: they are squashed to 64x64 RGB, alpha dropped."""
    color = (200, 40, 90)
    for k in range(2):
        Image.new("RGBA", (320, 240), color + (255 if k else 0,)).save(tmp_path / f"CLEVR_train_000000_{k}.png")
    labels = write_json(tmp_path / "l.json", {"CLEVR_train_000000_0.png": ["red sphere"],
                                              "CLEVR_train_000000_1.png": ["red sphere", "cyan cube"]})
    for preload in (False, True):
        ds = ICLEVRDataset(tmp_path, labels, OBJECTS, preload=preload)
        image, _ = ds[1]
        assert image.shape == (3, 64, 64)
        expected = torch.tensor(color, dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(image.mean((1, 2)), expected, atol=1e-5)
        assert torch.allclose(ds[0][0], ds[1][0]), "alpha must not change the colour"


def test_to_model_range_matches_totensor_normalize():
    from torchvision import transforms
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ours = to_model_range(torch.from_numpy(pixels).permute(2, 0, 1))
    assert torch.equal(ours, reference(Image.fromarray(pixels)))


def test_dataloader_batches(tiny_iclevr):
    root, labels = tiny_iclevr
    loader = torch.utils.data.DataLoader(ICLEVRDataset(root, labels, OBJECTS, preload=True), batch_size=4)
    images, multi_hot = next(iter(loader))
    assert images.shape == (4, 3, 64, 64) and multi_hot.shape == (4, 24)
    assert json.loads(labels.read_text())  # the fixture's file stays valid JSON


def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    from dataset import load_image
    Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert load_image(tmp_path / "g16.png").unique().tolist() == [128]  # convert("RGB") alone gives 255
