"""Label-free distillation losses (MedDistill, docs/methods.md §1), per example, float32.

The student learns from a teacher's soft mask ``S`` (probabilities in [0, 1]) and,
optionally, from its encoder features ``F_t``:

- :func:`soft_bce_per_example`: ``BCE(z, S)`` with soft targets, on logits (stable form);
- :func:`prob_mse_per_example`: ``MSE(σ(z), S)``;
- :func:`feature_mse_per_example` / :func:`feature_cosine_per_example`: the student's
  (projected) feature map against the teacher's, same shape ``(B, h, w, C)``;
- :func:`agreement_dice_per_example`: Dice between the binarised student and teacher
  maps, the label-free validation score.

Every function returns shape ``(B,)`` (for ``tf.nn.compute_average_loss``), casts its
inputs to float32, and treats the teacher side as a constant (``stop_gradient``).
Masks may be ``(B, H, W)`` or ``(B, H, W, 1)``; the two sides must hold the same pixels.

Example:
    >>> import numpy as np
    >>> target = np.full((2, 4, 4), 0.5, "float32")
    >>> logits = np.zeros((2, 4, 4, 1), "float32")
    >>> [round(float(v), 4) for v in soft_bce_per_example(target, logits)]
    [0.6931, 0.6931]
    >>> prob_mse_per_example(target, logits).numpy().tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

import tensorflow as tf

COSINE_EPS = 1e-12


def flat_mask_pair(first: tf.Tensor, second: tf.Tensor, what: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Two masks ``(B, H, W[, 1])`` → float32 ``(B, H*W)`` each; ValueError naming ``what`` if they differ."""
    first = tf.cast(first, tf.float32)
    second = tf.cast(second, tf.float32)
    maps = []
    for tensor in (first, second):
        if tensor.shape.rank == 4 and tensor.shape[-1] == 1:
            tensor = tensor[..., 0]
        if tensor.shape.rank != 3:
            raise ValueError(f"{what}: expected masks of shape (B, H, W) or (B, H, W, 1), got {tensor.shape}")
        maps.append(tensor)
    if not maps[0].shape.is_compatible_with(maps[1].shape):
        raise ValueError(f"{what}: the two masks differ in shape, {maps[0].shape} vs {maps[1].shape}; "
                         "resize the teacher's mask to the student's output first")
    batch = tf.shape(maps[0])[0]
    return tf.reshape(maps[0], (batch, -1)), tf.reshape(maps[1], (batch, -1))


def soft_bce_per_example(soft_target: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of ``logits`` against soft targets in [0, 1], mean over pixels.

    Stable form ``max(z, 0) − z·S + log(1 + exp(−|z|))``; its minimum over ``z`` is the
    entropy of ``S`` (zero only for hard targets).
    """
    target, z = flat_mask_pair(soft_target, logits, "soft_bce_per_example")
    target = tf.stop_gradient(target)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=z), axis=1)


def prob_mse_per_example(soft_target: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean over pixels of ``(σ(z) − S)²``."""
    target, z = flat_mask_pair(soft_target, logits, "prob_mse_per_example")
    target = tf.stop_gradient(target)
    return tf.reduce_mean(tf.square(tf.sigmoid(z) - target), axis=1)


def _feature_pair(student_feat: tf.Tensor, teacher_feat: tf.Tensor, what: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Float32 ``(B, h, w, C)`` pair with the teacher side constant; ValueError on a shape mismatch."""
    student = tf.cast(student_feat, tf.float32)
    teacher = tf.stop_gradient(tf.cast(teacher_feat, tf.float32))
    if student.shape.rank != 4 or teacher.shape.rank != 4:
        raise ValueError(f"{what}: expected (B, h, w, C) feature maps, got {student.shape} (student) "
                         f"and {teacher.shape} (teacher)")
    if not student.shape.is_compatible_with(teacher.shape):
        raise ValueError(f"{what}: student feature {student.shape} and teacher feature {teacher.shape} "
                         "differ; project the student feature to the teacher's channels "
                         "(FeatureProjection) and resize the teacher's map to the student's resolution")
    if not (student.shape.is_fully_defined() and teacher.shape.is_fully_defined()):
        tf.debugging.assert_equal(tf.shape(student), tf.shape(teacher),
                                  message=f"{what}: student and teacher feature shapes differ")
    return student, teacher


def feature_mse_per_example(student_feat: tf.Tensor, teacher_feat: tf.Tensor) -> tf.Tensor:
    """Mean over pixels and channels of ``(F_s − F_t)²`` for ``(B, h, w, C)`` maps."""
    student, teacher = _feature_pair(student_feat, teacher_feat, "feature_mse_per_example")
    return tf.reduce_mean(tf.square(student - teacher), axis=[1, 2, 3])


def feature_cosine_per_example(student_feat: tf.Tensor, teacher_feat: tf.Tensor) -> tf.Tensor:
    """Mean over pixels of ``1 − cos(F_s, F_t)`` taken over channels.

    Each pixel's vectors are scaled by ``1 / sqrt(max(‖v‖², 1e-12))``, so a zero vector
    has cosine 0 (loss 1) with anything and finite gradients.
    """
    student, teacher = _feature_pair(student_feat, teacher_feat, "feature_cosine_per_example")
    cosine = tf.reduce_sum(tf.math.l2_normalize(student, axis=-1, epsilon=COSINE_EPS)
                           * tf.math.l2_normalize(teacher, axis=-1, epsilon=COSINE_EPS), axis=-1)
    return tf.reduce_mean(1.0 - cosine, axis=[1, 2])


def agreement_dice_per_example(student_prob: tf.Tensor, teacher_prob: tf.Tensor,
                               threshold: float = 0.5) -> tf.Tensor:
    """Dice of ``student_prob > threshold`` and ``teacher_prob > threshold``, per example.

    Rule for empty maps: when both binarised maps are empty the two agree fully, so the
    score is 1.0; when only one is empty it is 0.0. No gradient (hard thresholds).
    """
    student, teacher = flat_mask_pair(student_prob, teacher_prob, "agreement_dice_per_example")
    student = tf.cast(student > threshold, tf.float32)
    teacher = tf.cast(teacher > threshold, tf.float32)
    intersection = tf.reduce_sum(student * teacher, axis=1)
    total = tf.reduce_sum(student, axis=1) + tf.reduce_sum(teacher, axis=1)
    return tf.where(total > 0, 2.0 * intersection / tf.maximum(total, 1.0), tf.ones_like(total))
