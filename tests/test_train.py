"""train.py on the tiny preset: exact resume, crash safety, checkpoints, refusals, two processes, the sampler."""
import csv
import hashlib
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

import trainer
from conftest import ROOT, one_line_error
from losses import NoiseLoss
from model import build_model, load_checkpoint, make_scheduler, model_from_checkpoint, preset_config
from sampling import image_generator, sample

CHECKPOINT_KEYS = {"config", "settings", "epoch", "step", "model", "ema_model", "ema", "optimizer", "lr_scheduler",
                   "rng"}
TEMP_RE = re.compile(r"\.(.+)\.(\d+)\.tmp")  # atomic_write's ".<name>.<pid>.tmp"


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """An uninterrupted 2-epoch run (batch 4 of 9 images: 2 steps per epoch)."""
    out = tmp_path_factory.mktemp("reference")
    run(out, "--epochs", 2, "--batch-size", 4)
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where="state"):
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.float() - b.float()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def snapshot(folder):
    """Every file of a folder (hidden ones too) with its bytes' hash and modification time."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def log_rows(out):
    with open(out / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_valid_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 1. Exact resume, 2. bare --resume, 3. a fresh run never overwrites another one


def test_resume_is_bitwise_exact(run, reference, tmp_path, capsys):
    split = tmp_path / "split"
    run(split, "--epochs", 1, "--batch-size", 4, "--resume")  # bare --resume, nothing there yet: a fresh run
    assert "starting a fresh run" in capsys.readouterr().out
    assert sorted(p.name for p in split.glob("*.pt")) == ["model_epoch_001.pt"]
    run(split, "--epochs", 2, "--resume")  # batch size from the checkpoint's settings
    assert "resuming" in capsys.readouterr().out
    straight, resumed = load(reference / "model_epoch_002.pt"), load(split / "model_epoch_002.pt")
    assert straight["step"] == resumed["step"] == 4 and straight["epoch"] == resumed["epoch"] == 2
    for key in ("model", "ema_model", "ema", "optimizer", "settings", "config"):
        assert_same(straight[key], resumed[key], key)
    # the schedule is rebuilt at the resumed step: the same position and rates (torch's _step_count only counts
    # the scheduler's own step() calls since it was built)
    for key in ("last_epoch", "base_lrs", "_last_lr"):
        assert_same(straight["lr_scheduler"][key], resumed["lr_scheduler"][key], f"lr_scheduler.{key}")
    assert_same(straight["rng"]["torch"], resumed["rng"]["torch"], "rng.torch")
    assert not torch.equal(straight["model"]["unet.conv_out.weight"], straight["ema_model"]["unet.conv_out.weight"])
    cols = ("epoch", "step", "loss", "lr")
    assert [[r[c] for c in cols] for r in log_rows(split)] == [[r[c] for c in cols] for r in log_rows(reference)]


def test_resume_of_a_finished_run_does_nothing(run, reference, capsys):
    before = snapshot(reference)
    for epochs in (2, 1):
        run(reference, "--epochs", epochs, "--resume")
        assert "model_epoch_002.pt has already trained 2 epochs" in capsys.readouterr().out
    assert snapshot(reference) == before


def test_fresh_run_refuses_an_out_dir_with_checkpoints(run, reference, capsys):
    before = snapshot(reference)
    with pytest.raises(SystemExit) as e:
        run(reference, "--epochs", 3)
    assert e.value.code == 2
    one_line_error(capsys, "already holds a run (model_epoch_002.pt)")
    assert snapshot(reference) == before


def test_resume_applies_a_new_lr_and_ema_decay(run, reference, tmp_path):
    (tmp_path / "model_epoch_001.pt").write_bytes((reference / "model_epoch_001.pt").read_bytes())
    run(tmp_path, "--epochs", 2, "--resume", "--lr", 5e-4, "--ema-decay", 0.5)
    ckpt = load(tmp_path / "model_epoch_002.pt")
    assert ckpt["settings"]["lr"] == 5e-4 and ckpt["settings"]["ema_decay"] == 0.5  # recorded...
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [5e-4]  # ...and applied
    assert ckpt["ema"]["decay"] == 0.5


# 4. What a checkpoint holds, --keep-last, the log and the curve


def test_checkpoint_rebuilds_the_model_alone(reference):
    ckpt = load_checkpoint(reference / "model_epoch_002.pt", preset="tiny")
    assert set(ckpt) >= CHECKPOINT_KEYS
    assert ckpt["config"] == preset_config("tiny") and ckpt["epoch"] == 2
    assert ckpt["settings"].items() >= preset_config("tiny")["train"].items()
    assert ckpt["settings"]["seed"] == 0 and ckpt["settings"]["lr_scheduler"] == "constant_with_warmup"
    ema_net, config = model_from_checkpoint(ckpt)
    raw_net, _ = model_from_checkpoint(ckpt, ema=False)
    assert config["preset"] == "tiny" and not ema_net.training
    assert_same(ema_net.state_dict(), ckpt["ema_model"], "ema_model")
    assert_same(raw_net.state_dict(), ckpt["model"], "model")
    x = torch.zeros(2, 3, 16, 16)
    assert ema_net(x, torch.tensor(5), torch.zeros(2, 24)).shape == x.shape


def test_keep_last_log_and_curve(run, tmp_path):
    run(tmp_path, "--epochs", 3, "--batch-size", 4, "--keep-last", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "loss_curve.png", "model_epoch_003.pt",
                                                          "train_log.csv"]
    rows = log_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(float(r["loss"]) > 0 for r in rows)
    assert_valid_png(tmp_path / "loss_curve.png")
    run(tmp_path / "default", "--epochs", 4, "--batch-size", 4)  # by default the newest 3: bounded disk
    assert sorted(p.name for p in (tmp_path / "default").glob("*.pt")) == [f"model_epoch_00{i}.pt" for i in (2, 3, 4)]


def test_set_changes_the_config_of_a_fresh_run_only(run, tmp_path, capsys):
    single_token = ["--set", "label_tokens=false", "--set", "unet.cross_attention_dim=24",
                    "--set", "unet.class_embed_type=null", "--set", "schedule.beta_schedule=linear"]
    run(tmp_path, "--epochs", 1, "--batch-size", 4, *single_token)
    ckpt = load_checkpoint(tmp_path / "model_epoch_001.pt")
    config = ckpt["config"]
    assert config["schedule"]["beta_schedule"] == "linear" and config["label_tokens"] is False
    assert config["overrides"] == {"label_tokens": False, "unet.cross_attention_dim": 24,
                                   "unet.class_embed_type": None, "schedule.beta_schedule": "linear"}
    assert {k: v for k, v in config.items() if k != "overrides"} != preset_config("tiny")
    net, _ = model_from_checkpoint(ckpt)
    assert not hasattr(net, "tokens") and net.unet.config.class_embed_type is None
    assert make_scheduler(config).config.beta_schedule == "linear"
    run(tmp_path, "--epochs", 2, "--resume", *single_token)  # the same --set: continues
    assert load_checkpoint(tmp_path / "model_epoch_002.pt")["config"] == config
    before, _ = snapshot(tmp_path), capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--epochs", 3, "--resume", "--set", "schedule.beta_schedule=squaredcos_cap_v2")
    assert e.value.code == 2 and snapshot(tmp_path) == before
    one_line_error(capsys, "--set cannot change the config of the run")


# 5. Refusals: exit code 2, one line, no traceback


def test_refuses_a_truncated_checkpoint_in_a_new_process(reference, data_args, tmp_path):
    data = (reference / "model_epoch_002.pt").read_bytes()
    bad = tmp_path / "model_epoch_002.pt"
    bad.write_bytes(data[:len(data) // 2])
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *data_args, "--epochs", "3", "--resume",
                             "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a loadable train.py checkpoint" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_epoch_002.pt"]


def test_object_weights_draw_images_by_object_count_and_travel_with_the_run(run, tmp_path):
    multi_hot = torch.zeros(300, 24)
    for i in range(300):
        multi_hot[i, : i % 3 + 1] = 1  # 100 images each with 1, 2 and 3 objects
    plain = trainer.epoch_order(multi_hot, None, seed=5)
    assert sorted(plain.tolist()) == list(range(300))  # a permutation: each image once
    only_three = trainer.epoch_order(multi_hot, [0, 0, 1], seed=5)
    assert len(only_three) == 300 and (multi_hot[only_three].sum(1) == 3).all()
    counts = multi_hot[trainer.epoch_order(multi_hot, [1, 0, 3], seed=5)].sum(1)
    assert (counts != 2).all() and 0.65 < (counts == 3).float().mean() < 0.85  # 3:1, no two-object image
    assert torch.equal(trainer.epoch_order(multi_hot, [1, 0, 3], seed=5), trainer.epoch_order(multi_hot, [1, 0, 3], 5))
    run(tmp_path, "--epochs", 1, "--batch-size", 4, "--object-weights", "1,2,3")
    assert load(tmp_path / "model_epoch_001.pt")["settings"]["object_weights"] == [1.0, 2.0, 3.0]  # kept for --resume


@pytest.mark.parametrize("args, words", [
    (["--epochs", 0], "--epochs must be at least 1, got 0"),
    (["--batch-size", 0], "--batch-size must be at least 1, got 0"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--cond-dropout", 1], "--cond-dropout 1.0 is out of range"),
    (["--batch-size", 10], "--batch-size 10 is larger than the 9 training images"),
    (["--limit", 3, "--batch-size", 4], "--batch-size 4 is larger than the 3 training images"),
    (["--data-root", "no/such/folder"], "9 of 9 images are missing"),
    (["--preset", "huge"], "argument --preset: invalid choice"),
    (["--snr-gamma", -1], "--snr-gamma -1.0 is out of range"),
    (["--set", "unet.bogus=1"], "--set unet.bogus=1: expected KEY=VALUE"),
    (["--set", "label_tokens"], "--set label_tokens: expected KEY=VALUE"),
    (["--set", "unet.block_out_channels=[8]"], "the config's unet does not build"),
    (["--object-weights", "1,2"], "expected 3 weights such as 1,2,3"),
    (["--object-weights", "0,0,0"], "not all zero"),
])
def test_refuses_bad_arguments(run, tmp_path, capsys, args, words):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run(out, "--epochs", 1, *args)
    assert e.value.code == 2
    one_line_error(capsys, words)
    assert not out.exists()


def test_refuses_bad_checkpoints(run, reference, tmp_path, capsys):
    text = tmp_path / "model_epoch_001.pt"
    text.write_text("epoch,step,loss\n1,2,0.5\n")
    not_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_dict)
    cases = [(text, [], "not a loadable train.py checkpoint"),
             (not_dict, [], "not a train.py checkpoint (no config/model/epoch entries)"),
             (tmp_path / "missing.pt", [], "missing.pt: no such checkpoint"),
             (reference / "model_epoch_002.pt", ["--preset", "cpu"],
              "holds a 'tiny' model, not the requested preset 'cpu': pass --preset tiny")]
    for path, args, words in cases:
        with pytest.raises(SystemExit) as e:
            run(tmp_path / "out", "--epochs", 3, "--resume", path, *args)
        assert e.value.code == 2
        one_line_error(capsys, words)
    with pytest.raises(SystemExit):  # a bare --resume finds the text file by its name: refused, not skipped
        run(tmp_path, "--epochs", 3, "--resume")
    one_line_error(capsys, "model_epoch_001.pt: not a loadable train.py checkpoint")
    assert not (tmp_path / "out").exists() and not (tmp_path / "train_log.csv").exists()


# 6. Killed at any moment: see tests/test_crash.py (random SIGKILLs, then a bitwise comparison)


# 7. Two processes (torchrun, gloo on the CPU)


def test_two_processes(data_args, tmp_path):
    out = tmp_path / "ddp"

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(ROOT / "train.py"), *data_args, "--out", str(out),
               *map(str, args)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    first = torchrun("--epochs", 1, "--batch-size", 4)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "batch 4 on 2 x cpu" in first.stdout
    before = snapshot(out)
    odd = torchrun("--epochs", 2, "--resume", "--batch-size", 3)
    assert odd.returncode != 0 and "exitcode  : 2" in odd.stderr, odd.stderr[-3000:]
    assert "error: --batch-size 3 does not split over 2 processes" in odd.stderr
    assert snapshot(out) == before
    second = torchrun("--epochs", 2, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resuming") == 1 and second.stdout.count("done:") == 1, second.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "loss_curve.png", "model_epoch_001.pt",
                                                     "model_epoch_002.pt", "train_log.csv"]
    rows = log_rows(out)
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 2), (2, 4)]
    ckpt = load(out / "model_epoch_002.pt")
    assert ckpt["step"] == 4 and ckpt["settings"]["batch_size"] == 4
    model_from_checkpoint(ckpt)


# 8. Label dropout and 9. the sampler


class Recorder(torch.nn.Module):
    """A stand-in model that records the labels it is given and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, cond):
        self.seen.append(cond.clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("dropout, kept", [(1.0, False), (0.0, True)])
def test_noise_loss_label_dropout(dropout, kept):
    config = preset_config("tiny")
    cond = torch.zeros(6, 24)
    cond[torch.arange(6), torch.arange(6) * 3] = 1
    cond[:3, 23] = 1
    model = Recorder()
    x0 = torch.rand(6, 3, 16, 16) * 2 - 1
    loss = NoiseLoss(config, cond_dropout=dropout)(model, x0, cond, torch.Generator().manual_seed(0))
    (seen,) = model.seen
    assert torch.equal(seen, cond if kept else torch.zeros_like(cond))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))  # the first draw from gen
    assert torch.allclose(loss, noise.pow(2).mean())  # a zero prediction: the loss is the noise's mean square


class Oracle(torch.nn.Module):
    """Predicts exactly the velocity sqrt(abar) * noise - sqrt(1 - abar) * x0 of the batch it is told."""

    def __init__(self, x0, noise, t, alphas_cumprod):
        super().__init__()
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        self.velocity = abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def forward(self, x, t, cond):
        return self.velocity


def test_noise_loss_follows_prediction_type_and_min_snr():
    x0 = torch.rand(5, 3, 16, 16) * 2 - 1
    cond = torch.zeros(5, 24)
    gen = torch.Generator().manual_seed(3)  # the loss draws noise, then t, from the same seed
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, 100, (5,), generator=gen)
    loss = {}
    for kind in ("epsilon", "v_prediction"):
        loss_fn = NoiseLoss(preset_config("tiny", [f"schedule.prediction_type={kind}"]))
        oracle = Oracle(x0, noise, t, loss_fn.scheduler.alphas_cumprod)
        loss[kind] = loss_fn(oracle, x0, cond, torch.Generator().manual_seed(3))
    assert loss["v_prediction"] < 1e-10 < loss["epsilon"]  # the velocity is the v target, not the eps one
    # Min-SNR: a zero prediction of eps costs mean(noise^2) per image, weighted by min(SNR, 5) / SNR
    sched = make_scheduler(preset_config("tiny"))
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = (noise.pow(2).mean(dim=(1, 2, 3)) * snr.clamp(max=5) / snr).mean()
    min_snr = NoiseLoss(preset_config("tiny"), snr_gamma=5.0)
    assert min_snr.describe == "Min-SNR-5 weighted MSE on the noise"
    got = min_snr(Recorder(), x0, cond, torch.Generator().manual_seed(3))
    assert (snr > 5).any() and (snr < 5).any()  # both sides of the clamp are exercised
    assert torch.allclose(got, expected)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    net = build_model(preset_config("tiny")).eval()
    with torch.no_grad():  # a random init with a zero output layer would make every check trivial
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return net


def labels(*rows):
    m = torch.zeros(len(rows), 24)
    for i, row in enumerate(rows):
        m[i, list(row)] = 1
    return m


def test_sample_builds_no_autograd_graph(tiny_net):
    """Called with autograd on (as scripts do), sample() must not record a graph: over 1000 steps it
    would fill the memory (a misplaced decorator once did: 24 GB after two calls of the cpu preset)."""
    assert torch.is_grad_enabled()
    got = sample(tiny_net, preset_config("tiny"), labels([0], [3]), sampler="ddim", steps=3, guidance=2.0)
    assert not got.requires_grad


@torch.no_grad()
def test_sample_is_the_guided_denoising_loop(tiny_net):
    config, cond = preset_config("tiny"), labels([0], [5, 9], [1, 2, 3])
    x = torch.rand(3, 3, 16, 16)
    assert not torch.allclose(tiny_net(x, torch.tensor(50), cond), tiny_net(x, torch.tensor(50), 0 * cond))
    for guidance in (1.0, 3.0):
        scheduler = make_scheduler(config, "ddim")
        scheduler.set_timesteps(5)
        x = torch.stack([torch.randn(3, 16, 16, generator=image_generator(7, i)) for i in range(3)])
        for t in scheduler.timesteps:
            eps = tiny_net(x, t, cond)
            if guidance != 1:
                eps_null = tiny_net(x, t, torch.zeros_like(cond))
                eps = eps_null + guidance * (eps - eps_null)
            x = scheduler.step(eps, t, x).prev_sample
        got = sample(tiny_net, config, cond, sampler="ddim", steps=5, guidance=guidance, seed=7)
        # Guided, the batched pass's ~1e-6 differences in eps grow by 1/sqrt(alpha_bar) at t=99 to ~1e-3;
        # guidance 2.9 instead of 3 moves pixels by ~1.9, so 1e-2 still pins the formula down.
        atol = 1e-5 if guidance == 1 else 1e-2
        assert torch.allclose(got, x.clamp(-1, 1), atol=atol), (got - x.clamp(-1, 1)).abs().max()


@pytest.mark.parametrize("sampler", ["dpm", "dpm-sde", "ddpm"])
def test_sample_does_not_depend_on_the_batch(tiny_net, sampler):
    config, cond = preset_config("tiny"), labels([0], [5, 9], [1, 2, 3])
    steps = 10 if sampler == "ddpm" else None
    whole = sample(tiny_net, config, cond, sampler=sampler, steps=steps, seed=3, batch_size=3)
    one_by_one = sample(tiny_net, config, cond, sampler=sampler, steps=steps, seed=3, batch_size=1)
    tail = sample(tiny_net, config, cond[1:], sampler=sampler, steps=steps, seed=3, first_index=1)
    assert whole.shape == (3, 3, 16, 16) and whole.abs().max() <= 1
    # float noise of batched convs (~1e-6; other kernels on one thread), amplified at t=99 and by dpm's x0
    # clipping: up to ~2e-4 measured; a batch leaking into another image moves it by 1e-1
    atol = 5e-4
    assert torch.allclose(whole, one_by_one, atol=atol) and torch.allclose(whole[1:], tail, atol=atol)
    assert not torch.allclose(whole, sample(tiny_net, config, cond, sampler=sampler, steps=steps, seed=4), atol=1e-3)


PATCH2 = ["patch_size=2", "unet.sample_size=8", "unet.in_channels=12", "unet.out_channels=12"]


def test_patch_size_runs_the_unet_on_2x2_patches():
    """patch_size 2: the UNet sees (12, 8, 8) pixel-unshuffled patches of a 16x16 image and its
    output is shuffled back, so eps at a pixel is the UNet's output channel for that pixel."""
    from model import ICLEVRError
    torch.manual_seed(0)
    net = build_model(preset_config("tiny", PATCH2)).eval()
    x, t, cond = torch.randn(2, 3, 16, 16), torch.tensor(50), labels([0], [5, 9])
    seen = {}
    net.unet.register_forward_hook(lambda m, args, out: seen.update(x=args[0], eps=out.sample))
    eps = net(x, t, cond)
    assert seen["x"].shape == (2, 12, 8, 8) and eps.shape == x.shape
    # pixel (row 3, col 4) is in patch (1, 2), at offset (1, 0): channel c * 4 + 1 * 2 + 0 of that patch
    assert torch.equal(seen["x"][:, 1 * 4 + 2, 1, 2], x[:, 1, 3, 4])
    assert torch.equal(eps[:, 1, 3, 4], seen["eps"][:, 1 * 4 + 2, 1, 2])
    with pytest.raises(ICLEVRError, match="needs unet.in_channels = out_channels = 12 and unet.sample_size = 8"):
        build_model(preset_config("tiny", PATCH2[:2]))


def test_a_patched_run_trains_resumes_and_samples(run, tmp_path):
    overrides = [a for o in PATCH2 for a in ("--set", o)]
    run(tmp_path, "--epochs", 1, "--batch-size", 4, *overrides)
    run(tmp_path, "--epochs", 2, "--resume", *overrides)
    net, config = model_from_checkpoint(load_checkpoint(tmp_path / "model_epoch_002.pt"))
    assert config["patch_size"] == 2 and net.unet.config.in_channels == 12
    images = sample(net, config, labels([0], [1, 2]), steps=3)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1


def test_a_self_conditioned_flow_run_resumes_exactly_and_samples(run, tmp_path):
    overrides = [a for o in ("schedule.kind=flow", "sample.sampler=euler", "self_condition=true") for a in ("--set", o)]
    run(tmp_path / "straight", "--epochs", 2, "--batch-size", 4, *overrides)
    run(tmp_path / "split", "--epochs", 1, "--batch-size", 4, *overrides)
    run(tmp_path / "split", "--epochs", 2, "--resume", *overrides)
    straight, resumed = (load(tmp_path / d / "model_epoch_002.pt") for d in ("straight", "split"))
    for key in ("model", "ema_model", "optimizer"):
        assert_same(straight[key], resumed[key], key)
    net, config = model_from_checkpoint(load_checkpoint(tmp_path / "split" / "model_epoch_002.pt"))
    assert net.self_condition and net.unet.config.in_channels == 6
    images = sample(net, config, labels([0], [1, 2]), steps=3)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1


def test_nan_loss_stops_with_the_last_checkpoint_intact(run, reference, tmp_path, monkeypatch, capsys):
    (tmp_path / "model_epoch_002.pt").write_bytes((reference / "model_epoch_002.pt").read_bytes())
    before = snapshot(tmp_path)

    def nan_loss(model, *args, **kwargs):
        return model(torch.zeros(1, 3, 16, 16), torch.tensor([1]), torch.zeros(1, 24)).sum() * float("nan")

    monkeypatch.setattr(trainer, "build_loss", lambda *args, **kwargs: nan_loss)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--epochs", 3, "--resume")
    assert e.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar: the reason, in one line
    assert last.startswith("error: the loss became nan") and "model_epoch_002.pt is intact" in last
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written, the checkpoint untouched


def test_eval_every_scores_ema_samples_with_the_judge(run, tmp_path, capsys):
    from evaluator import build_network
    torch.manual_seed(0)
    judge = tmp_path / "judge.pth"
    torch.save({"model": build_network().state_dict()}, judge)
    run(tmp_path / "a", "--epochs", 2, "--batch-size", 4, "--eval-every", 2, "--judge", judge)
    rows = log_rows(tmp_path / "a")
    assert [r["test_acc"] for r in rows][0] == ""  # epoch 1: no evaluation
    assert 0 <= float(rows[1]["test_acc"]) <= 1 and 0 <= float(rows[1]["new_test_acc"]) <= 1
    assert rows[0]["eval_seconds"] == "" and float(rows[1]["eval_seconds"]) > 0  # the cost make demo reports
    sha = hashlib.sha256(judge.read_bytes()).hexdigest()[:12]
    assert rows[0]["judge"] == "" and rows[1]["judge"].endswith(f"judge.pth (sha256 {sha})")  # who scored the row
    out = capsys.readouterr().out
    assert "official accuracy of EMA samples" in out and "min of --eval-every scoring" in out
    grids = sorted(p.name for p in (tmp_path / "a" / "samples").iterdir())
    assert grids == ["test_epoch_002.png"]  # one test.json grid per evaluation, none for epoch 1
    assert Image.open(tmp_path / "a" / "samples" / grids[0]).size[0] > 8 * 64  # 8 images of 64 px a row, plus borders
    run(tmp_path / "b", "--epochs", 1, "--batch-size", 4, "--eval-every", 1, "--judge", tmp_path / "none.pth")
    assert "no judge at" in capsys.readouterr().out and log_rows(tmp_path / "b")[0]["test_acc"] == ""


def test_report_to_tensorboard_logs_each_epoch(run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard", reason="the optional tracker: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run(tmp_path / "a", "--epochs", 2, "--batch-size", 4, "--report-to", "tensorboard")
    events = EventAccumulator(str(next((tmp_path / "a" / "logs").rglob("events.out.tfevents.*")).parent)).Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in log_rows(tmp_path / "a")])
    monkeypatch.setattr(trainer.importlib.util, "find_spec", lambda name: None)  # as if it were not installed
    with pytest.raises(SystemExit) as stop:
        run(tmp_path / "b", "--epochs", 1, "--batch-size", 4, "--report-to", "tensorboard")
    assert stop.value.code == 2 and "pip install tensorboard" in capsys.readouterr().err


def test_resume_refuses_to_stretch_a_decayed_schedule_and_allows_what_keeps_the_rate(run, tmp_path, capsys):
    out = tmp_path / "cos"
    run(out, "--epochs", 2, "--batch-size", 4, "--lr-scheduler", "cosine", "--warmup-steps", 0)
    before, _ = snapshot(out), capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the cosine has reached 0: 6 epochs would raise the rate to most of its peak
        run(out, "--epochs", 6, "--batch-size", 4, "--resume")
    assert e.value.code == 2
    one_line_error(capsys, "decayed to 0, and --epochs 6 would stretch the schedule", "resume with --epochs 2")
    assert snapshot(out) == before
    flat = tmp_path / "flat"  # a constant rate does not depend on --epochs: extending is fine
    run(flat, "--epochs", 1, "--batch-size", 4, "--lr-scheduler", "constant")
    run(flat, "--epochs", 2, "--batch-size", 4, "--resume")
    assert (flat / "model_epoch_002.pt").is_file()
