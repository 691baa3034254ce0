"""SSCD pieces against values worked out by hand on tiny tensors."""

import math

import numpy as np
import pytest
import tensorflow as tf

from medistill.losses import segmentation_loss
from medistill.losses.sscd import (
    copy_paste_mix,
    cross_pseudo_dice_per_example,
    curriculum_logits,
    curriculum_weights,
    entropy_hard_mask,
    fold_weights,
    hard_patch_exchange,
    largest_component_per_class,
    largest_component_tf,
    patch_difficulty,
    pseudo_variance,
    pv_gated_pseudo_labels,
    region_ce_dice_per_example,
    sscd_model_loss_per_example,
    stage_for_epoch,
)


def pixels(*rows):
    """Probabilities of single pixels as a (1, 1, n, K) map."""
    return np.array([[list(rows)]], "float32")


def test_pseudo_variance_by_hand():
    # n = 3: (2/3)·[(0.7 − 0.15)² + (0.2 − 0.4)² + (0.1 − 0.45)²] = (2/3)·0.465 = 0.31
    probs = pixels([0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(pseudo_variance(probs).numpy()[0, 0], [0.31, 0.0, 1.0], atol=1e-6)


def test_pv_gate_on_hand_made_probabilities():
    probs = pixels([0.6, 0.35, 0.05],   # PV = (3·0.485 − 1)/2 = 0.2275, p₂ = 0.35
                   [0.9, 0.05, 0.05],   # confident, p₂ too small
                   [0.45, 0.4, 0.15],   # PV = (3·0.385 − 1)/2 = 0.0775, below 0.2
                   [0.1, 0.2, 0.7])     # argmax 2, p₂ = 0.2
    # The defaults can never open the gate (p₂ > 0.3 caps PV below 0.58): plain arg-max.
    np.testing.assert_array_equal(pv_gated_pseudo_labels(probs).numpy()[0, 0], [0, 0, 0, 2])
    # A lower PV threshold opens it where PV > 0.2 and p₂ > 0.3: the runner-up class.
    np.testing.assert_array_equal(pv_gated_pseudo_labels(probs, pv_threshold=0.2).numpy()[0, 0], [1, 0, 0, 2])


def test_default_gate_never_opens_on_random_probabilities():
    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        probs = rng.dirichlet(np.full(classes, 0.3), size=(2, 16, 16)).astype("float32")
        np.testing.assert_array_equal(pv_gated_pseudo_labels(probs).numpy(), probs.argmax(-1))


def test_pv_gate_binary_one_channel():
    p = np.array([[[[0.6], [0.2]]]], "float32")   # classes [0.4, 0.6] and [0.8, 0.2]
    np.testing.assert_allclose(pseudo_variance(p).numpy()[0, 0], [0.04, 0.36], atol=1e-6)   # (p1 − p2)²
    np.testing.assert_array_equal(pv_gated_pseudo_labels(p).numpy()[0, 0], [1, 0])
    # gate open at the first pixel only (p₂ = 0.4 > 0.3; the second has p₂ = 0.2): label flips
    np.testing.assert_array_equal(
        pv_gated_pseudo_labels(p, pv_threshold=0.01, second_threshold=0.3).numpy()[0, 0], [0, 0])


def test_curriculum_weights_and_stages():
    assert [curriculum_weights(s) for s in range(1, 6)] == [
        (1.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0), (0.0, 0.5, 0.5, 0.0),
        (0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.0, 1.0)]
    with pytest.raises(ValueError):
        curriculum_weights(0)
    assert [stage_for_epoch(e, 10) for e in range(10)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [stage_for_epoch(e, 7) for e in range(7)] == [1, 1, 2, 3, 3, 4, 5]
    assert [stage_for_epoch(e, 2) for e in range(2)] == [4, 5]   # fewer epochs: the last stages
    assert stage_for_epoch(0, 1) == 5


def test_fold_weights_and_curriculum_logits():
    assert fold_weights((0.0, 0.5, 0.5, 0.0), 4) == [0.0, 0.5, 0.5, 0.0]
    assert fold_weights((0.5, 0.5, 0.0, 0.0), 2) == [1.0, 0.0]   # slots 0, 1 → head 1 (coarse)
    assert fold_weights((0.0, 0.0, 0.5, 0.5), 2) == [0.0, 1.0]
    assert fold_weights((0.0, 0.5, 0.5, 0.0), 3) == [0.0, 1.0, 0.0]
    heads = [np.full((1, 2, 2, 1), v, "float32") for v in (1.0, 10.0, 100.0)]
    np.testing.assert_allclose(curriculum_logits(heads, [0.0, 0.5, 0.5]).numpy(), np.full((1, 2, 2, 1), 55.0))


def test_largest_component_per_class():
    labels = np.array([[
        [1, 1, 0, 0, 1],
        [1, 0, 0, 0, 0],
        [0, 0, 2, 0, 0],
        [0, 0, 0, 2, 0],   # touches the 2 above diagonally: one 8-connected component
        [2, 0, 0, 0, 2],
    ]], np.int32)
    expected = np.array([[
        [1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 2, 0, 0],
        [0, 0, 0, 2, 0],
        [0, 0, 0, 0, 2],
    ]], np.int32)
    np.testing.assert_array_equal(largest_component_per_class(labels, 3), expected)
    graph = tf.function(lambda y: largest_component_tf(y, 3))
    np.testing.assert_array_equal(graph(tf.constant(labels)).numpy(), expected)


def test_entropy_mask_keeps_the_top_twenty_percent_per_image():
    rng = np.random.default_rng(1)
    p = np.stack([rng.permutation(np.linspace(0.5, 0.99, 100)) for _ in range(2)]).reshape(2, 10, 10, 1)
    mask = entropy_hard_mask(p.astype("float32"), 80.0).numpy()
    # binary entropy falls as p moves away from 0.5: the 20 pixels with the smallest p
    for image in range(2):
        assert mask[image].sum() == 20
        chosen = np.sort(p[image, ..., 0][mask[image] == 1])
        np.testing.assert_allclose(chosen, np.linspace(0.5, 0.99, 100)[:20], rtol=1e-6)


def test_copy_paste_mix_keeps_images_and_labels_together():
    x_a, y_a = np.ones((3, 12, 12, 1), "float32"), np.ones((3, 12, 12), "int32")
    x_b, y_b = np.full((3, 12, 12, 1), 2.0, "float32"), np.full((3, 12, 12), 2, "int32")
    seed = tf.constant([3, 4], tf.int64)
    x, y, box = copy_paste_mix(x_a, y_a, x_b, y_b, seed)
    assert x.shape == (3, 12, 12, 1) and y.shape == (3, 12, 12) and box.shape == (3, 12, 12)
    np.testing.assert_array_equal(x.numpy()[..., 0].astype(int), y.numpy())
    np.testing.assert_array_equal(box.numpy().sum(axis=(1, 2)), [64, 64, 64])   # an 8x8 box each
    np.testing.assert_array_equal(y.numpy() == 2, box.numpy() == 1)
    again = copy_paste_mix(x_a, y_a, x_b, y_b, seed)[2]
    np.testing.assert_array_equal(box.numpy(), again.numpy())


def test_patch_difficulty_and_exchange_on_a_two_by_two_grid():
    def conf(values):   # a 4x4 map whose 2x2 patches have the given means
        return np.kron(np.array(values, "float32"), np.ones((2, 2), "float32"))[None]

    weak_conf, strong_conf = conf([[0.9, 0.9], [0.9, 0.1]]), conf([[0.2, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(patch_difficulty(weak_conf, 2).numpy()[0], [[0.0, 0.4], [0.4, 0.8]], atol=1e-6)
    np.testing.assert_allclose(patch_difficulty(strong_conf, 2).numpy()[0], [[0.3, 0.15], [0.15, 0.0]], atol=1e-6)
    x_weak = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    x_strong = x_weak + 100.0
    new_weak, new_strong = hard_patch_exchange(x_weak, x_strong, weak_conf, strong_conf, grid=2)
    # weak: hardest patch (1,1), easiest (0,0); strong: hardest (0,0), easiest (1,1)
    expected_weak, expected_strong = x_weak.copy(), x_strong.copy()
    expected_weak[0, :2, :2] = x_strong[0, :2, :2]     # strong's hardest → weak's easiest place
    expected_strong[0, 2:, 2:] = x_weak[0, 2:, 2:]     # weak's hardest → strong's easiest place
    np.testing.assert_array_equal(new_weak.numpy(), expected_weak)
    np.testing.assert_array_equal(new_strong.numpy(), expected_strong)


def test_region_loss_matches_the_supervised_loss_and_restricts_by_hand():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (2, 4, 4)).astype("int32")
    for channels in (1, 3):
        logits = rng.normal(size=(2, 4, 4, channels)).astype("float32")
        target = labels if channels == 3 else (labels > 0).astype("int32")
        np.testing.assert_allclose(region_ce_dice_per_example(target, logits).numpy(),
                                   segmentation_loss(target, logits).numpy(), rtol=1e-5)
    # one pixel in the region, two classes, uniform logits: CE log 2; class 1 absent there:
    # Dice = (0 + 1)/(0.5 + 0 + 1) = 2/3
    labels = np.array([[[0, 1]]], "int32")
    region = np.array([[[1.0, 0.0]]], "float32")
    loss = region_ce_dice_per_example(labels, np.zeros((1, 1, 2, 2), "float32"), region).numpy()
    np.testing.assert_allclose(loss, [math.log(2.0) + 1.0 - 2.0 / 3.0], rtol=1e-6)
    empty = region_ce_dice_per_example(labels, np.zeros((1, 1, 2, 2), "float32"), np.zeros_like(region))
    np.testing.assert_allclose(empty.numpy(), [0.0], atol=1e-7)


def test_cross_pseudo_dice_by_hand_and_no_gradient_to_the_peer():
    logits = tf.constant(np.zeros((1, 1, 2, 2), "float32"))
    peer = tf.constant([[[[0.0, 3.0], [3.0, 0.0]]]])      # argmax: class 1, class 0
    # prob of class 1 is 0.5 at both pixels; target one-hot [1, 0]: (2·0.5 + 1)/(1 + 1 + 1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits, peer])
        loss = cross_pseudo_dice_per_example(logits, peer)
    np.testing.assert_allclose(loss.numpy(), [1.0 - 2.0 / 3.0], rtol=1e-6)
    assert tape.gradient(loss, peer) is None
    assert tape.gradient(loss, logits) is not None


def test_sscd_model_loss_combines_and_folds_the_terms():
    rng = np.random.default_rng(3)
    batch = 2
    labels = rng.integers(0, 2, (2 * batch, 4, 4)).astype("int32")
    mixed, peer = (rng.normal(size=(2 * batch, 4, 4, 1)).astype("float32") for _ in range(2))
    exchanged, peer_exchanged = (rng.normal(size=(4 * batch, 4, 4, 1)).astype("float32") for _ in range(2))
    box = np.zeros((2 * batch, 4, 4), "float32")
    box[:, :2, :2] = 1.0
    box_weight = np.array([1.0, 1.0, 0.5, 0.5], "float32")
    rest_weight = np.array([0.5, 0.5, 1.0, 1.0], "float32")
    terms = sscd_model_loss_per_example(labels, mixed, peer, exchanged, peer_exchanged, box,
                                        box_weight, rest_weight, batch)
    inside = region_ce_dice_per_example(labels, mixed, box).numpy()
    outside = region_ce_dice_per_example(labels, mixed, 1 - box).numpy()
    mix = box_weight * inside + rest_weight * outside
    np.testing.assert_allclose(terms["mix"].numpy(), (mix[:2] + mix[2:]) / 2, rtol=1e-5)
    cross = cross_pseudo_dice_per_example(mixed, peer).numpy()
    np.testing.assert_allclose(terms["cross"].numpy(), (cross[:2] + cross[2:]) / 2, rtol=1e-5)
    swap = cross_pseudo_dice_per_example(exchanged, peer_exchanged).numpy().reshape(4, batch).mean(0)
    np.testing.assert_allclose(terms["exchange"].numpy(), swap, rtol=1e-5)
    np.testing.assert_allclose(terms["total"].numpy(),
                               terms["mix"].numpy() + terms["cross"].numpy() + swap, rtol=1e-5)
