"""The measuring tools of issue 35: held-out three-object label sets and the detail of generated images."""
import importlib
import json

import torch
import torch.nn.functional as F

from conftest import ROOT


def load(name):
    return importlib.import_module(f"bench.{name}")


def test_three_object_sets_are_new_distinct_and_seeded(label2idx):
    tool = load("three_object_labels")
    names = sorted(label2idx)
    train = [names[:3], names[3:6]] + [[n] for n in names]
    sets = tool.held_out_sets(300, 7, label2idx, train)
    assert len({frozenset(s) for s in sets}) == 300 and all(len(set(s)) == 3 for s in sets)
    assert not {frozenset(s) for s in sets} & {frozenset(names[:3]), frozenset(names[3:6])}
    assert sets == tool.held_out_sets(300, 7, label2idx, train) != tool.held_out_sets(300, 8, label2idx, train)


def test_the_shipped_three_object_file_is_what_its_command_draws(label2idx):
    tool = load("three_object_labels")
    _, train = tool.load_label_file(ROOT / "train.json", label2idx)
    shipped = json.loads((ROOT / "three_objects.json").read_text())
    assert shipped == tool.held_out_sets(64, 35, label2idx, train)


def test_detail_falls_when_an_image_is_drawn_at_32x32_and_upsampled():
    detail = load("five_seeds").detail
    torch.manual_seed(0)
    sharp = (torch.rand(4, 3, 64, 64) > 0.5).to(torch.uint8) * 255
    soft = F.interpolate(F.interpolate(sharp.float(), size=32, mode="bilinear", antialias=True), size=64,
                         mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    assert detail(soft) < 0.9 * detail(sharp) and detail(sharp) == detail(sharp.clone())
    assert detail(torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)) == 0


class CountingDrawer:
    """Stands in for a Sampler: counts its draws, images depend on the seed."""
    refiner = None

    def __init__(self, path):
        self.path, self.calls = path, 0

    def settings(self):
        return {"checkpoint": str(self.path), "steps": 50}

    def __call__(self, multi_hot, seed=0):
        self.calls += 1
        return torch.rand(len(multi_hot), 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_five_seeds_cache_reuses_the_same_draw_and_not_another_files(tmp_path):
    cached_draw = load("five_seeds").cached_draw
    ckpt, labels, cache = tmp_path / "g.safetensors", tmp_path / "l.json", tmp_path / "cache"
    ckpt.write_bytes(b"weights")
    labels.write_text('[["red cube"]]')
    drawer, multi_hot = CountingDrawer(ckpt), torch.zeros(1, 24)
    first = cached_draw(drawer, multi_hot, 0, labels, cache)
    assert torch.equal(cached_draw(drawer, multi_hot, 0, labels, cache), first) and drawer.calls == 1
    assert not torch.equal(cached_draw(drawer, multi_hot, 1, labels, cache), first) and drawer.calls == 2
    ckpt.write_bytes(b"other weights")  # the same path, another model: drawn again
    cached_draw(drawer, multi_hot, 0, labels, cache)
    assert drawer.calls == 3 and first.dtype == torch.uint8 and first.shape == (1, 3, 64, 64)


def test_curve_places_checkpoints_at_their_minutes_and_keeps_both_judges(tmp_path):
    from bench import curve
    entry = {"settings": {"epoch": 6, "checkpoint": "unused"}, "json": "test.json", "judges": ["a", "b"],
             "accuracy": [[0.5, 0.7], [0.6, 0.6]]}
    later = {**entry, "settings": {"epoch": 2, "checkpoint": "unused"}, "accuracy": [[0.25, 0.25], [0.3, 0.3]]}
    path = tmp_path / "five.json"
    path.write_text(json.dumps([entry, later]))
    rows = curve.points([path], minutes_per_epoch=3.0)["test.json"]
    assert [(m, e) for m, e, *_ in rows] == [(6.0, 2), (18.0, 6)]  # sorted by minutes
    text = curve.table({"test.json": rows})
    assert "| 18 | 6 | 0.600 (0.500-0.700) | 0.600 (0.600-0.600) |" in text
    curve.main([str(path), "--minutes-per-epoch", "3", "--out", str(tmp_path / "c")])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "c.md").is_file()
