"""Run the bad-input catalogue (tests/bad_inputs.py) through the real CLIs and print a markdown table.

Usage:
    python -m bench.bad_input_sweep                          # every case, table on stdout
    python -m bench.bad_input_sweep --markdown docs/bad_inputs.md
    python -m bench.bad_input_sweep --only generate.py --only eval-gap --keep

Each case runs as its own `python <script> <args>` subprocess (a fresh Python that imports torch
and diffusers, as a user's command does) in a fresh case folder under a temporary directory;
the shared inputs (a tiny rendered i-CLEVR folder, a `tiny` train.py checkpoint and a
course-format judge) are built once first, in-process. One row per case: the exit code, the
last stderr line (stdout for a case the script accepts by design), and whether the case folder
was left exactly as it was (every file's sha256 and mtime, no new file, no temporary file).
The last line counts the cases, those refused with exit code 2 and one line, and those that
printed a traceback. About 8 s per case on 2 CPU cores. Exit code 1 when any case fails its
contract (see tests/bad_inputs.py), else 0.
"""
import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import tests_module

bad_inputs = tests_module("bad_inputs")  # the catalogue the tests run in-process
(CASES, ROOT, build_assets, check, disk_problems, last_line, run_subprocess, setup_case,
 snapshot) = (getattr(bad_inputs, name) for name in ("CASES", "ROOT", "build_assets", "check", "disk_problems",
                                                     "last_line", "run_subprocess", "setup_case", "snapshot"))


def cell(text, width=160):
    """Text for one markdown table cell: one line, pipes escaped, cut to `width` characters."""
    text = " ".join(str(text).replace(f"{ROOT}/", "").split()).replace("|", "\\|")  # paths as in the repository
    return text if len(text) <= width else text[:width - 3] + "..."


def run_case(case, folder, assets, timeout):
    folder = setup_case(case, folder, assets)
    before = snapshot(folder)
    start = time.perf_counter()
    try:
        code, out, err = run_subprocess(case, folder, timeout=timeout)
    except Exception as e:  # a hung script (TimeoutExpired) is a row too, not the end of the sweep
        code, out, err = None, "", f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    after = snapshot(folder)
    return dict(case=case, code=code, out=out, err=err, seconds=seconds,
                problems=check(case, code, out, err, before, after), disk=disk_problems(case, before, after))


def table(rows):
    lines = ["| case | script | bad input | expected | exit code | stderr line | nothing overwritten | passes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        case = r["case"]
        line = last_line(r["err"]) if case.outcome == "refused" else "(stdout) " + last_line(r["out"])
        expected = "refused" if case.outcome == "refused" else f"accepted: {case.note}"
        overwritten = "yes" if not r["disk"] else "no: " + "; ".join(r["disk"][:3])
        passes = "yes" if not r["problems"] else "no: " + "; ".join(r["problems"][:3])
        lines.append(f"| {case.id} | {case.script} | {cell(case.kind)} | {cell(expected)} | {r['code']} | "
                     f"`{cell(line)}` | {cell(overwritten)} | {cell(passes)} |")
    refused_ok = sum(r["code"] == 2 and len(r["err"].strip().splitlines()) == 1
                     and r["err"].startswith("error: ") for r in rows)
    tracebacks = sum("Traceback" in r["out"] + r["err"] for r in rows)
    accepted = sum(r["case"].outcome == "accepted" and not r["problems"] for r in rows)
    failing = sum(bool(r["problems"]) for r in rows)
    untouched = sum(not r["disk"] for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} cases, {refused_ok} exit 2 with one line, {tracebacks} with traceback; "
                 f"{accepted} accepted by design, {untouched} left their folder untouched "
                 f"(new output allowed for accepted ones), {failing} failing the contract")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--markdown", metavar="FILE",
                   help="Also write the table to this file (it is printed on stdout either way).")
    p.add_argument("--only", action="append", metavar="TEXT",
                   help="Run only the cases whose id or script contains TEXT; repeat to pick several.")
    p.add_argument("--keep", action="store_true",
                   help="Keep the temporary folder of assets and case folders, and print its path.")
    p.add_argument("--timeout", type=int, default=600, help="Seconds one case may run before it counts as hung.")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    cases = [c for c in CASES if not args.only or any(t in c.id or t in c.script for t in args.only)]
    if not cases:
        p.error(f"no case matches {args.only}")
    tmp = Path(tempfile.mkdtemp(prefix="bad_input_sweep_"))
    try:
        print(f"building the shared inputs in {tmp} ...", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the table alone
            assets = build_assets(tmp / "assets")
        rows, start = [], time.perf_counter()
        for i, case in enumerate(cases, 1):
            rows.append(run_case(case, tmp / "cases" / case.id, assets, args.timeout))
            r = rows[-1]
            print(f"[{i}/{len(cases)}] {case.id}: exit {r['code']} in {r['seconds']:.1f} s"
                  f"{'' if not r['problems'] else ' FAILS: ' + '; '.join(r['problems'])}", file=sys.stderr)
        text = table(rows)
        print(text)
        print(f"swept {len(cases)} cases in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
        if args.markdown:
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(text + "\n")
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
