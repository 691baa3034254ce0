"""Supervised Dice of the students through the real command line.

For each data set and student: ``python -m medistill train ...`` then
``predict_eval.py ...`` on held-out images (both as subprocesses), and the figures read
from the files they write (``summary.json`` of the run, ``metrics.json`` of the
evaluation). Data sets: synthetic phantoms (train seed 0, test seed 1), the ``nuclei``
tiles (fixed split by stem) and the ``mni152`` brain mask (a contiguous
block of axial slices held out, with a gap to the training slices).

    .venv/bin/python benchmarks/bench_supervised.py [--quick] [--datasets phantoms nuclei mni152]
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (CommandLog, argument_parser, copy_pairs, exported_stems, load_average, markdown_table,
                    middle_block, publish, slice_index)
from student_spec import Student

SECTION_KEY = "supervised"
SECTION_TITLE = "Supervised students through the CLI (`medistill train` + `predict_eval.py`)"


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """The ``medistill train`` options that differ between data sets."""

    img_size: int
    epochs: int
    batch: int
    val_fraction: float

    def arguments(self) -> list[str]:
        """As command-line arguments."""
        return ["--img-size", str(self.img_size), "--epochs", str(self.epochs), "--batch", str(self.batch),
                "--val-fraction", str(self.val_fraction)]


@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    train: dict[str, TrainSettings]
    students: tuple[Student, ...]
    phantom_counts: tuple[int, int, int]  # train, test, size in px
    mni152_test_slices: int
    mni152_gap: int
    mni152_train_step: int


FULL = Plan(
    train={"phantoms": TrainSettings(img_size=128, epochs=8, batch=8, val_fraction=0.2),
           "nuclei": TrainSettings(img_size=128, epochs=30, batch=4, val_fraction=0.0),
           "mni152": TrainSettings(img_size=128, epochs=8, batch=8, val_fraction=0.2)},
    students=(Student("unet", {"base_filters": 16}), Student("lcovnet")),
    phantom_counts=(200, 50, 128),
    mni152_test_slices=20, mni152_gap=10, mni152_train_step=3,
)
QUICK = Plan(
    train={"phantoms": TrainSettings(img_size=64, epochs=1, batch=4, val_fraction=0.2),
           "nuclei": TrainSettings(img_size=64, epochs=1, batch=4, val_fraction=0.0),
           "mni152": TrainSettings(img_size=64, epochs=1, batch=4, val_fraction=0.2)},
    students=(Student("unet", {"base_filters": 4, "depth": 2}),),
    phantom_counts=(16, 8, 64),
    mni152_test_slices=8, mni152_gap=4, mni152_train_step=8,
)
DEFAULT_DATASETS = ("phantoms", "nuclei", "mni152")


# ---------------------------------------------------------------------------
# Data sets: each builder writes ROOT/train/{images,masks} and ROOT/test/{images,masks}
# ---------------------------------------------------------------------------


def prepare_phantoms(root: Path, plan: Plan, commands: CommandLog) -> str:
    """Phantoms: train with seed 0, test with seed 1 (different phantoms)."""
    n_train, n_test, size = plan.phantom_counts
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        commands.run(["-m", "medistill", "phantoms", "--out", str(root / split), "--n", str(n),
                      "--size", str(size), "--seed", str(seed)], root / f"phantoms_{split}.log")
    return (f"{n_train} train phantoms (seed 0) / {n_test} test phantoms (seed 1), {size} px, "
            "binary lesion masks (some phantoms have no lesion)")


def prepare_nuclei(root: Path, plan: Plan, commands: CommandLog) -> str:
    """Nuclei: 16 tiles of 128 px; the bottom row of tiles (y = 384) is the test set."""
    export = root.parent / "nuclei_export"
    commands.run(["-m", "medistill", "sources", "--name", "nuclei", "--out", str(export)],
                 root.parent / "nuclei_export.log")
    stems = exported_stems(export)
    test = [s for s in stems if s.startswith("nuclei_y0384_")]
    train = [s for s in stems if s not in test]
    copy_pairs(export, train, root / "train")
    copy_pairs(export, test, root / "test")
    return (f"stardist DSB-2018 nuclei image cut into {len(stems)} tiles of 128 px; "
            f"train = {len(train)} tiles (rows y = 0–383), test = the {len(test)} tiles of the "
            "bottom row (y = 384–511); no validation split (too few tiles), so the run keeps the "
            "epoch with the lowest training loss")


def prepare_mni152(root: Path, plan: Plan, commands: CommandLog) -> str:
    """MNI152 brain mask: a contiguous block of axial slices is the test set."""
    export = root.parent / "mni152_export"
    commands.run(["-m", "medistill", "sources", "--name", "mni152", "--binary", "--out", str(export)],
                 root.parent / "mni152_export.log")
    test, outside = middle_block(exported_stems(export), plan.mni152_test_slices, plan.mni152_gap)
    train = outside[::plan.mni152_train_step]
    copy_pairs(export, train, root / "train")
    copy_pairs(export, test, root / "test")
    return (f"ICBM152 2009 T1 axial slices, binary brain mask; test = {len(test)} contiguous slices "
            f"z{slice_index(test[0])}–z{slice_index(test[-1])}; the slices within {plan.mni152_gap} "
            f"of that block are unused; train = one in {plan.mni152_train_step} of the remaining slices "
            f"({len(train)} slices). The mask is grey + white matter, so the ventricles and the thin "
            "sulcal CSF are holes in it that the student fills in: they, not the outline, make "
            "HD95 large while Dice is high")


DATASET_BUILDERS: dict[str, Callable[[Path, Plan, CommandLog], str]] = {
    "phantoms": prepare_phantoms,
    "nuclei": prepare_nuclei,
    "mni152": prepare_mni152,
}


# ---------------------------------------------------------------------------
# Train, evaluate, read the figures
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """The figures of one (data set, student) run."""

    dataset: str
    student: Student
    settings: TrainSettings
    train_seconds: float
    eval_seconds: float
    run_summary: dict
    eval_summary: dict
    load: str


def train_and_evaluate(dataset: str, data_root: Path, student: Student, settings: TrainSettings,
                       runs: Path, commands: CommandLog) -> RunResult:
    """Train ``student`` on ``data_root/train`` and evaluate it on ``data_root/test``."""
    run_dir = runs / f"{dataset}_{student.name}"
    load_before = load_average()
    train_seconds = commands.run(
        ["-m", "medistill", "train", "--data", str(data_root), *student.arguments(), *settings.arguments(), "--seed", "0",
         "--out", str(run_dir), "--overwrite"], runs / f"{run_dir.name}_train.log")
    vis_dir = run_dir / "eval"
    eval_seconds = commands.run(
        ["predict_eval.py", "--image_dir", str(data_root / "test" / "images"),
         "--mask_dir", str(data_root / "test" / "masks"), "--model_path", str(run_dir),
         "--vis_dir", str(vis_dir), "--num_vis", "4"], runs / f"{run_dir.name}_eval.log")
    run_summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    eval_summary = json.loads((vis_dir / "metrics.json").read_text(encoding="utf-8"))["summary"]
    load = f"{load_before:.2f} → {load_average():.2f}"
    return RunResult(dataset, student, settings, train_seconds, eval_seconds, run_summary, eval_summary, load)


def _mean_std(statistics: dict, digits: int) -> str:
    mean, std, n = statistics.get("mean"), statistics.get("std"), statistics.get("n", 0)
    if mean is None:
        return f"– (n = {n})"
    spread = f" ± {std:.{digits}f}" if std is not None else ""
    return f"{mean:.{digits}f}{spread} (n = {n})"


def _cases(summary: dict) -> str:
    cases = summary.get("cases", {})
    return "/".join(str(cases.get(k, 0)) for k in ("normal", "both_empty", "missed", "false_positive"))


def _best_val(value: object) -> str:
    # Without a validation split the trainer writes best_val_dice = -Infinity.
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.3f}"
    return "– (no val split)"


def results_table(results: Sequence[RunResult]) -> str:
    """One row per (data set, student)."""
    headers = ["data set", "student", "params", "train / val / test images", "epochs run",
               "train time (s)", "Dice mean ± std", "HD95 (px) mean ± std", "best val Dice",
               "cases normal/both empty/missed/false pos.", "eval time (s)", "load (1 min) before → after"]
    rows = []
    for r in results:
        metrics, run = r.eval_summary["metrics"], r.run_summary
        best_val = run.get("best_val_dice")
        rows.append([
            r.dataset, r.student.label, f"{run.get('params', 0):,}",
            f"{run.get('train_images')} / {run.get('val_images')} / {r.eval_summary.get('n_images')}",
            f"{run.get('epochs_run')} of {r.settings.epochs}", f"{r.train_seconds:.0f}",
            _mean_std(metrics.get("dice", {}), 3), _mean_std(metrics.get("hd95", {}), 1),
            _best_val(best_val),
            _cases(r.eval_summary), f"{r.eval_seconds:.0f}", r.load,
        ])
    return markdown_table(headers, rows)


def method_notes(descriptions: dict[str, str], plan: Plan, commands: CommandLog, total_seconds: float) -> str:
    """Data sets, settings and every command, for the RESULTS.md section."""
    lines = ["Data sets:"]
    for name, text in descriptions.items():
        settings = plan.train[name]
        lines.append(f"- **{name}**: {text}. Training: `{' '.join(settings.arguments())}`, seed 0, "
                     "the trainer's defaults otherwise (AdamW, cosine schedule, augmentation on).")
    lines += [
        "",
        "Train time is the wall time of the whole `medistill train` command (start-up, data "
        "checks, tracing, every epoch with its validation, export of `model.keras` and "
        "`saved_model/`); eval time that of `predict_eval.py` (model loading, prediction, "
        "metrics at the original resolution, 4 overlays). Dice and HD95 are the "
        "`summary.metrics.dice` / `summary.metrics.hd95` entries of the `metrics.json` that "
        "`predict_eval.py --vis_dir` writes (mean ± sample std over the test images; HD95 in "
        "pixels, only defined when both masks are non-empty, hence its smaller n; an image "
        "where both masks are empty counts as Dice 1). \"best val Dice\" comes from the run's "
        "`summary.json`. The epochs are few so that the script stays around 15 minutes on a "
        "2-core CPU: the figures show that the students learn, not their ceiling.",
        "",
        f"Whole script: {total_seconds / 60:.1f} min. Commands, in order (`$WORK` is the `--work` folder, by default a temporary one):",
        "",
        "```bash",
        *commands.lines,
        "```",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def run_benchmark(work: Path, plan: Plan, datasets: Sequence[str]) -> tuple[list[RunResult], dict[str, str], CommandLog]:
    """Prepare every data set, then train and evaluate every student on it."""
    commands = CommandLog(work)
    results, descriptions = [], {}
    for dataset in datasets:
        data_root = work / dataset
        descriptions[dataset] = DATASET_BUILDERS[dataset](data_root, plan, commands)
        for student in plan.students:
            result = train_and_evaluate(dataset, data_root, student, plan.train[dataset], work / "runs", commands)
            dice = result.eval_summary["metrics"]["dice"]
            print(f"{dataset} {student.name}: Dice {dice['mean']:.3f}, train {result.train_seconds:.0f} s",
                  flush=True)
            results.append(result)
    return results, descriptions, commands


def main() -> None:
    """Run the benchmark and publish its section."""
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASET_BUILDERS), default=list(DEFAULT_DATASETS),
                        help=f"data sets to run (default: {' '.join(DEFAULT_DATASETS)})")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medistill-bench-supervised-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results, descriptions, commands = run_benchmark(work, plan, args.datasets)
    notes = method_notes(descriptions, plan, commands, time.perf_counter() - start)
    publish(args, SECTION_KEY, SECTION_TITLE, results_table(results), notes)


if __name__ == "__main__":
    main()
