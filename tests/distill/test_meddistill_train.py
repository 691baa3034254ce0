"""The MedDistill trainer end to end at 64 px: GrabCut, a feature teacher, live teacher, resume."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from medistill.boxes.boxes_file import write_boxes
from medistill.boxes.oracle import boxes_from_masks
from medistill.cli import meddistill as cli
from medistill.cli import run_command
from medistill.data import load_sample, pair_folder
from medistill.data.phantoms import generate_phantoms
from medistill.data.preprocess import PreprocessConfig, preprocess_image
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.distill.meddistill.trainer import (
    MedDistiller,
    choose_feature_layer,
    feature_strides,
    flip_like_batch,
    train_meddistill,
)
from medistill.distill.projection import FeatureProjection
from medistill.distill.weighting import build_weighting
from medistill.errors import MedistillError
from medistill.export import load_predictor
from medistill.networks import build_student
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.registry import register_teacher

ROOT = Path(__file__).resolve().parents[2]
TINY = {"base_filters": 4, "depth": 2}


class BoxFeatureTeacher(Teacher):
    """Deterministic and fast: 0.8 inside each box; pooled image intensities as stride-4 features."""

    name = "box-features"

    def _predict(self, image, boxes):
        height, width = image.shape[:2]
        masks = np.zeros((len(boxes), height, width), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            masks[i, y1:y2, x1:x2] = 0.8
        x, _ = preprocess_image(image, PreprocessConfig(size=64))
        pooled = x[..., 0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
        features = np.stack([pooled, 1.0 - pooled, np.full_like(pooled, 0.5)], axis=-1)
        return TeacherOutput(masks, mask_uncertainty(masks), None, features, 4, boxes)


register_teacher("box-features", lambda argument: BoxFeatureTeacher())


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict:
    """10 phantoms at 64 px, one without a lesion, with oracle boxes."""
    root = tmp_path_factory.mktemp("md_train")
    generate_phantoms(root / "ph", 10, size=64, seed=0)
    write_boxes(root / "boxes.json", boxes_from_masks(root / "ph" / "masks", root / "ph" / "images"))
    return {"root": root, "images": root / "ph" / "images", "masks": root / "ph" / "masks",
            "boxes": root / "boxes.json"}


# The released MedDistill's losses and epochs: the tests of this module check that machinery
# (tests/distill/test_label_free_student.py checks the default terms).
RELEASED = dict(weighting="ulwr", terms=["bce", "prob", "feat"], confidence=False, negatives="all",
                min_steps_per_epoch=1, quality_control=False, schedule="constant")


def config(phantoms, out: Path, **overrides) -> MedDistillConfig:
    settings = dict(image_dir=str(phantoms["images"]), boxes=str(phantoms["boxes"]), out=str(out),
                    teacher="grabcut", student="unet", student_options=TINY, img_size=64, epochs=2, batch=4,
                    lr=3e-3, val_fraction=0.2, seed=0, **RELEASED)
    return MedDistillConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def grabcut_run(phantoms) -> Path:
    return train_meddistill(config(phantoms, phantoms["root"] / "grabcut"))


def test_grabcut_run_writes_everything_and_has_no_feature_term(grabcut_run, phantoms):
    for name in ("student.keras", "saved_model/saved_model.pb", "preprocessing.json", "config.json",
                 "history.csv", "loss_terms.png", "curves.png", "summary.json", "teacher_cache.h5",
                 "train.log"):
        assert (grabcut_run / name).exists(), name
    assert any((grabcut_run / "tensorboard").iterdir())
    history = pd.read_csv(grabcut_run / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert {"loss", "bce", "prob", "w_bce", "w_prob", "penalty", "val_dice", "val_bce"} <= set(history.columns)
    assert not {"feat", "w_feat"} & set(history.columns)
    assert np.isfinite(history.drop(columns="epoch").to_numpy()).all()
    np.testing.assert_allclose(history["w_bce"] + history["w_prob"], 1.0, rtol=1e-5)  # ULWR normalised
    summary = json.loads((grabcut_run / "summary.json").read_text())
    assert summary["feature_layer"] is None and summary["train_images"] == 8 and summary["val_images"] == 2
    saved = MedDistillConfig.load(grabcut_run / "config.json")
    assert saved == config(phantoms, grabcut_run)
    card = json.loads((grabcut_run / "preprocessing.json").read_text())
    assert card["preprocess"] == {"size": 64, "channels": 1, "normalisation": "minmax", "clip_percentiles": None}
    image, _ = load_sample(pair_folder(phantoms["images"], phantoms["masks"])[0])
    for source in (grabcut_run, grabcut_run / "saved_model"):
        prob = load_predictor(source).predict(image)
        assert prob.shape == image.shape[:2] and 0.0 <= prob.min() <= prob.max() <= 1.0


def test_rerunning_a_finished_run_changes_nothing(grabcut_run, phantoms, caplog):
    before = (grabcut_run / "history.csv").read_text()
    with caplog.at_level("INFO", logger="medistill"):
        train_meddistill(config(phantoms, grabcut_run), require_resume=True)
    assert "already complete" in caplog.text
    assert (grabcut_run / "history.csv").read_text() == before


def test_live_teacher_gives_the_cached_run(grabcut_run, phantoms):
    """GrabCut is deterministic: calling it at every step must train exactly as the cache does."""
    live = train_meddistill(config(phantoms, phantoms["root"] / "live", live_teacher=True))
    cached_history = pd.read_csv(grabcut_run / "history.csv")
    live_history = pd.read_csv(live / "history.csv")
    pd.testing.assert_frame_equal(live_history, cached_history, rtol=1e-5)
    summary = json.loads((live / "summary.json").read_text())
    assert summary["teacher_calls"] == 2 * 2 * 4  # epochs x steps x batch
    assert not (live / "teacher_cache.h5").exists()


def test_feature_teacher_adds_a_projected_feature_term(phantoms):
    run = train_meddistill(config(phantoms, phantoms["root"] / "features", teacher="box-features",
                                  weighting="learned", epochs=1, augment=True))
    history = pd.read_csv(run / "history.csv")
    assert {"feat", "w_feat"} <= set(history.columns) and history["feat"].iloc[0] > 0
    summary = json.loads((run / "summary.json").read_text())
    # The tiny U-Net's stride-4 map is its bottleneck; the teacher's stride is 4 (its 16x16 map
    # is cached compact: 2x2-pooled to 8x8, the stride still the encoder's).
    assert summary["feature_layer"] == "bottleneck" and summary["teacher_feature_stride"] == 4
    assert summary["teacher_feature_shape"] == [8, 8, 3]
    loaded = keras.saving.load_model(run / "student.keras", compile=False)
    assert len(loaded.outputs) == 1  # the projection is not part of the exported student


def test_default_feature_layer_matches_the_teacher_stride():
    student = build_student("unet", in_channels=1, num_classes=1)  # depth 4
    strides = feature_strides(student, 64)
    assert strides["enc3"] == (4, 128) and strides["dec2"] == (4, 128) and strides["bottleneck"] == (16, 512)
    assert choose_feature_layer(strides, 4) == "dec2"  # decoder before encoder at equal stride
    assert choose_feature_layer(strides, 16) == "bottleneck"
    assert choose_feature_layer(strides, 1) == "dec4"


def test_gradients_reach_student_projection_and_learned_weights():
    keras.utils.set_random_seed(0)
    student = build_student("unet", in_channels=1, num_classes=1, **TINY)
    projection = FeatureProjection(3)
    projection.build((None, 8, 8, 16))
    distiller = MedDistiller(student, build_weighting("learned", ["bce", "prob", "feat"]),
                             feature_layer="bottleneck", projection=projection)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, 32, 32, 1), np.float32), "soft": rng.random((2, 32, 32), np.float32),
             "uncertainty": np.array([0.01, 0.02], np.float32),
             "features": rng.random((2, 8, 8, 3)).astype(np.float16)}
    with tf.GradientTape() as tape:
        out = distiller.losses(batch)
        loss = tf.reduce_mean(out.total)
    variables = distiller.trainable_variables
    grads = tape.gradient(loss, variables)
    names = [v.path for v in variables]
    assert all(g is not None for g in grads), [n for n, g in zip(names, grads) if g is None]
    moved = {n for n, g in zip(names, grads) if float(tf.reduce_max(tf.abs(g))) > 0}
    assert {v.path for v in projection.trainable_variables} <= moved
    assert {v.path for v in distiller.weighting.trainable_variables} <= moved and len(
        distiller.weighting.trainable_variables) == 3
    assert student.trainable_variables[0].path in moved  # the first convolution
    # Learned weighting, by hand: Σ exp(-s) L + s with s = 0 is the plain sum.
    expected = out.terms["bce"] + out.terms["prob"] + out.terms["feat"]
    np.testing.assert_allclose(out.total.numpy(), expected.numpy(), rtol=1e-6)


def test_a_mixed_precision_step_keeps_the_loss_maths_in_float32():
    """The GPU path, run on the CPU: float16 student and projection, float32 losses, loss scaling."""
    from medistill.distill.meddistill.trainer import make_step
    from medistill.train.precision import wrap_optimizer

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        student = build_student("unet", in_channels=1, num_classes=1, **TINY)
        projection = FeatureProjection(3)
        projection.build((None, 8, 8, 16))
        distiller = MedDistiller(student, build_weighting("ulwr", ["bce", "prob", "feat"]),
                                 feature_layer="bottleneck", projection=projection)
        optimizer = wrap_optimizer(keras.optimizers.Adam(1e-3), "mixed_float16")
        optimizer.build(distiller.trainable_variables)
        rng = np.random.default_rng(1)
        batch = {"image": rng.random((2, 32, 32, 1), np.float32), "soft": rng.random((2, 32, 32), np.float32),
                 "uncertainty": np.array([0.01, 0.02], np.float32),
                 "features": rng.random((2, 8, 8, 3)).astype(np.float16)}
        out = distiller.losses(batch)
        assert distiller.forward_model(batch["image"])["bottleneck"].dtype == tf.float16  # computed in half
        assert out.total.dtype == tf.float32 and all(t.dtype == tf.float32 for t in out.terms.values())
        before = projection.trainable_variables[0].numpy().copy()
        report = make_step(distiller, optimizer, global_batch=2)(batch)
        assert all(np.isfinite(float(v)) for v in report.values())
        assert not np.array_equal(projection.trainable_variables[0].numpy(), before)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_decoder_output_is_flipped_like_its_example():
    maps = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    flips = np.array([[True, False], [True, True]])
    flipped = flip_like_batch(maps, flips).numpy()
    np.testing.assert_array_equal(flipped[0], maps[0][:, ::-1])
    np.testing.assert_array_equal(flipped[1], maps[1][::-1, ::-1])


def test_settings_that_cannot_work_are_refused(phantoms, tmp_path):
    with pytest.raises(MedistillError, match="needs --teacher litemedsam"):
        config(phantoms, tmp_path / "a", co_learn=True)
    with pytest.raises(MedistillError, match="cannot run with --live-teacher"):
        config(phantoms, tmp_path / "a", teacher="litemedsam", co_learn=True, live_teacher=True)
    with pytest.raises(MedistillError, match="--fixed-weights"):
        config(phantoms, tmp_path / "a", weighting="fixed")
    with pytest.raises(MedistillError, match="unknown term"):
        config(phantoms, tmp_path / "a", weighting="fixed", fixed_weights={"bce": 1, "tversky": 1})
    with pytest.raises(MedistillError, match="holds no checkpoint to resume"):
        train_meddistill(config(phantoms, tmp_path / "nothing"), require_resume=True)


def test_cli_error_for_co_learn_with_grabcut(phantoms, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--image_dir", str(phantoms["images"]), "--boxes", str(phantoms["boxes"]),
                              "--teacher", "grabcut", "--co-learn", "--out", str(tmp_path / "run")])
    assert run_command("medistill.cli.meddistill", args) == 2
    error = capsys.readouterr().err
    assert "--co-learn" in error and "litemedsam" in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_kill_and_rerun_resumes(grabcut_run, phantoms, tmp_path, wait_for_epochs):
    run = tmp_path / "killed"
    args = [sys.executable, "meddistill.py", "--image_dir", str(phantoms["images"]), "--boxes",
            str(phantoms["boxes"]), "--teacher", "grabcut", "--cache", str(grabcut_run / "teacher_cache.h5"),
            "--student", "unet", "--student-options", json.dumps(TINY), "--img-size", "64", "--epochs", "4",
            "--batch", "2", "--lr", "3e-3", "--keep-collapsed", "--out", str(run)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for_epochs(run, 1, process)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = pd.read_csv(run / "history.csv")
    assert len(before) < 4 and not (run / "student.keras").exists()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)  # the same command
    assert result.returncode == 0, result.stderr
    # history.csv is written just before the epoch's checkpoint: a kill between the two
    # trains that one epoch again, never more.
    resumed = re.search(r"(\d+) epoch\(s\) already done", result.stderr)
    done = int(resumed.group(1)) if resumed else 0      # no checkpoint yet: a fresh start
    assert len(before) - 1 <= done <= len(before)
    after = pd.read_csv(run / "history.csv")
    assert after["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(after.iloc[:done].reset_index(drop=True), before.iloc[:done])
    assert (run / "student.keras").exists()


class EmbeddingTeacher(Teacher):
    """A fast stand-in for building a LiteMedSAM cache: LiteMedSAM's provenance (so the
    trainer accepts the cache), 0.8 inside each box, and seeded random (64, 64, 256)
    embeddings of stride 4. Co-learning then runs the real LiteMedSAM decoder on them."""

    name = "litemedsam"

    def __init__(self, real: Teacher) -> None:
        self.weights_hash = real.weights_hash
        self._preprocessing = real.preprocessing

    @property
    def preprocessing(self):
        return self._preprocessing

    def _predict(self, image, boxes):
        height, width = image.shape[:2]
        masks = np.zeros((len(boxes), height, width), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            masks[i, y1:y2, x1:x2] = 0.8
        rng = np.random.default_rng(int(image.sum()) % 2**32)
        embedding = (0.1 * rng.standard_normal((64, 64, 256))).astype(np.float32)
        return TeacherOutput(masks, mask_uncertainty(masks), None, embedding, 4, boxes)


@pytest.mark.slow
def test_co_learning_trains_the_decoder_and_checkpoints_refreshed_targets(phantoms, tmp_path):
    import h5py

    from medistill.boxes.boxes_file import read_boxes
    from medistill.distill.colearn import DecoderTeacher
    from medistill.teachers.cache import build_cache
    from medistill.teachers.registry import build_teacher

    boxes = read_boxes(phantoms["boxes"])
    boxes.images = [entry for entry in boxes.images if len(entry.boxes) == 1][:2]  # one decoder pass each
    write_boxes(tmp_path / "boxes.json", boxes)
    cache = tmp_path / "cache.h5"
    real = build_teacher("litemedsam")
    settings = dict(boxes=str(tmp_path / "boxes.json"), cache=str(cache), teacher="litemedsam", co_learn=True,
                    refresh_every=1, epochs=2, batch=2, val_fraction=0.0, augment=True)
    # a compact cache holds pooled features, not the decoder's embedding: refused, naming why
    build_cache(EmbeddingTeacher(real), phantoms["images"], tmp_path / "boxes.json", cache, progress=False)
    with pytest.raises(MedistillError, match="stores compact features, this run needs full ones"):
        train_meddistill(config(phantoms, tmp_path / "refused", **settings))
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    build_cache(EmbeddingTeacher(real), phantoms["images"], tmp_path / "boxes.json", cache, progress=False,
                storage="full", overwrite=True)
    run = train_meddistill(config(phantoms, tmp_path / "colearn", **settings))
    history = pd.read_csv(run / "history.csv")
    assert "colearn" in history.columns and np.isfinite(history["colearn"]).all()

    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    refreshed = reader.get_tensor("colearn_targets/soft/.ATTRIBUTES/VARIABLE_VALUE")
    with h5py.File(cache) as handle:  # the training images, sorted by stem; 64 px: the same frame
        cached = np.stack([handle[f"images/{stem}/fused"][()] for stem in sorted(e.stem for e in boxes.images)])
    assert refreshed.shape == cached.shape == (2, 64, 64)
    assert np.abs(refreshed - cached).max() > 0.1  # refreshed from the decoder at epoch 2
    assert np.isfinite(reader.get_tensor("colearn_targets/uncertainty/.ATTRIBUTES/VARIABLE_VALUE")).all()

    original = DecoderTeacher(real.model)
    before = [v.numpy().copy() for v in original.trainable_variables]
    tf.train.Checkpoint(**original.trackables()).restore(latest).expect_partial()
    after = [v.numpy() for v in original.trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # the decoder learned


def test_validation_ignores_images_both_leave_empty():
    """A student that predicts nothing scores 0, not the share of negative images."""
    import keras
    import numpy as np

    from medistill.distill.meddistill import data as md
    from medistill.distill.meddistill.trainer import make_validation

    size = 8
    soft = np.zeros((4, size, size), np.float32)
    soft[0, 2:5, 2:5] = 0.9                                  # two positives, two negatives
    soft[1, 1:4, 3:7] = 0.8
    images = np.zeros((4, size, size, 1), np.float32)
    data = md.DistillData(stems=list("abcd"), images=images, geometries=[], soft=soft,
                          uncertainty=np.zeros(4, np.float32), n_boxes=np.array([1, 1, 0, 0], np.int32))

    def constant_student(logit: float) -> keras.Model:
        inputs = keras.Input((size, size, 1))
        outputs = keras.layers.Lambda(lambda x: x * 0.0 + logit)(inputs)
        return keras.Model(inputs, outputs)

    empty = make_validation(constant_student(-10.0), data, batch=3)()
    assert empty["val_dice"] == 0.0
    full = make_validation(constant_student(10.0), data, batch=3)()
    # Dice on the positives: 2·9/(64+9) and 2·12/(64+12); 0 on both negatives.
    expected = (2 * 9 / 73 + 2 * 12 / 76) / 4
    np.testing.assert_allclose(full["val_dice"], expected, rtol=1e-5)


def test_cosine_schedule_decays_the_students_rate_over_the_run(grabcut_run, phantoms, tmp_path):
    """--schedule cosine (the default) reaches the optimizer: the rate falls along the run; the released
    constant rate stays at --lr."""
    from medistill.train.schedules import learning_rate

    assert MedDistillConfig("i", "b", "o").schedule == "cosine"
    cosine = config(phantoms, tmp_path / "cosine", schedule="cosine", epochs=3)
    rate = learning_rate(cosine.lr, cosine.schedule, total_steps=cosine.epochs * 5)
    np.testing.assert_allclose([float(rate(0)), float(rate(15))], [3e-3, 3e-5], rtol=1e-4)
    history = pd.read_csv(train_meddistill(cosine) / "history.csv")
    assert history["lr"].is_monotonic_decreasing and history["lr"].iloc[-1] < 0.5 * 3e-3
    np.testing.assert_allclose(pd.read_csv(grabcut_run / "history.csv")["lr"], 3e-3, rtol=1e-6)
