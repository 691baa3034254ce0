"""LiteMedSAM as a :class:`~medistill.teachers.base.Teacher`.

One image-encoder pass per image; the boxes go through the prompt encoder and mask decoder
together, in chunks of ``box_batch`` (each box holds a 256×256×32 upscaled embedding, so
chunks bound memory). Features: the ``(64, 64, 256)`` image embedding, stride 4 in the
256 × 256 padded input frame (so it covers the padding too).

:meth:`~medistill.teachers.base.Teacher.predict_more` (more boxes of an image already
predicted, e.g. the jittered boxes of the cache's stability record) runs only the prompt
encoder and mask decoder on the previous output's embedding, never the image encoder.

Example::

    teacher = LiteMedSAMTeacher()                      # bundled checkpoint, Keras
    out = teacher.predict(image, boxes)                # TeacherOutput at original size
    fast = LiteMedSAMTeacher(backend="openvino")       # exported once, then reused
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medistill.data.preprocess import Geometry
from medistill.teachers.base import EncoderTeacher
from medistill.teachers.litemedsam import preprocessing as prep


class LiteMedSAMTeacher(EncoderTeacher):
    """LiteMedSAM loaded from a (converted, cached) PyTorch checkpoint, run by one backend.

    ``backend``: ``keras`` (TensorFlow), ``onnxruntime`` or ``openvino`` (the Keras model
    exported once next to the converted weights; :mod:`.backends`); ``precision``: ``fp32``
    or ``bf16`` (OpenVINO only). ``encode_batch`` images go through the encoder together in
    :meth:`predict_prepared`; ``threads`` caps the ONNX Runtime / OpenVINO threads (None:
    every core). The Keras model is always loaded (:attr:`model`: exports and co-learning use it).
    """

    name = "litemedsam"

    def __init__(self, checkpoint: str | os.PathLike | None = None, box_batch: int = 16,
                 compiled: bool = True, backend: str = "keras", precision: str = "fp32",
                 encode_batch: int = 1, threads: int | None = None, resize: str = "area") -> None:
        """``compiled=False`` runs Keras eagerly: slower per image, but no tracing (~20 s on CPU).
        ``resize``: ``area`` (LiteMedSAM's own) or ``bilinear`` upscaling (:mod:`.preprocessing`)."""
        from medistill.teachers.litemedsam.backends import check_backend, make_runner
        from medistill.teachers.litemedsam.convert import load_litemedsam

        check_backend(backend, precision)
        if resize not in prep.RESIZE_CHOICES:
            raise ValueError(f"resize must be one of {', '.join(prep.RESIZE_CHOICES)}, got {resize!r}")
        self.resize = resize
        self.model, self.info = load_litemedsam(checkpoint)
        self.weights_hash = str(self.info["sha256"])
        self.checkpoint = self.info["checkpoint"]
        self.box_batch = max(1, int(box_batch))
        self.backend, self.precision = backend, precision
        self.encode_batch = max(1, int(encode_batch))
        self.runner = make_runner(backend, self.model, self.info["folder"], precision=precision,
                                  compiled=compiled, threads=threads)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"image_size": self.model.image_size, "channels": 3, "resize": prep.RESIZE_CHOICES[self.resize],
                "normalisation": "minmax after resize", "padding": "zeros bottom/right",
                "boxes": "trunc(box * size / max(H, W))",
                "masks": "crop, bilinear resize of logits, sigmoid"}

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``(S, S, 3)`` preprocessed image → ``(h, w, D)`` embedding."""
        return self.encode_many(np.asarray(x, np.float32)[None])[0]

    def encode_many(self, xs: np.ndarray) -> np.ndarray:
        """``(B, S, S, 3)`` preprocessed images → ``(B, h, w, D)`` embeddings, in one call."""
        return np.asarray(self.runner.encode(np.asarray(xs, np.float32)), np.float32)

    def decode(self, embedding: np.ndarray, boxes_256: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embedding ``(h, w, D)`` and boxes in the network frame → ``(N, S, S)`` logits, ``(N,)`` IoU."""
        logits, ious = [], []
        batch = np.asarray(embedding, np.float32)[None]
        for start in range(0, len(boxes_256), self.box_batch):
            chunk = np.asarray(boxes_256[start:start + self.box_batch], np.float32)
            masks, iou = self.runner.decode(batch, chunk)
            logits.append(np.asarray(masks)[:, 0])
            ious.append(np.asarray(iou)[:, 0])
        size = self.model.image_size
        if not logits:
            return np.zeros((0, size, size), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(logits), np.concatenate(ious)

    @property
    def input_size(self) -> int:
        return self.model.image_size

    def encoder_input(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        return prep.preprocess_image(image, self.model.image_size, self.resize)

    def decode_boxes(self, embedding: np.ndarray, geometry: Geometry,
                     boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low_res, iou = self.decode(embedding, prep.scale_boxes(boxes, geometry, self.model.image_size))
        return prep.logits_to_probabilities(low_res, geometry), iou, low_res
