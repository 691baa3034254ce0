"""Shape-intensity knowledge distillation (SIKD, docs/methods.md §5).

The teacher learns from the *class-wise averaged* image, in which every pixel takes
the mean intensity of all pixels of its ground-truth class in that image::

    x̄(p) = Σ_q 1[y_q = y_p] x_q / (Σ_q 1[y_q = y_p] + 1e-8)

so only shape and per-class intensity remain. The student sees the original image and
is trained with ``CE(z_s, y) + 2.0·MSE(F_s, F_t)`` on the penultimate features, the
frozen teacher seeing ``x̄``.

:func:`classwise_average` uses TensorFlow ops only (it runs in a ``tf.data`` map
function, batched or not, with unknown batch size).

Example:
    >>> import numpy as np
    >>> image = np.array([[[1.0], [3.0]], [[5.0], [7.0]]], "float32")  # (2, 2, 1)
    >>> labels = np.array([[0, 1], [1, 1]], "int32")
    >>> classwise_average(image, labels, num_classes=2).numpy()[..., 0]
    array([[1., 5.],
           [5., 5.]], dtype=float32)
"""

from __future__ import annotations

import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.boundaries import label_map
from medistill.losses.kamsd import (
    as_float32,
    match_spatial_size,
    mean_squared_error_per_example,
    require_num_classes,
    require_same_channels,
)

DEFAULT_FEATURE_WEIGHT = 2.0
COUNT_EPSILON = 1e-8


def classwise_average(image: tf.Tensor, labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Replace every pixel by its class's mean intensity, per channel and per image.

    Args:
        image: ``(B, H, W, C)`` or unbatched ``(H, W, C)`` float image.
        labels: ``(B, H, W)`` (or ``(B, H, W, 1)``) / ``(H, W)`` integer class indices.
        num_classes: number of classes; a label outside ``0..num_classes-1`` belongs
            to no class and its pixel becomes 0. A class absent from an image adds
            nothing (its count is 0, no division by zero).

    Returns:
        float32 image of the input's shape.
    """
    if int(num_classes) < 1:
        raise MedistillError(f"classwise_average needs num_classes >= 1, got {num_classes}")
    image = as_float32(image)
    labels = tf.convert_to_tensor(labels)
    if image.shape.rank == 3:
        return classwise_average(image[None], labels[None], num_classes)[0]
    if image.shape.rank != 4:
        raise MedistillError(
            f"classwise_average needs an image (H, W, C) or (B, H, W, C), got shape {image.shape}"
        )
    onehot = tf.one_hot(label_map(labels), int(num_classes), dtype=tf.float32)  # (B, H, W, K)
    sums = tf.einsum("bhwk,bhwc->bkc", onehot, image)
    counts = tf.reduce_sum(onehot, axis=[1, 2])[..., None]  # (B, K, 1)
    means = sums / (counts + COUNT_EPSILON)
    return tf.einsum("bhwk,bkc->bhwc", onehot, means)


def cross_entropy_per_example(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Pixel-mean BCE (one logit channel, foreground = label > 0) or softmax CE: ``(B,)``."""
    labels = label_map(y_true)
    logits = as_float32(logits)
    if logits.shape[-1] == 1:
        target = tf.cast(labels > 0, tf.float32)[..., None]
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
        return tf.reduce_mean(bce, axis=[1, 2, 3])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(ce, axis=[1, 2])


def sikd_loss_per_example(
    y_true: tf.Tensor,
    student_logits: tf.Tensor,
    student_feat: tf.Tensor,
    teacher_feat: tf.Tensor,
    num_classes: int,
    feature_weight: float = DEFAULT_FEATURE_WEIGHT,
) -> tf.Tensor:
    """``CE(z_s, y) + feature_weight·MSE(F_s, stop_gradient(F_t))``, shape ``(B,)``.

    ``num_classes`` is 1 (or 2) for a one-logit model, else the softmax channel count.
    The features must have the same channel count; a student feature of another
    height/width is resized bilinearly to the teacher's.
    """
    student_logits = as_float32(student_logits)
    require_num_classes(student_logits, num_classes, "SIKD")
    student = as_float32(student_feat)
    teacher = tf.stop_gradient(as_float32(teacher_feat))
    require_same_channels(student, teacher, "SIKD features")
    student = match_spatial_size(student, teacher)
    feature = mean_squared_error_per_example(student, teacher)
    return cross_entropy_per_example(y_true, student_logits) + float(feature_weight) * feature
