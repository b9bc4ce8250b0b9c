"""Help that tells the truth: every flag of every script has a help sentence, a default that depends on the preset
says so (and, in train.py, what it is for each preset), every --help runs, and one --device flag everywhere."""
import argparse
import importlib

import pytest

import presets
import train
from train_config import SETTINGS

SCRIPTS = ["render_iclevr", "train", "train_evaluator", "train_autoencoder", "evaluate_generated", "generate", "grid",
           "denoise", "export", "app", "pipeline"]
DEVICE_SCRIPTS = ["train", "train_evaluator", "train_autoencoder", "evaluate_generated", "generate", "denoise", "app"]
SAMPLING = {"sampler", "steps", "guidance", "guidance_interval"}  # defaults of the checkpoint's preset


def script(name):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # app.py, where its optional gradio import is at module level
        pytest.skip(f"{name} does not import here: {e}")


def flags(parser):
    """(action, the help as --help shows it) for every visible flag."""
    formatter = parser._get_formatter()
    return [(a, formatter._get_help_string(a)) for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_has_a_help_sentence_and_a_preset_default_says_so(name):
    parser = script(name).build_parser()
    for action, shown in flags(parser):
        flag = action.option_strings[0]
        assert action.help and action.help.rstrip(")").endswith("."), f"{name} {flag}: no help sentence"
        if action.default not in (None, False, []):
            assert "default" in shown, f"{name} {flag}: the default {action.default!r} is not shown"
        if action.dest in SAMPLING:
            assert "the preset's" in shown or "the checkpoint's" in shown, f"{name} {flag}: {shown}"


def test_train_help_names_each_presets_default_and_the_resumed_runs():
    for action, shown in flags(train.build_parser()):
        if action.dest not in SETTINGS:
            continue
        assert "on --resume the run's own" in shown, action.option_strings
        values = {config["train"].get(action.dest) for config in presets.PRESETS.values()}
        if len(values) > 1:  # a default that differs by preset: each preset named with its value
            assert "the preset's: " + presets.by_value(action.dest) in shown, shown
            assert all(name in shown for name in presets.PRESETS), shown
    preset = next(a for a, _ in flags(train.build_parser()) if a.dest == "preset")
    for name, note in presets.NOTES.items():
        assert f"{name}: {note}" in preset.help
    assert "'cpu', on a CPU and a GPU alike" in preset.help and "Legacy" in preset.help
    groups = [g.title for g in train.build_parser()._action_groups]
    assert {"what to train", "data", "evaluation and logging", "devices"} <= set(groups)
    assert any(t.startswith("schedule and optimiser") for t in groups) and any(t.startswith("auxiliary") for t in
                                                                                 groups)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_runs(name, capsys):
    module = script(name)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage:")


@pytest.mark.parametrize("name", DEVICE_SCRIPTS)
def test_one_device_flag_everywhere(name):
    parser = script(name).build_parser()
    device = [a for a in parser._actions if "--device" in a.option_strings]
    assert device and device[0].default == "auto" and "cuda[:N]" in device[0].help, name
    if name == "train":  # the old spelling still works, hidden: --cpu means --device cpu
        cpu = [a for a in parser._actions if "--cpu" in a.option_strings]
        assert cpu and cpu[0].help == argparse.SUPPRESS and parser.parse_args(["--cpu"]).device == "cpu"
