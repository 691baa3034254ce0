"""Where LiteMedSAM runs: Keras (TensorFlow), ONNX Runtime or OpenVINO Runtime.

Each backend is a *runner* with the same two calls:

* ``encode(x)``: ``(B, S, S, 3)`` preprocessed images → ``(B, S/4, S/4, D)`` embeddings;
* ``decode(embedding, boxes)``: one ``(1, h, w, D)`` embedding and ``(N, 4)`` boxes in the
  network frame → ``(N, 1, S, S)`` mask logits and ``(N, 1)`` IoU predictions.

ONNX Runtime and OpenVINO run the Keras model exported once (``keras.Model.export``) into
``<converted weights folder>/exports/<backend>/`` with a ``manifest.json`` holding the
SHA-256 of the Keras weights it was exported from and of every exported file. A later
run reuses the export when both still match; otherwise (other weights, a damaged or
edited file, another export version) it is exported again, with a log line saying why.
An export is written into a private folder and renamed into place, so concurrent runs
(workers, a job array sharing one home) never see half an export: the first to finish
wins and the others use its files.

Precision: ``fp32`` everywhere; ``bf16`` only with OpenVINO (its CPU plugin runs bf16
where the CPU has AVX-512 BF16 or AMX; fp32 is requested explicitly, since that plugin
otherwise picks bf16 by itself on such CPUs).

Example::

    runner = make_runner("openvino", model, folder, precision="fp32")
    embedding = runner.encode(x[None])
    logits, iou = runner.decode(embedding, boxes_256)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medistill.errors import MedistillError
from medistill.fileio import file_sha256
from medistill.runtimes import check_precision, compile_openvino

LOG = logging.getLogger("medistill.teachers")
BACKENDS = ("keras", "onnxruntime", "openvino")
# The backend ``--teacher-backend auto`` picks (Keras where OpenVINO is not installed), and
# images per encoder call for each: set from benchmarks/bench_teachers.py on this project's
# machines (benchmarks/RESULTS.md, "Teacher backends": on the AVX2-only 2-core EPYC, OpenVINO
# fp32 ran the encoder 2.1x and the decoder 1.8x faster than Keras, with the same masks).
DEFAULT_BACKEND = "openvino"
DEFAULT_ENCODE_BATCH = {"keras": 1, "onnxruntime": 1, "openvino": 1}
EXPORT_FORMAT = "medistill.litemedsam_export"
EXPORT_VERSION = 1
_FILES = {"onnxruntime": ("encoder.onnx", "decoder.onnx"),
          "openvino": ("encoder.xml", "encoder.bin", "decoder.xml", "decoder.bin")}
_KERAS_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}


def check_backend(backend: str, precision: str = "fp32") -> None:
    """Raise :class:`MedistillError` for an unknown backend or precision, or a pair that does not exist."""
    if backend not in BACKENDS:
        raise MedistillError(f"--teacher-backend {backend!r} is not one of {', '.join(BACKENDS)}")
    check_precision(precision, backend, option="--teacher-precision", backend_option="--teacher-backend")


# --------------------------------------------------------------------------- Keras


class KerasRunner:
    """The Keras model itself, through ``tf.function`` (or eagerly with ``compiled=False``)."""

    def __init__(self, model: Any, compiled: bool = True) -> None:
        import tensorflow as tf

        size, embed, dim = model.image_size, model.embedding_size, int(model.config["embed_dim"])
        self._encode, self._decode = model.encode, model.decode
        if compiled:
            self._encode = tf.function(model.encode, input_signature=[
                tf.TensorSpec((None, size, size, 3), tf.float32)])
            self._decode = tf.function(model.decode, input_signature=[
                tf.TensorSpec((1, embed, embed, dim), tf.float32), tf.TensorSpec((None, 4), tf.float32)])

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._encode(np.asarray(x, np.float32)))

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks, iou = self._decode(np.asarray(embedding, np.float32), np.asarray(boxes, np.float32))
        return np.asarray(masks), np.asarray(iou)


# --------------------------------------------------------------------------- export


def _decoder_model(model: Any) -> Any:
    """The prompt encoder and mask decoder as one Keras model of ``[embedding, boxes]``, called once.

    A subclass (not a functional model) so that the positional encoding is computed inside
    the traced call: a functional model would capture it as an eager tensor, which the ONNX
    converter turns into an extra graph input.
    """
    import keras

    class LiteMedSAMDecoder(keras.Model):
        def __init__(self, full: Any) -> None:
            super().__init__(name="litemedsam_decoder")
            self.full = full

        def call(self, inputs):
            embedding, boxes = inputs
            return self.full.decode(embedding, boxes)

    decoder = LiteMedSAMDecoder(model)
    embed, dim = model.embedding_size, int(model.config["embed_dim"])
    decoder([np.zeros((1, embed, embed, dim), np.float32), np.array([[8, 8, 64, 64]], np.float32)])
    return decoder


def _export(model: Any, backend: str, folder: Path, weights_sha256: str) -> None:
    """Export encoder and decoder for ``backend`` into the new folder ``folder`` with its manifest."""
    import keras

    encoder = model.image_encoder
    encoder(np.zeros((1, model.image_size, model.image_size, 3), np.float32))
    parts = {"encoder": encoder, "decoder": _decoder_model(model)}
    fmt = _KERAS_FORMAT[backend]
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    for name, part in parts.items():
        part.export(str(folder / f"{name}{suffix}"), format=fmt, verbose=False)
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "backend": backend,
                "weights_sha256": weights_sha256, "keras": keras.__version__,
                "files": {name: file_sha256(folder / name) for name in _FILES[backend]}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def weights_sha256(weights_folder: str | os.PathLike) -> str:
    """SHA-256 of the converted Keras weights in ``weights_folder`` (what an export is keyed on)."""
    from medistill.teachers.litemedsam.convert import WEIGHTS_NAME

    return file_sha256(Path(weights_folder) / WEIGHTS_NAME)


def _stale_reason(folder: Path, backend: str, weights_sha256: str) -> str | None:
    """Why the export in ``folder`` cannot be used (None when it can)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return "no manifest.json"
    except (OSError, ValueError) as error:
        return f"unreadable manifest.json ({error})"
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("version") != EXPORT_VERSION:
        return f"export format {manifest.get('format')!r} version {manifest.get('version')!r}"
    if manifest.get("weights_sha256") != weights_sha256:
        return "exported from other weights"
    for name in _FILES[backend]:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != manifest.get("files", {}).get(name):
            return f"{name} differs from the file that was exported"
    return None


def _made_by_medistill(folder: Path) -> bool:
    """Whether ``folder`` holds a medistill export (current or not): its manifest says so."""
    try:
        return json.loads((folder / "manifest.json").read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _move_aside(final: Path, backend: str) -> None:
    """Move the stale folder ``final`` out of the way (atomically): a medistill export is deleted,
    anything else is kept beside it as ``<backend>.replaced-*/<backend>`` (never deleted)."""
    ours = _made_by_medistill(final)
    aside = Path(tempfile.mkdtemp(prefix=f".stale-{backend}-" if ours else f"{backend}.replaced-",
                                  dir=final.parent))
    try:
        os.replace(final, aside / backend)
    except FileNotFoundError:  # another process moved it first
        pass
    if ours or not (aside / backend).exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        LOG.warning("teacher: %s was not a medistill export; it is kept as %s", final, aside / backend)


def ensure_export(model: Any, weights_folder: str | os.PathLike, weights_sha256: str, backend: str) -> Path:
    """The folder of a current export of ``model`` for ``backend``, exporting it when needed."""
    final = Path(weights_folder) / "exports" / backend
    reason = _stale_reason(final, backend, weights_sha256) if final.exists() else None
    if final.exists() and reason is None:
        return final
    if final.exists():
        LOG.warning("teacher: re-exporting LiteMedSAM for %s in %s (%s)", backend, final, reason)
    else:
        LOG.info("teacher: exporting LiteMedSAM for %s into %s (once; later runs reuse it)", backend, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{backend}-", dir=final.parent))
    try:
        _export(model, backend, work, weights_sha256)
        if final.exists() and _stale_reason(final, backend, weights_sha256) is not None:
            _move_aside(final, backend)
        try:
            os.rename(work, final)  # fails when another process put a (current) export there first
        except OSError:
            if _stale_reason(final, backend, weights_sha256) is not None:
                raise MedistillError(f"{final}: could not put the {backend} export in place; "
                                     "delete that folder and run again") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- runtimes


def _by_rank(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's two outputs as (masks, iou), told apart by rank (output names differ per exporter)."""
    masks = next(o for o in outputs if np.ndim(o) == 4)
    iou = next(o for o in outputs if np.ndim(o) == 2)
    return np.asarray(masks, np.float32), np.asarray(iou, np.float32)


class OnnxRuntimeRunner:
    """The ONNX export in ONNX Runtime (CPU execution provider, all graph optimisations)."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=providers)
        self._decoder = ort.InferenceSession(str(folder / "decoder.onnx"), options, providers=providers)
        self._encoder_input = self._encoder.get_inputs()[0].name
        self._decoder_inputs = [i.name for i in self._decoder.get_inputs()]

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self._encoder.run(None, {self._encoder_input: np.asarray(x, np.float32)})[0]

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(zip(self._decoder_inputs, (np.asarray(embedding, np.float32), np.asarray(boxes, np.float32))))
        return _by_rank(self._decoder.run(None, feeds))


class OpenVinoRunner:
    """The OpenVINO export on the CPU plugin at the requested inference precision."""

    def __init__(self, folder: Path, precision: str = "fp32", threads: int | None = None) -> None:
        self._encoder = compile_openvino(str(folder / "encoder.xml"), precision, threads)
        self._decoder = compile_openvino(str(folder / "decoder.xml"), precision, threads)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._encoder(np.asarray(x, np.float32))[0], np.float32)

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self._decoder([np.asarray(embedding, np.float32), np.asarray(boxes, np.float32)])
        return _by_rank([result[port] for port in self._decoder.outputs])


def make_runner(backend: str, model: Any, weights_folder: str | os.PathLike, precision: str = "fp32",
                compiled: bool = True, threads: int | None = None) -> Any:
    """The runner of ``backend`` for ``model``, whose converted weights are in ``weights_folder``
    (exported there first when that backend needs it)."""
    check_backend(backend, precision)
    if backend == "keras":
        return KerasRunner(model, compiled)
    folder = ensure_export(model, weights_folder, weights_sha256(weights_folder), backend)
    try:
        if backend == "onnxruntime":
            return OnnxRuntimeRunner(folder, threads)
        return OpenVinoRunner(folder, precision, threads)
    except ImportError as error:
        raise MedistillError(f"--teacher-backend {backend} needs the {error.name} package "
                             "(it is in requirements.txt); or use --teacher-backend keras") from error
