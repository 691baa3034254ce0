"""Reading a student's or teacher's heads and features by name, and pairing scales.

Students (docs/DESIGN.md, "Students") name their encoder stages ``enc1``… (finest
first), their deep-supervision heads ``aux1``… (coarsest first, all at input
resolution, the last being the main logits) and their decoder output ``penultimate``.
A recipe distils *scales*: scale 0 is the finest head (the main logits), scale 1 the
head before it, and so on; a network without heads has one scale, its logits.

Example:

>>> from medistill.networks import build_student
>>> model = build_student("unet", in_channels=1, num_classes=1, base_filters=4, depth=3,
...                       deep_supervision=True)
>>> head_names(model), scale_heads(model, 2)
(['aux1', 'aux2', 'aux3'], ['aux3', 'aux2'])
>>> encoder_names(model)
['enc1', 'enc2', 'enc3']
>>> sorted(tap_model(model, {"feed0": head_input(model, "aux3")}).output)
['feed0', 'logits']
"""

from __future__ import annotations

import re

import keras
import tensorflow as tf

from medistill.networks import feature_names, head_names  # head_names: re-exported for the recipes

_ENC = re.compile(r"^enc(\d+)$")


def encoder_names(model: keras.Model) -> list[str]:
    """The encoder stages ``enc1``…, finest first."""
    return [name for name in feature_names(model) if _ENC.match(name)]


def scale_heads(model: keras.Model, count: int) -> list[str]:
    """Up to ``count`` heads finest first (scale 0 first); ``["logits"]`` without heads."""
    heads = head_names(model)
    return list(reversed(heads))[:count] if heads else ["logits"]


def pair_scales(student_heads: list[str], teacher_heads: list[str]) -> list[tuple[str, str]]:
    """Student scale ``i`` with teacher scale ``i``, or the teacher's coarsest one it has."""
    return [(name, teacher_heads[min(i, len(teacher_heads) - 1)]) for i, name in enumerate(student_heads)]


def head_input(model: keras.Model, head: str) -> keras.KerasTensor:
    """The feature map a head is computed from (``penultimate`` for the main logits)."""
    if head == "logits" or head == head_names(model)[-1]:
        return model.get_layer("penultimate").output
    return model.get_layer(head).input


def tap_model(model: keras.Model, tensors: dict[str, keras.KerasTensor]) -> keras.Model:
    """A model sharing ``model``'s layers returning ``{"logits": …, **tensors}``."""
    outputs = {"logits": model.outputs[0], **tensors}
    return keras.Model(model.inputs[0], outputs, name=f"{model.name}_taps")


def layer_outputs(model: keras.Model, names: list[str]) -> dict[str, keras.KerasTensor]:
    """``{name: output}`` of the named layers (``logits`` is the model's output)."""
    return {name: model.outputs[0] if name == "logits" else model.get_layer(name).output
            for name in names}


def channels(model: keras.Model, name: str) -> int:
    """Channels of the named layer's output."""
    return int(model.get_layer(name).output.shape[-1])


def downsample(logits: tf.Tensor, factor: int) -> tf.Tensor:
    """Average-pool a logit map by ``factor`` (``factor=1``: unchanged)."""
    if factor <= 1:
        return logits
    return tf.nn.avg_pool2d(logits, factor, factor, padding="VALID")
