"""Writing a trained model with its preprocessing, and loading it back to predict.

A run folder holds ``model.keras`` (``student.keras`` for MedDistill runs), ``saved_model/`` (TF SavedModel, ``serve``
endpoint) and ``preprocessing.json`` (the model card: preprocessing, classes,
activation). The SavedModel keeps a copy of the card in its ``assets/`` folder so that
it can be moved on its own.

Example::

    predictor = load_predictor("runs/supervised")     # or model.keras / saved_model/
    prob = predictor.predict(image)                    # (H, W) or (H, W, K), original size

Importing this module does not import TensorFlow (the model card and :class:`Predictor`
serve the TensorFlow-free runtimes of :mod:`medistill.predict` too); saving and loading
Keras models import it when called.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medistill.data.preprocess import Geometry, PreprocessConfig, preprocess_image, restore
from medistill.errors import CheckpointError
from medistill.fileio import atomic_path, write_json_atomic

log = logging.getLogger("medistill.export")

CARD_NAME = "preprocessing.json"
# A run folder's Keras file: supervised runs write model.keras, MedDistill student.keras.
KERAS_NAMES = ("model.keras", "student.keras")
ASSET_CARD_NAME = "medistill_preprocessing.json"

if TYPE_CHECKING:
    import keras


@dataclass
class ModelCard:
    """How to feed a model and read its output.

    ``min_component`` (a fraction of an image's pixels, 0 = off) is the model's noise
    floor: :func:`medistill.predict.engine.mask_labels` removes foreground components smaller than that from
    every 2-D mask. MedDistill records it from its teacher's masks
    (:mod:`medistill.distill.meddistill.noise_floor`); other trainers leave it 0.
    """

    preprocess: PreprocessConfig
    num_classes: int
    class_names: list[str] | None = None
    min_component: float = 0.0

    @property
    def activation(self) -> str:
        return "sigmoid" if self.num_classes == 2 else "softmax"

    def to_dict(self) -> dict[str, Any]:
        return {
            "preprocess": self.preprocess.to_dict(),
            "num_classes": self.num_classes,
            "activation": self.activation,
            "class_names": self.class_names or default_class_names(self.num_classes),
            "min_component": self.min_component,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        return cls(PreprocessConfig.from_dict(data["preprocess"]), int(data["num_classes"]),
                   data.get("class_names"), float(data.get("min_component", 0.0)))


def default_class_names(num_classes: int) -> list[str]:
    return ["background"] + [f"class_{k}" for k in range(1, num_classes)]


def save_model_artifacts(model: keras.Model, run_dir: str | Path, card: ModelCard,
                         keras_name: str = "model.keras") -> None:
    """Write ``keras_name`` (``model.keras``), ``saved_model/`` and ``preprocessing.json`` atomically."""
    import tensorflow as tf

    if keras_name not in KERAS_NAMES:
        raise ValueError(f"keras_name must be one of {KERAS_NAMES}, got {keras_name!r}")
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / CARD_NAME, card.to_dict())
    with atomic_path(run_dir / keras_name) as tmp:
        model.save(str(tmp))
    with atomic_path(run_dir / "saved_model", suffix="") as tmp:
        size, channels = card.preprocess.size, card.preprocess.channels
        # A fixed spatial size: preprocessing always yields it, and Keras' bilinear
        # up-sampling cannot be traced with unknown spatial dimensions.
        signature = [tf.TensorSpec((None, size, size, channels), tf.float32, name="image")]
        model.export(str(tmp), format="tf_saved_model", verbose=False, input_signature=signature)
        write_json_atomic(tmp / "assets" / ASSET_CARD_NAME, card.to_dict())


def find_card(path: Path) -> Path:
    """The model card of a run folder, SavedModel, ``.keras`` or exported file (beside it)."""
    candidates = [
        path / CARD_NAME,
        path / "assets" / ASSET_CARD_NAME,
        path.parent / CARD_NAME,
        path / "saved_model" / "assets" / ASSET_CARD_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no {CARD_NAME} found for {path}: medistill needs the preprocessing the model was "
        f"trained with. Pass a run folder, or keep {CARD_NAME} beside the .keras file."
    )


def read_card(path: str | Path) -> ModelCard:
    """The :class:`ModelCard` that belongs to ``path`` (see :func:`find_card`)."""
    card_path = find_card(Path(path))
    try:
        return ModelCard.from_dict(json.loads(card_path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{card_path} is damaged ({error}); re-export the model") from error


class Predictor:
    """A model plus its recorded preprocessing; predicts at the original resolution.

    ``forward`` maps a float32 numpy batch ``(B, S, S, C)`` to logits ``(B, S, S, K)``
    (any array-like); it is a Keras model here, an ONNX/OpenVINO/LiteRT runtime in
    :mod:`medistill.predict.backends`.
    """

    def __init__(self, forward, card: ModelCard, source: Path) -> None:
        self._forward = forward
        self.card = card
        self.source = source

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(np.asarray(batch, np.float32)))

    def network_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities at the network's size for a preprocessed batch ``(B, S, S, C)``."""
        return self.probabilities(self.predict_logits(batch))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Logits ``(..., C)`` → probabilities: ``(...)`` sigmoid or ``(..., K)`` softmax."""
        if self.card.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits[..., 0]))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Probabilities for one raw image ``(H, W, C)`` at its original size."""
        x, geometry = preprocess_image(image, self.card.preprocess)
        return self.predict_batch([x], [geometry])[0]

    def predict_batch(self, xs: list[np.ndarray], geometries: list[Geometry]) -> list[np.ndarray]:
        probs = self.network_probabilities(np.stack(xs))
        return [restore(p, g) for p, g in zip(probs, geometries)]

    def labels(self, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Hard labels: probability > threshold (binary) or the arg-max class (last axis).

        Any leading shape: one image ``(H, W[, K])`` or a stack of slices ``(Z, H, W[, K])``.
        The card's noise floor is applied by :func:`medistill.predict.engine.mask_labels`.
        """
        if self.card.num_classes == 2:
            return (prob > threshold).astype(np.int32)
        return np.argmax(prob, axis=-1).astype(np.int32)


def load_predictor(path: str | Path) -> Predictor:
    """Load a run folder, a ``.keras`` file or a SavedModel folder for prediction."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model not found: {path} (give a run folder, a .keras file or a SavedModel folder)")
    card = read_card(path)
    for name in KERAS_NAMES if path.is_dir() else ():
        if (path / name).is_file():
            if (path / "saved_model").is_dir():
                log.info("%s holds %s and saved_model/: loading %s (safe mode); a SavedModel is code "
                         "(its graph runs when loaded), so it is used only when it is given on its own",
                         path, name, name)
            return Predictor(_load_keras(path / name), card, path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        log.warning("%s is a SavedModel: loading it runs the TensorFlow graph stored in it, which can do "
                    "anything a program can. Load only SavedModels you or medistill wrote; a run folder's "
                    ".keras file (loaded in Keras' safe mode) is the safer choice.", path)
        return Predictor(_load_saved_model(path), card, path)
    if path.suffix == ".keras":
        return Predictor(_load_keras(path), card, path)
    raise CheckpointError(f"{path} is neither a run folder, a .keras file nor a SavedModel folder")


def keras_file(path: str | Path) -> Path:
    """The Keras file of a run folder (``model.keras`` / ``student.keras``) or ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        for name in KERAS_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no {' or '.join(KERAS_NAMES)}: it is not a finished medistill "
                              "run folder (train the model first, or give the .keras file)")
    if path.suffix == ".keras" and path.is_file():
        return path
    raise CheckpointError(f"{path} is neither a run folder nor a .keras file")


def load_keras_model(path: Path) -> keras.Model:
    """A ``.keras`` file loaded in Keras' safe mode (a Lambda layer's code is refused, not run)."""
    import keras

    import medistill.networks  # noqa: F401  (registers the custom layers)

    try:
        # safe_mode: a Lambda layer's pickled Python code is refused, not run.
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged archive
        if "safe_mode" in str(error):
            raise CheckpointError(
                f"refused to load {path}: it holds Python code (a Lambda layer), which Keras' safe mode does "
                "not run. medistill's students have none; use a model exported by medistill, or one you "
                "trust enough to load yourself with safe_mode=False.") from error
        raise CheckpointError(f"cannot load {path}: {error}. The file is damaged or not a Keras model; "
                              "re-export it from its run folder.") from error
    return model


def _load_keras(path: Path):
    import tensorflow as tf

    model = load_keras_model(path)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda batch: forward(tf.constant(batch, tf.float32))


def _load_saved_model(path: Path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:
        raise CheckpointError(f"cannot load SavedModel {path}: {error}") from error
    if not hasattr(loaded, "serve"):
        raise CheckpointError(f"SavedModel {path} has no 'serve' endpoint; export it with medistill")

    def serve(x):
        return loaded.serve(tf.constant(x, tf.float32))  # the closure keeps `loaded`, and so its variables, alive

    return serve
