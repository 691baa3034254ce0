"""Raw 2-D images → probabilities and label maps, with optional test-time flips.

The one prediction path of ``medistill predict`` and ``medistill evaluate``: the model's
recorded preprocessing (:func:`medistill.data.preprocess.preprocess_image`), the
runtime's forward pass (any :class:`medistill.export.Predictor`), the activation,
and :func:`~medistill.data.preprocess.restore` to the original size. Numpy and OpenCV
only: no TensorFlow unless the predictor itself is a Keras model.

Test-time augmentation (``tta=True``) averages the probabilities of the image and its
left-right, up-down and doubly flipped copies. Only the resized image is flipped, inside
its padded square, so the zero padding stays at the bottom and right as in training.

Example::

    predictor = open_predictor("runs/unet")
    probs = predict_probabilities(predictor, [image_a, image_b], tta=True)
    masks = [mask_labels(predictor, p) for p in probs]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medistill.data.preprocess import Geometry, preprocess_image, restore
from medistill.errors import MedistillError
from medistill.export import Predictor
from medistill.predict.postprocess import remove_specks

# Axes flipped in each test-time copy of one (S, S[, C]) image: none, left-right, up-down, both.
FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (0,), (0, 1))


def predict_probabilities(predictor: Predictor, images: Sequence[np.ndarray], tta: bool = False,
                          batch: int = 8) -> list[np.ndarray]:
    """Probabilities ``(H, W)`` (binary) or ``(H, W, K)`` for raw images ``(H, W, C)``, at their own size.

    ``batch`` images go through the network at a time (times 4 with ``tta``).
    """
    results: list[np.ndarray] = []
    for start in range(0, len(images), batch):
        prepared = [preprocess_image(image, predictor.card.preprocess) for image in images[start:start + batch]]
        xs = [x for x, _ in prepared]
        geometries = [geometry for _, geometry in prepared]
        probs = _flipped_average(predictor, xs, geometries) if tta else \
            predictor.network_probabilities(np.stack(xs))
        results.extend(restore(prob, geometry) for prob, geometry in zip(probs, geometries))
    return results


def _flip_content(array: np.ndarray, geometry: Geometry, axes: tuple[int, ...]) -> np.ndarray:
    """``array`` (S, S[, C]) with its resized-image region flipped along ``axes``; padding stays."""
    if not axes:
        return array
    flipped = array.copy()
    region = (slice(0, geometry.resized_height), slice(0, geometry.resized_width))
    flipped[region] = np.flip(array[region], axes)
    return flipped


def _flipped_average(predictor: Predictor, xs: list[np.ndarray], geometries: list[Geometry]) -> np.ndarray:
    batch = np.stack([_flip_content(x, geometry, axes) for axes in FLIPS for x, geometry in zip(xs, geometries)])
    probs = predictor.network_probabilities(batch)
    count = len(xs)
    total = np.zeros_like(probs[:count])
    for copy, axes in enumerate(FLIPS):  # flipping back is the same flip
        for index, geometry in enumerate(geometries):
            total[index] += _flip_content(probs[copy * count + index], geometry, axes)
    return total / len(FLIPS)


def mask_labels(predictor: Predictor, prob: np.ndarray, threshold: float = 0.5,
                noise_floor: bool = True) -> np.ndarray:
    """Label maps of probabilities (:meth:`Predictor.labels`), with the card's noise floor when ``noise_floor``.

    The noise floor (``card.min_component``, a fraction of a mask's pixels) removes smaller
    components from each 2-D mask, slice by slice for a stack.
    """
    labels = predictor.labels(prob, threshold)
    return remove_specks(labels, predictor.card.min_component) if noise_floor else labels


def png_mask_values(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A label map as the 8-bit values of a mask PNG.

    The rule: a binary model (``num_classes == 2``) writes 0 (background) and 255
    (foreground), viewable as is; a K-class model writes its labels 0..K-1 unchanged.
    """
    if num_classes == 2:
        return (labels > 0).astype(np.uint8) * 255
    if num_classes > 256:
        raise MedistillError(f"a model with {num_classes} classes cannot write 8-bit mask PNGs (at most 256)")
    return labels.astype(np.uint8)
