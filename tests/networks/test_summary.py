"""Parameter and FLOP counts checked against hand counts."""

from __future__ import annotations

import keras
import pytest

from medistill.networks import DoubleConv, build_student, count_flops, model_summary


def single_layer_model(input_shape: tuple[int, int, int], layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def test_single_conv_flops_equal_the_hand_count() -> None:
    model = single_layer_model((8, 8, 4), keras.layers.Conv2D(16, 3, padding="same"))
    # 8·8 positions · 16 filters · 3·3·4 multiply-adds each, 2 FLOPs per multiply-add.
    assert model_summary(model, (8, 8, 4)) == {"params": 3 * 3 * 4 * 16 + 16, "flops": 73_728}


def test_flops_scale_with_a_leading_batch_size() -> None:
    model = single_layer_model((8, 8, 4), keras.layers.Conv2D(16, 3, padding="same"))
    assert count_flops(model, (3, 8, 8, 4)) == 3 * 73_728


def test_layers_nested_in_custom_layers_are_counted() -> None:
    model = single_layer_model((8, 8, 4), DoubleConv(16))
    first = 2 * 8 * 8 * 16 * (3 * 3 * 4)
    second = 2 * 8 * 8 * 16 * (3 * 3 * 16)
    assert count_flops(model, (8, 8, 4)) == first + second


def test_separable_and_dense_flops() -> None:
    separable = single_layer_model((8, 8, 4), keras.layers.SeparableConv2D(16, 3, padding="same"))
    depthwise, pointwise = 2 * 8 * 8 * 4 * 9, 2 * 8 * 8 * 16 * 4
    assert count_flops(separable, (8, 8, 4)) == depthwise + pointwise
    dense = single_layer_model((10,), keras.layers.Dense(7))
    assert count_flops(dense, (5, 10)) == 2 * 5 * 10 * 7


def test_aux_heads_do_not_change_the_cost_of_the_output() -> None:
    options = {"in_channels": 1, "num_classes": 1, "base_filters": 4}
    plain = model_summary(build_student("unet", **options), (32, 32, 1))
    supervised = model_summary(build_student("unet", deep_supervision=True, **options), (32, 32, 1))
    assert supervised["flops"] == plain["flops"]
    assert supervised["params"] > plain["params"]


def test_bad_input_shape() -> None:
    model = single_layer_model((8, 8, 4), keras.layers.Conv2D(2, 1))
    with pytest.raises(ValueError, match="height, width, channels"):
        model_summary(model, (8, 4))
