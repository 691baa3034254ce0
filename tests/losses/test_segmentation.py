import math

import numpy as np
import tensorflow as tf

from medistill.losses import (
    bce_dice_loss,
    ce_dice_loss,
    hard_dice_per_example,
    predicted_labels,
    soft_dice_per_example,
)


def test_soft_dice_by_hand():
    prob = np.zeros((1, 2, 2, 1), "float32")
    prob[0, 0, 0, 0] = 1.0
    prob[0, 0, 1, 0] = 0.5
    target = np.zeros((1, 2, 2, 1), "float32")
    target[0, 0, 0, 0] = 1.0
    # intersection 1, sums 1.5 + 1; smooth 1 -> (2 + 1) / (2.5 + 1)
    np.testing.assert_allclose(soft_dice_per_example(prob, target).numpy(), [[3.0 / 3.5]], rtol=1e-6)


def test_bce_dice_zero_logits_by_hand():
    labels = np.zeros((1, 2, 2), "int32")
    labels[0, 0, 0] = 1
    logits = np.zeros((1, 2, 2, 1), "float32")
    # BCE of logit 0 is log 2 everywhere; sigmoid 0.5 -> dice (2*0.5 + 1) / (2 + 1 + 1)
    expected = math.log(2.0) + 1.0 - 2.0 / 4.0
    np.testing.assert_allclose(bce_dice_loss(labels, logits).numpy(), [expected], rtol=1e-6)


def test_ce_dice_uniform_logits_by_hand():
    labels = np.array([[[0, 1], [2, 2]]], "int32")
    logits = np.zeros((1, 2, 2, 3), "float32")
    # CE = log 3; class 1: p-sum 4/3, truth 1, inter 1/3 -> (2/3 + 1)/(7/3 + 1) = 0.5
    # class 2: p-sum 4/3, truth 2, inter 2/3 -> (4/3 + 1)/(10/3 + 1) = 7/13
    dice = (0.5 + 7.0 / 13.0) / 2.0
    np.testing.assert_allclose(ce_dice_loss(labels, logits).numpy(), [math.log(3.0) + 1.0 - dice], rtol=1e-6)


def test_losses_give_gradients_and_shrink_for_correct_logits():
    labels = np.zeros((2, 4, 4), "int32")
    labels[:, 1:3, 1:3] = 1
    good = tf.constant(np.where(labels[..., None] > 0, 8.0, -8.0).astype("float32"))
    bad = -good
    assert np.all(bce_dice_loss(labels, good).numpy() < 0.05)
    assert np.all(bce_dice_loss(labels, bad).numpy() > 1.0)
    variable = tf.Variable(tf.zeros((2, 4, 4, 1)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(bce_dice_loss(labels, variable))
    gradient = tape.gradient(loss, variable).numpy()
    assert np.all(gradient[:, 1:3, 1:3] < 0) and np.all(gradient[:, 0, 0] > 0)


def test_hard_dice_and_labels():
    logits = np.full((2, 2, 2, 1), -5.0, "float32")
    logits[0, 0, 0, 0] = 5.0
    predicted = predicted_labels(logits)
    truth = np.zeros((2, 2, 2), "int32")
    truth[0, 0, :] = 1
    dice = hard_dice_per_example(truth, predicted, num_classes=2).numpy()
    # image 0: |P|=1, |T|=2, overlap 1 -> 2/3; image 1: both empty -> 1
    np.testing.assert_allclose(dice, [2.0 / 3.0, 1.0], rtol=1e-6)
    multi = np.zeros((1, 1, 2, 3), "float32")
    multi[0, 0, 0, 2] = 1.0
    multi[0, 0, 1, 1] = 1.0
    assert predicted_labels(multi).numpy().tolist() == [[[2, 1]]]
