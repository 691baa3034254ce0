"""SIKD (docs/methods.md §5): shape-intensity distillation through class-wise averaged images.

* The class-wise averaged image ``x̄`` (every pixel the mean intensity of its
  ground-truth class in that image) is computed on the fly in the ``tf.data``
  pipeline, by a map *after* the augmentation of the supervised pipeline, so it
  follows every flip, rotation and intensity change of its image.
* Teacher (:class:`SIKDTeacher`, run by ``--train-teacher NAME`` into ``RUN/teacher/``):
  the network ``NAME`` trained with cross-entropy on ``x̄`` and validated on the
  averaged validation images. Without ``--teacher-options`` and with ``NAME`` equal to
  ``--student``, it is built with the student's options ("the same U-Net").
* Student (:class:`SIKD`): sees ``x``, loss ``CE(z_s, y) + 2.0·MSE(F_s, F_t)`` with
  ``F`` the ``penultimate`` decoder features and the frozen teacher seeing ``x̄``. The
  two ``penultimate`` maps must have the same channel count.

* Gradient clipping: the student's gradients are rescaled to a global L2 norm of at most
  ``clip_norm`` (1.0, as the released training does; 0 turns it off).

* ``dice`` (default false, the paper's CE): the supervised term becomes the supervised
  trainer's CE + Dice, for small imbalanced sets where CE alone learns the foreground late.

Options: ``feature_weight`` 2.0, ``feature`` "penultimate", ``clip_norm`` 1.0, ``dice`` false.

Example::

    python -m medistill distill --recipe sikd --data phantoms --out runs/sikd \\
        --train-teacher unet --student-options '{"base_filters": 16}'
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from medistill.distill.recipes import taps
from medistill.distill.recipes.base import Recipe
from medistill.errors import MedistillError
from medistill.losses import segmentation_loss
from medistill.losses.sikd import classwise_average, cross_entropy_per_example, sikd_loss_per_example
from medistill.networks import feature_names


def with_average(dataset: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    """``(x, y)`` batches → ``(x, y, x̄)`` with ``x̄`` the class-wise averaged ``x``."""
    return dataset.map(lambda x, y: (x, y, classwise_average(x, y, num_classes)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def averaged_only(dataset: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    """``(x, y)`` batches → ``(x̄, y)``: what the SIKD teacher learns from and is validated on."""
    return dataset.map(lambda x, y: (classwise_average(x, y, num_classes), y),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class SIKDTeacher(Recipe):
    """Supervised training on class-wise averaged images (the SIKD teacher); no teacher."""

    name = "sikd-teacher"
    needs_teacher = False

    def build(self) -> None:
        self.student = self.build_student()
        self.trainable = list(self.student.trainable_variables)
        self.optimizer = self.make_optimizer(self.trainable)

    def train_dataset(self, epoch: int = 0) -> tf.data.Dataset:
        return averaged_only(super().train_dataset(epoch), self.context.num_classes)

    def validation_batches(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        return averaged_only(dataset, self.context.num_classes)

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        averaged, y = batch
        with tf.GradientTape() as tape:
            loss = self.average(cross_entropy_per_example(y, self.student(averaged, training=True)))
        self.apply_gradients(tape, loss)
        return {"loss": loss}


class SIKD(Recipe):
    """SIKD's student (see the module docstring)."""

    name = "sikd"
    teacher_recipe = SIKDTeacher
    option_defaults = {"feature_weight": 2.0, "feature": "penultimate", "clip_norm": 1.0, "dice": False}

    @classmethod
    def teacher_build_options(cls, config) -> dict[str, Any]:
        if not config.teacher_options and config.train_teacher == config.student:
            return dict(config.student_options)
        return super().teacher_build_options(config)

    def build(self) -> None:
        teacher, feature = self.context.teacher, str(self.options["feature"])
        if not isinstance(self.options["dice"], bool):
            raise MedistillError(f"--recipe-options dice={self.options['dice']!r}: must be true or false")
        clip = self.options["clip_norm"]
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
            raise MedistillError(f"--recipe-options clip_norm={clip!r}: must be a number >= 0 (0: no clipping)")
        self.student = self.build_student()
        for model, role in ((self.student, "student"), (teacher, "teacher")):
            if feature not in feature_names(model):
                raise MedistillError(f"--recipe-options feature={feature!r}: the {role} has no such layer; "
                                     f"it has {', '.join(feature_names(model))}")
        if taps.channels(self.student, feature) != taps.channels(teacher, feature):
            raise MedistillError(
                f"SIKD compares the {feature} features: the student has {taps.channels(self.student, feature)} "
                f"channels, the teacher {taps.channels(teacher, feature)}. Use the same network for both "
                "(--train-teacher with the --student name and no --teacher-options).")
        self.student_taps = taps.tap_model(self.student, taps.layer_outputs(self.student, [feature]))
        self.teacher_taps = taps.tap_model(teacher, taps.layer_outputs(teacher, [feature]))
        self.trainable = list(self.student.trainable_variables)
        self.optimizer = self.make_optimizer(self.trainable)

    def train_dataset(self, epoch: int = 0) -> tf.data.Dataset:
        return with_average(super().train_dataset(epoch), self.context.num_classes)

    def losses(self, x: tf.Tensor, y: tf.Tensor, averaged: tf.Tensor, training: bool = True) -> dict[str, tf.Tensor]:
        """Per-example ``ce`` and ``feature`` (weighted MSE) terms ``(B,)``."""
        feature, weight = str(self.options["feature"]), float(self.options["feature_weight"])
        target = self.teacher_taps(averaged, training=False)[feature]
        found = self.student_taps(x, training=training)
        ce = cross_entropy_per_example(y, found["logits"])
        total = sikd_loss_per_example(y, found["logits"], found[feature], target, self.context.outputs, weight)
        feature_term = total - ce
        if self.options["dice"]:
            total = segmentation_loss(y, found["logits"]) + feature_term
        return {"total": total, "ce": ce, "feature": feature_term}

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        x, y, averaged = batch
        with tf.GradientTape() as tape:
            terms = self.losses(x, y, averaged)
            loss = self.average(terms.pop("total"))
        self.apply_gradients(tape, loss, clip_norm=float(self.options["clip_norm"]))
        return {"loss": loss, **{name: self.average(value) for name, value in terms.items()}}


RECIPE = SIKD
