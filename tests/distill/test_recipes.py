"""KAMSD, CAKD+MSKD, SIKD and the recipe framework, in process on tiny networks.

Each recipe is built on a tiny U-Net teacher (binary and 3-class), takes real steps,
and is checked for: gradients reaching the student and the distiller's own layers,
never the teacher; the teacher's weights unchanged after steps; the total loss being
the paper's combination of the logged terms. Whole runs of the command (teacher
training, export, two devices, several workers, resume) are in
test_recipes_distributed.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from medistill.data import AugmentConfig, PreprocessConfig
from medistill.data.phantoms import generate_phantoms
from medistill.distill.config import DistillConfig
from medistill.distill.recipes import RECIPES, get_recipe, taps
from medistill.distill.recipes.base import RecipeContext
from medistill.distill.runner import check_frozen, distill
from medistill.distill.teacher import check_teacher, load_teacher, teacher_file
from medistill.errors import CheckpointError, MedistillError
from medistill.networks import build_student
from medistill.train.data_setup import training_samples

TINY = {"base_filters": 4, "depth": 2}
TINY_LCOV = {"channels": [4, 8, 8]}
SIZE = 32


def student_options(recipe: str) -> dict:
    return TINY_LCOV if recipe == "cakd-mskd" else TINY


# -- data and teachers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """8 four-class phantoms (background, brain, CSF, lesion), 64 px."""
    folder = tmp_path_factory.mktemp("recipes") / "four"
    generate_phantoms(folder, 8, size=64, seed=1, multiclass=True)
    return folder


def make_teacher(outputs: int, deep_supervision: bool = True):
    teacher = build_student("unet", in_channels=1, num_classes=outputs, deep_supervision=deep_supervision, **TINY)
    teacher.trainable = False
    return teacher


def make_recipe(name: str, num_classes: int, teacher, **config):
    config = DistillConfig(data="unused", out="unused", recipe=name, img_size=SIZE,
                           student_options=student_options(name), teacher_model="t.keras", **config)
    context = RecipeContext(config=config, num_classes=num_classes, train_samples=[],
                            preprocess=PreprocessConfig(size=SIZE), augment=None, global_batch=2,
                            steps_per_epoch=1, strategy=tf.distribute.get_strategy(), teacher=teacher)
    recipe = get_recipe(name)(context)
    recipe.build()
    return recipe


def batch(num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((2, SIZE, SIZE, 1)).astype("float32")
    y = np.zeros((2, SIZE, SIZE), "int32")
    y[:, 8:24, 8:24] = 1
    if num_classes > 2:
        y[:, 12:18, 12:18] = 2
    return tf.constant(x), tf.constant(y)


def recipe_batch(recipe, num_classes: int, seed: int = 0):
    x, y = batch(num_classes, seed)
    if recipe.name == "sikd":
        from medistill.losses.sikd import classwise_average

        return x, y, classwise_average(x, y, num_classes)
    return x, y


def total_loss(recipe, batch_items) -> tf.Tensor:
    terms = recipe.losses(*batch_items)
    total = terms["total"] if "total" in terms else tf.add_n(list(terms.values()))
    return tf.reduce_mean(total)




# -- the framework -----------------------------------------------------------------------
def test_registry_names_every_recipe_and_refuses_unknown_ones():
    assert set(RECIPES) == {"kamsd", "cakd-mskd", "sikd", "sscd"}
    assert get_recipe("cakd-mskd").name == "cakd-mskd"
    with pytest.raises(MedistillError, match="valid recipes: kamsd"):
        get_recipe("kamsd2")


def test_unknown_recipe_option_lists_the_valid_ones():
    with pytest.raises(MedistillError, match=r"no option 'temprature'.*temperature=4.0"):
        get_recipe("kamsd").resolve_options({"temprature": 2})
    assert get_recipe("kamsd").resolve_options({"temperature": 2})["temperature"] == 2


def test_config_defaults_checks_and_round_trip():
    assert DistillConfig(data="d", out="o", recipe="cakd-mskd").student == "lcovnet"
    assert DistillConfig(data="d", out="o", recipe="kamsd").student == "unet"
    config = DistillConfig(data="d", out="o", recipe="sikd", train_teacher="unet", teacher_epochs=3,
                           recipe_options={"feature_weight": 1.0})
    assert DistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    teacher = config.teacher_train_config({"base_filters": 8}, "o/teacher")
    assert (teacher.student, teacher.epochs, teacher.out, teacher.student_options) == (
        "unet", 3, "o/teacher", {"base_filters": 8})
    for bad, message in [({"teacher_model": "t", "train_teacher": "unet"}, "not both"),
                         ({"labelled_fraction": 0.0}, "labelled-fraction"), ({"recipe": "x"}, "not a recipe"),
                         ({"teacher_epochs": 0}, "teacher-epochs")]:
        with pytest.raises(MedistillError, match=message):
            DistillConfig(data="d", out="o", **bad)


def test_a_recipe_without_teacher_is_refused():
    with pytest.raises(MedistillError, match="needs a teacher"):
        make_recipe("kamsd", 2, None)


def test_teacher_that_does_not_fit_the_data_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="3 classes but the data need one sigmoid"):
        check_teacher(make_teacher(3), channels=1, outputs=1)
    with pytest.raises(CheckpointError, match="--channels 3"):
        check_teacher(make_teacher(1), channels=3, outputs=1)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(CheckpointError, match="SavedModel folder cannot serve"):
        teacher_file(tmp_path)
    with pytest.raises(CheckpointError, match="not a .keras file"):
        teacher_file(tmp_path / "missing.keras")


def test_saved_teacher_loads_frozen(tmp_path):
    make_teacher(1).save(tmp_path / "model.keras")
    teacher = load_teacher(tmp_path)
    assert teacher.trainable_variables == [] and teacher.variables


def test_check_frozen_catches_a_teacher_variable_in_the_optimiser_list():
    recipe = make_recipe("sikd", 2, make_teacher(1, deep_supervision=False))
    check_frozen(recipe)
    recipe.trainable = [*recipe.trainable, recipe.context.teacher.variables[0]]
    with pytest.raises(MedistillError, match="would train the teacher"):
        check_frozen(recipe)


def test_scales_pair_finest_first_and_fall_back_to_the_teachers_coarsest():
    assert taps.pair_scales(["aux4", "aux3", "aux2"], ["aux2", "aux1"]) == [
        ("aux4", "aux2"), ("aux3", "aux1"), ("aux2", "aux1")]
    plain = build_student("unet", in_channels=1, num_classes=1, **TINY)
    assert taps.scale_heads(plain, 4) == ["logits"]
    np.testing.assert_allclose(taps.downsample(tf.reshape(tf.range(16.0), (1, 4, 4, 1)), 2).numpy()[0, ..., 0],
                               [[2.5, 4.5], [10.5, 12.5]])


def test_command_line_options_become_the_config():
    import argparse

    from medistill.cli import distill as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--recipe", "cakd-mskd", "--data", "d", "--out", "o", "--train-teacher", "unet",
                              "--recipe-options", '{"downsample": false}', "--labelled-fraction", "0.5",
                              "--epochs", "3", "--no-augment"])
    config = command.config_from_args(args)
    assert (config.student, config.recipe_options, config.labelled_fraction, config.epochs, config.augment) == (
        "lcovnet", {"downsample": False}, 0.5, 3, False)
    args.recipe_options = "[1]"
    with pytest.raises(MedistillError, match="--recipe-options must be a JSON object"):
        command.config_from_args(args)
    args.recipe_options, args.teacher_options = "{}", "{bad"
    with pytest.raises(MedistillError, match="--teacher-options is not valid JSON"):
        command.config_from_args(args)


# -- gradients and frozen teachers -------------------------------------------------------
@pytest.mark.parametrize(("name", "num_classes"), [("kamsd", 2), ("cakd-mskd", 3), ("sikd", 3)])
def test_gradients_reach_the_student_and_its_layers_never_the_teacher(name, num_classes):
    outputs = 1 if num_classes == 2 else num_classes
    recipe = make_recipe(name, num_classes, make_teacher(outputs))
    teacher_variables = recipe.context.teacher.variables
    items = recipe_batch(recipe, num_classes)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([v.value for v in teacher_variables])
        loss = total_loss(recipe, items)
    grads = tape.gradient(loss, recipe.trainable)
    by_path = {v.path: g for v, g in zip(recipe.trainable, grads)}
    reached = {path for path, g in by_path.items() if g is not None and float(tf.reduce_max(tf.abs(g))) > 0}
    # the first encoder stage, the main head and (KAMSD) every adapter and boundary head
    assert any(p.startswith("enc1/") for p in reached), sorted(by_path)
    assert any(p.startswith(("head/", "logits/")) for p in reached), sorted(by_path)
    if name == "kamsd":
        own = [p for p in by_path if p.startswith(("adapter", "boundary"))]
        assert len(own) == 2 * 2 * 2  # 2 adapters + 2 boundary heads, kernel and bias each
        assert set(own) <= reached
    teacher_grads = tape.gradient(loss, [v.value for v in teacher_variables])
    assert all(g is None or not np.any(g.numpy()) for g in teacher_grads)
    assert not {id(v) for v in teacher_variables} & {id(v) for v in recipe.trainable}


@pytest.mark.parametrize(("name", "num_classes"), [("kamsd", 3), ("cakd-mskd", 2), ("sikd", 2)])
def test_steps_change_the_student_and_leave_the_teacher_alone(name, num_classes):
    outputs = 1 if num_classes == 2 else num_classes
    recipe = make_recipe(name, num_classes, make_teacher(outputs))
    teacher_before = [v.numpy().copy() for v in recipe.context.teacher.variables]
    student_before = [v.numpy().copy() for v in recipe.trainable]
    for seed in range(2):
        terms = recipe.step(recipe_batch(recipe, num_classes, seed))
        assert all(np.isfinite(float(v)) for v in terms.values())
    for before, variable in zip(teacher_before, recipe.context.teacher.variables):
        np.testing.assert_array_equal(before, variable.numpy())
    moved = [not np.allclose(b, v.numpy()) for b, v in zip(student_before, recipe.trainable)]
    assert np.mean(moved) > 0.9


# -- each recipe combines its terms as the paper does -------------------------------------
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_kamsd_total_and_its_temperature_term_by_hand():
    recipe = make_recipe("kamsd", 2, make_teacher(1), recipe_options={"temperature": 2.0})
    x, y = batch(2)
    terms = {k: v.numpy() for k, v in recipe.losses(x, y, training=False).items()}
    assert set(terms) == {"deep_supervision", "boundary", "adapter", "output_kd"}
    student = recipe.student_taps(x, training=False)
    teacher = recipe.teacher_taps(x, training=False)
    expected = sum(np.mean((sigmoid(student[s].numpy() / 2) - sigmoid(teacher[t].numpy() / 2)) ** 2, axis=(1, 2, 3))
                   for s, t in recipe.pairs) * 4.0
    np.testing.assert_allclose(terms["output_kd"], expected, rtol=1e-5)
    step = recipe.step((x, y))
    # the step's loss is the sum of the logged terms (each already a batch mean)
    np.testing.assert_allclose(float(step["loss"]), sum(float(step[k]) for k in terms), rtol=1e-5)


def test_cakd_mskd_weights_and_scales():
    recipe = make_recipe("cakd-mskd", 3, make_teacher(3))
    assert recipe.weights == [0.4, 0.2]            # two heads in a depth-2 student
    assert recipe.factors == [1, 2]                # scale 1 pooled to half resolution
    x, y = batch(3)
    terms = {k: v.numpy() for k, v in recipe.losses(x, y, training=False).items()}
    # cakd and mskd are logged as Σ_i w_i·L^i, so the total is 0.8·ds + 0.2·(0.1·cakd + 0.2·mskd)
    np.testing.assert_allclose(terms["total"], 0.8 * terms["ds_dice"] + 0.2 * (0.1 * terms["cakd"] + 0.2 * terms["mskd"]),
                               rtol=1e-5)
    assert np.all(terms["cakd"] <= 0) and np.all(terms["cakd"] >= -0.6 - 1e-6)


def test_sikd_feature_term_by_hand():
    recipe = make_recipe("sikd", 3, make_teacher(3, deep_supervision=False))
    x, y, averaged = recipe_batch(recipe, 3)
    terms = {k: v.numpy() for k, v in recipe.losses(x, y, averaged, training=False).items()}
    student = recipe.student_taps(x, training=False)["penultimate"].numpy()
    teacher = recipe.teacher_taps(averaged, training=False)["penultimate"].numpy()
    np.testing.assert_allclose(terms["feature"], 2.0 * np.mean((student - teacher) ** 2, axis=(1, 2, 3)), rtol=1e-4)


def test_sikd_refuses_a_teacher_with_other_feature_channels():
    teacher = build_student("unet", in_channels=1, num_classes=1, base_filters=8, depth=2)
    with pytest.raises(MedistillError, match="4 channels, the teacher 8"):
        make_recipe("sikd", 2, teacher)


def test_sikd_averages_each_image_after_augmentation(phantoms):
    train, _ = training_samples(phantoms, val_fraction=0.0)
    config = DistillConfig(data=str(phantoms), out="unused", recipe="sikd", student_options=TINY,
                           teacher_model="t", img_size=64)
    context = RecipeContext(config=config, num_classes=4, train_samples=train,
                            preprocess=PreprocessConfig(size=64), augment=AugmentConfig(), global_batch=4,
                            steps_per_epoch=1, strategy=tf.distribute.get_strategy(), teacher=make_teacher(1))
    x, y, averaged = next(iter(get_recipe("sikd")(context).train_dataset()))
    x, y, averaged = x.numpy(), y.numpy(), averaged.numpy()
    for image, labels, mean_image in zip(x, y, averaged):
        for label in np.unique(labels):
            where = labels == label
            np.testing.assert_allclose(mean_image[where], image[where].mean(), rtol=1e-4, atol=1e-5)


def test_a_binary_teacher_for_multiclass_data_is_refused(phantoms, tmp_path):
    make_teacher(1).save(tmp_path / "teacher.keras")
    config = DistillConfig(data=str(phantoms), out=str(tmp_path / "run"), recipe="kamsd", student_options=TINY,
                           teacher_model=str(tmp_path / "teacher.keras"), img_size=64, epochs=1)
    with pytest.raises(CheckpointError, match="one sigmoid logit"):
        distill(config)


@pytest.mark.parametrize("clip_norm", [0.01, 0.0])
def test_sikd_clips_the_global_gradient_norm(clip_norm):
    import keras

    recipe = make_recipe("sikd", 2, make_teacher(1, deep_supervision=False),
                         recipe_options={"clip_norm": clip_norm})
    recipe.optimizer = keras.optimizers.SGD(1.0)   # plain SGD: the weight change is the gradient applied
    recipe.optimizer.build(recipe.trainable)
    before = [np.array(v) for v in recipe.trainable]
    recipe.step(recipe_batch(recipe, 2))
    change = np.sqrt(sum(np.sum((np.array(v) - b) ** 2) for v, b in zip(recipe.trainable, before)))
    if clip_norm:
        assert 0 < change <= clip_norm * 1.001
    else:
        assert change > 0.05   # unclipped, the same step moves much further


def test_sikd_dice_option_adds_the_supervised_dice_term():
    from medistill.losses import segmentation_loss

    recipe = make_recipe("sikd", 3, make_teacher(3, deep_supervision=False), recipe_options={"dice": True})
    x, y, averaged = recipe_batch(recipe, 3)
    terms = recipe.losses(x, y, averaged, training=False)
    logits = recipe.student_taps(x, training=False)["logits"]
    np.testing.assert_allclose(terms["total"], segmentation_loss(y, logits) + terms["feature"], rtol=1e-5)
    assert float(tf.reduce_min(terms["total"] - terms["ce"] - terms["feature"])) > 0.05   # the Dice term
