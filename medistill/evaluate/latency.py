"""The latency rows of ``medistill report table``: batch-1 CPU time per image of each step.

Each step is timed from what the report already has, on a few of the test images
(:data:`DEFAULT_IMAGES`), one image at a time on the CPU: the images are read first,
one untimed call warms the step up (graph tracing, thread pools, allocations), then the
median of the timed calls is reported, in milliseconds per image.

- **student** (``--student-eval``): the model ``predict_eval.py`` evaluated (its
  ``eval_config.json``), through the one prediction path of ``medistill predict`` with
  the Keras model: preprocessing, network, resize back to the image, labels;
- **detector** (boxes from ``detection.py predict``): the weights the boxes file names,
  ``model.predict`` on one image at the recorded ``imgsz``/``conf``/``iou`` (ultralytics'
  letterboxing and NMS included);
- **teacher** (``--teacher-cache``): the cache's teacher rebuilt as recorded (backend,
  precision, ``--teacher-resize``; refused when its weights differ from the cache's), its
  ``predict`` on the image and that image's boxes (encoder and decoder).

A step that cannot be rebuilt (weights gone, an unknown teacher, boxes from masks) gets
no row; :func:`latency_rows` says why in the log. Timing figures depend on the machine
and its load: they are for orientation (compare steps measured in one run), never
asserted in tests; ``benchmarks/`` holds the careful, interleaved comparisons.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medistill.boxes.boxes_file import BoxesFile
from medistill.errors import MedistillError
from medistill.evaluate.pipeline_report import ReportRow

log = logging.getLogger("medistill.evaluate")

DEFAULT_IMAGES = 5
METRIC = "latency ms/image"


def median_milliseconds(run: Callable[[Any], object], inputs: Sequence[Any], warmup: int = 1) -> float:
    """The median wall time of ``run(x)`` over ``inputs`` in milliseconds, after ``warmup`` untimed calls."""
    if not inputs:
        raise ValueError("nothing to time")
    for index in range(warmup):
        run(inputs[index % len(inputs)])
    times = []
    for item in inputs:
        start = time.perf_counter()
        run(item)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def latency_row(step: str, milliseconds: float, images: int, what: str) -> ReportRow:
    """A table row: the median batch-1 CPU latency of ``step`` and what was timed."""
    return ReportRow(f"{step}: latency", METRIC, milliseconds, float("nan"), images, "images",
                     f"median of {images} images, batch 1, CPU, after a warm-up; {what}")


def _test_images(image_dir: str | os.PathLike, count: int) -> list[tuple[str, np.ndarray]]:
    """``(stem, image)`` of the first ``count`` images of ``image_dir`` (sorted by stem)."""
    from medistill.data import pair_folder
    from medistill.data.samples import load_sample_image

    samples = pair_folder(image_dir)[:count]
    return [(sample.stem, load_sample_image(sample)) for sample in samples]


def student_latency(eval_path: str | os.PathLike, count: int = DEFAULT_IMAGES,
                    image_dir: str | os.PathLike | None = None) -> ReportRow:
    """The row of the student that ``predict_eval.py`` evaluated into ``eval_path``."""
    from medistill.export import load_predictor
    from medistill.predict.engine import predict_probabilities

    path = Path(eval_path)
    config_path = (path if path.is_dir() else path.parent) / "eval_config.json"
    try:
        config = json.loads(config_path.read_text())
        model_path = config["model_path"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise MedistillError(f"{config_path}: cannot tell which model was evaluated ({error!r}); "
                             "rerun predict_eval.py, or pass --latency-images 0") from error
    images = [image for _, image in _test_images(image_dir or config["image_dir"], count)]
    predictor = load_predictor(model_path)
    with _cpu_only():
        seconds = median_milliseconds(
            lambda image: predictor.labels(predict_probabilities(predictor, [image], batch=1)[0]), images)
    return latency_row("student", seconds, len(images),
                       f"{Path(model_path).name} (Keras): preprocessing, network, resize back, labels")


def detector_latency(boxes: BoxesFile, image_dir: str | os.PathLike, count: int = DEFAULT_IMAGES) -> ReportRow:
    """The row of the detector whose weights the boxes file names."""
    from medistill.boxes.detector_inputs import check_weights, load_yolo
    from medistill.boxes.detector_predict import yolo_input
    from medistill.boxes.offline import ultralytics_session

    source = boxes.source
    if not source.get("weights"):
        raise MedistillError("the boxes file names no detector weights (source.weights)")
    weights = check_weights(source["weights"])
    arrays = [yolo_input(image) for _, image in _test_images(image_dir, count)]
    options = {"conf": source.get("conf", 0.25), "iou": source.get("iou", 0.7), "max_det": source.get("max_det", 300),
               "device": "cpu", "verbose": False}
    if source.get("imgsz"):
        options["imgsz"] = source["imgsz"]
    with ultralytics_session() as ultralytics:
        model = load_yolo(ultralytics, weights)
        seconds = median_milliseconds(lambda array: model.predict([array], **options), arrays)
    return latency_row("detector", seconds, len(arrays),
                       f"{weights.name} at imgsz {options.get('imgsz', 'trained')}: letterbox, network, NMS")


def teacher_latency(cache_path: str | os.PathLike, boxes: BoxesFile, image_dir: str | os.PathLike,
                    count: int = DEFAULT_IMAGES) -> ReportRow:
    """The row of the cache's teacher, rebuilt as the cache records it, on each image's boxes."""
    from medistill.teachers.cache import CacheReader
    from medistill.teachers.litemedsam.preprocessing import RESIZE_CHOICES
    from medistill.teachers.registry import TeacherRuntime, build_teacher

    with CacheReader(cache_path) as cache:
        attrs = {key: value for key, value in cache.attrs_of(cache.paths[0]).items() if value is not None}
    recorded = json.loads(attrs.get("preprocessing", "{}")).get("resize", "")
    resize = {text: name for name, text in RESIZE_CHOICES.items()}.get(recorded, "area")
    runtime = TeacherRuntime(backend=attrs.get("backend") or "auto", precision=attrs.get("precision", "fp32"),
                             resize=resize)
    teacher = build_teacher(attrs["teacher"], runtime)
    if str(teacher.weights_hash) != attrs.get("weights_hash", str(teacher.weights_hash)):
        raise MedistillError(f"{cache_path} was made with other {attrs['teacher']} weights than the ones found "
                             "now; its teacher cannot be timed")
    by_stem = boxes.by_stem()
    inputs = [(image, np.array([[b.x1, b.y1, b.x2, b.y2] for b in by_stem[stem].boxes], np.float32).reshape(-1, 4))
              for stem, image in _test_images(image_dir, count) if stem in by_stem]
    with _cpu_only():
        seconds = median_milliseconds(lambda item: teacher.predict(*item), inputs)
    mean_boxes = float(np.mean([len(item[1]) for item in inputs])) if inputs else 0.0
    return latency_row("teacher", seconds, len(inputs),
                       f"{attrs['teacher']} ({teacher.backend}, {runtime.precision}): encoder + decoder on "
                       f"the image's boxes ({mean_boxes:.1f} per image)")


def latency_rows(count: int, image_dir: str | os.PathLike | None, boxes: BoxesFile | None = None,
                 teacher_cache: str | None = None, student_eval: str | None = None) -> list[ReportRow]:
    """Detector, teacher and student latency rows, each where the report's inputs allow it."""
    rows: list[ReportRow] = []
    if count < 1:
        return rows
    if boxes is not None and boxes.source.get("kind") == "detector" and image_dir:
        rows += _or_nothing("detector", lambda: detector_latency(boxes, image_dir, count))
    if teacher_cache and boxes is not None and image_dir:
        rows += _or_nothing("teacher", lambda: teacher_latency(teacher_cache, boxes, image_dir, count))
    if student_eval:
        rows += _or_nothing("student", lambda: student_latency(student_eval, count, image_dir))
    if not rows:
        log.info("no latency row: the detector and teacher are timed with --image_dir and --boxes, the "
                 "student with --student-eval")
    return rows


def _or_nothing(step: str, measure: Callable[[], ReportRow]) -> list[ReportRow]:
    try:
        return [measure()]
    except MedistillError as error:
        log.warning("no %s latency row: %s", step, error)
        return []


class _cpu_only:
    """Run TensorFlow work on the CPU (a GPU machine would otherwise time its GPU); no-op without TensorFlow."""

    def __enter__(self) -> None:
        self._device = None
        if "tensorflow" in sys.modules:  # loaded by the model or teacher just built
            self._device = sys.modules["tensorflow"].device("/CPU:0")
            self._device.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._device is not None:
            self._device.__exit__(*exc)
