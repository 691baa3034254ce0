"""MedDistill end to end: the label-free student against its teacher, baselines and bounds.

For each data set (synthetic phantoms, stardist ``nuclei`` tiles, ``colin27`` brain
slices), through the real commands a user types, each in its own process:

1. a YOLO detector is trained on a labelled detector split (``Creat_yolodata.py``,
   ``detection.py train``) and predicts the boxes of the distillation images and of the
   test images (``detection.py predict``); oracle boxes come from the ground-truth
   masks (``detection.py boxes-from-masks``);
2. LiteMedSAM runs once per image and boxes file into a teacher cache
   (``python -m medistill teach``), reused by every MedDistill variant (``--cache``);
3. ``meddistill.py`` trains the student without masks (each weighting rule, co-learning
   on and off, detector or oracle boxes), ``python -m medistill train`` trains the same
   student on the same images with their masks (the supervised upper bound), and
   ``predict_eval.py`` measures both on the test images.

In this process: detector box recall, the teacher's Dice (cached fused soft masks > 0.5
on the test images), the box-as-mask baseline (boxes filled as masks), and CPU latency
per image of the student, the detector (in a separate process: torch) and the teacher.
Last, on a small subset of phantoms, the wall time of ``meddistill.py`` building its
teacher cache against ``--live-teacher`` (the teacher called at every step), same
epochs and data.

Two passes, so that a run cut short still covers every data set: first the core of each
data set (the first MedDistill variant), then the other variants; the section is
rewritten after each data set of either pass. Every finished command is recorded in
``WORK/steps.json``; ``--work DIR --resume`` continues an interrupted run, reusing them
(a command whose inputs were remade, or whose outputs are gone, runs again).

    .venv/bin/python benchmarks/bench_meddistill.py [--quick] [--datasets phantoms nuclei colin27] [--work DIR [--resume]]

The pieces live beside this script: ``meddistill_plan.py`` (what runs),
``meddistill_steps.py`` (the commands), ``meddistill_figures.py`` (figures computed here),
``meddistill_dataset.py`` (one data set; cache against live teacher) and
``meddistill_tables.py`` (the section's tables and notes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import common  # noqa: F401  (sets the environment before TensorFlow is imported)
from common import argument_parser, publish
from meddistill_dataset import DatasetResult, cache_against_live, run_dataset
from meddistill_figures import time_detector
from meddistill_plan import DEFAULT_DATASETS, FULL, QUICK, Plan
from meddistill_steps import DATASET_BUILDERS, ResumableLog
from meddistill_tables import method_notes, section_body

SECTION_KEY = "meddistill"
SECTION_TITLE = "MedDistill (LiteMedSAM → student, no labels): Dice, HD95, speed, teacher cache"


def run_benchmark(args: argparse.Namespace, work: Path, plan: Plan, datasets: Sequence[str]) -> None:
    """Two passes, so that a run cut short still covers every data set: first the core of each data
    set (detector boxes, the first MedDistill variant, the supervised bound, baselines, latency), then
    the other variants, the oracle-box teacher and the cache-vs-live comparison, reusing the first pass."""
    commands = ResumableLog(work, resume=args.resume)
    start = time.perf_counter()
    results: dict[str, DatasetResult] = {}
    live = None

    def write(pending: Sequence[str]) -> None:
        notes = method_notes(list(results.values()), plan, commands, time.perf_counter() - start, live, pending)
        publish(args, SECTION_KEY, SECTION_TITLE, section_body(list(results.values()), plan, live), notes)

    def second_pass(name: str) -> str:
        return f"{name} (other variants{' and the cache-vs-live comparison' if name == 'phantoms' else ''})"

    extras = [name for name in datasets
              if len(plan.data[name].variants) > 1 or plan.data[name].oracle_test_teacher]
    for index, name in enumerate(datasets):
        results[name] = run_dataset(name, work, plan, commands, plan.data[name].variants[:1], False)
        write([*datasets[index + 1:], *map(second_pass, extras)])
    commands.resume = True  # the second pass reuses the first
    for index, name in enumerate(extras):
        settings = plan.data[name]
        results[name] = run_dataset(name, work, plan, commands, settings.variants, settings.oracle_test_teacher,
                                    previous=results[name])
        if name == "phantoms":
            try:
                live = cache_against_live(work, plan, commands)
                print(f"cache vs live: {live.ratio:.2f}×", flush=True)
            except RuntimeError as error:
                print(f"cache vs live FAILED: {error}", flush=True)
        write([second_pass(n) for n in extras[index + 1:]])


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASET_BUILDERS), default=list(DEFAULT_DATASETS),
                        help=f"data sets to run (default: {' '.join(DEFAULT_DATASETS)}); the cache-vs-live "
                        "comparison runs with the phantoms")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    parser.add_argument("--resume", action="store_true",
                        help="with the --work folder of an earlier run: reuse its finished commands (steps.json)")
    parser.add_argument("--time-detector", nargs=3, metavar=("WEIGHTS", "IMAGE_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resume and args.work is None:
        parser.error("--resume needs the --work folder of the earlier run")
    if args.time_detector:
        time_detector(*args.time_detector)
        return
    plan = QUICK if args.quick else FULL
    datasets = [name for name in DEFAULT_DATASETS if name in args.datasets]
    with tempfile.TemporaryDirectory(prefix="medistill-bench-meddistill-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        run_benchmark(args, work, plan, datasets)


if __name__ == "__main__":
    main()
