"""Shapes, names, save/load and sizes of the three students."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medistill.networks import (
    STUDENTS,
    StudentError,
    build_student,
    feature_model,
    feature_names,
)

# Keras' own saving code converts tensors with np.array(); NumPy 2 warns about it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SIZE = 64
DEPTH = 4
# Narrow versions of each student with the default depth: same graph, fast to build.
SMALL = {
    "unet": {"base_filters": 4},
    "unetpp": {"filters": (4, 8, 8, 16, 16)},
    "lcovnet": {"channels": (4, 8, 8, 16, 16)},
}
CONTRACT_NAMES = [f"enc{i}" for i in range(1, DEPTH + 1)] + ["bottleneck"]
CONTRACT_NAMES += [f"dec{i}" for i in range(1, DEPTH + 1)] + ["penultimate"]
AUX_NAMES = [f"aux{i}" for i in range(1, DEPTH + 1)]


def small_student(name: str, in_channels: int = 1, num_classes: int = 1, **options) -> keras.Model:
    return build_student(
        name, in_channels=in_channels, num_classes=num_classes, **SMALL[name], **options
    )


def images(batch: int, channels: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype("float32")


def expected_stride(feature: str) -> int:
    if feature.startswith("enc"):
        return 2 ** (int(feature[3:]) - 1)
    if feature == "bottleneck":
        return 2**DEPTH
    if feature.startswith("dec"):
        return 2 ** (DEPTH - int(feature[3:]))
    return 1  # penultimate and the aux heads


def test_students_are_the_documented_three() -> None:
    assert sorted(STUDENTS) == ["lcovnet", "unet", "unetpp"]


@pytest.mark.parametrize("name", sorted(STUDENTS))
@pytest.mark.parametrize("in_channels,num_classes", [(1, 1), (3, 3)])
def test_logits_shape_and_dtype(name: str, in_channels: int, num_classes: int) -> None:
    model = small_student(name, in_channels, num_classes)
    logits = model(images(2, in_channels))
    assert len(model.outputs) == 1
    assert tuple(logits.shape) == (2, SIZE, SIZE, num_classes)
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_any_size_divisible_by_two_to_the_depth(name: str) -> None:
    model = small_student(name)
    assert model.input_shape == (None, None, None, 1)
    for height, width in [(32, 32), (16, 48)]:
        x = np.zeros((1, height, width, 1), "float32")
        assert tuple(model(x).shape) == (1, height, width, 1)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_graph_mode_with_unknown_size_matches_eager(name: str) -> None:
    # What model.export and a retracing fit loop do: trace once with None height/width.
    model = small_student(name, in_channels=3, num_classes=2, deep_supervision=True)
    spec = tf.TensorSpec((None, None, None, 3), tf.float32)
    traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    for size in (32, 48):
        x = images(1, 3, size=size)
        np.testing.assert_allclose(traced(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_feature_names_and_strides(name: str) -> None:
    model = small_student(name, deep_supervision=True)
    assert feature_names(model) == CONTRACT_NAMES + AUX_NAMES
    outputs = feature_model(model, feature_names(model))(images(1, 1))
    assert set(outputs) == {"logits", *CONTRACT_NAMES, *AUX_NAMES}
    for feature in CONTRACT_NAMES:
        stride = expected_stride(feature)
        assert tuple(outputs[feature].shape[1:3]) == (SIZE // stride, SIZE // stride), feature


@pytest.mark.parametrize("name", sorted(STUDENTS))
@pytest.mark.parametrize("num_classes", [1, 3])
def test_deep_supervision_heads(name: str, num_classes: int) -> None:
    model = small_student(name, num_classes=num_classes, deep_supervision=True)
    assert len(model.outputs) == 1
    outputs = feature_model(model, AUX_NAMES)(images(2, 1))
    for aux in AUX_NAMES:
        assert tuple(outputs[aux].shape) == (2, SIZE, SIZE, num_classes), aux
        assert outputs[aux].dtype == "float32"
    # The last head is the main logit map itself; the coarser ones are their own heads.
    np.testing.assert_array_equal(outputs[AUX_NAMES[-1]], outputs["logits"])
    assert not np.allclose(outputs["aux1"], outputs["logits"])


def test_without_deep_supervision_there_are_no_aux_heads() -> None:
    model = small_student("unet")
    assert not [name for name in feature_names(model) if name.startswith("aux")]
    with pytest.raises(StudentError, match="deep_supervision=True"):
        feature_model(model, ["aux1"])


def test_feature_model_shares_weights_and_names_unknown_layers() -> None:
    model = small_student("unetpp")
    features = feature_model(model, "penultimate")
    x = images(1, 1)
    np.testing.assert_allclose(features(x)["logits"], model(x), rtol=1e-6, atol=1e-6)
    assert {id(w) for w in features.weights} == {id(w) for w in model.weights}
    with pytest.raises(StudentError) as error:
        feature_model(model, ["enc1", "nope"])
    message = str(error.value)
    assert "'nope'" in message and "enc1, enc2" in message and "penultimate" in message


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_keras_save_and_load_give_identical_outputs(name: str, tmp_path) -> None:
    model = small_student(name, in_channels=3, num_classes=3, deep_supervision=True)
    # Every weight, batch-norm statistics included, away from its initial value, so that
    # loading (not re-initialising) is what makes the outputs equal.
    rng = np.random.default_rng(2)
    for weight in model.weights:
        weight.assign(rng.uniform(0.5, 1.5, size=weight.shape).astype("float32"))
    x = images(2, 3, size=32)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert len(loaded.outputs) == 1
    assert feature_names(loaded) == feature_names(model)
    expected = feature_model(model, feature_names(model))(x)
    actual = feature_model(loaded, feature_names(loaded))(x)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_default_lcovnet_is_well_under_one_million_parameters() -> None:
    model = build_student("lcovnet", in_channels=1, num_classes=1)
    assert model.count_params() < 1_000_000


def test_default_unetpp_has_about_9_2_million_parameters() -> None:
    model = build_student("unetpp", in_channels=1, num_classes=1)
    assert abs(model.count_params() - 9.2e6) <= 0.10 * 9.2e6


def test_bad_student_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        build_student("unet++", in_channels=1, num_classes=1)
    message = str(error.value)
    assert "'unet++'" in message and "Did you mean 'unetpp'" in message
    for name in STUDENTS:
        assert name in message


def test_bad_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        build_student("unet", in_channels=1, num_classes=1, filters=(8, 16))
    message = str(error.value)
    assert "'filters'" in message and "base_filters=32" in message and "depth=4" in message


@pytest.mark.parametrize("bad", [{"in_channels": 0}, {"num_classes": 0}])
def test_bad_channel_counts(bad: dict) -> None:
    arguments = {"in_channels": 1, "num_classes": 1, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_student("lcovnet", **arguments)


def test_logits_stay_float32_under_mixed_precision() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = small_student("lcovnet", num_classes=2)
        assert model(images(1, 1, size=16)).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)
