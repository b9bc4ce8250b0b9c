"""The reference pages (README.md and docs/*.md, not the dated notes in docs/notes/) stay true to the code:
every script they run exists, every flag they give it is one of its flags, every repository path they
name exists, and they carry no dates or session wording (those belong to docs/notes/)."""
import functools
import importlib
import re
import subprocess
import sys

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# folders the scripts create: paths under them need not exist in a checkout
OUTPUTS = {"iclevr", "renders", "checkpoints", "generated", "shipped", "figures", "runs", "export"}
REPO_DIRS = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in OUTPUTS and p.name != ".venv"}
COMMAND = re.compile(r"\bpython3? +(?:-m +(bench\.\w+)|((?:[\w.-]+/)*[\w.-]+\.py))\b([^#`]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"^[\w.-]+(?:/[\w.*<>-]*)+$")
DATE = re.compile(r"(?<!notes/)\b20\d\d-\d\d-\d\d\b")
SESSION = re.compile(r"\b(sessions?|lent)\b", re.I)


def page_id(page):
    return str(page.relative_to(ROOT))


def code_of(text):
    """The page's code: each fenced block's lines (a trailing backslash joins the next line) and each inline span."""
    blocks = [re.sub(r"\\\n\s*", " ", block) for block in FENCE.findall(text)]
    prose = FENCE.sub("", text)
    return [line for block in blocks for line in block.splitlines()] + \
        [" ".join(span.split()) for span in INLINE.findall(prose)]


def commands(text):
    """(script, the flags given to it on the same command line) for every python command of a page."""
    found = []
    for line in code_of(text):
        for match in COMMAND.finditer(line):
            module, script, rest = match.groups()
            rest = re.split(r"&&|\|\||;|\||\)|\$\(|, ", rest)[0]  # where a command line ends
            if module and module.split(".")[1].isupper():  # python -m bench.NAME: a placeholder
                continue
            found.append((module or script, sorted(set(FLAG.findall(rest)))))
    return found


@functools.cache
def flags_of(script):
    """The option strings of a script's parser: its build_parser() where it has one, else its --help."""
    name = script if script.startswith("bench.") else script.removesuffix(".py").replace("/", ".")
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    if module is not None and hasattr(module, "build_parser"):
        return {s for action in module.build_parser()._actions for s in action.option_strings}
    argv = ["-m", script] if script.startswith("bench.") else [str(ROOT / script)]
    out = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-500:]}"
    return set(FLAG.findall(out.stdout))


def script_exists(script):
    if script.startswith("bench."):
        return (ROOT / "bench" / f"{script.removeprefix('bench.')}.py").is_file()
    return (ROOT / script).is_file()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_names_a_real_script_and_its_real_flags(page):
    text = page.read_text()
    problems = []
    for script, flags in commands(text):
        if script.startswith("bench/"):
            problems.append(f"{script}: bench tools run as python -m bench.NAME (they import bench.common)")
            continue
        if not script_exists(script):
            problems.append(f"no such script: {script}")
            continue
        unknown = [f for f in flags if f not in flags_of(script)]
        if unknown:
            problems.append(f"{script}: no such flag {', '.join(unknown)}")
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_named_exists(page):
    text = page.read_text()
    missing = []
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and not re.match(r"^[a-z]+:", target) and not (page.parent / target).exists():
            missing.append(f"link {target}")
    for code in code_of(text):
        for token in code.split():
            token = token.split("::")[0].strip("\"',;:()[]")
            in_repo = token.split("/")[0] in REPO_DIRS and PATH.match(token) and not any(c in token for c in "*<>")
            bare = re.fullmatch(r"[\w-][\w.-]*\.(py|md)", token)  # a file named alone: at the root or beside the page
            if (in_repo and not (ROOT / token).exists()) or \
                    (bare and not (ROOT / token).exists() and not (page.parent / token).exists()):
                missing.append(token)
    assert not missing, f"{page_id(page)} names what the repository does not hold: {sorted(set(missing))}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_reference_pages_carry_no_dates_or_session_wording(page):
    bad = [f"{page_id(page)}:{n}: {line.strip()[:100]}" for n, line in enumerate(page.read_text().splitlines(), 1)
           if DATE.search(line) or SESSION.search(line)]
    assert not bad, "dated or session wording belongs in docs/notes/:\n" + "\n".join(bad)


def test_the_command_parser_reads_what_the_pages_write():
    text = "```bash\npython train.py --epochs 5 \\\n    --resume  # --not-a-flag\n```\n" \
           "and `python -m bench.five_seeds --ckpt FILE` then `python\ngenerate.py --split test`; `python -c 'x'`, " \
           "`python -m bench.NAME --x` and `python train.py --epochs 5, or pass --ckpt FILE`"
    assert commands(text) == [("train.py", ["--epochs", "--resume"]), ("bench.five_seeds", ["--ckpt"]),
                              ("generate.py", ["--split"]), ("train.py", ["--epochs"])]
