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
``WORK/SET/test/images``; ``--prepare-only`` writes the images first). No detector is
trained here.

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
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import common  # noqa: F401  (sets the environment before TensorFlow is imported)

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars of the runs (read when tqdm is imported)
from common import (Progress, argument_parser, copy_pairs, exported_stems, fill_boxes, load_average, markdown_table,
                    publish, slice_index, spearman)

SECTION_KEY = "label_free"
SECTION_TITLE = "Label-free students (issue 11): ablation over seeds, label-free model selection, students' speed"
TEACHER = "litemedsam"
DEFAULT_DATASETS = ("phantoms", "nuclei", "colin27", "mni152")
ALL_DATASETS = (*DEFAULT_DATASETS, "cells3d")  # cells3d stands in for a default set whose files are missing


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything that differs between a full and a quick run."""

    img_size: int
    epochs: int
    batch: int
    distill: int            # distillation images per set (at most)
    test: int               # test images per set (at most)
    phantom_size: int
    nuclei_tile: int
    volume_gap: int         # Colin27 / MNI152: slices left out on each side of the test block
    latency_repeats: int    # passes over the test images in the latency loop
    student: str = "unet"
    student_options: dict = field(default_factory=lambda: {"base_filters": 16})
    val_fraction: float = 0.2


FULL = Plan(img_size=64, epochs=12, batch=8, distill=48, test=16, phantom_size=128, nuclei_tile=64,
            volume_gap=5, latency_repeats=3)
QUICK = Plan(img_size=32, epochs=3, batch=8, distill=16, test=8, phantom_size=64, nuclei_tile=64,
             volume_gap=2, latency_repeats=1, val_fraction=0.25)


@dataclass(frozen=True)
class Row:
    """One trained row: a MedDistill variant (``overrides`` of ``MedDistillConfig``), rounds or supervised."""

    key: str
    label: str
    overrides: dict = field(default_factory=dict)
    kind: str = "meddistill"  # "meddistill", "rounds" or "supervised"
    ablation: bool = False    # limited to the first --ablation-seeds seeds

    def seeds(self, seeds: Sequence[int], ablation_seeds: int | None) -> list[int]:
        return list(seeds[:ablation_seeds]) if self.ablation and ablation_seeds else list(seeds)


RELEASED = {"weighting": "ulwr", "terms": ["bce", "prob", "feat"], "confidence": False, "negatives": "all",
            "quality_control": False}


def trained_rows() -> tuple[list[Row], list[str]]:
    """The trained rows in table order, and notes on rows that cannot run with this code."""
    from medistill.distill.meddistill.config import MedDistillConfig
    from medistill.distill.terms import DEFAULT_TERMS

    notes = []
    defaults = {f: getattr(MedDistillConfig("i", "b", "o"), f) for f in ("confidence", "negatives",
                                                                        "quality_control", "weighting")}
    rows = [Row("released", "released student (ulwr; bce, prob, feat; no confidence; negatives all; no QC)",
                dict(RELEASED)),
            Row("default", f"**new default** ({defaults['weighting']}; {', '.join(DEFAULT_TERMS)})")]
    for term in ("dice", "proj", "outside"):
        if term in DEFAULT_TERMS:
            rows.append(Row(f"no_{term}", f"default without {term}",
                            {"terms": [t for t in DEFAULT_TERMS if t != term]}, ablation=True))
        else:
            notes.append(f"'no {term}' not run: {term} is not a default term ({', '.join(DEFAULT_TERMS)})")
    if defaults["confidence"]:
        rows.append(Row("no_confidence", "default without confidence weights", {"confidence": False}, ablation=True))
    else:
        notes.append("'no confidence' not run: confidence weights are off by default")
    if defaults["negatives"] != "all":
        rows.append(Row("negatives_all", "default with negatives \"all\"", {"negatives": "all"}, ablation=True))
    else:
        notes.append("'negatives all' not run: it is the default")
    if defaults["quality_control"]:
        rows.append(Row("no_qc", "default without quality control", {"quality_control": False}, ablation=True))
    else:
        notes.append("'no quality control' not run: quality control is off by default")
    try:
        from medistill.distill.meddistill.rounds import run_rounds  # noqa: F401
        rows.append(Row("rounds2", "default with `rounds=2` (refinement rounds)", {"rounds": 2}, "rounds", ablation=True))
    except ImportError:
        notes.append("`rounds=2` not run: medistill.distill.meddistill.rounds.run_rounds does not exist")
    rows.append(Row("supervised", "supervised bound (masks of the distillation images)", kind="supervised"))
    return rows, notes


STUDENTS = (("unet16", "unet", {"base_filters": 16}), ("unet32", "unet", {"base_filters": 32}),
            ("lcovnet", "lcovnet", {}), ("unetpp", "unetpp", {}))


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(temporary, path)


def finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and value == value and not math.isinf(value)


def fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if finite(value) else "–"


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    values = [v for v in values if finite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean(values: Sequence[float]) -> float:
    values = [v for v in values if finite(v)]
    return statistics.mean(values) if values else float("nan")


def evenly(items: list[str], n: int) -> list[str]:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


@contextlib.contextmanager
def quiet_stderr(log_file: Path):
    """Python's stderr (the runs' progress bars) into ``log_file`` while a run trains; the
    console keeps this script's lines and medistill's warnings (their handler holds the real stream)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as stream, contextlib.redirect_stderr(stream):
        yield


def quiet_tensorflow() -> None:
    """Console: warnings of medistill and errors of TensorFlow only (each run keeps its full log in
    its folder). TensorFlow's logger gets its handler now, on the real stderr: one made while a run's
    stderr is redirected would write to a closed file later."""
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("medistill").setLevel(logging.WARNING)
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


# ---------------------------------------------------------------------------
# Data: WORK/<set>/{distill,test}/{images,masks}, WORK/<set>/boxes/{distill,test}_<kind>.json
# ---------------------------------------------------------------------------


def _export(name: str, out: Path, **options) -> Path:
    from medistill.data.sources import export_source

    return export_source(name, out, overwrite=True, **options)


def prepare_phantoms(root: Path, plan: Plan) -> str:
    from medistill.data.phantoms import generate_phantoms

    for folder, n, seed in (("distill", plan.distill, 0), ("test", plan.test, 1)):
        generate_phantoms(root / folder, n, size=plan.phantom_size, seed=seed, overwrite=True)
    return (f"synthetic head phantoms of {plan.phantom_size} px, 0–3 small lesions each (about one in five "
            f"has none): distillation {plan.distill} (seed 0), test {plan.test} (seed 1); lesion masks")


def prepare_nuclei(root: Path, plan: Plan) -> str:
    export = _export("nuclei", root / "export", tile=plan.nuclei_tile)
    stems = exported_stems(export)
    rows = sorted({stem.split("_x")[0] for stem in stems})  # rows of tiles, top to bottom
    per_row = max(1, len(stems) // len(rows))
    test_rows = max(1, math.ceil(plan.test / per_row))
    test = [s for s in stems if s.split("_x")[0] in rows[-test_rows:]][:plan.test]
    distill = evenly([s for s in stems if s.split("_x")[0] in rows[:-test_rows]], plan.distill)
    copy_pairs(export, distill, root / "distill")
    copy_pairs(export, test, root / "test")
    return (f"stardist DSB-2018 nuclei image cut into {len(stems)} tiles of {plan.nuclei_tile} px; test "
            f"{len(test)} tiles of the bottom {test_rows} row(s), distillation {len(distill)} of the rows above")


def _volume_split(root: Path, export: Path, plan: Plan, gap: int | None = None) -> tuple[list[str], list[str]]:
    stems = sorted(exported_stems(export), key=slice_index)
    first = len(stems) // 2 - plan.test // 2
    test = stems[first:first + plan.test]
    gap = plan.volume_gap if gap is None else gap
    low, high = slice_index(test[0]) - gap, slice_index(test[-1]) + gap
    distill = evenly([s for s in stems if not low <= slice_index(s) <= high], plan.distill)
    copy_pairs(export, distill, root / "distill")
    copy_pairs(export, test, root / "test")
    return distill, test


def prepare_cells3d(root: Path, plan: Plan) -> str:
    distill, test = _volume_split(root, _export("cells3d", root / "export"), plan, gap=2)
    return (f"scikit-image cells3d nuclei channel (256×256 z-slices), nuclei masks; test {len(test)} contiguous "
            f"slices z{slice_index(test[0])}–z{slice_index(test[-1])}, distillation {len(distill)} spread over "
            "the others (none within 2 of the test block)")


def prepare_colin27(root: Path, plan: Plan) -> str:
    distill, test = _volume_split(root, _export("colin27", root / "export"), plan)
    return (f"Colin27 T1 axial slices (181×217, skull on), ch2bet brain mask; test {len(test)} contiguous "
            f"slices z{slice_index(test[0])}–z{slice_index(test[-1])}, distillation {len(distill)} slices "
            f"spread over the others (none within {plan.volume_gap} of the test block)")


MNI152_TARGETS = {"white": (2,), "grey": (1,), "brain": (1, 2)}


def prepare_mni152(root: Path, plan: Plan, target: str = "white") -> str:
    import cv2
    import numpy as np

    export = _export("mni152", root / "export_labels")
    binary = root / "export"
    for sub in ("images", "masks"):
        if (binary / sub).exists():
            shutil.rmtree(binary / sub)
        (binary / sub).mkdir(parents=True)
    labels = MNI152_TARGETS[target]
    kept = 0
    for image in sorted((export / "images").glob("*.png")):
        mask = cv2.imread(str(export / "masks" / image.name), cv2.IMREAD_UNCHANGED)
        fg = np.isin(mask, labels)
        if fg.sum() < 20:  # slices without the target
            continue
        shutil.copy2(image, binary / "images" / image.name)
        cv2.imwrite(str(binary / "masks" / image.name), np.where(fg, 255, 0).astype(np.uint8))
        kept += 1
    distill, test = _volume_split(root, binary, plan)
    return (f"MNI152 2009 T1 template (197×233, skull-stripped), {target}-matter mask"
            f"{'' if target != 'brain' else ' (grey or white)'} from nilearn's tissue maps; {kept} axial slices "
            f"with it; test {len(test)} contiguous slices z{slice_index(test[0])}–z{slice_index(test[-1])}, "
            f"distillation {len(distill)} spread over the others (none within {plan.volume_gap} of the test block)")


MIN_AREA = {"phantoms": 1, "nuclei": 4, "colin27": 50, "mni152": 20, "cells3d": 4}


def prepare_dataset(name: str, root: Path, plan: Plan, args: argparse.Namespace) -> dict:
    """Images, masks and ground-truth boxes of one set (reused with ``--resume``)."""
    record_path = root / "prepared.json"
    settings = {k: getattr(plan, k) for k in ("distill", "test", "phantom_size", "nuclei_tile", "volume_gap")}
    settings.update(mni152_target=args.mni152_target, min_area=MIN_AREA[name])
    record = read_json(record_path)
    if args.resume and record.get("settings") == json.loads(json.dumps(settings)):
        return record
    for sub in ("distill", "test", "boxes", "caches", "runs"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    builders = {"phantoms": prepare_phantoms, "nuclei": prepare_nuclei, "colin27": prepare_colin27,
                "cells3d": prepare_cells3d,
                "mni152": lambda r, p: prepare_mni152(r, p, args.mni152_target)}
    description = builders[name](root, plan)
    from medistill.boxes.boxes_file import write_boxes
    from medistill.boxes.oracle import boxes_from_masks

    for split in ("distill", "test"):
        boxes = boxes_from_masks(root / split / "masks", root / split / "images", min_area=MIN_AREA[name])
        write_boxes(root / "boxes" / f"{split}_oracle.json", boxes)
    record = {"settings": settings, "description": description,
              "counts": {split: len(exported_stems(root / split)) for split in ("distill", "test")}}
    write_json(record_path, record)
    return record


def detector_boxes(name: str, root: Path, source: Path) -> None:
    """Copy the detector boxes of ``--detector-boxes`` into ``root/boxes``: a folder with
    ``distill.json`` and ``test.json``, or one boxes file whose entries cover both splits."""
    from medistill.boxes.boxes_file import BoxesFile, read_boxes, write_boxes

    for split in ("distill", "test"):
        stems = set(exported_stems(root / split))
        path = source / f"{split}.json" if source.is_dir() else source
        boxes = read_boxes(path)
        entries = [entry for entry in boxes.images if entry.stem in stems]
        missing = stems - {entry.stem for entry in entries}
        if missing:
            raise SystemExit(f"--detector-boxes {name}={source}: no entry for {len(missing)} {split} image(s) "
                             f"of {root / split / 'images'}, e.g. {sorted(missing)[0]}")
        write_boxes(root / "boxes" / f"{split}_detector.json",
                    BoxesFile(boxes.class_names, entries, {**boxes.source, "copied_from": str(path)}))


# ---------------------------------------------------------------------------
# Teacher caches and the figures without training
# ---------------------------------------------------------------------------


_TEACHER: dict = {}


def teacher():
    if TEACHER not in _TEACHER:
        from medistill.teachers.registry import build_teacher

        _TEACHER[TEACHER] = build_teacher(TEACHER)
    return _TEACHER[TEACHER]


def cache_done(path: Path, boxes_path: Path) -> bool:
    """Every image of the boxes file is finished in the cache at ``path``."""
    if not path.is_file():
        return False
    try:
        from medistill.boxes.boxes_file import read_boxes
        from medistill.teachers.cache import CacheReader

        with CacheReader(path) as cache:
            return set(cache.stems) >= {e.stem for e in read_boxes(boxes_path).images}
    except Exception:  # noqa: BLE001 - any problem: build it again
        return False


def build_teacher_cache(root: Path, kind: str, split: str, resume: bool) -> tuple[Path, float, float]:
    """The LiteMedSAM cache of one boxes file (resumed, or reused when complete): its path, the wall
    seconds spent now and the seconds it took to build (recorded in ``caches/seconds.json``)."""
    from medistill.teachers.cache import build_cache

    path, boxes_path = root / "caches" / f"{split}_{kind}.h5", root / "boxes" / f"{split}_{kind}.json"
    record_path = root / "caches" / "seconds.json"
    record = read_json(record_path)
    if resume and cache_done(path, boxes_path):
        return path, 0.0, record.get(path.name, float("nan"))
    start = time.perf_counter()
    with quiet_stderr(root / "caches" / "build_stderr.log"):
        build_cache(teacher(), root / split / "images", boxes_path, path, overwrite=not resume, progress=False)
    seconds = time.perf_counter() - start
    write_json(record_path, {**read_json(record_path), path.name: round(seconds, 1)})
    return path, seconds, round(seconds, 1)


def test_samples(root: Path):
    from medistill.data import load_sample, pair_folder

    samples = pair_folder(root / "test" / "images", root / "test" / "masks")
    return [(s.stem, *load_sample(s)) for s in samples]


def score(predictions: dict, tests: list) -> dict:
    """Per-image Dice and HD95 of ``{stem: boolean mask}`` against the test masks; the means."""
    from medistill.evaluate.metrics import binary_metrics

    per_image = {}
    for stem, _, truth in tests:
        metrics = binary_metrics(predictions[stem], truth > 0)
        per_image[stem] = {"dice": metrics["dice"], "hd95": metrics["hd95"], "case": metrics["case"]}
    dice = [m["dice"] for m in per_image.values()]
    hd95 = [m["hd95"] for m in per_image.values() if finite(m["hd95"])]
    return {"dice": mean(dice), "hd95": mean(hd95), "hd95_n": len(hd95), "images": len(dice),
            "per_image": per_image}


def baselines(root: Path, kind: str, test_cache: Path, tests: list) -> dict:
    """Boxes as masks and the teacher (fused soft mask > 0.5) on the test images."""
    from medistill.boxes.boxes_file import read_boxes
    from medistill.teachers.cache import CacheReader

    entries = read_boxes(root / "boxes" / f"test_{kind}.json").by_stem()
    boxes = score({stem: fill_boxes(entries[stem]) for stem, _, _ in tests}, tests)
    with CacheReader(test_cache) as cache:
        predictions = {stem: cache.entry(stem).fused > 0.5 for stem, _, _ in tests}
    return {"boxes": boxes, "teacher": score(predictions, tests)}


# ---------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------


def evaluate_run(run_dir: Path, tests: list) -> dict:
    from medistill.export import load_predictor

    predictor = load_predictor(run_dir)
    return score({stem: predictor.predict(image) > 0.5 for stem, image, _ in tests}, tests)


def meddistill_config(root: Path, kind: str, plan: Plan, seed: int, out: Path, overrides: dict,
                      student: tuple[str, dict] | None = None):
    from medistill.distill.meddistill.config import MedDistillConfig

    name, options = student or (plan.student, plan.student_options)
    return MedDistillConfig(
        image_dir=str(root / "distill" / "images"), boxes=str(root / "boxes" / f"distill_{kind}.json"),
        out=str(out), teacher=TEACHER, cache=str(root / "caches" / f"distill_{kind}.h5"), student=name,
        student_options=dict(options), img_size=plan.img_size, epochs=plan.epochs, batch=plan.batch,
        val_fraction=plan.val_fraction, seed=seed, keep_collapsed=True, **overrides)


def train_row(root: Path, kind: str, row: Row, plan: Plan, seed: int, out: Path, resume: bool,
              student: tuple[str, dict] | None = None) -> None:
    import keras

    if row.kind == "supervised":
        from medistill.train.config import TrainConfig
        from medistill.train.supervised import train_supervised

        train_supervised(TrainConfig(data=str(root / "distill"), out=str(out), student=plan.student,
                                     student_options=dict(plan.student_options), img_size=plan.img_size,
                                     epochs=plan.epochs, batch=plan.batch, val_fraction=plan.val_fraction,
                                     seed=seed))
    elif row.kind == "rounds":
        from medistill.distill.meddistill.rounds import run_rounds

        run_rounds(meddistill_config(root, kind, plan, seed, out, row.overrides, student))
    else:
        from medistill.distill.meddistill.trainer import train_meddistill

        train_meddistill(meddistill_config(root, kind, plan, seed, out, row.overrides, student))
    keras.backend.clear_session()
    gc.collect()


def run_record(run_dir: Path, row: Row, metrics: dict, seconds: float) -> dict:
    summary = read_json(run_dir / "summary.json")
    collapse = summary.get("collapse") or {}
    record = {
        "row": row.key, "kind": row.kind, "dice": metrics["dice"], "hd95": metrics["hd95"],
        "per_image": metrics["per_image"], "train_seconds": round(seconds, 1),
        "best_val_dice": summary.get("best_val_dice"), "epochs_run": summary.get("epochs_run"),
        "steps_per_epoch": summary.get("steps_per_epoch"),
        "collapsed": bool(collapse.get("collapsed")) if row.kind != "supervised" else None,
        "collapse_reason": collapse.get("reason") or "",
    }
    if summary.get("rounds"):
        rounds = summary["rounds"]
        record["rounds"] = {"selected": rounds.get("selected"), "rounds_run": rounds.get("rounds_run"),
                            "stopped": rounds.get("stopped"),
                            "scores": [r.get("score") for r in rounds.get("per_round", [])]}
    return record


def run_settings(plan: Plan, row: Row, seed: int, student: tuple[str, dict] | None) -> dict:
    """What a finished run must have been trained with to be reused by ``--resume``."""
    name, options = student or (plan.student, plan.student_options)
    shared = {k: getattr(plan, k) for k in ("img_size", "epochs", "batch", "val_fraction")}
    return json.loads(json.dumps({**shared, "student": name, "student_options": options, "row": row.kind,
                                  "overrides": row.overrides, "seed": seed}))


def do_run(root: Path, kind: str, row: Row, plan: Plan, seed: int, out: Path, tests: list, resume: bool,
           student: tuple[str, dict] | None = None) -> tuple[dict, float]:
    """Train (or reuse) one run and score it on the test images; the record and wall seconds spent.

    The run folder ``out`` holds only what medistill writes (it refuses a folder with other files);
    beside it: ``<out>.settings.json`` (what it is trained with), ``<out>.log`` (its console output)
    and ``<out>.test_metrics.json`` (the test figures, written last: the run is done)."""
    metrics_path = out.with_name(f"{out.name}.test_metrics.json")
    settings_path = out.with_name(f"{out.name}.settings.json")
    wanted = run_settings(plan, row, seed, student)
    if resume and (out / "summary.json").is_file() and metrics_path.is_file():
        record = read_json(metrics_path)
        if record.get("settings") == wanted:
            return record, 0.0
        print(f"{out}: made with other settings, trained again", flush=True)
    start = time.perf_counter()
    if not resume or read_json(settings_path) != wanted:  # a fresh run, or an unfinished one with other settings
        for stale in (out, metrics_path):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    write_json(settings_path, wanted)
    load_before = load_average()
    with quiet_stderr(out.with_name(f"{out.name}.log")):
        train_row(root, kind, row, plan, seed, out, resume, student)
    seconds = time.perf_counter() - start
    record = run_record(out, row, evaluate_run(out, tests), seconds)
    record.update(seed=seed, load=f"{load_before:.2f} → {load_average():.2f}", settings=wanted)
    write_json(metrics_path, record)
    return record, time.perf_counter() - start


# ---------------------------------------------------------------------------
# Latency of the students and the teacher (one interleaved loop)
# ---------------------------------------------------------------------------


def latency(run_dirs: dict[str, Path], root: Path, kind: str, tests: list, repeats: int) -> dict:
    """Median batch-1 CPU ms per image of every student (``load_predictor(run).predict``) and of the
    teacher (``teacher.predict(image, boxes)``: encoder + decoder of the image's boxes), interleaved:
    for each image, each model in turn; only images with at least one box; 1 warm-up pass."""
    import numpy as np

    import medistill.networks  # noqa: F401  (registers the custom layers)
    from medistill.boxes.boxes_file import read_boxes
    from medistill.export import load_predictor

    entries = read_boxes(root / "boxes" / f"test_{kind}.json").by_stem()
    items = [(image, np.array([b.xyxy for b in entries[stem].boxes], np.float32))
             for stem, image, _ in tests if entries[stem].boxes]
    models = {name: load_predictor(run).predict for name, run in run_dirs.items()}
    teach = teacher()
    models["teacher"] = lambda image, boxes=None: teach.predict(image, boxes)
    times: dict[str, list[float]] = {name: [] for name in models}
    load_before = load_average()
    for rep in range(repeats + 1):
        for image, boxes in items:
            for name, predict in models.items():
                start = time.perf_counter()
                predict(image, boxes) if name == "teacher" else predict(image)
                if rep > 0:
                    times[name].append(1000 * (time.perf_counter() - start))
    return {"ms": {name: statistics.median(t) if t else float("nan") for name, t in times.items()},
            "images": len(items), "calls": {name: len(t) for name, t in times.items()},
            "boxes_per_image": float(np.mean([len(b) for _, b in items])) if items else 0.0,
            "load": f"{load_before:.2f} → {load_average():.2f}"}


def parameters(run_dir: Path) -> int:
    import keras

    import medistill.networks  # noqa: F401

    model = keras.saving.load_model(str(run_dir / "student.keras"), compile=False)
    count = model.count_params()
    del model
    keras.backend.clear_session()
    return count


# ---------------------------------------------------------------------------
# Tables, correlation, acceptance
# ---------------------------------------------------------------------------


def quality_table(results: dict, rows: list[Row], seeds: Sequence[int]) -> str:
    headers = ["set", "boxes", "row", "test Dice mean ± std (seeds)", "per seed", "HD95 px mean ± std",
               "label-free score (best val Dice)", "collapsed", "train s / run"]
    table = []
    for name, by_kind in results["sets"].items():
        for kind, block in by_kind.items():
            base = block.get("baselines", {})
            for label, key in (("boxes as masks", "boxes"), (f"teacher {TEACHER} (> 0.5)", "teacher")):
                if key in base:
                    table.append([name, kind, label, fmt(base[key]["dice"]), "–", fmt(base[key]["hd95"], 1),
                                  "–", "–", "–"])
            for row in rows:
                runs = [block["runs"].get(f"{row.key}_s{s}") for s in seeds]
                runs = [r for r in runs if r]
                if not runs:
                    failed = [block.get("failed", {}).get(f"{row.key}_s{s}") for s in seeds]
                    if any(failed):
                        table.append([name, kind, row.label, "failed: " + next(f for f in failed if f)[:120],
                                      "", "", "", "", ""])
                    continue
                dice = [r["dice"] for r in runs]
                collapsed = [r for r in runs if r.get("collapsed")]
                table.append([
                    name, kind, row.label, mean_sd(dice), " / ".join(fmt(d) for d in dice),
                    mean_sd([r["hd95"] for r in runs], 1),
                    "(masks) " + mean_sd([r.get("best_val_dice") for r in runs]) if row.kind == "supervised"
                    else mean_sd([r.get("best_val_dice") for r in runs]),
                    "–" if row.kind == "supervised" else f"{len(collapsed)} of {len(runs)}",
                    f"{mean([r['train_seconds'] for r in runs if r['train_seconds'] > 0]):.0f}"])
    return markdown_table(headers, table)


def label_free_runs(results: dict) -> list[tuple[str, str, dict]]:
    """Every MedDistill run (not supervised) with its set and boxes kind."""
    found = []
    for name, by_kind in results["sets"].items():
        for kind, block in by_kind.items():
            for run in block["runs"].values():
                if run["kind"] != "supervised":
                    found.append((name, kind, run))
    return found


def correlation(results: dict) -> dict:
    runs = label_free_runs(results)
    groups = {"all runs": runs}
    for name in results["sets"]:
        groups[name] = [r for r in runs if r[0] == name]
    out = {}
    for label, group in groups.items():
        rho, p, n = spearman([r[2].get("best_val_dice") for r in group], [r[2]["dice"] for r in group])
        out[label] = {"rho": rho, "p": p, "n": n}
    return out


def correlation_table(corr: dict) -> str:
    return markdown_table(["runs", "Spearman ρ (label-free score vs test Dice)", "p-value", "runs (n)"],
                          [[k, fmt(v["rho"]), fmt(v["p"], 4) if v["p"] is not None else "–", v["n"]]
                           for k, v in corr.items()])


def acceptance(results: dict, seeds: Sequence[int]) -> dict:
    checks = {}
    for name, by_kind in results["sets"].items():
        for kind, block in by_kind.items():
            base = block.get("baselines", {})
            default = [block["runs"].get(f"default_s{s}") for s in seeds]
            supervised = [block["runs"].get(f"supervised_s{s}") for s in seeds]
            if not base or not all(default):
                continue
            dice = [r["dice"] for r in default]
            teacher_dice, boxes_dice = base["teacher"]["dice"], base["boxes"]["dice"]
            sup = mean([r["dice"] for r in supervised if r])
            checks[f"{name}/{kind}"] = {
                "set": name, "kind": kind, "default_mean": mean(dice), "teacher": teacher_dice,
                "boxes": boxes_dice, "beats_teacher_and_boxes": mean(dice) >= max(teacher_dice, boxes_dice),
                "min_seed": min(dice), "no_seed_collapses": all(d >= 0.8 * teacher_dice for d in dice),
                "collapse_check_fired": sum(1 for r in default if r.get("collapsed")),
                "supervised_mean": sup, "fraction_of_supervised": mean(dice) / sup if finite(sup) and sup > 0
                else float("nan"),
            }
    kinds = sorted({c["kind"] for c in checks.values()})
    over = {kind: [c["set"] for c in checks.values() if c["kind"] == kind
                   and finite(c["fraction_of_supervised"]) and c["fraction_of_supervised"] >= 0.85]
            for kind in kinds}
    return {"per_set": checks, "sets_at_85_percent_of_supervised": over,
            "two_sets_at_85_percent": {kind: len(v) >= 2 for kind, v in over.items()}}


def yes(flag: bool) -> str:
    return "**yes**" if flag else "no"


def acceptance_table(acc: dict) -> str:
    headers = ["set / boxes", "new default mean Dice", "max(teacher, boxes as masks)", "≥ ?",
               "lowest seed / 0.8 × teacher", "every seed ≥ 0.8 × teacher?", "collapse check fired",
               "supervised mean", "default / supervised", "≥ 85 %?"]
    rows = []
    for key, c in acc["per_set"].items():
        rows.append([key, fmt(c["default_mean"], 4), fmt(max(c["teacher"], c["boxes"]), 4),
                     yes(c["beats_teacher_and_boxes"]), f"{fmt(c['min_seed'], 4)} / {fmt(0.8 * c['teacher'], 4)}",
                     yes(c["no_seed_collapses"]), c["collapse_check_fired"], fmt(c["supervised_mean"]),
                     f"{100 * c['fraction_of_supervised']:.0f} %" if finite(c["fraction_of_supervised"]) else "–",
                     yes(finite(c["fraction_of_supervised"]) and c["fraction_of_supervised"] >= 0.85)])
    lines = [markdown_table(headers, rows), ""]
    for kind, ok in acc["two_sets_at_85_percent"].items():
        sets = acc["sets_at_85_percent_of_supervised"][kind]
        lines.append(f"- {kind} boxes: ≥ 85 % of supervised on at least two sets? {yes(ok)} "
                     f"({', '.join(sets) or 'none'})")
    return "\n".join(lines)


def students_table(students: dict) -> str:
    if not students:
        return "(not run)"
    lat = students.get("latency", {})
    ms = lat.get("ms", {})
    teacher_ms = ms.get("teacher", float("nan"))
    rows, fast = [], {}
    for key, info in students["runs"].items():
        student_ms = ms.get(key, float("nan"))
        speedup = teacher_ms / student_ms if finite(student_ms) and finite(teacher_ms) else float("nan")
        if finite(speedup) and speedup >= 50:
            fast[key] = info["dice"]
        rows.append([key, f"`{info['student']}` {json.dumps(info['options'])}", f"{info['params']:,}",
                     fmt(info["dice"]), fmt(student_ms, 1), f"{speedup:.0f}×" if finite(speedup) else "–",
                     yes(finite(speedup) and speedup >= 50)])
    rows.append([f"teacher {TEACHER}", f"encoder + decoder, {lat.get('boxes_per_image', 0):.1f} boxes/image", "–",
                 "–", fmt(teacher_ms, 0), "1×", "–"])
    best = max(fast, key=lambda k: fast[k]) if fast else None
    return (markdown_table(["student", "network", "parameters", f"test Dice (seed {students.get('seed')})",
                            "CPU ms/image (batch 1, median)", "speed-up vs teacher", "≥ 50×?"], rows)
            + f"\n\n{lat.get('images', 0)} test images with boxes × {students.get('repeats')} passes, models "
              f"interleaved per image after a warm-up pass; load (1 min) {lat.get('load', '?')}. Best test Dice "
              f"among the students at least 50× faster than the teacher: {best or 'none'} (the teacher alone, "
              "without a detector: against detector + teacher the speed-ups are larger).")


def planned_table(plan_lines: list[list]) -> str:
    return markdown_table(["set", "boxes kinds", "trained rows × seeds", "training runs"], plan_lines)


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
        plan = replace(plan, epochs=args.epochs)
    if args.img_size:
        plan = replace(plan, img_size=args.img_size)
    datasets = args.datasets or (["phantoms"] if args.quick else list(DEFAULT_DATASETS))
    datasets, missing = installed(datasets, substitute=args.datasets is None)
    datasets = [d for d in ALL_DATASETS if d in datasets]
    args.missing_sets = missing
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    detectors = parse_detector(args.detector_boxes)
    with tempfile.TemporaryDirectory(prefix="medistill-bench-label-free-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        run_benchmark(args, work, plan, datasets, seeds, detectors)


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

    # The plan, its size and an ETA.
    estimates: dict[str, float] = {}
    plan_lines = []
    for name in datasets:
        kinds = ["oracle"] + (["detector"] if name in detectors else [])
        estimates[f"{name}/prepare"] = 10
        for kind in kinds:
            estimates[f"{name}/{kind}/caches"] = 2.0 * (plan.distill + plan.test)
            for row in rows:
                for seed in row.seeds(seeds, args.ablation_seeds):
                    shared = row.kind == "supervised" and kind != "oracle"  # reuses the oracle kind's run
                    estimates[f"{name}/{kind}/{row.key}_s{seed}"] = 1.0 if shared else estimate_run(plan, row,
                                                                                                   plan.distill)
        count = sum(len(row.seeds(seeds, args.ablation_seeds)) for row in rows)
        plan_lines.append([name, ", ".join(kinds), ", ".join(f"{row.key} × {len(row.seeds(seeds, args.ablation_seeds))}"
                                                            for row in rows), len(kinds) * count])
    if students_set != "none":
        for key, student, _ in STUDENTS[1:]:
            factor = {"unet32": 2.0, "lcovnet": 1.5, "unetpp": 3.0}.get(key, 1.0)
            estimates[f"students/{key}"] = estimate_run(plan, Row("x", "x"), plan.distill) * factor
        estimates["students/latency"] = 20 + 1.5 * plan.test * (plan.latency_repeats + 1)
    runs_planned = sum(1 for k in estimates if not k.endswith(("/prepare", "/caches", "/latency")))
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
        if name in detectors:
            detector_boxes(name, root, detectors[name])
        results["descriptions"][name] = prepared["description"]
        progress.done(f"{name}/prepare", time.perf_counter() - t0)
        print(f"{name}: {prepared['description']}", flush=True)
        if args.prepare_only:
            continue
        tests = tests_by_set[name] = test_samples(root)
        kinds = ["oracle"] + (["detector"] if name in detectors else [])
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
                        record, seconds = do_run(root, kind, row, plan, seed, out, tests, args.resume or shared)
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
        results["students"] = compare_students(work / students_set, plan, seeds[0], tests_by_set[students_set],
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


def section_body(results: dict, rows: list[Row], seeds: Sequence[int]) -> str:
    parts = ["Test Dice of every row (mean ± sample std over the seeds; per seed in order of the seeds):", "",
             quality_table(results, rows, seeds), "",
             "Label-free model selection: Spearman rank correlation between each MedDistill run's label-free "
             "score (`best_val_dice` in its summary.json: student–teacher agreement on its held-out "
             "distillation images) and its test Dice (the supervised runs are left out: their score uses masks):",
             "", correlation_table(results.get("correlation", {})), "",
             "Acceptance (issue 11):", "", acceptance_table(results.get("acceptance", {"per_set": {},
                                                                                       "two_sets_at_85_percent": {},
                                                                                       "sets_at_85_percent_of_supervised": {}})),
             "", "Students (default recipe, ground-truth boxes):", "", students_table(results.get("students", {}))]
    return "\n".join(parts)


def section_notes(results: dict, rows: list[Row], seeds: Sequence[int], plan: Plan, plan_lines: list,
                  pending: Sequence[str], args: argparse.Namespace) -> str:
    lines = []
    if pending:
        lines += [f"**Partial run: not done yet when this section was written: {', '.join(pending)}. The same "
                  "command with `--work DIR --resume` continues it.**", ""]
    lines.append("Data sets:")
    for name, text in results["descriptions"].items():
        caches = {k: v.get("cache_seconds") for k, v in results["sets"].get(name, {}).items()}
        lines.append(f"- **{name}**: {text}. Teacher cache wall s: {json.dumps(caches)}.")
    overrides = "; ".join(f"{r.key}: `{json.dumps(r.overrides)}`" for r in rows if r.overrides)
    lines += [
        "",
        f"Every trained row: student `{plan.student}` `{json.dumps(plan.student_options)}`, {plan.img_size} px, "
        f"{plan.epochs} epochs, batch {plan.batch}, validation fraction {plan.val_fraction}, seeds "
        f"{' '.join(map(str, seeds))} (the seed sets the initial weights, the validation split and the "
        "augmentation); MedDistill runs: `MedDistillConfig` defaults (lr, patience, `min_epochs`, "
        "`min_steps_per_epoch`, ...) except for each row's overrides, `keep_collapsed=True`, the teacher cache "
        f"of the set and boxes kind (`cache`). Overrides: {overrides}. The supervised bound: "
        "`medistill.train.supervised.train_supervised(TrainConfig(...))` with the same student, size, epochs, "
        "batch and seed on the distillation images with their masks (its own defaults otherwise; an epoch is one "
        "pass, where MedDistill repeats a small set to at least `min_steps_per_epoch` steps; it uses no boxes, so one run "
        "per seed is listed under every boxes kind).",
        "",
        "Rows without training: boxes as masks = every pixel whose centre lies in a box; teacher = LiteMedSAM "
        "prompted with the boxes of each test image, the cached fused soft mask (max over the boxes) > 0.5. "
        "Dice and HD95 (pixels, original resolution, `medistill.evaluate.metrics.binary_metrics`) per test "
        "image, averaged per run; Dice 1 where both masks are empty, HD95 only where both are non-empty. "
        "\"collapsed\": how many seeds' runs the trainer's collapse check flagged (kept, not rerun).",
    ]
    if args.ablation_seeds and args.ablation_seeds < len(seeds):
        lines += ["", f"`--ablation-seeds {args.ablation_seeds}`: the ablation rows and `rounds=2` ran with the first "
                  f"{args.ablation_seeds} seed(s) only (their ± is over those); the released, default and "
                  "supervised rows with every seed."]
    if getattr(args, "missing_sets", None):
        lines += ["", "Data sets: " + "; ".join(args.missing_sets) + "."]
    if results["settings"].get("row_notes"):
        lines += ["", "Rows not run: " + "; ".join(results["settings"]["row_notes"]) + "."]
    if not results["settings"].get("detector_boxes"):
        lines += ["", "Detector boxes: none given (`--detector-boxes SET=DIR`), so every row uses ground-truth "
                  "boxes; no detector is trained by this script."]
    students = results.get("students") or {}
    if students:
        lines += ["", f"Students: trained on {students.get('set')} with the default recipe and ground-truth boxes, "
                  f"seed {students.get('seed')}, same size and epochs; latency = `load_predictor(run).predict(image)` "
                  "(preprocessing, forward at batch 1, back to the image size) and LiteMedSAM "
                  "`teacher.predict(image, boxes)` (image encoder + mask decoder of the image's boxes; no detector), "
                  "interleaved image by image in one loop, medians."]
    lines += ["", "Planned runs:", "", planned_table(plan_lines), "",
              f"Load (1 min): {results['load']['start']:.2f} at the start, {results['load'].get('now', 0):.2f} when "
              f"this was written; {results.get('elapsed_minutes', 0)} min in this process. Per-seed figures, "
              "per-image metrics and the settings: `WORK/results.json` (`--work`)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
