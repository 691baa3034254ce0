"""Open a trained student on one runtime: Keras, ONNX Runtime, OpenVINO or LiteRT.

Every backend gives the same :class:`medistill.export.Predictor` (recorded
preprocessing, activation, original-size output); they differ only in the forward pass.
Only ``keras`` imports TensorFlow: the others start in a fraction of a second, which is
what a command that segments one image pays.

``--model`` may be a run folder, a ``.keras`` file or SavedModel folder (keras), or an
exported ``model.onnx`` / ``model.xml`` / ``model.tflite`` (written by ``medistill
export``, with ``preprocessing.json`` beside it). A run folder with ``backend=onnxruntime``
(…) uses the run's export in ``RUN/exports/``.

Exported graphs are programs for their runtime: like a SavedModel, a file from someone
you do not trust should not be loaded, and loading one logs a warning saying so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medistill.errors import CheckpointError
from medistill.export import ModelCard, Predictor, load_predictor, read_card
from medistill.runtimes import check_precision, compile_openvino

log = logging.getLogger("medistill.predict")

BACKENDS = ("keras", "onnxruntime", "openvino", "litert")
EXPORTS_DIR = "exports"


@dataclass(frozen=True)
class ExportFormat:
    """One portable format: its ``medistill export --format`` name, runtime and file suffix."""

    name: str
    backend: str
    suffix: str

    @property
    def file_name(self) -> str:
        return f"model{self.suffix}"


FORMATS = {fmt.name: fmt for fmt in (ExportFormat("onnx", "onnxruntime", ".onnx"),
                                     ExportFormat("openvino", "openvino", ".xml"),
                                     ExportFormat("litert", "litert", ".tflite"))}
_BY_BACKEND = {fmt.backend: fmt for fmt in FORMATS.values()}
_BY_SUFFIX = {fmt.suffix: fmt for fmt in FORMATS.values()}


def default_export_path(run_dir: str | os.PathLike, fmt: str) -> Path:
    """Where ``medistill export RUN --format fmt`` writes by default: ``RUN/exports/model.<suffix>``."""
    return Path(run_dir) / EXPORTS_DIR / FORMATS[fmt].file_name


def resolve_model(model: str | os.PathLike, backend: str = "auto") -> tuple[Path, str]:
    """``(file or folder to load, backend)`` for ``--model`` and ``--backend`` (``auto``: from the file)."""
    path = Path(model)
    if backend not in BACKENDS + ("auto",):
        raise CheckpointError(f"--backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
    if not path.exists():
        raise CheckpointError(f"model not found: {path} (give a run folder, a .keras file, a SavedModel folder "
                              "or a model.onnx / model.xml / model.tflite written by medistill export)")
    exported = _BY_SUFFIX.get(path.suffix.lower()) if path.is_file() else None
    if exported is not None:
        if backend not in ("auto", exported.backend):
            raise CheckpointError(f"{path} is a {exported.name} file, which runs on --backend {exported.backend}, "
                                  f"not {backend}")
        return path, exported.backend
    if backend in ("auto", "keras"):
        return path, "keras"
    fmt = _BY_BACKEND[backend]
    candidate = default_export_path(path if path.is_dir() else path.parent, fmt.name)
    if not candidate.is_file():
        raise CheckpointError(f"{path} has no {fmt.name} export ({candidate} is missing): run "
                              f"`medistill export {path if path.is_dir() else path.parent} --format {fmt.name}` "
                              f"first, or use --backend keras")
    return candidate, backend


def open_predictor(model: str | os.PathLike, backend: str = "auto", precision: str = "fp32") -> Predictor:
    """A :class:`Predictor` for ``model`` on ``backend`` (see the module docstring).

    ``precision="bf16"`` (OpenVINO only) computes in bfloat16 on CPUs with bf16 units:
    faster, with probabilities that move slightly (README, "Use your model").
    """
    path, backend = resolve_model(model, backend)
    check_precision(precision, backend)
    if backend == "keras":
        return load_predictor(path)
    card = read_card(path)
    log.warning("%s is a compiled %s graph: the runtime executes it as given. Load only files that you or "
                "medistill exported (a file from a stranger is a program from a stranger).", path, backend)
    forward = runtime_forward(path, backend, precision)
    _check_input(forward, card, path)
    return Predictor(forward, card, path)


def runtime_forward(path: Path, backend: str, precision: str = "fp32") -> Callable[[np.ndarray], np.ndarray]:
    """The forward pass of an exported file: float32 ``(B, S, S, C)`` → logits ``(B, S, S, K)``."""
    check_precision(precision, backend)
    try:
        if backend == "openvino":
            return _OpenVino(path, precision)
        return {"onnxruntime": _OnnxRuntime, "litert": _LiteRT}[backend](path)
    except CheckpointError:
        raise
    except Exception as error:  # each runtime raises its own types for a damaged file
        raise CheckpointError(f"cannot load {path} with {backend}: {error}. The file is damaged or not a "
                              f"{_BY_BACKEND[backend].name} model; export it again with medistill export") from error


def _check_input(forward, card: ModelCard, path: Path) -> None:
    expected = (card.preprocess.size, card.preprocess.size, card.preprocess.channels)
    if tuple(forward.input_shape[1:]) != expected:
        raise CheckpointError(f"{path} takes inputs of shape {tuple(forward.input_shape[1:])} but its "
                              f"preprocessing card says {expected}: the card beside it belongs to another "
                              "model; export the model again")


class _OnnxRuntime:
    def __init__(self, path: Path) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        first = self._session.get_inputs()[0]
        self._input = first.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in first.shape)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class _OpenVino:
    def __init__(self, path: Path, precision: str = "fp32") -> None:
        self._model = compile_openvino(str(path), precision)
        shape = self._model.inputs[0].get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)
        self._output = self._model.output(0)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._model(batch)[self._output]


class _LiteRT:
    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self.input_shape = tuple(int(d) if d > 0 else None for d in details["shape_signature"])
        self._shape: tuple[int, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self._shape:  # the interpreter's tensors are sized per batch shape
            self._interpreter.resize_tensor_input(self._input, batch.shape)
            self._interpreter.allocate_tensors()
            self._shape = batch.shape
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, np.float32))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()
