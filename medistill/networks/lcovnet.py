"""2-D LCOV-Net student: a U-Net of lightweight attention-based convolution blocks (LACB).

Specification and deviations from the 3-D original: docs/methods.md §3.

The 3-D LCOV-Net factorises a 3×3×3 convolution into 1×1×3 and 3×3×1; this 2-D
analogue uses 1×3 then 3×1. A block maps ``F`` to

- ``F'  = ReLU6(BN(Conv_{1×3}(F)))``
- ``F'' = Dropout(ReLU6(BN(Conv_{3×1}(F'))))`` (depthwise 3×1 in :class:`LACBLow`)
- ``α   = σ(Up×2(BN(Conv_{1×1}(AvgPool_{k4,s2}(F')))))`` in :class:`LACBHigh`,
  ``α = σ(BN(Conv_{1×1}(F')))`` in :class:`LACBLow`
- output ``F'' + α ⊙ F'``.

:class:`LACBHigh` forms the encoder and decoder stages, :class:`LACBLow` the bottleneck.
Decoder stages reduce channels with a 1×1 ReLU6 conv, up-sample bilinearly and
concatenate the skip. Weights (one logit, batch-norm statistics included): 438,273
(434,145 trainable) with the default channels 16-32-64-128-128, 1,735,681 with the
paper's 32-64-128-256-256.

Example:

>>> model = build_lcovnet(in_channels=1, num_classes=1, channels=(4, 8, 16))
>>> model.output_shape
(None, None, None, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from medistill.networks.blocks import (
    BN_MOMENTUM,
    BilinearUpsample,
    ConvBNAct,
    UpsampleConcat,
    decoder_model,
    check_channels,
)

_PACKAGE = "medistill"


class _LACB(keras.layers.Layer):
    """Shared body of the two LACB variants; subclasses fix the two class flags."""

    depthwise_refine: bool = False
    pooled_attention: bool = True

    def __init__(self, filters: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.dropout = float(dropout)
        policy = self.dtype_policy
        self.entry = ConvBNAct(self.filters, (1, 3), "relu6", dtype=policy, name="entry")
        self.refine = ConvBNAct(
            self.filters,
            (3, 1),
            "relu6",
            depthwise=self.depthwise_refine,
            dtype=policy,
            name="refine",
        )
        self.drop = keras.layers.Dropout(self.dropout, dtype=policy, name="drop")
        self.gate_conv = keras.layers.Conv2D(
            self.filters, 1, use_bias=False, dtype=policy, name="gate_conv"
        )
        self.gate_norm = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=policy, name="gate_norm")
        if self.pooled_attention:
            self.gate_pool = keras.layers.AveragePooling2D(
                4, strides=2, padding="same", dtype=policy, name="gate_pool"
            )
            self.gate_upsample = BilinearUpsample(2, dtype=policy, name="gate_upsample")

    def build(self, input_shape: tuple) -> None:
        self.entry.build(input_shape)
        feature_shape = self.compute_output_shape(input_shape)
        self.refine.build(feature_shape)
        self.gate_conv.build(feature_shape)
        self.gate_norm.build(feature_shape)
        self.built = True

    def call(self, inputs, training=None):
        features = self.entry(inputs, training=training)
        refined = self.refine(features, training=training)
        if self.dropout > 0:
            refined = self.drop(refined, training=training)
        return refined + self._attention(features, training) * features

    def _attention(self, features, training):
        x = self.gate_pool(features) if self.pooled_attention else features
        x = self.gate_norm(self.gate_conv(x), training=training)
        if self.pooled_attention:
            x = self.gate_upsample(x)
        return keras.ops.sigmoid(x)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LACBHigh(_LACB):
    """LACB-H: full 3×1 convolution and attention from a pooled (k4, s2) context.

    The input's height and width must be even (the attention map is pooled by 2 and
    up-sampled back).

    Example:

    >>> import numpy as np
    >>> LACBHigh(8)(np.zeros((1, 8, 8, 3), "float32")).shape
    TensorShape([1, 8, 8, 8])
    """

    depthwise_refine = False
    pooled_attention = True


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LACBLow(_LACB):
    """LACB-L: depthwise 3×1 convolution and attention without pooling.

    Example:

    >>> import numpy as np
    >>> LACBLow(8)(np.zeros((1, 3, 3, 4), "float32")).shape
    TensorShape([1, 3, 3, 8])
    """

    depthwise_refine = True
    pooled_attention = False


def build_lcovnet(
    in_channels: int,
    num_classes: int,
    channels: Sequence[int] = (16, 32, 64, 128, 128),
    deep_supervision: bool = False,
    dropout: float = 0.2,
    name: str = "lcovnet",
) -> keras.Model:
    """Build a 2-D LCOV-Net mapping ``(B, S, S, in_channels)`` to ``(B, S, S, num_classes)``.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: 1 for one sigmoid logit, K >= 2 for K softmax logits.
        channels: channels per level, finest first, the last one the bottleneck's;
            ``len(channels) - 1`` poolings, so the input side must be divisible by
            ``2**(len(channels) - 1)``. The default is half the paper's 32-64-128-256-256
            (438,273 instead of 1,735,681 weights for one logit).
        deep_supervision: add heads ``aux1``…``aux{L}`` on ``dec1``…``dec{L}``
            (up-sampled to input resolution, coarsest first, the last being the main
            logits); the four heads of the paper with the default five levels.
        dropout: dropout rate on ``F''`` in every block (0.2 in the paper).
        name: the model's name.

    Layers: ``enc1``…``enc{L}`` (LACB-H), ``bottleneck`` (LACB-L), ``dec1``…``dec{L}``
    (LACB-H, coarsest to finest), ``penultimate`` and ``logits``.

    Example:

    >>> import numpy as np
    >>> model = build_lcovnet(3, 4, channels=(4, 8, 8))
    >>> model(np.zeros((1, 16, 16, 3), "float32")).shape
    TensorShape([1, 16, 16, 4])
    """
    check_channels(in_channels, num_classes)
    channels = [int(count) for count in channels]
    if len(channels) < 2 or min(channels) < 1:
        raise ValueError(f"channels needs at least two positive channel counts, got {channels}")
    depth = len(channels) - 1

    inputs = keras.Input((None, None, in_channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        if level > 0:
            x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
        x = LACBHigh(channels[level], dropout, name=f"enc{level + 1}")(x)
        skips.append(x)
    x = keras.layers.MaxPooling2D(2, name=f"pool{depth}")(x)
    x = LACBLow(channels[depth], dropout, name="bottleneck")(x)

    decoded = []
    for stage in range(1, depth + 1):
        level = depth - stage
        x = ConvBNAct(channels[level], 1, "relu6", name=f"reduce{stage}")(x)
        x = UpsampleConcat(name=f"up{stage}")([x, skips[level]])
        x = LACBHigh(channels[level], dropout, name=f"dec{stage}")(x)
        decoded.append(x)

    return decoder_model(inputs, decoded, num_classes, deep_supervision, name)
