"""Run every benchmark, one after another, each in its own Python process.

    .venv/bin/python benchmarks/run_all.py [--quick]

``--quick`` (and ``--results PATH``) are passed through to each script. A separate
process per script keeps one benchmark's TensorFlow state and memory out of the next.
"""

from __future__ import annotations

import subprocess
import sys
import time

import common
from common import argument_parser, load_average, markdown_table, publish

SCRIPTS = (
    "bench_pipeline.py", "bench_students.py", "bench_supervised.py", "bench_detector.py", "bench_teachers.py",
    "bench_meddistill.py", "bench_recipes.py",
)
SECTION_KEY = "run_all"
SECTION_TITLE = "Whole run (`make bench`)"
TARGET_MINUTES = 150


def passed_through(quick: bool, results: object) -> list[str]:
    """The options every script receives."""
    options = ["--quick"] if quick else []
    return options + (["--results", str(results)] if results is not None else [])


def run_script(script: str, options: list[str]) -> list[str]:
    """Run one benchmark script from the repository root; return its row of the totals table."""
    path = common.BENCH_DIR / script
    print(f"\n==> {script} {' '.join(options)}".rstrip(), flush=True)
    load_before = load_average()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(path), *options], cwd=common.REPO_ROOT, check=False)
    if done.returncode != 0:
        sys.exit(f"{script} failed (exit {done.returncode}); the later benchmarks were not run")
    minutes = (time.perf_counter() - start) / 60
    return [f"`{script}`", f"{minutes:.1f}", f"{load_before:.2f} → {load_average():.2f}"]


def totals_note(total_minutes: float) -> str:
    """What the totals table means, and whether the run kept to its time target."""
    note = ("Wall time of each script when `run_all.py` runs them one after another; a 1-minute "
            "load above the core count means other processes shared the CPU and slowed every "
            "figure of that script.")
    if total_minutes > TARGET_MINUTES:
        note += (f" This run took longer than the {TARGET_MINUTES}-minute target; the sizes are "
                 "already reduced (few epochs in `bench_supervised.py`, time-capped step counts in "
                 "`bench_students.py`), so compare the load column before reducing them further.")
    return note


def main() -> None:
    """Run all scripts in order, then write how long each took."""
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    options = passed_through(args.quick, args.results)
    rows = [run_script(script, options) for script in SCRIPTS]
    total = sum(float(row[1]) for row in rows)
    rows.append(["total", f"{total:.1f}", ""])
    notes = totals_note(total)
    publish(args, SECTION_KEY, SECTION_TITLE,
            markdown_table(["script", "minutes", "load (1 min) before → after"], rows), notes)


if __name__ == "__main__":
    main()
