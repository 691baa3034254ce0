"""Building blocks shared by the student networks.

Every block is a registered Keras layer with a complete ``get_config``, so a model that
uses them saves to ``.keras`` and loads back once ``medistill.networks`` is imported.

Example:

>>> import numpy as np
>>> block = DoubleConv(8)
>>> block(np.zeros((1, 16, 16, 3), "float32")).shape
TensorShape([1, 16, 16, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

# Keras' default (0.99) leaves the running statistics far from the data after the few
# hundred steps of a small medical run, so inference disagrees with training; 0.9 is
# PyTorch's default (its momentum 0.1), which the original methods used.
BN_MOMENTUM = 0.9

_PACKAGE = "medistill"


def _spatial_size(size: int | None, factor: int) -> int | None:
    return None if size is None else size * factor


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBNAct(keras.layers.Layer):
    """Convolution (no bias) → batch normalisation → activation, "same" padding.

    Args:
        filters: output channels (ignored when ``depthwise=True``: a depthwise
            convolution keeps the channel count).
        kernel_size: an int or a ``(height, width)`` pair, e.g. ``(1, 3)``.
        activation: any Keras activation name (``"relu"``, ``"relu6"``, ...).
        depthwise: use a depthwise convolution (one filter per input channel).

    Example:

    >>> import numpy as np
    >>> ConvBNAct(4, kernel_size=(1, 3), activation="relu6")(np.zeros((2, 8, 8, 3), "float32")).shape
    TensorShape([2, 8, 8, 4])
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int] = 3,
        activation: str = "relu",
        depthwise: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.activation = activation
        self.depthwise = bool(depthwise)
        if self.depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                self.kernel_size,
                padding="same",
                use_bias=False,
                depthwise_initializer="he_normal",
                dtype=self.dtype_policy,
                name="conv",
            )
        else:
            self.conv = keras.layers.Conv2D(
                self.filters,
                self.kernel_size,
                padding="same",
                use_bias=False,
                kernel_initializer="he_normal",
                dtype=self.dtype_policy,
                name="conv",
            )
        self.norm = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, dtype=self.dtype_policy, name="norm")
        self.act = keras.layers.Activation(activation, dtype=self.dtype_policy, name="act")

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        self.norm.build(self.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        return self.act(self.norm(self.conv(inputs), training=training))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        channels = input_shape[-1] if self.depthwise else self.filters
        return (*input_shape[:-1], channels)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=list(self.kernel_size),
            activation=self.activation,
            depthwise=self.depthwise,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DoubleConv(keras.layers.Layer):
    """Two 3×3 :class:`ConvBNAct` (ReLU) with optional dropout between them: the U-Net unit.

    Example:

    >>> import numpy as np
    >>> DoubleConv(16, dropout=0.1)(np.zeros((1, 8, 8, 3), "float32")).shape
    TensorShape([1, 8, 8, 16])
    """

    def __init__(self, filters: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.dropout = float(dropout)
        self.first = ConvBNAct(self.filters, dtype=self.dtype_policy, name="first")
        self.drop = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="drop")
        self.second = ConvBNAct(self.filters, dtype=self.dtype_policy, name="second")

    def build(self, input_shape: tuple) -> None:
        self.first.build(input_shape)
        self.second.build(self.first.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        x = self.first(inputs, training=training)
        if self.dropout > 0:
            x = self.drop(x, training=training)
        return self.second(x, training=training)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BilinearUpsample(keras.layers.Layer):
    """Bilinear up-sampling by an integer factor (half-pixel centres, no corner alignment).

    ``keras.layers.UpSampling2D(interpolation="bilinear")`` cannot be traced into a
    graph when the height and width are unknown (Keras 3.15 checks the target size
    with a Python ``if``), which breaks ``model.export`` and ``tf.function`` with
    ``None`` spatial dimensions. This layer computes the size as a tensor instead.

    Example:

    >>> import numpy as np
    >>> BilinearUpsample(2)(np.zeros((1, 3, 5, 2), "float32")).shape
    TensorShape([1, 6, 10, 2])
    """

    def __init__(self, factor: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        if self.factor == 1:
            return inputs
        size = tf.shape(inputs)[1:3] * self.factor
        resized = tf.image.resize(inputs, size, method="bilinear")
        return tf.cast(resized, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        batch, height, width, channels = input_shape
        return (
            batch,
            _spatial_size(height, self.factor),
            _spatial_size(width, self.factor),
            channels,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(factor=self.factor)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UpsampleConcat(keras.layers.Layer):
    """Bilinear up-sampling of a coarse map, concatenated after its skip connections.

    Called on ``[coarse, skip_1, ..., skip_n]``; returns
    ``concat([skip_1, ..., skip_n, up(coarse)], axis=-1)`` at the skips' resolution.

    Example:

    >>> import numpy as np
    >>> coarse, skip = np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 8, 8, 2), "float32")
    >>> UpsampleConcat()([coarse, skip]).shape
    TensorShape([1, 8, 8, 10])
    """

    def __init__(self, factor: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = int(factor)
        self.upsample = BilinearUpsample(self.factor, dtype=self.dtype_policy, name="upsample")

    def build(self, input_shape: list[tuple]) -> None:
        if len(input_shape) < 2:
            raise ValueError("UpsampleConcat needs [coarse, skip, ...]: at least one skip")
        self.built = True

    def call(self, inputs):
        coarse, *skips = inputs
        return keras.ops.concatenate([*skips, self.upsample(coarse)], axis=-1)

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        coarse, *skips = input_shape
        channels = [shape[-1] for shape in skips] + [coarse[-1]]
        total = None if None in channels else sum(channels)
        height = skips[0][1] if skips[0][1] is not None else _spatial_size(coarse[1], self.factor)
        width = skips[0][2] if skips[0][2] is not None else _spatial_size(coarse[2], self.factor)
        return (coarse[0], height, width, total)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(factor=self.factor)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LogitHead(keras.layers.Layer):
    """1×1 convolution to ``num_classes`` logits, then bilinear up-sampling by ``upsample``.

    The layer defaults to the ``float32`` dtype so that logits stay float32 under a
    mixed-precision policy. Projecting before up-sampling is cheaper than the other
    order and gives the same map, both steps being linear.

    Example:

    >>> import numpy as np
    >>> LogitHead(3, upsample=4)(np.zeros((1, 4, 4, 8), "float32")).shape
    TensorShape([1, 16, 16, 3])
    """

    def __init__(self, num_classes: int, upsample: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.upsample = int(upsample)
        self.conv = keras.layers.Conv2D(
            self.num_classes, 1, dtype=self.dtype_policy, name="conv"
        )
        self.resize = BilinearUpsample(self.upsample, dtype=self.dtype_policy, name="resize")

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        self.built = True

    def call(self, inputs):
        return self.resize(self.conv(inputs))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        batch, height, width = input_shape[:3]
        return (
            batch,
            _spatial_size(height, self.upsample),
            _spatial_size(width, self.upsample),
            self.num_classes,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, upsample=self.upsample)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AnchorAuxiliary(keras.layers.Layer):
    """Return the first input unchanged; the other inputs only anchor their branches.

    A functional model keeps only the layers on a path to its outputs. Passing the
    deep-supervision heads through this layer keeps them in the model (saved, loaded,
    reachable by ``feature_model``) while the model still has a single output.

    Example:

    >>> import numpy as np
    >>> main, aux = np.ones((1, 2, 2, 1), "float32"), np.zeros((1, 2, 2, 1), "float32")
    >>> float(AnchorAuxiliary()([main, aux]).numpy().sum())
    4.0
    """

    def call(self, inputs):
        return inputs[0]

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return tuple(input_shape[0])


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def check_channels(in_channels: int, num_classes: int) -> None:
    """Raise a ValueError for a channel or class count that cannot build a student."""
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer (1 = binary sigmoid, K>=2 = softmax), "
            f"got {num_classes!r}"
        )


def attach_heads(
    penultimate: keras.KerasTensor,
    num_classes: int,
    auxiliary: Sequence[tuple[keras.KerasTensor, int]] | None = None,
) -> keras.KerasTensor:
    """The logit head on ``penultimate`` and, optionally, the deep-supervision heads.

    With ``auxiliary=None`` the returned tensor comes from a :class:`LogitHead` named
    ``logits``. ``auxiliary`` lists ``(feature_map, upsample_factor)`` pairs, coarsest
    first; each gets a :class:`LogitHead` named ``aux1``, ``aux2``, … that up-samples to
    input resolution, the main logits become the last one (an ``Identity`` named
    ``aux{n+1}``), and the returned tensor comes from an :class:`AnchorAuxiliary` named
    ``logits`` that keeps them all in the model.
    """
    if auxiliary is None:
        return LogitHead(num_classes, name="logits")(penultimate)
    main = LogitHead(num_classes, name="head")(penultimate)
    heads = [
        LogitHead(num_classes, upsample=factor, name=f"aux{index}")(feature)
        for index, (feature, factor) in enumerate(auxiliary, start=1)
    ]
    heads.append(keras.layers.Identity(name=f"aux{len(heads) + 1}")(main))
    return AnchorAuxiliary(name="logits")([main, *heads])


def decoder_model(
    inputs: keras.KerasTensor,
    decoded: Sequence[keras.KerasTensor],
    num_classes: int,
    deep_supervision: bool,
    name: str,
) -> keras.Model:
    """Close a U-shaped decoder: ``penultimate``, the logit head, optional aux heads.

    ``decoded`` holds the decoder stage outputs, coarsest first, each twice the
    resolution of the one before; the last is at input resolution.
    """
    penultimate = keras.layers.Identity(name="penultimate")(decoded[-1])
    depth = len(decoded)
    auxiliary = None
    if deep_supervision:
        auxiliary = [(decoded[stage - 1], 2 ** (depth - stage)) for stage in range(1, depth)]
    return keras.Model(inputs, attach_heads(penultimate, num_classes, auxiliary), name=name)
