"""The learned projection ``P`` of MedDistill's feature loss ``MSE(P(F_s), resize(F_t))``.

A 1×1 convolution (with bias) maps a student feature map ``(B, h, w, c)`` to the
teacher's channel count ``C``. The two maps are compared at the *student* feature's
resolution ``(h, w)``: the trainer resizes the teacher's map ``F_t`` to ``(h, w)``.
This replaces the released code, which compared the student's one-channel logit map
with a channels-last SAM tensor by broadcasting (docs/methods.md §1), a meaningless product.

The layer belongs to the training objective, not to the exported student: train it
with the student (add its weights to the optimised variables, build it inside
``strategy.scope()``, checkpoint it beside the model).

Example:
    >>> import numpy as np
    >>> projection = FeatureProjection(256)
    >>> projection(np.zeros((2, 16, 16, 32), "float32")).shape
    TensorShape([2, 16, 16, 256])
"""

from __future__ import annotations

from typing import Any

import keras

_PACKAGE = "medistill"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeatureProjection(keras.layers.Layer):
    """1×1 convolution with bias from a student feature map to ``channels`` teacher channels."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise ValueError(f"FeatureProjection: channels must be >= 1, got {channels!r}")
        self.channels = int(channels)
        self.conv = keras.layers.Conv2D(self.channels, 1, use_bias=True, dtype=self.dtype_policy,
                                        name="conv")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, features):
        return self.conv(features)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels}
