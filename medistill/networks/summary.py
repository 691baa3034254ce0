"""Size and cost of a student: ``model_summary`` → ``{"params", "flops"}``.

FLOPs are counted analytically as 2 × multiply-accumulates of the convolutions
(standard, depthwise, separable, transposed) and matrix products (dense layers) needed
to compute the model's output for one input of the given shape. They are read off the
TensorFlow graph of ``model(x, training=False)`` traced at that shape, which reaches
layers nested inside custom layers without walking them by hand. Bias additions,
normalisation, activations, pooling and resizing are not counted (they are a small
share and their cost depends on the kernel used). Deep-supervision heads that do not
feed the output are not counted either.

Example (a 3×3 conv, 8×8×4 → 16: 2 · 8·8·16 · 3·3·4 = 73,728):

>>> import keras
>>> conv = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(16, 3, padding="same")])
>>> model_summary(conv, (8, 8, 4))
{'params': 592, 'flops': 73728}
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf


def model_summary(model: keras.Model, input_shape: Sequence[int]) -> dict[str, int]:
    """``{"params": all weights incl. batch-norm statistics, "flops": per input}``.

    ``input_shape`` is the shape of one input, ``(height, width, channels)`` for an
    image, or the same with a leading batch size to count FLOPs for that batch.
    """
    return {"params": int(model.count_params()), "flops": count_flops(model, input_shape)}


def count_flops(model: keras.Model, input_shape: Sequence[int]) -> int:
    """2 × MACs of the convolutions and matrix products of ``model`` on ``input_shape``."""
    shape = tuple(int(size) for size in input_shape)
    rank = len(model.inputs[0].shape)
    if len(shape) == rank - 1:
        shape = (1, *shape)
    if len(shape) != rank:
        raise ValueError(
            f"input_shape must be the shape of one input, e.g. (height, width, channels), "
            f"optionally with a leading batch size; got {tuple(input_shape)} for a model whose "
            f"input is {model.inputs[0].shape}"
        )
    spec = tf.TensorSpec(shape, dtype=model.inputs[0].dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    return sum(_op_flops(op) for op in _ops_feeding(graph.outputs))


def _ops_feeding(tensors: Sequence[tf.Tensor]) -> list[tf.Operation]:
    seen: dict[str, tf.Operation] = {}
    stack = [tensor.op for tensor in tensors]
    while stack:
        op = stack.pop()
        if op.name not in seen:
            seen[op.name] = op
            stack.extend(tensor.op for tensor in op.inputs)
    return list(seen.values())


def _elements(tensor: tf.Tensor) -> int:
    dims = tensor.shape.as_list()
    if None in dims:
        raise ValueError(f"cannot count FLOPs: {tensor.name} has unknown shape {dims}")
    return int(np.prod(dims, dtype=np.int64))


def _op_flops(op: tf.Operation) -> int:
    kind = op.type
    if kind in ("Conv2D", "Conv3D"):
        kernel = op.inputs[1].shape.as_list()  # [*window, in/groups, out]
        return 2 * _elements(op.outputs[0]) * int(np.prod(kernel[:-1]))
    if kind == "DepthwiseConv2dNative":
        kernel = op.inputs[1].shape.as_list()  # [h, w, in, multiplier]
        return 2 * _elements(op.outputs[0]) * kernel[0] * kernel[1]
    if kind in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):
        kernel = op.inputs[1].shape.as_list()  # [*window, out, in]
        return 2 * _elements(op.inputs[2]) * int(np.prod(kernel[:-1]))
    if kind == "MatMul":
        a = op.inputs[0].shape.as_list()
        inner = a[0] if op.get_attr("transpose_a") else a[1]
        return 2 * _elements(op.outputs[0]) * inner
    if kind in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = op.inputs[0].shape.as_list()
        inner = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * _elements(op.outputs[0]) * inner
    return 0
