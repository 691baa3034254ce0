"""``medistill export``: a run's student as ONNX, OpenVINO IR or LiteRT, with its model card.

The Keras file of the run (loaded in safe mode) is exported with ``keras.Model.export``
for a fixed ``S x S x C`` input (the recorded preprocessing size) and any batch size.
``preprocessing.json`` is written beside the exported file, so the file and its card
travel together; :func:`medistill.predict.backends.open_predictor` reads both.

Before the file is moved into place, it is run on its runtime and compared with the
Keras model on the same random batch; an export whose logits differ by more than
:data:`EXPORT_TOLERANCE` is refused (nothing is written).

Example::

    path = export_model("runs/unet", "onnx")      # runs/unet/exports/model.onnx
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medistill.errors import CheckpointError, MedistillError
from medistill.export import CARD_NAME, ModelCard, keras_file, load_keras_model, read_card
from medistill.fileio import write_json_atomic
from medistill.locking import LOCK_NAME, acquire_lock, check_lock, release_lock
from medistill.predict.backends import FORMATS, default_export_path, runtime_forward

log = logging.getLogger("medistill.predict")

# Largest |logit difference| allowed between Keras and the exported file (float32 runtimes
# reorder sums; measured differences are ~1e-5).
EXPORT_TOLERANCE = 1e-3
_CHECK_BATCH = 2


def export_model(model: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None,
                 overwrite: bool = False) -> Path:
    """Export the student of ``model`` (run folder or ``.keras`` file) to ``fmt``; returns the file."""
    if fmt not in FORMATS:
        raise MedistillError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    source = keras_file(model)
    card = read_card(model)
    run_dir = source.parent
    check_lock(run_dir / LOCK_NAME, f"run folder {run_dir}")
    target = Path(out) if out else default_export_path(run_dir, fmt)
    suffix = FORMATS[fmt].suffix
    if target.suffix.lower() != suffix:
        raise MedistillError(f"--out {target}: a {fmt} export is a {suffix} file; name it e.g. model{suffix}")
    written = [target] + ([target.with_suffix(".bin")] if fmt == "openvino" else [])  # IR = .xml + weights .bin
    _check_card_place(target.parent / CARD_NAME, card)
    lock = acquire_lock(target.parent / f".{target.name}.lock", f"export {target}")
    try:  # checked under the lock: an export finished in between is not replaced either
        for path in written:
            if path.exists() and not overwrite:
                raise MedistillError(f"{path} exists; pass --overwrite to replace it, or choose another --out")
        _export(source, card, fmt, written)
        if not (target.parent / CARD_NAME).is_file():
            write_json_atomic(target.parent / CARD_NAME, card.to_dict())
    finally:
        release_lock(lock)
    return target


def _check_card_place(card_path: Path, card: ModelCard) -> None:
    """A card of another model beside the target would describe the export wrongly: refuse."""
    if not card_path.is_file():
        return
    try:
        existing = json.loads(card_path.read_text())
    except (OSError, ValueError):
        existing = None
    if existing != card.to_dict():
        raise MedistillError(f"{card_path} describes another model (or is damaged): an export there would be "
                             "read with the wrong preprocessing. Export into another folder (--out).")


def _export(source: Path, card: ModelCard, fmt: str, written: list[Path]) -> None:
    """Export into a hidden staging folder, check against Keras, then move exactly ``written`` into place."""
    import tensorflow as tf

    target = written[0]
    size, channels = card.preprocess.size, card.preprocess.channels
    model = load_keras_model(source)
    check = np.random.default_rng(0).random((_CHECK_BATCH, size, size, channels)).astype(np.float32)
    expected = np.asarray(model(check, training=False))  # also builds the model, which export needs
    signature = [tf.TensorSpec((None, size, size, channels), tf.float32, name="image")]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-export-{fmt}-", dir=target.parent))
    try:
        staged = staging / target.name
        log.info("exporting %s to %s (%s)", source, target, fmt)
        try:
            model.export(str(staged), format=fmt, input_signature=signature, verbose=False)
        except Exception as error:  # converters raise many types
            raise CheckpointError(f"exporting {source} to {fmt} failed: {error}") from error
        difference = float(np.max(np.abs(runtime_forward(staged, FORMATS[fmt].backend)(check) - expected)))
        if not difference <= EXPORT_TOLERANCE:
            raise CheckpointError(f"the {fmt} export of {source} disagrees with the Keras model (largest logit "
                                  f"difference {difference:.3g} > {EXPORT_TOLERANCE}); nothing was written")
        log.info("%s export checked against Keras: largest logit difference %.2g", fmt, difference)
        staged_names = {item.name for item in staging.iterdir()}
        if staged_names != {path.name for path in written}:  # only the files checked for --overwrite move
            raise CheckpointError(f"the {fmt} exporter wrote {sorted(staged_names)}, not the expected "
                                  f"{sorted(path.name for path in written)}; nothing was written")
        # The file that is loaded (model.xml for OpenVINO) moves last: once it is there, all is.
        for path in reversed(written):
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
