"""Per-object masks: render_iclevr.py --masks, dataset.load_masks' refusals, nearest resizing, and masks
derived from consecutive frames (dataset.frame_masks)."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import render_iclevr
from clevr_scene import object_mask
from clevr_style import PALETTE, srgb_to_linear
from conftest import ROOT, write_json
from dataset import MASKS_JSON, frame_masks, load_masks
from utils import ICLEVRError


def render(*args):
    render_iclevr.main([*map(str, args), "--objects", str(ROOT / "objects.json"), "--workers", "1"])


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def masked(tmp_path_factory, tiny_iclevr):
    """tiny_iclevr's label file rendered again, with --masks: (images, masks, label file)."""
    _, labels = tiny_iclevr
    tmp = tmp_path_factory.mktemp("masked")
    render("--json", labels, "--out", tmp / "images", "--masks", tmp / "masks")
    return tmp / "images", tmp / "masks", labels


def refusal(call):
    """The one line of the ICLEVRError that call() raises."""
    with pytest.raises(ICLEVRError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_images_are_byte_identical_with_and_without_masks(masked, tiny_iclevr):
    images, masks, _ = masked
    assert pngs(images) == pngs(tiny_iclevr[0]) and len(pngs(images)) == 9
    assert set(pngs(masks)) == set(pngs(images)), "one mask per image, by the same name"
    info = json.loads((masks / MASKS_JSON).read_text())
    assert info["count"] == 9 and info["seed"] == 0 and info["size"] == [64, 64] and len(info["label_sha256"]) == 64


def test_masks_hold_each_object_in_label_order(masked):
    images, masks, labels = masked
    entries = json.loads(labels.read_text())
    chroma = lambda rgb: rgb / rgb.sum(-1, keepdims=True)  # noqa: E731
    checked = 0
    for name, objects in entries.items():
        with Image.open(masks / name) as im:
            assert im.mode == "L" and im.size == (64, 64)
            mask = np.asarray(im)
        assert set(np.unique(mask)) == set(range(len(objects) + 1)), "ground plus every object, nothing more"
        image = srgb_to_linear(np.asarray(Image.open(images / name).convert("RGB")) / 255)
        colours = [label.split()[0] for label in objects]
        for k, colour in enumerate(colours, 1):
            seen = chroma(image[mask == k].mean(0))
            dist = {c: np.abs(seen - chroma(np.array(PALETTE[c]) / 255)).sum() for c in colours}
            assert min(dist, key=dist.get) == colour, f"{name}: mask {k} is not where the {colour} object is"
            checked += len(set(colours)) > 1
    assert checked >= 6


def test_a_rerun_completes_masks_and_images_byte_identically(masked, tmp_path):
    images, masks, labels = masked
    shutil.copytree(images, tmp_path / "images")
    shutil.copytree(masks, tmp_path / "masks")
    name0, name1, name2 = sorted(json.loads(labels.read_text()))[:3]
    (tmp_path / "masks" / name1).unlink()  # an interrupted run: one mask lost, one image and its mask lost
    (tmp_path / "images" / name2).unlink()
    (tmp_path / "masks" / name2).unlink()
    (tmp_path / "masks" / f".{name0}.123.tmp").write_bytes(b"partial")
    render("--json", labels, "--out", tmp_path / "images", "--masks", tmp_path / "masks")
    assert pngs(tmp_path / "images") == pngs(images) and pngs(tmp_path / "masks") == pngs(masks)
    assert not list((tmp_path / "masks").glob(".*.tmp"))
    fresh = tmp_path / "fresh_masks"  # masks added later to a finished image folder: the same bytes
    render("--json", labels, "--out", tmp_path / "images", "--masks", fresh)
    assert pngs(fresh) == pngs(masks)


def test_list_files_and_random_sets(tmp_path):
    labels = write_json(tmp_path / "list.json", [["red sphere"], ["cyan cube", "gray cylinder"]])
    render("--json", labels, "--out", tmp_path / "list", "--masks", tmp_path / "list_masks", "--size", "32")
    assert set(pngs(tmp_path / "list_masks")) == {"0.png", "1.png"}
    masks = load_masks(tmp_path / "list_masks", 2, labels, size=32)
    assert masks.shape == (2, 32, 32) and masks[0].max() == 1 and masks[1].max() == 2
    randomized = ["--random", 3, "--seed", 4, "--size", "32", "--randomize", 1]  # its style draws random numbers
    render(*randomized, "--out", tmp_path / "random", "--masks", tmp_path / "random_masks")
    render(*randomized, "--out", tmp_path / "random_unmasked")
    assert pngs(tmp_path / "random") == pngs(tmp_path / "random_unmasked") and len(pngs(tmp_path / "random")) == 3
    lists = json.loads((tmp_path / "random" / "labels.json").read_text())
    masks = load_masks(tmp_path / "random_masks", 3, tmp_path / "random" / "labels.json", size=32)
    assert [int(m.max()) for m in masks] == [len(x) for x in lists]


def test_load_masks_in_order_and_resized_nearest(masked):
    _, masks, labels = masked
    names = list(json.loads(labels.read_text()))
    at64 = load_masks(masks, names, labels)
    assert at64.dtype.is_floating_point is False and at64.shape == (9, 64, 64)
    assert np.array_equal(at64[3].numpy(), np.asarray(Image.open(masks / names[3])))
    at128 = load_masks(masks, names, labels, size=128)
    assert (at128[:, ::2, ::2] == at64).all() and (at128[:, 1::2, 1::2] == at64).all()
    at32 = load_masks(masks, names, labels, size=32)
    assert (at32 == at64[:, 1::2, 1::2]).all(), "nearest: a pixel of the original, never a blend"


def test_load_masks_refusals(masked, tmp_path):
    _, masks, labels = masked
    names = list(json.loads(labels.read_text()))
    assert "no such mask folder" in refusal(lambda: load_masks(tmp_path / "nowhere", names, labels))
    (tmp_path / "empty").mkdir()
    assert MASKS_JSON in refusal(lambda: load_masks(tmp_path / "empty", names, labels))
    other = write_json(tmp_path / "other.json", {**json.loads(labels.read_text()), "extra_0.png": ["red cube"]})
    assert "sha256" in refusal(lambda: load_masks(masks, names, other))
    copy = tmp_path / "copy"
    shutil.copytree(masks, copy)
    (copy / names[4]).unlink()
    assert "1 of 9 masks are missing" in refusal(lambda: load_masks(copy, names, labels))
    info = json.loads((masks / MASKS_JSON).read_text())
    write_json(copy / MASKS_JSON, json.dumps({**info, "count": 5}))
    assert "fewer than the 9 images" in refusal(lambda: load_masks(copy, names, labels))
    shutil.copy(masks / names[4], copy / names[4])
    write_json(copy / MASKS_JSON, json.dumps(info))
    one_object = next(n for n in names if len(json.loads(labels.read_text())[n]) == 1)
    Image.fromarray(np.full((64, 64), 2, dtype=np.uint8)).save(copy / one_object)
    assert "values 0..1" in refusal(lambda: load_masks(copy, names, labels))
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(copy / one_object)
    assert "mode RGB" in refusal(lambda: load_masks(copy, names, labels))


def test_cli_refuses_a_mask_folder_of_other_settings_or_the_out_folder(masked, capsys):
    images, masks, labels = masked
    for args in (["--masks", masks, "--seed", 1, "--out", images.parent / "seed1"],
                 ["--masks", images, "--out", images]):
        with pytest.raises(SystemExit) as e:
            render("--json", labels, *args)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "mask" in err


def test_object_mask_edge_rule():
    cover = np.array([[[0.4, 0.3, 2 / 9, 4 / 9, 0.0]], [[0.3, 0.4, 2 / 9, 4 / 9, 0.0]]], dtype=np.float32)
    assert object_mask(cover).tolist() == [[1, 2, 0, 1, 0]]  # most coverage wins; < half is ground; tie: earlier
    assert object_mask(np.zeros((0, 2, 3), dtype=np.float32)).shape == (2, 3)


def test_frame_masks_finds_the_added_object_not_its_shadow():
    ground = np.full((16, 16, 3), 120, dtype=np.uint8)
    first = ground.copy()
    first[2:6, 2:6] = (150, 30, 30)  # a red object
    second = first.copy()
    second[8:12, 8:12] = (30, 40, 160)  # a blue object...
    second[12:15, 8:12] = 95  # ...and its shadow on the ground: every channel darker by one factor
    second[3:6, 5] = (115, 23, 23)  # its shadow on the red object
    derived = frame_masks(np.stack([first, second]))
    assert (derived[8:12, 8:12] == 2).all() and (derived == 2).sum() == 16
    assert (derived != 2).sum() == derived.size - 16 and (derived == 1).sum() == 0, "no ground: 1st not derivable"
    derived = frame_masks(np.stack([first, second]), ground=ground)
    assert (derived[2:6, 2:6] == 1).all() and (derived == 1).sum() == 16 and (derived == 2).sum() == 16


def test_frame_masks_on_rendered_scenes(masked):
    images, masks, labels = masked
    entries = json.loads(labels.read_text())
    for scene in sorted({n.rsplit("_", 1)[0] for n in entries}):
        frames = np.stack([np.asarray(Image.open(images / f"{scene}_{k}.png").convert("RGB")) for k in range(3)])
        derived, true = frame_masks(frames), np.asarray(Image.open(masks / f"{scene}_2.png"))
        for k, label in ((2, entries[f"{scene}_2.png"][1]), (3, entries[f"{scene}_2.png"][2])):
            iou = ((derived == k) & (true == k)).sum() / ((derived == k) | (true == k)).sum()
            assert iou > (0.4 if label.startswith("gray") else 0.75), (scene, k, label, iou)
