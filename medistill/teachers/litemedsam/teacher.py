"""LiteMedSAM as a :class:`~medistill.teachers.base.Teacher`.

One image-encoder pass per image; the boxes go through the prompt encoder and mask decoder
together, in chunks of ``box_batch`` (each box holds a 256×256×32 upscaled embedding, so
chunks bound memory). Features: the ``(64, 64, 256)`` image embedding, stride 4 in the
256 × 256 padded input frame (so it covers the padding too).

:meth:`~medistill.teachers.base.Teacher.predict_more` (more boxes of an image already
predicted, e.g. the jittered boxes of the cache's stability record) runs only the prompt
encoder and mask decoder on the previous output's embedding, never the image encoder.

Example::

    teacher = LiteMedSAMTeacher()                      # bundled checkpoint
    out = teacher.predict(image, boxes)                # TeacherOutput at original size
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medistill.data.preprocess import Geometry
from medistill.teachers.base import EncoderTeacher
from medistill.teachers.litemedsam import preprocessing as prep


class LiteMedSAMTeacher(EncoderTeacher):
    """LiteMedSAM in Keras, loaded from a (converted, cached) PyTorch checkpoint."""

    name = "litemedsam"

    def __init__(self, checkpoint: str | os.PathLike | None = None, box_batch: int = 16,
                 compiled: bool = True) -> None:
        """``compiled=False`` runs eagerly: slower per image, but no tracing (~20 s on CPU)."""
        import tensorflow as tf

        from medistill.teachers.litemedsam.convert import load_litemedsam

        self.model, self.info = load_litemedsam(checkpoint)
        self.weights_hash = str(self.info["sha256"])
        self.checkpoint = self.info["checkpoint"]
        self.box_batch = max(1, int(box_batch))
        size = self.model.image_size
        embed = self.model.embedding_size
        dim = int(self.model.config["embed_dim"])
        self._encode, self._decode = self.model.encode, self.model.decode
        if not compiled:
            return
        self._encode = tf.function(self.model.encode, input_signature=[
            tf.TensorSpec((1, size, size, 3), tf.float32)])
        self._decode = tf.function(self.model.decode, input_signature=[
            tf.TensorSpec((1, embed, embed, dim), tf.float32), tf.TensorSpec((None, 4), tf.float32)])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"image_size": self.model.image_size, "channels": 3, "resize": "longest side, cv2 INTER_AREA",
                "normalisation": "minmax after resize", "padding": "zeros bottom/right",
                "boxes": "trunc(box * size / max(H, W))",
                "masks": "crop, bilinear resize of logits, sigmoid"}

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``(S, S, 3)`` preprocessed image → ``(h, w, D)`` embedding."""
        return np.asarray(self._encode(np.asarray(x, np.float32)[None]))[0]

    def decode(self, embedding: np.ndarray, boxes_256: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embedding ``(h, w, D)`` and boxes in the network frame → ``(N, S, S)`` logits, ``(N,)`` IoU."""
        logits, ious = [], []
        batch = np.asarray(embedding, np.float32)[None]
        for start in range(0, len(boxes_256), self.box_batch):
            chunk = np.asarray(boxes_256[start:start + self.box_batch], np.float32)
            masks, iou = self._decode(batch, chunk)
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
        return prep.preprocess_image(image, self.model.image_size)

    def decode_boxes(self, embedding: np.ndarray, geometry: Geometry,
                     boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low_res, iou = self.decode(embedding, prep.scale_boxes(boxes, geometry, self.model.image_size))
        return prep.logits_to_probabilities(low_res, geometry), iou, low_res
