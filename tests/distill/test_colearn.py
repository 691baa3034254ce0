"""Co-learning with LiteMedSAM's mask decoder (random weights): semantics, gradients, gate, refresh."""

from __future__ import annotations

import math

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from medistill.data.preprocess import Geometry
from medistill.distill.colearn import (
    DecoderTeacher,
    colearn_loss_per_example,
    fuse_box_logits,
    pad_boxes,
    refresh_targets,
    resize_square,
)
from medistill.errors import MedistillError

OUT = 32  # targets at 32 x 32: the 256 frame averaged in 8 x 8 blocks


@pytest.fixture(scope="module")
def model():
    from medistill.teachers.litemedsam.model import LiteMedSAM

    keras.utils.set_random_seed(7)
    network = LiteMedSAM()  # random weights: building takes a few seconds, so once per module
    network.build()
    return network


@pytest.fixture(scope="module")
def inputs():
    """Three images: one box, two boxes, no box (padded to M = 2)."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(0, 1, (3, 64, 64, 256)).astype("float32")
    boxes, valid = pad_boxes([np.array([[20.0, 30, 150, 170]]),
                              np.array([[10.0, 10, 120, 90], [100, 120, 250, 240]]),
                              np.zeros((0, 4))])
    return embeddings, boxes, valid


@pytest.fixture(scope="module")
def box_logits(model, inputs):
    embeddings, boxes, _ = inputs
    return DecoderTeacher(model).box_logits(embeddings, boxes, OUT).numpy()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def test_each_box_is_decoded_against_its_own_image(model, inputs, box_logits):
    embeddings, boxes, _ = inputs
    assert box_logits.shape == (3, 2, OUT, OUT)
    masks, _ = model.decode(embeddings[1:2], boxes[1])  # SAM's path: one image, all its boxes
    full = np.asarray(masks)[:, 0]  # (2, 256, 256)
    blocks = full.reshape(2, OUT, 8, OUT, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(box_logits[1], blocks, rtol=1e-4, atol=1e-4)


def test_soft_masks_max_over_valid_boxes(model, inputs, box_logits):
    embeddings, boxes, valid = inputs
    decoder = DecoderTeacher(model)
    prob, logits = decoder.soft_masks(embeddings[:1], boxes[:1], valid[:1], OUT)
    assert prob.shape == logits.shape == (1, OUT, OUT) and prob.dtype == tf.float32
    # the padded, invalid second box of image 0 changes nothing: same as decoding its one box alone
    alone, _ = decoder.soft_masks(embeddings[:1], boxes[:1, :1], valid[:1, :1], OUT)
    np.testing.assert_allclose(prob.numpy(), alone.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prob.numpy()[0], _sigmoid(box_logits[0, 0]), rtol=1e-4, atol=1e-6)
    fused, _ = fuse_box_logits(tf.constant(box_logits), tf.constant(valid))
    expected_1 = np.maximum(_sigmoid(box_logits[1, 0]), _sigmoid(box_logits[1, 1]))
    np.testing.assert_allclose(fused.numpy()[1], expected_1, rtol=1e-5, atol=1e-6)
    assert np.all(fused.numpy()[2] == 0.0)  # no valid box: an empty soft mask


def test_gradients_reach_the_mask_decoder_only(model, inputs):
    embeddings, boxes, valid = inputs
    decoder = DecoderTeacher(model)
    decoder_ids = {id(v) for v in model.mask_decoder.trainable_variables}
    assert decoder.trainable_variables and all(id(v) in decoder_ids for v in decoder.trainable_variables)
    with tf.GradientTape() as tape:
        prob, logits = decoder.soft_masks(embeddings[:1], boxes[:1, :1], valid[:1, :1], OUT, training=True)
        student = tf.where(prob > 0.5, 0.99, 0.01)  # confident and agreeing everywhere
        loss = tf.reduce_sum(colearn_loss_per_example(logits, student, prob))
    assert float(loss) > 0
    watched = decoder.trainable_variables + model.image_encoder.trainable_variables + \
        model.prompt_encoder.trainable_variables
    grads = dict(zip([id(v) for v in watched], tape.gradient(loss, watched)))
    assert all(grads[id(v)] is not None for v in decoder.trainable_variables)
    assert sum(float(tf.reduce_sum(tf.abs(grads[id(v)]))) > 0 for v in decoder.trainable_variables) > 0.9 * len(
        decoder.trainable_variables)
    assert all(grads[id(v)] is None for v in model.image_encoder.trainable_variables)
    assert all(grads[id(v)] is None for v in model.prompt_encoder.trainable_variables)  # frozen by default
    # the unused multimask hypernetworks and IoU head are not in the trained set
    unused = {id(v) for v in model.mask_decoder.iou_prediction_head.trainable_variables}
    assert not unused & {id(v) for v in decoder.trainable_variables}


def test_prompt_encoder_trains_when_asked(model, inputs):
    embeddings, boxes, valid = inputs
    decoder = DecoderTeacher(model, train_prompt_encoder=True)
    prompt = model.prompt_encoder
    box_vars = [prompt.point_embeddings[2], prompt.point_embeddings[3], prompt.no_mask_embed]
    assert all(any(v is w for w in decoder.trainable_variables) for v in box_vars)
    with tf.GradientTape() as tape:
        _, logits = decoder.soft_masks(embeddings[:1], boxes[:1, :1], valid[:1, :1], OUT, training=True)
        loss = tf.reduce_mean(logits)
    assert all(g is not None for g in tape.gradient(loss, box_vars))


def test_checkpoint_restores_every_trained_variable(model, tmp_path):
    decoder = DecoderTeacher(model)
    saved = {id(v): v.numpy().copy() for v in decoder.trainable_variables}
    path = tf.train.Checkpoint(**decoder.trackables()).save(str(tmp_path / "ckpt"))
    for v in decoder.trainable_variables:  # includes the list-held transformer blocks and hypernetwork 0
        v.assign(v + 1.0)
    tf.train.Checkpoint(**decoder.trackables()).restore(path).assert_consumed()
    assert all(np.array_equal(v.numpy(), saved[id(v)]) for v in decoder.trainable_variables)


def test_gate_selects_confident_agreeing_pixels():
    student = np.array([[[0.95, 0.05, 0.6], [0.97, 0.02, 0.92]],
                        [[0.95, 0.5, 0.3], [0.01, 0.99, 0.7]]], "float32")
    teacher = np.array([[[0.8, 0.1, 0.9], [0.3, 0.7, 0.6]],
                        [[0.2, 0.9, 0.3], [0.6, 0.4, 0.9]]], "float32")
    logits = np.array([[[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]],
                       [[2.0, 1.0, 0.0], [1.0, -1.0, 2.0]]], "float32")

    def bce(z, y):
        return -(y * math.log(_sigmoid(np.float32(z))) + (1 - y) * math.log(1 - _sigmoid(np.float32(z))))

    # example 0: (0,0) fg agreed, (0,1) bg agreed, (1,2) fg agreed; (0,2) not confident; (1,0), (1,1) disagree
    expected0 = (bce(1.0, 1) + bce(-2.0, 0) + bce(-1.5, 1)) / 3
    # example 1: every confident pixel disagrees with the teacher, the rest are unsure -> no pixel, loss 0
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = colearn_loss_per_example(variable, student, teacher[..., None])
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), [expected0, 0.0], rtol=1e-5)
    grad = tape.gradient(total, variable).numpy()
    selected = np.zeros_like(grad, bool)
    selected[0, 0, 0] = selected[0, 0, 1] = selected[0, 1, 2] = True
    assert np.all(grad[selected] != 0) and np.all(grad[~selected] == 0)
    # a looser confidence admits (0, 0, 2) too (0.6 > 0.55, teacher 0.9 agrees)
    assert colearn_loss_per_example(logits, student, teacher, confidence=0.55).numpy()[0] != pytest.approx(expected0)
    with pytest.raises(MedistillError, match="confidence"):
        colearn_loss_per_example(logits, student, teacher, confidence=1.0)


def test_student_side_gets_no_gradient():
    student = tf.Variable(np.full((1, 2, 2), 0.95, "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(colearn_loss_per_example(np.zeros((1, 2, 2), "float32"), student,
                                                      np.ones((1, 2, 2), "float32")))
    assert tape.gradient(loss, student) is None


def test_refresh_targets_shapes_values_and_uncertainty(model, inputs, box_logits):
    embeddings, boxes, valid = inputs
    extents = np.array([[32, 20], [25, 32], [32, 32]])
    targets, sigma2 = refresh_targets(DecoderTeacher(model), embeddings.astype("float16"), boxes, valid, OUT,
                                      batch=2, extents=extents, progress=False)  # 3 images: last chunk padded
    assert targets.shape == (3, OUT, OUT) and targets.dtype == np.float32
    assert sigma2.shape == (3,) and sigma2.dtype == np.float32 and np.all(np.isfinite(sigma2))
    probs = _sigmoid(box_logits)  # float32 embeddings; the refresh read float16 ones
    np.testing.assert_allclose(targets[0], probs[0, 0], atol=2e-3)
    np.testing.assert_allclose(targets[1], probs[1].max(axis=0), atol=2e-3)
    assert np.all(targets[2] == 0) and sigma2[2] == 0.0
    expected0 = probs[0, 0, :32, :20].var()
    expected1 = np.mean([probs[1, j, :25, :32].var() for j in range(2)])
    np.testing.assert_allclose(sigma2[:2], [expected0, expected1], rtol=0.05)
    assert sigma2[0] > 0
    with pytest.raises(MedistillError, match="boxes must be"):
        refresh_targets(DecoderTeacher(model), embeddings, boxes[:2], valid[:2], OUT, progress=False)


def test_pad_boxes():
    boxes, valid = pad_boxes([np.array([[1.0, 2, 3, 4]]), np.zeros((0, 4))], max_boxes=3)
    assert boxes.shape == (2, 3, 4) and valid.tolist() == [[True, False, False], [False, False, False]]
    assert boxes[0, 0].tolist() == [1, 2, 3, 4] and np.all(boxes[1] == 0)
    assert pad_boxes([np.zeros((0, 4))])[0].shape == (1, 1, 4)
    with pytest.raises(MedistillError, match="raise max_boxes"):
        pad_boxes([np.zeros((4, 4))], max_boxes=2)


def test_resize_square_is_area_resize_and_frames_agree():
    x = np.random.default_rng(1).normal(size=(1, 256, 256, 1)).astype("float32")
    area = cv2.resize(x[0, :, :, 0], (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(resize_square(tf.constant(x), 64).numpy()[0, :, :, 0], area, rtol=1e-5, atol=1e-6)
    assert resize_square(tf.constant(x), 48).shape == (1, 48, 48, 1)
    # the S frame is the 256 frame scaled by S/256: resized extents agree within a pixel
    for height, width in [(37, 91), (512, 300), (17, 17), (1000, 999)]:
        big, small = Geometry.for_size(height, width, 256), Geometry.for_size(height, width, 48)
        assert abs(big.resized_height * 48 / 256 - small.resized_height) <= 1
        assert abs(big.resized_width * 48 / 256 - small.resized_width) <= 1
