"""Mixed precision that is correct on GPUs and harmless on CPUs.

``mixed_float16`` computes in float16 and keeps float32 weights; it needs loss scaling
so that small gradients do not underflow. On a CPU float16 is slower, not faster, so the
option is ignored there with a log line (the run is then exactly a float32 run).

Example::

    policy = set_precision(config.mixed_precision)     # before building any model
    with strategy.scope():
        model = build_student(...)
        optimizer = wrap_optimizer(keras.optimizers.Adam(1e-3), policy)
        optimizer.build(model.trainable_variables)
    ...
    with tf.GradientTape() as tape:
        loss = ...
    grads = scaled_gradients(tape, loss, model.trainable_variables, optimizer)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras
import tensorflow as tf

log = logging.getLogger("medistill.distill")

MIXED = "mixed_float16"
FULL = "float32"


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy; return the policy in force (``float32`` on CPUs)."""
    policy = FULL
    if mixed:
        if tf.config.list_logical_devices("GPU"):
            policy = MIXED
        else:
            log.warning("--mixed-precision needs a GPU; none is visible, so this run uses float32")
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Build models in float32 whatever the global policy (e.g. a frozen teacher), then restore it."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(FULL)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, policy: str) -> keras.optimizers.Optimizer:
    """Add dynamic loss scaling under ``mixed_float16``; otherwise return ``optimizer``."""
    if policy == MIXED and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def scaled_gradients(tape: tf.GradientTape, loss: tf.Tensor, variables: list,
                     optimizer: keras.optimizers.Optimizer) -> list:
    """Gradients of ``loss`` (scaled when the optimizer scales; it unscales when applying).

    Works after the tape has closed: the scale enters as the initial upstream gradient,
    which back-propagates exactly like ``loss * scale`` recorded inside the tape.
    """
    scale = optimizer.scale_loss(tf.ones_like(loss))  # 1 for optimizers that do not scale
    return tape.gradient(loss, variables, output_gradients=tf.cast(scale, loss.dtype))


def is_mixed(model: keras.Model) -> bool:
    """True when some layer of ``model`` computes in float16."""
    return any(getattr(layer, "compute_dtype", "float32") == "float16" for layer in model.layers)


def float32_copy(model: keras.Model) -> keras.Model:
    """A float32 copy of a model built under mixed precision (same weights), for export."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(FULL)
    try:
        config = model.get_config()
        for layer in config.get("layers", []):
            layer.get("config", {}).pop("dtype", None)
        copy = model.__class__.from_config(config)
        copy.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return copy
