"""The teacher contract: an image and its boxes in, per-box soft masks out.

A teacher is a frozen model prompted with boxes. :meth:`Teacher.predict` takes one raw
image (any size, grey ``(H, W)`` / ``(H, W, 1)`` or RGB ``(H, W, 3)``, raw intensities)
and its boxes ``(N, 4)`` xyxy in original pixels (pixel-edge convention of
:mod:`medistill.boxes.boxes_file`: a box around columns 3..7 is ``x1=3, x2=8``) and
returns a :class:`TeacherOutput` at the original resolution.

Box rule: boxes are clipped to the image (``[0, W] × [0, H]``); a box with zero or
negative area after clipping (so also one wholly outside the image) raises
:class:`~medistill.errors.MedistillError` naming its index and coordinates; so do boxes
that are not ``(N, 4)`` finite numbers. ``N = 0`` is allowed and gives empty outputs.

Uncertainty (MedDistill, METHODS.md §1): per box, the variance of its soft mask over
the pixels of that mask at the original resolution.

More boxes for an image already predicted: :meth:`Teacher.predict_more` takes the
first call's :class:`TeacherOutput` and reuses what it can (LiteMedSAM and SAM run only
their mask decoder on the cached image embedding); the default predicts again. The
teacher cache uses it for the stability of each mask under jittered boxes.

Several images at once (the teacher cache's pipeline): :meth:`Teacher.prepare` validates
an image and its boxes and does the teacher's preprocessing (so it can run on a reader
thread), :meth:`Teacher.predict_prepared` predicts a list of prepared images; encoder
teachers run their encoder on them in batches of ``encode_batch``. ``predict`` is the
same two steps for one image, so both paths give the same outputs.

Example::

    teacher = build_teacher("grabcut")
    out = teacher.predict(image, np.array([[10, 12, 60, 70]]))
    out.masks.shape        # (1, H, W) float32 in [0, 1]
    out.fused()            # (H, W) pixel-wise max over the boxes
    more = teacher.predict_more(image, np.array([[11, 12, 61, 69]]), out)
    outs = teacher.predict_prepared([teacher.prepare(image, boxes) for image, boxes in pairs])
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medistill.errors import MedistillError


@dataclass
class TeacherOutput:
    """What a teacher returns for one image.

    Attributes:
        masks: ``(N, H, W)`` float32 foreground probabilities per box, original size.
        uncertainties: ``(N,)`` float32, the variance of each soft mask over its pixels.
        scores: ``(N,)`` float32 model quality scores (SAM's IoU prediction), or None.
        features: ``(h, w, C)`` float32 image-encoder features, channels-last, or None.
        feature_stride: input pixels (of the teacher's padded square input) per feature
            pixel, or None when there are no features.
        boxes: ``(N, 4)`` float32 the clipped boxes actually used, original pixels.
    """

    masks: np.ndarray
    uncertainties: np.ndarray
    scores: np.ndarray | None
    features: np.ndarray | None
    feature_stride: int | None
    boxes: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)

    def fused(self) -> np.ndarray:
        """``(H, W)`` soft mask of the image: the pixel-wise max over its boxes (zeros if none)."""
        if len(self.masks) == 0:
            return np.zeros(self.masks.shape[1:], np.float32)
        return self.masks.max(axis=0).astype(np.float32)

    def image_uncertainty(self) -> float:
        """Mean of the per-box uncertainties (MedDistill's σ²); 0.0 without boxes."""
        return float(self.uncertainties.mean()) if len(self.uncertainties) else 0.0


@dataclass
class PreparedImage:
    """An image made ready for :meth:`Teacher.predict_prepared` by :meth:`Teacher.prepare`.

    Attributes:
        image: the validated ``(H, W, C)`` raw image.
        boxes: ``(N, 4)`` float32 boxes clipped to it.
        inputs: the teacher's own preprocessed input (an encoder teacher: the encoder
            input and its geometry), or None.
    """

    image: np.ndarray
    boxes: np.ndarray
    inputs: Any = None


def mask_uncertainty(masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` soft masks → ``(N,)`` float32 variance of each over its pixels."""
    masks = np.asarray(masks, np.float64)
    if masks.shape[0] == 0:
        return np.zeros((0,), np.float32)
    return masks.reshape(masks.shape[0], -1).var(axis=1).astype(np.float32)


def as_image(image: np.ndarray) -> np.ndarray:
    """Validate a raw image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` finite numbers → ``(H, W, C)``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or min(image.shape[:2]) < 1:
        raise MedistillError(
            f"teacher input must be an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or not np.all(np.isfinite(image)):
        raise MedistillError("teacher input image contains NaN, infinite or non-numeric values")
    return image


def clip_boxes(boxes: Any, height: int, width: int) -> np.ndarray:
    """``(N, 4)`` xyxy boxes → float32 boxes clipped to ``[0, W] × [0, H]``.

    Raises :class:`MedistillError` naming the box for a wrong shape, a non-finite value,
    or a box with no area inside the image (zero area, inverted, or wholly outside).

    >>> clip_boxes([[-5, 2, 20, 9]], height=8, width=16).tolist()
    [[0.0, 2.0, 16.0, 8.0]]
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise MedistillError(f"boxes must have shape (N, 4) as [x1, y1, x2, y2], got {array.shape}")
    for i, box in enumerate(array):
        if not np.all(np.isfinite(box)):
            raise MedistillError(f"box {i} {box.tolist()} has a non-finite coordinate")
    clipped = array.copy()
    clipped[:, [0, 2]] = np.clip(array[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(array[:, [1, 3]], 0, height)
    for i, (box, cut) in enumerate(zip(array, clipped)):
        if cut[2] <= cut[0] or cut[3] <= cut[1]:
            raise MedistillError(
                f"box {i} {box.tolist()} has no area inside the {width}x{height} image "
                "(zero-area, inverted or wholly outside); fix or drop it in the boxes file")
    return clipped.astype(np.float32)


class Teacher(abc.ABC):
    """A frozen box-prompted segmentation model. Subclasses implement :meth:`_predict`.

    Attributes: ``name`` (registry name), ``weights_hash`` (identifies the weights, for
    cache provenance; "" when there are none) and ``preprocessing`` (a JSON-ready dict).
    """

    name: str = "teacher"
    weights_hash: str = ""
    backend: str = ""            # where the model runs ("keras", "onnxruntime", ...); "" when it has none
    precision: str = "fp32"
    encode_batch: int = 1        # images per encoder call in predict_prepared

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {}

    def predict(self, image: np.ndarray, boxes: Any) -> TeacherOutput:
        """Soft masks for every box of ``image``; see the module docstring for the rules."""
        return self.predict_prepared([self.prepare(image, boxes)])[0]

    def prepare(self, image: np.ndarray, boxes: Any) -> PreparedImage:
        """Validate ``image`` and clip ``boxes`` (same rules as :meth:`predict`), then preprocess."""
        image = as_image(image)
        clipped = clip_boxes(boxes, *image.shape[:2])
        return PreparedImage(image, clipped, self._prepare_inputs(image))

    def _prepare_inputs(self, image: np.ndarray) -> Any:
        """The teacher's own preprocessing of a validated image (None: nothing ahead of time)."""
        return None

    def predict_prepared(self, items: list[PreparedImage]) -> list[TeacherOutput]:
        """One :class:`TeacherOutput` per prepared image, in order (as :meth:`predict` gives)."""
        outputs = self._predict_prepared(list(items))
        for item, out in zip(items, outputs):
            out.boxes = item.boxes
        return outputs

    def _predict_prepared(self, items: list[PreparedImage]) -> list[TeacherOutput]:
        """Override to predict several images together; the default predicts one by one."""
        return [self._predict(item.image, item.boxes) for item in items]

    @abc.abstractmethod
    def _predict(self, image: np.ndarray, boxes: np.ndarray) -> TeacherOutput:
        """``image`` validated ``(H, W, C)``; ``boxes`` clipped float32 ``(N, 4)``."""

    def predict_more(self, image: np.ndarray, boxes: Any, previous: TeacherOutput) -> TeacherOutput:
        """Soft masks for more ``boxes`` of an image already predicted (``previous`` is
        ``self.predict(image, ...)`` of the same image).

        Same box rules and output as :meth:`predict`; teachers with an image encoder
        reuse its output from ``previous`` (see :meth:`_predict_more`).
        """
        image = as_image(image)
        height, width = image.shape[:2]
        if tuple(previous.masks.shape[1:]) != (height, width):
            raise MedistillError(f"predict_more: the previous output is for a {previous.masks.shape[2]}x"
                                 f"{previous.masks.shape[1]} image, this image is {width}x{height}; "
                                 "pass the output of predict() on the same image")
        clipped = clip_boxes(boxes, height, width)
        out = self._predict_more(image, clipped, previous)
        out.boxes = clipped
        return out

    def _predict_more(self, image: np.ndarray, boxes: np.ndarray, previous: TeacherOutput) -> TeacherOutput:
        """Override to reuse ``previous`` (e.g. its image embedding); the default predicts again."""
        return self._predict(image, boxes)

    def describe(self) -> dict[str, Any]:
        """Provenance: name, weights hash and preprocessing."""
        return {"teacher": self.name, "weights_hash": self.weights_hash,
                "preprocessing": self.preprocessing}


class EncoderTeacher(Teacher):
    """A SAM-like teacher: one image-encoder pass per image, then a box decoder per box.

    Subclasses give :meth:`encoder_input` (raw image → encoder input and its
    :class:`~medistill.data.preprocess.Geometry`), :meth:`encode`, :meth:`decode_boxes`
    (embedding, geometry, boxes → original-size probabilities, IoU scores, low-res
    logits) and :attr:`input_size` (the encoder's square input side). The encoder output
    is kept in ``extras["embedding"]``, so :meth:`predict_more` runs only the decoder.
    """

    input_size: int

    def encoder_input(self, image: np.ndarray) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode_boxes(self, embedding: np.ndarray, geometry: Any,
                     boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode_many(self, xs: np.ndarray) -> np.ndarray:
        """``(B, S, S, 3)`` encoder inputs → ``(B, h, w, D)``; override to run them as one batch."""
        return np.stack([self.encode(x) for x in xs])

    def _predict(self, image: np.ndarray, boxes: np.ndarray) -> TeacherOutput:
        x, geometry = self.encoder_input(image)
        return self._from_embedding(self.encode(x), geometry, boxes)

    def _prepare_inputs(self, image: np.ndarray) -> Any:
        return self.encoder_input(image)

    def _predict_prepared(self, items: list[PreparedImage]) -> list[TeacherOutput]:
        """The encoder on ``encode_batch`` images at a time, then the decoder image by image."""
        outputs = []
        step = max(1, int(self.encode_batch))
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            inputs = [item.inputs if item.inputs is not None else self.encoder_input(item.image) for item in chunk]
            embeddings = self.encode_many(np.stack([x for x, _ in inputs]))
            outputs += [self._from_embedding(embedding, geometry, item.boxes)
                        for embedding, (_, geometry), item in zip(embeddings, inputs, chunk)]
        return outputs

    def _from_embedding(self, embedding: np.ndarray, geometry: Any, boxes: np.ndarray) -> TeacherOutput:
        masks, iou, low_res = self.decode_boxes(embedding, geometry, boxes)
        features = np.asarray(embedding, np.float32)
        return TeacherOutput(masks=masks, uncertainties=mask_uncertainty(masks),
                             scores=np.asarray(iou, np.float32), features=features,
                             feature_stride=self.input_size // embedding.shape[0], boxes=boxes,
                             extras={"low_res_logits": low_res, "geometry": geometry.to_dict(),
                                     "embedding": features})

    def _predict_more(self, image: np.ndarray, boxes: np.ndarray, previous: TeacherOutput) -> TeacherOutput:
        """Only the decoder, on the embedding and geometry of ``previous`` (the encoder again if absent)."""
        from medistill.data.preprocess import Geometry

        embedding, geometry = previous.extras.get("embedding"), previous.extras.get("geometry")
        if embedding is None or geometry is None:
            return self._predict(image, boxes)
        return self._from_embedding(embedding, Geometry.from_dict(geometry), boxes)
