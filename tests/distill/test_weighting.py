"""Loss weightings (ULWR, learned, fixed): values by hand, gradients, configs, checkpoints."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from medistill.distill.weighting import (
    FixedWeighting,
    LearnedWeighting,
    ULWRWeighting,
    build_weighting,
    ulwr_penalty,
    ulwr_weights,
)
from medistill.errors import MedistillError


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ulwr_by_hand(sigma2: float, feature: bool = True) -> np.ndarray:
    raw = np.array([1.0 / (sigma2 + 1e-6), _sig(1.0 - sigma2), 0.4 if feature else 0.0])
    return raw / raw.sum()


TERMS = {"bce": np.array([0.7, 0.2], "float32"), "prob": np.array([0.1, 0.3], "float32"),
         "feat": np.array([2.0, 1.5], "float32")}


def test_ulwr_weights_by_hand_and_normalised():
    sigma2 = np.array([0.01, 0.2, 1e-4, 0.0], "float32")
    got = ulwr_weights(sigma2).numpy()
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(got, np.stack([_ulwr_by_hand(float(s)) for s in sigma2]), rtol=1e-5)
    # sigma2 = 0.01: w1 = 1/0.010001 = 99.990, w2 = sigmoid(0.99) = 0.72909, w3 = 0.4
    np.testing.assert_allclose(got[0], [0.988834, 0.00721019, 0.00395573], rtol=1e-4)
    # w1 dominates for small uncertainties: 0.9888 at 0.01, 0.99988 at 1e-4 (1 - 1.13e-4)
    assert got[0, 0] > 0.98 and got[2, 0] > 0.9998 and got[1, 0] < got[0, 0]


def test_ulwr_without_feature_term():
    got = ulwr_weights(np.array([0.01], "float32"), has_feature=False).numpy()
    np.testing.assert_allclose(got[0], _ulwr_by_hand(0.01, feature=False), rtol=1e-5)
    assert got[0, 2] == 0.0


def test_ulwr_penalty_by_hand():
    weights = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]], "float32")
    # row 0: mean 1/3 -> (0.3667² + 0.1333² + 0.2333²) * 0.1; row 1 over bce/prob only when no feature
    expected0 = 0.1 * ((0.7 - 1 / 3) ** 2 + (0.2 - 1 / 3) ** 2 + (0.1 - 1 / 3) ** 2)
    np.testing.assert_allclose(ulwr_penalty(weights).numpy()[0], expected0, rtol=1e-5)
    np.testing.assert_allclose(ulwr_penalty(weights, beta=0.5, has_feature=False).numpy(),
                               [0.5 * (0.25 ** 2 * 2), 0.0], rtol=1e-5)


def test_ulwr_layer_total_report_and_no_gradient_to_weights():
    sigma2 = tf.Variable([0.01, 0.2])
    layer = ULWRWeighting()
    with tf.GradientTape() as tape:
        terms = {k: tf.constant(v) for k, v in TERMS.items()}
        tape.watch(list(terms.values()))
        total, report = layer(terms, sigma2)
        summed = tf.reduce_sum(total)
    weights = np.stack([_ulwr_by_hand(0.01), _ulwr_by_hand(0.2)])
    penalty = 0.1 * ((weights - weights.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    expected = weights[:, 0] * TERMS["bce"] + weights[:, 1] * TERMS["prob"] + weights[:, 2] * TERMS["feat"] + penalty
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5)
    assert set(report) == {"bce", "prob", "feat", "penalty"}
    np.testing.assert_allclose(report["penalty"].numpy(), penalty, rtol=1e-5)
    grads = tape.gradient(summed, [sigma2, terms["bce"]])
    assert grads[0] is None  # ULWR learns nothing and the uncertainty carries no gradient
    np.testing.assert_allclose(grads[1].numpy(), weights[:, 0], rtol=1e-5)


def test_ulwr_layer_with_bce_and_prob_only():
    terms = {"bce": TERMS["bce"], "prob": TERMS["prob"]}
    total, report = ULWRWeighting(beta=0.0)(terms, np.array([0.01, 0.01], "float32"))
    w = _ulwr_by_hand(0.01, feature=False)
    np.testing.assert_allclose(total.numpy(), w[0] * TERMS["bce"] + w[1] * TERMS["prob"], rtol=1e-5)
    assert set(report) == {"bce", "prob", "penalty"}
    with pytest.raises(MedistillError, match="bce, prob"):
        ULWRWeighting()({"bce": TERMS["bce"]}, np.zeros(2, "float32"))


def test_learned_weighting_by_hand_and_gradients():
    layer = LearnedWeighting(["bce", "prob", "feat"])
    assert [v.numpy() for v in layer.log_vars] == [0.0, 0.0, 0.0]
    s = np.array([0.5, -0.2, 1.0], "float32")
    for variable, value in zip(layer.log_vars, s):
        variable.assign(value)
    uncertainty = np.zeros(2, "float32")
    with tf.GradientTape() as tape:
        total, report = layer(TERMS, uncertainty)
        summed = tf.reduce_sum(total)
    losses = np.stack([TERMS["bce"], TERMS["prob"], TERMS["feat"]], axis=1)  # (B, 3)
    np.testing.assert_allclose(total.numpy(), (np.exp(-s) * losses + s).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(report["prob"].numpy(), [math.exp(0.2)] * 2, rtol=1e-6)
    grads = tape.gradient(summed, layer.trainable_variables)
    # d/ds_i sum_b (exp(-s_i) L_ib + s_i) = -exp(-s_i) sum_b L_ib + B
    np.testing.assert_allclose([g.numpy() for g in grads], -np.exp(-s) * losses.sum(axis=0) + 2, rtol=1e-5)


def test_learned_weighting_checkpoints_and_config(tmp_path):
    layer = LearnedWeighting(["bce", "prob"])
    layer.log_vars[1].assign(0.25)
    path = tf.train.Checkpoint(weighting=layer).save(str(tmp_path / "ckpt"))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, LearnedWeighting) and restored.names == ["bce", "prob"]
    assert restored.log_vars[1].numpy() == 0.0
    tf.train.Checkpoint(weighting=restored).restore(path).assert_existing_objects_matched()
    assert restored.log_vars[1].numpy() == 0.25
    with pytest.raises(MedistillError, match="built for the loss terms"):
        restored({"bce": TERMS["bce"]}, np.zeros(2, "float32"))


def test_fixed_weighting_by_hand_and_inside_a_function():
    layer = FixedWeighting({"bce": 2.0, "prob": 0.5})
    run = tf.function(lambda terms, u: layer(terms, u))
    total, report = run({"bce": TERMS["bce"], "prob": TERMS["prob"]}, np.zeros(2, "float32"))
    np.testing.assert_allclose(total.numpy(), 2.0 * TERMS["bce"] + 0.5 * TERMS["prob"], rtol=1e-6)
    np.testing.assert_allclose(report["prob"].numpy(), [0.5, 0.5])
    clone = FixedWeighting.from_config(layer.get_config())
    assert clone.weights_by_term == {"bce": 2.0, "prob": 0.5}


def test_build_weighting_names_terms_and_errors():
    assert isinstance(build_weighting("ulwr", ["bce", "prob", "feat"]), ULWRWeighting)
    assert build_weighting("learned", ["bce", "prob"]).names == ["bce", "prob"]
    assert build_weighting("fixed", ["bce", "prob"]).weights_by_term == {"bce": 1.0, "prob": 1.0}
    # a feat weight is dropped when the teacher has no features
    fixed = build_weighting("fixed", ["bce", "prob"], {"bce": 1, "prob": 2, "feat": 3})
    assert fixed.weights_by_term == {"bce": 1.0, "prob": 2.0}
    with pytest.raises(MedistillError, match="unknown loss weighting 'kendall'"):
        build_weighting("kendall", ["bce", "prob"])
    with pytest.raises(MedistillError, match="missing weight"):
        build_weighting("fixed", ["bce", "prob", "feat"], {"bce": 1, "prob": 1})
    with pytest.raises(MedistillError, match="unknown term"):
        build_weighting("fixed", ["bce", "prob"], {"bce": 1, "prob": 1, "tversky": 1})
    with pytest.raises(MedistillError, match="finite number >= 0"):
        build_weighting("fixed", ["bce", "prob"], {"bce": -1, "prob": 1})
    with pytest.raises(MedistillError, match="needs the terms bce, prob"):
        build_weighting("ulwr", ["bce", "feat"])
    with pytest.raises(MedistillError, match="distinct names"):
        build_weighting("learned", ["bce", "tversky"])


def test_weightings_stay_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = ULWRWeighting()
        total, report = layer({"bce": tf.constant([0.5], tf.float16), "prob": tf.constant([0.1], tf.float16)},
                              np.array([1e-4], "float32"))
    finally:
        keras.config.set_dtype_policy(previous)
    # float16 would round w2 ~ 1e-4 badly; float32 keeps it
    assert total.dtype == tf.float32 and report["prob"].dtype == tf.float32
    np.testing.assert_allclose(report["prob"].numpy(), [_ulwr_by_hand(1e-4, feature=False)[1]], rtol=1e-4)
