"""The moving average of the weights: its formula, the swap, and its wiring in the loop (validation, best, resume)."""

from __future__ import annotations

import keras
import numpy as np

from medistill.train.averaging import WeightAverage
from medistill.train.loop import LoopSettings
from tests.train.test_loop import tiny_setup


def _dense():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def test_shadows_follow_the_warmed_up_decay_and_the_swap_restores_the_live_weights():
    model = _dense()
    kernel = model.layers[0].kernel
    start = kernel.numpy().copy()
    average = WeightAverage(model, decay=0.9)
    expected = start.copy()
    for n, value in enumerate((1.0, 2.0, 3.0)):
        kernel.assign(np.full((2, 1), value, "float32"))
        average.update()
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    np.testing.assert_allclose(average.shadows[0].numpy(), expected, rtol=1e-6)
    assert int(average.updates.numpy()) == 3
    with average.swapped_in():
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(kernel.numpy(), np.full((2, 1), 3.0, "float32"))


def test_the_loop_validates_and_keeps_the_averaged_weights_not_the_live_ones(tmp_path):
    seen = []
    settings = LoopSettings(epochs=2, monitor="val_dice", mode="max", average_decay=0.5)
    loop, data, model = tiny_setup(tmp_path, settings=settings, validate=lambda: (
        seen.append([w.copy() for w in model.get_weights()]) or {"val_dice": float(len(seen))}))
    loop.fit(lambda epoch: data)
    live = [w.copy() for w in model.get_weights()]
    shadows = [s.numpy() for s in loop.average.shadows]
    # validation ran on the shadows of its epoch; the last epoch's are the shadows now
    for validated, shadow in zip(seen[-1], shadows):
        np.testing.assert_allclose(validated, shadow, rtol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(live, shadows))
    loop.load_best()  # the best epoch is the last (val_dice 2 > 1): its averaged weights
    for loaded, shadow in zip(model.get_weights(), shadows):
        np.testing.assert_allclose(loaded, shadow, rtol=1e-6)


def test_a_resumed_run_continues_the_same_average(tmp_path):
    settings = LoopSettings(epochs=1, monitor="loss", mode="min", average_decay=0.9)
    loop, data, _ = tiny_setup(tmp_path, settings=settings)
    loop.fit(lambda epoch: data)
    shadows = [s.numpy() for s in loop.average.shadows]
    resumed, _, _ = tiny_setup(tmp_path, settings=LoopSettings(epochs=2, monitor="loss", mode="min",
                                                               average_decay=0.9))
    assert resumed.restore() == 1
    assert int(resumed.average.updates.numpy()) == 4  # 16 examples / batch 4 = 4 steps
    for restored, saved in zip(resumed.average.shadows, shadows):
        np.testing.assert_array_equal(restored.numpy(), saved)


def test_without_a_decay_the_loop_keeps_the_live_weights(tmp_path):
    loop, data, model = tiny_setup(tmp_path, settings=LoopSettings(epochs=1, monitor="loss", mode="min"))
    loop.fit(lambda epoch: data)
    assert loop.average is None
    live = [w.copy() for w in model.get_weights()]
    loop.load_best()
    for loaded, kept in zip(model.get_weights(), live):
        np.testing.assert_array_equal(loaded, kept)
