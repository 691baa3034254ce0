"""Multi-scale knowledge distillation (MSKD) and the LCOV-Net total loss (docs/methods.md §3).

At every deep-supervision scale, MSKD is the soft cross-entropy between the teacher's
and the student's temperature-scaled class distributions, the temperature of a map
being the L2 norm of that map's logits::

    L_MSKD = mean over pixels of  −Σ_k softmax(z_t/‖z_t‖)_k · log softmax(z_s/‖z_s‖)_k

Norm choice: by default (``scope="map"``) ``‖z‖`` is taken per example over the *whole*
logit map (every pixel and channel), one temperature per example and map, clipped below
at 1e-6. Dividing by it makes the loss invariant to the scale of each map's logits, but
the norm grows with the square root of the pixel count, so on real maps the scaled
distributions are nearly uniform: the loss stays close to ``log K`` and its gradient is
tiny (measured with K = 4 and logits of s.d. 5: gradient L2 norm 5e-5 at 8×8, 9e-8 at
64×64, 1e-9 at 256×256). ``scope="pixel"`` instead divides every pixel's logit vector by
its own norm (a temperature per pixel), so the loss behaves like an ordinary pixel-mean
distillation cross-entropy at any size (gradient L2 norm 4e-3, 5e-4, 1e-4 at the same
sizes: only the 1/√N of the pixel mean). A one-channel model counts as two classes with
logits ``[0, z]`` (``‖[0, z]‖ = ‖z‖``).

Unlike the released code, which feeds a floored hard label to the cross-entropy and so
gives the student no gradient, the teacher's *soft* distribution is the target here:
the student receives a gradient, the teacher (``tf.stop_gradient``) none.

Example:
    >>> import numpy as np
    >>> z = np.full((1, 2, 2, 1), 3.0, "float32")
    >>> float(norm_temperature(z)[0, 0, 0, 0])
    6.0
    >>> mskd_loss_per_example(z, z).shape
    TensorShape([1])
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.cakd import class_logits
from medistill.losses.kamsd import (
    as_float32,
    match_spatial_size,
    require_same_channels,
    require_same_length,
)

LCOV_SCALE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
NORM_FLOOR = 1e-6
NORM_SCOPES = ("map", "pixel")


def norm_temperature(logits: tf.Tensor, scope: str = "map") -> tf.Tensor:
    """L2 norm of each example's whole logit map, ``(B, H, W, C) -> (B, 1, 1, 1)``, ≥ 1e-6.

    With ``scope="pixel"`` the norm of every pixel's logit vector, ``(B, H, W, 1)``.
    The floor is applied inside the square root, so an all-zero map gives 1e-6 and a
    finite (zero) gradient instead of NaN.
    """
    if scope not in NORM_SCOPES:
        raise MedistillError(f"MSKD norm scope must be one of {NORM_SCOPES}, got {scope!r}")
    logits = as_float32(logits)
    axes = [1, 2, 3] if scope == "map" else [3]
    squared = tf.reduce_sum(tf.square(logits), axis=axes, keepdims=True)
    return tf.sqrt(tf.maximum(squared, NORM_FLOOR**2))


def mskd_loss_per_example(
    student_logits: tf.Tensor, teacher_logits: tf.Tensor, scope: str = "map"
) -> tf.Tensor:
    """Soft cross-entropy of norm-temperature distributions, mean over pixels: ``(B,)``.

    ``scope`` picks the norm (see the module docstring). A student map whose size
    differs from the teacher's is resized bilinearly to it.
    """
    student = as_float32(student_logits)
    teacher = tf.stop_gradient(as_float32(teacher_logits))
    require_same_channels(student, teacher, "MSKD")
    student = match_spatial_size(student, teacher)
    student_scaled = class_logits(student) / norm_temperature(student, scope)
    teacher_scaled = class_logits(teacher) / norm_temperature(teacher, scope)
    target = tf.nn.softmax(teacher_scaled, axis=-1)
    cross_entropy = -tf.reduce_sum(target * tf.nn.log_softmax(student_scaled, axis=-1), axis=-1)
    return tf.reduce_mean(cross_entropy, axis=[1, 2])


def lcov_total_per_example(
    ds_dice_per_example: tf.Tensor,
    cakd_per_scale: Sequence[tf.Tensor],
    mskd_per_scale: Sequence[tf.Tensor],
    scale_weights: Sequence[float] = LCOV_SCALE_WEIGHTS,
) -> tf.Tensor:
    """``0.8·L_DS-Dice + 0.2·Σ_i w_i (0.1·L_CAKD^i + 0.2·L_MSKD^i)``, shape ``(B,)``.

    Scale 0 is the full resolution (the main logits, i.e. the *last* ``aux`` head of a
    medistill student); pass as many weights as scales.
    """
    require_same_length(cakd_per_scale, mskd_per_scale, "LCOV-Net total (CAKD vs MSKD scales)")
    if len(scale_weights) != len(cakd_per_scale):
        raise MedistillError(
            f"LCOV-Net total: {len(cakd_per_scale)} distillation scales but "
            f"{len(scale_weights)} scale weights {tuple(scale_weights)}; pass one weight per scale"
        )
    distillation = 0.0
    for weight, cakd, mskd in zip(scale_weights, cakd_per_scale, mskd_per_scale):
        distillation += float(weight) * (0.1 * as_float32(cakd) + 0.2 * as_float32(mskd))
    return 0.8 * as_float32(ds_dice_per_example) + 0.2 * distillation
