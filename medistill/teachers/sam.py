"""keras-hub's SAM (Segment Anything v1) as a :class:`~medistill.teachers.base.Teacher`.

Names (registered on import, :mod:`medistill.teachers.registry` imports this module):

* ``sam:<preset>`` — ``keras_hub.models.SAMImageSegmenter.from_preset(preset)``: a local
  preset directory (written by ``save_to_preset``; works offline) or a named preset such
  as ``sam_base_sa1b`` (downloaded from Kaggle: needs the internet);
* ``tiny-sam`` / ``tiny-sam:<size>`` — a tiny random SAM (64 px input unless ``size``
  is given) built from keras-hub's classes, for tests and smoke runs.

Per image: raw intensities min-max scaled to 0..255, grey replicated to RGB, longest
side resized to the encoder's input size ``S`` (``INTER_AREA`` when shrinking,
``INTER_LINEAR`` when enlarging, new side ``floor(side * S / max(H, W) + 0.5)``), the
preset's image converter's ``scale``/``offset`` applied (1/255 without a converter),
then padded bottom/right to ``S × S`` with the ImageNet mean, which the ViTDet encoder's
own normalisation maps to 0 (SAM pads with zeros after normalising). The converter's own
resizing is not used: it crops to the aspect ratio and would move the boxes.
Boxes ``(N, 4)`` become ``(N, 1, 2, 2)`` corners scaled by ``S / max(H, W)``. One
encoder pass per image; the boxes go through the prompt encoder and mask decoder in
chunks of ``box_batch``. Output mask 0 of 4 (the single-mask output) is kept: its
``(S/4, S/4)`` logits are resized to ``S × S``, cropped to the resized image, resized to
the original size (bilinear) and passed through the sigmoid. Scores: the IoU
prediction of mask 0. Features: the ``(S/16, S/16, C)`` image embedding, stride 16.
``predict_more`` (more boxes of an image already predicted) reuses that embedding and
runs only the prompt encoder and mask decoder.

Example::

    teacher = build_teacher("sam:/models/sam_base_sa1b")   # a local preset directory
    out = teacher.predict(image, np.array([[10, 12, 60, 70]]))
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medistill.data.preprocess import Geometry
from medistill.errors import MedistillError
from medistill.teachers.base import EncoderTeacher, Teacher
from medistill.teachers.litemedsam.preprocessing import logits_to_probabilities
from medistill.teachers.registry import register_teacher

# ViTDetBackbone normalises its input with these; padding with them gives SAM's zeros.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TINY_SAM_SIZE = 64
# keras-hub's SAM mask decoder corrupts memory on this stack (TF 2.21, CPU) when given
# 12 or more boxes at once (segfaults or "double free", eager and compiled alike);
# 8 ran clean in every trial, so boxes are decoded in chunks of at most 8.
SAFE_BOX_BATCH = 8


def preset_help() -> str:
    """The two ways to get a SAM preset, for error messages."""
    return ("Use either a local preset directory (one written by keras-hub's "
            "SAMImageSegmenter.save_to_preset, holding config.json and model.weights.h5): "
            "'sam:/path/to/preset_dir'; or a named preset such as 'sam:sam_base_sa1b' on a "
            "machine with internet access (keras-hub downloads presets from Kaggle).")


def _looks_like_path(preset: str) -> bool:
    """True for a directory path; False for a name or a handle (``kaggle://…``, ``hf://…``)."""
    if "://" in preset:
        return False
    return preset.startswith((".", "~", "/")) or os.sep in preset or Path(preset).exists()


def load_sam_segmenter(preset: str) -> Any:
    """A ``keras_hub.models.SAMImageSegmenter`` from a preset name or local directory.

    Raises :class:`MedistillError` naming both options when it cannot be loaded.

    >>> load_sam_segmenter("/nowhere/sam")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    MedistillError: SAM preset directory /nowhere/sam does not exist. ...
    """
    if _looks_like_path(preset):
        directory = Path(preset).expanduser()
        if not (directory / "config.json").is_file():
            state = "has no config.json" if directory.is_dir() else "does not exist"
            raise MedistillError(f"SAM preset directory {directory} {state}. {preset_help()}")
        preset = str(directory)
    import keras_hub

    try:
        return keras_hub.models.SAMImageSegmenter.from_preset(preset)
    except Exception as error:  # noqa: BLE001 - keras-hub raises many kinds (network, format)
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise MedistillError(f"could not load the keras-hub SAM preset {preset!r} "
                             f"({type(error).__name__}: {reason}). {preset_help()}") from error


def build_tiny_sam(image_size: int = TINY_SAM_SIZE, seed: int | None = 0) -> Any:
    """A tiny random ``SAMImageSegmenter`` (ViTDet of 2 layers, 8-channel embedding).

    ``image_size`` must be a multiple of 16. With ``seed`` the weights are reproducible
    (it seeds Keras and TensorFlow like ``keras.utils.set_random_seed``; Python's and
    NumPy's generators are restored afterwards).

    >>> build_tiny_sam(64).backbone.image_encoder.output.shape
    (None, 4, 4, 8)
    """
    import keras
    import keras_hub

    if image_size < 32 or image_size % 16:
        raise MedistillError(f"tiny-sam needs an image size that is a multiple of 16 and >= 32, got {image_size}")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    try:
        embedding = image_size // 16
        encoder = keras_hub.models.ViTDetBackbone(
            hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2,
            global_attention_layer_indices=[1], image_shape=(image_size, image_size, 3),
            patch_size=16, num_output_channels=8, window_size=2)
        prompt_encoder = keras_hub.layers.SAMPromptEncoder(
            hidden_size=8, image_embedding_size=(embedding, embedding),
            input_image_size=(image_size, image_size), mask_in_channels=16)
        mask_decoder = keras_hub.layers.SAMMaskDecoder(
            num_layers=2, hidden_size=8, intermediate_dim=32, num_heads=2, embedding_dim=8,
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=8)
        backbone = keras_hub.models.SAMBackbone(image_encoder=encoder, prompt_encoder=prompt_encoder,
                                                mask_decoder=mask_decoder)
        converter = keras_hub.layers.SAMImageConverter(image_size=(image_size, image_size), scale=1 / 255.0)
        preprocessor = keras_hub.models.SAMImageSegmenterPreprocessor(image_converter=converter)
        return keras_hub.models.SAMImageSegmenter(backbone=backbone, preprocessor=preprocessor)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def weights_digest(model: Any) -> str:
    """SHA-256 over a model's weight values, in order (identifies the weights)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def converter_scale_offset(segmenter: Any) -> tuple[np.ndarray, np.ndarray]:
    """The image converter's ``scale`` and ``offset`` as ``(3,)`` arrays (1/255 and 0 without one)."""
    converter = getattr(getattr(segmenter, "preprocessor", None), "image_converter", None)
    scale = getattr(converter, "scale", None) if converter is not None else 1 / 255.0
    offset = getattr(converter, "offset", None) if converter is not None else None
    scale = np.broadcast_to(np.asarray(1.0 if scale is None else scale, np.float32), (3,)).copy()
    offset = np.broadcast_to(np.asarray(0.0 if offset is None else offset, np.float32), (3,)).copy()
    return scale, offset


def preprocess_image(image: np.ndarray, size: int, scale: np.ndarray, offset: np.ndarray
                     ) -> tuple[np.ndarray, Geometry]:
    """Raw ``(H, W, C)`` image → ``(size, size, 3)`` float32 encoder input and its :class:`Geometry`.

    >>> x, g = preprocess_image(np.ones((20, 40, 1)), 64, np.full(3, 1 / 255.0), np.zeros(3))
    >>> x.shape, (g.resized_height, g.resized_width)
    ((64, 64, 3), (32, 64))
    """
    pixels = np.asarray(image, np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    geometry = Geometry.for_size(pixels.shape[0], pixels.shape[1], size)
    shrinking = geometry.resized_width < geometry.width
    resized = cv2.resize(pixels, (geometry.resized_width, geometry.resized_height),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    padded = np.empty((size, size, 3), np.float32)
    padded[:] = IMAGENET_MEAN
    padded[: geometry.resized_height, : geometry.resized_width] = resized.reshape(
        geometry.resized_height, geometry.resized_width, 3) * scale + offset
    return padded, geometry


def scale_boxes(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``(N, 4)`` xyxy boxes in original pixels → ``(N, 1, 2, 2)`` corners in the input frame."""
    scaled = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(geometry.scale)
    return scaled.reshape(-1, 1, 2, 2)


def upsample_logits(low_res: np.ndarray, size: int) -> np.ndarray:
    """``(N, s, s)`` low-resolution logits → ``(N, size, size)`` (bilinear), as SAM's postprocessing."""
    out = np.empty((len(low_res), size, size), np.float32)
    for i, plane in enumerate(np.asarray(low_res, np.float32)):
        out[i] = cv2.resize(plane, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


class SAMTeacher(EncoderTeacher):
    """A keras-hub ``SAMImageSegmenter`` behind the teacher contract.

    ``compiled`` wraps the encoder and decoder in ``tf.function`` (traced once per
    shape); ``jit_compile`` also asks XLA to compile them.

    Example::

        teacher = SAMTeacher(build_tiny_sam(64), source="tiny-sam")
        out = teacher.predict(np.random.rand(50, 70), [[5, 5, 40, 30]])
    """

    name = "sam"

    def __init__(self, segmenter: Any, source: str, box_batch: int = SAFE_BOX_BATCH, compiled: bool = True,
                 jit_compile: bool = False) -> None:
        self.segmenter = segmenter
        self.source = str(source)
        self.box_batch = max(1, min(int(box_batch), SAFE_BOX_BATCH))
        backbone = segmenter.backbone
        self.image_size = int(backbone.image_encoder.input.shape[1])
        self.scale, self.offset = converter_scale_offset(segmenter)
        self.weights_hash = weights_digest(segmenter)
        self._encode, self._decode = self._build_functions(compiled, jit_compile)

    def _build_functions(self, compiled: bool, jit_compile: bool) -> tuple[Any, Any]:
        backbone = self.segmenter.backbone
        encoder, prompt_encoder, mask_decoder = (backbone.image_encoder, backbone.prompt_encoder,
                                                 backbone.mask_decoder)

        def encode(images):
            return encoder(images, training=False)

        def decode(embedding, boxes):
            out = mask_decoder(image_embeddings=embedding, **prompt_encoder(boxes=boxes))
            return out["masks"], out["iou_pred"]

        if not compiled and not jit_compile:
            return encode, decode
        import tensorflow as tf

        size, (h, w, c) = self.image_size, tuple(encoder.output.shape[1:])
        options = {"jit_compile": True} if jit_compile else {}
        return (tf.function(encode, input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)],
                            **options),
                tf.function(decode, input_signature=[tf.TensorSpec((1, h, w, c), tf.float32),
                                                     tf.TensorSpec((None, 1, 2, 2), tf.float32)],
                            **options))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"source": self.source, "image_size": self.image_size, "channels": 3,
                "intensity": "min-max to 0..255, grey replicated",
                "resize": "longest side; cv2 INTER_AREA shrinking, INTER_LINEAR enlarging",
                "scale": self.scale.tolist(), "offset": self.offset.tolist(),
                "padding": "bottom/right with the ImageNet mean (0 after the encoder's normalisation)",
                "boxes": "box * S / max(H, W) as (N, 1, 2, 2)",
                "masks": "output 0; bilinear to S, crop, bilinear to original, sigmoid"}

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``(S, S, 3)`` preprocessed image → ``(S/16, S/16, C)`` image embedding."""
        return np.asarray(self._encode(np.asarray(x, np.float32)[None]))[0]

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embedding ``(h, w, C)`` and ``(N, 1, 2, 2)`` boxes → ``(N, S/4, S/4)`` logits, ``(N,)`` IoU."""
        batch = np.asarray(embedding, np.float32)[None]
        logits, ious = [], []
        for start in range(0, len(boxes), self.box_batch):
            masks, iou = self._decode(batch, np.asarray(boxes[start:start + self.box_batch], np.float32))
            logits.append(np.asarray(masks)[:, 0])
            ious.append(np.asarray(iou)[:, 0])
        if not logits:
            side = self.image_size // 4
            return np.zeros((0, side, side), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(logits), np.concatenate(ious)

    @property
    def input_size(self) -> int:
        return self.image_size

    def encoder_input(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        return preprocess_image(image, self.image_size, self.scale, self.offset)

    def decode_boxes(self, embedding: np.ndarray, geometry: Geometry,
                     boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low_res, iou = self.decode(embedding, scale_boxes(boxes, geometry))
        return logits_to_probabilities(upsample_logits(low_res, self.image_size), geometry), iou, low_res


def _sam(argument: str | None) -> Teacher:
    if not argument:
        raise MedistillError(f"teacher 'sam' needs a preset: 'sam:<preset-or-dir>'. {preset_help()}")
    return SAMTeacher(load_sam_segmenter(argument), source=argument)


def _tiny_sam(argument: str | None) -> Teacher:
    try:
        size = int(argument) if argument else TINY_SAM_SIZE
    except ValueError as error:
        raise MedistillError(f"'tiny-sam:<size>' takes an image size in pixels, got {argument!r}") from error
    teacher = SAMTeacher(build_tiny_sam(size), source=f"tiny-sam:{size}")
    teacher.name = "tiny-sam"
    return teacher


register_teacher("sam", _sam)
register_teacher("tiny-sam", _tiny_sam)
