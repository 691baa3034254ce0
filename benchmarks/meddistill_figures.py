"""The figures bench_meddistill.py computes itself: box recall, teacher and box-as-mask Dice, latency.

The detector is timed in a process of its own (torch and TensorFlow do not mix):
:func:`detector_latency` runs bench_meddistill.py's hidden ``--time-detector`` mode,
:func:`time_detector`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import common
from common import fill_boxes, time_runs
from meddistill_plan import TEACHER
from meddistill_steps import ResumableLog

THIS_SCRIPT = (Path(__file__).resolve().parent / "bench_meddistill.py").relative_to(common.REPO_ROOT)


def box_recall(detector_path: Path, oracle_path: Path) -> dict:
    """Detector boxes against the ground-truth boxes: recall@0.5, precision, empty images."""
    from medistill.boxes.boxes_file import read_boxes
    from medistill.boxes.metrics import BoxMatch, match_boxes

    found, truth = read_boxes(detector_path).by_stem(), read_boxes(oracle_path).by_stem()
    total = BoxMatch()
    for stem, entry in truth.items():
        total = total + match_boxes(found[stem].boxes, entry.boxes)
    return {"recall": total.recall, "precision": total.precision, "truths": total.truths,
            "images": len(truth), "without_box": sum(1 for e in found.values() if not e.boxes)}


def _test_samples(root: Path):
    from medistill.data import pair_folder

    return pair_folder(root / "test" / "images", root / "test" / "masks")


def _summary(predictions: dict, root: Path) -> dict:
    """predict_eval.py's summary of ``{stem: boolean mask}`` against the test masks."""
    from medistill.data import load_sample
    from medistill.evaluate.metrics import binary_metrics
    from medistill.evaluate.report import MetricTable

    table = MetricTable()
    for sample in _test_samples(root):
        truth = load_sample(sample)[1] > 0
        table.add(sample.stem, binary_metrics(predictions[sample.stem], truth))
    return table.summary()


def teacher_summary(cache_path: Path, root: Path) -> dict:
    """The teacher's cached fused soft masks > 0.5 against the test masks."""
    from medistill.teachers.cache import CacheReader

    with CacheReader(cache_path) as cache:
        predictions = {stem: cache.entry(stem, features=False).fused > 0.5 for stem in cache.stems}
    return _summary(predictions, root)


def box_mask_summary(boxes_path: Path, root: Path) -> dict:
    """The box-as-mask baseline on the test images."""
    from medistill.boxes.boxes_file import read_boxes

    return _summary({stem: fill_boxes(entry) for stem, entry in read_boxes(boxes_path).by_stem().items()}, root)


@dataclass
class Latency:
    """CPU ms per image of each stage, on the test images."""

    student_params: int
    student_ms: float
    detector_ms: float
    teacher_ms: float
    teacher_boxes: float
    load: str

    @property
    def ratio(self) -> float:
        return (self.detector_ms + self.teacher_ms) / self.student_ms


def detector_latency(root: Path, weights: Path, commands: ResumableLog, fresh_detector: bool) -> float:
    """ms per image of the detector, measured in its own process (torch and TensorFlow do not mix)."""
    out = root / "detector_latency.json"
    commands.run([str(THIS_SCRIPT), "--time-detector", str(weights), str(root / "test" / "images"), str(out)],
                 root / "logs" / "detector_latency.log", force=fresh_detector, outputs=[out])
    return json.loads(out.read_text())["ms_per_image"]


def time_detector(weights: str, image_dir: str, out: str) -> None:
    """Hidden mode: predict over ``image_dir`` once to warm up, then time a second pass at batch 1."""
    from medistill.boxes.detector import predict_boxes

    predict_boxes(weights, image_dir, batch=1)
    start = time.perf_counter()
    result = predict_boxes(weights, image_dir, batch=1)
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"ms_per_image": 1000 * seconds / len(result.images),
                                     "images": len(result.images)}))


_TEACHERS: dict = {}


def teacher_latency(root: Path, boxes_path: Path, n_images: int) -> tuple[float, float]:
    """Median ms of ``teacher.predict`` (encoder + decoder of its boxes) on test images with boxes,
    each timed on its second call; and the mean number of boxes of those images."""
    import statistics

    import numpy as np

    from medistill.boxes.boxes_file import read_boxes
    from medistill.data import load_sample
    from medistill.teachers.registry import build_teacher

    if TEACHER not in _TEACHERS:
        _TEACHERS[TEACHER] = build_teacher(TEACHER)
    teacher = _TEACHERS[TEACHER]
    entries = read_boxes(boxes_path).by_stem()
    durations, counts = [], []
    for sample in _test_samples(root):
        entry = entries[sample.stem]
        if not entry.boxes:
            continue
        image = load_sample(sample)[0]
        xyxy = np.array([b.xyxy for b in entry.boxes], np.float32)
        teacher.predict(image, xyxy)
        start = time.perf_counter()
        teacher.predict(image, xyxy)
        durations.append(1000 * (time.perf_counter() - start))
        counts.append(len(xyxy))
        if len(durations) >= n_images:
            break
    if not durations:
        return float("nan"), 0.0
    return statistics.median(durations), float(np.mean(counts))


def student_latency(root: Path, run_dir: Path) -> tuple[int, float]:
    """Parameters and median ms per image of the exported student (preprocessing, forward at
    batch 1, mapping back to the image size), as ``predict_eval.py`` runs it."""
    import keras

    import medistill.networks  # noqa: F401  (registers the custom layers)
    from medistill.data import load_sample
    from medistill.export import load_predictor

    keras_file = next(p for p in (run_dir / "student.keras", run_dir / "model.keras") if p.exists())
    params = keras.saving.load_model(str(keras_file), compile=False).count_params()
    predictor = load_predictor(run_dir)
    images = [load_sample(sample)[0] for sample in _test_samples(root)]
    position = iter(range(10 ** 9))
    timing = time_runs(lambda: predictor.predict(images[next(position) % len(images)]), repeats=30, warmup=2,
                       min_repeats=10, budget_seconds=10)
    return params, 1000 * timing.median
