"""Shared helpers of the benchmarks: arguments, machine description, timing, RESULTS.md.

Import this module before TensorFlow: it sets quiet, writable defaults for the
environment variables TensorFlow, Keras and Matplotlib read at import time.

Each benchmark owns one section of ``benchmarks/RESULTS.md``, delimited by HTML comment
markers; :func:`write_section` replaces that section in place (or appends it) and leaves
the other sections alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shutil
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_SCRATCH = Path(tempfile.gettempdir())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", str(_SCRATCH / "medistill-bench-keras"))
os.environ.setdefault("MPLCONFIGDIR", str(_SCRATCH / "medistill-bench-mpl"))
os.environ.setdefault("MPLBACKEND", "Agg")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
QUICK_RESULTS_PATH = _SCRATCH / "medistill-bench-quick" / "RESULTS.md"

RESULTS_HEADER = """# Benchmark results

Written by the scripts in `benchmarks/` (`make bench` runs them all through
`benchmarks/run_all.py`); each script rewrites only its own section. Rates are
wall-clock figures on the machine named in each section; the load average (1 min,
from `uptime`) before and after each measurement says how busy the machine was, since
other processes may run at the same time.
"""


# ---------------------------------------------------------------------------
# Arguments and the command line
# ---------------------------------------------------------------------------


def argument_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has: ``--quick`` and ``--results``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, for a smoke run (figures are meaningless)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"Markdown file to update (default {RESULTS_PATH.relative_to(REPO_ROOT)}; "
                             f"with --quick {QUICK_RESULTS_PATH}, so smoke runs never replace real figures)")
    return parser


def results_path(args: argparse.Namespace) -> Path:
    """Where this run writes its section (see :func:`argument_parser`)."""
    if args.results is not None:
        return Path(args.results)
    return QUICK_RESULTS_PATH if args.quick else RESULTS_PATH


def _display_path(path: str | Path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    resolved = Path(path).resolve() if Path(path).exists() else Path(path)
    try:
        return str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def python_command() -> list[str]:
    """The interpreter as a user would type it from the repository root."""
    executable = Path(sys.executable)
    if executable.parent == REPO_ROOT / ".venv" / "bin":
        return [".venv/bin/python"]
    return [str(executable)]


def command_line() -> str:
    """The command that started this script, runnable from the repository root."""
    return shlex.join([*python_command(), _display_path(sys.argv[0]), *sys.argv[1:]])


@dataclass
class CommandLog:
    """Runs Python commands from the repository root and keeps them, shown as typed.

    Paths under ``work`` are shown as ``$WORK``, so a section lists commands a reader can
    rerun with a folder of their own.
    """

    work: Path
    lines: list[str] = field(default_factory=list)

    def shown(self, arguments: Sequence[str]) -> str:
        """``python arguments...`` as a user would type it from the repository root."""
        return shlex.join([*python_command(), *arguments]).replace(str(self.work), "$WORK")

    def run(self, arguments: Sequence[str], log_file: Path) -> float:
        """Run ``python arguments...``, output to ``log_file``; return wall seconds.

        Raises:
            RuntimeError: when the command fails, with the end of its output.
        """
        shown = self.shown(arguments)  # not self.lines[-1]: other threads may append meanwhile
        self.lines.append(shown)
        print(f"$ {shown}", flush=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log_file, "w", encoding="utf-8") as log:
            done = subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"command failed (exit {done.returncode}): {shown}\n{tail}")
        return seconds


# ---------------------------------------------------------------------------
# Machine description and load
# ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "unknown")


def cpu_features() -> str:
    """The CPU's vector and matrix instruction sets that decide low-precision speed, e.g.
    ``AVX2, AVX-512, AVX-512 BF16, AVX-512 VNNI`` (``"unknown"`` off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    match = re.search(r"^flags\s*:\s*(.+)$", text, flags=re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16",
             "avx512_vnni": "AVX-512 VNNI", "amx_bf16": "AMX BF16", "amx_int8": "AMX INT8"}
    return ", ".join(name for flag, name in names.items() if flag in flags) or "no AVX2"


def load_average() -> float:
    """The 1-minute load average (what ``uptime`` shows first)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_description() -> str:
    """One line: cores, CPU model, OS, Python, TensorFlow and Keras versions."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    accelerator = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu_model()}; {cpu_features()}), {accelerator}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Durations of repeated runs of one thing, and the load around them."""

    seconds: tuple[float, ...]
    load_before: float
    load_after: float

    @property
    def total(self) -> float:
        """Sum of all durations, in seconds."""
        return sum(self.seconds)

    @property
    def median(self) -> float:
        """Median duration, in seconds."""
        return statistics.median(self.seconds)

    def rate(self, items_per_run: float) -> float:
        """Items per second over all runs."""
        return items_per_run * len(self.seconds) / self.total if self.total > 0 else float("nan")

    @property
    def load(self) -> str:
        """``"before → after"`` 1-minute load, for a table cell."""
        return f"{self.load_before:.2f} → {self.load_after:.2f}"


def time_runs(run: Callable[[], object], repeats: int, warmup: int = 0,
              min_repeats: int | None = None, budget_seconds: float | None = None) -> Timing:
    """Call ``run`` ``warmup`` times untimed, then up to ``repeats`` times, timing each call.

    With ``budget_seconds``, timing stops early once the timed calls have taken that long
    and at least ``min_repeats`` (default: all ``repeats``) calls were made.
    """
    least = repeats if min_repeats is None else min(min_repeats, repeats)
    for _ in range(warmup):
        run()
    load_before = load_average()
    durations: list[float] = []
    while len(durations) < repeats:
        start = time.perf_counter()
        run()
        durations.append(time.perf_counter() - start)
        if budget_seconds is not None and len(durations) >= least and sum(durations) >= budget_seconds:
            break
    return Timing(tuple(durations), load_before, load_average())


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def section_text(key: str, title: str, command: str, body: str, notes: str = "") -> str:
    """A complete RESULTS.md section: title, date, machine, command, notes and body."""
    start, end = _markers(key)
    today = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        start,
        f"## {title}",
        "",
        f"- Date: {today}",
        f"- Machine: {machine_description()}",
        f"- Command (from the repository root): `{command}`",
    ]
    if notes:
        parts += ["", notes.strip()]
    parts += ["", body.strip(), end]
    return "\n".join(parts)


def write_section(path: str | Path, key: str, section: str) -> Path:
    """Replace section ``key`` of the Markdown file ``path`` (or append it); atomic."""
    path = Path(path)
    start, end = _markers(key)
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def publish(args: argparse.Namespace, key: str, title: str, body: str, notes: str = "") -> None:
    """Print the section and write it into this run's results file."""
    section = section_text(key, title, command_line(), body, notes)
    print(section)
    written = write_section(results_path(args), key, section)
    print(f"\nupdated section '{key}' of {written}")


def copy_pairs(source: Path, stems: Sequence[str], target: Path) -> None:
    """Copy the PNG image/mask pairs named ``stems`` from ``source`` into ``target``."""
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            shutil.copy2(source / sub / f"{stem}.png", target / sub / f"{stem}.png")


def exported_stems(folder: Path) -> list[str]:
    """Sorted stems of an exported source folder."""
    return sorted(path.stem for path in (folder / "images").glob("*.png"))


def tile_row(stem: str) -> str:
    """The row a tile of ``medistill sources --tile`` lies in: ``nuclei_y0384_x0128`` → ``nuclei_y0384``."""
    return stem.split("_x")[0]


def tile_rows(stems: Sequence[str]) -> list[str]:
    """The rows of tiles among ``stems``, top to bottom."""
    return sorted({tile_row(stem) for stem in stems})


def evenly(items: list[str], n: int) -> list[str]:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


def slice_index(stem: str) -> int:
    """The slice number of an exported volume slice, ``<name>_z<index>``."""
    match = re.search(r"_z(\d+)$", stem)
    if match is None:
        raise ValueError(f"{stem!r} is not a slice stem (<name>_z<index>)")
    return int(match.group(1))


def middle_block(stems: Sequence[str], n: int, gap: int) -> tuple[list[str], list[str]]:
    """A volume's held-out block and the rest: the ``n`` contiguous slices in the middle of
    ``stems`` (slice stems, any order) and, sorted by slice, the slices more than ``gap`` away from it."""
    stems = sorted(stems, key=slice_index)
    first = len(stems) // 2 - n // 2
    block = stems[first:first + n]
    low, high = slice_index(block[0]) - gap, slice_index(block[-1]) + gap
    return block, [s for s in stems if not low <= slice_index(s) <= high]


def mean_std(summary: dict, digits: int) -> str:
    """``mean ± std (n = N)`` of one metric of a ``predict_eval.py`` summary (``–`` when undefined)."""
    mean, std, n = summary.get("mean"), summary.get("std"), summary.get("n", 0)
    if mean is None or mean != mean:  # absent or NaN
        return f"– (n = {n})"
    spread = f" ± {std:.{digits}f}" if std is not None and std == std else ""
    return f"{mean:.{digits}f}{spread} (n = {n})"


# ---------------------------------------------------------------------------
# Rank correlation and progress (added for bench_label_free.py)
# ---------------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of ``values``, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float | None, int]:
    """Spearman rank correlation of paired values: ``(rho, p-value or None, n)``.

    Pairs with a NaN or None are dropped. Uses ``scipy.stats.spearmanr`` when SciPy is
    installed (then the p-value too), else the Pearson correlation of the tie-averaged
    ranks. ``rho`` is NaN with fewer than 3 pairs or when one side is constant.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])[0]
    0.8
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and a == a and b == b]
    n = len(pairs)
    if n < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return float("nan"), None, n
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    try:
        from scipy.stats import spearmanr
    except ImportError:
        rx, ry = _ranks(xs), _ranks(ys)
        mx, my = sum(rx) / n, sum(ry) / n
        cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
        var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
        return round(cov / var, 6), None, n
    result = spearmanr(xs, ys)
    return round(float(result.statistic), 6), float(result.pvalue), n


@dataclass
class Progress:
    """Progress over planned units of estimated cost, with an ETA scaled by the measured pace.

    ``done(key, seconds)`` records a finished unit (its measured seconds, or 0 when it was
    reused); :meth:`eta_seconds` scales the estimated cost of what is left by measured /
    estimated seconds of the units that ran.
    """

    estimates: dict[str, float]
    finished: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def done(self, key: str, seconds: float) -> None:
        self.finished[key] = seconds

    @property
    def pace(self) -> float:
        ran = [k for k, s in self.finished.items() if s > 0 and self.estimates.get(k, 0) > 0]
        estimated = sum(self.estimates[k] for k in ran)
        return sum(self.finished[k] for k in ran) / estimated if estimated > 0 else 1.0

    def eta_seconds(self) -> float:
        left = sum(s for k, s in self.estimates.items() if k not in self.finished)
        return left * self.pace

    def line(self) -> str:
        """``[done/total] elapsed 3.2 min, ETA 41 min (at HH:MM), load 2.10``."""
        eta = self.eta_seconds()
        at = (_dt.datetime.now() + _dt.timedelta(seconds=eta)).strftime("%H:%M")
        elapsed = (time.perf_counter() - self.started) / 60
        return (f"[{len(self.finished)}/{len(self.estimates)}] elapsed {elapsed:.1f} min, "
                f"ETA {eta / 60:.0f} min (at {at}), load {load_average():.2f}")


def fill_boxes(entry):
    """The boxes of one image filled as a mask (pixel centres inside a box): the boxes-as-masks baseline."""
    from medistill.boxes.components import boxes_to_mask

    return boxes_to_mask(entry.boxes, entry.height, entry.width)
