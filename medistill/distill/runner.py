"""``distill(config)``: one distillation run of any recipe, from data folder to export.

Order: (1) when ``--train-teacher`` is given, the run folder is claimed and the teacher
is trained (or reused) in ``RUN/teacher/`` by a child process with its own strategy; (2)
the recipe runs on the trainer skeleton (:func:`medistill.train.method.run_training`,
through :class:`RecipeTraining`): data as the supervised trainer reads it; inside the
strategy's scope the teacher is loaded and frozen and the recipe builds its networks and
optimiser; the loop trains, validating the student's Dice, and checkpoints every epoch
(the same command resumes after a kill); the best student is exported like the
supervised trainer's.

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
from medistill.distill.recipes import get_recipe
from medistill.distill.recipes.base import Recipe, RecipeContext
from medistill.distill.teacher import check_teacher, load_teacher, train_teacher_in_child
from medistill.distribute import barrier, chief_by_tf_config
from medistill.errors import MedistillError
from medistill.export import ModelCard
from medistill.train.config import TrainConfig
from medistill.train.data_setup import config_samples, count_classes
from medistill.train.method import EpochPlan, TrainingMethod, run_training
from medistill.train.run_folder import check_run_folder, prepare_run_folder, release_run_folder
from medistill.train.session import RunSession
from medistill.train.supervised import preprocess_config, validation_fn

log = logging.getLogger("medistill.distill")

COLLECTIVE_KEY_STRIDE = 10_000  # collective group keys one strategy may use


def distill(config: DistillConfig) -> Path:
    """Run the recipe of ``config`` (training its teacher first if asked); return the run folder."""
    recipe_cls = get_recipe(config.recipe)
    recipe_cls.resolve_options(config.recipe_options)  # fail before any training
    teacher_path: str | Path | None = config.teacher_model
    if config.train_teacher:
        chief = _chief_by_tf_config()  # the chief alone checks, writes and locks RUN
        if chief:
            check_run_folder(config.out, DistillConfig, config.overwrite)
        _samples(config)  # bad data is refused before RUN is claimed (nothing written)
        if chief:
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
    _new_collective_keys()
    return run_training(RecipeTraining(config, config_cls, recipe_cls, teacher_path))


class RecipeTraining(TrainingMethod):
    """A :class:`~medistill.distill.recipes.base.Recipe` on the trainer skeleton
    (:func:`~medistill.train.method.run_training`): the recipe supplies models, step and
    data; the teacher is loaded, frozen and checked here."""

    description = "student"

    def __init__(self, config: TrainConfig, config_cls: type, recipe_cls: type[Recipe],
                 teacher_path: str | Path | None) -> None:
        super().__init__(config)
        self.config_cls = config_cls
        self.recipe_cls = recipe_cls
        self.teacher_path = teacher_path

    def check_inputs(self) -> None:
        self.train, self.val, self.num_classes = _samples(self.config)  # before anything is written

    def prepare(self, session: RunSession) -> int:
        barrier(session.strategy)  # a worker's teacher may be the one its chief has just written
        self.pre = preprocess_config(self.config)
        return len(self.train)

    def build(self, session: RunSession, plan: EpochPlan) -> None:
        config = self.config
        teacher = load_teacher(self.teacher_path) if self.teacher_path else None
        context = RecipeContext(
            config=config, num_classes=self.num_classes, train_samples=self.train, preprocess=self.pre,
            augment=AugmentConfig() if config.augment else None, global_batch=plan.batch,
            steps_per_epoch=plan.steps, strategy=session.strategy, teacher=teacher, policy=plan.policy,
            passes=plan.passes)
        if teacher is not None:
            check_teacher(teacher, config.channels, context.outputs)
        keras.utils.set_random_seed(config.seed)  # loading the teacher must not change the student's start
        self.recipe = self.recipe_cls(context)
        self.recipe.build()
        check_frozen(self.recipe)
        self.student, self.optimizer = self.recipe.student, self.recipe.optimizer
        self.description = f"recipe {self.recipe.name or self.recipe_cls.__name__}: student"

    def epoch_data(self, epoch: int) -> tf.data.Dataset:
        return self.recipe.train_dataset(epoch)

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        return self.recipe.step(batch)

    def validation(self):
        if not self.val:
            return None
        config = self.config
        data = self.recipe.validation_batches(make_dataset(
            self.val, self.pre, num_classes=self.num_classes, batch_size=max(1, config.batch), shuffle=False,
            augment=None, seed=config.seed, mask_mode=config.mask_mode))
        candidates = self.recipe.candidates()
        if candidates == [self.student]:
            return validation_fn(self.student, data, self.num_classes)
        return self._best_candidate_validation([validation_fn(m, data, self.num_classes) for m in candidates])

    def _best_candidate_validation(self, validators: list):
        """Validate every candidate; copy the best one's weights into the exported student."""
        def validate() -> dict:
            scores = [validator() for validator in validators]
            best = max(range(len(scores)), key=lambda i: scores[i]["val_dice"])
            self.student.set_weights(self.recipe.candidates()[best].get_weights())
            return {**scores[best], "exported_candidate": best + 1,
                    **{f"val_dice_{i + 1}": score["val_dice"] for i, score in enumerate(scores)}}

        return validate

    def trackables(self) -> dict[str, Any]:
        return self.recipe.trackables()

    def min_epochs(self) -> int:
        return self.recipe.min_epochs()

    def trained_models(self) -> list[keras.Model]:
        return self.recipe.trained_models()

    def card(self) -> ModelCard:
        return ModelCard(self.pre, self.num_classes)

    def summary(self) -> dict[str, Any]:
        teacher = self.recipe.context.teacher
        return {
            "recipe": self.recipe.name or self.recipe_cls.__name__, "student": self.config.student,
            "train_images": len(self.train), "val_images": len(self.val),
            **({"teacher": str(self.teacher_path), "teacher_params": int(teacher.count_params())}
               if teacher is not None else {}),
            **self.recipe.summary(),
        }


def _samples(config: TrainConfig) -> tuple[list, list, int]:
    """Training and validation samples as the supervised trainer reads them, and the class count."""
    train, val = config_samples(config)
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
