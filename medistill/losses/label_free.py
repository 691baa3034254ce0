"""Label-free terms that keep a distilled student from collapsing on small targets.

MedDistill's additions (docs/methods.md §1, deviations; docs/label_free_losses.md).

The released MedDistill terms (:mod:`medistill.losses.distillation`) average over
pixels, so a target covering under 1 % of the image is worth under 1 % of the loss and
"nothing here" is a near-optimal student. These terms (docs/label_free_losses.md) use
the teacher's soft mask ``S`` and the boxes themselves:

- :func:`confidence_weights`: per-pixel weights ``|2S − 1|^γ`` (0 where the teacher is
  undecided, 1 where it is sure), for :func:`weighted_soft_bce_per_example`;
- :func:`soft_dice_loss_per_example`: the region term ``1 − soft Dice(σ(z), S)`` per
  image, independent of the target's size. Empty-target rule: an image whose soft
  target holds less than ``min_target`` pixels of mass gets 0 (the term has nothing to
  say there; negatives are taught by the pixel terms and :func:`outside_box_per_example`);
- :func:`box_projection_per_example`: the box-tightness (projection) prior: inside each
  box, every row and every column crossing it holds some foreground, i.e. the student's
  mask max-projected onto the box's x and y ranges is 1 (Dice against the box's own
  projection), averaged over the boxes with their detector scores as weights;
- :func:`outside_box_per_example`: pixels outside every box are background (BCE towards
  0), scaled per image by a trust weight (the detector's scores; 0 for images whose
  emptiness is not trusted).

Boxes enter as rasterised row and column indicators in the student frame
(:func:`rasterise_boxes`), so a flip of the image is a reversal of the indicators.
Every function returns ``(B,)`` float32 and treats targets as constants.

Example:
    >>> import numpy as np
    >>> soft = np.zeros((1, 8, 8), "float32"); soft[0, 2:4, 2:4] = 1.0
    >>> rows, cols = rasterise_boxes(np.array([[2, 2, 4, 4]], "float32"), scale=1.0, size=8)
    >>> good = np.where(soft > 0.5, 20.0, -20.0)[..., None].astype("float32")
    >>> round(float(soft_dice_loss_per_example(soft, good)[0]), 3)
    0.0
    >>> round(float(box_projection_per_example(good, rows[None], cols[None], np.ones((1, 1), "float32"))[0]), 3)
    0.0
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from medistill.losses.distillation import flat_mask_pair

DICE_SMOOTH = 1.0
MIN_TARGET = 1.0  # pixels of soft mass below which an image counts as empty for the Dice term
WEIGHT_EPS = 1e-6


def confidence_weights(soft_target: tf.Tensor, gamma: float = 1.0) -> tf.Tensor:
    """``|2S − 1|^γ`` per pixel: how sure the teacher is, same shape as ``soft_target``.

    >>> confidence_weights(np.array([0.0, 0.25, 0.5, 1.0], "float32")).numpy().tolist()
    [1.0, 0.5, 0.0, 1.0]
    """
    soft = tf.cast(soft_target, tf.float32)
    return tf.stop_gradient(tf.pow(tf.abs(2.0 * soft - 1.0), float(gamma)))


def weighted_soft_bce_per_example(soft_target: tf.Tensor, logits: tf.Tensor,
                                  pixel_weights: tf.Tensor | None = None) -> tf.Tensor:
    """Soft-target BCE averaged with ``pixel_weights``: ``Σ w·BCE / max(Σ w, ε)`` per image.

    Without weights it equals :func:`~medistill.losses.distillation.soft_bce_per_example`.
    """
    target, z = flat_mask_pair(soft_target, logits, "weighted_soft_bce_per_example")
    target = tf.stop_gradient(target)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=z)
    if pixel_weights is None:
        return tf.reduce_mean(bce, axis=1)
    weights, _ = flat_mask_pair(pixel_weights, soft_target, "weighted_soft_bce_per_example (weights)")
    weights = tf.stop_gradient(weights)
    return tf.reduce_sum(weights * bce, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), WEIGHT_EPS)


def soft_dice_loss_per_example(soft_target: tf.Tensor, logits: tf.Tensor, smooth: float = DICE_SMOOTH,
                               min_target: float = MIN_TARGET) -> tf.Tensor:
    """``1 − (2Σ p·S + s) / (Σ p + Σ S + s)`` per image, ``p = σ(z)``; 0 for empty targets.

    An image whose target mass ``Σ S`` is below ``min_target`` pixels gets 0 and no
    gradient from this term (see the module docstring for why).
    """
    target, z = flat_mask_pair(soft_target, logits, "soft_dice_loss_per_example")
    target = tf.stop_gradient(target)
    prob = tf.sigmoid(z)
    mass = tf.reduce_sum(target, axis=1)
    dice = (2.0 * tf.reduce_sum(prob * target, axis=1) + smooth) / (tf.reduce_sum(prob, axis=1) + mass + smooth)
    return tf.where(mass >= min_target, 1.0 - dice, tf.zeros_like(dice))


def rasterise_boxes(boxes: np.ndarray, scale: float, size: int, max_boxes: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` xyxy in original pixels → row and column indicators ``(M, size)`` uint8.

    A pixel row ``r`` of the student frame belongs to a box when its centre ``r + 0.5``
    lies in ``[y1·scale, y2·scale)`` (columns likewise), so a box always covers at least
    the pixel containing its centre. ``M`` = ``max_boxes`` (zero rows pad) or ``N``.

    >>> rows, cols = rasterise_boxes(np.array([[2, 0, 6, 2]], "float32"), scale=0.5, size=4)
    >>> rows.tolist(), cols.tolist()
    ([[1, 0, 0, 0]], [[0, 1, 1, 0]])
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * float(scale)
    count = len(boxes) if max_boxes is None else int(max_boxes)
    if len(boxes) > count:
        raise ValueError(f"rasterise_boxes: {len(boxes)} boxes but room for {count}")
    centres = np.arange(size, dtype=np.float32) + 0.5
    rows = np.zeros((count, size), np.uint8)
    cols = np.zeros((count, size), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        rows[i] = (centres >= y1) & (centres < y2)
        cols[i] = (centres >= x1) & (centres < x2)
        if not rows[i].any():  # a box thinner than a pixel: keep the pixel holding its centre
            rows[i, min(int((y1 + y2) / 2), size - 1)] = 1
        if not cols[i].any():
            cols[i, min(int((x1 + x2) / 2), size - 1)] = 1
    return rows, cols


def inside_boxes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(M, S)`` row and column indicators → ``(S, S)`` uint8 union of the boxes."""
    if len(rows) == 0:
        return np.zeros((rows.shape[-1], cols.shape[-1]), np.uint8)
    return (rows[:, :, None] & cols[:, None, :]).max(axis=0).astype(np.uint8)


def _dice_with_ones(values: tf.Tensor, support: tf.Tensor) -> tf.Tensor:
    """``1 − 2Σ v / (Σ v + n)`` over the support (the target is 1 on it): ``(..., S) → (...)``."""
    inside = tf.reduce_sum(values * support, axis=-1)
    count = tf.reduce_sum(support, axis=-1)
    return 1.0 - 2.0 * inside / tf.maximum(inside + count, WEIGHT_EPS)


def box_projection_per_example(logits: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor,
                               box_weights: tf.Tensor) -> tf.Tensor:
    """The projection (tightness) term: ``(B, S, S, 1)`` logits, ``(B, M, S)`` rows/cols, ``(B, M)`` weights.

    For each box the student's probability inside the box is max-projected onto the box's
    columns (max over its rows) and onto its rows (max over its columns); each projection
    is compared with the box's own (all ones) by Dice, the two axes averaged. Boxes are
    averaged with ``box_weights`` (0 for padding); an image without boxes gets 0.
    """
    prob = tf.sigmoid(tf.cast(logits, tf.float32))
    if prob.shape.rank == 4:
        prob = prob[..., 0]
    rows = tf.stop_gradient(tf.cast(rows, tf.float32))
    cols = tf.stop_gradient(tf.cast(cols, tf.float32))
    weights = tf.stop_gradient(tf.cast(box_weights, tf.float32))
    in_box = prob[:, None] * rows[:, :, :, None] * cols[:, :, None, :]    # (B, M, S, S)
    onto_x = tf.reduce_max(in_box, axis=2)                                 # (B, M, S) over columns
    onto_y = tf.reduce_max(in_box, axis=3)                                 # (B, M, S) over rows
    per_box = 0.5 * (_dice_with_ones(onto_x, cols) + _dice_with_ones(onto_y, rows))
    return tf.reduce_sum(weights * per_box, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), WEIGHT_EPS)


def outside_box_per_example(logits: tf.Tensor, inside: tf.Tensor, trust: tf.Tensor) -> tf.Tensor:
    """``trust · mean over pixels outside every box of BCE(z, 0)``: ``(B,)``.

    ``inside`` is ``(B, S, S)`` (1 inside some box), ``trust`` ``(B,)`` in [0, 1]. An image
    with no pixel outside its boxes gets 0.
    """
    outside, z = flat_mask_pair(1.0 - tf.cast(inside, tf.float32), logits, "outside_box_per_example")
    outside = tf.stop_gradient(outside)
    bce = tf.nn.softplus(z)  # BCE against a 0 target
    mean = tf.reduce_sum(outside * bce, axis=1) / tf.maximum(tf.reduce_sum(outside, axis=1), 1.0)
    return tf.stop_gradient(tf.cast(tf.reshape(trust, (-1,)), tf.float32)) * mean
