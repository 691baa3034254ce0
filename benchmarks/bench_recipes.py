"""Distillation recipes against the same student trained without distillation, through the CLI.

For each data set: one teacher trained with ``python -m medistill train`` (seed 0), shared
by KAMSD and CAKD+MSKD through ``--teacher-model``; then, for each seed, the student without
distillation (``medistill train``) and with each recipe (``medistill distill --recipe
...``), all evaluated by ``predict_eval.py`` on the same held-out test images. SIKD's
teacher sees class-wise averaged images and must be the student's network (its
penultimate features are matched channel by channel), so it is trained by SIKD's
first-seed run (``--train-teacher``) and reused by its other seeds; SSCD's teacher (its stage 0) may see
only the labelled part of the training images, which depends on the seed, so every SSCD
run trains its own (``--train-teacher``). Data sets: binary phantoms (train
seed 0, test seed 1) and the ``mni152`` label map (0 background, 1 grey matter, 2 white
matter; a contiguous block of axial slices held out). After the recipes at their defaults,
two variants run: SIKD without gradient clipping (``clip_norm: 0``, reusing SIKD's teacher)
and SSCD with the hard-patch exchange (``patch_exchange: true``, reusing the same seed's
SSCD teacher). Finally, the batch-1 CPU latency of every exported model is measured in this
process, one model at a time, and the validation-Dice curves of every run are drawn
(``recipes_curves.png`` beside the results file: ``benchmarks/`` by default, the
``--work`` folder with ``--quick``).

    .venv/bin/python benchmarks/bench_recipes.py [--quick] [--datasets mni152 phantoms]
        [--methods baseline kamsd cakd-mskd sikd sscd sikd-noclip sscd-exchange] [--jobs 2]
        [--deadline-minutes M] [--work DIR [--resume]]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from common import CommandLog, argument_parser, command_line, publish, results_path, section_text, write_section
from recipes_figures import draw_curves
from recipes_jobs import Outcome, build_jobs, run_jobs
from recipes_plan import (CURVES_PNG, DATASET_BUILDERS, DEFAULT_DATASETS, FULL, METHODS, QUICK, SECTION_KEY,
                          SECTION_TITLE, TEACHER, VARIANTS)
from recipes_tables import measure_costs, method_notes, results_table

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def variant_limits(parser, texts: list[str]) -> tuple[tuple[str, int], ...]:
    """``--variant-seeds`` as ``((name or "*", N), ...)``; a bad entry is a usage error."""
    limits = []
    for text in texts:
        name, _, count = text.rpartition("=")
        if (name and name not in VARIANTS) or not count.isdigit() or int(count) < 1:
            parser.error(f"--variant-seeds {text!r}: give N or NAME=N (N >= 1, NAME one of {', '.join(VARIANTS)})")
        limits.append((name or "*", int(count)))
    return tuple(limits)


def main() -> None:
    """Prepare the data, run every job, measure the models and publish the section."""
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASET_BUILDERS), default=list(DEFAULT_DATASETS),
                        help=f"data sets (default: {' '.join(DEFAULT_DATASETS)})")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="baseline = the student without distillation (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2)")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="start no run after this many minutes; publish what finished")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    parser.add_argument("--resume", action="store_true",
                        help="with --work: reuse the finished runs found there and resume the unfinished ones "
                             "(without it a --work folder that already holds runs is refused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the students (default: the plan's, 0 1 2; the teachers use the first)")
    parser.add_argument("--variant-seeds", nargs="+", default=[], metavar="[NAME=]N",
                        help="run the variants (sikd-noclip, sscd-exchange, ...) with their first N seeds only: "
                             "N for every variant, NAME=N for one (default: every seed)")
    args = parser.parse_args()
    if args.work is not None and (args.work / "runs").is_dir() and any((args.work / "runs").iterdir()) \
            and not args.resume:
        parser.error(f"--work {args.work} already holds runs: pass --resume to continue them, or another folder")
    if args.resume and args.work is None:
        parser.error("--resume needs --work DIR (the folder of the run to continue)")
    plan = QUICK if args.quick else FULL
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=tuple(args.seeds))
    if args.variant_seeds:
        plan = dataclasses.replace(plan, variant_seeds=variant_limits(parser, args.variant_seeds))
    start = time.monotonic()
    deadline = start + args.deadline_minutes * 60 if args.deadline_minutes else None
    with tempfile.TemporaryDirectory(prefix="medistill-bench-recipes-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        commands = CommandLog(work)
        descriptions = {d: DATASET_BUILDERS[d](work / d, plan, commands) for d in args.datasets}
        jobs = build_jobs(work, plan, args.datasets, args.methods)

        def write_partial(outcomes: dict[str, Outcome]) -> None:
            notes = method_notes(descriptions, plan, commands, time.monotonic() - start, args.jobs, outcomes,
                                 [], finished=False)
            body = results_table(outcomes, {}, args.datasets, args.methods, plan)
            write_section(results_path(args), SECTION_KEY,
                          section_text(SECTION_KEY, SECTION_TITLE, command_line(), body, notes))

        outcomes, not_started = run_jobs(jobs, work, commands, args.jobs, deadline, write_partial)
        costs = measure_costs(outcomes, plan, work)
        curves = draw_curves([(o.job.dataset, o.job.method, o.job.seed, o.job.run_dir) for o in outcomes.values()],
                             args.datasets, [m for m in (TEACHER, *args.methods)],
                             work / CURVES_PNG.name if args.quick
                             else results_path(args).with_name(CURVES_PNG.name))
        print(f"validation curves: {curves}", flush=True)
    notes = method_notes(descriptions, plan, commands, time.monotonic() - start, args.jobs, outcomes,
                         not_started, finished=True)
    publish(args, SECTION_KEY, SECTION_TITLE, results_table(outcomes, costs, args.datasets, args.methods, plan),
            notes)


if __name__ == "__main__":
    main()
