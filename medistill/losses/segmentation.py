"""Supervised segmentation losses, per example, on logits.

Every function returns one value per example (shape ``(B,)``) so that a distributed
loop can average over the *global* batch with ``tf.nn.compute_average_loss``.
Binary models have one logit channel; multi-class models have K channels (softmax).

Example:
    >>> import numpy as np
    >>> logits = np.zeros((2, 8, 8, 1), "float32")
    >>> labels = np.zeros((2, 8, 8), "int32")
    >>> bce_dice_loss(labels, logits).shape
    TensorShape([2])
"""

from __future__ import annotations

import tensorflow as tf

SMOOTH = 1.0


def soft_dice_per_example(prob: tf.Tensor, target: tf.Tensor, smooth: float = SMOOTH) -> tf.Tensor:
    """Soft Dice coefficient per example and channel: ``(B, H, W, C) -> (B, C)``."""
    prob = tf.cast(prob, tf.float32)
    target = tf.cast(target, tf.float32)
    intersection = tf.reduce_sum(prob * target, axis=[1, 2])
    total = tf.reduce_sum(prob, axis=[1, 2]) + tf.reduce_sum(target, axis=[1, 2])
    return (2.0 * intersection + smooth) / (total + smooth)


def bce_dice_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy plus (1 - soft Dice) for a one-logit model.

    ``labels``: ``(B, H, W)`` integers, foreground = label > 0. ``logits``: ``(B, H, W, 1)``.
    """
    logits = tf.cast(logits, tf.float32)
    target = tf.cast(labels > 0, tf.float32)[..., None]
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    bce = tf.reduce_mean(bce, axis=[1, 2, 3])
    dice = soft_dice_per_example(tf.sigmoid(logits), target)[:, 0]
    return bce + (1.0 - dice)


def ce_dice_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy plus (1 - mean soft Dice over foreground classes), K-class softmax.

    ``labels``: ``(B, H, W)`` integers in ``0..K-1``. ``logits``: ``(B, H, W, K)``.
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = logits.shape[-1]
    labels = tf.cast(labels, tf.int32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    ce = tf.reduce_mean(ce, axis=[1, 2])
    onehot = tf.one_hot(labels, num_classes)
    dice = soft_dice_per_example(tf.nn.softmax(logits), onehot)[:, 1:]
    return ce + (1.0 - tf.reduce_mean(dice, axis=-1))


def segmentation_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """BCE+Dice for one logit channel, CE+Dice for several."""
    if logits.shape[-1] == 1:
        return bce_dice_loss(labels, logits)
    return ce_dice_loss(labels, logits)


def predicted_labels(logits: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Hard labels from logits: ``sigmoid > threshold`` or the arg-max class."""
    if logits.shape[-1] == 1:
        return tf.cast(tf.sigmoid(tf.cast(logits, tf.float32))[..., 0] > threshold, tf.int32)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def hard_dice_per_example(labels: tf.Tensor, predicted: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Hard Dice per example averaged over foreground classes; 1 when both are empty."""
    classes = max(num_classes, 2)
    truth = tf.one_hot(tf.cast(labels, tf.int32), classes)[..., 1:]
    pred = tf.one_hot(tf.cast(predicted, tf.int32), classes)[..., 1:]
    intersection = tf.reduce_sum(truth * pred, axis=[1, 2])
    total = tf.reduce_sum(truth, axis=[1, 2]) + tf.reduce_sum(pred, axis=[1, 2])
    dice = tf.where(total > 0, 2.0 * intersection / tf.maximum(total, 1.0), 1.0)
    return tf.reduce_mean(dice, axis=-1)
