"""SIKD: class-wise averaged images and the student loss against numpy computations."""

import numpy as np
import pytest
import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.sikd import classwise_average, sikd_loss_per_example

RNG = np.random.default_rng(5)


def numpy_classwise_average(image, labels, num_classes):
    out = np.zeros_like(image, dtype="float64")
    for b in range(image.shape[0]):
        for k in range(num_classes):
            where = labels[b] == k
            out[b][where] = image[b][where].sum(axis=0) / (where.sum() + 1e-8)
    return out


def example_batch():
    image = RNG.uniform(0, 10, size=(2, 4, 4, 2)).astype("float32")
    labels = np.zeros((2, 4, 4), "int32")
    labels[0, 1:3, 1:3] = 1
    labels[0, 3, 3] = 2  # class 2 present once in image 0
    labels[1, :, 2:] = 1  # class 2 absent from image 1
    return image, labels


def test_classwise_average_by_hand_with_absent_and_single_pixel_classes():
    image, labels = example_batch()
    got = classwise_average(image, labels, num_classes=3).numpy()
    np.testing.assert_allclose(got, numpy_classwise_average(image, labels, 3), rtol=1e-5)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[0, 3, 3], image[0, 3, 3], rtol=1e-6)  # alone in its class
    np.testing.assert_allclose(got[1, 0, 0], image[1, :, :2].mean(axis=(0, 1)), rtol=1e-5)


def test_classwise_average_unbatched_and_channel_labels():
    image, labels = example_batch()
    batched = classwise_average(image, labels, 3).numpy()
    np.testing.assert_allclose(classwise_average(image[1], labels[1], 3).numpy(), batched[1], rtol=1e-6)
    np.testing.assert_allclose(classwise_average(image, labels[..., None], 3).numpy(), batched, rtol=1e-6)


def test_classwise_average_in_tf_data_with_unknown_batch():
    image, labels = example_batch()
    expected = numpy_classwise_average(image, labels, 3)
    batched = tf.data.Dataset.from_tensor_slices((image, labels)).batch(2)
    batched = batched.map(lambda x, y: classwise_average(x, y, 3))
    assert batched.element_spec.shape.as_list() == [None, 4, 4, 2]
    np.testing.assert_allclose(next(iter(batched)).numpy(), expected, rtol=1e-5)
    single = tf.data.Dataset.from_tensor_slices((image, labels)).map(lambda x, y: classwise_average(x, y, 3))
    np.testing.assert_allclose(np.stack([x.numpy() for x in single]), expected, rtol=1e-5)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_sikd_binary_loss_by_hand():
    _, labels = example_batch()
    logits = RNG.normal(size=(2, 4, 4, 1)).astype("float32")
    student = RNG.normal(size=(2, 4, 4, 3)).astype("float32")
    teacher = RNG.normal(size=(2, 4, 4, 3)).astype("float32")
    target = (labels > 0).astype("float64")
    p = sigmoid(logits[..., 0].astype("float64"))
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean(axis=(1, 2))
    mse = ((student - teacher) ** 2).mean(axis=(1, 2, 3))
    got = sikd_loss_per_example(labels, logits, student, teacher, num_classes=1)
    np.testing.assert_allclose(got.numpy(), bce + 2.0 * mse, rtol=1e-5)
    lighter = sikd_loss_per_example(labels, logits, student, teacher, num_classes=1, feature_weight=0.5)
    np.testing.assert_allclose(lighter.numpy(), bce + 0.5 * mse, rtol=1e-5)


def test_sikd_multiclass_loss_by_hand():
    _, labels = example_batch()
    logits = RNG.normal(size=(2, 4, 4, 3)).astype("float64")
    features = RNG.normal(size=(2, 4, 4, 2)).astype("float32")
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    ce = -np.log(np.take_along_axis(p, labels[..., None], -1)[..., 0]).mean(axis=(1, 2))
    got = sikd_loss_per_example(labels, logits.astype("float32"), features, features, num_classes=3)
    np.testing.assert_allclose(got.numpy(), ce, rtol=1e-5)  # identical features: no MSE
    with pytest.raises(MedistillError, match="num_classes is 4"):
        sikd_loss_per_example(labels, logits, features, features, num_classes=4)
    with pytest.raises(MedistillError, match="channels"):
        sikd_loss_per_example(labels, logits, features, features[..., :1], num_classes=3)


def test_sikd_gradients_reach_student_not_teacher():
    _, labels = example_batch()
    logits = tf.Variable(RNG.normal(size=(2, 4, 4, 3)).astype("float32"))
    student = tf.Variable(RNG.normal(size=(2, 4, 4, 2)).astype("float32"))
    teacher = tf.constant(RNG.normal(size=(2, 4, 4, 2)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        loss = tf.reduce_mean(sikd_loss_per_example(labels, logits, student, teacher, 3))
    grad_logits, grad_student, grad_teacher = tape.gradient(loss, [logits, student, teacher])
    assert np.abs(grad_logits.numpy()).sum() > 0 and np.abs(grad_student.numpy()).sum() > 0
    assert grad_teacher is None


def test_sikd_traces_with_unknown_batch():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4, 4], tf.int32),
            tf.TensorSpec([None, 4, 4, 1], tf.float32),
            tf.TensorSpec([None, 4, 4, 2], tf.float32),
            tf.TensorSpec([None, 4, 4, 2], tf.float32),
        ]
    )
    def loss(labels, logits, student, teacher):
        return sikd_loss_per_example(labels, logits, student, teacher, num_classes=1)

    _, labels = example_batch()
    logits, student, teacher = np.zeros((2, 4, 4, 1)), np.ones((2, 4, 4, 2)), np.zeros((2, 4, 4, 2))
    inputs = (labels, logits.astype("float32"), student.astype("float32"), teacher.astype("float32"))
    np.testing.assert_allclose(loss(*inputs).numpy(), [np.log(2.0) + 2.0] * 2, rtol=1e-6)
