"""``medistill predict``: masks for a folder of images or NIfTI volumes, resumable.

Safety (docs/safety.md): ``-o`` may not be, hold or lie inside the input folder; every
output is written atomically; an output that exists is never written again, so a killed
run resumes where it stopped and a file medistill did not write is never replaced. The
marker ``OUT/.medistill-predict.json`` records the settings that decide the masks; a
folder without it that already holds a file of the same name as an output is refused,
and resuming with other settings is refused (mixed masks). One process per part writes a
folder at a time (``OUT/.medistill-predict-part-I-of-N.lock``): ``--part-id/--num-parts``
split the files between processes that share ``OUT``, as nnU-Net's predictor does.

Volumes are segmented slice by slice along ``axis`` and post-processed in 3-D.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medistill.data.io import read_image, volume_shape, write_mask_png
from medistill.errors import MedistillError
from medistill.runtimes import check_precision
from medistill.export import Predictor
from medistill.fileio import atomic_path, write_json_atomic
from medistill.locking import acquire_lock, release_lock
from medistill.predict.backends import open_predictor, resolve_model
from medistill.predict.engine import mask_labels, png_mask_values, predict_probabilities
from medistill.predict.inputs import InputFile, check_output_folder, find_inputs, shard
from medistill.predict.postprocess import clean_labels
from medistill.predict.volumes import stack_slices, volume_slices, write_like

log = logging.getLogger("medistill.predict")

MARKER_NAME = ".medistill-predict.json"


@dataclass
class PredictConfig:
    """The options of ``medistill predict`` (see its ``--help``)."""

    model: str
    inputs: str
    out: str
    backend: str = "auto"
    precision: str = "fp32"
    axis: int = 2
    batch: int = 8
    threshold: float = 0.5
    noise_floor: bool = True
    probabilities: bool = False
    tta: bool = False
    largest_component: bool = False
    min_size: int = 0
    part_id: int = 0
    num_parts: int = 1

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise MedistillError(f"--axis must be 0 (sagittal), 1 (coronal) or 2 (axial), got {self.axis}")
        if self.batch < 1:
            raise MedistillError("--batch must be at least 1")
        if not 0.0 < self.threshold < 1.0:
            raise MedistillError(f"--threshold is a probability: it must lie in (0, 1), got {self.threshold}")
        if self.min_size < 0:
            raise MedistillError(f"--min-size must be 0 (off) or a number of pixels, got {self.min_size}")
        if self.precision != "fp32":  # fp32 runs everywhere; another precision needs its backend known
            check_precision(self.precision, resolve_model(self.model, self.backend)[1])

    def mask_settings(self) -> dict:
        """What decides the masks (the backend does not: runtimes agree within tolerance; a lower
        precision is recorded, so that a folder never mixes its masks with fp32 ones)."""
        return {"model": str(Path(self.model).expanduser().resolve()), "threshold": self.threshold,
                "noise_floor": self.noise_floor,
                "tta": self.tta, "largest_component": self.largest_component, "min_size": self.min_size,
                "axis": self.axis, **({"precision": self.precision} if self.precision != "fp32" else {})}


def predict_folder(config: PredictConfig) -> dict[str, int]:
    """Run ``medistill predict``; returns ``{"written": …, "skipped": …}`` (input files)."""
    check_output_folder(config.out, config.inputs)
    every_input = find_inputs(config.inputs)
    out = Path(config.out)
    settings = config.mask_settings()
    # Every part's outputs: once one part wrote the marker, the others no longer look for strangers' files.
    _check_marker(out, settings, every_input, config.probabilities)
    inputs = shard(every_input, config.part_id, config.num_parts)
    slices = {item.path: volume_shape(item.path)[config.axis] for item in inputs if item.is_volume}
    predictor = open_predictor(config.model, config.backend, config.precision)
    lock = acquire_lock(out / f".medistill-predict-part-{config.part_id}-of-{config.num_parts}.lock",
                        f"output folder {out}")
    try:
        if not (out / MARKER_NAME).is_file():
            write_json_atomic(out / MARKER_NAME, {"kind": "medistill predict", "settings": settings})
        todo = [item for item in inputs if not all((out / name).is_file()
                                                   for name in item.outputs(config.probabilities))]
        total = sum(slices.get(item.path, 1) for item in todo)
        log.info("segmenting %d file(s) (%d slice(s)/image(s)) with %s (%s); %d already done in %s",
                 len(todo), total, predictor.source, resolve_model(config.model, config.backend)[1],
                 len(inputs) - len(todo), out)
        bar = tqdm(total=total, desc="predict", unit="slice")
        images = [item for item in todo if not item.is_volume]
        for start in range(0, len(images), config.batch):
            _predict_images(predictor, images[start:start + config.batch], out, config)
            bar.update(len(images[start:start + config.batch]))
        for item in todo:
            if item.is_volume:
                _predict_volume(predictor, item, out, config)
                bar.update(slices[item.path])
        bar.close()
    finally:
        release_lock(lock)
    return {"written": len(todo), "skipped": len(inputs) - len(todo)}


def _check_marker(out: Path, settings: dict, inputs: list[InputFile], probabilities: bool) -> None:
    marker = out / MARKER_NAME
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("settings", {})
        except (OSError, ValueError, AttributeError) as error:
            raise MedistillError(f"{marker} is damaged ({error}); choose a new output folder") from error
        changed = [f"{key}: {recorded.get(key)!r} → {value!r}" for key, value in settings.items()
                   if recorded.get(key) != value]
        if changed:
            raise MedistillError(f"{out} holds masks made with other settings ({'; '.join(changed)}); resuming "
                                 "would mix them. Choose a new output folder, or run with the recorded settings.")
        return
    for item in inputs:
        for name in item.outputs(probabilities):
            if (out / name).exists():
                raise MedistillError(f"{out / name} exists and medistill predict did not write it (no {MARKER_NAME} "
                                     f"in {out}); it would be replaced. Choose an empty or new output folder.")


def _labels(predictor: Predictor, prob: np.ndarray, config: PredictConfig) -> np.ndarray:
    labels = mask_labels(predictor, prob, config.threshold, config.noise_floor)
    return clean_labels(labels, config.largest_component, config.min_size)


def _predict_images(predictor: Predictor, items: list[InputFile], out: Path, config: PredictConfig) -> None:
    images = [read_image(item.path) for item in items]
    probs = predict_probabilities(predictor, images, tta=config.tta, batch=config.batch)
    for item, prob in zip(items, probs):
        if config.probabilities and not (out / item.probability_name).is_file():
            with atomic_path(out / item.probability_name) as temporary:
                np.save(temporary, prob.astype(np.float32))
        if not (out / item.mask_name).is_file():
            labels = _labels(predictor, prob, config)
            write_mask_png(out / item.mask_name, png_mask_values(labels, predictor.card.num_classes))


def _predict_volume(predictor: Predictor, item: InputFile, out: Path, config: PredictConfig) -> None:
    planes = volume_slices(item.path, config.axis)
    probs = predict_probabilities(predictor, planes, tta=config.tta, batch=config.batch)
    volume = stack_slices(probs, config.axis)
    if config.probabilities and not (out / item.probability_name).is_file():
        write_like(out / item.probability_name, volume, item.path, np.float32, labels=False)
    if not (out / item.mask_name).is_file():
        labels = _labels(predictor, volume, config)
        write_like(out / item.mask_name, labels, item.path, np.uint8 if predictor.card.num_classes <= 256
                   else np.int32, labels=True)


def describe(result: dict[str, int], out: str | os.PathLike) -> str:
    """The command's last line."""
    return f"wrote the masks of {result['written']} file(s) to {out} ({result['skipped']} already there)"
