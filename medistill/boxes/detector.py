"""The box detector: train an ultralytics YOLO model, predict boxes files, evaluate it.

Stage 2 of MedDistill (docs/methods.md §1: the authors' detector and why these defaults differ).

``detection.py train|predict|eval`` call :func:`train_detector`, :func:`predict_boxes`
and :func:`evaluate_detector`. ultralytics is imported through
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

import importlib.util
import logging
import math
import os
import pickle
import platform
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes
from medistill.boxes.metrics import BoxMatch, match_boxes
from medistill.boxes.offline import ultralytics_session
from medistill.locking import LOCK_NAME, acquire_lock, check_lock, release_lock
from medistill.boxes.yolo_dataset import read_yolo_labels, to_uint8
from medistill.data import Sample, pair_folder, validate_samples
from medistill.data.samples import load_sample_image
from medistill.errors import CheckpointError, DataError, DataProblem, MedistillError
from medistill.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger("medistill.boxes")

RUN_RECORD = "medistill_detector.json"
# Below both of these on the validation split, a detector has learned nothing usable.
WEAK_RECALL = 0.01
WEAK_MAP50 = 0.01
RESULTS_CSV = "results.csv"  # ultralytics' table of epochs, one row each
MOSAIC_MIN_IMAGES = 500
# Image suffixes ultralytics reads from a split folder (the ones medistill writes: png).
YOLO_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Exceptions by which ultralytics reports bad input; they become readable errors.
_ULTRALYTICS_INPUT_ERRORS = (FileNotFoundError, SyntaxError, ValueError, KeyError,
                             AssertionError, RuntimeError, TypeError)


# --------------------------------------------------------------------------- checks


@dataclass
class DataYaml:
    """A checked ``data.yaml``: its class names and the image folders of its splits."""

    path: Path
    class_names: list[str]
    splits: dict[str, list[Path]]

    def images(self, split: str) -> int:
        return sum(_count_images(folder) for folder in self.splits.get(split, []))


def check_data_yaml(path: str | os.PathLike) -> DataYaml:
    """Read ``data.yaml`` and check every split it names exists and holds images.

    Paths resolve as ultralytics resolves them: against ``path:`` when given, else
    against the folder of ``data.yaml``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the data file {path} does not exist (write one with "
                        "`Creat_yolodata.py --image_dir D --mask_dir M --out Y`; it is Y/data.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path} is not a readable YAML file ({error})") from error
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise DataError(f"{path} must be a YAML mapping with 'train' and 'val' entries "
                        "(and 'names'); write it with Creat_yolodata.py")
    names = data.get("names")
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names)]
    elif names is None and isinstance(data.get("nc"), int):
        names = [f"class_{k}" for k in range(data["nc"])]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path} has no class names: add 'names: {{0: lesion}}'")
    root = Path(data["path"]) if data.get("path") else path.parent
    if not root.is_absolute() and not root.exists():
        raise DataError(f"{path}: its 'path: {data['path']}' does not exist relative to the "
                        "current folder; give an absolute path or remove it (the folder of "
                        "data.yaml is then used)")
    splits: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        entries = data.get(split)
        if not entries:
            continue
        entries = entries if isinstance(entries, list) else [entries]
        folders = []
        for entry in entries:
            folder = (root / str(entry)).resolve()
            if not folder.exists():
                raise DataError(f"{path}: the {split} images {folder} do not exist (fix "
                                f"'{split}: {entry}' or rewrite the set with Creat_yolodata.py)")
            if folder.is_dir() and _count_images(folder) == 0:
                raise DataError(f"{path}: the {split} folder {folder} holds no images")
            folders.append(folder)
        splits[split] = folders
    return DataYaml(path=path.resolve(), class_names=[str(n) for n in names], splits=splits)


def _count_images(folder: Path) -> int:
    if folder.is_file():  # a list file of image paths
        return sum(1 for line in folder.read_text().splitlines() if line.strip())
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in YOLO_IMAGE_SUFFIXES)


def check_model_spec(model: str) -> str:
    """A model ultralytics can build without the network: a local ``.pt``/``.yaml`` file or
    a built-in configuration name such as ``yolo11n.yaml``."""
    spec = str(model)
    suffix = Path(spec).suffix.lower()
    if suffix == ".pt":
        if not Path(spec).is_file():
            raise CheckpointError(
                f"the weights file {spec} does not exist; medistill never downloads weights: "
                "give a local .pt file to fine-tune, or a .yaml such as yolo11n.yaml to train "
                "from scratch")
        return str(Path(spec).resolve())
    if suffix in (".yaml", ".yml"):
        if Path(spec).is_file():
            return str(Path(spec).resolve())
        if _builtin_config(spec):
            return spec
        raise MedistillError(f"{spec} is neither a local file nor a model configuration that "
                             "ships with ultralytics (e.g. yolo11n.yaml, yolov8s.yaml, yolo26n.yaml)")
    raise MedistillError(f"--model {spec}: give a local .pt file (fine-tuning) or a .yaml model "
                         "configuration (from scratch), e.g. yolo11n.yaml")


def _builtin_config(name: str) -> bool:
    """True when ultralytics' cfg/models holds the configuration, scale letter included."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return False
    models = Path(spec.submodule_search_locations[0]) / "cfg" / "models"
    stem = Path(name).stem
    unscaled = re.sub(r"(\d+)([nslmx])(?=-|$)", r"\1", stem)  # yolo11n → yolo11
    return any(p.stem in (stem, unscaled) for p in models.rglob("*.yaml"))


def check_weights(weights: str | os.PathLike) -> Path:
    """An existing ``.pt`` file."""
    path = Path(weights)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir() and path.parent.name == "weights":
            found = sorted(p.name for p in path.parent.glob("*.pt"))
            hint = f" (that folder holds: {', '.join(found) or 'no .pt file'})"
        raise CheckpointError(f"the weights file {path} does not exist{hint}; train one with "
                              "`detection.py train` (RUN/weights/best.pt)")
    if path.suffix.lower() != ".pt":
        raise CheckpointError(f"{path} is not a .pt file of ultralytics weights")
    return path


def _load_yolo(ultralytics, weights: Path):
    try:
        model = ultralytics.YOLO(str(weights))
    except Exception as error:  # torch/pickle raise many types for damaged files
        # Safe loading refuses a pickle that names a GLOBAL (code to run); ultralytics reports
        # that and a damaged file alike ("outside the supported ... format"), so the cause
        # decides: torch names the GLOBAL, or says e.g. "Unsupported operand" for garbage.
        causes = f"{error} {error.__cause__ or ''}"
        if "GLOBAL" in causes or (isinstance(error, pickle.UnpicklingError) and "global" in causes.lower()):
            raise CheckpointError(
                f"refused to load the weights {weights}: the file names Python objects that are not "
                "ultralytics' or torch's model classes, and unpickling them could run any code. medistill "
                "loads .pt files safely (ULTRALYTICS_SAFE_LOAD=1); use a checkpoint written by ultralytics "
                "(detection.py train), and never a .pt file from a source you do not trust") from error
        raise CheckpointError(f"cannot load the weights {weights}: {error} (is it a complete "
                              "ultralytics .pt file?)") from error
    if model.task != "detect":
        raise CheckpointError(f"{weights} is a YOLO {model.task} model, not a detector")
    return model


def _device(device: str) -> str | None:
    return device or None  # None: ultralytics picks the GPU when there is one


def _ultralytics_failed(what: str, error: Exception) -> MedistillError:
    log.debug("ultralytics traceback", exc_info=error)
    text = str(error).strip() or type(error).__name__
    return MedistillError(f"{what} failed in ultralytics: {text} (run with -v for the traceback)")


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
        "batch": config.batch, "device": _device(config.device),
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
                model = _load_yolo(ultralytics, resume_from)
                _resume_results(out / RESULTS_CSV, (getattr(model, "ckpt", None) or {}).get("epoch"))
                try:
                    model.train(resume=str(resume_from), data=str(data.path))
                finally:  # however the resumed run ends, each epoch has one row
                    keep_last_row_per_epoch(out / RESULTS_CSV)
            else:
                model = (_load_yolo(ultralytics, Path(model_spec)) if model_spec.endswith(".pt")
                         else ultralytics.YOLO(model_spec))
                model.train(**args)
        except MedistillError:
            raise
        except _ULTRALYTICS_INPUT_ERRORS as error:
            raise _ultralytics_failed("training", error) from error
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
    losses = _column(run.folder / RESULTS_CSV, "train/box_loss")
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


def _column(path: Path, name: str) -> list[float]:
    """The values of one column of ultralytics' ``results.csv`` (empty when absent)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].split(",")]
    if name not in header:
        return []
    index, values = header.index(name), []
    for line in lines[1:]:
        cells = line.split(",")
        try:
            values.append(float(cells[index]))
        except (IndexError, ValueError):
            continue
    return values


def keep_last_row_per_epoch(path: str | os.PathLike, drop_after: int | None = None) -> int:
    """Rewrite ultralytics' ``results.csv`` so that each epoch has one row; the number dropped.

    ultralytics appends an epoch's row before it saves ``last.pt``: a run killed between
    the two resumes from the previous checkpoint, trains that epoch again and appends its
    row a second time. Of several rows of one epoch the last one written wins; rows of
    epochs after ``drop_after`` (1-based) are dropped too. The header and the kept lines
    stay as they were, in epoch order; the file is replaced atomically, and left alone
    when nothing changes (also when it is missing or not a table of epochs).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split(",")[0].strip() != "epoch":
        return 0
    written = [line for line in lines[1:] if line.strip()]
    rows: dict[int, str] = {}
    for line in written:
        try:
            epoch = int(float(line.split(",")[0]))
        except ValueError:
            log.warning("%s has a row without an epoch number; the file is left as it is", path)
            return 0
        rows[epoch] = line  # the last row written wins
    kept = [rows[epoch] for epoch in sorted(rows) if drop_after is None or epoch <= drop_after]
    if kept != written:
        write_text_atomic(path, "\n".join([lines[0], *kept]) + "\n")
    return len(written) - len(kept)


def _resume_results(path: Path, saved_epoch: Any) -> None:
    """Before a resume: drop the rows of the epochs the run will train again.

    ``saved_epoch`` is the 0-based epoch of ``last.pt``; ultralytics resumes with the next
    one and appends its rows, so rows after epoch ``saved_epoch + 1`` (1-based) belong to
    epochs whose weights were lost in the kill.
    """
    if isinstance(saved_epoch, int) and saved_epoch >= 0:
        dropped = keep_last_row_per_epoch(path, drop_after=saved_epoch + 1)
    else:
        dropped = keep_last_row_per_epoch(path)
    if dropped:
        log.info("%s: %d row(s) of epochs trained again on resume removed", path, dropped)


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


# --------------------------------------------------------------------------- prediction


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
    _check_thresholds(conf, iou, max_det, batch)
    weights = check_weights(weights)
    samples = list_images(image_dir, skip_bad)
    with ultralytics_session() as ultralytics:
        model = _load_yolo(ultralytics, weights)
        entries = _predict_samples(model, samples, conf, iou, max_det, imgsz, batch, device)
        names = [str(model.names[k]) for k in sorted(model.names)]
        trained_size = model.overrides.get("imgsz")
    source = {"kind": "detector", "weights": str(weights), "image_dir": str(image_dir),
              "conf": conf, "iou": iou, "max_det": max_det, "imgsz": imgsz or trained_size}
    return BoxesFile(class_names=names, images=entries, source=source)


def _predict_samples(model, samples: list[Sample], conf: float, iou: float, max_det: int,
                     imgsz: int | None, batch: int, device: str) -> list[ImageBoxes]:
    options: dict[str, Any] = {"conf": conf, "iou": iou, "max_det": max_det, "verbose": False,
                               "device": _device(device)}
    if imgsz:
        options["imgsz"] = imgsz
    entries = []
    with tqdm(total=len(samples), desc="detecting", unit="image") as bar:
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            arrays = [yolo_input(load_sample_image(sample)) for sample in chunk]
            try:
                results = model.predict(arrays, **options)
            except _ULTRALYTICS_INPUT_ERRORS as error:
                raise _ultralytics_failed("prediction", error) from error
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


def _check_thresholds(conf: float, iou: float, max_det: int, batch: int) -> None:
    if not 0.0 <= conf <= 1.0:
        raise MedistillError(f"--conf is a score in [0, 1], got {conf}")
    if not 0.0 < iou <= 1.0:
        raise MedistillError(f"--iou is an overlap in (0, 1], got {iou}")
    if max_det < 1 or batch < 1:
        raise MedistillError("--max-det and --batch must be at least 1")


# --------------------------------------------------------------------------- evaluation


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
    _check_thresholds(conf, iou, 1, batch)
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
            model = _load_yolo(ultralytics, weights)
            size = imgsz or model.overrides.get("imgsz") or 640
            try:
                validation = model.val(data=str(info.path), split=split, imgsz=size, batch=batch,
                                       iou=iou, device=_device(device), plots=False,
                                       project=str(scratch), name="val", exist_ok=True,
                                       verbose=False)
            except _ULTRALYTICS_INPUT_ERRORS as error:
                raise _ultralytics_failed("validation", error) from error
            entries = _predict_samples(model, samples, conf, iou, 300, size, batch, device)
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
