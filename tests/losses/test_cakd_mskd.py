"""CAKD and MSKD (LCOV-Net) against numpy computations on tiny tensors."""

import numpy as np
import pytest
import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.cakd import cakd_loss_per_example, class_affinity, class_probabilities
from medistill.losses.mskd import lcov_total_per_example, mskd_loss_per_example, norm_temperature

RNG = np.random.default_rng(11)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def two_class(z):
    """Numpy [0, z] logits for a one-channel map (softmax gives [1-σ, σ])."""
    return np.concatenate([np.zeros_like(z), z], axis=-1) if z.shape[-1] == 1 else z


def numpy_cakd(student, teacher):
    losses = []
    for s, t in zip(student.astype("float64"), teacher.astype("float64")):
        qs = softmax(two_class(s)).reshape(-1, max(s.shape[-1], 2))  # (N, K)
        qt = softmax(two_class(t)).reshape(-1, max(t.shape[-1], 2))
        ms, mt = qs.T @ qs, qt.T @ qt
        cos = [
            ms[:, k] @ mt[:, k] / np.linalg.norm(ms[:, k]) / np.linalg.norm(mt[:, k])
            for k in range(ms.shape[0])
        ]
        losses.append(-np.mean(cos))
    return np.array(losses)


def test_class_affinity_by_hand():
    # Two pixels, two classes: Q (K×N) = [[0.9, 0.2], [0.1, 0.8]].
    probabilities = np.array([[[[0.9, 0.1], [0.2, 0.8]]]], "float32")  # (1, 1, 2, 2)
    expected = np.array([[0.81 + 0.04, 0.09 + 0.16], [0.09 + 0.16, 0.01 + 0.64]])
    got = class_affinity(probabilities)
    assert got.shape == (1, 2, 2)
    np.testing.assert_allclose(got.numpy()[0], expected, rtol=1e-6)


def test_one_channel_probabilities_are_one_minus_sigmoid_and_sigmoid():
    z = np.array([[[[-1.0], [2.0]]]], "float32")
    p = 1 / (1 + np.exp(-z[..., 0]))
    np.testing.assert_allclose(class_probabilities(z).numpy(), np.stack([1 - p, p], -1), rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_cakd_matches_numpy_and_stays_in_range(channels):
    student = RNG.normal(size=(3, 4, 4, channels)).astype("float32") * 2
    teacher = RNG.normal(size=(3, 4, 4, channels)).astype("float32") * 2
    got = cakd_loss_per_example(student, teacher).numpy()
    np.testing.assert_allclose(got, numpy_cakd(student, teacher), rtol=1e-5)
    assert np.all(got >= -1.0 - 1e-6) and np.all(got <= 0.0)


def test_cakd_identical_inputs_give_minus_one_even_at_another_resolution():
    student = RNG.normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(cakd_loss_per_example(student, student).numpy(), [-1.0, -1.0], rtol=1e-6)
    # Each pixel repeated 2×2 times: M is 4 × larger, same direction -> still -1.
    teacher = np.repeat(np.repeat(student, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(cakd_loss_per_example(student, teacher).numpy(), [-1.0, -1.0], rtol=1e-6)
    far = -5 * student
    assert np.all(cakd_loss_per_example(student, far).numpy() > -0.999)


def test_norm_temperature_is_per_example_l2_norm_of_whole_map():
    z = RNG.normal(size=(2, 3, 3, 2)).astype("float32")
    expected = np.sqrt((z.astype("float64") ** 2).sum(axis=(1, 2, 3)))
    got = norm_temperature(z)
    assert got.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(got.numpy().ravel(), expected, rtol=1e-6)
    np.testing.assert_allclose(norm_temperature(np.zeros((1, 2, 2, 1), "float32")).numpy().ravel(), [1e-6], rtol=1e-5)


def numpy_mskd(student, teacher, axes=(1, 2, 3)):
    s, t = student.astype("float64"), teacher.astype("float64")
    ns = np.sqrt((s**2).sum(axis=axes, keepdims=True))
    nt = np.sqrt((t**2).sum(axis=axes, keepdims=True))
    log_ps = np.log(softmax(two_class(s) / ns))
    pt = softmax(two_class(t) / nt)
    return -(pt * log_ps).sum(-1).mean(axis=(1, 2))


@pytest.mark.parametrize("channels", [1, 4])
def test_mskd_matches_numpy(channels):
    student = RNG.normal(size=(2, 3, 3, channels)).astype("float32") * 3
    teacher = RNG.normal(size=(2, 3, 3, channels)).astype("float32") * 3
    got = mskd_loss_per_example(student, teacher).numpy()
    np.testing.assert_allclose(got, numpy_mskd(student, teacher), rtol=1e-5)
    per_pixel = mskd_loss_per_example(student, teacher, scope="pixel").numpy()
    np.testing.assert_allclose(per_pixel, numpy_mskd(student, teacher, axes=(3,)), rtol=1e-5)


def test_pixel_scope_norm_and_unknown_scope():
    z = np.array([[[[3.0, 4.0], [0.0, 0.0]]]], "float32")  # (1, 1, 2, 2)
    np.testing.assert_allclose(norm_temperature(z, scope="pixel").numpy().ravel(), [5.0, 1e-6], rtol=1e-5)
    with pytest.raises(MedistillError, match="scope"):
        norm_temperature(z, scope="image")


@pytest.mark.parametrize("loss", [mskd_loss_per_example, cakd_loss_per_example])
def test_student_gets_a_gradient_and_teacher_none(loss):
    student = tf.Variable(RNG.normal(size=(2, 4, 4, 3)).astype("float32"))
    teacher = tf.constant(RNG.normal(size=(2, 4, 4, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        value = tf.reduce_mean(loss(student, teacher))
    grad_student, grad_teacher = tape.gradient(value, [student, teacher])
    assert grad_student is not None and np.abs(grad_student.numpy()).max() > 1e-6
    assert np.all(np.isfinite(grad_student.numpy()))
    assert grad_teacher is None


def test_mskd_gradient_is_finite_for_an_all_zero_student():
    student = tf.Variable(tf.zeros((1, 2, 2, 2)))
    teacher = tf.constant(RNG.normal(size=(1, 2, 2, 2)).astype("float32"))
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(mskd_loss_per_example(student, teacher))
    assert np.all(np.isfinite(tape.gradient(value, student).numpy()))


def test_lcov_total_by_hand():
    dice = np.array([0.5, 1.0], "float32")
    cakd = [np.array([-0.9, -0.8], "float32"), np.array([-1.0, -0.5], "float32")]
    mskd = [np.array([0.7, 0.6], "float32"), np.array([0.3, 0.2], "float32")]
    weights = (0.6, 0.4)
    expected = 0.8 * dice + 0.2 * (
        0.6 * (0.1 * cakd[0] + 0.2 * mskd[0]) + 0.4 * (0.1 * cakd[1] + 0.2 * mskd[1])
    )
    got = lcov_total_per_example(dice, cakd, mskd, scale_weights=weights)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    four = lcov_total_per_example(dice, cakd * 2, mskd * 2)  # default weights (0.4, 0.2, 0.2, 0.2)
    both = 0.1 * np.array(cakd) + 0.2 * np.array(mskd)
    np.testing.assert_allclose(four.numpy(), 0.8 * dice + 0.2 * (0.6 * both[0] + 0.4 * both[1]), rtol=1e-6)
    with pytest.raises(MedistillError, match="2 distillation scales but 4 scale weights"):
        lcov_total_per_example(dice, cakd, mskd)
    with pytest.raises(MedistillError, match="channels"):
        mskd_loss_per_example(np.zeros((1, 2, 2, 2), "float32"), np.zeros((1, 2, 2, 3), "float32"))


def test_cakd_and_mskd_trace_with_unknown_batch_and_size():
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def both(student, teacher):
        return cakd_loss_per_example(student, teacher), mskd_loss_per_example(student, teacher)

    student = RNG.normal(size=(3, 4, 4, 3)).astype("float32")
    teacher = RNG.normal(size=(3, 4, 4, 3)).astype("float32")
    cakd, mskd = both(student, teacher)
    np.testing.assert_allclose(cakd.numpy(), numpy_cakd(student, teacher), rtol=1e-5)
    np.testing.assert_allclose(mskd.numpy(), numpy_mskd(student, teacher), rtol=1e-5)
