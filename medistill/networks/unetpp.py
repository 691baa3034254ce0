"""UNet++ student (nested U-Net): dense skip pathways between encoder and decoder.

The student of the released MedDistill (docs/methods.md §1).

Node ``X^{i,j}`` (level ``i``, column ``j``) is a double conv on
``concat(X^{i,0}, …, X^{i,j-1}, Up(X^{i+1,j-1}))``; up-sampling is bilinear. With the
defaults (filters 32-64-128-256-512, one logit) the model has 9,166,401 weights
(9,159,105 trainable), the ~9.2 M of the MedDistill student.

Layer names: ``X^{i,0}`` is ``enc{i+1}``, the deepest ``X^{L,0}`` is ``bottleneck``, the
outer decoder path ``X^{L-j,j}`` is ``dec{j}`` (so ``dec{L}`` is ``X^{0,L}``), every other
node is ``x{i}_{j}``; ``penultimate`` is ``X^{0,L}``. With ``deep_supervision=True`` the
heads are the UNet++ ones: ``aux{j}`` on ``X^{0,j}``, ``j = 1..L``, all at full
resolution, the last being the main logits.

Example:

>>> model = build_unetpp(in_channels=1, num_classes=1, filters=(4, 8, 16))
>>> model.output_shape
(None, None, None, 1)
>>> model.get_layer("x0_1").output.shape
(None, None, None, 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from medistill.networks.blocks import DoubleConv, UpsampleConcat, attach_heads, check_channels


def node_name(level: int, column: int, depth: int) -> str:
    """The layer name of node ``X^{level,column}`` in a UNet++ with ``depth`` poolings."""
    if column == 0:
        return "bottleneck" if level == depth else f"enc{level + 1}"
    if level + column == depth:
        return f"dec{column}"
    return f"x{level}_{column}"


def build_unetpp(
    in_channels: int,
    num_classes: int,
    filters: Sequence[int] = (32, 64, 128, 256, 512),
    deep_supervision: bool = False,
    dropout: float = 0.0,
    name: str = "unetpp",
) -> keras.Model:
    """Build a UNet++ mapping ``(B, S, S, in_channels)`` to ``(B, S, S, num_classes)`` logits.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: 1 for one sigmoid logit, K >= 2 for K softmax logits.
        filters: channels per level, finest first; ``len(filters) - 1`` poolings, so the
            input side must be divisible by ``2**(len(filters) - 1)``.
        deep_supervision: add heads ``aux1``…``aux{L}`` on ``X^{0,1}``…``X^{0,L}``
            (layers of the model reachable with ``feature_model``, not outputs).
        dropout: dropout rate between the two convolutions of every node.
        name: the model's name.

    Example:

    >>> import numpy as np
    >>> model = build_unetpp(3, 3, filters=(4, 8, 16))
    >>> model(np.zeros((2, 8, 8, 3), "float32")).shape
    TensorShape([2, 8, 8, 3])
    """
    check_channels(in_channels, num_classes)
    filters = [int(count) for count in filters]
    if len(filters) < 2 or min(filters) < 1:
        raise ValueError(f"filters needs at least two positive channel counts, got {filters}")
    depth = len(filters) - 1

    inputs = keras.Input((None, None, in_channels), name="image")
    nodes: dict[tuple[int, int], keras.KerasTensor] = {}
    for level in range(depth + 1):
        x = inputs if level == 0 else keras.layers.MaxPooling2D(2, name=f"pool{level}")(
            nodes[(level - 1, 0)]
        )
        nodes[(level, 0)] = DoubleConv(filters[level], dropout, name=node_name(level, 0, depth))(x)
        # Each new encoder node completes one anti-diagonal of nested nodes above it.
        for column in range(1, level + 1):
            row = level - column
            same_row = [nodes[(row, j)] for j in range(column)]
            merged = UpsampleConcat(name=f"up{row}_{column}")(
                [nodes[(row + 1, column - 1)], *same_row]
            )
            nodes[(row, column)] = DoubleConv(
                filters[row], dropout, name=node_name(row, column, depth)
            )(merged)

    penultimate = keras.layers.Identity(name="penultimate")(nodes[(0, depth)])
    auxiliary = None
    if deep_supervision:
        auxiliary = [(nodes[(0, column)], 1) for column in range(1, depth)]
    logits = attach_heads(penultimate, num_classes, auxiliary)
    return keras.Model(inputs, logits, name=name)
