"""``distill(config)``: one distillation run of any recipe, from data folder to export.

Order: (1) when ``--train-teacher`` is given, the run folder is claimed and the teacher
is trained (or reused) in ``RUN/teacher/`` by a child process with its own strategy; (2) the run opens
(:func:`medistill.train.session.open_run`: strategy, ``config.json``, log); (3) data
as the supervised trainer reads it; (4) inside the strategy's scope the teacher is
loaded and frozen and the recipe builds its networks and optimiser; (5)
:class:`~medistill.train.loop.TrainingLoop` trains, validating the student's Dice, and
checkpoints every epoch (the same command resumes after a kill); (6)
:func:`~medistill.train.session.finish_run` exports the student like the supervised
trainer does.

The teacher is trained in a child process because TensorFlow does not support two
``MultiWorkerMirroredStrategy`` objects in one process (an earlier one fails once a
newer one exists, and workers can hang in the newer one's first all-reduce). Several
workers need ``RUN`` (and ``--teacher-model``) on a shared file system: they read the
teacher the chief wrote.

Example::

    from medistill.distill.config import DistillConfig
    distill(DistillConfig(data="phantoms", out="runs/kamsd", recipe="kamsd",
                          train_teacher="unet", teacher_epochs=20, epochs=20))
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from medistill.data import AugmentConfig, make_dataset
from medistill.distill.config import DistillConfig
from medistill.train.precision import FULL, set_precision
from medistill.distill.recipes import get_recipe
from medistill.distill.recipes.base import Recipe, RecipeContext
from medistill.train.session import finish_run, open_run
from medistill.distill.teacher import check_teacher, load_teacher, train_teacher_in_child
from medistill.distribute import barrier, chief_by_tf_config
from medistill.errors import MedistillError
from medistill.export import ModelCard
from medistill.networks import model_summary
from medistill.train.config import TrainConfig
from medistill.train.data_setup import count_classes, training_samples
from medistill.train.loop import LoopSettings, TrainingLoop
from medistill.train.run_folder import check_run_folder, prepare_run_folder, release_run_folder
from medistill.train.supervised import preprocess_config, validation_fn

log = logging.getLogger("medistill.distill")

COLLECTIVE_KEY_STRIDE = 10_000  # collective group keys one strategy may use


def distill(config: DistillConfig) -> Path:
    """Run the recipe of ``config`` (training its teacher first if asked); return the run folder."""
    recipe_cls = get_recipe(config.recipe)
    recipe_cls.resolve_options(config.recipe_options)  # fail before any training
    teacher_path: str | Path | None = config.teacher_model
    if config.train_teacher:
        check_run_folder(config.out, DistillConfig, config.overwrite)
        _samples(config)  # bad data is refused before RUN is claimed (nothing written)
        if _chief_by_tf_config():
            prepare_run_folder(config, DistillConfig)  # claims (locks) RUN, or refuses it, first
        config = dataclasses.replace(config, overwrite=False)  # RUN/teacher must survive
        try:
            teacher_path = train_teacher_in_child(config)
        except BaseException:
            release_run_folder(config.out)  # open_run releases it otherwise
            raise
    if recipe_cls.needs_teacher and not teacher_path:
        raise MedistillError(f"recipe {config.recipe!r} needs a teacher: pass --teacher-model PATH "
                             "(a run folder or .keras file) or --train-teacher NAME")
    return run_recipe(config, DistillConfig, recipe_cls, teacher_path)


def run_recipe(config: TrainConfig, config_cls: type, recipe_cls: type[Recipe],
               teacher_path: str | Path | None) -> Path:
    """Train ``recipe_cls`` as configured into ``config.out`` (the steps of the module docstring)."""
    policy = set_precision(bool(getattr(config, "mixed_precision", False)))
    _new_collective_keys()
    try:
        if _chief_by_tf_config():
            check_run_folder(config.out, config_cls, config.overwrite)
        train, val, num_classes = _samples(config)  # checked before anything is written
        with open_run(config, config_cls, cpu_replicas=config.cpu_replicas) as session:
            strategy = session.strategy
            barrier(strategy)  # a worker's teacher may be the one its chief has just written
            pre = preprocess_config(config)
            batch = session.global_batch(config.batch, len(train))
            steps = max(1, len(train) // batch)
            if config.steps_per_epoch:
                steps = min(steps, config.steps_per_epoch)
            with session.scope():
                teacher = load_teacher(teacher_path) if teacher_path else None
            context = RecipeContext(
                config=config, num_classes=num_classes, train_samples=train, preprocess=pre,
                augment=AugmentConfig() if config.augment else None, global_batch=batch,
                steps_per_epoch=steps, strategy=strategy, teacher=teacher, policy=policy)
            if teacher is not None:
                check_teacher(teacher, config.channels, context.outputs)
            keras.utils.set_random_seed(config.seed)  # same seed, same initial weights
            with session.scope():
                recipe = recipe_cls(context)
                recipe.build()
            check_frozen(recipe)
            session.synchronise_batchnorm(*recipe.trained_models())
            sizes = model_summary(recipe.student, (config.img_size, config.img_size, config.channels))
            log.info("recipe %s: student %s with %s parameters, %.2f GFLOPs per image at %d px",
                     recipe.name or recipe_cls.__name__, config.student, f"{sizes['params']:,}",
                     sizes["flops"] / 1e9, config.img_size)

            val_data = None
            if val:
                val_data = recipe.validation_batches(make_dataset(
                    val, pre, num_classes=num_classes, batch_size=max(1, config.batch), shuffle=False,
                    augment=None, seed=config.seed, mask_mode=config.mask_mode))
            train_data = recipe.train_dataset()
            settings = LoopSettings(epochs=config.epochs, patience=config.patience,
                                    monitor="val_dice" if val else "loss", mode="max" if val else "min",
                                    steps_per_epoch=steps)
            loop = TrainingLoop(strategy, session.run_dir, recipe.student, recipe.optimizer, recipe.step,
                                validation_fn(recipe.student, val_data, num_classes), settings,
                                extra_trackables=recipe.trackables())
            history = loop.fit(lambda epoch: train_data)
            # The chief has written best.weights.h5 by now; every worker loads it in
            # finish_run, so all end with the chief's weights (batch-norm statistics,
            # which each worker keeps from its own batches, included).
            barrier(strategy)
            summary: dict[str, Any] = {
                "recipe": recipe.name or recipe_cls.__name__, "student": config.student,
                "train_images": len(train), "val_images": len(val), **sizes,
                **({"teacher": str(teacher_path), "teacher_params": int(teacher.count_params())}
                   if teacher is not None else {}),
                **recipe.summary(),
            }
            finish_run(session, loop, recipe.student, ModelCard(pre, num_classes), history, summary)
            return session.run_dir
    finally:
        if policy != FULL:
            keras.mixed_precision.set_global_policy(FULL)


def _samples(config: TrainConfig) -> tuple[list, list, int]:
    """Training and validation samples as the supervised trainer reads them, and the class count."""
    train, val = training_samples(config.data, mask_suffix=config.mask_suffix, mask_mode=config.mask_mode,
                                  val_fraction=config.val_fraction, seed=config.seed, skip_bad=config.skip_bad)
    return train, val, config.num_classes or count_classes(train + val, config.mask_mode)


def check_frozen(recipe: Recipe) -> None:
    """Raise when a teacher variable is among the recipe's trainable variables."""
    teacher = recipe.context.teacher
    if teacher is None:
        return
    frozen = {id(v) for v in teacher.variables}
    leaked = [v.path for v in recipe.trainable if id(v) in frozen]
    if leaked or teacher.trainable_variables:
        raise MedistillError(f"recipe {recipe.name!r} would train the teacher ({leaked[:3]}…); "
                             "teachers must stay frozen")


def _new_collective_keys() -> None:
    """Give the next strategy of this process collective keys no earlier strategy used.

    Every ``MirroredStrategy`` (over CPUs) and ``MultiWorkerMirroredStrategy`` numbers
    its all-reduces from the same class-level key base, so a second strategy in one
    process (the student run after the teacher run) reuses the first one's keys and the
    runtime rejects its all-reduces ("Shape mismatch in the collective instance 100")
    as soon as the two models differ. Every worker runs the same sequence of runs, so
    the keys stay equal across workers.
    """
    for strategy_cls in (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy_cls._collective_key_base += COLLECTIVE_KEY_STRIDE


def _chief_by_tf_config() -> bool:
    """Whether this process is the chief (:func:`medistill.distribute.chief_by_tf_config`)."""
    return chief_by_tf_config()
