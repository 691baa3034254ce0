"""KAMSD (EDSDF, docs/methods.md §2): deep supervision, boundary heads, adapters, T = 4.

The student loss, per example::

    L_sup + adapter_weight·Σ_i MSE(A_i(f_s^i), f_t^i) + T²·Σ_i MSE(σ(m_s^i/T), σ(m_t^i/T))
    L_sup = Σ_i [BCE + Dice](m_i, M) + Σ_i BCE(b_i, B)      (CE + Dice for K classes)

* ``m_i``: the student's deep-supervision heads, the ``scales`` (default 4) finest of
  ``aux1``… (build option ``deep_supervision=True`` is the default for student and
  teacher); a network with fewer heads uses what it has (logged). The teacher's head of
  the same scale is the target (its coarsest head if it has fewer; its logits if none).
* ``b_i``: boundary heads owned by the distiller, a 1×1 convolution on the feature map
  that feeds head ``m_i``, compared (resized) with the thin contours ``B`` that
  :func:`medistill.losses.boundaries.boundary_map` derives from the label maps *after*
  augmentation. The data layer pairs only images and masks, so a data set's
  ``boundaries/`` folder is not read: contours are always derived (EDSDF's boundary
  masks are the masks' contours too). The heads are trained but are not part of the
  exported student.
* ``A_i``: learned 1×1 adapters from student encoder stage ``enc_i`` to the teacher's
  ``enc_i`` channels (student map resized to the teacher's), the four deepest stages
  both networks have. Unlike the released code they are created once and trained
  (they are in the optimiser's variable list and in the checkpoint).
* Optimiser: the supervised trainer's (AdamW with a cosine schedule by default).
* ``--train-teacher``: the teacher is trained on the masks with deep supervision over
  all its heads (:class:`~medistill.distill.recipes.teachers.DeepSupervisedTeacher`).

Options (``--recipe-options``): ``temperature`` 4.0, ``adapter_weight`` 0.25,
``scales`` 4, ``boundary`` true, ``boundary_width`` 1.

Example::

    python -m medistill distill --recipe kamsd --data phantoms --out runs/kamsd \\
        --train-teacher unet --teacher-options '{"base_filters": 32}' \\
        --student-options '{"base_filters": 8}'
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
from medistill.losses.boundaries import boundary_map
from medistill.losses.kamsd import (
    adapter_feature_loss_per_example,
    boundary_loss_per_example,
    build_adapters,
    deep_supervision_loss_per_example,
    temperature_distillation_per_example,
)

log = logging.getLogger("medistill.distill")

MAX_ADAPTED_STAGES = 4


class KAMSD(Recipe):
    """EDSDF's knowledge-augmented multi-scale distillation (see the module docstring)."""

    name = "kamsd"
    student_defaults = {"deep_supervision": True}
    teacher_defaults = {"deep_supervision": True}
    teacher_recipe = DeepSupervisedTeacher
    option_defaults = {"temperature": 4.0, "adapter_weight": 0.25, "scales": 4, "boundary": True,
                       "boundary_width": 1}

    def build(self) -> None:
        options, teacher = self.options, self.context.teacher
        if not float(options["temperature"]) > 0 or int(options["scales"]) < 1:
            raise MedistillError("--recipe-options: kamsd needs temperature > 0 and scales >= 1")
        self.student = self.build_student()
        student_heads = taps.scale_heads(self.student, int(options["scales"]))
        self.pairs = taps.pair_scales(student_heads, taps.scale_heads(teacher, len(student_heads)))
        self.stages = self._stage_pairs(teacher)
        log.info("kamsd: heads (student→teacher, finest first) %s; adapters %s",
                 ", ".join(f"{s}→{t}" for s, t in self.pairs),
                 ", ".join(f"{s}→{t}" for s, t in self.stages) or "none")
        if len(student_heads) < int(options["scales"]):
            log.info("kamsd: the student has %d head(s), fewer than scales=%d: using what it has",
                     len(student_heads), options["scales"])

        feeds = {f"feed{i}": taps.head_input(self.student, head) for i, (head, _) in enumerate(self.pairs)}
        student_names = [s for s, _ in self.pairs] + [s for s, _ in self.stages]
        self.student_taps = taps.tap_model(
            self.student, {**taps.layer_outputs(self.student, student_names), **feeds})
        teacher_names = [t for _, t in self.pairs] + [t for _, t in self.stages]
        self.teacher_taps = taps.tap_model(teacher, taps.layer_outputs(teacher, teacher_names))

        self.adapters = build_adapters([taps.channels(teacher, t) for _, t in self.stages])
        self.boundary_heads = []
        if options["boundary"]:
            self.boundary_heads = [keras.layers.Conv2D(1, 1, dtype="float32", name=f"boundary{i + 1}")
                                   for i in range(len(self.pairs))]
        for layer, (stage, _) in zip(self.adapters, self.stages):
            layer.build(self.student.get_layer(stage).output.shape)
        for layer, feed in zip(self.boundary_heads, feeds.values()):
            layer.build(feed.shape)
        self.trainable = [*self.student.trainable_variables,
                          *(v for layer in [*self.adapters, *self.boundary_heads] for v in layer.trainable_variables)]
        self.optimizer = self.make_optimizer(self.trainable)

    def _stage_pairs(self, teacher: keras.Model) -> list[tuple[str, str]]:
        student_stages, teacher_stages = taps.encoder_names(self.student), taps.encoder_names(teacher)
        common = min(len(student_stages), len(teacher_stages))
        first = max(0, common - MAX_ADAPTED_STAGES)
        return [(student_stages[i], teacher_stages[i]) for i in range(first, common)]

    def trackables(self) -> dict[str, Any]:
        layers = [*self.adapters, *self.boundary_heads]
        return {f"kamsd_{layer.name}": layer for layer in layers}

    def losses(self, x: tf.Tensor, y: tf.Tensor, training: bool = True) -> dict[str, tf.Tensor]:
        """The per-example terms ``(B,)`` of the KAMSD loss on one batch."""
        options = self.options
        target = self.teacher_taps(x, training=False)
        found = self.student_taps(x, training=training)
        heads = [found[s] for s, _ in self.pairs]
        terms = {"deep_supervision": deep_supervision_loss_per_example(y, heads, self.context.outputs)}
        if self.boundary_heads:
            boundaries = boundary_map(y, int(options["boundary_width"]))
            logits = [head(found[f"feed{i}"]) for i, head in enumerate(self.boundary_heads)]
            terms["boundary"] = boundary_loss_per_example(boundaries, logits)
        if self.adapters:
            adapted = [adapter(found[s]) for adapter, (s, _) in zip(self.adapters, self.stages)]
            terms["adapter"] = adapter_feature_loss_per_example(
                adapted, [target[t] for _, t in self.stages], float(options["adapter_weight"]))
        terms["output_kd"] = temperature_distillation_per_example(
            heads, [target[t] for _, t in self.pairs], float(options["temperature"]))
        return terms

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        x, y = batch
        with tf.GradientTape() as tape:
            terms = self.losses(x, y)
            loss = self.average(tf.add_n(list(terms.values())))
        self.apply_gradients(tape, loss)
        return {"loss": loss, **{name: self.average(value) for name, value in terms.items()}}

    def summary(self) -> dict[str, Any]:
        return {"kamsd_heads": [list(p) for p in self.pairs], "kamsd_adapters": [list(p) for p in self.stages]}


RECIPE = KAMSD
