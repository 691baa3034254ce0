"""MedDistill's distillation losses against NumPy computed by hand on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medistill.losses.distillation import (
    agreement_dice_per_example,
    feature_cosine_per_example,
    feature_mse_per_example,
    prob_mse_per_example,
    soft_bce_per_example,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _rng_maps(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, shape).astype("float32"), rng.normal(0, 2, shape).astype("float32")


def test_soft_bce_matches_cross_entropy_formula():
    target, logits = _rng_maps((2, 3, 4))
    z = logits.astype(np.float64)
    p = _sigmoid(z)
    expected = -(target * np.log(p) + (1 - target) * np.log(1 - p)).reshape(2, -1).mean(axis=1)
    got = soft_bce_per_example(target, logits[..., None])  # (B, H, W) target, (B, H, W, 1) logits
    assert got.shape == (2,) and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_soft_bce_is_finite_for_extreme_logits_and_float16():
    target = np.array([[[0.0, 1.0, 0.3]]], "float32")
    logits = np.array([[[80.0, -80.0, 0.0]]], "float16")
    got = soft_bce_per_example(target, logits).numpy()
    # BCE(80 | 0) = 80, BCE(-80 | 1) = 80, BCE(0 | 0.3) = log 2
    np.testing.assert_allclose(got, [(80.0 + 80.0 + np.log(2.0)) / 3.0], rtol=1e-5)


def test_soft_bce_gradient_is_prob_minus_target():
    target, logits = _rng_maps((1, 2, 2), seed=1)
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(soft_bce_per_example(target, z))
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), (_sigmoid(logits) - target) / 4.0, rtol=1e-5, atol=1e-7)


def test_prob_mse_by_hand():
    target, logits = _rng_maps((2, 3, 3, 1), seed=2)
    expected = ((_sigmoid(logits.astype(np.float64)) - target) ** 2).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(prob_mse_per_example(target, logits).numpy(), expected, rtol=1e-5)


def test_mask_losses_reject_different_sizes():
    with pytest.raises(ValueError, match="differ in shape"):
        soft_bce_per_example(np.zeros((1, 4, 4), "float32"), np.zeros((1, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        prob_mse_per_example(np.zeros((1, 4, 4, 2), "float32"), np.zeros((1, 4, 4, 2), "float32"))


def test_feature_mse_by_hand_and_teacher_gets_no_gradient():
    rng = np.random.default_rng(3)
    student_np = rng.normal(size=(2, 2, 3, 4)).astype("float32")
    teacher_np = rng.normal(size=(2, 2, 3, 4)).astype("float16")
    expected = ((student_np - teacher_np.astype(np.float32)) ** 2).reshape(2, -1).mean(axis=1)
    student, teacher = tf.Variable(student_np), tf.Variable(teacher_np.astype("float32"))
    with tf.GradientTape() as tape:
        loss = feature_mse_per_example(student, teacher)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    grad_student, grad_teacher = tape.gradient(total, [student, teacher])
    assert grad_teacher is None
    np.testing.assert_allclose(grad_student.numpy(), 2 * (student_np - teacher_np.astype(np.float32)) / 24, rtol=1e-4)


def test_feature_cosine_by_hand_with_a_zero_vector():
    student = np.array([[[[1.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [1.0, 1.0]]]], "float32")  # (1, 2, 2, 2)
    teacher = np.array([[[[1.0, 0.0], [2.0, 1.0]], [[4.0, -3.0], [-1.0, -1.0]]]], "float32")
    # per pixel 1 - cos: identical -> 0, zero student -> 1, orthogonal -> 1, opposite -> 2
    np.testing.assert_allclose(feature_cosine_per_example(student, teacher).numpy(), [(0 + 1 + 1 + 2) / 4], rtol=1e-6)
    variable = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = feature_cosine_per_example(variable, teacher)
    assert np.all(np.isfinite(tape.gradient(loss, variable).numpy()))


def test_feature_losses_reject_mismatched_maps():
    with pytest.raises(ValueError, match="FeatureProjection"):
        feature_mse_per_example(np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 4, 4, 16), "float32"))
    with pytest.raises(ValueError, match="differ"):
        feature_cosine_per_example(np.zeros((1, 8, 8, 8), "float32"), np.zeros((1, 4, 4, 8), "float32"))
    with pytest.raises(ValueError, match=r"\(B, h, w, C\)"):
        feature_mse_per_example(np.zeros((1, 4, 8), "float32"), np.zeros((1, 4, 8), "float32"))


def test_feature_loss_checks_shapes_inside_a_function():
    loss = tf.function(feature_mse_per_example, input_signature=[tf.TensorSpec((None, None, None, 2)),
                                                                 tf.TensorSpec((None, None, None, 2))])
    assert loss(np.ones((1, 2, 2, 2), "float32"), np.zeros((1, 2, 2, 2), "float32")).numpy().tolist() == [1.0]
    with pytest.raises(tf.errors.InvalidArgumentError):
        loss(np.ones((1, 2, 2, 2), "float32"), np.zeros((1, 1, 1, 2), "float32"))


def test_agreement_dice_by_hand_and_empty_rule():
    student = np.zeros((4, 2, 3), "float32")
    teacher = np.zeros((4, 2, 3), "float32")
    student[0, 0, :] = 0.9                      # 3 pixels
    teacher[0, :, 0] = 0.8                      # 2 pixels, 1 shared -> 2*1/5
    student[1, 1, 1] = 0.7                      # only the student -> 0
    student[3], teacher[3] = 0.5, 0.6           # student exactly at the threshold is background -> 0
    got = agreement_dice_per_example(student, teacher[..., None]).numpy()
    np.testing.assert_allclose(got, [0.4, 0.0, 1.0, 0.0], rtol=1e-6)  # example 2: both empty -> 1
    np.testing.assert_allclose(agreement_dice_per_example(student, teacher, threshold=0.4).numpy()[3], 1.0)


def test_feature_projection_channels_gradients_and_config():
    import keras

    from medistill.distill.projection import FeatureProjection

    projection = FeatureProjection(6, name="proj")
    features = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype("float32")
    teacher = np.zeros((2, 4, 4, 6), "float32")
    with tf.GradientTape() as tape:
        out = projection(features)
        loss = tf.reduce_sum(feature_mse_per_example(out, teacher))
    assert out.shape == (2, 4, 4, 6)
    grads = tape.gradient(loss, projection.trainable_variables)
    assert [tuple(v.shape) for v in projection.trainable_variables] == [(1, 1, 3, 6), (6,)]
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    # a 1x1 convolution with bias is a per-pixel affine map
    kernel, bias = (v.numpy() for v in projection.trainable_variables)
    np.testing.assert_allclose(out.numpy(), features @ kernel[0, 0] + bias, rtol=1e-5, atol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(projection))
    assert isinstance(clone, FeatureProjection) and clone.channels == 6 and clone.name == "proj"
    assert clone.built  # rebuilt from its build config
    clone.set_weights(projection.get_weights())
    np.testing.assert_allclose(clone(features).numpy(), out.numpy(), rtol=1e-6)
