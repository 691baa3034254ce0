"""Wiring tests that kill the mutants of benchmarks/bench_mutants.py (issue 12).

Each test checks one connection between parts, fast and in process: the outside-box
term's trust reaches the loss; the run exports the selected epoch; prediction applies
the sigmoid before its threshold; recipe losses are divided by the global batch;
CAKD/MSKD pool the teacher like the student; SSCD's mixed labels follow their images; a
resumed loop drops history rows past its checkpoint.
"""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from medistill.data import PreprocessConfig
from medistill.distill.config import DistillConfig
from medistill.distill.recipes import get_recipe, taps
from medistill.distill.recipes.base import RecipeContext
from medistill.losses.cakd import cakd_loss_per_example
from medistill.networks import build_student
from medistill.train.loop import LoopSettings, TrainingLoop

TINY = {"base_filters": 4, "depth": 2}
SIZE = 32


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# -- label-free terms: orientation and pixel rules -----------------------------------------------
def test_projection_by_hand_on_a_box_taller_than_wide():
    """On a non-square box each projection must run along its own axis (a square hides a swap)."""
    from medistill.losses.label_free import box_projection_per_example, rasterise_boxes

    rows, cols = rasterise_boxes(np.array([[1, 2, 3, 7], [4, 0, 8, 2]], np.float32), scale=1.0, size=8)
    prob = np.random.default_rng(1).random((1, 8, 8)).astype("float32") ** 3
    logits = np.log(prob / (1 - prob))[..., None].astype("float32")
    expected = []
    for r, c in zip(rows, cols):
        in_box = prob[0] * r[:, None] * c[None, :]
        onto_x, onto_y = in_box.max(axis=0), in_box.max(axis=1)  # per column, per row
        dice = [1 - 2 * (v * s).sum() / ((v * s).sum() + s.sum()) for v, s in ((onto_x, c), (onto_y, r))]
        expected.append(np.mean(dice))
    found = box_projection_per_example(logits, rows[None], cols[None], np.array([[1.0, 3.0]], "float32"))
    np.testing.assert_allclose(float(found[0]), (expected[0] + 3 * expected[1]) / 4, rtol=1e-4)


def test_rasterised_box_edges_on_pixel_centres():
    """A centre on the box's first edge is inside, on its last edge outside: ``[y1, y2)``."""
    from medistill.losses.label_free import rasterise_boxes

    rows, cols = rasterise_boxes(np.array([[0.5, 2.5, 3.5, 5.5]], np.float32), scale=1.0, size=8)
    assert rows[0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert cols[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


# -- MedDistill: the outside-box term's trust ------------------------------------------------
def test_outside_trust_is_the_best_box_score_through_the_distiller():
    from medistill.distill.meddistill.distiller import MedDistiller
    from medistill.distill.weighting import FixedWeighting
    from medistill.losses.label_free import inside_boxes, rasterise_boxes

    keras.utils.set_random_seed(0)
    size = 16
    student = build_student("unet", in_channels=1, num_classes=1, **TINY)
    distiller = MedDistiller(student, FixedWeighting({"outside": 1.0}), terms=["outside"])
    rows, cols = rasterise_boxes(np.array([[2, 2, 8, 8]], "float32"), scale=1.0, size=size)
    image = np.random.default_rng(0).random((1, size, size, 1)).astype("float32")
    batch = {"image": np.repeat(image, 3, axis=0), "soft": np.zeros((3, size, size), "float32"),
             "uncertainty": np.zeros(3, "float32"), "rows": np.stack([rows] * 3), "cols": np.stack([cols] * 3),
             # a sure box, a doubtful one, and an image without a box (padding weight 0: trust 1)
             "box_weights": np.array([[1.0], [0.4], [0.0]], "float32"),
             "inside": np.stack([inside_boxes(rows, cols)] * 2 + [np.zeros((size, size), "uint8")])}
    outside = distiller.losses(batch, training=False).terms["outside"].numpy()
    assert outside[0] > 0
    np.testing.assert_allclose(outside[1], 0.4 * outside[0], rtol=1e-5)


# -- the exported model is the selected epoch -------------------------------------------------
def test_finish_run_exports_the_selected_epoch_not_the_last(tmp_path):
    from medistill.export import ModelCard, load_predictor
    from medistill.train.session import RunSession, finish_run

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 1)])
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(model.trainable_variables)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, 1.0 - x)).batch(4)

    def step(batch):
        images, target = batch
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(
                tf.reduce_mean(tf.square(model(images, training=True) - target), axis=[1, 2, 3]), global_batch_size=4)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss}

    scores = iter([0.9, 0.2, 0.1])
    loop = TrainingLoop(strategy, tmp_path, model, optimizer, step, lambda: {"val_dice": next(scores)},
                        LoopSettings(epochs=3, monitor="val_dice", mode="max"))
    history = loop.fit(lambda epoch: data)
    last = [w.copy() for w in model.get_weights()]
    finish_run(RunSession(strategy, tmp_path, True, False), loop, model, ModelCard(PreprocessConfig(size=8), 2),
               history, {})
    best = keras.models.clone_model(model)
    best.load_weights(str(tmp_path / "best.weights.h5"))
    exported = keras.saving.load_model(tmp_path / "model.keras", compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(exported, best.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(exported, last))
    image = x[0]
    np.testing.assert_allclose(load_predictor(tmp_path / "saved_model").predict(image),
                               load_predictor(tmp_path / "model.keras").predict(image), atol=1e-5)


# -- prediction: probabilities, then the threshold ----------------------------------------------
def test_binary_probabilities_are_the_sigmoid_of_the_logits_before_the_threshold(tmp_path):
    from medistill.export import ModelCard, Predictor

    card = ModelCard(PreprocessConfig(size=8), 2)
    logits = np.full((1, 8, 8, 1), 0.2, "float32")
    logits[0, :4] = -0.3  # probability 0.43: background
    logits[0, :2] = 0.4   # probability 0.60: foreground, though the logit itself is under 0.5
    predictor = Predictor(lambda batch: tf.constant(np.repeat(logits, int(batch.shape[0]), axis=0)), card, tmp_path)
    prob = predictor.predict(np.random.default_rng(0).random((8, 8, 1)).astype("float32"))
    np.testing.assert_allclose(prob, sigmoid(logits[0, ..., 0]), rtol=1e-5)
    labels = predictor.labels(prob)
    np.testing.assert_array_equal(labels, (sigmoid(logits[0, ..., 0]) > 0.5).astype(np.int32))
    assert labels[0].all() and not labels[2].any() and labels[5].all()


# -- recipes ---------------------------------------------------------------------------------------
def make_recipe(name: str, num_classes: int, teacher, global_batch: int = 2, **options):
    student_options = {"channels": [4, 8, 8]} if name == "cakd-mskd" else TINY
    config = DistillConfig(data="unused", out="unused", recipe=name, img_size=SIZE, student_options=student_options,
                           teacher_model="t.keras", **options)
    context = RecipeContext(config=config, num_classes=num_classes, train_samples=[],
                            preprocess=PreprocessConfig(size=SIZE), augment=None, global_batch=global_batch,
                            steps_per_epoch=1, strategy=tf.distribute.get_strategy(), teacher=teacher)
    recipe = get_recipe(name)(context)
    recipe.build()
    return recipe


def make_teacher(outputs: int):
    teacher = build_student("unet", in_channels=1, num_classes=outputs, deep_supervision=True, **TINY)
    teacher.trainable = False
    return teacher


def test_recipe_average_divides_by_the_global_batch_not_the_replicas_share():
    """On each of 2 replicas a recipe sees half the global batch; its loss is a share of the global mean."""
    recipe = make_recipe("kamsd", 2, make_teacher(1), global_batch=4)
    np.testing.assert_allclose(float(recipe.average(tf.constant([1.0, 3.0]))), (1.0 + 3.0) / 4)


def test_cakd_compares_the_teacher_pooled_like_the_student():
    keras.utils.set_random_seed(0)
    recipe = make_recipe("cakd-mskd", 3, make_teacher(3))
    assert recipe.factors == [1, 2]
    x = tf.constant(np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype("float32"))
    y = tf.constant(np.zeros((2, SIZE, SIZE), "int32"))
    terms = recipe.losses(x, y, training=False)
    student, teacher = recipe.student_taps(x, training=False), recipe.teacher_taps(x, training=False)
    expected = sum(w * cakd_loss_per_example(taps.downsample(student[s], f), taps.downsample(teacher[t], f))
                   for w, (s, t), f in zip(recipe.weights, recipe.pairs, recipe.factors))
    np.testing.assert_allclose(terms["cakd"].numpy(), expected.numpy(), rtol=1e-5)


def test_sscd_mixed_labels_follow_their_mixed_images():
    from medistill.distill.recipes.sscd import SSCD

    b, size = 2, 8
    box = np.zeros((b, size, size), "float32")
    box[:, 2:6, 1:4] = 1.0
    fake = SimpleNamespace(options={"pseudo_weight": 0.5},
                           pseudo_labels=lambda images: tf.fill([tf.shape(images)[0], size, size], 2))
    labelled, unlabelled = np.ones((b, size, size, 1), "float32"), np.zeros((b, size, size, 1), "float32")
    batch = {"x_l": tf.constant(labelled), "xs_l": tf.constant(labelled), "x_u": tf.constant(unlabelled),
             "xs_u": tf.constant(unlabelled), "y_l": tf.ones((b, size, size), tf.int32), "box": tf.constant(box)}
    mixed = SSCD.mixed_batch(fake, batch)
    for view in ("weak", "strong"):
        images = mixed["images"][view].numpy()[..., 0]
        labels = mixed["labels"][view].numpy()
        # ground truth (1) exactly where the labelled image's pixels are, pseudo-labels (2) elsewhere
        np.testing.assert_array_equal(labels, np.where(images == 1.0, 1, 2))
        assert (images[:b][box > 0.5] == 1.0).all()  # the first half: a labelled box in an unlabelled image


# -- the loop: resume drops history rows past its checkpoint ----------------------------------------
def test_resume_drops_history_rows_written_after_the_last_checkpoint(tmp_path):
    def setup(epochs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        optimizer = keras.optimizers.Adam(0.05)
        optimizer.build(model.trainable_variables)

        def step(batch):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(tf.reduce_sum(tf.square(model(batch)), axis=-1), global_batch_size=4)
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return {"loss": loss}

        return TrainingLoop(tf.distribute.get_strategy(), tmp_path, model, optimizer, step, None,
                            LoopSettings(epochs=epochs, monitor="loss", mode="min"))

    data = tf.data.Dataset.from_tensor_slices(np.ones((4, 3), "float32")).batch(4)
    setup(2).fit(lambda epoch: data)
    table = pd.read_csv(tmp_path / "history.csv")
    # killed between writing epoch 3's history row and saving its checkpoint
    pd.concat([table, table.tail(1).assign(epoch=3)]).to_csv(tmp_path / "history.csv", index=False)
    history = setup(3).fit(lambda epoch: data)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1, 2, 3]




# -- MedDistill: the feature term trains the student, co-learning flips, ULWR keeps every term ----------
def test_the_feature_term_alone_reaches_the_student_not_only_the_projection():
    from medistill.distill.meddistill.distiller import MedDistiller
    from medistill.distill.projection import FeatureProjection
    from medistill.distill.weighting import FixedWeighting

    keras.utils.set_random_seed(0)
    student = build_student("unet", in_channels=1, num_classes=1, **TINY)
    projection = FeatureProjection(3)
    projection.build((None, 8, 8, 16))
    distiller = MedDistiller(student, FixedWeighting({"feat": 1.0}), feature_layer="bottleneck",
                             projection=projection, terms=["feat"])
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, 32, 32, 1), np.float32), "soft": rng.random((2, 32, 32), np.float32),
             "uncertainty": np.zeros(2, np.float32), "features": rng.random((2, 8, 8, 3)).astype(np.float16)}
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(distiller.losses(batch).total)
    grads = tape.gradient(loss, student.trainable_variables)
    first = student.trainable_variables[0]
    assert first.path.startswith("enc1/")
    assert grads[0] is not None and float(tf.reduce_max(tf.abs(grads[0]))) > 0


def test_colearning_compares_the_decoder_output_flipped_like_the_student_input():
    from medistill.distill.meddistill.distiller import MedDistiller
    from medistill.distill.weighting import FixedWeighting

    size = 4
    decoder_logits = np.arange(2 * size * size, dtype=np.float32).reshape(2, size, size)

    class Decoder:
        def soft_masks(self, embeddings, boxes, valid, out_size, training=False):
            return tf.sigmoid(decoder_logits), tf.constant(decoder_logits)

    student = build_student("unet", in_channels=1, num_classes=1, **TINY)
    distiller = MedDistiller(student, FixedWeighting({"bce": 1.0}), decoder=Decoder(), terms=["bce"])
    seen = {}

    def capture(decoder, student_prob, targets):
        seen["decoder"] = np.asarray(decoder)
        return tf.zeros([2])

    distiller.colearn_loss = capture
    batch = {"soft": np.zeros((2, size, size), "float32"), "embeddings": None, "boxes": None, "valid": None,
             "flip": np.array([[True, False], [False, True]])}
    distiller.colearn_per_example(batch, tf.zeros((2, size, size, 1)))
    np.testing.assert_array_equal(seen["decoder"][0], decoder_logits[0][:, ::-1])
    np.testing.assert_array_equal(seen["decoder"][1], decoder_logits[1][::-1])


def test_ulwr_adds_the_terms_it_has_no_rule_for_with_weight_one():
    from medistill.distill.weighting import ulwr_penalty, ulwr_weights, build_weighting

    weighting = build_weighting("ulwr", ["bce", "prob", "dice", "outside"])
    terms = {"bce": np.array([0.5, 0.2], "float32"), "prob": np.array([0.1, 0.3], "float32"),
             "dice": np.array([0.7, 0.4], "float32"), "outside": np.array([0.05, 0.6], "float32")}
    sigma2 = np.array([0.01, 0.2], "float32")
    total, report = weighting(terms, sigma2)
    weights = ulwr_weights(sigma2, has_feature=False).numpy()
    expected = (weights[:, 0] * terms["bce"] + weights[:, 1] * terms["prob"] + terms["dice"] + terms["outside"]
                + ulwr_penalty(weights, has_feature=False).numpy())
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(report["dice"].numpy(), [1.0, 1.0])


# -- the teacher cache: the weights hash and the image σ² -------------------------------------------------
@pytest.fixture()
def two_box_phantoms(tmp_path):
    from medistill.boxes.boxes_file import Box, write_boxes
    from medistill.boxes.oracle import boxes_from_masks
    from medistill.data.phantoms import generate_phantoms

    generate_phantoms(tmp_path / "ph", n=3, size=32, seed=1)
    boxes = boxes_from_masks(tmp_path / "ph" / "masks", tmp_path / "ph" / "images")
    for entry in boxes.images:
        entry.boxes = [Box(1, 1, 9, 7), Box(10, 12, 30, 31)]
    write_boxes(tmp_path / "boxes.json", boxes)
    return tmp_path / "ph" / "images", tmp_path / "boxes.json"


def _box_teacher(weights: str):
    from medistill.teachers.base import Teacher, TeacherOutput

    class Boxes(Teacher):
        name = "wiring-boxes"
        weights_hash = weights

        def _predict(self, image, boxes):
            masks = np.zeros((len(boxes), *image.shape[:2]), np.float32)
            for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
                masks[i, y1:y2, x1:x2] = 0.9
            uncertainties = np.arange(1, len(boxes) + 1, dtype=np.float32) / 10  # 0.1, 0.2: mean 0.15
            return TeacherOutput(masks, uncertainties, None, None, None, boxes)

    return Boxes()


def test_cache_records_the_mean_uncertainty_and_refuses_other_weights(two_box_phantoms, tmp_path):
    from medistill.errors import MedistillError
    from medistill.teachers.cache import CacheReader, build_cache

    image_dir, boxes = two_box_phantoms
    out = tmp_path / "cache.h5"
    build_cache(_box_teacher("aaaa"), image_dir, boxes, out, progress=False)
    with CacheReader(out) as cache:
        values = [cache.entry(stem, features=False).image_uncertainty for stem in cache.stems]
    np.testing.assert_allclose(values, 0.15, rtol=1e-6)
    with pytest.raises(MedistillError, match="weights_hash"):
        build_cache(_box_teacher("bbbb"), image_dir, boxes, out, progress=False)


# -- MedDistill: the collapse check judges the selected epoch, the one exported ---------------------------
def test_meddistill_collapse_check_and_export_see_the_selected_epoch(two_box_phantoms, tmp_path, monkeypatch):
    from medistill.distill.meddistill import trainer
    from medistill.distill.meddistill.config import MedDistillConfig
    from medistill.teachers.registry import register_teacher

    register_teacher("wiring-boxes", lambda argument: _box_teacher(""))
    scores = iter([0.9, 0.2, 0.1])
    monkeypatch.setattr(trainer, "make_validation", lambda student, val, batch: (lambda: {"val_dice": next(scores)}))
    judged = {}
    original = trainer.check_collapse

    def capture(student, *args, **kwargs):
        judged["weights"] = [w.copy() for w in student.get_weights()]
        return original(student, *args, **kwargs)

    monkeypatch.setattr(trainer, "check_collapse", capture)
    image_dir, boxes = two_box_phantoms
    config = MedDistillConfig(image_dir=str(image_dir), boxes=str(boxes), out=str(tmp_path / "run"),
                              teacher="wiring-boxes", student="unet", student_options=TINY, img_size=32, epochs=3,
                              batch=2, seed=0, val_fraction=0.34, min_steps_per_epoch=1, quality_control=False,
                              keep_collapsed=True)
    run = trainer.train_meddistill(config)
    best = build_student("unet", in_channels=1, num_classes=1, **TINY)
    best.load_weights(str(run / "best.weights.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(judged["weights"], best.get_weights()))
