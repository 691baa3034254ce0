"""The box detector: train an ultralytics YOLO model (prediction and evaluation beside it).

Stage 2 of MedDistill (docs/methods.md §1: the authors' detector and why these defaults differ).

``detection.py train|predict|eval`` call :func:`train_detector` (here),
:func:`~medistill.boxes.detector_predict.predict_boxes` and
:func:`~medistill.boxes.detector_eval.evaluate_detector` (re-exported here); the checks
of their inputs are in :mod:`medistill.boxes.detector_inputs`, the reading of
ultralytics' ``results.csv`` in :mod:`medistill.boxes.results_csv`. ultralytics is imported through
:mod:`medistill.boxes.offline` (offline, own settings folder, thread counts restored)
and only inside these functions; this module never imports TensorFlow.

Training defaults, chosen for small medical sets on a CPU (ultralytics' own defaults
are tuned for COCO on GPUs and learn nothing from a few dozen images):

* ``batch=8`` and ``nbs=batch``: one optimizer step per batch of 8. ultralytics
  accumulates gradients up to a nominal batch of 64, so 64 training images at batch 16
  would give one step per epoch; a from-scratch YOLO needs a few hundred steps before
  it finds anything;
* ``optimizer="AdamW"``, ``lr0=0.003``, ``warmup_epochs=1``: ultralytics' "auto" choice
  depends on the iteration count and SGD needs many more steps. Measured on 64 blob
  images at 64 px: batch 8 / lr0 0.003 reached mAP50 0.93 in 20 epochs, batch 16 /
  lr0 0.002 / 2 warm-up epochs still found nothing after 20;
* ``mosaic=0`` below 500 training images (``close_mosaic=0``): mosaic tiles four images
  into one and shrinks small lesions below what a small set can teach;
* ``amp=False`` (its check downloads a model), ``pretrained=False`` for ``.yaml``
  models, ``plots=False`` (faster; ``--plots`` turns them on), ``workers=0`` on a CPU.

A ``.yaml`` model (``yolo11n.yaml``, ``yolov8n.yaml``, ``yolo26n.yaml`` or a local file)
trains from scratch; a local ``.pt`` fine-tunes. Nothing is ever downloaded: a model
name that is neither a local file nor a built-in configuration is refused.

Example (what ``detection.py train`` / ``predict`` do)::

    from medistill.boxes import write_boxes
    from medistill.boxes.detector import DetectorTrainConfig, predict_boxes, train_detector

    run = train_detector(DetectorTrainConfig(data="data/yolo/data.yaml", out="runs/det",
                                             imgsz=128, epochs=40))
    write_boxes("boxes.json", predict_boxes(run.best, "data/test/images", conf=0.25))
"""

from __future__ import annotations

import logging
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medistill.boxes.detector_eval import evaluate_detector, format_metrics, label_path_for, write_metrics
from medistill.boxes.detector_inputs import (
    ULTRALYTICS_INPUT_ERRORS,
    DataYaml,
    check_data_yaml,
    check_model_spec,
    check_weights,
    load_yolo,
    ultralytics_device,
    ultralytics_failed,
)
from medistill.boxes.detector_predict import list_images, predict_boxes, yolo_input
from medistill.boxes.offline import ultralytics_session
from medistill.boxes.results_csv import RESULTS_CSV, keep_last_row_per_epoch, read_column, trim_before_resume
from medistill.errors import CheckpointError, MedistillError
from medistill.fileio import write_json_atomic
from medistill.locking import LOCK_NAME, acquire_lock, check_lock, release_lock

# The checks, prediction and evaluation live in their own modules; their public names are
# imported here too, so `from medistill.boxes.detector import predict_boxes` keeps working.
__all__ = [
    "DataYaml", "DetectorRun", "DetectorTrainConfig", "RESULTS_CSV", "RUN_RECORD", "check_data_yaml",
    "check_model_spec", "check_weights", "evaluate_detector", "format_metrics", "keep_last_row_per_epoch",
    "label_path_for", "list_images", "predict_boxes", "train_detector", "weak_detector_warning",
    "write_metrics", "yolo_input",
]

log = logging.getLogger("medistill.boxes")

RUN_RECORD = "medistill_detector.json"
# Below both of these on the validation split, a detector has learned nothing usable.
WEAK_RECALL = 0.01
WEAK_MAP50 = 0.01
MOSAIC_MIN_IMAGES = 500


# --------------------------------------------------------------------------- training


@dataclass
class DetectorTrainConfig:
    """Settings of one ``detection.py train`` run (saved in ``RUN/medistill_detector.json``)."""

    data: str
    out: str
    model: str = "yolo11n.yaml"
    epochs: int = 50
    imgsz: int = 256
    batch: int = 8
    device: str = ""
    optimizer: str = "AdamW"
    lr0: float = 0.003
    warmup_epochs: float = 1.0
    mosaic: float | None = None
    patience: int = 50
    workers: int | None = None
    seed: int = 0
    plots: bool = False
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "imgsz", "batch"):
            if getattr(self, name) < 1:
                raise MedistillError(f"--{name} must be at least 1")
        if self.imgsz % 32:
            raise MedistillError(f"--imgsz must be a multiple of 32 (YOLO's largest stride), "
                                 f"got {self.imgsz}")
        if self.mosaic is not None and not 0.0 <= self.mosaic <= 1.0:
            raise MedistillError(f"--mosaic is a probability in [0, 1], got {self.mosaic}")


@dataclass
class DetectorRun:
    """A finished training run."""

    folder: Path
    best: Path
    last: Path
    metrics: dict[str, float]
    seconds: float


def train_detector(config: DetectorTrainConfig) -> DetectorRun:
    """Train (or resume) a YOLO detector; the run folder is exactly ``config.out``.

    ``RUN/weights/best.pt`` and ``last.pt``, ultralytics' ``results.csv`` and
    ``args.yaml``, and ``RUN/medistill_detector.json`` (settings, metrics, time). A run
    killed midway resumes from ``last.pt`` when the same command is run again.
    """
    data = check_data_yaml(config.data)
    model_spec = check_model_spec(config.model)
    out = Path(config.out).resolve()
    lock = out / LOCK_NAME
    check_lock(lock, what=f"detector run folder {out}")  # before --overwrite deletes anything
    resume_from = _prepare_run_folder(out, config.overwrite)
    acquire_lock(lock, what=f"detector run folder {out}")
    try:
        return _train(config, data, model_spec, out, resume_from)
    finally:
        release_lock(lock)


def _train(config: DetectorTrainConfig, data: DataYaml, model_spec: str, out: Path,
           resume_from: Path | None) -> DetectorRun:
    """The body of :func:`train_detector`, with ``out`` prepared and locked."""
    train_images = data.images("train")
    mosaic = config.mosaic if config.mosaic is not None else (
        0.0 if train_images < MOSAIC_MIN_IMAGES else 1.0)
    args: dict[str, Any] = {
        "data": str(data.path), "epochs": config.epochs, "imgsz": config.imgsz,
        "batch": config.batch, "device": ultralytics_device(config.device),
        "project": str(out.parent), "name": out.name, "exist_ok": True,
        "optimizer": config.optimizer, "lr0": config.lr0, "warmup_epochs": config.warmup_epochs,
        "nbs": config.batch, "mosaic": mosaic, "close_mosaic": 0, "patience": config.patience,
        "workers": config.workers,
        "seed": config.seed, "deterministic": True, "amp": False, "plots": config.plots,
        "pretrained": model_spec.endswith(".pt"), "val": True, "verbose": True,
    }
    args.update(config.extra)
    log.info("training a YOLO detector on %s (%d training images, mosaic %g) into %s",
             data.path, train_images, mosaic, out)
    started = time.perf_counter()
    with ultralytics_session() as ultralytics:
        if args["workers"] is None:  # torch is loaded safely only inside the session
            args["workers"] = 0 if _cpu_only(config.device) else 4
        try:
            if resume_from is not None:
                log.info("resuming the killed run from %s", resume_from)
                model = load_yolo(ultralytics, resume_from)
                trim_before_resume(out / RESULTS_CSV, (getattr(model, "ckpt", None) or {}).get("epoch"))
                try:
                    model.train(resume=str(resume_from), data=str(data.path))
                finally:  # however the resumed run ends, each epoch has one row
                    keep_last_row_per_epoch(out / RESULTS_CSV)
            else:
                model = (load_yolo(ultralytics, Path(model_spec)) if model_spec.endswith(".pt")
                         else ultralytics.YOLO(model_spec))
                model.train(**args)
        except MedistillError:
            raise
        except ULTRALYTICS_INPUT_ERRORS as error:
            raise ultralytics_failed("training", error) from error
        trainer = model.trainer
        metrics = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items()
                   if isinstance(v, (int, float, np.floating))}
    seconds = time.perf_counter() - started
    best, last = out / "weights" / "best.pt", out / "weights" / "last.pt"
    if not best.is_file():
        raise CheckpointError(f"training ended without {best}; look at the log above")
    record = {"medistill": "detector", "settings": {**asdict(config), "mosaic": mosaic},
              "ultralytics_args": args, "train_images": train_images,
              "class_names": data.class_names, "metrics": metrics, "seconds": round(seconds, 1),
              "best": str(best), "versions": _versions(), "machine": platform.processor() or
              platform.machine()}
    write_json_atomic(out / RUN_RECORD, record)
    return DetectorRun(out, best, last, metrics, seconds)


def weak_detector_warning(run: DetectorRun, batch: int, train_images: int | None = None) -> str | None:
    """Why a finished run found (almost) nothing on its validation split, and what to do; None if fine.

    A run is weak when its validation recall and mAP50 are both below
    :data:`WEAK_RECALL` / :data:`WEAK_MAP50`: its boxes would prompt the teacher nowhere.
    The message gives the optimizer steps taken and the box loss's first and last values
    (from ``results.csv``), the usual causes on a small set.
    """
    recall = run.metrics.get("metrics/recall(B)")
    map50 = run.metrics.get("metrics/mAP50(B)")
    if recall is None or map50 is None or recall >= WEAK_RECALL or map50 >= WEAK_MAP50:
        return None
    losses = read_column(run.folder / RESULTS_CSV, "train/box_loss")
    epochs = len(losses)
    facts = [f"validation recall {recall:.3f}, mAP50 {map50:.3f}"]
    if losses:
        trend = "rose" if losses[-1] > losses[0] else "fell"
        facts.append(f"box loss {trend} from {losses[0]:.2f} to {losses[-1]:.2f} over {epochs} epoch(s)")
    if train_images:
        steps = math.ceil(train_images / batch) * max(epochs, 1)
        facts.append(f"{train_images} training images at batch {batch}: about {steps} optimizer steps")
    return ("the detector learned nothing (" + "; ".join(facts) + "). Its boxes would prompt the teacher "
            "nowhere. A from-scratch YOLO needs a few hundred optimizer steps and a few dozen labelled "
            "objects: train longer (--epochs), with a smaller --batch (more steps per epoch), on more "
            "labelled images, or fine-tune a local .pt (--model); check that the YOLO set's boxes are "
            "right (Creat_yolodata.py's summary). Pass --accept-weak-detector to keep it anyway")


def _cpu_only(device: str) -> bool:
    if device:
        return device.lower() == "cpu"
    import torch

    return not torch.cuda.is_available()


def _prepare_run_folder(out: Path, overwrite: bool) -> Path | None:
    """``last.pt`` to resume from, or None for a fresh run (the folder is then ready)."""
    if out.exists() and not out.is_dir():
        raise MedistillError(f"--out {out} is a file; choose a folder for the run")
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()):
        return None
    looks_like_run = (out / "args.yaml").is_file() or (out / "weights").is_dir()
    if overwrite:
        if not looks_like_run:
            raise MedistillError(f"--out {out} is not empty and is not a detector run folder; "
                                 "choose a new folder (--overwrite only replaces runs)")
        shutil.rmtree(out)
        return None
    if (out / RUN_RECORD).is_file():
        raise MedistillError(f"{out} already holds a finished run ({out / 'weights' / 'best.pt'}); "
                             "pass --overwrite to train again, or choose another --out")
    last = out / "weights" / "last.pt"
    if last.is_file():
        return last
    if _stopped_before_first_epoch(out):
        log.info("%s holds a detector run stopped before its first epoch: starting it again", out)
        shutil.rmtree(out)
        return None
    raise MedistillError(f"--out {out} is not empty and holds no run to resume; pass "
                         "--overwrite to replace it, or choose another --out")


def _stopped_before_first_epoch(out: Path) -> bool:
    """Whether ``out`` holds only what ultralytics writes as a run starts (``args.yaml``, an
    empty ``weights/``): a run stopped before its first epoch, with nothing trained."""
    if not (out / "args.yaml").is_file():
        return False
    names = {p.name for p in out.iterdir()} - {LOCK_NAME}
    weights = out / "weights"
    empty_weights = not weights.exists() or (weights.is_dir() and not any(weights.iterdir()))
    return names <= {"args.yaml", "weights"} and empty_weights


def _versions() -> dict[str, str]:
    import torch
    import ultralytics

    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__}
