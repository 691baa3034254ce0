"""CAKD + MSKD (LCOV-Net, docs/methods.md §3): class-affinity and multi-scale distillation.

The student loss, per example::

    0.8·L_DS-Dice + 0.2·Σ_i w_i (0.1·L_CAKD^i + 0.2·L_MSKD^i),   w = [0.4, 0.2, 0.2, 0.2]

Scales: medistill's deep-supervision heads all predict at input resolution (each
up-samples its decoder stage). Scale ``i`` (``i = 0`` the main logits, ``i = 1`` the
head before it, …) is the head of decoder stage at stride ``2^i``, and its logits (the
student's and the teacher's head of the same scale) are average-pooled by ``2^i``
before CAKD and MSKD, so the distillation really runs at 1, 1/2, 1/4, 1/8 of the
resolution as in LCOV-Net (``--recipe-options '{"downsample": false}'`` compares the
full-resolution maps). ``L_DS-Dice`` is the soft Dice loss (foreground classes) of every
head at full resolution against the labels, weighted by ``w`` normalised to sum to 1.
A student with fewer than four heads uses the scales it has with the first weights of
``w`` (logged); a teacher with fewer heads lends its coarsest head to the others.

MSKD's target is the teacher's soft norm-temperature distribution, so the student gets
a gradient (the released code's floored hard label gives none). The default student is
``lcovnet`` (the LACB network) with ``deep_supervision=True``; a teacher trained with
``--train-teacher`` also gets ``deep_supervision=True`` and is trained with deep
supervision over all its heads (:class:`~medistill.distill.recipes.teachers.DeepSupervisedTeacher`).

Optimiser: the supervised trainer's settings (``--optimizer``, ``--lr``, …); the
paper's Adam with lr 1e-3 and weight decay 1e-5 with ``{"paper_optimizer": true}``.

Options: ``scale_weights`` [0.4, 0.2, 0.2, 0.2], ``downsample`` true,
``paper_optimizer`` false.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

from medistill.distill.recipes import taps
from medistill.distill.recipes.base import Recipe
from medistill.distill.recipes.teachers import DeepSupervisedTeacher
from medistill.errors import MedistillError
from medistill.losses.cakd import cakd_loss_per_example, class_probabilities
from medistill.losses.mskd import LCOV_SCALE_WEIGHTS, lcov_total_per_example, mskd_loss_per_example
from medistill.losses.segmentation import soft_dice_per_example

log = logging.getLogger("medistill.distill")

PAPER_LR, PAPER_WEIGHT_DECAY = 1e-3, 1e-5


def dice_loss_per_example(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1 − soft Dice, averaged over foreground classes (one sigmoid logit: the foreground)."""
    logits = tf.cast(logits, tf.float32)
    probabilities = class_probabilities(logits)  # [1 − σ, σ] for one logit
    if logits.shape[-1] == 1:
        labels = labels > 0
    onehot = tf.one_hot(tf.cast(labels, tf.int32), probabilities.shape[-1])
    dice = soft_dice_per_example(probabilities, onehot)[:, 1:]
    return 1.0 - tf.reduce_mean(dice, axis=-1)


class CAKDMSKD(Recipe):
    """LCOV-Net's CAKD + MSKD distillation (see the module docstring)."""

    name = "cakd-mskd"
    default_student = "lcovnet"
    student_defaults = {"deep_supervision": True}
    teacher_defaults = {"deep_supervision": True}
    teacher_recipe = DeepSupervisedTeacher
    # MSKD's norm temperature per pixel (the norm of each pixel's K logits): over a whole
    # map the norm grows with sqrt(pixels), the distributions go flat and the student's
    # gradient vanishes (measured: 1e-9 at 256², against 1e-4 per pixel); "map" is kept
    # as an option.
    option_defaults = {"scale_weights": list(LCOV_SCALE_WEIGHTS), "downsample": True,
                       "paper_optimizer": False, "mskd_norm": "pixel"}

    def build(self) -> None:
        weights = [float(w) for w in self.options["scale_weights"]]
        if not weights or min(weights) < 0:
            raise MedistillError("--recipe-options: scale_weights must be a non-empty list of weights >= 0")
        if self.options["mskd_norm"] not in ("pixel", "map"):
            raise MedistillError("--recipe-options: mskd_norm must be 'pixel' or 'map'")
        teacher = self.context.teacher
        self.student = self.build_student()
        heads = taps.scale_heads(self.student, len(weights))
        if len(heads) < len(weights):
            log.info("cakd-mskd: the student has %d head(s) for %d scale weights: using scales 0..%d",
                     len(heads), len(weights), len(heads) - 1)
        self.weights = weights[:len(heads)]
        self.pairs = taps.pair_scales(heads, taps.scale_heads(teacher, len(heads)))
        self.factors = [2**i if self.options["downsample"] else 1 for i in range(len(self.pairs))]
        log.info("cakd-mskd scales (student→teacher, pooled by): %s", ", ".join(
            f"{s}→{t} /{f}" for (s, t), f in zip(self.pairs, self.factors)))
        self.student_taps = taps.tap_model(self.student, taps.layer_outputs(self.student, [s for s, _ in self.pairs]))
        self.teacher_taps = taps.tap_model(teacher, taps.layer_outputs(teacher, [t for _, t in self.pairs]))
        self.trainable = list(self.student.trainable_variables)
        self.optimizer = self.make_optimizer(self.trainable)

    def make_optimizer(self, variables: list[tf.Variable]) -> keras.optimizers.Optimizer:
        if not self.options["paper_optimizer"]:
            return super().make_optimizer(variables)
        from medistill.train.precision import wrap_optimizer

        optimizer = wrap_optimizer(keras.optimizers.Adam(PAPER_LR, weight_decay=PAPER_WEIGHT_DECAY),
                                   self.context.policy)
        optimizer.build(variables)
        return optimizer

    def losses(self, x: tf.Tensor, y: tf.Tensor, training: bool = True) -> dict[str, tf.Tensor]:
        """The per-example terms ``(B,)``: ``ds_dice``, ``cakd`` and ``mskd`` (weighted sums)."""
        target = self.teacher_taps(x, training=False)
        found = self.student_taps(x, training=training)
        total_weight = sum(self.weights) or 1.0
        ds_dice = tf.add_n([w / total_weight * dice_loss_per_example(y, found[s])
                            for w, (s, _) in zip(self.weights, self.pairs)])
        cakd, mskd = [], []
        for (s, t), factor in zip(self.pairs, self.factors):
            student, teacher = taps.downsample(found[s], factor), taps.downsample(target[t], factor)
            cakd.append(cakd_loss_per_example(student, teacher))
            mskd.append(mskd_loss_per_example(student, teacher, scope=self.options["mskd_norm"]))
        total = lcov_total_per_example(ds_dice, cakd, mskd, self.weights)
        return {"total": total, "ds_dice": ds_dice,
                "cakd": tf.add_n([w * c for w, c in zip(self.weights, cakd)]),
                "mskd": tf.add_n([w * m for w, m in zip(self.weights, mskd)])}

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        x, y = batch
        with tf.GradientTape() as tape:
            terms = self.losses(x, y)
            loss = self.average(terms.pop("total"))
        self.apply_gradients(tape, loss)
        return {"loss": loss, **{name: self.average(value) for name, value in terms.items()}}

    def summary(self) -> dict[str, Any]:
        return {"cakd_mskd_scales": [[s, t, f] for (s, t), f in zip(self.pairs, self.factors)],
                "scale_weights": self.weights}


RECIPE = CAKDMSKD
