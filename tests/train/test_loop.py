"""The shared training loop on a tiny regression model: NaN stop, early stop, resume."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from medistill.train.loop import LoopSettings, NonFiniteLossError, TrainingLoop

GLOBAL_BATCH = 4


def tiny_setup(run_dir, step_hook=None, validate=None, settings=None):
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build(model.trainable_variables)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)

    def step(batch):
        features, target = batch
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(features, training=True) - target), axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        terms = {"loss": loss}
        if step_hook is not None:
            terms["extra"] = step_hook(optimizer.iterations)
        return terms

    settings = settings or LoopSettings(epochs=4, monitor="loss", mode="min")
    loop = TrainingLoop(strategy, run_dir, model, optimizer, step, validate, settings)
    return loop, data, model


def test_loss_falls_and_history_is_written(tmp_path):
    loop, data, _ = tiny_setup(tmp_path)
    history = loop.fit(lambda epoch: data)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    table = pd.read_csv(tmp_path / "history.csv")
    assert table["epoch"].tolist() == [1, 2, 3, 4]
    assert (tmp_path / "best.weights.h5").exists()


def test_non_finite_term_stops_with_its_name_and_keeps_the_last_checkpoint(tmp_path):
    # steps 1-4 are epoch 1; the term turns NaN in epoch 2
    def hook(iterations):
        return tf.where(iterations > 5, tf.constant(np.nan), tf.constant(0.0))

    loop, data, _ = tiny_setup(tmp_path, step_hook=hook)
    with pytest.raises(NonFiniteLossError, match="extra") as error:
        loop.fit(lambda epoch: data)
    assert "epoch 2" in str(error.value)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-1")
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1


def test_early_stop_after_patience_without_improvement(tmp_path):
    scores = iter([0.5, 0.4, 0.4, 0.3, 0.9])
    settings = LoopSettings(epochs=5, patience=2, monitor="val_dice", mode="max")
    loop, data, _ = tiny_setup(tmp_path, validate=lambda: {"val_dice": next(scores)}, settings=settings)
    history = loop.fit(lambda epoch: data)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert int(loop.best_epoch.numpy()) == 0


def test_no_early_stop_before_min_epochs_so_a_slow_start_can_still_win(tmp_path):
    """A label-free student scores 0 for its first epochs: patience must not end it there."""
    scores = iter([0.0, 0.0, 0.0, 0.0, 0.7, 0.6])
    settings = LoopSettings(epochs=6, patience=2, monitor="val_dice", mode="max", min_epochs=5)
    loop, data, _ = tiny_setup(tmp_path, validate=lambda: {"val_dice": next(scores)}, settings=settings)
    history = loop.fit(lambda epoch: data)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert int(loop.best_epoch.numpy()) == 4


def test_a_new_loop_resumes_where_the_last_stopped(tmp_path):
    loop, data, model = tiny_setup(tmp_path, settings=LoopSettings(epochs=2, monitor="loss", mode="min"))
    loop.fit(lambda epoch: data)
    weights = [w.copy() for w in model.get_weights()]
    resumed, data, model2 = tiny_setup(tmp_path, settings=LoopSettings(epochs=3, monitor="loss", mode="min"))
    assert resumed.restore() == 2
    for restored, saved in zip(model2.get_weights(), weights):
        np.testing.assert_array_equal(restored, saved)
    history = resumed.fit(lambda epoch: data)
    assert [row["epoch"] for row in history] == [1, 2, 3]
