"""grid.py, denoise.py and export.py on a tiny model trained once for the module."""
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

import numpy as np
import pytest
import torch
from PIL import Image

import denoise
import export
import grid
import model
import sampling
from conftest import ROOT, one_line_error
from dataset import encode_labels, load_numbered_images
from model import (
    GENERATOR_KIND,
    compact_state,
    expand_state,
    load_checkpoint,
    model_from_checkpoint,
    to_64,
    weights_of,
)
from sampling import image_generator, sample

OBJECTS = str(ROOT / "objects.json")
PAD = grid.PADDING


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


def write_pngs(folder, numbers, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    for i in numbers:
        Image.new("RGB", (size, size), (10 * i, 100, 200)).save(folder / f"{i}.png")
    return folder


def grid_width(columns, tile=64):
    return columns * (tile + PAD) + PAD


# grid.py


def test_grid_size_and_caption(tmp_path):
    folder = write_pngs(tmp_path / "imgs", range(5))
    grid.main(["--images", str(folder)])
    with Image.open(folder / "grid.png") as im:  # 5 images, nrow 8: one row of 5 tiles, upscaled to 64
        assert im.size == (grid_width(5), 64 + 2 * PAD)
        plain_height = im.height
    write_pngs(folder, range(5, 12))  # 12 images: a full row of 8, then 4
    out = tmp_path / "captioned.png"
    grid.main(["--images", str(folder), "--out", str(out), "--caption", "twelve images"])
    with Image.open(out) as im:
        assert im.width == grid_width(8)
        assert im.height > 2 * (64 + PAD) + PAD
    uncaptioned = grid.grid_image(load_numbered_images(folder, 12, size=None))
    assert uncaptioned.size == (grid_width(8), 2 * (64 + PAD) + PAD) and plain_height == 68


def test_save_grid_takes_float_and_uint8(tmp_path):
    floats = torch.rand(3, 3, 64, 64) * 2 - 1
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    grid.save_grid(floats, a)
    grid.save_grid(grid.as_uint8(floats), b)
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as im:
        assert im.size == (grid_width(3), 64 + 2 * PAD)


def test_grid_refuses_a_gap(tmp_path, capsys):
    folder = write_pngs(tmp_path / "gap", [0, 1, 3, 4])
    with pytest.raises(SystemExit) as e:
        grid.main(["--images", str(folder)])
    assert e.value.code == 2
    one_line_error(capsys, "2.png missing")
    assert not (folder / "grid.png").exists()
    write_pngs(folder, [2])
    with pytest.raises(SystemExit):  # test.json has 32 entries, the folder 5 images
        grid.main(["--images", str(folder), "--json", str(ROOT / "test.json"), "--objects", OBJECTS])
    one_line_error(capsys, "do not match")


# denoise.py


def test_denoise_rows_and_gif(ckpt, label2idx, tmp_path, capsys):
    out = tmp_path / "fig" / "denoise.png"
    denoise.main(["--ckpt", str(ckpt), "--steps", "8", "--frames", "8", "--out", str(out), "--gif", "--size", "64",
                  "--objects", OBJECTS, "--device", "cpu"])
    assert f"wrote {out}" in capsys.readouterr().out
    total = 1 + 8  # the starting noise, then 8 frames
    with Image.open(out) as im:
        fig = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert fig.shape[2] == grid_width(total)  # the caption strip only adds height

    def tiles(row):  # row 0: the sample; row 1: the model's guess of the finished image
        top = fig.shape[1] - (2 - row) * (64 + PAD)
        return [fig[:, top:top + 64, PAD + k * (64 + PAD):PAD + k * (64 + PAD) + 64] for k in range(total)]
    sample_row, guess_row = tiles(0), tiles(1)
    first, last = sample_row[0].float(), sample_row[-1].float()
    assert first.std() > 40 and (first - last).abs().mean() > 10  # noise: pixels all over 0..255
    noise = torch.randn(3, 16, 16, generator=image_generator(0, 0))  # the noise sample() starts from
    assert torch.equal(sample_row[0], grid.as_uint8(to_64(noise[None].clamp(-1, 1)))[0])
    # the last frame is exactly the image sample() draws for these labels and seed
    model, config = model_from_checkpoint(load_checkpoint(ckpt))
    cond = encode_labels(denoise.DEFAULT_LABELS, label2idx)[None]
    image = grid.as_uint8(to_64(sample(model, config, cond, steps=8, seed=0)))[0]
    assert torch.equal(sample_row[-1], image)
    assert guess_row[0].float().std() == 0  # nothing is predicted before the first step: plain gray
    gaps = [(g.float() - s.float()).abs().mean() for g, s in zip(guess_row[1:], sample_row[1:])]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[0] > 10  # guess and sample meet at the end
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.n_frames == total and gif.size == (64, 64 + denoise.GIF_BAR)


def test_denoise_frames_default_to_128_pixels(ckpt, tmp_path):
    out = tmp_path / "d.png"
    denoise.main(["--ckpt", str(ckpt), "--out", str(out), "--objects", OBJECTS, "--device", "cpu"])
    with Image.open(out) as im:
        assert im.width == grid_width(1 + 5, tile=128)  # the tiny preset samples in 5 steps: every step


def test_predicted_clean_undoes_each_kind_of_noising():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ddim = DDIMScheduler(num_train_timesteps=1000)
    t = torch.tensor(600)
    xt = ddim.add_noise(x0, noise, t)
    for kind, out in [("epsilon", noise), ("sample", x0), ("v_prediction", ddim.get_velocity(x0, noise, t))]:
        got = sampling.predicted_clean(ddim, {"schedule": {"prediction_type": kind}}, xt, t, 0, out)
        assert torch.allclose(got, x0, atol=1e-4), kind
    flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    flow.set_timesteps(10)
    s = flow.sigmas[3]
    got = sampling.predicted_clean(flow, {"schedule": {}}, (1 - s) * x0 + s * noise, flow.timesteps[3], 3, noise - x0)
    assert torch.allclose(got, x0, atol=1e-5)


def test_frame_steps_are_even_and_end_last():
    assert denoise.frame_steps(25, 10) == [2, 4, 7, 9, 12, 14, 17, 19, 22, 24]
    assert denoise.frame_steps(5, 5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("args, words", [
    (["--labels", "red spher"], 'did you mean "red sphere"'),
    (["--frames", "1"], "--frames must be at least 2"),
    (["--steps", "4", "--frames", "5"], "more than the 4 sampler steps"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--guidance", "nan"], "--guidance must be a number from 0 to 100"),
    (["--steps", "101"], "trained with 100 timesteps"),
])
def test_denoise_refusals(ckpt, tmp_path, capsys, args, words):
    out = tmp_path / "d.png"
    with pytest.raises(SystemExit) as e:
        denoise.main(["--ckpt", str(ckpt), "--objects", OBJECTS, "--out", str(out), "--device", "cpu", *args])
    assert e.value.code == 2
    one_line_error(capsys, words)
    assert not out.exists()


def test_denoise_picks_the_newest_checkpoint(ckpt, tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    with pytest.raises(SystemExit):
        denoise.main(["--checkpoints-dir", str(folder), "--objects", OBJECTS])
    one_line_error(capsys, "train one with: python train.py")
    folder.mkdir()
    for name in ("model_epoch_002.pt", "model_epoch_9.pt"):
        (folder / name).write_text("not a checkpoint")
    shutil.copy(ckpt, folder / "model_epoch_010.pt")
    out = tmp_path / "newest.png"
    denoise.main(["--checkpoints-dir", str(folder), "--objects", OBJECTS, "--out", str(out), "--device", "cpu"])
    assert f"using {folder / 'model_epoch_010.pt'}" in capsys.readouterr().out
    with Image.open(out) as im:  # the tiny preset samples in 5 steps: default frames = every step
        assert im.width == grid_width(1 + 5, tile=128)


# export.py
PIXEL_ENTRIES = sorted(set(export.ENTRIES) - {"vae"})  # a pixel model's export has no autoencoder


def test_export_round_trip(ckpt, label2idx, tmp_path, capsys):
    out = tmp_path / "export"
    export.main(["--ckpt", str(ckpt), "--out", str(out)])
    assert "ema weights" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == PIXEL_ENTRIES
    assert not list(tmp_path.glob(".*.tmp"))
    exported, config = export.load_exported(out)
    original, original_config = model_from_checkpoint(load_checkpoint(ckpt))
    assert config["preset"] == "tiny" and config["sample"] == original_config["sample"]
    cond = torch.stack([encode_labels(x, label2idx) for x in (["red sphere"], ["cyan cube", "gray cylinder"])])
    a, b = sample(exported, config, cond, seed=5), sample(original, original_config, cond, seed=5)
    assert torch.equal(a, b)
    raw, _ = model_from_checkpoint(load_checkpoint(ckpt), ema=False)
    assert not torch.equal(sample(raw, original_config, cond, seed=5), b)  # the export holds the EMA weights


def test_export_refuses_a_non_empty_folder(ckpt, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        export.main(["--ckpt", str(ckpt), "--out", str(out)])
    assert e.value.code == 2
    one_line_error(capsys, "not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    export.main(["--ckpt", str(ckpt), "--out", str(out), "--force", "--no-ema"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*PIXEL_ENTRIES, "notes.txt"])
    assert export.load_exported(out)[1]["preset"] == "tiny"


def test_export_falls_back_to_raw_weights(ckpt, tmp_path, capsys):
    state = load_checkpoint(ckpt)
    state["ema_model"] = None
    no_ema = tmp_path / "model_epoch_001.pt"
    torch.save(state, no_ema)
    export.main(["--ckpt", str(no_ema), "--out", str(tmp_path / "raw")])
    assert "the checkpoint has no EMA" in capsys.readouterr().out
    exported = export.load_exported(tmp_path / "raw")[0].state_dict()
    raw = model_from_checkpoint(load_checkpoint(ckpt), ema=False)[0].state_dict()
    assert exported.keys() == raw.keys() and all(torch.equal(exported[k], raw[k]) for k in raw)


def test_compact_state_round_trips_within_half_a_step():
    torch.manual_seed(0)
    state = {"unet.conv.weight": torch.randn(16, 8, 3, 3), "unet.conv.bias": torch.randn(16),
             "codec.vae.decoder.weight": torch.randn(16, 8, 3, 3)}
    compact, scales = compact_state(state)
    assert compact["unet.conv.weight"].dtype == torch.int8 and set(scales) == {"unet.conv.weight"}
    assert compact["unet.conv.bias"].dtype == compact["codec.vae.decoder.weight"].dtype == torch.float16
    back = expand_state(compact, scales)
    step = state["unet.conv.weight"].flatten(1).abs().amax(1) / 127  # one int8 step per output channel
    error = (back["unet.conv.weight"] - state["unet.conv.weight"]).flatten(1).abs().amax(1)
    assert (error <= step / 2 * 1.01 + 1e-3).all()  # fp16 scales add a little
    assert all(v.dtype == torch.float32 for v in back.values())


def test_generator_file_draws_like_its_checkpoint_and_is_found_when_no_run_exists(ckpt, label2idx, tmp_path,
                                                                                  monkeypatch, capsys):
    out = tmp_path / "weights" / "generator.pt"
    export.main(["--ckpt", str(ckpt), "--generator", "--out", str(out)])
    assert "EMA weights" in capsys.readouterr().out
    raw = torch.load(out, weights_only=True)
    assert raw["kind"] == GENERATOR_KIND and not {"optimizer", "ema_model", "rng"} & set(raw)
    assert raw["int8_scales"] and all(raw["model"][k].dtype == torch.int8 for k in raw["int8_scales"])
    original, config = model_from_checkpoint(load_checkpoint(ckpt))
    compact, compact_config = model_from_checkpoint(load_checkpoint(out))
    assert compact_config == config and weights_of(load_checkpoint(out), ema=False) == "EMA"
    cond = torch.stack([encode_labels(x, label2idx) for x in (["red sphere"], ["cyan cube", "gray cylinder"])])
    a, b = sample(compact, config, cond, seed=5), sample(original, config, cond, seed=5)
    assert (a - b).abs().mean() < 0.02, (a - b).abs().mean()
    with pytest.raises(SystemExit):  # an existing file is kept unless --force
        export.main(["--ckpt", str(ckpt), "--generator", "--out", str(out)])
    one_line_error(capsys, "exists (pass --force")
    monkeypatch.setattr(model, "SHIPPED_GENERATOR", out)
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: the scripts fall back to the shipped generator
    denoise.main(["--objects", OBJECTS, "--out", str(tmp_path / "d.png"), "--device", "cpu"])
    assert f"no checkpoint in checkpoints/: using the shipped generator {out}" in capsys.readouterr().out


def test_a_safetensors_generator_file_holds_the_same_weights_and_converts_both_ways(ckpt, tmp_path, capsys):
    import generate
    pt, st = tmp_path / "g.pt", tmp_path / "g.safetensors"
    export.main(["--ckpt", str(ckpt), "--generator", "--out", str(pt)])
    export.main(["--ckpt", str(ckpt), "--generator", "--out", str(st)])
    assert st.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle anywhere
    stored = load_checkpoint(st, expand=False)
    assert stored["kind"] == GENERATOR_KIND and stored["int8_scales"]
    assert all(stored["model"][k].dtype == torch.int8 for k in stored["int8_scales"])
    a, b = load_checkpoint(pt), load_checkpoint(st)
    def plain(c):
        return {k: v for k, v in c.items() if k not in ("model", "int8_scales")}
    assert json.loads(json.dumps(plain(a))) == plain(b) and plain(b)["log"]  # config, epoch, log...: tuples as lists
    model_a, model_b = model_from_checkpoint(a)[0], model_from_checkpoint(b)[0]
    state_b = model_b.state_dict()
    for name, x in model_a.state_dict().items():
        assert torch.equal(x, state_b[name]), name
    converted = tmp_path / "converted.safetensors"  # a torch-format generator file rewritten: the same bytes
    export.main(["--ckpt", str(pt), "--generator", "--out", str(converted)])
    assert converted.read_bytes() == st.read_bytes()
    back = tmp_path / "back.pt"
    export.main(["--ckpt", str(st), "--generator", "--out", str(back)])
    again = load_checkpoint(back)["model"]
    assert again.keys() == a["model"].keys() and all(torch.equal(again[k], a["model"][k]) for k in again)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # nothing to convert
        export.main(["--ckpt", str(st), "--generator", "--out", str(tmp_path / "again.safetensors")])
    one_line_error(capsys, "already a generator file in that format")
    cut = tmp_path / "cut.safetensors"  # a truncated file and a foreign one: one line each, exit 2
    cut.write_bytes(st.read_bytes()[:5000])
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"iclevr": json.dumps({"kind": "iclevr-autoencoder"})})
    for path, words in ((cut, "not a loadable generator file"), (foreign, "not a generator file")):
        with pytest.raises(SystemExit) as exit_info:
            generate.main(["--ckpt", str(path), "--labels", "red sphere", "--n", "1", "--out", str(tmp_path / "o"),
                           "--objects", OBJECTS])
        assert exit_info.value.code == 2
        one_line_error(capsys, words)
    assert not (tmp_path / "o").exists()
