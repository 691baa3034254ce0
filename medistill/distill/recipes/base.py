"""The interface every distillation recipe implements, and what the runner gives it.

The runner (:mod:`medistill.distill.runner`, on the trainer skeleton
:func:`medistill.train.method.run_training`) owns everything recipes share: the run
folder, the strategy, the data, the frozen teacher, the :class:`TrainingLoop`, the
export. A recipe owns only its networks, its optimiser, its data stream and its step:

1. ``recipe = RecipeClass(context)`` — ``context`` is a :class:`RecipeContext`;
   ``self.options`` holds ``config.recipe_options`` merged over ``option_defaults``
   (an unknown option is a :class:`MedistillError`).
2. ``recipe.build()`` runs inside ``strategy.scope()``; it must set ``self.student``
   (the model that is validated, checkpointed and exported), ``self.optimizer``
   (built on its variables, e.g. with :meth:`Recipe.make_optimizer`) and
   ``self.trainable`` (every variable the optimiser updates; never the teacher's).
3. ``recipe.train_dataset(epoch)`` gives an epoch's global batches (default: the
   supervised trainer's pipeline, augmented, ``(x, y)``, small sets repeated
   ``context.passes`` times); ``recipe.step(batch)`` runs on
   each replica and returns loss terms already divided by the global batch
   (:meth:`Recipe.average`), ``"loss"`` among them.
4. ``recipe.validation_batches(dataset)`` may transform the ``(x, y)`` validation
   batches before the student's validation Dice; ``recipe.trackables()`` lists extra
   objects (adapters, heads, a second student) for the resumable checkpoint;
   ``recipe.summary()`` adds entries to ``summary.json``.

Class attributes say what the runner must prepare: ``default_student``,
``student_defaults`` (builder options unless ``--student-options`` sets them),
``teacher_defaults`` (builder options of a teacher trained with ``--train-teacher``),
``needs_teacher`` and ``teacher_recipe`` (a recipe that trains the teacher instead of the
supervised trainer, e.g. SIKD's teacher on class-wise averaged images).

Example (a recipe that only trains the student on the masks)::

    class Plain(Recipe):
        name = "plain"
        needs_teacher = False

        def build(self):
            self.student = self.build_student()
            self.trainable = self.student.trainable_variables
            self.optimizer = self.make_optimizer(self.trainable)

        def step(self, batch):
            x, y = batch
            with tf.GradientTape() as tape:
                loss = self.average(segmentation_loss(y, self.student(x, training=True)))
            self.apply_gradients(tape, loss)
            return {"loss": loss}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import keras
import tensorflow as tf

from medistill.data import AugmentConfig, PreprocessConfig, Sample, epoch_datasets
from medistill.errors import MedistillError
from medistill.train.config import TrainConfig

log = logging.getLogger("medistill.distill")


@dataclass
class RecipeContext:
    """What the runner hands a recipe.

    Attributes:
        config: the run's settings (a :class:`~medistill.distill.config.DistillConfig`,
            or a :class:`TrainConfig` for a recipe that trains a teacher).
        num_classes: classes including background (2 for binary masks).
        train_samples: the training samples (masks included).
        preprocess: the preprocessing of every image.
        augment: the augmentation, or None (``--no-augment``).
        global_batch: examples per step over all replicas.
        steps_per_epoch: steps the loop runs per epoch.
        strategy: the ``tf.distribute`` strategy in force.
        teacher: the frozen teacher (``trainable=False``), or None.
        policy: the dtype policy in force ("float32" or "mixed_float16").
        passes: passes over the training set in one epoch (small sets repeat).
    """

    config: TrainConfig
    num_classes: int
    train_samples: list[Sample]
    preprocess: PreprocessConfig
    augment: AugmentConfig | None
    global_batch: int
    steps_per_epoch: int
    strategy: tf.distribute.Strategy
    teacher: keras.Model | None = None
    policy: str = "float32"
    passes: int = 1

    @property
    def outputs(self) -> int:
        """Logit channels of a model: 1 (sigmoid) for binary data, else K (softmax)."""
        return 1 if self.num_classes == 2 else self.num_classes


def clipped_global_gradients(grads: list, clip_norm: float) -> list:
    """Per-replica gradients whose sum over replicas is the global gradient clipped to ``clip_norm``."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas > 1:
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    grads, _ = tf.clip_by_global_norm(grads, clip_norm)
    return [g / replicas for g in grads] if replicas > 1 else grads


class Recipe:
    """Base class of the distillation recipes (see the module docstring)."""

    name: ClassVar[str] = ""
    default_student: ClassVar[str] = "unet"
    student_defaults: ClassVar[dict[str, Any]] = {}
    teacher_defaults: ClassVar[dict[str, Any]] = {}
    option_defaults: ClassVar[dict[str, Any]] = {}
    needs_teacher: ClassVar[bool] = True
    teacher_recipe: ClassVar[type[Recipe] | None] = None

    student: keras.Model
    optimizer: keras.optimizers.Optimizer
    trainable: list[tf.Variable]

    def __init__(self, context: RecipeContext) -> None:
        self.context = context
        self.options = self.resolve_options(getattr(context.config, "recipe_options", {}) or {})
        if self.needs_teacher and context.teacher is None:
            raise MedistillError(f"recipe {self.name!r} needs a teacher: pass --teacher-model PATH "
                                 "or --train-teacher NAME")

    # -- settings ------------------------------------------------------------
    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` merged over ``option_defaults``; unknown names raise MedistillError."""
        unknown = sorted(set(given) - set(cls.option_defaults))
        if unknown:
            known = ", ".join(f"{k}={v!r}" for k, v in cls.option_defaults.items()) or "none"
            raise MedistillError(f"--recipe-options: recipe {cls.name!r} has no option "
                                 f"{', '.join(map(repr, unknown))}; its options (defaults) are: {known}")
        return {**cls.option_defaults, **given}

    @classmethod
    def student_build_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Builder options of the student: ``student_defaults`` overridden by ``options``."""
        return {**cls.student_defaults, **options}

    @classmethod
    def teacher_build_options(cls, config: TrainConfig) -> dict[str, Any]:
        """Builder options of a teacher trained by this run (``--train-teacher``)."""
        return {**cls.teacher_defaults, **getattr(config, "teacher_options", {})}

    # -- what a recipe implements ---------------------------------------------
    def build(self) -> None:
        """Create ``student``, ``trainable`` and a built ``optimizer`` (inside the scope)."""
        raise NotImplementedError

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        """One training step on one replica; returns globally averaged loss terms."""
        raise NotImplementedError

    def train_dataset(self, epoch: int = 0) -> tf.data.Dataset:
        """Global batches of ``epoch`` for :meth:`step`; by default ``(x, y)`` augmented like ``train``.

        Epoch ``k``'s order and augmentation come from ``(seed, k)`` only, so a resumed run
        sees the data an uninterrupted one would.
        """
        context = self.context
        if not hasattr(self, "_epochs"):
            self._epochs = epoch_datasets(context.train_samples, context.preprocess,
                                          num_classes=context.num_classes, batch_size=context.global_batch,
                                          shuffle=True, augment=context.augment, seed=context.config.seed,
                                          drop_remainder=True, mask_mode=context.config.mask_mode,
                                          passes=context.passes)
        return self._epochs(epoch)

    def candidates(self) -> list[keras.Model]:
        """The trained models that may be exported (default: ``[self.student]``).

        With several (SSCD's two students), ``self.student`` is a separate model of the same
        design: after each validation the candidate with the best validation Dice is copied
        into it, so the best epoch's checkpoint and the export hold the better model.
        """
        return [self.student]

    def validation_batches(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """The ``(x, y)`` batches the student is validated on (default: unchanged)."""
        return dataset

    def trackables(self) -> dict[str, Any]:
        """Objects besides the student and optimiser that the checkpoint must hold."""
        return {}

    def min_epochs(self) -> int:
        """No early stop before this many epochs (default: the loop's patience alone decides)."""
        return 0

    def trained_models(self) -> list[keras.Model]:
        """The models this recipe trains (their batch norm is synchronised across replicas):
        the student and every other Keras model among :meth:`trackables`."""
        others = [value for value in self.trackables().values()
                  if isinstance(value, keras.Model) and value is not self.student]
        return [self.student, *others]

    def summary(self) -> dict[str, Any]:
        """Entries for ``summary.json``."""
        return {}

    # -- helpers for recipes --------------------------------------------------
    def build_student(self) -> keras.Model:
        """The student named by the config, with this recipe's default builder options."""
        from medistill.networks import build_student

        config = self.context.config
        return build_student(config.student, in_channels=config.channels, num_classes=self.context.outputs,
                             **self.student_build_options(config.student_options))

    def make_optimizer(self, variables: list[tf.Variable]) -> keras.optimizers.Optimizer:
        """The supervised trainer's optimiser (loss-scaled under mixed precision), built."""
        from medistill.train.precision import wrap_optimizer
        from medistill.train.supervised import make_optimizer

        optimizer = wrap_optimizer(make_optimizer(self.context.config, self.context.steps_per_epoch),
                                   self.context.policy)
        optimizer.build(variables)
        return optimizer

    def average(self, per_example: tf.Tensor) -> tf.Tensor:
        """A ``(B,)`` per-example term divided by the global batch (sums to the mean)."""
        return tf.nn.compute_average_loss(tf.cast(per_example, tf.float32),
                                          global_batch_size=self.context.global_batch)

    def apply_gradients(self, tape: tf.GradientTape, loss: tf.Tensor, clip_norm: float | None = None) -> None:
        """Gradients of ``loss`` for ``self.trainable``, applied by ``self.optimizer``.

        ``clip_norm``: rescale the gradients so that their global L2 norm is at most this
        (PyTorch's ``clip_grad_norm_``), measured on the gradient of the whole global batch:
        on several replicas the per-replica gradients are summed first, clipped, and handed
        back as equal shares (the optimizer sums the replicas' shares), so N replicas clip
        exactly what one device clips.
        """
        from medistill.train.precision import scaled_gradients

        grads = scaled_gradients(tape, loss, self.trainable, self.optimizer)
        if clip_norm:
            grads = clipped_global_gradients(grads, float(clip_norm))
        self.optimizer.apply_gradients(zip(grads, self.trainable))
