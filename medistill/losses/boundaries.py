"""Label-map helpers for the losses: thin class contours and label-shape normalisation.

The contours are EDSDF's boundary targets (docs/methods.md §2).

KAMSD supervises a boundary head with thin ground-truth contours. A data set without
``boundaries/`` masks gets them from its label maps with :func:`boundary_map`, which uses
TensorFlow ops only, so it runs inside a ``tf.data`` map function, batched or not.

Contour rule: a pixel is on the contour when its label is a foreground class (> 0) and
its ``(2·width+1) × (2·width+1)`` neighbourhood *inside the image* holds a different
label. The contour therefore lies on the inner side of every foreground region, both
regions get a contour where two foreground classes touch, background pixels are never
contour, and the image border is not a contour (pixels outside the image do not count).

Example:
    >>> import numpy as np
    >>> labels = np.zeros((6, 6), "int32")
    >>> labels[1:5, 1:5] = 1
    >>> boundary_map(labels).numpy().astype(int)
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 0, 0, 1, 0],
           [0, 1, 0, 0, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0, 0]])
"""

from __future__ import annotations

import tensorflow as tf

from medistill.errors import MedistillError


def label_map(labels: tf.Tensor) -> tf.Tensor:
    """``(B, H, W)`` int32 labels from ``(B, H, W)`` or ``(B, H, W, 1)`` (any dtype)."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:
        if labels.shape[-1] not in (1, None):
            raise MedistillError(
                f"labels of shape {labels.shape} have {labels.shape[-1]} channels; pass a "
                "label map (B, H, W) or (B, H, W, 1) with class indices, not one-hot masks"
            )
        labels = labels[..., 0]
    return tf.cast(labels, tf.int32)


def boundary_map(labels: tf.Tensor, width: int = 1) -> tf.Tensor:
    """Thin contours of every foreground region as a float32 ``{0, 1}`` map.

    Args:
        labels: integer label map ``(B, H, W)``, ``(B, H, W, 1)`` or unbatched ``(H, W)``;
            0 is background.
        width: contour thickness in pixels (the neighbourhood is ``2·width+1`` wide).

    Returns:
        ``(B, H, W)`` float32 (``(H, W)`` for unbatched input), 1 on the contour.
    """
    if int(width) < 1:
        raise MedistillError(f"boundary width must be at least 1 pixel, got {width}")
    labels = tf.convert_to_tensor(labels)
    rank = labels.shape.rank
    if rank not in (2, 3, 4):
        raise MedistillError(
            f"boundary_map needs labels (H, W), (B, H, W) or (B, H, W, 1), got shape {labels.shape}"
        )
    batched = label_map(labels) if rank != 2 else tf.cast(labels, tf.int32)[None]
    values = tf.cast(batched, tf.float32)[..., None]
    window = 2 * int(width) + 1
    # "SAME" max pooling ignores the padding, so only pixels inside the image count.
    largest = tf.nn.max_pool2d(values, window, strides=1, padding="SAME")
    smallest = -tf.nn.max_pool2d(-values, window, strides=1, padding="SAME")
    differs = tf.logical_or(largest > values, smallest < values)
    contour = tf.cast(tf.logical_and(differs, values > 0), tf.float32)[..., 0]
    return contour[0] if rank == 2 else contour
