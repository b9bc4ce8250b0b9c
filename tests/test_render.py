"""The renderer: determinism, i-CLEVR's one-object-per-step scenes, colours, layout rules, resume,
domain randomization (--randomize, --set) and bench/style_shift.py."""
import colorsys
import hashlib
import importlib
import json
import math
from itertools import combinations, product

import numpy as np
import pytest
from PIL import Image

import render_iclevr
from bench.common import rendered_layouts
from clevr_scene import SceneObject, render_scene
from clevr_style import PALETTE, RANDOMIZABLE, draw_albedo, randomization, srgb_to_linear
from conftest import ROOT, write_json
from render_iclevr import MIN_GAP, MIN_VISIBLE, place_scene, scene_rng, scene_setup


def render(args):
    render_iclevr.main(args + ["--objects", str(ROOT / "objects.json")])


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, tiny_iclevr):
    out, labels = tiny_iclevr  # rendered with --workers 1
    render(["--json", str(labels), "--out", str(tmp_path / "w2"), "--workers", "2"])
    one, two = pngs(out), pngs(tmp_path / "w2")
    assert len(one) == 9 and one == two
    render(["--json", str(labels), "--out", str(tmp_path / "s1"), "--seed", "1", "--workers", "2"])
    other = pngs(tmp_path / "s1")
    assert all(other[name] != one[name] for name in one), "another seed must give other layouts"


def test_each_step_adds_one_object_and_its_shadow_only(tiny_iclevr, train_head):
    out, _ = tiny_iclevr
    for scene in sorted({name.rsplit("_", 1)[0] for name in train_head}):
        labels = train_head[f"{scene}_2.png"]
        objects = place_scene(labels, scene_rng(0, scene))
        assert [f"{o.color} {o.shape}" for o in objects] == labels
        expected, coverage = render_scene(objects, counts=[1, 2, 3])
        files = [np.asarray(Image.open(out / f"{scene}_{k}.png")) for k in range(3)]
        for k in range(3):
            assert np.array_equal(files[k], expected[k]), "files must be exactly the rendered scene"
        for k in (1, 2):
            before, after = files[k - 1].astype(int), files[k].astype(int)
            new = coverage[k][k] > 0
            near_new = np.zeros_like(new)  # the new object and a 1-pixel ring (anti-aliasing)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    near_new |= np.roll(np.roll(new, dy, 0), dx, 1)
            assert new.sum() >= 10
            changed = (before != after).any(-1)
            brighter = (after > before).any(-1)
            assert changed[new].mean() > 0.9, "the new object must appear"
            assert not (changed & ~near_new & brighter).any(), "away from the new object only shadows may fall"
            assert (changed & ~near_new).sum() < 0.15 * changed.size


def nearest_palette_color(pixels):
    chroma = lambda rgb: rgb / rgb.sum(-1, keepdims=True)  # noqa: E731
    mean = chroma(srgb_to_linear(pixels / 255).mean(0))
    names = list(PALETTE)
    dist = [np.abs(mean - chroma(np.array(PALETTE[n]) / 255)).sum() for n in names]
    return names[int(np.argmin(dist))]


def test_single_object_is_drawn_in_its_labelled_color(label2idx):
    for label in label2idx:
        objects = place_scene([label], scene_rng(0, label))
        (image,), (coverage,) = render_scene(objects)
        inside = coverage[0] > 0.99
        assert inside.sum() >= 10, label
        assert nearest_palette_color(image[inside].astype(float)) == label.split()[0], label


def test_layouts_follow_clevr_rules(label2idx):
    labels = list(label2idx)
    rng = np.random.default_rng(0)
    for i in range(40):
        scene = [str(x) for x in rng.choice(labels, 3, replace=False)]
        objects = place_scene(scene, scene_rng(0, f"layout{i}"))
        for a, b in combinations(objects, 2):
            assert math.hypot(a.x - b.x, a.y - b.y) - a.footprint - b.footprint >= MIN_GAP
        assert all(abs(o.x) <= 3 and abs(o.y) <= 3 for o in objects)
        (_,), (coverage,) = render_scene(objects)
        for k in range(3):
            border = np.concatenate([coverage[k][0], coverage[k][-1], coverage[k][:, 0], coverage[k][:, -1]])
            assert border.max() == 0, "objects stay inside the frame"
            assert coverage[k].sum() >= MIN_VISIBLE * 64 * 64, "every object is visible"


def test_cube_rotation_and_shapes_differ():
    images = [render_scene([SceneObject(shape, "red", 0.0, 0.0, theta=0.3)])[0][0]
              for shape in ("cube", "sphere", "cylinder")]
    turned = render_scene([SceneObject("cube", "red", 0.0, 0.0, theta=1.0)])[0][0]
    assert not np.array_equal(images[0], turned)
    for a, b in combinations(images, 2):
        assert (a != b).any(-1).sum() > 20


def test_interrupted_render_resumes_without_rewriting(tmp_path, tiny_iclevr):
    out, labels = tiny_iclevr
    part = tmp_path / "part"
    render(["--json", str(labels), "--out", str(part), "--workers", "1", "--limit", "4"])
    (part / "CLEVR_train_000001_0.png").unlink()
    (part / ".CLEVR_train_000001_0.png.123.tmp").write_bytes(b"half a png")  # left by a kill
    kept = (part / "CLEVR_train_000000_1.png").stat().st_mtime_ns
    render(["--json", str(labels), "--out", str(part), "--workers", "2"])
    assert pngs(part) == pngs(out)
    assert not list(part.glob(".*.tmp"))
    assert (part / "CLEVR_train_000000_1.png").stat().st_mtime_ns == kept


def test_other_settings_refuse_to_continue_a_folder(tmp_path, tiny_iclevr, capsys):
    _, labels = tiny_iclevr
    render(["--json", str(labels), "--out", str(tmp_path), "--limit", "1"])
    with pytest.raises(SystemExit) as e:
        render(["--json", str(labels), "--out", str(tmp_path), "--seed", "5"])
    assert e.value.code == 2 and "seed=0 (now 5)" in capsys.readouterr().err


def test_list_files_random_sets_and_sizes(tmp_path, label2idx):
    listed = write_json(tmp_path / "t.json", [["red sphere"], ["cyan cube", "gray cylinder"]])
    render(["--json", str(listed), "--out", str(tmp_path / "list"), "--size", "40x30"])
    assert sorted(pngs(tmp_path / "list")) == ["0.png", "1.png"]
    assert Image.open(tmp_path / "list" / "1.png").size == (40, 30)
    render(["--random", "5", "--seed", "3", "--out", str(tmp_path / "rand"), "--size", "32"])
    sets = json.loads((tmp_path / "rand" / "labels.json").read_text())
    assert len(sets) == 5 and all(1 <= len(s) <= 3 and len(set(s)) == len(s) for s in sets)
    assert all(label in label2idx for s in sets for label in s)
    assert sorted(pngs(tmp_path / "rand")) == sorted(f"{i}.png" for i in range(5))
    assert Image.open(tmp_path / "rand" / "0.png").size == (32, 32)


def test_rendered_layouts_redraw_the_images_of_the_folder(tmp_path, tiny_iclevr, train_head):
    """Analyses (bench/judge_misses.py, bench/judge_proxy.py --aux) recompute each scene from the seed:
    the recomputed objects must draw exactly the PNGs on disk, prefixes X_0, X_1 included."""
    out, _ = tiny_iclevr
    names, lists = list(train_head), list(train_head.values())
    settings, layouts = rendered_layouts(out, names, lists)
    assert sorted(layouts) == sorted(names)
    for name, labels in zip(names, lists):
        objects = layouts[name]
        assert [f"{o.color} {o.shape}" for o in objects] == labels
        image = render_scene(objects, tuple(settings["size"]), settings["supersample"])[0][0]
        assert np.array_equal(image, np.asarray(Image.open(out / name).convert("RGB"))), name
    with pytest.raises(render_iclevr.ICLEVRError, match="no .render.json"):
        rendered_layouts(tmp_path, names, lists)


# sha256 of PNGs rendered by render_iclevr.py at commit 36d9ea9, before --randomize existed (--workers 1,
# --objects objects.json): the fixture tiny_iclevr's folder (--json <the first 9 names of sorted train.json>),
# `--json test.json --limit 2 --size 40x30` and `--json test.json --limit 3 --object-size mixed --material mixed
# --seed 4`. Unrandomized renders must stay these bytes (Pillow is pinned in requirements.txt).
PINNED = {
    "CLEVR_train_000000_0.png": "104a26fcee017867c0c5bbdc2679ae2cf459b95428d1f5b9413d0e1d6eb65ecd",
    "CLEVR_train_000000_1.png": "d9dc5c2d4fa4e1186a3aac25bac646bb8daf07997abeedf5e1542269f0f25082",
    "CLEVR_train_000000_2.png": "e9c073bbcd117d6c4dd1dbbbd10cf0bab75166688d33b7b2603e3912a8100347",
    "CLEVR_train_000001_0.png": "ec21ef0324ca4932d5f1839c365b8dcca3679259cbe75f3eb7e4ba739fec98a1",
    "CLEVR_train_000001_1.png": "1ff2fb1bd160769d5f1ffc70d53a1a8089619dcb65d25fef8b99ed0ce57b4506",
    "CLEVR_train_000001_2.png": "7bc658c28c4d75e81f25c80b9a610b8640efd66ebab463fb147a35001731b92d",
    "CLEVR_train_000002_0.png": "669cbb10eb8215ca4a729935a8794f1ef441a39a1daa4915bc2b194be290aecd",
    "CLEVR_train_000002_1.png": "78b43289d8f0b3441743740be5ec76d2531fbfa3a8b12aa93785f66f129d2d7e",
    "CLEVR_train_000002_2.png": "bb68248dcd1cd6d751e4ec913c6eec8d1c32d4a7f2270e920e4a64887f1cabb2",
    "40x30/0.png": "2cd0c8812e69732172835b55d98d62b884d412b3f12185015c8d4d76af08a68c",
    "40x30/1.png": "c54f0118d8a5f80706900353db06922a9b7e609438140f96a43c6cb08b7b83d4",
    "mixed/0.png": "02ab924531fdbe47693292b1670fa6ef459414cc13d4118b8b04a0b9605c59a8",
    "mixed/1.png": "3ec03ad1c252fd95ac67f5867f99f9c32df7b880413fa9dba1cf80e7f5b4028e",
    "mixed/2.png": "9c441be15bd1af7422dc917bc2119cba5b32e382d0778cc9d9d4b5de1a2540d9",
}


def test_unrandomized_renders_keep_their_bytes(tmp_path, tiny_iclevr):
    out, _ = tiny_iclevr
    test_json = str(ROOT / "test.json")
    render(["--json", test_json, "--limit", "2", "--size", "40x30", "--out", str(tmp_path / "40x30"), "--workers", "1"])
    render(["--json", test_json, "--limit", "3", "--object-size", "mixed", "--material", "mixed", "--seed", "4",
            "--out", str(tmp_path / "mixed"), "--workers", "1"])
    files = {**pngs(out), **{f"{d}/{n}": b for d in ("40x30", "mixed") for n, b in pngs(tmp_path / d).items()}}
    assert {name: hashlib.sha256(data).hexdigest() for name, data in files.items()} == PINNED
    assert "randomize" not in json.loads((out / ".render.json").read_text()), "the manifest too stays as it was"


def test_randomized_renders_are_deterministic_recorded_and_redrawn(tmp_path, capsys):
    args = ["--random", "4", "--seed", "2", "--randomize", "1", "--set", "hue=-2,2"]
    render(args + ["--out", str(tmp_path / "a"), "--workers", "1"])
    render(args + ["--out", str(tmp_path / "b"), "--workers", "2"])
    render(["--random", "4", "--seed", "2", "--out", str(tmp_path / "plain")])
    a = pngs(tmp_path / "a")
    assert len(a) == 4 and a == pngs(tmp_path / "b"), "the same seed gives the same bytes, whatever --workers"
    assert all(a[name] != data for name, data in pngs(tmp_path / "plain").items())
    settings = json.loads((tmp_path / "a" / ".render.json").read_text())
    assert settings["randomize"] == 1.0 and settings["set"] == {"hue": [-2.0, 2.0]}
    capsys.readouterr()
    for other, diff in (([*args[:5], "0.5", *args[6:]], "randomize=1.0 (now 0.5)"),
                        (args[:6], "set={'hue': [-2.0, 2.0]} (now {})"),
                        (args[:4], "randomize=1.0 (now None)")):
        with pytest.raises(SystemExit) as e:
            render(other + ["--out", str(tmp_path / "a")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "rendered with other settings" in err and diff in err, err
    lists = json.loads((tmp_path / "a" / "labels.json").read_text())
    settings, layouts = rendered_layouts(tmp_path / "a", None, lists)
    for name, objects in layouts.items():
        image = render_scene(objects, (64, 64), 3, style=settings["styles"][name])[0][0]
        assert np.array_equal(image, np.asarray(Image.open(tmp_path / "a" / name).convert("RGB"))), name


def test_every_randomized_quantity_changes_the_image():
    labels = ["red sphere", "cyan cube"]
    objects, style = scene_setup(labels, 0, "k", ranges=randomization(0))
    base = render_scene(objects, style=style)[0][0]
    assert np.abs(base.astype(int) - render_scene(place_scene(labels, scene_rng(0, "k")))[0][0]).max() <= 1, \
        "all at their off values, the randomized path draws CLEVR's scene (to rounding)"
    for name, (off, _, _, (lo, hi), _) in RANDOMIZABLE.items():
        value = hi if hi != off else lo
        objects, style = scene_setup(labels, 0, "k", ranges=randomization(0, {name: (value, value)}))
        assert not np.array_equal(render_scene(objects, style=style)[0][0], base), name


@pytest.mark.parametrize("args, expected", [
    (["--randomize", "1.5"], "--randomize must be between 0 (off) and 1"),
    (["--randomize", "-0.1"], "--randomize must be between 0 (off) and 1"),
    (["--randomize", "nan"], "--randomize must be between 0 (off) and 1"),
    (["--set", "hue=6"], "expected hue=V or hue=LO,HI with -5 <= LO <= HI <= 5"),
    (["--set", "blur=2,1"], "expected blur=V or blur=LO,HI with 0 <= LO <= HI <= 4"),
    (["--set", "blur"], "expected blur=V"),
    (["--set", "blur=much"], "expected blur=V"),
    (["--set", "blur=1,2,3"], "expected blur=V"),
    (["--set", "brightness=1"], "unknown name 'brightness'; valid: camera_azimuth, "),
    (["--set", "blur=1", "--set", "blur=2"], "--set blur is given twice"),
    (["--randomize", "1", "--object-size", "small"], "--object-size small does not mix with --randomize or --set"),
    (["--set", "blur=1", "--material", "mixed"], "--material mixed does not mix with --randomize or --set"),
])
def test_bad_randomization_is_one_line_and_writes_nothing(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as e:
        render(["--random", "2", "--out", str(tmp_path / "out")] + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def lab(linear_rgb):
    """CIELAB (D65) of a linear sRGB colour: distances in it follow what a person sees."""
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear_rgb
    f = np.cbrt(xyz / np.array([0.9505, 1.0, 1.089]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_colour_jitter_keeps_each_name():
    """Every corner of the colour bounds (hue, saturation, value at --randomize 1, the widest --set allows) stays
    nearer its own palette colour than any other, in CIELAB, lit (0.4 x albedo) or in shade (0.2 x albedo)."""
    ranges = randomization(1)
    assert all(ranges[k] == RANDOMIZABLE[k][3] for k in ("hue", "saturation", "value")), "--set cannot go further"
    for color, rgb in PALETTE.items():
        h, s, v = colorsys.rgb_to_hsv(*(np.array(rgb) / 255))
        for dh, ds, dv in product(ranges["hue"], ranges["saturation"], ranges["value"]):
            jittered = colorsys.hsv_to_rgb((h + dh / 360) % 1, min(1, s * ds), min(1, v * dv))
            for light in (0.4, 0.2):
                dist = {name: np.linalg.norm(lab(light * np.array(jittered)) - lab(light * np.array(p) / 255))
                        for name, p in PALETTE.items()}
                assert min(dist, key=dist.get) == color, (color, dh, ds, dv, light)
    rng = np.random.default_rng(0)
    assert all(np.allclose(draw_albedo(c, randomization(0), rng), np.array(PALETTE[c]) / 255) for c in PALETTE)


def test_randomized_objects_are_drawn_in_their_labelled_color(label2idx):
    ranges = randomization(1, {"metal": (0, 0), "lowres": (1, 1), "blur": (0, 0), "noise": (0, 0)})
    for label in label2idx:
        objects, style = scene_setup([label], 0, label, ranges=ranges)
        (image,), (coverage,) = render_scene(objects, style=style)
        inside = coverage[0] > 0.99
        assert inside.sum() >= 5, label
        assert nearest_palette_color(image[inside].astype(float)) == label.split()[0], label


def test_style_shift_bench_prints_its_table(tmp_path, capsys):
    import torch

    from evaluator import build_network
    judge = tmp_path / "judge.pth"
    torch.save({"model": build_network().state_dict()}, judge)
    style_shift = importlib.import_module("bench.style_shift")
    rows, results = style_shift.main(["--n", "3", "--root", str(tmp_path / "r"), "--judge", str(judge),
                                      "--workers", "1", "--device", "cpu"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows) == 1 + len(style_shift.SHIFTS) + 1 + 3
    assert "judge.pth" in table[0] and all(line.count("|") == 4 for line in table)
    assert table[1].startswith("| standard renders | >= 0.995 | ")
    assert len(results) == 1 and all(total > 0 for _, total in results[0])
