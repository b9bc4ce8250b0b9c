"""The presets table and the one resolved config of a training run (issue 36): presets.py, train_config.py,
losses.py, train.py --dry-run and OUT/config.json."""
import csv
import inspect
import json

import pytest
import torch

import presets
import train
import trainer
from conftest import ROOT
from losses import FlowLoss, NoiseLoss, build_loss
from model import build_model, load_checkpoint, preset_config, save_checkpoint
from preset_configs import PRESET_CONFIGS
from train_config import AUTO_PRESET, SETTINGS, TrainConfig
from utils import ICLEVRError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(PRESET_CONFIGS))
def test_every_preset_derives_the_dict_it_had_before_the_table(name):
    """Checkpoints and the shipped weights store these dicts (tuples as tuples) and compare them for equality."""
    before = PRESET_CONFIGS[name]
    new_name = presets.ALIASES.get(name, name)
    assert preset_config(name) == {**before, "preset": new_name}
    assert preset_config(new_name) == {**before, "preset": new_name}
    assert presets.PRESETS[new_name] == {k: v for k, v in before.items() if k != "preset"}


def test_the_table_marks_legacy_presets_and_notes_every_one():
    assert set(presets.LEGACY) == {"report", "default", "cpu_pixel", "cpu_long"}
    assert set(presets.CURRENT) == {"cpu", "cpu64", "tiny", "tiny_latent"} and AUTO_PRESET in presets.CURRENT
    assert presets.ALIASES == {"seed": "report"} and set(presets.NOTES) == set(presets.PRESETS)
    assert "0.881 / 0.893" in presets.NOTES["cpu"] and "never trained to the end" in presets.NOTES["default"]
    assert "0.911 / 0.824" in presets.NOTES["cpu_long"] and "0.789 / 0.838" in presets.NOTES["cpu64"]
    with pytest.raises(ICLEVRError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_an_old_seed_checkpoint_loads_as_the_report_preset(tmp_path):
    path = tmp_path / "model_epoch_001.pt"
    save_checkpoint(path, {"config": {**PRESET_CONFIGS["seed"]}, "model": {}, "epoch": 1})
    for asked in (None, "seed", "report"):
        assert load_checkpoint(path, asked)["config"] == preset_config("report")
    with pytest.raises(ICLEVRError, match="holds a 'report' model, not the requested preset 'cpu'"):
        load_checkpoint(path, "cpu")


def dry_run(data_args, out, capsys, *extra):
    config = train.main([*map(str, data_args), "--out", str(out), "--dry-run", *map(str, extra)])
    return config, capsys.readouterr().out


def test_dry_run_prints_the_config_and_writes_nothing(data_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device auto: the CPU, also on a GPU machine
    config, printed = dry_run([*data_args, "--data-root", tmp_path / "no_images_here"], tmp_path / "run", capsys,
                              "--preset", "cpu", "--lr", 1e-3)
    assert not (tmp_path / "run").exists()  # nothing written, and no image read (there are none)
    assert printed.startswith("dry run: preset cpu (flow matching on 8x8x8 latents of 32x32 images, ")
    assert json.loads(printed[printed.index("\n{"):]) == json.loads(config.dumps())
    assert isinstance(config, TrainConfig) and config.model == preset_config("cpu")
    assert config.settings["lr"] == 1e-3 and config.settings["batch_size"] == 64  # the flag, else the preset's
    assert set(config.settings) == set(SETTINGS) and config.loss == "flow matching: MSE on the velocity"
    assert config.autoencoder == str(ROOT / "weights" / "autoencoder.safetensors") and config.device == "cpu"
    config, printed = dry_run(data_args, tmp_path / "run", capsys, "--preset", "seed")
    assert "'seed' is the old name of the 'report' preset" in printed and config.model["preset"] == "report"
    assert config.loss == "MSE on the noise"


def test_without_a_preset_a_gpu_trains_the_cpu_preset_too(data_args, tmp_path, capsys, monkeypatch):
    args = [a for a in data_args if a not in ("--preset", "tiny")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine (a dry run uses none)
    config, printed = dry_run(args, tmp_path / "run", capsys)
    assert config.model == preset_config("cpu") and config.device == "cuda"
    net = build_model(preset_config("cpu"))
    trained = sum(p.numel() for p in net.trainable_parameters()) / 1e6
    assert f"no --preset: training the 'cpu' preset (flow matching on 8x8x8 latents of 32x32 images, " \
           f"{trained:.2f} M parameters trained" in printed
    config, _ = dry_run(args, tmp_path / "run", capsys, "--cpu")  # the old flag: --device cpu
    assert config.device == "cpu"


def test_settings_come_from_the_preset_then_the_run_then_the_flags(run, tmp_path, capsys):
    out = tmp_path / "run"
    run(out, "--epochs", 1, "--batch-size", 4, "--lr", 5e-4)
    written = json.loads((out / "config.json").read_text())
    assert written["settings"]["lr"] == 5e-4 and written["model"] == json.loads(json.dumps(preset_config("tiny")))
    assert set(written) == {f.name for f in TrainConfig.__dataclass_fields__.values()}
    with open(out / "train_log.csv", newline="") as f:
        assert [r["loss_type"] for r in csv.DictReader(f)] == ["MSE on the noise"]
    capsys.readouterr()
    config = train.main(["--out", str(out), "--epochs", "2", "--resume", "--dry-run"])  # the run's own, no flags
    assert config.settings["lr"] == 5e-4 and config.settings["batch_size"] == 4 and config.model["preset"] == "tiny"
    assert config.resume == str(out / "model_epoch_001.pt") and config.epochs == 2
    config = train.main(["--out", str(out), "--epochs", "2", "--resume", "--dry-run", "--lr", "1e-4"])
    assert config.settings["lr"] == 1e-4 and config.settings["batch_size"] == 4


def test_run_reads_its_config_only():
    assert "args" not in inspect.getsource(trainer.Run)
    assert "is_main" in inspect.getsource(trainer.Run) and ".main " not in inspect.getsource(trainer.Run)


def test_the_loss_is_chosen_by_the_schedule_kind():
    assert isinstance(build_loss(preset_config("cpu")), FlowLoss)
    assert isinstance(build_loss(preset_config("tiny")), NoiseLoss)
    assert isinstance(build_loss(preset_config("tiny", ["schedule.kind=flow"])), FlowLoss)
    assert build_loss(preset_config("cpu_pixel"), snr_gamma=5.0).describe == "Min-SNR-5 weighted MSE on the noise"
    with pytest.raises(ICLEVRError, match="--snr-gamma 5 weights noise-prediction losses"):
        build_loss(preset_config("cpu"), snr_gamma=5.0)


@pytest.mark.parametrize("device, words", [("cuda", "no CUDA GPU here"), ("tpu:9", "unknown device 'tpu:9'")])
def test_a_device_that_is_not_here_is_one_line(data_args, tmp_path, capsys, monkeypatch, device, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        train.main([*data_args, "--out", str(tmp_path / "run"), "--device", device, "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists()
