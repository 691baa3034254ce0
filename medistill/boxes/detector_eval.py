"""The box detector's evaluation: ultralytics' validation metrics and box recall at a threshold.

``detection.py eval`` calls :func:`evaluate_detector`, then :func:`format_metrics` and
:func:`write_metrics`. ultralytics is imported through :mod:`medistill.boxes.offline`,
only inside :func:`evaluate_detector`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medistill.boxes.detector_inputs import (
    ULTRALYTICS_INPUT_ERRORS,
    check_data_yaml,
    check_weights,
    load_yolo,
    ultralytics_device,
    ultralytics_failed,
)
from medistill.boxes.detector_predict import check_thresholds, list_images, predict_samples
from medistill.boxes.metrics import BoxMatch, match_boxes
from medistill.boxes.offline import ultralytics_session
from medistill.boxes.yolo_labels import read_yolo_labels
from medistill.errors import DataError
from medistill.fileio import write_json_atomic

log = logging.getLogger("medistill.boxes")


def evaluate_detector(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "test",
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int | None = None,
    batch: int = 16,
    device: str = "",
    recall_iou: float = 0.5,
) -> dict[str, Any]:
    """Detection metrics on one split of a YOLO set.

    ``precision``, ``recall``, ``map50``, ``map50_95``: ultralytics' validation (all
    scores down to 0.001, NMS at ``iou``). ``box_recall`` / ``box_precision``: the
    boxes kept at ``conf`` (what ``predict`` writes) matched one-to-one to the
    ground-truth boxes of the label files at IoU >= ``recall_iou``, same class.
    """
    check_thresholds(conf, iou, 1, batch)
    weights = check_weights(weights)
    info = check_data_yaml(data)
    if split not in info.splits:
        if split != "test" or "val" not in info.splits:
            raise DataError(f"{info.path} has no {split!r} split")
        log.warning("%s has no test split: evaluating on val", info.path)
        split = "val"
    folders = info.splits[split]
    if not all(folder.is_dir() for folder in folders):
        raise DataError(f"{info.path}: the {split} entry must name image folders")
    samples = [s for folder in folders for s in list_images(folder)]
    scratch = Path(tempfile.mkdtemp(prefix="medistill-val-"))
    try:
        with ultralytics_session() as ultralytics:
            model = load_yolo(ultralytics, weights)
            size = imgsz or model.overrides.get("imgsz") or 640
            try:
                validation = model.val(data=str(info.path), split=split, imgsz=size, batch=batch,
                                       iou=iou, device=ultralytics_device(device), plots=False,
                                       project=str(scratch), name="val", exist_ok=True,
                                       verbose=False)
            except ULTRALYTICS_INPUT_ERRORS as error:
                raise ultralytics_failed("validation", error) from error
            entries = predict_samples(model, samples, conf, iou, 300, size, batch, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = BoxMatch()
    for sample, entry in zip(samples, entries):
        truth = read_yolo_labels(label_path_for(sample.image_path), entry.width, entry.height)
        total = total + match_boxes(entry.boxes, truth, recall_iou)
    box = validation.box
    return {
        "weights": str(weights), "data": str(info.path), "split": split, "images": len(samples),
        "precision": float(box.mp), "recall": float(box.mr), "map50": float(box.map50),
        "map50_95": float(box.map), "conf": conf, "iou": iou, "recall_iou": recall_iou,
        "box_recall": _finite(total.recall), "box_precision": _finite(total.precision),
        "matched_mean_iou": _finite(total.mean_iou), "truth_boxes": total.truths,
        "predicted_boxes": total.predictions, "imgsz": size,
    }


def label_path_for(image_path: str | os.PathLike) -> Path:
    """The YOLO label file of an image: the last ``images`` folder becomes ``labels``."""
    parts = list(Path(image_path).parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    raise DataError(f"{image_path} is not inside an 'images' folder, so its YOLO label file "
                    "cannot be found")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def format_metrics(metrics: dict[str, Any]) -> str:
    """The evaluation as a few readable lines."""
    def show(value):
        return "n/a" if value is None else f"{value:.3f}"

    return "\n".join([
        f"{metrics['split']} split: {metrics['images']} images, {metrics['truth_boxes']} boxes",
        f"precision {show(metrics['precision'])}  recall {show(metrics['recall'])}  "
        f"mAP50 {show(metrics['map50'])}  mAP50-95 {show(metrics['map50_95'])}",
        f"at conf {metrics['conf']}: box recall@{metrics['recall_iou']} "
        f"{show(metrics['box_recall'])}, box precision {show(metrics['box_precision'])}, "
        f"matched mean IoU {show(metrics['matched_mean_iou'])} "
        f"({metrics['predicted_boxes']} predicted boxes)",
    ])


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Save the evaluation as JSON, atomically."""
    write_json_atomic(path, metrics)
