"""Teacher training with deep supervision, for the recipes that distil every head.

Used by KAMSD and CAKD + MSKD (docs/methods.md §2, §3).

:class:`DeepSupervisedTeacher` trains every head: the sum over heads of BCE + Dice (one
logit) or CE + Dice (K classes), EDSDF's and nnU-Net's deep supervision, so KAMSD / MSKD
never distil untrained coarse heads. It computes the loss the supervised trainer
(:class:`medistill.train.supervised.SupervisedTraining`) computes on such a student
(:func:`medistill.losses.kamsd.deep_supervision_loss_per_example` over
:func:`medistill.networks.head_names`); as a recipe it runs where the recipes' teachers run
and records its name in the teacher's ``summary.json``.

Example (what ``--train-teacher`` runs for KAMSD)::

    run_recipe(config.teacher_train_config(options, "RUN/teacher"), TrainConfig,
               DeepSupervisedTeacher, None)
"""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf

from medistill.distill.recipes import taps
from medistill.distill.recipes.base import Recipe
from medistill.losses.kamsd import deep_supervision_loss_per_example

log = logging.getLogger("medistill.distill")


class DeepSupervisedTeacher(Recipe):
    """A teacher trained on the masks with a deep-supervision loss over all its heads."""

    name = "deep-supervised-teacher"
    needs_teacher = False

    def build(self) -> None:
        self.student = self.build_student()
        self.heads = taps.scale_heads(self.student, len(taps.head_names(self.student)) or 1)
        log.info("teacher: deep supervision on %s", ", ".join(self.heads))
        self.taps = taps.tap_model(self.student, taps.layer_outputs(self.student, self.heads))
        self.trainable = list(self.student.trainable_variables)
        self.optimizer = self.make_optimizer(self.trainable)

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        x, y = batch
        with tf.GradientTape() as tape:
            found = self.taps(x, training=True)
            per_example = deep_supervision_loss_per_example(y, [found[h] for h in self.heads],
                                                            self.context.outputs)
            loss = self.average(per_example)
        self.apply_gradients(tape, loss)
        return {"loss": loss}
