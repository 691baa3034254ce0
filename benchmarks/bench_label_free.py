"""Label-free students against their teacher and the boxes: ablation, seeds, model selection, speed.

The benchmark of issue 11 ("Benchmark and acceptance", "Label-free model selection that
can be trusted"). Everything runs in this process (TensorFlow is imported once); each
training run has its own folder and is skipped, with ``--resume``, when its
``summary.json`` and its test metrics (``<run>.test_metrics.json`` beside it) exist, so
``--work DIR --resume`` continues after a kill (an unfinished run resumes from its last
checkpoint).

Per data set (``WORK/<set>/``: ``distill/`` images with masks, the masks read only by the
supervised bound and the ground-truth boxes; ``test/`` images with masks; ``boxes/`` the
boxes files):

- ``phantoms``: synthetic head slices of 128 px with small lesions (``medistill.data.phantoms``,
  distillation seed 0, test seed 1);
- ``nuclei``: the stardist DSB-2018 image cut into 64 px tiles, split by rows of tiles;
- ``colin27``: Colin27 T1 axial slices (skull on), brain mask; test = a contiguous block of
  middle slices, distillation = slices spread over the rest, with a gap;
- ``mni152``: the MNI152 2009 T1 template (skull-stripped), the white-matter mask by
  default (``--mni152-target``), split like Colin27.

Boxes: ground-truth ("oracle") boxes from the masks for every set; detector boxes only
for the sets given with ``--detector-boxes SET=DIR`` (``DIR/distill.json`` and
``DIR/test.json``, e.g. from ``detection.py predict`` on ``WORK/SET/distill/images`` and
``WORK/SET/test/images``; ``--prepare-only`` writes the images first), or trained here
with ``--train-detector SET ...`` (YOLO from scratch, never on the images it boxes:
``label_free_detector.py``).

Teacher: LiteMedSAM (offline), cached once per set, boxes kind and split
(``medistill.teachers.cache.build_cache``) and shared by every run (``MedDistillConfig.cache``).

Rows per set and boxes kind (trained rows: the same student, image size, epochs and
batch; ``--seeds``, 3 by default):

- boxes as masks (filled boxes) and the teacher (cached fused soft masks > 0.5), no training;
- the released student (``weighting="ulwr", terms=["bce", "prob", "feat"], confidence=False,
  negatives="all", quality_control=False``);
- the new default (``MedDistillConfig`` defaults);
- each new part switched off in turn: no dice, no proj, no outside, no confidence,
  negatives "all", no quality control;
- ``rounds=2`` (refinement rounds, when ``medistill.distill.meddistill.rounds`` exists);
- the supervised bound (``medistill.train.supervised``: the distillation images with their masks).

Every MedDistill run keeps a collapsed student (``keep_collapsed=True``): a collapse is
recorded, never rerun. Test metrics: Dice and HD95 per image (``binary_metrics``), the
mean per run; rows give mean ± std over the seeds. Label-free model selection: the
Spearman rank correlation between each MedDistill run's own validation score
(``best_val_dice`` in its ``summary.json``: student-teacher agreement on held-out images,
no labels) and its test Dice, over all runs and per set.

A student comparison (first seed, default recipe, ground-truth boxes, on
``--students-set``): unet base 16 and 32, lcovnet, unetpp: parameters, test Dice, batch-1
CPU latency per image (the students and the teacher interleaved in one loop, medians) and
the speed-up against LiteMedSAM (image encoder + mask decoder of the image's boxes).

Acceptance (issue 11), per set and boxes kind: new-default mean Dice ≥ max(teacher, boxes
as masks); every seed ≥ 0.8 × teacher Dice; ≥ 85 % of the supervised Dice on at least two sets.

    .venv/bin/python benchmarks/bench_label_free.py --quick
    .venv/bin/python benchmarks/bench_label_free.py --work runs/bench_label_free [--resume]

The pieces live beside this script: ``label_free_plan.py`` (plan, rows, students),
``label_free_data.py`` (the data sets and boxes), ``label_free_runs.py`` (teacher caches,
baselines, training runs, latency) and ``label_free_tables.py`` (tables, correlation,
acceptance).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (sets the environment before TensorFlow is imported)

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars of the runs (read when tqdm is imported)
from common import Progress, argument_parser, load_average, publish
from figures import fmt
from json_records import write_json
from label_free_data import MNI152_TARGETS, detector_boxes, prepare_dataset
from label_free_detector import train_detector_boxes
from label_free_plan import ALL_DATASETS, DEFAULT_DATASETS, FULL, QUICK, STUDENTS, Plan, Row, trained_rows
from label_free_runs import baselines, build_teacher_cache, do_run, latency, parameters, quiet_tensorflow, test_samples
from label_free_tables import acceptance, acceptance_table, correlation, planned_table, section_body, section_notes

SECTION_KEY = "label_free"
SECTION_TITLE = "Label-free students (issue 11): ablation over seeds, label-free model selection, students' speed"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


# Estimated wall seconds on 2 idle cores (refined by the measured pace as runs finish).
def estimate_run(plan: Plan, row: Row, distill: int) -> float:
    per_epoch = 1.5 + 0.012 * plan.batch * 10 * (plan.img_size / 64) ** 2  # checkpoint/validation + 10 steps
    base = 15 + plan.epochs * per_epoch
    if row.kind == "rounds":
        return 2 * base + 1.5 * distill + 10
    return base * (0.7 if row.kind == "supervised" else 1.0)


def installed(datasets: Sequence[str], substitute: bool) -> tuple[list[str], list[str]]:
    """The data sets whose files are installed, and notes on those that are not (with ``substitute``,
    cells3d takes the place of the first missing one)."""
    from medistill.data.sources import SOURCES

    kept, notes = [], []
    for name in datasets:
        if name in SOURCES and not SOURCES[name].available():
            notes.append(f"{name} skipped: its files are not installed ({SOURCES[name].install})")
        else:
            kept.append(name)
    if substitute and notes and "cells3d" not in kept and SOURCES["cells3d"].available():
        kept.append("cells3d")
        notes.append("cells3d runs in its place")
    for note in notes:
        print(f"note: {note}", flush=True)
    return kept, notes


def parse_detector(values: Sequence[str]) -> dict[str, Path]:
    found = {}
    for value in values or ():
        name, sep, path = value.partition("=")
        if not sep or name not in ALL_DATASETS:
            raise SystemExit(f"--detector-boxes {value!r}: give SET=PATH with SET one of {', '.join(ALL_DATASETS)}")
        found[name] = Path(path).resolve()
    return found


def main() -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=ALL_DATASETS, default=None,
                        help=f"data sets (default: {' '.join(DEFAULT_DATASETS)}, cells3d in place of a real one "
                             "whose files are not installed; with --quick: phantoms)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds of every trained row "
                        "(default 0 1 2; with --quick: 0)")
    parser.add_argument("--ablation-seeds", type=int, default=None, metavar="N",
                        help="the ablation rows (each new part off) and rounds=2 use only the first N seeds "
                             "(default: all; the released, default and supervised rows always use all)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and the estimate, then stop")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only these trained rows (keys: released default no_dice no_proj no_outside "
                             "no_confidence negatives_all no_qc rounds2 supervised; default: all)")
    parser.add_argument("--detector-boxes", nargs="+", metavar="SET=PATH", default=None,
                        help="detector boxes of a set: a folder with distill.json and test.json (boxes of "
                             "WORK/SET/distill/images and WORK/SET/test/images), or one file covering both")
    parser.add_argument("--train-detector", nargs="+", choices=ALL_DATASETS, default=[], metavar="SET",
                        help="train a YOLO detector for these sets (never on the images it boxes: "
                        "label_free_detector.py) and add their detector-box rows")
    parser.add_argument("--kinds", nargs="+", choices=("oracle", "detector"), default=["oracle", "detector"],
                        help="boxes kinds to run (default both; detector only for sets with detector boxes)")
    parser.add_argument("--students-set", default=None, help="set of the student comparison (default: the first "
                        "data set); 'none' skips it")
    parser.add_argument("--mni152-target", choices=sorted(MNI152_TARGETS), default="white",
                        help="the MNI152 foreground class (default: white matter)")
    parser.add_argument("--epochs", type=int, default=None, help="override the plan's epochs (every trained row)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="override the students' input size (every trained row; a multiple of 16)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and run folders here (default: a temporary folder, deleted)")
    parser.add_argument("--resume", action="store_true",
                        help="with the --work folder of an earlier run: reuse finished data, caches and runs, "
                             "resume unfinished runs from their checkpoints")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the data sets and ground-truth boxes into --work, then stop (for detector boxes)")
    args = parser.parse_args()
    if args.resume and args.work is None:
        parser.error("--resume needs the --work folder of the earlier run")
    if args.prepare_only and args.work is None:
        parser.error("--prepare-only needs --work")
    plan = QUICK if args.quick else FULL
    if args.epochs:
        plan = replace(plan.without_per_set("epochs"), epochs=args.epochs)
    if args.img_size:
        plan = replace(plan.without_per_set("img_size"), img_size=args.img_size)
    datasets = args.datasets or (["phantoms"] if args.quick else list(DEFAULT_DATASETS))
    datasets, missing = installed(datasets, substitute=args.datasets is None)
    datasets = [d for d in ALL_DATASETS if d in datasets]
    args.missing_sets = missing
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    detectors = parse_detector(args.detector_boxes)
    both = sorted(set(args.train_detector) & set(detectors))
    if both:
        parser.error(f"--train-detector {' '.join(both)}: boxes already given with --detector-boxes")
    with tempfile.TemporaryDirectory(prefix="medistill-bench-label-free-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        detectors.update({name: work / name / "detector" / "boxes" for name in args.train_detector})
        run_benchmark(args, work, plan, datasets, seeds, detectors)


def boxes_kinds(name: str, detectors: dict[str, Path], wanted: Sequence[str]) -> list[str]:
    """The boxes kinds a set runs with: ground truth ("oracle"), and "detector" where it has such boxes."""
    return [k for k in ("oracle", "detector") if k in wanted and (k == "oracle" or name in detectors)]


def run_benchmark(args: argparse.Namespace, work: Path, plan: Plan, datasets: list[str], seeds: list[int],
                  detectors: dict[str, Path]) -> None:
    quiet_tensorflow()
    rows, row_notes = trained_rows()
    if args.rows:
        unknown = set(args.rows) - {r.key for r in rows}
        if unknown:
            raise SystemExit(f"--rows: unknown or unavailable row(s) {sorted(unknown)}; "
                             f"these exist: {' '.join(r.key for r in rows)}")
        rows = [r for r in rows if r.key in args.rows]
    students_set = args.students_set or datasets[0]
    if students_set != "none" and students_set not in datasets:
        raise SystemExit(f"--students-set {students_set}: not among --datasets {' '.join(datasets)}")
    if students_set != "none" and "oracle" not in args.kinds:
        raise SystemExit("the student comparison trains with ground-truth boxes: add --kinds oracle or "
                         "pass --students-set none")

    # The plan, its size and an ETA.
    estimates: dict[str, float] = {}
    plan_lines = []
    for name in datasets:
        kinds = boxes_kinds(name, detectors, args.kinds)
        estimates[f"{name}/prepare"] = 10
        if name in args.train_detector:
            estimates[f"{name}/detector"] = 150 if name == "phantoms" else 400
        for kind in kinds:
            estimates[f"{name}/{kind}/caches"] = 2.0 * (plan.distill + plan.test)
            for row in rows:
                for seed in row.seeds(seeds, args.ablation_seeds):
                    shared = row.kind == "supervised" and kind != "oracle"  # reuses the oracle kind's run
                    estimates[f"{name}/{kind}/{row.key}_s{seed}"] = 1.0 if shared else estimate_run(
                        plan.for_set(name), row, plan.distill)
        count = sum(len(row.seeds(seeds, args.ablation_seeds)) for row in rows)
        plan_lines.append([name, ", ".join(kinds), ", ".join(f"{row.key} × {len(row.seeds(seeds, args.ablation_seeds))}"
                                                            for row in rows), len(kinds) * count])
    if students_set != "none":
        for key, student, _ in STUDENTS[1:]:
            factor = {"unet32": 2.0, "lcovnet": 1.5, "unetpp": 3.0}.get(key, 1.0)
            estimates[f"students/{key}"] = estimate_run(plan.for_set(students_set), Row("x", "x"), plan.distill) * factor
        estimates["students/latency"] = 20 + 1.5 * plan.test * (plan.latency_repeats + 1)
    runs_planned = sum(1 for k in estimates if not k.endswith(("/prepare", "/caches", "/latency", "/detector")))
    progress = Progress(estimates)
    print(f"bench_label_free: {len(datasets)} set(s) ({', '.join(datasets)}), seeds {seeds}, rows "
          f"{', '.join(r.key for r in rows)}; {runs_planned} training runs planned; estimated "
          f"{sum(estimates.values()) / 60:.0f} min on 2 idle cores (load now {load_average():.2f}); work {work}",
          flush=True)
    for note in row_notes:
        print(f"note: {note}", flush=True)
    if args.dry_run:
        print(planned_table(plan_lines))
        return

    results: dict = {"settings": {"plan": plan.__dict__, "datasets": datasets, "seeds": seeds,
                                  "rows": [r.__dict__ for r in rows], "row_notes": row_notes,
                                  "ablation_seeds": args.ablation_seeds, "students_set": students_set, "mni152_target": args.mni152_target,
                                  "detector_boxes": {k: str(v) for k, v in detectors.items()},
                                  "train_detector": list(args.train_detector),
                                  "command": common.command_line(), "work": str(work)},
                     "sets": {}, "descriptions": {}, "students": {}, "load": {"start": load_average()}}
    start = time.perf_counter()

    def publish_now(pending: Sequence[str]) -> None:
        results["correlation"] = correlation(results)
        results["acceptance"] = acceptance(results, seeds)
        results["load"]["now"] = load_average()
        results["elapsed_minutes"] = round((time.perf_counter() - start) / 60, 1)
        write_json(work / "results.json", results)
        if args.prepare_only:
            return
        body = section_body(results, rows, seeds)
        notes = section_notes(results, rows, seeds, plan, plan_lines, pending, args)
        publish(args, SECTION_KEY, SECTION_TITLE, body, notes)
        print("\nAcceptance:\n" + acceptance_table(results["acceptance"]), flush=True)

    tests_by_set = {}
    for index, name in enumerate(datasets):
        root = work / name
        t0 = time.perf_counter()
        prepared = prepare_dataset(name, root, plan, args)
        progress.done(f"{name}/prepare", time.perf_counter() - t0)
        if name in args.train_detector:
            t0 = time.perf_counter()
            train_detector_boxes(name, root, plan.phantom_size)
            progress.done(f"{name}/detector", time.perf_counter() - t0)
        if name in detectors:
            detector_boxes(name, root, detectors[name])
        results["descriptions"][name] = prepared["description"]
        print(f"{name}: {prepared['description']}", flush=True)
        if args.prepare_only:
            continue
        tests = tests_by_set[name] = test_samples(root)
        kinds = boxes_kinds(name, detectors, args.kinds)
        results["sets"][name] = {}
        for kind in kinds:
            block = results["sets"][name][kind] = {"runs": {}, "failed": {}}
            t0 = time.perf_counter()
            caches = {split: build_teacher_cache(root, kind, split, args.resume) for split in ("distill", "test")}
            block["cache_seconds"] = {split: built for split, (_, _, built) in caches.items()}
            block["baselines"] = baselines(root, kind, caches["test"][0], tests)
            progress.done(f"{name}/{kind}/caches", time.perf_counter() - t0 if any(
                now for _, now, _ in caches.values()) else 0.0)
            print(f"{name} {kind}: boxes as masks Dice {fmt(block['baselines']['boxes']['dice'])}, teacher Dice "
                  f"{fmt(block['baselines']['teacher']['dice'])}  {progress.line()}", flush=True)
            for row in rows:
                for seed in row.seeds(seeds, args.ablation_seeds):
                    key = f"{row.key}_s{seed}"
                    # the supervised bound uses no boxes: one run per seed, shared by the boxes kinds
                    shared = row.kind == "supervised" and kind != "oracle"
                    out = root / "runs" / ("oracle" if shared else kind) / key
                    try:
                        record, seconds = do_run(root, kind, row, plan.for_set(name), seed, out, tests,
                                                 args.resume or shared)
                    except Exception as error:  # noqa: BLE001 - one failed run must not lose the others
                        traceback.print_exc()
                        block["failed"][key] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                        progress.done(f"{name}/{kind}/{key}", 1.0)
                        print(f"{name} {kind} {key}: FAILED ({block['failed'][key]})", flush=True)
                        continue
                    block["runs"][key] = record
                    progress.done(f"{name}/{kind}/{key}", seconds)
                    print(f"{name} {kind} {key}: Dice {fmt(record['dice'])}, label-free score "
                          f"{fmt(record.get('best_val_dice'))}{', COLLAPSED' if record.get('collapsed') else ''}"
                          f" ({'reused' if seconds == 0 else f'{seconds:.0f} s'})  {progress.line()}", flush=True)
        pending = datasets[index + 1:] + (["student comparison"] if students_set != "none" else [])
        publish_now(pending)
    if args.prepare_only:
        print(f"prepared in {work}; detector boxes: run detection.py predict on WORK/SET/distill/images and "
              "WORK/SET/test/images, then pass --detector-boxes SET=DIR", flush=True)
        return

    if students_set != "none":
        results["students"] = compare_students(work / students_set, plan.for_set(students_set), seeds[0],
                                               tests_by_set[students_set],
                                               args.resume, progress, results["sets"][students_set]["oracle"])
    publish_now([])
    print(f"\nresults: {work / 'results.json'}  ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)


def compare_students(root: Path, plan: Plan, seed: int, tests: list, resume: bool, progress: Progress,
                     block: dict) -> dict:
    row = Row("default", "default")
    runs, run_dirs = {}, {}
    for key, student, options in STUDENTS:
        same_as_default = student == plan.student and options == plan.student_options
        out = root / "runs" / "oracle" / (f"default_s{seed}" if same_as_default else f"student_{key}_s{seed}")
        try:
            # the unet 16 run is the default row's run of this seed, done above (or trained now if missing)
            record, seconds = do_run(root, "oracle", row, plan, seed, out, tests, resume or same_as_default,
                                     (student, options))
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            print(f"student {key}: FAILED ({error})", flush=True)
            progress.done(f"students/{key}", 1.0)
            continue
        if f"students/{key}" in progress.estimates:
            progress.done(f"students/{key}", seconds)
        runs[key] = {"student": student, "options": options, "dice": record["dice"], "run": str(out),
                     "params": parameters(out), "best_val_dice": record.get("best_val_dice"),
                     "collapsed": record.get("collapsed")}
        run_dirs[key] = out
        print(f"student {key}: Dice {fmt(record['dice'])}, {runs[key]['params']:,} parameters  {progress.line()}",
              flush=True)
    t0 = time.perf_counter()
    timing = latency(run_dirs, root, "oracle", tests, plan.latency_repeats) if run_dirs else {}
    progress.done("students/latency", time.perf_counter() - t0)
    print(f"latency (ms/image): {json.dumps({k: round(v, 1) for k, v in timing.get('ms', {}).items()})}", flush=True)
    return {"set": root.name, "seed": seed, "runs": runs, "latency": timing, "repeats": plan.latency_repeats}


if __name__ == "__main__":
    main()
