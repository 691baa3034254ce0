"""The SSCD recipe on 64 px phantoms with tiny students: the whole command once (two logical
CPU devices, 4 classes), then single-device steps in process (eager: cheaper than tracing)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from medistill.data import AugmentConfig
from medistill.data.phantoms import generate_phantoms
from medistill.distill.config import DistillConfig
from medistill.distill.recipes.base import RecipeContext
from medistill.distill.recipes.sscd import OPTIONS, SSCD, SSCDTeacher, check_options
from medistill.distill.teacher import load_teacher
from medistill.errors import MedistillError
from medistill.export import load_predictor
from medistill.networks import build_student
from medistill.train.data_setup import training_samples
from medistill.train.run_folder import prepare_run_folder
from medistill.train.supervised import preprocess_config

TINY = {"base_filters": 4, "depth": 2}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sscd") / "phantoms"
    generate_phantoms(folder, 8, size=64, seed=0)
    return folder


def save_teacher(path: Path, outputs: int) -> Path:
    """A frozen teacher for the tests: an untrained tiny U-Net is a real model and enough here."""
    build_student("unet", in_channels=1, num_classes=outputs, **TINY).save(path)
    return path


@pytest.fixture(scope="module")
def binary_teacher(phantoms) -> Path:
    return save_teacher(phantoms.parent / "teacher.keras", 1)


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory) -> Path:
    """The whole command on 4-class phantoms over two logical CPU devices."""
    root = tmp_path_factory.mktemp("sscd-multiclass")
    generate_phantoms(root / "data", 8, size=64, seed=1, multiclass=True)
    teacher = save_teacher(root / "teacher.keras", 4)
    command = [sys.executable, "-m", "medistill", "distill", "--recipe", "sscd", "--data", str(root / "data"),
               "--out", str(root / "run"), "--teacher-model", str(teacher), "--labelled-fraction", "0.5",
               "--student-options", json.dumps(TINY), "--img-size", "64", "--epochs", "2", "--batch", "2",
               "--steps-per-epoch", "1", "--cpu-replicas", "2",
               "--recipe-options", json.dumps({"patch_exchange": True, "curriculum": True})]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"


def make_recipe(phantoms: Path, teacher: Path | None, samples=None, cls=SSCD, config=None, **options):
    """An SSCD (or stage-0 teacher) recipe on the binary phantoms, built on one device."""
    config = config or DistillConfig(
        data=str(phantoms), out=str(phantoms.parent / "unused"), recipe="sscd", teacher_model=str(teacher),
        student_options=TINY, img_size=64, epochs=2, batch=2, labelled_fraction=0.5, recipe_options=options)
    train, _ = training_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    context = RecipeContext(config=config, num_classes=2, train_samples=samples or train,
                            preprocess=preprocess_config(config), augment=AugmentConfig(), global_batch=2,
                            steps_per_epoch=1, strategy=tf.distribute.get_strategy(),
                            teacher=load_teacher(teacher) if teacher else None)
    recipe = cls(context)
    recipe.build()
    return recipe


def test_two_devices_multiclass_command(multiclass_run):
    summary = json.loads((multiclass_run / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["num_classes"] == 4
    assert (summary["labelled_images"], summary["unlabelled_images"]) == (3, 3)
    history = pd.read_csv(multiclass_run / "history.csv")
    assert history["stage"].tolist() == [4.0, 5.0]   # 2 epochs: the last two curriculum stages
    assert np.isfinite(history[["loss", "mix", "cross", "exchange", "hard"]].to_numpy()).all()
    prob = load_predictor(multiclass_run).predict(np.zeros((64, 64, 1), "float32"))
    assert prob.shape == (64, 64, 4)
    np.testing.assert_allclose(prob.sum(axis=-1), 1.0, rtol=1e-4)


def test_unlabelled_masks_are_never_read(phantoms, binary_teacher):
    intact = make_recipe(phantoms, binary_teacher)
    unlabelled = set(intact.unlabelled)
    missing = [dataclasses.replace(s, mask_path=Path("/nonexistent/mask.png")) if s in unlabelled else s
               for s in intact.context.train_samples]
    blind = make_recipe(phantoms, binary_teacher, samples=missing)
    assert len(blind.unlabelled) == 3
    assert [s.image_path for s in blind.unlabelled] == [s.image_path for s in intact.unlabelled]
    for first, second in zip(intact.train_dataset().take(2), blind.train_dataset().take(2)):
        assert sorted(first) == ["box", "x_l", "x_u", "xs_l", "xs_u", "y_l"]   # no unlabelled mask at all
        for key in first:
            np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())
    # --train-teacher: the stage-0 teacher, run with the TrainConfig made for RUN/teacher, finds
    # the labelled fraction in RUN/config.json, reads the labelled part only and trains on it
    run = DistillConfig(data=str(phantoms), out=str(phantoms.parent / "run"), recipe="sscd", train_teacher="unet",
                        student_options=TINY, img_size=64, batch=2, labelled_fraction=0.5)
    prepare_run_folder(run, DistillConfig)
    stage_zero = run.teacher_train_config(TINY, str(phantoms.parent / "run" / "teacher"))
    teacher = make_recipe(phantoms, None, samples=missing, cls=SSCDTeacher, config=stage_zero)
    assert teacher.labelled == intact.labelled
    batch = next(iter(teacher.train_dataset()))
    before = [w.copy() for w in teacher.student.get_weights()]
    assert np.isfinite(float(teacher.step(batch)["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, teacher.student.get_weights()))


def test_teacher_stays_frozen_and_both_students_learn(phantoms, binary_teacher):
    recipe = make_recipe(phantoms, binary_teacher, patch_exchange=True, patch_grid=4, curriculum=True)
    teacher = recipe.context.teacher
    before = [w.copy() for w in teacher.get_weights()]
    assert not teacher.trainable_variables
    first, second = recipe.student1.get_weights(), recipe.student2.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))   # two different students
    data = iter(recipe.train_dataset())
    batch = next(data)
    watched = [v.value for v in teacher.variables]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(watched)
        loss, report = recipe.losses(batch)
    assert all(g is None for g in tape.gradient(loss, watched))
    for student in (recipe.student1, recipe.student2):
        assert any(g is not None for g in tape.gradient(loss, student.trainable_variables))
    assert float(report["stage"]) == 4.0 and {"mix", "cross", "exchange", "hard"} <= set(report)
    for _ in range(2):
        recipe.step(next(data))
    assert int(recipe.steps_done.numpy()) == 2
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    for start, student in ((first, recipe.student1), (second, recipe.student2)):
        assert any(not np.array_equal(a, b) for a, b in zip(start, student.get_weights()))


def _constant_prediction(model, sign: float) -> None:
    """Every logit head of ``model`` predicts ``sign``·10 everywhere (all foreground or all background)."""
    for layer in model.layers:
        if layer.name.startswith("aux") or layer.name in ("head", "logits"):
            for weight in layer.weights:
                weight.assign(np.full(weight.shape, 10.0 * sign if "bias" in weight.path else 0.0, "float32"))


def test_the_better_student_by_validation_dice_is_exported(phantoms, binary_teacher):
    from medistill.distill.runner import RecipeTraining

    recipe = make_recipe(phantoms, binary_teacher)
    config = recipe.context.config
    trainer = RecipeTraining(config, DistillConfig, SSCD, binary_teacher)
    trainer.recipe, trainer.student, trainer.num_classes = recipe, recipe.student, 2
    trainer.pre = recipe.context.preprocess
    trainer.val = training_samples(config.data, val_fraction=0.5, seed=config.seed)[1]
    assert recipe.student not in (recipe.student1, recipe.student2)
    for better, (first, second) in ((2, (-1.0, 1.0)), (1, (1.0, -1.0))):
        _constant_prediction(recipe.student1, first)    # -1: predicts no lesion at all, Dice 0
        _constant_prediction(recipe.student2, second)   # +1: all lesion, Dice > 0 (every phantom has some)
        row = trainer.validation()()
        assert row["exported_candidate"] == better, row
        assert row[f"val_dice_{better}"] > row[f"val_dice_{3 - better}"] and row["val_dice"] == row[f"val_dice_{better}"]
        chosen = (recipe.student1, recipe.student2)[better - 1]
        for a, b in zip(recipe.student.get_weights(), chosen.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_without_the_curriculum_the_finest_head_is_trained_from_the_start(phantoms, binary_teacher):
    recipe = make_recipe(phantoms, binary_teacher)   # the default
    finest = [0.0] * (len(recipe.heads) - 1) + [1.0]
    np.testing.assert_array_equal(recipe.weight_table.numpy(), [finest] * recipe.context.config.epochs)
    assert recipe.min_epochs() == 0
    assert recipe.stage_table.numpy().tolist() == [5.0, 5.0]
    curriculum = make_recipe(phantoms, binary_teacher, curriculum=True)
    assert curriculum.stage_table.numpy().tolist() == [4.0, 5.0]   # 2 epochs: stages 4, 5
    assert curriculum.min_epochs() == 2


def test_bad_recipe_options_are_named():
    with pytest.raises(MedistillError, match="pv_threshold"):
        check_options({**OPTIONS, "pv_threshold": 2.0})
    with pytest.raises(MedistillError, match="patch_exchange"):
        check_options({**OPTIONS, "patch_exchange": "yes"})
    with pytest.raises(MedistillError, match="no option 'temperature'"):
        SSCD.resolve_options({"temperature": 4.0})
