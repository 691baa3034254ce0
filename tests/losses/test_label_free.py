"""The label-free terms against small-target collapse: formulas, empty rules, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medistill.losses.distillation import soft_bce_per_example
from medistill.losses.label_free import (
    box_projection_per_example,
    confidence_weights,
    inside_boxes,
    outside_box_per_example,
    rasterise_boxes,
    soft_dice_loss_per_example,
    weighted_soft_bce_per_example,
)


def _logits(prob: np.ndarray) -> np.ndarray:
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    return np.log(prob / (1 - prob)).astype(np.float32)[..., None]


def test_dice_term_by_hand_and_its_empty_rule():
    soft = np.zeros((2, 4, 4), np.float32)
    soft[0, :2, :2] = 1.0
    prob = np.full((2, 4, 4), 0.25, np.float32)
    loss = soft_dice_loss_per_example(soft, _logits(prob)).numpy()
    expected = 1 - (2 * 4 * 0.25 + 1) / (16 * 0.25 + 4 + 1)
    np.testing.assert_allclose(loss[0], expected, rtol=1e-5)
    assert loss[1] == 0.0  # empty target: nothing to say


def test_dice_term_does_not_shrink_with_the_target_the_way_bce_does():
    """A student that predicts nothing: BCE vanishes with the lesion's size, Dice does not."""
    nothing = _logits(np.full((2, 64, 64), 0.01, np.float32))
    soft = np.zeros((2, 64, 64), np.float32)
    soft[0, :32, :32] = 1.0     # a quarter of the image
    soft[1, :4, :4] = 1.0       # 0.4 % of it
    bce = soft_bce_per_example(soft, nothing).numpy()
    dice = soft_dice_loss_per_example(soft, nothing).numpy()
    assert bce[1] < 0.05 * bce[0]
    assert dice[1] > 0.9 and dice[0] > 0.9


def test_confidence_weights_silence_undecided_pixels():
    soft = np.array([[[0.5, 1.0]]], np.float32)
    logits = np.array([[[[5.0], [5.0]]]], np.float32)
    weighted = weighted_soft_bce_per_example(soft, logits, confidence_weights(soft)).numpy()
    # only the confident pixel counts: BCE(5, 1)
    np.testing.assert_allclose(weighted, [np.log1p(np.exp(-5.0))], rtol=1e-5)
    plain = weighted_soft_bce_per_example(soft, logits).numpy()
    np.testing.assert_allclose(plain, soft_bce_per_example(soft, logits).numpy(), rtol=1e-6)


def test_rasterised_boxes_follow_pixel_centres_and_scale():
    rows, cols = rasterise_boxes(np.array([[1, 2, 3, 6], [0, 0, 0.2, 0.2]], np.float32), scale=1.0, size=8,
                                 max_boxes=3)
    assert rows.shape == (3, 8) and rows.dtype == np.uint8
    assert rows[0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0] and cols[0].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    assert rows[1].sum() == 1 and cols[1].sum() == 1     # a sub-pixel box keeps its pixel
    assert rows[2].sum() == 0                            # padding
    inside = inside_boxes(rows, cols)
    assert inside.sum() == 4 * 2 + 1 and inside[2:6, 1:3].all()
    with pytest.raises(ValueError, match="room for 1"):
        rasterise_boxes(np.zeros((2, 4)), 1.0, 8, max_boxes=1)


def test_projection_term_rewards_a_mask_that_touches_every_row_and_column_of_its_box():
    rows, cols = rasterise_boxes(np.array([[2, 2, 6, 6]], np.float32), scale=1.0, size=8)
    weights = np.ones((1, 1), np.float32)
    diagonal = np.zeros((1, 8, 8), np.float32)
    for i in range(2, 6):
        diagonal[0, i, i] = 1.0          # a thin diagonal still fills both projections
    corner = np.zeros((1, 8, 8), np.float32)
    corner[0, 2, 2] = 1.0
    outside = np.zeros((1, 8, 8), np.float32)
    outside[0, 7, :] = 1.0               # foreground outside the box does not count
    losses = [float(box_projection_per_example(_logits(p), rows[None], cols[None], weights)[0])
              for p in (diagonal, corner, outside)]
    assert losses[0] < 1e-4 and losses[1] > 0.3 and losses[2] > 0.99
    # no box (weight 0): no loss
    assert float(box_projection_per_example(_logits(corner), rows[None], cols[None], np.zeros((1, 1)))[0]) == 0.0


def test_projection_term_averages_boxes_by_their_scores():
    rows, cols = rasterise_boxes(np.array([[0, 0, 2, 2], [4, 4, 8, 8]], np.float32), scale=1.0, size=8)
    prob = np.zeros((1, 8, 8), np.float32)
    prob[0, :2, :2] = 1.0                # only the first box is filled
    one_only = box_projection_per_example(_logits(prob), rows[None], cols[None], np.array([[1.0, 0.0]]))
    both = box_projection_per_example(_logits(prob), rows[None], cols[None], np.array([[1.0, 1.0]]))
    assert float(one_only[0]) < 1e-4 and float(both[0]) == pytest.approx(0.5, abs=1e-3)


def test_outside_term_only_sees_pixels_outside_the_boxes_and_scales_with_trust():
    inside = np.zeros((2, 4, 4), np.uint8)
    inside[:, :2, :2] = 1
    prob = np.full((2, 4, 4), 0.01, np.float32)
    prob[:, :2, :2] = 0.99               # confident inside the box: no penalty
    loss = outside_box_per_example(_logits(prob), inside, np.array([1.0, 0.5], np.float32)).numpy()
    np.testing.assert_allclose(loss, [-np.log(0.99), -0.5 * np.log(0.99)], rtol=1e-4)


def test_gradients_reach_the_logits_from_every_term():
    rows, cols = rasterise_boxes(np.array([[1, 1, 5, 5]], np.float32), scale=1.0, size=8)
    soft = np.zeros((1, 8, 8), np.float32)
    soft[0, 2:4, 2:4] = 0.9
    logits = tf.Variable(np.zeros((1, 8, 8, 1), np.float32))
    for fn in (lambda z: soft_dice_loss_per_example(soft, z),
               lambda z: box_projection_per_example(z, rows[None], cols[None], np.ones((1, 1))),
               lambda z: outside_box_per_example(z, inside_boxes(rows, cols)[None], np.ones(1)),
               lambda z: weighted_soft_bce_per_example(soft, z, confidence_weights(soft))):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fn(logits))
        grad = tape.gradient(loss, logits)
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0
