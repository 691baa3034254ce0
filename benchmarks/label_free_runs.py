"""bench_label_free.py's measurements: teacher caches, baselines, training runs, latency.

The teacher (LiteMedSAM) is built once per process (:func:`teacher`) and cached per set,
boxes kind and split; each training run is trained (or reused with ``--resume``) and
scored on the test images by :func:`do_run`; :func:`latency` times the students and the
teacher interleaved in one loop.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

from common import fill_boxes, load_average
from figures import finite, mean
from json_records import read_json, write_json
from label_free_plan import TEACHER, Plan, Row


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


def evaluate_run(run_dir: Path, tests: list) -> dict:
    """The run's masks as ``medistill predict`` makes them (threshold 0.5, the card's noise floor), scored."""
    from medistill.export import load_predictor
    from medistill.predict.engine import mask_labels

    predictor = load_predictor(run_dir)
    return score({stem: mask_labels(predictor, predictor.predict(image)) > 0 for stem, image, _ in tests}, tests)


def meddistill_config(root: Path, kind: str, plan: Plan, seed: int, out: Path, overrides: dict,
                      student: tuple[str, dict] | None = None):
    from medistill.distill.meddistill.config import MedDistillConfig

    name, options = student or (plan.student, plan.student_options)
    # co-learning fine-tunes the decoder on the full embeddings: its own full cache, built by its first run
    cache = root / "caches" / (f"distill_{kind}_full.h5" if overrides.get("co_learn") else f"distill_{kind}.h5")
    return MedDistillConfig(
        image_dir=str(root / "distill" / "images"), boxes=str(root / "boxes" / f"distill_{kind}.json"),
        out=str(out), teacher=TEACHER, cache=str(cache), student=name,
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


# Paths of a MedDistill configuration: where a run is, not how it is trained.
PATH_FIELDS = ("image_dir", "boxes", "out", "cache", "init_from", "overwrite")


def run_settings(plan: Plan, row: Row, seed: int, student: tuple[str, dict] | None) -> dict:
    """What a finished run must have been trained with to be reused by ``--resume``: for a
    MedDistill row its whole configuration, so a changed default is a changed run."""
    name, options = student or (plan.student, plan.student_options)
    shared = {k: getattr(plan, k) for k in ("img_size", "epochs", "batch", "val_fraction")}
    settings = {**shared, "student": name, "student_options": options, "row": row.kind,
                "overrides": row.overrides, "seed": seed}
    if row.kind != "supervised":
        config = meddistill_config(Path("."), "kind", plan, seed, Path("."), row.overrides, student).to_dict()
        settings["config"] = {k: v for k, v in config.items() if k not in PATH_FIELDS}
    return json.loads(json.dumps(settings))


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
