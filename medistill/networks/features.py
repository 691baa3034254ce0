"""Named intermediate tensors of a student: ``feature_names`` and ``feature_model``.

Example:

>>> import numpy as np
>>> from medistill.networks.unet import build_unet
>>> model = build_unet(1, 1, base_filters=4, depth=2)
>>> feature_names(model)
['enc1', 'enc2', 'bottleneck', 'dec1', 'dec2', 'penultimate']
>>> outputs = feature_model(model, ["enc2", "penultimate"])(np.zeros((1, 8, 8, 1), "float32"))
>>> {name: tuple(value.shape) for name, value in outputs.items()}
{'logits': (1, 8, 8, 1), 'enc2': (1, 4, 4, 8), 'penultimate': (1, 8, 8, 4)}
>>> head_names(model), head_names(build_unet(1, 1, base_filters=4, depth=2, deep_supervision=True))
([], ['aux1', 'aux2'])
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import keras

from medistill.networks.registry import StudentError

# The contract of docs/DESIGN.md, in the order feature_names lists it.
_FEATURE_GROUPS = ("enc", "bottleneck", "dec", "penultimate", "aux")
_FEATURE_NAME = re.compile(r"^(enc|dec|aux)(\d+)$|^(bottleneck|penultimate)$")
_HEAD_NAME = re.compile(r"^aux(\d+)$")


def feature_names(model: keras.Model) -> list[str]:
    """The documented feature layers of ``model``: enc…, bottleneck, dec…, penultimate, aux…."""
    found = []
    for layer in model.layers:
        match = _FEATURE_NAME.match(layer.name)
        if match:
            group = match.group(1) or match.group(3)
            index = int(match.group(2) or 0)
            found.append((_FEATURE_GROUPS.index(group), index, layer.name))
    return [name for _, _, name in sorted(found)]


def head_names(model: keras.Model) -> list[str]:
    """The deep-supervision heads ``aux1``…, coarsest first; the last is the main logits
    (empty for a student built without ``deep_supervision``)."""
    return [name for name in feature_names(model) if _HEAD_NAME.match(name)]


def feature_model(model: keras.Model, names: str | Iterable[str]) -> keras.Model:
    """A model sharing ``model``'s layers that returns ``{"logits": …, name: …}``.

    ``names`` are layer names of ``model``: those of :func:`feature_names`, or any other
    layer name (less stable across versions). Training the returned model trains
    ``model``.

    Raises:
        StudentError (a ValueError): for a name that is not a layer of ``model``,
            listing the available feature names.
    """
    names = [names] if isinstance(names, str) else list(names)
    if len(model.outputs) != 1:
        raise StudentError(f"feature_model expects a one-output student, {model.name!r} has "
                           f"{len(model.outputs)}")
    layer_names = {layer.name for layer in model.layers}
    unknown = [name for name in names if name not in layer_names and name != "logits"]
    if unknown:
        raise StudentError(
            f"{model.name!r} has no layer {', '.join(map(repr, unknown))}; available features: "
            f"{', '.join(feature_names(model))} (build with deep_supervision=True for aux heads)"
        )
    outputs = {"logits": model.outputs[0]}
    for name in names:
        if name != "logits":
            outputs[name] = model.get_layer(name).output
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_features")
