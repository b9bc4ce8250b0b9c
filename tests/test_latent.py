"""The latent presets: the autoencoder file and its checks, latent training and sampling, flow matching."""
import importlib

import pytest
import torch

import train
import train_autoencoder
from autoencoder import LatentCodec, load_autoencoder, save_autoencoder
from conftest import ROOT
from dataset import ICLEVRDataset, to_model_range
from export import export, load_exported
from losses import FlowLoss, build_loss
from model import build_model, load_checkpoint, make_scheduler, model_from_checkpoint, preset_config
from sampling import sample
from utils import ICLEVRError, save_torch

pytestmark = pytest.mark.usefixtures("one_thread")
LATENT = preset_config("tiny_latent")["latent"]


@pytest.fixture(scope="module")
def autoencoder(tiny_iclevr, tmp_path_factory):
    """A tiny autoencoder trained by train_autoencoder.py on the tiny renders (no judge: not scored)."""
    root, labels = tiny_iclevr
    out = tmp_path_factory.mktemp("ae") / "autoencoder.pt"
    train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(root), "--json", str(labels),
                            "--objects", str(ROOT / "objects.json"), "--epochs", "4", "--batch-size", "4",
                            "--heldout", "4", "--heldout-root", str(out.parent / "heldout"),
                            "--out", str(out)])
    return out


def test_autoencoder_file_round_trips_and_normalises(autoencoder, tiny_iclevr):
    codec = load_autoencoder(autoencoder, LATENT)
    assert not any(p.requires_grad for p in codec.parameters())
    assert codec.std.min() > 0 and not torch.equal(codec.std, torch.ones_like(codec.std))  # statistics were taken
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (3, *codec.latent_shape) == (3, 4, 4, 4)
    assert codec.decode(z).shape == x.shape


def test_a_safetensors_autoencoder_file_round_trips_byte_for_byte(autoencoder, tmp_path):
    codec = load_autoencoder(autoencoder, LATENT)
    for name in ("a.safetensors", "b.safetensors"):
        save_autoencoder(tmp_path / name, LATENT, codec.state_dict(), {"note": "x", "epochs": 1})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()  # pinnable
    again = load_autoencoder(tmp_path / "a.safetensors", LATENT)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in codec.state_dict().items())


def test_init_continues_from_an_autoencoder_file(autoencoder, tiny_iclevr, tmp_path):
    root, labels = tiny_iclevr
    out = tmp_path / "further.pt"
    train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(root), "--json", str(labels),
                            "--objects", str(ROOT / "objects.json"), "--epochs", "1", "--lr", "1e-12",
                            "--heldout", "4", "--heldout-root", str(tmp_path / "heldout"), "--init", str(autoencoder),
                            "--object-weight", "50", "--out", str(out)])
    start, further = load_autoencoder(autoencoder, LATENT), load_autoencoder(out, LATENT)
    for name, value in start.vae.state_dict().items():  # a vanishing learning rate: the weights it started from
        assert torch.allclose(further.vae.state_dict()[name], value, atol=1e-6), name
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["init"] == str(autoencoder) and meta["object_weight"] == 50


def test_an_interrupted_autoencoder_run_resumes_exactly(tiny_iclevr, tmp_path, monkeypatch):
    """Killed after its second epoch's state is saved, --resume ends on the weights an uninterrupted run ends on."""
    root, labels = tiny_iclevr

    def run(out, *extra):
        train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(root), "--json", str(labels),
                                "--objects", str(ROOT / "objects.json"), "--epochs", "3", "--batch-size", "4",
                                "--heldout", "4", "--heldout-root", str(tmp_path / "heldout"), "--precision", "fp32",
                                "--out", str(out), *extra])
    run(tmp_path / "whole.pt")
    save, saves = train_autoencoder.save_torch, []

    def crash_after_two(path, obj):
        save(path, obj)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(train_autoencoder, "save_torch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut.pt")
    monkeypatch.setattr(train_autoencoder, "save_torch", save)
    state = tmp_path / "cut.pt.resume.pt"
    assert state.is_file() and not (tmp_path / "cut.pt").exists()
    with pytest.raises(SystemExit) as exit_info:  # another run's settings: refused in one line, state kept
        run(tmp_path / "cut.pt", "--resume", "--lr", "1e-4")
    assert exit_info.value.code == 2 and state.is_file()
    run(tmp_path / "cut.pt", "--resume")
    whole, cut = (torch.load(tmp_path / f, weights_only=True)["model"] for f in ("whole.pt", "cut.pt"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert not state.exists()  # the finished file replaces the training state


def test_auto_precision_is_bf16_only_where_the_cpu_has_amx(monkeypatch):
    import utils
    cpu = torch.device("cpu")
    monkeypatch.setattr(utils, "cpu_has_amx", lambda: False)
    assert utils.resolve_precision("auto", cpu) == "fp32" and utils.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(utils, "cpu_has_amx", lambda: True)
    assert utils.resolve_precision("auto", cpu) == "bf16" and utils.resolve_precision("fp32", cpu) == "fp32"


def decoder_only(autoencoder, tiny_iclevr, out, *flags):
    root, labels = tiny_iclevr
    return train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(root), "--json", str(labels),
                                   "--objects", str(ROOT / "objects.json"), "--epochs", "2", "--batch-size", "4",
                                   "--lr", "1e-2", "--heldout", "4", "--heldout-root", str(out.parent / "heldout"),
                                   "--init", str(autoencoder), "--decoder-only", "--out", str(out), *flags])


def test_decoder_only_training_changes_the_decoder_and_keeps_the_latent_space(autoencoder, tiny_iclevr, tmp_path):
    out = tmp_path / "decoder.safetensors"
    decoder_only(autoencoder, tiny_iclevr, out)
    start, tuned = load_autoencoder(autoencoder, LATENT).state_dict(), load_autoencoder(out, LATENT).state_dict()
    frozen = [k for k in start if not k.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    assert {"mean", "std", "vae.quant_conv.weight"} <= set(frozen) and any(k.startswith("vae.encoder.") for k in frozen)
    assert all(torch.equal(start[k], tuned[k]) for k in frozen)  # the same latents, bit for bit
    assert not all(torch.equal(start[k], tuned[k]) for k in start if k not in frozen)  # a decoder that trained


def test_decoder_only_needs_an_init_and_says_so(tiny_iclevr, tmp_path, capsys):
    root, labels = tiny_iclevr
    with pytest.raises(SystemExit) as e:
        train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(root), "--json", str(labels),
                                "--decoder-only", "--out", str(tmp_path / "d.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--init" in err[0], err
    assert not list(tmp_path.iterdir())


def test_export_decoder_swaps_only_the_decoder_and_refuses_another_encoder(data_args, autoencoder, tiny_iclevr,
                                                                         tmp_path, capsys):
    """export.py --generator --decoder: the generator file's UNet and encoder stay byte for byte, its decoder is the
    new file's (fp16); an autoencoder with another encoder is refused in one line, the file left as it was."""
    import export as export_script
    run, tuned = tmp_path / "run", tmp_path / "decoder.safetensors"
    train.main([*data_args, "--preset", "tiny_latent", "--autoencoder", str(autoencoder), "--out", str(run),
                "--epochs", "1", "--batch-size", "4"])
    decoder_only(autoencoder, tiny_iclevr, tuned)
    plain, swapped = tmp_path / "plain.safetensors", tmp_path / "swapped.safetensors"
    export_script.main(["--ckpt", str(run / "model_epoch_001.pt"), "--generator", "--out", str(plain)])
    export_script.main(["--ckpt", str(plain), "--generator", "--decoder", str(tuned), "--out", str(swapped)])
    a, b = load_checkpoint(plain, expand=False), load_checkpoint(swapped, expand=False)
    new = load_autoencoder(tuned, LATENT).state_dict()
    for name, value in a["model"].items():
        if name.startswith(("codec.vae.decoder.", "codec.vae.post_quant_conv.")):
            assert torch.equal(b["model"][name], new[name[len("codec."):]].half()), name
        else:
            assert torch.equal(b["model"][name], value), name
    assert b["source"]["decoder"] == str(tuned) and b["int8_scales"].keys() == a["int8_scales"].keys()
    other = tmp_path / "other.pt"  # another autoencoder: trained from its own initialisation
    train_autoencoder.main(["--preset", "tiny_latent", "--data-root", str(tiny_iclevr[0]), "--json",
                            str(tiny_iclevr[1]), "--objects", str(ROOT / "objects.json"), "--epochs", "1",
                            "--batch-size", "4", "--heldout", "4", "--heldout-root", str(tmp_path / "heldout"),
                            "--seed", "7", "--out", str(other)])
    before = swapped.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        export_script.main(["--ckpt", str(plain), "--generator", "--decoder", str(other), "--force", "--out",
                            str(swapped)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and str(other) in err[0] and "encoder" in err[0], err
    assert swapped.read_bytes() == before


def test_decoder_study_fits_a_new_decoder_to_the_frozen_encoders_latents(autoencoder, tiny_iclevr):
    """bench/decoder_study.py: the new decoder learns (its error falls) and the codec it reads stays as it was."""
    study = importlib.import_module("bench.decoder_study")
    codec = load_autoencoder(autoencoder, LATENT)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    root, labels = tiny_iclevr
    images = ICLEVRDataset(root, labels, ROOT / "objects.json", image_size=16, preload=True).images
    x = to_model_range(images)
    errors = []
    for epochs in (0.01, 30):
        args = study.build_parser().parse_args(["--ckpt", "unused", "--channels", "8,16", "--epochs", str(epochs),
                                                "--lr", "1e-2"])
        _, decode = study.train_decoder(codec, images, args)
        with torch.no_grad():
            errors.append(torch.nn.functional.mse_loss(decode(codec.encode(x)), x).item())
    assert errors[1] < 0.5 * errors[0], errors
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in before.items())


def test_object_weight_makes_errors_on_objects_cost_more_than_on_the_ground():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 6:10, 6:10] = 0.8  # one object on a flat ground
    on_object, on_ground = x.clone(), x.clone()
    on_object[..., 7, 7] += 0.1
    on_ground[..., 1, 1] += 0.1
    plain = train_autoencoder.weighted_mse
    assert plain(on_object, x, 0.0) == pytest.approx(plain(on_ground, x, 0.0))
    assert plain(on_object, x, 50.0) > 3 * plain(on_ground, x, 50.0)


def test_perceptual_loss_is_zero_on_the_originals_and_only_the_reconstruction_gets_gradients(feature_encoder):
    loss_fn = train_autoencoder.PerceptualLoss(feature_encoder)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert loss_fn(x.clone(), x).item() == pytest.approx(0.0, abs=1e-6)
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    loss = loss_fn(y, x)
    assert 0 < loss.item() <= 12  # three layers of unit vectors
    loss.backward()
    assert y.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss_fn.parameters())


def test_a_perceptual_run_trains_another_decoder_and_records_its_encoder(autoencoder, tiny_iclevr, feature_encoder,
                                                                        tmp_path):
    plain, perceptual = tmp_path / "plain.pt", tmp_path / "perceptual.pt"
    decoder_only(autoencoder, tiny_iclevr, plain, "--precision", "fp32")
    decoder_only(autoencoder, tiny_iclevr, perceptual, "--precision", "fp32", "--perceptual", str(feature_encoder),
                 "--perceptual-weight", "1")
    a, b = (torch.load(f, weights_only=True) for f in (plain, perceptual))
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # the loss took part
    assert b["meta"]["perceptual"] == str(feature_encoder) and b["meta"]["perceptual_weight"] == 1
    assert len(b["meta"]["perceptual_sha256"]) == 64 and a["meta"]["perceptual"] is None


def test_the_perceptual_encoder_may_not_be_a_judge_that_scores(autoencoder, tiny_iclevr, feature_encoder, tmp_path,
                                                            capsys):
    from evaluator import SHIPPED_JUDGE
    cases = [(SHIPPED_JUDGE, [], "is the judge that scores"),
             (feature_encoder, ["--judge", str(feature_encoder)], "is the judge that scores"),
             (tmp_path / "none.pth", [], "--perceptual: "),
             (feature_encoder, ["--perceptual-weight", "-1"], "--perceptual-weight at least 0")]
    for encoder, flags, words in cases:
        out = tmp_path / "out" / "ae.pt"
        with pytest.raises(SystemExit) as e:
            decoder_only(autoencoder, tiny_iclevr, out, "--perceptual", str(encoder), *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and words in err[0], err
        assert not out.exists() and not train_autoencoder.resume_path(out).exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "other_config"])
def test_bad_autoencoder_files_are_one_line_refusals(autoencoder, tmp_path, case, suffix):
    path = tmp_path / f"ae{suffix}"
    if case == "truncated":
        good = tmp_path / f"good{suffix}"
        codec = load_autoencoder(autoencoder, LATENT)
        save_autoencoder(good, LATENT, codec.state_dict(), {})
        path.write_bytes(good.read_bytes()[:5000])
    elif case == "foreign" and suffix == ".pt":
        save_torch(path, {"model": {"fc.0.weight": torch.zeros(24, 512)}})
    elif case == "foreign":
        from safetensors.torch import save_file
        save_file({"fc.0.weight": torch.zeros(24, 512)}, str(path), metadata={"format": "pt"})
    elif case == "other_config":
        other = preset_config("cpu")["latent"]
        save_autoencoder(path, other, LatentCodec(other).state_dict(), {})
    foreign = "not an autoencoder file" if suffix == ".pt" else "not a loadable"
    words = {"missing": "no autoencoder file", "truncated": "not a loadable",
             "other_config": "another autoencoder config", "foreign": foreign}[case]
    with pytest.raises(ICLEVRError, match=words):
        load_autoencoder(path, LATENT)


def test_train_refuses_a_missing_autoencoder_and_writes_nothing(data_args, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.main([*data_args, "--preset", "tiny_latent", "--autoencoder", str(tmp_path / "none.pt"),
                    "--out", str(out), "--epochs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pt: no autoencoder file" in err[0]
    assert not out.exists()


def test_an_autoencoder_for_another_image_size_is_refused_in_one_line(data_args, tmp_path, capsys):
    """cpu64 (64x64 images, 16x16x8 latents) given the cpu preset's 32x32 autoencoder: named, exit 2, nothing
    written."""
    out, shipped = tmp_path / "run", ROOT / "weights" / "autoencoder.safetensors"
    with pytest.raises(SystemExit) as e:
        train.main([*data_args, "--preset", "cpu64", "--autoencoder", str(shipped), "--out", str(out), "--epochs", "1",
                    "--batch-size", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert str(shipped) in err[0] and "32px" in err[0] and "64px" in err[0], err
    assert not out.exists()


def test_latent_run_carries_its_autoencoder_and_samples_without_the_file(data_args, autoencoder, tmp_path):
    out = tmp_path / "run"
    train.main([*data_args, "--preset", "tiny_latent", "--autoencoder", str(autoencoder), "--out", str(out),
                "--epochs", "1", "--batch-size", "4"])
    ckpt = load_checkpoint(out / "model_epoch_001.pt")
    codec = load_autoencoder(autoencoder, LATENT)
    for name, value in codec.state_dict().items():  # the codec travels in the model and EMA weights, unchanged
        assert torch.equal(ckpt["model"][f"codec.{name}"], value) and torch.equal(ckpt["ema_model"][f"codec.{name}"],
                                                                                   value)
    assert ckpt["autoencoder"]["sha256"] and ckpt["autoencoder"]["path"] == str(autoencoder)
    autoencoder.rename(autoencoder.with_suffix(".moved"))  # sampling needs only the checkpoint
    try:
        model, config = model_from_checkpoint(ckpt)
        multi_hot = torch.zeros(2, 24)
        multi_hot[0, 3] = multi_hot[1, [1, 9]] = 1
        a, b = sample(model, config, multi_hot, seed=1), sample(model, config, multi_hot, seed=1)
        folder = export(model, config, tmp_path / "export")
        assert (folder / "vae" / "config.json").is_file()
        exported, exported_config = load_exported(folder)
        c = sample(exported, exported_config, multi_hot, seed=1)
    finally:
        autoencoder.with_suffix(".moved").rename(autoencoder)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1
    assert torch.allclose(a, c, atol=1e-5)  # the diffusers export (with vae/) samples the same images


def test_flow_matching_trains_toward_the_velocity_and_samples_with_euler():
    config = preset_config("tiny", ["schedule.kind=flow", "sample.sampler=euler"])
    torch.manual_seed(0)
    model = build_model(config)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    noise = torch.randn(x0.shape, generator=gen())
    model.forward = lambda x, t, c: noise - x0  # a perfect velocity model has zero loss ...
    loss_fn = build_loss(config)
    assert isinstance(loss_fn, FlowLoss) and loss_fn.describe == "flow matching: MSE on the velocity"
    assert loss_fn(model, x0, torch.zeros(4, 24), gen()).item() < 1e-10
    model.forward = lambda x, t, c: noise  # ... and a noise predictor does not
    assert loss_fn(model, x0, torch.zeros(4, 24), gen()).item() > 0.1
    del model.forward
    images = sample(model, config, torch.eye(24)[:2], steps=4)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(ICLEVRError, match="euler"):
        make_scheduler(config, "ddim")
    with pytest.raises(ICLEVRError, match="does not fit a flow-matching model"):  # ddpm would silently run Euler
        sample(model, config, torch.eye(24)[:2], "ddpm", steps=4)
    with pytest.raises(ICLEVRError, match="flow-matching models only"):
        make_scheduler(preset_config("tiny"), "euler")


class Calls(torch.nn.Module):
    """Wraps a model and records, per call, its input, timestep, the estimate it was given and its output."""

    def __init__(self, model):
        super().__init__()
        self.model, self.self_condition, self.sample_shape, self.calls = model, model.self_condition, \
            model.sample_shape, []

    def decode(self, x):
        return self.model.decode(x)

    def forward(self, x, t, cond, *estimate):
        out = self.model(x, t, cond, *estimate)
        self.calls.append((x, t, estimate[0] if estimate else None, out))
        return out


def test_self_conditioning_feeds_the_last_clean_estimate_back():
    config = preset_config("tiny", ["schedule.kind=flow", "sample.sampler=euler", "self_condition=true"])
    assert config["unet"]["in_channels"] == 6 and config["overrides"]["unet.in_channels"] == 6
    torch.manual_seed(0)
    model = build_model(config)
    x, t, cond = torch.randn(2, 3, 16, 16), torch.tensor([500, 200]), torch.eye(24)[:2]
    with torch.no_grad():
        none, zeros, guess = model(x, t, cond), model(x, t, cond, torch.zeros_like(x)), model(x, t, cond, x)
    assert torch.equal(none, zeros) and not torch.allclose(none, guess)  # no estimate = zeros; an estimate counts
    # training: the gen's coin sends some batches through a first pass without gradient, whose clean sample
    # (x_t - s * velocity) is the second pass's estimate
    x0, firsts = torch.rand(4, 3, 16, 16) * 2 - 1, 0
    for seed in range(8):
        spy = Calls(model)
        build_loss(config)(spy, x0, torch.zeros(4, 24), torch.Generator().manual_seed(seed))  # self_condition
        assert len(spy.calls) in (1, 2) and spy.calls[0][2] is None
        if len(spy.calls) == 2:
            (xt, t, _, first), (xt2, _, estimate, _) = spy.calls
            s = (t / config["schedule"]["num_train_timesteps"]).view(-1, 1, 1, 1)
            assert torch.equal(xt, xt2) and torch.allclose(estimate, xt - s * first, atol=1e-6)
            firsts += 1
    assert 0 < firsts < 8
    # sampling: each step after the first sees the clean sample the step before predicted (guided)
    spy = Calls(model)
    images = sample(spy, config, cond, steps=4, guidance=2.0, seed=1)
    assert torch.equal(images, sample(model, config, cond, steps=4, guidance=2.0, seed=1))
    assert spy.calls[0][2] is None and all(c[2] is not None for c in spy.calls[1:])
    x1, _, _, out = spy.calls[0]
    null, cond_out = out.chunk(2)
    velocity = null + 2.0 * (cond_out - null)
    sigma = make_scheduler(config, "euler")
    sigma.set_timesteps(4)
    expected = x1[:2] - sigma.sigmas[0] * velocity
    assert torch.allclose(spy.calls[1][2], torch.cat([expected, expected]), atol=1e-5)
    with pytest.raises(ICLEVRError, match="flow-matching presets"):
        build_model(preset_config("tiny", ["self_condition=true"]))
