"""Mutation testing of medistill's wiring (issue 12): do the tests catch one-line bugs?

A small mutation tester of our own (``mutmut`` would rerun the whole ~20 CPU-minute suite
per mutant). :data:`MUTANTS` is an explicit list; each mutant is one file, an exact
source snippet that must occur there exactly once, its replacement, a one-line
description and the tests that should kill it (test files, optionally with a ``-k``
expression). For each mutant the script

1. copies the working tree (``git ls-files --cached --others --exclude-standard``: the
   tracked files and new files git does not ignore) into ``WORK/tree`` once per run;
2. applies the mutant there (the file is restored afterwards);
3. runs ``python -m pytest -x -q -p no:cacheprovider <tests> [-k EXPR]`` with the
   repository's interpreter from the copy, ``PYTHONPATH`` set to the copy, so the
   copy's ``medistill`` is imported and not the editable install (checked before any
   mutant: ``medistill.__file__`` must lie in the copy);
4. records ``killed`` (the tests fail), ``survived`` (they pass), ``timeout`` or
   ``not found`` (the snippet does not occur exactly once: an error in the list, not a
   survivor) in ``WORK/results.json``.

The list of mutants and the notes on survivors are in ``mutant_catalogue.py`` beside this
script.

Resumable: a mutant already recorded for the same source hash (the original file, the
mutant's definition and the text of its targeted test files) is skipped; ``--rerun ID``
forces one. ``--probe`` first runs a probe mutant whose effect is certain (it makes the
copy's ``medistill/losses/label_free.py`` fail at import), to prove the tests import
the copy. The section of ``benchmarks/RESULTS.md`` lists every mutant, the score
(killed / (killed + survived)) and each survivor with the reason it is harmless or the
test that now kills it (:data:`SURVIVOR_NOTES`).

Usage (from the repository root; CPU is scarce, so nice it)::

    nice -n 10 .venv/bin/python benchmarks/bench_mutants.py --work /tmp/medistill-mutants
    .venv/bin/python benchmarks/bench_mutants.py --list                # the mutants, nothing run
    .venv/bin/python benchmarks/bench_mutants.py --only loss-dice-empty weight-ulwr-zero
    .venv/bin/python benchmarks/bench_mutants.py --report-only         # rewrite the section from results.json
"""

from __future__ import annotations

import common  # noqa: F401  (environment defaults before anything imports TensorFlow)

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import REPO_ROOT, markdown_table, publish
from mutant_catalogue import MUTANTS, NEWLY_KILLED, PROBE, SURVIVOR_NOTES, Mutant

DEFAULT_WORK = Path("/tmp/medistill-mutants")
DEFAULT_TIMEOUT = 900
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


@dataclass
class Result:
    id: str
    status: str  # killed / survived / timeout / not found / error
    seconds: float
    killed_by: str = ""
    source_hash: str = ""
    finished: str = ""
    tail: str = ""
    extra: dict = field(default_factory=dict)


def source_hash(mutant: Mutant, root: Path = REPO_ROOT) -> str:
    """Hash of the mutant's definition, the original file and its targeted test files."""
    digest = hashlib.sha256(json.dumps(asdict(mutant), sort_keys=True).encode())
    for rel in (mutant.file, *mutant.tests):
        path = root / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO_ROOT, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO_ROOT / f).is_file()]


def copy_tree(target: Path) -> int:
    """A fresh copy of the working tree's tracked (and new, unignored) files in ``target``."""
    if target.exists():
        shutil.rmtree(target)
    files = tree_files()
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest)
    return len(files)


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def check_import(tree: Path) -> str:
    """``medistill.__file__`` as the tests see it; raise unless it lies in the copy."""
    done = subprocess.run([str(PYTHON), "-c", "import medistill; print(medistill.__file__)"], cwd=tree,
                          env=environment(tree), capture_output=True, text=True, check=True)
    where = done.stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the copy's tests would import medistill from {where}, not from {tree}")
    return where


def failed_tests(output: str) -> str:
    """The first failing test named in pytest's output (``FAILED path::name`` / ``ERROR``)."""
    for line in output.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+)", line.strip())
        if match:
            return match.group(2).split(" - ")[0]
    if "ImportError" in output or "error" in output.lower():
        return "collection error"
    return "?"


def run_mutant(mutant: Mutant, tree: Path, timeout: float) -> Result:
    path = tree / mutant.file
    original = path.read_text(encoding="utf-8")
    count = original.count(mutant.old)
    if count != 1:
        return Result(mutant.id, "not found", 0.0, tail=f"snippet occurs {count} times in {mutant.file}")
    for rel in mutant.tests:
        if not (tree / rel).is_file():
            return Result(mutant.id, "error", 0.0, tail=f"test file {rel} missing")
    path.write_text(original.replace(mutant.old, mutant.new, 1), encoding="utf-8")
    command = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", 
               *mutant.pytest_args()]
    start = time.perf_counter()
    try:
        process = subprocess.Popen(command, cwd=tree, env=environment(tree), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return Result(mutant.id, "timeout", time.perf_counter() - start, tail=output[-2000:])
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - start
    code = process.returncode
    if code == 0:
        return Result(mutant.id, "survived", seconds, tail=output[-1500:])
    if code == 5:  # no test collected: the -k expression matches nothing
        return Result(mutant.id, "error", seconds, tail="no test selected\n" + output[-1500:])
    if code in (1, 2):
        return Result(mutant.id, "killed", seconds, killed_by=failed_tests(output), tail=output[-1500:])
    return Result(mutant.id, "error", seconds, tail=f"pytest exit {code}\n" + output[-1500:])


def load_results(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_results(path: Path, results: dict[str, dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    rows, survivors = [], []
    counts = {"killed": 0, "survived": 0, "timeout": 0, "not found": 0, "error": 0, "not run": 0}
    for mutant in MUTANTS:
        found = results.get(mutant.id)
        stale = found is not None and found.get("source_hash") != source_hash(mutant)
        status = found["status"] if found else "not run"
        counts[status] = counts.get(status, 0) + 1
        if status == "survived":
            survivors.append(mutant)
        tests = " ".join(mutant.tests) + (f" -k '{mutant.k}'" if mutant.k else "")
        rows.append([f"`{mutant.id}`", f"`{mutant.file.removeprefix('medistill/')}`", mutant.description,
                     status + (" (stale)" if stale else ""),
                     f"`{found['killed_by']}`" if found and found.get("killed_by") else "–",
                     f"{found['seconds']:.0f}" if found else "–", f"`{tests}`"])
    valid = counts["killed"] + counts["survived"]
    score = f"{counts['killed']}/{valid} = {100 * counts['killed'] / valid:.0f} %" if valid else "–"
    body = [f"**Score: {score}** killed of the valid mutants run (killed + survived). "
            f"{len(MUTANTS)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
            f"{counts['timeout']} timed out, {counts['not found']} stale (snippet not found), "
            f"{counts['error']} errors, {counts['not run']} not run yet.", "",
            markdown_table(["mutant", "file", "bug", "result", "killed by", "s", "targeted tests"], rows)]
    if survivors:
        body += ["", "Survivors:", ""]
        for mutant in survivors:
            body.append(f"- `{mutant.id}` ({mutant.description}): "
                        f"{SURVIVOR_NOTES.get(mutant.id, 'no test kills it yet: a gap in the suite')}")
    fixed = [m for m in NEWLY_KILLED if results.get(m, {}).get("status") == "killed"]
    if fixed:
        body += ["", "Survivors of the existing suite, now killed by a test of `tests/test_wiring_mutants.py` "
                     "(the test is in the table): " + ", ".join(f"`{m}`" for m in fixed) + "."]
    probe = results.get(PROBE.id)
    if probe:
        body += ["", f"Probe (`{PROBE.id}`, {PROBE.description}): {probe['status']} by "
                     f"`{probe['killed_by']}` on {probe['finished']}."]
    notes = ("Each mutant is one deliberate bug in a copy of the working tree; only its targeted tests run "
             "(`pytest -x`), with the copy's `medistill` on `PYTHONPATH`, so a mutant killed here is killed "
             "by the named test. Timeouts and stale snippets are not counted in the score. "
             f"Per-mutant timeout {args.timeout:.0f} s; run under `nice -n 10` beside other jobs, so the "
             "seconds are wall-clock on a busy 2-core machine.")
    publish(args, "mutants", "Mutation testing of the wiring (bench_mutants.py)", "\n".join(body), notes)


def main() -> None:
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant")
    parser.add_argument("--only", nargs="+", default=None, help="mutant ids to run (default all)")
    parser.add_argument("--rerun", nargs="+", default=[], help="mutant ids to run again even if recorded")
    parser.add_argument("--probe", action="store_true", help="run the probe mutant first")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--report-only", action="store_true", help="write the section from results.json")
    parser.add_argument("--deadline", default=None,
                        help="HH:MM (UTC): start no mutant after this time")
    args = parser.parse_args()

    ids = [m.id for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate mutant ids")
    unknown = sorted((set(args.only or []) | set(args.rerun)) - set(ids))
    if unknown:
        raise SystemExit(f"unknown mutant id(s): {unknown}")
    if args.list:
        for m in MUTANTS:
            ok = (REPO_ROOT / m.file).read_text(encoding="utf-8").count(m.old)
            print(f"{m.id:34s} {m.file:45s} {'ok' if ok == 1 else f'SNIPPET x{ok}'}  {m.description}")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.work / "results.json"
    results = load_results(results_file)
    if not args.report_only:
        tree = args.work / "tree"
        print(f"copied {copy_tree(tree)} files to {tree}", flush=True)
        print(f"medistill imported from {check_import(tree)}", flush=True)
        chosen = [m for m in MUTANTS if args.only is None or m.id in args.only]
        if args.probe:
            probe = run_mutant(PROBE, tree, args.timeout)
            print(f"probe: {probe.status} by {probe.killed_by} ({probe.seconds:.0f} s)", flush=True)
            probe.finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            results[PROBE.id] = asdict(probe)
            save_results(results_file, results)
            if probe.status != "killed":
                raise SystemExit(f"the probe mutant was not killed: the tests do not import the copy\n{probe.tail}")
        for mutant in chosen:
            if args.deadline:
                now = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M")
                if now >= args.deadline:
                    print(f"deadline {args.deadline} UTC reached: stopping", flush=True)
                    break
            digest = source_hash(mutant)
            done = results.get(mutant.id)
            if done and done.get("source_hash") == digest and mutant.id not in args.rerun \
                    and done["status"] in ("killed", "survived", "not found"):
                continue
            print(f"[{mutant.id}] {mutant.description} ...", flush=True)
            result = run_mutant(mutant, tree, args.timeout)
            result.source_hash = digest
            result.finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            results[mutant.id] = asdict(result)
            save_results(results_file, results)
            print(f"[{mutant.id}] {result.status} {result.killed_by} ({result.seconds:.0f} s)", flush=True)
            if result.status in ("error", "survived"):
                print(result.tail[-800:], flush=True)
    report(args, results)


if __name__ == "__main__":
    main()
