"""Import ultralytics so that it never reaches the network, and give back what it changes.

:func:`import_ultralytics` is the only way medistill imports ultralytics. Before the
first import it

* sets ``YOLO_OFFLINE=1`` (ultralytics' online check answers "offline" without a DNS
  query) and ``YOLO_AUTOINSTALL=false`` (no pip install of missing extras);
* sets ``ULTRALYTICS_SAFE_LOAD=1``: a ``.pt`` file is read with
  ``torch.load(weights_only=True)`` and an allow-list of ultralytics' own classes, so a
  crafted checkpoint cannot run code when it is unpickled (real checkpoints still load);
* points ``YOLO_CONFIG_DIR`` at a folder of medistill's own,
  ``$MEDISTILL_YOLO_CONFIG_DIR`` or ``~/.cache/medistill/ultralytics`` (``$XDG_CACHE_HOME``
  respected), so a user's own ultralytics settings are neither used nor changed;
* puts matplotlib's DejaVuSans.ttf there under the two names ultralytics 8.4 looks for
  (``Ultralytics/Arial.ttf``, ``Ultralytics/Arial.Unicode.ttf``): it otherwise downloads
  them the first time it reads a data set or draws a label;

and after it, turns off ultralytics' telemetry (``sync``) and every logging integration
(ClearML, Comet, DVC, MLflow, Ray Tune, TensorBoard, W&B) in those settings.

TensorFlow and torch in one process: importing torchvision (which ultralytics does)
*after* TensorFlow crashes the process (SIGSEGV) with this stack, because torch's
import probes for triton, whose LLVM clashes with TensorFlow's. torch needs triton only
for ``torch.compile`` on GPUs, which medistill never uses, so when TensorFlow is already
loaded and triton is not, :func:`import_ultralytics` makes ``import triton`` fail
cleanly first (``sys.modules["triton"] = None``). The command-line tools never import
TensorFlow in the detector commands at all.

ultralytics also changes process-wide thread settings (``torch.set_num_threads(cores -
1)`` when it selects a CPU, ``cv2.setNumThreads(0)`` on import); :func:`ultralytics_session`
restores both when the work is done::

    with ultralytics_session() as ultralytics:
        model = ultralytics.YOLO("yolo11n.yaml")   # built locally, nothing downloaded
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from medistill.errors import MedistillError

log = logging.getLogger("medistill.boxes")

CONFIG_DIR_ENV = "MEDISTILL_YOLO_CONFIG_DIR"
# ultralytics' switch for restricted checkpoint loading: torch.load(weights_only=True) with
# an allow-list of its own model classes, so a crafted .pt cannot run code when unpickled.
SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"
FONT_NAMES: tuple[str, ...] = ("Arial.ttf", "Arial.Unicode.ttf")
DISABLED_SETTINGS = {
    "sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
    "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False,
    "openvino_msg": False,
}


def yolo_config_dir() -> Path:
    """The folder medistill gives ultralytics as ``YOLO_CONFIG_DIR``."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "medistill" / "ultralytics"


def prepare_offline_environment(config_dir: str | os.PathLike | None = None) -> Path:
    """Set the environment variables and fonts described above; return the config folder."""
    folder = Path(config_dir) if config_dir is not None else yolo_config_dir()
    fonts = folder / "Ultralytics"
    try:
        fonts.mkdir(parents=True, exist_ok=True)
        source = _dejavu_sans()
        for name in FONT_NAMES:
            if not (fonts / name).is_file():
                shutil.copyfile(source, fonts / name)
    except OSError as error:
        raise MedistillError(f"cannot prepare the ultralytics settings folder {folder}: {error} "
                             f"(set {CONFIG_DIR_ENV} to a writable folder)") from error
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_CONFIG_DIR"] = str(folder)
    os.environ[SAFE_LOAD_ENV] = "1"
    return folder


def _force_safe_load() -> None:
    """Turn safe loading on in an ultralytics that was imported before the variable was set."""
    for name in ("ultralytics.utils", "ultralytics.nn.tasks"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "SAFE_LOAD", True) is not True:
            module.SAFE_LOAD = True


def _dejavu_sans() -> Path:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise MedistillError("matplotlib is not installed; ultralytics needs a TrueType font "
                             "and medistill takes matplotlib's (run `make venv`)")
    font = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise MedistillError(f"matplotlib's font {font} is missing; reinstall matplotlib")
    return font


def import_ultralytics() -> ModuleType:
    """The ``ultralytics`` module, imported offline (see the module docstring)."""
    first_time = "ultralytics" not in sys.modules
    if first_time:
        prepare_offline_environment()
        if "tensorflow" in sys.modules and "triton" not in sys.modules:
            log.debug("TensorFlow is loaded: blocking the triton import that would crash torch")
            sys.modules["triton"] = None  # type: ignore[assignment]
    else:
        # Imported by someone else first: at least give it the fonts and settings.
        prepare_offline_environment(Path(os.environ.get("YOLO_CONFIG_DIR") or yolo_config_dir()))
    try:
        import ultralytics
        from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR
    except ImportError as error:
        raise MedistillError(f"ultralytics cannot be imported ({error}); install the pinned "
                             "ultralytics-opencv-headless with `make venv`") from error
    fonts = USER_CONFIG_DIR
    for name in FONT_NAMES:
        if not (fonts / name).is_file():
            shutil.copyfile(_dejavu_sans(), fonts / name)
    _force_safe_load()
    if any(SETTINGS.get(key) != value for key, value in DISABLED_SETTINGS.items()):
        SETTINGS.update(DISABLED_SETTINGS)
    if ONLINE:
        log.warning("ultralytics was imported before medistill could set YOLO_OFFLINE=1; it "
                    "may try the network. Import medistill.boxes before ultralytics.")
    return ultralytics


@contextlib.contextmanager
def ultralytics_session() -> Iterator[ModuleType]:
    """``with ultralytics_session() as ultralytics:`` imports it offline and, on leaving,
    restores the torch and OpenCV thread counts that ultralytics changes."""
    import cv2

    cv2_threads = cv2.getNumThreads()
    torch_threads = _torch_threads()
    try:
        yield import_ultralytics()
    finally:
        import torch

        if torch_threads is not None and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


def _torch_threads() -> int | None:
    """torch's intra-op thread count, importing torch safely if needed."""
    if "torch" not in sys.modules and "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]
    import torch

    return torch.get_num_threads()
