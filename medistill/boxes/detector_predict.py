"""The box detector's prediction: a boxes file for every image of a folder.

``detection.py predict`` calls :func:`predict_boxes`; :func:`predict_samples` is the
batched loop the evaluation (:mod:`medistill.boxes.detector_eval`) shares. ultralytics
is imported through :mod:`medistill.boxes.offline`, only inside these functions.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes
from medistill.boxes.detector_inputs import (
    ULTRALYTICS_INPUT_ERRORS,
    check_weights,
    load_yolo,
    ultralytics_device,
    ultralytics_failed,
)
from medistill.boxes.offline import ultralytics_session
from medistill.boxes.yolo_labels import to_uint8
from medistill.data import Sample, pair_folder, validate_samples
from medistill.data.samples import load_sample_image
from medistill.errors import DataProblem, MedistillError


def list_images(image_dir: str | os.PathLike, skip_bad: bool = False) -> list[Sample]:
    """The readable images of a folder as data-layer samples (NIfTI volumes as slices)."""
    problems: list[DataProblem] = []
    samples = pair_folder(image_dir, problems=problems)
    return validate_samples(samples, skip_bad=skip_bad, problems=problems)


def yolo_input(image: np.ndarray) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 BGR array ultralytics expects, from a data-layer image.

    The 8-bit conversion is the one the YOLO set was written with (:func:`to_uint8`).
    """
    pixels = to_uint8(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=-1))
    return np.ascontiguousarray(pixels[..., ::-1])  # RGB → BGR


def predict_boxes(
    weights: str | os.PathLike,
    image_dir: str | os.PathLike,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    imgsz: int | None = None,
    batch: int = 16,
    device: str = "",
    skip_bad: bool = False,
) -> BoxesFile:
    """Run the detector over every image of ``image_dir``; one entry per image.

    ``imgsz`` defaults to the size the model was trained at. Boxes are in pixels of the
    original image, clipped to it.
    """
    check_thresholds(conf, iou, max_det, batch)
    weights = check_weights(weights)
    samples = list_images(image_dir, skip_bad)
    with ultralytics_session() as ultralytics:
        model = load_yolo(ultralytics, weights)
        entries = predict_samples(model, samples, conf, iou, max_det, imgsz, batch, device)
        names = [str(model.names[k]) for k in sorted(model.names)]
        trained_size = model.overrides.get("imgsz")
    source = {"kind": "detector", "weights": str(weights), "image_dir": str(image_dir),
              "conf": conf, "iou": iou, "max_det": max_det, "imgsz": imgsz or trained_size}
    return BoxesFile(class_names=names, images=entries, source=source)


def predict_samples(model, samples: list[Sample], conf: float, iou: float, max_det: int,
                    imgsz: int | None, batch: int, device: str) -> list[ImageBoxes]:
    """The boxes a loaded YOLO ``model`` finds in each sample, ``batch`` images at a time."""
    options: dict[str, Any] = {"conf": conf, "iou": iou, "max_det": max_det, "verbose": False,
                               "device": ultralytics_device(device)}
    if imgsz:
        options["imgsz"] = imgsz
    entries = []
    with tqdm(total=len(samples), desc="detecting", unit="image") as bar:
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            arrays = [yolo_input(load_sample_image(sample)) for sample in chunk]
            try:
                results = model.predict(arrays, **options)
            except ULTRALYTICS_INPUT_ERRORS as error:
                raise ultralytics_failed("prediction", error) from error
            for sample, array, result in zip(chunk, arrays, results):
                height, width = array.shape[:2]
                entries.append(ImageBoxes.for_sample(sample, width, height,
                                                     _result_boxes(result, width, height)))
            bar.update(len(chunk))
    return entries


def _result_boxes(result, width: int, height: int) -> list[Box]:
    if result.boxes is None or len(result.boxes) == 0:
        return []
    xyxy = result.boxes.xyxy.cpu().numpy().astype(np.float64)
    scores = result.boxes.conf.cpu().numpy()
    classes = result.boxes.cls.cpu().numpy().astype(int)
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, width)
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, height)
    order = np.argsort(-scores, kind="stable")
    return [Box(*map(float, xyxy[i]), score=float(np.clip(scores[i], 0, 1)),
                class_id=int(classes[i])) for i in order]


def check_thresholds(conf: float, iou: float, max_det: int, batch: int) -> None:
    """Refuse thresholds outside their ranges before any model is loaded."""
    if not 0.0 <= conf <= 1.0:
        raise MedistillError(f"--conf is a score in [0, 1], got {conf}")
    if not 0.0 < iou <= 1.0:
        raise MedistillError(f"--iou is an overlap in (0, 1], got {iou}")
    if max_det < 1 or batch < 1:
        raise MedistillError("--max-det and --batch must be at least 1")
