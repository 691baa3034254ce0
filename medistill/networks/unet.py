"""U-Net student: double-conv encoder, bilinear up-sampling + concatenation decoder.

With the defaults (``base_filters=32, depth=4``: channels 32-64-128-256-512, one logit)
the model has 7,854,913 weights (7,849,025 trainable; the rest are batch-norm statistics).

Example:

>>> model = build_unet(in_channels=1, num_classes=1, base_filters=8, depth=2)
>>> model.output_shape
(None, None, None, 1)
>>> [name for name in ("enc1", "enc2", "bottleneck", "dec1", "dec2", "penultimate")
...  if model.get_layer(name)]
['enc1', 'enc2', 'bottleneck', 'dec1', 'dec2', 'penultimate']
"""

from __future__ import annotations

import keras

from medistill.networks.blocks import DoubleConv, UpsampleConcat, check_channels, decoder_model


def build_unet(
    in_channels: int,
    num_classes: int,
    base_filters: int = 32,
    depth: int = 4,
    deep_supervision: bool = False,
    dropout: float = 0.0,
    name: str = "unet",
) -> keras.Model:
    """Build a U-Net that maps ``(B, S, S, in_channels)`` to ``(B, S, S, num_classes)`` logits.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: 1 for one sigmoid logit, K >= 2 for K softmax logits.
        base_filters: channels of the first stage; stage ``i`` has ``base_filters * 2**i``.
        depth: number of poolings; the input side must be divisible by ``2**depth``.
        deep_supervision: add logit heads ``aux1``…``aux{depth}`` on ``dec1``…``dec{depth}``
            (up-sampled to input resolution, coarsest first; the last is the main logit
            map). They are layers of the model, reachable with ``feature_model``, not
            outputs.
        dropout: dropout rate between the two convolutions of every block.
        name: the model's name.

    Layers: ``enc1``…``enc{depth}`` (stride ``2**(i-1)``), ``bottleneck`` (stride
    ``2**depth``), ``dec1``…``dec{depth}`` (coarsest to finest), ``penultimate`` (the
    ``dec{depth}`` map, stride 1) and ``logits``.

    Example:

    >>> import numpy as np
    >>> model = build_unet(3, 2, base_filters=4, depth=2)
    >>> model(np.zeros((1, 16, 16, 3), "float32")).shape
    TensorShape([1, 16, 16, 2])
    """
    check_channels(in_channels, num_classes)
    if depth < 1 or base_filters < 1:
        raise ValueError(f"depth and base_filters must be >= 1, got {depth} and {base_filters}")
    filters = [base_filters * 2**level for level in range(depth + 1)]

    inputs = keras.Input((None, None, in_channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = DoubleConv(filters[level], dropout, name=f"enc{level + 1}")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = DoubleConv(filters[depth], dropout, name="bottleneck")(x)

    decoded = []
    for stage in range(1, depth + 1):
        level = depth - stage
        x = UpsampleConcat(name=f"up{stage}")([x, skips[level]])
        x = DoubleConv(filters[level], dropout, name=f"dec{stage}")(x)
        decoded.append(x)

    return decoder_model(inputs, decoded, num_classes, deep_supervision, name)
