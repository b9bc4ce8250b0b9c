"""The bad-input catalogue: every script's CLI against files and flags a user can get wrong.

Each `Case` names a script, the command-line arguments, the files the case folder holds before
the run (declaratively: text, bytes, JSON, PNGs, copies of the shared assets, truncated copies)
and what the outcome must be:

- "refused": exit code 2, exactly one stderr line starting with "error: " that holds every one
  of `words`, no "Traceback" anywhere, and the case folder unchanged afterwards (every file's
  sha256 and mtime, no new file or folder, no temporary file left behind);
- "accepted": exit code 0 and `words` on stdout (the script takes this input by design, e.g.
  resizes or converts an image), the files set up unchanged and no temporary file left.

Used by tests/test_bad_inputs.py (in-process, fast) and bench/bad_input_sweep.py (each case as a
real `python script.py ...` subprocess, as a markdown table):

    from bad_inputs import CASES, build_assets, setup_case, snapshot, check, run_subprocess
    assets = build_assets(tmp)                 # a tiny rendered i-CLEVR folder, a tiny train.py
    folder = setup_case(case, tmp / case.id, assets)   # checkpoint and a course-format judge
    before = snapshot(folder)
    code, out, err = run_subprocess(case, folder)
    problems = check(case, code, out, err, before, snapshot(folder))   # [] when the case passes

Every case runs with the case folder as its working directory, which holds a copy of
objects.json (the scripts' default) and nothing else unless the case says so; the scripts'
default output paths (checkpoints/, generated/, figures/) therefore land inside it.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("render_iclevr.py", "train_evaluator.py", "evaluate_generated.py", "train.py", "generate.py",
           "grid.py", "denoise.py", "export.py", "train_autoencoder.py")
LABELS5 = [["red sphere"], ["cyan cube", "gray cylinder"], ["blue sphere", "green cube", "yellow cylinder"],
           ["purple cube"], ["brown sphere", "red cylinder"]]
CKPT = "model_epoch_001.pt"  # a copy of the tiny train.py checkpoint, under this name
JUDGE = "checkpoint.pth"  # a copy of the course-format evaluator checkpoint (the scripts' default name)
JUDGE16 = "judge16.pth"  # the same judge stored in fp16, as the shipped weights/judge.pth is
TMP_MARK = ".tmp"  # dataset.TMP_SUFFIX: no file with it may be left behind


# ---- declarative file contents ------------------------------------------------------------

def _fresh(path):
    """Never write through a hard link to a shared asset: replace the entry instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def asset(name):
    """A hard link to (or, across devices, a copy of) one of build_assets' files or folders."""
    def write(path, assets):
        src = Path(assets[name])
        if src.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(src, path, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, _fresh(path))
    write.describe = f"copy of {name}"
    return write


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def truncated(name, keep=0.5):
    """The first `keep` fraction of an asset's bytes: a checkpoint cut off by a crash or a full disk."""
    def write(path, assets):
        data = Path(assets[name]).read_bytes()
        _fresh(path).write_bytes(data[:int(len(data) * keep)])
    return write


def png(size=64, mode="RGB", color=(30, 120, 200)):
    """A solid PNG: mode RGB, RGBA, L (grayscale), P, or I;16 (16-bit grayscale)."""
    def write(path, assets):
        import numpy as np
        from PIL import Image
        if mode == "I;16":
            image = Image.fromarray(np.full((size, size), 40000, dtype=np.uint16))
        else:
            image = Image.new("RGB", (size, size), color).convert(mode)
        image.save(_fresh(path), format="PNG")
    return write


def pngs(folder, numbers, **kw):
    """{folder/i.png: png(...)} for each i: a folder of numbered images, as generate.py writes."""
    return {f"{folder}/{i}.png": png(color=(40 * i % 256, 100, 200), **kw) for i in numbers}


PNG_GARBAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # a PNG signature, then nonsense
BINARY = bytes(range(256)) * 8  # not UTF-8: binary garbage where JSON is expected


def write_entry(path, content, assets):
    """One `files` entry: bytes, text, a JSON value (list/dict/number), a writer, or a folder ('x/': None)."""
    if callable(content):
        content(path, assets)
    elif isinstance(content, bytes):
        _fresh(path).write_bytes(content)
    elif isinstance(content, str):
        _fresh(path).write_text(content)
    else:
        _fresh(path).write_text(json.dumps(content))


# ---- the catalogue ------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str  # unique, used as the pytest id and the table's first column
    script: str  # one of SCRIPTS
    kind: str  # the bad input, in a few words, for the docs table
    argv: tuple  # arguments after the script name; paths are relative to the case folder
    words: tuple  # must all appear in the stderr line (refused) or on stdout (accepted)
    files: dict = field(default_factory=dict)  # relative path -> content (see write_entry)
    outcome: str = "refused"  # or "accepted": the script takes the input by design
    note: str = ""  # why an "accepted" case is accepted, or what the case shows


def case(id, script, kind, argv, words, files=None, outcome="refused", note=""):
    return Case(id, script, kind, tuple(map(str, argv)), (words,) if isinstance(words, str) else tuple(words),
                dict(files or {}), outcome, note)


def labels(content):
    return {"labels.json": content}


GEN = ["--json", "labels.json", "--ckpt", CKPT, "--out", "out", "--device", "cpu"]
GEN_FILES = {CKPT: asset("model.pt"), "labels.json": LABELS5}
EVAL = ["--json", "labels.json", "--images", "gen", "--device", "cpu"]
EVAL_FILES = {JUDGE: asset("judge.pth"), "labels.json": LABELS5}
DENOISE = ["--ckpt", CKPT, "--out", "fig/denoise.png", "--device", "cpu"]
TRAIN = ["--preset", "tiny", "--data-root", "iclevr", "--json", "train_head.json", "--num-workers", "1",
         "--out", "run", "--epochs", "1"]
AE_TRAIN = ["--data-root", "iclevr", "--json", "train_head.json", "--heldout", "2", "--heldout-root", "val",
            "--out", "ae.pt"]
JUDGE_TRAIN = ["--data-root", "iclevr", "--json", "train_head.json", "--val-root", "val", "--val-size", "2",
               "--extra-random", "0", "--out", "judge.pth", "--device", "cpu"]
RENDER = ["--json", "labels.json", "--out", "out", "--workers", "1"]
RENDERED = {"out/.render.json": {"seed": 0, "size": [64, 64], "supersample": 3, "object_size": "large",
                                 "material": "rubber"}, "out/0.png": png()}

CASES = [
    # render_iclevr.py
    case("render-misspelled-label", "render_iclevr.py", "misspelled label", RENDER,
         ['unknown label "red spher"', 'did you mean "red sphere"'], labels([["red spher"]])),
    case("render-wrong-case", "render_iclevr.py", "label in the wrong case", RENDER,
         ['unknown label "Red Sphere"', 'did you mean "red sphere"'], labels([["Red Sphere"]])),
    case("render-escaping-name", "render_iclevr.py", "file name escaping the folder (../x.png)", RENDER,
         ['"../x.png" escapes the image folder'], labels({"../x.png": ["red sphere"]})),
    case("render-absolute-name", "render_iclevr.py", "absolute file name (/tmp/x.png)", RENDER,
         ['"/tmp/x.png" escapes the image folder'], labels({"/tmp/x.png": ["red sphere"]})),
    case("render-binary-json", "render_iclevr.py", "binary garbage as the label file", RENDER,
         ["labels.json", "not a text file"], labels(BINARY)),
    case("render-missing-json", "render_iclevr.py", "missing label file", ["--json", "nope.json", "--out", "out"],
         ["nope.json: no such file"]),
    case("render-workers-zero", "render_iclevr.py", "--workers 0", [*RENDER[:4], "--workers", 0],
         ["--workers must be at least 1"], labels([["red sphere"]])),
    case("render-bad-size", "render_iclevr.py", "--size 3 (below 8 pixels)", [*RENDER, "--size", 3],
         ["argument --size", "'3'"], labels([["red sphere"]])),
    case("render-other-settings", "render_iclevr.py", "continuing a folder with another --seed",
         [*RENDER, "--seed", 1], ["rendered with other settings", "seed=0 (now 1)"],
         {**labels([["red sphere"]]), **RENDERED}),
    case("render-corrupt-manifest", "render_iclevr.py", "truncated .render.json in the output folder", RENDER,
         [".render.json", "malformed JSON"], {**labels([["red sphere"]]), "out/.render.json": '{"seed": 0, "si'}),

    # train_evaluator.py
    case("judge-missing-data-root", "train_evaluator.py", "missing image folder",
         [*JUDGE_TRAIN[:1], "nowhere", *JUDGE_TRAIN[2:]], ["nowhere: 9 of 9 images are missing",
                                                         "python render_iclevr.py"],
         {"train_head.json": asset("train_head.json")}),
    case("judge-escaping-name", "train_evaluator.py", "file name escaping the folder (../x.png)", JUDGE_TRAIN,
         ['"../x.png" escapes the image folder'], {"train_head.json": {"../x.png": ["red sphere"]}}),
    case("judge-truncated-json", "train_evaluator.py", "truncated JSON", JUDGE_TRAIN,
         ["train_head.json", "malformed JSON"], {"train_head.json": '{"CLEVR_train_000000_0.png": ["red sph'}),
    case("judge-list-file", "train_evaluator.py", "a test.json-style list as the training file", JUDGE_TRAIN,
         ["train_head.json", "list", "train.json-style dict"],
         {"iclevr": asset("iclevr"), "train_head.json": LABELS5}),
    case("judge-epochs-zero", "train_evaluator.py", "--epochs 0", [*JUDGE_TRAIN, "--epochs", 0],
         ["--epochs", "must be positive"]),
    case("judge-epochs-fraction", "train_evaluator.py", "--epochs 2.5 (whole passes only)",
         [*JUDGE_TRAIN, "--epochs", "2.5"], ["--epochs", "invalid int value"],
         {"iclevr": asset("iclevr"), "train_head.json": asset("train_head.json")}),
    case("judge-extra-randomize-out-of-range", "train_evaluator.py", "--extra-randomize 2 (0 to 1)",
         [*JUDGE_TRAIN, "--extra-randomize", 2], ["--extra-randomize", "between 0 and 1"]),
    case("judge-batch-size-negative", "train_evaluator.py", "--batch-size -4", [*JUDGE_TRAIN, "--batch-size", -4],
         ["--batch-size", "must be positive"]),
    case("judge-batch-size-too-big", "train_evaluator.py", "--batch-size larger than the data (refused before "
         "rendering the validation set)", [*JUDGE_TRAIN, "--batch-size", 64],
         ["--batch-size 64 is larger than the 9 training images"],
         {"iclevr": asset("iclevr"), "train_head.json": asset("train_head.json")}),
    case("judge-corrupt-image", "train_evaluator.py", "corrupt PNG in the training folder", JUDGE_TRAIN,
         ["cannot read image", "CLEVR_train_000001_2.png"],
         {"iclevr": asset("iclevr"), "iclevr/CLEVR_train_000001_2.png": PNG_GARBAGE,
          "train_head.json": asset("train_head.json")}),

    # train.py
    case("train-epochs-zero", "train.py", "--epochs 0", [*TRAIN[:-1], 0], ["--epochs must be at least 1"]),
    case("train-epochs-negative", "train.py", "--epochs -3", [*TRAIN[:-1], -3], ["--epochs must be at least 1"]),
    case("train-batch-size-zero", "train.py", "--batch-size 0", [*TRAIN, "--batch-size", 0],
         ["--batch-size must be at least 1"]),
    case("train-batch-size-too-big", "train.py", "--batch-size larger than the data", [*TRAIN, "--batch-size", 64],
         ["--batch-size 64 is larger than the 9 training images"],
         {"iclevr": asset("iclevr"), "train_head.json": asset("train_head.json")}),
    case("train-unknown-label", "train.py", "unknown label in train.json", TRAIN,
         ['unknown label "purple sphre"', 'did you mean "purple sphere"'],
         {"train_head.json": {"a.png": ["purple sphre"]}}),
    case("train-repeated-label", "train.py", "repeated label", TRAIN, ['"red sphere" appears twice'],
         {"train_head.json": {"a.png": ["red sphere", "red sphere"]}}),
    case("train-list-file", "train.py", "a test.json-style list as the training file", TRAIN,
         ["train_head.json", "list", "train.json-style dict"],
         {"iclevr": asset("iclevr"), "train_head.json": LABELS5}),
    case("train-resume-other-preset", "train.py", "--resume a checkpoint of another --preset",
         ["--resume", f"run/{CKPT}", "--preset", "cpu", "--epochs", 2, "--out", "run"],
         ["holds a 'tiny' model", "--preset tiny"], {f"run/{CKPT}": asset("model.pt")}),
    case("train-resume-truncated", "train.py", "--resume: newest checkpoint truncated",
         ["--resume", "--epochs", 2, "--out", "run"], [f"run/{CKPT}", "not a loadable train.py checkpoint"],
         {f"run/{CKPT}": truncated("model.pt")}),
    case("train-resume-judge", "train.py", "--resume the evaluator's checkpoint.pth",
         ["--resume", JUDGE, "--epochs", 2, "--out", "run"], [JUDGE, "not a train.py checkpoint"],
         {JUDGE: asset("judge.pth")}),
    case("train-resume-text", "train.py", "--resume a text file renamed .pt",
         ["--resume", "--epochs", 2, "--out", "run"], [f"run/{CKPT}", "not a loadable train.py checkpoint"],
         {f"run/{CKPT}": "this is not a checkpoint\n"}),
    case("train-fresh-over-run", "train.py", "a fresh run into a folder that holds a run", TRAIN,
         ["run already holds a run", "--resume"], {f"run/{CKPT}": asset("model.pt")}),

    # generate.py
    case("gen-unknown-label", "generate.py", "unknown label", GEN,
         ["labels.json entry 1", 'unknown label "magenta cube"'],
         {**GEN_FILES, "labels.json": [["red sphere"], ["magenta cube"]]}),
    case("gen-wrong-case", "generate.py", "label in the wrong case", GEN,
         ['unknown label "Cyan Cube"', 'did you mean "cyan cube"'], {**GEN_FILES, "labels.json": [["Cyan Cube"]]}),
    case("gen-empty-label-list", "generate.py", "an empty label list", GEN, ["entry 1", "empty label list"],
         {**GEN_FILES, "labels.json": [["red sphere"], []]}),
    case("gen-no-entries", "generate.py", "a label file with no entries ([])", GEN, ["holds no entries"],
         {**GEN_FILES, "labels.json": []}),
    case("gen-repeated-label", "generate.py", "repeated label", GEN, ['"cyan cube" appears twice'],
         {**GEN_FILES, "labels.json": [["cyan cube", "cyan cube"]]}),
    case("gen-four-labels", "generate.py", "4 labels in one entry", GEN, ["4 labels", "at most 3"],
         {**GEN_FILES, "labels.json": [["red sphere", "cyan cube", "gray cube", "blue cube"]]}),
    case("gen-non-list-json", "generate.py", "non-list JSON (a string)", GEN, ["expected a dict", "got str"],
         {**GEN_FILES, "labels.json": '"red sphere"'}),
    case("gen-dict-file", "generate.py", "a train.json-style dict", GEN, ["train.json-style dict"],
         {**GEN_FILES, "labels.json": {"a.png": ["red sphere"]}}),
    case("gen-truncated-json", "generate.py", "truncated JSON", GEN, ["labels.json", "malformed JSON at line 1"],
         {**GEN_FILES, "labels.json": '[["red sphere"], ["cyan'}),
    case("gen-empty-file", "generate.py", "empty label file", GEN, ["labels.json", "empty"],
         {**GEN_FILES, "labels.json": ""}),
    case("gen-binary-json", "generate.py", "binary garbage as the label file", GEN, ["labels.json", "not a text file"],
         {**GEN_FILES, "labels.json": BINARY}),
    case("gen-judge-checkpoint", "generate.py", "the evaluator's checkpoint.pth as --ckpt",
         [*GEN[:2], "--ckpt", JUDGE, *GEN[4:]], [JUDGE, "not a train.py checkpoint"],
         {**GEN_FILES, JUDGE: asset("judge.pth")}),
    case("gen-truncated-checkpoint", "generate.py", "truncated checkpoint", GEN,
         [CKPT, "not a loadable train.py checkpoint"], {**GEN_FILES, CKPT: truncated("model.pt")}),
    case("gen-text-checkpoint", "generate.py", "a text file renamed .pt", GEN,
         [CKPT, "not a loadable train.py checkpoint", "not a file written by torch.save"],
         {**GEN_FILES, CKPT: "hello\n"}),
    case("gen-no-checkpoint", "generate.py", "no checkpoint in checkpoints/", ["--json", "labels.json"],
         ["no checkpoint in checkpoints/: using the shipped generator weights/generator.safetensors"],
         {"labels.json": LABELS5},
         outcome="accepted", note="falls back to the shipped generator, and says so"),
    case("gen-steps-zero", "generate.py", "--steps 0", [*GEN, "--steps", 0], ["--steps must be at least 1"],
         GEN_FILES),
    case("gen-steps-beyond-training", "generate.py", "--steps 101 for a 100-timestep model, existing folder",
         [*GEN, "--steps", 101], ["--steps 101", "trained with 100 timesteps"],
         {**GEN_FILES, **pngs("out", range(5)), "out/.generate.json": {"sampler": "dpm", "steps": 5}},
         note="the folder's images and settings file stay as they were"),
    case("gen-batch-size-zero", "generate.py", "--batch-size 0", [*GEN, "--batch-size", 0],
         ["--batch-size must be at least 1"], GEN_FILES),
    case("gen-guidance-nan", "generate.py", "--guidance nan", [*GEN, "--guidance", "nan"],
         ["--guidance must be a number", "got nan"], GEN_FILES),
    case("gen-guidance-inf", "generate.py", "--guidance inf", [*GEN, "--guidance", "inf"],
         ["--guidance must be a number", "got inf"], GEN_FILES),
    case("gen-guidance-negative", "generate.py", "--guidance -1", [*GEN, "--guidance", -1],
         ["--guidance must be a number", "got -1"], GEN_FILES),

    # evaluate_generated.py
    case("eval-missing-folder", "evaluate_generated.py", "missing images folder", EVAL,
         ["gen: no such folder", "python generate.py"], EVAL_FILES),
    case("eval-gap", "evaluate_generated.py", "generated folder with a gap (3.png missing)", EVAL,
         ["1 of 5 images missing (3.png)"], {**EVAL_FILES, **pngs("gen", [0, 1, 2, 4])}),
    case("eval-extra-image", "evaluate_generated.py", "one image more than the label file", EVAL,
         ["extra images 5.png", "do not match"], {**EVAL_FILES, **pngs("gen", range(6))}),
    case("eval-zero-byte-png", "evaluate_generated.py", "zero-byte PNG", EVAL, ["cannot read image", "2.png"],
         {**EVAL_FILES, **pngs("gen", range(5)), "gen/2.png": b""}),
    case("eval-corrupt-png", "evaluate_generated.py", "corrupt PNG bytes", EVAL, ["cannot read image", "0.png"],
         {**EVAL_FILES, **pngs("gen", range(5)), "gen/0.png": PNG_GARBAGE}),
    case("eval-wrong-size", "evaluate_generated.py", "32x32 images", EVAL,
         ["accuracy", "images are 32x32: resized to 64x64"], {**EVAL_FILES, **pngs("gen", range(5), size=32)},
         outcome="accepted", note="resized to 64x64 by design, and the script says so"),
    case("eval-grayscale", "evaluate_generated.py", "grayscale (mode L) images", EVAL, ["accuracy"],
         {**EVAL_FILES, **pngs("gen", range(5), mode="L")},
         outcome="accepted", note='converted with convert("RGB"), as the course does'),
    case("eval-rgba", "evaluate_generated.py", "RGBA images", EVAL, ["accuracy"],
         {**EVAL_FILES, **pngs("gen", range(5), mode="RGBA")},
         outcome="accepted", note='the real i-CLEVR PNGs are RGBA: convert("RGB") drops the alpha'),
    case("eval-16-bit", "evaluate_generated.py", "16-bit grayscale images", EVAL, ["accuracy"],
         {**EVAL_FILES, **pngs("gen", range(5), mode="I;16")},
         outcome="accepted", note="scaled to 8 bits (>> 8) before convert(\"RGB\"), which would clip it to white"),
    case("eval-train-checkpoint", "evaluate_generated.py", "a train.py checkpoint as the judge",
         [*EVAL, "--judge", CKPT], [CKPT, "not an evaluator checkpoint", "'model': ResNet18 state dict"],
         {**EVAL_FILES, **pngs("gen", range(5)), CKPT: asset("model.pt")}),
    case("eval-missing-judge", "evaluate_generated.py", "--judge names a file that is not there",
         [*EVAL, "--judge", "nope.pth"], ["nope.pth: no such evaluator checkpoint", "course-format checkpoint"],
         {**EVAL_FILES, **pngs("gen", range(5))}),
    case("eval-truncated-fp16-judge", "evaluate_generated.py", "truncated fp16 judge (--judge)",
         [*EVAL, "--judge", JUDGE16], [JUDGE16, "not a loadable evaluator checkpoint", "course-format checkpoint"],
         {**EVAL_FILES, **pngs("gen", range(5)), JUDGE16: truncated("judge16.pth", 0.5)}),
    case("eval-fp16-judge", "evaluate_generated.py", "a judge stored in fp16 (--judge)", [*EVAL, "--judge", JUDGE16],
         ["judge: judge16.pth (sha256 ", "accuracy"],
         {**EVAL_FILES, **pngs("gen", range(5)), JUDGE16: asset("judge16.pth")}, outcome="accepted",
         note="loaded as fp32, as the shipped weights/judge.pth is; the line above the scores names the judge"),
    case("eval-text-judge", "evaluate_generated.py", "a text file as checkpoint.pth", EVAL,
         [JUDGE, "not a loadable evaluator checkpoint"], {**EVAL_FILES, **pngs("gen", range(5)), JUDGE: "hi\n"}),
    case("eval-truncated-judge", "evaluate_generated.py", "truncated checkpoint.pth", EVAL,
         [JUDGE, "not a loadable evaluator checkpoint"],
         {**EVAL_FILES, **pngs("gen", range(5)), JUDGE: truncated("judge.pth", 0.3)}),
    case("eval-nothing-generated", "evaluate_generated.py", "no arguments and no generated/ folder", [],
         ["no generated images under generated/", "python generate.py"], {JUDGE: asset("judge.pth")}),
    case("eval-unknown-label", "evaluate_generated.py", "unknown label in the label file", EVAL,
         ['unknown label "red spheres"', 'did you mean "red sphere"'],
         {**EVAL_FILES, **pngs("gen", range(1)), "labels.json": [["red spheres"]]}),

    # grid.py
    case("grid-missing-folder", "grid.py", "missing images folder", ["--images", "nowhere"],
         ["nowhere: no such folder"]),
    case("grid-gap", "grid.py", "folder with a gap (3.png missing)", ["--images", "gen"],
         ["gap in the numbered images", "3.png missing"], pngs("gen", [0, 1, 2, 4])),
    case("grid-zero-byte-png", "grid.py", "zero-byte PNG", ["--images", "gen"], ["cannot read image", "1.png"],
         {**pngs("gen", range(3)), "gen/1.png": b"", "gen/grid.png": png(size=8)}),
    case("grid-corrupt-png", "grid.py", "corrupt PNG bytes", ["--images", "gen"], ["cannot read image", "2.png"],
         {**pngs("gen", range(3)), "gen/2.png": PNG_GARBAGE}),
    case("grid-odd-name", "grid.py", "a zero-padded name (00.png)", ["--images", "gen"],
         ["00.png is not a numbered image name"], {**pngs("gen", range(2)), "gen/00.png": png()}),
    case("grid-mixed-sizes", "grid.py", "images of different sizes and modes", ["--images", "gen"],
         ["wrote gen/grid.png (3 images"],
         {"gen/0.png": png(size=16), "gen/1.png": png(size=32, mode="L"), "gen/2.png": png(size=64, mode="RGBA")},
         outcome="accepted", note="every tile is converted to RGB and resized to the size of 0.png"),
    case("grid-label-mismatch", "grid.py", "label file with another number of entries",
         ["--images", "gen", "--json", "labels.json"], ["holds 3 numbered images but labels.json has 5 entries"],
         {**pngs("gen", range(3)), "labels.json": LABELS5}),
    case("grid-nrow-zero", "grid.py", "--nrow 0", ["--images", "gen", "--nrow", 0], ["--nrow must be at least 1"],
         pngs("gen", range(3))),
    case("grid-out-under-a-file", "grid.py", "--out inside a path that is a file",
         ["--images", "gen", "--out", "gen/0.png/grid.png"], ["cannot write gen/0.png/grid.png"],
         pngs("gen", range(3))),

    # denoise.py
    case("denoise-unknown-label", "denoise.py", "--labels with an unknown label",
         [*DENOISE, "--labels", "red sphere", "magenta cube"], ['--labels: unknown label "magenta cube"'],
         {CKPT: asset("model.pt")}),
    case("denoise-wrong-case", "denoise.py", "--labels in the wrong case", [*DENOISE, "--labels", "Cyan Cube"],
         ['unknown label "Cyan Cube"', 'did you mean "cyan cube"'], {CKPT: asset("model.pt")}),
    case("denoise-repeated-label", "denoise.py", "--labels with a repeated label",
         [*DENOISE, "--labels", "red sphere", "red sphere"], ['"red sphere" appears twice'], {CKPT: asset("model.pt")}),
    case("denoise-four-labels", "denoise.py", "--labels with 4 labels",
         [*DENOISE, "--labels", "red sphere", "cyan cube", "gray cube", "blue cube"], ["4 labels", "at most 3"],
         {CKPT: asset("model.pt")}),
    case("denoise-no-labels", "denoise.py", "--labels with nothing after it", [*DENOISE, "--labels"],
         ["argument --labels", "expected at least one argument"], {CKPT: asset("model.pt")}),
    case("denoise-guidance-inf", "denoise.py", "--guidance inf", [*DENOISE, "--guidance", "inf"],
         ["--guidance must be a number from 0 to 100", "got inf"], {CKPT: asset("model.pt")}),
    case("denoise-guidance-negative", "denoise.py", "--guidance -2", [*DENOISE, "--guidance", -2],
         ["--guidance must be a number from 0 to 100", "got -2"], {CKPT: asset("model.pt")}),
    case("denoise-steps-negative", "denoise.py", "--steps -5", [*DENOISE, "--steps", -5],
         ["--steps must be at least 1"], {CKPT: asset("model.pt")}),
    case("denoise-judge-checkpoint", "denoise.py", "the evaluator's checkpoint.pth as --ckpt",
         ["--ckpt", JUDGE, *DENOISE[2:]], [JUDGE, "not a train.py checkpoint"], {JUDGE: asset("judge.pth")}),
    case("denoise-no-checkpoint", "denoise.py", "no checkpoint in checkpoints/", [],
         ["no checkpoint in checkpoints/: using the shipped generator weights/generator.safetensors"],
         outcome="accepted", note="falls back to the shipped generator, and says so"),

    # export.py
    case("export-judge-checkpoint", "export.py", "the evaluator's checkpoint.pth as --ckpt",
         ["--ckpt", JUDGE, "--out", "export"], [JUDGE, "not a train.py checkpoint"], {JUDGE: asset("judge.pth")}),
    case("export-truncated-checkpoint", "export.py", "truncated checkpoint", ["--ckpt", CKPT, "--out", "export"],
         [CKPT, "not a loadable train.py checkpoint"], {CKPT: truncated("model.pt", 0.7)}),
    case("export-text-checkpoint", "export.py", "a text file renamed .pt", ["--ckpt", CKPT, "--out", "export"],
         [CKPT, "not a loadable train.py checkpoint", "not a file written by torch.save"], {CKPT: "not a model\n"}),
    case("export-non-empty-out", "export.py", "--out folder holds other files", ["--ckpt", CKPT, "--out", "export"],
         ["export: folder is not empty", "--force"], {CKPT: asset("model.pt"), "export/notes.txt": "mine\n"}),
    case("export-out-is-a-file", "export.py", "--out is an existing file", ["--ckpt", CKPT, "--out", "notes.txt"],
         ["notes.txt: exists and is not a folder"], {CKPT: asset("model.pt"), "notes.txt": "mine\n"}),
    case("export-decoder-pixel-model", "export.py", "--decoder for a pixel model (no autoencoder)",
         ["--ckpt", CKPT, "--generator", "--decoder", "ae.safetensors", "--out", "g.safetensors"],
         [CKPT, "pixel model", "no autoencoder"], {CKPT: asset("model.pt")}),
    case("export-decoder-other-size", "export.py", "--decoder: the 32x32 autoencoder for the 64x64 shipped generator",
         ["--ckpt", str(ROOT / "weights" / "generator.safetensors"), "--generator", "--decoder",
          str(ROOT / "weights" / "autoencoder.safetensors"), "--out", "g.safetensors"],
         ["autoencoder.safetensors was trained for another autoencoder config", "32px", "64px"]),

    # train_autoencoder.py
    case("ae-perceptual-is-the-judge", "train_autoencoder.py", "--perceptual: the shipped judge",
         ["--preset", "tiny_latent", *AE_TRAIN, "--perceptual", str(ROOT / "weights" / "judge.pth")],
         ["--perceptual", "judge.pth is the judge that scores", "another network"],
         {"iclevr": asset("iclevr"), "train_head.json": asset("train_head.json")}),
    case("ae-decoder-only-no-init", "train_autoencoder.py", "--decoder-only without --init",
         ["--preset", "tiny_latent", *AE_TRAIN, "--decoder-only"], ["--decoder-only", "pass its file with --init"],
         {"iclevr": asset("iclevr"), "train_head.json": asset("train_head.json")}),
    case("ae-init-other-size", "train_autoencoder.py", "--init: the 32x32 autoencoder for the 64x64 preset",
         ["--preset", "cpu64", *AE_TRAIN, "--init", str(ROOT / "weights" / "autoencoder.safetensors")],
         ["autoencoder.safetensors was trained for another autoencoder config", "32px", "64px"],
         {"iclevr": asset("iclevr"), "train_head.json": asset("train_head.json")}),
]


# ---- assets, setup, snapshots, checks -----------------------------------------------------

def build_assets(folder, iclevr=None, train_json=None):
    """The shared inputs of the catalogue under `folder`: {name: path}.

    iclevr/ + train_head.json: a tiny rendered training set (rendered here unless given);
    model.pt: a train.py checkpoint of the `tiny` preset (1 epoch); judge.pth: a course-format
    evaluator checkpoint (untrained ResNet18), judge16.pth the same in fp16. Runs in-process; about
    10 s on 2 cores.
    """
    import torch

    import render_iclevr
    import train
    from evaluator import build_network, half_state

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    objects = str(ROOT / "objects.json")
    if iclevr is None:
        head = json.loads((ROOT / "train.json").read_text())
        train_json = folder / "train_head.json"
        train_json.write_text(json.dumps({name: head[name] for name in sorted(head)[:9]}))
        iclevr = folder / "iclevr"
        render_iclevr.main(["--json", str(train_json), "--objects", objects, "--out", str(iclevr), "--workers", "1"])
    run = folder / "run"
    if not (run / CKPT).is_file():
        train.main(["--preset", "tiny", "--data-root", str(iclevr), "--json", str(train_json), "--objects", objects,
                    "--epochs", "1", "--batch-size", "4", "--num-workers", "1", "--out", str(run)])
    judge = folder / "judge.pth"
    if not judge.is_file():
        torch.manual_seed(0)
        torch.save({"model": build_network().state_dict()}, judge)
    judge16 = folder / "judge16.pth"
    if not judge16.is_file():
        torch.save(half_state(torch.load(judge, weights_only=True)), judge16)
    return {"iclevr": Path(iclevr), "train_head.json": Path(train_json), "model.pt": run / CKPT, "judge.pth": judge,
            "judge16.pth": judge16}


def setup_case(case, folder, assets):
    """Create the case folder: objects.json plus the case's files. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "objects.json", folder / "objects.json")
    for rel, content in case.files.items():
        if rel.endswith("/"):
            (folder / rel).mkdir(parents=True, exist_ok=True)
        else:
            write_entry(folder / rel, content, assets)
    return folder


def snapshot(folder):
    """{relative path: (sha256, mtime_ns)} of every file under folder, and '<dir>/' entries for folders."""
    folder, state = Path(folder), {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in dirnames:
            state[f"{(here / d).relative_to(folder)}/"] = None
        for f in filenames:
            path = here / f
            state[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                    path.stat().st_mtime_ns)
    return state


def disk_problems(case, before, after):
    """What the run changed on disk that it must not have (empty: nothing)."""
    problems = [f"changed: {p}" for p in before if p in after and after[p] != before[p]]
    problems += [f"removed: {p}" for p in before if p not in after]
    added = [p for p in after if p not in before]
    if case.outcome == "refused":
        problems += [f"new: {p}" for p in added]
    else:
        problems += [f"temporary file left: {p}" for p in added if TMP_MARK in Path(p.rstrip("/")).name]
    return problems


def check(case, code, out, err, before, after):
    """Every way the run failed the case's contract, as short strings (empty: the case passes)."""
    problems = []
    lines = err.strip().splitlines()
    if "Traceback" in out + err:
        problems.append("traceback")
    if case.outcome == "refused":
        if code != 2:
            problems.append(f"exit code {code}, expected 2")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines, expected 1")
        elif not lines[0].startswith("error: "):
            problems.append("stderr line does not start with 'error: '")
        missing = [w for w in case.words if not lines or w not in lines[-1]]
    else:
        if code != 0:
            problems.append(f"exit code {code}, expected 0 (accepted)")
        missing = [w for w in case.words if w not in out]
    if missing:
        problems.append(f"missing words: {missing}")
    return problems + disk_problems(case, before, after)


def run_subprocess(case, folder, timeout=600):
    """Run the case as `python script.py argv...` in its folder: (exit code, stdout, stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(ROOT / case.script), *case.argv], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""
