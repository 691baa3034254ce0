"""The shared run core: global batch rule, mixed precision helpers, export naming."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from medistill.train.precision import float32_copy, is_mixed, scaled_gradients, set_precision, wrap_optimizer
from medistill.train.session import RunSession
from medistill.networks import build_student


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(("replicas", "requested", "available", "expected"), [
    (1, 8, 100, 8), (2, 8, 100, 8), (2, 7, 100, 6), (4, 8, 5, 4), (2, 1, 100, 2), (3, 8, 100, 6),
])
def test_global_batch_is_a_multiple_of_the_replicas(replicas, requested, available, expected):
    class Strategy:
        num_replicas_in_sync = replicas

    session = RunSession(Strategy(), run_dir=None, chief=True, resumed=False)
    assert session.global_batch(requested, available) == expected


def test_mixed_precision_is_refused_without_gpu(restore_policy, caplog):
    with caplog.at_level(logging.WARNING, logger="medistill"):
        assert set_precision(True) == "float32"
    assert "needs a GPU" in caplog.text
    assert keras.mixed_precision.global_policy().name == "float32"
    assert set_precision(False) == "float32"


def test_loss_scaling_gives_the_plain_update(restore_policy):
    """Scaled gradients through LossScaleOptimizer apply the same step as plain SGD."""
    def one_step(policy: str) -> tuple[np.ndarray, np.ndarray]:
        layer = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(0.5))
        layer.build((None, 2))
        optimizer = wrap_optimizer(keras.optimizers.SGD(0.1), policy)
        optimizer.build(layer.trainable_variables)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(tf.constant([[1.0, -2.0]])) ** 2)
        grads = scaled_gradients(tape, loss, layer.trainable_variables, optimizer)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))
        return layer.kernel.numpy().ravel(), grads[0].numpy().ravel()

    plain, plain_grad = one_step("float32")
    scaled, scaled_grad = one_step("mixed_float16")
    # y = 0.5 - 1 = -0.5; dL/dw = 2y·x = [-1, 2]; w - 0.1·grad = [0.6, 0.3]
    np.testing.assert_allclose(plain, [0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(scaled, plain, rtol=1e-6)
    assert abs(scaled_grad[0]) > 1000 * abs(plain_grad[0])       # the gradient was scaled


def test_float32_copy_of_a_mixed_model_keeps_weights(restore_policy):
    keras.mixed_precision.set_global_policy("mixed_float16")
    mixed = build_student("unet", in_channels=1, num_classes=1, base_filters=4, depth=2)
    keras.mixed_precision.set_global_policy("float32")
    assert is_mixed(mixed)
    copy = float32_copy(mixed)
    assert not is_mixed(copy)
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((1, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(copy(x), np.float32), np.asarray(mixed(x), np.float32), atol=0.05)


def test_export_names_are_checked(tmp_path):
    from medistill.export import save_model_artifacts

    with pytest.raises(ValueError, match="keras_name"):
        save_model_artifacts(None, tmp_path, None, keras_name="weights.bin")
