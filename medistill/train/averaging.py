"""An exponential moving average of a model's weights, used for validation and export.

Training a small student on noisy targets (a teacher's masks) leaves its weights
wandering around a good solution from step to step; the average of the last few
hundred steps is a better and steadier model (Polyak averaging; the "EMA" of
timm and Keras' ``use_ema``). :class:`WeightAverage` keeps one shadow copy of every
float weight of the model (batch-norm statistics included) and after each optimizer
step moves it towards the live weights::

    d = min(decay, (1 + n) / (10 + n))      # n = updates so far: short runs average less
    shadow ← d · shadow + (1 − d) · weight

The live weights keep training; :meth:`WeightAverage.swapped_in` puts the shadows into
the model for a while (validation, saving the best checkpoint) and restores the live
weights afterwards. The shadows and the update count are checkpointed (``trackables``),
so a resumed run continues the same average. Under ``tf.distribute`` the shadows are
created in the strategy's scope and updated in cross-replica context, like the weights.

Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> average = WeightAverage(model, decay=0.9)
    >>> _ = model.layers[0].kernel.assign(np.ones((2, 1), "float32"))
    >>> average.update()
    >>> with average.swapped_in():
    ...     bool(np.all(model.layers[0].kernel.numpy() != 1.0))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras
import tensorflow as tf


class WeightAverage(tf.Module):
    """Shadow weights ``d · shadow + (1 − d) · weight`` of ``model`` (see the module docstring)."""

    def __init__(self, model: keras.Model, decay: float, strategy: tf.distribute.Strategy | None = None) -> None:
        super().__init__(name="weight_average")
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"WeightAverage: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self._weights = [w for w in model.weights if w.dtype in ("float32", "float16", "bfloat16", "float64")]
        strategy = strategy or tf.distribute.get_strategy()
        with strategy.scope():
            self.shadows = [tf.Variable(w.value, trainable=False, name=f"shadow_{i}")
                            for i, w in enumerate(self._weights)]
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
        self._update = tf.function(self._update_eagerly)

    def _update_eagerly(self) -> None:
        n = tf.cast(self.updates, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, weight in zip(self.shadows, self._weights):
            value = tf.cast(weight.value, shadow.dtype)
            shadow.assign(tf.cast(decay, shadow.dtype) * shadow + tf.cast(1.0 - decay, shadow.dtype) * value)
        self.updates.assign_add(1)

    def update(self) -> None:
        """Move the shadows one step towards the model's current weights."""
        self._update()

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; the live ones return after it."""
        live = [w.numpy() for w in self._weights]
        for shadow, weight in zip(self.shadows, self._weights):
            weight.assign(shadow.numpy())
        try:
            yield
        finally:
            for value, weight in zip(live, self._weights):
                weight.assign(value)
