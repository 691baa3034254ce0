"""SSCD's pseudo labels (docs/methods.md §4): the pseudo-variance gate and the largest component.

:func:`pv_gated_pseudo_labels` turns a teacher's probabilities into labels (runner-up class
where :func:`pseudo_variance` and the second probability are high, arg-max elsewhere);
:func:`largest_component_per_class` (numpy) and :func:`largest_component_tf` keep one
component per class. :func:`as_class_probabilities` reads a one-channel map ``p`` as the
two classes ``[1 − p, p]``; the rest of SSCD (:mod:`medistill.losses.sscd`) uses it too.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy import ndimage


def as_class_probabilities(probs: tf.Tensor) -> tf.Tensor:
    """``(..., K)`` probabilities as float32; a one-channel map ``p`` becomes ``[1 − p, p]``."""
    probs = tf.cast(tf.convert_to_tensor(probs), tf.float32)
    if probs.shape[-1] == 1:
        return tf.concat([1.0 - probs, probs], axis=-1)
    return probs


def pseudo_variance(probs: tf.Tensor) -> tf.Tensor:
    """``PV = (n−1)/n · Σ_c (p_c − (1−p_c)/(n−1))²`` over the ``n = K`` classes: ``(..., K) -> (...)``.

    ``(1−p_c)/(n−1)`` is the mean probability of the other classes. PV is 0 for the uniform
    distribution and 1 for a one-hot one; it equals ``(n·Σ p_c² − 1)/(n − 1)``.
    """
    probs = as_class_probabilities(probs)
    n = probs.shape[-1]
    if n is None or n < 2:
        raise ValueError(f"pseudo_variance needs at least two classes, got probabilities of shape {probs.shape}")
    others = (1.0 - probs) / (n - 1)
    return (n - 1) / n * tf.reduce_sum(tf.square(probs - others), axis=-1)


def pv_gated_pseudo_labels(probs: tf.Tensor, pv_threshold: float = 0.8,
                           second_threshold: float = 0.3) -> tf.Tensor:
    """Pseudo labels ``(B, H, W)`` int32 from probabilities ``(B, H, W, K)`` with the PV gate.

    Reading of docs/methods.md §4 ("runner-up class where PV > 0.8 and p₂ > 0.3,
    arg-max elsewhere"), which is also what the authors' released code computes: at a pixel where
    ``pseudo_variance > pv_threshold`` *and* the second-highest probability ``p₂ >
    second_threshold``, the label is the runner-up class (the top-2 class); everywhere
    else it is the arg-max class. The seed README says nothing more.

    Consequence worth knowing: ``p₂ > 0.3`` forces ``p₁ < 0.7`` and so ``Σ p² ≤ 0.58``,
    i.e. ``PV ≤ (0.58·n − 1)/(n − 1) < 0.58``; with the default thresholds the gate can never
    open and the labels equal the arg-max. The gate acts only with a lower
    ``pv_threshold`` (or ``second_threshold``); both are options of the SSCD recipe.

    ``K = 2``: ``PV = (p₁ − p₂)²`` and the runner-up is simply the other class, so an
    open gate flips the label. A one-channel map (``p = P(foreground)``) is treated as the
    two classes ``[1 − p, p]``; the labels are then 0/1.
    """
    probs = as_class_probabilities(probs)
    top = tf.math.top_k(probs, k=2)
    gate = (pseudo_variance(probs) > pv_threshold) & (top.values[..., 1] > second_threshold)
    return tf.where(gate, top.indices[..., 1], top.indices[..., 0])


_EIGHT_CONNECTED = np.ones((3, 3), bool)


def largest_component_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest 8-connected component of every foreground class, per image.

    ``labels`` is ``(B, H, W)`` (or one ``(H, W)`` map); pixels of smaller components become
    background (0). Between equally large components the first in raster order is kept.
    A class absent from an image stays absent.
    """
    labels = np.asarray(labels)
    single = labels.ndim == 2
    batch = labels[None] if single else labels
    if batch.ndim != 3:
        raise ValueError(f"labels must be (B, H, W) or (H, W), got shape {labels.shape}")
    cleaned = np.zeros_like(batch)
    for index, image in enumerate(batch):
        for cls in range(1, max(int(num_classes), 2)):
            components, count = ndimage.label(image == cls, structure=_EIGHT_CONNECTED)
            if count == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            cleaned[index][components == 1 + int(np.argmax(sizes))] = cls
    return cleaned[0] if single else cleaned


def largest_component_tf(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """:func:`largest_component_per_class` inside a graph (``tf.numpy_function``; no gradient)."""
    labels = tf.cast(labels, tf.int32)
    cleaned = tf.numpy_function(lambda array: largest_component_per_class(array, num_classes),
                                [labels], tf.int32, stateful=False, name="largest_component")
    cleaned.set_shape(labels.shape)
    return cleaned
