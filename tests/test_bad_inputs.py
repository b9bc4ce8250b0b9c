"""Every script's CLI against the bad-input catalogue (tests/bad_inputs.py).

Each case runs in-process exactly as `python script.py args` would (runpy with run_name
"__main__", sys.argv set, the case folder as working directory), which saves the 4-10 s that a
fresh Python spends importing torch and diffusers per case; one case also runs as a real
subprocess to show that the CLI behaves the same. A refused case must exit with code 2, print
exactly one "error: ..." line holding the expected words, no traceback, and leave the case
folder exactly as it was.
"""
import os
import runpy
import sys
import traceback
import warnings
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # export.py and diffusers: everything is local

import pytest

from bad_inputs import CASES, ROOT, SCRIPTS, build_assets, check, run_subprocess, setup_case, snapshot

# Python's own warning filters for a script run as `python script.py` (pytest's differ): a warning
# that a user would see on stderr must show up here too.
CLI_WARNING_FILTERS = [("default", None, DeprecationWarning, "__main__", 0),
                       ("ignore", None, DeprecationWarning, None, 0),
                       ("ignore", None, PendingDeprecationWarning, None, 0),
                       ("ignore", None, ImportWarning, None, 0),
                       ("ignore", None, ResourceWarning, None, 0)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_iclevr):
    root, labels = tiny_iclevr
    return build_assets(tmp_path_factory.mktemp("bad_input_assets"), iclevr=root, train_json=labels)


def run_in_process(case, folder, monkeypatch, capsys):
    """(exit code, stdout, stderr) of `python <script> <argv>` run in this process, in `folder`."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [case.script, *case.argv])
    capsys.readouterr()
    code = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.filters[:] = CLI_WARNING_FILTERS
        try:
            runpy.run_path(str(ROOT / case.script), run_name="__main__")
        except SystemExit as e:
            if isinstance(e.code, str):  # sys.exit("message") prints it and exits with 1
                print(e.code, file=sys.stderr)
                code = 1
            else:
                code = e.code or 0
        except BaseException:  # what `python script.py` would print before exiting with 1
            traceback.print_exc()
            code = 1
    out, err = capsys.readouterr()
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return code, out, shown + err


def test_the_catalogue_covers_every_script():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 30
    per_script = Counter(c.script for c in CASES)
    assert set(per_script) == set(SCRIPTS) and min(per_script.values()) >= 3, per_script
    assert {c.outcome for c in CASES} == {"refused", "accepted"}
    assert all(c.note for c in CASES if c.outcome == "accepted")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, assets, tmp_path, monkeypatch, capsys):
    folder = setup_case(case, tmp_path / case.id, assets)
    before = snapshot(folder)
    code, out, err = run_in_process(case, folder, monkeypatch, capsys)
    problems = check(case, code, out, err, before, snapshot(folder))
    assert not problems, f"{case.id}: {problems}\nexit code {code}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"


def test_the_real_cli_behaves_the_same(assets, tmp_path):
    """One case as a real subprocess: same exit code, same single line, nothing changed."""
    case = next(c for c in CASES if c.id == "gen-guidance-nan")
    folder = setup_case(case, tmp_path / case.id, assets)
    before = snapshot(folder)
    code, out, err = run_subprocess(case, folder, timeout=120)
    assert check(case, code, out, err, before, snapshot(folder)) == [], (code, out, err)
    assert err.strip() == "error: --guidance must be a number from 0 to 100 (1 = no guidance), got nan"
