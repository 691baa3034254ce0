"""The building blocks: configs, shapes and the LACB formula."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medistill.networks import (
    AnchorAuxiliary,
    BilinearUpsample,
    ConvBNAct,
    DoubleConv,
    LACBHigh,
    LACBLow,
    LogitHead,
    UpsampleConcat,
)

LAYERS = [
    ConvBNAct(8, kernel_size=(1, 3), activation="relu6", depthwise=False, name="a"),
    ConvBNAct(8, kernel_size=3, depthwise=True),
    DoubleConv(8, dropout=0.25),
    UpsampleConcat(factor=4),
    LogitHead(3, upsample=2),
    AnchorAuxiliary(),
    BilinearUpsample(factor=8),
    LACBHigh(8, dropout=0.2),
    LACBLow(8, dropout=0.1),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_layers_are_registered_and_configs_round_trip(layer: keras.layers.Layer) -> None:
    registered = keras.saving.get_registered_name(type(layer))
    assert registered == f"medistill>{type(layer).__name__}"
    assert keras.saving.get_registered_object(registered) is type(layer)
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


def test_bilinear_upsample_matches_keras_and_traces_with_unknown_size() -> None:
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype("float32")
    reference = keras.layers.UpSampling2D(4, interpolation="bilinear")(x)
    np.testing.assert_allclose(BilinearUpsample(4)(x), reference, rtol=1e-6, atol=1e-6)

    layer = BilinearUpsample(2)
    traced = tf.function(layer).get_concrete_function(tf.TensorSpec((None, None, None, 3)))
    assert tuple(traced(x).shape) == (2, 10, 14, 3)


def test_upsample_concat_puts_the_skips_first() -> None:
    coarse = np.full((1, 2, 2, 1), 5.0, "float32")
    skip = np.zeros((1, 4, 4, 2), "float32")
    merged = np.asarray(UpsampleConcat()([coarse, skip]))
    assert merged.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(merged[..., :2], 0.0)
    np.testing.assert_allclose(merged[..., 2], 5.0)


def test_logit_head_is_float32_and_upsamples() -> None:
    head = LogitHead(2, upsample=4)
    assert head.dtype_policy.name == "float32"
    assert tuple(head(np.zeros((1, 3, 5, 6), "float32")).shape) == (1, 12, 20, 2)


@pytest.mark.parametrize("block_type", [LACBHigh, LACBLow])
def test_lacb_output_is_refined_plus_gated_features(block_type) -> None:
    block = block_type(6, dropout=0.5)
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 3)).astype("float32")
    out = np.asarray(block(x, training=False))

    features = block.entry(x, training=False)
    refined = block.refine(features, training=False)
    gate_input = block.gate_pool(features) if block.pooled_attention else features
    gate = block.gate_norm(block.gate_conv(gate_input), training=False)
    if block.pooled_attention:
        gate = block.gate_upsample(gate)
    expected = refined + keras.ops.sigmoid(gate) * features
    np.testing.assert_allclose(out, np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_lacb_variants_differ_in_refine_convolution() -> None:
    high, low = LACBHigh(8), LACBLow(8)
    high.build((None, 8, 8, 8))
    low.build((None, 8, 8, 8))
    assert tuple(high.refine.conv.kernel.shape) == (3, 1, 8, 8)
    assert tuple(low.refine.conv.kernel.shape) == (3, 1, 8, 1)
    assert tuple(high.entry.conv.kernel.shape) == (1, 3, 8, 8)
