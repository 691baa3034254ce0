"""EDSDF / KAMSD losses (docs/methods.md §2): deep supervision, boundaries, adapters, temperature.

The KAMSD student loss is::

    L_sup + Σ_i 0.25·MSE(A_i(f_s^i), f_t^i) + T²·Σ_i MSE(σ(m_s^i/T), σ(m_t^i/T))
    L_sup = Σ_i [BCE(m_i, M) + Dice(m_i, M)] + Σ_i BCE(b_i, B)

Every function takes lists of channels-last maps (one per decoder stage / encoder
stage), works in float32 and returns one value per example, shape ``(B,)``. Teacher
tensors pass through ``tf.stop_gradient``. The adapters ``A_i`` are
:class:`FeatureAdapter` layers that the trainer creates once, owns and trains (the
released code re-created them every step, so they never learned).

When two maps that are compared have different heights/widths, the student (or the
logit map, against the labels) is resized bilinearly to the other's size.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((2, 8, 8), "int32")
    >>> heads = [np.zeros((2, 8, 8, 1), "float32"), np.zeros((2, 4, 4, 1), "float32")]
    >>> deep_supervision_loss_per_example(labels, heads, num_classes=1).shape
    TensorShape([2])
    >>> student = [np.zeros((2, 8, 8, 1), "float32")]
    >>> teacher = [np.ones((2, 8, 8, 1), "float32")]
    >>> temperature_distillation_per_example(student, teacher, temperature=4.0).shape
    TensorShape([2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.boundaries import label_map
from medistill.losses.segmentation import segmentation_loss

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ADAPTER_WEIGHT = 0.25


def as_float32(tensor: tf.Tensor) -> tf.Tensor:
    """``tensor`` as float32 (mixed precision may hand over float16 maps)."""
    return tf.cast(tf.convert_to_tensor(tensor), tf.float32)


def match_spatial_size(tensor: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """``tensor`` (B, h, w, C) resized bilinearly to ``reference``'s height and width.

    Returns ``tensor`` unchanged when both sizes are known and already equal; with
    unknown sizes it resizes (a same-size bilinear resize is the identity).
    """
    size = tensor.shape[1:3]
    wanted = reference.shape[1:3]
    if size.is_fully_defined() and wanted.is_fully_defined() and size == wanted:
        return tensor
    return tf.image.resize(tensor, tf.shape(reference)[1:3], method="bilinear")


def require_same_length(student: Sequence, teacher: Sequence, what: str) -> None:
    """Raise :class:`MedistillError` unless both lists are non-empty and equally long."""
    if len(student) == 0:
        raise MedistillError(f"{what}: the list of maps is empty; pass one map per stage")
    if len(student) != len(teacher):
        raise MedistillError(
            f"{what}: {len(student)} student maps but {len(teacher)} teacher maps; "
            "pass one teacher map per student map, in the same order"
        )


def require_same_channels(student: tf.Tensor, teacher: tf.Tensor, what: str) -> None:
    """Raise :class:`MedistillError` when both channel counts are known and differ."""
    left, right = student.shape[-1], teacher.shape[-1]
    if left is not None and right is not None and left != right:
        raise MedistillError(
            f"{what}: student map has {left} channels, teacher map {right}; "
            "they must match (put a FeatureAdapter on the student features first)"
        )


def mean_squared_error_per_example(prediction: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """MSE over every axis but the first: ``(B, ...) -> (B,)``."""
    squared = tf.square(as_float32(prediction) - as_float32(target))
    return tf.reduce_mean(tf.reshape(squared, [tf.shape(squared)[0], -1]), axis=1)


def require_num_classes(logits: tf.Tensor, num_classes: int, what: str) -> None:
    """Raise :class:`MedistillError` unless ``logits`` has 1 channel (binary) or ``num_classes``."""
    channels = logits.shape[-1]
    binary = channels == 1 and int(num_classes) in (1, 2)
    if channels is not None and not binary and channels != num_classes:
        raise MedistillError(
            f"{what}: logits have {channels} channels but num_classes is {num_classes}; "
            "use one channel for a binary model or num_classes channels for softmax"
        )


def deep_supervision_loss_per_example(
    y_true: tf.Tensor, aux_logits: Sequence[tf.Tensor], num_classes: int
) -> tf.Tensor:
    """``Σ_i [BCE + Dice]`` (one logit channel) or ``Σ_i [CE + Dice]`` over the heads.

    Args:
        y_true: integer labels ``(B, H, W)`` or ``(B, H, W, 1)``; a binary model's
            foreground is label > 0.
        aux_logits: the deep-supervision logit maps; a head smaller than the labels
            is resized bilinearly to the label size.
        num_classes: 1 (or 2) for a one-logit model, else the softmax channel count.
    """
    if len(aux_logits) == 0:
        raise MedistillError(
            "deep supervision: no logit heads given (build the student with deep_supervision=True)"
        )
    labels = label_map(y_true)
    total = 0.0
    for logits in aux_logits:
        logits = as_float32(logits)
        require_num_classes(logits, num_classes, "deep supervision")
        total += segmentation_loss(labels, match_spatial_size(logits, labels[..., None]))
    return total


def boundary_loss_per_example(
    boundary_true: tf.Tensor, boundary_logits: Sequence[tf.Tensor]
) -> tf.Tensor:
    """``Σ_i BCE(b_i, B)``, each BCE the mean over the example's pixels.

    ``boundary_true`` is ``(B, H, W)`` or ``(B, H, W, 1)``; values are clipped to
    [0, 1], so {0, 1} and {0, 255} masks both work and soft contours stay soft.
    ``boundary_logits`` are one-channel maps (resized to the mask size if smaller).
    """
    if len(boundary_logits) == 0:
        raise MedistillError("boundary loss: no boundary heads given")
    target = as_float32(boundary_true)
    if target.shape.rank == 3:
        target = target[..., None]
    target = tf.clip_by_value(target, 0.0, 1.0)
    total = 0.0
    for logits in boundary_logits:
        logits = match_spatial_size(as_float32(logits), target)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
        total += tf.reduce_mean(bce, axis=[1, 2, 3])
    return total


def supervised_loss_per_example(
    y_true: tf.Tensor,
    aux_logits: Sequence[tf.Tensor],
    num_classes: int,
    boundary_true: tf.Tensor | None = None,
    boundary_logits: Sequence[tf.Tensor] | None = None,
) -> tf.Tensor:
    """EDSDF's ``L_sup``: deep supervision plus, when given, the boundary term."""
    loss = deep_supervision_loss_per_example(y_true, aux_logits, num_classes)
    if boundary_logits:
        if boundary_true is None:
            raise MedistillError("boundary loss: boundary heads given without boundary_true")
        loss += boundary_loss_per_example(boundary_true, boundary_logits)
    return loss


def adapter_feature_loss_per_example(
    adapted_student: Sequence[tf.Tensor],
    teacher_feats: Sequence[tf.Tensor],
    weight: float = DEFAULT_ADAPTER_WEIGHT,
) -> tf.Tensor:
    """``Σ_i weight·MSE(A_i(f_s^i), f_t^i)`` on already adapted student features.

    A student map whose height/width differs from the teacher's is resized bilinearly
    to the teacher's size; the channel counts must match.
    """
    require_same_length(adapted_student, teacher_feats, "adapter feature loss")
    total = 0.0
    for student, teacher in zip(adapted_student, teacher_feats):
        student = as_float32(student)
        teacher = tf.stop_gradient(as_float32(teacher))
        require_same_channels(student, teacher, "adapter feature loss")
        student = match_spatial_size(student, teacher)
        total += float(weight) * mean_squared_error_per_example(student, teacher)
    return total


def soft_output(logits: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    """``σ(z/T)`` for one logit channel, ``softmax(z/T)`` over channels otherwise."""
    scaled = as_float32(logits) / temperature
    if logits.shape[-1] == 1:
        return tf.sigmoid(scaled)
    return tf.nn.softmax(scaled, axis=-1)


def temperature_distillation_per_example(
    student_logits: Sequence[tf.Tensor],
    teacher_logits: Sequence[tf.Tensor],
    temperature: float = DEFAULT_TEMPERATURE,
) -> tf.Tensor:
    """``T²·Σ_i MSE(σ(m_s^i/T), σ(m_t^i/T))`` (softmax instead of σ for K > 1 channels).

    The MSE is the mean over pixels and channels of each example.
    """
    if not float(temperature) > 0:
        raise MedistillError(f"KAMSD temperature must be positive, got {temperature}")
    require_same_length(student_logits, teacher_logits, "temperature distillation")
    temperature = float(temperature)
    total = 0.0
    for student, teacher in zip(student_logits, teacher_logits):
        student = as_float32(student)
        teacher = tf.stop_gradient(as_float32(teacher))
        require_same_channels(student, teacher, "temperature distillation")
        student = match_spatial_size(student, teacher)
        total += mean_squared_error_per_example(
            soft_output(student, temperature), soft_output(teacher, temperature)
        )
    return temperature**2 * total


@keras.saving.register_keras_serializable(package="medistill")
class FeatureAdapter(keras.layers.Layer):
    """KAMSD's adapter ``A_i``: a learned 1×1 convolution (with bias) to ``channels``.

    Maps a student feature to the teacher feature's channel count. Create one per
    distilled stage once, before training, and train it with the student.

    Example:
        >>> import numpy as np
        >>> FeatureAdapter(6)(np.zeros((1, 4, 4, 3), "float32")).shape
        TensorShape([1, 4, 4, 6])
    """

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise MedistillError(f"FeatureAdapter needs at least 1 output channel, got {channels}")
        self.channels = int(channels)
        self.projection = keras.layers.Conv2D(
            self.channels, 1, dtype=self.dtype_policy, name="projection"
        )

    def build(self, input_shape: tuple) -> None:
        self.projection.build(input_shape)
        self.built = True

    def call(self, inputs):
        return self.projection(inputs)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.channels)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(channels=self.channels)
        return config


def build_adapters(
    teacher_channels: Sequence[int], prefix: str = "adapter"
) -> list[FeatureAdapter]:
    """One :class:`FeatureAdapter` per teacher stage, named ``{prefix}1``, ``{prefix}2``…"""
    return [
        FeatureAdapter(channels, name=f"{prefix}{index}")
        for index, channels in enumerate(teacher_channels, start=1)
    ]
