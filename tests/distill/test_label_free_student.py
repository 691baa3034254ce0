"""The default label-free student: its terms reach the student, trust enters, collapse is never silent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from medistill.boxes.boxes_file import write_boxes
from medistill.boxes.oracle import boxes_from_masks
from medistill.cli.meddistill import COLLAPSED_EXIT, collapse_status, parse_terms
from medistill.data.phantoms import generate_phantoms
from medistill.distill.meddistill import data as md
from medistill.distill.meddistill.collapse import check_collapse
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.distill.meddistill.distiller import MedDistiller
from medistill.distill.meddistill.trainer import train_meddistill
from medistill.train.loop import epoch_length
from medistill.distill.meddistill.trust import UNCONFIRMED_NEGATIVE, negative_weights
from medistill.distill.weighting import build_weighting
from medistill.errors import MedistillError
from medistill.networks import build_student
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.registry import register_teacher

TINY = {"base_filters": 4, "depth": 2}
ALL_TERMS = ["bce", "prob", "dice", "proj", "outside"]


class EllipseTeacher(Teacher):
    """Fast and deterministic: 0.9 on the ellipse inscribed in each box, 0 elsewhere."""

    name = "ellipse"

    def _predict(self, image, boxes):
        height, width = image.shape[:2]
        yy, xx = np.mgrid[:height, :width] + 0.5
        masks = np.zeros((len(boxes), height, width), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            inside = (((xx - (x1 + x2) / 2) / max((x2 - x1) / 2, 0.5)) ** 2
                      + ((yy - (y1 + y2) / 2) / max((y2 - y1) / 2, 0.5)) ** 2) <= 1.0
            masks[i][inside] = 0.9
        return TeacherOutput(masks, mask_uncertainty(masks), None, None, None, boxes)


class EllipseFeatureTeacher(EllipseTeacher):
    """The ellipse teacher with stride-4 features (pooled intensities), like LiteMedSAM's layout."""

    name = "ellipse-features"

    def _predict(self, image, boxes):
        out = super()._predict(image, boxes)
        grey = image[..., 0].astype(np.float32)
        pooled = grey[: grey.shape[0] // 4 * 4, : grey.shape[1] // 4 * 4]
        pooled = pooled.reshape(pooled.shape[0] // 4, 4, pooled.shape[1] // 4, 4).mean(axis=(1, 3))
        out.features = np.stack([pooled, -pooled], axis=-1)
        out.feature_stride = 4
        return out


register_teacher("ellipse", lambda argument: EllipseTeacher())
register_teacher("ellipse-features", lambda argument: EllipseFeatureTeacher())


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("label_free")
    generate_phantoms(root / "ph", 10, size=64, seed=1)
    write_boxes(root / "boxes.json", boxes_from_masks(root / "ph" / "masks", root / "ph" / "images"))
    return {"root": root, "images": root / "ph" / "images", "boxes": root / "boxes.json"}


@pytest.fixture(scope="module")
def default_run(phantoms) -> Path:
    config = MedDistillConfig(image_dir=str(phantoms["images"]), boxes=str(phantoms["boxes"]),
                              out=str(phantoms["root"] / "run"), teacher="ellipse", student="unet",
                              student_options=TINY, img_size=64, epochs=2, batch=4, seed=0, keep_collapsed=True)
    return train_meddistill(config)


def _batch(phantoms, augment: bool = True) -> tuple[md.DistillData, dict]:
    from medistill.boxes.boxes_file import read_boxes
    from medistill.data.preprocess import PreprocessConfig
    from medistill.teachers.cache import build_cache
    from medistill.teachers.registry import build_teacher

    cache = phantoms["root"] / "cache.h5"
    if not cache.exists():
        build_cache(build_teacher("ellipse"), phantoms["images"], phantoms["boxes"], cache, progress=False)
    entries, _ = md.split_entries(read_boxes(phantoms["boxes"]), phantoms["images"], 0.0, seed=0)
    data = md.load_from_cache(cache, phantoms["images"], entries, PreprocessConfig(size=64), grid=None)
    batch = next(iter(md.training_dataset(data, len(data), epoch=1, seed=3, augment=augment,
                                          drop_remainder=False)))
    return data, batch


def test_default_run_logs_the_new_terms_and_records_trust_and_collapse(default_run):
    history = pd.read_csv(default_run / "history.csv")
    assert {"bce", "dice", "proj", "outside", "w_bce", "w_dice", "w_proj", "w_outside"} <= set(history.columns)
    assert "prob" not in history.columns  # not a default term
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["terms"] == ["bce", "dice", "proj", "outside", "feat"] and summary["weighting"] == "learned"
    # 8 training images at batch 4 are 2 steps: the epoch repeats the set to reach 10 steps
    assert summary["steps_per_epoch"] == 10 and summary["passes_per_epoch"] == 5
    assert summary["trust"]["negatives_rule"] == "auto"
    assert set(summary["collapse"]) >= {"collapsed", "teacher_positive", "student_found"}


def test_the_card_records_the_noise_floor_of_the_teachers_training_masks(default_run, phantoms):
    """min_component = 0.25 x the 5th percentile of the teacher's component areas on the training split only."""
    from medistill.boxes.boxes_file import read_boxes
    from medistill.distill.meddistill.noise_floor import component_fractions

    config = MedDistillConfig.load(default_run / "config.json")
    train, val = md.split_entries(read_boxes(phantoms["boxes"]), phantoms["images"], config.val_fraction, config.seed)
    assert val, "the check needs held-out images to tell the splits apart"
    data = md.load_from_cache(default_run / "teacher_cache.h5", phantoms["images"], train, config.preprocess(),
                              grid=None)
    fractions = component_fractions(data.soft, [(g.resized_height, g.resized_width) for g in data.geometries])
    expected = 0.25 * np.percentile(fractions, 5)
    card = json.loads((default_run / "preprocessing.json").read_text())
    assert expected > 0 and card["min_component"] == pytest.approx(expected, rel=1e-9)
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["noise_floor"] == {"factor": 0.25, "min_component": card["min_component"]}


def test_box_indicators_are_flipped_with_their_image(phantoms):
    data, batch = _batch(phantoms)
    order, flips = md.epoch_plan(len(data), 1, 3, True, True)
    assert flips.any()
    for k, (i, flip) in enumerate(zip(order, flips)):
        expected = md.flip_maps(data.inside(i), flip)
        rows, cols = batch["rows"][k].numpy(), batch["cols"][k].numpy()
        np.testing.assert_array_equal(md.inside_boxes(rows, cols), expected)
        np.testing.assert_array_equal(batch["inside"][k].numpy(), expected)
        # the teacher's mask lies inside the flipped boxes
        soft = batch["soft"][k].numpy()
        assert soft[expected == 0].sum() < 0.05 * max(soft.sum(), 1.0)
    assert float(tf.reduce_sum(batch["soft"])) > 0


def test_every_term_reaches_the_students_first_layer_and_trust_zero_silences_an_example(phantoms):
    _, batch = _batch(phantoms, augment=False)
    keras.utils.set_random_seed(0)
    student = build_student("unet", in_channels=1, num_classes=1, **TINY)
    first = student.trainable_variables[0]
    for term in ALL_TERMS:
        distiller = MedDistiller(student, build_weighting("learned", [term]), terms=[term], confidence=True)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(distiller.losses(batch).total)
        grad = tape.gradient(loss, first)
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, term
    distiller = MedDistiller(student, build_weighting("fixed", ALL_TERMS), terms=ALL_TERMS)
    weights = np.ones(len(batch["weight"]), np.float32)
    weights[0] = 0.0
    out = distiller.losses({**batch, "weight": weights})
    for term in ALL_TERMS:
        assert float(out.terms[term][0]) == 0.0, term
    assert float(out.total[0]) == 0.0


def test_negatives_rule_trusts_only_evidence():
    n_boxes = np.array([1, 0, 0])
    stems = ["a", "b", "c"]
    detector = {"kind": "detector", "confirmed_negatives": ["c"]}
    weights, counts = negative_weights(n_boxes, stems, "auto", detector)
    assert weights.tolist() == [1.0, UNCONFIRMED_NEGATIVE, 1.0] and counts["trusted_negatives"] == 1
    assert negative_weights(n_boxes, stems, "auto", {"kind": "masks"})[0].tolist() == [1, 1, 1]
    assert negative_weights(n_boxes, stems, "none", detector)[0].tolist() == [1, 0, 0]
    assert negative_weights(n_boxes, stems, "all", detector)[0].tolist() == [1, 1, 1]


def test_collapse_is_detected_on_a_student_that_predicts_nothing(phantoms):
    data, _ = _batch(phantoms)
    inputs = keras.Input((64, 64, 1))
    nothing = keras.Model(inputs, keras.layers.Conv2D(1, 1, kernel_initializer="zeros",
                                                      bias_initializer=keras.initializers.Constant(-9.0))(inputs))
    record = check_collapse(nothing, data, [{"epoch": 1, "val_dice": 0.0}])
    assert record["collapsed"] and "predicts (almost) nothing" in record["reason"]
    assert record["teacher_positive"] >= 5 and record["student_found"] == 0
    everything = keras.Model(inputs, keras.layers.Conv2D(1, 1, kernel_initializer="zeros",
                                                         bias_initializer=keras.initializers.Constant(9.0))(inputs))
    assert not check_collapse(everything, data, [{"epoch": 1, "val_dice": 0.3}])["collapsed"]


def test_a_collapsed_run_exits_non_zero_unless_kept(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"collapse": {"collapsed": True, "reason": "nothing"}}))
    assert collapse_status(tmp_path, keep=False) == COLLAPSED_EXIT
    assert "collapsed" in capsys.readouterr().err
    assert collapse_status(tmp_path, keep=True) == 0
    (tmp_path / "summary.json").write_text(json.dumps({"collapse": {"collapsed": False}}))
    assert collapse_status(tmp_path, keep=False) == 0


def test_small_sets_make_epochs_of_enough_steps():
    assert epoch_length(10, 8, 10) == (8, 10)
    assert epoch_length(1000, 8, 10) == (1, 125)
    order, flips = md.epoch_plan(5, 0, 0, True, True, passes=3)
    assert len(order) == 15 and sorted(order.tolist()) == sorted(list(range(5)) * 3)
    np.testing.assert_array_equal(md.epoch_plan(5, 0, 0, True, True, passes=3)[0], order)  # seeded


def test_terms_option_is_checked(phantoms, tmp_path):
    assert parse_terms("bce, dice") == ["bce", "dice"]
    with pytest.raises(MedistillError, match="--terms"):
        parse_terms("bce,tversky")
    with pytest.raises(MedistillError, match="needs the terms bce and prob"):
        MedDistillConfig(image_dir="i", boxes="b", out=str(tmp_path), weighting="ulwr", terms=["bce", "dice"])


def test_cli_defaults_are_the_config_defaults():
    import argparse
    import dataclasses

    from medistill.cli import meddistill as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--image_dir", "i", "--boxes", "b", "--out", "o"])
    from_cli = cli.config_from_args(args)
    from_class = MedDistillConfig(image_dir="i", boxes="b", out="o")
    differing = [f.name for f in dataclasses.fields(MedDistillConfig)
                 if getattr(from_cli, f.name) != getattr(from_class, f.name)]
    assert differing == []


def test_quality_control_writes_its_decisions_and_sheet(default_run):
    """The default run applies quality control: its CSV and sheet exist and the summary counts them."""
    import csv

    summary = json.loads((default_run / "summary.json").read_text())
    quality = summary["trust"]["quality_control"]
    assert quality is not None and quality["masks"] > 0
    with open(default_run / "quality_decisions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= quality["masks"]
    assert (default_run / "quality_sheet.png").stat().st_size > 0


def test_trust_weights_multiply_quality_into_the_negatives_rule():
    from medistill.distill.meddistill.trust import assign_trust

    class Data:
        n_boxes = np.array([1, 0, 2])
        stems = ["a", "b", "c"]
        weights = None

    data = Data()
    record = assign_trust(data, "auto", {"kind": "detector"}, np.array([0.5, 1.0, 0.0], np.float32))
    assert data.weights.tolist() == [0.5, UNCONFIRMED_NEGATIVE, 0.0]
    assert record["down_weighted_negatives"] == 1


def test_ulwr_receives_the_uncertainty_the_cache_holds(phantoms):
    """The per-image σ² reaching the weighting is the cache's, example by example (after shuffling)."""
    from medistill.distill.weighting import ulwr_weights
    from medistill.teachers.cache import CacheReader

    data, batch = _batch(phantoms)
    order, _ = md.epoch_plan(len(data), 1, 3, True, True)
    with CacheReader(phantoms["root"] / "cache.h5") as cache:
        expected = np.array([cache.entry(data.stems[i], features=False).image_uncertainty for i in order], np.float32)
    assert expected.max() > 0
    np.testing.assert_allclose(batch["uncertainty"].numpy(), expected, rtol=1e-6)
    student = build_student("unet", in_channels=1, num_classes=1, **TINY)
    distiller = MedDistiller(student, build_weighting("ulwr", ["bce", "prob"]), terms=["bce", "prob"])
    out = distiller.losses(batch)
    np.testing.assert_allclose(out.weights["bce"].numpy(), ulwr_weights(expected, has_feature=False)[:, 0].numpy(),
                               rtol=1e-5)


def test_the_exported_student_is_the_selected_epoch_not_the_last(phantoms, tmp_path, monkeypatch):
    from medistill.distill.meddistill import trainer

    scores = iter([0.9, 0.2, 0.1])
    monkeypatch.setattr(trainer, "make_validation",
                        lambda student, val, batch: (lambda: {"val_dice": next(scores)}))
    config = MedDistillConfig(image_dir=str(phantoms["images"]), boxes=str(phantoms["boxes"]), out=str(tmp_path / "r"),
                              cache=str(phantoms["root"] / "cache.h5"), teacher="ellipse", student="unet",
                              student_options=TINY, img_size=64, epochs=3, batch=4, seed=0, keep_collapsed=True)
    run = train_meddistill(config)
    exported = keras.saving.load_model(run / "student.keras", compile=False).get_weights()
    best = build_student("unet", in_channels=1, num_classes=1, **TINY)
    best.load_weights(str(run / "best.weights.h5"))
    last = build_student("unet", in_channels=1, num_classes=1, **TINY)
    tf.train.Checkpoint(model=last).restore(tf.train.latest_checkpoint(str(run / "checkpoints"))).expect_partial()
    assert all(np.array_equal(a, b) for a, b in zip(exported, best.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(exported, last.get_weights()))
    assert json.loads((run / "summary.json").read_text())["best_val_dice"] == pytest.approx(0.9)


def test_weight_average_reaches_the_loop_and_the_averaged_weights_are_exported(phantoms, tmp_path):
    """--weight-average: the checkpoint holds the shadows, and student.keras is them, not the live weights."""
    config = MedDistillConfig(image_dir=str(phantoms["images"]), boxes=str(phantoms["boxes"]), out=str(tmp_path / "a"),
                              cache=str(phantoms["root"] / "cache.h5"), teacher="ellipse", student="unet",
                              student_options=TINY, img_size=64, epochs=1, batch=4, seed=0, keep_collapsed=True,
                              weight_average=0.9)
    run = train_meddistill(config)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run / "checkpoints")))
    assert reader.get_tensor("weight_average/updates/.ATTRIBUTES/VARIABLE_VALUE") == 10  # one epoch of 10 steps
    live = build_student("unet", in_channels=1, num_classes=1, **TINY)
    tf.train.Checkpoint(model=live).restore(tf.train.latest_checkpoint(str(run / "checkpoints"))).expect_partial()
    exported = keras.saving.load_model(run / "student.keras", compile=False)
    floats = [i for i, w in enumerate(live.weights) if w.dtype == "float32"]
    shadows = [reader.get_tensor(f"weight_average/shadows/{k}/.ATTRIBUTES/VARIABLE_VALUE") for k in range(len(floats))]
    for k, index in enumerate(floats):  # one epoch: the best epoch's average is the last one
        np.testing.assert_allclose(exported.weights[index].numpy(), shadows[k], rtol=1e-6)
    assert not all(np.allclose(live.weights[i].numpy(), shadows[k]) for k, i in enumerate(floats))


def test_the_default_terms_train_inside_tf_function_with_a_feature_teacher(phantoms, tmp_path):
    """Every default term, the feature term included, through the compiled training step."""
    config = MedDistillConfig(image_dir=str(phantoms["images"]), boxes=str(phantoms["boxes"]), out=str(tmp_path / "f"),
                              teacher="ellipse-features", student="unet", student_options=TINY, img_size=64,
                              epochs=1, batch=4, seed=0, min_steps_per_epoch=2, keep_collapsed=True)
    run = train_meddistill(config)
    history = pd.read_csv(run / "history.csv")
    assert {"bce", "dice", "proj", "outside", "feat", "w_feat"} <= set(history.columns)
    assert np.isfinite(history[["bce", "dice", "proj", "outside", "feat"]].to_numpy()).all()


def test_the_teacher_runs_as_the_config_says_not_as_the_process_default(phantoms, tmp_path):
    """The cache's teacher is built with config.teacher_runtime: a non-default runtime reaches
    it (GrabCut refuses one), and the process-wide runtime is neither used nor changed."""
    from medistill.errors import MedistillError
    from medistill.teachers.registry import TeacherRuntime, current_runtime, use_runtime

    config = MedDistillConfig(image_dir=str(phantoms["images"]), boxes=str(phantoms["boxes"]),
                              out=str(tmp_path / "run"), teacher="grabcut", student="unet", student_options=TINY,
                              img_size=64, epochs=1, batch=4, seed=0, keep_collapsed=True,
                              teacher_runtime={"resize": "bilinear"})
    with pytest.raises(MedistillError, match="runs only as it is"):
        train_meddistill(config)
    assert current_runtime() == TeacherRuntime()
    use_runtime(TeacherRuntime(resize="bilinear"))  # a process default the run must ignore
    try:
        run = train_meddistill(dataclasses.replace(config, out=str(tmp_path / "run2"),
                                                   teacher_runtime=TeacherRuntime().to_dict()))
        assert (run / "student.keras").is_file()
    finally:
        use_runtime(TeacherRuntime())
