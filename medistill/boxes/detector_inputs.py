"""What the detector commands take in, checked before ultralytics runs, and loading its models.

``data.yaml`` (:func:`check_data_yaml`), a model to train (:func:`check_model_spec`),
weights to load (:func:`check_weights`, :func:`load_yolo`, which refuses a pickle that
names code), and how ultralytics' own exceptions become readable errors
(:data:`ULTRALYTICS_INPUT_ERRORS`, :func:`ultralytics_failed`). Used by training
(:mod:`medistill.boxes.detector`), prediction (:mod:`medistill.boxes.detector_predict`)
and evaluation (:mod:`medistill.boxes.detector_eval`); nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from medistill.errors import CheckpointError, DataError, MedistillError

log = logging.getLogger("medistill.boxes")

# Image suffixes ultralytics reads from a split folder (the ones medistill writes: png).
YOLO_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Exceptions by which ultralytics reports bad input; they become readable errors.
ULTRALYTICS_INPUT_ERRORS = (FileNotFoundError, SyntaxError, ValueError, KeyError,
                            AssertionError, RuntimeError, TypeError)


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


def load_yolo(ultralytics, weights: Path):
    """The YOLO detector in ``weights``, loaded safely; a clear error for a damaged file or code."""
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


def ultralytics_device(device: str) -> str | None:
    """The ``device`` argument for ultralytics: an empty option lets it choose."""
    return device or None  # None: ultralytics picks the GPU when there is one


def ultralytics_failed(what: str, error: Exception) -> MedistillError:
    """The readable error for an ultralytics exception during ``what`` (the traceback at -v)."""
    log.debug("ultralytics traceback", exc_info=error)
    text = str(error).strip() or type(error).__name__
    return MedistillError(f"{what} failed in ultralytics: {text} (run with -v for the traceback)")
