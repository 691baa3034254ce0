"""KAMSD / EDSDF losses against numpy computations on tiny tensors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.kamsd import (
    FeatureAdapter,
    adapter_feature_loss_per_example,
    boundary_loss_per_example,
    build_adapters,
    deep_supervision_loss_per_example,
    supervised_loss_per_example,
    temperature_distillation_per_example,
)

RNG = np.random.default_rng(7)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_bce(target, logits):
    p = sigmoid(logits.astype("float64"))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def numpy_bce_dice(labels, logits):
    """BCE + (1 - soft Dice, smooth 1) per example; labels (B,H,W), logits (B,H,W,1)."""
    target = (labels > 0).astype("float64")
    z = logits[..., 0].astype("float64")
    p = sigmoid(z)
    bce = numpy_bce(target, z).mean(axis=(1, 2))
    dice = (2 * (p * target).sum(axis=(1, 2)) + 1) / (p.sum(axis=(1, 2)) + target.sum(axis=(1, 2)) + 1)
    return bce + 1 - dice


def numpy_ce_dice(labels, logits):
    k = logits.shape[-1]
    p = softmax(logits.astype("float64"))
    onehot = np.eye(k)[labels]
    ce = -(onehot * np.log(p)).sum(-1).mean(axis=(1, 2))
    inter = (p * onehot).sum(axis=(1, 2))
    dice = (2 * inter + 1) / (p.sum(axis=(1, 2)) + onehot.sum(axis=(1, 2)) + 1)
    return ce + 1 - dice[:, 1:].mean(-1)


def test_deep_supervision_binary_sums_heads_and_resizes_coarse_ones():
    labels = np.zeros((2, 4, 4), "int32")
    labels[0, 1:3, 1:3] = 1
    labels[1, :, :2] = 1
    fine = RNG.normal(size=(2, 4, 4, 1)).astype("float32")
    coarse = np.full((2, 2, 2, 1), 0.7, "float32")  # constant: bilinear resize keeps 0.7
    expected = numpy_bce_dice(labels, fine) + numpy_bce_dice(labels, np.full((2, 4, 4, 1), 0.7))
    got = deep_supervision_loss_per_example(labels, [coarse, fine], num_classes=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    with_channel = deep_supervision_loss_per_example(labels[..., None], [coarse, fine], num_classes=1)
    np.testing.assert_allclose(with_channel.numpy(), expected, rtol=1e-5)


def test_deep_supervision_multiclass_matches_ce_plus_dice():
    labels = RNG.integers(0, 3, size=(2, 4, 4)).astype("int32")
    heads = [RNG.normal(size=(2, 4, 4, 3)).astype("float32") for _ in range(3)]
    expected = sum(numpy_ce_dice(labels, h) for h in heads)
    got = deep_supervision_loss_per_example(labels, heads, num_classes=3)
    assert got.shape == (2,) and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_boundary_loss_is_summed_pixel_mean_bce_and_accepts_255_masks():
    boundary = np.zeros((2, 4, 4), "float32")
    boundary[0, 0, :] = 1
    boundary[1, :, 3] = 1
    heads = [RNG.normal(size=(2, 4, 4, 1)).astype("float32") for _ in range(2)]
    expected = sum(numpy_bce(boundary, h[..., 0]).mean(axis=(1, 2)) for h in heads)
    np.testing.assert_allclose(boundary_loss_per_example(boundary, heads).numpy(), expected, rtol=1e-5)
    as_png = (boundary * 255).astype("uint8")[..., None]
    np.testing.assert_allclose(boundary_loss_per_example(as_png, heads).numpy(), expected, rtol=1e-5)


def test_supervised_loss_adds_boundary_term_only_when_heads_are_given():
    labels = np.zeros((1, 4, 4), "int32")
    labels[0, 1:3, 1:3] = 1
    masks = [RNG.normal(size=(1, 4, 4, 1)).astype("float32")]
    boundary_heads = [np.zeros((1, 4, 4, 1), "float32")]
    alone = supervised_loss_per_example(labels, masks, 1).numpy()
    np.testing.assert_allclose(alone, numpy_bce_dice(labels, masks[0]), rtol=1e-5)
    both = supervised_loss_per_example(labels, masks, 1, labels.astype("float32"), boundary_heads)
    np.testing.assert_allclose(both.numpy(), alone + np.log(2.0), rtol=1e-5)  # BCE at logit 0 = log 2
    with pytest.raises(MedistillError, match="boundary_true"):
        supervised_loss_per_example(labels, masks, 1, None, boundary_heads)


def test_adapter_feature_loss_by_hand_with_resize_to_teacher_size():
    same_student = RNG.normal(size=(2, 3, 3, 2)).astype("float32")
    same_teacher = RNG.normal(size=(2, 3, 3, 2)).astype("float32")
    # A coarse student map constant per channel stays constant after bilinear resizing.
    coarse_student = np.tile(np.array([1.0, -2.0], "float32"), (2, 2, 2, 1))
    fine_teacher = RNG.normal(size=(2, 4, 4, 2)).astype("float32")
    expected = 0.25 * ((same_student - same_teacher) ** 2).mean(axis=(1, 2, 3))
    expected += 0.25 * ((np.array([1.0, -2.0]) - fine_teacher) ** 2).mean(axis=(1, 2, 3))
    got = adapter_feature_loss_per_example([same_student, coarse_student], [same_teacher, fine_teacher])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    doubled = adapter_feature_loss_per_example([same_student], [same_teacher], weight=0.5)
    by_hand = 0.5 * ((same_student - same_teacher) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(doubled.numpy(), by_hand, rtol=1e-5)


def test_adapters_receive_gradients_and_teacher_features_none():
    adapters = build_adapters([4, 6])
    assert [a.name for a in adapters] == ["adapter1", "adapter2"]
    student = [tf.constant(RNG.normal(size=shape), tf.float32) for shape in [(2, 4, 4, 3), (2, 2, 2, 5)]]
    teacher = [tf.constant(RNG.normal(size=shape), tf.float32) for shape in [(2, 4, 4, 4), (2, 2, 2, 6)]]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(teacher)
        adapted = [adapter(feature) for adapter, feature in zip(adapters, student)]
        loss = tf.reduce_mean(adapter_feature_loss_per_example(adapted, teacher))
    variables = [v for a in adapters for v in a.trainable_variables]
    assert len(variables) == 4  # kernel + bias per adapter
    for gradient in tape.gradient(loss, variables):
        assert gradient is not None and np.abs(gradient.numpy()).sum() > 0
    assert all(g is None for g in tape.gradient(loss, teacher))


def numpy_temperature(student, teacher, t):
    act = sigmoid if student.shape[-1] == 1 else softmax
    difference = act(student.astype("float64") / t) - act(teacher.astype("float64") / t)
    return t**2 * (difference**2).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("channels", [1, 3])
def test_temperature_distillation_by_hand(channels):
    students = [RNG.normal(size=(2, 3, 3, channels)).astype("float32") * 4 for _ in range(2)]
    teachers = [RNG.normal(size=(2, 3, 3, channels)).astype("float32") * 4 for _ in range(2)]
    expected = sum(numpy_temperature(s, t, 4.0) for s, t in zip(students, teachers))
    got = temperature_distillation_per_example(students, teachers)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_temperature_scaling_factor_is_t_squared_times_mse_ratio():
    student = np.array([[[[2.0]], [[-1.0]]]], "float32")  # (1, 2, 1, 1)
    teacher = np.array([[[[-2.0]], [[3.0]]]], "float32")
    # By hand: mse_T = mean((σ(s/T) - σ(t/T))²); the loss ratio for T=8 vs T=4 is 4·mse_8/mse_4.
    mse4 = np.mean((sigmoid(student / 4) - sigmoid(teacher / 4)) ** 2)
    mse8 = np.mean((sigmoid(student / 8) - sigmoid(teacher / 8)) ** 2)
    at4 = temperature_distillation_per_example([student], [teacher], temperature=4.0).numpy()[0]
    at8 = temperature_distillation_per_example([student], [teacher], temperature=8.0).numpy()[0]
    np.testing.assert_allclose(at4, 16 * mse4, rtol=1e-5)
    np.testing.assert_allclose(at8 / at4, 4 * mse8 / mse4, rtol=1e-5)


def test_temperature_gradient_reaches_student_not_teacher():
    student = tf.Variable(RNG.normal(size=(1, 3, 3, 2)).astype("float32"))
    teacher = tf.constant(RNG.normal(size=(1, 3, 3, 2)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        loss = tf.reduce_sum(temperature_distillation_per_example([student], [teacher]))
    grad_student, grad_teacher = tape.gradient(loss, [student, teacher])
    assert np.abs(grad_student.numpy()).sum() > 0
    assert grad_teacher is None


def test_feature_adapter_is_registered_and_round_trips(tmp_path):
    adapter = FeatureAdapter(5, name="a1")
    assert keras.saving.get_registered_object("medistill>FeatureAdapter") is FeatureAdapter
    clone = FeatureAdapter.from_config(adapter.get_config())
    assert clone.channels == 5 and clone.name == "a1"
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FeatureAdapter(5)(inputs))
    model.save(tmp_path / "adapter.keras")
    loaded = keras.saving.load_model(tmp_path / "adapter.keras")
    x = RNG.normal(size=(1, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((1, 4, 4, 2), "float32")
    with pytest.raises(MedistillError, match="2 student maps but 1 teacher"):
        temperature_distillation_per_example([x, x], [x])
    with pytest.raises(MedistillError, match="positive"):
        temperature_distillation_per_example([x], [x], temperature=0.0)
    with pytest.raises(MedistillError, match="FeatureAdapter"):
        adapter_feature_loss_per_example([x], [np.zeros((1, 4, 4, 3), "float32")])
    with pytest.raises(MedistillError, match="num_classes is 3"):
        deep_supervision_loss_per_example(np.zeros((1, 4, 4), "int32"), [x], num_classes=3)
    with pytest.raises(MedistillError, match="deep_supervision=True"):
        deep_supervision_loss_per_example(np.zeros((1, 4, 4), "int32"), [], num_classes=1)


def all_kamsd_terms(labels, logits, teacher_logits, features, teacher_features):
    return (
        deep_supervision_loss_per_example(labels, [logits, logits], num_classes=1)
        + boundary_loss_per_example(tf.cast(labels, tf.float32), [logits])
        + adapter_feature_loss_per_example([features], [teacher_features])
        + temperature_distillation_per_example([logits], [teacher_logits])
    )


def test_losses_trace_with_unknown_batch_and_size():
    spec1 = tf.TensorSpec([None, None, None, 1], tf.float32)
    spec3 = tf.TensorSpec([None, None, None, 3], tf.float32)
    labels_spec = tf.TensorSpec([None, None, None], tf.int32)
    traced = tf.function(all_kamsd_terms, input_signature=[labels_spec, spec1, spec1, spec3, spec3])
    inputs = (
        np.zeros((3, 4, 4), "int32"),
        RNG.normal(size=(3, 4, 4, 1)).astype("float32"),
        RNG.normal(size=(3, 4, 4, 1)).astype("float32"),
        RNG.normal(size=(3, 4, 4, 3)).astype("float32"),
        RNG.normal(size=(3, 4, 4, 3)).astype("float32"),
    )
    graph_value = traced(*inputs)
    assert graph_value.shape == (3,)
    np.testing.assert_allclose(graph_value.numpy(), all_kamsd_terms(*inputs).numpy(), rtol=1e-5)


def test_float16_inputs_give_float32_losses():
    half = RNG.normal(size=(2, 4, 4, 1)).astype("float16")
    labels = np.zeros((2, 4, 4), "int32")
    losses = [
        deep_supervision_loss_per_example(labels, [half], num_classes=1),
        boundary_loss_per_example(labels, [half]),
        adapter_feature_loss_per_example([half], [half.astype("float32")]),
        temperature_distillation_per_example([half], [half]),
    ]
    assert all(loss.dtype == tf.float32 and loss.shape == (2,) for loss in losses)
