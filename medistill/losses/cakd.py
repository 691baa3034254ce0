"""Class-affinity knowledge distillation (CAKD) of LCOV-Net (docs/methods.md §3).

With ``Q = softmax(z)`` reshaped to ``K × N`` (N pixels), the class affinity is the
``K × K`` matrix ``M = Q Qᵀ``; ``M[j, k] = Σ_n q_j(n) q_k(n)`` says how much classes j and
k are predicted at the same pixels. The loss is the negative mean cosine similarity of
the student's and the teacher's affinity columns::

    L_CAKD = −(1/K) Σ_k cos(M_s[:, k], M_t[:, k])

A one-channel (sigmoid) model counts as two classes, ``Q = [1 − σ(z), σ(z)]``. Because
``M`` depends on neither the pixel order nor the number of pixels, student and teacher
maps may have different heights and widths.

Example:
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    >>> np.round(cakd_loss_per_example(z, z).numpy(), 5)
    array([-1., -1.], dtype=float32)
"""

from __future__ import annotations

import tensorflow as tf

from medistill.losses.kamsd import as_float32, require_same_channels


def class_logits(logits: tf.Tensor) -> tf.Tensor:
    """Softmax logits: ``[0, z]`` for one sigmoid channel (softmax = ``[1−σ, σ]``), else ``z``."""
    logits = as_float32(logits)
    if logits.shape[-1] == 1:
        return tf.concat([tf.zeros_like(logits), logits], axis=-1)
    return logits


def class_probabilities(logits: tf.Tensor) -> tf.Tensor:
    """``softmax(z)`` over channels; ``[1 − σ(z), σ(z)]`` for a one-channel model."""
    return tf.nn.softmax(class_logits(logits), axis=-1)


def class_affinity(probabilities: tf.Tensor) -> tf.Tensor:
    """``M = Q Qᵀ`` per example: ``(B, H, W, K)`` probabilities → ``(B, K, K)``."""
    probabilities = as_float32(probabilities)
    shape = tf.shape(probabilities)
    flat = tf.reshape(probabilities, [shape[0], -1, shape[-1]])  # (B, N, K) = Qᵀ
    return tf.einsum("bnk,bnl->bkl", flat, flat)


def cakd_loss_per_example(student_logits: tf.Tensor, teacher_logits: tf.Tensor) -> tf.Tensor:
    """``−(1/K) Σ_k cos(M_s[:, k], M_t[:, k])`` per example, shape ``(B,)``.

    The loss lies in [−1, 1]; −1 means the two affinity matrices point the same way
    (identical affinity up to scale). Softmax probabilities are positive, so every
    entry of ``M`` is ≥ 0 and in practice the loss is in [−1, 0]. The teacher gets
    ``tf.stop_gradient``.
    """
    student = as_float32(student_logits)
    teacher = tf.stop_gradient(as_float32(teacher_logits))
    require_same_channels(student, teacher, "CAKD")
    student_affinity = class_affinity(class_probabilities(student))
    teacher_affinity = class_affinity(class_probabilities(teacher))
    # M is symmetric: its columns are its rows, so normalise along the last axis.
    student_affinity = tf.math.l2_normalize(student_affinity, axis=-1)
    teacher_affinity = tf.math.l2_normalize(teacher_affinity, axis=-1)
    cosines = tf.reduce_sum(student_affinity * teacher_affinity, axis=-1)  # (B, K)
    return -tf.reduce_mean(cosines, axis=-1)
